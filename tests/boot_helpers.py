"""A static C /init for boot tests, compiled on the host, whose behaviour is
set by data files next to it (so one compile serves every case): /marker
holds text to print, /exit-code the status to exit with, or "hang" to never
exit. /init mounts devtmpfs to reach /dev/console, so building the images
needs no mknod (and no root)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cpio_helpers import need

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
