"""nbic against each engine ci/engines-setup started: Docker and Podman, root and
rootless (tests/engine_matrix.py). One short session per engine at most: the
long `nbic run` tests run against the root Docker engine (test_run.py)."""

import io
import os
import pty
import select
import shutil
import signal
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
from engine_matrix import ROOTLESS, engine_params

from nbic.boot import BootConfig, BootOutcome, boot
from nbic.cpio.image import read_entries

# The seed's quick start: the rootfs's own /chroot starts the session and the boot.
CHROOT = b"""#!/bin/bash
cat /etc/hostname
ls / >/dev/null
echo NBIC-QUICKSTART-OK
"""


@pytest.fixture(scope="module")
def seed_tar(rootfs_tar):
    """The debootstrapped bookworm tar with the seed's /chroot, where the
    unprivileged user of the rootless engines may read it."""
    directory = Path(tempfile.mkdtemp(prefix="nbic-seed-"))
    try:
        directory.chmod(0o755)
        target = directory / "sarge.tar"
        shutil.copyfile(rootfs_tar, target)
        with tarfile.open(target, "a") as archive:
            info = tarfile.TarInfo("./chroot")
            info.size, info.mode = len(CHROOT), 0o755
            archive.addfile(info, io.BytesIO(CHROOT))
        target.chmod(0o644)
        yield target
    finally:
        shutil.rmtree(directory)


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


@pytest.mark.parametrize("engine", engine_params(), indirect=True)
def test_the_seeds_quick_start_on_each_engine_boots(engine, seed_tar, kernel):
    # A debootstrapped tar holds device nodes, which a rootless engine cannot
    # make: the import leaves them out, and the image still boots.
    image = engine.workdir / "bash.cpio"
    result = engine.nbic("run", "--rootfs", seed_tar, "-o", image)
    assert "NBIC-QUICKSTART-OK" in result.stdout
    if engine.user and "importing rootfs" in result.stderr:  # not when cached already
        assert "cannot make device nodes" in result.stderr
    entries = {entry.name: entry for entry in read_entries(image)}
    assert entries["init"].linkname == "/chroot" and entries["dev/console"].rdevmajor == 5
    booted = boot(image, BootConfig(kernel=kernel, expect=("NBIC-QUICKSTART-OK",),
                                    timeout=300))
    assert booted.outcome is BootOutcome.PASSED, booted.tail()


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
def test_a_terminal_session_on_each_engine(engine, kernel):
    # The session takes the terminal from the agent (PID 1): in a user
    # namespace only once the agent has given it up.
    image = engine.workdir / "tty.cpio"
    transcript, status = _on_a_terminal(
        *engine.invocation(["run", "--rootfs", "docker:debian:bookworm", "-o", image, "--",
                            "/bin/bash", "--norc", "-i"]),
        typed=b"echo TYPED-$((6*7)) $(tty); exit 3\r")
    assert b"TYPED-42 /dev/pts/0" in transcript, transcript
    assert status == 3, transcript
    entries = {entry.name: entry for entry in read_entries(image)}
    assert "usr/bin/bash" in entries and entries["init"].linkname == "/usr/bin/bash"
    # The session's shell boots as /init: it reads commands from the console.
    booted = boot(image, BootConfig(kernel=kernel, expect=("no job control in this shell",),
                                    timeout=300))
    assert booted.outcome is BootOutcome.PASSED, booted.tail()
