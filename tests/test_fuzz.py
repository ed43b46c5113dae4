"""Fuzzing: whatever the input, only NbicError subclasses escape the reader,
the tools built on it and the spec parser."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile

from cpio_helpers import archive, member, pattern
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbic.cpio.compress import Compression, CompressionSpec, compressed_writer
from nbic.cpio.entry import FileType
from nbic.cpio.image import ImageReader
from nbic.cpio.spec import parse_spec
from nbic.errors import NbicError
from nbic.tools.cat import cat
from nbic.tools.diff import diff_images
from nbic.tools.extract import extract

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def _valid() -> bytes:
    return archive([
        member("d", FileType.DIR, perm=0o755),
        member("d/a", data=b"hello\n"),
        member("d/h1", data=pattern(37), link_key=1),
        member("d/h2", data=pattern(37), link_key=1),
        member("d/l", FileType.SYMLINK, perm=0o777, linkname="a"),
        member("dev", FileType.DIR, perm=0o755),
        member("dev/null", FileType.CHAR, perm=0o666, rdevmajor=1, rdevminor=3),
    ])


VALID = _valid()


def _gzip(data: bytes) -> bytes:
    out = io.BytesIO()
    with compressed_writer(out, CompressionSpec(Compression.GZIP, 1)) as stream:
        stream.write(data)
    return out.getvalue()


VALID_GZIP = _gzip(VALID)


def _read_all(data: bytes) -> None:
    reader = ImageReader(io.BytesIO(data), "fuzz")
    try:
        for _entry in reader:
            for _chunk in reader.chunks():
                pass
    except NbicError:
        pass


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(data):
    _read_all(data)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_after_a_valid_archive(data):
    _read_all(VALID + data)


@st.composite
def _mutations(draw, base: bytes):
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 8))):
        action = draw(st.sampled_from(["flip", "set", "hexdigit", "cut", "insert", "delete"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if action == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            data[at] = draw(st.integers(0, 255))
        elif action == "hexdigit":
            data[at] = ord(draw(st.sampled_from("0123456789ABCDEFfF")))
        elif action == "cut":
            del data[at:]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at:at + draw(st.integers(1, 16))]
    return bytes(data)


@FUZZ
@given(_mutations(VALID))
def test_mutated_archive(data):
    _read_all(data)


@FUZZ
@given(_mutations(VALID_GZIP))
def test_mutated_compressed_archive(data):
    _read_all(data)


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(_mutations(VALID))
def test_mutated_archive_through_the_tools(data):
    with tempfile.TemporaryDirectory() as work:
        image = os.path.join(work, "img")
        with open(image, "wb") as out:
            out.write(data)
        for run in (lambda: diff_images(image, image),
                    lambda: cat(image, "d/h1", io.BytesIO()),
                    lambda: extract(image, os.path.join(work, "out"))):
            with contextlib.suppress(NbicError):
                run()


_SPEC_WORDS = st.sampled_from(["file", "dir", "nod", "slink", "pipe", "sock", "/a", "/b/c",
                               "..", "/../x", "0755", "0", "1000", "c", "b", "x", "-1",
                               "99999999999999999999", "${X}", "${", "#", "07777", "017777",
                               "/tmp/loc", "\t", "ÿ", "\0"])


@FUZZ
@given(st.lists(st.lists(_SPEC_WORDS, max_size=9).map(" ".join), max_size=6).map("\n".join))
def test_spec_parser_with_spec_like_text(text):
    with contextlib.suppress(NbicError):
        parse_spec(text, env={"X": "/x"})


@FUZZ
@given(st.text(max_size=300))
def test_spec_parser_with_random_text(text):
    with contextlib.suppress(NbicError):
        parse_spec(text, env={})


def test_the_inputs_mutations_start_from_are_valid():
    # Mutating a valid image only explores the parser if the image parses.
    for blob in (VALID, VALID_GZIP):
        reader = ImageReader(io.BytesIO(blob), "seed")
        names = [entry.name for entry in reader]
        assert names == ["d", "d/a", "d/h1", "d/h2", "d/l", "dev", "dev/null"]
    assert [item.entry.name for item in parse_spec("dir /d 755 0 0\n")] == ["d"]
