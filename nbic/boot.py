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
import logging
import os
import re
import selectors
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from nbic.errors import BootError, QemuError
from nbic.kernel import resolve_kernel

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
# The kernel echoes its command line; a marker there is not the guest's doing.
_CMDLINE_ECHO = re.compile(r"(Kernel command line|Command line):")
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
class NetBoot:
    """Boot from the NIC's option ROM instead of QEMU's -kernel.

    `netdev` is QEMU's -netdev backend and its options, e.g.
    "tap,ifname=tap0,script=no,downscript=no"; `user()` makes the usual one.
    """

    netdev: str
    nic: str = "e1000"

    @classmethod
    def user(cls, bootfile: str, tftp: Path | None = None) -> NetBoot:
        """QEMU's user networking: its DHCP names `bootfile` (a file under the
        built-in TFTP server's root `tftp`, or a URL); the host is 10.0.2.2."""
        options = ["user", f"bootfile={_qemu_value(bootfile)}"]
        if tftp is not None:
            options.append(f"tftp={_qemu_value(str(tftp))}")
        return cls(",".join(options))


def _qemu_value(text: str) -> str:
    """A value inside a QEMU option list: commas are doubled."""
    return text.replace(",", ",,")


@dataclass(frozen=True)
class BootConfig:
    kernel: Path | None = None  # QEMU's -kernel; None for a network boot
    netboot: NetBoot | None = None  # boot from the network instead of kernel + image
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
    return [*machine, "-kernel", str(config.kernel), "-initrd", str(image), "-append", append]


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
    if config.netboot is not None:
        if config.kernel is not None or image is not None:
            raise BootError("a network boot takes no kernel and no image")
        return
    if config.kernel is None or image is None:
        raise BootError("a boot needs a kernel and an image, or a network boot")
    if not Path(config.kernel).is_file():
        raise BootError(f"kernel not found: {config.kernel} is not a file")
    if not Path(image).is_file():
        raise BootError(f"image not found: {image} is not a file")


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
    try:
        with selectors.DefaultSelector() as sel:
            assert proc.stdout is not None and proc.stderr is not None
            sel.register(proc.stdout, selectors.EVENT_READ, "console")
            sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
            while verdict is None:
                now = time.monotonic()
                if settle_until is None and judge.markers_done():
                    settle_until = min(now + SETTLE_SECONDS, deadline)
                if settle_until is not None and now >= settle_until:
                    verdict = BootOutcome.PASSED, judge.passed_reason()
                    break
                if now >= deadline:
                    verdict = BootOutcome.TIMED_OUT, _timeout_reason(judge, config)
                    break
                if not sel.get_map():  # both pipes at EOF: QEMU has exited
                    judge.feed(decoder.decode(b"", final=True))
                    judge.finish()
                    verdict = judge.verdict() or _exit_verdict(judge, proc, stderr, config.qemu)
                    break
                wake = settle_until if settle_until is not None else deadline
                for key, _ in sel.select(timeout=max(0.0, wake - now)):
                    data = os.read(key.fd, _READ_SIZE)
                    if not data:
                        sel.unregister(key.fileobj)
                    elif key.data == "console":
                        judge.feed(decoder.decode(data))
                    else:
                        stderr.append(data)
                if markers_seconds is None and judge.markers_done():  # when they came
                    markers_seconds = time.monotonic() - start
                verdict = judge.verdict()
        seconds = time.monotonic() - start
    finally:
        _reap(proc)
    outcome, reason = verdict
    return BootResult(
        outcome=outcome,
        reason=reason,
        console=judge.console,
        seconds=seconds,
        init_exit=judge.init_exit,
        accelerator=accelerator,
        markers_seconds=markers_seconds,
    )


def _timeout_reason(judge: _Judge, config: BootConfig) -> str:
    if judge.missing:
        what = _missing_text(judge.missing)
    elif judge.init_ran:
        what = f"{judge.init_ran} did not exit"
    else:
        what = "no init was run"
    return f"no verdict after {config.timeout:g}s: {what}"


def _exit_verdict(
    judge: _Judge, proc: subprocess.Popen[bytes], stderr: list[bytes], qemu: str
) -> tuple[BootOutcome, str]:
    """QEMU exited on its own and the console alone decided nothing."""
    status = proc.wait()
    if status != 0:
        err = b"".join(stderr).decode(errors="replace").strip().splitlines()
        raise QemuError(
            f"{Path(qemu).name} exited with status {status}" + (f": {err[-1]}" if err else ""),
            guest_output=bool(judge.console.strip()),
        )
    if judge.markers_done():
        return BootOutcome.PASSED, judge.passed_reason()
    last = next((ln for ln in reversed(judge.console.splitlines()) if ln.strip()), "")
    what = _missing_text(judge.missing) if judge.missing else "/init's exit was never reported"
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
    parser.add_argument("image", type=Path, help="initramfs image to boot (any compression)")
    parser.add_argument(
        "--kernel",
        required=True,
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


def run(args: argparse.Namespace) -> int:
    """Exit 0 when the boot passed, 1 when it failed, 3 when it timed out."""
    config = BootConfig(
        kernel=resolve_kernel(args.kernel).boot_kernel,
        append=args.append,
        memory_mb=args.memory,
        timeout=args.timeout,
        expect=tuple(args.expect),
        qemu=args.qemu,
        accelerator=None if args.accel == "auto" else Accelerator(args.accel),
    )
    result = boot(args.image, config)
    if args.console:
        print(result.console, end="" if result.console.endswith("\n") else "\n")
    print(format_result(result, tail_lines=0 if args.console else 30))
    return EXIT_STATUS[result.outcome]
