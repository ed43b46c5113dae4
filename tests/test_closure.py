"""The closure: what nbic adds around a file list, resolved inside the rootfs."""

import logging
from pathlib import Path

import pytest
from rootfs_factory import LIBDIR, make_rootfs, make_tar

from nbic.closure import SessionInit, Wanted, plan
from nbic.cpio.entry import FileType
from nbic.cpio.spec import parse_spec
from nbic.devices import parse_device
from nbic.errors import MissingFileError, RootfsError, UsageError
from nbic.selection import FileList, InitMode, Selection, SpecList
from nbic.tree import DirTree, TarTree


def select(tree, wanted, selection=None):
    """The plan for `wanted` given as a file list."""
    selection = selection or Selection()
    lists = (FileList("test.list", tuple(wanted)),) if wanted else ()
    return plan(tree, Selection(**{**selection.__dict__, "file_lists": lists}))


@pytest.fixture
def tree(tmp_path):
    return DirTree(make_rootfs(tmp_path / "rootfs"))


def names(selection):
    return set(selection.entries)


def test_real_files_pull_in_parents_usr_merge_and_soname_links(tree):
    wanted = ["/usr/bin/bash", f"/{LIBDIR}/libtinfo.so.6.4", f"/{LIBDIR}/ld-linux-x86-64.so.2"]
    chosen = names(select(tree, wanted, Selection()))
    assert {"usr", "usr/bin", "usr/lib", LIBDIR, "usr/bin/bash"} <= chosen
    # usr-merge links lead to directories in the image; the ld.so and soname
    # links lead to files in it.
    assert {"bin", "lib", "lib64", "usr/lib64", "usr/lib64/ld-linux-x86-64.so.2",
            f"{LIBDIR}/libtinfo.so.6"} <= chosen
    assert "sbin" not in chosen  # /usr/sbin is not in the image
    assert "usr/bin/tr" not in chosen
    assert f"{LIBDIR}/libunused.so.1" not in chosen


def test_a_path_through_symlinks_brings_the_links(tree):
    selection = select(tree, ["/bin/bash"], Selection())
    assert selection.entries["bin"].type is FileType.SYMLINK
    assert selection.entries["usr/bin/bash"].type is FileType.FILE


def test_alternatives_chain_follows_the_program(tree):
    chosen = names(select(tree, ["/usr/bin/mawk"], Selection()))
    assert {"etc/alternatives/awk", "usr/bin/awk"} <= chosen


def test_every_name_of_a_hardlinked_file(tree):
    chosen = names(select(tree, ["/usr/bin/perl"], Selection()))
    assert "usr/bin/perl5.36.0" in chosen


def test_devices_mount_points_and_init_from_chroot(tree):
    selection = select(tree, [], Selection())
    entries = selection.entries
    assert (entries["dev/console"].type, entries["dev/console"].rdevmajor,
            entries["dev/console"].rdevminor) == (FileType.CHAR, 5, 1)
    assert (entries["dev/null"].rdevmajor, entries["dev/null"].rdevminor) == (1, 3)
    assert entries["proc"].perm == 0o555  # as the rootfs has it
    assert entries["tmp"].perm == 0o1777
    assert entries["sys"].type is FileType.DIR and selection.reasons["sys"] == "mount point"
    assert entries["dev/pts"].type is FileType.DIR
    assert entries["init"].type is FileType.SYMLINK
    assert entries["init"].linkname == "/chroot"
    assert entries["chroot"].type is FileType.FILE


def test_init_option_and_rootfs_init(tree, tmp_path):
    selection = select(tree, [], Selection(init_mode=InitMode.PATH, init_path="/bin/cat"))
    assert selection.entries["init"].linkname == "/usr/bin/cat"
    assert "bin" in selection.entries
    (Path(tree.root) / "init").write_text("#!/bin/sh\n")
    selection = select(DirTree(tree.root), [], Selection())
    assert selection.entries["init"].type is FileType.FILE


def test_no_init_is_a_clear_error(tree):
    (Path(tree.root) / "chroot").unlink()
    with pytest.raises(RootfsError, match="no /init"):
        select(DirTree(tree.root), [], Selection())
    with pytest.raises(RootfsError, match="--init /nope"):
        select(tree, [], Selection(init_mode=InitMode.PATH, init_path="/nope"))
    # A spec list may supply /init instead.
    spec = SpecList("s", tuple(parse_spec("slink /init /usr/bin/cat 0777 0 0")))
    entries = select(DirTree(tree.root), [], Selection(spec_lists=(spec,))).entries
    assert entries["init"].linkname == "/usr/bin/cat"


