"""The engine matrix: `nbic run` against each engine ci/engines-setup started.

Parametrize a test with ``engine_params()`` and ``indirect=["engine"]``: its
``engine`` fixture is an :class:`EngineRun` for one of

* ``docker``: the root dockerd (ci/docker-setup);
* ``rootless-docker``: dockerd-rootless.sh, as the unprivileged user;
* ``podman``: rootful Podman's Docker API service;
* ``rootless-podman``: the same, as the unprivileged user.

The DOCKER_HOST of each, the user and its venv come from the file ci/engines-setup
writes (``NBIC_TEST_ENGINES_ENV``, exported by ci/test). The root engines run
this checkout's nbic with this interpreter. The rootless ones run as the user
(``runuser``) from the user's own venv, into which this checkout is installed
once per test session: a real unprivileged user with an installed nbic, as on a
developer's laptop.

Without the env file the tests are skipped on a developer machine and fail
under CI (``CI`` or ``NBIC_TEST_DOCKER`` set), as the Docker tests do.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENGINES = ("docker", "rootless-docker", "podman", "rootless-podman")
ROOTLESS = ("rootless-docker", "rootless-podman")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _required() -> bool:
    return bool(os.environ.get("CI") or os.environ.get("NBIC_TEST_DOCKER"))


def engine_params(*, rootless_xfail: str | None = None) -> list:
    """One param per engine; with rootless_xfail, the rootless ones are expected
    to fail (strict: once they pass, the mark must go)."""
    marks = {name: [pytest.mark.xfail(strict=True, reason=rootless_xfail)]
             for name in ROOTLESS} if rootless_xfail else {}
    return [pytest.param(name, id=name, marks=marks.get(name, [])) for name in ENGINES]


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


@dataclass(frozen=True)
class EngineRun:
    """How to run nbic against one engine, as the user that engine belongs to."""

    name: str
    docker_host: str
    workdir: Path  # for outputs: the engine's user may write there
    user: str | None = None  # None: as this process (root)
    home: str = ""
    runtime_dir: str = ""
    venv: str = ""

    def invocation(self, args, env: dict[str, str] | None = None
                   ) -> tuple[list[str], dict[str, str], Path]:
        """argv, environment and working directory of `nbic ARGS` on this engine."""
        args, env = [str(arg) for arg in args], env or {}
        if not self.user:
            return ([sys.executable, "-m", "nbic.cli", *args],
                    {**os.environ, "DOCKER_HOST": self.docker_host, **env}, REPO)
        variables = {"HOME": self.home, "USER": self.user, "XDG_RUNTIME_DIR": self.runtime_dir,
                     "DOCKER_HOST": self.docker_host, "PATH": f"{self.venv}/bin:{PATH}", **env}
        argv = ["runuser", "-u", self.user, "--", "env", "-i",
                *(f"{key}={value}" for key, value in variables.items()),
                f"{self.venv}/bin/nbic", *args]
        return argv, {"PATH": PATH}, self.workdir

    def nbic(self, *args, check: bool = True, timeout: float = 900,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        argv, run_env, cwd = self.invocation(args, env)
        result = subprocess.run(argv, cwd=cwd, env=run_env, capture_output=True, text=True,
                                timeout=timeout, check=False)
        if check and result.returncode:
            raise AssertionError(f"[{self.name}] nbic {args} failed ({result.returncode}):\n"
                                 f"{result.stderr}")
        return result


@pytest.fixture(scope="session")
def engines_env() -> dict[str, str]:
    value = os.environ.get("NBIC_TEST_ENGINES_ENV")
    message = None
    if not value:
        message = "NBIC_TEST_ENGINES_ENV is not set (run the tests through ci/test)"
    elif not Path(value).is_file():
        message = f"NBIC_TEST_ENGINES_ENV={value} does not exist (run ci/engines-setup)"
    if message:
        if _required():
            pytest.fail(message)
        pytest.skip(message)
    return read_env_file(Path(value))


@pytest.fixture(scope="session")
def rootless_nbic(engines_env) -> str:
    """The unprivileged user, with this checkout installed in its venv."""
    user, venv = engines_env["NBIC_ENGINE_ROOTLESS_USER"], engines_env["NBIC_ENGINE_ROOTLESS_VENV"]
    # pip builds in the source tree: give the user a copy it may write to.
    with tempfile.TemporaryDirectory(prefix="nbic-src-") as source:
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(REPO / name, source)
        shutil.copytree(REPO / "nbic", Path(source) / "nbic",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        subprocess.run(["chown", "-R", f"{user}:{user}", source], check=True)
        os.chmod(source, 0o755)
        subprocess.run(["runuser", "-u", user, "--", f"{venv}/bin/pip", "install", "-q",
                        "--no-deps", "--no-build-isolation", "--force-reinstall",
                        "--disable-pip-version-check", source], check=True,
                       cwd="/", capture_output=True)
    return user


@pytest.fixture
def engine(request, engines_env) -> Iterator[EngineRun]:
    name = request.param
    host = engines_env[f"NBIC_ENGINE_{name.upper().replace('-', '_')}_HOST"]
    workdir = Path(tempfile.mkdtemp(prefix=f"nbic-{name}-"))
    try:
        if name not in ROOTLESS:
            yield EngineRun(name, host, workdir)
            return
        user = request.getfixturevalue("rootless_nbic")
        shutil.chown(workdir, user, user)
        yield EngineRun(name, host, workdir, user, home=pwd.getpwnam(user).pw_dir,
                        runtime_dir=engines_env["NBIC_ENGINE_ROOTLESS_RUNTIME_DIR"],
                        venv=engines_env["NBIC_ENGINE_ROOTLESS_VENV"])
    finally:
        shutil.rmtree(workdir)
