"""cpio-diff: two images compared entry by entry, as the kernel would unpack
them (the last occurrence of a name wins)."""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import dataclass

from nbic.cpio.entry import TYPE_NAMES, Entry, FileType, landing_name, sort_key
from nbic.cpio.image import ImageReader, open_image
from nbic.errors import UsageError
from nbic.output import refuse_inputs
from nbic.tools.common import emit

HELP = "compare two images entry by entry (exit 1 when they differ)"


_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

@dataclass
class _Item:
    entry: Entry
    size: int  # data size, hardlink groups resolved (symlinks: target length)
    digest: str  # sha256 of the data, hardlink groups resolved ("" when not hashed)


def _final_state(reader: ImageReader, *, hash_data: bool) -> dict[str, _Item]:
    """Every name of the image with the entry that wins for it and its data."""
    final: dict[str, tuple[Entry, int, str]] = {}
    groups: dict[object, tuple[int, str]] = {}  # link_key -> data of the group
    for entry in reader:
        digest = ""
        if entry.type is FileType.FILE and hash_data:
            hasher = hashlib.sha256()
            for chunk in reader.chunks():
                hasher.update(chunk)
            digest = hasher.hexdigest()
        if entry.link_key is not None and entry.size > 0:
            groups[entry.link_key] = (entry.size, digest)
        name = landing_name(entry.name)
        final.pop(name, None)  # keep dict order = order of the winning occurrences
        final[name] = (entry, entry.size, digest)
    result = {}
    for name, (entry, size, digest) in final.items():
        if entry.type is FileType.FILE:
            if entry.link_key is not None:
                size, digest = groups.get(entry.link_key, (0, _EMPTY_SHA256))
            elif hash_data and not size:
                digest = _EMPTY_SHA256
        result[name] = _Item(entry, size, digest)
    return result


def _describe_changes(old: _Item, new: _Item, *, mtime: bool) -> list[str]:
    a, b = old.entry, new.entry
    if a.type is not b.type:
        return [f"type {TYPE_NAMES[a.type]} -> {TYPE_NAMES[b.type]}"]
    changes = []
    if a.perm != b.perm:
        changes.append(f"mode {a.perm:04o} -> {b.perm:04o}")
    if (a.uid, a.gid) != (b.uid, b.gid):
        changes.append(f"owner {a.uid}:{a.gid} -> {b.uid}:{b.gid}")
    if a.type is FileType.FILE:
        if old.size != new.size:
            changes.append(f"size {old.size} -> {new.size}")
        elif old.digest != new.digest:
            changes.append("content")
    if a.type is FileType.SYMLINK and a.linkname != b.linkname:
        changes.append(f"target {a.linkname} -> {b.linkname}")
    if a.is_device and (a.rdevmajor, a.rdevminor) != (b.rdevmajor, b.rdevminor):
        changes.append(f"device {a.rdevmajor},{a.rdevminor} -> {b.rdevmajor},{b.rdevminor}")
    if mtime and a.mtime != b.mtime:
        changes.append(f"mtime {_iso(a.mtime)} -> {_iso(b.mtime)}")
    return changes


def _iso(when: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def diff_images(path_a: str, path_b: str, *, mtime: bool = False) -> list[str]:
    """The difference lines between two images (empty when they are equal)."""
    if path_a == "-" and path_b == "-":
        raise UsageError("only one of the two images can be standard input")
    with open_image(path_a) as reader:
        state_a = _final_state(reader, hash_data=True)
    with open_image(path_b) as reader:
        state_b = _final_state(reader, hash_data=True)
    lines = []
    for name in sorted(state_a.keys() | state_b.keys(), key=sort_key):
        if name not in state_a:
            lines.append(f"+ {name}")
        elif name not in state_b:
            lines.append(f"- {name}")
        else:
            changes = _describe_changes(state_a[name], state_b[name], mtime=mtime)
            if changes:
                lines.append(f"~ {name}: {', '.join(changes)}")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", metavar="A", help="the old image (\"-\" for standard input)")
    parser.add_argument("b", metavar="B", help="the new image")
    parser.add_argument("--mtime", action="store_true", help="also compare mtimes")
    # Like diff(1): 1 means "different", so trouble must say 2.
    parser.set_defaults(error_status=2)


def run(args: argparse.Namespace) -> int:
    refuse_inputs(["-"], [args.a, args.b])
    lines = diff_images(args.a, args.b, mtime=args.mtime)
    for line in lines:
        emit(line)
    sys.stdout.flush()
    return 1 if lines else 0
