"""Hostile and broken rootfs tars through `nbic pack`: every bad input is one
line naming the file and the byte offset, nothing is dropped without a word,
and a tar that is fine is read even when it looks odd."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard
from hostile_helpers import run, write_lines

from nbic.cpio.compress import Compression
from nbic.cpio.entry import FileType
from nbic.cpio.image import ImageReader, read_entries
from nbic.tree import TarTree, tar_compression

INIT = b"#!/bin/sh\nexec sh\n"


def member(name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, mode: int = 0o755,
           linkname: str = "", pax: dict[str, str] | None = None
           ) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, len(data), linkname
    info.mtime = 1_600_000_000
    if pax:
        info.pax_headers = pax
    return info, data


def tar_bytes(members, fmt=tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data else None)
    return out.getvalue()


def compressed(blob: bytes, how: str) -> bytes:
    if how == "plain":
        return blob
    if how == "gz":
        return gzip.compress(blob, mtime=0)
    return zstandard.ZstdCompressor().compress(blob)


SUFFIX = {"plain": ".tar", "gz": ".tar.gz", "zst": ".tar.zst"}


def write_tar(directory: Path, blob: bytes, how: str = "plain") -> Path:
    path = directory / f"rootfs{SUFFIX[how]}"
    path.write_bytes(compressed(blob, how))
    return path


def pack(tmp_path: Path, rootfs: Path, *paths: str, extra: tuple = ()):
    files = write_lines(tmp_path / "files.list", list(paths))
    image = tmp_path / "out.cpio"
    outcome = run("nbic", "pack", "--rootfs", rootfs, "--files-from", files, "--init",
                  "/init", "-o", image, *extra)
    return outcome, image


def image_files(image: Path) -> dict[str, bytes]:
    reader = ImageReader(io.BytesIO(image.read_bytes()))
    return {entry.name: reader.read() for entry in reader if entry.type is FileType.FILE}


def header_offsets(blob: bytes) -> dict[str, int]:
    with tarfile.open(fileobj=io.BytesIO(blob)) as archive:
        return {info.name: info.offset for info in archive}


BOTH = pytest.mark.parametrize("how", ["plain", "zst"])


# --- item 6: what made tracebacks -----------------------------------------------------

@BOTH
@pytest.mark.parametrize("mtime", ["inf", "nan", "-inf"])
def test_a_pax_mtime_that_is_not_a_number_is_one_line(tmp_path, how, mtime):
    blob = tar_bytes([member("init", INIT), member("bad", b"x", pax={"mtime": mtime})])
    rootfs = write_tar(tmp_path, blob, how)
    outcome, image = pack(tmp_path, rootfs, "/bad")
    line = outcome.one_line_error()
    offset = header_offsets(blob)["bad"]
    assert str(rootfs) in line and f"byte {offset}" in line and mtime in line
    assert not image.exists()


@BOTH
def test_a_hardlink_keeps_its_data_when_its_target_becomes_a_symlink(tmp_path, how):
    blob = tar_bytes([
        member("init", INIT),
        member("bin", kind=tarfile.DIRTYPE),
        member("bin/a", b"the data of a\n"),
        member("bin/b", kind=tarfile.LNKTYPE, linkname="bin/a"),
        member("bin/a", kind=tarfile.SYMTYPE, linkname="/etc/missing"),
    ])
    outcome, image = pack(tmp_path, write_tar(tmp_path, blob, how), "/bin/b")
    assert outcome.returncode == 0, outcome.stderr
    assert image_files(image)["bin/b"] == b"the data of a\n"


@BOTH
def test_hardlinks_that_loop_are_no_recursion(tmp_path, how):
    blob = tar_bytes([
        member("init", INIT),
        member("a", b"data\n"),
        member("b", kind=tarfile.LNKTYPE, linkname="a"),
        member("a", kind=tarfile.LNKTYPE, linkname="b"),
        member("c", kind=tarfile.LNKTYPE, linkname="c"),
    ])
    outcome, image = pack(tmp_path, write_tar(tmp_path, blob, how), "/a", "/b", "/c")
    assert outcome.returncode == 0, outcome.stderr
    files = image_files(image)
    assert files["a"] + files["b"] == b"data\n"  # one group: the data on one name
    assert "/c is a hardlink to /c" in outcome.stderr and "left out" in outcome.stderr


# --- item 8: tar sources ---------------------------------------------------------------

@BOTH
def test_files_under_parents_the_tar_lacks_are_found(tmp_path, how):
    # What `tar -cf r.tar init bin/busybox` writes: no member for bin.
    blob = tar_bytes([member("init", INIT), member("bin/busybox", b"\x7fELF busybox")])
    outcome, image = pack(tmp_path, write_tar(tmp_path, blob, how), "/bin/busybox",
                          extra=("--strict",))
    assert outcome.returncode == 0, outcome.stderr
    entries = {entry.name: entry for entry in read_entries(image)}
    assert entries["bin"].type is FileType.DIR and entries["bin"].perm == 0o755
    assert image_files(image)["bin/busybox"] == b"\x7fELF busybox"


def _three_files() -> bytes:
    return tar_bytes([member("init", INIT), member("a", b"a" * 600), member("b", b"b"),
                      member("c", b"c")])


@BOTH
def test_a_corrupt_header_in_the_middle_is_an_error_at_its_offset(tmp_path, how):
    blob = bytearray(_three_files())
    offset = header_offsets(bytes(blob))["b"]
    blob[offset + 148 : offset + 156] = b"0000000\0"  # its checksum
    rootfs = write_tar(tmp_path, bytes(blob), how)
    outcome, image = pack(tmp_path, rootfs, "/a", "/c")
    line = outcome.one_line_error()
    assert str(rootfs) in line and f"byte {offset}" in line and "corrupt" in line
    assert not image.exists()


@BOTH
def test_members_after_an_end_marker_are_an_error(tmp_path, how):
    # Concatenated tars: tarfile (and GNU tar without -i) stop at the first end.
    first = tar_bytes([member("init", INIT)])
    rootfs = write_tar(tmp_path, first + tar_bytes([member("later", b"later")]), how)
    outcome, _ = pack(tmp_path, rootfs, "/later")
    line = outcome.one_line_error()
    assert str(rootfs) in line and f"byte {len(first)}" in line


@BOTH
def test_a_tar_cut_in_a_members_data_is_an_error(tmp_path, how):
    blob = _three_files()
    cut = header_offsets(blob)["a"] + 512 + 100
    rootfs = write_tar(tmp_path, blob[:cut], how)
    outcome, _ = pack(tmp_path, rootfs, "/init")
    line = outcome.one_line_error()
    assert str(rootfs) in line and "end of data" in line


@BOTH
def test_a_tar_cut_in_a_header_is_an_error(tmp_path, how):
    blob = _three_files()
    cut = header_offsets(blob)["b"] + 100
    rootfs = write_tar(tmp_path, blob[:cut], how)
    outcome, _ = pack(tmp_path, rootfs, "/init")
    line = outcome.one_line_error()
    assert str(rootfs) in line and f"byte {cut - 100}" in line


def test_a_tar_without_end_marker_is_read(tmp_path):
    blob = _three_files()
    end = header_offsets(blob)["c"] + 1024
    outcome, image = pack(tmp_path, write_tar(tmp_path, blob[:end]), "/c", extra=("--strict",))
    assert outcome.returncode == 0, outcome.stderr
    assert image_files(image)["c"] == b"c"


@pytest.mark.parametrize("raw", [b"BZh91AY&SY", b"\x1f\x8bgz", b"\x28\xb5\x2f\xfdz",
                                 b"]", b"\x89LZO", b"\x04\x22\x4d\x18lz4",
                                 b"\x02\x21\x4c\x18lz4"])
def test_a_plain_tar_whose_first_name_looks_like_compression_is_read(tmp_path, raw):
    name = os.fsdecode(raw)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT,
                      errors="surrogateescape") as archive:
        for info, data in (member(name, b"first"), member("init", INIT)):
            archive.addfile(info, io.BytesIO(data))
    blob = out.getvalue()
    assert blob.startswith(raw) and tar_compression(blob[:512]) is None
    files = tmp_path / "files.list"
    files.write_bytes(b"/" + raw + b"\n")
    image = tmp_path / "out.cpio"
    outcome = run("nbic", "pack", "--rootfs", write_tar(tmp_path, blob), "--files-from", files,
                  "--strict", "-o", image)
    assert outcome.returncode == 0, outcome.stderr
    assert image_files(image)[name] == b"first"


def test_compressed_tars_are_still_told_apart():
    blob = _three_files()
    assert tar_compression(compressed(blob, "gz")) is Compression.GZIP
    assert tar_compression(compressed(blob, "zst")) is Compression.ZSTD
    assert tar_compression(bytes(512)) is None  # an empty tar


@BOTH
def test_a_negative_size_is_an_error_not_a_loop(tmp_path, how):
    # A size of -512 would send tarfile back to the same header, forever.
    blob = tar_bytes([member("init", INIT), member("neg", b"", pax={"size": "-512"}),
                      member("after", b"x")])
    rootfs = write_tar(tmp_path, blob, how)
    outcome, _ = pack(tmp_path, rootfs, "/after")
    line = outcome.one_line_error()
    assert str(rootfs) in line and "negative" in line and "byte 1024" in line  # after init


@BOTH
def test_names_longer_than_path_max_are_refused(tmp_path, how):
    blob = tar_bytes([member("init", INIT), member("d/" + "x" * 5000, b"x")])
    rootfs = write_tar(tmp_path, blob, how)
    outcome, _ = pack(tmp_path, rootfs, "/init")
    line = outcome.one_line_error()
    assert str(rootfs) in line and "PATH_MAX" in line


@BOTH
def test_extended_headers_are_bounded(tmp_path, how):
    big = {"comment": "x" * (2 << 20)}
    blob = tar_bytes([member("init", INIT), member("a", b"a", pax=big)])
    rootfs = write_tar(tmp_path, blob, how)
    outcome, _ = pack(tmp_path, rootfs, "/init")
    line = outcome.one_line_error()
    assert str(rootfs) in line and f"byte {header_offsets(blob)['a']}" in line


def test_global_headers_are_bounded(tmp_path):
    # tarfile copies global PAX headers into every later member.
    comment = member("pax_global_header", b"52 comment=0123456789012345678901234567890123456789\n",
                     kind=tarfile.XGLTYPE)
    outcome, _ = pack(tmp_path, write_tar(tmp_path, tar_bytes([comment, member("init", INIT)])),
                      "/init")
    assert outcome.returncode == 0, outcome.stderr  # what git archive writes is fine
    huge = member("pax_global_header", b"".join(b"%d k%05d=\n" % (11, i) for i in range(7000)),
                  kind=tarfile.XGLTYPE)
    rootfs = write_tar(tmp_path, tar_bytes([huge, member("init", INIT)]))
    outcome, _ = pack(tmp_path, rootfs, "/init")
    line = outcome.one_line_error()
    assert str(rootfs) in line and "global" in line and "byte 0" in line


def test_the_tar_tree_reads_a_stdin_tar_like_a_file(tmp_path):
    blob = tar_bytes([member("init", INIT), member("bin/sh", b"sh")])
    files = write_lines(tmp_path / "files.list", ["/bin/sh"])
    image = tmp_path / "out.cpio"
    with open(write_tar(tmp_path, blob, "gz"), "rb") as stdin:
        outcome = run("nbic", "pack", "--rootfs", "-", "--files-from", files, "-o", image,
                      stdin=stdin)
    assert outcome.returncode == 0, outcome.stderr
    assert image_files(image)["bin/sh"] == b"sh"


def test_gnu_tar_without_parent_members(tmp_path):
    # The real tool, the way the issue made it.
    root = tmp_path / "src"
    (root / "bin").mkdir(parents=True)
    (root / "init").write_bytes(INIT)
    (root / "bin/busybox").write_bytes(b"busybox")
    rootfs = tmp_path / "r.tar"
    subprocess.run(["tar", "-cf", rootfs, "-C", root, "init", "bin/busybox"], check=True)
    tree = TarTree(rootfs)
    try:
        assert tree.resolve("/bin/busybox").target == "bin/busybox"
        assert tree.open("bin/busybox").read() == b"busybox"
    finally:
        tree.close()
