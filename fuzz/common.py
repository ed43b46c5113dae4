"""What every fuzz target shares: the rule that any input ends in success or an
NbicError (anything else escaping is a crash), and running under atheris.

A target module defines `one_input(data: bytes) -> None` and calls `main`.
Run one by hand (see README.md):
    .venv/bin/python fuzz/fuzz_reader.py -max_total_time=600 fuzz/work/reader fuzz/corpus/reader
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from contextlib import suppress

import atheris

with atheris.instrument_imports(include=["nbic"]):
    from nbic.errors import NbicError


def main(one_input: Callable[[bytes], None]) -> None:
    # The targets' warnings (a hardlink left out, ...) are expected noise here.
    logging.getLogger("nbic").setLevel(logging.ERROR)

    def test_one_input(data: bytes) -> None:
        with suppress(NbicError):  # a clear refusal is a good outcome for a bad input
            one_input(data)

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
