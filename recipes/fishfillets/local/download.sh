#!/usr/bin/env bash
# Fetch the embedded corpus: the Czech and Dutch voice packs of Fish Fillets NG
# (Debian packages fillets-ng-data-cs / -nl, GPL-2), unpacked without root into
# DIR. Usage: download.sh DIR
set -euo pipefail
dir=${1:?usage: download.sh DIR}
pkgs="fillets-ng-data-cs fillets-ng-data-nl"
mkdir -p "$dir/debs"
dir=$(cd "$dir" && pwd)
if [ -f "$dir/.done" ]; then echo "corpus already in $dir"; exit 0; fi
cd "$dir/debs"
if ! apt-get download $pkgs 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "apt-get download failed; refreshing the package lists (apt-get update) and retrying" >&2
    apt-get update -qq
    apt-get download $pkgs
  else
    echo "error: 'apt-get download $pkgs' failed. The apt package lists are probably missing:" >&2
    echo "  run 'sudo apt-get update' once, or pass --corpus-dir to a directory holding" >&2
    echo "  usr/share/games/fillets-ng/sound from those packages." >&2
    exit 1
  fi
fi
for deb in "$dir"/debs/*.deb; do dpkg-deb -x "$deb" "$dir/root"; done
sound="$dir/root/usr/share/games/fillets-ng/sound"
n=$(find "$sound" -name '*.ogg' | wc -l)
[ "$n" -gt 1000 ] || { echo "error: only $n .ogg files under $sound; the packages look incomplete" >&2; exit 1; }
rm -rf "$dir/debs"
echo "$sound" > "$dir/.done"
echo "corpus ready: $n clips under $sound"
