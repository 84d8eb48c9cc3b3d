"""The official Python client (`kubernetes` on PyPI) against `ferrokube server --disable-agent`."""

import os
import random
import shutil
import subprocess
import tempfile
import threading
import time

import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

FERROKUBE = os.environ.get("FERROKUBE", "target/debug/ferrokube")


@pytest.fixture(scope="module")
def api_client():
    work = tempfile.mkdtemp(prefix="ferrokube-py.")
    port = random.randint(20000, 40000)
    kubeconfig = os.path.join(work, "kubeconfig")
    log = open(os.path.join(work, "server.log"), "w")
    proc = subprocess.Popen(
        [FERROKUBE, "server", "--disable-agent", "--data-dir", os.path.join(work, "data"),
         "--https-listen-port", str(port), "--bind-address", "127.0.0.1", "--write-kubeconfig", kubeconfig],
        stdout=log, stderr=subprocess.STDOUT)
    http = urllib3.PoolManager(cert_reqs="CERT_NONE")
    urllib3.disable_warnings()
    for _ in range(200):
        try:
            if http.request("GET", f"https://127.0.0.1:{port}/readyz", timeout=0.5).status == 200:
                break
        except Exception:
            pass
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("ferrokube did not become ready")
    yield config.new_client_from_config(config_file=kubeconfig)
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(work, ignore_errors=True)


def test_configmap_crud(api_client):
    core = client.CoreV1Api(api_client)
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py-cm", labels={"app": "py"}), data={"a": "1"})
    created = core.create_namespaced_config_map("default", body)
    assert created.metadata.uid and created.metadata.resource_version
    got = core.read_namespaced_config_map("py-cm", "default")
    assert got.data == {"a": "1"}
    listed = core.list_namespaced_config_map("default", label_selector="app=py")
    assert [i.metadata.name for i in listed.items] == ["py-cm"]
    patched = core.patch_namespaced_config_map("py-cm", "default", {"data": {"b": "2"}})
    assert patched.data == {"a": "1", "b": "2"}
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map("default", body)
    assert err.value.status == 409
    core.delete_namespaced_config_map("py-cm", "default")
    with pytest.raises(ApiException) as err:
        core.read_namespaced_config_map("py-cm", "default")
    assert err.value.status == 404


def test_namespace_crud(api_client):
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="py-ns")))
    assert core.read_namespace("py-ns").status.phase == "Active"
    core.patch_namespace("py-ns", {"metadata": {"labels": {"team": "a"}}})
    assert core.read_namespace("py-ns").metadata.labels["team"] == "a"
    names = [n.metadata.name for n in core.list_namespace().items]
    assert "py-ns" in names and "kube-system" in names
    core.delete_namespace("py-ns")
    for _ in range(100):
        try:
            core.read_namespace("py-ns")
        except ApiException as e:
            assert e.status == 404
            break
        time.sleep(0.1)
    else:
        pytest.fail("namespace was not removed")


def test_deployment_crud(api_client):
    apps = client.AppsV1Api(api_client)
    dep = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="py-web"),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels={"app": "py-web"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "py-web"}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="nginx:1.25")]))))
    created = apps.create_namespaced_deployment("default", dep)
    assert created.spec.strategy.type == "RollingUpdate"
    assert created.metadata.generation == 1
    patched = apps.patch_namespaced_deployment(
        "py-web", "default", {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.26"}]}}}})
    assert patched.spec.template.spec.containers[0].image == "nginx:1.26"
    assert patched.metadata.generation == 2
    scaled = apps.patch_namespaced_deployment_scale("py-web", "default", {"spec": {"replicas": 5}})
    assert scaled.spec.replicas == 5
    assert [d.metadata.name for d in apps.list_namespaced_deployment("default").items] == ["py-web"]
    apps.delete_namespaced_deployment("py-web", "default")
    assert apps.list_namespaced_deployment("default").items == []


def test_watch_from_list_resource_version(api_client):
    core = client.CoreV1Api(api_client)
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    seen = []

    def consume():
        w = watch.Watch()
        for ev in w.stream(core.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=10):
            if ev["object"].metadata.name == "py-watched":
                seen.append(ev["type"])
            if ev["type"] == "DELETED":
                w.stop()

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.5)
    core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py-watched"), data={"x": "1"}))
    core.patch_namespaced_config_map("py-watched", "default", {"data": {"x": "2"}})
    core.delete_namespaced_config_map("py-watched", "default")
    t.join(timeout=15)
    assert seen == ["ADDED", "MODIFIED", "DELETED"]


def test_invalid_object_is_422_with_causes(api_client):
    core = client.CoreV1Api(api_client)
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("default", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}})
    assert err.value.status == 422
    assert "spec.containers[0].image" in err.value.body


