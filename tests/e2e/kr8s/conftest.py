"""Stands in for kr8s's root conftest (which makes a kind cluster): the session's cluster is
the ferrokube node clients.sh runs (KUBECONFIG and KUBECTL from the environment). Copied over
the root conftest of kr8s's unpacked sdist before its tests run."""
import gc
import os
import subprocess
import time
from pathlib import Path

import pytest


class FerrokubeCluster:
    """What kr8s's fixtures use of pytest-kind's KindCluster."""

    def __init__(self):
        self.kubeconfig_path = Path(os.environ["KUBECONFIG"])
        self.kubectl_path = os.environ["KUBECTL"]

    def kubectl(self, *args):
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig_path)}
        return subprocess.run([self.kubectl_path, *args], env=env, check=True, capture_output=True, text=True).stdout


def pytest_addoption(parser):
    parser.addoption("--keep-cluster", action="store_true", help="accepted for kr8s's addopts; the cluster is not this conftest's")


@pytest.fixture
def ensure_gc():
    gc.collect()
    yield
    gc.collect()


@pytest.fixture(scope="session", autouse=True)
def k8s_cluster():
    cluster = FerrokubeCluster()
    deadline = time.time() + 30
    while True:
        try:
            cluster.kubectl("get", "serviceaccount", "default")
            break
        except subprocess.CalledProcessError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)
    yield cluster
