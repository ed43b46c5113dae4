"""nbic.engine: errors by cause, the pinned API version, and the containers of
runs killed outright (labels naming their process, removed by the next run)."""

import contextlib
import errno
import http.server
import os
import socket
import socketserver
import subprocess
import threading
import uuid
from dataclasses import replace

import docker
import pytest
import requests

from nbic import engine

# --- the API version: pinned, no negotiation ------------------------------------


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A stand-in engine that answers every GET and records the paths asked."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.server.paths.append(self.path)
        body = b"OK" if self.path.endswith("/_ping") else b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain" if body == b"OK" else "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):
        pass


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        request, _ = super().get_request()
        return request, ("local", 0)  # BaseHTTPRequestHandler wants a (host, port)


@pytest.fixture
def recording_engine(tmp_path, monkeypatch):
    path = tmp_path / "engine.sock"
    server = _UnixServer(str(path), _Recorder)
    server.paths = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    try:
        yield server.paths
    finally:
        server.shutdown()
        server.server_close()


def test_no_version_round_trip(recording_engine):
    client = engine.connect()
    engine.remove_stale_containers(client)
    # A ping, then one list (sparse: no inspect per container); never GET /version.
    assert [path.partition("?")[0] for path in recording_engine] == [
        f"/v{engine.API_VERSION}/_ping", f"/v{engine.API_VERSION}/containers/json"]


# --- errors by cause ---------------------------------------------------------------

def _connect_error(monkeypatch, host: str) -> engine.EngineError:
    monkeypatch.setenv("DOCKER_HOST", host)
    with pytest.raises(engine.EngineError) as caught:
        engine.connect()
    return caught.value


def _says_where_engines_listen(message: str) -> None:
    for place in ("/var/run/docker.sock", "$XDG_RUNTIME_DIR/docker.sock",
                  "$XDG_RUNTIME_DIR/podman/podman.sock", "/run/podman/podman.sock",
                  "DOCKER_HOST"):
        assert place in message, place


def test_no_socket_is_an_unreachable_engine(monkeypatch, tmp_path):
    error = _connect_error(monkeypatch, f"unix://{tmp_path}/none.sock")
    assert engine.os_error(error.__cause__).errno == errno.ENOENT
    assert str(error).startswith(f"connecting: cannot reach the container engine at "
                                 f"unix://{tmp_path}/none.sock (No such file or directory)")
    _says_where_engines_listen(str(error))


def test_a_socket_nobody_listens_on_is_an_unreachable_engine(monkeypatch, tmp_path):
    path = tmp_path / "deaf.sock"
    deaf = socket.socket(socket.AF_UNIX)
    deaf.bind(str(path))  # bound, never listening: ECONNREFUSED
    try:
        error = _connect_error(monkeypatch, f"unix://{path}")
    finally:
        deaf.close()
    assert engine.os_error(error.__cause__).errno == errno.ECONNREFUSED
    assert "cannot reach the container engine" in str(error)
    _says_where_engines_listen(str(error))


def test_an_engine_refusal_is_never_read_as_unreachable():
    # The message that once chose the "cannot reach" hint by its words: a
    # rootless engine refusing a tar's device node.
    response = requests.Response()
    response.status_code = 500
    refusal = docker.errors.APIError(
        "500 Server Error", response=response,
        explanation="Error processing tar file(exit status 1): lchown /import/rootfs/dev/full: "
                    "no such file or directory")
    explained = engine._explain(refusal)
    assert explained.startswith("the engine refused (500): Error processing tar file")
    assert "cannot reach" not in explained


def test_the_errno_is_found_through_the_http_stack():
    import urllib3.exceptions

    cause = PermissionError(errno.EACCES, "Permission denied")
    wrapped = requests.exceptions.ConnectionError(
        urllib3.exceptions.ProtocolError("Connection aborted.", cause))
    assert engine.os_error(wrapped) is cause
    assert engine._explain(wrapped).startswith("no permission to use the container engine")


