"""Progress for the long waits (a rootfs import, a session, compression), shown
only where someone watches: standard error a terminal, messages on (not -q),
and not in CI. Everywhere else these are no-ops and print nothing.

rich draws the bars; it is imported only when one is shown, as it costs a
command's start-up time.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

Advance = Callable[[int], None]  # called with the bytes just done


def shown() -> bool:
    return (sys.stderr.isatty() and not os.environ.get("CI")
            and logging.getLogger("nbic").isEnabledFor(logging.INFO))


@contextmanager
def bar(description: str, total: int | None = None) -> Iterator[Advance]:
    """A bar of bytes done (of `total`, else of an unknown amount) while in the
    block; gone from the terminal after it."""
    if not shown():
        yield _nothing
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    # The streams stay as they are: a session's output is written to them raw.
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True,
                  redirect_stdout=False, redirect_stderr=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda done: progress.advance(task, done)


@contextmanager
def waiting(description: str) -> Iterator[Callable[[], None]]:
    """A spinner with the time waited while in the block; the function it gives
    takes it off the terminal early (before something else is written there)."""
    if not shown():
        yield _stop_nothing
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True,
                  redirect_stdout=False, redirect_stderr=False) as progress:
        progress.add_task(description, total=None)
        yield progress.stop


def counted(chunks: Iterable[bytes], advance: Advance) -> Iterator[bytes]:
    """The chunks, each counted as it passes."""
    for chunk in chunks:
        advance(len(chunk))
        yield chunk


def _nothing(_done: int) -> None:
    return None


def _stop_nothing() -> None:
    return None
