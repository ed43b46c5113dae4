"""The one timing helper the benchmarks share: wall time, best of N."""

from __future__ import annotations

import shlex
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

    def __str__(self) -> str:
        return f"{self.best:.3f} s (runs: {', '.join(f'{r:.3f}' for r in self.runs)})"


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


def time_cmd(cmd: str | Sequence[str], n: int = REPEAT, *, cwd: str | None = None,
             warmup: bool = True) -> Sample:
    """Best-of-n wall time of a command, after one untimed warm-up run."""
    if warmup:
        run(cmd, cwd=cwd)

    def action() -> None:
        run(cmd, cwd=cwd)

    return best_of(action, n)
