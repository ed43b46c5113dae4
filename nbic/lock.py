"""Locks: `images/NAME/nbic.lock` records what a build of a recipe put in its
image, so that `nbic build --locked` makes the same bytes again without a
session, or says which locked paths the rootfs no longer gives.

A lock holds the rootfs source and its digest, the selection, the
compression, the nbic version, the image's sha256, and every entry of the
image with its header fields and, for files, the sha256 of its content. The
entries are read back from the image written, not from the plan: the lock
says what is in the file.

The whole-rootfs digest is informative only: a fresh machine debootstraps its
own rootfs, whose digest differs even when the files the image takes are the
same. A locked rebuild is judged entry by entry, then by the image's bytes.

JSON with sorted keys and one image entry per line, so that a change to the
image is a readable diff; null values are left out (their defaults).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from nbic import __version__, serial
from nbic import selection as selections
from nbic.agent.protocol import EntryOrigin
from nbic.cpio.compress import CompressionSpec
from nbic.cpio.entry import Entry, FileType
from nbic.cpio.image import open_image
from nbic.devices import DeviceNode
from nbic.errors import NbicError, RecipeError
from nbic.output import atomic_output
from nbic.selection import FileList, InitMode, Selection, Verify

LOCK_LIST = "nbic.lock"  # the name the locked paths go by in a rebuild's report
SHOWN_DIFFERENCES = 40


@dataclass(frozen=True)
class LockedEntry:
    path: str
    type: str  # file, dir, symlink, char, block, fifo, socket
    mode: str  # permission bits in octal, "0755"
    uid: int = 0
    gid: int = 0
    mtime: int = 0  # as written: clamped to the epoch
    size: int | None = None  # files
    sha256: str | None = None  # files
    links: int | None = None  # files with several names: how many
    target: str | None = None  # symlinks
    rdev: str | None = None  # devices: "MAJOR:MINOR"
    origin: EntryOrigin = field(default=EntryOrigin.ROOTFS, compare=False)


@dataclass(frozen=True)
class LockedRootfs:
    source: str  # as the recipe names it
    digest: str  # of the whole rootfs where the lock was written


@dataclass(frozen=True)
class LockedImage:
    file: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Lock:
    nbic: str
    recipe: str
    rootfs: LockedRootfs
    selection: Selection  # spec list locations relative to the recipe's directory
    compression: CompressionSpec
    image: LockedImage
    entries: tuple[LockedEntry, ...]


# --- reading an image ------------------------------------------------------------

def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise NbicError(f"cannot read {path}: {exc.strerror}") from None
    return digest.hexdigest()


def image_entries(image: Path, origins: dict[str, EntryOrigin]
                  ) -> tuple[LockedEntry, ...]:
    """Every entry of an image as the lock records it, with its origin as the run's
    report gives it."""
    entries: list[Entry] = []
    digests: dict[str, str] = {}
    with open_image(image) as reader:
        for entry in reader:
            entries.append(entry)
            if entry.type is FileType.FILE:
                digest = hashlib.sha256()
                for chunk in reader.chunks():
                    digest.update(chunk)
                digests[entry.name] = digest.hexdigest()
    # A hardlinked file's data sits on one of its names; every name gets its digest.
    groups: dict[object, Entry] = {}
    for entry in entries:
        if entry.link_key is not None and entry.size:
            groups[entry.link_key] = entry
    locked = []
    for entry in entries:
        holder = groups.get(entry.link_key, entry) if entry.link_key is not None else entry
        locked.append(_locked(entry, holder, digests, origins[entry.path]))
    return tuple(sorted(locked, key=lambda item: item.path))


def _locked(entry: Entry, holder: Entry, digests: dict[str, str], origin: EntryOrigin
            ) -> LockedEntry:
    is_file = entry.type is FileType.FILE
    return LockedEntry(
        path=entry.path, type=entry.type.name.lower(), mode=f"{entry.perm:04o}",
        uid=entry.uid, gid=entry.gid, mtime=entry.mtime,
        size=holder.size if is_file else None,
        sha256=digests[holder.name] if is_file else None,
        links=entry.nlink if is_file and entry.nlink > 1 else None,
        target=entry.linkname if entry.type is FileType.SYMLINK else None,
        rdev=f"{entry.rdevmajor}:{entry.rdevminor}" if entry.is_device else None,
        origin=origin)


def origins(report: Path) -> dict[str, EntryOrigin]:
    """Each path of a run's --report with its origin."""
    try:
        data = json.loads(report.read_text(encoding="utf-8", errors="surrogateescape"))
    except (OSError, ValueError) as exc:
        raise NbicError(f"cannot read the report {report}: {exc}") from None
    return {item["path"]: EntryOrigin(item["origin"]) for item in data["entries"]}


# --- writing and reading locks ---------------------------------------------------

