"""The Docker boundary: the only module that talks to the Docker SDK.

It finds or builds the builder image, creates the session and helper
containers with the privileges the agent needs, moves files in and out, and
removes everything it created on every exit path. Docker's own exceptions
never pass this module: they become EngineError with a hint at the cause.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import json
import logging
import os
import tarfile
import tempfile
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import docker

from nbic.cache import user_cache
from nbic.cpio.source import ChunkReader
from nbic.errors import NbicError

log = logging.getLogger("nbic")

BUILDER_REPOSITORY = "nbic-builder"
LABEL = "nbic"  # every container and volume nbic makes carries it
# What the agent needs: mounts (overlay, proc, sysfs), fanotify, chroot, ptrace.
# Not `privileged`: some hosts cannot grant every capability (a bounding set
# without CAP_SYS_RESOURCE makes Docker refuse privileged containers), so ask
# for all but that one.
AGENT_PRIVILEGES: dict[str, Any] = {
    "cap_add": ["ALL"],
    "cap_drop": ["SYS_RESOURCE"],
    "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
}


def agent_privileges() -> dict[str, Any]:
    return dict(AGENT_PRIVILEGES)


def _sdk():
    """The Docker SDK, imported on first use: it takes a quarter of a second that
    commands which never talk to Docker (pack, boot, the cpio tools) should not pay."""
    import docker
    import docker.errors

    return docker


def _failures() -> tuple[type[BaseException], ...]:
    import requests.exceptions

    return _sdk().errors.DockerException, requests.exceptions.RequestException


class EngineError(NbicError):
    """Docker is unreachable, refused something, or a container failed."""


def _explain(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, _sdk().errors.APIError) and exc.explanation:
        text = str(exc.explanation)
    lowered = text.lower()
    if "permission denied" in lowered and "docker.sock" in lowered:
        return (f"{text}: no permission to use Docker; add your user to the 'docker' group "
                "or use rootless Docker")
    if any(word in lowered for word in ("connection refused", "no such file or directory",
                                        "connection aborted", "error while fetching server")):
        return (f"cannot reach the Docker engine ({text.splitlines()[0]}); start it "
                "(e.g. `sudo systemctl start docker`) or set DOCKER_HOST")
    return text


@contextmanager
def docker_errors(what: str) -> Iterator[None]:
    try:
        yield
    except _failures() as exc:
        raise EngineError(f"{what}: {_explain(exc)}") from exc


def connect() -> docker.DockerClient:
    """A client for the engine named by the environment (DOCKER_HOST or the socket)."""
    with docker_errors("Docker"):
        client = _sdk().from_env(timeout=600)
        client.ping()
    return client


# --- the builder image --------------------------------------------------------

PACKAGE_DIR = Path(__file__).resolve().parent
DOCKERFILE = PACKAGE_DIR / "builder" / "Dockerfile"


AGENT_MODULE = "nbic.agent.__main__"


def agent_files() -> list[Path]:
    """The package's files that the container runs: the agent, every nbic module
    it imports (at any depth, also inside functions), and their packages'
    __init__ files. Host-only code is not among them."""
    root = PACKAGE_DIR.parent
    found: dict[Path, None] = {}
    pending = [AGENT_MODULE]
    while pending:
        module = pending.pop()
        path = _module_file(root, module)
        if path is None or path in found:
            continue
        found[path] = None
        parts = module.split(".")
        pending.extend(".".join(parts[:depth]) for depth in range(1, len(parts)))
        pending.extend(_nbic_imports(path))
    return sorted(found)


def _module_file(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _nbic_imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("nbic"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nbic"):
            yield node.module or ""
            # `from nbic import elf` names a module; `from nbic.x import y`, maybe one.
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _context_files() -> list[tuple[str, Path]]:
    root = PACKAGE_DIR.parent
    return [("Dockerfile", DOCKERFILE),
            *((path.relative_to(root).as_posix(), path) for path in agent_files())]


def _context_digest() -> str:
    digest = hashlib.sha256()
    for name, path in _context_files():
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def builder_tag() -> str:
    """The builder image's tag: the digest of its context. Remembered per state of
    the package's files (their sizes and mtimes), as finding what the agent
    imports costs more than a warm run can spare."""
    state = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        info = path.stat()
        state.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
    state.update(DOCKERFILE.read_bytes())
    key = state.hexdigest()
    store = user_cache() / "builder-tags.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known = dict(list(known.items())[-15:]) | {key: _context_digest()}
        with contextlib.suppress(OSError):
            store.parent.mkdir(parents=True, exist_ok=True)
            temporary = store.with_name(f".{store.name}.{os.getpid()}")
            temporary.write_text(json.dumps(known))
            os.replace(temporary, store)
    return f"{BUILDER_REPOSITORY}:{known[key][:16]}"


def builder_context() -> tuple[bytes, str]:
    """The build context (Dockerfile + the agent's files from the installed nbic
    package) and its digest: the image changes only when what it runs changes.

    Built from the package itself, so an installed wheel builds its own image.
    """
    digest = hashlib.sha256()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, path in _context_files():
            data = path.read_bytes()
            digest.update(name.encode() + b"\0" + data + b"\0")
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue(), digest.hexdigest()


def builder_image(client: docker.DockerClient) -> str:
    """The builder image's tag, building it on first use (tagged by the digest of
    its context, so a changed agent gets a new image and nothing else does)."""
    tag = builder_tag()
    with docker_errors("looking up the builder image"):
        try:
            client.images.get(tag)
            return tag
        except _sdk().errors.ImageNotFound:
            pass
    log.info("building the builder image %s (once per version of the agent)", tag)
    context, digest = builder_context()
    tag = f"{BUILDER_REPOSITORY}:{digest[:16]}"
    try:
        client.images.build(fileobj=io.BytesIO(context), custom_context=True, tag=tag,
                            rm=True, forcerm=True, labels={LABEL: "builder"})
    except _sdk().errors.BuildError as exc:
        tail = "".join(str(line.get("stream", line.get("error", ""))) for line in
                       list(exc.build_log)[-8:]).strip()
        raise EngineError(f"building the builder image failed: {exc.msg}\n{tail}") from exc
    except _failures() as exc:
        raise EngineError(f"building the builder image: {_explain(exc)}") from exc
    return tag


# --- containers ---------------------------------------------------------------

@contextmanager
def container(client: docker.DockerClient, image: str, command: list[str], *,
              role: str, **options: Any) -> Iterator[Any]:
    """A created (not started) container, removed with force on every exit."""
    labels = {LABEL: role, **options.pop("labels", {})}
    with docker_errors(f"creating the {role} container"):
        created = client.containers.create(image, command, labels=labels, **options)
    try:
        yield created
    finally:
        remove_container(created)


def remove_container(created: Any) -> None:
    try:
        created.remove(force=True, v=False)
    except _sdk().errors.NotFound:
        pass
    except _failures() as exc:
        log.warning("could not remove container %s: %s", created.short_id, _explain(exc))


def start(created: Any, what: str) -> None:
    with docker_errors(what):
        created.start()


def run_to_end(created: Any, what: str) -> int:
    """Start a container and wait for it; returns its exit status."""
    with docker_errors(what):
        created.start()
        return int(created.wait()["StatusCode"])


def logs_tail(created: Any, lines: int = 20) -> str:
    with docker_errors("reading container logs"):
        return created.logs(tail=lines).decode("utf-8", "replace").strip()


def _translated(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The chunks of an SDK stream, its failures turned into EngineError."""
    with docker_errors("reading from Docker"):
        yield from chunks


