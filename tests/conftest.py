"""Shared fixtures: a real cloud daemon as a separate process on an ephemeral port."""
from __future__ import annotations

import pytest

from cloud.daemon import REPO, CloudDaemon  # noqa: F401 - REPO re-exported for tests


def CloudProcess(*args: str) -> CloudDaemon:
    return CloudDaemon(list(args)).start()


@pytest.fixture(scope="session")
def fmnist_cloud():
    cloud = CloudProcess("--model", "fmnist-vgg", "--profile-repeats", "1")
    yield cloud
    assert cloud.stop() == 0, "cloud did not exit 0 on SIGTERM"
