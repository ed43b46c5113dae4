"""The kernel's gen_init_cpio spec lists (usr/gen_init_cpio.c):

    file <name> <location> <mode> <uid> <gid> [<hard links>]
    dir <name> <mode> <uid> <gid>
    nod <name> <mode> <uid> <gid> <dev_type> <maj> <min>
    slink <name> <target> <mode> <uid> <gid>
    pipe <name> <mode> <uid> <gid>
    sock <name> <mode> <uid> <gid>

Modes are octal, `${VAR}` in a location is taken from the environment, and
lines starting with `#` are comments. A list is bytes, as for gen_init_cpio:
callers decode it with surrogate escapes, so a name that is not UTF-8 stays as
it is (like every name in nbic).

Where nbic differs from gen_init_cpio:
- `$${` in a location stands for a literal `${` (gen_init_cpio expands every
  `${...}` in a location, even one that a variable's value put there, so it has
  no way to name such a path). Names and link targets are never expanded and
  need no escape. `escape_location` writes it.
- A location `${NBIC_ROOT}/PATH` names PATH inside a tree that `cpio-extract`
  made from an image (`cpio-list --spec` writes every location so). No symlink
  is followed below that directory, and `..` is refused: an image that holds
  `lib -> /etc` cannot make `${NBIC_ROOT}/lib/shadow` read a host file. The
  directory NBIC_ROOT names may itself be reached through symlinks. Any other
  location is a host path that the list's author named, opened as written.
- Only `dir` may name the root `/`: the kernel unpacks into it.
- A location must be a regular file.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from nbic.cpio.entry import TYPE_NAMES, Entry, FileType, normalize_name, split_path
from nbic.errors import NbicError, SpecError

ROOT_VARIABLE = "NBIC_ROOT"
_ROOT_PREFIX = "${" + ROOT_VARIABLE + "}/"
# `$${` (a literal `${`) or a variable reference.
_VAR = re.compile(r"\$(\$\{)|\$\{([^}]*)\}")
_ARITY = {"file": 5, "dir": 4, "nod": 7, "slink": 5, "pipe": 4, "sock": 4}
_KEYWORD = {FileType.DIR: "dir", FileType.FIFO: "pipe", FileType.SOCKET: "sock"}


@dataclass(frozen=True)
class SpecItem:
    """One spec line: the entry (without data) and, for `file`, where the bytes
    are and which further names are hardlinks to it. For a `${NBIC_ROOT}/...`
    location, `root` is the directory NBIC_ROOT names: the rest of `location`
    lies below it, where no symlink is followed."""

    entry: Entry
    location: str | None = None
    hardlinks: tuple[str, ...] = ()
    line: int = 0
    root: str | None = None


def parse_spec(text: str, *, source: str = "spec list", env: Mapping[str, str] | None = None
               ) -> list[SpecItem]:
    items = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            items.append(_parse_line(line, number, env or {}))
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


def _variable(name: str, env: Mapping[str, str], location: str) -> str:
    if name not in env:
        raise SpecError(f"undefined variable ${{{name}}} in {location!r}")
    return env[name]


def _expand(text: str, env: Mapping[str, str], location: str) -> str:
    """`text` (all or part of `location`) with its variables and `$${` replaced."""
    def value(match: re.Match[str]) -> str:
        return match.group(1) or _variable(match.group(2), env, location)

    return _VAR.sub(value, text)


def escape_location(path: str) -> str:
    """`path` as a location's text, with every `${` kept literal."""
    return path.replace("${", "$${")


def root_location(name: str) -> str:
    """The location of archive name `name` in a tree cpio-extract made."""
    return _ROOT_PREFIX + escape_location(name)


def _name(text: str, keyword: str) -> str:
    name = normalize_name(text)
    if name == "." and keyword != "dir":
        raise SpecError(f"'{keyword}' cannot name the root {text!r}: only 'dir' can")
    return name


