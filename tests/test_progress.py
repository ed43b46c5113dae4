"""Progress bars: on a terminal they show and go; in CI, with -q or without a
terminal, not a byte of them."""

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _with_terminal_stderr(argv: list[str], env: dict[str, str]) -> tuple[int, bytes]:
    """Run argv with standard error on a pseudo-terminal; its exit status and
    what it wrote there."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    process = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    written = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        written += chunk
    os.close(master)
    return process.wait(timeout=600), written


def _env(**changes: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    env.update(changes)
    return env


def _pack(rootfs_dir: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nbic.cli", *extra, "pack", "--rootfs", str(rootfs_dir),
            "--include", "/usr/lib/x86_64-linux-gnu/libc.so.6", "--init", "/usr/bin/true",
            "--compress", "zstd:3", "-o", str(output)]


def test_pack_shows_a_bar_on_a_terminal_and_nothing_elsewhere(rootfs_dir, tmp_path):
    status, shown = _with_terminal_stderr(_pack(rootfs_dir, tmp_path / "a.cpio.zst"), _env())
    assert status == 0, shown
    text = shown.decode("utf-8", "replace")
    assert "writing a.cpio.zst" in text
    assert "MB" in text and "\x1b[2K" in text  # a drawn bar, then erased
    assert "nbic: wrote" in text

    for label, argv, env in [
            ("CI", _pack(rootfs_dir, tmp_path / "b.cpio.zst"), _env(CI="true")),
            ("-q", _pack(rootfs_dir, tmp_path / "c.cpio.zst", "-q"), _env())]:
        status, shown = _with_terminal_stderr(argv, env)
        assert status == 0, shown
        assert b"\x1b" not in shown and b"writing" not in shown, label

    piped = subprocess.run(_pack(rootfs_dir, tmp_path / "d.cpio.zst"), cwd=REPO,
                           capture_output=True, env=_env(), check=True)
    assert b"\x1b" not in piped.stderr and b"writing /" not in piped.stderr
    images = {(tmp_path / f"{name}.cpio.zst").read_bytes() for name in "abcd"}
    assert len(images) == 1  # the bar changes nothing in the output


@pytest.mark.usefixtures("docker_engine")
def test_run_shows_the_session_waiting_then_writing(rootfs_tar, tmp_path):
    image = tmp_path / "sleep.cpio"
    status, shown = _with_terminal_stderr(
        [sys.executable, "-m", "nbic.cli", "run", "--rootfs", str(rootfs_tar), "-o",
         str(image), "--init", "/usr/bin/sleep", "--", "sleep", "2"], _env())
    assert status == 0, shown
    text = shown.decode("utf-8", "replace")
    assert "session running" in text
    assert "writing sleep.cpio" in text
    assert image.stat().st_size > 0
