"""A small usr-merged rootfs on disk, shaped like Debian's, for closure tests."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

LIBDIR = "usr/lib/x86_64-linux-gnu"


def make_rootfs(root: Path) -> Path:
    def file(name: str, data: bytes = b"", mode: int = 0o644) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data or name.encode())
        path.chmod(mode)

    def link(name: str, target: str) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)

    for directory in ("usr/bin", "usr/sbin", LIBDIR, "usr/lib64", "etc/alternatives",
                      "dev", "var", "run"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "proc").mkdir(mode=0o555)
    (root / "proc").chmod(0o555)
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    link("bin", "usr/bin")
    link("sbin", "usr/sbin")
    link("lib", "usr/lib")
    link("lib64", "usr/lib64")
    link("var/run", "/run")
    file("usr/bin/bash", b"\x7fELF bash", 0o755)
    link("usr/bin/rbash", "bash")
    file("usr/bin/cat", b"\x7fELF cat", 0o755)
    file("usr/bin/tr", b"\x7fELF tr", 0o755)
    file("usr/bin/mawk", b"\x7fELF mawk", 0o755)
    link("etc/alternatives/awk", "/usr/bin/mawk")
    link("usr/bin/awk", "/etc/alternatives/awk")
    file("usr/bin/perl", b"\x7fELF perl", 0o755)
    os.link(root / "usr/bin/perl", root / "usr/bin/perl5.36.0")
    file(f"{LIBDIR}/libtinfo.so.6.4", b"tinfo")
    link(f"{LIBDIR}/libtinfo.so.6", "libtinfo.so.6.4")
    file(f"{LIBDIR}/ld-linux-x86-64.so.2", b"ld.so", 0o755)
    link("usr/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    file(f"{LIBDIR}/libunused.so.1", b"unused")
    # Links that must never lead outside the rootfs or hang the resolver.
    link("etc/escape", "../../../../../etc/passwd")
    link("etc/loop-a", "loop-b")
    link("etc/loop-b", "loop-a")
    file("etc/hostname", b"reference\n")
    file("chroot", b"#!/bin/bash\nexec /bin/bash\n", 0o755)
    return root


def make_tar(root: Path, target: Path) -> Path:
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as archive:
        archive.add(root, arcname=".", recursive=True)
    return target
