"""A static C /init for boot tests, compiled on the host, whose behaviour is
set by data files next to it (so one compile serves every case): /marker
holds text to print, /exit-code the status to exit with, or "hang" to never
exit. /init mounts devtmpfs to reach /dev/console, so building the images
needs no mknod (and no root). Also: images around it made by `nbic pack`,
and a `nbic netboot` directory of them for the network boot tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cpio_helpers import need

from nbic.cli import main

CMDLINE = "console=ttyS0 panic=-1"  # the netboot images' kernel command line

INIT_C = r"""
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

static int slurp(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    buf[n > 0 ? n : 0] = 0;
    return (int)(n > 0 ? n : 0);
}

int main(void) {
    char text[256], code[32];
    int out = open("/dev/console", O_WRONLY);
    if (out < 0) {  /* no device node in the image: let the kernel make one */
        mkdir("/dev", 0755);
        mount("devtmpfs", "/dev", "devtmpfs", 0, 0);
        out = open("/dev/console", O_WRONLY);
    }
    int n = slurp("/marker", text, sizeof text);
    if (n > 0) write(out, text, n);
    if (slurp("/exit-code", code, sizeof code) < 0) strcpy(code, "0");
    if (strncmp(code, "hang", 4) == 0)
        for (;;) pause();
    return atoi(code);
}
"""


def compile_static_init(work: Path) -> Path:
    """The test /init, linked statically: an image needs no libraries for it."""
    (work / "init.c").write_text(INIT_C)
    subprocess.run([need("gcc"), "-static", "-Os", "-o", str(work / "init"),
                    str(work / "init.c")], check=True)
    return work / "init"


def pack_image(tmp_path: Path, name: str, files: dict[str, Path | str], suffix: str) -> Path:
    """`nbic pack` of a spec list: each file given as a host path or as text."""
    lines = []
    for target, source in files.items():
        if isinstance(source, str):
            host = tmp_path / f"{name}-{target.strip('/').replace('/', '-')}"
            host.write_text(source)
            source = host
        mode = "0755" if target == "/init" else "0644"
        lines.append(f"file {target} {source} {mode} 0 0")
    spec = tmp_path / f"{name}.spec"
    spec.write_text("\n".join(lines) + "\n")
    out = tmp_path / f"{name}.cpio{suffix}"
    assert main(["-q", "pack", "--spec", str(spec), "-o", str(out)]) == 0
    return out


def two_images(tmp_path: Path, init: Path, marker: str) -> tuple[Path, Path]:
    """/init in a zstd image, then its /marker in an uncompressed one: the
    second only unpacks if the first is padded to a 4-byte boundary. A /pad
    file of the right length makes the first image's length unaligned."""
    for pad in range(64):
        first = pack_image(tmp_path, "main", {"/init": init, "/exit-code": "0",
                                              "/pad": "x" * pad}, ".zst")
        if first.stat().st_size % 4:
            break
    second = pack_image(tmp_path, "marker", {"/marker": marker + "\n"}, "")
    return first, second


def netboot_dir(tmp_path: Path, bzimage: Path, init: Path, marker: str) -> Path:
    """`nbic netboot` of the two images above, with a serial console."""
    directory = tmp_path / "boot"
    assert main(["-q", "netboot", str(directory), "--kernel", str(bzimage),
                 "--image", *map(str, two_images(tmp_path, init, marker)),
                 "--cmdline", CMDLINE]) == 0
    return directory
