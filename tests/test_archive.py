"""Deterministic newc writing: order, inodes, hardlinks, clamping, limits."""

import io
import logging

import pytest

from nbic.cpio.archive import Member, order, write_archive
from nbic.cpio.entry import Entry, FileType, sort_key
from nbic.cpio.image import ImageReader
from nbic.errors import FieldOverflowError, FormatError, NbicError


def data(payload: bytes):
    return lambda: io.BytesIO(payload)


def sample_members():
    return [
        Member(Entry("usr/bin/b", FileType.FILE, perm=0o755, size=3, mtime=2_000_000_000,
                     link_key="k"), data(b"BBB")),
        Member(Entry("usr/bin/a", FileType.FILE, perm=0o755, size=3, mtime=2_000_000_000,
                     link_key="k"), data(b"BBB")),
        Member(Entry("usr", FileType.DIR, perm=0o755, mtime=5)),
        Member(Entry("usr/bin", FileType.DIR, perm=0o755, mtime=5)),
        Member(Entry("usr-x", FileType.DIR, perm=0o700, mtime=5)),
        Member(Entry("bin", FileType.SYMLINK, perm=0o777, linkname="usr/bin")),
        Member(Entry("dev", FileType.DIR, perm=0o755)),
        Member(Entry("dev/console", FileType.CHAR, perm=0o600, rdevmajor=5, rdevminor=1)),
        Member(Entry("dev/sda", FileType.BLOCK, perm=0o660, rdevmajor=8, rdevminor=0)),
        Member(Entry("run/fifo", FileType.FIFO, perm=0o644)),
        Member(Entry("run", FileType.DIR, perm=0o755)),
    ]


def archive_bytes(members, epoch=None) -> bytes:
    out = io.BytesIO()
    write_archive(out, members, epoch=epoch)
    return out.getvalue()


def test_input_order_does_not_matter():
    members = sample_members()
    assert archive_bytes(members) == archive_bytes(list(reversed(members)))


def test_parents_first_and_siblings_sorted():
    names = [m.entry.name for m in order(sample_members())]
    assert names == ["bin", "dev", "dev/console", "dev/sda", "run", "run/fifo", "usr",
                     "usr/bin", "usr/bin/a", "usr/bin/b", "usr-x"]


def test_hardlinks_share_an_inode_with_data_on_the_last_name():
    blob = archive_bytes(sample_members())
    reader = ImageReader(io.BytesIO(blob))
    seen = {}
    for entry in reader:
        seen[entry.name] = (entry, reader.read())
    a, a_data = seen["usr/bin/a"]
    b, b_data = seen["usr/bin/b"]
    assert a.ino == b.ino and a.nlink == b.nlink == 2
    assert (a.size, a_data, b.size, b_data) == (0, b"", 3, b"BBB")
    inodes = [entry.ino for entry, _ in seen.values()]
    assert len(set(inodes)) == len(inodes) - 1  # unique but for the hardlink pair
    assert seen["dev/console"][0].rdevmajor == 5
    assert blob.count(b"TRAILER!!!") == 1 and len(blob) % 512 == 0


def test_source_date_epoch_clamps_mtimes():
    reader = ImageReader(io.BytesIO(archive_bytes(sample_members(), epoch=1_000_000_000)))
    mtimes = {entry.name: entry.mtime for entry in reader}
    assert mtimes["usr/bin/b"] == 1_000_000_000  # newer: clamped
    assert mtimes["usr"] == 5  # older: kept


def test_mtime_past_2106_is_clamped_with_a_warning(caplog):
    member = Member(Entry("late", FileType.DIR, mtime=1 << 33))
    with caplog.at_level(logging.WARNING, logger="nbic"):
        reader = ImageReader(io.BytesIO(archive_bytes([member])))
        assert [entry.mtime for entry in reader] == [0xFFFFFFFF]
    assert "/late" in caplog.text and "2106" in caplog.text


def test_file_over_4_gib_is_refused_by_name():
    huge = Member(Entry("var/huge.img", FileType.FILE, size=5 << 30), data(b""))
    with pytest.raises(FieldOverflowError, match=r"/var/huge\.img.*4 GiB"):
        archive_bytes([huge])


def test_ids_that_do_not_fit_are_refused():
    with pytest.raises(FieldOverflowError, match="/x: uid"):
        archive_bytes([Member(Entry("x", FileType.DIR, uid=1 << 32))])


def test_duplicate_names_are_refused():
    with pytest.raises(NbicError, match="two entries for /x"):
        archive_bytes([Member(Entry("x", FileType.DIR)), Member(Entry("x", FileType.DIR))])


def test_a_file_that_changed_size_is_an_error_not_a_corrupt_image():
    with pytest.raises(FormatError, match="shrank"):
        archive_bytes([Member(Entry("f", FileType.FILE, size=10), data(b"short"))])
    with pytest.raises(FormatError, match="grew"):
        archive_bytes([Member(Entry("f", FileType.FILE, size=2), data(b"longer"))])


def test_non_utf8_names_round_trip():
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    reader = ImageReader(io.BytesIO(archive_bytes([Member(Entry(name, FileType.DIR))])))
    assert [entry.name for entry in reader] == [name]


def test_sort_key_orders_component_by_component():
    names = [".", "a", "a/b", "a/b/c", "a-b", "a-b/a", "a.b", "a0", "ab", "b", "a/b-",
             "a/b/d", b"\xff".decode("utf-8", "surrogateescape"), "\u00e9", "a/\u00e9"]
    by_parts = sorted(names, key=lambda name: [] if name == "." else [
        part.encode("utf-8", "surrogateescape") for part in name.split("/")])
    assert sorted(names, key=sort_key) == by_parts
    assert by_parts.index("a/b/c") < by_parts.index("a-b")  # a parent's whole tree first
