"""Reference rootfs sources and their cache of Docker volumes.

A source (a tar, a directory, a Docker image, a Dockerfile to build, or a
Debian suite to debootstrap) is imported once into a volume named by its content digest; later
sessions mount that volume read-only under an overlay, so the cache is never
changed by a session. Imports go through Docker's archive API as one stream:
the host never extracts the rootfs, and debootstrap runs in a container.
"""

from __future__ import annotations

import argparse
import enum
import hashlib
import json
import logging
import os
import shlex
import tarfile
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from nbic import engine, progress
from nbic.agent.protocol import IMPORT_DIR, Request, Task, agent_command
from nbic.cache import user_cache
from nbic.cpio.archive import Member, order
from nbic.cpio.entry import FileType
from nbic.cpio.source import CHUNK, ByteSource, ChunkReader, DecompressedSource
from nbic.errors import NbicError, RootfsError, UsageError
from nbic.output import atomic_output
from nbic.tarstream import write_tar
from nbic.tree import DirTree, tar_compression

log = logging.getLogger("nbic")

DEFAULT_SOURCE = "debootstrap:bookworm"
DEFAULT_MIRROR = os.environ.get("NBIC_DEBIAN_MIRROR", "http://deb.debian.org/debian")
VOLUME_PREFIX = "nbic-rootfs-"
# What a volume holds besides rootfs/ and the ready mark; a volume of another
# layout is imported anew (and `nbic gc` removes the old one). 2: index.json;
# 3: the index as NUL-separated text (nbic.agent.rootfs_index).
VOLUME_LAYOUT = "3"
# Sessions read the rootfs's index instead of walking it (nbic.agent.rootfs_index).
INDEX_COMMAND = agent_command(Request(Task.INDEX))
ROOTFS_IMAGE_REPOSITORY = "nbic-rootfs"  # images built from dockerfile: sources


class SourceKind(enum.Enum):
    TAR = "tar"
    DIR = "dir"
    DOCKER = "docker"
    DOCKERFILE = "dockerfile"  # built with Docker, then imported like an image
    DEBOOTSTRAP = "debootstrap"


@dataclass(frozen=True)
class RootfsSource:
    """Where a reference rootfs comes from."""

    kind: SourceKind
    location: str  # a path, an image reference, or a suite
    mirror: str = DEFAULT_MIRROR

    def __str__(self) -> str:
        """The text parse_source reads back as this source."""
        if self.kind is SourceKind.DEBOOTSTRAP:
            mirror = "" if self.mirror == DEFAULT_MIRROR else f":{self.mirror}"
            return f"debootstrap:{self.location}{mirror}"
        if self.kind in (SourceKind.DOCKER, SourceKind.DOCKERFILE):
            return f"{self.kind.value}:{self.location}"
        return self.location


def parse_source(text: str | None, base: Path | None = None) -> RootfsSource:
    """`FILE.tar[.gz|.xz|.zst]`, `DIR`, `docker:REF`, `dockerfile:PATH`,
    `debootstrap:SUITE[:MIRROR]`. Relative paths are found from `base` (a
    recipe's directory) when given."""
    text = text or DEFAULT_SOURCE
    if text.startswith("docker:"):
        return RootfsSource(SourceKind.DOCKER, text.removeprefix("docker:"))
    if text.startswith("debootstrap:"):
        suite, _, mirror = text.removeprefix("debootstrap:").partition(":")
        if not suite:
            raise UsageError("debootstrap: needs a suite, e.g. debootstrap:bookworm")
        return RootfsSource(SourceKind.DEBOOTSTRAP, suite, mirror or DEFAULT_MIRROR)
    if text.startswith("dockerfile:"):
        dockerfile = (base or Path()) / text.removeprefix("dockerfile:")
        if not dockerfile.is_file():
            raise RootfsError(f"rootfs {text}: {dockerfile} is not a file")
        return RootfsSource(SourceKind.DOCKERFILE, str(dockerfile.resolve()))
    path = (base or Path()) / text
    if path.is_dir():
        return RootfsSource(SourceKind.DIR, str(path.resolve()))
    if path.is_file():
        return RootfsSource(SourceKind.TAR, str(path.resolve()))
    raise RootfsError(f"rootfs {text} does not exist (give a tar, a directory, docker:IMAGE, "
                      "dockerfile:PATH or debootstrap:SUITE)")


