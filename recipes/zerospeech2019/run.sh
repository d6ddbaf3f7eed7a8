#!/usr/bin/env bash
# ZeroSpeech 2019 English: corpus check -> Kaldi data dirs -> log-mel features ->
# SQ-VAE (I, III, IV) / VQ-VAE training -> the paper's dB^2 table (Table 3, ZeroSpeech
# 2019, on its 190-utterance list).
# Every step is a stage; `./run.sh --corpus-dir PATH --stage 2 --stop-stage 2` reruns one.
# Stages that finish leave a .done marker, and a rerun skips them (delete it to redo).
# See README.md for the layout, the data sets, CPU and multi-GPU runs and the paper's numbers.
set -euo pipefail

stage=0                  # first stage to run
stop_stage=4             # last stage to run
corpus_dir=""            # the dir holding english/ (or english/ itself)
eval_list=zerospeech2019_english_mse_evaluation.json  # the paper's dB^2 list (JSON [[path, speaker], ...])
nj=2                     # parallel jobs for data prep (file headers) and feature extraction
max_utts_per_speaker=0   # keep at most this many training utterances per speaker, for quick runs; 0: all
feature_config=conf/features.yaml  # feature settings (a 'features' section), relative to this recipe
config=conf/small.yaml   # model/training config (stage 3): conf/small.yaml (CPU) or conf/paper.yaml (GPU, the paper's)
variants="gaussian_1 gaussian_3 gaussian_4 vqvae_ema"  # models to train: gaussian_1..gaussian_4, vqvae_ema
steps=0                  # training steps per variant; 0: the config's train.steps
launcher=sqvae-speech    # runs `train`; multi-GPU: "accelerate launch --multi_gpu --num_processes 4 -m sqvae_speech.cli"
train_opts=""            # more `train` arguments; write --train-opts="--set train.batch_size=13" (the value starts with --)
exp=exp                  # experiment root: one dir per variant, exp/<variant>

help_message="Usage: $0 --corpus-dir PATH [options]
Stages: 0 check the corpus and the evaluation list, 1 data dirs (data/train,
data/eval + data/eval_list.txt, data/test), 2 features (feats/<set>), 3 train each
variant (exp/<variant>), 4 evaluate on the paper's list and print the dB^2 table next to
the paper's (exp/RESULTS.md, exp/curves.png); all written next to run.sh."

SQVAE_ROOT=${SQVAE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
. "$SQVAE_ROOT/tools/parse_options.sh"
. "$SQVAE_ROOT/tools/log.sh"

for v in stage stop_stage nj max_utts_per_speaker steps; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { log "error: --${v//_/-} must be a non-negative integer, not '${!v}'"; exit 1; }
done
if [ -z "$corpus_dir" ]; then
  log "error: --corpus-dir is required: the ZeroSpeech 2019 English dataset (the dir holding english/)," \
    "published at the ZeroSpeech challenge website, https://www.zerospeech.com"
  exit 1
fi

# Paths given on the command line are relative to where the user is; the recipe works
# in its own directory (where the default evaluation list lives).
# A relative --eval-list is looked up there first, then in the recipe dir.
corpus_dir=$(realpath -m -- "$corpus_dir")
if [ -e "$eval_list" ]; then eval_list=$(realpath -- "$eval_list"); fi
cd "$(dirname "${BASH_SOURCE[0]}")"
eval_list=$(realpath -m -- "$eval_list")
. ./path.sh

prepare_opts="--eval-list $eval_list --max-utts-per-speaker $max_utts_per_speaker"
sets="train eval test"

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  log "Stage 0: check the corpus at $corpus_dir and the evaluation list $eval_list"
  sqvae-speech prepare zerospeech2019 "$corpus_dir" --check --eval-list "$eval_list"
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "Stage 1: prepare data/{train,eval,test} and data/eval_list.txt"
  if [ -f data/.done ]; then
    # The marker holds the corpus and options the data was made with: a rerun with
    # other ones must not silently reuse it.
    if [ "$(cat data/.done)" != "$corpus_dir $prepare_opts" ]; then
      log "error: data/ was prepared with '$(cat data/.done)', not '$corpus_dir $prepare_opts';" \
        "remove data/ and feats/ to redo it"
      exit 1
    fi
    log "data/.done exists: skipping"
  else
    sqvae-speech prepare zerospeech2019 "$corpus_dir" data --nj $nj $prepare_opts
    for x in $sets; do
      sqvae-speech validate-data data/$x
    done
    echo "$corpus_dir $prepare_opts" > data/.done
  fi
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "Stage 2: extract log-mel features into feats/{train,eval,test}"
  for x in $sets; do
    if [ -f feats/$x/.done ]; then
      log "feats/$x/.done exists: skipping"
      continue
    fi
    if [ $x = eval ]; then
      # Every listed utterance must be scored: a failure here is fatal, not skipped.
      sqvae-speech extract data/$x feats/$x --nj $nj --config "$feature_config"
    else
      # --skip-bad: a file that cannot be read is listed in failed.txt, not fatal.
      sqvae-speech extract data/$x feats/$x --nj $nj --config "$feature_config" --skip-bad
    fi
    if [ -s feats/$x/failed.txt ]; then
      log "warning: $(wc -l < feats/$x/failed.txt) utterance(s) of data/$x failed, see feats/$x/failed.txt"
    fi
    touch feats/$x/.done
  done
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log "Stage 3: train $variants with $config (launcher: $launcher)"
  step_opts=""
  if [ "$steps" -gt 0 ]; then step_opts="--steps $steps"; fi
  for v in $variants; do
    if [ -f $exp/$v/.done ]; then
      log "$exp/$v/.done exists: skipping"
      continue
    fi
    # --resume: a killed run continues from its newest checkpoint (a fresh dir starts at 0).
    $launcher train --config "$config" --feats feats/train --exp $exp/$v --variant $v $step_opts $train_opts --resume
    touch $exp/$v/.done
  done
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log "Stage 4: dB^2 MSE and codebook usage on the $(wc -l < data/eval_list.txt) utterances of data/eval_list.txt"
  exps=""
  for v in $variants; do
    sqvae-speech evaluate --exp $exp/$v --feats feats/eval --list data/eval_list.txt --no-progress
    exps="$exps $exp/$v"
  done
  sqvae-speech compare $exps --out $exp/RESULTS.md --curves $exp/curves.png
  cat local/paper_table3.md
  cat local/paper_table3.md >> $exp/RESULTS.md
  log "table: $exp/RESULTS.md, training curves: $exp/curves.png"
fi

# Stages 5 (conversion demo page) and 6 (export of data/test + ABX) come with the
# conversion and export modules.

log "Done (stages $stage to $stop_stage)"