def test_a_real_refusal_names_what_failed(docker_engine):
    with engine.container(docker_engine, "debian:bookworm", ["true"], role="test") as created, \
            pytest.raises(engine.EngineError) as caught:
        engine.put_stream(created, "/no/such/dir", iter([b"\0" * 1024]), "importing a test")
    assert str(caught.value).startswith("importing a test: the engine refused (404)")


# --- runs killed outright: their containers ---------------------------------------

def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_owner_labels_round_trip():
    me = engine.current_owner()
    assert me.pid == os.getpid() and me.uid == os.getuid() and me.started
    assert engine.Owner.from_labels(me.labels()) == me
    assert engine.Owner.from_labels({"nbic": "session"}) is None


def test_which_owners_are_gone():
    me = engine.current_owner()
    init = engine._process_state(1)[1]
    alive = replace(me, pid=1, started=init)
    assert not engine._owner_gone(me, me)
    assert not engine._owner_gone(alive, me)
    assert engine._owner_gone(replace(alive, started=str(int(init) + 1)), me)  # pid reused
    assert engine._owner_gone(replace(me, pid=_dead_pid()), me)
    assert engine._owner_gone(replace(alive, boot="an-earlier-boot"), me)
    # Another host, or another pid namespace: nothing can be known, nothing is touched.
    assert not engine._owner_gone(replace(me, pid=_dead_pid(), host="elsewhere"), me)
    assert not engine._owner_gone(replace(me, pid=_dead_pid(), machine="0" * 32), me)
    assert not engine._owner_gone(replace(me, pid=_dead_pid(), pidns="1"), me)


def test_stale_containers_are_removed_and_no_other(docker_engine):
    me = engine.current_owner()
    init = engine._process_state(1)[1]
    dead = _dead_pid()
    owners = {
        "dead": (replace(me, pid=dead), True),
        "reused-pid": (replace(me, pid=1, started=str(int(init) + 1)), True),
        "earlier-boot": (replace(me, pid=1, started=init, boot="an-earlier-boot"), True),
        "live": (replace(me, pid=1, started=init), False),
        "this-run": (me, False),
        "other-host": (replace(me, pid=dead, host=f"elsewhere-{uuid.uuid4().hex[:8]}"), False),
    }
    # The other host's container is only found by a list under its own host label.
    made = {name: docker_engine.containers.create(
                "debian:bookworm", ["true"], labels={engine.LABEL: "test", **owner.labels()})
            for name, (owner, _) in owners.items()}
    try:
        removed = set(engine.remove_stale_containers(docker_engine))
        for name, (_, stale) in owners.items():
            assert (made[name].id in removed) is stale, name
            if not stale:
                docker_engine.containers.get(made[name].id)  # still there
    finally:
        for created in made.values():
            with contextlib.suppress(docker.errors.NotFound):
                created.remove(force=True)


class _Refusing:
    """A stand-in container whose removal fails with `failure`."""

    id = "0123456789abcdef"

    def __init__(self, failure: Exception):
        self.failure = failure

    def remove(self, **_options):
        raise self.failure


def _api_error(status: int, kind: type = docker.errors.APIError) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return kind("refused", response=response)


@pytest.mark.parametrize(("failure", "removes_itself", "warned"), [
    (_api_error(409), True, False),  # Docker: its own removal is under way
    (_api_error(500), True, False),  # Podman says the same with a 500
    (_api_error(409), False, True),
    (requests.exceptions.ConnectionError("engine gone"), True, True),
    (_api_error(404, docker.errors.NotFound), False, False),  # already gone
])
def test_a_removal_already_under_way_is_no_failure_but_others_are(
        caplog, failure, removes_itself, warned):
    with caplog.at_level("WARNING", logger="nbic"):
        engine.remove_container(_Refusing(failure), removes_itself)
    assert ("could not remove container" in caplog.text) is warned
