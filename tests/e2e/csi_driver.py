#!/usr/bin/env python3
"""A hostpath-like CSI driver for the test suite (csi.v1 over grpcio).

  csi_driver.py REGISTRY_DIR SOCKET STATE_DIR NODE_ID

Serves Identity, Controller and Node on SOCKET and plugin registration on
REGISTRY_DIR/csi.test.ferrokube.io-reg.sock. Volumes are directories under
STATE_DIR/volumes/<id> (their size in a file beside them); NodeStageVolume bind-mounts one
on the staging path, NodePublishVolume the staging path (or, for an inline ephemeral volume,
a fresh directory holding the pod's name) on the target. Every call is written to
STATE_DIR/calls.log.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent import futures

import grpc
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAME = "csi.test.ferrokube.io"
TOPOLOGY_KEY = "topology.csi.test.ferrokube.io/zone"


def stubs(path, module):
    out = tempfile.mkdtemp(prefix="fk-csi-stubs-")
    include = os.path.dirname(protoc.__file__) + "/_proto"
    if protoc.main(["protoc", f"-I{ROOT}/proto", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", f"{ROOT}/proto/{path}"]) != 0:
        raise SystemExit(f"protoc failed for {path}")
    sys.path.insert(0, out)
    import importlib
    return importlib.import_module(f"{module}_pb2"), importlib.import_module(f"{module}_pb2_grpc")


def main(registry, socket, state, node_id):
    pb, rpc = stubs("csi/csi.proto", "csi.csi")
    rpb, rrpc = stubs("pluginregistration/api.proto", "pluginregistration.api")
    vols = os.path.join(state, "volumes")
    os.makedirs(vols, exist_ok=True)
    os.makedirs(os.path.join(state, "ephemeral"), exist_ok=True)

    def log(line):
        with open(os.path.join(state, "calls.log"), "a") as f:
            f.write(line + "\n")

    def run(*cmd):
        subprocess.run(cmd, check=True, capture_output=True)

    def mounted(path):
        return any(l.split()[1] == path for l in open("/proc/mounts"))

    C = pb.ControllerServiceCapability
    N = pb.NodeServiceCapability

    class Identity(rpc.IdentityServicer):
        def GetPluginInfo(self, request, context):
            return pb.GetPluginInfoResponse(name=NAME, vendor_version="0.1.0")

        def GetPluginCapabilities(self, request, context):
            return pb.GetPluginCapabilitiesResponse(capabilities=[
                pb.PluginCapability(service=pb.PluginCapability.Service(type=pb.PluginCapability.Service.CONTROLLER_SERVICE))])

        def Probe(self, request, context):
            return pb.ProbeResponse(ready=pb.BoolValue(value=True))

    class Controller(rpc.ControllerServicer):
        def CreateVolume(self, request, context):
            vid = "vol-" + request.name
            os.makedirs(os.path.join(vols, vid), exist_ok=True)
            size = request.capacity_range.required_bytes or 1 << 20
            open(os.path.join(vols, vid + ".size"), "w").write(str(size))
            log(f"CreateVolume {request.name} {size} {','.join(f'{k}={v}' for k, v in sorted(request.parameters.items()))}")
            return pb.CreateVolumeResponse(volume=pb.Volume(capacity_bytes=size, volume_id=vid, volume_context={"made-by": "test-driver"}))

        def DeleteVolume(self, request, context):
            shutil.rmtree(os.path.join(vols, request.volume_id), ignore_errors=True)
            log(f"DeleteVolume {request.volume_id}")
            return pb.DeleteVolumeResponse()

        def ControllerPublishVolume(self, request, context):
            log(f"ControllerPublishVolume {request.volume_id} {request.node_id}")
            return pb.ControllerPublishVolumeResponse(publish_context={"device": "/dev/test-" + request.volume_id})

        def ControllerUnpublishVolume(self, request, context):
            log(f"ControllerUnpublishVolume {request.volume_id} {request.node_id}")
            return pb.ControllerUnpublishVolumeResponse()

        def ControllerGetCapabilities(self, request, context):
            return pb.ControllerGetCapabilitiesResponse(capabilities=[
                C(rpc=C.RPC(type=t)) for t in (C.RPC.CREATE_DELETE_VOLUME, C.RPC.PUBLISH_UNPUBLISH_VOLUME, C.RPC.EXPAND_VOLUME)])

        def ControllerExpandVolume(self, request, context):
            size = request.capacity_range.required_bytes
            log(f"ControllerExpandVolume {request.volume_id} {size}")
            return pb.ControllerExpandVolumeResponse(capacity_bytes=size, node_expansion_required=True)

    class Node(rpc.NodeServicer):
        def NodeStageVolume(self, request, context):
            if request.publish_context.get("device") != "/dev/test-" + request.volume_id:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not attached: no publish context from ControllerPublishVolume")
            os.makedirs(request.staging_target_path, exist_ok=True)
            if not mounted(request.staging_target_path):
                run("mount", "--bind", os.path.join(vols, request.volume_id), request.staging_target_path)
            log(f"NodeStageVolume {request.volume_id}")
            return pb.NodeStageVolumeResponse()

        def NodeUnstageVolume(self, request, context):
            if mounted(request.staging_target_path):
                run("umount", request.staging_target_path)
            log(f"NodeUnstageVolume {request.volume_id}")
            return pb.NodeUnstageVolumeResponse()

        def NodePublishVolume(self, request, context):
            ctx = request.volume_context
            os.makedirs(request.target_path, exist_ok=True)
            if ctx.get("csi.storage.k8s.io/ephemeral") == "true":
                src = os.path.join(state, "ephemeral", request.volume_id)
                os.makedirs(src, exist_ok=True)
                open(os.path.join(src, "pod"), "w").write(ctx.get("csi.storage.k8s.io/pod.name", "") + "\n")
                open(os.path.join(src, "color"), "w").write(ctx.get("color", "") + "\n")
            else:
                src = request.staging_target_path
            if not mounted(request.target_path):
                run("mount", "--bind", src, request.target_path)
            log(f"NodePublishVolume {request.volume_id} pod={ctx.get('csi.storage.k8s.io/pod.name', '')} ephemeral={ctx.get('csi.storage.k8s.io/ephemeral', '')}")
            return pb.NodePublishVolumeResponse()

        def NodeUnpublishVolume(self, request, context):
            if mounted(request.target_path):
                run("umount", request.target_path)
            shutil.rmtree(request.target_path, ignore_errors=True)
            shutil.rmtree(os.path.join(state, "ephemeral", request.volume_id), ignore_errors=True)
            log(f"NodeUnpublishVolume {request.volume_id}")
            return pb.NodeUnpublishVolumeResponse()

        def NodeExpandVolume(self, request, context):
            size = request.capacity_range.required_bytes
            open(os.path.join(vols, request.volume_id + ".size"), "w").write(str(size))
            log(f"NodeExpandVolume {request.volume_id} {size}")
            return pb.NodeExpandVolumeResponse(capacity_bytes=size)

        def NodeGetCapabilities(self, request, context):
            return pb.NodeGetCapabilitiesResponse(capabilities=[N(rpc=N.RPC(type=t)) for t in (N.RPC.STAGE_UNSTAGE_VOLUME, N.RPC.EXPAND_VOLUME)])

        def NodeGetInfo(self, request, context):
            return pb.NodeGetInfoResponse(node_id=node_id, max_volumes_per_node=10, accessible_topology=pb.Topology(segments={TOPOLOGY_KEY: "z1"}))

    class Registration(rrpc.RegistrationServicer):
        def GetInfo(self, request, context):
            return rpb.PluginInfo(type="CSIPlugin", name=NAME, endpoint=socket, supported_versions=["1.0.0"])

        def NotifyRegistrationStatus(self, request, context):
            log(f"Registered {request.plugin_registered} {request.error}")
            return rpb.RegistrationStatusResponse()

    for p in (socket, os.path.join(registry, NAME + "-reg.sock")):
        if os.path.exists(p):
            os.unlink(p)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    rpc.add_IdentityServicer_to_server(Identity(), server)
    rpc.add_ControllerServicer_to_server(Controller(), server)
    rpc.add_NodeServicer_to_server(Node(), server)
    server.add_insecure_port("unix://" + socket)
    reg = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    rrpc.add_RegistrationServicer_to_server(Registration(), reg)
    os.makedirs(registry, exist_ok=True)
    reg.add_insecure_port("unix://" + os.path.join(registry, NAME + "-reg.sock"))
    server.start()
    reg.start()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main(*sys.argv[1:5])
