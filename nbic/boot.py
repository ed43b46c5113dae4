"""Boot an initramfs in QEMU and judge it by what the serial console shows.

QEMU's exit status says nothing about the guest: with ``panic=-1`` and
``-no-reboot`` a kernel panic ends QEMU with status 0, exactly like a clean
run. So the verdict comes only from the console text, read incrementally
while the guest runs, and QEMU is killed as soon as the verdict is certain.

Verdict rules, first decisive event wins:

* FAILED: the kernel reports ``Initramfs unpacking failed: <why>``,
  ``Failed to execute /init``, ``No working init found``, or any kernel
  panic other than the normal end of an exiting /init; or /init exits
  non-zero (``Attempted to kill init! exitcode=0x...``); or /init exits 0
  (or powers the machine off) before every expected marker appeared.
* PASSED: every ``expect`` marker appeared. QEMU then keeps running for a
  short settle period so that /init's exit status can still be seen (and a
  non-zero exit or a panic right after the markers still fails). With no
  markers: /init ran and exited 0 (or powered the machine off).
* TIMED_OUT: none of that within ``timeout`` seconds of wall time.

With a ``Fetch`` the host also reads a page from the running guest (through
a ``Forward`` of QEMU's user networking) once every marker has appeared: the
boot passes only when that page answered 200 with its text, fails when the
answer is another or /init ends first, and QEMU runs until it answered.

QEMU runs with KVM where /dev/kvm is usable, else with TCG (emulation). A
device that opens is not always a KVM that works (nested virtualisation may
refuse the host CPU model): when QEMU then exits with an error before the
guest printed anything, the boot is run again with TCG.

A network boot (``BootConfig.netboot``) starts QEMU with no kernel: the NIC's
option ROM (iPXE, from Debian's ipxe-qemu) boots whatever DHCP and TFTP or
HTTP hand it, and the same rules judge the kernel that comes up. When the
firmware finds nothing to boot (SeaBIOS: ``No bootable device``) the boot
FAILED, with iPXE's last error as the reason; SeaBIOS then reboots at once,
which ``-no-reboot`` turns into QEMU's exit: a failed network boot never
waits for the timeout.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import enum
import http.client
import logging
import os
import re
import selectors
import shutil
import socket
import stat
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from nbic.errors import BootError, QemuError, UsageError
from nbic.kernel import resolve_kernel
from nbic.netboot import IPXE_SCRIPT

log = logging.getLogger("nbic")

HELP = "boot an image in QEMU and judge it by the serial console"

# After the last marker, how long to wait for /init to exit before passing
# anyway: an init that prints its marker and then exits is seen within
# milliseconds, while one that keeps running (a shell) would otherwise make
# every boot last until the timeout.
SETTLE_SECONDS = 3.0

_READ_SIZE = 1 << 16

# Kernel messages, matched anywhere in a line (printk prefixes a timestamp).
_RUN_INIT = re.compile(r"Run (\S+) as init process")
_UNPACK_FAILED = re.compile(r"Initramfs unpacking failed: *(.*)")
_EXEC_FAILED = re.compile(r"Failed to execute (\S+)(?: \(error (-?\d+)\))?")
_NO_INIT = re.compile(r"No working init found.*")
_KILL_INIT = re.compile(r"Attempted to kill init! exitcode=(0x[0-9a-fA-F]+)")
_PANIC = re.compile(r"Kernel panic - not syncing: *(.*)")
_POWER_OFF = re.compile(r"reboot: (Power down|System halted)")
# The kernel echoes its command line; a marker there is not the guest's doing.
_CMDLINE_ECHO = re.compile(r"(Kernel command line|Command line):")
# Firmware: SeaBIOS tried every boot device; iPXE's errors end in a link to
# their explanation (the closing parenthesis may wrap to the next line).
_NO_BOOT_DEVICE = re.compile(r"No bootable device")
_IPXE_ERROR = re.compile(r"(\S.*?) \(https?://ipxe\.org/[0-9a-f]+")
# Terminal control sequences (SeaBIOS clears the screen, for one): noise.
_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")


class Accelerator(enum.Enum):
    KVM = "kvm"
    TCG = "tcg"


KVM_DEVICE = "/dev/kvm"


def choose_accelerator(device: str | Path = KVM_DEVICE) -> Accelerator:
    """KVM when `device` is a character device this process can open read-write
    (what QEMU needs), else TCG."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return Accelerator.TCG
    try:
        usable = stat.S_ISCHR(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    return Accelerator.KVM if usable else Accelerator.TCG


class BootOutcome(enum.Enum):
    PASSED = "passed"
    FAILED = "failed"
    TIMED_OUT = "timed out"


@dataclass(frozen=True)
class Forward:
    """A host TCP port that QEMU's user networking forwards to a guest port."""

    host_port: int
    guest_port: int
    host: str = "127.0.0.1"  # loopback: nothing else on the network reaches the guest

    @classmethod
    def parse(cls, text: str) -> Forward:
        """HOSTPORT:GUESTPORT, as `nbic boot --hostfwd` takes it."""
        host_port, _, guest_port = text.partition(":")
        try:
            forward = cls(int(host_port), int(guest_port))
        except ValueError:
            raise UsageError(f"--hostfwd {text!r}: give HOSTPORT:GUESTPORT, "
                             "e.g. 8080:80") from None
        if not (0 < forward.host_port < 65536 and 0 < forward.guest_port < 65536):
            raise UsageError(f"--hostfwd {text!r}: ports are 1..65535")
        return forward

    @classmethod
    def from_free_port(cls, guest_port: int) -> Forward:
        """A forward from a loopback port that is free now (QEMU binds it a moment
        later: a port taken in between is QEMU's clear error, not a wrong page)."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return cls(probe.getsockname()[1], guest_port)

    def option(self) -> str:
        return f"hostfwd=tcp:{self.host}:{self.host_port}-:{self.guest_port}"


def _user_netdev(*options: str, forwards: tuple[Forward, ...] = ()) -> str:
    """QEMU's user networking (its DHCP gives the guest 10.0.2.15; the host is
    10.0.2.2) with `options` and the port forwards."""
    return ",".join(["user", *options, *(forward.option() for forward in forwards)])


@dataclass(frozen=True)
class NetBoot:
    """Boot from the NIC's option ROM instead of QEMU's -kernel.

    `netdev` is QEMU's -netdev backend and its options, e.g.
    "tap,ifname=tap0,script=no,downscript=no"; `user()` makes the usual one.
    """

    netdev: str
    nic: str = "e1000"

    @classmethod
    def user(cls, bootfile: str, tftp: Path | None = None,
             forwards: tuple[Forward, ...] = ()) -> NetBoot:
        """QEMU's user networking: its DHCP names `bootfile` (a file under the
        built-in TFTP server's root `tftp`, or a URL); the host is 10.0.2.2."""
        options = [f"bootfile={_qemu_value(bootfile)}"]
        if tftp is not None:
            options.append(f"tftp={_qemu_value(str(tftp))}")
        return cls(_user_netdev(*options, forwards=forwards))


