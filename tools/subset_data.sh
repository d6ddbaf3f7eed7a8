#!/usr/bin/env bash
# A Kaldi data dir holding every utterance of some speakers, taken from one or more data
# dirs (like Kaldi's utils/subset_data_dir.sh --spk-list plus combine_data.sh):
#   tools/subset_data.sh OUT_DIR "SPK1 SPK2 ..." SRC_DIR [SRC_DIR ...]
# Writes OUT_DIR/wav.scp and OUT_DIR/utt2spk, C-locale sorted (spk2utt is derived when
# read). OUT_DIR is replaced. A speaker found in none of the SRC_DIRs, an utterance in two
# of them, or a SRC_DIR with segments is an error.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 OUT_DIR \"SPK1 SPK2 ...\" SRC_DIR [SRC_DIR ...]" >&2
  exit 1
fi
out=$1 speakers=$2
shift 2
for src in "$@"; do
  if [ ! -f "$src/utt2spk" ] || [ ! -f "$src/wav.scp" ]; then
    echo "$0: error: $src is not a data dir (no utt2spk or wav.scp); run stage 1 first" >&2
    exit 1
  fi
  if [ -f "$src/segments" ]; then
    echo "$0: error: $src has segments, which this script does not handle" >&2
    exit 1
  fi
done
rm -rf "$out"
mkdir -p "$out"
for src in "$@"; do
  awk -v spks=" $speakers " 'index(spks, " " $2 " ")' "$src/utt2spk"
done | LC_ALL=C sort > "$out/utt2spk"
for spk in $speakers; do
  if ! awk -v s="$spk" '$2 == s { found = 1; exit } END { exit !found }' "$out/utt2spk"; then
    echo "$0: error: speaker '$spk' has no utterance in $*" >&2
    exit 1
  fi
done
dup=$(cut -d' ' -f1 "$out/utt2spk" | uniq -d | head -n 3 | tr '\n' ' ')
if [ -n "$dup" ]; then
  echo "$0: error: utterance(s) ${dup}are in more than one of $*" >&2
  exit 1
fi
for src in "$@"; do
  awk 'NR == FNR { keep[$1]; next } ($1 in keep)' "$out/utt2spk" "$src/wav.scp"
done | LC_ALL=C sort > "$out/wav.scp"
