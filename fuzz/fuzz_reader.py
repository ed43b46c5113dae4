"""Fuzz target: the initramfs image reader, with every compression it reads
(segments, padding, zstd/gzip/xz/lzma/bzip2/lz4), entries and their data."""

from __future__ import annotations

import io

import atheris
from common import main

with atheris.instrument_imports(include=["nbic"]):
    from nbic.cpio.image import ImageReader


def one_input(data: bytes) -> None:
    reader = ImageReader(io.BytesIO(data), "fuzz input")
    for _entry in reader:
        for _chunk in reader.chunks():
            pass


if __name__ == "__main__":
    main(one_input)
