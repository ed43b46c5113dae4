"""The image reader and writer against the real tools (GNU cpio, bsdtar), images
of several segments, and malformed input."""

from __future__ import annotations

import bz2
import io
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cpio_helpers import (
    BIN,
    IS_ROOT,
    PAST,
    archive,
    bsdtar_cpio,
    gnu_cpio,
    make_tree,
    member,
    need,
    pattern,
    run_tool,
    walk,
)

from nbic.cpio.compress import Compression, CompressionSpec, compressed_writer
from nbic.cpio.entry import Entry, FileType
from nbic.cpio.image import ImageReader
from nbic.errors import CompressionError, FormatError
from nbic.tools.listing import long_format

# --- reading what GNU cpio and bsdtar write ------------------------------------------


def _key(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", ".")) or "."


def _check_against_tree(image: bytes, root: Path) -> None:
    """Every entry matches the file it was made from, and every file is there."""
    reader = ImageReader(io.BytesIO(image), "test image")
    seen = set()
    group_data: dict[object, bytes] = {}
    group_names: dict[object, list[str]] = {}
    for entry in reader:
        data = reader.read()
        name = _key(entry.name)
        seen.add(name)
        path = root / name
        info = os.lstat(path)
        assert entry.mode == info.st_mode, name
        assert (entry.uid, entry.gid) == (info.st_uid, info.st_gid), name
        assert entry.mtime == int(info.st_mtime), name
        assert entry.nlink == info.st_nlink, name
        if stat.S_ISREG(info.st_mode):
            if info.st_nlink > 1:
                assert entry.link_key is not None, name
                group_names.setdefault(entry.link_key, []).append(name)
                if data:
                    group_data[entry.link_key] = data
            else:
                assert entry.size == info.st_size == len(data), name
                assert data == path.read_bytes(), name
        elif stat.S_ISLNK(info.st_mode):
            assert entry.linkname == os.readlink(path), name
            assert entry.size == len(os.fsencode(os.readlink(path))), name
        elif stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
            assert (entry.rdevmajor, entry.rdevminor) == (os.major(info.st_rdev),
                                                           os.minor(info.st_rdev)), name
            assert entry.is_device
        else:
            assert not data, name
    assert seen == set(walk(root))
    # Hardlink groups: one inode, the data on one of its names.
    assert group_names, "the tree has a hardlink pair"
    for key, names in group_names.items():
        assert len(names) == 2
        assert group_data[key] == (root / names[0]).read_bytes()


def _tree_archives(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    root = tmp_path / "tree"
    make_tree(root)
    made = {}
    for label, data in (("gnu-newc", gnu_cpio(root, "newc")), ("gnu-crc", gnu_cpio(root, "crc")),
                        ("bsdtar-newc", bsdtar_cpio(root))):
        path = tmp_path / f"{label}.cpio"
        path.write_bytes(data)
        made[label] = (path, root)
    return made


@pytest.mark.parametrize("label", ["gnu-newc", "gnu-crc", "bsdtar-newc"])
def test_reader_matches_tree(tmp_path, label):
    path, root = _tree_archives(tmp_path)[label]
    _check_against_tree(path.read_bytes(), root)


@pytest.mark.parametrize("label", ["gnu-newc", "gnu-crc", "bsdtar-newc"])
@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata", "America/New_York"])
def test_long_listing_is_gnu_cpio(tmp_path, label, tz):
    need("cpio")
    path, _root = _tree_archives(tmp_path)[label]
    env = {**os.environ, "TZ": tz, "LC_ALL": "C.UTF-8"}
    with path.open("rb") as stdin:
        expected = subprocess.run(["cpio", "-tv", "--numeric-uid-gid", "--quiet"], stdin=stdin,
                                  capture_output=True, env=env, check=True).stdout
    ours = run_tool("list", "-v", str(path), env={"TZ": tz, "LC_ALL": "C.UTF-8"}).stdout
    assert ours.decode() == expected.decode()
    # Both an old and a recent date are in there, and a device line when root.
    text = ours.decode()
    assert " 2001 " in text
    if IS_ROOT:
        assert "  1,   3 " in text and "  7,   0 " in text


def test_short_listing_is_gnu_cpio(tmp_path):
    need("cpio")
    path, _root = _tree_archives(tmp_path)["bsdtar-newc"]
    with path.open("rb") as stdin:
        expected = subprocess.run(["cpio", "-t", "--quiet"], stdin=stdin, capture_output=True,
                                  check=True).stdout
    assert run_tool("list", str(path)).stdout == expected


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_long_format_date_rules(utc):
    now = 1_700_000_000  # 2023-11-14 22:13:20 UTC
    recent = Entry("f", FileType.FILE, mtime=now - 86400, size=5)
    old = Entry("f", FileType.FILE, mtime=now - 200 * 86400)
    borderline = Entry("f", FileType.FILE, mtime=now - 6 * 30 * 86400)
    future = Entry("f", FileType.FILE, mtime=now + 3600)
    dev = Entry("dev/null", FileType.CHAR, perm=0o666, rdevmajor=1, rdevminor=3,
                uid=12345678, gid=7, mtime=now)
    link = Entry("l", FileType.SYMLINK, perm=0o777, linkname="/t", size=2, mtime=now)
    assert long_format(recent, now) == \
        "-rw-r--r--   1 0        0               5 Nov 13 22:13 f"
    assert long_format(old, now).endswith(" Apr 28  2023 f")
    assert long_format(borderline, now).endswith(" May 18 22:13 f")
    assert long_format(future, now).endswith(" Nov 14  2023 f")
    assert long_format(dev, now) == \
        "crw-rw-rw-   1 12345678 7          1,   3 Nov 14 22:13 dev/null"
    assert long_format(link, now).endswith(" Nov 14 22:13 l -> /t")


# --- what nbic writes, read by GNU cpio and bsdtar -------------------------------------

BUSYBOX = pattern(4097, 3)


def _written_members():
    return [
        member("bin", FileType.DIR, perm=0o755),
        member("bin/busybox", data=BUSYBOX, perm=0o755, link_key="bb", mtime=PAST),
        member("bin/sh", data=BUSYBOX, perm=0o755, link_key="bb", mtime=PAST),
        member("bin/ls", data=BUSYBOX, perm=0o755, link_key="bb", mtime=PAST),
        member("bin/ash", FileType.SYMLINK, perm=0o777, linkname="busybox"),
        member("bin/su", data=b"su\n", perm=0o4755),
        member("dev", FileType.DIR, perm=0o755),
        member("dev/console", FileType.CHAR, perm=0o600, rdevmajor=5, rdevminor=1),
        member("dev/sda", FileType.BLOCK, perm=0o660, gid=6, rdevmajor=8, rdevminor=0),
        member("dev/initctl", FileType.FIFO, perm=0o600),
        member("etc", FileType.DIR, perm=0o755),
        member("etc/hostname", data=b"nbic\n", uid=1000, gid=100, mtime=PAST),
        member("etc/empty", perm=0o600),
        member("etc/odd", data=pattern(5)),
        member("etc/mtab", FileType.SYMLINK, perm=0o777, linkname="/proc/self/mounts"),
        member("tmp", FileType.DIR, perm=0o1777),
    ]


def _expected_written():
    """name -> (mode string, uid, gid, device or None, link target or None)"""
    result = {}
    for m in _written_members():
        e = m.entry
        device = (e.rdevmajor, e.rdevminor) if e.is_device else None
        target = e.linkname if e.type is FileType.SYMLINK else None
        result[e.name] = (e.mode_string(), e.uid, e.gid, device, target)
    return result


def _written(tmp_path: Path) -> Path:
    path = tmp_path / "written.cpio"
    path.write_bytes(archive(_written_members(), epoch=PAST + 10))
    return path


def test_written_archive_padding_and_trailer(tmp_path):
    data = _written(tmp_path).read_bytes()
    assert len(data) % 512 == 0
    body = data.rstrip(b"\0")
    assert body.endswith(b"TRAILER!!!")
    header = body[-len("TRAILER!!!") - 110:-len("TRAILER!!!")]
    assert header.startswith(b"070701")
    assert int(header[94:102], 16) == len("TRAILER!!!") + 1  # namesize with the NUL
    assert int(header[54:62], 16) == 0  # filesize
    # Every header starts 4-byte aligned.
    reader = ImageReader(io.BytesIO(data))
    offsets = [entry.offset for entry in reader]
    assert all(offset % 4 == 0 for offset in offsets)
    # Hardlinks: one inode, data once, on the last name.
    entries = {e.name: e for e in ImageReader(io.BytesIO(data))}
    group = [entries[n] for n in ("bin/busybox", "bin/ls", "bin/sh")]
    assert len({e.ino for e in group}) == 1 and all(e.nlink == 3 for e in group)
    assert [e.size for e in group] == [0, 0, len(BUSYBOX)]
    assert data.count(BUSYBOX) == 1


def _parse_cpio_tv(text: str) -> dict[str, tuple]:
    result = {}
    for line in text.splitlines():
        mode, _nlink, uid, gid, rest = line.split(None, 4)
        device = None
        if mode[0] in "cb":
            major, rest = rest.split(",", 1)
            minor, rest = rest.split(None, 1)
            device = (int(major), int(minor))
        else:
            _size, rest = rest.split(None, 1)
        _month, _day, _year, name = rest.split(None, 3)
        target = None
        if mode[0] == "l":
            name, target = name.split(" -> ")
        result[name] = (mode, int(uid), int(gid), device, target)
    return result


def _parse_bsdtar_tv(text: str) -> dict[str, tuple]:
    result = {}
    for line in text.splitlines():
        mode, _nlink, uid, gid, size, _month, _day, _year, name = line.split(None, 8)
        device = tuple(int(n) for n in size.split(",")) if mode[0] in "cb" else None
        target = None
        if mode[0] == "l":
            name, target = name.split(" -> ")
        name = name.split(" link to ")[0]
        result[name] = (mode, int(uid), int(gid), device, target)
    return result


def test_gnu_cpio_lists_what_nbic_writes(tmp_path):
    need("cpio")
    path = _written(tmp_path)
    with path.open("rb") as stdin:
        listing = subprocess.run(["cpio", "-tv", "--numeric-uid-gid", "--quiet"], stdin=stdin,
                                 capture_output=True, check=True, text=True).stdout
    assert _parse_cpio_tv(listing) == _expected_written()
    assert run_tool("list", "-v", str(path), env={"TZ": "UTC"}).stdout.decode() == \
        subprocess.run(["cpio", "-tv", "--numeric-uid-gid", "--quiet"], stdin=path.open("rb"),
                       capture_output=True, check=True, text=True, env={**os.environ,
                                                                        "TZ": "UTC"}).stdout


def test_bsdtar_lists_what_nbic_writes(tmp_path):
    need("bsdtar")
    path = _written(tmp_path)
    listing = subprocess.run(["bsdtar", "-tvf", str(path)], capture_output=True, check=True,
                             text=True).stdout
    assert _parse_bsdtar_tv(listing) == _expected_written()


def _check_extracted(root: Path, *, modes: bool) -> None:
    for m in _written_members():
        e = m.entry
        path = root / e.name
        info = os.lstat(path)
        assert stat.S_IFMT(info.st_mode) == int(e.type), e.name
        if modes:
            assert stat.S_IMODE(info.st_mode) == e.perm, e.name
            assert (info.st_uid, info.st_gid) == (e.uid, e.gid), e.name
        if e.type is FileType.FILE:
            assert path.read_bytes() == (BUSYBOX if e.link_key else b"" if not e.size
                                         else {"bin/su": b"su\n", "etc/hostname": b"nbic\n",
                                               "etc/odd": pattern(5)}[e.name]), e.name
            assert int(info.st_mtime) == e.mtime, e.name
        elif e.type is FileType.SYMLINK:
            assert os.readlink(path) == e.linkname
        elif e.is_device:
            assert (os.major(info.st_rdev), os.minor(info.st_rdev)) == \
                (e.rdevmajor, e.rdevminor)
    inodes = {os.lstat(root / n).st_ino for n in ("bin/busybox", "bin/sh", "bin/ls")}
    assert len(inodes) == 1
    assert os.lstat(root / "bin/sh").st_nlink == 3


@pytest.mark.skipif(not IS_ROOT, reason="device nodes need root (CI runs as root)")
def test_gnu_cpio_extracts_what_nbic_writes(tmp_path):
    need("cpio")
    path = _written(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    with path.open("rb") as stdin:
        subprocess.run(["cpio", "-idm", "--quiet"], stdin=stdin, cwd=out, check=True)
    _check_extracted(out, modes=True)


def test_bsdtar_extracts_what_nbic_writes(tmp_path):
    need("bsdtar")
    path = _written(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run(["bsdtar", "-xpf", str(path), "-C", str(out)], capture_output=True)
    if IS_ROOT:
        assert result.returncode == 0, result.stderr
        _check_extracted(out, modes=True)
    else:  # bsdtar cannot make the device nodes; check the rest
        for name in ("bin/sh", "etc/hostname", "bin/ash"):
            assert os.path.lexists(out / name)


# --- images of several segments ----------------------------------------------------


def _segment(index: int) -> bytes:
    return archive([member(f"seg{index}", FileType.DIR, perm=0o755),
                    member(f"seg{index}/data", data=pattern(1000 + index, index)),
                    member("shared", data=f"from segment {index}\n".encode())])


def _compress(data: bytes, method: Compression) -> bytes:
    if method is Compression.BZIP2:
        return bz2.compress(data)
    out = io.BytesIO()
    with compressed_writer(out, CompressionSpec(method)) as stream:
        stream.write(data)
    return out.getvalue()


def _multi_segment_image() -> tuple[bytes, list[tuple[str, int]]]:
    """plain + zero padding + zstd (the zstd tool) + zstd, gzip, xz (nbic) + bzip2 + lz4."""
    zstd = need("zstd")
    parts = [_segment(0) + b"\0" * 1024]
    layout = [("none", 0)]
    zstd_cli = subprocess.run([zstd, "-q", "-c"], input=_segment(1), capture_output=True,
                              check=True).stdout
    offset = len(parts[0])
    parts.append(zstd_cli)
    layout.append(("zstd", offset))
    offset += len(zstd_cli)
    # lz4's legacy format has no end marker: it runs to the end of the image.
    methods = [Compression.ZSTD, Compression.GZIP, Compression.XZ, Compression.BZIP2,
               Compression.LZ4]
    for index, method in enumerate(methods, 2):
        data = _compress(_segment(index), method)
        if method is Compression.GZIP:
            data += b"\0" * 8  # padding between compressed segments too
        parts.append(data)
        layout.append((method.value, offset))
        offset += len(data)
    return b"".join(parts), layout


def test_segments_are_read_in_order(tmp_path):
    image, layout = _multi_segment_image()
    reader = ImageReader(io.BytesIO(image))
    seen = []
    for entry in reader:
        data = reader.read()
        seen.append((entry.archive, entry.name, data))
    assert [s.compression.value for s in reader.segments] == [m for m, _ in layout]
    assert [s.offset for s in reader.segments] == [o for _, o in layout]
    expected = []
    for index in range(len(layout)):
        expected += [(index, f"seg{index}", b""),
                     (index, f"seg{index}/data", pattern(1000 + index, index)),
                     (index, "shared", f"from segment {index}\n".encode())]
    assert sorted(seen) == sorted(expected)
    assert [s[0] for s in seen] == sorted(s[0] for s in seen)

    path = tmp_path / "multi.img"
    path.write_bytes(image)
    lines = run_tool("list", "--segments", str(path)).stdout.decode().splitlines()
    assert lines == [f"{i} {method} {offset} 3" for i, (method, offset) in enumerate(layout)]


def test_segments_from_a_pipe(tmp_path):
    image, layout = _multi_segment_image()
    names = run_tool("list", "-", stdin=image).stdout.decode().splitlines()
    assert names.count("shared") == len(layout)
    assert "seg6/data" in names
    lines = run_tool("list", "--segments", "-", stdin=image).stdout.decode().splitlines()
    assert len(lines) == len(layout)
    # The same through `python -m nbic.cli cpio list`.
    result = subprocess.run([sys.executable, "-m", "nbic.cli", "cpio", "list", "-"],
                            input=image, capture_output=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == names


def test_gnu_cpio_segments_with_real_tools(tmp_path):
    """A Debian-style image: plain early cpio, then a compressed main one (xz and lz4 -l)."""
    root = tmp_path / "tree"
    make_tree(root)
    early = gnu_cpio(root)
    for tool, args in (("xz", ["--check=crc32", "-c"]), ("lz4", ["-l", "-c"]),
                       ("gzip", ["-c"])):
        need(tool)
        compressed = subprocess.run([tool, *args], input=early, capture_output=True,
                                    check=True).stdout
        image = early + compressed
        reader = ImageReader(io.BytesIO(image))
        names = [entry.name for entry in reader]
        assert len(names) == 2 * len(walk(root))
        assert [s.compression.value for s in reader.segments] == ["none", tool]


# --- malformed input ---------------------------------------------------------------


def _valid() -> bytes:
    return archive([member("a", data=b"hello world\n"), member("b", data=pattern(300))])


def _malformed_cases() -> dict[str, bytes]:
    valid = _valid()
    second = valid.index(b"070701", 1)
    zstd = _compress(valid, Compression.ZSTD)
    corrupt = bytearray(zstd)
    for i in range(12, len(corrupt) - 8):
        corrupt[i] ^= 0x5A
    absurd = bytearray(valid)
    absurd[94:102] = b"FFFFFFFF"
    nonhex = bytearray(valid)
    nonhex[14:22] = b"0000ZZZZ"
    return {
        "bad magic at the start": b"070799" + valid[6:],
        "bad magic of a later entry": valid[:second] + b"070709" + valid[second + 6:],
        "odc magic": b"070707" + valid[6:],
        "truncated header": valid[:60],
        "truncated name": valid[:112],
        "truncated data": valid[: valid.index(b"hello") + 5],
        "absurd namesize": bytes(absurd),
        "non-hex field": bytes(nonhex),
        "corrupt zstd": bytes(corrupt),
        "truncated zstd": zstd[: len(zstd) // 2],
        "truncated gzip": _compress(valid, Compression.GZIP)[:20],
        "garbage after an archive": valid + b"garbage!" * 4,
        "garbage inside compressed data": _compress(valid + b"junk" * 8, Compression.GZIP),
    }


# Inputs without any archive: an error, but there is no offset worth naming.
EMPTY_CASES = {"no archive at all": b"\0" * 1024, "empty": b""}


@pytest.mark.parametrize("case", sorted(_malformed_cases()))
def test_malformed_input_raises_format_error(case):
    data = _malformed_cases()[case]
    reader = ImageReader(io.BytesIO(data), "bad.img")
    with pytest.raises(FormatError) as info:
        for _entry in reader:
            reader.read()
    assert "byte" in str(info.value)
    if "zstd" in case:
        assert isinstance(info.value, CompressionError)


@pytest.mark.parametrize("case", sorted(_malformed_cases()))
def test_malformed_input_cli_says_one_line(tmp_path, case):
    path = tmp_path / "bad.img"
    path.write_bytes(_malformed_cases()[case])
    result = run_tool("list", str(path), check=1)
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("cpio-list: error: ") and "byte" in lines[0]
    assert "Traceback" not in result.stderr.decode()


def test_malformed_input_through_nbic_cpio(tmp_path):
    path = tmp_path / "bad.img"
    path.write_bytes(b"070701" + b"0" * 200)
    result = subprocess.run([sys.executable, "-m", "nbic.cli", "cpio", "list", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nbic cpio list: error: "), lines
    assert "byte" in lines[0]


def test_diff_trouble_is_status_2_not_different(tmp_path):
    path = tmp_path / "bad.img"
    path.write_bytes(b"garbage")
    result = subprocess.run([sys.executable, "-m", "nbic.cli", "cpio", "diff", str(path),
                             str(path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("nbic cpio diff: error: ")


@pytest.mark.parametrize("case", sorted(EMPTY_CASES))
def test_image_without_archive(tmp_path, case):
    with pytest.raises(FormatError, match="no cpio archive"):
        list(ImageReader(io.BytesIO(EMPTY_CASES[case]), "bad.img"))
    path = tmp_path / "bad.img"
    path.write_bytes(EMPTY_CASES[case])
    lines = run_tool("list", str(path), check=1).stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cpio-list: error: "), lines


def test_missing_image_is_one_line(tmp_path):
    result = run_tool("list", str(tmp_path / "nope.img"), check=1)
    assert result.stderr.decode().startswith("cpio-list: error: cannot open image")


def test_console_scripts_installed():
    for name in ("list", "extract", "du", "diff", "cat"):
        assert (BIN / f"cpio-{name}").exists() or os.environ.get("CI") is None
