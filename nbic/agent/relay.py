"""The agent's side of the framed standard output (see protocol.Frame): the
session's output relayed as it comes, then the tar of OUTPUT_DIR."""

from __future__ import annotations

import io
import os
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from nbic.agent.protocol import FRAME_HEADER, FRAME_MAX, Frame

# A process the kill of leftovers could not end may hold the session's pipe
# open: its output is then given up on after this long.
DRAIN_SECONDS = 5


class Frames:
    """Frames written whole to `fd` (the container's standard output), from
    the relaying thread and the agent alike."""

    def __init__(self, fd: int):
        self.fd = fd
        self._lock = threading.Lock()

    def send(self, kind: Frame, data: bytes = b"") -> None:
        view = memoryview(data)
        for start in range(0, max(len(view), 1), FRAME_MAX):
            piece = view[start:start + FRAME_MAX]
            with self._lock:
                self._write_all(FRAME_HEADER.pack(kind.value, len(piece)) + piece)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def send_tree(self, directory: str) -> None:
        """The files of `directory` (not recursive) as a tar, then the end mark."""
        # Written in pieces of a whole frame (tarfile's default is 10 KiB): fewer
        # frames for the engine to relay and the host to read.
        with tarfile.open(fileobj=_ResultWriter(self), mode="w|", format=tarfile.PAX_FORMAT,
                          bufsize=FRAME_MAX) as archive:
            for name in sorted(os.listdir(directory)):
                archive.add(os.path.join(directory, name), arcname=name, recursive=False)
        self.send(Frame.END)


class _ResultWriter(io.RawIOBase):
    """A write-only file whose bytes go out as RESULT frames (for tarfile)."""

    def __init__(self, frames: Frames):
        super().__init__()
        self._frames = frames

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # a bytes-like object
        self._frames.send(Frame.RESULT, bytes(data))
        return len(data)


@contextmanager
def session_output(frames: Frames) -> Iterator[None]:
    """While in the block, file descriptor 1 (inherited by the session) is a pipe
    whose bytes go out as STDOUT frames; after it, the container's own again."""
    read_end, write_end = os.pipe()
    os.dup2(write_end, 1)
    os.close(write_end)
    thread = threading.Thread(target=_relay, args=(read_end, frames), name="relay",
                              daemon=True)
    thread.start()
    try:
        yield
    finally:
        os.dup2(frames.fd, 1)  # the agent's write end goes: the relay sees the end
        thread.join(DRAIN_SECONDS)


def _relay(read_end: int, frames: Frames) -> None:
    try:
        while chunk := os.read(read_end, FRAME_MAX):
            frames.send(Frame.STDOUT, chunk)
    finally:
        os.close(read_end)
