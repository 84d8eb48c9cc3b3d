#!/usr/bin/env python3
"""A small admission webhook server, as the e2e suites register it:
`admission_webhook.py PORT CERT KEY`.

HTTPS with CERT/KEY. Every AdmissionReview it receives is printed as one JSON line on stdout
(its path and request). Paths:
  /validate  refuses objects labelled deny=yes (403, "objects labelled deny=yes are not
             allowed here") and objects being deleted that are labelled keep=yes; otherwise
             allows, with the warning "seen by the validating webhook".
  /mutate    adds the label mutated=yes (a JSONPatch), and a second label `round` counting
             how often it saw the object (for reinvocation).
  /bad-uid   answers with another uid.
  /slow      answers after 3 seconds.
"""
import base64, http.server, json, ssl, sys, time

port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        review = json.loads(body)
        req = review["request"]
        path = self.path.split("?")[0]
        print(json.dumps({"path": self.path, "request": req}), flush=True)
        resp = {"uid": req["uid"], "allowed": True}
        obj = req.get("object") or {}
        old = req.get("oldObject") or {}
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if path == "/validate":
            if labels.get("deny") == "yes":
                resp = {"uid": req["uid"], "allowed": False,
                        "status": {"code": 403, "reason": "Forbidden", "message": "objects labelled deny=yes are not allowed here"}}
            elif req["operation"] == "DELETE" and ((old.get("metadata") or {}).get("labels") or {}).get("keep") == "yes":
                resp = {"uid": req["uid"], "allowed": False, "status": {"message": "this object is labelled keep=yes"}}
            else:
                resp["warnings"] = ["seen by the validating webhook"]
        elif path == "/mutate":
            ops = []
            if not labels:
                ops.append({"op": "add", "path": "/metadata/labels", "value": {}})
            ops.append({"op": "add", "path": "/metadata/labels/mutated", "value": "yes"})
            ops.append({"op": "add", "path": "/metadata/labels/round", "value": str(int(labels.get("round", "0")) + 1)})
            resp["patchType"] = "JSONPatch"
            resp["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
        elif path == "/bad-uid":
            resp["uid"] = "not-the-request"
        elif path == "/slow":
            time.sleep(3)
        out = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