def test_missing_paths_warn_or_fail_with_strict(tree, caplog):
    with caplog.at_level(logging.WARNING, logger="nbic"):
        selection = select(tree, ["/usr/bin/nope", "/usr/bin/cat"], Selection())
    assert selection.missing == ("/usr/bin/nope",)
    assert "/usr/bin/nope" in caplog.text
    with pytest.raises(MissingFileError, match="/usr/bin/nope"):
        select(tree, ["/usr/bin/nope"], Selection(strict=True))


def test_symlinks_resolve_inside_the_rootfs_only(tree):
    # ../../../etc/passwd stops at the rootfs's root, where there is no passwd:
    # the host's /etc/passwd is never reached.
    assert tree.resolve("/etc/escape").target is None
    assert tree.resolve("/etc/loop-a").target is None
    assert tree.resolve("/lib64/ld-linux-x86-64.so.2").target == f"{LIBDIR}/ld-linux-x86-64.so.2"
    assert tree.resolve("/usr/bin/../../etc/hostname").target == "etc/hostname"


def test_dangling_symlinks_go_in_as_symlinks(tree):
    # They are in the rootfs: a symlink whose target is missing (or loops) is
    # still a symlink, as /etc/mtab -> ../proc/self/mounts is.
    selection = select(tree, ["/etc/escape", "/etc/loop-a", "/etc/nope"], Selection())
    assert selection.missing == ("/etc/nope",)
    assert selection.entries["etc/escape"].linkname == "../../../../../etc/passwd"
    assert selection.entries["etc/loop-a"].type is FileType.SYMLINK
    assert "etc/passwd" not in selection.entries


