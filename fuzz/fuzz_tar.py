"""Fuzz target: a rootfs tar as `nbic pack` reads it (TarTree): the index, plain
or compressed, symlink resolution in it, and the data of every file."""

from __future__ import annotations

import os
import tempfile

import atheris
from common import main

# tarfile too: it parses the hostile headers, so its branches guide the fuzzer.
with atheris.instrument_imports(include=["nbic", "tarfile"]):
    import tarfile  # noqa: F401 - instrumented before nbic.tree imports it

    import nbic.cpio.compress  # imported by TarTree when used: instrumented now
    import nbic.cpio.source  # noqa: F401
    from nbic.cpio.entry import FileType
    from nbic.tree import TarTree

# TarTree reads a named file: one that is already unlinked, so that nothing is
# left behind however the run ends (libFuzzer exits without Python's cleanup).
_FD, _NAME = tempfile.mkstemp(prefix="nbic-fuzz-", suffix=".tar",
                              dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
os.unlink(_NAME)
_PATH = f"/proc/self/fd/{_FD}"


def one_input(data: bytes) -> None:
    os.ftruncate(_FD, 0)
    os.pwrite(_FD, data, 0)
    tree = TarTree(_PATH)
    try:
        files = [name for name, entry in tree.entries.items() if entry.type is FileType.FILE]
        for name in tree.entries:
            tree.resolve(name)
        tree.prefetch(files)
        for name in files:
            with tree.open(name) as stream:
                while stream.read(1 << 16):
                    pass
    finally:
        tree.close()


if __name__ == "__main__":
    main(one_input)
