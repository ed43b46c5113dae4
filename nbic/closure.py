"""From what was used or listed to everything a booting kernel needs for it, and why.

Given a rootfs index, a selection and (for `run`) what the session used, the
closure adds: every parent directory; every symlink met while resolving a
path (usr-merge `/bin -> usr/bin`, `/lib64/ld-linux-x86-64.so.2`); symlinks
whose target is in the image (soname links such as `libtinfo.so.6`); all
names of a hardlinked inode; files implied by lookups no tracer sees (see
nbic.implied); the ELF closure of `--include-bin` programs; the device nodes
and mount points a boot needs; `/init`; and the spec lists' entries on top.
Every entry records the reason it went in. Resolution happens in the index,
never on the host.

This module is the one home of the `/init` rule.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import BinaryIO

from nbic import implied
from nbic.cpio.archive import Member
from nbic.cpio.entry import Entry, FileType, ancestors, split_path
from nbic.cpio.spec import SpecItem, escape_location, open_location
from nbic.devices import BOOT_DEVICES, DeviceNode
from nbic.errors import MissingFileError, RootfsError, SpecError
from nbic.selection import InitMode, Selection
from nbic.tree import Resolution, Tree

log = logging.getLogger("nbic")

# Directories a boot script mounts on; a mount never shows up in a file trace.
MOUNT_POINTS = (("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("dev/pts", 0o755),
                ("run", 0o755), ("tmp", 0o1777))
# Where the session's own mounts were: only their mount points go in.
PSEUDO_FILESYSTEMS = ("proc", "sys", "dev/pts")


@dataclass(frozen=True)
class Wanted:
    """A path to put in the image, and why (shown in the report)."""

    path: str
    reason: str


@dataclass(frozen=True)
class SessionInit:
    """What boots when the rootfs has neither /init nor /chroot (`run` only): the
    session's script (a file where the plan is carried out), or its program."""

    script: str | None = None
    program: str | None = None
    search_path: str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Origin(enum.Enum):
    TREE = "tree"  # a file of the rootfs, by archive name
    FILE = "file"  # a file by path where the plan is carried out (spec locations, a script)


@dataclass(frozen=True)
class Data:
    """Where the bytes of one regular file of an image are."""

    origin: Origin
    path: str
    root: str | None = None  # Origin.FILE below ${NBIC_ROOT}: nothing below it is followed


@dataclass
class ImagePlan:
    """The entries of an image, where each regular file's bytes are, and why each
    entry is there."""

    entries: dict[str, Entry] = field(default_factory=dict)
    data: dict[str, Data] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    missing: tuple[str, ...] = ()

    def members(self, tree: Tree | None) -> list[Member]:
        return [Member(entry, self._source(tree, name)) for name, entry in self.entries.items()]

    def _source(self, tree: Tree | None, name: str
                ) -> Callable[[], AbstractContextManager[BinaryIO]] | None:
        data = self.data.get(name)
        if data is None:
            return None
        if data.origin is Origin.TREE:
            assert tree is not None
            return lambda: tree.open(data.path)
        return lambda: open_location(data.path, data.root)

    def location(self, tree: Tree | None, name: str) -> str:
        """Where a spec list's `file` line finds this entry's bytes."""
        data = self.data.get(name)
        if data is None:
            return ""
        if data.origin is Origin.TREE:
            assert tree is not None
            return tree.location(data.path)
        return escape_location(data.path)


