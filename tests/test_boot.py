"""nbic.boot against a real kernel in QEMU, with tiny GNU-cpio-built images.

The images hold the static C /init of boot_helpers (the `static_init`
fixture), whose behaviour is set by data files next to it.

Each boot takes a few seconds under TCG, so there are only a handful.
"""

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cpio_helpers import need

from nbic import boot as boot_module
from nbic.boot import (
    Accelerator,
    BootConfig,
    BootOutcome,
    BootResult,
    NetBoot,
    _Judge,
    boot,
    choose_accelerator,
    format_result,
    qemu_command,
)
from nbic.errors import BootError, QemuError

MARKER = "NBIC-TEST-MARKER"


def _cpio_newc(root: Path) -> bytes:
    """Archive a directory with GNU cpio, the independent reference writer."""
    cpio = need("cpio")
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    return subprocess.run(
        [cpio, "-o", "-H", "newc", "--quiet"],
        cwd=root,
        input="\n".join(names).encode() + b"\n",
        stdout=subprocess.PIPE,
        check=True,
    ).stdout


def _image(
    tmp_path: Path,
    init: Path | None,
    *,
    marker: str | None = None,
    exit_code: str = "0",
) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    if init is not None:
        shutil.copy(init, root / "init")
        (root / "init").chmod(0o755)
    if marker is not None:
        (root / "marker").write_text(marker + "\n")
    (root / "exit-code").write_text(exit_code)
    image = tmp_path / "image.cpio.gz"
    image.write_bytes(gzip.compress(_cpio_newc(root), mtime=0))
    return image


def _boot(image: Path, kernel: Path, **config: object) -> BootResult:
    config.setdefault("timeout", 120.0)
    result = boot(image, BootConfig(kernel=kernel, **config))  # type: ignore[arg-type]
    # Shown with -s; ci/test's pytest -q keeps it quiet.
    print(f"\n{format_result(result, tail_lines=10)}")
    return result