# --- tar streams of each source ----------------------------------------------

def _file_chunks(path: str) -> Iterator[bytes]:
    """A tar file's bytes, decompressed here when compressed (Docker takes plain tar)."""
    with open(path, "rb") as stream:
        head = stream.read(tarfile.BLOCKSIZE)
        stream.seek(0)
        method = tar_compression(head)
        if method is None:
            while chunk := stream.read(CHUNK):
                yield chunk
            return
        with DecompressedSource(ByteSource(stream, path), method, head) as source:
            while chunk := source.read_some(CHUNK):
                yield chunk


def _directory_chunks(root: str) -> Iterator[bytes]:
    """A directory as a deterministic tar stream, made by a writer thread."""
    tree = DirTree(root)

    def write(out: BinaryIO) -> None:
        members = [Member(entry, _opener(tree, name) if entry.type is FileType.FILE else None)
                   for name, entry in tree.entries.items()]
        write_tar(out, order(members))

    yield from _written_by_thread(write)


def _opener(tree: DirTree, name: str) -> Callable[[], BinaryIO]:
    return lambda: tree.open(name)


def without_device_nodes(chunks: Iterator[bytes], left_out: list[str]) -> Iterator[bytes]:
    """A tar stream without its device nodes and hardlinks to them (their names go
    into `left_out`), rewritten by a thread through a pipe: memory stays bounded."""
    def write(out: BinaryIO) -> None:
        with tarfile.open(fileobj=ChunkReader(chunks), mode="r|",
                          errors="surrogateescape") as source, \
                tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT,
                             errors="surrogateescape") as target:
            nodes: set[str] = set()
            for info in source:
                if info.ischr() or info.isblk() or (info.islnk() and info.linkname in nodes):
                    nodes.add(info.name)
                    left_out.append(info.name.lstrip("./"))
                    continue
                target.addfile(info, source.extractfile(info) if info.isreg() else None)

    try:
        yield from _written_by_thread(write)
    except tarfile.TarError as exc:
        raise RootfsError(f"cannot read the rootfs tar: {exc}") from None


def _written_by_thread(write: Callable[[BinaryIO], None]) -> Iterator[bytes]:
    """What `write` writes into a pipe on a thread of its own, read here in chunks
    (memory stays bounded); its failure is raised here, after its output."""
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(write_fd, "wb") as out:
                write(out)
        except BaseException as exc:  # raised on the reading side
            failure.append(exc)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    with os.fdopen(read_fd, "rb") as stream:
        while chunk := stream.read(CHUNK):
            yield chunk
    thread.join()
    if failure:
        raise failure[0]


