"""An interactive session on the user's terminal: raw mode, both directions
pumped through the container's TTY, window size kept in step. Ctrl-C is just
a byte here: it reaches the session, as it would in a local shell."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import termios
import tty
from typing import Any

from nbic import engine


def interact(created: Any) -> None:
    """Attach, start the container and relay until its TTY closes."""
    sock = engine.attach_socket(created)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    saved = termios.tcgetattr(stdin)

    def resize(*_args) -> None:
        # The terminal's own size: COLUMNS/LINES in the environment go stale.
        with contextlib.suppress(OSError, engine.EngineError):
            size = os.get_terminal_size(stdout)
            engine.resize(created, size.lines, size.columns)

    previous = signal.signal(signal.SIGWINCH, resize)
    try:
        engine.start(created, "starting the session")
        resize()
        tty.setraw(stdin)
        _pump(sock, stdin, stdout)
    finally:
        termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, previous)
        sock.close()


def _pump(sock: Any, stdin: int, stdout: int) -> None:
    sources = [sock, stdin]
    while True:
        try:
            ready, _, _ = select.select(sources, [], [])
        except InterruptedError:
            continue
        if sock in ready:
            data = sock.recv(1 << 16)
            if not data:
                return
            os.write(stdout, data)
        if stdin in ready:
            data = os.read(stdin, 1 << 16)
            if not data:
                sources.remove(stdin)
                continue
            sock.sendall(data)
