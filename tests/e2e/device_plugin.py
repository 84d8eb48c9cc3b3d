#!/usr/bin/env python3
"""A device plugin for the test suite (deviceplugin/v1beta1 over grpcio), and a PodResources
client.

  device_plugin.py serve KUBELET_DIR STATE_DIR   # offers example.com/widget: w0 w1 w2
  device_plugin.py podresources SOCKET list|allocatable

The plugin serves on KUBELET_DIR/widget.sock and registers with KUBELET_DIR/kubelet.sock
(asking for PreStartContainer and offering GetPreferredAllocation, which prefers the highest
ids). STATE_DIR/unhealthy lists device ids to report Unhealthy (read every 0.2 s);
STATE_DIR/calls.log records every call. Allocate gives the container WIDGET_IDS, a mount of
STATE_DIR/data at /widget, and /dev/null as /dev/widget. When the kubelet's socket is made
again (a kubelet restart) or its own socket vanishes, it registers again.
"""
import os
import sys
import tempfile
import threading
import time
from concurrent import futures

import grpc
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESOURCE = "example.com/widget"
# gRPC C-core names a unix socket's path as the HTTP/2 authority, percent-encoded, which the
# kubelet's HTTP/2 server (h2) refuses as malformed; grpc-go clients send "localhost".
CHANNEL_OPTIONS = [("grpc.default_authority", "localhost")]
DEVICES = ["w0", "w1", "w2"]


def stubs(proto):
    """Generates and imports the Python stubs of proto/<proto>/api.proto."""
    out = tempfile.mkdtemp(prefix="fk-stubs-")
    include = os.path.dirname(protoc.__file__) + "/_proto"
    rc = protoc.main(["protoc", f"-I{ROOT}/proto", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", f"{ROOT}/proto/{proto}/api.proto"])
    if rc != 0:
        raise SystemExit(f"protoc failed for {proto}")
    sys.path.insert(0, out)
    import importlib
    return importlib.import_module(f"{proto}.api_pb2"), importlib.import_module(f"{proto}.api_pb2_grpc")


def log(state, line):
    with open(os.path.join(state, "calls.log"), "a") as f:
        f.write(line + "\n")


def serve(kubelet_dir, state):
    pb, rpc = stubs("deviceplugin")
    os.makedirs(os.path.join(state, "data"), exist_ok=True)
    with open(os.path.join(state, "data", "hello"), "w") as f:
        f.write("widget data\n")

    def devices():
        try:
            bad = set(open(os.path.join(state, "unhealthy")).read().split())
        except OSError:
            bad = set()
        return [pb.Device(ID=d, health="Unhealthy" if d in bad else "Healthy") for d in DEVICES]

    class Plugin(rpc.DevicePluginServicer):
        def GetDevicePluginOptions(self, request, context):
            return pb.DevicePluginOptions(pre_start_required=True, get_preferred_allocation_available=True)

        def ListAndWatch(self, request, context):
            log(state, "ListAndWatch")
            last = None
            while context.is_active():
                now = devices()
                shown = [(d.ID, d.health) for d in now]
                if shown != last:
                    yield pb.ListAndWatchResponse(devices=now)
                    last = shown
                time.sleep(0.2)

        def GetPreferredAllocation(self, request, context):
            out = []
            for r in request.container_requests:
                ids = sorted(r.available_deviceIDs, reverse=True)[: r.allocation_size]
                log(state, "GetPreferredAllocation " + ",".join(sorted(ids)))
                out.append(pb.ContainerPreferredAllocationResponse(deviceIDs=ids))
            return pb.PreferredAllocationResponse(container_responses=out)

        def Allocate(self, request, context):
            out = []
            for r in request.container_requests:
                ids = ",".join(sorted(r.devices_ids))
                log(state, "Allocate " + ids)
                out.append(pb.ContainerAllocateResponse(
                    envs={"WIDGET_IDS": ids},
                    mounts=[pb.Mount(container_path="/widget", host_path=os.path.join(state, "data"), read_only=True)],
                    devices=[pb.DeviceSpec(container_path="/dev/widget", host_path="/dev/null", permissions="rw")],
                    annotations={"example.com/widgets": ids}))
            return pb.AllocateResponse(container_responses=out)

        def PreStartContainer(self, request, context):
            log(state, "PreStartContainer " + ",".join(sorted(request.devices_ids)))
            return pb.PreStartContainerResponse()

    sock = os.path.join(kubelet_dir, "widget.sock")
    kubelet_sock = os.path.join(kubelet_dir, "kubelet.sock")
    server = None

    def start():
        nonlocal server
        if server is not None:
            server.stop(0)
        if os.path.exists(sock):
            os.unlink(sock)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        rpc.add_DevicePluginServicer_to_server(Plugin(), server)
        server.add_insecure_port("unix://" + sock)
        server.start()
        with grpc.insecure_channel("unix://" + kubelet_sock, options=CHANNEL_OPTIONS) as ch:
            rpc.RegistrationStub(ch).Register(pb.RegisterRequest(
                version="v1beta1", endpoint="widget.sock", resource_name=RESOURCE,
                options=pb.DevicePluginOptions(pre_start_required=True, get_preferred_allocation_available=True)), timeout=5)
        log(state, "Registered")

    registered_with = None
    while True:
        try:
            ino = os.stat(kubelet_sock).st_ino
        except OSError:
            ino = None
        if ino is not None and (ino != registered_with or not os.path.exists(sock)):
            try:
                start()
                registered_with = ino
            except grpc.RpcError as e:
                log(state, f"Register failed: {e.code()} {e.details()}")
                time.sleep(0.5)
        time.sleep(0.2)


def podresources(socket, what):
    pb, rpc = stubs("podresources")
    with grpc.insecure_channel("unix://" + socket, options=CHANNEL_OPTIONS) as ch:
        stub = rpc.PodResourcesListerStub(ch)
        if what == "list":
            for p in stub.List(pb.ListPodResourcesRequest(), timeout=5).pod_resources:
                for c in p.containers:
                    for d in c.devices:
                        print(f"{p.namespace}/{p.name}/{c.name} {d.resource_name} {','.join(sorted(d.device_ids))}")
        else:
            for d in stub.GetAllocatableResources(pb.AllocatableResourcesRequest(), timeout=5).devices:
                print(f"{d.resource_name} {','.join(sorted(d.device_ids))}")


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
    else:
        podresources(sys.argv[2], sys.argv[3])