class _Chooser:
    """The names chosen from the tree, each with the first reason it was chosen for."""

    def __init__(self, tree: Tree, exclude: tuple[str, ...]):
        self.tree = tree
        self.exclude = exclude
        self.reasons: dict[str, str] = {}

    @property
    def chosen(self) -> dict[str, str]:
        return self.reasons

    def excluded(self, name: str) -> bool:
        path = "/" + name
        return any(fnmatchcase(path, glob) for glob in self.exclude)

    def add(self, name: str, reason: str) -> None:
        if name == "." or name in self.reasons:
            return
        self.reasons[name] = reason
        for parent in ancestors(name):
            self.reasons.setdefault(parent, f"parent of /{name}")

    def add_resolution(self, resolution: Resolution, reason: str) -> str | None:
        """Add what a resolved path needs to work; returns its physical name."""
        if resolution.target is None:
            return None
        self.add(resolution.target, reason)
        for name in resolution.via:
            self.add(name, f"on the way to /{resolution.target}")
        return resolution.target

    def add_path(self, path: str, reason: str) -> str | None:
        """Add a path as the session or a list names it; a dangling symlink goes in as
        a symlink. Returns the physical name, or None if the rootfs has no such path."""
        resolution = self.tree.resolve(path)
        if resolution.target is None:
            link = self.tree.resolve(path, follow_last=False)
            entry = self.tree.get(link.target) if link.target else None
            if entry is None or entry.type is not FileType.SYMLINK:
                return None
            resolution = link
        if self.excluded(resolution.target or "") or self.excluded(
                "/".join(split_path(path))):
            return resolution.target
        return self.add_resolution(resolution, reason)


def plan(tree: Tree, selection: Selection, *, used: Iterable[Wanted] = (),
         session_devices: Iterable[tuple[DeviceNode, str]] = (),
         session_init: SessionInit | None = None,
         spec_file: Callable[[str], str] | None = None) -> ImagePlan:
    """The image for `selection` over `tree`. `used` are the paths a session used
    (those gone since are skipped), `session_devices` the nodes it opened;
    `spec_file` maps a spec list's file location to the copy the host made of it
    (None: read it where the list names it)."""
    chooser = _Chooser(tree, selection.exclude)
    for wanted in used:
        if not _in_pseudo_filesystem(wanted.path):
            chooser.add_path(wanted.path, wanted.reason)
    missing = [path for path, list_name in selection.listed_paths()
               if chooser.add_path(path, f"listed in {list_name}") is None]
    for glob in selection.include:
        matches = [name for name in tree.entries
                   if fnmatchcase("/" + name, glob) and not chooser.excluded(name)]
        if not matches:
            log.warning("--include %s matched nothing in the rootfs", glob)
        for name in matches:
            chooser.add(name, f"--include {glob}")
    _choose_binaries(tree, chooser, selection.binaries, missing)
    if selection.modules:
        _choose_modules(tree, chooser, selection)
    for path, reason in implied.lookups(tree, list(chooser.chosen)):
        chooser.add_path(path, reason)

    result = ImagePlan()
    boots = selection.init_mode is not InitMode.NONE
    if boots and not selection.gives_init():
        _choose_init(tree, chooser, selection, session_init, result)
    devices = [*((node, "a boot needs it") for node in BOOT_DEVICES if boots),
               *((node, "--dev") for node in selection.devices), *session_devices]
    for node, reason in devices:
        _choose_device(tree, chooser, node, reason, result)
    if boots:
        _choose_mount_points(tree, chooser, result)
    _choose_hardlinks(tree, chooser)
    _choose_symlinks_to_chosen(tree, chooser)

    for name, reason in chooser.chosen.items():
        if name not in result.entries and name in tree.entries:
            entry = tree.entries[name]
            result.entries[name] = entry
            result.reasons[name] = reason
            if entry.type is FileType.FILE:
                result.data[name] = Data(Origin.TREE, name)
    for spec_list in selection.spec_lists:
        for item in spec_list.items:
            _overlay_spec_item(item, f"spec list {spec_list.name}:{item.line}", spec_file,
                               result)
    _add_missing_parents(tree, result)
    _report_missing(tree, missing, selection.strict)
    result.missing = tuple(missing)
    return result


def _in_pseudo_filesystem(path: str) -> bool:
    name = "/".join(split_path(path))
    return any(name == top or name.startswith(top + "/") for top in PSEUDO_FILESYSTEMS) \
        and name not in PSEUDO_FILESYSTEMS


