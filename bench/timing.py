"""The one timing helper the benchmarks share: wall time, best or median of N."""

from __future__ import annotations

import shlex
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

REPEAT = 3


class BenchError(RuntimeError):
    """A benchmarked command failed."""


@dataclass
class Sample:
    """All measured values of one thing (seconds unless told); best = the minimum."""

    runs: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.runs)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def __str__(self) -> str:
        runs = ", ".join(f"{r:.3f}" for r in self.runs)
        return f"best {self.best:.3f} s, median {self.median:.3f} s (runs: {runs})"


def show(cmd: str | Sequence[str]) -> str:
    return cmd if isinstance(cmd, str) else shlex.join(cmd)


def run(cmd: str | Sequence[str], *, cwd: str | None = None, capture: bool = False) -> str:
    """Run a command (a string goes to bash with pipefail); its output is
    discarded unless captured; a failure raises BenchError."""
    argv = ["bash", "-o", "pipefail", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    proc = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode:
        raise BenchError(f"{show(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout if capture else ""


def best_of(action: Callable[[], float | None], n: int = REPEAT,
            before: Callable[[], None] | None = None) -> Sample:
    """Call action n times (after before(), untimed, each time). The action's
    wall time is recorded unless it returns its own measurement."""
    sample = Sample()
    for _ in range(n):
        if before is not None:
            before()
        start = time.perf_counter()
        own = action()
        wall = time.perf_counter() - start
        sample.runs.append(wall if own is None else own)
    return sample


def time_alternating(cmds: dict[str, str | Sequence[str]], n: int = REPEAT, *,
                     warmup: bool = True,
                     settle: dict[str, str | Sequence[str]] | None = None) -> dict[str, Sample]:
    """Wall times of several commands run in turn, n rounds (after one untimed
    warm-up round): a machine whose load changes during the benchmark slows
    them alike, so their ratio holds better than with all runs of one first.
    A command's `settle` command runs after it, untimed: it waits for work the
    command left to the machine (an engine removing a container), which would
    otherwise be charged to the next command."""
    settle = settle or {}

    def one(name: str) -> float:
        start = time.perf_counter()
        run(cmds[name])
        seconds = time.perf_counter() - start
        if name in settle:
            run(settle[name])
        return seconds

    if warmup:
        for name in cmds:
            one(name)
    samples = {name: Sample() for name in cmds}
    for _ in range(n):
        for name in cmds:
            samples[name].runs.append(one(name))
    return samples
