"""`nbic verify IMAGE (--script FILE | -- CMD...) [--rootfs SRC]`: the replay check.

The image's contents alone become a root: imported once into a volume named
by the image's digest (like a rootfs), then mounted read-only under an
overlay with the mounts a session gets. The check runs there under strace.
It passes when the check exits 0; otherwise the report shows the check's
output and the paths it looked up and did not find, and, with --rootfs, which
of those the reference rootfs has: the files to add.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import typing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from nbic import engine, rootfs, serial
from nbic.agent.protocol import (
    CACHE,
    CHECK,
    IMAGE_CACHE,
    IMAGE_INPUT,
    IMPORT_DIR,
    INPUT_DIR,
    OUTPUT_DIR,
    RESULT_FILE,
    Replay,
    Request,
    Result,
    Session,
    Task,
    agent_command,
)
from nbic.cpio.entry import FileType
from nbic.cpio.image import open_image
from nbic.cpio.newc import NewcWriter
from nbic.errors import NbicError, UsageError
from nbic.lock import sha256_file

log = logging.getLogger("nbic")

HELP = "replay a check on an image's contents alone, and say what is missing"
IMAGE_VOLUME_PREFIX = "nbic-image-"


class VerifyError(NbicError):
    """The check failed on the image alone."""


@dataclass(frozen=True)
class VerifyConfig:
    image: str
    script: str | None = None
    command: tuple[str, ...] = ()
    rootfs: str | None = None


def verify(config: VerifyConfig) -> Replay:
    if not config.script and not config.command:
        raise UsageError("give the check: --script FILE or -- COMMAND [ARGS...]")
    digest = sha256_file(Path(config.image))
    client = engine.connect()
    engine.remove_stale_containers(client)  # of runs killed outright (kill -9)
    builder = engine.builder_image(client)
    volumes = {_ensure_image_volume(client, builder, config.image, digest):
               {"bind": IMAGE_CACHE, "mode": "ro"}}
    if config.rootfs:
        source = rootfs.parse_source(config.rootfs)
        volumes[rootfs.ensure(client, source, builder)] = {"bind": CACHE, "mode": "ro"}
    request = Request(Task.REPLAY, session=Session(command=config.command,
                                                   script=config.script is not None),
                      with_rootfs=config.rootfs is not None)
    with engine.container(client, builder, agent_command(request), role="verify",
                          volumes=volumes, hostname="nbic",
                          **engine.agent_privileges()) as created:
        if config.script:
            engine.put_files(created, INPUT_DIR, {CHECK: Path(config.script)})
        status = engine.run_to_end(created, "replaying the check")
        result = agent_result(created, status)
    return result.replays[-1]


def agent_result(created: Any, status: int) -> Result:
    """The agent's result file from a stopped container, its messages shown."""
    try:
        with engine.fetch_file(created, f"{OUTPUT_DIR}/{RESULT_FILE}") as stream:
            result = serial.loads(Result, stream.read().decode("utf-8"))
    except engine.EngineError:
        raise NbicError(f"the agent ended ({status}) without a result:\n"
                        f"{engine.logs_tail(created)}") from None
    log.debug("agent phases (s): %s", result.seconds)
    for notice in result.notices:
        log.info("%s", notice)
    for warning in result.warnings:
        log.warning("%s", warning)
    if not result.ok:
        raise NbicError(result.error)
    return result


def _ensure_image_volume(client: Any, builder: str, image: str, digest: str) -> str:
    """A volume holding the image unpacked under rootfs/, made once per image digest."""
    name = IMAGE_VOLUME_PREFIX + digest[:16]
    if engine.find_volume(client, name) is not None:
        return name
    log.info("unpacking %s into volume %s (once)", image, name)
    volume = engine.create_volume(client, name, {"nbic.image": image[-200:],
                                                 "nbic.digest": digest}, role="image")
    try:
        with tempfile.TemporaryDirectory(prefix="nbic-verify-") as scratch:
            plain = Path(scratch) / IMAGE_INPUT
            _write_plain(image, plain)
            request = Request(Task.IMPORT_IMAGE)
            with engine.container(client, builder, agent_command(request), role="import",
                                  volumes={name: {"bind": IMPORT_DIR, "mode": "rw"}},
                                  **engine.agent_privileges()) as created:
                engine.put_files(created, INPUT_DIR, {IMAGE_INPUT: plain})
                agent_result(created, engine.run_to_end(created, "unpacking the image"))
    except BaseException:
        engine.remove_volume(volume)  # never a half-unpacked cache entry
        raise
    return name


def _write_plain(image: str, target: Path) -> None:
    """The image's entries as one uncompressed newc archive, as they come (later
    names still win); hardlink groups keep apart across the image's segments."""
    inodes: dict[object, int] = {}
    with open_image(image) as reader, open(target, "wb") as out:
        writer = NewcWriter(out)
        for entry in reader:
            if entry.link_key is not None:
                ino = inodes.setdefault(entry.link_key, len(inodes) + 1)
                entry = replace(entry, ino=ino)
            # The reader hands out the current entry's data like a file.
            data = typing.cast(BinaryIO, reader) if entry.type is FileType.FILE else None
            writer.add(entry, data)
        writer.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="the image to check (any compression)")
    parser.add_argument("--script", metavar="FILE", help="the check: a script to run")
    parser.add_argument("--rootfs", metavar="SRC",
                        help="the reference rootfs, to say which missing paths it has")
    parser.add_argument("command", nargs="*",
                        help="-- COMMAND [ARGS...]: the check, run in the image")


def run(args: argparse.Namespace) -> int:
    command = tuple(args.command)
    if command and args.script:
        raise UsageError("give --script or a command, not both")
    replay = verify(VerifyConfig(args.image, args.script, command, args.rootfs))
    if replay.status == 0:
        log.info("verify: passed: the check exited 0 on %s alone", args.image)
        return 0
    print(describe_failed_replay(replay, rootfs_known=args.rootfs is not None))
    return 1


def describe_failed_replay(replay: Replay, *, rootfs_known: bool = True) -> str:
    lines = [f"the check failed on the image alone (exit status {replay.status})"]
    if replay.output.strip():
        lines += ["--- the check's output (tail) ---", replay.output.rstrip()]
    to_add = [lookup for lookup in replay.missing if lookup.in_rootfs]
    others = [lookup for lookup in replay.missing if not lookup.in_rootfs]
    if to_add:
        lines.append("--- looked up, not in the image, and in the rootfs: the files to add "
                     "(or use nbic run --fix) ---")
        lines += [f"{lookup.path}  (by {lookup.program})" for lookup in to_add]
    if others:
        what = "not in the rootfs either" if rootfs_known else "give --rootfs to say which " \
            "the reference rootfs has"
        lines.append(f"--- looked up and not found ({what}): {len(others)} ---")
        lines += [f"{lookup.path}  (by {lookup.program})" for lookup in others[:40]]
        if len(others) > 40:
            lines.append(f"... and {len(others) - 40} more")
    return "\n".join(lines)
