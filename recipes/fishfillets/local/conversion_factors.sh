#!/usr/bin/env bash
# What limits voice conversion: the conversions of trained runs under one changed setting
# at a time, each scored by speaker similarity (convert --similarity). Run from
# recipes/fishfillets after stages 0-5 (data/test, feats/test, feats/train/f0_stats.json):
#
#   local/conversion_factors.sh EXP_ROOT OUT_DIR RUN...
#
# For each RUN (an experiment dir name under EXP_ROOT, e.g. gaussian_4_seed0) it converts
# the same 8 held-out sources to the 4 main voices (stage 5's list) with
#   world-utterance  WORLD, F0 mapped from each utterance's own statistics (stage 5's default)
#   world-speaker    WORLD, F0 mapped from the source speaker's statistics
#   griffinlim       Griffin-Lim (100 iterations), the source's own F0 left in the mel
#   step-1000        the run's checkpoint at step 1,000 (when kept), WORLD-utterance
# into OUT_DIR/<setting>/<run>, and prints one line per conversion set: the mean speaker
# similarity to the target and to the source, and how many conversions are closer to the target.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 EXP_ROOT OUT_DIR RUN..." >&2
  exit 1
fi
exp_root=$1 out=$2
shift 2
common="--make-list data/test --speakers cs-m,cs-v,nl-m,nl-v --per-speaker 2 --feats feats/test
  --f0-stats feats/train/f0_stats.json --similarity data/test --no-progress"
for run in "$@"; do
  for setting in world-utterance world-speaker griffinlim step-1000; do
    model=$exp_root/$run opts="--vocoder world --f0-norm utterance"
    case $setting in
      world-speaker) opts="--vocoder world --f0-norm speaker" ;;
      griffinlim) opts="--vocoder griffinlim" ;;
      step-1000)
        model=$exp_root/$run/checkpoints/ckpt-00001000.pt
        [ -f "$model" ] || { echo "$setting $run: no checkpoint at step 1000, skipped"; continue; } ;;
    esac
    # shellcheck disable=SC2086
    line=$(sqvae-speech convert --exp "$model" $common $opts --out "$out/$setting/$run" | tail -n 1)
    echo "$setting $run: ${line#*; }"
  done
done
