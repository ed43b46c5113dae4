"""Recipes: `images/NAME/recipe.toml` describes one image once, so that it is
built the same way on every change (`nbic build`, nbic.build).

    rootfs = "dockerfile:Dockerfile"   # any rootfs source; relative paths from here
    script = "session.sh"              # the session (or: command = ["prog", "arg"])
    check = "check.sh"                 # the replay check (default: the script)
    verify = "check"                   # check, fix or off
    tracer = "auto"                    # as `nbic run --tracer`
    compress = "zstd:19"               # default: by the suffix
    suffix = ".cpio.zst"               # the image is OUTDIR/NAME + suffix
    epoch = 0                          # mtimes clamped to it (default: SOURCE_DATE_EPOCH, else 0)

    [selection]                        # the options of `nbic run`/`pack`, by the same names
    exclude = ["/usr/share/doc/*"]     # files-from, spec, include, exclude, include-bin,
                                       # dev, init, strict
    [boot]                             # the boot check, when a kernel is known
    expect = ["READY"]                 # console markers that must all appear
    append = "quiet"                   # kernel command line after console=ttyS0 panic=-1
    memory = 512                       # MiB
    timeout = 300                      # seconds
    kernel = "vmlinux"                 # a file, or a package source (or `build --kernel`)

The file is read with the standard library's tomllib and decoded strictly
(nbic.serial): an unknown key or a value of the wrong type is an error naming
the file and the key. The [selection] table goes through the same
nbic.selection.from_mapping as the command line's options.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbic import rootfs, serial
from nbic import selection as selections
from nbic.agent.protocol import Tracer
from nbic.cpio.archive import source_date_epoch
from nbic.cpio.compress import CompressionSpec, compression_for_path, parse_compression
from nbic.errors import NbicError, RecipeError
from nbic.selection import Selection, Verify

RECIPE_FILE = "recipe.toml"
LOCK_FILE = "nbic.lock"


@dataclass(frozen=True)
class BootCheck:
    expect: tuple[str, ...] = ()
    append: str = ""
    memory: int = 512
    timeout: float = 300.0
    kernel: str | None = None


@dataclass(frozen=True)
class Recipe:
    """recipe.toml as written."""

    rootfs: str | None = None  # default: nbic's (debootstrap:bookworm)
    script: str | None = None
    command: tuple[str, ...] = ()
    check: str | None = None
    verify: Verify = Verify.CHECK
    tracer: Tracer = Tracer.AUTO
    compress: str | None = None
    suffix: str = ".cpio.zst"
    epoch: int | None = None
    selection: dict[str, Any] = field(default_factory=dict)
    boot: BootCheck = field(default_factory=BootCheck)


@dataclass(frozen=True)
class RecipeDir:
    """A recipe with where it lives; paths in it are relative to `directory`."""

    name: str
    directory: Path
    recipe: Recipe

    @property
    def file(self) -> Path:
        return self.directory / RECIPE_FILE

    @property
    def lock_file(self) -> Path:
        return self.directory / LOCK_FILE

    @property
    def image_name(self) -> str:
        return self.name + self.recipe.suffix

    @property
    def script(self) -> Path | None:
        return self.directory / self.recipe.script if self.recipe.script else None

    @property
    def check(self) -> Path | None:
        return self.directory / self.recipe.check if self.recipe.check else self.script

    @property
    def epoch(self) -> int:
        if self.recipe.epoch is not None:
            return self.recipe.epoch
        from_environment = source_date_epoch()
        return 0 if from_environment is None else from_environment

    def compression(self) -> CompressionSpec:
        spec = parse_compression(self.recipe.compress) if self.recipe.compress \
            else compression_for_path(self.recipe.suffix)
        # The level the lock records: a later default must not change the bytes.
        return CompressionSpec(spec.method, spec.effective_level)

    def rootfs_source(self) -> rootfs.RootfsSource:
        return rootfs.parse_source(self.recipe.rootfs, base=self.directory)

    def selection(self) -> Selection:
        try:
            return selections.from_mapping(self.recipe.selection, verify=self.recipe.verify,
                                           epoch=self.epoch, base=self.directory,
                                           where="selection.")
        except NbicError as exc:
            raise RecipeError(f"{self.file}: {exc}") from None


def load(directory: Path) -> RecipeDir:
    """The recipe in `directory`, checked: every key known and well typed, the
    files it names present."""
    path = directory / RECIPE_FILE
    try:
        with open(path, "rb") as stream:
            data = tomllib.load(stream)
    except OSError as exc:
        raise RecipeError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: {exc}") from None
    try:
        recipe = serial.from_data(Recipe, data, strict=True)
    except NbicError as exc:
        raise RecipeError(f"{path}: {exc}") from None
    loaded = RecipeDir(directory.resolve().name, directory, recipe)
    _check(loaded)
    return loaded


def _check(loaded: RecipeDir) -> None:
    recipe, where = loaded.recipe, loaded.file
    if bool(recipe.script) == bool(recipe.command):
        raise RecipeError(f"{where}: give the session as script = FILE or command = [...], "
                          "one of them")
    if recipe.verify is not Verify.OFF and loaded.check is None:
        raise RecipeError(f"{where}: verify = {recipe.verify.value!r} replays a check: give "
                          "check = FILE (a command session has no script to replay)")
    for key, path in (("script", loaded.script), ("check", loaded.check)):
        if path is not None and not path.is_file():
            raise RecipeError(f"{where}: {key}: {path} is not a file")
    if "/" in recipe.suffix or not recipe.suffix.startswith("."):
        raise RecipeError(f"{where}: suffix: {recipe.suffix!r} is not a file suffix "
                          "(e.g. '.cpio.zst')")
    if recipe.epoch is not None and recipe.epoch < 0:
        raise RecipeError(f"{where}: epoch: must not be negative")
    if recipe.boot.memory < 16 or recipe.boot.timeout <= 0:
        raise RecipeError(f"{where}: boot: memory must be at least 16 (MiB) and timeout "
                          "positive (seconds)")
    try:
        loaded.compression()
    except NbicError as exc:
        raise RecipeError(f"{where}: compress: {exc}") from None
    loaded.selection()  # its keys, types and list files


def find(path: Path) -> list[Path]:
    """The recipe directory `path`, or every directory under it holding a recipe,
    sorted by name."""
    if (path / RECIPE_FILE).is_file():
        return [path]
    found = sorted(child for child in path.iterdir() if (child / RECIPE_FILE).is_file()) \
        if path.is_dir() else []
    if not found:
        raise RecipeError(f"no {RECIPE_FILE} in {path} or in the directories in it")
    return found