def test_create_from_yaml(api_client, tmp_path):
    from kubernetes import utils
    manifest = tmp_path / "objs.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fy-cm\ndata:\n  a: '1'\n---\n"
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: fy-dep\nspec:\n"
        "  selector: {matchLabels: {app: fy}}\n  template:\n    metadata: {labels: {app: fy}}\n"
        "    spec:\n      containers: [{name: c, image: 'busybox:1.36'}]\n")
    created = utils.create_from_yaml(api_client, str(manifest), namespace="default")
    assert sorted(o[0].metadata.name for o in created) == ["fy-cm", "fy-dep"]
    assert client.AppsV1Api(api_client).read_namespaced_deployment("fy-dep", "default").spec.replicas == 1


def test_create_from_yaml_conflict_is_upstreams_error_text(api_client, tmp_path):
    """The error a conflict raises holds the Status body byte for byte, as users compare it."""
    from kubernetes import utils
    svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: twice\nspec:\n  ports: [{port: 99}]\n"
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(svc)
    second.write_text(svc + "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: after-conflict\n")
    utils.create_from_yaml(api_client, str(first), namespace="default")
    with pytest.raises(utils.FailToCreateError) as err:
        utils.create_from_yaml(api_client, str(second), namespace="default")
    assert str(err.value) == (
        'Error from server (Conflict): {"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
        '"message":"services \\"twice\\" already exists","reason":"AlreadyExists",'
        '"details":{"name":"twice","kind":"services"},"code":409}\n')
    # The documents after the failing one are still created.
    assert client.CoreV1Api(api_client).read_namespaced_config_map("after-conflict", "default").metadata.name == "after-conflict"


def test_dynamic_client_with_server_side_apply(api_client):
    from kubernetes import dynamic
    dyn = dynamic.DynamicClient(api_client)
    crds = dyn.resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")
    crds.create(body={
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "pythings.py.example.com"},
        "spec": {"group": "py.example.com", "scope": "Namespaced",
                 "names": {"plural": "pythings", "singular": "pything", "kind": "PyThing"},
                 "versions": [{"name": "v1", "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                                   "spec": {"type": "object", "properties": {"n": {"type": "integer"}}}}}}}]}})
    dyn = dynamic.DynamicClient(api_client)  # discovery again: the new kind is served
    things = dyn.resources.get(api_version="py.example.com/v1", kind="PyThing")
    things.create(namespace="default", body={"apiVersion": "py.example.com/v1", "kind": "PyThing", "metadata": {"name": "t1"}, "spec": {"n": 1}})
    assert [t.metadata.name for t in things.get(namespace="default").items] == ["t1"]
    cms = dyn.resources.get(api_version="v1", kind="ConfigMap")
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "py-ssa"}, "data": {"k": "v"}}
    applied = cms.server_side_apply(body=body, name="py-ssa", namespace="default", field_manager="py-test")
    assert applied.data.k == "v"
    assert [m.manager for m in applied.metadata.managedFields] == ["py-test"]
    body["data"] = {"k": "other"}
    with pytest.raises(Exception) as err:
        cms.server_side_apply(body=body, name="py-ssa", namespace="default", field_manager="someone-else")
    assert "409" in str(err.value) or "Conflict" in str(err.value)
    forced = cms.server_side_apply(body=body, name="py-ssa", namespace="default", field_manager="someone-else", force_conflicts=True)
    assert forced.data.k == "other"
