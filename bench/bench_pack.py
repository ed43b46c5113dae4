"""nbic pack of the whole rootfs to .cpio.zst against find | cpio -o | zstd."""

from __future__ import annotations

import os
import shlex

from common import NBIC, ROOTFS_DIR, Result, need, workdir
from timing import show, time_cmd

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
    t_nbic = time_cmd(nbic, n, warmup=level < 10)
    t_peer = time_cmd(peer, n, warmup=level < 10)
    size_nbic, size_peer = os.path.getsize(ours), os.path.getsize(theirs)
    runs = f"best of {n}" + ("" if level < 10 else ", no warm-up")
    return [
        Result(f"pack rootfs dir -> .cpio.zst level {level}: time", t_nbic.best, t_peer.best,
               target=0.8 if level == 3 else None, nbic_cmd=show(nbic), peer_cmd=peer,
               notes=[f"{runs}; nbic {t_nbic}; peer {t_peer}"]),
        Result(f"pack rootfs dir -> .cpio.zst level {level}: size", size_nbic, size_peer,
               unit="bytes", target=1.0, nbic_cmd=show(nbic), peer_cmd=peer),
    ]
