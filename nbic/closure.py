"""From a list of wanted paths to everything a booting kernel needs for them.

Given a rootfs index and the paths a session used, the closure adds:
every parent directory; every symlink met while resolving a path (usr-merge
`/bin -> usr/bin`, `/lib64/ld-linux-x86-64.so.2`); symlinks whose target is in
the image (soname links such as `libtinfo.so.6`); all names of a hardlinked
inode; the device nodes and mount points a boot needs, which no file tracer
sees; and `/init`. Resolution happens in the index, never on the host.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from nbic.cpio.entry import Entry, FileType, ancestors, normalize_name, split_path
from nbic.errors import MissingFileError, RootfsError, UsageError
from nbic.tree import Resolution, Tree

log = logging.getLogger("nbic")


@dataclass(frozen=True)
class DeviceNode:
    name: str  # archive name, e.g. "dev/console"
    type: FileType
    major: int
    minor: int
    perm: int = 0o600

    def entry(self) -> Entry:
        return Entry(self.name, self.type, perm=self.perm, rdevmajor=self.major,
                     rdevminor=self.minor)


def _chr(name: str, major: int, minor: int, perm: int) -> DeviceNode:
    return DeviceNode(f"dev/{name}", FileType.CHAR, major, minor, perm)


def _blk(name: str, major: int, minor: int) -> DeviceNode:
    return DeviceNode(f"dev/{name}", FileType.BLOCK, major, minor, 0o660)


# Nodes a user can ask for by name with --dev; numbers from the kernel's devices.txt.
KNOWN_DEVICES = {node.name[4:]: node for node in (
    _chr("console", 5, 1, 0o600), _chr("null", 1, 3, 0o666), _chr("zero", 1, 5, 0o666),
    _chr("full", 1, 7, 0o666), _chr("random", 1, 8, 0o666), _chr("urandom", 1, 9, 0o666),
    _chr("kmsg", 1, 11, 0o644), _chr("mem", 1, 1, 0o640), _chr("tty", 5, 0, 0o666),
    _chr("ptmx", 5, 2, 0o666), _chr("tty0", 4, 0, 0o620), _chr("tty1", 4, 1, 0o620),
    _chr("ttyS0", 4, 64, 0o660), _chr("ttyS1", 4, 65, 0o660), _chr("hvc0", 229, 0, 0o660),
    _blk("loop0", 7, 0), _blk("sda", 8, 0), _blk("vda", 253, 0), _blk("nvme0n1", 259, 0),
    _blk("ram0", 1, 0),
)}
DEFAULT_DEVICES = (KNOWN_DEVICES["console"], KNOWN_DEVICES["null"])

# Directories a boot script mounts on; a mount never shows up in a file trace.
MOUNT_POINTS = (("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("dev/pts", 0o755),
                ("run", 0o755), ("tmp", 0o1777))


def parse_device(text: str) -> DeviceNode:
    """`ttyS0` (a known name) or `PATH:c|b:MAJOR:MINOR[:MODE]`."""
    known = KNOWN_DEVICES.get(text.removeprefix("/dev/"))
    if known:
        return known
    parts = text.split(":")
    if len(parts) not in (4, 5) or parts[1] not in ("c", "b"):
        names = ", ".join(sorted(KNOWN_DEVICES))
        raise UsageError(f"--dev {text!r}: give a known name ({names}) "
                         "or PATH:c|b:MAJOR:MINOR[:MODE]")
    try:
        major, minor = int(parts[2]), int(parts[3])
        perm = int(parts[4], 8) if len(parts) == 5 else 0o600
    except ValueError:
        raise UsageError(f"--dev {text!r}: numbers expected") from None
    kind = FileType.CHAR if parts[1] == "c" else FileType.BLOCK
    return DeviceNode(normalize_name(parts[0]), kind, major, minor, perm)


@dataclass(frozen=True)
class ClosureConfig:
    include: tuple[str, ...] = ()  # globs over absolute rootfs paths
    exclude: tuple[str, ...] = ()
    devices: tuple[DeviceNode, ...] = DEFAULT_DEVICES
    init: str | None = None  # a program or script in the rootfs to boot as /init
    init_provided: bool = False  # /init comes from elsewhere (a spec list)
    strict: bool = False


@dataclass(frozen=True)
class Selection:
    """The entries of the image: from the tree, or made by nbic (`synthesized`)."""

    entries: dict[str, Entry]
    synthesized: frozenset[str]
    missing: tuple[str, ...] = field(default=())


class _Chooser:
    def __init__(self, tree: Tree, exclude: tuple[str, ...]):
        self.tree = tree
        self.exclude = exclude
        self.chosen: set[str] = set()

    def excluded(self, name: str) -> bool:
        path = "/" + name
        return any(fnmatchcase(path, glob) for glob in self.exclude)

    def add(self, name: str) -> None:
        if name != ".":
            self.chosen.add(name)
            self.chosen.update(ancestors(name))

    def add_resolution(self, resolution: Resolution) -> str | None:
        """Add what a resolved path needs to work; returns its physical name."""
        if resolution.target is None:
            return None
        for name in resolution.via:
            self.add(name)
        self.add(resolution.target)
        return resolution.target

    def add_resolved(self, path: str) -> str | None:
        return self.add_resolution(self.tree.resolve(path))


def select(tree: Tree, wanted: Iterable[str], config: ClosureConfig) -> Selection:
    chooser = _Chooser(tree, config.exclude)
    missing = []
    for path in wanted:
        resolution = tree.resolve(path)
        if resolution.target is None:
            missing.append(path)
        elif not (chooser.excluded("/".join(split_path(path)))
                  or chooser.excluded(resolution.target)):
            chooser.add_resolution(resolution)
    for glob in config.include:
        matches = [name for name in tree.entries
                   if fnmatchcase("/" + name, glob) and not chooser.excluded(name)]
        if not matches:
            log.warning("--include %s matched nothing in the rootfs", glob)
        for name in matches:
            chooser.add(name)

    synthesized: dict[str, Entry] = {}
    if not config.init_provided:
        _choose_init(tree, chooser, config.init, synthesized)
    for node in config.devices:
        synthesized[node.name] = node.entry()
    _choose_mount_points(tree, chooser, synthesized)
    _choose_hardlinks(tree, chooser)
    _choose_symlinks_to_chosen(tree, chooser)

    for name in list(synthesized):
        for parent in ancestors(name):
            existing = tree.get(parent)
            if existing is not None and existing.type is FileType.DIR:
                chooser.add(parent)
            elif parent not in synthesized and parent not in chooser.chosen:
                synthesized[parent] = Entry(parent, FileType.DIR, perm=0o755)

    if missing:
        listed = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more"
                                            if len(missing) > 10 else "")
        if config.strict:
            raise MissingFileError(f"not in {tree.description}: {listed}")
        for path in missing:
            log.warning("not in the rootfs, left out: %s", path)

    entries = {name: tree.entries[name] for name in chooser.chosen if name in tree.entries}
    entries.update(synthesized)
    return Selection(entries, frozenset(synthesized), tuple(missing))


def _choose_init(tree: Tree, chooser: _Chooser, init: str | None,
                 synthesized: dict[str, Entry]) -> None:
    """/init: --init PATH, else the rootfs's own /init, else its /chroot script
    (the seed's convention: the script that starts the session starts the boot)."""
    if init is None:
        if "init" in tree:
            chooser.add_resolved("/init")
            return
        if "chroot" not in tree:
            raise RootfsError(f"no /init in {tree.description}: give --init PATH, or put an "
                              "/init or /chroot script in the rootfs")
        init = "/chroot"
    target = chooser.add_resolved(init)
    entry = tree.get(target) if target else None
    if entry is None or entry.type is not FileType.FILE:
        raise RootfsError(f"--init {init}: not a file in {tree.description}")
    if target != "init":
        synthesized["init"] = Entry("init", FileType.SYMLINK, perm=0o777,
                                    linkname="/" + target, mtime=entry.mtime)


def _choose_mount_points(tree: Tree, chooser: _Chooser, synthesized: dict[str, Entry]) -> None:
    for name, perm in MOUNT_POINTS:
        entry = tree.get(name)
        if entry is None:
            synthesized.setdefault(name, Entry(name, FileType.DIR, perm=perm))
        elif entry.type is FileType.DIR:
            chooser.add(name)
        elif entry.type is FileType.SYMLINK:
            chooser.add_resolved("/" + name)


def _choose_hardlinks(tree: Tree, chooser: _Chooser) -> None:
    for name in list(chooser.chosen):
        for other in tree.hardlink_names(name):
            if other != name and not chooser.excluded(other):
                chooser.add(other)


def _choose_symlinks_to_chosen(tree: Tree, chooser: _Chooser) -> None:
    """Symlinks that lead into the image, repeated until nothing changes: a
    newly added directory can make a further link (such as /lib64) useful."""
    pending = []
    for name, entry in tree.entries.items():
        if entry.type is FileType.SYMLINK and name not in chooser.chosen \
                and not chooser.excluded(name):
            resolution = tree.resolve(name)
            if resolution.target is not None:
                pending.append((name, resolution))
    changed = True
    while changed:
        changed = False
        still_pending = []
        for name, resolution in pending:
            if resolution.target in chooser.chosen:
                chooser.add(name)
                for step in resolution.via:
                    chooser.add(step)
                changed = True
            else:
                still_pending.append((name, resolution))
        pending = still_pending
