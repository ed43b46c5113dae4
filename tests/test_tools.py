"""The cpio tools: extract (and its safety), list --spec, du, diff, cat."""

from __future__ import annotations

import io
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cpio_helpers import (
    IS_ROOT,
    PAST,
    RECENT,
    archive,
    bsdtar_cpio,
    gnu_cpio,
    make_tree,
    member,
    pattern,
    raw_archive,
    run_tool,
    walk,
)

from nbic.cpio.archive import Member, write_archive
from nbic.cpio.compress import Compression, CompressionSpec, compressed_writer
from nbic.cpio.entry import Entry, FileType
from nbic.cpio.image import read_entries
from nbic.cpio.spec import parse_spec
from nbic.errors import NbicError
from nbic.tools.cat import cat
from nbic.tools.diff import diff_images
from nbic.tools.extract import ExtractResult, extract
from nbic.usage import human_size


def gzip(data: bytes) -> bytes:
    out = io.BytesIO()
    with compressed_writer(out, CompressionSpec(Compression.GZIP, 1)) as stream:
        stream.write(data)
    return out.getvalue()


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


# --- extract -----------------------------------------------------------------------


def _compare_trees(original: Path, extracted: Path, *, owners: bool) -> None:
    assert sorted(walk(extracted)) == sorted(walk(original))
    inodes: dict[int, set[int]] = {}
    for name in walk(original):
        want, got = os.lstat(original / name), os.lstat(extracted / name)
        assert stat.S_IFMT(got.st_mode) == stat.S_IFMT(want.st_mode), name
        if not stat.S_ISLNK(want.st_mode):
            assert stat.S_IMODE(got.st_mode) == stat.S_IMODE(want.st_mode), name
        if owners:
            assert (got.st_uid, got.st_gid) == (want.st_uid, want.st_gid), name
        assert int(got.st_mtime) == int(want.st_mtime), name
        if stat.S_ISREG(want.st_mode):
            assert (extracted / name).read_bytes() == (original / name).read_bytes(), name
            inodes.setdefault(want.st_ino, set()).add(got.st_ino)
        elif stat.S_ISLNK(want.st_mode):
            assert os.readlink(extracted / name) == os.readlink(original / name)
        elif stat.S_ISCHR(want.st_mode) or stat.S_ISBLK(want.st_mode):
            assert got.st_rdev == want.st_rdev, name
    # Hardlinked in the original <=> hardlinked in the copy.
    assert all(len(copies) == 1 for copies in inodes.values())
    assert len({next(iter(c)) for c in inodes.values()}) == len(inodes)


@pytest.mark.parametrize("maker", [gnu_cpio, bsdtar_cpio])
def test_extract_recreates_the_tree(tmp_path, maker):
    root = tmp_path / "tree"
    make_tree(root)
    image = write(tmp_path / "tree.cpio", maker(root))
    run_tool("extract", image, str(tmp_path / "out"))
    _compare_trees(root, tmp_path / "out", owners=IS_ROOT)


def test_extract_from_stdin_compressed(tmp_path):
    root = tmp_path / "tree"
    make_tree(root)
    data = gzip(gnu_cpio(root))
    run_tool("extract", "-", str(tmp_path / "out"), stdin=data)
    _compare_trees(root, tmp_path / "out", owners=IS_ROOT)


def test_extract_what_nbic_writes(tmp_path):
    members = [
        member("bin", FileType.DIR, perm=0o555, mtime=PAST),
        member("bin/a", data=b"shared\n", link_key=1, perm=0o755),
        member("bin/b", data=b"shared\n", link_key=1, perm=0o755),
        member("dev", FileType.DIR, perm=0o755),
        member("dev/null", FileType.CHAR, perm=0o666, rdevmajor=1, rdevminor=3),
        member("run", FileType.FIFO, perm=0o640, mtime=RECENT),
        member("link", FileType.SYMLINK, perm=0o777, linkname="bin/a", mtime=PAST),
    ]
    image = write(tmp_path / "img", archive(members))
    out = tmp_path / "out"
    extract(image, str(out))
    assert os.lstat(out / "bin/a").st_ino == os.lstat(out / "bin/b").st_ino
    assert (out / "bin/b").read_bytes() == b"shared\n"
    assert stat.S_IMODE(os.lstat(out / "bin").st_mode) == 0o555
    assert int(os.lstat(out / "bin").st_mtime) == PAST
    assert stat.S_ISFIFO(os.lstat(out / "run").st_mode)
    assert stat.S_IMODE(os.lstat(out / "run").st_mode) == 0o640
    assert os.readlink(out / "link") == "bin/a"
    assert int(os.lstat(out / "link").st_mtime) == PAST
    if IS_ROOT:
        assert os.lstat(out / "dev/null").st_rdev == os.makedev(1, 3)
    else:
        assert not os.path.lexists(out / "dev/null")


