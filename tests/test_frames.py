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


def _frame(kind: Frame, payload: bytes = b"") -> bytes:
    return FRAME_HEADER.pack(kind.value, len(payload)) + payload


def _host_side(chunks):
    """What nbic.run makes of the container's (stdout, stderr) chunks."""
    from nbic import run
    return list(run._framed_output(iter(chunks)))


def run_framed(stdout_chunks):
    from nbic import run
    return run._framed_output(iter((chunk, None) for chunk in stdout_chunks))


def test_the_host_relays_output_and_yields_the_result_up_to_the_end(capfdbinary):
    stream = _frame(Frame.STDOUT, b"out\xff") + _frame(Frame.RESULT, b"tar-1") \
        + _frame(Frame.RESULT, b"tar-2") + _frame(Frame.END) + b"after the end"
    chunks = [(stream[:3], None), (None, b"err\n"), (stream[3:], None)]
    assert _host_side(chunks) == [b"tar-1", b"tar-2"]
    captured = capfdbinary.readouterr()
    assert captured.out == b"out\xff" and captured.err == b"err\n"


@pytest.mark.parametrize("stream, message", [
    (b"not frames at all", "garbled"),
    (_frame(Frame.STDOUT, b"ok")[:-1], "broke off inside a frame"),
])
def test_the_host_refuses_a_broken_stream_in_one_line(stream, message):
    from nbic.run import SessionError
    with pytest.raises(SessionError, match=message):
        _host_side([(stream, None)])


def test_a_stream_that_ends_without_the_result_says_so_and_writes_nothing(tmp_path):
    from nbic.cpio.compress import parse_compression
    from nbic.run import RunConfig, SessionError, _collect
    from nbic.tarstream import tar_members

    output = tmp_path / "never.cpio"
    config = RunConfig(output=str(output), compression=parse_compression("none"))
    with pytest.raises(SessionError, match="without a result; its messages are above"):
        _collect(config, tar_members(run_framed([_frame(Frame.END)])),
                 lambda: "; its messages are above")
    assert list(tmp_path.iterdir()) == []

