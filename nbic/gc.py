"""`nbic gc [--dry-run] [--all]`: remove what nbic made and no longer needs.

* builder images other than the one this nbic's agent needs;
* rootfs volumes whose import never completed, or whose source is gone or has
  changed (a tar or directory changed or removed, a Docker image retagged or
  removed), and image volumes of `nbic verify` whose image is gone or changed;
  with --all, every nbic volume;
* containers of nbic runs on this host that were killed outright (their
  process is gone);
* never a volume or image a container still uses.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path
from typing import Any

from nbic import engine, rootfs
from nbic.agent.protocol import READY_MARK
from nbic.errors import NbicError

log = logging.getLogger("nbic")

HELP = "remove builder images and cached volumes nbic no longer needs"


def _unready(client: Any, builder: str, names: list[str]) -> set[str]:
    """The volumes among `names` without the mark of a completed import."""
    if not names:
        return set()
    volumes = {name: {"bind": f"/v/{index}", "mode": "ro"} for index, name in enumerate(names)}
    script = "; ".join(f"[ -e /v/{index}/{READY_MARK} ] || echo {index}"
                       for index in range(len(names)))
    with engine.container(client, builder, ["sh", "-c", script], role="gc",
                          volumes=volumes, network_mode="none") as helper:
        status = engine.run_to_end(helper, "checking the cached volumes")
        if status:
            raise NbicError(f"checking the cached volumes failed ({status})")
        output = engine.logs_tail(helper, lines=len(names) + 1)
    return {names[int(line)] for line in output.split()}


def _old_layout(volume: Any) -> str | None:
    """A rootfs volume of a layout this nbic no longer reads is imported anew."""
    labels = volume.attrs.get("Labels") or {}
    if "nbic.image" in labels or volume.name.startswith(
            f"{rootfs.VOLUME_PREFIX}{rootfs.VOLUME_LAYOUT}-"):
        return None
    return "made by an older nbic (a layout without the rootfs index)"


def _stale_source(client: Any, volume: Any) -> str | None:
    """Why a volume's source no longer gives its content, or None if it still may."""
    labels = volume.attrs.get("Labels") or {}
    digest = labels.get("nbic.digest", "")
    if "nbic.image" in labels:
        path = Path(labels["nbic.image"])
        if not path.is_file():
            return f"its image {path} is gone"
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            return f"its image {path} has changed"
        return None
    text = labels.get("nbic.source", "")
    if text.startswith("debootstrap:") or not text:
        return None
    if text.startswith("docker:"):
        try:
            current = engine.image_id(client, text.removeprefix("docker:"))
        except engine.EngineError:
            return f"its Docker image {text} is gone"
        return None if current.removeprefix("sha256:") == digest else \
            f"its Docker image {text} now names another image"
    if not Path(text).exists():
        return f"its source {text} is gone"
    if rootfs.cache_key(client, rootfs.parse_source(text)) != digest:
        return f"its source {text} has changed"
    return None


def collect(client: Any, *, everything: bool) -> list[tuple[str, Any, str]]:
    """(kind, object, why) for everything gc would remove."""
    doomed: list[tuple[str, Any, str]] = [
        ("container", item, f"its nbic run (pid {owner.pid}) is gone")
        for item, owner in engine.stale_containers(client)]
    builder = engine.builder_image(client)
    for image in engine.list_images(client, "builder"):
        if builder not in image.tags:
            doomed.append(("image", image, "a builder image of another agent version"))
    volumes = [volume for role in ("rootfs", "image")
               for volume in engine.list_volumes(client, role)
               if not engine.volume_in_use(client, volume.name)]
    unready = _unready(client, builder, [volume.name for volume in volumes])
    for volume in volumes:
        why = "--all" if everything else "its import never completed" \
            if volume.name in unready else _old_layout(volume) or _stale_source(client, volume)
        if why:
            doomed.append(("volume", volume, why))
    return doomed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="only say what would go")
    parser.add_argument("--all", action="store_true",
                        help="every cached volume not in use, whatever its source")


def run(args: argparse.Namespace) -> int:
    client = engine.connect()
    for kind, item, why in collect(client, everything=args.all):
        name = item.name if kind == "volume" else item.id[:12] if kind == "container" \
            else ", ".join(item.tags) or item.short_id
        if args.dry_run:
            print(f"would remove {kind} {name}: {why}")
            continue
        if kind == "volume":
            engine.remove_volume(item)
        elif kind == "container":
            engine.remove_container(item)
        else:
            engine.remove_image(client, item)
        print(f"removed {kind} {name}: {why}")
    return 0
