"""Kernels for the boot check: a file as given, or a Debian kernel package
fetched with apt in a container and cached by version.

`debian:SUITE:PACKAGE[:MIRROR]` (e.g. `debian:bookworm:linux-image-amd64`)
names a package of the suite's main component; a metapackage is followed
through its linux-image-* dependency to the package that holds
/boot/vmlinuz-*. apt runs in a container of the builder image; the host reads
the .deb as a stream (it never runs dpkg, and writes only the files below):

    $XDG_CACHE_HOME/nbic/kernels/PACKAGE_VERSION/   (~/.cache/nbic/... by default)
        vmlinuz          /boot/vmlinuz-RELEASE
        vmlinux          its ELF form, when the kernel has a PVH entry (CONFIG_PVH=y):
                         QEMU boots that without the bzImage's slow self-decompression
        config           /boot/config-RELEASE
        modules.tar.zst  the package's module tree, names as packaged
                         (lib/modules/RELEASE/...): a tar nbic.tree.open_tree reads
        kernel.json      source, package, version, release, the .deb's sha256

A version's directory is built under a temporary name and renamed into place
whole, so an interrupted fetch leaves nothing that looks cached.
kernels/sources/ remembers what each source resolved to: later calls use the
cache without any network. Removing the cache directory fetches anew (and so
picks up the suite's newer kernel).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import re
import shlex
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from nbic import engine
from nbic.cache import user_cache
from nbic.cpio.compress import (
    Compression,
    CompressionSpec,
    compressed_writer,
    decompress_chunks,
    decompressor_for,
    detect,
)
from nbic.cpio.entry import split_path
from nbic.cpio.source import CHUNK, ChunkReader
from nbic.errors import KernelError, UsageError
from nbic.output import atomic_output
from nbic.packages import paragraphs
from nbic.rootfs import DEFAULT_MIRROR
from nbic.vmlinux import extract_vmlinux

log = logging.getLogger("nbic")

PREFIX = "debian:"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"  # in the builder image
WORKDIR = "/kernel"  # in the fetch container
MAX_HOPS = 3  # metapackage -> package: one hop in Debian; a little slack
INFO = "kernel.json"
MODULES_COMPRESSION = CompressionSpec(Compression.ZSTD, 3)  # 400 MB of modules: fast
STALE_SECONDS = 24 * 3600  # temporary directories older than this are leftovers
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+\Z")
_VERSION = re.compile(r"[0-9][A-Za-z0-9.+~:-]*\Z")
_SUITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_MIRROR = re.compile(r"https?://[^\s'\"]+\Z")
_VMLINUZ = re.compile(r"boot/vmlinuz-([^/]+)\Z")
_CONFIG = re.compile(r"boot/config-([^/]+)\Z")
_MODULES = re.compile(r"(usr/)?lib/modules/[^/]+(/.*)?\Z")


@dataclass(frozen=True)
class KernelSource:
    suite: str
    package: str
    mirror: str = DEFAULT_MIRROR

    def __str__(self) -> str:
        text = f"{PREFIX}{self.suite}:{self.package}"
        return text if self.mirror == DEFAULT_MIRROR else f"{text}:{self.mirror}"


def parse_kernel_source(text: str) -> KernelSource | None:
    """`debian:SUITE:PACKAGE[:MIRROR]`, or None for anything else (a file)."""
    if not text.startswith(PREFIX):
        return None
    suite, _, rest = text.removeprefix(PREFIX).partition(":")
    package, _, mirror = rest.partition(":")
    if not _SUITE.match(suite) or not _PACKAGE.match(package):
        raise UsageError(f"kernel source {text!r}: give debian:SUITE:PACKAGE[:MIRROR], "
                         "e.g. debian:bookworm:linux-image-amd64")
    if mirror and not _MIRROR.match(mirror):
        raise UsageError(f"kernel source {text!r}: the mirror must be an http(s) URL")
    return KernelSource(suite, package, mirror or DEFAULT_MIRROR)


@dataclass(frozen=True)
class KernelFiles:
    vmlinuz: Path  # the kernel as given, or the package's /boot/vmlinuz-RELEASE
    vmlinux: Path | None = None  # its ELF form, which QEMU boots faster under TCG
    release: str | None = None  # `uname -r` (None for a kernel given as a file)
    package: str | None = None
    version: str | None = None
    modules: Path | None = None  # modules.tar.zst: the package's module tree

    @property
    def boot_kernel(self) -> Path:
        """What QEMU's -kernel gets."""
        return self.vmlinux or self.vmlinuz


