"""Images as Debian ships them (an uncompressed early archive, then a zstd main
one) are listed exactly as Debian's own lsinitramfs lists them."""

import subprocess
import sys

from test_pack import REPO, pack


def test_two_segment_image_lists_like_lsinitramfs(rootfs_dir, lsinitramfs, tmp_path):
    early = tmp_path / "early"
    (early / "kernel/x86/microcode").mkdir(parents=True)
    (early / "kernel/x86/microcode/GenuineIntel.bin").write_bytes(b"microcode\n")
    names = subprocess.run("find . | sort", shell=True, cwd=early, capture_output=True,
                           check=True).stdout
    first = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=names, cwd=early,
                           capture_output=True, check=True).stdout
    main = tmp_path / "main.cpio.zst"
    pack(rootfs_dir, main)
    image = tmp_path / "initrd.img"
    image.write_bytes(first + main.read_bytes())

    theirs = subprocess.run([lsinitramfs, image], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    ours = subprocess.run([sys.executable, "-m", "nbic.cli", "cpio", "list", image], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout.splitlines()
    assert ours == theirs
    assert "kernel/x86/microcode/GenuineIntel.bin" in ours and "usr/bin/bash" in ours
