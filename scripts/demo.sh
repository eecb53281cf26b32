#!/usr/bin/env bash
# The demo: `ocap demo`, the whole loop. ocapd runs as a subprocess in a temporary directory on the
# shipped CNN; half of the Fashion-MNIST test images of a skewed 3-class mix are replayed to it; it
# personalizes, gates, swaps and passes probation, then a fourth class shows drift and the revert.
# Extra arguments go to `ocap demo` (see `ocap demo --help`).
set -euo pipefail
. "$(dirname "$0")/env.sh"
ensure_fashion_mnist
V311=$(make_venv "$PY311" cpu,torch,dev,examples)   # the same venv as scripts/test.sh
"$V311/bin/python" -m ocap_cli demo "$@"
