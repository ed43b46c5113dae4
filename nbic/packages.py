"""Which Debian package each file of an image comes from, by the dpkg database
of the rootfs it was made from (`cpio-du IMAGE --by-package ROOTFS`).

dpkg records the files of each installed package in var/lib/dpkg/info/P.list
(P:ARCH.list for a Multi-Arch: same package) under the names the package
ships. On a usr-merged system those are often not the physical names: dpkg
lists /lib/x86_64-linux-gnu/libc.so.6 and /bin/bash where the files live at
usr/lib/... and usr/bin/.... So each listed path's parent directory is
resolved through the rootfs's own symlinks, in its index (never on the host),
and a diverted path (var/lib/dpkg/diversions) is followed to where dpkg put it.

Files are matched by name: an image file at a path some package lists counts
for that package. A file two packages list (rare: Multi-Arch: same packages of
two architectures share their docs) counts for the first in name order, so the
shares add up to the image's file data exactly.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nbic.cpio.entry import split_path
from nbic.errors import RootfsError
from nbic.tree import Tree, open_tree
from nbic.usage import Formatter, human_size, measure

DPKG_DIR = "var/lib/dpkg"
UNOWNED = "(no package)"
SCHEMA = "nbic-du-by-package/1"
# Status words of packages that have no files on disk.
_WITHOUT_FILES = ("not-installed", "config-files")


@dataclass(frozen=True, order=True)
class Package:
    name: str
    architecture: str
    version: str
    multi_arch: str = "no"

    def list_names(self) -> tuple[str, str]:
        """Names of the package's .list file, the likely one first: dpkg
        qualifies it with the architecture for Multi-Arch: same packages only."""
        plain, qualified = self.name, f"{self.name}:{self.architecture}"
        return (qualified, plain) if self.multi_arch == "same" else (plain, qualified)


@dataclass(frozen=True)
class Diversion:
    to: str  # where the diverted path's file is put instead
    by: str | None  # the diverting package, whose own file stays; None: a local diversion


@dataclass(frozen=True)
class Database:
    packages: dict[Package, str]  # installed package -> tree name of its .list
    diversions: dict[str, Diversion]  # diverted path -> diversion


def paragraphs(lines: Iterable[str]) -> Iterator[dict[str, str]]:
    """deb822 paragraphs as {field: first-line value}; continuation lines are skipped."""
    fields: dict[str, str] = {}
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if fields:
                yield fields
            fields = {}
        elif not line[0].isspace() and ":" in line:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
    if fields:
        yield fields


def parse_status(lines: Iterable[str]) -> list[Package]:
    """The packages of a dpkg status file that have files on disk."""
    packages = []
    for fields in paragraphs(lines):
        status = fields.get("status", "").split()
        if "package" not in fields or (status and status[-1] in _WITHOUT_FILES):
            continue
        packages.append(Package(fields["package"], fields.get("architecture", ""),
                                fields.get("version", ""), fields.get("multi-arch", "no")))
    return packages


def parse_diversions(lines: Iterable[str]) -> dict[str, Diversion]:
    """dpkg's diversions file: three lines each, the path, where it goes, and the
    diverting package (":" for a local diversion)."""
    items = [line.rstrip("\n") for line in lines]
    if len(items) % 3:
        raise RootfsError(f"{DPKG_DIR}/diversions is truncated ({len(items)} lines)")
    return {items[i]: Diversion(items[i + 1], None if items[i + 2] == ":" else items[i + 2])
            for i in range(0, len(items), 3)}


def _text(tree: Tree, name: str) -> Iterator[str]:
    with io.TextIOWrapper(tree.open(name), encoding="utf-8", errors="surrogateescape",
                          newline="\n") as stream:
        yield from stream


def read_database(tree: Tree) -> Database:
    """The installed packages of the rootfs, their file lists and the diversions."""
    dpkg = tree.resolve(DPKG_DIR).target
    status = dpkg and tree.resolve(f"{dpkg}/status").target
    if not status or status not in tree:
        raise RootfsError(f"{tree.description} has no dpkg database (/{DPKG_DIR}/status): "
                          "not a Debian-style rootfs")
    info = tree.resolve(f"{dpkg}/info").target or f"{dpkg}/info"
    diversions = tree.resolve(f"{dpkg}/diversions").target
    lists = [name for name in tree.entries
             if name.startswith(f"{info}/") and name.endswith(".list")]
    tree.prefetch([status, *lists, *([diversions] if diversions and diversions in tree else [])])
    packages = {}
    for package in parse_status(_text(tree, status)):
        found = next((f"{info}/{list_name}.list" for list_name in package.list_names()
                      if f"{info}/{list_name}.list" in tree), None)
        if found:
            packages[package] = found
    return Database(packages, parse_diversions(_text(tree, diversions))
                    if diversions and diversions in tree else {})


def owners(tree: Tree, database: Database, names: set[str]) -> dict[str, Package]:
    """The package that owns each of `names` (physical names in the rootfs)."""
    found: dict[str, Package] = {}
    parents: dict[str, str | None] = {"": ""}  # listed parent -> physical parent
    for package in sorted(database.packages):
        for line in _text(tree, database.packages[package]):
            path = line.rstrip("\n")
            diversion = database.diversions.get(path)
            if diversion is not None and diversion.by != package.name:
                path = diversion.to
            parts = split_path(path)
            if not parts:
                continue
            parent = "/".join(parts[:-1])
            if parent not in parents:
                target = tree.resolve(parent).target
                parents[parent] = "" if target == "." else target
            physical = parents[parent]
            if physical is None:
                continue
            name = f"{physical}/{parts[-1]}" if physical else parts[-1]
            if name in names and name not in found:
                found[name] = package
    return found


@dataclass(frozen=True)
class Share:
    """One package's part of an image (package None: files no package owns)."""

    label: str  # the package name, NAME:ARCH where two architectures are installed
    package: Package | None
    size: int
    paths: tuple[str, ...]  # the image's files counted (a hardlink group by its first name)