def _qemu_running_with(path: Path) -> bool:
    """Whether any process still has ``path`` on its command line."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(path).encode() in cmdline.split(b"\0"):
            return True
    return False


@pytest.mark.boot
def test_passing_boot_sees_markers_and_exit_zero(tmp_path, kernel, static_init):
    image = _image(tmp_path, static_init, marker=f"hello {MARKER} world")
    result = _boot(image, kernel, expect=(MARKER, "Run /init as init process"))
    assert result.outcome is BootOutcome.PASSED, format_result(result)
    assert result.init_exit == 0
    assert MARKER in result.console
    assert "PASSED" in format_result(result)
    assert not _qemu_running_with(image)


@pytest.mark.boot
def test_init_exiting_nonzero_fails_with_its_status(tmp_path, kernel, static_init):
    image = _image(tmp_path, static_init, marker=MARKER, exit_code="3")
    result = _boot(image, kernel, expect=(MARKER,))
    assert result.outcome is BootOutcome.FAILED, format_result(result)
    assert result.init_exit == 3
    assert "status 3" in result.reason
    report = format_result(result)
    assert "FAILED" in report and "exitcode=0x00000300" in report  # the tail


@pytest.mark.boot
def test_image_without_init_fails(tmp_path, kernel):
    image = _image(tmp_path, None, marker=MARKER)
    result = _boot(image, kernel, expect=(MARKER,))
    assert result.outcome is BootOutcome.FAILED, format_result(result)
    # The kernel falls back to mounting a root device, which does not exist.
    assert "no /init was run" in result.reason
    assert "Kernel panic" in result.reason
    assert result.init_exit is None


@pytest.mark.boot
def test_non_executable_init_fails_to_execute(tmp_path, kernel):
    root_init = tmp_path / "not-elf"
    root_init.write_bytes(b"\0\1\2 this is not an executable format\n")
    image = _image(tmp_path, root_init)
    result = _boot(image, kernel)
    assert result.outcome is BootOutcome.FAILED, format_result(result)
    assert result.reason.startswith("Failed to execute /init"), result.reason


@pytest.mark.boot
def test_truncated_gzip_fails_unpacking(tmp_path, kernel, static_init):
    image = _image(tmp_path, static_init, marker=MARKER)
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    result = _boot(image, kernel, expect=(MARKER,))
    assert result.outcome is BootOutcome.FAILED, format_result(result)
    assert result.reason.startswith("Initramfs unpacking failed: "), result.reason
    # The kernel's own words follow the colon.
    assert len(result.reason) > len("Initramfs unpacking failed: ")


@pytest.mark.boot
def test_missing_marker_after_exit_zero_fails_naming_it(tmp_path, kernel, static_init):
    image = _image(tmp_path, static_init, marker=MARKER)
    result = _boot(image, kernel, expect=(MARKER, "NEVER-PRINTED"), timeout=60.0)
    assert result.outcome is BootOutcome.FAILED, format_result(result)
    assert "'NEVER-PRINTED'" in result.reason
    assert f"'{MARKER}'" not in result.reason
    assert result.init_exit == 0


@pytest.mark.boot
def test_missing_marker_while_init_hangs_times_out(tmp_path, kernel, static_init):
    image = _image(tmp_path, static_init, marker=MARKER, exit_code="hang")
    result = _boot(image, kernel, expect=("NEVER-PRINTED",), timeout=8.0)
    assert result.outcome is BootOutcome.TIMED_OUT, format_result(result)
    assert "'NEVER-PRINTED'" in result.reason
    assert 8.0 <= result.seconds < 20.0
    assert not _qemu_running_with(image)  # killed and reaped at the deadline


# --- no QEMU needed ---------------------------------------------------------


@pytest.mark.parametrize("missing", ["kernel", "qemu", "image"])
def test_missing_inputs_raise_boot_error(tmp_path, missing):
    image = tmp_path / "image"
    image.write_bytes(b"")
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"")
    config = BootConfig(kernel=kernel, qemu="qemu-system-x86_64")
    if missing == "kernel":
        config = BootConfig(kernel=tmp_path / "no-such-kernel")
    elif missing == "qemu":
        config = BootConfig(kernel=kernel, qemu=str(tmp_path / "no-such-qemu"))
    else:
        image = tmp_path / "no-such-image"
    if missing != "qemu" and shutil.which(config.qemu) is None:
        pytest.skip("the qemu check comes first and QEMU is not installed")
    with pytest.raises(BootError, match=f"no-such-{missing}"):
        boot(image, config)


def _judge(console: str, expect: tuple[str, ...] = ()) -> _Judge:
    judge = _Judge(expect)
    # Feed in odd-sized pieces: lines and markers split across reads.
    for i in range(0, len(console), 7):
        judge.feed(console[i : i + 7])
    return judge


def test_marker_on_the_kernel_command_line_does_not_count():
    judge = _judge("[ 0.0] Kernel command line: console=ttyS0 panic=-1 X=MARK\r\n", ("MARK",))
    assert judge.missing == ["MARK"]
    assert _judge("MAR" + "K", ("MARK",)).missing == []


def test_init_killed_by_signal_is_a_failure():
    judge = _judge(
        "[ 1.0] Run /init as init process\n"
        "[ 1.1] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b\n"
    )
    assert judge.verdict() == (BootOutcome.FAILED, "/init was killed by signal 11")
    assert judge.init_exit == 128 + 11


def test_clean_exit_without_markers_passes_only_after_init_ran():
    judge = _judge(
        "[ 1.0] Run /init as init process\n"
        "[ 1.1] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000000\n"
    )
    outcome, _ = judge.verdict() or (None, "")
    assert outcome is BootOutcome.PASSED
    assert _judge("[ 1.0] Run /init as init process\n").verdict() is None


def test_unpacking_failure_keeps_the_kernels_reason():
    judge = _judge("\x1b[2J[ 0.5] Initramfs unpacking failed: junk within compressed archive\n")
    assert judge.verdict() == (
        BootOutcome.FAILED,
        "Initramfs unpacking failed: junk within compressed archive",
    )


def test_format_result_shows_the_tail_only_on_failure():
    console = "".join(f"line {i}\n" for i in range(50))
    failed = BootResult(BootOutcome.FAILED, "Kernel panic: x", console, 1.25, None,
                        Accelerator.TCG)
    report = format_result(failed, tail_lines=3)
    assert report.splitlines()[0] == "boot FAILED in 1.2s (tcg): Kernel panic: x"
    assert report.splitlines()[-3:] == ["line 47", "line 48", "line 49"]
    assert format_result(failed, tail_lines=0) == "boot FAILED in 1.2s (tcg): Kernel panic: x"
    assert failed.tail(0) == ""
    passed = BootResult(BootOutcome.PASSED, "ok", console, 2.0, 0, Accelerator.KVM)
    assert format_result(passed) == "boot PASSED in 2.0s (kvm), /init exit 0: ok"


# --- the accelerator ----------------------------------------------------------


def test_kvm_only_where_the_device_opens_read_write(tmp_path):
    assert choose_accelerator(tmp_path / "no-such-device") is Accelerator.TCG
    (tmp_path / "regular").write_bytes(b"")
    assert choose_accelerator(tmp_path / "regular") is Accelerator.TCG  # not a device
    assert choose_accelerator("/dev/null") is Accelerator.KVM  # a char device that opens
    read_only = tmp_path / "read-only"
    read_only.write_bytes(b"")
    read_only.chmod(0o444)
    if os.geteuid() != 0:  # root opens it anyway
        assert choose_accelerator(read_only) is Accelerator.TCG


def test_qemu_command_per_accelerator(tmp_path):
    config = BootConfig(kernel=tmp_path / "vmlinux")
    kvm = qemu_command(tmp_path / "img", config, Accelerator.KVM)
    tcg = qemu_command(tmp_path / "img", config, Accelerator.TCG)
    assert kvm[kvm.index("-accel"):][:4] == ["-accel", "kvm", "-cpu", "host"]
    assert tcg[tcg.index("-accel"):][:2] == ["-accel", "tcg"]
    assert "-cpu" not in tcg


def _fake_qemu(tmp_path: Path, on_kvm: str) -> str:
    """A QEMU that runs `on_kvm` (shell) when asked for KVM, else the real QEMU."""
    real = need("qemu-system-x86_64")
    script = tmp_path / "qemu"
    script.write_text(f"""#!/bin/sh
