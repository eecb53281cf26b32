#!/usr/bin/env bash
# venv-exec.sh MODULE ARGS...: `python -m MODULE ARGS...` in this checkout's venv (the one the quick
# start built; built here on first use), from the caller's directory. Used by bin/ocap, bin/ocapd and
# bin/ocapctl, so that `export PATH=$PWD/bin:$PATH` puts the three commands at hand.
here=$PWD
module=$1
shift
. "$(dirname "$(readlink -f "$0")")/env.sh" || exit 1
V=$(make_venv "$PY311" cpu,torch,dev,examples) || exit 1
cd "$here" && exec "$V/bin/python" -m "$module" "$@"
