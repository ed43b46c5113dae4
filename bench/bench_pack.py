"""nbic pack of the whole rootfs to .cpio.zst against find | cpio -o | zstd."""

from __future__ import annotations

import os
import shlex

from common import NBIC, ROOTFS_DIR, Result, need, workdir
from timing import run, show, time_alternating

# the image bench_list lists
IMAGE = "pack-3.cpio.zst"


def commands(level: int) -> tuple[list[str], str, str, str]:
    ours = workdir(f"pack-{level}.cpio.zst")
    theirs = workdir(f"peer-{level}.cpio.zst")
    nbic = [NBIC, "-q", "pack", "--rootfs", ROOTFS_DIR, "--include", "*",
            "--init", "/usr/bin/bash", "--compress", f"zstd:{level}", "-o", ours]
    peer = (f"cd {shlex.quote(ROOTFS_DIR)} && find . | cpio -o -H newc --quiet"
            f" | zstd -q -T0 -{level} > {shlex.quote(theirs)}")
    return nbic, peer, ours, theirs


def bench(level: int = 3, n: int = 3) -> list[Result]:
    need("cpio")
    need("zstd")
    nbic, peer, ours, theirs = commands(level)
    # The floor: zstd alone, on the peer's archive, from the page cache.
    plain = workdir(f"peer-{level}.cpio")
    run(f"cd {shlex.quote(ROOTFS_DIR)} && find . | cpio -o -H newc --quiet"
        f" > {shlex.quote(plain)}")
    floor = f"zstd -q -T0 -{level} -c {shlex.quote(plain)} > /dev/null"
    warmup = level < 10
    try:
        times = time_alternating({"nbic": nbic, "peer": peer, "floor": floor}, n,
                                 warmup=warmup)
    finally:
        os.unlink(plain)
    t_nbic, t_peer, t_floor = times["nbic"], times["peer"], times["floor"]
    size_nbic, size_peer = os.path.getsize(ours), os.path.getsize(theirs)
    runs = f"median of {n}, the three commands in turn" + ("" if warmup else ", no warm-up")
    return [
        Result(f"pack rootfs dir -> .cpio.zst level {level}: time", t_nbic.median,
               t_peer.median, target=0.8 if level == 3 else None, nbic_cmd=show(nbic),
               peer_cmd=peer,
               notes=[f"{runs}; nbic {t_nbic}; peer {t_peer}",
                      f"floor, zstd alone on the peer's archive ({floor}): {t_floor}; "
                      f"{t_floor.median / t_peer.median:.2f}x the peer"]),
        Result(f"pack rootfs dir -> .cpio.zst level {level}: size", size_nbic, size_peer,
               unit="bytes", target=1.0, nbic_cmd=show(nbic), peer_cmd=peer),
    ]
