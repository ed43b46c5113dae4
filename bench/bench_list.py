"""cpio-list of the large zstd image against zstd -dc | cpio -t and lsinitramfs."""

from __future__ import annotations

import os
import shlex

from bench_pack import IMAGE
from common import CPIO_LIST, LSINITRAMFS, Result, need, workdir
from timing import run, show, time_cmd


def bench(n: int = 3) -> list[Result]:
    need("cpio")
    need("zstd")
    image = workdir(IMAGE)
    if not os.path.exists(image):
        raise FileNotFoundError(f"{image} is missing: the pack benchmark makes it")
    img = shlex.quote(image)
    ours = f"{shlex.quote(CPIO_LIST)} {img} > /dev/null"
    gnu = f"zstd -dc {img} | cpio -t --quiet > /dev/null"
    lsinitramfs = f"{shlex.quote(LSINITRAMFS)} {img} > /dev/null"
    counts = {name: len(run(cmd.replace(" > /dev/null", ""), capture=True).splitlines())
              for name, cmd in (("cpio-list", ours), ("cpio -t", gnu))}
    t_ours = time_cmd(ours, n)
    t_gnu = time_cmd(gnu, n)
    results = [Result("cpio-list of the level-3 image vs zstd -dc | cpio -t", t_ours.best,
                      t_gnu.best, target=1.0, nbic_cmd=ours, peer_cmd=gnu,
                      notes=[f"best of {n}; nbic {t_ours}; peer {t_gnu}",
                             f"entries listed: {counts}"])]
    try:
        t_ls = time_cmd(lsinitramfs, n)
        results.append(Result("cpio-list of the level-3 image vs lsinitramfs", t_ours.best,
                              t_ls.best, nbic_cmd=ours, peer_cmd=show(lsinitramfs),
                              notes=[f"best of {n}; peer {t_ls}"]))
    except Exception as err:  # report it as a row, the other rows still stand
        results.append(Result("cpio-list of the level-3 image vs lsinitramfs", t_ours.best,
                              None, nbic_cmd=ours, peer_cmd=lsinitramfs, error=str(err)))
    return results
