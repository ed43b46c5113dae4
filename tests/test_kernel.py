"""Kernels from package sources (nbic.kernel) and the vmlinux inside a bzImage
(nbic.vmlinux): synthetic bzImages in every compression the kernel uses,
synthetic .debs built by the real dpkg-deb, and a real fetch of
debian:bookworm:linux-image-amd64 through the Docker engine, booted in QEMU."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zstandard
from test_boot import MARKER, _image

from nbic import engine
from nbic import kernel as kernel_module
from nbic.cpio.compress import Compression, CompressionSpec, compressed_writer
from nbic.errors import KernelError, UsageError
from nbic.kernel import (
    KernelFiles,
    KernelSource,
    install_deb,
    parse_kernel_source,
    resolve_kernel,
)
from nbic.rootfs import DEFAULT_MIRROR
from nbic.tree import open_tree
from nbic.vmlinux import extract_vmlinux, main

SOURCE = "debian:bookworm:linux-image-amd64"

# --- sources -----------------------------------------------------------------------


def test_parse_kernel_source():
    assert parse_kernel_source(SOURCE) == KernelSource("bookworm", "linux-image-amd64")
    assert parse_kernel_source(
        "debian:trixie:linux-image-cloud-amd64:http://mirror.example/debian/") == \
        KernelSource("trixie", "linux-image-cloud-amd64", "http://mirror.example/debian/")
    assert str(KernelSource("bookworm", "linux-image-amd64")) == SOURCE
    assert DEFAULT_MIRROR.startswith("http")
    for bad in ("debian:bookworm", "debian::linux-image-amd64", "debian:bookworm:Linux Image",
                "debian:bookworm:linux-image-amd64:ftp://x", "debian:book worm:linux",
                "debian:bookworm:linux-image-amd64:http://x/'; rm -rf /"):
        with pytest.raises(UsageError):
            parse_kernel_source(bad)
    assert parse_kernel_source("/boot/vmlinuz-6.1.0-50-amd64") is None


def test_a_kernel_file_is_taken_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "connect", _no_engine)
    assert resolve_kernel(tmp_path / "vmlinux") == KernelFiles(vmlinuz=tmp_path / "vmlinux")
    assert resolve_kernel("vmlinuz").boot_kernel == Path("vmlinuz")


def _no_engine():
    raise AssertionError("the engine was asked for")


# --- vmlinux out of a bzImage ---------------------------------------------------------

ELF = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 1200  # ~300 KiB: several chunks


def _with_size(data: bytes) -> bytes:
    """The kernel appends the uncompressed size to every payload but gzip's."""
    return data + struct.pack("<I", len(ELF))


def _lz4_legacy(data: bytes) -> bytes:
    out = io.BytesIO()
    with compressed_writer(out, CompressionSpec(Compression.LZ4)) as stream:
        stream.write(data)
    return out.getvalue()


PAYLOADS = {
    "xz": lambda d: _with_size(lzma.compress(d, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)),
    "gzip": lambda d: gzip.compress(d, mtime=0),
    "zstd": lambda d: _with_size(zstandard.ZstdCompressor(write_content_size=False).compress(d)),
    "lzma": lambda d: _with_size(lzma.compress(d, format=lzma.FORMAT_ALONE)),
    "bzip2": lambda d: _with_size(bz2.compress(d)),
    "lz4": lambda d: _with_size(_lz4_legacy(d)),
}


