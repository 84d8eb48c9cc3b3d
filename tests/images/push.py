#!/usr/bin/env python3
"""Pushes an OCI archive made by mkimage.py to a registry (HTTP API v2):
`push.py ARCHIVE REGISTRY REPO:TAG [USER:PASSWORD]`, REGISTRY as `127.0.0.1:PORT` (plain http)
or `https://NAME` (TLS, trusting what SSL_CERT_FILE names). Blobs go up in one PUT each, then
the manifest under the tag. Basic auth when credentials are given."""
import base64, json, sys, tarfile, urllib.error, urllib.request

archive, registry, ref = sys.argv[1], sys.argv[2], sys.argv[3]
creds = sys.argv[4] if len(sys.argv) > 4 else None
repo, tag = ref.rsplit(":", 1)
headers = {"Authorization": "Basic " + base64.b64encode(creds.encode()).decode()} if creds else {}

def call(method, url, data=None, content_type=None):
    base = registry if registry.startswith("https://") else f"http://{registry}"
    req = urllib.request.Request(url if url.startswith("http") else f"{base}{url}", data=data, method=method, headers=dict(headers))
    if content_type:
        req.add_header("Content-Type", content_type)
    return urllib.request.urlopen(req)

with tarfile.open(archive) as t:
    files = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}
index = json.loads(files["index.json"])
manifest_desc = index["manifests"][0]
manifest = files["blobs/sha256/" + manifest_desc["digest"].split(":")[1]]
for desc in [json.loads(manifest)["config"]] + json.loads(manifest)["layers"]:
    blob = files["blobs/sha256/" + desc["digest"].split(":")[1]]
    location = call("POST", f"/v2/{repo}/blobs/uploads/").headers["Location"]
    sep = "&" if "?" in location else "?"
    call("PUT", f"{location}{sep}digest={desc['digest']}", blob, "application/octet-stream")
call("PUT", f"/v2/{repo}/manifests/{tag}", manifest, manifest_desc["mediaType"])
print(f"{registry}/{ref}")
