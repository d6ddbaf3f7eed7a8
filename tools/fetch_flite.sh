#!/usr/bin/env bash
# Fetch the flite speech synthesizer (Debian packages flite + libflite1, BSD-style
# licence) and unpack it without root into DIR, for the English ABX set
# (`sqvae-speech flite-abx-set`). Run it as DIR/usr/bin/flite with
# LD_LIBRARY_PATH=DIR/usr/lib/<arch>; sqvae_speech/flite.py does that.
# Usage: fetch_flite.sh DIR      (default DIR: tools/flite next to this script)
set -euo pipefail
dir=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/flite}
pkgs="flite libflite1"
# libflite1 links libasound2 (ALSA, only used for playback, never for -o FILE): fetch it
# too where the system lacks it, so the binary loads.
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [ -f "$dir/.done" ]; then echo "flite already in $dir"; exit 0; fi
if ! ldconfig -p 2>/dev/null | grep -q 'libasound\.so\.2 '; then
  # the ALSA package's name differs between releases (libasound2, libasound2t64)
  alsa=$(apt-cache depends libflite1 2>/dev/null | awk '/Depends: libasound/ {print $2; exit}')
  pkgs="$pkgs ${alsa:-libasound2}"
fi
rm -rf "$dir/debs" && mkdir -p "$dir/debs"
cd "$dir/debs"
if ! apt-get download $pkgs 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "apt-get download failed; refreshing the package lists (apt-get update) and retrying" >&2
    apt-get update -qq
    apt-get download $pkgs
  else
    echo "error: 'apt-get download $pkgs' failed. The apt package lists are probably missing:" >&2
    echo "  run 'sudo apt-get update' once, then run $0 again." >&2
    exit 1
  fi
fi
for deb in "$dir"/debs/*.deb; do dpkg-deb -x "$deb" "$dir"; done
rm -rf "$dir/debs"
lib=$(dirname "$(find "$dir/usr/lib" -name 'libflite.so*' | head -n 1)")
voices=$(LD_LIBRARY_PATH="$lib" "$dir/usr/bin/flite" -lv) || {
  echo "error: the unpacked $dir/usr/bin/flite does not run (missing shared libraries?)" >&2; exit 1; }
echo "$voices" > "$dir/.done"
echo "flite ready in $dir: $voices"
