"""Compression: only kernel-safe settings, readable by the real tools, deterministic."""

import gc
import io
import lzma
import random
import shutil
import struct
import subprocess
import threading
import zlib

import pytest
import zstandard
from cpio_helpers import ChunkyPipe

from nbic.cpio import compress
from nbic.cpio.archive import Member, write_archive
from nbic.cpio.compress import Compression, CompressionSpec, compressed_writer
from nbic.cpio.entry import Entry, FileType
from nbic.cpio.image import ImageReader
from nbic.cpio.source import ByteSource
from nbic.errors import CompressionError, UsageError

# Enough varied data to span several zstd jobs and lz4 legacy blocks.
PAYLOAD = b"".join(i.to_bytes(4, "little") * (i % 7 + 1) for i in range(600_000))


def image(spec: CompressionSpec) -> bytes:
    out = io.BytesIO()
    with compressed_writer(out, spec) as stream:
        write_archive(stream, [Member(Entry("big", FileType.FILE, size=len(PAYLOAD)),
                                      lambda: io.BytesIO(PAYLOAD))])
    return out.getvalue()


def cpio_bytes(members: list[Member]) -> bytes:
    out = io.BytesIO()
    write_archive(out, members)
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


# An archive over several blocks of every block-parallel method (xz's are the
# largest), with a short last block.
BIG = (PAYLOAD * (2 * compress.XZ_BLOCK // len(PAYLOAD) + 1))[: 2 * compress.XZ_BLOCK]
MULTI_BLOCK = cpio_bytes([Member(Entry("big", FileType.FILE, size=len(BIG)),
                                 lambda: io.BytesIO(BIG))])


def compressed(method: Compression, data: bytes, workers: int) -> bytes:
    out = io.BytesIO()
    with compressed_writer(out, fast(method), workers=workers) as stream:
        for start in range(0, len(data), 300_007):  # writes that straddle blocks
            stream.write(data[start : start + 300_007])
    return out.getvalue()


@pytest.mark.parametrize("method", list(TOOLS))
def test_output_does_not_depend_on_the_number_of_workers(method, tmp_path):
    one = compressed(method, MULTI_BLOCK, workers=1)
    assert compressed(method, MULTI_BLOCK, workers=3) == one
    # The real tool checks the stream's integrity and gets every byte back.
    tool = require(TOOLS[method][0])
    path = tmp_path / "blob"
    path.write_bytes(one)
    subprocess.run([tool, "-t", "-q", str(path)], check=True)
    assert subprocess.run([tool, "-dc", str(path)], capture_output=True, check=True
                          ).stdout == MULTI_BLOCK
    reader = ImageReader(io.BytesIO(one))
    assert [(entry.name, reader.read() == BIG) for entry in reader] == [("big", True)]


def test_gzip_blocks_make_one_member_with_one_deflate_stream():
    blob = compressed(Compression.GZIP, MULTI_BLOCK, workers=2)
    assert blob[3] == 0 and blob[4:8] == bytes(4)  # no name, mtime 0
    inflate = zlib.decompressobj(wbits=-zlib.MAX_WBITS)
    assert inflate.decompress(blob[10:]) == MULTI_BLOCK
    assert inflate.eof and len(inflate.unused_data) == 8  # CRC32 and ISIZE follow
    assert blob[-8:] == struct.pack("<II", zlib.crc32(MULTI_BLOCK), len(MULTI_BLOCK))


def test_xz_blocks_are_listed_by_xz_with_crc32(tmp_path):
    path = tmp_path / "blob.xz"
    path.write_bytes(compressed(Compression.XZ, MULTI_BLOCK, workers=2))
    listing = subprocess.run([require("xz"), "--robot", "--list", "-vv", str(path)],
                             capture_output=True, text=True, check=True).stdout
    # block, stream, its number in the stream and in the file, compressed and
    # uncompressed offset and size, ratio, check type and value, header size,
    # which sizes the header gives (c, u), ...
    blocks = [line.split("\t") for line in listing.splitlines() if line.startswith("block\t")]
    assert [int(block[7]) for block in blocks] == [
        compress.XZ_BLOCK, compress.XZ_BLOCK, len(MULTI_BLOCK) - 2 * compress.XZ_BLOCK]
    assert {(block[9], block[12]) for block in blocks} == {("CRC32", "cu")}


@pytest.mark.parametrize("method", [Compression.GZIP, Compression.XZ, Compression.LZ4])
def test_an_empty_stream_is_still_valid(method, tmp_path):
    tool = require(TOOLS[method][0])
    path = tmp_path / "blob"
    path.write_bytes(compressed(method, b"", workers=2))
    assert subprocess.run([tool, "-dc", str(path)], capture_output=True, check=True
                          ).stdout == b""


def test_a_failure_while_writing_stops_the_workers():
    before = threading.active_count()
    with pytest.raises(RuntimeError), compressed_writer(io.BytesIO(), fast(Compression.GZIP),
                                                        workers=4) as stream:
        stream.write(MULTI_BLOCK)
        raise RuntimeError("the archive failed")
    assert threading.active_count() == before


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


# Input pieces as a pipe may hand them out, often small enough to cut a header.
PIECES = (1, 2, 3, 5, 17, 64, 1000, 70_000)


def _zstd_frame(rng: random.Random) -> tuple[bytes, bytes]:
    """Data of every block kind (raw, RLE, compressed) and a frame of it."""
    parts = []
    for _ in range(rng.randrange(0, 8)):
        size = rng.randrange(0, 200_000)
        incompressible = rng.randbytes(size)
        one_byte = bytes([rng.randrange(256)]) * size
        text = b"nbic %d " % rng.randrange(1000) * (size // 8)
        parts.append(rng.choice((incompressible, one_byte, text)))
    data = b"".join(parts)
    frame = zstandard.ZstdCompressor(level=rng.choice((1, 3, 19)),
                                     write_checksum=rng.random() < 0.5,
                                     write_content_size=rng.random() < 0.5).compress(data)
    return data, frame


@pytest.mark.parametrize("seed", range(60))
def test_a_zstd_frame_is_read_to_its_end_and_not_a_byte_beyond(seed):
    # Unit headers cut between input pieces, a frame ending inside a piece: the
    # data comes out whole, and what follows the frame stays with the outer source.
    rng = random.Random(seed)
    data, frame = _zstd_frame(rng)
    after = rng.randbytes(rng.randrange(0, 100))
    outer = ByteSource(ChunkyPipe(frame + after, rng, piece_sizes=PIECES), "test")
    limit = rng.choice((4096, 65536, 1 << 20))
    reader = compress.ZstdFrameReader(outer, "test", limit)
    chunks = list(iter(reader, b""))
    assert b"".join(chunks) == data
    assert all(len(chunk) <= limit for chunk in chunks)
    assert reader() == b""
    assert outer.read(len(after) + 1) == after


@pytest.mark.parametrize("seed", range(20))
def test_a_cut_or_corrupt_zstd_frame_is_an_error(seed):
    rng = random.Random(seed)
    data, _ = _zstd_frame(rng)
    # With a checksum, a flipped bit anywhere is found, if not before then at the end.
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(data + rng.randbytes(5000))
    cut = frame[: rng.randrange(0, len(frame))]
    corrupt = bytearray(frame)
    corrupt[rng.randrange(len(frame) // 2, len(frame))] ^= 1 << rng.randrange(8)
    for bad in (cut, bytes(corrupt)):
        outer = ByteSource(ChunkyPipe(bad, rng, piece_sizes=PIECES), "test")
        reader = compress.ZstdFrameReader(outer, "test", 4096)
        with pytest.raises(CompressionError):
            list(iter(reader, b""))


def test_a_finished_zstd_frame_reader_is_freed_at_once():
    # zstandard's stream reader is not seen by the cycle collector: a cycle
    # through it (found by the fuzzer, 92 KiB a frame) would never be freed.
    frame = zstandard.ZstdCompressor().compress(b"nbic" * 25_000)
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        for _ in range(200):
            reader = compress.ZstdFrameReader(ByteSource(io.BytesIO(frame), "test"), "test",
                                              1 << 20)
            assert len(b"".join(iter(reader, b""))) == 100_000
        del reader
        assert len(gc.get_objects()) - before < 50
    finally:
        gc.enable()
