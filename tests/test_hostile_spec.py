"""Spec lists against hostile images and careless input: host files through the
extract / list --spec / pack --spec round trip, names the parser would expand,
a root that is not a directory, bad bytes, bad locations, and the order of
hardlink lines the kernel depends on. Through the real CLI wherever it matters."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from cpio_helpers import archive, member, pattern, raw_archive, run_tool

from nbic.boot import BootConfig, BootOutcome, boot, format_result
from nbic.cpio.entry import Entry, FileType, ancestors, sort_key
from nbic.cpio.image import read_entries
from nbic.cpio.spec import format_spec, parse_spec
from nbic.devices import parse_device
from nbic.errors import SpecError, UsageError
from nbic.tools.diff import diff_images

REPO = Path(__file__).resolve().parent.parent


def nbic(*args, env=None, check=True) -> subprocess.CompletedProcess:
    """Run `python -m nbic.cli ARGS`; a pack from spec lists alone gets `--init none`
    (the lists here need no /init, and its warning is not the line under test)."""
    if args[:2] == ("pack", "--spec"):
        args = (*args, "--init", "none")
    result = subprocess.run([sys.executable, "-m", "nbic.cli", *map(str, args)], cwd=REPO,
                            env={**os.environ, **(env or {})}, capture_output=True)
    if check and result.returncode:
        raise AssertionError(f"nbic {args} failed: {result.stderr.decode()}")
    return result


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """The failure was a single stderr line holding every fragment, with exit 1."""
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 1, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# --- item 2: a host file through the spec round trip ----------------------------------


def _host_secret(tmp_path: Path) -> Path:
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret").write_bytes(b"HOST SECRET")
    return host


def test_a_host_file_never_reaches_an_image_through_the_spec_round_trip(tmp_path):
    host = _host_secret(tmp_path)
    image = write(tmp_path / "evil.cpio", archive([
        member("etc", FileType.DIR, perm=0o755),
        member("etc/ok", data=b"fine"),
        member("lib", FileType.SYMLINK, perm=0o777, linkname=str(host)),
        member("lib/secret", data=b"image data"),
        member("x", FileType.SYMLINK, perm=0o777, linkname=str(host / "secret")),
    ]))
    out = tmp_path / "out"
    extracted = run_tool("extract", str(image), str(out), check=1)
    assert "'lib/secret'" in extracted.stderr.decode()
    assert (host / "secret").read_bytes() == b"HOST SECRET"

    listed = run_tool("list", "--spec", str(image), check=1)
    spec_lines = listed.stdout.decode().splitlines()
    assert not any(line.split()[1] == "/lib/secret" for line in spec_lines), spec_lines
    assert f"slink /lib {host} 0777 0 0" in spec_lines
    offset = next(e.offset for e in read_entries(image) if e.name == "lib/secret")
    warnings = listed.stderr.decode().splitlines()
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith(f"nbic: warning: byte {offset} of {image}: ")
    assert "'lib/secret'" in warnings[0] and "lib is a symlink" in warnings[0]
    assert warnings[1] == f"cpio-list: error: {image}: 1 entry left out of the spec list " \
        "(cpio-extract does not write it)"

    spec = write(tmp_path / "listed.spec", listed.stdout)
    rebuilt = tmp_path / "rebuilt.cpio"
    nbic("pack", "--spec", spec, "-o", rebuilt, env={"NBIC_ROOT": str(out)})
    assert b"HOST SECRET" not in rebuilt.read_bytes()
    assert diff_images(str(image), str(rebuilt)) == ["- lib/secret"]

    # A list as the old cpio-list wrote it: pack --spec follows no symlink below
    # ${NBIC_ROOT}, neither in the middle of the path nor at its end.
    for number, line in enumerate([
        "file /lib/secret ${NBIC_ROOT}/lib/secret 0644 0 0",
        "file /x ${NBIC_ROOT}/x 0644 0 0",
        "file /y ${NBIC_ROOT}/etc/../lib/secret 0644 0 0",
    ], 1):
        old = write(tmp_path / f"old{number}.spec", b"dir /etc 0755 0 0\n" + line.encode())
        result = nbic("pack", "--spec", old, "-o", tmp_path / "old.cpio",
                      env={"NBIC_ROOT": str(out)}, check=False)
        one_line_error(result, f"{old}:2: ")
        assert not (tmp_path / "old.cpio").exists()
    assert "lib is a symlink" in one_line_error(nbic(
        "pack", "--spec", tmp_path / "old1.spec", "-o", tmp_path / "old.cpio",
        env={"NBIC_ROOT": str(out)}, check=False))
    # nbic run copies spec locations into its container: the same rule, checked on
    # the host before anything starts.
    assert "lib is a symlink" in one_line_error(nbic(
        "run", "--spec", tmp_path / "old1.spec", "-o", tmp_path / "run.cpio", "--", "true",
        env={"NBIC_ROOT": str(out)}, check=False))
    assert not (tmp_path / "run.cpio").exists()


def test_locations_outside_nbic_root_are_host_paths_as_named(tmp_path):
    """Only ${NBIC_ROOT} marks a tree made from an image; a list's author may name
    host paths through symlinks anywhere else, and NBIC_ROOT itself may be one."""
    host = _host_secret(tmp_path)
    (tmp_path / "link-to-host").symlink_to(host)
    (tmp_path / "root-link").symlink_to(host)
    spec = write(tmp_path / "host.spec",
                 f"file /a {tmp_path}/link-to-host/secret 0600 0 0\n"
                 "file /b ${NBIC_ROOT}/secret 0600 0 0\n"
                 "file /c ${HOME_DIR}/secret 0600 0 0\n".encode())
    image = tmp_path / "host.cpio"
    nbic("pack", "--spec", spec, "-o", image,
         env={"NBIC_ROOT": str(tmp_path / "root-link"),
              "HOME_DIR": str(tmp_path / "link-to-host")})
    for name in ("a", "b", "c"):
        assert run_tool("cat", str(image), name).stdout == b"HOST SECRET"


def _tricky_image(tmp_path: Path) -> Path:
    (tmp_path / "elsewhere").mkdir(exist_ok=True)
    first = raw_archive([
        (Entry("d", FileType.DIR, perm=0o755, ino=1), b""),
        (Entry("d/kept", FileType.FILE, size=4, ino=2), b"kept"),
        (Entry("d", FileType.SYMLINK, linkname="/elsewhere", perm=0o777, ino=3), b""),
        (Entry("d/more", FileType.FILE, size=4, ino=4), b"more"),
        (Entry("/abs", FileType.FILE, size=1, ino=5), b"a"),
        (Entry("up/../../x", FileType.FILE, size=1, ino=6), b"x"),
        (Entry("f", FileType.FILE, size=1, ino=7), b"f"),
        (Entry("f/below", FileType.FILE, size=1, ino=8), b"b"),
        (Entry("e", FileType.DIR, perm=0o700, ino=9), b""),
        (Entry("e", FileType.FILE, size=2, ino=10), b"ee"),
        (Entry("s", FileType.SYMLINK, linkname=str(tmp_path / "elsewhere"), perm=0o777,
               ino=11), b""),
        (Entry("s/deep/er", FileType.FILE, size=1, ino=12), b"s"),
        (Entry("h1", FileType.FILE, nlink=2, ino=13), b""),
        (Entry("s/h2", FileType.FILE, nlink=2, size=2, ino=13), b"hh"),
        (Entry("implicit/parent/file", FileType.FILE, size=1, ino=14), b"i"),
    ])
    second = archive([member("s", FileType.DIR, perm=0o755),
                      member("s/fine", data=b"fine")])
    return write(tmp_path / "tricky.cpio", first + second)


def test_the_spec_list_names_exactly_what_cpio_extract_writes(tmp_path):
    image = _tricky_image(tmp_path)
    out = tmp_path / "out"
    run_tool("extract", str(image), str(out), check=1)
    written = set()
    for parent, dirs, files in os.walk(out):
        for name in dirs + files:
            written.add(os.path.relpath(os.path.join(parent, name), out))
    listed = run_tool("list", "--spec", str(image), check=1)
    items = parse_spec(listed.stdout.decode(), env={"NBIC_ROOT": str(out)})
    named = {link for item in items for link in (item.entry.name, *item.hardlinks)}
    implicit = {"implicit", "implicit/parent"}  # made by the extract, in no entry
    assert named == written - implicit
    assert list((tmp_path / "elsewhere").iterdir()) == []
    for item in items:
        if item.location is not None:
            assert Path(item.location).resolve().is_relative_to(out.resolve()), item


# --- item 9: names the parser would expand, a root that is not a directory -----------


@pytest.mark.parametrize("name", ["a${HOME}b", "${NBIC_ROOT}", "x$${y}", "$${", "${", "$",
                                  "a}${b}${c}"])
def test_names_with_dollar_brace_survive_the_round_trip(tmp_path, name):
    image = write(tmp_path / "dollar.cpio", archive([
        member(name, FileType.DIR, perm=0o755),
        member(f"{name}/{name}", data=b"data", link_key=1),
        member(f"{name}/link", data=b"data", link_key=1),
        member("other", data=b"other"),
        member(f"{name}-l", FileType.SYMLINK, perm=0o777, linkname=name),
    ]))
    out = tmp_path / "out"
    run_tool("extract", str(image), str(out))
    spec = write(tmp_path / "dollar.spec", run_tool("list", "--spec", str(image)).stdout)
    rebuilt = tmp_path / "rebuilt.cpio"
    nbic("pack", "--spec", spec, "-o", rebuilt,
         env={"NBIC_ROOT": str(out), "HOME": "/nonexistent", "y": "Y", "b": "B", "c": "C"})
    assert diff_images(str(image), str(rebuilt)) == []


def test_dev_values_that_must_be_refused(tmp_path):
    for text, fragment in [("x:c:1:2:10000", "mode"), ("x:c:1:2:77777", "mode"),
                           ("x:c:1:2:-1", "mode"), ("x:c:-1:2", "major"),
                           ("x:b:1:-2", "minor"), ("x:c:4096:0", "major"),
                           (":c:1:2", "root"), ("/:c:1:2", "root"), ("/./:b:1:2", "root")]:
        with pytest.raises(UsageError, match=fragment):
            parse_device(text)
        init = write(tmp_path / "init", b"#!/bin/sh\n")
        spec = write(tmp_path / "init.spec", f"file /init {init} 0755 0 0\n".encode())
        result = nbic("pack", "--spec", spec, "--dev", text, "-o", tmp_path / "d.cpio",
                      check=False)
        one_line_error(result, f"--dev {text!r}")
        assert not (tmp_path / "d.cpio").exists()
    assert parse_device("x:c:1:2:7777").perm == 0o7777


@pytest.mark.parametrize("line", [
    "file / {loc} 0644 0 0", "file /. {loc} 0644 0 0", "file /x {loc} 0644 0 0 /",
    "file /x {loc} 0644 0 0 /y //", "nod / 0600 0 0 c 1 2", "slink / x 0777 0 0",
    "pipe / 0600 0 0", "sock /./ 0600 0 0"])
def test_a_spec_line_cannot_make_the_root_anything_but_a_directory(tmp_path, line):
    location = write(tmp_path / "data", b"data")
    text = "dir / 0755 0 0\n" + line.format(loc=location) + "\n"
    with pytest.raises(SpecError, match=r"^list\.spec:2: .*root"):
        parse_spec(text, source="list.spec")
    spec = write(tmp_path / "list.spec", text.encode())
    result = nbic("pack", "--spec", spec, "-o", tmp_path / "r.cpio", check=False)
    one_line_error(result, f"{spec}:2: ")
    assert not (tmp_path / "r.cpio").exists()


# --- item 6: bytes and locations -----------------------------------------------------


def test_a_spec_list_with_non_utf8_bytes_is_one_line(tmp_path):
    location = write(tmp_path / "data", b"x")
    for number, line in [(2, b"file /bad-\xff-name LOC 0644 0 0"),
                         (3, b"fil\xe9 /b LOC 0644 0 0")]:
        lines = [*[b"dir /a 0755 0 0", b"# comment"][:number - 1], line]
        spec = write(tmp_path / "bytes.spec",
                     b"\n".join(lines).replace(b"LOC", os.fsencode(location)) + b"\n")
        result = nbic("pack", "--spec", spec, "-o", tmp_path / "b.cpio", check=False)
        one_line_error(result, f"{spec}:{number}: ", "UTF-8")
        assert not (tmp_path / "b.cpio").exists()


@pytest.mark.parametrize("kind", ["directory", "fifo", "missing"])
def test_a_file_location_must_be_a_regular_file(tmp_path, kind):
    location = tmp_path / "loc"
    if kind == "directory":
        location.mkdir()
    elif kind == "fifo":
        os.mkfifo(location)  # opening it must not wait for a writer
    spec = write(tmp_path / "list.spec", f"dir /a 0755 0 0\nfile /a/b {location} 0644 0 0\n"
                 .encode())
    result = nbic("pack", "--spec", spec, "-o", tmp_path / "o.cpio", check=False)
    expected = {"directory": "is a directory", "fifo": "is a fifo",
                "missing": "No such file or directory"}[kind]
    one_line_error(result, f"{spec}:2: {location}: ", expected)
    assert not (tmp_path / "o.cpio").exists()


# --- item 3: hardlink groups come after the parents of all their names ---------------


def _hardlink_image(tmp_path: Path) -> Path:
    data = pattern(3000)
    return write(tmp_path / "links.cpio", archive([
        member("a", FileType.DIR, perm=0o755),
        member("a/first", data=data, perm=0o755, link_key="g"),
        member("z", FileType.DIR, perm=0o755),
        member("z/dir", FileType.DIR, perm=0o755),
        member("z/dir/second", data=data, perm=0o755, link_key="g"),
        member("b", FileType.DIR, perm=0o755),
        member("b/third", data=data, perm=0o755, link_key="g"),
    ]))


def assert_parents_first(spec_text: str) -> None:
    """Each name of every line comes after the line of each of its parents (the
    order gen_init_cpio writes the names in, and the kernel creates them in)."""
    made: set[str] = set()
    for item in parse_spec(spec_text, env={"NBIC_ROOT": "/r"}):
        for name in (item.entry.name, *item.hardlinks):
            missing = [parent for parent in ancestors(name) if parent not in made]
            assert not missing, f"{name} before {missing}"
            made.add(name)


def test_a_hardlink_line_comes_after_the_parents_of_all_its_names(tmp_path):
    image = _hardlink_image(tmp_path)
    listed = run_tool("list", "--spec", str(image)).stdout.decode()
    assert_parents_first(listed)
    files = [line for line in listed.splitlines() if line.startswith("file ")]
    assert files == ["file /a/first ${NBIC_ROOT}/a/first 0755 0 0 /b/third /z/dir/second"]
    entries = [Entry(name, FileType.DIR) for name in ("a", "b", "z", "z/dir")] + [
        Entry(name, FileType.FILE, link_key=1) for name in ("a/x", "b/y", "z/dir/w")]
    ordered = sorted(entries, key=lambda entry: sort_key(entry.name))
    assert_parents_first(format_spec((entry, "/loc") for entry in ordered))
    # pack --spec and pack --emit-spec with such a list.
    out = tmp_path / "out"
    run_tool("extract", str(image), str(out))
    spec = write(tmp_path / "links.spec", listed.encode())
    emitted = tmp_path / "emitted.spec"
    rebuilt = tmp_path / "rebuilt.cpio"
    nbic("pack", "--spec", spec, "--emit-spec", emitted, "-o", rebuilt,
         env={"NBIC_ROOT": str(out)})
    assert_parents_first(emitted.read_text())
    assert diff_images(str(image), str(rebuilt)) == []


# The /init of the boot tests: reads every name of the group and says, per name,
# whether it holds the expected bytes.
LINK_INIT_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

static char expected[8192], got[8192];

static int slurp(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY), n = 0, r;
    if (fd < 0) return -1;
    while ((r = read(fd, buf + n, size - n)) > 0) n += r;
    close(fd);
    return n;
}

int main(void) {
    const char *names[] = {"/a/first", "/b/third", "/z/dir/second", 0};
    char line[256];
    int out = open("/dev/console", O_WRONLY);
    if (out < 0) {
        mkdir("/dev", 0755);
        mount("devtmpfs", "/dev", "devtmpfs", 0, 0);
        out = open("/dev/console", O_WRONLY);
    }
    int want = slurp("/expected", expected, sizeof expected);
    for (int i = 0; names[i]; i++) {
        int n = slurp(names[i], got, sizeof got);
        const char *verdict = n < 0 ? "MISSING"
            : (n == want && memcmp(got, expected, n) == 0) ? "OK" : "BAD";
        snprintf(line, sizeof line, "LINK-%s %s %d\n", verdict, names[i], n);
        write(out, line, strlen(line));
    }
    write(out, "LINKS-CHECKED\n", 14);
    return 0;
}
"""


