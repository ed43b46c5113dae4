"""Compression: only kernel-safe settings, readable by the real tools, deterministic."""

import io
import lzma
import shutil
import subprocess

import pytest
import zstandard

from nbic.cpio import compress
from nbic.cpio.archive import Member, write_archive
from nbic.cpio.compress import Compression, CompressionSpec, compressed_writer
from nbic.cpio.entry import Entry, FileType
from nbic.cpio.image import ImageReader
from nbic.errors import UsageError

# Enough varied data to span several zstd jobs and lz4 legacy blocks.
PAYLOAD = b"".join(i.to_bytes(4, "little") * (i % 7 + 1) for i in range(600_000))


def image(spec: CompressionSpec) -> bytes:
    out = io.BytesIO()
    with compressed_writer(out, spec) as stream:
        write_archive(stream, [Member(Entry("big", FileType.FILE, size=len(PAYLOAD)),
                                      lambda: io.BytesIO(PAYLOAD))])
    return out.getvalue()


def fast(method: Compression) -> CompressionSpec:
    low = compress.LEVELS[method][0] if method in compress.LEVELS else None
    return CompressionSpec(method, low)


TOOLS = {Compression.ZSTD: ["zstd", "-dc"], Compression.GZIP: ["gzip", "-dc"],
         Compression.XZ: ["xz", "-dc"], Compression.LZ4: ["lz4", "-dc"]}


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (ci/setup installs it)")
    return path


@pytest.mark.parametrize("method", list(TOOLS))
def test_each_method_is_read_by_its_real_tool_and_by_nbic(method):
    blob = image(fast(method))
    require(TOOLS[method][0])
    plain = subprocess.run(TOOLS[method], input=blob, capture_output=True, check=True).stdout
    assert plain == image(CompressionSpec(Compression.NONE))
    reader = ImageReader(io.BytesIO(blob))
    assert [(entry.name, reader.read()) for entry in reader] == [("big", PAYLOAD)]


def test_zstd_window_stays_within_what_the_kernel_allocates():
    for level in (1, 19):
        params = zstandard.get_frame_parameters(image(CompressionSpec(Compression.ZSTD, level)))
        assert params.window_size <= 8 << 20


def test_xz_uses_crc32():
    blob = image(fast(Compression.XZ))
    # Stream flags, byte 7 of the header: check type 0x01 is CRC32.
    assert blob[7] == lzma.CHECK_CRC32


def test_lz4_is_the_legacy_format():
    blob = image(fast(Compression.LZ4))
    assert blob[:4] == bytes.fromhex("02214c18")


def test_zstd_output_does_not_depend_on_the_number_of_cores(monkeypatch):
    monkeypatch.setattr(compress.os, "cpu_count", lambda: 1)
    one = image(CompressionSpec(Compression.ZSTD, 3))
    monkeypatch.setattr(compress.os, "cpu_count", lambda: 8)
    assert image(CompressionSpec(Compression.ZSTD, 3)) == one


@pytest.mark.parametrize("method", [*TOOLS, Compression.NONE])
def test_same_input_same_bytes(method):
    assert image(fast(method)) == image(fast(method))


def test_choice_by_suffix_and_by_name():
    assert compress.compression_for_path("a.cpio.zst").method is Compression.ZSTD
    assert compress.compression_for_path("a.cpio.gz").method is Compression.GZIP
    assert compress.compression_for_path("a.cpio").method is Compression.NONE
    assert compress.parse_compression("zstd:7") == CompressionSpec(Compression.ZSTD, 7)
    assert str(compress.parse_compression("xz")) == "xz:6"
    for bad in ("zstd:22", "brotli", "gzip:x", "none:3", "bzip2"):
        with pytest.raises(UsageError):
            compress.parse_compression(bad)


def test_zero_padding_after_an_lz4_legacy_segment_ends_it():
    def segment(name: str, method: Compression) -> bytes:
        out = io.BytesIO()
        with compressed_writer(out, fast(method)) as stream:
            write_archive(stream, [Member(Entry(name, FileType.DIR))])
        return out.getvalue()

    blob = segment("a", Compression.LZ4) + b"\0" * 8 + segment("b", Compression.GZIP)
    assert [entry.name for entry in ImageReader(io.BytesIO(blob))] == ["a", "b"]
