"""Files a program needs but only looks up, which a file tracer never sees.

fanotify reports opens and executions, never stat(), access() or readlink().
Most lookups that never open a file do not matter to the image (failed
probes, the directories on the way, which the closure adds anyway); these do:

* CPython opens `pkg/__pycache__/mod.cpython-311.pyc` but only *stats*
  `pkg/mod.py` to validate the cache, and ignores a cache whose source is
  missing: the `.py` must be in the image. (A sourceless `mod.pyc` beside
  where `mod.py` would be is opened, so it needs no rule.)
* CPython's startup (getpath) finds its prefix by the landmark
  `lib/pythonX.Y/os.py` and its exec prefix by the directory
  `lib/pythonX.Y/lib-dynload`; without the latter it warns on every start.

Each rule maps names already chosen to further paths, with the reason shown
in the report. `nbic verify --fix` covers what no rule foresees.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from nbic.cpio.entry import FileType
from nbic.tree import Tree

_CACHED = re.compile(r"^(?P<dir>(?:.*/)?)__pycache__/(?P<module>[^/.]+)\.[^/]+\.pyc$")
_STDLIB = re.compile(r"^(?P<lib>(?:.*/)?lib/python3\.\d+)/")


def lookups(tree: Tree, names: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(path, reason) for every file that a chosen name implies."""
    stdlibs: set[str] = set()
    for name in names:
        cached = _CACHED.match(name)
        if cached:
            source = f"{cached['dir']}{cached['module']}.py"
            entry = tree.get(source)
            if entry is not None and entry.type is FileType.FILE:
                yield "/" + source, f"rule: CPython checks the source of its cache /{name}"
        stdlib = _STDLIB.match(name)
        if stdlib and stdlib["lib"] not in stdlibs:
            stdlibs.add(stdlib["lib"])
            lib = stdlib["lib"]
            for landmark in ("os.py", "lib-dynload"):
                if f"{lib}/{landmark}" in tree:
                    yield f"/{lib}/{landmark}", "rule: a landmark CPython looks up at startup"
