"""What a program needs to start, read from its ELF headers inside a rootfs index.

The kernel loads a program's PT_INTERP (or a script's #! interpreter); the
dynamic loader then loads every DT_NEEDED library, transitively, searching as
glibc's ld.so does (elf/dl-load.c): the DT_RPATH of the needing object and of
the objects that loaded it (only while the needing object has no DT_RUNPATH),
then its DT_RUNPATH, then the directories of the rootfs's /etc/ld.so.conf
(what ldconfig puts in ld.so.cache), then the default directories. A
candidate of another ELF class, byte order or machine is passed over, as
ld.so passes over wrong-architecture libraries.

Everything is resolved in a `Tree`, never by running a loader, so a
foreign-architecture rootfs works too. Headers are read with bounded reads; a
malformed ELF raises ElfError. Not modelled: LD_LIBRARY_PATH and LD_PRELOAD
(the environment's, not the rootfs's), /etc/ld.so.preload, hwcaps
subdirectories, DF_1_NODEFLIB. ld.so.cache is keyed by DT_SONAME where this
looks for the file name; ldconfig makes the soname link that makes them agree.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from nbic.cpio.entry import FileType, split_path
from nbic.errors import ElfError, RootfsError
from nbic.tree import Tree

LD_SO_CONF = "/etc/ld.so.conf"

_MAGIC = b"\x7fELF"
_SHEBANG = b"#!"
_ELFCLASS32, _ELFCLASS64 = 1, 2
_ELFDATA2LSB, _ELFDATA2MSB = 1, 2
_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_STRSZ = 0, 1, 5, 10
_DT_SONAME, _DT_RPATH, _DT_RUNPATH = 14, 15, 29
_STRING_TAGS = {_DT_SONAME: "DT_SONAME", _DT_RPATH: "DT_RPATH", _DT_RUNPATH: "DT_RUNPATH"}

# Bounds, most of them the kernel's: what it reads of a #! line, the longest
# PT_INTERP and program header table it accepts, how deep scripts may nest.
_BINPRM_BUF_SIZE = 256
_PATH_MAX = 4096
_MAX_PROGRAM_HEADERS = 65536
_MAX_SCRIPT_NESTING = 5
_MAX_DYNAMIC = 1 << 20
_MAX_STRING = 1 << 16
_STRING_CHUNK = 256

# AT_PLATFORM, which $PLATFORM expands to, for machines where it is fixed.
_PLATFORMS = {3: "i686", 62: "x86_64", 183: "aarch64"}
_DST = re.compile(r"\$(?:\{(ORIGIN|LIB|PLATFORM)\}|(ORIGIN|LIB|PLATFORM)(?![A-Za-z0-9_]))")
_GLOB_MAGIC = re.compile(r"[*?[]")


@dataclass(frozen=True)
class Kind:
    """What ld.so compares before it takes a library: ELF class, byte order, machine."""

    elf_class: int
    byte_order: int
    machine: int

    @property
    def lib(self) -> str:
        """What $LIB expands to."""
        return "lib64" if self.elf_class == _ELFCLASS64 else "lib"

    @property
    def default_dirs(self) -> tuple[str, ...]:
        lib = ("/lib", "/usr/lib")
        return ("/lib64", "/usr/lib64", *lib) if self.elf_class == _ELFCLASS64 else lib


@dataclass(frozen=True)
class Elf:
    """The parts of an ELF file that say what it needs to run."""

    kind: Kind
    interpreter: str | None  # PT_INTERP
    needed: tuple[str, ...]  # DT_NEEDED, in order
    soname: str | None
    rpath: str | None  # None when there is a DT_RUNPATH: ld.so then ignores DT_RPATH
    runpath: str | None


@dataclass(frozen=True)
class Needed:
    """A file a program needs, by the path the kernel or the loader opens it."""

    path: str
    why: str


@dataclass(frozen=True)
class Missing:
    """A file a program needs that the rootfs does not have (a PT_INTERP, #! or DT_NEEDED)."""

    name: str
    why: str


@dataclass(frozen=True)
class Closure:
    needed: tuple[Needed, ...]
    missing: tuple[Missing, ...]


@dataclass(frozen=True)
class _Layout:
    """Where the fields sit for one ELF class and byte order."""

    header: struct.Struct  # the ELF header after e_ident
    segment: struct.Struct  # one program header
    segment_fields: tuple[int, int, int, int]  # indexes of p_type, p_offset, p_vaddr, p_filesz
    dynamic: struct.Struct  # one (d_tag, d_val)


_LAYOUTS = {
    (elf_class, order): _Layout(
        struct.Struct(prefix + ("HHIIIIIHHHHHH" if elf_class == _ELFCLASS32 else "HHIQQQIHHHHHH")),
        struct.Struct(prefix + ("8I" if elf_class == _ELFCLASS32 else "IIQQQQQQ")),
        (0, 1, 2, 4) if elf_class == _ELFCLASS32 else (0, 2, 3, 5),
        struct.Struct(prefix + ("II" if elf_class == _ELFCLASS32 else "QQ")))
    for elf_class in (_ELFCLASS32, _ELFCLASS64)
    for order, prefix in ((_ELFDATA2LSB, "<"), (_ELFDATA2MSB, ">"))
}


class _Reader:
    """Bounded reads at offsets of one file whose size is known from the index."""

    def __init__(self, stream: BinaryIO, size: int, path: str):
        self.stream, self.size, self.path = stream, size, path

    def error(self, message: str, offset: int | None = None) -> ElfError:
        where = f" at offset {offset}" if offset is not None else ""
        return ElfError(f"malformed ELF {self.path}: {message}{where}", offset)

    def read(self, offset: int, size: int, what: str) -> bytes:
        if offset + size > self.size:
            raise self.error(f"{what} ({size} bytes) runs past the end of the file "
                             f"({self.size} bytes)", offset)
        self.stream.seek(offset)
        data = self.stream.read(size)
        if len(data) < size:
            raise self.error(f"{what} is cut short", offset)
        return data

    def string(self, offset: int, limit: int, what: str) -> str:
        end = min(offset + limit, self.size)
        chunks = []
        position = offset
        while position < end:
            chunk = self.read(position, min(_STRING_CHUNK, end - position), what)
            nul = chunk.find(b"\0")
            if nul >= 0:
                chunks.append(chunk[:nul])
                return os.fsdecode(b"".join(chunks))
            chunks.append(chunk)
            position += len(chunk)
        raise self.error(f"{what} is not NUL-terminated", offset)


def parse_elf(stream: BinaryIO, size: int, path: str) -> Elf | None:
    """The headers of an ELF file of `size` bytes; None if it is not an ELF file."""
    reader = _Reader(stream, size, path)
    head = reader.read(0, min(size, 64), "ELF header")
    if not head.startswith(_MAGIC):
        return None
    if len(head) < 6:
        raise reader.error("e_ident is cut short", 0)
    layout = _LAYOUTS.get((head[4], head[5]))
    if layout is None:
        raise reader.error(f"unknown ELF class {head[4]} or byte order {head[5]}", 4)
    if len(head) < 16 + layout.header.size:
        raise reader.error("the ELF header is cut short", 0)
    header = layout.header.unpack_from(head, 16)
    machine, phoff, phentsize, phnum = header[1], header[4], header[8], header[9]
    interp_segment = dynamic_segment = None
    loads = []
    if phnum:
        if phentsize < layout.segment.size:
            raise reader.error(f"program headers of {phentsize} bytes are too small", 16)
        if phnum * phentsize > _MAX_PROGRAM_HEADERS:
            raise reader.error(f"too many program headers: {phnum} of {phentsize} bytes", 16)
        table = reader.read(phoff, phnum * phentsize, "the program header table")
        for index in range(phnum):
            values = layout.segment.unpack_from(table, index * phentsize)
            kind, offset, vaddr, filesz = (values[i] for i in layout.segment_fields)
            if kind == _PT_LOAD:
                loads.append((vaddr, offset, filesz))
            elif kind == _PT_INTERP and interp_segment is None:
                interp_segment = (offset, filesz)
            elif kind == _PT_DYNAMIC and dynamic_segment is None:
                dynamic_segment = (offset, filesz)
    interpreter = _interp(reader, *interp_segment) if interp_segment else None
    needed, strings = _dynamic(reader, layout, dynamic_segment, loads) if dynamic_segment \
        else ((), {})
    runpath = strings.get(_DT_RUNPATH)
    return Elf(Kind(head[4], head[5], machine), interpreter, needed, strings.get(_DT_SONAME),
               None if runpath is not None else strings.get(_DT_RPATH), runpath)


def _interp(reader: _Reader, offset: int, size: int) -> str:
    # The kernel refuses a PT_INTERP that is empty, longer than PATH_MAX or unterminated.
    if not 2 <= size <= _PATH_MAX:
        raise reader.error(f"PT_INTERP of {size} bytes", offset)
    data = reader.read(offset, size, "PT_INTERP")
    if data[-1] != 0:
        raise reader.error("PT_INTERP is not NUL-terminated", offset)
    return os.fsdecode(data.split(b"\0", 1)[0])


def _dynamic(reader: _Reader, layout: _Layout, segment: tuple[int, int],
             loads: list[tuple[int, int, int]]) -> tuple[tuple[str, ...], dict[int, str]]:
    """DT_NEEDED names and the other strings (by tag) of the dynamic section."""
    offset, size = segment
    if size > _MAX_DYNAMIC:
        raise reader.error(f"a dynamic section of {size} bytes", offset)
    data = reader.read(offset, size - size % layout.dynamic.size, "the dynamic section")
    needed_offsets = []
    values: dict[int, int] = {}
    for tag, value in layout.dynamic.iter_unpack(data):
        if tag == _DT_NULL:
            break
        if tag == _DT_NEEDED:
            needed_offsets.append(value)
        elif tag in (_DT_STRTAB, _DT_STRSZ, *_STRING_TAGS):
            values[tag] = value  # the last one counts, as in ld.so
    if not needed_offsets and not any(tag in values for tag in _STRING_TAGS):
        return (), {}
    if _DT_STRTAB not in values:
        raise reader.error("dynamic strings but no DT_STRTAB", offset)
    address = values[_DT_STRTAB]
    # DT_STRTAB is an address in memory: the PT_LOAD segment holding it says where
    # it is in the file.
    table = next((file_offset + address - vaddr for vaddr, file_offset, filesz in loads
                  if vaddr <= address < vaddr + filesz), None)
    if table is None:
        raise reader.error(f"DT_STRTAB {address:#x} is in no PT_LOAD segment", offset)
    table_size = values.get(_DT_STRSZ)

    def string(position: int, what: str) -> str:
        if table_size is not None and position >= table_size:
            raise reader.error(f"{what} at string {position}, past DT_STRSZ {table_size}")
        limit = _MAX_STRING if table_size is None else min(_MAX_STRING, table_size - position)
        return reader.string(table + position, limit, what)

    needed = tuple(string(position, "DT_NEEDED") for position in needed_offsets)
    return needed, {tag: string(values[tag], label)
                    for tag, label in _STRING_TAGS.items() if tag in values}


@contextmanager
def _opened(tree: Tree, name: str) -> Iterator[BinaryIO]:
    tree.prefetch([name])
    try:
        with tree.open(name) as stream:
            yield stream
    except OSError as exc:
        raise RootfsError(f"cannot read /{name} in {tree.description}: "
                          f"{exc.strerror or exc}") from None


def _regular_file(tree: Tree, path: str) -> str | None:
    """The tree name of the regular file `path` leads to, if it leads to one."""
    target = tree.resolve(path).target
    entry = tree.get(target) if target else None
    return target if entry is not None and entry.type is FileType.FILE else None


def read_elf(tree: Tree, name: str) -> Elf | None:
    """The ELF headers of the tree's regular file `name`; None if it is not an ELF file."""
    with _opened(tree, name) as stream:
        return parse_elf(stream, tree.entries[name].size, "/" + name)


def _script_interpreter(tree: Tree, name: str) -> str | None:
    """The interpreter a #! line names, as the kernel reads it (None if no #! line)."""
    with _opened(tree, name) as stream:
        head = stream.read(_BINPRM_BUF_SIZE)
    if not head.startswith(_SHEBANG):
        return None
    words = head[2:].split(b"\n", 1)[0].replace(b"\0", b" ").split()
    return os.fsdecode(words[0]) if words else None


def interpreter(tree: Tree, path: str) -> str | None:
    """What the kernel starts to run `path`: a script's #! interpreter or an ELF's
    PT_INTERP; None for a static program, a missing file or one of neither kind."""
    name = _regular_file(tree, path)
    if name is None:
        return None
    script = _script_interpreter(tree, name)
    if script is not None:
        return script
    elf = read_elf(tree, name)
    return elf.interpreter if elf else None


def needed_closure(tree: Tree, *programs: str) -> Closure:
    """Everything the programs need from the rootfs to start, in the order the kernel
    and ld.so load it, and what they need that is not there. Each program is its own
    process: a library is searched for each, and listed once per path."""
    linker = _Linker(tree)
    walks = [linker.walk(program) for program in programs]
    # The walks go in step, each pausing with the files it reads next: a streamed
    # tar is then read once per step for all of them, not once per file.
    while walks:
        wanted: set[str] = set()
        running = []
        for walk in walks:
            names = next(walk, None)
            if names is not None:
                wanted |= names
                running.append(walk)
        tree.prefetch(wanted)
        walks = running
    return Closure(tuple(linker.needed.values()), tuple(linker.missing))


@dataclass(frozen=True)
class _Object:
    """One loaded object of a program's link map."""

    path: str  # the name it was opened by
    elf: Elf
    origin: str  # $ORIGIN
    loader: _Object | None  # the object whose DT_NEEDED loaded it first


class _Linker:
    """ld.so's search, in a tree; the files it parsed and ld.so.conf are read once."""

    def __init__(self, tree: Tree):
        self.tree = tree
        self.needed: dict[str, Needed] = {}
        self.missing: dict[Missing, None] = {}
        self._elves: dict[str, Elf | None] = {}
        self.conf_dirs = _ld_so_conf(tree)

    def walk(self, program: str) -> Iterator[set[str]]:
        """Find what `program` needs, yielding the tree names it reads next before it
        reads them."""
        path = program
        name = _regular_file(self.tree, path)
        if name is None:
            raise RootfsError(f"{program} is not a file in {self.tree.description}")
        for _depth in range(_MAX_SCRIPT_NESTING):
            yield {name}
            script = _script_interpreter(self.tree, name)
            if script is None:
                break
            why = f"#! interpreter of {path}"
            path, name = script, _regular_file(self.tree, script)
            if name is None:
                self.missing[Missing(script, why)] = None
                return
            self._need(script, why)
        else:
            raise RootfsError(f"{program}: #! interpreters nest more than "
                              f"{_MAX_SCRIPT_NESTING} deep")
        elf = self._elf(name)
        if elf is not None:
            # $ORIGIN of the program is where it really is, as /proc/self/exe says;
            # of a library, the directory of the name it was opened by.
            yield from self._link(_Object(path, elf, posixpath.dirname("/" + name), None), name)

    def _need(self, path: str, why: str) -> None:
        self.needed.setdefault(path, Needed(path, why))

    def _elf(self, name: str) -> Elf | None:
        if name not in self._elves:
            self._elves[name] = read_elf(self.tree, name)
        return self._elves[name]

    def _link(self, main: _Object, main_name: str) -> Iterator[set[str]]:
        """Load the program's PT_INTERP and, breadth first as ld.so does, its DT_NEEDED."""
        loaded_names: set[str] = set()  # names that match a loaded object, as ld.so compares
        loaded_files = {main_name}  # ld.so also knows a file it loaded under another name
        interp = main.elf.interpreter
        if interp is not None:
            why = f"PT_INTERP of {main.path}"
            name = _regular_file(self.tree, interp)
            if name is None:
                self.missing[Missing(interp, why)] = None
            else:
                self._need(interp, why)
                yield {name}
                loaded_files.add(name)
                loaded_names.add(interp)
                rtld = self._elf(name)
                if rtld is not None and rtld.soname:
                    loaded_names.add(rtld.soname)
        level = [main]
        while level:
            requests = [(needing, needed, self._candidates(needing, needed, main.elf.kind))
                        for needing in level for needed in needing.elf.needed
                        if needed not in loaded_names]
            yield {name for _, _, candidates in requests for _, name, _ in candidates
                   if name not in self._elves}
            level = []
            for needing, needed, candidates in requests:
                if needed in loaded_names:
                    continue
                found = self._first_of_kind(candidates, main.elf.kind)
                if found is None:
                    self.missing[Missing(needed, f"DT_NEEDED of {needing.path}")] = None
                    continue
                path, name, via, elf = found
                loaded_names.add(needed)
                if name in loaded_files:
                    continue
                loaded_files.add(name)
                loaded_names.update(filter(None, (path, elf.soname)))
                self._need(path, f"DT_NEEDED {needed} of {needing.path} via {via}")
                level.append(_Object(path, elf, posixpath.dirname(path), needing))

    def _first_of_kind(self, candidates: list[tuple[str, str, str]], kind: Kind
                       ) -> tuple[str, str, str, Elf] | None:
        for path, name, via in candidates:
            elf = self._elf(name)
            if elf is not None and elf.kind == kind:
                return path, name, via, elf
        return None

    def _candidates(self, needing: _Object, needed: str, kind: Kind
                    ) -> list[tuple[str, str, str]]:
        """The files ld.so would try for `needed`, in its order: (path, tree name, why)."""
        return [(path, name, via) for path, via in self._search(needing, needed, kind)
                if (name := _regular_file(self.tree, path)) is not None]

    def _search(self, needing: _Object, needed: str, kind: Kind) -> Iterator[tuple[str, str]]:
        if "/" in needed:  # a path, not searched; it may hold $ORIGIN
            for path in _expand(needed, needing):
                yield path, "its path"
            return
        if needing.elf.runpath is None:
            loader: _Object | None = needing
            while loader is not None:
                for directory in _expand(loader.elf.rpath or "", loader):
                    yield _join(directory, needed), f"DT_RPATH of {loader.path}"
                loader = loader.loader
        for directory in _expand(needing.elf.runpath or "", needing):
            yield _join(directory, needed), f"DT_RUNPATH of {needing.path}"
        for directory, listed_in in self.conf_dirs:
            yield _join(directory, needed), listed_in
        for directory in kind.default_dirs:
            yield _join(directory, needed), "the default path"


def _join(directory: str, name: str) -> str:
    return directory.rstrip("/") + "/" + name


def _expand(search_path: str, owner: _Object) -> Iterator[str]:
    """The absolute elements of a DT_RPATH/DT_RUNPATH list (or a DT_NEEDED path), with
    $ORIGIN, $LIB and $PLATFORM expanded as ld.so does; an element whose platform
    is unknown is dropped, like relative and empty ones (they would name the cwd)."""
    kind = owner.elf.kind
    values = {"ORIGIN": owner.origin, "LIB": kind.lib, "PLATFORM": _PLATFORMS.get(kind.machine)}
    for element in search_path.split(":"):
        tokens = {braced or bare for braced, bare in _DST.findall(element)}
        if any(values[token] is None for token in tokens):
            continue
        expanded = _DST.sub(lambda match: values[match.group(1) or match.group(2)] or "",
                            element)
        if expanded.startswith("/"):
            yield expanded


def _ld_so_conf(tree: Tree) -> list[tuple[str, str]]:
    """The directories the rootfs's ld.so.conf lists, in order, each with the file that
    lists it; `include` globs are matched in the tree, as ldconfig matches them."""
    directories: list[tuple[str, str]] = []
    parsed: set[str] = set()

    def parse(path: str) -> None:
        name = _regular_file(tree, path)
        if name is None or name in parsed:
            return
        parsed.add(name)
        with _opened(tree, name) as stream:
            for raw in stream:
                line = os.fsdecode(raw).split("#", 1)[0].strip()
                words = line.split()
                if not words or words[0] == "hwcap":
                    continue
                if words[0] != "include":
                    if line.startswith("/"):
                        directories.append((line.rstrip("/") or "/", path))
                    continue
                for pattern in words[1:]:
                    matches = _glob(tree, posixpath.join(posixpath.dirname(path), pattern))
                    tree.prefetch(filter(None, (_regular_file(tree, match) for match in matches)))
                    for match in matches:
                        parse(match)

    parse(LD_SO_CONF)
    return directories


def _glob(tree: Tree, pattern: str) -> list[str]:
    """glob(3) over the tree's index: the existing paths `pattern` matches, sorted."""
    paths = ["/"]
    for part in split_path(pattern):
        if not _GLOB_MAGIC.search(part):
            paths = [posixpath.join(path, part) for path in paths]
            continue
        paths = [posixpath.join(path, child) for path in paths for child in _children(tree, path)
                 if fnmatch.fnmatchcase(child, part)
                 and (part.startswith(".") or not child.startswith("."))]
    return sorted(path for path in paths if tree.resolve(path).target is not None)


def _children(tree: Tree, path: str) -> list[str]:
    directory = tree.resolve(path).target
    if directory is None:
        return []
    if directory == ".":
        prefix = ""
    else:
        entry = tree.get(directory)
        if entry is None or entry.type is not FileType.DIR:
            return []
        prefix = directory + "/"
    return [name[len(prefix):] for name in tree.entries
            if name.startswith(prefix) and "/" not in name[len(prefix):]]
