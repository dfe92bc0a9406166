#!/usr/bin/env bash
# Installs Fashion-MNIST (60,000 train / 10,000 test images, MIT licence) from Debian's
# `dataset-fashion-mnist` package, used by `equirun cnn` (and `equirun clip --dataset
# fashion-mnist`). Files: /usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz,
# found by equirun without any flag. Needs root (or sudo) and a Debian/Ubuntu apt source.
# Elsewhere, download the four .gz files of zalandoresearch/fashion-mnist into a folder and
# pass it with --data-dir.
set -euo pipefail
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/train-images-idx3-ubyte.gz" ] && [ -f "$DIR/t10k-images-idx3-ubyte.gz" ]; then
    echo "Fashion-MNIST already installed in $DIR" >&2
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get install -y dataset-fashion-mnist || { $SUDO apt-get update && $SUDO apt-get install -y dataset-fashion-mnist; }
ls -l "$DIR" >&2