@dataclass(frozen=True)
class Nic:
    """A network card beside -kernel, on QEMU's user networking: the guest's DHCP
    client gets 10.0.2.15, and each forward reaches a guest port from the host.
    (A network boot has its own card: NetBoot.)"""

    model: str = "e1000"
    forwards: tuple[Forward, ...] = ()


@dataclass(frozen=True)
class Fetch:
    """An HTTP GET from the host while the guest runs, once every console marker
    has appeared (at once when there are none); the boot passes only when it
    answers 200 with `expect` in the page. QEMU runs until it has answered."""

    url: str  # e.g. http://127.0.0.1:PORT/ through a Forward to the guest's server
    expect: str = ""


def _qemu_value(text: str) -> str:
    """A value inside a QEMU option list: commas are doubled."""
    return text.replace(",", ",,")


@dataclass(frozen=True)
class BootConfig:
    kernel: Path | None = None  # QEMU's -kernel; None for a network boot
    netboot: NetBoot | None = None  # boot from the network instead of kernel + image
    nic: Nic | None = None  # a network card for a kernel boot
    fetch: Fetch | None = None  # a page to read from the running guest
    append: str = ""  # extra kernel command line (not for a network boot)
    memory_mb: int = 512
    timeout: float = 120.0  # seconds of wall time before giving up
    expect: tuple[str, ...] = ()  # markers that must all appear on the console
    qemu: str = "qemu-system-x86_64"
    accelerator: Accelerator | None = None  # None: KVM where usable, else TCG


