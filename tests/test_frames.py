"""The framed standard output of a session agent: what the agent writes, the
host reads back whole, whatever chunks the engine cuts it into."""

import io
import os
import random
import tarfile
import tempfile

import pytest

from nbic.agent.protocol import FRAME_HEADER, FRAME_MAX, Frame, FrameError, FrameReader
from nbic.agent.relay import Frames, session_output


def _written(action) -> bytes:
    """What `action(frames)` writes, read back from a file."""
    with tempfile.TemporaryFile() as spool:
        action(Frames(spool.fileno()))
        spool.seek(0)
        return spool.read()


def _read_back(data: bytes, seed: int) -> list[tuple[Frame, bytes]]:
    reader, rng, got, at = FrameReader(), random.Random(seed), [], 0
    while at < len(data):
        size = rng.choice((1, 2, 5, 4096, 70000))
        got += list(reader.feed(data[at:at + size]))
        at += size
    assert not reader.partial
    return got


@pytest.mark.parametrize("seed", range(5))
def test_frames_come_back_whole_and_in_order_from_any_chunking(seed):
    big = bytes(random.Random(seed).getrandbits(8) for _ in range(3 * FRAME_MAX + 17))
    data = _written(lambda frames: (frames.send(Frame.STDOUT, b"\xff\x00not utf-8\n"),
                                    frames.send(Frame.STDOUT, big),
                                    frames.send(Frame.END)))
    got = _read_back(data, seed)
    assert got[0] == (Frame.STDOUT, b"\xff\x00not utf-8\n")
    assert [kind for kind, _ in got] == [Frame.STDOUT] * 5 + [Frame.END]
    assert all(len(payload) <= FRAME_MAX for _, payload in got)
    assert b"".join(payload for _, payload in got[1:-1]) == big


def test_a_tree_goes_as_a_tar_then_the_end_mark(tmp_path):
    (tmp_path / "result.json").write_text('{"ok": true}')
    (tmp_path / "image.cpio").write_bytes(b"x" * (FRAME_MAX + 1))
    got = _read_back(_written(lambda frames: frames.send_tree(str(tmp_path))), 0)
    assert got[-1] == (Frame.END, b"")
    assert {kind for kind, _ in got[:-1]} == {Frame.RESULT}
    tar = b"".join(payload for _, payload in got[:-1])
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        assert archive.getnames() == ["image.cpio", "result.json"]
        assert archive.extractfile("result.json").read() == b'{"ok": true}'


def test_the_session_output_is_relayed_and_fd_1_restored(tmp_path):
    read_end, write_end = os.pipe()
    saved = os.dup(1)
    try:
        os.dup2(write_end, 1)
        frames = Frames(os.dup(1))
        with session_output(frames):
            os.write(1, b"from the session\n")
        os.write(1, b"after")  # the container's own stdout again: not framed
        os.dup2(saved, 1)
        os.close(write_end)
        os.close(frames.fd)
        with os.fdopen(read_end, "rb") as stream:
            data = stream.read()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    header = FRAME_HEADER.pack(Frame.STDOUT.value, 17)
    assert data == header + b"from the session\n" + b"after"


@pytest.mark.parametrize("data, message", [
    (FRAME_HEADER.pack(b"o", FRAME_MAX + 1), "-byte frame"),
    (FRAME_HEADER.pack(b"?", 1) + b"x", "unknown kind"),
])
def test_garbage_is_refused(data, message):
    with pytest.raises(FrameError, match=message):
        list(FrameReader().feed(data))


def test_a_frame_cut_short_is_seen():
    reader = FrameReader()
    assert list(reader.feed(FRAME_HEADER.pack(b"o", 10) + b"12345")) == []
    assert reader.partial
