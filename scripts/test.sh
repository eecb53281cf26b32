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
# half VAR VERSION EXTRAS MARK LABEL [REQUIRED]: the tests marked MARK on that Python, in a venv with
# EXTRAS, if that Python is here (a missing one fails only when REQUIRED names why it must be here); the
# verdict goes in the summary, the exit status in the variable VAR
half() {
    local var=$1 v=$2 extras=$3 mark=$4 label=$5 required=${6:-} py venv rc xdist=("${XDIST[@]}")
    if py=$(find_python "$v"); then
        if venv=$(make_venv "$py" "$extras"); then
            # pytest-xdist on 3.6 (3.0) has no --maxschedchunk
            "$venv/bin/python" -c "import sys; sys.exit(sys.version_info < (3, 8))" || xdist=(-n "$WORKERS" --dist load)
            stamp "Python $v, $label (-m '$mark'), $WORKERS workers"
            "$venv/bin/python" -m pytest "${xdist[@]}" --durations=15 -m "$mark" "${ARGS[@]}"
            rc=$?
            results+=("Python $v, $label: $(verdict $rc)")
        else
            rc=1
            results+=("Python $v, $label: NOT RUN (its venv failed)")
        fi
    elif [ -n "$required" ]; then
        echo "Python $v is required here ($required) but was not found" >&2
        rc=1
        results+=("Python $v, $label: NOT RUN (no Python $v)")
    else
        rc=0
        results+=("Python $v, $label: not run (no Python $v found)")
    fi
    printf -v "$var" %s "$rc"
}
ARGS=("$@")
half t38 3.8 cpu,dev "not torch" "the torch-free tests" "${OCAP_REQUIRE_PY38:+OCAP_REQUIRE_PY38}"
half t36 3.6 cpu,dev "not torch" "the torch-free tests" "${OCAP_REQUIRE_PY36:+OCAP_REQUIRE_PY36}"
# the worker's path on JetPack 4.6's versions: Python 3.6, torch 1.10, Torch-Pruning 1.6.0, onnxruntime 1.10
half t36w 3.6 cpu,torch,dev jetpack4 "torch 1.10, the worker's path"
stamp "summary"
printf '  %s\n' "${results[@]}" >&2
# a half that selects nothing (5) is fine when extra arguments narrowed it; both empty is not
ok() { [ "$1" = 0 ] || { [ "$1" = 5 ] && [ $# -gt 1 ]; }; }
[ $lint = 0 ] && { ok $t311 "$@" && ok $t38 "$@" && ok $t36 "$@" && ok $t36w "$@"; } \
    && ! { [ $t311 = 5 ] && [ $t38 = 5 ] && [ $t36 = 5 ] && [ $t36w = 5 ]; }
