"""Rootfs sources and their cache keys, without Docker."""

import os
import subprocess

import pytest

from nbic import rootfs
from nbic.errors import RootfsError, UsageError


def test_sources_are_told_apart(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "r.tar").write_bytes(b"")
    assert rootfs.parse_source(str(tmp_path / "dir")).kind is rootfs.SourceKind.DIR
    assert rootfs.parse_source(str(tmp_path / "r.tar")).kind is rootfs.SourceKind.TAR
    assert rootfs.parse_source("docker:debian:bookworm").location == "debian:bookworm"
    source = rootfs.parse_source("debootstrap:trixie:http://mirror.example/debian")
    assert (source.location, source.mirror) == ("trixie", "http://mirror.example/debian")
    assert rootfs.parse_source(None).location == "bookworm"  # the default
    with pytest.raises(RootfsError, match="does not exist"):
        rootfs.parse_source(str(tmp_path / "missing.tar"))
    with pytest.raises(UsageError):
        rootfs.parse_source("debootstrap:")


def test_tar_digests_are_remembered_and_follow_the_content(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").write_text("one")
    plain = tmp_path / "r.tar"
    subprocess.run(["tar", "-C", tree, "-cf", plain, "."], check=True)
    subprocess.run(["zstd", "-q", "-k", plain], check=True)
    def key(path):
        return rootfs.cache_key(None, rootfs.parse_source(str(path)))

    first = key(plain)
    assert (tmp_path / "cache/nbic/digests.json").is_file()
    # Compressed or not, one content, one key (and one cache volume).
    assert key(str(plain) + ".zst") == first
    # Remembered: the file is not read again while its identity holds.
    calls = []
    monkeypatch.setattr(rootfs, "_digest", lambda chunks: calls.append(1) or "x")
    assert key(plain) == first and not calls
    (tree / "a").write_text("two")
    subprocess.run(["tar", "-C", tree, "-cf", plain, "."], check=True)
    os.utime(plain, ns=(1, 1))  # a new identity even within one clock tick
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert key(plain) != first


def test_directory_keys_come_from_a_manifest_and_hash_only_on_change(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/a").write_text("one")
    (tree / "link").symlink_to("etc/a")
    source = rootfs.parse_source(str(tree))
    first = rootfs.cache_key(None, source)
    hashed = []
    real_digest = rootfs._digest
    monkeypatch.setattr(rootfs, "_digest", lambda chunks: hashed.append(1) or real_digest(chunks))
    assert rootfs.cache_key(None, source) == first and not hashed
    # Any change of content, name, mode or link target makes a new manifest.
    (tree / "etc/a").write_text("two")
    os.utime(tree / "etc/a", ns=(1, 1))
    second = rootfs.cache_key(None, source)
    assert hashed and second != first
    (tree / "link").unlink()
    (tree / "link").symlink_to("etc")
    assert rootfs.cache_key(None, source) not in (first, second)
