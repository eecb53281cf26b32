#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: ruff and vermin (Python 3.8 syntax), every test on
# Python 3.11 with torch, and every torch-free test on Python 3.8 (JetPack 5's Python).
# Extra arguments go to both pytest runs (e.g. -k eval).
set -euo pipefail
. "$(dirname "$0")/env.sh"
ensure_fashion_mnist
V311=$(make_venv "$PY311" cpu,torch,dev)
"$V311/bin/ruff" check ocap_core service daemon tests bench
"$V311/bin/vermin" --target=3.8- --violations --no-tips --eval-annotations -q ocap_core service daemon tests bench
"$V311/bin/python" -m pytest "$@"
if PY38=$(find_python 3.8); then
    V38=$(make_venv "$PY38" cpu,dev)
    "$V38/bin/python" -m pytest -m "not torch" "$@"
elif [ -n "${OCAP_REQUIRE_PY38:-}" ]; then
    echo "Python 3.8 is required here (OCAP_REQUIRE_PY38) but was not found" >&2
    exit 1
else
    echo "note: no Python 3.8 found; the torch-free tests ran on 3.11 only" >&2
fi
