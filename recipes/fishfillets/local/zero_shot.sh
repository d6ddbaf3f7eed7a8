#!/usr/bin/env bash
# Zero-shot sources: the minor characters (cs-b1, cs-b2, cs-c, cs-hs, cs-pap), voices the
# recipe does not train on (--include-minor false), converted to the 4 main voices and
# measured as stage 5 measures the main voices: each output's Resemblyzer similarity to
# the target's and to the source's held-out recordings. Run from recipes/fishfillets
# after stages 0-5 (the download, feats/train/f0_stats.json):
#
#   local/zero_shot.sh [--per-speaker 2] MODEL OUT VOCODER
#
# MODEL: an experiment dir or model file trained without the minor characters; OUT: the
# conversions and their listening page (OUT/index.html); VOCODER: the neural vocoder's
# file (e.g. exp/vocoder/vocoder.pt) or `world`. It prepares data_minor/ (the corpus with
# the minor characters, split as stage 1 splits it), takes the sources from the minor
# characters' training clips and their references from the held-out clips
# (data_minor/test, 4-8 clips each), so no source is part of its own speaker's
# reference. Each source's F0 is mapped from its own log-F0 statistics onto the target's
# (--f0-norm utterance), so the unseen voices need no F0 statistics of their own.
set -euo pipefail
per_speaker=2    # source clips per minor character (the longest-first rule of convert --make-list)
help_message="Usage: $0 [options] MODEL OUT VOCODER.pt|world"
SQVAE_ROOT=${SQVAE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)}
. "$SQVAE_ROOT/tools/parse_options.sh"
if [ $# -ne 3 ]; then
  echo "$help_message" >&2
  exit 1
fi
model=$1 out=$2 vocoder=$3
minor=cs-b1,cs-b2,cs-c,cs-hs,cs-pap
[ -e "$model" ] || { echo "$0: no model $model: train it first (stage 3)" >&2; exit 1; }
if [ "$vocoder" = world ]; then
  voc_opts=(--vocoder world)
else
  [ -f "$vocoder" ] || { echo "$0: no vocoder file $vocoder: train it first (stage 3), or pass world" >&2; exit 1; }
  voc_opts=(--vocoder neural --vocoder-model "$vocoder")
fi
[ -f feats/train/f0_stats.json ] || { echo "$0: no feats/train/f0_stats.json: run stage 5 first" >&2; exit 1; }
if [ ! -f data_minor/.prepare.json ]; then
  sqvae-speech prepare fishfillets download data_minor --include-minor true
fi
if [ ! -f data_minor/zero_shot/.done ]; then
  # the minor characters' training clips only
  mkdir -p data_minor/zero_shot
  for f in utt2spk wav.scp; do
    awk -v s=",$minor," 'NR == FNR { if (index(s, "," $2 ",")) keep[$1] = 1; next } ($1 in keep)' \
      data_minor/train/utt2spk "data_minor/train/$f" > "data_minor/zero_shot/$f"
  done
  awk '{ u[$2] = u[$2] " " $1 } END { for (s in u) print s u[s] }' data_minor/zero_shot/utt2spk | sort \
    > data_minor/zero_shot/spk2utt
  touch data_minor/zero_shot/.done
fi
[ -f feats_minor/.done ] || { sqvae-speech extract data_minor/zero_shot feats_minor --nj 2 --config conf/features.yaml;
                              touch feats_minor/.done; }
sqvae-speech convert --exp "$model" --make-list data_minor/zero_shot --speakers $minor --per-speaker "$per_speaker" \
  --targets cs-m,cs-v,nl-m,nl-v --feats feats_minor --f0-stats feats/train/f0_stats.json "${voc_opts[@]}" \
  --f0-norm utterance --similarity data_minor/test --out "$out" --no-progress