def bzimage(payload: bytes, *, protocol: int = 0x020F, setup_sects: int = 3) -> bytes:
    """A bzImage as far as its boot header goes: setup sectors, then the
    protected-mode code with the payload 0x40 bytes in."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, protocol)
    struct.pack_into("<II", setup, 0x248, 0x40, len(payload))
    return bytes(setup) + b"\x90" * 0x40 + payload + b"\xcc" * 100


@pytest.mark.parametrize("method", sorted(PAYLOADS))
def test_extract_vmlinux(method):
    out = io.BytesIO()
    assert extract_vmlinux(io.BytesIO(bzimage(PAYLOADS[method](ELF))), out) == method
    assert out.getvalue() == ELF


def test_extract_vmlinux_refuses_what_it_cannot_do():
    def extract(image: bytes) -> None:
        extract_vmlinux(io.BytesIO(image), io.BytesIO())

    with pytest.raises(KernelError, match="not a bzImage"):
        extract(ELF)
    with pytest.raises(KernelError, match=r"protocol 2\.06"):
        extract(bzimage(PAYLOADS["xz"](ELF), protocol=0x0206))
    with pytest.raises(KernelError, match="not an ELF"):
        extract(bzimage(PAYLOADS["xz"](b"MZ" + ELF)))
    with pytest.raises(KernelError, match="unknown compression"):
        extract(bzimage(b"\x00" * 64))
    whole = PAYLOADS["xz"](ELF)
    with pytest.raises(KernelError, match="truncated xz"):
        extract(bzimage(whole)[: -len(whole) // 2])
    corrupt = bytearray(whole)
    corrupt[len(corrupt) // 2] ^= 0xFF
    with pytest.raises(KernelError, match="corrupt xz"):
        extract(bzimage(bytes(corrupt)))


def test_the_command_line_writes_whole_files_or_none(tmp_path, capsys):
    (tmp_path / "vmlinuz").write_bytes(bzimage(PAYLOADS["xz"](ELF)))
    assert main([str(tmp_path / "vmlinuz"), str(tmp_path / "vmlinux")]) == 0
    assert (tmp_path / "vmlinux").read_bytes() == ELF
    assert "xz payload" in capsys.readouterr().out
    (tmp_path / "broken").write_bytes(bzimage(PAYLOADS["xz"](b"MZ" + ELF)))
    assert main([str(tmp_path / "broken"), str(tmp_path / "out")]) == 1
    assert sorted(os.listdir(tmp_path)) == ["broken", "vmlinux", "vmlinuz"]


# --- .debs -----------------------------------------------------------------------------

RELEASE = "9.9.9-nbic-amd64"


def _deb(tmp_path: Path, package: str, *, compression: str = "xz",
         depends: str | None = None, files: dict[str, bytes] | None = None,
         links: dict[str, str] | None = None) -> Path:
    """A .deb built by dpkg-deb itself."""
    dpkg_deb = shutil.which("dpkg-deb")
    if dpkg_deb is None:
        pytest.fail("dpkg-deb is missing (a Debian host is required)")
    root = tmp_path / f"{package}-tree"
    (root / "DEBIAN").mkdir(parents=True)
    control = (f"Package: {package}\nVersion: 1:9.9.9-1\nArchitecture: amd64\n"
               "Maintainer: nbic tests <nbic@example.org>\nDescription: test package\n")
    if depends:
        control += f"Depends: {depends}\n"
    (root / "DEBIAN/control").write_text(control)
    for name, data in (files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    for name, target in (links or {}).items():
        (root / name).symlink_to(target)
    deb = tmp_path / f"{package}.deb"
    subprocess.run([dpkg_deb, f"-Z{compression}", "--root-owner-group", "--build", str(root),
                    str(deb)], check=True, capture_output=True)
    return deb


def _kernel_deb(tmp_path: Path, *, compression: str = "xz", pvh: bool = True) -> Path:
    modules = f"lib/modules/{RELEASE}"
    return _deb(tmp_path, "linux-image-9.9.9-nbic-amd64", compression=compression, files={
        f"boot/vmlinuz-{RELEASE}": bzimage(PAYLOADS["xz"](ELF)),
        f"boot/config-{RELEASE}": b"CONFIG_64BIT=y\n" + (b"CONFIG_PVH=y\n" if pvh else b""),
        f"boot/System.map-{RELEASE}": b"ffffffff81000000 T _text\n",
        f"{modules}/kernel/fs/ext4/ext4.ko": b"\x7fELF ext4 module",
        f"{modules}/modules.dep": b"kernel/fs/ext4/ext4.ko:\n",
        "usr/share/doc/linux-image-9.9.9-nbic-amd64/copyright": b"GPL-2\n",
    }, links={f"{modules}/build": f"/usr/src/linux-headers-{RELEASE}"})


@pytest.mark.parametrize("compression", ["xz", "gzip", "zstd", "none"])
def test_install_a_kernel_deb(tmp_path, compression):
    deb = _kernel_deb(tmp_path, compression=compression)
    root = tmp_path / "kernels"
    with open(deb, "rb") as stream:
        files = install_deb(stream, root, SOURCE)
    entry = root / "linux-image-9.9.9-nbic-amd64_1%3a9.9.9-1"
    assert files == KernelFiles(vmlinuz=entry / "vmlinuz", vmlinux=entry / "vmlinux",
                                release=RELEASE, package="linux-image-9.9.9-nbic-amd64",
                                version="1:9.9.9-1", modules=entry / "modules.tar.zst")
    assert files.boot_kernel == entry / "vmlinux"
    assert files.vmlinux.read_bytes() == ELF
    assert files.vmlinuz.read_bytes() == bzimage(PAYLOADS["xz"](ELF))
    assert sorted(os.listdir(root)) == [entry.name]  # no temporary directory left
    info = json.loads((entry / "kernel.json").read_text())
    assert info["deb_sha256"] == _sha256(deb) and info["source"] == SOURCE
    with open_tree(files.modules) as tree:
        # The package has no members for lib and lib/modules: the tree adds them.
        assert sorted(tree.entries) == [
            "lib", "lib/modules", f"lib/modules/{RELEASE}", f"lib/modules/{RELEASE}/build",
            f"lib/modules/{RELEASE}/kernel", f"lib/modules/{RELEASE}/kernel/fs",
            f"lib/modules/{RELEASE}/kernel/fs/ext4",
            f"lib/modules/{RELEASE}/kernel/fs/ext4/ext4.ko",
            f"lib/modules/{RELEASE}/modules.dep"]
        assert tree.entries[f"lib/modules/{RELEASE}/build"].linkname == \
            f"/usr/src/linux-headers-{RELEASE}"
        tree.prefetch([f"lib/modules/{RELEASE}/modules.dep"])
        with tree.open(f"lib/modules/{RELEASE}/modules.dep") as data:
            assert data.read() == b"kernel/fs/ext4/ext4.ko:\n"
    # The same version again (a concurrent fetch): the first copy stays.
    with open(deb, "rb") as stream:
        assert install_deb(stream, root, SOURCE) == files
    assert sorted(os.listdir(root)) == [entry.name]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_without_pvh_the_vmlinuz_boots(tmp_path):
    with open(_kernel_deb(tmp_path, pvh=False), "rb") as stream:
        files = install_deb(stream, tmp_path / "kernels", SOURCE)
    assert files.vmlinux is None and files.boot_kernel == files.vmlinuz


def test_a_metapackage_names_its_kernel(tmp_path):
    deb = _deb(tmp_path, "linux-image-amd64",
               depends="kmod, linux-image-9.9.9-nbic-amd64 (= 9.9.9-1) | linux-image-other")
    root = tmp_path / "kernels"
    with open(deb, "rb") as stream:
        assert install_deb(stream, root, SOURCE) == "linux-image-9.9.9-nbic-amd64"
    assert os.listdir(root) == []
    with open(_deb(tmp_path, "not-a-kernel", depends="libc6"), "rb") as stream, \
            pytest.raises(KernelError, match="no /boot/vmlinuz"):
        install_deb(stream, root, SOURCE)
    assert os.listdir(root) == []


class _Interrupted(io.RawIOBase):
    """A download that stops after `limit` bytes, as Ctrl-C or a lost connection."""

    def __init__(self, data: bytes, limit: int):
        self._data = io.BytesIO(data[:limit])

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        size = self._data.readinto(buffer)
        if not size:
            raise KeyboardInterrupt
        return size


def test_an_interrupted_fetch_leaves_nothing_cached(tmp_path):
    data = _kernel_deb(tmp_path).read_bytes()
    root = tmp_path / "kernels"
    for limit in (100, len(data) // 2, len(data) - 10):
        with pytest.raises(KeyboardInterrupt):
            install_deb(io.BufferedReader(_Interrupted(data, limit)), root, SOURCE)
        assert os.listdir(root) == []
    with pytest.raises(KernelError, match="not a Debian package"):
        install_deb(io.BytesIO(b"<html>proxy error</html>"), root, SOURCE)
    assert os.listdir(root) == []


# --- a real kernel from Debian, through the engine ----------------------------------------


@pytest.fixture(scope="session")
def kernel_cache(tmp_path_factory) -> Path:
    """One XDG_CACHE_HOME for the session: the real kernel is fetched once."""
    return tmp_path_factory.mktemp("xdg-cache")


def _kernel_containers(client) -> set[str]:
    return {c.id for c in client.containers.list(all=True, filters={"label": "nbic=kernel"})}


@pytest.fixture(scope="session")
def fetched(docker_engine, kernel_cache) -> KernelFiles:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(kernel_cache))
        before = _kernel_containers(docker_engine)
        start = time.monotonic()
        files = resolve_kernel(SOURCE)
        print(f"\nfetched {files.package} {files.version} in {time.monotonic() - start:.1f}s")
        assert _kernel_containers(docker_engine) <= before  # the fetch container is gone
    return files


def test_fetch_a_debian_kernel(fetched, kernel_cache, monkeypatch):
    assert re.fullmatch(r"linux-image-\d+\.\d+\.\d+-\d+-amd64", fetched.package)
    assert fetched.package == f"linux-image-{fetched.release}"
    assert fetched.vmlinuz.parent == \
        kernel_cache / "nbic/kernels" / f"{fetched.package}_{fetched.version}"
    assert fetched.vmlinux is not None and fetched.vmlinux.read_bytes()[:4] == b"\x7fELF"
    with open_tree(fetched.modules) as tree:
        # No modules.dep: the package's postinst has depmod make it.
        assert f"lib/modules/{fetched.release}/modules.builtin" in tree
        assert any(name.endswith("/ext4.ko") for name in tree.entries)
    # The second call is the cache alone: no engine, no network.
    monkeypatch.setenv("XDG_CACHE_HOME", str(kernel_cache))
    monkeypatch.setattr(engine, "connect", _no_engine)
    monkeypatch.setattr(kernel_module, "fetch", _no_engine)
    start = time.monotonic()
    assert resolve_kernel(SOURCE) == fetched
    print(f"\ncached lookup in {time.monotonic() - start:.3f}s")


@pytest.mark.boot
def test_boot_with_the_fetched_kernel(fetched, kernel_cache, static_init, tmp_path):
    """`nbic boot --kernel debian:...` takes the cached kernel (its ELF vmlinux)."""
    image = _image(tmp_path, static_init, marker=MARKER)
    result = subprocess.run(
        [sys.executable, "-m", "nbic.cli", "boot", str(image), "--kernel", SOURCE,
         "--expect", MARKER, "--console", "--timeout", "180", "--debug"],
        env={**os.environ, "XDG_CACHE_HOME": str(kernel_cache)}, capture_output=True,
        text=True)
    verdict = result.stdout.splitlines()[-1]
    print(f"\n{verdict}")
    assert result.returncode == 0, result.stderr + verdict
    assert re.match(r"boot PASSED in [\d.]+s \((kvm|tcg)\)", verdict)
    assert f"Linux version {fetched.release}" in result.stdout
    assert f"kernel {SOURCE}: cached {fetched.package}" in result.stderr
    assert "fetching" not in result.stderr