def _choose_binaries(tree: Tree, chooser: _Chooser, programs: tuple[str, ...],
                     missing: list[str]) -> None:
    """--include-bin: each program and what its ELF headers need (one pass for all:
    a compressed tar is read once per step, not once per program)."""
    present = [program for program in programs
               if chooser.add_path(program, f"--include-bin {program}") is not None]
    missing.extend(program for program in programs if program not in present)
    if not present:
        return
    from nbic import elf  # imported only when used, as most sessions never do

    closure = elf.needed_closure(tree, *present)
    for needed in closure.needed:
        chooser.add_path(needed.path, f"--include-bin: {needed.why}")
    for lost in closure.missing:
        log.warning("--include-bin: %s not in the rootfs (%s)", lost.name, lost.why)


def _choose_modules(tree: Tree, chooser: _Chooser, selection: Selection) -> None:
    from nbic import modules  # imported only when used, as most sessions never do

    found = modules.closure(tree, selection.modules, selection.kernel_release)
    for needed in found.needed:
        chooser.add_path(needed.path, f"kernel module: {needed.why}")
    for warning in found.warnings:
        log.warning("%s", warning)


def _choose_init(tree: Tree, chooser: _Chooser, selection: Selection,
                 session_init: SessionInit | None, result: ImagePlan) -> None:
    """/init: --init PATH, else the rootfs's own /init, else its /chroot script (the
    seed's convention: the script that starts the session starts the boot), else,
    for a session, what the session ran."""
    if selection.init_mode is InitMode.PATH:
        target = selection.init_path or ""
        reason = f"--init {target}"
    elif "init" in tree:
        chooser.add_path("/init", "/init of the rootfs")
        return
    elif "chroot" in tree:
        target, reason = "/chroot", "/init: the rootfs's /chroot (no /init in the rootfs)"
    elif session_init is not None and session_init.script is not None:
        info = os.stat(session_init.script)
        result.entries["init"] = Entry("init", FileType.FILE, perm=0o755, size=info.st_size,
                                       mtime=int(info.st_mtime))
        result.data["init"] = Data(Origin.FILE, session_init.script)
        result.reasons["init"] = "/init: the session's script (no /init or /chroot in " \
            "the rootfs; give --init to choose)"
        log.info("no /init or /chroot in the rootfs: the session's script boots as /init")
        return
    elif session_init is not None and session_init.program is not None:
        target = _program_path(tree, session_init)
        reason = f"/init: the session's program {target} (no /init or /chroot in the rootfs)"
        log.info("no /init or /chroot in the rootfs: %s boots as /init (give --init to "
                 "choose)", target)
    else:
        raise RootfsError(f"no /init in {tree.description}: give --init PATH (or --init "
                          "none for an image without one), or put an /init or /chroot "
                          "script in the rootfs")
    physical = chooser.add_path(target, reason)
    entry = tree.get(physical) if physical else None
    if physical is None or entry is None or entry.type is not FileType.FILE:
        raise RootfsError(f"--init {target}: not a file in {tree.description}")
    if physical != "init":
        result.entries["init"] = Entry("init", FileType.SYMLINK, perm=0o777,
                                       linkname="/" + physical, mtime=entry.mtime)
        result.reasons["init"] = reason


def _program_path(tree: Tree, session_init: SessionInit) -> str:
    """A bare program name as the session's PATH finds it in the rootfs."""
    program = session_init.program or "/bin/sh"
    if "/" in program:
        return program
    for directory in session_init.search_path.split(":"):
        target = tree.resolve(f"{directory}/{program}").target
        entry = tree.get(target) if target else None
        if entry is not None and entry.type is FileType.FILE:
            return f"{directory}/{program}"
    return program