def _parse_line(line: str, number: int, env: Mapping[str, str]) -> SpecItem:
    keyword, *args = line.split()
    if keyword not in _ARITY:
        raise SpecError(f"unknown type {keyword!r} (expected one of {', '.join(_ARITY)})")
    needed = _ARITY[keyword]
    if len(args) < needed or (len(args) > needed and keyword != "file"):
        raise SpecError(f"'{keyword}' takes {needed} fields, got {len(args)}")
    name = _name(args[0], keyword)
    if keyword == "file":
        location, mode, uid, gid = args[1:5]
        entry = Entry(name, FileType.FILE, **_owner(mode, uid, gid))
        links = tuple(_name(link, keyword) for link in args[5:])
        root = None
        if location.startswith(_ROOT_PREFIX):
            root = _variable(ROOT_VARIABLE, env, location)
            below = _expand(location[len(_ROOT_PREFIX):], env, location)
            if ".." in split_path(below):
                raise SpecError(f"'..' in {location!r}: nothing above ${{{ROOT_VARIABLE}}} "
                                "is read")
            path = f"{root}/{below}"
        else:
            path = _expand(location, env, location)
        return SpecItem(entry, path, links, number, root)
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


def _owner(mode: str, uid: str, gid: str) -> dict[str, Any]:
    perm = _number(mode, 8, "mode")
    if perm > 0o7777:
        raise SpecError(f"mode {mode!r} has bits beyond 07777")
    return {"perm": perm, "uid": _number(uid, 10, "uid"), "gid": _number(gid, 10, "gid")}


# O_NONBLOCK: a FIFO named as a location must not wait for a writer before it is refused.
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_location(path: str, root: str | None = None) -> BinaryIO:
    """The bytes of a `file` line: `path`, a regular file. With a `root` (the
    directory of a `${NBIC_ROOT}/...` location, see SpecItem), the part of `path`
    below it is opened without following any symlink."""
    try:
        fd = _open_below(path, root) if root is not None else os.open(path, _READ_FLAGS)
    except OSError as exc:
        raise SpecError(f"{path}: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = TYPE_NAMES[FileType.from_mode(info.st_mode)]
        raise SpecError(f"{path}: is a {kind}, not a regular file")
    return os.fdopen(fd, "rb")


def _open_below(path: str, root: str) -> int:
    parts = split_path(path[len(root) + 1:]) or ["."]
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for depth, part in enumerate(parts, 1):
            last = depth == len(parts)
            try:
                child = os.open(part, (_READ_FLAGS | os.O_NOFOLLOW) if last else _DIR_FLAGS,
                                dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                where = "/".join(parts[:depth])
                info = os.stat(part, dir_fd=fd, follow_symlinks=False)
                what = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a directory"
                raise SpecError(f"{path}: {where} is {what} below ${{{ROOT_VARIABLE}}} (a tree "
                                "made from an image: nothing there is followed)") from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def format_spec_line(entry: Entry, location: str = "", hardlinks: Iterable[str] = ()) -> str:
    """The spec line for `entry`; a regular file needs the `location` of its bytes
    (as a location's text: see `escape_location`)."""
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
    """A spec list of (entry, location) pairs given parents first. The names of a
    hardlink group (one link_key) become one `file` line, with the group's first
    non-empty location, placed at its last name: gen_init_cpio writes a line's
    names in their order, and the kernel loses a name whose directory does not
    exist yet. Names with white space are refused: no line holds them."""
    items = list(entries)
    groups: dict[object, list[str]] = {}
    for entry, _ in items:
        if entry.type is FileType.FILE and entry.link_key is not None:
            groups.setdefault(entry.link_key, []).append(entry.name)
    by_name = {entry.name: (entry, location) for entry, location in items}
    lines = []
    for entry, location in items:
        for text in (entry.name, entry.linkname):
            if any(char.isspace() for char in text):
                raise SpecError(f"{entry.path!r}: a gen_init_cpio spec list cannot hold names "
                                "or link targets with white space")
        if entry.type is not FileType.FILE or entry.link_key is None:
            lines.append(format_spec_line(entry, location))
            continue
        names = groups[entry.link_key]
        if names[-1] != entry.name:
            continue  # written at the last name of its group
        first, _ = by_name[names[0]]
        location = next((by_name[n][1] for n in names if by_name[n][1]), location)
        lines.append(format_spec_line(first, location, names[1:]))
    return "".join(line + "\n" for line in lines)
