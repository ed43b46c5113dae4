"""pytest-docker fixtures: a Docker engine with the nbic builder image built.

``docker_engine`` starts the services of tests/docker-compose.yml (project
``nbictests``) through Debian's ``docker-compose`` (Compose v1: no ``--wait``)
and returns a ``docker.DockerClient`` once the ``builder`` service runs. The
images the tests use are then present locally:

* ``nbic-builder:$NBIC_TEST_TAG`` (default ``test``): the builder image (repo root ``Dockerfile``);
* ``nbic-test-rootfs:$NBIC_TEST_TAG``: debian:bookworm plus ``/etc/nbic-test-marker``
  (``ROOTFS_IMAGE_MARKER``) and an executable ``/chroot`` script that prints
  ``ROOTFS_IMAGE_HELLO``.

With no engine answering, tests using ``docker_engine`` are skipped on a
developer machine but fail under CI (``CI`` or ``NBIC_TEST_DOCKER`` set; ci/test
sets the latter after ci/setup has started the engine).
"""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from nbic import engine

# NBIC_TEST_TAG and NBIC_TEST_COMPOSE_PROJECT keep concurrent test runs (one per
# checkout) from sharing compose services and image tags.
TEST_TAG = os.environ.get("NBIC_TEST_TAG", "test")
BUILDER_IMAGE = f"nbic-builder:{TEST_TAG}"
ROOTFS_IMAGE = f"nbic-test-rootfs:{TEST_TAG}"
PYTHON_IMAGE = f"nbic-test-python:{TEST_TAG}"  # + python3, perl, sqlite3, tzdata, CAs
ROOTFS_IMAGE_MARKER = "nbic test rootfs marker\n"
ROOTFS_IMAGE_HELLO = "hello-from-docker-rootfs\n"
COMPOSE_PROJECT = os.environ.get("NBIC_TEST_COMPOSE_PROJECT", "nbictests")
COMPOSE_FILE = Path(__file__).with_name("docker-compose.yml")


def _docker_required() -> bool:
    return bool(os.environ.get("CI") or os.environ.get("NBIC_TEST_DOCKER"))


def _unavailable(message: str) -> None:
    if _docker_required():
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def docker_compose_command() -> str:
    return "docker-compose"


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(COMPOSE_FILE)


@pytest.fixture(scope="session")
def docker_compose_project_name() -> str:
    return COMPOSE_PROJECT


@pytest.fixture(scope="session")
def docker_setup() -> list[str]:
    # Compose v1 has no `up --wait`; docker_engine waits for `builder` itself.
    return ["up --build -d"]


@pytest.fixture(scope="session")
def docker_engine(request: pytest.FixtureRequest) -> Iterator[docker.DockerClient]:
    """A DockerClient for the local engine, with the compose services up."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        _unavailable(f"no Docker engine answers (run ci/setup or ci/docker-setup): {e}")
    # Only now start the services: docker_services would raise a bare
    # Exception (an error, not a skip) without an engine.
    services = request.getfixturevalue("docker_services")

    def builder_running() -> bool:
        containers = client.containers.list(
            filters={
                "label": [
                    f"com.docker.compose.project={COMPOSE_PROJECT}",
                    "com.docker.compose.service=builder",
                ],
                "status": "running",
            }
        )
        return bool(containers)

    services.wait_until_responsive(check=builder_running, timeout=60.0, pause=0.5)
    base = str(request.getfixturevalue("tmp_path_factory").getbasetemp())
    before = {volume.name for volume in client.volumes.list(filters={"label": "nbic.source"})}
    try:
        yield client
    finally:
        # The rootfs volumes this run imported from its own temporary directories
        # and tars: nothing will use them again (the CI rootfs's are kept).
        for volume in client.volumes.list(filters={"label": "nbic.source"}):
            source = (volume.attrs.get("Labels") or {}).get("nbic.source", "")
            if volume.name not in before and source.startswith(base):
                engine.wait_for_ended_users(client, volume.name)  # sessions remove themselves
                with contextlib.suppress(docker.errors.APIError):  # still in use: kept
                    volume.remove()
        client.close()
