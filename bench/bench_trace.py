"""Tracing overhead: a file-heavy session timed inside the session itself,
under --tracer fanotify, none and ptrace."""

from __future__ import annotations

import re

from common import NBIC, ROOTFS_TAR, Result, workdir
from timing import best_of, run, show

WORKLOAD = r"""#!/bin/sh
# nbic bench: read 5000 files, walk /usr/share, three times; time it in here
t0=$(date +%s.%N)
for i in 1 2 3; do
    find / -xdev -type f -print0 2>/dev/null | head -z -n 5000 | xargs -0 cat > /dev/null
    ls -R /usr/share > /dev/null
done
t1=$(date +%s.%N)
echo "NBIC_BENCH_T0=$t0 NBIC_BENCH_T1=$t1"
"""

TRACERS = ("none", "fanotify", "ptrace")


def command(tracer: str) -> list[str]:
    return [NBIC, "run", "--rootfs", ROOTFS_TAR, "--script", workdir("workload.sh"),
            "-o", workdir(f"trace-{tracer}.cpio"), "--init", "/usr/bin/bash",
            "--tracer", tracer]


def session_seconds(cmd: list[str]) -> float:
    out = run(cmd, capture=True)
    found = re.search(r"NBIC_BENCH_T0=([\d.]+) NBIC_BENCH_T1=([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"no timing line in the session's output:\n{out[-2000:]}")
    return float(found.group(2)) - float(found.group(1))


def bench(n: int = 3) -> list[Result]:
    with open(workdir("workload.sh"), "w") as script:
        script.write(WORKLOAD)
    run(command("none"))  # warm-up: builder image, rootfs volume, page cache
    samples = {t: best_of(lambda t=t: session_seconds(command(t)), n) for t in TRACERS}
    base = samples["none"]
    notes = [f"in-session seconds, best of {n}: "
             + "; ".join(f"{t} {s}" for t, s in samples.items())]
    return [
        Result("tracing overhead: fanotify vs none (in-session time)",
               samples["fanotify"].best, base.best, target=1.10,
               nbic_cmd=show(command("fanotify")), peer_cmd=show(command("none")),
               notes=notes),
        Result("tracing overhead: ptrace vs none (in-session time)",
               samples["ptrace"].best, base.best,
               nbic_cmd=show(command("ptrace")), peer_cmd=show(command("none"))),
    ]
