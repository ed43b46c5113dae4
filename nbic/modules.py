"""Kernel modules for an image: the named ones, what modules.dep says they need,
the firmware their .modinfo lists, and the module index files, so that
`modprobe NAME` works at boot. Everything is read from the rootfs index
(nbic.tree), never from the host; standard library only.

Names follow modprobe: `e1000`, with `-` and `_` alike. A name with a `/` or a
glob character is a pattern over module paths below the kernel tree, as
mkosi's KernelModules= takes them: `drivers/net/ethernet/intel/*` is every
module in that directory and below.
"""

from __future__ import annotations

import fnmatch
import gzip
import lzma
import posixpath
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from nbic.cpio.entry import FileType
from nbic.errors import RootfsError, UsageError
from nbic.tree import Tree

_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")
_MODINFO_LIMIT = 64 << 20  # bytes of a module read to find its .modinfo
FIRMWARE_DIRS = ("lib/firmware/updates/{release}", "lib/firmware/updates",
                 "lib/firmware/{release}", "lib/firmware")  # the kernel's search order


@dataclass(frozen=True)
class Needed:
    path: str  # absolute, as in the rootfs
    why: str


@dataclass(frozen=True)
class ModuleClosure:
    release: str
    needed: tuple[Needed, ...]
    warnings: tuple[str, ...]


def module_name(path: str) -> str:
    base = posixpath.basename(path)
    for suffix in _SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def kernel_release(tree: Tree, release: str | None) -> str:
    """The release to take modules for: the given one, else the only one the
    rootfs has under /lib/modules."""
    directory = tree.resolve("/lib/modules").target
    if directory is None:
        raise RootfsError(f"no /lib/modules in {tree.description}: install a kernel package "
                          "in the rootfs (or in the session) to take modules from")
    found = sorted(name.rsplit("/", 1)[1] for name, entry in tree.entries.items()
                   if entry.type is FileType.DIR and posixpath.dirname(name) == directory)
    if release is not None:
        if release not in found:
            raise RootfsError(f"--kernel-release {release}: not in /lib/modules of "
                              f"{tree.description} (it has {', '.join(found) or 'none'})")
        return release
    if len(found) != 1:
        raise UsageError(f"/lib/modules of {tree.description} holds "
                         f"{', '.join(found) or 'no release'}: give --kernel-release")
    return found[0]


def closure(tree: Tree, patterns: tuple[str, ...], release: str | None) -> ModuleClosure:
    kver = kernel_release(tree, release)
    base = f"/lib/modules/{kver}"
    dependencies = _modules_dep(tree, f"{base}/modules.dep")
    builtin = _builtin(tree, f"{base}/modules.builtin")
    by_name = {module_name(path): path for path in dependencies}
    needed: dict[str, Needed] = {}
    warnings: list[str] = []
    chosen: list[tuple[str, str]] = []
    for pattern in patterns:
        matches = _match(pattern, by_name)
        if matches:
            chosen += [(path, f"--modules {pattern}") for path in matches]
        elif module_name(pattern) in builtin:
            warnings.append(f"--modules {pattern}: built into the kernel, nothing to add")
        else:
            raise RootfsError(f"--modules {pattern}: no such module in {base}")
    for path, why in chosen:
        for module in (path, *dependencies[path]):
            reason = why if module == path else f"{why}: needed by {module_name(path)} " \
                "(modules.dep)"
            needed.setdefault(f"{base}/{module}", Needed(f"{base}/{module}", reason))
    for module in list(needed):
        for firmware in _firmware(tree, module):
            found = _find_firmware(tree, firmware, kver)
            if found is None:
                warnings.append(f"{module_name(module)}: firmware {firmware} is not in the "
                                "rootfs (install the firmware package to have it)")
            else:
                needed.setdefault(found, Needed(found, f"firmware of {module_name(module)}"))
    for name, entry in tree.entries.items():
        if posixpath.basename(name).startswith("modules.") and entry.type is FileType.FILE \
                and posixpath.dirname(name) == tree.resolve(base).target:
            needed.setdefault(f"{base}/{posixpath.basename(name)}",
                              Needed(f"{base}/{posixpath.basename(name)}",
                                     "module index, for modprobe"))
    return ModuleClosure(kver, tuple(needed.values()), tuple(warnings))


