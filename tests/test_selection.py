"""The selection model: one object from the command line, carried to the agent as
it is, and the same image from `pack` and `run` for the same selection."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nbic import selection as selections
from nbic import serial
from nbic.agent.protocol import Request, Session, Task, Tracer
from nbic.devices import parse_device
from nbic.errors import UsageError
from nbic.selection import InitMode, Selection, Verify

REPO = Path(__file__).resolve().parent.parent


def parsed(tmp_path, *argv) -> Selection:
    parser = argparse.ArgumentParser()
    selections.add_arguments(parser)
    return selections.from_args(parser.parse_args([str(arg) for arg in argv]),
                                verify=Verify.FIX)


def rich_selection(tmp_path) -> Selection:
    listed = tmp_path / "files.list"
    listed.write_text("# a comment\n/usr/bin/cat\n\n/etc/hostname\n")
    data = tmp_path / "data"
    data.write_text("x")
    spec = tmp_path / "extra.spec"
    spec.write_text(f"dir /opt 0755 0 0\nfile /opt/data {data} 0644 0 0 /opt/again\n"
                    "nod /dev/kmsg 0644 0 0 c 1 11\nslink /opt/l data 0777 0 0\n")
    return parsed(tmp_path, "--files-from", listed, "--spec", spec, "--include", "/etc/ssl/*",
                  "--exclude", "*.a", "--include-bin", "/usr/bin/ls", "--dev", "zero",
                  "--dev", "/dev/net/tun:c:10:200:0666", "--init", "/usr/bin/cat", "--strict")


def test_the_command_line_becomes_one_selection(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    selection = rich_selection(tmp_path)
    assert selection.file_lists[0].paths == ("/usr/bin/cat", "/etc/hostname")
    assert [item.entry.name for item in selection.spec_lists[0].items] == [
        "opt", "opt/data", "dev/kmsg", "opt/l"]
    assert selection.devices == (parse_device("zero"), parse_device("/dev/net/tun:c:10:200:0666"))
    assert (selection.init_mode, selection.init_path) == (InitMode.PATH, "/usr/bin/cat")
    assert (selection.binaries, selection.strict, selection.verify, selection.epoch) == (
        ("/usr/bin/ls",), True, Verify.FIX, 1700000000)
    assert parsed(tmp_path, "--init", "none").init_mode is InitMode.NONE
    with pytest.raises(UsageError):
        parsed(tmp_path, "--dev", "/dev/x:c:1:2:77777")


def test_the_agent_request_round_trips_exactly(tmp_path):
    request = Request(Task.SESSION, rich_selection(tmp_path),
                      Session(command=("sh", "-c", "true"), tracer=Tracer.BOTH))
    text = serial.dumps(request)
    assert serial.loads(Request, text) == request
    assert serial.dumps(serial.loads(Request, text)) == text


def nbic(*args, env=None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "nbic.cli", *map(str, args)], cwd=REPO,
                            capture_output=True, text=True, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    return result


def test_pack_and_run_make_the_same_image_from_the_same_selection(docker_engine, rootfs_tar,
                                                                  tmp_path):
    listed = tmp_path / "files.list"
    listed.write_text("/usr/bin/bash\n/usr/lib/x86_64-linux-gnu/libtinfo.so.6\n/etc/hostname\n")
    options = ["--files-from", listed, "--include-bin", "/usr/bin/ls", "--dev", "zero",
               "--init", "/usr/bin/bash", "--strict"]
    epoch = {"SOURCE_DATE_EPOCH": "1000000"}  # older than every file: mtimes all clamp
    packed, ran = tmp_path / "packed.cpio", tmp_path / "ran.cpio"
    report = tmp_path / "report.json"
    nbic("pack", "--rootfs", rootfs_tar, *options, "-o", packed, env=epoch)
    nbic("run", "--rootfs", rootfs_tar, "--tracer", "none", *options, "-o", ran,
         "--report", report, "--", "true", env=epoch)
    assert packed.read_bytes() == ran.read_bytes()
    # The agent received exactly the selection the host built.
    parser = argparse.ArgumentParser()
    selections.add_arguments(parser)
    os.environ["SOURCE_DATE_EPOCH"] = "1000000"
    try:
        host = selections.from_args(parser.parse_args([str(arg) for arg in options]))
    finally:
        del os.environ["SOURCE_DATE_EPOCH"]
    assert json.loads(report.read_text())["selection"] == serial.to_data(host)
