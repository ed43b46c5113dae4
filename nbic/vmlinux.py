"""The uncompressed ELF kernel (vmlinux) inside an x86 bzImage (vmlinuz).

QEMU boots an ELF vmlinux straight through its PVH entry note and so skips
the bzImage's self-decompression, which is slow under TCG: Debian's 6.1
kernel reached its first panic in 3.4 s as vmlinux against 8.8 s as vmlinuz.

The bzImage boot header (Documentation/arch/x86/boot.rst, protocol 2.08 and
later, i.e. every kernel since 2.6.26) says where the compressed kernel lies:
payload_offset (0x248) and payload_length (0x24c), counted from the start of
the protected-mode code, which follows (setup_sects + 1) * 512 bytes of setup
code. The payload is decompressed with nbic's own decompressors, chosen by its
magic, and must be an ELF file.

Standard library only at import time: ci/setup runs it (`ci/extract-vmlinux`)
with the system Python before nbic's venv exists.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path
from typing import BinaryIO

from nbic.cpio.compress import Compression, decompress_chunks, decompressor_for, detect
from nbic.errors import KernelError

_HEADER_SIZE = 0x250
_CHUNK = 1 << 16  # compressed bytes per step: the output comes a few hundred KiB at a time
ELF_MAGIC = b"\x7fELF"


def payload_location(header: bytes) -> tuple[int, int]:
    """(offset, length) of the compressed kernel in a bzImage, from its header."""
    if len(header) < _HEADER_SIZE or header[0x202:0x206] != b"HdrS":
        raise KernelError("not a bzImage (no HdrS boot header)")
    (protocol,) = struct.unpack_from("<H", header, 0x206)
    if protocol < 0x208:
        raise KernelError(f"bzImage boot protocol {protocol >> 8}.{protocol & 0xff:02d} "
                          "does not say where its payload is (2.08 and later do)")
    setup_sects = header[0x1F1] or 4  # 0 means 4, as for the oldest kernels
    offset, length = struct.unpack_from("<II", header, 0x248)
    return (setup_sects + 1) * 512 + offset, length


def extract_vmlinux(vmlinuz: BinaryIO, out: BinaryIO) -> str:
    """Write the ELF vmlinux inside the bzImage `vmlinuz` to `out`; returns the
    payload's compression."""
    start, length = payload_location(vmlinuz.read(_HEADER_SIZE))
    vmlinuz.seek(start)
    head = vmlinuz.read(8)
    vmlinuz.seek(start)
    method = detect(head)
    if method is None:
        raise KernelError(f"bzImage payload in an unknown compression (starts {head[:6].hex()})")
    decompressor = decompressor_for(method, head)
    # The kernel's lz4 payload (legacy frames, no end marker) is followed by its
    # 4-byte uncompressed size; every other format ends by itself.
    remaining = length - 4 if method is Compression.LZ4 else length
    checked = False
    while remaining > 0 and not decompressor.eof:
        chunk = vmlinuz.read(min(remaining, _CHUNK))
        if not chunk:
            break
        remaining -= len(chunk)
        try:
            for data in decompress_chunks(decompressor, chunk):
                if data and not checked:
                    if not data.startswith(ELF_MAGIC):
                        raise KernelError("the bzImage payload is not an ELF kernel")
                    checked = True
                out.write(data)
        except KernelError:
            raise
        except Exception as exc:  # every codec has its own error type
            raise KernelError(f"corrupt {method.value} payload in the bzImage: {exc}") from exc
    if not decompressor.eof:
        end_of_input = getattr(decompressor, "end_of_input", None)
        if end_of_input is None or remaining:
            raise KernelError(f"truncated {method.value} payload in the bzImage")
        out.write(end_of_input())
    if not checked:
        raise KernelError("the bzImage payload is empty")
    return method.value


def main(argv: list[str] | None = None) -> int:
    """`python -m nbic.vmlinux VMLINUZ OUTPUT` (ci/extract-vmlinux)."""
    from nbic.errors import NbicError
    from nbic.output import atomic_output

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: extract-vmlinux VMLINUZ OUTPUT", file=sys.stderr)
        return 2
    try:
        with open(args[0], "rb") as vmlinuz, atomic_output(args[1]) as out:
            method = extract_vmlinux(vmlinuz, out)
            size = out.tell()
    except (NbicError, OSError) as exc:
        print(f"extract-vmlinux: {args[0]}: {exc}", file=sys.stderr)
        return 1
    print(f"extract-vmlinux: {method} payload -> {size} byte ELF {Path(args[1]).name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
