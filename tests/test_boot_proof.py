"""The real proof: images nbic packs from a file list boot a real kernel."""

import pytest
from test_pack import pack

from nbic.boot import BootConfig, BootOutcome, boot


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
