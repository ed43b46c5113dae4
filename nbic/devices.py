"""Device nodes: the ones a boot needs, the ones a user names with --dev, and the
ones a session opened. No file tracer sees a boot's nodes; they are added."""

from __future__ import annotations

from dataclasses import dataclass

from nbic.cpio.entry import Entry, FileType, normalize_name
from nbic.errors import UsageError


@dataclass(frozen=True)
class DeviceNode:
    """A device node an image holds: its archive name, type and numbers."""

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
# What every bootable image gets: the kernel opens the console for /init.
BOOT_DEVICES = (KNOWN_DEVICES["console"], KNOWN_DEVICES["null"])


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
    if not (0 <= major < 1 << 12 and 0 <= minor < 1 << 20):
        raise UsageError(f"--dev {text!r}: major must be below 4096 and minor below 2^20")
    if not 0 <= perm <= 0o7777:
        raise UsageError(f"--dev {text!r}: mode must be at most 07777")
    name = normalize_name(parts[0])
    if name == ".":
        raise UsageError(f"--dev {text!r}: the root cannot be a device")
    kind = FileType.CHAR if parts[1] == "c" else FileType.BLOCK
    return DeviceNode(name, kind, major, minor, perm)