@dataclass(frozen=True)
class PackageReport:
    image: str
    rootfs: str
    data: int  # the image's file data; the shares' sizes add up to it
    shares: tuple[Share, ...]  # largest first

    def percent(self, share: Share) -> float:
        return 100.0 * share.size / self.data if self.data else 0.0

    def format(self, size: Formatter = human_size) -> str:
        lines = [f"{'size':>8}  {'share':>6}  {'files':>5}  package"]
        lines += [f"{size(share.size):>8}  {self.percent(share):5.1f}%  "
                  f"{len(share.paths):>5}  {share.label}" for share in self.shares]
        owned = sum(1 for share in self.shares if share.package is not None)
        files = sum(len(share.paths) for share in self.shares)
        lines.append(f"total: {files} files, {size(self.data)} data, {owned} packages")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The JSON form; its schema is documented in docs/size-reports.md."""
        def item(share: Share) -> dict:
            package = share.package
            return {
                "name": share.label,
                "package": package.name if package else None,
                "architecture": package.architecture if package else None,
                "version": package.version if package else None,
                "bytes": share.size,
                "percent": round(self.percent(share), 2),
                "files": len(share.paths),
                "paths": list(share.paths),
            }

        return {"schema": SCHEMA, "image": self.image, "rootfs": self.rootfs,
                "data_bytes": self.data,
                "files": sum(len(share.paths) for share in self.shares),
                "packages": [item(share) for share in self.shares]}


def _labels(packages: Iterable[Package]) -> dict[Package, str]:
    packages = list(packages)
    names = [package.name for package in packages]
    return {package: package.name if names.count(package.name) == 1
            else f"{package.name}:{package.architecture}" for package in packages}


def package_report(image: str | Path, rootfs: str | Path) -> PackageReport:
    """Each package's share of the file data of `image`, by the dpkg database of
    `rootfs` (a directory or a tar)."""
    usage = measure(image)
    wanted = {name for counted in usage.files for name in usage.names_of(counted)}
    with open_tree(rootfs) as tree:
        database = read_database(tree)
        owner = owners(tree, database, wanted)
    parts: dict[Package | None, list[str]] = {}
    for counted in usage.files:
        package = next((owner[name] for name in usage.names_of(counted) if name in owner),
                       None)
        parts.setdefault(package, []).append(counted)
    labels = _labels(database.packages)
    shares = [Share(labels[package] if package else UNOWNED, package,
                    sum(usage.files[name] for name in names), tuple(names))
              for package, names in parts.items()]
    shares.sort(key=lambda share: (-share.size, share.label))
    return PackageReport(str(image), str(rootfs), usage.data, tuple(shares))