def test_include_and_exclude_globs(tree):
    selection = select(tree, ["/usr/bin/bash", "/usr/bin/cat"], Selection(
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
    selection = select(tree, [], Selection(devices=(parse_device("/dev/net/tun:c:10:200"),)))
    assert selection.entries["dev/net"].type is FileType.DIR
    assert selection.reasons["dev/net"] == "parent of /dev/net/tun"


def test_tar_tree_selects_like_the_directory(tree, tmp_path):
    tar_tree = TarTree(make_tar(Path(tree.root), tmp_path / "rootfs.tar"))
    wanted = ["/bin/bash", "/usr/bin/perl", f"/{LIBDIR}/libtinfo.so.6.4"]
    from_dir = select(tree, wanted, Selection()).entries
    from_tar = select(tar_tree, wanted, Selection()).entries
    assert from_dir.keys() == from_tar.keys()
    for name, entry in from_dir.items():
        other = from_tar[name]
        assert (entry.type, entry.perm, entry.size, entry.linkname) == (
            other.type, other.perm, other.size, other.linkname), name
    assert tar_tree.open("usr/bin/perl5.36.0").read() == b"\x7fELF perl"


def test_every_entry_says_why_it_is_there(tree):
    listed = ("/bin/bash", f"/{LIBDIR}/libtinfo.so.6.4")
    image = plan(tree, Selection(file_lists=(FileList("a.list", listed),)),
                 used=[Wanted("/usr/bin/cat", "traced: exec by /usr/bin/bash")])
    reasons = image.reasons
    assert reasons["usr/bin/bash"] == "listed in a.list"
    assert reasons["bin"] == "on the way to /usr/bin/bash"
    assert reasons["usr/bin/cat"] == "traced: exec by /usr/bin/bash"
    assert reasons["usr"] == "parent of /usr/bin/cat"
    assert reasons["dev/console"] == "device: a boot needs it"
    assert reasons["init"].startswith("/init: the rootfs's /chroot")
    assert reasons[f"{LIBDIR}/libtinfo.so.6"] == \
        f"symlink to /{LIBDIR}/libtinfo.so.6.4, which is in the image"
    assert set(reasons) == set(image.entries)


def test_init_none_makes_a_segment_without_boot_entries(tree):
    image = plan(tree, Selection(file_lists=(FileList("l", ("/usr/bin/cat",)),),
                                 init_mode=InitMode.NONE))
    assert set(image.entries) == {"usr", "usr/bin", "usr/bin/cat", "bin"}
    # Asked-for devices still go in.
    image = plan(tree, Selection(init_mode=InitMode.NONE, devices=(parse_device("zero"),)))
    assert set(image.entries) == {"dev", "dev/zero"}


def test_a_session_boots_itself_when_the_rootfs_has_no_init(tree, tmp_path):
    (Path(tree.root) / "chroot").unlink()
    rootfs = DirTree(tree.root)
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n")
    image = plan(rootfs, Selection(), session_init=SessionInit(script=str(script)))
    assert image.entries["init"].type is FileType.FILE
    assert image.data["init"].path == str(script)
    image = plan(rootfs, Selection(), session_init=SessionInit(program="cat"))
    assert image.entries["init"].linkname == "/usr/bin/cat"


def test_devices_the_session_opened(tree):
    urandom = parse_device("urandom")
    image = plan(tree, Selection(), session_devices=[(urandom, "opened by the session")])
    node = image.entries["dev/urandom"]
    assert (node.type, node.rdevmajor, node.rdevminor, node.perm) == (FileType.CHAR, 1, 9,
                                                                      0o666)
    assert image.reasons["dev/urandom"] == "device: opened by the session"


def test_pseudo_filesystems_give_only_their_mount_points(tree):
    (Path(tree.root) / "proc/self").mkdir(parents=True)
    (Path(tree.root) / "proc/self/status").write_text("x")
    rootfs = DirTree(tree.root)
    image = plan(rootfs, Selection(), used=[Wanted("/proc/self/status", "traced"),
                                            Wanted("/dev/pts/0", "traced")])
    assert "proc" in image.entries and "proc/self/status" not in image.entries


def test_cpython_caches_bring_their_sources(tree):
    pydir = Path(tree.root) / "usr/lib/python3.11"
    (pydir / "json/__pycache__").mkdir(parents=True)
    (pydir / "lib-dynload").mkdir()
    for name in ("os.py", "json/__init__.py", "json/__pycache__/__init__.cpython-311.pyc",
                 "__pycache__/os.cpython-311.pyc"):
        (pydir / name).parent.mkdir(parents=True, exist_ok=True)
        (pydir / name).write_text(name)
    rootfs = DirTree(tree.root)
    image = plan(rootfs, Selection(), used=[
        Wanted("/usr/lib/python3.11/json/__pycache__/__init__.cpython-311.pyc", "traced")])
    assert image.entries["usr/lib/python3.11/json/__init__.py"].type is FileType.FILE
    assert image.reasons["usr/lib/python3.11/json/__init__.py"].startswith("rule: CPython")
    # getpath's landmarks: the prefix's os.py and the lib-dynload directory.
    assert "usr/lib/python3.11/os.py" in image.entries
    assert image.entries["usr/lib/python3.11/lib-dynload"].type is FileType.DIR


def test_include_bin_follows_the_elf_headers(rootfs_dir):
    image = plan(DirTree(rootfs_dir), Selection(binaries=("/usr/bin/ls",),
                                                init_mode=InitMode.NONE))
    libraries = {name.rsplit("/", 1)[1] for name, entry in image.entries.items()
                 if ".so" in name and "/lib" in "/" + name and entry.type is not FileType.DIR}
    assert libraries == {"ld-linux-x86-64.so.2", "libc.so.6", "libselinux.so.1",
                         "libpcre2-8.so.0", "libpcre2-8.so.0.11.2"}, libraries
    assert image.reasons["usr/bin/ls"] == "--include-bin /usr/bin/ls"
    assert "DT_NEEDED" in image.reasons["usr/lib/x86_64-linux-gnu/libselinux.so.1"]


def test_the_merged_tree_from_an_index_equals_a_walk(tmp_path):
    """An overlay's merged view, rebuilt from the lower layer's index and the upper
    layer, is the tree a walk of the mounted overlay gives (emulated here without
    mounting: the upper layer's whiteouts and opaque dirs are laid over by hand)."""
    import os
    import shutil

    from nbic.agent.rootfs_index import merged_tree, read_index, write_index

    lower = make_rootfs(tmp_path / "lower")
    index = tmp_path / "index.json"
    assert write_index(str(lower), str(index)) == len(DirTree(lower).entries)
    assert read_index(str(index)).keys() == DirTree(lower).entries.keys()
    # The session's changes: an upper layer, and the merged result made by hand.
    upper, merged = tmp_path / "upper", tmp_path / "merged"
    shutil.copytree(lower, merged, symlinks=True)
    (upper / "etc").mkdir(parents=True)
    (upper / "etc/new").write_text("new")
    (merged / "etc/new").write_text("new")
    os.mknod(upper / "etc/hostname", 0o600 | 0o020000, 0)  # a whiteout
    (merged / "etc/hostname").unlink()
    (upper / "usr/bin").mkdir(parents=True)
    (upper / "usr/bin/cat").write_text("changed")
    (merged / "usr/bin/cat").write_text("changed")
    tree = merged_tree(str(merged), str(index), str(upper))
    entries = tree.entries
    walked = DirTree(merged).entries
    assert entries.keys() == walked.keys()
    assert entries["usr/bin/cat"].size == len("changed")
    assert "etc/hostname" not in entries and entries["etc/new"].type is FileType.FILE
    # Told from the rows before any is made an Entry, then from the Entries.
    symlinks = {name for name, entry in walked.items() if entry.type is FileType.SYMLINK}
    assert set(tree.symlinks()) == symlinks != set()
    untouched = [name for name in walked if name not in ("etc", "etc/new", "usr/bin/cat")]
    assert [entries[name] for name in untouched] == [walked[name] for name in untouched]
    assert set(tree.symlinks()) == symlinks


def test_an_index_resolves_every_path_as_a_walk_does(tmp_path):
    """Resolution reads an index's rows without making Entries of them; it must
    still land where a walked tree's does: loops, escapes, dangling links, a
    link through a file, `..` in and below links."""
    from nbic.agent.rootfs_index import IndexTree, read_index, write_index

    lower = make_rootfs(tmp_path / "lower")
    (lower / "dangling").symlink_to("/no/such/file")
    (lower / "through-file").symlink_to("etc/hostname/x")
    (lower / "usr/bin/up").symlink_to("../../lib64/../etc")
    index = tmp_path / "index.json"
    write_index(str(lower), str(index))
    walked = DirTree(lower)
    indexed = IndexTree(str(lower), read_index(str(index)))
    paths = [*walked.entries, "/", "bin/up/hostname", "lib/../bin/awk", "usr/bin/up/..",
             "etc/escape/x", "var/run/..", "no/such"]
    for path in paths:
        for follow_last in (True, False):
            assert indexed.resolve(path, follow_last=follow_last) == \
                walked.resolve(path, follow_last=follow_last), (path, follow_last)
    # `..` after a link is the link target's parent, as in the kernel.
    assert walked.resolve("lib/../bin/awk").target == "usr/bin/mawk"
    assert walked.resolve("bin/up/hostname").target is None  # usr/etc/hostname


def test_an_index_keeps_every_field_of_awkward_names(tmp_path):
    """The index is NUL- and \\x01-separated text: names and link targets that hold
    \\x01, newlines or bytes that are not UTF-8 come back as they were, with the
    hardlink groups; a cut index is refused."""
    import os

    from nbic.agent.rootfs_index import read_index, write_index
    from nbic.errors import NbicError

    lower = make_rootfs(tmp_path / "lower")
    odd = os.fsencode(lower) + b"/etc/a\x01b\nc\xff"
    with open(odd, "wb") as out:
        out.write(b"x")
    os.symlink(b"target\x01with\x01fields\xfe", os.fsencode(lower) + b"/etc/link\x01")
    os.link(odd, os.fsencode(lower) + b"/etc/hard\x01link")
    index = tmp_path / "index"
    write_index(str(lower), str(index))
    walked = DirTree(lower).entries
    entries = read_index(str(index))
    target = os.fsdecode(b"target\x01with\x01fields\xfe")
    assert entries.walk_info("etc/link\x01") == (FileType.SYMLINK, target)  # from the row
    assert [entries[name] for name in walked] == list(walked.values())
    assert entries["etc/link\x01"].linkname == target
    assert entries.walk_info("etc/link\x01") == (FileType.SYMLINK, target)  # from the Entry
    groups = {entry.link_key for entry in walked.values() if entry.link_key}
    assert len({entries[name].link_key for name, entry in walked.items()
                if entry.link_key}) == len(groups) == 2  # perl's and the odd file's
    text = index.read_text(errors="surrogateescape")
    index.write_text(text.rsplit("\0", 1)[0], errors="surrogateescape")  # a row gone
    with pytest.raises(NbicError, match="damaged"):
        read_index(str(index))
    head = text.rpartition("\0")[0]
    index.write_text(f"{head}\0-\x01644", errors="surrogateescape")  # a row cut short
    with pytest.raises(NbicError, match="damaged"):
        read_index(str(index))[head.rpartition("\0")[2]]
    index.write_text(text.replace("\0usr/bin\0d\x01", "\0usr/bin\0?\x01"),
                     errors="surrogateescape")
    with pytest.raises(NbicError, match="damaged"):
        read_index(str(index)).walk_info("usr/bin")  # a type it does not know
