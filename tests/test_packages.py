"""`cpio-du --by-package`: an image's files mapped to the Debian packages of its
rootfs, on the real bookworm rootfs (checked against dpkg-query itself) and on
tiny synthetic usr-merged rootfs trees."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from cpio_helpers import archive, member, run_tool
from test_pack import pack

from nbic.cpio.entry import FileType
from nbic.cpio.image import read_entries
from nbic.errors import RootfsError
from nbic.packages import (
    UNOWNED,
    Diversion,
    Package,
    package_report,
    parse_diversions,
    parse_status,
)

# --- the bash image from the real rootfs -------------------------------------------


def _by_package(image: Path, rootfs: Path) -> dict:
    return json.loads(run_tool("du", str(image), "--by-package", str(rootfs), "--json").stdout)


def _file_data(image: Path) -> int:
    """The image's file data, summed independently of nbic.usage (no hardlinks here)."""
    entries = read_entries(image)
    assert not any(entry.link_key for entry in entries)
    return sum(entry.size for entry in entries if entry.type is FileType.FILE)


def test_bash_image_by_package(rootfs_dir, rootfs_tar, tmp_path):
    image = tmp_path / "bash.cpio.zst"
    pack(rootfs_dir, image)
    report = _by_package(image, rootfs_dir)
    shares = {item["name"]: item for item in report["packages"]}
    for name in ("bash", "libc6", "coreutils", "libtinfo6", "mount", "libmount1"):
        assert shares[name]["bytes"] > 0, name
    # dpkg lists /lib/x86_64-linux-gnu/libc.so.6 and /bin/bash: found through usr-merge.
    assert "usr/lib/x86_64-linux-gnu/libc.so.6" in shares["libc6"]["paths"]
    assert shares["bash"]["paths"] == ["usr/bin/bash"]
    assert sorted(shares["coreutils"]["paths"]) == ["usr/bin/cat", "usr/bin/ls"]
    assert shares[UNOWNED]["paths"] == ["init"]
    assert shares[UNOWNED]["package"] is None
    data = _file_data(image)
    assert report["data_bytes"] == data
    assert sum(item["bytes"] for item in report["packages"]) == data
    assert report["files"] == sum(item["files"] for item in report["packages"])
    assert [item["bytes"] for item in report["packages"]] == sorted(
        (item["bytes"] for item in report["packages"]), reverse=True)
    assert round(sum(item["percent"] for item in report["packages"])) == 100
    # The rootfs as a tar says the same.
    from_tar = _by_package(image, rootfs_tar)
    assert from_tar["packages"] == report["packages"]
    # The console form lists the same packages.
    lines = run_tool("du", str(image), "--by-package", str(rootfs_dir), "-b").stdout.decode()
    for name, item in shares.items():
        assert any(line.split()[0] == str(item["bytes"]) and line.endswith(f"  {name}")
                   for line in lines.splitlines()), name
    assert lines.splitlines()[-1] == f"total: 13 files, {data} data, {len(shares) - 1} packages"


def test_owners_agree_with_dpkg_query(rootfs_dir, tmp_path):
    """dpkg itself names the same owner for every file (matched by base name)."""
    dpkg_query = shutil.which("dpkg-query")
    if dpkg_query is None:
        pytest.fail("dpkg-query is missing (a Debian host is required)")
    image = tmp_path / "bash.cpio"
    pack(rootfs_dir, image)
    report = _by_package(image, rootfs_dir)
    owned = [(item["package"], path) for item in report["packages"] if item["package"]
             for path in item["paths"]]
    patterns = [f"*/{os.path.basename(path)}" for _, path in owned]
    result = subprocess.run([dpkg_query, f"--admindir={rootfs_dir}/var/lib/dpkg", "-S",
                             *patterns], capture_output=True, text=True, check=True)
    dpkg_owners: dict[str, set[str]] = {}
    for line in result.stdout.splitlines():
        packages, _, path = line.partition(": ")
        for package in packages.split(", "):
            dpkg_owners.setdefault(os.path.basename(path), set()).add(package.split(":")[0])
    for package, path in owned:
        assert package in dpkg_owners[os.path.basename(path)], path


# --- synthetic rootfs trees ------------------------------------------------------------

LIBDIR = "usr/lib/x86_64-linux-gnu"