def test_extract_skips_devices_when_not_root(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    image = write(tmp_path / "img", archive([
        member("dev", FileType.DIR, perm=0o755),
        member("dev/sda", FileType.BLOCK, perm=0o660, rdevmajor=8),
        member("dev/log", FileType.SOCKET, perm=0o666),
        member("f", data=b"x", uid=4321)]))
    nbic_log = logging.getLogger("nbic")
    nbic_log.addHandler(caplog.handler)  # whether or not it propagates to the root
    try:
        with caplog.at_level(logging.WARNING, logger="nbic"):
            assert extract(image, str(tmp_path / "out")) == ExtractResult(4, 2)
    finally:
        nbic_log.removeHandler(caplog.handler)
    assert not os.path.lexists(tmp_path / "out/dev/sda")
    assert not os.path.lexists(tmp_path / "out/dev/log")
    assert (tmp_path / "out/f").read_bytes() == b"x"
    assert (tmp_path / "out/f").stat().st_uid == os.getuid()  # no chown when not root
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "dev/sda" in messages and "dev/log" in messages


def _hardlink_pair(data_on: str, ino: int = 7) -> list[tuple[Entry, bytes]]:
    """Two names of one inode, the data on the first (tar-like) or last (cpio) name."""
    first = Entry("a", FileType.FILE, nlink=2, ino=ino, size=4 if data_on == "first" else 0)
    last = Entry("sub/b", FileType.FILE, nlink=2, ino=ino, size=4 if data_on == "last" else 0)
    return [(Entry("sub", FileType.DIR, perm=0o755, nlink=2, ino=1), b""),
            (first, b"data" if data_on == "first" else b""),
            (last, b"data" if data_on == "last" else b"")]


@pytest.mark.parametrize("data_on", ["first", "last"])
def test_extract_hardlink_data_on_any_name(tmp_path, data_on):
    image = write(tmp_path / "img", raw_archive(_hardlink_pair(data_on)))
    out = tmp_path / "out"
    extract(image, str(out))
    assert (out / "a").read_bytes() == (out / "sub/b").read_bytes() == b"data"
    assert os.lstat(out / "a").st_ino == os.lstat(out / "sub/b").st_ino
    assert os.lstat(out / "a").st_nlink == 2


def test_extract_later_entries_replace_earlier(tmp_path):
    first = raw_archive([
        (Entry("f", FileType.FILE, size=3, ino=1), b"old"),
        (Entry("d", FileType.DIR, perm=0o755, ino=2), b""),
        (Entry("d/inner", FileType.FILE, size=1, ino=3), b"i"),
        (Entry("l", FileType.SYMLINK, linkname="f", perm=0o777, ino=4), b""),
        (Entry("x", FileType.DIR, perm=0o755, ino=5), b""),
    ])
    second = raw_archive([
        (Entry("f", FileType.SYMLINK, linkname="elsewhere", perm=0o777, ino=1), b""),
        (Entry("d", FileType.DIR, perm=0o700, mtime=PAST, ino=2), b""),
        (Entry("l", FileType.FILE, size=3, perm=0o600, ino=4), b"new"),
        (Entry("x", FileType.FILE, size=1, ino=5), b"!"),  # an empty dir can go
    ])
    image = write(tmp_path / "img", first + gzip(second))
    out = tmp_path / "out"
    extract(image, str(out))
    assert os.readlink(out / "f") == "elsewhere"
    assert (out / "d/inner").read_bytes() == b"i"
    assert stat.S_IMODE(os.lstat(out / "d").st_mode) == 0o700
    assert int(os.lstat(out / "d").st_mtime) == PAST
    assert (out / "l").read_bytes() == b"new" and not (out / "l").is_symlink()
    assert stat.S_IMODE(os.lstat(out / "l").st_mode) == 0o600
    assert (out / "x").read_bytes() == b"!"


def test_extract_refuses_to_replace_a_full_directory(tmp_path):
    image = write(tmp_path / "img", raw_archive([
        (Entry("d", FileType.DIR, perm=0o755, ino=1), b""),
        (Entry("d/x", FileType.FILE, ino=2), b""),
        (Entry("d", FileType.FILE, size=1, ino=3), b"!")]))
    result = run_tool("extract", image, str(tmp_path / "out"), check=1)
    assert "'d'" in result.stderr.decode() and "directory" in result.stderr.decode()


def test_extract_root_entry_and_dot_slash_names(tmp_path):
    image = write(tmp_path / "img", raw_archive([
        (Entry(".", FileType.DIR, perm=0o750, mtime=PAST, ino=1), b""),
        (Entry("./etc", FileType.DIR, perm=0o755, ino=2), b""),
        (Entry("./etc/motd", FileType.FILE, size=2, ino=3), b"hi"),
        (Entry("implicit/parent/file", FileType.FILE, size=1, ino=4), b"p")]))
    out = tmp_path / "out"
    extract(image, str(out))
    assert (out / "etc/motd").read_bytes() == b"hi"
    assert (out / "implicit/parent/file").read_bytes() == b"p"
    assert stat.S_IMODE(os.lstat(out).st_mode) == 0o750
    assert int(os.lstat(out).st_mtime) == PAST


# --- extract safety ----------------------------------------------------------------


def _unsafe_cases(tmp_path: Path) -> dict[str, tuple[list[tuple[Entry, bytes]], list[Path]]]:
    """case -> (entries, paths outside the target that must not appear)"""
    outside = tmp_path / "outside"
    somewhere = tmp_path / "somewhere"
    return {
        "absolute": ([(Entry(str(outside / "passwd"), FileType.FILE, size=4), b"root")],
                     [outside / "passwd"]),
        "etc-passwd": ([(Entry("/etc/passwd-nbic-test", FileType.FILE, size=4), b"root")],
                       [Path("/etc/passwd-nbic-test")]),
        "dotdot": ([(Entry("../x", FileType.FILE, size=1), b"x")], [tmp_path / "x"]),
        "nested-dotdot": ([(Entry("a/../../x", FileType.FILE, size=1), b"x")],
                          [tmp_path / "x"]),
        "dotdot-dir": ([(Entry("../evil-dir", FileType.DIR, perm=0o755), b"")],
                       [tmp_path / "evil-dir"]),
        "through-absolute-symlink": (
            [(Entry("a", FileType.SYMLINK, linkname=str(somewhere), perm=0o777), b""),
             (Entry("a/x", FileType.FILE, size=1), b"x")],
            [somewhere / "x"]),
        "through-relative-symlink": (
            [(Entry("b", FileType.SYMLINK, linkname="../somewhere", perm=0o777), b""),
             (Entry("b/x", FileType.FILE, size=1), b"x")],
            [somewhere / "x"]),
        "through-symlink-dir-entry": (
            [(Entry("c", FileType.SYMLINK, linkname=str(somewhere), perm=0o777), b""),
             (Entry("c/newdir", FileType.DIR, perm=0o755), b"")],
            [somewhere / "newdir"]),
        "through-nested-symlink": (
            [(Entry("d", FileType.DIR, perm=0o755), b""),
             (Entry("d/e", FileType.SYMLINK, linkname="../../somewhere", perm=0o777), b""),
             (Entry("d/e/f/g", FileType.FILE, size=1), b"x")],
            [somewhere / "f"]),
    }


@pytest.mark.parametrize("case", ["absolute", "etc-passwd", "dotdot", "nested-dotdot",
                                  "dotdot-dir", "through-absolute-symlink",
                                  "through-relative-symlink", "through-symlink-dir-entry",
                                  "through-nested-symlink"])
def test_extract_refuses_unsafe_names(tmp_path, case):
    (tmp_path / "somewhere").mkdir()
    entries, forbidden = _unsafe_cases(tmp_path)[case]
    image = write(tmp_path / "img", raw_archive(entries))
    target = tmp_path / "target"
    assert extract(image, str(target)) == ExtractResult(len(entries), 1)
    for path in forbidden:
        assert not os.path.lexists(path), path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img", "somewhere", "target"]
    assert list((tmp_path / "somewhere").iterdir()) == []
    # The CLI: a warning naming the entry and its offset, a summary, exit 1.
    result = run_tool("extract", image, str(tmp_path / "target2"), check=1)
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 2, lines
    offset = read_entries(image)[-1].offset
    assert lines[0].startswith(f"nbic: warning: byte {offset} of {image}: refusing to extract")
    assert repr(entries[-1][0].name) in lines[0]
    assert lines[1] == f"cpio-extract: error: {image}: 1 of {len(entries)} entries were " \
        "not extracted"
    for path in forbidden:
        assert not os.path.lexists(path), path


def test_extract_never_writes_through_a_symlink_it_replaces(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    image = write(tmp_path / "img", raw_archive([
        (Entry("v", FileType.SYMLINK, linkname=str(victim), perm=0o777), b""),
        (Entry("v", FileType.FILE, size=5, perm=0o644), b"owned")]))
    out = tmp_path / "out"
    extract(image, str(out))
    assert victim.read_bytes() == b"precious"
    assert (out / "v").read_bytes() == b"owned" and not (out / "v").is_symlink()


def test_extract_hardlink_never_targets_a_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    image = write(tmp_path / "img", raw_archive([
        (Entry("a", FileType.FILE, nlink=2, ino=9, size=0), b""),
        (Entry("a", FileType.SYMLINK, linkname=str(victim), perm=0o777, ino=10), b""),
        (Entry("b", FileType.FILE, nlink=2, ino=9, size=5), b"owned")]))
    out = tmp_path / "out"
    extract(image, str(out))
    assert victim.read_bytes() == b"precious"
    assert (out / "b").read_bytes() == b"owned"
    assert os.readlink(out / "a") == str(victim)


def test_extract_refuses_a_symlink_already_in_the_target(tmp_path):
    (tmp_path / "somewhere").mkdir()
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(tmp_path / "somewhere", target / "evil")
    image = write(tmp_path / "img", raw_archive([(Entry("evil/x", FileType.FILE, size=1),
                                                  b"x")]))
    assert extract(image, str(target)).skipped == 1
    assert not (tmp_path / "somewhere" / "x").exists()


# --- list --spec ---------------------------------------------------------------------


def _spec_image(tmp_path: Path) -> str:
    early = archive([member("etc", FileType.DIR, perm=0o755),
                     member("etc/version", data=b"early\n"),
                     member("gone-later", data=b"x")])
    main = archive([
        member("bin", FileType.DIR, perm=0o755),
        member("bin/busybox", data=pattern(5000), perm=0o755, link_key="bb"),
        member("bin/sh", data=pattern(5000), perm=0o755, link_key="bb"),
        member("bin/ash", FileType.SYMLINK, perm=0o777, linkname="busybox"),
        member("dev", FileType.DIR, perm=0o755),
        member("dev/console", FileType.CHAR, perm=0o600, rdevmajor=5, rdevminor=1),
        member("dev/null", FileType.CHAR, perm=0o666, rdevmajor=1, rdevminor=3),
        member("dev/sda", FileType.BLOCK, perm=0o660, gid=6, rdevmajor=8),
        member("etc", FileType.DIR, perm=0o755),
        member("etc/version", data=b"main\n", uid=1000, gid=1000),
        member("run", FileType.DIR, perm=0o755),
        member("run/initctl", FileType.FIFO, perm=0o600),
        member("run/sock", FileType.SOCKET, perm=0o666),
        member("tmp", FileType.DIR, perm=0o1777),
        member("init", data=b"#!/bin/sh\n", perm=0o755),
    ])
    return write(tmp_path / "spec.img", early + b"\0" * 64 + gzip(main))


def test_spec_list(tmp_path):
    image = _spec_image(tmp_path)
    lines = run_tool("list", "--spec", image).stdout.decode().splitlines()
    assert "file /bin/busybox ${NBIC_ROOT}/bin/busybox 0755 0 0 /bin/sh" in lines
    assert not any(line.startswith("file /bin/sh ") for line in lines)
    assert "file /etc/version ${NBIC_ROOT}/etc/version 0644 1000 1000" in lines
    assert "file /gone-later ${NBIC_ROOT}/gone-later 0644 0 0" in lines
    assert "slink /bin/ash busybox 0777 0 0" in lines
    assert "nod /dev/sda 0660 0 6 b 8 0" in lines
    assert "pipe /run/initctl 0600 0 0" in lines
    assert "sock /run/sock 0666 0 0" in lines
    assert "dir /tmp 1777 0 0" in lines
    assert sum(line.startswith("dir /etc ") for line in lines) == 1
    items = parse_spec("\n".join(lines), env={"NBIC_ROOT": "/r"})
    assert len(items) == len(lines)


def test_spec_list_refuses_white_space(tmp_path):
    image = write(tmp_path / "img", archive([member("a b", data=b"x")]))
    result = run_tool("list", "--spec", image, check=1)
    assert result.stdout == b""
    assert "'/a b'" in result.stderr.decode()


def _rebuild_from_spec(spec_text: str, root: Path) -> bytes:
    members = []
    for item in parse_spec(spec_text, env={"NBIC_ROOT": str(root)}):
        entry = item.entry
        if entry.type is not FileType.FILE:
            members.append(Member(entry))
            continue
        location = item.location
        assert location is not None
        size = os.stat(location).st_size
        key = entry.name if item.hardlinks else None
        for name in (entry.name, *item.hardlinks):
            members.append(Member(Entry(name, FileType.FILE, perm=entry.perm, uid=entry.uid,
                                        gid=entry.gid, size=size, link_key=key),
                                  lambda location=location: open(location, "rb")))  # noqa: SIM115
    out = io.BytesIO()
    write_archive(out, members)
    return out.getvalue()


def test_extract_then_spec_rebuilds_the_image(tmp_path):
    image = _spec_image(tmp_path)
    out = tmp_path / "out"
    run_tool("extract", image, str(out))
    spec = run_tool("list", "--spec", image).stdout.decode()
    rebuilt = write(tmp_path / "rebuilt.img", _rebuild_from_spec(spec, out))
    assert diff_images(image, rebuilt) == []


def test_extract_then_nbic_pack_spec_rebuilds_the_image(tmp_path):
    image = _spec_image(tmp_path)
    out = tmp_path / "out"
    run_tool("extract", image, str(out))
    spec = tmp_path / "list.spec"
    spec.write_bytes(run_tool("list", "--spec", image).stdout)
    rebuilt = tmp_path / "rebuilt.cpio"
    result = subprocess.run([sys.executable, "-m", "nbic.cli", "pack", "--spec", str(spec),
                             "-o", str(rebuilt)], capture_output=True, text=True,
                            env={**os.environ, "NBIC_ROOT": str(out)})
    assert result.returncode == 0, result.stderr
    assert diff_images(image, str(rebuilt)) == []


def test_gnu_cpio_tree_round_trip_through_nbic_pack(tmp_path):
    """cpio-extract IMAGE DIR; cpio-list --spec IMAGE; NBIC_ROOT=DIR nbic pack --spec."""
    root = tmp_path / "tree"
    make_tree(root)
    image = write(tmp_path / "tree.cpio", gnu_cpio(root))
    out = tmp_path / "out"
    run_tool("extract", image, str(out))
    spec = tmp_path / "list.spec"
    spec.write_bytes(run_tool("list", "--spec", image).stdout)
    owner = f"{os.getuid()} {os.getgid()}"
    assert f"file /dir/hard1 ${{NBIC_ROOT}}/dir/hard1 0644 {owner} /dir/sub/hard2" in \
        spec.read_text().splitlines()
    rebuilt = tmp_path / "rebuilt.cpio.zst"
    result = subprocess.run([sys.executable, "-m", "nbic.cli", "pack", "--spec", str(spec),
                             "-o", str(rebuilt)], capture_output=True, text=True,
                            env={**os.environ, "NBIC_ROOT": str(out)})
    assert result.returncode == 0, result.stderr
    assert diff_images(image, str(rebuilt)) == []


# --- diff --------------------------------------------------------------------------


def _base_members() -> list[Member]:
    return [
        member("d", FileType.DIR, perm=0o755),
        member("d/file", data=b"hello\n", mtime=PAST),
        member("d/same", data=b"same\n"),
        member("d/link", FileType.SYMLINK, perm=0o777, linkname="file"),
        member("dev", FileType.DIR, perm=0o755),
        member("dev/tty", FileType.CHAR, perm=0o620, gid=5, rdevmajor=5, rdevminor=0),
        member("removed", data=b"bye"),
        member("kind", data=b"k"),
    ]


def _changed(base: list[Member], **changes: dict) -> list[Member]:
    result = []
    for m in base:
        fields = changes.get(m.entry.name.replace("/", "_"))
        if fields is None:
            result.append(m)
            continue
        kind = fields.pop("type", m.entry.type)
        data = fields.pop("data", None)
        old = m.entry
        entry = Entry(old.name, kind, perm=fields.get("perm", old.perm),
                      uid=fields.get("uid", old.uid), gid=fields.get("gid", old.gid),
                      mtime=fields.get("mtime", old.mtime),
                      linkname=fields.get("linkname", old.linkname),
                      rdevmajor=fields.get("rdevmajor", old.rdevmajor),
                      rdevminor=fields.get("rdevminor", old.rdevminor),
                      size=len(data) if data is not None else old.size)
        source = (lambda data=data: io.BytesIO(data)) if data is not None else m.source
        result.append(Member(entry, source))
    return result


def test_diff_equal_images(tmp_path):
    a = write(tmp_path / "a", archive(_base_members()))
    b = write(tmp_path / "b", gzip(archive(_base_members())))
    assert run_tool("diff", a, b).stdout == b""


def test_diff_reports_each_kind_of_change(tmp_path):
    base = _base_members()
    new = _changed(base, d_file={"perm": 0o600, "uid": 1, "gid": 2, "mtime": PAST + 1},
                   d_same={"data": b"SAME\n"}, d_link={"linkname": "same"},
                   dev_tty={"rdevminor": 1}, kind={"type": FileType.DIR, "perm": 0o755})
    new = [m for m in new if m.entry.name != "removed"] + [member("added", data=b"+")]
    a = write(tmp_path / "a", archive(base))
    b = write(tmp_path / "b", archive(new))
    result = run_tool("diff", a, b, check=1)
    assert result.stdout.decode().splitlines() == [
        "+ added",
        "~ d/file: mode 0644 -> 0600, owner 0:0 -> 1:2",
        "~ d/link: target file -> same",
        "~ d/same: content",
        "~ dev/tty: device 5,0 -> 5,1",
        "~ kind: type file -> directory",
        "- removed",
    ]
    with_mtime = run_tool("diff", "--mtime", a, b, check=1).stdout.decode()
    assert "~ d/file: mode 0644 -> 0600, owner 0:0 -> 1:2, mtime 2001-09-09T01:46:40Z -> " \
           "2001-09-09T01:46:41Z" in with_mtime


def test_diff_size_change(tmp_path):
    base = _base_members()
    a = write(tmp_path / "a", archive(base))
    b = write(tmp_path / "b", archive(_changed(base, d_file={"data": b"hello world\n"})))
    assert diff_images(a, b) == ["~ d/file: size 6 -> 12"]


def test_diff_resolves_hardlink_data(tmp_path):
    a = write(tmp_path / "a", raw_archive(_hardlink_pair("first")))
    b = write(tmp_path / "b", raw_archive(_hardlink_pair("last", ino=99)))
    assert run_tool("diff", a, b).stdout == b""
    c = write(tmp_path / "c", raw_archive([
        (Entry("sub", FileType.DIR, perm=0o755, ino=1), b""),
        (Entry("a", FileType.FILE, size=4, ino=2), b"data"),
        (Entry("sub/b", FileType.FILE, size=4, ino=3), b"DATA")]))
    assert diff_images(a, c) == ["~ sub/b: content"]


def test_diff_last_occurrence_wins(tmp_path):
    old = archive([member("f", data=b"one"), member("g", data=b"g")])
    new = archive([member("f", data=b"two"), member("h", FileType.DIR, perm=0o700)])
    a = write(tmp_path / "a", old)
    ab = write(tmp_path / "ab", old + gzip(new))
    assert diff_images(a, ab) == ["~ f: content", "+ h"]
    assert diff_images(ab, ab) == []


def test_diff_from_stdin(tmp_path):
    base = archive(_base_members())
    a = write(tmp_path / "a", base)
    assert run_tool("diff", "-", a, stdin=base).stdout == b""
    result = run_tool("diff", a, "-", stdin=archive(_base_members()[:-1]), check=1)
    assert result.stdout == b"- kind\n"


def test_diff_errors_are_one_line_with_status_2(tmp_path):
    a = write(tmp_path / "a", archive(_base_members()))
    bad = write(tmp_path / "bad", b"not an image at all")
    result = run_tool("diff", a, bad, check=2)
    assert result.stderr.decode().startswith("cpio-diff: error: ")
    assert len(result.stderr.decode().splitlines()) == 1


# --- du ----------------------------------------------------------------------------


def _du_image() -> tuple[bytes, int]:
    """An image of a plain and a gzip segment, and its uncompressed size."""
    early = archive([member("usr", FileType.DIR, perm=0o755),
                     member("usr/lib", FileType.DIR, perm=0o755),
                     member("usr/lib/big", data=b"x" * 3000)])
    main = archive([
        member("usr", FileType.DIR, perm=0o755),
        member("usr/bin", FileType.DIR, perm=0o755),
        member("usr/bin/tool", data=b"t" * 2048),
        member("usr/bin/alias", data=b"t" * 2048, link_key=1),
        member("usr/bin/alias2", data=b"t" * 2048, link_key=1),
        member("usr/lib", FileType.DIR, perm=0o755),
        member("usr/lib/big", data=b"y" * 5000),  # replaces the early one
        member("usr/lib/deep", FileType.DIR, perm=0o755),
        member("usr/lib/deep/er", FileType.DIR, perm=0o755),
        member("usr/lib/deep/er/file", data=b"z" * 100),
        member("etc", FileType.DIR, perm=0o755),
        member("etc/small", data=b"s" * 10),
        member("empty", FileType.DIR, perm=0o755),
        member("top", data=b"q" * 7),
        member("link", FileType.SYMLINK, perm=0o777, linkname="usr/bin/tool"),
    ])
    return early + gzip(main), len(early) + len(main)


def test_du(tmp_path):
    data, raw = _du_image()
    image = write(tmp_path / "img", data)
    lines = run_tool("du", "-b", image).stdout.decode().splitlines()
    dirs = lines[1:lines.index("largest files (top 20):")]
    files = lines[lines.index("largest files (top 20):") + 1:-1]
    assert lines[0] == "directories (cumulative, depth 2):"
    assert [line.split() for line in dirs] == [
        ["9196", "usr/"], ["5100", "usr/lib/"], ["4096", "usr/bin/"], ["10", "etc/"],
        ["0", "empty/"]]
    assert [line.split() for line in files] == [
        ["5000", "usr/lib/big"], ["2048", "usr/bin/alias"], ["2048", "usr/bin/tool"],
        ["100", "usr/lib/deep/er/file"], ["10", "etc/small"], ["7", "top"]]
    entries = 3 + 15
    stored = 3000 + 5000 + 2048 * 2 + 100 + 10 + 7 + len("usr/bin/tool")
    assert lines[-1] == f"total: {entries} entries, {stored} data, {raw} raw, {len(data)} image"


def test_du_depth_top_and_human_sizes(tmp_path):
    data, _raw = _du_image()
    image = write(tmp_path / "img", data)
    lines = run_tool("du", "--depth", "3", "--top", "2", image).stdout.decode().splitlines()
    assert "directories (cumulative, depth 3):" in lines
    assert any(line.split() == ["100", "usr/lib/deep/"] for line in lines)
    assert not any("deep/er/" in line for line in lines)
    assert [line.split() for line in lines[lines.index("largest files (top 2):") + 1:-1]] == [
        ["4.9K", "usr/lib/big"], ["2.0K", "usr/bin/alias"]]
    assert lines[-1].startswith("total: 18 entries, 12K data, ")
    # From a pipe, the image size is what was read.
    piped = run_tool("du", "-b", "-", stdin=data).stdout.decode().splitlines()
    assert piped[-1].endswith(f" {len(data)} image")


def test_human_size():
    assert human_size(0) == "0"
    assert human_size(1023) == "1023"
    assert human_size(1536) == "1.5K"
    assert human_size(10 << 20) == "10M"
    assert human_size(3 << 30) == "3.0G"


# --- cat ---------------------------------------------------------------------------


BIG = pattern(3 << 20)


def _cat_image() -> bytes:
    first = raw_archive([
        *_hardlink_pair("last"),
        (Entry("etc", FileType.DIR, perm=0o755, ino=20), b""),
        (Entry("etc/os-release", FileType.FILE, size=4, ino=21), b"old\n"),
        (Entry("etc/link", FileType.SYMLINK, linkname="os-release", perm=0o777, ino=22), b""),
        (Entry("big", FileType.FILE, size=len(BIG), ino=23), BIG),
    ])
    second = raw_archive([
        (Entry("etc/os-release", FileType.FILE, size=4, ino=1), b"new\n"),
        (Entry("c", FileType.FILE, nlink=2, ino=5, size=5), b"tarry"),
        (Entry("d", FileType.FILE, nlink=2, ino=5, size=0), b""),
        (Entry("dev", FileType.DIR, perm=0o755, ino=6), b""),
        (Entry("dev/null", FileType.CHAR, perm=0o666, rdevmajor=1, rdevminor=3, ino=7), b""),
    ])
    return first + gzip(second)


@pytest.mark.parametrize(("path", "content"), [
    ("etc/os-release", b"new\n"), ("/etc/os-release", b"new\n"),
    ("a", b"data"), ("/sub/b", b"data"), ("d", b"tarry"), ("c", b"tarry"),
    ("big", BIG)])
def test_cat(tmp_path, path, content):
    image = write(tmp_path / "img", _cat_image())
    assert run_tool("cat", image, path).stdout == content
    out = io.BytesIO()
    assert cat(image, path, out) == len(content)
    assert out.getvalue() == content


def test_cat_from_stdin(tmp_path):
    assert run_tool("cat", "-", "sub/b", stdin=_cat_image()).stdout == b"data"


@pytest.mark.parametrize(("path", "message"), [
    ("missing", "/missing: no such entry"),
    ("etc", "/etc: is a directory, not a regular file"),
    ("etc/link", "/etc/link: is a symlink to os-release"),
    ("dev/null", "/dev/null: is a char device, not a regular file"),
])
def test_cat_errors(tmp_path, path, message):
    image = write(tmp_path / "img", _cat_image())
    with pytest.raises(NbicError, match=message):
        cat(image, path, io.BytesIO())
    result = run_tool("cat", image, path, check=1)
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cpio-cat: error: {message}")


# --- output -------------------------------------------------------------------------


def test_list_into_a_closed_pipe(tmp_path):
    many = archive([member(f"f{i:05d}", data=b"") for i in range(20000)])
    image = write(tmp_path / "img", many)
    script = [sys.executable, "-c", "import sys; from nbic.cli import cpio_list_main as m; "
              "sys.exit(m())"]
    process = subprocess.Popen([*script, image], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline() == b"f00000\n"
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait() == 0
    assert b"Traceback" not in stderr


def test_list_non_utf8_name(tmp_path):
    name = os.fsdecode(b"bad-\xff-name")
    image = write(tmp_path / "img", archive([member(name, data=b"x")]))
    assert run_tool("list", image).stdout == b"bad-\xff-name\n"
    assert run_tool("list", "-v", image).stdout.endswith(b" bad-\xff-name\n")
