"""An installed wheel carries everything needed to build the builder image."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_wheel_builds_the_same_builder_context(tmp_path):
    # Built from a copy: setuptools keeps a build/ directory in the tree it builds,
    # and a module since removed would linger in it and in the wheel.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".hypothesis"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "-w", tmp_path, source], check=True, capture_output=True)
    wheel = next(tmp_path.glob("nbic-*.whl"))
    installed = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(installed)
    assert (installed / "nbic/builder/Dockerfile").is_file()
    digest = subprocess.run(
        # nbic from the unpacked wheel (not the checkout), its dependencies from the venv.
        [sys.executable, "-c", "import nbic.engine as e; print(e.PACKAGE_DIR); "
         "print(e.builder_context()[1])"],
        env={"PYTHONPATH": str(installed)}, cwd=tmp_path, capture_output=True, text=True,
        check=True,
    ).stdout.split()
    assert digest[0] == str(installed / "nbic")
    from nbic.engine import builder_context

    assert digest[1] == builder_context()[1]
