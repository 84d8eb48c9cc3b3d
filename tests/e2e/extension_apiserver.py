#!/usr/bin/env python3
"""A small extension API server for metrics.k8s.io/v1beta1, as the e2e suites register it
behind an APIService: `extension_apiserver.py PORT CERT KEY AUTH_DIR NODE`.

It serves HTTPS with CERT/KEY and, like a real extension server, accepts only requests whose
client certificate is signed by the requestheader CA and names an allowed proxy (AUTH_DIR
holds the kube-system/extension-apiserver-authentication ConfigMap's keys as files); the
caller is whoever the X-Remote-User / X-Remote-Group headers name. Every request is printed
(method, path, user, groups, proxy CN) on stdout. It answers discovery, NodeMetrics for NODE
and an empty PodMetrics list.
"""
import datetime, http.server, json, os, ssl, sys

port, cert, key, auth_dir, node = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
GV = "/apis/metrics.k8s.io/v1beta1"


def auth(name):
    with open(os.path.join(auth_dir, name)) as f:
        return f.read()


allowed_names = json.loads(auth("requestheader-allowed-names"))
user_headers = json.loads(auth("requestheader-username-headers"))
group_headers = json.loads(auth("requestheader-group-headers"))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, code, obj):
        body = json.dumps(obj).encode() + b"\n"
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        peer = self.connection.getpeercert() or {}
        cn = next((v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"), "")
        user = next((self.headers[h] for h in user_headers if self.headers[h]), "")
        groups = [g for h in group_headers for g in self.headers.get_all(h) or []]
        print(f"{self.command} {self.path} user={user} groups={','.join(groups)} proxy={cn}", flush=True)
        if allowed_names and cn not in allowed_names:
            return self.send_json(401, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Unauthorized", "code": 401, "message": f"proxy {cn} is not allowed"})
        path = self.path.split("?")[0].rstrip("/")
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        if path == GV:
            self.send_json(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "metrics.k8s.io/v1beta1", "resources": [
                {"name": "nodes", "singularName": "", "namespaced": False, "kind": "NodeMetrics", "verbs": ["get", "list"]},
                {"name": "pods", "singularName": "", "namespaced": True, "kind": "PodMetrics", "verbs": ["get", "list"]},
            ]})
        elif path == GV + "/nodes":
            self.send_json(200, {"kind": "NodeMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {}, "items": [
                {"metadata": {"name": node, "labels": {"served-for": user.replace(":", "-")}}, "timestamp": now, "window": "10s", "usage": {"cpu": "250m", "memory": "100Mi"}},
            ]})
        elif path == GV + "/nodes/" + node:
            self.send_json(200, {"kind": "NodeMetrics", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {"name": node}, "timestamp": now, "window": "10s", "usage": {"cpu": "250m", "memory": "100Mi"}})
        elif path.startswith(GV + "/") and path.endswith("/pods") or path == GV + "/pods":
            self.send_json(200, {"kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {}, "items": []})
        else:
            self.send_json(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": f"{path} not found"})


ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.load_verify_locations(cadata=auth("requestheader-client-ca-file"))
ctx.verify_mode = ssl.CERT_REQUIRED
server = http.server.ThreadingHTTPServer(("0.0.0.0", int(port)), Handler)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(f"serving metrics.k8s.io on :{port}", flush=True)
server.serve_forever()
