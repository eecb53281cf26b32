#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: ruff and vermin (Python 3.8 syntax; 3.6 in the torch-free modules), every test on
# Python 3.11 with torch, and every torch-free test on Python 3.8 (JetPack 5's Python). Both halves
# run even when the first fails; the summary at the end reports each. Tests run in pytest-xdist worker
# processes (OCAP_TEST_WORKERS, default: one more than the cores: many tests wait on subprocesses and
# sockets), so a test that dies of a native crash is reported as failing, with its signal, and the
# rest still run. The longest tests start first (tests/durations.json) and workers take one test at a
# time, so that no long test starts last; each half prints its 15 slowest tests.
# Extra arguments go to both pytest runs (e.g. -k eval); a half they select nothing in is not a failure.
set -uo pipefail
. "$(dirname "$0")/env.sh"
ensure_fashion_mnist || exit 1
V311=$(make_venv "$PY311" cpu,torch,dev,examples) || exit 1
WORKERS=${OCAP_TEST_WORKERS:-$(( $(nproc 2>/dev/null || echo 2) + 1 ))}
XDIST=(-n "$WORKERS" --dist load --maxschedchunk 1)
stamp() { echo "== $(date +%H:%M:%S) $*" >&2; }
verdict() {  # verdict EXIT -> passed / FAILED (exit N); pytest's 5 is "no tests selected"
    case $1 in 0) echo passed ;; 5) echo "nothing selected" ;; *) echo "FAILED (exit $1)" ;; esac
}
results=()
stamp "lint: ruff and vermin (Python 3.8 syntax; 3.6, JetPack 4.6's, where torch is not imported)"
# the torch-free modules: the serving and control planes, and the engine's modules that import no torch
TORCH_FREE=(ocap_cli ocap_service ocap_daemon $(grep -L -E "^(import|from) torch" ocap_core/*.py))
"$V311/bin/ruff" check ocap_core ocap_cli ocap_service ocap_daemon tests bench examples \
    && "$V311/bin/vermin" --target=3.8- --violations --no-tips --eval-annotations -q ocap_core ocap_cli ocap_service ocap_daemon tests bench examples \
    && "$V311/bin/vermin" --target=3.6- --backport dataclasses --violations --no-tips --eval-annotations -q "${TORCH_FREE[@]}"
lint=$?
results+=("lint: $([ $lint = 0 ] && echo passed || echo FAILED)")
stamp "Python 3.11, every test (torch included), $WORKERS workers"
"$V311/bin/python" -m pytest "${XDIST[@]}" --durations=15 "$@"
t311=$?
results+=("Python 3.11 tests: $(verdict $t311)")
t38=0
if PY38=$(find_python 3.8); then
    V38=$(make_venv "$PY38" cpu,dev) || exit 1
    stamp "Python 3.8, the torch-free tests, $WORKERS workers"
    "$V38/bin/python" -m pytest "${XDIST[@]}" --durations=15 -m "not torch" "$@"
    t38=$?
    results+=("Python 3.8 torch-free tests: $(verdict $t38)")
elif [ -n "${OCAP_REQUIRE_PY38:-}" ]; then
    echo "Python 3.8 is required here (OCAP_REQUIRE_PY38) but was not found" >&2
    t38=1
    results+=("Python 3.8 torch-free tests: NOT RUN (no Python 3.8)")
else
    results+=("Python 3.8 torch-free tests: not run (no Python 3.8 found; the torch-free tests ran on 3.11 only)")
fi
stamp "summary"
printf '  %s\n' "${results[@]}" >&2
# a half that selects nothing (5) is fine when extra arguments narrowed it; both empty is not
ok() { [ "$1" = 0 ] || { [ "$1" = 5 ] && [ $# -gt 1 ]; }; }
[ $lint = 0 ] && { ok $t311 "$@" && ok $t38 "$@"; } && ! { [ $t311 = 5 ] && [ $t38 = 5 ]; }
