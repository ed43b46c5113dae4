"""ByteSource, the buffered reader under every cpio and tar reader: whatever
chunks the raw stream hands out and whatever mix of reads, skips and unreads
is asked of it, it yields the stream's bytes in order (checked against a plain
model of the stream)."""

from __future__ import annotations

import io
import random

import pytest
from cpio_helpers import ChunkyPipe

from nbic.cpio.source import ByteSource
from nbic.errors import FormatError


def _source(data: bytes, kind: str, rng: random.Random) -> ByteSource:
    if kind == "file":
        return ByteSource(io.BytesIO(data))
    source = ByteSource(ChunkyPipe(data, rng))
    if kind == "decoder":  # a source whose raw reads hand out whole chunks
        pipe = ChunkyPipe(data, rng, whole_chunks=True)
        source._read_raw = lambda size: pipe.read(size)  # type: ignore[method-assign]
    return source


@pytest.mark.parametrize("kind", ["file", "pipe", "decoder"])
@pytest.mark.parametrize("seed", range(25))
def test_reads_skips_and_unreads_follow_the_stream(kind, seed):
    rng = random.Random(seed)
    data = rng.randbytes(rng.randint(0, 3 << 20))
    source = _source(data, kind, rng)
    expected, offset = data, 0  # what is left of the stream, and where it is
    for _ in range(200):
        size = rng.choice([0, 1, 6, 110, 4096, rng.randint(1, 1 << 20), rng.randint(1, 3 << 20)])
        operation = rng.choice(["read", "read_exact", "read_some", "peek", "skip", "unread"])
        if operation == "read":
            assert source.read(size) == expected[:size]
        elif operation == "peek":
            assert source.peek(size) == expected[:size]
            continue
        elif operation == "read_some":
            got = source.read_some(max(1, size))
            assert got == expected[:len(got)] and len(got) <= max(1, size)
            assert got or not expected
            size = len(got)
        elif operation == "unread":
            back = rng.randbytes(rng.randint(0, 300))
            source.unread(back)
            expected, offset = back + expected, offset - len(back)
            assert source.offset == offset
            continue
        elif size > len(expected):
            with pytest.raises(FormatError):
                getattr(source, operation)(size, "test data")
            return  # a truncated source is done
        elif operation == "read_exact":
            assert source.read_exact(size, "test data") == expected[:size]
        else:
            source.skip(size, "test data")
        size = min(size, len(expected))
        expected, offset = expected[size:], offset + size
        assert source.offset == offset
    assert source.read(len(expected) + 1) == expected
    assert source.at_eof()
