"""`nbic build` against the real engine and a real kernel: the shipped recipes
built, replay-checked and booted, then rebuilt --locked to the same bytes; a
lock on a fresh machine (another rootfs with the same locked files); a rootfs
that changed; a recipe with a needed library excluded; what a session wrote.

Recipes are copied into a temporary directory first: a build writes the lock
beside its recipe, and a test must not rewrite the repository's locks."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nbic import lock
from nbic import recipe as recipes
from nbic.kernel import parse_kernel_source

REPO = Path(__file__).resolve().parent.parent
SHIPPED = ("bash", "python", "rescue")


def nbic(*args, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "nbic.cli", *map(str, args)], cwd=REPO,
                            capture_output=True, text=True)
    if check and result.returncode:
        raise AssertionError(f"nbic {args} failed ({result.returncode}):\n{result.stderr}")
    return result


def copy_recipe(name: str, target: Path) -> Path:
    shutil.copytree(REPO / "images" / name, target / name)
    return target / name


@pytest.mark.boot
@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_recipe_builds_boots_and_rebuilds_locked_to_the_same_bytes(
        docker_engine, kernel, tmp_path, name):
    recipe = copy_recipe(name, tmp_path)
    out = tmp_path / "out"
    # bash boots the recipe's own kernel, a package source (fetched once, cached),
    # as a new user's build does; the others the kernel ci/setup prepared.
    assert parse_kernel_source(recipes.load(recipe).recipe.boot.kernel or "")
    built = nbic("build", recipe, "-o", out, *(() if name == "bash" else ("--kernel", kernel)))
    image = out / f"{name}.cpio.zst"
    assert f"{name}: passed: {image}" in built.stdout
    assert "the check passed on the image alone" in built.stderr
    assert f"{name}: boot PASSED" in built.stderr
    locked = lock.load(recipe / "nbic.lock")
    assert locked.image.sha256 == lock.sha256_file(image)
    assert locked.image.bytes == image.stat().st_size
    report = json.loads((out / f"{name}.report.json").read_text())
    assert sorted(item["path"] for item in report["entries"]) == \
        [item.path for item in locked.entries]
    assert not lock.session_written(locked.entries)
    if name == "bash":
        assert image.stat().st_size <= 1_800_000  # the seed's was 3.9 MB
    again = tmp_path / "again"
    rebuilt = nbic("build", recipe, "-o", again, "--locked", "--no-boot")
    assert "none tracer" in rebuilt.stderr and "byte for byte" in rebuilt.stderr
    assert (again / f"{name}.cpio.zst").read_bytes() == image.read_bytes()
    assert not list(again.glob(".*"))


@pytest.fixture(scope="module")
def tiny_rootfs(rootfs_dir, tmp_path_factory) -> Path:
    """A rootfs of a few MB (bash, cat, ls, true, their libraries and /etc/greeting),
    made from the bookworm one: quick to import again and again."""
    work = tmp_path_factory.mktemp("tiny")
    image = work / "tiny.cpio"
    nbic("pack", "--rootfs", rootfs_dir, "--init", "none", "-o", image,
         *(f"--include-bin=/usr/bin/{program}" for program in ("bash", "cat", "ls", "true")))
    nbic("cpio", "extract", image, work / "rootfs")
    (work / "rootfs/etc").mkdir(exist_ok=True)
    (work / "rootfs/etc/greeting").write_text("hello from the lock test\n")
    return work / "rootfs"


def tiny_recipe(directory: Path, rootfs: Path, session: str) -> Path:
    directory.mkdir(parents=True)
    shutil.copytree(rootfs, directory / "rootfs", symlinks=True)
    (directory / "session.sh").write_text("#!/usr/bin/bash\nset -e\n" + session)
    (directory / "session.sh").chmod(0o755)
    (directory / "recipe.toml").write_text('rootfs = "rootfs"\nscript = "session.sh"\n')
    return directory


def test_a_lock_holds_on_another_rootfs_with_the_same_files_and_names_what_changed(
        docker_engine, tiny_rootfs, tmp_path):
    recipe = tiny_recipe(tmp_path / "tiny", tiny_rootfs,
                         "cat /etc/greeting\nls /usr/bin\necho SESSION-OK\n")
    first = tmp_path / "first"
    built = nbic("build", recipe, "-o", first)
    assert "SESSION-OK" in built.stdout and "no boot check" in built.stdout
    image = (first / "tiny.cpio.zst").read_bytes()
    locked = lock.load(recipe / "nbic.lock")
    paths = {item.path for item in locked.entries}
    assert {"/etc/greeting", "/usr/bin/cat", "/usr/bin/ls", "/init"} <= paths
    assert "/usr/bin/true" not in paths  # in the rootfs, never used

    # A fresh machine: another rootfs as a whole (a new file, new mtimes), the
    # same locked files.
    (recipe / "rootfs/etc/machine-id").write_text("another machine\n")
    subprocess.run(["touch", "-d", "2001-01-01", *(recipe / "rootfs/usr/bin").iterdir()],
                   check=True)
    second = tmp_path / "second"
    rebuilt = nbic("build", recipe, "-o", second, "--locked")
    assert "not the one locked as a whole" in rebuilt.stderr
    assert (second / "tiny.cpio.zst").read_bytes() == image

    # A rootfs whose locked files changed: the paths are named, nothing is written.
    (recipe / "rootfs/etc/greeting").write_text("changed\n")
    (recipe / "rootfs/usr/bin/ls").unlink()
    third = tmp_path / "third"
    refused = nbic("build", recipe, "-o", third, "--locked", check=False)
    assert refused.returncode == 1, refused.stderr
    assert "/etc/greeting: size 25 -> 8, different content (sha256)" in refused.stderr
    assert "/usr/bin/ls: missing (the rootfs no longer gives it)" in refused.stderr
    assert not (third / "tiny.cpio.zst").exists() and not list(third.glob(".*"))
    assert lock.load(recipe / "nbic.lock") == locked  # --locked never rewrites it


def test_what_the_session_wrote_is_named_and_a_locked_rebuild_refuses_it(
        docker_engine, tiny_rootfs, tmp_path):
    recipe = tiny_recipe(tmp_path / "writer", tiny_rootfs,
                         "echo generated >/etc/state\ncat /etc/state\n")
    built = nbic("build", recipe, "-o", tmp_path / "out")
    assert "1 path(s) the session wrote" in built.stderr and "/etc/state" in built.stderr
    state = next(item for item in lock.load(recipe / "nbic.lock").entries
                 if item.path == "/etc/state")
    assert state.origin is lock.EntryOrigin.SESSION
    refused = nbic("build", recipe, "-o", tmp_path / "again", "--locked", check=False)
    assert refused.returncode == 1
    assert "/etc/state: missing (the session wrote it" in refused.stderr


def test_a_needed_library_excluded_fails_the_build_naming_it(docker_engine, tiny_rootfs,
                                                             tmp_path):
    images = tmp_path / "images"
    tiny_recipe(images / "good", tiny_rootfs, "cat /etc/greeting\n")
    bad = copy_recipe("bash", images)
    committed = (bad / "nbic.lock").read_text()
    text = (bad / "recipe.toml").read_text()
    assert "exclude = [" in text
    (bad / "recipe.toml").write_text(
        text.replace("exclude = [", 'exclude = ["*/libtinfo.so*", '))
    out = tmp_path / "out"
    result = nbic("build", images, "-o", out, "--no-boot", check=False)
    assert result.returncode == 1, result.stderr
    assert "the check failed on the image alone" in result.stderr
    assert "libtinfo.so.6: cannot open shared object file" in result.stderr
    to_add = result.stderr.split("the files to add")[1].split("---")[1]
    assert "/usr/lib/x86_64-linux-gnu/libtinfo.so.6  (by " in to_add
    assert "bash: FAILED: " in result.stdout and "good: passed: " in result.stdout
    assert result.stdout.rstrip().endswith("1 passed, 1 failed")
    assert not (out / "bash.cpio.zst").exists() and (out / "good.cpio.zst").exists()
    assert (bad / "nbic.lock").read_text() == committed
