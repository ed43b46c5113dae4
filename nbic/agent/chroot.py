"""Running a program chrooted in the session's root (the user's session, or a
replay's check).

The agent is PID 1 of the container. The program runs as a child in its own
session and process group (with the TTY as its controlling terminal when there
is one), so Ctrl-C reaches the session and not the agent. When its main
process ends, whatever it left running is killed, so that the trace can be
drained knowing no process will open anything more.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import sys
import termios
import time
from collections.abc import Callable

ENDED_POLL = 0.02  # seconds between looks at whether a traced program has ended
SESSION_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def session_environment(term: str) -> dict[str, str]:
    # The seed's /chroot example: a clean login-like environment.
    return {"HOME": "/root", "LOGNAME": "root", "USER": "root", "TERM": term,
            "PATH": SESSION_PATH, "LANG": "C.UTF-8"}


def release_terminal() -> None:
    """Give up the TTY the engine made the agent's controlling terminal, so the
    session can take it without stealing it (which needs CAP_SYS_ADMIN in the
    initial user namespace: rootless engines cannot)."""
    if not os.isatty(0):
        return
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        fcntl.ioctl(0, termios.TIOCNOTTY)
    except OSError as exc:
        if exc.errno != errno.ENOTTY:  # not ours to give up: nothing to do
            raise
    finally:
        signal.signal(signal.SIGHUP, previous)


def run(argv: list[str], env: dict[str, str], *, chroot_dir: str | None,
        output: int | None = None, ended: Callable[[], int | None] | None = None) -> int:
    """Run argv (chrooted into chroot_dir if given) and return its exit status
    as a shell reports it (128 + signal number when killed). With `output`, its
    stdout and stderr go to that fd. With `ended`, polled while argv runs, the
    run is over as soon as it gives a status: the caller kills what is left."""
    pid = os.fork()
    if pid == 0:
        _child(argv, env, chroot_dir, output)
    forwarded = {}

    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        forwarded[signum] = signal.signal(signum, forward)
    try:
        while True:
            try:
                done, status = os.waitpid(pid, 0 if ended is None else os.WNOHANG)
            except ChildProcessError:
                return 255
            except InterruptedError:
                continue
            if done:
                break
            assert ended is not None
            found = ended()
            if found is not None:
                return found
            time.sleep(ENDED_POLL)
    finally:
        for signum, handler in forwarded.items():
            signal.signal(signum, handler)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else \
        128 + os.WTERMSIG(status)


def _child(argv: list[str], env: dict[str, str], chroot_dir: str | None,
           output: int | None) -> None:
    step = "start a session"
    try:
        os.setsid()
        if output is not None:
            step = "redirect its output"
            os.dup2(output, 1)
            os.dup2(output, 2)
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
        elif os.isatty(0):
            step = "take the terminal"
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        if chroot_dir:
            step = f"chroot into {chroot_dir}"
            os.chroot(chroot_dir)
            os.chdir("/")
        step = f"run {argv[0]}"
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        print(f"nbic: the session cannot {step}: {exc.strerror}", file=sys.stderr)
    os._exit(127)


def kill_leftovers() -> None:
    """Kill every other process in the container (the agent is PID 1) and reap."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signum)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                time.sleep(0.05)