def _status(*packages: tuple[str, str, str]) -> str:
    return "\n".join(
        f"Package: {name}\nStatus: install ok {state}\nPriority: required\n"
        f"Architecture: {arch}\nMulti-Arch: {multi}\nVersion: 1.0\n"
        f"Description: {name}\n a long description line\n .\n another one\n"
        for name, arch, multi, state in packages)


def _make_rootfs(root: Path, *, diversions: str = "") -> Path:
    """A usr-merged rootfs (bin -> usr/bin, lib -> usr/lib) with a dpkg database
    whose lists use the pre-merge names, as Debian's do."""
    def file(name: str, data: bytes) -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)

    (root / "usr/bin").mkdir(parents=True)
    (root / LIBDIR).mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "lib").symlink_to("usr/lib")
    file("usr/bin/bash", b"b" * 1000)
    file(f"{LIBDIR}/libc.so.6", b"c" * 3000)
    file("usr/bin/perl", b"p" * 500)
    file("usr/bin/tool", b"t" * 40)
    file("usr/bin/tool.real", b"r" * 70)
    dpkg = root / "var/lib/dpkg"
    file("var/lib/dpkg/status", _status(
        ("bash", "amd64", "foreign", "installed"), ("libc6", "amd64", "same", "installed"),
        ("perl-base", "amd64", "no", "installed"), ("gone", "amd64", "no", "config-files"),
        ("diverter", "all", "no", "installed"), ("tool", "amd64", "no", "installed"),
    ).encode())
    file("var/lib/dpkg/info/bash.list", b"/.\n/bin\n/bin/bash\n")
    file("var/lib/dpkg/info/libc6:amd64.list",
         b"/.\n/lib\n/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu/libc.so.6\n")
    # perl-base lists the name the image does not count the hardlink group under.
    file("var/lib/dpkg/info/perl-base.list", b"/usr/bin/perl5.36.0\n")
    # A package in config-files state owns nothing, even with a stale list.
    file("var/lib/dpkg/info/gone.list", b"/usr/bin/bash\n")
    file("var/lib/dpkg/info/diverter.list", b"/usr/bin/tool\n")
    file("var/lib/dpkg/info/tool.list", b"/usr/bin/tool\n")
    if diversions:
        (dpkg / "diversions").write_text(diversions)
    return root


def _image(path: Path) -> Path:
    """What an image of that rootfs holds: usr-merged names, a hardlink group,
    a file no package owns."""
    path.write_bytes(archive([
        member("init", data=b"#!/bin/sh\n"),
        member("usr", FileType.DIR, perm=0o755),
        member("usr/bin", FileType.DIR, perm=0o755),
        member("usr/bin/bash", data=b"b" * 1000),
        member("usr/bin/perl", data=b"p" * 500, link_key=1),
        member("usr/bin/perl5.36.0", data=b"p" * 500, link_key=1),
        member("usr/bin/tool", data=b"t" * 40),
        member("usr/bin/tool.real", data=b"r" * 70),
        member("usr/lib", FileType.DIR, perm=0o755),
        member(LIBDIR, FileType.DIR, perm=0o755),
        member(f"{LIBDIR}/libc.so.6", data=b"c" * 3000),
        member("bin", FileType.SYMLINK, perm=0o777, linkname="usr/bin"),
    ]))
    return path


def _shares(report) -> dict[str, tuple[int, tuple[str, ...]]]:
    return {share.label: (share.size, share.paths) for share in report.shares}


DIVERSION = "/usr/bin/tool\n/usr/bin/tool.real\ndiverter\n"


def test_usr_merge_hardlinks_and_diversions(tmp_path):
    rootfs = _make_rootfs(tmp_path / "rootfs", diversions=DIVERSION)
    report = package_report(_image(tmp_path / "img.cpio"), rootfs)
    assert _shares(report) == {
        "libc6": (3000, (f"{LIBDIR}/libc.so.6",)),
        "bash": (1000, ("usr/bin/bash",)),
        "perl-base": (500, ("usr/bin/perl",)),  # the group counts once, for its owner
        "tool": (70, ("usr/bin/tool.real",)),  # tool's /usr/bin/tool was diverted
        "diverter": (40, ("usr/bin/tool",)),  # the diverting package keeps its own
        UNOWNED: (10, ("init",)),
    }
    assert report.data == 3000 + 1000 + 500 + 70 + 40 + 10
    assert [share.size for share in report.shares] == sorted(
        (share.size for share in report.shares), reverse=True)
    libc = next(share for share in report.shares if share.label == "libc6")
    assert libc.package == Package("libc6", "amd64", "1.0", "same")


