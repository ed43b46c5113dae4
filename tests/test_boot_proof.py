"""The real proof: images nbic packs from a file list boot a real kernel."""

import gzip
import lzma

import pytest
from test_pack import pack

from nbic.boot import BootConfig, BootOutcome, boot
from nbic.cpio.compress import XZ_BLOCK


@pytest.mark.boot
@pytest.mark.parametrize("suffix", ["cpio", "cpio.gz", "cpio.xz", "cpio.zst", "cpio.lz4"])
def test_bash_image_boots_and_runs_what_was_traced(rootfs_dir, kernel, tmp_path, suffix):
    image = tmp_path / f"bash.{suffix}"
    pack(rootfs_dir, image)
    result = boot(image, BootConfig(kernel=kernel, expect=("NBIC-BOOT-OK",), timeout=180))
    print(f"{suffix}: {image.stat().st_size} bytes, booted in {result.seconds:.1f}s")
    assert result.outcome is BootOutcome.PASSED, result.tail()
    assert result.init_exit == 0
    # What /init ran, seen on the console: `ls /` and `cat /etc/debian_version`.
    after_init = result.console.split("Run /init as init process")[-1]
    assert (rootfs_dir / "etc/debian_version").read_text().strip() in after_init
    assert "usr" in after_init and "lib64" in after_init


@pytest.mark.boot
@pytest.mark.parametrize("suffix", ["cpio.gz", "cpio.xz"])
def test_an_image_of_many_compressed_blocks_boots(rootfs_dir, kernel, tmp_path, suffix):
    """gzip and xz are written in blocks on all cores: the kernel takes them all
    (a bad block or xz index is an unpacking failure, which fails the boot)."""
    image = tmp_path / f"big.{suffix}"
    pack(rootfs_dir, image, "--include", "/usr/lib/x86_64-linux-gnu/*")
    with (gzip.open if suffix.endswith(".gz") else lzma.open)(image) as stream:
        plain = sum(len(chunk) for chunk in iter(lambda: stream.read(1 << 20), b""))
    assert plain > 2 * XZ_BLOCK  # three xz blocks at least, forty gzip blocks
    result = boot(image, BootConfig(kernel=kernel, expect=("NBIC-BOOT-OK",), timeout=300))
    print(f"{suffix}: {image.stat().st_size} bytes ({plain} uncompressed), "
          f"booted in {result.seconds:.1f}s")
    assert result.outcome is BootOutcome.PASSED, result.tail()