def _choose_device(tree: Tree, chooser: _Chooser, node: DeviceNode, reason: str,
                   result: ImagePlan) -> None:
    """The rootfs's own node where it has one, else the given numbers."""
    own = tree.get(node.name)
    if own is not None and own.is_device:
        chooser.add(node.name, f"device: {reason}")
        return
    if node.name not in result.entries:
        result.entries[node.name] = node.entry()
        result.reasons[node.name] = f"device: {reason}"


def _choose_mount_points(tree: Tree, chooser: _Chooser, result: ImagePlan) -> None:
    for name, perm in MOUNT_POINTS:
        entry = tree.get(name)
        if entry is None:
            if name not in result.entries:
                result.entries[name] = Entry(name, FileType.DIR, perm=perm)
                result.reasons[name] = "mount point"
        elif entry.type is FileType.DIR:
            chooser.add(name, "mount point")
        elif entry.type is FileType.SYMLINK:
            chooser.add_path("/" + name, "mount point")


def _choose_hardlinks(tree: Tree, chooser: _Chooser) -> None:
    for name in list(chooser.chosen):
        for other in tree.hardlink_names(name):
            if other != name and not chooser.excluded(other):
                chooser.add(other, f"hardlink of /{name}")


def _choose_symlinks_to_chosen(tree: Tree, chooser: _Chooser) -> None:
    """Symlinks that lead into the image (soname links, alternatives), repeated
    until nothing changes: a newly added directory can make a further link (such
    as /lib64) useful."""
    pending = []
    for name in tree.symlinks():
        if name not in chooser.chosen and not chooser.excluded(name):
            resolution = tree.resolve(name)
            if resolution.target is not None:
                pending.append((name, resolution))
    changed = True
    while changed:
        changed = False
        still_pending = []
        for name, resolution in pending:
            if resolution.target in chooser.chosen:
                chooser.add(name, f"symlink to /{resolution.target}, which is in the image")
                for step in resolution.via:
                    chooser.add(step, f"on the way to /{resolution.target}")
                changed = True
            else:
                still_pending.append((name, resolution))
        pending = still_pending


def _overlay_spec_item(item: SpecItem, reason: str, spec_file: Callable[[str], str] | None,
                       result: ImagePlan) -> None:
    entry = item.entry
    if entry.type is not FileType.FILE:
        _put(result, entry, reason)
        return
    assert item.location is not None  # a `file` line always names one
    data = Data(Origin.FILE, item.location, item.root) if spec_file is None else \
        Data(Origin.FILE, spec_file(item.location))
    try:
        with open_location(data.path, data.root) as stream:
            info = os.fstat(stream.fileno())
    except SpecError as exc:
        raise SpecError(f"{reason}: {exc}") from None
    key = ("spec", entry.name) if item.hardlinks else None
    for name in (entry.name, *item.hardlinks):
        _put(result, Entry(name, FileType.FILE, perm=entry.perm, uid=entry.uid, gid=entry.gid,
                           mtime=int(info.st_mtime), size=info.st_size, link_key=key), reason)
        result.data[name] = data


def _put(result: ImagePlan, entry: Entry, reason: str) -> None:
    result.entries[entry.name] = entry
    result.reasons[entry.name] = reason
    result.data.pop(entry.name, None)


def _add_missing_parents(tree: Tree, result: ImagePlan) -> None:
    """The kernel does not create missing parents: an entry under one is lost."""
    for name in list(result.entries):
        for parent in ancestors(name):
            if parent in result.entries:
                continue
            existing = tree.get(parent)
            if existing is None or existing.type is not FileType.DIR:
                existing = Entry(parent, FileType.DIR, perm=0o755)
            result.entries[parent] = existing
            result.reasons[parent] = f"parent of /{name}"


def _report_missing(tree: Tree, missing: list[str], strict: bool) -> None:
    if not missing:
        return
    if strict:
        listed = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more"
                                            if len(missing) > 10 else "")
        raise MissingFileError(f"not in {tree.description}: {listed}")
    for path in missing:
        log.warning("not in the rootfs, left out: %s", path)
