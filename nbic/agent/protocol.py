"""What the host tells the agent, and what the agent reports back.

Both sides import this module; it is plain data, standard library only.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field

# Paths inside the session container.
CACHE_ROOTFS = "/cache/rootfs"  # the imported rootfs, read-only
READY_MARK = "ready"  # beside rootfs/ in the cache volume, written when an import is complete
SESSION_DIR = "/nbic-session"  # a tmpfs: overlay upper and work dirs
ROOTFS = "/rootfs"  # the session's merged view; chroot target
INPUT_DIR = "/nbic-in"  # files the host put in before start (a --script)
OUTPUT_DIR = "/nbic-out"  # what the host fetches after the agent exits
RESULT_FILE = "result.json"
TRACE_FILE = "trace.list"
IMAGE_TAR = "image.tar"


class Tracer(enum.Enum):
    AUTO = "auto"  # fanotify, or ptrace where fanotify is not permitted
    FANOTIFY = "fanotify"
    PTRACE = "ptrace"
    BOTH = "both"
    NONE = "none"  # nothing traced: only --files-from lists (and a baseline to measure)


@dataclass(frozen=True)
class SessionSpec:
    command: tuple[str, ...] = ()  # empty: the rootfs's /chroot, else /bin/sh
    script: str | None = None  # name of a script under INPUT_DIR
    tracer: Tracer = Tracer.AUTO
    interactive: bool = False
    term: str = "vt100"
    extra_paths: tuple[str, ...] = ()  # from --files-from lists
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()  # --dev texts, parsed by the agent
    init: str | None = None
    strict: bool = False
    # For tests of the overflow path: a bounded queue read only after the session.
    bounded_queue: bool = False

    def to_json(self) -> str:
        data = asdict(self)
        data["tracer"] = self.tracer.value
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> SessionSpec:
        data = json.loads(text)
        data["tracer"] = Tracer(data["tracer"])
        for key in ("command", "extra_paths", "include", "exclude", "devices"):
            data[key] = tuple(data[key])
        return cls(**data)


@dataclass(frozen=True)
class SessionResult:
    ok: bool
    error: str = ""
    session_status: int | None = None
    tracer: str = ""
    traced: int = 0
    entries: int = 0
    warnings: tuple[str, ...] = field(default=())
    notices: tuple[str, ...] = field(default=())
    seconds: dict[str, float] = field(default_factory=dict)  # time per phase

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SessionResult:
        data = json.loads(text)
        data["warnings"] = tuple(data.get("warnings", ()))
        data["notices"] = tuple(data.get("notices", ()))
        return cls(**data)
