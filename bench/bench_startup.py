"""A warm `nbic run -- /bin/true` against `docker run --rm debian:bookworm true`, on
the root Docker engine and on each engine ci/engines-setup started (rootless
Docker, rootful and rootless Podman), as that engine's user."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from common import NBIC, REPO, Result, workdir
from timing import show, time_alternating

ENGINES_ENV = os.environ.get("NBIC_BENCH_ENGINES_ENV", "/var/cache/nbic-ci/engines.env")
PEER_IMAGE = "debian:bookworm"
# nbic returns once the image is written; the engine removes the ended session
# container after that (docker run --rm waits for its removal). In turn with the
# peer, that removal must not be charged to the peer's next run: wait for it
# (at most 10 s; an unrelated nbic session only makes the wait longer).
SESSION_REMOVED = ("for _ in $(seq 200); do "
                   "[ -z \"$(docker ps -aq --filter label=nbic=session)\" ] && break; "
                   "sleep 0.05; done")


def true_command(rootfs: str, output: str, nbic: str = NBIC) -> list[str]:
    return [nbic, "-q", "run", "--rootfs", rootfs, "-o", output, "--init", "/usr/bin/true",
            "--", "/bin/true"]


def _engines() -> dict[str, str]:
    """Engine name -> DOCKER_HOST, and the rootless user's settings."""
    values = {}
    if os.path.exists(ENGINES_ENV):
        with open(ENGINES_ENV) as env:
            for line in env:
                key, _, value = line.strip().partition("=")
                if key and not key.startswith("#"):
                    values[key] = value
    return values


def _as_user(values: dict[str, str], host: str, argv: list[str]) -> list[str]:
    user, runtime = values["NBIC_ENGINE_ROOTLESS_USER"], values["NBIC_ENGINE_ROOTLESS_RUNTIME_DIR"]
    return ["runuser", "-u", user, "--", "env", f"HOME=/home/{user}",
            f"XDG_RUNTIME_DIR={runtime}", f"DOCKER_HOST={host}",
            f"PATH={values['NBIC_ENGINE_ROOTLESS_VENV']}/bin:/usr/bin:/bin", *argv]


def _install_for_user(values: dict[str, str]) -> None:
    """This checkout into the rootless user's venv (as tests/engine_matrix.py does)."""
    user, venv = values["NBIC_ENGINE_ROOTLESS_USER"], values["NBIC_ENGINE_ROOTLESS_VENV"]
    with tempfile.TemporaryDirectory(prefix="nbic-bench-src-") as source:
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(os.path.join(REPO, name), source)
        shutil.copytree(os.path.join(REPO, "nbic"), os.path.join(source, "nbic"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        subprocess.run(["chown", "-R", f"{user}:{user}", source], check=True)
        os.chmod(source, 0o755)
        subprocess.run(["runuser", "-u", user, "--", f"{venv}/bin/pip", "install", "-q",
                        "--no-deps", "--no-build-isolation", "--force-reinstall", source],
                       check=True, cwd="/", capture_output=True)


def bench(n: int = 3) -> list[Result]:
    values = _engines()
    engines = [("docker", None)] + [
        (name, values.get(f"NBIC_ENGINE_{name.upper().replace('-', '_')}_HOST"))
        for name in ("rootless-docker", "podman", "rootless-podman")]
    if any(name.startswith("rootless") and host for name, host in engines):
        _install_for_user(values)
    results = []
    for name, host in engines:
        if name != "docker" and not host:
            continue
        rootless = name.startswith("rootless")
        output = workdir(f"true-{name}.cpio")
        if rootless:
            directory = tempfile.mkdtemp(prefix=f"nbic-bench-{name}-")
            os.chmod(directory, 0o777)
            output = os.path.join(directory, "true.cpio")
            ours = _as_user(values, host, true_command(
                "docker:" + PEER_IMAGE, output, nbic="nbic"))
            peer = _as_user(values, host, ["docker", "run", "--rm", PEER_IMAGE, "true"])
            settle = _as_user(values, host, ["bash", "-c", SESSION_REMOVED])
        else:
            env_prefix = [] if host is None else ["env", f"DOCKER_HOST={host}"]
            ours = [*env_prefix, *true_command("docker:" + PEER_IMAGE, output)]
            peer = [*env_prefix, "docker", "run", "--rm", PEER_IMAGE, "true"]
            settle = [*env_prefix, "bash", "-c", SESSION_REMOVED]
        # The warm-up round builds and caches what nbic needs.
        times = time_alternating({"nbic": ours, "peer": peer}, n, settle={"nbic": settle})
        t_ours, t_peer = times["nbic"], times["peer"]
        results.append(Result(
            f"warm nbic run -- /bin/true vs docker run --rm {PEER_IMAGE} true [{name}]",
            t_ours.best, t_peer.best, target=2.0 if name == "docker" else None,
            nbic_cmd=show(ours), peer_cmd=show(peer),
            notes=[f"best of {n}, the two in turn (nbic's container removed before the "
                   f"peer starts); nbic {t_ours}; peer {t_peer}"
                   + ("; ptrace tracer (fanotify is refused)" if rootless else "")]))
    return results
