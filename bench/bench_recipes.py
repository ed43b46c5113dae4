"""The shipped bash recipe against the seed's quick-start image (3.9 MB, from
its README) and a hand-made one (1.78 MB: bash, cat and ls with their
libraries, packed by hand at zstd 19); and the replay check's time against
the boot check's, both from one `nbic build`."""

from __future__ import annotations

import shutil
from pathlib import Path

from common import KERNEL, NBIC, REPO, Result, workdir
from timing import show

from nbic.build import BuildConfig, build

SEED_BYTES = 3_900_000  # "on the order of 3.9MB" (the seed's README)
HAND_MADE_BYTES = 1_780_000


def bench(n: int = 1) -> list[Result]:
    del n  # one build: it traces a session, replays its check and boots the image
    out = Path(workdir("recipes"))
    shutil.rmtree(out, ignore_errors=True)
    recipe = Path(REPO, "images", "bash")
    cmd = show([NBIC, "build", str(recipe), "-o", str(out), "--kernel", KERNEL])
    built = build(recipe, BuildConfig(output_dir=out, kernel=KERNEL))
    notes = [f"{built.entries} entries, {built.raw_bytes:,} bytes uncompressed; "
             f"built in {built.compile_seconds:.1f} s"]
    rows = [
        Result("images/bash vs the seed's quick-start image", built.image_bytes, SEED_BYTES,
               unit="bytes", nbic_cmd=cmd, peer_cmd="the seed's README: 3.9 MB", notes=notes),
        Result("images/bash vs a hand-made bash+cat+ls image", built.image_bytes,
               HAND_MADE_BYTES, unit="bytes", target=1.0, nbic_cmd=cmd,
               peer_cmd="bash, cat, ls and their libraries by hand, zstd 19: 1.78 MB"),
    ]
    if built.boot is not None:
        rows.append(Result("replay check vs boot check (images/bash)", built.replay_seconds,
                           built.boot.seconds, nbic_cmd=cmd + "  # its replay check",
                           peer_cmd=cmd + "  # its boot check, QEMU TCG"))
    return rows