@pytest.fixture(scope="module")
def link_init(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        if os.environ.get("CI"):
            pytest.fail("gcc not found (ci/setup installs it)")
        pytest.skip("gcc not found")
    work = tmp_path_factory.mktemp("link-init")
    (work / "init.c").write_text(LINK_INIT_C)
    subprocess.run([gcc, "-static", "-Os", "-o", str(work / "init"), str(work / "init.c")],
                   check=True)
    return work / "init"


def _link_spec(tmp_path: Path, init: Path) -> tuple[Path, Path]:
    """An image with the hardlink group, the test /init and the expected bytes,
    extracted; returns the spec list cpio-list wrote for it and the tree."""
    data = pattern(3000)
    image = write(tmp_path / "boot-links.cpio", archive([
        member("a", FileType.DIR, perm=0o755),
        member("a/first", data=data, perm=0o644, link_key="g"),
        member("b", FileType.DIR, perm=0o755),
        member("b/third", data=data, perm=0o644, link_key="g"),
        member("expected", data=data),
        member("init", data=init.read_bytes(), perm=0o755),
        member("z", FileType.DIR, perm=0o755),
        member("z/dir", FileType.DIR, perm=0o755),
        member("z/dir/second", data=data, perm=0o644, link_key="g"),
    ]))
    out = tmp_path / "out"
    run_tool("extract", str(image), str(out))
    spec = write(tmp_path / "boot-links.spec", run_tool("list", "--spec", str(image)).stdout)
    assert_parents_first(spec.read_text())
    return spec, out


def _in_line_order(spec: Path, root: Path) -> bytes:
    """The archive gen_init_cpio writes for a spec list: names in line order, a
    group's names under one inode with the data on its last name."""
    items: list[tuple[Entry, bytes]] = []
    for ino, item in enumerate(parse_spec(spec.read_text(), env={"NBIC_ROOT": str(root)}), 1):
        entry = item.entry
        if entry.type is not FileType.FILE:
            nlink = 2 if entry.type is FileType.DIR else 1
            items.append((replace(entry, ino=ino, nlink=nlink), b""))
            continue
        assert item.location is not None
        data = Path(item.location).read_bytes()
        names = (entry.name, *item.hardlinks)
        for index, name in enumerate(names, 1):
            last = index == len(names)
            items.append((replace(entry, name=name, ino=ino, nlink=len(names),
                                  size=len(data) if last else 0), data if last else b""))
    return raw_archive(items)


def _boot_checks_links(image: Path, kernel: Path) -> None:
    result = boot(image, BootConfig(kernel=kernel, expect=("LINKS-CHECKED",), timeout=180))
    print(f"\n{format_result(result, tail_lines=8)}")
    assert result.outcome is BootOutcome.PASSED, result.tail()
    for name in ("/a/first", "/b/third", "/z/dir/second"):
        assert f"LINK-OK {name} 3000" in result.console, (name, result.tail())


@pytest.mark.boot
def test_the_kernel_unpacks_a_hardlink_group_in_spec_line_order(tmp_path, kernel, link_init):
    """As gen_init_cpio would write the list cpio-list --spec made: every name of
    the group, and its data, survives the kernel's unpacking."""
    spec, root = _link_spec(tmp_path, link_init)
    image = write(tmp_path / "line-order.cpio", _in_line_order(spec, root))
    _boot_checks_links(image, kernel)


@pytest.mark.boot
def test_an_image_nbic_packs_from_the_spec_list_boots_with_all_names(tmp_path, kernel,
                                                                      link_init):
    spec, root = _link_spec(tmp_path, link_init)
    image = tmp_path / "packed.cpio.zst"
    nbic("pack", "--spec", spec, "-o", image, env={"NBIC_ROOT": str(root)})
    _boot_checks_links(image, kernel)


def test_emit_spec_escapes_rootfs_names_with_a_variable_in_them(tmp_path):
    from nbic.cpio.spec import parse_spec
    from nbic.tree import DirTree, TarTree

    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/${HOME}").write_text("x")
    tar = tmp_path / "rootfs.tar"
    import tarfile
    with tarfile.open(tar, "w") as archive:
        archive.add(root, arcname=".")
    for tree in (DirTree(root), TarTree(tar)):
        location = tree.location("etc/${HOME}")
        item = parse_spec(f"file /x {location} 0644 0 0",
                          env={"NBIC_ROOT": "/r", "HOME": "/home"})[0]
        assert item.location.endswith("etc/${HOME}"), item.location
