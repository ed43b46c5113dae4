"""cpio-list of the large zstd image against zstd -dc | cpio -t and lsinitramfs, and
of the same image uncompressed against bsdtar -tf (which seeks past file data) and
GNU cpio -t."""

from __future__ import annotations

import os
import shlex

from bench_pack import IMAGE
from common import CPIO_LIST, LSINITRAMFS, Result, need, workdir
from timing import run, show, time_alternating


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
    times = time_alternating({"nbic": ours, "peer": gnu}, n)
    t_ours, t_gnu = times["nbic"], times["peer"]
    results = [Result("cpio-list of the level-3 image vs zstd -dc | cpio -t", t_ours.best,
                      t_gnu.best, target=1.0, nbic_cmd=ours, peer_cmd=gnu,
                      notes=[f"{_how(n)}; nbic {t_ours}; peer {t_gnu}",
                             f"entries listed: {counts}"])]
    results += _uncompressed(image, n)
    try:
        t_ls = time_alternating({"lsinitramfs": lsinitramfs}, n)["lsinitramfs"]
        results.append(Result("cpio-list of the level-3 image vs lsinitramfs", t_ours.best,
                              t_ls.best, nbic_cmd=ours, peer_cmd=show(lsinitramfs),
                              notes=[f"best of {n}; peer {t_ls}"]))
    except Exception as err:  # report it as a row, the other rows still stand
        results.append(Result("cpio-list of the level-3 image vs lsinitramfs", t_ours.best,
                              None, nbic_cmd=ours, peer_cmd=lsinitramfs, error=str(err)))
    return results


def _how(n: int) -> str:
    return f"best of {n}, the commands in turn"


def _uncompressed(image: str, n: int) -> list[Result]:
    need("bsdtar")
    plain = workdir("pack-3.cpio")
    run(f"zstd -dcf {shlex.quote(image)} -o {shlex.quote(plain)}")
    img = shlex.quote(plain)
    ours = f"{shlex.quote(CPIO_LIST)} {img} > /dev/null"
    peers = {f"bsdtar -tf {img} > /dev/null": 5.0, f"cpio -t --quiet < {img} > /dev/null": 0.5}
    times = time_alternating({"nbic": ours, **{peer: peer for peer in peers}}, n)
    t_ours = times["nbic"]
    return [Result(f"cpio-list of the image uncompressed vs {peer.split(' ')[0]}",
                   t_ours.best, times[peer].best, target=target, nbic_cmd=ours, peer_cmd=peer,
                   notes=[f"{_how(n)}; nbic {t_ours}; peer {times[peer]}"])
            for peer, target in peers.items()]
