"""The kernel's gen_init_cpio spec lists (usr/gen_init_cpio.c):

    file <name> <location> <mode> <uid> <gid> [<hard links>]
    dir <name> <mode> <uid> <gid>
    nod <name> <mode> <uid> <gid> <dev_type> <maj> <min>
    slink <name> <target> <mode> <uid> <gid>
    pipe <name> <mode> <uid> <gid>
    sock <name> <mode> <uid> <gid>

Modes are octal, `${VAR}` in a location is taken from the environment, and
lines starting with `#` are comments.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nbic.cpio.entry import Entry, FileType, normalize_name
from nbic.errors import NbicError, SpecError

_VAR = re.compile(r"\$\{([^}]*)\}")
_ARITY = {"file": 5, "dir": 4, "nod": 7, "slink": 5, "pipe": 4, "sock": 4}
_KEYWORD = {FileType.DIR: "dir", FileType.FIFO: "pipe", FileType.SOCKET: "sock"}


@dataclass(frozen=True)
class SpecItem:
    """One spec line: the entry (without data) and, for `file`, where the bytes
    are and which further names are hardlinks to it."""

    entry: Entry
    location: str | None = None
    hardlinks: tuple[str, ...] = ()
    line: int = 0


def parse_spec(text: str, *, source: str = "spec list", env: Mapping[str, str] | None = None
               ) -> list[SpecItem]:
    items = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            items.append(_parse_line(line, number, env or {}))
        except SpecError as exc:
            raise SpecError(f"{source}:{number}: {exc}") from None
        except NbicError as exc:
            raise SpecError(f"{source}:{number}: {exc}") from None
    return items


def _number(text: str, base: int, what: str) -> int:
    try:
        value = int(text, base)
    except ValueError:
        raise SpecError(f"bad {what} {text!r}") from None
    if value < 0:
        raise SpecError(f"negative {what} {text!r}")
    return value


def _expand(location: str, env: Mapping[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        if match.group(1) not in env:
            raise SpecError(f"undefined variable ${{{match.group(1)}}} in {location!r}")
        return env[match.group(1)]

    return _VAR.sub(value, location)


def _parse_line(line: str, number: int, env: Mapping[str, str]) -> SpecItem:
    keyword, *args = line.split()
    if keyword not in _ARITY:
        raise SpecError(f"unknown type {keyword!r} (expected one of {', '.join(_ARITY)})")
    needed = _ARITY[keyword]
    if len(args) < needed or (len(args) > needed and keyword != "file"):
        raise SpecError(f"'{keyword}' takes {needed} fields, got {len(args)}")
    name = normalize_name(args[0])
    if keyword == "file":
        location, mode, uid, gid = args[1:5]
        entry = Entry(name, FileType.FILE, **_owner(mode, uid, gid))
        links = tuple(normalize_name(link) for link in args[5:])
        return SpecItem(entry, _expand(location, env), links, number)
    if keyword == "slink":
        target, mode, uid, gid = args[1:5]
        return SpecItem(Entry(name, FileType.SYMLINK, linkname=target,
                              **_owner(mode, uid, gid)), line=number)
    if keyword == "nod":
        mode, uid, gid, dev_type, major, minor = args[1:7]
        if dev_type not in ("b", "c"):
            raise SpecError(f"device type must be 'b' or 'c', not {dev_type!r}")
        node_type = FileType.BLOCK if dev_type == "b" else FileType.CHAR
        return SpecItem(Entry(name, node_type, rdevmajor=_number(major, 10, "major"),
                              rdevminor=_number(minor, 10, "minor"),
                              **_owner(mode, uid, gid)), line=number)
    node_type = {"dir": FileType.DIR, "pipe": FileType.FIFO, "sock": FileType.SOCKET}[keyword]
    mode, uid, gid = args[1:4]
    return SpecItem(Entry(name, node_type, **_owner(mode, uid, gid)), line=number)


def _owner(mode: str, uid: str, gid: str) -> dict[str, int]:
    perm = _number(mode, 8, "mode")
    if perm > 0o7777:
        raise SpecError(f"mode {mode!r} has bits beyond 07777")
    return {"perm": perm, "uid": _number(uid, 10, "uid"), "gid": _number(gid, 10, "gid")}


def format_spec_line(entry: Entry, location: str = "", hardlinks: Iterable[str] = ()) -> str:
    """The spec line for `entry`; a regular file needs the `location` of its bytes."""
    owner = f"{entry.perm:04o} {entry.uid} {entry.gid}"
    match entry.type:
        case FileType.FILE:
            extra = "".join(f" /{link}" for link in hardlinks)
            return f"file {entry.path} {location} {owner}{extra}"
        case FileType.SYMLINK:
            return f"slink {entry.path} {entry.linkname} {owner}"
        case FileType.CHAR | FileType.BLOCK:
            kind = "c" if entry.type is FileType.CHAR else "b"
            return f"nod {entry.path} {owner} {kind} {entry.rdevmajor} {entry.rdevminor}"
    return f"{_KEYWORD[entry.type]} {entry.path} {owner}"


def format_spec(entries: Iterable[tuple[Entry, str]]) -> str:
    """A spec list of (entry, location) pairs given in order. The names of a hardlink
    group (one link_key) become one `file` line at the first name, with the group's
    first non-empty location. Names with white space are refused: no line holds them."""
    items = list(entries)
    groups: dict[object, list[str]] = {}
    for entry, _ in items:
        if entry.type is FileType.FILE and entry.link_key is not None:
            groups.setdefault(entry.link_key, []).append(entry.name)
    locations = {entry.name: location for entry, location in items if location}
    lines = []
    for entry, location in items:
        for text in (entry.name, entry.linkname):
            if any(char.isspace() for char in text):
                raise SpecError(f"{entry.path!r}: a gen_init_cpio spec list cannot hold names "
                                "or link targets with white space")
        names = groups.get(entry.link_key, [entry.name]) \
            if entry.type is FileType.FILE else [entry.name]
        if names[0] != entry.name:
            continue  # written with the first name of its group
        location = next((locations[n] for n in names if n in locations), location)
        lines.append(format_spec_line(entry, location, names[1:]))
    return "".join(line + "\n" for line in lines)