def test_without_diversions_the_first_package_in_name_order_wins(tmp_path):
    rootfs = _make_rootfs(tmp_path / "rootfs")
    shares = _shares(package_report(_image(tmp_path / "img.cpio"), rootfs))
    assert shares["diverter"] == (40, ("usr/bin/tool",))
    assert "tool" not in shares
    assert shares[UNOWNED] == (80, ("init", "usr/bin/tool.real"))


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_rootfs_as_tar(tmp_path, mode):
    rootfs = _make_rootfs(tmp_path / "rootfs", diversions=DIVERSION)
    image = _image(tmp_path / "img.cpio")
    tar = tmp_path / ("rootfs.tar" + (".gz" if mode.endswith("gz") else ""))
    with tarfile.open(tar, mode) as out:
        out.add(rootfs, arcname=".")
    assert _shares(package_report(image, tar)) == _shares(package_report(image, rootfs))


def test_local_diversion_and_a_second_architecture(tmp_path):
    rootfs = _make_rootfs(tmp_path / "rootfs",
                          diversions="/usr/bin/tool\n/usr/bin/tool.real\n:\n")
    with open(rootfs / "var/lib/dpkg/status", "a") as status:
        status.write("\n" + _status(("libc6", "i386", "same", "installed")))
    (rootfs / "var/lib/dpkg/info/libc6:i386.list").write_text("/lib/i386-linux-gnu/libc.so.6\n")
    shares = _shares(package_report(_image(tmp_path / "img.cpio"), rootfs))
    # A local diversion moves every package's file, the diverter's too.
    assert shares["diverter"] == (70, ("usr/bin/tool.real",))
    assert shares[UNOWNED] == (50, ("init", "usr/bin/tool"))
    assert "libc6:amd64" in shares and "libc6" not in shares


def test_json_schema(tmp_path):
    rootfs = _make_rootfs(tmp_path / "rootfs", diversions=DIVERSION)
    image = _image(tmp_path / "img.cpio")
    report = json.loads(run_tool("du", str(image), "--by-package", str(rootfs),
                                 "--json").stdout)
    assert set(report) == {"schema", "image", "rootfs", "data_bytes", "files", "packages"}
    assert report["schema"] == "nbic-du-by-package/1"
    assert report["packages"][0] == {
        "name": "libc6", "package": "libc6", "architecture": "amd64", "version": "1.0",
        "bytes": 3000, "percent": round(100 * 3000 / 4620, 2), "files": 1,
        "paths": [f"{LIBDIR}/libc.so.6"]}
    assert report["packages"][-1]["name"] == UNOWNED
    assert report["packages"][-1]["package"] is None


def test_rootfs_without_dpkg_database(tmp_path):
    rootfs = tmp_path / "rootfs"
    (rootfs / "usr/bin").mkdir(parents=True)
    with pytest.raises(RootfsError, match="no dpkg database"):
        package_report(_image(tmp_path / "img.cpio"), rootfs)
    result = run_tool("du", str(tmp_path / "img.cpio"), "--by-package", str(rootfs), check=1)
    assert b"no dpkg database" in result.stderr


def test_parsers():
    status = ("Package: a\nStatus: install ok installed\nArchitecture: amd64\n"
              "Description: x\n Package: not-a-field\n\n\n"
              "Package: b\nStatus: deinstall ok config-files\n\n"
              "Package: c\nStatus: install ok unpacked\nArchitecture: all\n"
              "Multi-Arch: foreign\nVersion: 2:1.0-1\n")
    assert parse_status(status.splitlines(keepends=True)) == [
        Package("a", "amd64", "", "no"), Package("c", "all", "2:1.0-1", "foreign")]
    assert parse_diversions(["/a\n", "/a.real\n", "p\n", "/b\n", "/b.local\n", ":\n"]) == {
        "/a": Diversion("/a.real", "p"), "/b": Diversion("/b.local", None)}
    with pytest.raises(RootfsError, match="truncated"):
        parse_diversions(["/a\n", "/a.real\n"])
    assert Package("libc6", "amd64", "", "same").list_names() == ("libc6:amd64", "libc6")
    assert Package("bash", "amd64", "", "foreign").list_names() == ("bash", "bash:amd64")
