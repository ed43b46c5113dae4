"""Shared fixtures: the real kernel, rootfs and lsinitramfs that ci/setup caches.

Each comes from an environment variable that ci/test exports. When one is
unset the tests needing it are skipped on a developer machine, but fail under
CI (``CI`` set): CI must never pass by silently skipping.
"""

import os
from pathlib import Path

import pytest
from boot_helpers import compile_static_init

# docker_engine and the pytest-docker overrides; the engine matrix (engine fixture)
pytest_plugins = ["docker_fixtures", "engine_matrix"]


def _env_path(name: str, *, want_dir: bool = False) -> Path:
    value = os.environ.get(name)
    if not value:
        message = f"{name} is not set (run the tests through ci/test)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    path = Path(value)
    exists = path.is_dir() if want_dir else path.is_file()
    if not exists:
        pytest.fail(f"{name}={value} does not exist or is not a {'dir' if want_dir else 'file'}")
    return path


@pytest.fixture(scope="session")
def kernel() -> Path:
    """A bootable x86-64 kernel (ELF vmlinux or bzImage) for QEMU's -kernel."""
    return _env_path("NBIC_TEST_KERNEL")


@pytest.fixture(scope="session")
def bzimage() -> Path:
    """The same kernel as a bzImage: what network boot loaders load."""
    return _env_path("NBIC_TEST_BZIMAGE")


@pytest.fixture(scope="session")
def static_init(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static test /init (see boot_helpers)."""
    return compile_static_init(tmp_path_factory.mktemp("init"))


@pytest.fixture(scope="session")
def rootfs_dir() -> Path:
    """A debootstrapped minimal Debian bookworm root filesystem."""
    return _env_path("NBIC_TEST_ROOTFS", want_dir=True)


@pytest.fixture(scope="session")
def rootfs_tar() -> Path:
    """The same rootfs as an uncompressed tar (numeric owners)."""
    return _env_path("NBIC_TEST_ROOTFS_TAR")


@pytest.fixture(scope="session")
def lsinitramfs() -> Path:
    """A runnable Debian lsinitramfs, the reference lister for our images."""
    return _env_path("NBIC_TEST_LSINITRAMFS")
