#!/usr/bin/python3
"""notes: a small service, standard library only: a JSON HTTP API over SQLite.

    notes.py serve [PORT] [DB]   serve on 127.0.0.1:PORT (default 8080) until killed
    notes.py selftest            serve on a free port, store a note over HTTP,
                                 read it back, print NOTES-SERVICE-OK, stop

API: POST /notes {"text": ...} -> {"id": N}; GET /notes/N -> {"id", "text"};
GET /health -> {"ok": true, "notes": count}.
"""

import fcntl
import http.client
import json
import socket
import sqlite3
import struct
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    """In an initramfs nothing has brought `lo` up yet; a container's is up."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        if not flags & IFF_UP:
            fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))


class Store:
    def __init__(self, path: str):
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.lock = threading.Lock()
        self.db.execute("create table if not exists notes (id integer primary key, text)")

    def add(self, text: str) -> int:
        with self.lock, self.db:
            return self.db.execute("insert into notes (text) values (?)", (text,)).lastrowid

    def get(self, note_id: int):
        with self.lock:
            return self.db.execute("select text from notes where id = ?", (note_id,)).fetchone()

    def count(self) -> int:
        with self.lock:
            return self.db.execute("select count(*) from notes").fetchone()[0]


class Handler(BaseHTTPRequestHandler):
    store: Store

    def reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            return self.reply(200, {"ok": True, "notes": self.store.count()})
        parts = self.path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "notes" and parts[1].isdigit():
            row = self.store.get(int(parts[1]))
            if row:
                return self.reply(200, {"id": int(parts[1]), "text": row[0]})
        return self.reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path != "/notes":
            return self.reply(404, {"error": "not found"})
        length = int(self.headers.get("Content-Length", 0))
        try:
            text = json.loads(self.rfile.read(length))["text"]
        except (ValueError, KeyError, TypeError):
            return self.reply(400, {"error": "want {\"text\": ...}"})
        return self.reply(201, {"id": self.store.add(str(text))})


def serve(port: int, db: str) -> ThreadingHTTPServer:
    loopback_up()
    Handler.store = Store(db)
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def call(port: int, method: str, path: str, body: dict | None = None) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    connection.request(method, path, json.dumps(body) if body is not None else None, headers)
    response = connection.getresponse()
    data = json.loads(response.read())
    connection.close()
    if response.status >= 300:
        raise SystemExit(f"{method} {path}: {response.status} {data}")
    return data


def selftest() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        server = serve(0, f"{scratch}/notes.sqlite3")
        port = server.server_address[1]
        note = call(port, "POST", "/notes", {"text": "hello from nbic"})
        back = call(port, "GET", f"/notes/{note['id']}")
        health = call(port, "GET", "/health")
        server.shutdown()
        server.server_close()
    assert back["text"] == "hello from nbic" and health["notes"] == 1, (back, health)
    print("NOTES-SERVICE-OK", back["id"], back["text"], "sqlite", sqlite3.sqlite_version,
          flush=True)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "selftest"
    if command == "selftest":
        selftest()
    elif command == "serve":
        port = int(sys.argv[2]) if len(sys.argv) > 2 else 8080
        serve(port, sys.argv[3] if len(sys.argv) > 3 else "/tmp/notes.sqlite3")
        threading.Event().wait()
    else:
        raise SystemExit(__doc__)
