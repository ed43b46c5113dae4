"""Paths, tools and the result record the benchmarks share."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The nbic commands timed: an installed nbic's (bench/run makes one), else the checkout's.
VENV_BIN = os.environ.get("NBIC_BENCH_BIN", os.path.join(REPO, ".venv", "bin"))
NBIC = os.path.join(VENV_BIN, "nbic")
CPIO_LIST = os.path.join(VENV_BIN, "cpio-list")
ROOTFS_DIR = os.environ.get("NBIC_BENCH_ROOTFS", "/var/cache/nbic-ci/rootfs/bookworm")
ROOTFS_TAR = os.environ.get("NBIC_BENCH_ROOTFS_TAR", ROOTFS_DIR + ".tar")
LSINITRAMFS = os.environ.get("NBIC_BENCH_LSINITRAMFS", "/var/cache/nbic-ci/bin/lsinitramfs")
WORK = os.environ.get("NBIC_BENCH_WORK", "/tmp/nbic-bench")
KERNEL = os.environ.get("NBIC_BENCH_KERNEL", "/var/cache/nbic-ci/kernel/boot-kernel")


@dataclass
class Result:
    """One row: nbic's value against the peer's, lower is better for both."""

    name: str
    nbic: float | None
    peer: float | None
    unit: str = "s"
    target: float | None = None
    nbic_cmd: str = ""
    peer_cmd: str = ""
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.nbic is None or not self.peer:
            return None
        return self.nbic / self.peer

    @property
    def met(self) -> str:
        if self.error:
            return "FAILED"
        if self.target is None or self.ratio is None:
            return "n/a"
        return "yes" if self.ratio <= self.target else "no"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise FileNotFoundError(f"{tool} is not installed")
    return path


def workdir(*parts: str) -> str:
    os.makedirs(WORK, exist_ok=True)
    return os.path.join(WORK, *parts)
