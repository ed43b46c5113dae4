"""First nbic run on a never-seen 200 MB rootfs tar against the second (cached) run."""

from __future__ import annotations

import shutil
import tarfile
import time
import uuid
from io import BytesIO

from bench_startup import SESSION_REMOVED, true_command
from common import NBIC, ROOTFS_TAR, Result, workdir
from timing import Sample, run, show


def volumes() -> dict[str, str]:
    """Cached rootfs volumes: name -> source."""
    listing = run([NBIC, "rootfs", "ls"], capture=True)
    return dict(line.split(None, 1) for line in listing.splitlines() if line.strip())


def add_unique_file(tar_path: str) -> None:
    """Append one small file of new content, so the tar's digest is new."""
    data = f"nbic bench {uuid.uuid4()}\n".encode()
    info = tarfile.TarInfo(f"nbic-bench-{uuid.uuid4().hex}")
    info.size, info.mtime = len(data), int(time.time())
    with tarfile.open(tar_path, "a") as tar:
        tar.addfile(info, BytesIO(data))


def timed(cmd: list[str]) -> float:
    """The run's time; then, untimed, the wait for its session container's
    removal (the engine's, after nbic returns), which the next run must not pay
    for (as in the warm-run row)."""
    start = time.perf_counter()
    run(cmd)
    elapsed = time.perf_counter() - start
    run(["bash", "-c", SESSION_REMOVED])
    return elapsed


def bench(n: int = 3) -> list[Result]:
    copy = workdir("fresh-rootfs.tar")
    shutil.copyfile(ROOTFS_TAR, copy)
    cmd = true_command(copy, workdir("fresh.cpio"))
    first, second = Sample(), Sample()
    try:
        for _ in range(n):
            before = volumes()
            add_unique_file(copy)
            first.runs.append(timed(cmd))
            second.runs.append(timed(cmd))
            mine = [name for name, source in volumes().items()
                    if name not in before and source.strip() == copy]
            if mine:
                run([NBIC, "rootfs", "rm", *mine])
    finally:
        for name, source in volumes().items():
            if source.strip() == copy:
                run([NBIC, "rootfs", "rm", name])
    return [Result("second nbic run vs first, fresh 200 MB rootfs tar", second.best,
                   first.best, target=0.2, nbic_cmd=show(cmd) + "  # 2nd run",
                   peer_cmd=show(cmd) + "  # 1st run (tar + 1 new file)",
                   notes=[f"{n} fresh tars (one new file each), each run twice (each "
                          f"run's container removed before the next starts); "
                          f"first {first}; second {second}"])]
