"""nbic against each engine ci/engines-setup started: Docker and Podman, root and
rootless (tests/engine_matrix.py). One short session per engine at most: the
long `nbic run` tests run against the root Docker engine (test_run.py)."""

import os
import pty
import select
import signal
import time

import pytest
from engine_matrix import ROOTLESS, engine_params

from nbic.cpio.image import read_entries

# What the rootless engines still lack, in the agent and the rootfs import;
# docs/engines.md has the errno of each and where it arises.
ROOTLESS_IMPORT = ("a rootless engine cannot create the tar's device nodes: the import must "
                   "leave them (and hardlinks to them) out (issue 8, docs/engines.md)")


@pytest.mark.parametrize("engine", engine_params(), indirect=True)
def test_each_engine_answers_at_the_pinned_api_version(engine):
    # Every call nbic makes names API 1.41; an engine that did not serve it
    # would answer 400 ("client version ... is too new").
    result = engine.nbic("rootfs", "ls")
    assert result.returncode == 0 and "Traceback" not in result.stderr


@pytest.mark.parametrize("engine", engine_params(), indirect=True)
def test_a_session_on_each_engine(engine):
    image = engine.workdir / "true.cpio"
    result = engine.nbic("run", "--rootfs", "docker:debian:bookworm", "-o", image, "--", "true")
    entries = {entry.name: entry for entry in read_entries(image)}
    assert "usr/bin/true" in entries and "dev/console" in entries
    if engine.user:
        assert "fanotify is not permitted" in result.stderr  # the ptrace fallback


@pytest.mark.parametrize("engine", engine_params(rootless_xfail=ROOTLESS_IMPORT), indirect=True)
def test_a_tar_rootfs_on_each_engine(engine, rootfs_tar):
    result = engine.nbic("run", "--rootfs", rootfs_tar, "-o", engine.workdir / "tar.cpio",
                         "--", "true", check=False)
    # Whatever fails, it is named, and a refusal is not "cannot reach the engine".
    assert "cannot reach" not in result.stderr and "Traceback" not in result.stderr
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("engine", [pytest.param(ROOTLESS[0], id=ROOTLESS[0])], indirect=True)
def test_another_users_engine_is_a_permission_error(engine):
    # The unprivileged user is not in the docker group: root's socket refuses it.
    result = engine.nbic("rootfs", "ls", check=False,
                         env={"DOCKER_HOST": "unix:///var/run/docker.sock"})
    assert result.returncode == 1
    assert "no permission to use the container engine at unix:///var/run/docker.sock" \
        in result.stderr
    assert result.stderr.count("\n") == 1


def _on_a_terminal(argv, env, cwd, typed: bytes, timeout: float = 300) -> tuple[bytes, int]:
    """Run argv on a new pseudo-terminal; type `typed` at the first prompt; return
    the transcript and the exit status."""
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(cwd)
        os.execvpe(argv[0], argv, env)
    transcript, sent = b"", False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the terminal's other side is gone
                    break
                if not chunk:
                    break
                transcript += chunk
            if not sent and b"# " in transcript:
                os.write(fd, typed)
                sent = True
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return transcript, os.waitstatus_to_exitcode(status)


@pytest.mark.parametrize("engine", engine_params(), indirect=True)
def test_a_terminal_session_on_each_engine(engine):
    # The session takes the terminal from the agent (PID 1): in a user
    # namespace only once the agent has given it up.
    image = engine.workdir / "tty.cpio"
    transcript, status = _on_a_terminal(
        *engine.invocation(["run", "--rootfs", "docker:debian:bookworm", "-o", image, "--",
                            "/bin/bash", "--norc", "-i"]),
        typed=b"echo TYPED-$((6*7)) $(tty); exit 3\r")
    assert b"TYPED-42 /dev/pts/0" in transcript, transcript
    assert status == 3, transcript
    assert "usr/bin/bash" in {entry.name for entry in read_entries(image)}
