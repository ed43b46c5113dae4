"""Fuzz target: the gen_init_cpio spec-list parser, on any bytes (decoded as
`nbic pack --spec` decodes a list: UTF-8, other bytes kept as escapes)."""

from __future__ import annotations

import atheris
from common import main

with atheris.instrument_imports(include=["nbic"]):
    from nbic.cpio.spec import parse_spec

ENVIRONMENT = {"NBIC_ROOT": "/root", "X": "/x"}


def one_input(data: bytes) -> None:
    parse_spec(data.decode("utf-8", "surrogateescape"), source="fuzz input",
               env=ENVIRONMENT)


if __name__ == "__main__":
    main(one_input)
