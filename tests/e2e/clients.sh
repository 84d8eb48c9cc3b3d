#!/usr/bin/env bash
# Client libraries against a ferrokube node (root: containerd, runc, iptables), with public
# image names served by a registry stand-in on loopback: this repository's tests of the
# official Python client on a node (tests/e2e/test_python_node.py); kr8s's own tests from
# its PyPI sdist (port-forward to a pod and a Service, Secrets, whoami) with a conftest that
# points them at this server; and, when PYTHON_CLIENT_SRC names a kubernetes-client/python
# checkout (its e2e tests are not on PyPI), that client's own e2e tests the API fidelity
# issue names. What is not run is said so, loudly.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
use_node
here=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python3}
KR8S_VERSION=0.20.15
STANDIN=$E2E_DIR/standin
clients_cleanup() { k delete ns -l e2e-clients --wait=false >/dev/null 2>&1; standin_stop "$STANDIN"; node_cleanup; }
trap clients_cleanup EXIT
if standin_start "$STANDIN" >"$E2E_DIR/standin.out" 2>&1; then
  ok "a registry stand-in for docker.io and gcr.io"
else
  not_ok "a registry stand-in for docker.io and gcr.io" "$(tail -5 "$E2E_DIR/standin.out" "$STANDIN/log" 2>/dev/null)"
fi
start_node || exit 1

# pytest_run NAME EXPECTED-PASSED ARGS...: runs pytest; passes when it exits 0 with exactly
# EXPECTED-PASSED tests passed (nothing skipped, nothing deselected by surprise).
pytest_run() {
  local name=$1 want=$2 out
  shift 2
  out=$("$PYTHON" -m pytest -q -p no:cacheprovider "$@" 2>&1)
  local rc=$? summary
  summary=$(echo "$out" | tail -1)
  echo "$out" >"$E2E_DIR/pytest-$(echo "$name" | tr -c 'a-z0-9' '-').log"
  if [ "$rc" = 0 ] && echo "$summary" | grep -qE "^=* ?$want passed" && ! echo "$summary" | grep -qE "skipped|deselected.*error"; then
    ok "$name ($summary)"
  else
    not_ok "$name" "exit $rc: $(echo "$out" | grep -E "^(FAILED|ERROR)|Error|assert" | head -15)
       $summary"
  fi
}

pytest_run "the official Python client: exec, stdin, binary output, v5 close, image pulls" 4 "$here/test_python_node.py"

# kr8s's own tests.
"$PYTHON" -m pip install --quiet --disable-pip-version-check "kr8s==$KR8S_VERSION" pytest-asyncio pytest-timeout httpx >/dev/null 2>&1
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: "kr8s==$KR8S_VERSION" -d "$E2E_DIR/kr8s-sdist" >/dev/null 2>&1
tar xzf "$E2E_DIR"/kr8s-sdist/kr8s-*.tar.gz -C "$E2E_DIR" 2>/dev/null
KR8S=$E2E_DIR/kr8s-$KR8S_VERSION
if [ -d "$KR8S/kr8s/tests" ]; then
  ok "kr8s $KR8S_VERSION's test suite from its sdist"
  cp "$here/kr8s/conftest.py" "$KR8S/conftest.py"
  pushd "$KR8S" >/dev/null || exit 1
  pytest_run "kr8s: port-forward to pods and Services (context managers, start/stop, several addresses)" 6 \
    -o addopts="" -o asyncio_mode=auto --timeout=300 kr8s/tests/test_objects.py -k "port_forward and not manual and not unsupported"
  pytest_run "kr8s: a Secret from a file with wrapped base64, created and deleted" 2 \
    -o addopts="" -o asyncio_mode=auto --timeout=300 kr8s/tests/test_objects.py -k "secret_data or secret_create_delete"
  pytest_run "kr8s: whoami" 2 -o addopts="" -o asyncio_mode=auto --timeout=120 kr8s/tests/test_api.py -k "whoami"
  popd >/dev/null || exit 1
else
  not_ok "kr8s $KR8S_VERSION's sdist could not be fetched from PyPI" "$(ls "$E2E_DIR/kr8s-sdist" 2>&1)"
fi

# The official Python client's own e2e tests (from a checkout: they are not on PyPI).
if [ -n "${PYTHON_CLIENT_SRC:-}" ] && [ -d "$PYTHON_CLIENT_SRC/kubernetes/e2e_test" ]; then
  pushd "$PYTHON_CLIENT_SRC" >/dev/null || exit 1
  pytest_run "kubernetes-client/python e2e: test_pod_apis, test_pod_exec_close_channel, the multi-resource YAML conflict" 3 \
    kubernetes/e2e_test/test_client.py::TestClient::test_pod_apis kubernetes/e2e_test/test_client.py::TestClient::test_pod_exec_close_channel \
    kubernetes/e2e_test/test_utils.py::TestUtils::test_create_from_multi_resource_yaml_with_conflict
  popd >/dev/null || exit 1
else
  echo "NOTE - kubernetes-client/python's own e2e tests NOT RUN: set PYTHON_CLIENT_SRC to a checkout of github.com/kubernetes-client/python (not on PyPI)"
fi

summary
