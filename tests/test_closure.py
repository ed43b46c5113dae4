"""The closure: what nbic adds around a file list, resolved inside the rootfs."""

import logging

import pytest
from rootfs_factory import LIBDIR, make_rootfs, make_tar

from nbic.closure import ClosureConfig, parse_device, select
from nbic.cpio.entry import FileType
from nbic.errors import MissingFileError, RootfsError, UsageError
from nbic.tree import DirTree, TarTree


@pytest.fixture
def tree(tmp_path):
    return DirTree(make_rootfs(tmp_path / "rootfs"))


def names(selection):
    return set(selection.entries)


def test_real_files_pull_in_parents_usr_merge_and_soname_links(tree):
    wanted = ["/usr/bin/bash", f"/{LIBDIR}/libtinfo.so.6.4", f"/{LIBDIR}/ld-linux-x86-64.so.2"]
    chosen = names(select(tree, wanted, ClosureConfig()))
    assert {"usr", "usr/bin", "usr/lib", LIBDIR, "usr/bin/bash"} <= chosen
    # usr-merge links lead to directories in the image; the ld.so and soname
    # links lead to files in it.
    assert {"bin", "lib", "lib64", "usr/lib64", "usr/lib64/ld-linux-x86-64.so.2",
            f"{LIBDIR}/libtinfo.so.6"} <= chosen
    assert "sbin" not in chosen  # /usr/sbin is not in the image
    assert "usr/bin/tr" not in chosen
    assert f"{LIBDIR}/libunused.so.1" not in chosen


def test_a_path_through_symlinks_brings_the_links(tree):
    selection = select(tree, ["/bin/bash"], ClosureConfig())
    assert selection.entries["bin"].type is FileType.SYMLINK
    assert selection.entries["usr/bin/bash"].type is FileType.FILE


def test_alternatives_chain_follows_the_program(tree):
    chosen = names(select(tree, ["/usr/bin/mawk"], ClosureConfig()))
    assert {"etc/alternatives/awk", "usr/bin/awk"} <= chosen


def test_every_name_of_a_hardlinked_file(tree):
    chosen = names(select(tree, ["/usr/bin/perl"], ClosureConfig()))
    assert "usr/bin/perl5.36.0" in chosen


def test_devices_mount_points_and_init_from_chroot(tree):
    selection = select(tree, [], ClosureConfig())
    entries = selection.entries
    assert (entries["dev/console"].type, entries["dev/console"].rdevmajor,
            entries["dev/console"].rdevminor) == (FileType.CHAR, 5, 1)
    assert (entries["dev/null"].rdevmajor, entries["dev/null"].rdevminor) == (1, 3)
    assert entries["proc"].perm == 0o555  # as the rootfs has it
    assert entries["tmp"].perm == 0o1777
    assert entries["sys"].type is FileType.DIR and "sys" in selection.synthesized
    assert entries["dev/pts"].type is FileType.DIR
    assert entries["init"].type is FileType.SYMLINK
    assert entries["init"].linkname == "/chroot"
    assert entries["chroot"].type is FileType.FILE


def test_init_option_and_rootfs_init(tree, tmp_path):
    selection = select(tree, [], ClosureConfig(init="/bin/cat"))
    assert selection.entries["init"].linkname == "/usr/bin/cat"
    assert "bin" in selection.entries
    (tree.root / "init").write_text("#!/bin/sh\n")
    selection = select(DirTree(tree.root), [], ClosureConfig())
    assert selection.entries["init"].type is FileType.FILE


def test_no_init_is_a_clear_error(tree):
    (tree.root / "chroot").unlink()
    with pytest.raises(RootfsError, match="no /init"):
        select(DirTree(tree.root), [], ClosureConfig())
    with pytest.raises(RootfsError, match="--init /nope"):
        select(tree, [], ClosureConfig(init="/nope"))
    # A spec list may supply /init instead.
    assert "init" not in select(DirTree(tree.root), [], ClosureConfig(init_provided=True)).entries


def test_missing_paths_warn_or_fail_with_strict(tree, caplog):
    with caplog.at_level(logging.WARNING, logger="nbic"):
        selection = select(tree, ["/usr/bin/nope", "/usr/bin/cat"], ClosureConfig())
    assert selection.missing == ("/usr/bin/nope",)
    assert "/usr/bin/nope" in caplog.text
    with pytest.raises(MissingFileError, match="/usr/bin/nope"):
        select(tree, ["/usr/bin/nope"], ClosureConfig(strict=True))


def test_symlinks_resolve_inside_the_rootfs_only(tree):
    # ../../../etc/passwd stops at the rootfs's root, where there is no passwd:
    # the host's /etc/passwd is never reached.
    assert tree.resolve("/etc/escape").target is None
    assert tree.resolve("/etc/loop-a").target is None
    assert tree.resolve("/lib64/ld-linux-x86-64.so.2").target == f"{LIBDIR}/ld-linux-x86-64.so.2"
    assert tree.resolve("/usr/bin/../../etc/hostname").target == "etc/hostname"
    selection = select(tree, ["/etc/escape", "/etc/loop-a"], ClosureConfig())
    assert selection.missing == ("/etc/escape", "/etc/loop-a")


def test_include_and_exclude_globs(tree):
    selection = select(tree, ["/usr/bin/bash", "/usr/bin/cat"], ClosureConfig(
        include=(f"/{LIBDIR}/*",), exclude=("/usr/bin/cat", "*/libunused*")))
    chosen = names(selection)
    assert f"{LIBDIR}/libtinfo.so.6.4" in chosen
    assert f"{LIBDIR}/libunused.so.1" not in chosen
    assert "usr/bin/cat" not in chosen
    assert "usr/bin/bash" in chosen


def test_dev_option():
    assert (parse_device("ttyS0").major, parse_device("/dev/ttyS0").minor) == (4, 64)
    node = parse_device("/dev/net/tun:c:10:200:0666")
    assert (node.name, node.type, node.major, node.minor, node.perm) == (
        "dev/net/tun", FileType.CHAR, 10, 200, 0o666)
    with pytest.raises(UsageError):
        parse_device("/dev/x:q:1:2")


def test_extra_device_gets_synthesized_parents(tree):
    selection = select(tree, [], ClosureConfig(devices=(parse_device("/dev/net/tun:c:10:200"),)))
    assert selection.entries["dev/net"].type is FileType.DIR
    assert "dev/net" in selection.synthesized


def test_tar_tree_selects_like_the_directory(tree, tmp_path):
    tar_tree = TarTree(make_tar(tree.root, tmp_path / "rootfs.tar"))
    wanted = ["/bin/bash", "/usr/bin/perl", f"/{LIBDIR}/libtinfo.so.6.4"]
    from_dir = select(tree, wanted, ClosureConfig()).entries
    from_tar = select(tar_tree, wanted, ClosureConfig()).entries
    assert from_dir.keys() == from_tar.keys()
    for name, entry in from_dir.items():
        other = from_tar[name]
        assert (entry.type, entry.perm, entry.size, entry.linkname) == (
            other.type, other.perm, other.size, other.linkname), name
    assert tar_tree.open("usr/bin/perl5.36.0").read() == b"\x7fELF perl"