def _digest(chunks: Iterator[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _digest_store() -> Path:
    return user_cache() / "digests.json"


def _known_digests() -> dict[str, str]:
    try:
        return dict(json.loads(_digest_store().read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def _remember(key: str, digest: str) -> None:
    known = dict(list(_known_digests().items())[-255:]) | {key: digest}
    try:
        store = _digest_store()
        store.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(store) as out:
            out.write(json.dumps(known).encode())
    except (OSError, NbicError) as exc:
        log.debug("cannot remember the digest %s: %s", key, exc)


def _tar_identity(path: str) -> str:
    info = os.stat(path)
    return f"{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:{path}"


def _directory_manifest(root: str) -> str:
    """A digest of what a directory tree looks like from its metadata alone: every
    path with its type, mode, owner, size, mtime, inode and link target. Any change
    a file's content goes with changes one of these (short of tampering with
    mtimes), so the content is hashed again only when the manifest changes."""
    digest = hashlib.sha256(root.encode() + b"\0")
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            listing = sorted(os.scandir(directory), key=lambda item: item.name)
        except OSError as exc:
            raise RootfsError(f"cannot list {directory}: {exc.strerror}") from None
        for item in listing:
            info = item.stat(follow_symlinks=False)
            target = os.readlink(item.path) if item.is_symlink() else ""
            digest.update(f"{item.path}\0{info.st_mode}\0{info.st_uid}\0{info.st_gid}\0"
                          f"{info.st_size}\0{info.st_mtime_ns}\0{info.st_ino}\0{target}\0"
                          .encode("utf-8", "surrogateescape"))
            if item.is_dir(follow_symlinks=False):
                stack.append(item.path)
    return "dir:" + digest.hexdigest()


def _identity(source: RootfsSource) -> str:
    if source.kind is SourceKind.TAR:
        return _tar_identity(source.location)
    return _directory_manifest(source.location)


def cache_key(client, source: RootfsSource) -> str:
    """The digest of a source's content. For tars and directories it is remembered
    per identity: hashing a 200 MB rootfs on every run would cost more than the run."""
    match source.kind:
        case SourceKind.TAR | SourceKind.DIR:
            identity = _identity(source)
            known = _known_digests().get(identity)
            if known is not None:
                return known
            chunks = _file_chunks(source.location) if source.kind is SourceKind.TAR \
                else _directory_chunks(source.location)
            digest = _digest(chunks)
            _remember(identity, digest)
            return digest
        case SourceKind.DOCKER:
            return engine.image_id(client, source.location).removeprefix("sha256:")
        case SourceKind.DOCKERFILE:
            return cache_key(client, built(client, source))
        case SourceKind.DEBOOTSTRAP:
            text = f"debootstrap\0{source.location}\0{source.mirror}\0minbase"
            return hashlib.sha256(text.encode()).hexdigest()
    raise UsageError(f"unknown rootfs kind {source.kind}")


def built(client, source: RootfsSource) -> RootfsSource:
    """A Dockerfile source as the image Docker builds from it (tagged by the
    Dockerfile's digest, so a copy of a recipe shares the image)."""
    dockerfile = Path(source.location)
    try:
        digest = hashlib.sha256(dockerfile.read_bytes()).hexdigest()
    except OSError as exc:
        raise RootfsError(f"cannot read {dockerfile}: {exc.strerror}") from None
    log.info("rootfs %s: docker build", source)
    image = engine.build_image(client, dockerfile, f"{ROOTFS_IMAGE_REPOSITORY}:{digest[:16]}")
    return RootfsSource(SourceKind.DOCKER, image)


# --- the cache ----------------------------------------------------------------

def volume_name(key: str) -> str:
    return f"{VOLUME_PREFIX}{VOLUME_LAYOUT}-{key[:16]}"


def ensure(client, source: RootfsSource, builder: str) -> str:
    """The name of a volume holding `source` under rootfs/, importing it if needed."""
    if source.kind is SourceKind.DOCKERFILE:
        source = built(client, source)
    key = cache_key(client, source)
    name = volume_name(key)
    if engine.find_volume(client, name) is not None:
        log.debug("rootfs %s: cached in volume %s", source, name)
        return name
    log.info("importing rootfs %s into volume %s (once)", source, name)
    volume = engine.create_volume(client, name, {"nbic.source": str(source)[:200],
                                                 "nbic.digest": key})
    try:
        _import(client, source, builder, name)
    except BaseException:
        # An interrupted import must not look like a cache entry.
        engine.remove_volume(volume)
        raise
    return name


def _import(client, source: RootfsSource, builder: str, volume: str) -> None:
    mounts = {volume: {"bind": IMPORT_DIR, "mode": "rw"}}
    if source.kind is SourceKind.DEBOOTSTRAP:
        index = shlex.join(INDEX_COMMAND)
        # Where no device node can be made (rootless engines), debootstrap is told
        # it runs in a container, where it makes none.
        script = (f"mknod /tmp/nbic-probe c 1 3 2>/dev/null || export container=lxc; "
                  f"debootstrap --variant=minbase {source.location} {IMPORT_DIR}/rootfs "
                  f"{source.mirror} && {index}")
        with engine.container(client, builder, ["sh", "-c", script], role="import",
                              volumes=mounts) as helper, \
                progress.waiting(f"debootstrap {source.location}"):
            status = engine.run_to_end(helper, "debootstrap")
            if status:
                raise RootfsError(f"debootstrap {source.location} failed ({status}):\n"
                                  f"{engine.logs_tail(helper)}")
        return
    with engine.container(client, builder, ["sleep", "infinity"], role="import",
                          volumes=mounts) as helper:
        engine.start(helper, "starting the import container")
        engine.run_in(helper, ["mkdir", "-p", f"{IMPORT_DIR}/rootfs"], "preparing the import")
        # A rootless engine cannot make device nodes, and refuses an archive with any.
        nodes = engine.exit_status(helper, ["mknod", "/tmp/nbic-probe", "c", "1", "3"],
                                   "probing the engine") == 0
        with ExitStack() as stack:
            if source.kind is SourceKind.DOCKER:
                chunks = stack.enter_context(engine.exported_image(client, source.location))
            else:
                chunks = (_file_chunks(source.location) if source.kind is SourceKind.TAR
                          else _directory_chunks(source.location))
            left_out: list[str] = []
            if not nodes:
                chunks = without_device_nodes(chunks, left_out)
            with progress.bar(f"importing {source}", _plain_tar_size(source)) as advance:
                engine.put_stream(helper, f"{IMPORT_DIR}/rootfs",
                                  progress.counted(chunks, advance), f"importing {source}")
        if left_out:
            log.info("this engine cannot make device nodes (a rootless engine): %d of the "
                     "rootfs's were left out (/%s, ...); images still get the nodes a boot "
                     "needs and those a session opens", len(left_out), left_out[0])
        engine.run_in(helper, INDEX_COMMAND, "indexing the rootfs")  # and marking it ready


def _plain_tar_size(source: RootfsSource) -> int | None:
    """The bytes an import sends, where known before: a plain tar's size."""
    if source.kind is not SourceKind.TAR or source.location == "-":
        return None
    with open(source.location, "rb") as stream:
        if tar_compression(stream.read(tarfile.BLOCKSIZE)) is not None:
            return None
        return os.fstat(stream.fileno()).st_size


# --- `nbic rootfs ...` --------------------------------------------------------

HELP = "manage the cache of imported root filesystems"


def export_tar(client, volume: str, builder: str, output: str) -> None:
    """Write a cached rootfs out as a plain tar, names relative to its root."""
    mounts = {volume: {"bind": "/cache", "mode": "ro"}}
    with engine.container(client, builder, ["true"], role="export", volumes=mounts) as helper, \
            engine.fetch_tree(helper, "/cache/rootfs") as members, \
            atomic_output(output) as out, \
            tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            # Docker names everything under the directory's own name: drop it.
            info.name = info.name.partition("/")[2] or "."
            if info.islnk():
                info.linkname = info.linkname.partition("/")[2]
            archive.addfile(info, data)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="rootfs_action", required=True, metavar="ACTION")
    actions.add_parser("ls", help="list cached root filesystems")
    remove = actions.add_parser("rm", help="remove cached root filesystems")
    remove.add_argument("names", nargs="*", metavar="NAME", help="volume names (see ls)")
    remove.add_argument("--all", action="store_true", help="remove every cached rootfs")
    bootstrap = actions.add_parser("debootstrap", help="debootstrap a Debian suite "
                                   "(in a container) into the cache, optionally as a tar")
    bootstrap.add_argument("suite", help="e.g. bookworm")
    bootstrap.add_argument("--mirror", default=DEFAULT_MIRROR)
    bootstrap.add_argument("-o", "--output", metavar="FILE.tar", help="also write it as a tar")
    imported = actions.add_parser("import", help="import a rootfs source into the cache now")
    imported.add_argument("source", help="FILE.tar, DIR, docker:IMAGE or debootstrap:SUITE")


def run(args: argparse.Namespace) -> int:
    client = engine.connect()
    if args.rootfs_action == "ls":
        for volume in sorted(engine.list_volumes(client, "rootfs"), key=lambda v: v.name):
            print(f"{volume.name}  {volume.attrs.get('Labels', {}).get('nbic.source', '?')}")
        return 0
    if args.rootfs_action == "rm":
        volumes = {v.name: v for v in engine.list_volumes(client, "rootfs")}
        names = sorted(volumes) if args.all else args.names
        if not names:
            raise UsageError("name volumes to remove, or give --all")
        for name in names:
            if name not in volumes:
                raise NbicError(f"no cached rootfs named {name} (see nbic rootfs ls)")
            engine.wait_for_ended_users(client, name)
            engine.remove_volume(volumes[name])
            log.info("removed %s", name)
        return 0
    builder = engine.builder_image(client)
    if args.rootfs_action == "import":
        print(ensure(client, parse_source(args.source), builder))
        return 0
    source = RootfsSource(SourceKind.DEBOOTSTRAP, args.suite, args.mirror)
    volume = ensure(client, source, builder)
    if args.output:
        export_tar(client, volume, builder, args.output)
        log.info("wrote %s", args.output)
    print(volume)
    return 0