@dataclass(frozen=True)
class BootResult:
    outcome: BootOutcome
    reason: str  # one line: what passed / which kernel failure / what was missing
    console: str  # full serial console text (CR and terminal escapes removed)
    seconds: float
    init_exit: int | None  # /init's exit status, if the kernel reported it
    accelerator: Accelerator
    markers_seconds: float | None = None  # from QEMU's start until every marker was seen
    page: str | None = None  # what the Fetch read (its text)
    fetch_seconds: float | None = None  # from QEMU's start until the Fetch was answered

    def tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the console."""
        if lines <= 0:  # [-0:] would be everything
            return ""
        return "\n".join(self.console.rstrip("\n").splitlines()[-lines:])


def qemu_command(image: Path | None, config: BootConfig, accelerator: Accelerator
                 ) -> list[str]:
    """The QEMU command line for ``boot``."""
    # KVM runs the host's CPU model. Under TCG the default CPU (qemu64) measured
    # as fast as -cpu max, and Debian's userland needs no more than baseline x86-64.
    cpu = ["-cpu", "host"] if accelerator is Accelerator.KVM else []
    machine = [
        config.qemu,
        "-machine", "pc",
        "-accel", accelerator.value,
        *cpu,
        "-m", str(config.memory_mb),
        "-nographic",
        "-no-reboot",
    ]  # fmt: skip
    if config.netboot is not None:
        # reboot-timeout=0: after "No bootable device" SeaBIOS reboots at once
        # instead of retrying every 60 s, and -no-reboot ends QEMU.
        return [
            *machine,
            "-netdev", f"{config.netboot.netdev},id=net0",
            "-device", f"{config.netboot.nic},netdev=net0",
            "-boot", "order=n,reboot-timeout=0",
        ]  # fmt: skip
    append = "console=ttyS0 panic=-1"
    if config.append.strip():
        append += " " + config.append.strip()
    network = [] if config.nic is None else [
        "-netdev", f"{_user_netdev(forwards=config.nic.forwards)},id=net0",
        "-device", f"{config.nic.model},netdev=net0",
    ]  # fmt: skip
    return [*machine, *network, "-kernel", str(config.kernel), "-initrd", str(image),
            "-append", append]


def _decode_exit(code: str) -> tuple[int, str]:
    """The kernel prints /init's raw wait status; return (exit, description).

    A signal death is reported shell-style as 128 + signal number.
    """
    status = int(code, 16)
    signal = status & 0x7F
    if signal:
        return 128 + signal, f"/init was killed by signal {signal}"
    exit_code = (status >> 8) & 0xFF
    return exit_code, f"/init exited with status {exit_code}"


class _Judge:
    """Follows the console line by line and knows when the verdict is certain."""

    def __init__(self, expect: tuple[str, ...]):
        self.expect = expect
        self.seen: set[str] = set()
        self.chunks: list[str] = []
        self.partial = ""  # text after the last newline
        self.init_ran: str | None = None
        self.init_exit: int | None = None
        self.init_end: str | None = None  # how /init ended, in words
        self.failure: str | None = None
        self.firmware_error: str | None = None  # iPXE's last error

    @property
    def console(self) -> str:
        return "".join(self.chunks) + self.partial

    @property
    def missing(self) -> list[str]:
        return [m for m in self.expect if m not in self.seen]

    def feed(self, text: str) -> None:
        text = self.partial + text.replace("\r", "")
        *lines, self.partial = text.split("\n")
        for line in lines:
            line = _ANSI.sub("", line)
            self.chunks.append(line + "\n")
            self._line(line)
        # A marker may sit on a line the guest has not ended yet.
        self._markers(_ANSI.sub("", self.partial))

    def finish(self) -> None:
        """QEMU is gone: judge the last, unterminated line too."""
        if self.partial:
            line, self.partial = _ANSI.sub("", self.partial), ""
            self.chunks.append(line)
            self._line(line)

    def _markers(self, line: str) -> None:
        if not _CMDLINE_ECHO.search(line):
            self.seen.update(m for m in self.missing if m in line)

    def _line(self, line: str) -> None:
        self._markers(line)
        if self.failure is not None or self.init_end is not None:
            return  # the first decisive event stands
        if m := _IPXE_ERROR.search(line):
            self.firmware_error = m.group(1)
        elif _NO_BOOT_DEVICE.search(line):
            self.failure = "the firmware found no bootable device" + (
                f" (iPXE: {self.firmware_error})" if self.firmware_error else "")
        elif m := _RUN_INIT.search(line):
            self.init_ran = m.group(1)
        elif m := _UNPACK_FAILED.search(line):
            self.failure = f"Initramfs unpacking failed: {m.group(1).strip()}"
        elif (m := _EXEC_FAILED.search(line)) or (m := _NO_INIT.search(line)):
            self.failure = m.group(0).strip()
        elif m := _KILL_INIT.search(line):
            self.init_exit, self.init_end = _decode_exit(m.group(1))
        elif m := _PANIC.search(line):
            what = m.group(1).strip()
            # Say so when no /init ever ran: that is the usual root cause.
            self.failure = f"Kernel panic: {what}" + (
                "" if self.init_ran else " (no /init was run)"
            )
        elif _POWER_OFF.search(line) and self.init_ran:
            self.init_end = "/init powered the machine off"

    def verdict(self) -> tuple[BootOutcome, str] | None:
        """The certain verdict so far, or None while it is still open."""
        if self.failure is not None:
            return BootOutcome.FAILED, self.failure
        if self.init_end is None:
            return None
        if self.init_exit:
            return BootOutcome.FAILED, self.init_end
        if self.missing:
            return BootOutcome.FAILED, f"{self.init_end}; {_missing_text(self.missing)}"
        return BootOutcome.PASSED, self.passed_reason()

    def markers_done(self) -> bool:
        return bool(self.expect) and not self.missing

    def passed_reason(self) -> str:
        if self.expect:
            return f"all {len(self.expect)} marker(s) seen: " + ", ".join(
                repr(m) for m in self.expect
            )
        return f"{self.init_end or self.init_ran}"


def _missing_text(missing: list[str]) -> str:
    return "marker(s) never appeared: " + ", ".join(repr(m) for m in missing)


def _check_inputs(image: Path | None, config: BootConfig) -> None:
    if shutil.which(config.qemu) is None:
        raise BootError(
            f"QEMU not found: {config.qemu!r} is not an executable on PATH"
            " (Debian: apt-get install qemu-system-x86)"
        )
    if config.fetch is not None:
        _check_url(config.fetch.url)
    if config.netboot is not None:
        if config.kernel is not None or image is not None:
            raise BootError("a network boot takes no kernel and no image")
        if config.nic is not None:
            raise BootError("a network boot has its own card: give its forwards to NetBoot")
        return
    if config.kernel is None or image is None:
        raise BootError("a boot needs a kernel and an image, or a network boot")
    if not Path(config.kernel).is_file():
        raise BootError(f"kernel not found: {config.kernel} is not a file")
    if not Path(image).is_file():
        raise BootError(f"image not found: {image} is not a file")


def _check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    try:
        port_ok = parts.port != 0
    except ValueError:  # not a number, or out of range
        port_ok = False
    if parts.scheme != "http" or not parts.hostname or not port_ok:
        raise BootError(f"fetch {url!r}: give an http://HOST[:PORT]/PATH URL")


def boot(image: Path | None, config: BootConfig) -> BootResult:
    """Boot ``image`` as the initrd of ``config.kernel`` (or, with
    ``config.netboot`` and no image, from the network) and judge the console.

    Raises BootError when QEMU, the kernel or the image is missing, or when
    QEMU itself fails (non-zero exit before any verdict).
    """
    _check_inputs(image, config)
    if config.accelerator is not None:
        return _boot_with(image, config, config.accelerator)
    accelerator = choose_accelerator()
    log.debug("boot: %s (%s %s)", accelerator.value, KVM_DEVICE,
              "usable" if accelerator is Accelerator.KVM else "not usable")
    if accelerator is Accelerator.TCG:
        return _boot_with(image, config, accelerator)
    try:
        return _boot_with(image, config, accelerator)
    except QemuError as exc:
        if exc.guest_output:
            raise
        log.warning("KVM is not usable here (%s); booting with TCG", exc)
        return _boot_with(image, config, Accelerator.TCG)


def _boot_with(image: Path | None, config: BootConfig, accelerator: Accelerator
               ) -> BootResult:
    judge = _Judge(tuple(config.expect))
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    stderr: list[bytes] = []
    start = time.monotonic()
    deadline = start + config.timeout
    settle_until: float | None = None
    markers_seconds: float | None = None
    verdict: tuple[BootOutcome, str] | None = None
    try:
        # stdin from /dev/null: QEMU must never put our terminal in raw mode.
        proc = subprocess.Popen(
            qemu_command(image, config, accelerator),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        raise BootError(f"could not start {config.qemu}: {exc}") from exc
    fetcher = None if config.fetch is None else _Fetcher(config.fetch, start, deadline)

    def checks_done() -> bool:
        return judge.markers_done() if fetcher is None else fetcher.passed

    try:
        with selectors.DefaultSelector() as sel:
            assert proc.stdout is not None and proc.stderr is not None
            sel.register(proc.stdout, selectors.EVENT_READ, "console")
            sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
            qemu_pipes = 2
            while verdict is None:
                now = time.monotonic()
                if fetcher is not None and not fetcher.started and not judge.missing:
                    sel.register(fetcher.start(), selectors.EVENT_READ, "fetch")
                if settle_until is None and checks_done():
                    settle_until = min(now + SETTLE_SECONDS, deadline)
                if settle_until is not None and now >= settle_until:
                    verdict = BootOutcome.PASSED, _passed_reason(judge, fetcher)
                    break
                if now >= deadline:
                    verdict = BootOutcome.TIMED_OUT, _timeout_reason(judge, config, fetcher)
                    break
                if not qemu_pipes:  # both pipes at EOF: QEMU has exited
                    judge.feed(decoder.decode(b"", final=True))
                    judge.finish()
                    verdict = _with_fetch(judge.verdict(), judge, fetcher) or _exit_verdict(
                        judge, fetcher, proc, stderr, config.qemu, checks_done())
                    break
                wake = settle_until if settle_until is not None else deadline
                for key, _ in sel.select(timeout=max(0.0, wake - now)):
                    if key.data == "fetch" and fetcher is not None:
                        sel.unregister(key.fileobj)
                        fetcher.collect()
                        continue
                    data = os.read(key.fd, _READ_SIZE)
                    if not data:
                        sel.unregister(key.fileobj)
                        qemu_pipes -= 1
                    elif key.data == "console":
                        judge.feed(decoder.decode(data))
                    else:
                        stderr.append(data)
                if markers_seconds is None and judge.markers_done():  # when they came
                    markers_seconds = time.monotonic() - start
                verdict = _with_fetch(judge.verdict(), judge, fetcher)
        seconds = time.monotonic() - start
    finally:
        _reap(proc)
        if fetcher is not None:
            fetcher.close()
    outcome, reason = verdict
    return BootResult(
        outcome=outcome,
        reason=reason,
        console=judge.console,
        seconds=seconds,
        init_exit=judge.init_exit,
        accelerator=accelerator,
        markers_seconds=markers_seconds,
        page=None if fetcher is None else fetcher.page,
        fetch_seconds=None if fetcher is None else fetcher.seconds,
    )


class _Fetcher:
    """BootConfig.fetch, in a thread while the console is read. The guest's server
    may not listen yet when the markers appear: QEMU's forward accepts the host's
    connection and drops it when nothing answers in the guest, so a failed
    connection is tried again until the deadline. An answer is final. The thread
    says it has finished through a pipe, which the console's selector watches;
    the boot loop reads the outcome only after that (`collect`). Requests go
    through http.client, so no proxy from the environment stands between the
    host and the guest."""

    RETRY_SECONDS = 0.25
    ATTEMPT_SECONDS = 10.0  # one request's limit: TCG guests are slow, not dead
    PAGE_LIMIT = 1 << 20

    def __init__(self, fetch: Fetch, start: float, deadline: float) -> None:
        self.fetch = fetch
        self.start_time = start
        self.deadline = deadline
        self.started = False
        self.answered = False  # collected: the fields below are final
        self.status: int | None = None
        self.page: str | None = None
        self.seconds: float | None = None  # from QEMU's start until the answer
        self.error: str | None = None  # the last failed try
        self._ready, self._signal = os.pipe()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._connection: http.client.HTTPConnection | None = None
        self._thread = threading.Thread(target=self._run, name="nbic-boot-fetch", daemon=True)

    def start(self) -> int:
        """Start fetching; the descriptor that becomes readable when it ends."""
        self.started = True
        self._thread.start()
        return self._ready

    def collect(self) -> None:
        os.read(self._ready, 1)
        self.answered = self.status is not None

    @property
    def passed(self) -> bool:
        return self.answered and self.status == 200 and self.fetch.expect in (self.page or "")

    def failure(self) -> str | None:
        """Why the answer fails the boot; None while there is none, or when it passed."""
        if not self.answered or self.passed:
            return None
        if self.status != 200:
            return f"GET {self.fetch.url} answered HTTP {self.status}"
        return f"GET {self.fetch.url}: the page does not hold {self.fetch.expect!r}"

    def pending(self) -> str:
        return f"GET {self.fetch.url} was not answered" + (
            f" (last try: {self.error})" if self.error else "")

    def close(self) -> None:
        """Stop the thread, cutting a request in flight, and wait for it."""
        self._stop.set()
        with self._lock:
            if self._connection is not None and self._connection.sock is not None:
                with contextlib.suppress(OSError):
                    self._connection.sock.shutdown(socket.SHUT_RDWR)
        if self.started:
            self._thread.join()
        os.close(self._ready)
        os.close(self._signal)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    return
                try:
                    status, page = self._get(min(remaining, self.ATTEMPT_SECONDS))
                except (OSError, http.client.HTTPException) as exc:
                    self.error = str(exc) or type(exc).__name__
                    self._stop.wait(self.RETRY_SECONDS)
                    continue
                self.seconds = time.monotonic() - self.start_time
                self.page, self.status = page, status
                return
        finally:
            os.write(self._signal, b"\0")

    def _get(self, timeout: float) -> tuple[int, str]:
        parts = urllib.parse.urlsplit(self.fetch.url)
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port,
                                                timeout=timeout)
        try:
            connection.connect()
            # close() sets _stop before it takes the lock: either it sees this
            # connection and cuts it, or this sees _stop.
            with self._lock:
                if self._stop.is_set():
                    raise OSError("the boot ended")
                self._connection = connection
            connection.request("GET", urllib.parse.urlunsplit(
                ("", "", parts.path or "/", parts.query, "")))
            response = connection.getresponse()
            return response.status, response.read(self.PAGE_LIMIT).decode("utf-8", "replace")
        finally:
            with self._lock:
                self._connection = None
            connection.close()


def _with_fetch(verdict: tuple[BootOutcome, str] | None, judge: _Judge,
                fetcher: _Fetcher | None) -> tuple[BootOutcome, str] | None:
    """The console's verdict, or the fetch's when that decides."""
    if fetcher is None:
        return verdict
    if failure := fetcher.failure():
        return BootOutcome.FAILED, failure
    if verdict is None or verdict[0] is not BootOutcome.PASSED:
        return verdict
    if not fetcher.passed:
        return BootOutcome.FAILED, f"{judge.init_end}; {fetcher.pending()}"
    return BootOutcome.PASSED, _passed_reason(judge, fetcher)


def _passed_reason(judge: _Judge, fetcher: _Fetcher | None) -> str:
    reason = judge.passed_reason()
    if fetcher is None:
        return reason
    answer = f"GET {fetcher.fetch.url} answered" + (
        f" with {fetcher.fetch.expect!r}" if fetcher.fetch.expect else "")
    return answer if not judge.expect else f"{reason}; {answer}"


def _timeout_reason(judge: _Judge, config: BootConfig, fetcher: _Fetcher | None) -> str:
    if judge.missing:
        what = _missing_text(judge.missing)
    elif fetcher is not None and not fetcher.passed:
        what = fetcher.pending()
    elif judge.init_ran:
        what = f"{judge.init_ran} did not exit"
    else:
        what = "no init was run"
    return f"no verdict after {config.timeout:g}s: {what}"


def _exit_verdict(judge: _Judge, fetcher: _Fetcher | None, proc: subprocess.Popen[bytes],
                  stderr: list[bytes], qemu: str, done: bool) -> tuple[BootOutcome, str]:
    """QEMU exited on its own and the console alone decided nothing."""
    status = proc.wait()
    if status != 0:
        err = b"".join(stderr).decode(errors="replace").strip().splitlines()
        raise QemuError(
            f"{Path(qemu).name} exited with status {status}" + (f": {err[-1]}" if err else ""),
            guest_output=bool(judge.console.strip()),
        )
    if done:
        return BootOutcome.PASSED, _passed_reason(judge, fetcher)
    last = next((ln for ln in reversed(judge.console.splitlines()) if ln.strip()), "")
    what = _missing_text(judge.missing) if judge.missing else \
        fetcher.pending() if fetcher is not None else "/init's exit was never reported"
    return BootOutcome.FAILED, f"QEMU exited before a verdict ({what}); last line: {last!r}"


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Kill QEMU if it still runs, and always wait for it: no strays."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    # Uninterruptible on purpose: a second Ctrl-C must not leave a zombie.
    while True:
        try:
            proc.wait()
            break
        except KeyboardInterrupt:
            continue
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def format_result(result: BootResult, tail_lines: int = 30) -> str:
    """The human report: verdict line, then the console tail unless it passed.

    ``tail_lines=0`` gives the verdict line alone.
    """
    exit_text = "" if result.init_exit is None else f", /init exit {result.init_exit}"
    head = (f"boot {result.outcome.name} in {result.seconds:.1f}s "
            f"({result.accelerator.value}){exit_text}: {result.reason}")
    if result.outcome is BootOutcome.PASSED or tail_lines <= 0:
        return head
    return f"{head}\n--- last {tail_lines} console lines ---\n{result.tail(tail_lines)}"


# `nbic boot` exit statuses: a shell can tell a failed boot from a hung one.
EXIT_STATUS = {BootOutcome.PASSED: 0, BootOutcome.FAILED: 1, BootOutcome.TIMED_OUT: 3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, nargs="?",
                        help="initramfs image to boot (any compression); none for a network "
                        "boot")
    parser.add_argument(
        "--kernel",
        help="an ELF vmlinux (PVH) or a bzImage, or a package source such as "
        "debian:bookworm:linux-image-amd64 (fetched with apt in a container once, "
        "then cached by version)",
    )
    parser.add_argument(
        "--expect",
        metavar="TEXT",
        action="append",
        default=[],
        help="text that must appear on the console; repeatable (default: /init runs and exits 0)",
    )
    parser.add_argument(
        "--append",
        metavar="ARGS",
        default="",
        help="extra kernel command line after 'console=ttyS0 panic=-1'",
    )
    parser.add_argument(
        "--memory",
        metavar="MB",
        type=int,
        default=512,
        help="guest memory in MiB (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=120.0,
        help="wall-time limit (default: %(default)s)",
    )
    parser.add_argument(
        "--qemu",
        metavar="PROGRAM",
        default="qemu-system-x86_64",
        help="QEMU binary (default: %(default)s)",
    )
    parser.add_argument(
        "--accel",
        choices=["auto", *(a.value for a in Accelerator)],
        default="auto",
        help="kvm, tcg, or auto: KVM where /dev/kvm is usable, else TCG (default: auto)",
    )
    parser.add_argument(
        "--console",
        action="store_true",
        help="print the whole console, not just the tail of a failure",
    )
    network = parser.add_argument_group(
        "network", "QEMU's user networking: the guest gets 10.0.2.15 by DHCP, the host is "
        "10.0.2.2")
    source = network.add_mutually_exclusive_group()
    source.add_argument("--netboot", metavar="DIR", type=Path,
                        help="boot from the network: the NIC's iPXE loads boot.ipxe from DIR "
                        "(a `nbic netboot` directory) over QEMU's built-in TFTP server")
    source.add_argument("--netboot-url", metavar="URL",
                        help="boot from the network: the NIC's iPXE loads this boot script, "
                        "e.g. http://10.0.2.2:8080/boot.ipxe from `nbic serve`")
    network.add_argument("--nic", metavar="MODEL",
                         help="a network card beside --kernel (default with --hostfwd: e1000)")
    network.add_argument("--hostfwd", metavar="HOSTPORT:GUESTPORT", action="append",
                         default=[],
                         help="forward 127.0.0.1:HOSTPORT to the guest's TCP port; repeatable")
    network.add_argument("--fetch", metavar="URL",
                         help="once every --expect marker appeared, GET this URL from the "
                         "host (e.g. http://127.0.0.1:HOSTPORT/ through --hostfwd); the boot "
                         "passes only when it answers 200")
    network.add_argument("--fetch-expect", metavar="TEXT", default="",
                         help="text the --fetch page must hold")


def config_from_args(args: argparse.Namespace) -> tuple[Path | None, BootConfig]:
    """The image and the boot's configuration, checked for what belongs together."""
    forwards = tuple(Forward.parse(text) for text in args.hostfwd)
    netboot = nic = None
    if args.netboot is not None or args.netboot_url is not None:
        if args.image is not None or args.kernel is not None:
            raise UsageError("a network boot takes no IMAGE and no --kernel: the boot "
                             "script names them")
        if args.append or args.nic:
            raise UsageError("--append and --nic are for a kernel boot: a network boot's "
                             "command line is in its boot script, its card is e1000")
        if args.netboot is not None:
            if not (args.netboot / IPXE_SCRIPT).is_file():
                raise UsageError(f"{args.netboot} has no {IPXE_SCRIPT}: lay the directory "
                                 "out with `nbic netboot`")
            netboot = NetBoot.user(IPXE_SCRIPT, tftp=args.netboot.resolve(),
                                   forwards=forwards)
        else:
            netboot = NetBoot.user(args.netboot_url, forwards=forwards)
        kernel = None
    else:
        if args.image is None or args.kernel is None:
            raise UsageError("give an IMAGE and --kernel, or --netboot DIR or --netboot-url "
                             "URL")
        kernel = resolve_kernel(args.kernel).boot_kernel
        if args.nic or forwards:
            nic = Nic(args.nic or "e1000", forwards)
    if args.fetch_expect and not args.fetch:
        raise UsageError("--fetch-expect needs --fetch URL")
    return args.image, BootConfig(
        kernel=kernel,
        netboot=netboot,
        nic=nic,
        fetch=Fetch(args.fetch, args.fetch_expect) if args.fetch else None,
        append=args.append,
        memory_mb=args.memory,
        timeout=args.timeout,
        expect=tuple(args.expect),
        qemu=args.qemu,
        accelerator=None if args.accel == "auto" else Accelerator(args.accel),
    )


def run(args: argparse.Namespace) -> int:
    """Exit 0 when the boot passed, 1 when it failed, 3 when it timed out."""
    image, config = config_from_args(args)
    result = boot(image, config)
    if args.console:
        print(result.console, end="" if result.console.endswith("\n") else "\n")
    print(format_result(result, tail_lines=0 if args.console else 30))
    return EXIT_STATUS[result.outcome]
