"""The Docker test environment: the builder image has what the agent needs."""

import pytest
from docker_fixtures import BUILDER_IMAGE, ROOTFS_IMAGE, ROOTFS_IMAGE_HELLO, ROOTFS_IMAGE_MARKER


def _run(client, image: str, command: list[str]) -> str:
    """Run command in a fresh container of image; its output (stdout+stderr)."""
    container = client.containers.create(image, command, network_disabled=True)
    try:
        container.start()
        status = container.wait(timeout=60)
        output = container.logs(stdout=True, stderr=True).decode()
        assert status["StatusCode"] == 0, f"{command} exited {status}: {output}"
        return output
    finally:
        container.remove(force=True)


@pytest.mark.parametrize(
    ("command", "expect"),
    [
        (["python3", "-c", "import ctypes, ctypes.util; print('ctypes ok')"], "ctypes ok"),
        (["strace", "-V"], "strace -- version"),
        (["debootstrap", "--version"], "debootstrap"),
        (["python3", "-c", "import nbic; print(nbic.__file__)"], "/opt/nbic/nbic/__init__.py"),
    ],
)
def test_builder_image_tools(docker_engine, command, expect):
    assert expect in _run(docker_engine, BUILDER_IMAGE, command)


def test_rootfs_image(docker_engine):
    marker = _run(docker_engine, ROOTFS_IMAGE, ["cat", "/etc/nbic-test-marker"])
    assert marker == ROOTFS_IMAGE_MARKER
    assert _run(docker_engine, ROOTFS_IMAGE, ["/chroot"]) == ROOTFS_IMAGE_HELLO
