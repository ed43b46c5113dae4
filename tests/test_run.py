"""`nbic run` against the real Docker engine: sessions, tracers, sources, cleanup.

The images the tests need from Docker come from tests/docker-compose.yml
through pytest-docker (the `docker_engine` fixture).
"""

import fcntl
import io
import json
import os
import pty
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import termios
import time
from pathlib import Path

import docker
import pytest
from docker_fixtures import ROOTFS_IMAGE, ROOTFS_IMAGE_HELLO

from nbic.boot import BootConfig, BootOutcome, boot
from nbic.cpio.entry import FileType
from nbic.cpio.image import read_entries

REPO = Path(__file__).resolve().parent.parent

# The seed's convention: one /chroot script starts the session and, as /init,
# the boot. It mounts proc itself, as the seed's example does.
CHROOT_SCRIPT = b"""#!/bin/bash
mount -t proc proc /proc
cat /etc/hostname
ls /
echo NBIC-QUICKSTART-OK
umount /proc
"""


def nbic(*args, check=True, timeout=None, **options) -> subprocess.CompletedProcess:
    """Run nbic; the result's `pid` is the run's process id (see run_containers)."""
    with subprocess.Popen([sys.executable, "-m", "nbic.cli", *map(str, args)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          **options) as process:
        stdout, stderr = process.communicate(timeout=timeout)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    result.pid = process.pid
    if check and result.returncode:
        raise AssertionError(f"nbic {args} failed ({result.returncode}):\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def quickstart_tar(rootfs_tar, tmp_path_factory) -> Path:
    """The bookworm rootfs tar with the seed's /chroot script added."""
    target = tmp_path_factory.mktemp("quickstart") / "sarge.tar"
    shutil.copyfile(rootfs_tar, target)
    with tarfile.open(target, "a") as archive:
        info = tarfile.TarInfo("./chroot")
        info.size, info.mode = len(CHROOT_SCRIPT), 0o755
        archive.addfile(info, io.BytesIO(CHROOT_SCRIPT))
    return target


def names(image: Path) -> dict:
    return {entry.name: entry for entry in read_entries(image)}


def traced(report: Path) -> set[str]:
    """The paths of the image that entered because the session used them."""
    entries = json.loads(report.read_text())["entries"]
    return {entry["path"] for entry in entries if entry["reason"].startswith("traced")}


def failed_lookups(report: Path) -> set[str]:
    return {lookup["path"] for lookup in json.loads(report.read_text())["session_failed_lookups"]}


def run_containers(client, pid: int) -> list:
    """The containers of the nbic run with this process id on this host (other
    checkouts' runs share the engine)."""
    return client.containers.list(all=True, filters={
        "label": [f"nbic.pid={pid}", f"nbic.host={socket.gethostname()}"]})


def left_behind(client, pid: int) -> list:
    """The containers the ended nbic run `pid` left. A session container removes
    itself once its agent has ended, which may be just after nbic returned:
    what is still there after a few seconds was left behind."""
    deadline = time.monotonic() + 10
    while (found := run_containers(client, pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def test_quick_start_traces_the_session_and_the_image_boots(
        docker_engine, quickstart_tar, kernel, tmp_path):
    image = tmp_path / "bash.cpio"
    result = nbic("run", "--rootfs", quickstart_tar, "-o", image, "--report",
                  tmp_path / "report.json")
    assert "NBIC-QUICKSTART-OK" in result.stdout
    entries = names(image)
    for program in ("bash", "cat", "ls", "mount", "umount"):
        assert entries[f"usr/bin/{program}"].type is FileType.FILE, program
    assert entries["usr/lib/x86_64-linux-gnu/libc.so.6"].type is FileType.FILE
    assert entries["bin"].linkname == "usr/bin"
    assert entries["lib64"].type is FileType.SYMLINK
    assert entries["dev/console"].rdevmajor == 5
    assert entries["init"].linkname == "/chroot"
    assert "usr/bin/tr" not in entries and "usr/bin/apt-get" not in entries
    assert "etc/hostname" in entries
    used = traced(tmp_path / "report.json")
    assert "/usr/bin/cat" in used and "/chroot" in used
    assert not left_behind(docker_engine, result.pid)

    booted = boot(image, BootConfig(kernel=kernel, expect=("NBIC-QUICKSTART-OK",),
                                    timeout=180))
    assert booted.outcome is BootOutcome.PASSED, booted.tail()
    assert "usr" in booted.console.split("Run /init as init process")[-1]


def test_the_rootfs_is_imported_once(docker_engine, quickstart_tar, tmp_path):
    nbic("run", "--rootfs", quickstart_tar, "-o", tmp_path / "a.cpio", "--", "true")
    second = nbic("run", "--rootfs", quickstart_tar, "-o", tmp_path / "b.cpio", "--", "true")
    assert "importing" not in second.stderr


def test_interactive_session_through_a_pseudo_terminal(docker_engine, quickstart_tar,
                                                        tmp_path):
    image = tmp_path / "tty.cpio"
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.execv(sys.executable, [sys.executable, "-m", "nbic.cli", "run", "--rootfs",
                                  str(quickstart_tar), "-o", str(image), "--", "/bin/bash",
                                  "--norc", "-i"])
    # The user's window size reaches the session's terminal.
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    transcript = b""

    def read_until(marker: bytes, timeout: float = 120) -> None:
        nonlocal transcript
        deadline = time.monotonic() + timeout
        while marker not in transcript:
            assert time.monotonic() < deadline, transcript.decode(errors="replace")
            if not select.select([fd], [], [], 0.5)[0]:
                continue
            try:
                transcript += os.read(fd, 4096)
            except OSError:
                break

    read_until(b"# ")
    os.write(fd, b"cat /etc/hostname; echo TYPED-$((6*7)); echo SIZE-$(stty size)\r")
    read_until(b"TYPED-42")
    read_until(b"SIZE-33 101")
    os.write(fd, b"ls /usr\r")
    read_until(b"share")
    # Ctrl-C is a byte on the terminal: it interrupts the session's command,
    # not nbic, and the shell carries on.
    os.write(fd, b"echo SLEEP-$((2*3)); sleep 300\r")
    read_until(b"SLEEP-6")  # sleep runs now: only a Ctrl-C that reaches it ends it in time
    time.sleep(0.5)
    os.write(fd, b"\x03")
    os.write(fd, b"echo AFTER-$((1+1))\r")
    read_until(b"AFTER-2", timeout=30)
    os.write(fd, b"exit 3\r")
    deadline = time.monotonic() + 120
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk or time.monotonic() > deadline:
            break
        transcript += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 3  # the session's status, passed back
    entries = names(image)
    assert "usr/bin/cat" in entries and "usr/bin/ls" in entries
    assert "usr/bin/tr" not in entries


def test_a_package_installed_in_the_session_is_in_the_image(docker_engine, quickstart_tar,
                                                             tmp_path):
    script = tmp_path / "install.sh"
    script.write_text("#!/bin/sh\nset -e\napt-get -q update >/dev/null\n"
                      "apt-get -q install -y --no-install-recommends hello >/dev/null\n"
                      "hello\n")
    image = tmp_path / "hello.cpio"
    result = nbic("run", "--rootfs", quickstart_tar, "--script", script, "-o", image,
                  "--init", "/usr/bin/hello")
    assert "Hello, world!" in result.stdout
    entries = names(image)
    assert entries["usr/bin/hello"].type is FileType.FILE
    assert entries["init"].linkname == "/usr/bin/hello"
    assert ".nbic" not in entries and "usr/bin/tr" not in entries


def test_session_output_arrives_byte_for_byte_and_a_daemon_does_not_hold_the_run(
        docker_engine, rootfs_tar, tmp_path):
    # Binary, larger than a frame, on both streams; then a daemon keeps the
    # session's standard output open after the main program exits.
    script = tmp_path / "out.sh"
    script.write_text("#!/bin/sh\n"
                      "head -c 300000 /usr/bin/dash\n"
                      "printf 'to stderr\\n' >&2\n"
                      "sleep 600 &\n"
                      "printf 'last line\\n'\n")
    image = tmp_path / "out.cpio"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "nbic.cli", "-q", "run", "--rootfs",
                             rootfs_tar, "--script", script, "-o", image, "--init",
                             "/usr/bin/true"], cwd=REPO, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 60  # not the daemon's 600 s
    with tarfile.open(rootfs_tar) as archive:
        member = next(m for m in archive if m.name.lstrip("./") == "usr/bin/dash")
        expected = archive.extractfile(member).read()[:300000]
    assert result.stdout == expected + b"last line\n"
    assert result.stderr == b"to stderr\n"
    assert "usr/bin/head" in names(image)


def test_directory_and_docker_image_sources(docker_engine, rootfs_dir, tmp_path):
    from_image = tmp_path / "image.cpio"
    result = nbic("run", "--rootfs", f"docker:{ROOTFS_IMAGE}", "-o", from_image)
    assert ROOTFS_IMAGE_HELLO.strip() in result.stdout  # its /chroot ran
    assert "chroot" in names(from_image)

    rootfs_copy = tmp_path / "rootfs"
    subprocess.run(["cp", "-a", "--reflink=auto", rootfs_dir, rootfs_copy], check=True)
    (rootfs_copy / "etc/nbic-dir-marker").write_text("from a directory\n")
    from_dir = tmp_path / "dir.cpio"
    result = nbic("run", "--rootfs", rootfs_copy, "-o", from_dir, "--init", "/usr/bin/cat",
                  "--", "cat", "/etc/nbic-dir-marker")
    assert "from a directory" in result.stdout
    assert "etc/nbic-dir-marker" in names(from_dir)


def test_debootstrap_source_and_saved_tar(docker_engine, tmp_path):
    saved = tmp_path / "bookworm.tar"
    nbic("rootfs", "debootstrap", "bookworm", "-o", saved, timeout=1800)
    with tarfile.open(saved) as archive:
        members = set(archive.getnames())
    assert {"usr/bin/bash", "etc/debian_version"} <= members
    image = tmp_path / "default.cpio"
    # With no --rootfs, the default is this debootstrapped bookworm, now cached.
    result = nbic("run", "-o", image, "--init", "/usr/bin/cat", "--", "cat",
                  "/etc/debian_version")
    assert "importing" not in result.stderr
    assert result.stdout.strip().startswith("12")
    assert "etc/debian_version" in names(image)


def test_ptrace_tracer_sees_a_superset_of_fanotify(docker_engine, quickstart_tar, tmp_path):
    session = ["--", "sh", "-c", "ls /etc >/dev/null; cat /etc/os-release >/dev/null; "
               "test -e /etc/nbic-nothing || true; stat /usr/share/doc >/dev/null"]
    traces = {}
    for tracer in ("fanotify", "ptrace"):
        report = tmp_path / f"{tracer}.json"
        nbic("run", "--rootfs", quickstart_tar, "--tracer", tracer, "-o",
             tmp_path / f"{tracer}.cpio", "--report", report, *session)
        traces[tracer] = traced(report)
    assert traces["fanotify"] <= traces["ptrace"], traces["fanotify"] - traces["ptrace"]
    # Lookups that open nothing: only ptrace sees them.
    assert "/usr/share/doc" in traces["ptrace"]
    assert "/etc/nbic-nothing" in failed_lookups(tmp_path / "ptrace.json")
    # fanotify names the file reached (os-release is a symlink into /usr/lib).
    assert "/usr/lib/os-release" in traces["fanotify"]
    assert "/etc/os-release" not in traces["fanotify"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_interrupting_a_session_leaves_nothing_behind(docker_engine, quickstart_tar, tmp_path,
                                                      signum):
    volumes_before = {v.name for v in docker_engine.volumes.list()}
    image = tmp_path / "never.cpio"
    process = subprocess.Popen(
        [sys.executable, "-m", "nbic.cli", "run", "--rootfs", str(quickstart_tar), "-o",
         str(image), "--", "sleep", "300"], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not [c for c in run_containers(docker_engine, process.pid) if c.status == "running"]:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.2)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "Traceback" not in stderr.decode()
    assert not left_behind(docker_engine, process.pid)
    assert {v.name for v in docker_engine.volumes.list()} == volumes_before
    assert list(tmp_path.iterdir()) == []


def test_docker_unreachable_is_one_clear_line(tmp_path):
    result = nbic("run", "--rootfs", tmp_path, "-o", tmp_path / "x.cpio", "--", "true",
                  check=False, env={**os.environ, "DOCKER_HOST": "unix:///nonexistent.sock"})
    assert result.returncode == 1
    assert "Docker" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_script_session_on_a_rootfs_without_init_boots_as_init(
        docker_engine, rootfs_tar, kernel, tmp_path):
    # The session mounts proc over nbic's own and leaves it mounted: the agent
    # must still unmount everything before it walks the rootfs.
    script = tmp_path / "session.sh"
    script.write_text("#!/bin/bash\nmount -t proc proc /proc\ncat /proc/version >/dev/null\n"
                      "ls /usr >/dev/null\necho SCRIPT-BOOTED\n")
    image = tmp_path / "script.cpio.gz"
    result = nbic("run", "--rootfs", rootfs_tar, "--script", script, "-o", image)
    assert "SCRIPT-BOOTED" in result.stdout
    assert "boots as /init" in result.stderr
    entries = names(image)
    assert entries["init"].type is FileType.FILE
    assert entries["init"].size == len(script.read_bytes())
    assert "proc" in entries and "usr/bin/mount" in entries
    booted = boot(image, BootConfig(kernel=kernel, expect=("SCRIPT-BOOTED",), timeout=180))
    assert booted.outcome is BootOutcome.PASSED, booted.tail()


def test_what_enters_the_image_from_a_session(docker_engine, rootfs_tar, tmp_path):
    script = tmp_path / "session.sh"
    script.write_text("""#!/bin/bash
echo kept > /root/kept.txt; cat /root/kept.txt
echo gone > /tmp/gone.txt; cat /tmp/gone.txt; rm /tmp/gone.txt
ls /etc > /dev/null
cat /etc/debian_version /etc/issue > /dev/null
""")
    extra = tmp_path / "extra.list"
    extra.write_text("# made by hand\n/etc/os-release\n")
    image = tmp_path / "session.cpio"
    nbic("run", "--rootfs", rootfs_tar, "--script", script, "-o", image, "--files-from", extra,
         "--include", "/usr/share/doc/bash/*", "--exclude", "/etc/issue")
    entries = names(image)
    assert entries["root/kept.txt"].type is FileType.FILE  # created and kept
    assert "tmp/gone.txt" not in entries  # created and deleted
    assert entries["etc"].type is FileType.DIR  # only listed: the directory, not its files
    assert "etc/debian_version" in entries and "etc/shadow" not in entries
    assert "etc/issue" not in entries  # --exclude
    assert "usr/lib/os-release" in entries and "etc/os-release" in entries  # --files-from
    assert any(name.startswith("usr/share/doc/bash/") for name in entries)  # --include


def test_tracer_none_takes_only_the_lists(docker_engine, rootfs_tar, tmp_path):
    listed = tmp_path / "listed"
    listed.write_text("/usr/bin/tr\n")
    image = tmp_path / "none.cpio"
    result = nbic("run", "--rootfs", rootfs_tar, "--tracer", "none", "--files-from", listed,
                  "--init", "/usr/bin/tr", "-o", image, "--", "cat", "/etc/debian_version")
    assert "0 traced paths" in result.stderr
    entries = names(image)
    assert "usr/bin/tr" in entries and "usr/bin/cat" not in entries


def test_tracer_both_merges_the_two(docker_engine, rootfs_tar, tmp_path):
    traces = {}
    for tracer in ("fanotify", "ptrace", "both"):
        report = tmp_path / f"{tracer}.json"
        nbic("run", "--rootfs", rootfs_tar, "--tracer", tracer, "-o", tmp_path / "x.cpio",
             "--init", "/usr/bin/true", "--report", report, "--", "sh", "-c",
             "stat /usr/share/doc >/dev/null; cat /etc/debian_version >/dev/null")
        traces[tracer] = traced(report)
    assert traces["both"] >= traces["fanotify"] | traces["ptrace"] - {"/usr/share/doc"}
    assert "/usr/share/doc" in traces["both"]


def test_rootfs_cache_commands(docker_engine, tmp_path):
    rootfs = tmp_path / "tiny"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc/tiny-marker").write_text(str(time.time()))  # a digest of its own
    volume = nbic("rootfs", "import", rootfs).stdout.strip()
    assert volume.startswith("nbic-rootfs-")
    assert volume in nbic("rootfs", "ls").stdout
    assert nbic("rootfs", "import", rootfs).stdout.strip() == volume  # cached
    # Right after a run, whose session container is still going away.
    nbic("run", "--rootfs", rootfs, "--init", "none", "-o", tmp_path / "x.cpio", "--",
         "/etc/tiny-marker", check=False)
    nbic("rootfs", "rm", volume)
    assert volume not in nbic("rootfs", "ls").stdout
    assert volume not in {v.name for v in docker_engine.volumes.list()}
    missing = nbic("rootfs", "rm", volume, check=False)
    assert missing.returncode == 1 and "no cached rootfs" in missing.stderr


def start_run(rootfs_tar: Path, output: Path, *command: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nbic.cli", "run", "--rootfs", str(rootfs_tar), "-o",
         str(output), "--", *command], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def running_session(client, process: subprocess.Popen):
    """The session container of a run started with start_run, once it runs."""
    deadline = time.monotonic() + 120
    while True:
        found = [c for c in run_containers(client, process.pid) if c.status == "running"]
        if found:
            return found[0]
        assert time.monotonic() < deadline and process.poll() is None, process.stderr
        time.sleep(0.2)


WAIT_FOR_GO = ("sh", "-c", "until [ -e /tmp/go ]; do sleep 0.1; done")


def let_go(container) -> None:
    """End a WAIT_FOR_GO session: once it runs (before, the agent's mounts would
    hide the file), make /tmp/go in its rootfs."""
    deadline = time.monotonic() + 120
    # Its command, not the agent's, which names it in its request.
    while not any(process[-1] == " ".join(WAIT_FOR_GO)
                  for process in container.top()["Processes"]):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    status, output = container.exec_run(["touch", "/rootfs/tmp/go"])
    assert status == 0, output


def test_a_run_killed_outright_is_cleaned_up_by_the_next(docker_engine, rootfs_tar, tmp_path):
    killed = start_run(rootfs_tar, tmp_path / "killed.cpio", "sleep", "300")
    live = start_run(rootfs_tar, tmp_path / "live.cpio", *WAIT_FOR_GO)
    killed_container = running_session(docker_engine, killed)
    live_container = running_session(docker_engine, live)
    killed.kill()  # SIGKILL: no cleanup of its own runs
    killed.communicate()
    assert docker_engine.containers.get(killed_container.id).status == "running"

    nbic("run", "--rootfs", rootfs_tar, "-o", tmp_path / "next.cpio", "--", "true")
    with pytest.raises(docker.errors.NotFound):
        docker_engine.containers.get(killed_container.id)
    assert docker_engine.containers.get(live_container.id).status == "running"

    # The live run was never disturbed: let its session end, and it finishes.
    let_go(live_container)
    _, stderr = live.communicate(timeout=120)
    assert live.returncode == 0, stderr
    assert "usr/bin/dash" in names(tmp_path / "live.cpio")
    assert not left_behind(docker_engine, live.pid)
    assert not (tmp_path / "killed.cpio").exists()


def test_the_session_container_of_a_killed_run_goes_when_its_session_ends(
        docker_engine, rootfs_tar, tmp_path):
    killed = start_run(rootfs_tar, tmp_path / "killed.cpio", *WAIT_FOR_GO)
    container = running_session(docker_engine, killed)
    killed.kill()  # SIGKILL: nbic removes nothing itself
    killed.communicate()
    assert run_containers(docker_engine, killed.pid)
    let_go(container)
    assert not left_behind(docker_engine, killed.pid)  # the engine removed it
    assert not (tmp_path / "killed.cpio").exists()


# Capability numbers (linux/capability.h).
CAP = {"NET_ADMIN": 12, "SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_CHROOT": 18, "SYS_PTRACE": 19,
       "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_RESOURCE": 24, "SYS_TIME": 25, "MAC_ADMIN": 33,
       "SYSLOG": 34, "MKNOD": 27, "NET_RAW": 13, "BPF": 39}


def test_a_session_cannot_reach_the_host_kernel(docker_engine, rootfs_tar, tmp_path):
    # A static program (the rootfs has no compiler, nor python) as the session;
    # tests/privileges.c says why each check is harmless even if it were not refused.
    program = tmp_path / "privileges"
    subprocess.run(["gcc", "-static", "-O2", "-o", program, REPO / "tests/privileges.c"],
                   check=True)
    result = nbic("run", "--rootfs", rootfs_tar, "--script", program, "-o",
                  tmp_path / "privileges.cpio")
    report = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    held = int(report["CapEff"], 16)
    for name in ("SYS_MODULE", "SYS_RAWIO", "SYS_BOOT", "SYS_TIME", "SYS_RESOURCE",
                 "NET_ADMIN", "NET_RAW", "MAC_ADMIN", "SYSLOG", "BPF"):
        assert not held & 1 << CAP[name], name
    for name in ("SYS_ADMIN", "SYS_CHROOT", "SYS_PTRACE", "MKNOD"):
        assert held & 1 << CAP[name], name
    # Without module support in the kernel, init_module is ENOSYS for everyone.
    assert report["init_module"] == ("EPERM" if os.path.exists("/proc/modules") else "ENOSYS")
    assert report["clock_settime"] == "EPERM"
    assert report["date -s"] != "exit 0"
    assert report["reboot"] == "EPERM"
    # The agent binds /dev/null over it, where the kernel has one.
    assert report["sysrq-trigger"] == (
        "/dev/null" if os.path.exists("/proc/sysrq-trigger") else "ENOENT")
    assert report["/proc/sys"] == "read-only"


def test_gc_removes_what_nbic_no_longer_needs_and_nothing_in_use(docker_engine, tmp_path):
    def volumes() -> set[str]:
        return {volume.name for volume in docker_engine.volumes.list()}

    gone, kept, used = (tmp_path / name for name in ("gone", "kept", "used"))
    for rootfs in (gone, kept, used):
        (rootfs / "etc").mkdir(parents=True)
        (rootfs / "etc/marker").write_text(f"{rootfs.name} {time.time()}")
    imported = {rootfs.name: nbic("rootfs", "import", rootfs).stdout.strip()
                for rootfs in (gone, kept, used)}
    shutil.rmtree(gone)
    shutil.rmtree(used)
    holder = docker_engine.containers.create(
        "debian:bookworm", ["true"], volumes={imported["used"]: {"bind": "/v", "mode": "ro"}},
        labels={"nbic-test": "gc"})
    try:
        before = volumes()
        dry = nbic("gc", "--dry-run").stdout
        assert f"would remove volume {imported['gone']}: its source {gone} is gone" in dry
        assert imported["kept"] not in dry and imported["used"] not in dry
        assert volumes() == before  # a dry run removes nothing
        nbic("gc")
        after = volumes()
        assert imported["gone"] not in after
        assert imported["kept"] in after and imported["used"] in after  # in use: kept
    finally:
        holder.remove(force=True)
    (kept / "etc/marker").write_text("changed")
    assert f"volume {imported['kept']}: its source {kept} has changed" in nbic("gc").stdout
    nbic("gc")
    assert imported["used"] not in volumes()  # no longer in use, its source gone
