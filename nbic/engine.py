"""The Docker boundary: the only module that talks to the Docker SDK.

It finds or builds the builder image, creates the session and helper
containers with the privileges the agent needs, moves files in and out, and
removes everything it created on every exit path. Docker's own exceptions
never pass this module: they become EngineError with a hint at the cause.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import json
import logging
import os
import socket
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

if TYPE_CHECKING:
    import docker

from nbic.cache import user_cache
from nbic.errors import NbicError
from nbic.tarstream import tar_members

log = logging.getLogger("nbic")

BUILDER_REPOSITORY = "nbic-builder"
# Pinned, so no /version round trip is paid per run: the highest version Docker
# 20.10 (Debian 12's) serves, which Docker 28 and Podman 4's compat API accept.
API_VERSION = "1.41"
LABEL = "nbic"  # every container and volume nbic makes carries it

# What the agent and a session need, and nothing more: mounts (overlay, proc,
# sysfs, tmpfs, binds) and fanotify (SYS_ADMIN), chroot, ptrace for strace, and
# what a root session does in a rootfs (dpkg/apt: ownership, modes, setuid
# helpers, file capabilities; device nodes; signals to its own daemons; login
# tools that audit; daemons on low ports). Not, among others: SYS_MODULE,
# SYS_RAWIO, SYS_TIME, SYS_BOOT, SYS_RESOURCE, SYS_NICE, NET_ADMIN, NET_RAW,
# MAC_ADMIN, SYSLOG, BPF, SETPCAP (nor `privileged`, which some hosts refuse).
AGENT_CAPABILITIES = (
    "SYS_ADMIN", "SYS_CHROOT", "SYS_PTRACE",
    "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETUID", "SETGID", "SETFCAP",
    "MKNOD", "KILL", "AUDIT_WRITE", "NET_BIND_SERVICE",
)
# AppArmor's docker-default profile forbids mount(2) outright, which the agent
# needs; the capabilities above are the boundary. Seccomp stays unconfined too:
# the engines' default profiles differ (Podman's and Docker's) in what they let
# through for a CAP_SYS_ADMIN holder.
AGENT_PRIVILEGES: dict[str, Any] = {
    "cap_drop": ["ALL"],
    "cap_add": list(AGENT_CAPABILITIES),
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


T = TypeVar("T")


class EngineError(NbicError):
    """The engine is unreachable, refused something, or a container failed."""


# --- errors, classified by cause ----------------------------------------------

# The engine's socket is not there or nothing listens on it.
UNREACHABLE = frozenset({errno.ENOENT, errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED,
                         errno.ENOTSOCK, errno.EPIPE, errno.EHOSTUNREACH, errno.ENETUNREACH,
                         errno.ETIMEDOUT})
DENIED = frozenset({errno.EACCES, errno.EPERM})
DEFAULT_HOST = "unix:///var/run/docker.sock"
UNREACHABLE_HINT = (
    "start Docker (socket /var/run/docker.sock; rootless: $XDG_RUNTIME_DIR/docker.sock) "
    "or Podman (`podman system service`; socket /run/podman/podman.sock, rootless: "
    "$XDG_RUNTIME_DIR/podman/podman.sock), and set DOCKER_HOST=unix://SOCKET "
    "unless it is Docker's default")


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_HOST


def os_error(exc: BaseException) -> OSError | None:
    """The OSError with an errno behind an SDK failure: requests' ConnectionError
    wraps urllib3's errors, which wrap the socket's OSError (in args, reason,
    __cause__ or __context__)."""
    pending, seen = [exc], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None),
                  *getattr(current, "args", ())]
        pending.extend(item for item in linked if isinstance(item, BaseException))
    return None


def _explain(exc: BaseException) -> str:
    """One line on what went wrong, chosen by the failure's type, HTTP status or
    errno (an engine's message text is shown, never interpreted)."""
    if isinstance(exc, _sdk().errors.APIError):
        detail = str(exc.explanation or exc).strip()
        return f"the engine refused ({exc.status_code}): {detail}"
    cause = os_error(exc)
    if cause is not None and cause.errno in UNREACHABLE:
        return (f"cannot reach the container engine at {engine_address()} "
                f"({os.strerror(cause.errno)}); {UNREACHABLE_HINT}")
    if cause is not None and cause.errno in DENIED:
        return (f"no permission to use the container engine at {engine_address()} "
                f"({os.strerror(cause.errno)}); add your user to the 'docker' group, or use "
                "rootless Docker or Podman (DOCKER_HOST=unix://$XDG_RUNTIME_DIR/docker.sock "
                "or .../podman/podman.sock)")
    if cause is not None:
        return f"{exc.__class__.__name__}: {cause.strerror or cause} ({engine_address()})"
    return str(exc) or exc.__class__.__name__


@contextmanager
def docker_errors(what: str) -> Iterator[None]:
    try:
        yield
    except _failures() as exc:
        raise EngineError(f"{what}: {_explain(exc)}") from exc


def connect() -> docker.DockerClient:
    """A client for the engine named by the environment (DOCKER_HOST or the socket)."""
    with docker_errors("connecting"):
        client = _sdk().from_env(version=API_VERSION, timeout=600)
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
    import ast  # only when the package changed (see builder_tag): 3 ms of every run's start

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


def build_image(client: docker.DockerClient, dockerfile: Path, tag: str) -> str:
    """Build an image from a Dockerfile, its directory as the context (Docker's
    layer cache makes a rebuild of an unchanged one quick); returns its id."""
    try:
        image, logs = client.images.build(path=str(dockerfile.parent),
                                          dockerfile=dockerfile.name, tag=tag, rm=True,
                                          forcerm=True, labels={LABEL: "rootfs-image"})
    except _sdk().errors.BuildError as exc:
        tail = "".join(str(line.get("stream", line.get("error", ""))) for line in
                       list(exc.build_log)[-8:]).strip()
        raise EngineError(f"docker build {dockerfile} failed: {exc.msg}\n{tail}") from exc
    except _failures() as exc:
        raise EngineError(f"docker build {dockerfile}: {_explain(exc)}") from exc
    for line in logs:
        if text := str(line.get("stream", "")).strip():
            log.debug("docker build: %s", text)
    return str(image.id)


# --- containers ---------------------------------------------------------------

@dataclass(frozen=True)
class Owner:
    """The nbic process that made a container, as labels on it: enough to tell,
    from the same host, whether that process is gone (a reused pid has another
    start time), and never to mistake a container of another host for ours."""

    host: str  # hostname
    machine: str  # /etc/machine-id: the same hostname on two machines differs here
    boot: str  # boot id: pids and start times mean something only within one boot
    pidns: str  # the pid namespace the pid is in
    pid: int
    started: str  # field 22 of /proc/PID/stat: clock ticks after boot
    uid: int

    def labels(self) -> dict[str, str]:
        return {f"{LABEL}.{item.name}": str(getattr(self, item.name)) for item in fields(self)}

    @classmethod
    def from_labels(cls, labels: dict[str, str]) -> Owner | None:
        try:
            values: dict[str, Any] = {item.name: labels[f"{LABEL}.{item.name}"]
                                      for item in fields(cls)}
            return cls(**{**values, "pid": int(values["pid"]), "uid": int(values["uid"])})
        except (KeyError, ValueError):
            return None  # not made by a run that labels its owner


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as stream:
            return stream.read().strip()
    except OSError:
        return ""


def _process_state(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a process, None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as stream:
            after_name = stream.read().rpartition(")")[2].split()
    except FileNotFoundError:
        return None
    return after_name[0], after_name[19]  # fields 3 and 22


@functools.cache
def current_owner() -> Owner:
    pid = os.getpid()
    state = _process_state(pid)
    return Owner(host=socket.gethostname(), machine=_read("/etc/machine-id"),
                 boot=_read("/proc/sys/kernel/random/boot_id"),
                 pidns=str(os.stat("/proc/self/ns/pid").st_ino), pid=pid,
                 started=state[1] if state else "", uid=os.getuid())


def _owner_gone(owner: Owner, me: Owner) -> bool:
    """Whether the run that made a container has certainly ended."""
    if (owner.host, owner.machine) != (me.host, me.machine):
        return False  # another host's run: its processes cannot be seen from here
    if owner.boot != me.boot:
        return True  # an earlier boot of this machine
    if owner.pidns != me.pidns:
        return False  # another pid namespace: its pids mean nothing here
    state = _process_state(owner.pid)
    if state is None:
        try:
            os.kill(owner.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return False  # alive, though /proc hides it (hidepid): keep its container
    status, started = state
    return started != owner.started or status in ("Z", "X")  # pid reused, or a corpse


def stale_containers(client: docker.DockerClient) -> list[tuple[Any, Owner]]:
    """The containers of nbic runs on this host whose process is gone (killed
    outright: no cleanup of theirs ran), with their owners. A live run's
    container, or one from another host, is never among them."""
    me = current_owner()
    with docker_errors("listing nbic's containers"):
        # sparse: the list alone carries the labels; no inspect per container.
        found = client.containers.list(all=True, sparse=True, filters={
            "label": [f"{LABEL}.pid", f"{LABEL}.host={me.host}"]})
    owned = ((item, Owner.from_labels(item.attrs.get("Labels") or {})) for item in found)
    return [(item, owner) for item, owner in owned
            if owner is not None and _owner_gone(owner, me)]


def remove_stale_containers(client: docker.DockerClient) -> list[str]:
    """Remove the stale_containers(); returns their ids."""
    removed = []
    for item, _owner in stale_containers(client):
        remove_container(item)
        removed.append(item.id)
    if removed:
        log.info("removed %d container(s) left by nbic runs that were killed", len(removed))
    return removed


@contextmanager
def container(client: docker.DockerClient, image: str, command: list[str], *,
              role: str, removes_itself: bool = False, keeps_logs: bool = True,
              **options: Any) -> Iterator[Any]:
    """A created (not started) container, labelled with its role and the nbic
    process that owns it, removed with force on every exit. One that
    `removes_itself` (the engine's AutoRemove, as `docker run --rm`) is removed
    here only on an error: once started, the engine removes it when it ends,
    even after a kill -9 of nbic, and nbic need not wait for that. Without
    `keeps_logs` its output reaches only those attached to it."""
    labels = {LABEL: role, **current_owner().labels(), **options.pop("labels", {})}
    if not keeps_logs:
        options["log_config"] = {"type": "none", "config": {}}
    with docker_errors(f"creating the {role} container"):
        created = client.containers.create(image, command, labels=labels,
                                           auto_remove=removes_itself, **options)
    try:
        yield created
    except BaseException:
        remove_container(created, removes_itself)
        raise
    if not removes_itself:
        remove_container(created)


# How engines refuse to remove a container that is being removed already:
# Docker answers 409 Conflict, Podman 500.
REMOVAL_IN_PROGRESS = frozenset({409, 500})


def remove_container(created: Any, removes_itself: bool = False) -> None:
    """Remove with force. A container that `removes_itself` may be going already,
    which is no failure; anything else (an unreachable engine) still is."""
    try:
        created.remove(force=True, v=False)
    except _sdk().errors.NotFound:
        pass
    except _failures() as exc:
        if removes_itself and isinstance(exc, _sdk().errors.APIError) \
                and exc.status_code in REMOVAL_IN_PROGRESS:
            return
        log.warning("could not remove container %s: %s", created.id[:12], _explain(exc))


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


def _translated(chunks: Iterator[T]) -> Iterator[T]:
    """The chunks of an SDK stream, its failures turned into EngineError."""
    with docker_errors("reading from Docker"):
        yield from chunks


def _archive(created: Any, path: str) -> Iterator[bytes]:
    """get_archive, once more after the container has stopped if it failed with
    HTTP 500: Podman still takes a container whose process has just ended for a
    running one, and then opens the mount namespace of the process that is gone
    (seen 1 time in 5 right after the attach stream ends)."""
    try:
        return created.get_archive(path, chunk_size=1 << 20)[0]
    except _sdk().errors.APIError as exc:
        if exc.status_code != 500:
            raise
    created.wait(condition="not-running", timeout=60)
    return created.get_archive(path, chunk_size=1 << 20)[0]


@contextmanager
def fetch_tree(created: Any, path: str
               ) -> Iterator[Iterator[tuple[tarfile.TarInfo, BinaryIO | None]]]:
    """Stream a path out of a (possibly stopped) container: (member, data) pairs,
    each member's data readable until the next is taken."""
    with docker_errors(f"fetching {path} from a container"):
        chunks = _archive(created, path)
    with tar_members(_translated(chunks)) as members:
        yield members


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


def exit_status(created: Any, command: list[str], what: str) -> int:
    """Run a command in a running container; its exit status (output dropped)."""
    with docker_errors(what):
        return int(created.exec_run(command).exit_code)


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
    """The container's (stdout, stderr) chunks until it ends. Attached here, before
    it starts (as `docker run` does): nothing it writes is missed, and one that
    removes itself cannot be gone before the attach."""
    with docker_errors("attaching to the session"):
        stream = created.attach(stdout=True, stderr=True, stream=True, demux=True)
    return _translated(stream)


def wait(created: Any) -> int:
    with docker_errors("waiting for the session"):
        return int(created.wait()["StatusCode"])


def volume_in_use(client: docker.DockerClient, name: str) -> bool:
    """Whether any container, running or not, mounts the volume."""
    with docker_errors(f"looking up the users of volume {name}"):
        return bool(client.containers.list(all=True, filters={"volume": name}))


ENDED = frozenset({"exited", "dead", "removing"})


def wait_for_ended_users(client: docker.DockerClient, name: str, timeout: float = 10) -> None:
    """Wait until the containers that ended while mounting the volume are gone:
    a session container removes itself just after its run returned."""
    deadline = time.monotonic() + timeout
    with docker_errors(f"looking up the users of volume {name}"):
        while (users := client.containers.list(all=True, filters={"volume": name})) and \
                all(user.status in ENDED for user in users) and time.monotonic() < deadline:
            time.sleep(0.05)


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
