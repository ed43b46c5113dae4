"""Compression settings on real images: nbic pack at each one against the
compressor's own tool on the same archive, sizes and times in one run.

    .venv/bin/python bench/bench_levels.py [-n RUNS] [--only SETTING ...]

prints the markdown tables of docs/compression.md. Slow: zstd 19 and xz take
minutes on the whole rootfs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import time
from dataclasses import dataclass

from common import NBIC, ROOTFS_DIR, need, workdir
from timing import run, show

SETTINGS = ("zstd:3", "zstd:9", "zstd:12", "zstd:15", "zstd:19", "gzip:6", "gzip:9", "xz:6")
# The tools as a user would run them on all cores where they can.
TOOLS = {"zstd": "zstd -q -T0 -{level}", "gzip": "gzip -{level}", "xz": "xz -T0 -{level}"}
IMAGES = {
    "whole rootfs": "/*",
    "/usr/lib/x86_64-linux-gnu": "/usr/lib/x86_64-linux-gnu/*",
}


@dataclass
class Measure:
    size: int
    wall: float  # median of the runs
    cpu: float  # user + system of the command and its children, median


def measure(cmd: str | list[str], output: str, n: int) -> Measure:
    walls, cpus = [], []
    for _ in range(n):
        before, start = os.times(), time.perf_counter()
        run(cmd)
        walls.append(time.perf_counter() - start)
        after = os.times()
        cpus.append(after.children_user + after.children_system
                    - before.children_user - before.children_system)
    return Measure(os.path.getsize(output), sorted(walls)[n // 2], sorted(cpus)[n // 2])


def pack_command(include: str, compression: str, output: str) -> list[str]:
    return [NBIC, "-q", "pack", "--rootfs", ROOTFS_DIR, "--include", include, "--init",
            "/usr/bin/bash", "--compress", compression, "-o", output]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=1, help="runs per measurement (median)")
    parser.add_argument("--only", action="append", help="only this setting (repeatable)")
    parser.add_argument("--image", action="append", choices=list(IMAGES),
                        help="only this image (repeatable)")
    args = parser.parse_args()
    for tool in TOOLS:
        need(tool)
    settings = args.only or SETTINGS
    print(f"Measured by `bench/bench_levels.py -n {args.n}` on {os.cpu_count()} cores; "
          "times are wall (CPU = user + system, all threads).\n")
    for label in args.image or IMAGES:
        include = IMAGES[label]
        plain = workdir("levels.cpio")
        run(pack_command(include, "none", plain))
        print(f"### {label}: {os.path.getsize(plain):,} bytes uncompressed\n")
        print("| setting | nbic pack: size | time (CPU) | tool alone | size | time (CPU) |")
        print("|---|---|---|---|---|---|")
        for setting in settings:
            method, _, level = setting.partition(":")
            ours = workdir(f"levels.{method}")
            nbic = measure(pack_command(include, setting, ours), ours, args.n)
            theirs = workdir(f"levels-peer.{method}")
            tool = TOOLS[method].format(level=level)
            peer = measure(f"{tool} -c {shlex.quote(plain)} > {shlex.quote(theirs)}", theirs,
                           args.n)
            print(f"| {setting} | {nbic.size:,} B | {nbic.wall:.2f} s ({nbic.cpu:.2f} s) "
                  f"| `{tool}` | {peer.size:,} B | {peer.wall:.2f} s ({peer.cpu:.2f} s) |",
                  flush=True)
            os.unlink(ours)
            os.unlink(theirs)
        os.unlink(plain)
        print(f"\nnbic: `{show(pack_command(include, 'SETTING', 'OUT'))}`\n")


if __name__ == "__main__":
    main()
