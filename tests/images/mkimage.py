#!/usr/bin/env python3
"""Builds a one-layer OCI image archive from busybox-static:
`mkimage.py OUT.tar NAME [--cmd JSON-ARRAY] [--file PATH=TEXT]... [--format oci|docker]`
(docker: the layout `docker save` writes, manifest.json with NAME in RepoTags).

The rootfs holds /bin/busybox and a link per applet, /tmp, /etc/passwd, a /www/index.html
for httpd, and any --file given (PATH relative to /). The default command is /bin/sh, or the
--cmd given (stand-ins: `["httpd", "-f", ...]` for a web server, a sleeper for pause). No
registry is needed: the archive is imported with `ferrokube images import` (or pushed with
push.py).
"""
import argparse, hashlib, io, json, os, shutil, subprocess, sys, tarfile, time

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("name")
parser.add_argument("--cmd", default='["/bin/sh"]')
parser.add_argument("--file", action="append", default=[])
parser.add_argument("--format", choices=["oci", "docker"], default="oci")
args = parser.parse_args()
out, name = args.out, args.name
extra = dict(f.split("=", 1) for f in args.file)
busybox = shutil.which("busybox") or "/bin/busybox"
applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()

layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w", format=tarfile.USTAR_FORMAT) as t:
    def add_dir(path):
        i = tarfile.TarInfo(path); i.type = tarfile.DIRTYPE; i.mode = 0o755; i.mtime = 0; t.addfile(i)
    def add_file(path, data, mode=0o644):
        i = tarfile.TarInfo(path); i.size = len(data); i.mode = mode; i.mtime = 0; t.addfile(i, io.BytesIO(data))
    for d in ["bin", "etc", "tmp", "www", "proc", "sys", "dev", "root", "var"]:
        add_dir(d)
    add_file("bin/busybox", open(busybox, "rb").read(), 0o755)
    for a in applets:
        if a == "busybox":
            continue
        i = tarfile.TarInfo("bin/" + a); i.type = tarfile.SYMTYPE; i.linkname = "busybox"; i.mtime = 0; t.addfile(i)
    add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    add_file("etc/group", b"root:x:0:\nnobody:x:65534:\n")
    add_file("www/index.html", b"hello from ferrokube\n")
    made = set()
    for path, text in sorted(extra.items()):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in made and d not in ("bin", "etc", "tmp", "www", "proc", "sys", "dev", "root", "var"):
                add_dir(d)
                made.add(d)
        add_file("/".join(parts), text.encode())
layer_bytes = layer.getvalue()

def digest(b):
    return hashlib.sha256(b).hexdigest()

config = json.dumps({
    "architecture": "amd64", "os": "linux",
    "config": {"Env": ["PATH=/bin"], "Cmd": json.loads(args.cmd), "WorkingDir": "/"},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + digest(layer_bytes)]},
}).encode()
manifest = json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + digest(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + digest(layer_bytes), "size": len(layer_bytes)}],
}).encode()
index = json.dumps({"schemaVersion": 2, "manifests": [{
    "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + digest(manifest), "size": len(manifest),
    "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]},
}]}).encode()
if args.format == "docker":
    files = [(digest(layer_bytes) + "/layer.tar", layer_bytes), (digest(config) + ".json", config),
             ("manifest.json", json.dumps([{"Config": digest(config) + ".json", "RepoTags": [name],
                                            "Layers": [digest(layer_bytes) + "/layer.tar"]}]).encode())]
else:
    files = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index),
             ("blobs/sha256/" + digest(manifest), manifest), ("blobs/sha256/" + digest(config), config),
             ("blobs/sha256/" + digest(layer_bytes), layer_bytes)]
with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as t:
    for path, data in files:
        i = tarfile.TarInfo(path); i.size = len(data); i.mode = 0o644; i.mtime = int(time.time()); t.addfile(i, io.BytesIO(data))
print(out)
