#!/usr/bin/env bash
# Make sure Debian's Fashion-MNIST package (real product photos, MIT) is installed (the demo and
# its test use it).
# Installs it when we are root with apt-get; otherwise says exactly what to run.
set -euo pipefail
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/train-images-idx3-ubyte.gz" ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[data] installing Debian package dataset-fashion-mnist"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q dataset-fashion-mnist >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }
  exit 0
fi
echo "[data] Fashion-MNIST is missing. Install it with:" >&2
echo "         sudo apt-get install dataset-fashion-mnist" >&2
echo "       (or run tools/demo.py --fmnist DIR with the four *-ubyte.gz files)" >&2
exit 1
