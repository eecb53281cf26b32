#!/usr/bin/env bash
# Retrain the shipped Fashion-MNIST base packages (about 90 minutes on 2 CPU cores).
# Each card records the exact command; run from the repository root with the torch venv active.
set -euo pipefail
out=ocap_core/pretrained
train() {  # name arch epochs
    rm -rf "$out/$1"
    ocap train --model "$2" --data fashion-mnist --epochs "$3" --seed 0 --threads 2 --out "$out/$1"
}
[ $# -gt 0 ] || set -- cnn resnet20 vgg mobilenetv2
for m in "$@"; do
    case $m in
        cnn) train fmnist-cnn cnn 8 ;;
        resnet20) train fmnist-resnet20 resnet20 12 ;;
        vgg) train fmnist-vgg vgg 12 ;;
        mobilenetv2) train fmnist-mobilenetv2 mobilenetv2 12 ;;
        *) echo "unknown model $m" >&2; exit 2 ;;
    esac
done
