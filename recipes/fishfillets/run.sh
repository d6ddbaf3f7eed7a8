#!/usr/bin/env bash
# Fish Fillets NG voices (Czech and Dutch): corpus -> Kaldi data dirs -> log-mel features
# -> SQ-VAE / VQ-VAE training -> dB^2 MSE and codebook usage.
# Every step is a stage; `./run.sh --stage 1 --stop-stage 1` reruns one. Stages that
# finish leave a .done marker, and a rerun skips them (delete the marker to redo one).
# See README.md for the corpus, the split and the outputs.
set -euo pipefail

stage=0                  # first stage to run
stop_stage=4             # last stage to run
nj=2                     # parallel jobs for feature extraction
feature_config=conf/features.yaml  # feature settings (a 'features' section), relative to this recipe
corpus_dir=""            # an existing sound dir (.../fillets-ng/sound) or download dir; empty: download into download/
include_minor=false      # also train on the minor characters (cs-b1, cs-b2, cs-c, cs-hs, cs-pap)
test_per_speaker=30      # held-out clips per speaker (each >= 1 s, at most a fifth of the speaker)
max_utts_per_speaker=0   # keep at most this many training clips per speaker, for quick runs; 0: all
config=conf/demo.yaml    # model/training config (stage 3), relative to this recipe
variants="gaussian_4 vqvae_ema"  # models to train: gaussian_1..gaussian_4, vqvae_ema
steps=0                  # training steps per variant; 0: the config's train.steps
exp=exp                  # experiment root: one dir per variant, exp/<variant>

help_message="Usage: $0 [options]
Stages: 0 corpus (download/), 1 data dirs (data/train, data/test),
2 features (feats/train, feats/test), 3 train each variant (exp/<variant>),
4 evaluate on feats/test and print the comparison (exp/RESULTS.md, exp/curves.png);
all written next to run.sh."

SQVAE_ROOT=${SQVAE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
. "$SQVAE_ROOT/tools/parse_options.sh"
. "$SQVAE_ROOT/tools/log.sh"

for v in stage stop_stage nj test_per_speaker max_utts_per_speaker steps; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { log "error: --${v//_/-} must be a non-negative integer, not '${!v}'"; exit 1; }
done

# Paths given on the command line are relative to where the user is; the recipe works
# in its own directory.
[ -z "$corpus_dir" ] || corpus_dir=$(realpath -m -- "$corpus_dir")
cd "$(dirname "${BASH_SOURCE[0]}")"
. ./path.sh

sound_dir=${corpus_dir:-download}
prepare_opts="--test-per-speaker $test_per_speaker --max-utts-per-speaker $max_utts_per_speaker"
if [ "$include_minor" = true ]; then prepare_opts="$prepare_opts --include-minor"; fi

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  log "Stage 0: get the corpus"
  if [ -n "$corpus_dir" ]; then
    [ -d "$corpus_dir" ] || { log "error: --corpus-dir $corpus_dir is not a directory"; exit 1; }
    log "using the existing corpus at $corpus_dir"
  elif [ -f download/.done ]; then
    log "download/.done exists: corpus already fetched, skipping"
  else
    bash local/download.sh download
  fi
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "Stage 1: prepare data/train and data/test"
  if [ -f data/.done ]; then
    # The marker holds the options the data was made with: a rerun with other options
    # must not silently reuse it.
    if [ "$(cat data/.done)" != "$prepare_opts" ]; then
      log "error: data/ was prepared with '$(cat data/.done)', not '$prepare_opts'; remove data/ and feats/ to redo it"
      exit 1
    fi
    log "data/.done exists: skipping"
  else
    sqvae-speech prepare fishfillets "$sound_dir" data $prepare_opts
    for x in train test; do
      sqvae-speech validate-data data/$x
    done
    echo "$prepare_opts" > data/.done
  fi
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "Stage 2: extract log-mel features into feats/train and feats/test"
  for x in train test; do
    if [ -f feats/$x/.done ]; then
      log "feats/$x/.done exists: skipping"
      continue
    fi
    # --skip-bad: a clip that cannot be read is listed in failed.txt, not fatal.
    sqvae-speech extract data/$x feats/$x --nj $nj --config "$feature_config" --skip-bad
    if [ -s feats/$x/failed.txt ]; then
      log "warning: $(wc -l < feats/$x/failed.txt) utterance(s) of data/$x failed, see feats/$x/failed.txt"
    fi
    touch feats/$x/.done
  done
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log "Stage 3: train $variants with $config"
  step_opts=""
  if [ "$steps" -gt 0 ]; then step_opts="--steps $steps"; fi
  for v in $variants; do
    if [ -f $exp/$v/.done ]; then
      log "$exp/$v/.done exists: skipping"
      continue
    fi
    # --resume: a killed run continues from its newest checkpoint (a fresh dir starts at 0).
    sqvae-speech train --config "$config" --feats feats/train --exp $exp/$v --variant $v $step_opts --resume
    touch $exp/$v/.done
  done
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log "Stage 4: dB^2 MSE and codebook usage on feats/test"
  for v in $variants; do
    sqvae-speech evaluate --exp $exp/$v --feats feats/test --no-progress
  done
  exps=""
  for v in $variants; do exps="$exps $exp/$v"; done
  sqvae-speech compare $exps --out $exp/RESULTS.md --curves $exp/curves.png
  log "table: $exp/RESULTS.md, training curves: $exp/curves.png"
fi

log "Done (stages $stage to $stop_stage)"
