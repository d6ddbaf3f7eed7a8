#!/usr/bin/env bash
# What limits voice conversion, part two: settings that need training. Each SETTING trains
# Gaussian SQ-VAE (IV) with conf/compare.yaml plus that one change, over the given seeds,
# then converts the same 8 held-out sources to the 4 main voices as stage 5 does (WORLD,
# F0 mapped per utterance) and prints the conversion line of each run. Run from
# recipes/fishfillets after stages 0-5 (feats/train, feats/test, feats/train/f0_stats.json):
#
#   local/training_factors.sh EXP_ROOT "SEEDS" SETTING...
#
# SETTING is NAME=OVERRIDE[,OVERRIDE...] with `train --set` overrides, e.g.
#   k64=model.quantizer.num_embeddings=64   jitter0=model.jitter=0.0
# Runs go to EXP_ROOT/NAME_seed<N>, conversions to EXP_ROOT/NAME_seed<N>/conversion; a
# finished run (its .done) is not trained again.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 EXP_ROOT \"SEEDS\" NAME=OVERRIDE[,OVERRIDE...]..." >&2
  exit 1
fi
exp_root=$1 seeds=$2
shift 2
for setting in "$@"; do
  name=${setting%%=*} overrides=${setting#*=}
  sets=()
  IFS=, read -ra parts <<< "$overrides"
  for o in "${parts[@]}"; do sets+=(--set "$o"); done
  for s in $seeds; do
    run=$exp_root/${name}_seed$s
    if [ ! -f "$run/.done" ]; then
      sqvae-speech train --config conf/compare.yaml --feats feats/train --exp "$run" --variant gaussian_4 \
        --set train.seed=$s "${sets[@]}" --resume --no-progress
      touch "$run/.done"
    fi
    sqvae-speech evaluate --exp "$run" --feats feats/test --no-progress > /dev/null
    line=$(sqvae-speech convert --exp "$run" --make-list data/test --speakers cs-m,cs-v,nl-m,nl-v --per-speaker 2 \
      --feats feats/test --f0-stats feats/train/f0_stats.json --similarity data/test --vocoder world \
      --f0-norm utterance --out "$run/conversion" --no-progress | tail -n 1)
    echo "$name seed $s: $(python3 -c "import json,sys; r=json.load(open('$run/results.json')); print(f\"{r['mse_db2']:.2f} dB^2, {r['used_codes']} codes\")"); ${line#*; }"
  done
done
