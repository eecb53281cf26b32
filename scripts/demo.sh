#!/usr/bin/env bash
# The demo: evaluate the shipped ResNet-20 on the Fashion-MNIST test set through onnxruntime.
# (Until `ocap demo` runs the whole personalization loop, this is the end-to-end path that exists.)
set -euo pipefail
. "$(dirname "$0")/env.sh"
ensure_fashion_mnist
V311=$(make_venv "$PY311" cpu,torch,dev)
"$V311/bin/python" -m ocap_core models
echo
"$V311/bin/python" -m ocap_core eval --model fmnist-resnet20 --data fashion-mnist "$@"
