#!/usr/bin/env bash
# venv-exec.sh MODULE ARGS...: `python -m MODULE ARGS...` in this checkout's venv (the one the quick
# start built; built here on first use), from the caller's directory; venv-exec.sh --python ARGS... runs
# that python itself. Used by bin/ocap, bin/ocapd, bin/ocapctl and bin/ocap-python, so that
# `export PATH=$PWD/bin:$PATH` puts them at hand.
here=$PWD
module=$1
shift
. "$(dirname "$(readlink -f "$0")")/env.sh" || exit 1
V=$(make_venv "$PY311" cpu,torch,dev,examples) || exit 1
cd "$here" || exit 1
[ "$module" = --python ] && exec "$V/bin/python" "$@"
exec "$V/bin/python" -m "$module" "$@"
