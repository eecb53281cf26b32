#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: ruff and vermin (Python 3.8 syntax), every test on
# Python 3.11 with torch, and every torch-free test on Python 3.8 (JetPack 5's Python). Both halves
# run even when the first fails; the summary at the end reports each. Extra arguments go to both
# pytest runs (e.g. -k eval). About 40 min on 2 idle cores (35 + 5), longer on a busy machine.
set -uo pipefail
. "$(dirname "$0")/env.sh"
ensure_fashion_mnist || exit 1
V311=$(make_venv "$PY311" cpu,torch,dev,examples) || exit 1
stamp() { echo "== $(date +%H:%M:%S) $*" >&2; }
results=()
stamp "lint: ruff and vermin (Python 3.8 syntax)"
"$V311/bin/ruff" check ocap_core ocap_cli service daemon tests bench examples \
    && "$V311/bin/vermin" --target=3.8- --violations --no-tips --eval-annotations -q ocap_core ocap_cli service daemon tests bench examples
lint=$?
results+=("lint: $([ $lint = 0 ] && echo passed || echo FAILED)")
# -v: each test's name is printed as it starts, so a long one shows what is running
stamp "Python 3.11, every test (torch included)"
"$V311/bin/python" -m pytest -v --durations=10 "$@"
t311=$?
results+=("Python 3.11 tests: $([ $t311 = 0 ] && echo passed || echo "FAILED (exit $t311)")")
t38=0
if PY38=$(find_python 3.8); then
    V38=$(make_venv "$PY38" cpu,dev) || exit 1
    stamp "Python 3.8, the torch-free tests"
    "$V38/bin/python" -m pytest -v -m "not torch" "$@"
    t38=$?
    results+=("Python 3.8 torch-free tests: $([ $t38 = 0 ] && echo passed || echo "FAILED (exit $t38)")")
elif [ -n "${OCAP_REQUIRE_PY38:-}" ]; then
    echo "Python 3.8 is required here (OCAP_REQUIRE_PY38) but was not found" >&2
    t38=1
    results+=("Python 3.8 torch-free tests: NOT RUN (no Python 3.8)")
else
    results+=("Python 3.8 torch-free tests: not run (no Python 3.8 found; the torch-free tests ran on 3.11 only)")
fi
stamp "summary"
printf '  %s\n' "${results[@]}" >&2
[ $lint = 0 ] && [ $t311 = 0 ] && [ $t38 = 0 ]
