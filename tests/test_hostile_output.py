"""Output paths and write errors: no temporary file outlives the process, an
output is never one of the inputs, a FIFO or device is written to and never
replaced, a symlink is refused, and every write error is one line and a
non-zero exit."""

from __future__ import annotations

import io
import os
import resource
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from hostile_helpers import command, run, write_lines

from nbic.cpio.image import ImageReader

IS_ROOT = os.geteuid() == 0
INIT = b"#!/bin/sh\nexec sh\n"


def small_rootfs(root: Path, big: int = 0) -> Path:
    """/init, /bin/sh and, when asked, /big: a sparse file of `big` bytes."""
    (root / "bin").mkdir(parents=True)
    (root / "init").write_bytes(INIT)
    (root / "init").chmod(0o755)
    (root / "bin/sh").write_bytes(b"\x7fELF sh " * 1000)
    if big:
        with open(root / "big", "wb") as out:
            out.truncate(big)
    return root


def pack_args(rootfs: Path, files: Path, output: object, *extra: object) -> list[object]:
    return ["pack", "--rootfs", rootfs, "--files-from", files, "-o", output, *extra]


def names_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


# --- signals ------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_pack_leaves_no_temporary_file(tmp_path, signum):
    rootfs = small_rootfs(tmp_path / "rootfs", big=3 << 30)
    files = write_lines(tmp_path / "files.list", ["/big"])
    out = tmp_path / "out"
    out.mkdir()
    process = subprocess.Popen(
        [*command("nbic"), *map(str, pack_args(rootfs, files, out / "image.cpio.gz",
                                               "--compress", "gzip:1"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(out.iterdir()):  # the temporary file is being written
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0 and process.returncode != -signum
    assert stderr.decode().strip().endswith("interrupted"), stderr
    assert names_in(out) == []


# --- where an output goes -----------------------------------------------------------

def _image_from(data: bytes) -> list[str]:
    return [entry.name for entry in ImageReader(io.BytesIO(data))]


def test_a_fifo_output_is_written_to_not_replaced(tmp_path):
    rootfs = small_rootfs(tmp_path / "rootfs")
    files = write_lines(tmp_path / "files.list", ["/bin/sh"])
    fifo = tmp_path / "image.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    outcome = run("nbic", *pack_args(rootfs, files, fifo))
    assert outcome.returncode == 0, outcome.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    reader.join(timeout=60)
    assert "bin/sh" in _image_from(received[0])
    assert names_in(tmp_path) == ["files.list", "image.fifo", "rootfs"]


def _a_null_device(tmp_path: Path) -> Path:
    """As root, a /dev/null of our own (the system's is never put at risk by a
    test); otherwise the system's, which a user cannot replace anyway."""
    if not IS_ROOT:
        return Path("/dev/null")
    device = tmp_path / "null"
    os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return device


def test_a_character_device_output_is_written_to_not_replaced(tmp_path):
    rootfs = small_rootfs(tmp_path / "rootfs")
    files = write_lines(tmp_path / "files.list", ["/bin/sh"])
    device = _a_null_device(tmp_path)
    outcome = run("nbic", *pack_args(rootfs, files, device))
    assert outcome.returncode == 0, outcome.stderr
    info = os.lstat(device)
    assert stat.S_ISCHR(info.st_mode) and info.st_rdev == os.makedev(1, 3)
    assert not [name for name in os.listdir(device.parent) if name.startswith(".null.")]


def test_a_symlink_to_a_device_is_written_through(tmp_path):
    rootfs = small_rootfs(tmp_path / "rootfs")
    files = write_lines(tmp_path / "files.list", ["/bin/sh"])
    link = tmp_path / "out.cpio"
    link.symlink_to(_a_null_device(tmp_path))
    outcome = run("nbic", *pack_args(rootfs, files, link))
    assert outcome.returncode == 0, outcome.stderr
    assert link.is_symlink() and stat.S_ISCHR(os.stat(link).st_mode)


@pytest.mark.parametrize("target", ["file", "dangling"])
def test_a_symlink_output_is_refused(tmp_path, target):
    rootfs = small_rootfs(tmp_path / "rootfs")
    files = write_lines(tmp_path / "files.list", ["/bin/sh"])
    pointed = tmp_path / "elsewhere.cpio"
    if target == "file":
        pointed.write_bytes(b"precious")
    link = tmp_path / "out.cpio"
    link.symlink_to(pointed)
    line = run("nbic", *pack_args(rootfs, files, link)).one_line_error()
    assert str(link) in line and "symlink" in line
    assert link.is_symlink() and os.readlink(link) == str(pointed)
    assert target == "dangling" or pointed.read_bytes() == b"precious"
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_a_directory_or_block_device_output_is_refused(tmp_path):
    rootfs = small_rootfs(tmp_path / "rootfs")
    files = write_lines(tmp_path / "files.list", ["/bin/sh"])
    assert "directory" in run("nbic", *pack_args(rootfs, files, tmp_path)).one_line_error()
    if IS_ROOT:
        block = tmp_path / "loop"
        os.mknod(block, stat.S_IFBLK | 0o600, os.makedev(7, 200))
        assert "block device" in run("nbic", *pack_args(rootfs, files, block)).one_line_error()


# --- an output that is an input -------------------------------------------------------

def _tar_rootfs(tmp_path: Path) -> Path:
    tar = tmp_path / "rootfs.tar"
    subprocess.run(["tar", "-cf", tar, "-C", small_rootfs(tmp_path / "src"), "."], check=True)
    return tar


@pytest.mark.parametrize("which", ["rootfs", "hardlink-to-rootfs", "files", "spec",
                                   "spec-location", "emit-spec-over-files"])
def test_an_output_that_is_an_input_is_refused_before_writing(tmp_path, which):
    tar = _tar_rootfs(tmp_path)
    files = write_lines(tmp_path / "files.list", ["/bin/sh"])
    spec = tmp_path / "extra.spec"
    location = tmp_path / "motd"
    location.write_text("hello\n")
    spec.write_text(f"file /etc/motd {location} 0644 0 0\n")
    output = {"rootfs": tar, "files": files, "spec": spec, "spec-location": location,
              "hardlink-to-rootfs": tmp_path / "alias.tar"}.get(which, tmp_path / "o.cpio")
    if which == "hardlink-to-rootfs":
        os.link(tar, output)
    extra = ["--spec", spec]
    if which == "emit-spec-over-files":
        extra += ["--emit-spec", files]
    before = {path: path.read_bytes() for path in (tar, files, spec, location)}
    line = run("nbic", *pack_args(tar, files, output, *extra)).one_line_error()
    assert "input" in line
    assert {path: path.read_bytes() for path in before} == before
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    assert not (tmp_path / "o.cpio").exists()


def test_a_cpio_tool_refuses_standard_output_appending_to_its_image(tmp_path):
    tar = _tar_rootfs(tmp_path)
    files = write_lines(tmp_path / "files.list", ["/bin/sh"])
    image = tmp_path / "image.cpio"
    assert run("nbic", *pack_args(tar, files, image)).returncode == 0
    before = image.read_bytes()
    for tool in ("cpio-list", "cpio-du", "cpio-cat"):
        args = (image, "bin/sh") if tool == "cpio-cat" else (image,)
        with open(image, "ab") as appending:
            outcome = run(tool, *args, stdout=appending)
        assert "input" in outcome.one_line_error(), tool
        assert image.read_bytes() == before, tool


# --- write errors ---------------------------------------------------------------------

def _packed_image(tmp_path: Path) -> Path:
    rootfs = small_rootfs(tmp_path / "rootfs")
    (rootfs / "blob").write_bytes(os.urandom(1 << 20))
    files = write_lines(tmp_path / "files.list", ["/bin/sh", "/blob"])
    image = tmp_path / "image.cpio"
    assert run("nbic", *pack_args(rootfs, files, image)).returncode == 0
    return image


def test_pack_to_standard_output_fails_when_its_reader_goes_away(tmp_path):
    image = _packed_image(tmp_path)
    rootfs = tmp_path / "rootfs"
    (rootfs / "blob").write_bytes(os.urandom(4 << 20))
    files = write_lines(tmp_path / "files.list", ["/blob"])
    for argv in ([*command("nbic"), *map(str, pack_args(rootfs, files, "-", "--compress",
                                                         "none"))],
                 [*command("cpio-cat"), str(image), "blob"]):
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert process.stdout.read(100)
        process.stdout.close()
        stderr = process.stderr.read().decode()
        assert process.wait() == 1, (argv, stderr)
        assert len(stderr.splitlines()) == 1 and "went away" in stderr, stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
@pytest.mark.parametrize("tool", ["cpio-list", "cpio-du", "cpio-cat", "pack"])
def test_a_full_disk_on_standard_output_is_one_line(tmp_path, tool):
    image = _packed_image(tmp_path)
    args = {"cpio-list": ("cpio-list", image), "cpio-du": ("cpio-du", image),
            "cpio-cat": ("cpio-cat", image, "blob"),
            "pack": ("nbic", *pack_args(tmp_path / "rootfs", tmp_path / "files.list", "-"))}
    with open("/dev/full", "wb") as full:
        outcome = run(*args[tool], stdout=full)
    line = outcome.one_line_error()
    assert "standard output" in line and os.strerror(28) in line


def _file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("to", ["file", "stdout"])
def test_a_file_too_large_is_one_line_and_leaves_nothing(tmp_path, to):
    image = _packed_image(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    files = tmp_path / "files.list"
    target = out / "big.cpio" if to == "file" else "-"
    with open(out / "stdout", "wb") if to == "stdout" else open(os.devnull, "wb") as sink:
        outcome = run("nbic", *pack_args(tmp_path / "rootfs", files, target, "--compress",
                                         "none"), stdout=sink, limits=_file_size_limit(64 << 10))
    line = outcome.one_line_error()
    assert os.strerror(27) in line and ("big.cpio" in line if to == "file" else
                                        "standard output" in line)
    assert names_in(out) == ([] if to == "file" else ["stdout"])
    assert image.exists()


def test_closed_standard_output_is_one_line(tmp_path):
    image = _packed_image(tmp_path)
    for argv in (["cpio-list", image], ["cpio-cat", image, "blob"]):
        script = " ".join(f"'{part}'" for part in (*command(argv[0]), *map(str, argv[1:])))
        result = subprocess.run(["sh", "-c", f"exec {script} >&-"], capture_output=True,
                                text=True)
        assert result.returncode == 1, result.stderr
        assert len(result.stderr.splitlines()) == 1 and "standard output" in result.stderr


def test_closed_standard_input_is_one_line(tmp_path):
    script = " ".join(f"'{part}'" for part in command("cpio-list"))
    result = subprocess.run(["sh", "-c", f"exec {script} - <&-"], capture_output=True,
                            text=True)
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
