"""The atheris fuzz targets (fuzz/): each runs for a few seconds from its seed
corpus, the CI share of the fuzzing (longer runs are by hand: fuzz/README.md).
Any input must end in success or an NbicError; libFuzzer saves anything else
(an exception, a hang, memory over the limit) as an artifact, and fails."""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nbic.cpio.image import ImageReader
from nbic.cpio.spec import parse_spec
from nbic.tree import TarTree

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
SECONDS = {"reader": 20, "tar": 20, "spec": 10}
RSS_LIMIT_MIB = 512


def _need_atheris() -> None:
    if importlib.util.find_spec("atheris") is None:
        message = "atheris is not installed (pip install -e '.[fuzz]'; ci/setup does)"
        if os.environ.get("CI") or os.environ.get("NBIC_TEST_DOCKER"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.parametrize("name", SECONDS)
def test_a_short_fuzz_run_finds_nothing(tmp_path, name):
    _need_atheris()
    learnt = tmp_path / "corpus"
    learnt.mkdir()
    result = subprocess.run(
        [sys.executable, str(FUZZ / f"fuzz_{name}.py"), f"-max_total_time={SECONDS[name]}",
         f"-rss_limit_mb={RSS_LIMIT_MIB}", "-timeout=30", f"-artifact_prefix={tmp_path}/",
         str(learnt), str(FUZZ / "corpus" / name)],
        capture_output=True, text=True, timeout=SECONDS[name] + 300)
    artifacts = [path.name for path in tmp_path.iterdir() if path.is_file()]
    assert result.returncode == 0 and not artifacts, \
        f"{artifacts}\n{result.stderr[-4000:]}"
    assert "Done" in result.stderr  # it did run


@pytest.mark.parametrize("seed", sorted((FUZZ / "corpus" / "reader").iterdir()),
                         ids=lambda path: path.name)
def test_the_reader_seeds_are_valid_images(seed):
    # Mutating a valid input only explores the parser if the input parses.
    reader = ImageReader(io.BytesIO(seed.read_bytes()), seed.name)
    assert any(entry.name for entry in reader)


@pytest.mark.parametrize("seed", sorted((FUZZ / "corpus" / "tar").iterdir()),
                         ids=lambda path: path.name)
def test_the_tar_seeds_are_valid_rootfs_tars(seed, caplog):
    tree = TarTree(seed)
    try:
        tree.prefetch(["init"])
        with tree.open("init") as init:
            assert init.read().startswith(b"#!")
        assert tree.resolve("/bin/sh").target == "usr/bin/sh"
    finally:
        tree.close()
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


@pytest.mark.parametrize("seed", sorted((FUZZ / "corpus" / "spec").iterdir()),
                         ids=lambda path: path.name)
def test_the_spec_seeds_parse(seed):
    parse_spec(seed.read_text(), env={"NBIC_ROOT": "/r", "X": "/x"})