@contextmanager
def fetch_tree(created: Any, path: str
               ) -> Iterator[Iterator[tuple[tarfile.TarInfo, BinaryIO | None]]]:
    """Stream a path out of a (possibly stopped) container: (member, data) pairs,
    each member's data readable until the next is taken."""
    with docker_errors(f"fetching {path} from a container"):
        chunks, _stat = created.get_archive(path, chunk_size=1 << 20)
    stream = io.BufferedReader(ChunkReader(_translated(chunks)), 1 << 20)
    with tarfile.open(fileobj=stream, mode="r|", encoding="utf-8",
                      errors="surrogateescape") as archive:
        yield ((info, typing.cast(BinaryIO, archive.extractfile(info)) if info.isreg() else None)
               for info in archive)


@contextmanager
def fetch_file(created: Any, path: str) -> Iterator[BinaryIO]:
    """Stream one file out of a (possibly stopped) container."""
    with fetch_tree(created, path) as members:
        for _info, data in members:
            if data is not None:
                yield data
                return
    raise EngineError(f"{path} is not a file in the container")


def put_files(created: Any, directory: str, files: dict[str, Path]) -> None:
    """Copy host files into a created container, under `directory` by the given
    names, with their modes and mtimes; the archive is spooled on disk."""
    base = directory.strip("/")
    with tempfile.TemporaryFile() as spool:
        with tarfile.open(fileobj=spool, mode="w", format=tarfile.PAX_FORMAT) as archive:
            parents = sorted({f"{base}/{name}".rsplit("/", 1)[0] for name in files})
            for parent in sorted({p for d in parents for p in _prefixes(d)}):
                info = tarfile.TarInfo(parent)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            for name, path in files.items():
                try:
                    with open(path, "rb") as data:
                        info = archive.gettarinfo(fileobj=data, arcname=f"{base}/{name}")
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        archive.addfile(info, data)
                except OSError as exc:
                    raise EngineError(f"cannot read {path}: {exc.strerror}") from None
        spool.seek(0)
        with docker_errors(f"copying into {directory}"):
            if not created.put_archive("/", spool):
                raise EngineError(f"copying into {directory}: the engine refused the archive")


