"""nbic run of `true` on a cached rootfs against docker run --rm BUILDER true."""

from __future__ import annotations

from common import NBIC, ROOTFS_TAR, VENV_BIN, Result, workdir
from timing import run, show, time_cmd

TAG_PROGRAM = ("from nbic import __version__; from nbic.engine import BUILDER_REPOSITORY, "
               "builder_context; print(f'{BUILDER_REPOSITORY}:{__version__}-"
               "{builder_context()[1][:12]}')")


def true_command(rootfs: str, output: str) -> list[str]:
    return [NBIC, "-q", "run", "--rootfs", rootfs, "-o", output, "--init", "/usr/bin/true",
            "--", "true"]


def builder_tag() -> str:
    """The builder image nbic run uses now, else the newest nbic-builder image."""
    tag = run([f"{VENV_BIN}/python", "-c", TAG_PROGRAM], capture=True).strip()
    try:
        run(["docker", "image", "inspect", tag])
        return tag
    except Exception:
        newest = run(["docker", "images", "nbic-builder", "--format",
                      "{{.Repository}}:{{.Tag}}"], capture=True).split()
        return newest[0]


def bench(n: int = 3) -> list[Result]:
    ours = true_command(ROOTFS_TAR, workdir("true.cpio"))
    t_ours = time_cmd(ours, n)  # the warm-up run also builds/caches what it needs
    tag = builder_tag()
    peer = ["docker", "run", "--rm", tag, "true"]
    t_peer = time_cmd(peer, n)
    return [Result("nbic run -- true (warm cache) vs docker run --rm builder true",
                   t_ours.best, t_peer.best, target=2.0, nbic_cmd=show(ours),
                   peer_cmd=show(peer), notes=[f"best of {n}; nbic {t_ours}; peer {t_peer}"])]
