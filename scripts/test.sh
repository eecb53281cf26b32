#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: ruff and vermin (Python 3.8 syntax; 3.6 in the four packages), every test on
# Python 3.11 with torch, and every torch-free test on Python 3.8 (JetPack 5's Python) and on Python
# 3.6 (JetPack 4.6's). Every half runs even when one fails; the summary at the end reports each. Tests run in pytest-xdist worker
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
stamp "lint: ruff and vermin (Python 3.8 syntax; 3.6, JetPack 4.6's, in the packages)"
"$V311/bin/ruff" check ocap_core ocap_cli ocap_service ocap_daemon tests bench examples \
    && "$V311/bin/vermin" --target=3.8- --violations --no-tips --eval-annotations -q ocap_core ocap_cli ocap_service ocap_daemon tests bench examples \
    && "$V311/bin/vermin" --target=3.6- --backport dataclasses --violations --no-tips --eval-annotations -q ocap_core ocap_cli ocap_service ocap_daemon
lint=$?
results+=("lint: $([ $lint = 0 ] && echo passed || echo FAILED)")
stamp "Python 3.11, every test (torch included), $WORKERS workers"
"$V311/bin/python" -m pytest "${XDIST[@]}" --durations=15 "$@"
t311=$?
results+=("Python 3.11 tests: $(verdict $t311)")
# torch_free VERSION [required]: every torch-free test on that Python, if it is here; its verdict goes in
# the summary, and its exit status in the named variable
torch_free() {
    local v=$1 var=$2 py venv rc xdist=("${XDIST[@]}")
    if py=$(find_python "$v"); then
        venv=$(make_venv "$py" cpu,dev) || { results+=("Python $v torch-free tests: NOT RUN (its venv failed)"); printf -v "$var" 1; return; }
        # pytest-xdist on 3.6 (3.0) has no --maxschedchunk
        "$venv/bin/python" -c "import sys; sys.exit(sys.version_info < (3, 8))" || xdist=(-n "$WORKERS" --dist load)
        stamp "Python $v, the torch-free tests, $WORKERS workers"
        "$venv/bin/python" -m pytest "${xdist[@]}" --durations=15 -m "not torch" "${ARGS[@]}"
        rc=$?
        results+=("Python $v torch-free tests: $(verdict $rc)")
    elif [ -n "$3" ]; then
        echo "Python $v is required here ($3) but was not found" >&2
        rc=1
        results+=("Python $v torch-free tests: NOT RUN (no Python $v)")
    else
        rc=0
        results+=("Python $v torch-free tests: not run (no Python $v found)")
    fi
    printf -v "$var" %s "$rc"
}
ARGS=("$@")
torch_free 3.8 t38 "${OCAP_REQUIRE_PY38:+OCAP_REQUIRE_PY38}"
torch_free 3.6 t36 "${OCAP_REQUIRE_PY36:+OCAP_REQUIRE_PY36}"
# the worker's path on JetPack 4.6's versions: Python 3.6, torch 1.10, Torch-Pruning 1.6.0, onnxruntime 1.10
t36w=0
if PY36=$(find_python 3.6); then
    if V36W=$(make_venv "$PY36" cpu,torch,dev); then
        stamp "Python 3.6 with torch 1.10, the worker's path (-m jetpack4), $WORKERS workers"
        "$V36W/bin/python" -m pytest -n "$WORKERS" --dist load --durations=5 -m jetpack4 "${ARGS[@]}"
        t36w=$?
        results+=("Python 3.6 + torch 1.10, the worker's path: $(verdict $t36w)")
    else
        t36w=1
        results+=("Python 3.6 + torch 1.10, the worker's path: NOT RUN (its venv failed)")
    fi
fi
stamp "summary"
printf '  %s\n' "${results[@]}" >&2
# a half that selects nothing (5) is fine when extra arguments narrowed it; both empty is not
ok() { [ "$1" = 0 ] || { [ "$1" = 5 ] && [ $# -gt 1 ]; }; }
[ $lint = 0 ] && { ok $t311 "$@" && ok $t38 "$@" && ok $t36 "$@" && ok $t36w "$@"; } \
    && ! { [ $t311 = 5 ] && [ $t38 = 5 ] && [ $t36 = 5 ] && [ $t36w = 5 ]; }