def resolve_kernel(text: str | Path) -> KernelFiles:
    """A kernel file as given, or the cached (fetched on first use) kernel of a
    package source such as debian:bookworm:linux-image-amd64."""
    source = parse_kernel_source(str(text))
    if source is None:
        return KernelFiles(vmlinuz=Path(text))
    root = kernels_dir()
    cached = _cached(root, source)
    if cached is not None:
        log.debug("kernel %s: cached %s %s in %s", source, cached.package, cached.version,
                  cached.vmlinuz.parent)
        return cached
    log.info("fetching kernel %s with apt in a container (once per version)", source)
    files = fetch(source, root)
    pointer = _pointer(root, source)
    pointer.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(pointer) as out:
        out.write(json.dumps({"source": str(source),
                              "kernel": files.vmlinuz.parent.name}).encode())
    log.info("kernel %s: %s %s (%s) in %s", source, files.package, files.version,
             files.release, files.vmlinuz.parent)
    return files


def kernels_dir() -> Path:
    return user_cache() / "kernels"


# --- the cache -------------------------------------------------------------------

def _pointer(root: Path, source: KernelSource) -> Path:
    key = f"{source.suite}\0{source.package}\0{source.mirror}"
    return root / "sources" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _cached(root: Path, source: KernelSource) -> KernelFiles | None:
    try:
        name = json.loads(_pointer(root, source).read_text())["kernel"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(name, str) or not name or Path(name).name != name:
        return None
    return load(root / name)


def load(directory: Path) -> KernelFiles | None:
    """The kernel cached in `directory`, or None if that is no complete entry."""
    try:
        info = json.loads((directory / INFO).read_text())
        return KernelFiles(
            vmlinuz=directory / "vmlinuz",
            vmlinux=directory / "vmlinux" if info["vmlinux"] else None,
            release=info["release"], package=info["package"], version=info["version"],
            modules=directory / "modules.tar.zst" if info["modules"] else None)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove_leftovers(root: Path) -> None:
    """Temporary directories of fetches that were killed outright."""
    for path in root.glob(".tmp-*"):
        try:
            if time.time() - path.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(path)
        except OSError as exc:
            log.debug("cannot remove %s: %s", path, exc)


# --- fetching with apt in a container ------------------------------------------------

def fetch(source: KernelSource, root: Path) -> KernelFiles:
    """Download the source's kernel package with apt and cache it."""
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    client = engine.connect()
    builder = engine.builder_image(client)
    with engine.container(client, builder, ["sleep", "infinity"], role="kernel") as helper:
        engine.start(helper, "starting the kernel fetch container")
        sources = f"deb [signed-by={KEYRING}] {source.mirror} {source.suite} main"
        engine.run_in(helper, ["sh", "-c", (
            f"echo {shlex.quote(sources)} > /etc/apt/sources.list && "
            f"rm -f /etc/apt/sources.list.d/* && mkdir -p {WORKDIR} && apt-get -qq update")],
            f"apt-get update for {source.suite} from {source.mirror}")
        package = source.package
        for _ in range(MAX_HOPS):
            deb = _download(helper, package, source)
            with engine.fetch_file(helper, deb) as stream:
                result = install_deb(stream, root, str(source))
            if isinstance(result, KernelFiles):
                return result
            log.info("kernel %s: %s depends on %s", source, package, result)
            package = result
    raise KernelError(f"kernel {source}: no kernel after {MAX_HOPS} linux-image-* dependencies")


def _download(helper, package: str, source: KernelSource) -> str:
    """apt-get download in the container; the .deb's path there."""
    engine.run_in(helper, ["sh", "-c", (
        f"cd {WORKDIR} && rm -f ./*.deb && apt-get download -qq -o APT::Sandbox::User=root "
        f"{shlex.quote(package)}")], f"downloading {package} from {source.suite}")
    debs = [name for name in engine.run_in(helper, ["ls", WORKDIR], "listing the download")
            .splitlines() if name.endswith(".deb")]
    if len(debs) != 1:
        raise KernelError(f"apt-get download {package} left {debs or 'no .deb'}")
    return f"{WORKDIR}/{debs[0]}"


# --- reading a .deb --------------------------------------------------------------------

class _Hashing(io.RawIOBase):
    """A stream read through, with the sha256 of what passed."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._stream.read(len(buffer))
        self.sha256.update(data)
        buffer[: len(data)] = data
        return len(data)


class _Member(io.RawIOBase):
    """The next `size` bytes of an ar archive: one member's data."""

    def __init__(self, stream: BinaryIO, size: int):
        self._stream = stream
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self.left:
            return 0
        data = self._stream.read(min(len(buffer), self.left))
        if not data:
            raise KernelError("truncated .deb")
        buffer[: len(data)] = data
        self.left -= len(data)
        return len(data)

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def _ar_members(stream: BinaryIO) -> Iterator[tuple[str, _Member]]:
    """(name, data) of each member of the ar archive a .deb is."""
    if stream.read(8) != b"!<arch>\n":
        raise KernelError("not a Debian package (no ar archive)")
    while header := stream.read(60):
        if len(header) != 60 or header[58:60] != b"`\n":
            raise KernelError("corrupt .deb (bad ar member header)")
        try:
            size = int(header[48:58])
        except ValueError:
            raise KernelError("corrupt .deb (bad ar member size)") from None
        member = _Member(stream, size)
        yield header[:16].decode("ascii", "replace").strip().rstrip("/"), member
        member.drain()
        if size % 2:
            stream.read(1)


def _tar(member: _Member) -> tarfile.TarFile:
    """A streaming reader of a control.tar.* or data.tar.* member, any compression."""
    head = member.read(CHUNK)
    method = detect(head)
    if method is None:
        chunks: Iterator[bytes] = _chained(head, member)
    else:
        chunks = _decompressed(method, head, member)
    return tarfile.open(fileobj=ChunkReader(chunks), mode="r|", encoding="utf-8",
                        errors="surrogateescape")


def _chained(head: bytes, member: _Member) -> Iterator[bytes]:
    yield head
    while chunk := member.read(CHUNK):
        yield chunk


def _decompressed(method: Compression, head: bytes, member: _Member) -> Iterator[bytes]:
    decompressor = decompressor_for(method, head)
    for chunk in _chained(head, member):
        try:
            yield from decompress_chunks(decompressor, chunk)
        except Exception as exc:  # every codec has its own error type
            raise KernelError(f"corrupt {method.value} data in the .deb: {exc}") from exc


@dataclass
class _Unpacked:
    control: dict[str, str]
    release: str | None = None
    modules: bool = False


def _unpack(stream: BinaryIO, work: Path) -> _Unpacked:
    """Read a .deb front to back: its control fields; the kernel, its config and
    its module tree (if it has them) into `work`."""
    unpacked = _Unpacked({})
    with ExitStack() as modules_output:
        modules: tarfile.TarFile | None = None
        for name, member in _ar_members(stream):
            if name.startswith("control.tar"):
                with _tar(member) as archive:
                    for info in archive:
                        if info.isreg() and split_path(info.name) == ["control"]:
                            data = archive.extractfile(info)
                            assert data is not None  # a regular member
                            text = data.read().decode("utf-8", "replace")
                            unpacked.control = next(paragraphs(text.splitlines()), {})
            elif name.startswith("data.tar"):
                with _tar(member) as archive:
                    for info in archive:
                        path = "/".join(split_path(info.name))
                        if (found := _VMLINUZ.match(path)) and info.isreg():
                            unpacked.release = found.group(1)
                            _copy(archive.extractfile(info), work / "vmlinuz")
                        elif _CONFIG.match(path) and info.isreg():
                            _copy(archive.extractfile(info), work / "config")
                        elif _MODULES.match(path) and ".." not in path.split("/"):
                            if modules is None:
                                modules = _modules_writer(modules_output, work)
                            info.name = path
                            if info.islnk():
                                info.linkname = "/".join(split_path(info.linkname))
                            modules.addfile(info, archive.extractfile(info)
                                            if info.isreg() else None)
        unpacked.modules = modules is not None
    return unpacked


def _copy(source: IO[bytes] | None, target: Path) -> None:
    assert source is not None  # a regular member always has data
    with open(target, "wb") as out:
        shutil.copyfileobj(source, out, CHUNK)


def _modules_writer(stack: ExitStack, work: Path) -> tarfile.TarFile:
    raw = stack.enter_context(open(work / "modules.tar.zst", "wb"))  # noqa: SIM115
    compressed = stack.enter_context(compressed_writer(raw, MODULES_COMPRESSION))
    return stack.enter_context(tarfile.open(fileobj=compressed, mode="w|",
                                            format=tarfile.PAX_FORMAT, encoding="utf-8",
                                            errors="surrogateescape"))


def _kernel_dependency(control: dict[str, str]) -> str:
    """The linux-image-* package a metapackage depends on."""
    for alternatives in control.get("depends", "").split(","):
        for alternative in alternatives.split("|"):
            name = alternative.split("(")[0].split(":")[0].strip()
            if name.startswith("linux-image-") and _PACKAGE.match(name):
                return name
    raise KernelError(f"{control.get('package', 'the package')} holds no /boot/vmlinuz-* and "
                      "depends on no linux-image-* package")


def _has_pvh_entry(config: Path) -> bool:
    try:
        with open(config, encoding="utf-8", errors="replace") as lines:
            return any(line.strip() == "CONFIG_PVH=y" for line in lines)
    except FileNotFoundError:
        return False


def install_deb(stream: BinaryIO, root: Path, source: str) -> KernelFiles | str:
    """Cache the kernel of the .deb read from `stream` under `root`; for a
    metapackage, the name of the kernel package it depends on instead."""
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        hashing = _Hashing(stream)
        unpacked = _unpack(io.BufferedReader(hashing, CHUNK), work)
        package, version = unpacked.control.get("package", ""), \
            unpacked.control.get("version", "")
        if not _PACKAGE.match(package) or not _VERSION.match(version):
            raise KernelError(f"the .deb's control names package {package!r} version "
                              f"{version!r}: not a Debian package name and version")
        if unpacked.release is None:
            shutil.rmtree(work)
            return _kernel_dependency(unpacked.control)
        vmlinux = _has_pvh_entry(work / "config")
        if vmlinux:
            try:
                with open(work / "vmlinuz", "rb") as vmlinuz, \
                        open(work / "vmlinux", "wb") as out:
                    extract_vmlinux(vmlinuz, out)
            except KernelError as exc:
                log.warning("%s %s: no vmlinux (%s); QEMU boots the vmlinuz", package,
                            version, exc)
                (work / "vmlinux").unlink()
                vmlinux = False
        info = {"source": source, "package": package, "version": version,
                "architecture": unpacked.control.get("architecture"),
                "release": unpacked.release, "deb_sha256": hashing.sha256.hexdigest(),
                "vmlinux": vmlinux, "modules": unpacked.modules}
        (work / INFO).write_text(json.dumps(info, indent=2) + "\n")
        final = root / f"{package}_{version.replace(':', '%3a')}"
        try:
            work.rename(final)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise KernelError(f"cannot cache the kernel in {final}: {exc.strerror}"
                                  ) from None
            shutil.rmtree(work)  # a concurrent fetch finished first: same version, same files
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    files = load(final)
    if files is None:
        raise KernelError(f"{final} is no complete kernel cache entry; remove it")
    return files
