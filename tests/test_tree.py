"""DirTree reads files below its root only, in any order, and holds few descriptors."""

import io
import os

import pytest

from nbic.cpio.archive import Member, write_archive
from nbic.cpio.image import ImageReader
from nbic.cpio.source import CHUNK
from nbic.errors import FormatError, RootfsError
from nbic.tree import DirTree

FILES = {"a/b/c/deep": b"deep", "a/b/one": b"one", "a/two": b"two", "a/b/c2/x": b"x",
         "top": b"top", "z/y/last": b"last"}


@pytest.fixture
def root(tmp_path):
    base = tmp_path / "rootfs"
    for name, data in FILES.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_bytes(data)
    return base


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_files_read_in_any_order_and_close_releases_every_descriptor(root):
    before = open_fds()
    tree = DirTree(root)
    for names in (sorted(FILES), sorted(FILES, reverse=True), ["a/b/c/deep", "top", "a/two"]):
        for name in names:
            with tree.open(name) as stream:
                assert stream.read() == FILES[name]
    tree.close()
    assert open_fds() == before
    with tree.open("a/two") as stream:  # still usable after close
        assert stream.read() == b"two"
    tree.close()


def test_a_directory_swapped_for_a_symlink_is_not_followed(root, tmp_path):
    outside = tmp_path / "outside"
    (outside / "b").mkdir(parents=True)
    (outside / "b" / "one").write_bytes(b"host file")
    tree = DirTree(root)
    with tree.open("top") as stream:
        stream.read()
    (root / "a").rename(tmp_path / "moved")
    (root / "a").symlink_to(outside)
    with pytest.raises(RootfsError, match="/a/b/one"):
        tree.open("a/b/one")
    tree.close()


@pytest.mark.parametrize("size", [1, CHUNK - 1, CHUNK, CHUNK + 1])
@pytest.mark.parametrize("change", [-1, 1])
def test_a_file_that_changed_size_after_indexing_is_an_error(root, size, change):
    path = root / "a" / "two"
    path.write_bytes(b"x" * size)
    tree = DirTree(root)
    path.write_bytes(b"x" * (size + change))
    entry = tree.entries["a/two"]
    with pytest.raises(FormatError, match="shrank" if change < 0 else "grew"):
        write_archive(io.BytesIO(), [Member(entry, lambda: tree.open("a/two"))])
    tree.close()


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5])
def test_file_data_arrives_whole_at_every_size(root, tmp_path, size):
    data = bytes(range(256)) * (size // 256 + 1)
    (root / "a" / "two").write_bytes(data[:size])
    tree = DirTree(root)
    members = [Member(entry, lambda name=name: tree.open(name))
               for name, entry in tree.entries.items()]
    image = tmp_path / "image.cpio"
    with open(image, "wb") as out:
        write_archive(out, members)
    tree.close()
    with open(image, "rb") as stream:
        reader = ImageReader(stream)
        read = {entry.name: reader.read() for entry in reader if entry.size}
    expected = {**FILES, "a/two": data[:size]}
    if not size:
        del expected["a/two"]
    assert read == expected