def make(recipe: str, source: str, digest: str, selection: Selection,
         compression: CompressionSpec, image: Path, report: Path, base: Path) -> Lock:
    return Lock(
        nbic=__version__, recipe=recipe, rootfs=LockedRootfs(source, digest),
        selection=portable(selection, base),
        compression=compression,
        image=LockedImage(image.name, sha256_file(image), image.stat().st_size),
        entries=image_entries(image, origins(report)))


def portable(selection: Selection, base: Path) -> Selection:
    """The selection as a lock keeps it: spec list locations relative to the
    recipe's directory, so that the lock holds in any checkout."""
    return selections.relocated(selection, lambda path: os.path.relpath(path, base))


def dumps(lock: Lock) -> str:
    return _format(_without_nulls(serial.to_data(lock)), 0) + "\n"


def write(path: Path, lock: Lock) -> bool:
    """Write the lock unless the file already says the same; True if written."""
    text = dumps(lock)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    with atomic_output(path) as out:
        out.write(text.encode("utf-8"))
    return True


def load(path: Path) -> Lock:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"no lock {path}: build once without --locked to write it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read {path}: {exc}") from None
    try:
        return serial.loads(Lock, text, strict=True)
    except ValueError as exc:
        raise RecipeError(f"{path}: not a lock: {exc}") from None
    except NbicError as exc:
        raise RecipeError(f"{path}: {exc}") from None


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def _format(value: Any, depth: int) -> str:
    """Objects over several lines, sorted; each element of a list on a line of its own."""
    pad, inner = " " * depth, " " * (depth + 1)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(key)}: {_format(item, depth + 1)}"
                 for key, item in sorted(value.items())]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and value:
        items = [inner + json.dumps(item, sort_keys=True) for item in value]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(value)


# --- rebuilding --------------------------------------------------------------------

def rebuild_selection(lock: Lock, base: Path) -> Selection:
    """What a session-less run needs to make the locked image again: the locked
    selection, every locked path that is the rootfs's own as a file list, and the
    device nodes nbic made (the ones the session opened among them). What the
    session wrote cannot come back: the comparison names it. /init made
    from the session's program becomes --init of its target; the session's script
    as /init comes from the script itself (the rebuild passes it)."""
    selection = selections.relocated(lock.selection, lambda path: str(base / path))
    listed = tuple(item.path for item in lock.entries if item.origin is EntryOrigin.ROOTFS)
    devices = tuple(_device(item) for item in lock.entries
                    if item.origin is not EntryOrigin.ROOTFS and item.type in ("char", "block"))
    init = next((item for item in lock.entries if item.path == "/init"), None)
    if init is not None and init.origin is not EntryOrigin.ROOTFS and init.type == "symlink" \
            and selection.init_mode is InitMode.AUTO and not selection.gives_init():
        selection = replace(selection, init_mode=InitMode.PATH, init_path=init.target)
    return replace(selection, file_lists=(*selection.file_lists, FileList(LOCK_LIST, listed)),
                   devices=(*selection.devices, *devices), strict=False, verify=Verify.OFF)


def _device(item: LockedEntry) -> DeviceNode:
    major, minor = (int(number) for number in (item.rdev or "0:0").split(":"))
    kind = FileType.CHAR if item.type == "char" else FileType.BLOCK
    return DeviceNode(item.path.lstrip("/"), kind, major, minor, int(item.mode, 8))


_COMPARED = tuple(item.name for item in fields(LockedEntry)
                  if item.compare and item.name not in ("path", "sha256"))


def differences(locked: tuple[LockedEntry, ...], rebuilt: tuple[LockedEntry, ...]
                ) -> list[str]:
    """What differs between the locked entries and a rebuild's, path by path."""
    before = {item.path: item for item in locked}
    after = {item.path: item for item in rebuilt}
    lines = []
    for path in sorted(before.keys() | after.keys()):
        old, new = before.get(path), after.get(path)
        if old is None:
            lines.append(f"{path}: not in the lock (new in the rootfs)")
        elif new is None:
            why = "the session wrote it: a rebuild without a session cannot" \
                if old.origin is EntryOrigin.SESSION else "the rootfs no longer gives it"
            lines.append(f"{path}: missing ({why})")
        elif old != new:
            changed = [f"{name} {getattr(old, name)} -> {getattr(new, name)}"
                       for name in _COMPARED if getattr(old, name) != getattr(new, name)]
            if old.sha256 != new.sha256:
                changed.append("different content (sha256)")
            lines.append(f"{path}: " + ", ".join(changed))
    return lines


def session_written(entries: tuple[LockedEntry, ...]) -> list[str]:
    return [item.path for item in entries if item.origin is EntryOrigin.SESSION]


def describe(lines: list[str]) -> str:
    shown = lines[:SHOWN_DIFFERENCES]
    more = len(lines) - len(shown)
    return "\n".join(["  " + line for line in shown] + ([f"  ... and {more} more"] if more
                                                        else []))
