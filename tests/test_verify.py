"""Images that run what the session ran, proved: the default tracer on a real
interpreter workload, `nbic verify`, `run --verify/--check/--fix`, device nodes,
dangling symlinks, --include-bin and --init none, against the real engine and
a real kernel."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from docker_fixtures import PYTHON_IMAGE

from nbic.boot import BootConfig, BootOutcome, boot
from nbic.cpio.entry import FileType
from nbic.cpio.image import read_entries

REPO = Path(__file__).resolve().parent.parent
SESSION = REPO / "tests/python-image/session.sh"
MARKERS = ("PY-OK 1", "PERL-OK 10 2", "SQLITE-OK|42", "TZ-OK 09", "NSS-OK root:/root",
           "URANDOM-OK 8")


def nbic(*args, check=True, **options) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "nbic.cli", *map(str, args)], cwd=REPO,
                            capture_output=True, text=True, **options)
    if check and result.returncode:
        raise AssertionError(f"nbic {args} failed ({result.returncode}):\n{result.stderr}")
    return result


def entries(image: Path) -> dict:
    return {entry.name: entry for entry in read_entries(image)}


def script(path: Path, text: str) -> Path:
    path.write_text("#!/bin/sh\nset -e\n" + text)
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def python_image(docker_engine, tmp_path_factory):
    """The session of tests/python-image/session.sh, traced with the default tracer."""
    out = tmp_path_factory.mktemp("python")
    image, report = out / "py.cpio.zst", out / "report.json"
    result = nbic("run", "--rootfs", f"docker:{PYTHON_IMAGE}", "--script", SESSION,
                  "-o", image, "--report", report, "--verify")
    return image, json.loads(report.read_text()), result


def test_the_default_tracer_makes_an_interpreter_image_that_boots(python_image, kernel):
    image, report, result = python_image
    for marker in MARKERS:
        assert marker in result.stdout
    assert report["tracer"] == "fanotify"
    assert "the check passed on the image alone" in result.stderr
    reasons = {entry["path"]: entry["reason"] for entry in report["entries"]}
    # What no open shows: the sources CPython only stats, the device it read.
    assert reasons["/usr/lib/python3.11/json/__init__.py"].startswith("rule: CPython")
    assert reasons["/dev/urandom"] == "device: opened by the session"
    booted = boot(image, BootConfig(kernel=kernel, expect=MARKERS, timeout=300))
    assert booted.outcome is BootOutcome.PASSED, booted.tail()


def test_nbic_verify_passes_the_image_and_names_what_an_excluded_library_breaks(
        python_image, tmp_path):
    image, _report, _result = python_image
    passed = nbic("verify", image, "--script", SESSION)
    assert "passed" in passed.stderr
    check = script(tmp_path / "check.sh", "sqlite3 :memory: 'select 6*7;'\n")
    broken = tmp_path / "broken.cpio"
    nbic("run", "--rootfs", f"docker:{PYTHON_IMAGE}", "--script", check, "-o", broken,
         "--exclude", "*/libsqlite3.so*")
    failed = nbic("verify", broken, "--script", check, "--rootfs", f"docker:{PYTHON_IMAGE}",
                  check=False)
    assert failed.returncode == 1, failed.stderr
    assert "libsqlite3.so.0" in failed.stdout
    to_add = failed.stdout.split("the files to add")[1]
    assert "/usr/lib/x86_64-linux-gnu/libsqlite3.so.0" in to_add
    # The same failure stops `run --verify`: no image under the requested name.
    refused = tmp_path / "refused.cpio"
    run = nbic("run", "--rootfs", f"docker:{PYTHON_IMAGE}", "--script", check, "-o", refused,
               "--exclude", "*/libsqlite3.so*", "--verify", check=False)
    assert run.returncode == 1 and not refused.exists()
    assert "libsqlite3.so.0" in run.stderr
    assert not list(tmp_path.glob(".refused.cpio*"))


def test_fix_adds_what_the_check_needs_beyond_the_session(docker_engine, tmp_path):
    session = script(tmp_path / "session.sh", "python3 -c 'import json; print(1)'\n")
    check = script(tmp_path / "check.sh",
                   "python3 -c 'import sqlite3, zoneinfo; print(sqlite3.sqlite_version)'\n"
                   "perl -e 'print qq(CHECK-OK\\n)'\n")
    image, report = tmp_path / "fixed.cpio", tmp_path / "report.json"
    result = nbic("run", "--rootfs", f"docker:{PYTHON_IMAGE}", "--script", session,
                  "--check", check, "--fix", "-o", image, "--report", report)
    assert "--fix: added /usr/bin/perl" in result.stderr
    assert "the check passed on the image alone (2 replays)" in result.stderr
    data = json.loads(report.read_text())
    assert data["verify"][0]["status"] != 0 and data["verify"][-1]["status"] == 0
    assert "/usr/lib/python3.11/sqlite3/__init__.py" in data["fixed"]
    assert "usr/lib/python3.11/sqlite3/__init__.py" in entries(image)
    assert nbic("verify", image, "--script", check).returncode == 0


def test_device_nodes_the_session_opens(docker_engine, rootfs_tar, tmp_path):
    image = tmp_path / "dev.cpio"
    nbic("run", "--rootfs", rootfs_tar, "-o", image, "--init", "/usr/bin/true", "--",
         "sh", "-c", "head -c1 /dev/zero >/dev/null; head -c1 /dev/urandom >/dev/null")
    found = entries(image)
    for name, numbers in (("dev/zero", (1, 5)), ("dev/urandom", (1, 9)),
                          ("dev/console", (5, 1)), ("dev/null", (1, 3))):
        node = found[name]
        assert node.type is FileType.CHAR and (node.rdevmajor, node.rdevminor) == numbers
    assert "dev/full" not in found and "dev/random" not in found
    assert not any(name.startswith(("dev/pts/", "proc/", "sys/")) for name in found)


def test_device_nodes_under_a_terminal_session(docker_engine, rootfs_tar, tmp_path):
    import pty

    image = tmp_path / "tty.cpio"
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.execv(sys.executable, [sys.executable, "-m", "nbic.cli", "run", "--rootfs",
                                  str(rootfs_tar), "-o", str(image), "--init", "/usr/bin/true",
                                  "--", "sh", "-c", "echo hi >/dev/tty"])
    output = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output.decode(errors="replace")
    tty = entries(image)["dev/tty"]
    assert (tty.type, tty.rdevmajor, tty.rdevminor) == (FileType.CHAR, 5, 0)


def test_dangling_symlinks_round_trip_through_pack_and_run(docker_engine, rootfs_dir,
                                                           tmp_path):
    rootfs = tmp_path / "rootfs"
    subprocess.run(["cp", "-a", rootfs_dir, rootfs], check=True)
    (rootfs / "etc/dangling").symlink_to("does/not/exist")
    if not (rootfs / "etc/mtab").is_symlink():
        (rootfs / "etc/mtab").symlink_to("../proc/self/mounts")
    listed = tmp_path / "list"
    listed.write_text("/etc/dangling\n/etc/mtab\n")
    packed = tmp_path / "packed.cpio"
    nbic("pack", "--rootfs", rootfs, "--files-from", listed, "--init", "/usr/bin/true",
         "-o", packed, "--strict")
    assert entries(packed)["etc/dangling"].linkname == "does/not/exist"
    assert entries(packed)["etc/mtab"].linkname == "../proc/self/mounts"
    ran = tmp_path / "ran.cpio"
    nbic("run", "--rootfs", rootfs, "--tracer", "ptrace", "-o", ran, "--init", "/usr/bin/true",
         "--", "sh", "-c", "cat /etc/dangling 2>/dev/null || true")
    assert entries(ran)["etc/dangling"].linkname == "does/not/exist"


def test_include_bin_through_pack(rootfs_dir, tmp_path):
    image = tmp_path / "ls.cpio"
    nbic("pack", "--rootfs", rootfs_dir, "--include-bin", "/usr/bin/ls", "--init",
         "/usr/bin/ls", "-o", image)
    found = entries(image)
    libraries = {name.rsplit("/", 1)[1] for name in found
                 if ".so" in name and "/lib" in "/" + name}
    assert libraries == {"ld-linux-x86-64.so.2", "libc.so.6", "libselinux.so.1",
                         "libpcre2-8.so.0", "libpcre2-8.so.0.11.2"}


def test_a_segment_without_init_boots_on_top_of_a_base_image(rootfs_dir, kernel, tmp_path):
    base_init = script(tmp_path / "init", "echo BASE-UP; cat /etc/segment-marker\n")
    base_spec = tmp_path / "base.spec"
    base_spec.write_text(f"file /init {base_init} 0755 0 0\n")
    base = tmp_path / "base.cpio.gz"
    nbic("pack", "--rootfs", rootfs_dir, "--include-bin", "/usr/bin/cat", "--include-bin",
         "/usr/bin/dash", "--spec", base_spec, "-o", base)
    assert "bin/sh" in entries(base) or "usr/bin/sh" in entries(base)
    marker = tmp_path / "marker"
    marker.write_text("SEGMENT-SEEN\n")
    segment_spec = tmp_path / "segment.spec"
    segment_spec.write_text(f"dir /etc 0755 0 0\nfile /etc/segment-marker {marker} 0644 0 0\n")
    segment = tmp_path / "segment.cpio.zst"
    nbic("pack", "--spec", segment_spec, "--init", "none", "-o", segment)
    assert set(entries(segment)) == {"etc", "etc/segment-marker"}
    both = tmp_path / "both.img"
    both.write_bytes(base.read_bytes() + segment.read_bytes())
    booted = boot(both, BootConfig(kernel=kernel, expect=("BASE-UP", "SEGMENT-SEEN"),
                                   timeout=180))
    assert booted.outcome is BootOutcome.PASSED, booted.tail()


def test_a_daemon_left_running_does_not_hold_up_ptrace_sessions_or_replays(docker_engine,
                                                                           rootfs_tar,
                                                                           tmp_path):
    import time

    # The script waits until its child has become sleep: what a daemon does only
    # after the session's main process ended is not traced, by design.
    daemon = script(tmp_path / "daemon.sh", """sleep 1000 &
tries=0
until read -r comm < /proc/$!/comm && [ "$comm" = sleep ]; do
    tries=$((tries + 1)); [ $tries -lt 1000000 ] || exit 1
done
echo DAEMON-STARTED
""")
    start = time.monotonic()
    result = nbic("run", "--rootfs", rootfs_tar, "--tracer", "ptrace", "--script", daemon,
                  "--verify", "-o", tmp_path / "daemon.cpio", timeout=600)
    assert "DAEMON-STARTED" in result.stdout
    assert "the check passed on the image alone" in result.stderr
    assert time.monotonic() - start < 300  # the session's sleep would last 1000 s
    assert "usr/bin/sleep" in entries(tmp_path / "daemon.cpio")