def _prefixes(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:index]) for index in range(1, len(parts) + 1)]


# --- volumes and images -------------------------------------------------------

def find_volume(client: docker.DockerClient, name: str) -> Any | None:
    with docker_errors(f"looking up volume {name}"):
        try:
            return client.volumes.get(name)
        except _sdk().errors.NotFound:
            return None


def create_volume(client: docker.DockerClient, name: str, labels: dict[str, str], *,
                  role: str = "rootfs") -> Any:
    with docker_errors(f"creating volume {name}"):
        return client.volumes.create(name, labels={LABEL: role, **labels})


def remove_volume(volume: Any) -> None:
    try:
        volume.remove(force=True)
    except _sdk().errors.NotFound:
        pass
    except _failures() as exc:
        log.warning("could not remove volume %s: %s", volume.name, _explain(exc))


def list_volumes(client: docker.DockerClient, role: str) -> list[Any]:
    with docker_errors("listing volumes"):
        return client.volumes.list(filters={"label": f"{LABEL}={role}"})


def image_id(client: docker.DockerClient, reference: str) -> str:
    with docker_errors(f"Docker image {reference}"):
        try:
            return client.images.get(reference).id
        except _sdk().errors.ImageNotFound:
            raise EngineError(f"Docker image {reference} is not on this engine "
                              f"(docker pull {reference} first)") from None


@contextmanager
def exported_image(client: docker.DockerClient, reference: str) -> Iterator[Iterator[bytes]]:
    """The filesystem of an image as tar chunks (a created, never started container)."""
    with container(client, reference, ["/nbic-never-started"], role="export") as created, \
            docker_errors(f"exporting {reference}"):
        yield created.export(chunk_size=1 << 20)


def put_stream(created: Any, directory: str, chunks: Iterator[bytes], what: str) -> None:
    with docker_errors(what):
        if not created.put_archive(directory, chunks):
            raise EngineError(f"{what}: Docker refused the archive")


def run_in(created: Any, command: list[str], what: str) -> str:
    with docker_errors(what):
        result = created.exec_run(command)
    output = result.output.decode("utf-8", "replace")
    if result.exit_code:
        raise EngineError(f"{what} failed ({result.exit_code}): {output.strip()[-2000:]}")
    return output


def attach_socket(created: Any) -> Any:
    """A raw socket carrying the container's TTY both ways (attach before start)."""
    with docker_errors("attaching to the session"):
        wrapped = created.client.api.attach_socket(
            created.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
    return getattr(wrapped, "_sock", wrapped)


def resize(created: Any, rows: int, columns: int) -> None:
    with docker_errors("resizing the session's terminal"):
        created.resize(height=rows, width=columns)


def output(created: Any) -> Iterator[tuple[bytes | None, bytes | None]]:
    """The container's (stdout, stderr) chunks from its start until it ends."""
    with docker_errors("reading the session's output"):
        yield from created.attach(stdout=True, stderr=True, stream=True, demux=True, logs=True)


def wait(created: Any) -> int:
    with docker_errors("waiting for the session"):
        return int(created.wait()["StatusCode"])


def volume_in_use(client: docker.DockerClient, name: str) -> bool:
    """Whether any container, running or not, mounts the volume."""
    with docker_errors(f"looking up the users of volume {name}"):
        return bool(client.containers.list(all=True, filters={"volume": name}))


def list_images(client: docker.DockerClient, role: str) -> list[Any]:
    with docker_errors("listing images"):
        return client.images.list(filters={"label": f"{LABEL}={role}"})


def remove_image(client: docker.DockerClient, image: Any) -> None:
    """Remove an image nbic built, unless a container still uses it."""
    try:
        client.images.remove(image.id, noprune=False)
    except _sdk().errors.NotFound:
        pass
    except _sdk().errors.APIError as exc:
        if exc.status_code != 409:  # 409 Conflict: a container uses it
            raise EngineError(f"removing image {image.short_id}: {_explain(exc)}") from exc
        log.info("image %s is in use: kept", image.short_id)