case " $* " in *" -accel kvm "*) {on_kvm} ;; esac
exec {real} "$@"
""")
    script.chmod(0o755)
    return str(script)


@pytest.mark.boot
def test_broken_kvm_falls_back_to_tcg(tmp_path, kernel, static_init, monkeypatch, caplog):
    """As nested KVM that refuses the host CPU model: QEMU exits at once."""
    monkeypatch.setattr(boot_module, "choose_accelerator", lambda: Accelerator.KVM)
    qemu = _fake_qemu(tmp_path, "echo 'failed to set MSR' >&2; exit 134")
    image = _image(tmp_path, static_init, marker=MARKER)
    with caplog.at_level("WARNING", logger="nbic"):
        result = _boot(image, kernel, expect=(MARKER,), qemu=qemu)
    assert result.outcome is BootOutcome.PASSED, format_result(result)
    assert result.accelerator is Accelerator.TCG
    assert "KVM is not usable here" in caplog.text and "failed to set MSR" in caplog.text
    # Asked for KVM explicitly, nbic does not second-guess the user.
    with pytest.raises(QemuError, match="failed to set MSR"):
        _boot(image, kernel, qemu=qemu, accelerator=Accelerator.KVM)


def test_no_fallback_once_the_guest_printed(tmp_path, monkeypatch):
    monkeypatch.setattr(boot_module, "choose_accelerator", lambda: Accelerator.KVM)
    qemu = _fake_qemu(tmp_path, "echo 'Linux version 6.1'; exit 1")
    (tmp_path / "vmlinux").write_bytes(b"")
    (tmp_path / "img").write_bytes(b"")
    with pytest.raises(QemuError, match="status 1"):
        boot(tmp_path / "img", BootConfig(kernel=tmp_path / "vmlinux", qemu=qemu))


def test_a_firmware_with_nothing_to_boot_fails_with_ipxes_last_error():
    judge = _judge(
        "Configuring (net0 52:54:00:12:34:56)...... ok\n"
        "tftp://10.0.2.2/boot.ipxe... No such file or directory (http://ipxe.org/2d12603b\n"
        ")\nNo more network devices\nBooting from Floppy...\n"
        "No bootable device.  Retrying in 0 seconds.\n")
    assert judge.verdict() == (
        BootOutcome.FAILED,
        "the firmware found no bootable device "
        "(iPXE: tftp://10.0.2.2/boot.ipxe... No such file or directory)")
    assert _judge("No bootable device.\n").verdict() == (
        BootOutcome.FAILED, "the firmware found no bootable device")


def test_a_network_boot_runs_the_nic_rom_instead_of_a_kernel(tmp_path):
    net = NetBoot.user("boot.ipxe", tftp=tmp_path / "a,b")
    command = qemu_command(None, BootConfig(netboot=net), Accelerator.TCG)
    assert "-kernel" not in command and "-initrd" not in command
    assert command[command.index("-netdev") + 1] == \
        f"user,bootfile=boot.ipxe,tftp={tmp_path}/a,,b,id=net0"
    assert command[command.index("-device") + 1] == "e1000,netdev=net0"
    assert command[command.index("-boot") + 1] == "order=n,reboot-timeout=0"
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("the qemu check comes first and QEMU is not installed")
    with pytest.raises(BootError, match="no kernel and no image"):
        boot(None, BootConfig(kernel=tmp_path / "vmlinux", netboot=net))
    with pytest.raises(BootError, match="a kernel and an image, or a network boot"):
        boot(None, BootConfig(kernel=tmp_path / "vmlinux"))
