"""The cpio tools: list, extract, du, diff and cat for initramfs images.

Every tool reads whatever nbic.cpio.image.ImageReader reads: one cpio archive
or several concatenated segments, plain or compressed, from a file or from
standard input ("-"). Where a name occurs more than once, the last occurrence
wins, as when the kernel unpacks the image.

Each tool is a module with HELP, add_arguments(parser) and run(args) -> exit
status, like the stages; nbic.cli turns them into `nbic cpio NAME` and the
`cpio-NAME` scripts, importing only the one a command line names.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Tool name -> its module in this package.
TOOLS = {"list": "listing", "extract": "extract", "du": "du", "diff": "diff", "cat": "cat"}


def tool(name: str) -> ModuleType:
    return importlib.import_module(f"nbic.tools.{TOOLS[name]}")
