"""`nbic build images/NAME [-o OUTDIR] [--kernel K] [--locked]`: an image from its
recipe (nbic.recipe), proved and locked.

The recipe of a build: load the recipe, run its session with the replay check
(`run --verify`, or `--fix`), write OUTDIR/NAME.cpio.zst and its report
(OUTDIR/NAME.report.json: every entry and why it is there), boot it in QEMU
when a kernel is known and judge the console, then write images/NAME/nbic.lock.

`--locked` runs no session: it makes the image again from the lock (a run with
no tracer, the locked paths as its file list) and keeps it only if every
entry and then the image's bytes are what the lock says. `nbic build images/`
builds every recipe under it and says at the end which passed.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from nbic import __version__, engine, lock, rootfs, serial
from nbic import recipe as recipes
from nbic.agent.protocol import Session, Tracer
from nbic.boot import BootConfig, BootOutcome, BootResult, boot, format_result
from nbic.errors import BuildError, NbicError
from nbic.kernel import parse_kernel_source, resolve_kernel
from nbic.recipe import RecipeDir
from nbic.run import RunConfig, RunResult, compile_session

log = logging.getLogger("nbic")

HELP = "build images from recipes (images/NAME/recipe.toml): session, replay check, boot, lock"
DEFAULT_OUTPUT = "out"
# What a locked rebuild runs in place of the session: nothing that reads the rootfs.
NO_SESSION = ("true",)


@dataclass(frozen=True)
class BuildConfig:
    output_dir: Path = Path(DEFAULT_OUTPUT)
    kernel: str | None = None  # for the boot check; else the recipe's
    locked: bool = False
    boot: bool = True


@dataclass(frozen=True)
class Built:
    name: str
    image: Path
    image_bytes: int
    raw_bytes: int
    entries: int
    compile_seconds: float  # the session, replay check and image (or the locked rebuild)
    replay_seconds: float  # the replay check alone (0 without one)
    boot: BootResult | None


def build(directory: Path, config: BuildConfig) -> Built:
    recipe = recipes.load(directory)
    kernel = _kernel(config, recipe) if config.boot else None
    config.output_dir.mkdir(parents=True, exist_ok=True)
    image = config.output_dir / recipe.image_name
    report = config.output_dir / f"{recipe.name}.report.json"
    started = time.monotonic()
    if config.locked:
        locked = lock.load(recipe.lock_file)
        outcome = _rebuild(recipe, locked, image, report)
    else:
        outcome, locked = _compile(recipe, image, report)
    compile_seconds = time.monotonic() - started
    booted = None
    if kernel is not None:
        booted = _boot_check(recipe, image, kernel)
    if not config.locked and lock.write(recipe.lock_file, locked):
        log.info("wrote %s", recipe.lock_file)
    return Built(recipe.name, image, image.stat().st_size, outcome.raw_bytes,
                 outcome.result.entries, compile_seconds,
                 outcome.result.seconds.get("verify", 0.0), booted)


def _source_and_digest(recipe: RecipeDir) -> tuple[rootfs.RootfsSource, str]:
    """The recipe's rootfs (a Dockerfile built into its image now, once) and the
    digest of the whole rootfs, which the lock records."""
    source = recipe.rootfs_source()
    client = engine.connect()
    if source.kind is rootfs.SourceKind.DOCKERFILE:
        source = rootfs.built(client, source)
    return source, rootfs.cache_key(client, source)


def _compile(recipe: RecipeDir, image: Path, report: Path) -> tuple[RunResult, lock.Lock]:
    source, digest = _source_and_digest(recipe)
    selection = recipe.selection()
    compression = recipe.compression()
    outcome = compile_session(RunConfig(
        output=str(image), compression=compression, rootfs=str(source),
        session=Session(command=recipe.recipe.command, script=recipe.script is not None,
                        tracer=recipe.recipe.tracer),
        selection=selection, script=_text(recipe.script), check=_text(recipe.check),
        report=str(report)))
    if outcome.result.session_status:
        raise BuildError(f"{recipe.name}: the session exited with status "
                         f"{outcome.result.session_status}")
    locked = lock.make(recipe.name, recipe.recipe.rootfs or rootfs.DEFAULT_SOURCE, digest,
                       selection, compression, image, report, recipe.directory)
    if written := lock.session_written(locked.entries):
        log.warning("%s: the image holds %d path(s) the session wrote, which a --locked "
                    "rebuild cannot make (exclude them, or remove them in the session): %s",
                    recipe.name, len(written), ", ".join(written[:10]))
    return outcome, locked


def _rebuild(recipe: RecipeDir, locked: lock.Lock, image: Path, report: Path) -> RunResult:
    """The locked image again, from the rootfs, without a session; written only if
    it is the locked one, entry by entry and byte for byte."""
    if locked.nbic != __version__:
        log.warning("%s was written by nbic %s, this is %s: the bytes may differ",
                    recipe.lock_file, locked.nbic, __version__)
    current = lock.portable(recipe.selection(), recipe.directory)
    if serial.to_data(current) != serial.to_data(locked.selection):
        log.warning("%s: the recipe's selection changed since its lock was written; "
                    "--locked builds what the lock says", recipe.name)
    source, digest = _source_and_digest(recipe)
    if digest != locked.rootfs.digest:
        log.info("%s: the rootfs is not the one locked as a whole (a new debootstrap or "
                 "image); the locked paths decide", recipe.name)
    candidate = image.with_name(f".{image.name}.locked")
    try:
        outcome = compile_session(RunConfig(
            output=str(candidate), compression=locked.compression, rootfs=str(source),
            session=Session(command=NO_SESSION, script=recipe.script is not None,
                            tracer=Tracer.NONE),
            selection=lock.rebuild_selection(locked, recipe.directory),
            script=_text(recipe.script), report=str(report)))
        rebuilt = lock.image_entries(candidate, lock.origins(report))
        differences = lock.differences(locked.entries, rebuilt)
        if differences:
            raise BuildError(f"{recipe.name}: the rootfs does not give what "
                             f"{recipe.lock_file} locks ({len(differences)} path(s)):\n"
                             f"{lock.describe(differences)}\nno image was written; build "
                             "without --locked to lock what the rootfs gives now")
        digest = lock.sha256_file(candidate)
        if digest != locked.image.sha256:
            raise BuildError(f"{recipe.name}: every locked entry matches, but the image's "
                             f"bytes differ from {recipe.lock_file} (sha256 {digest}, locked "
                             f"{locked.image.sha256}): the compressor or nbic version differs "
                             f"(locked with nbic {locked.nbic})")
        os.replace(candidate, image)
    finally:
        candidate.unlink(missing_ok=True)
    log.info("%s: the locked rebuild is byte for byte the locked image (sha256 %s)",
             recipe.name, locked.image.sha256)
    return outcome


def _kernel(config: BuildConfig, recipe: RecipeDir) -> Path | None:
    """The kernel for the boot check: --kernel (a file from the current directory),
    else the recipe's (a file from its directory); either may be a package source
    such as debian:bookworm:linux-image-amd64, fetched once and cached. None: no
    boot check."""
    if config.kernel is not None:
        text = config.kernel
    elif recipe.recipe.boot.kernel is not None:
        text = recipe.recipe.boot.kernel
        if parse_kernel_source(text) is None:
            text = str(recipe.directory / text)
    else:
        log.info("%s: no kernel (give --kernel or [boot] kernel): no boot check", recipe.name)
        return None
    return resolve_kernel(text).boot_kernel


def _boot_check(recipe: RecipeDir, image: Path, kernel: Path) -> BootResult:
    check = recipe.recipe.boot
    result = boot(image, BootConfig(kernel=kernel, append=check.append,
                                    memory_mb=check.memory, timeout=check.timeout,
                                    expect=check.expect))
    log.info("%s: %s", recipe.name, format_result(result, tail_lines=0))
    if result.outcome is not BootOutcome.PASSED:
        raise BuildError(f"{recipe.name}: the boot check failed: {format_result(result)}")
    return result


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def summary(built: Built) -> str:
    booted = "no boot check" if built.boot is None else f"boot {built.boot.seconds:.1f}s"
    return (f"{built.name}: passed: {built.image} {built.image_bytes} bytes "
            f"({built.raw_bytes} raw, {built.entries} entries); build "
            f"{built.compile_seconds:.1f}s (replay check {built.replay_seconds:.1f}s), "
            f"{booted}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipes", metavar="DIR", type=Path,
                        help="a recipe directory (images/NAME), or a directory of them "
                        "(images/): every recipe in it, in name order")
    parser.add_argument("-o", "--output-dir", metavar="OUTDIR", type=Path,
                        default=Path(DEFAULT_OUTPUT),
                        help="where the images and reports go (default: %(default)s)")
    parser.add_argument("--kernel", metavar="K",
                        help="kernel for the boot check (overrides the recipe's)")
    parser.add_argument("--no-boot", action="store_true", help="skip the boot check")
    parser.add_argument("--locked", action="store_true",
                        help="rebuild from images/NAME/nbic.lock without a session; fail, "
                        "naming the paths, unless the result is the locked image")


def run(args: argparse.Namespace) -> int:
    config = BuildConfig(output_dir=args.output_dir, kernel=args.kernel, locked=args.locked,
                         boot=not args.no_boot)
    directories = recipes.find(args.recipes)
    if len(directories) == 1:
        print(summary(build(directories[0], config)), flush=True)
        return 0
    passed: list[Built] = []
    failed: list[tuple[str, str]] = []
    for directory in directories:
        log.info("building %s", directory)
        try:
            passed.append(build(directory, config))
        except NbicError as exc:
            log.error("%s", exc)
            failed.append((directory.name, str(exc).splitlines()[0]))
    for built in passed:
        print(summary(built))
    for name, why in failed:
        print(f"{name}: FAILED: {why}")
    print(f"{len(passed)} passed, {len(failed)} failed", flush=True)
    return 1 if failed else 0
