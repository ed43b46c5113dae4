"""The layering the design asks for, checked on the source itself."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "nbic"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_engine_talks_to_docker():
    for path in PACKAGE.rglob("*.py"):
        modules = imported_modules(path)
        uses_sdk = any(name == "docker" or name.startswith("docker.") for name in modules)
        assert not uses_sdk or path.name == "engine.py", path
        # No `docker` CLI either: DOCKER_HOST must work through the SDK alone.
        if "subprocess" in modules:
            assert '"docker"' not in path.read_text(), path


def test_the_agent_runs_on_the_standard_library_alone():
    # -S: no site-packages at all, as in the builder image.
    result = subprocess.run(
        [sys.executable, "-S", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
         "import nbic.agent.__main__, nbic.agent.fanotify, nbic.agent.strace; "
         "print(sorted(m for m in sys.modules if m.split('.')[0] in "
         "('docker', 'zstandard', 'lz4', 'requests')))", str(PACKAGE.parent)],
        capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_commands_that_never_talk_to_docker_do_not_import_it():
    result = subprocess.run(
        [sys.executable, "-c", "import sys, nbic.cli; nbic.cli.build_parser(); "
         "import nbic.tools; [nbic.tools.tool(n) for n in nbic.tools.TOOLS]; "
         "print('docker' in sys.modules)"],
        capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
