"""Where the bytes of an image are: its final files, their sizes summed per
directory, and the size report that `cpio-du` prints and `nbic run` and
`nbic build` show at their end.

An image is read as the kernel unpacks it: where a name occurs more than once,
the last occurrence wins. A hardlink group's data counts once, on its first
name in sorted order; its other names add nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nbic.cpio.entry import Entry, FileType, landing_name, sort_key
from nbic.cpio.image import open_image

Formatter = Callable[[int], str]
SCHEMA = "nbic-size-report/1"


def human_size(size: int) -> str:
    """1023 -> "1023", 1536 -> "1.5K", 10 MiB -> "10M" (powers of 1024, like du -h)."""
    if size < 1024:
        return str(size)
    value = float(size)
    for unit in "KMGTPE":
        value /= 1024
        if value < 1024 or unit == "E":
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    raise AssertionError("unreachable")


def _by_size(sizes: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(sizes.items(), key=lambda item: (-item[1], sort_key(item[0])))


@dataclass(frozen=True)
class ImageUsage:
    """The measured image. Names are as the image lands: "usr/bin/bash"."""

    entries: int  # entries read, every occurrence
    stored: int  # data bytes as stored: every occurrence, symlink targets too
    raw: int  # the image's size with every segment decompressed
    compressed: int  # the image's size as read
    files: dict[str, int]  # final regular files -> bytes, a hardlink group on its first name
    links: dict[str, tuple[str, ...]]  # first name of a hardlink group -> all its names
    directories: tuple[str, ...]  # final directories

    @property
    def data(self) -> int:
        """Bytes of file data once unpacked (each hardlink group once)."""
        return sum(self.files.values())

    def names_of(self, name: str) -> tuple[str, ...]:
        """All names of the file counted under `name`."""
        return self.links.get(name, (name,))

    def directory_sizes(self, depth: int) -> list[tuple[str, int]]:
        """Cumulative file bytes of every directory down to `depth` levels, largest first."""
        sizes = {name: 0 for name in self.directories
                 if name != "." and name.count("/") < depth}
        for name, size in self.files.items():
            parts = name.split("/")
            for level in range(1, min(len(parts) - 1, depth) + 1):
                prefix = "/".join(parts[:level])
                sizes[prefix] = sizes.get(prefix, 0) + size
        return _by_size(sizes)

    def largest_files(self) -> list[tuple[str, int]]:
        return _by_size(self.files)


def measure(path: str | Path) -> ImageUsage:
    """Read the image at `path` ("-": standard input) once, without keeping data."""
    entries = stored = 0
    final: dict[str, Entry] = {}
    group_sizes: dict[object, int] = {}
    with open_image(path) as reader:
        for entry in reader:
            entries += 1
            stored += entry.size
            if entry.link_key is not None and entry.size:
                group_sizes[entry.link_key] = entry.size
            final[landing_name(entry.name)] = entry
        raw, compressed = reader.raw, reader.consumed
    files: dict[str, int] = {}
    group_names: dict[object, list[str]] = {}
    for name in sorted(final, key=sort_key):
        entry = final[name]
        if entry.type is not FileType.FILE:
            continue
        if entry.link_key is None:
            files[name] = entry.size
            continue
        names = group_names.setdefault(entry.link_key, [])
        if not names:
            files[name] = group_sizes.get(entry.link_key, 0)
        names.append(name)
    links = {names[0]: tuple(names) for names in group_names.values() if len(names) > 1}
    directories = tuple(name for name, entry in final.items() if entry.type is FileType.DIR)
    return ImageUsage(entries, stored, raw, compressed, files, links, directories)


@dataclass(frozen=True)
class SizeReport:
    """What makes an image big, for a console or as JSON (`to_dict`)."""

    image: str
    entries: int
    data: int
    stored: int
    raw: int
    compressed: int
    depth: int
    top: int
    directories: tuple[tuple[str, int], ...]  # largest first
    files: tuple[tuple[str, int], ...]  # largest first, at most `top`

    def format(self, size: Formatter = human_size) -> str:
        lines = []
        if self.depth:
            lines.append(f"directories (cumulative, depth {self.depth}):")
            lines += [f"{size(n):>8}  {name}/" for name, n in self.directories]
        if self.top:
            lines.append(f"largest files (top {self.top}):")
            lines += [f"{size(n):>8}  {name}" for name, n in self.files]
        lines.append(f"total: {self.entries} entries, {size(self.stored)} data, "
                     f"{size(self.raw)} raw, {size(self.compressed)} image")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The JSON form; its schema is documented in docs/size-reports.md."""
        return {
            "schema": SCHEMA,
            "image": self.image,
            "entries": self.entries,
            "data_bytes": self.data,
            "stored_bytes": self.stored,
            "raw_bytes": self.raw,
            "compressed_bytes": self.compressed,
            "depth": self.depth,
            "directories": [{"path": name, "bytes": n} for name, n in self.directories],
            "files": [{"path": name, "bytes": n} for name, n in self.files],
        }


def size_report(image: str | Path, *, depth: int = 2, top: int = 10,
                top_directories: int | None = 10) -> SizeReport:
    """The size report of `image`: totals, the largest directories (down to `depth`
    levels; all of them with `top_directories=None`) and the `top` largest files."""
    usage = measure(image)
    directories = usage.directory_sizes(depth)
    if top_directories is not None:
        directories = directories[:top_directories]
    return SizeReport(str(image), usage.entries, usage.data, usage.stored, usage.raw,
                      usage.compressed, depth, top, tuple(directories),
                      tuple(usage.largest_files()[:top]))
