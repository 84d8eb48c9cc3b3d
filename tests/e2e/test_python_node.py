"""The official Python client (`kubernetes` on PyPI) against a ferrokube node (clients.sh
runs it, KUBECONFIG set): exec as that client's users write it (interactive stdin over its
websocket, binary output, the v5 close of stdin, exit codes), pods of an untagged public
image pulled from the registry stand-in."""

import gzip
import time
import uuid

import pytest
from kubernetes import client, config
from kubernetes.stream import stream


@pytest.fixture(scope="module")
def core():
    api = client.CoreV1Api(config.new_client_from_config())
    deadline = time.time() + 30
    while True:
        try:
            api.read_namespaced_service_account("default", "default")
            break
        except client.rest.ApiException:
            assert time.time() < deadline, "no default service account"
            time.sleep(0.5)
    return api


@pytest.fixture(scope="module")
def pod(core):
    name = "py-exec-" + uuid.uuid4().hex[:8]
    core.create_namespaced_pod("default", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "main", "image": "busybox", "args": ["/bin/sh", "-c", "while true; do sleep 5; done"]}]},
    })
    deadline = time.time() + 90
    while core.read_namespaced_pod(name, "default").status.phase != "Running":
        assert time.time() < deadline, "pod did not start"
        time.sleep(0.5)
    yield name
    core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


def test_untagged_image_is_pulled_always(core, pod):
    p = core.read_namespaced_pod(pod, "default")
    assert p.spec.containers[0].image_pull_policy == "Always"
    assert p.status.container_statuses[0].image_id


def test_exec_output_text_and_binary(core, pod):
    out = stream(core.connect_get_namespaced_pod_exec, pod, "default", command=["/bin/sh", "-c", "for i in 1 2 3; do echo line $i; done"], stderr=False, stdin=False, stdout=True, tty=False)
    assert out.splitlines() == ["line 1", "line 2", "line 3"]
    raw = stream(core.connect_get_namespaced_pod_exec, pod, "default", command=["/bin/sh", "-c", "printf 'compressed text' | gzip"], stderr=False, stdin=False, stdout=True, tty=False, binary=True)
    assert isinstance(raw, bytes) and gzip.decompress(raw) == b"compressed text"


def test_interactive_exec_reads_what_stdin_wrote(core, pod):
    resp = stream(core.connect_post_namespaced_pod_exec, pod, "default", command=["/bin/sh"], stderr=True, stdin=True, stdout=True, tty=False, _preload_content=False)
    try:
        resp.write_stdin("echo first answer\n")
        assert resp.readline_stdout(timeout=5) == "first answer"
        resp.write_stdin("echo to stderr >&2\n")
        assert resp.readline_stderr(timeout=5) == "to stderr"
        resp.write_stdin("echo $((6 * 7))\n")
        assert resp.readline_stdout(timeout=5) == "42"
        resp.write_stdin("exit 3\n")
        resp.run_forever(timeout=10)
        assert not resp.is_open()
        assert resp.returncode == 3
    finally:
        resp.close()


def test_closing_stdin_ends_the_command(core, pod):
    resp = stream(core.connect_post_namespaced_pod_exec, pod, "default", command=["/bin/sh", "-c", "cat; echo after-eof"], stderr=True, stdin=True, stdout=True, tty=False, _preload_content=False)
    try:
        assert resp.subprotocol == "v5.channel.k8s.io"
        resp.write_stdin("echoed back\n")
        assert resp.readline_stdout(timeout=5) == "echoed back"
        resp.close_channel(0)
        resp.run_forever(timeout=15)
        assert not resp.is_open()
        assert resp.returncode == 0
        assert "after-eof" in resp.read_all()
    finally:
        resp.close()