def _match(pattern: str, by_name: dict[str, str]) -> list[str]:
    if "/" in pattern or any(char in pattern for char in "*?["):
        paths = [path for path in by_name.values()
                 if fnmatch.fnmatchcase(path.removeprefix("kernel/"), pattern)
                 or fnmatch.fnmatchcase(path.removeprefix("kernel/"), pattern.rstrip("/") + "/*")
                 or fnmatch.fnmatchcase(module_name(path), pattern.replace("-", "_"))]
        return sorted(paths)
    path = by_name.get(module_name(pattern))
    return [path] if path else []


def _lines(tree: Tree, path: str) -> Iterator[str]:
    target = tree.resolve(path).target
    if target is None:
        return
    with tree.open(target) as stream:
        yield from stream.read().decode("utf-8", "surrogateescape").splitlines()


def _modules_dep(tree: Tree, path: str) -> dict[str, tuple[str, ...]]:
    """modules.dep: each module's path (relative to the release's directory) and
    everything it needs, already transitive (depmod writes it so)."""
    if tree.resolve(path).target is None:
        raise RootfsError(f"no {path} in {tree.description}: run depmod in the rootfs")
    result = {}
    for line in _lines(tree, path):
        module, _, needs = line.partition(":")
        if module:
            result[module.strip()] = tuple(needs.split())
    return result


def _builtin(tree: Tree, path: str) -> set[str]:
    return {module_name(line.strip()) for line in _lines(tree, path) if line.strip()}


def _find_firmware(tree: Tree, firmware: str, release: str) -> str | None:
    for directory in FIRMWARE_DIRS:
        base = "/" + directory.format(release=release)
        for suffix in ("", ".xz", ".zst"):
            path = f"{base}/{firmware}{suffix}"
            target = tree.resolve(path).target
            if target is not None and tree.get(target) is not None and \
                    tree.entries[target].type is FileType.FILE:
                return path
    return None


def _firmware(tree: Tree, module: str) -> list[str]:
    """The `firmware=` entries of a module's .modinfo section."""
    target = tree.resolve(module).target
    if target is None:
        return []
    entry = tree.entries[target]
    with tree.open(target) as stream:
        data = stream.read(min(entry.size, _MODINFO_LIMIT))
    if target.endswith(".ko.xz"):
        data = lzma.decompress(data)
    elif target.endswith(".ko.gz"):
        data = gzip.decompress(data)
    elif target.endswith(".ko.zst"):
        return []  # no zstd in the standard library: firmware is not looked up
    section = _section(data, b".modinfo")
    return [item[len(b"firmware="):].decode("utf-8", "surrogateescape")
            for item in section.split(b"\0") if item.startswith(b"firmware=")]


def _section(data: bytes, wanted: bytes) -> bytes:
    """The bytes of a named section of an ELF object; empty when there is none."""
    if len(data) < 64 or not data.startswith(b"\x7fELF") or data[4] not in (1, 2):
        return b""
    order = "<" if data[5] == 1 else ">"
    wide = data[4] == 2
    try:
        if wide:
            shoff, = struct.unpack_from(order + "Q", data, 0x28)
            shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", data, 0x3A)
            header = struct.Struct(order + "IIQQQQIIQQ")
        else:
            shoff, = struct.unpack_from(order + "I", data, 0x20)
            shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", data, 0x2E)
            header = struct.Struct(order + "IIIIIIIIII")
        if shentsize < header.size or shstrndx >= shnum:
            return b""
        sections = [header.unpack_from(data, shoff + index * shentsize)
                    for index in range(shnum)]
        names = sections[shstrndx]
        for name, _type, _flags, _addr, offset, size, *_rest in sections:
            start = names[4] + name
            label = data[start: data.index(b"\0", start)]
            if label == wanted:
                return data[offset: offset + size]
    except (struct.error, ValueError, IndexError):
        return b""
    return b""
