"""`nbic pack` against the real debootstrapped bookworm rootfs and the real tools."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nbic.cpio.entry import FileType
from nbic.cpio.image import read_entries

REPO = Path(__file__).resolve().parent.parent
FILES_LIST = REPO / "images/bash/files.list"
EXTRA_SPEC = REPO / "images/bash/extra.spec"
EPOCH = {"SOURCE_DATE_EPOCH": "1700000000"}


def nbic(*args, env=None, stdin=None, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "nbic.cli", *map(str, args)], cwd=REPO,
                            env={**os.environ, **(env or {})}, stdin=stdin,
                            capture_output=True, text=True)
    if check and result.returncode:
        raise AssertionError(f"nbic {args} failed: {result.stderr}")
    return result


def pack(rootfs, output, *extra, env=EPOCH, stdin=None):
    return nbic("pack", "--rootfs", rootfs, "--files-from", FILES_LIST, "--spec", EXTRA_SPEC,
                "-o", output, *extra, env=env, stdin=stdin)


def test_the_bash_image_holds_what_was_used_and_what_a_boot_needs(rootfs_dir, tmp_path):
    image = tmp_path / "bash.cpio"
    pack(rootfs_dir, image)
    entries = {entry.name: entry for entry in read_entries(image)}
    for program in ("bash", "cat", "ls", "mount"):
        assert entries[f"usr/bin/{program}"].type is FileType.FILE
    # What nbic adds by itself around the list of real files:
    assert entries["bin"].linkname == "usr/bin"
    assert entries["lib64"].type is FileType.SYMLINK
    assert entries["usr/lib64/ld-linux-x86-64.so.2"].type is FileType.SYMLINK
    assert entries["usr/lib/x86_64-linux-gnu/libtinfo.so.6"].linkname == "libtinfo.so.6.4"
    assert entries["proc"].type is FileType.DIR
    console = entries["dev/console"]
    assert (console.type, console.rdevmajor, console.rdevminor) == (FileType.CHAR, 5, 1)
    assert entries["init"].type is FileType.FILE
    # Untouched programs stay out.
    assert "usr/bin/tr" not in entries and "usr/bin/apt-get" not in entries


def test_directory_and_tar_sources_give_identical_bytes(rootfs_dir, rootfs_tar, tmp_path):
    from_dir, from_tar = tmp_path / "dir.cpio.zst", tmp_path / "tar.cpio.zst"
    pack(rootfs_dir, from_dir)
    pack(rootfs_tar, from_tar)
    assert from_dir.read_bytes() == from_tar.read_bytes()
    zstd_tar = tmp_path / "rootfs.tar.zst"
    subprocess.run(["zstd", "-q", "-1", "-T0", rootfs_tar, "-o", zstd_tar], check=True)
    from_stdin = tmp_path / "stdin.cpio.zst"
    with open(zstd_tar, "rb") as stdin:
        pack("-", from_stdin, stdin=stdin)
    assert from_stdin.read_bytes() == from_dir.read_bytes()


def test_same_inputs_twice_give_identical_bytes(rootfs_dir, tmp_path):
    first, second = tmp_path / "1.cpio.zst", tmp_path / "2.cpio.zst"
    pack(rootfs_dir, first)
    pack(rootfs_dir, second)
    assert first.read_bytes() == second.read_bytes()


def _gnu_listing(image: Path) -> str:
    with open(image, "rb") as stdin:
        return subprocess.run(["cpio", "-tv", "--numeric-uid-gid", "--quiet"], stdin=stdin,
                              capture_output=True, text=True, check=True,
                              env={**os.environ, "TZ": "UTC"}).stdout


def test_gnu_cpio_and_bsdtar_read_the_image_as_nbic_wrote_it(rootfs_dir, tmp_path):
    image = tmp_path / "bash.cpio"
    pack(rootfs_dir, image)
    listing = nbic("cpio", "list", "-v", image, env={"TZ": "UTC"}).stdout
    assert listing == _gnu_listing(image)
    bsdtar = subprocess.run(["bsdtar", "-tf", image], capture_output=True, text=True,
                            check=True).stdout.split()
    assert bsdtar == [entry.name for entry in read_entries(image)]
    for extractor in (["cpio", "-idm", "--quiet", "--no-absolute-filenames"],
                      ["bsdtar", "-xpf", "-"]):
        target = tmp_path / extractor[0]
        target.mkdir()
        with open(image, "rb") as stdin:
            subprocess.run(extractor, stdin=stdin, cwd=target, check=True)
        for name in ("usr/bin/bash", "usr/lib/x86_64-linux-gnu/libc.so.6"):
            assert (target / name).read_bytes() == (rootfs_dir / name).read_bytes()
        assert os.readlink(target / "bin") == "usr/bin"
        assert (target / "dev/console").is_char_device()
        assert os.stat(target / "usr/bin/bash").st_mode & 0o777 == 0o755


def test_spec_list_round_trip(rootfs_dir, tmp_path):
    image = tmp_path / "bash.cpio"
    spec = tmp_path / "emitted.spec"
    pack(rootfs_dir, image, "--emit-spec", spec)
    listed = nbic("cpio", "list", "--spec", image).stdout
    extracted = tmp_path / "root"
    nbic("cpio", "extract", image, extracted)
    listed_file = tmp_path / "listed.spec"
    listed_file.write_text(listed)
    again = tmp_path / "again.cpio"
    nbic("pack", "--spec", listed_file, "-o", again, env={"NBIC_ROOT": str(extracted), **EPOCH})
    assert nbic("cpio", "list", "--spec", again).stdout == listed
    assert nbic("cpio", "diff", image, again).returncode == 0

    def without_locations(text):
        return sorted(" ".join(f for i, f in enumerate(line.split()) if not (
            line.startswith("file") and i == 2)) for line in text.splitlines()
            if not line.startswith("#"))

    assert without_locations(spec.read_text()) == without_locations(listed)


def test_missing_listed_file_warns_and_strict_fails_without_output(rootfs_dir, tmp_path):
    files = tmp_path / "files.list"
    files.write_text("/usr/bin/bash\n/usr/bin/not-there\n")
    image = tmp_path / "out.cpio"
    result = nbic("pack", "--rootfs", rootfs_dir, "--files-from", files, "--init",
                  "/usr/bin/bash", "-o", image)
    assert "/usr/bin/not-there" in result.stderr
    image.unlink()
    result = nbic("pack", "--rootfs", rootfs_dir, "--files-from", files, "--init",
                  "/usr/bin/bash", "--strict", "-o", image, check=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "/usr/bin/not-there" in result.stderr
    assert list(tmp_path.iterdir()) == [files]  # no partial or temporary output


def test_bad_inputs_get_one_line_errors(tmp_path):
    cases = [
        ("pack", "--rootfs", tmp_path / "nope", "-o", tmp_path / "x.cpio"),
        ("pack", "--spec", tmp_path / "nope.spec", "-o", tmp_path / "x.cpio"),
        ("pack", "--rootfs", tmp_path, "-o", tmp_path / "x.cpio"),  # no /init
        ("pack", "--rootfs", tmp_path, "--compress", "zstd:22", "-o", tmp_path / "x.cpio"),
    ]
    for args in cases:
        result = nbic(*args, check=False)
        assert result.returncode != 0, args
        assert "Traceback" not in result.stderr and result.stderr.strip(), args
    assert not list(tmp_path.glob("*.cpio*"))


@pytest.mark.skipif(shutil.which("gzip") is None, reason="gzip missing")
def test_a_broken_rootfs_tar_is_a_clear_error(tmp_path):
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00garbage" * 10)
    result = nbic("pack", "--rootfs", broken, "--init", "/x", "-o", tmp_path / "o.cpio",
                  check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "broken.tar.gz" in result.stderr


def test_emit_spec_refuses_a_name_no_spec_line_can_hold(tmp_path):
    root = tmp_path / "rootfs"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/my tool").write_bytes(b"#!/bin/sh\n")
    (root / "chroot").write_bytes(b"#!/bin/sh\n")
    files = tmp_path / "files.list"
    files.write_text("/usr/bin/my tool\n")
    spec = tmp_path / "out.spec"
    result = nbic("pack", "--rootfs", root, "--files-from", files, "--emit-spec", spec,
                  check=False)
    assert result.returncode == 1 and "white space" in result.stderr
    assert "/usr/bin/my tool" in result.stderr and not spec.exists()


def test_emitted_spec_groups_hardlinks_on_one_line(tmp_path):
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "bin/perl").write_bytes(b"perl")
    os.link(root / "bin/perl", root / "bin/perl5")
    (root / "chroot").write_bytes(b"#!/bin/sh\n")
    files = tmp_path / "files.list"
    files.write_text("/bin/perl\n")
    spec = tmp_path / "out.spec"
    nbic("pack", "--rootfs", root, "--files-from", files, "--emit-spec", spec)
    lines = [line for line in spec.read_text().splitlines() if "perl" in line]
    assert lines == [f"file /bin/perl {root}/bin/perl 0644 {os.getuid()} {os.getgid()} "
                     "/bin/perl5"]
