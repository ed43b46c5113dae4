"""What the host tells the agent, and what the agent reports back.

Both sides import this module; it is plain data, standard library only, sent
as JSON through nbic.serial.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from nbic import serial
from nbic.selection import Selection

# Paths inside the agent's container.
CACHE = "/cache"  # the rootfs volume, read-only: rootfs/ and the ready mark
CACHE_ROOTFS = f"{CACHE}/rootfs"
READY_MARK = "ready"  # beside rootfs/ in a cache volume, written when an import is complete
IMAGE_CACHE = "/image"  # `nbic verify`: the image's volume (rootfs/ + ready), read-only
IMPORT_DIR = "/import"  # a volume being imported into (read-write)
SESSION_DIR = "/nbic-session"  # a tmpfs: overlay upper and work dirs, the replay root
ROOTFS = "/rootfs"  # the session's merged view; chroot target
INPUT_DIR = "/nbic-in"  # files the host put in before start
OUTPUT_DIR = "/nbic-out"  # what the agent sends the host when it is done
SCRIPT = "script"  # the session's --script, in INPUT_DIR
CHECK = "check"  # the verify check, in INPUT_DIR
IMAGE_INPUT = "image.cpio"  # `nbic verify`: the image to import, uncompressed, in INPUT_DIR
# In OUTPUT_DIR, sent in one tar archive: the result always, the rest on success.
RESULT_FILE = "result.json"
REPORT_FILE = "report.json"
IMAGE_FILE = "image.cpio"
KERNEL_FILE = "vmlinuz"  # with Request.kernel: the kernel of the modules' release


def spec_input(index: int) -> str:
    """Where the host puts the index-th file a spec list reads (Selection.spec_locations)."""
    return f"{INPUT_DIR}/spec/{index}"


# A session without a terminal sends everything on its standard output, in
# frames: the session's own output and, at the end, the tar of OUTPUT_DIR. One
# stream, so the host needs no archive round trip to the engine after the run.
# (A session on a terminal cannot: the host fetches OUTPUT_DIR instead.)
class Frame(enum.Enum):
    STDOUT = b"o"  # the session's standard output
    RESULT = b"r"  # a piece of the tar of OUTPUT_DIR
    END = b"e"  # the tar is complete


FRAME_HEADER = struct.Struct(">cI")  # kind, payload length
FRAME_MAX = 1 << 16  # payload bytes at most


class FrameError(ValueError):
    """The agent's standard output is not a stream of frames."""


class FrameReader:
    """Splits the agent's standard output, as it arrives in chunks, into frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[Frame, bytes]]:
        self._buffer += data
        start = 0
        while len(self._buffer) - start >= FRAME_HEADER.size:
            kind, size = FRAME_HEADER.unpack_from(self._buffer, start)
            if size > FRAME_MAX:
                raise FrameError(f"a {size}-byte frame (at most {FRAME_MAX})")
            try:
                frame = Frame(kind)
            except ValueError:
                raise FrameError(f"a frame of unknown kind {kind!r}") from None
            end = start + FRAME_HEADER.size + size
            if end > len(self._buffer):
                break
            yield frame, bytes(self._buffer[start + FRAME_HEADER.size:end])
            start = end
        del self._buffer[:start]

    @property
    def partial(self) -> bool:
        """Whether a frame has begun and not ended."""
        return bool(self._buffer)


class Task(enum.Enum):
    SESSION = "session"  # trace a session in the rootfs, write the image (and replay it)
    INDEX = "index"  # index IMPORT_DIR/rootfs after an import, for sessions to read
    IMPORT_IMAGE = "import-image"  # unpack INPUT_DIR/image.cpio into IMPORT_DIR/rootfs
    REPLAY = "replay"  # replay the check on the image volume alone (`nbic verify`)


class Tracer(enum.Enum):
    AUTO = "auto"  # fanotify, or ptrace where fanotify is not permitted
    FANOTIFY = "fanotify"
    PTRACE = "ptrace"
    BOTH = "both"
    NONE = "none"  # nothing traced: only the selection's lists


class EntryOrigin(enum.Enum):
    """Where an image entry came from, as --report says and a lock records."""

    ROOTFS = "rootfs"  # the rootfs's own entry: listing its path brings it back
    SESSION = "session"  # written by the session (in the overlay's upper layer)
    NBIC = "nbic"  # made by nbic: /init, device nodes, mount points, spec list entries


@dataclass(frozen=True)
class Session:
    """What runs in the container and how it is traced."""

    command: tuple[str, ...] = ()  # empty: the script, the rootfs's /chroot, else /bin/sh
    script: bool = False  # INPUT_DIR/script is the session
    tracer: Tracer = Tracer.AUTO
    interactive: bool = False  # a TTY is attached


@dataclass(frozen=True)
class Request:
    """What the host asks of one agent run (its only argument, as JSON)."""

    task: Task
    selection: Selection = field(default_factory=Selection)
    # SESSION: what runs; REPLAY: the check (its command, or INPUT_DIR/check as script).
    session: Session = field(default_factory=Session)
    with_rootfs: bool = True  # REPLAY: the reference rootfs is mounted too, to name fixes
    kernel: bool = False  # SESSION: also the rootfs's /boot/vmlinuz-KVER of the modules' KVER


def agent_command(request: Request) -> list[str]:
    """The container's command: the agent, given `request`. Not `python3 -m
    nbic.agent`, whose import of runpy is 4 ms of every session's start; -P
    keeps the working directory off the module path."""
    return ["python3", "-P", "-c", "import nbic.agent.__main__ as agent; agent.run()",
            serial.dumps(request)]


@dataclass(frozen=True)
class Lookup:
    """A path a replay looked up and did not find."""

    path: str
    program: str
    in_rootfs: bool = False  # the reference rootfs has it: a file to add


@dataclass(frozen=True)
class Replay:
    """One replay of the check on the image alone, and what it looked up in vain."""

    status: int  # the check's exit status
    output: str  # its output (stdout and stderr, tail)
    missing: tuple[Lookup, ...] = ()


@dataclass(frozen=True)
class Result:
    """How an agent run went: OUTPUT_DIR/result.json."""

    ok: bool
    error: str = ""
    session_status: int | None = None
    tracer: str = ""
    traced: int = 0
    entries: int = 0
    replays: tuple[Replay, ...] = ()  # one per verify round
    fixed: tuple[str, ...] = ()  # paths --fix added
    notices: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)  # time per phase
    kernel_release: str = ""  # the release of KERNEL_FILE (with Request.kernel)
