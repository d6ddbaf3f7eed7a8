#!/usr/bin/env bash
# CSTR VCTK Corpus (0.80 or 0.92): corpus check -> Kaldi data dirs -> log-mel features
# -> SQ-VAE (I, III, IV) / VQ-VAE training -> the paper's dB^2 table (Table 3, VCTK).
# Every step is a stage; `./run.sh --corpus-dir PATH --stage 2 --stop-stage 2` reruns one.
# Stages that finish leave a .done marker, and a rerun skips them (delete it to redo).
# See README.md for the layouts, the split, CPU and multi-GPU runs and the paper's numbers.
set -euo pipefail

stage=0                  # first stage to run
stop_stage=4             # last stage to run
corpus_dir=""            # the VCTK dir (wav48/ for 0.80, wav48_silence_trimmed/ for 0.92) or the dir above it
vctk_version=auto        # auto (detected from the layout), 0.80 or 0.92
mic=mic1                 # 0.92 only: mic1 (DPA 4035) or mic2 (Sennheiser MKH 800)
nj=2                     # parallel jobs for data prep (file headers) and feature extraction
test_per_speaker=10      # held-out utterances per speaker for the dB^2 table (at most a fifth of the speaker)
heldout_speakers=""      # speakers kept out of training entirely (data/heldout), e.g. "p225 p226"
max_utts_per_speaker=0   # keep at most this many training utterances per speaker, for quick runs; 0: all
feature_config=conf/features.yaml  # feature settings (a 'features' section), relative to this recipe
config=conf/small.yaml   # model/training config (stage 3): conf/small.yaml (CPU) or conf/paper.yaml (GPU, the paper's)
variants="gaussian_1 gaussian_3 gaussian_4 vqvae_ema"  # models to train: gaussian_1..gaussian_4, vqvae_ema
steps=0                  # training steps per variant; 0: the config's train.steps
launcher=sqvae-speech    # runs `train`; multi-GPU: "accelerate launch --multi_gpu --num_processes 4 -m sqvae_speech.cli"
train_opts=""            # more `train` arguments; write --train-opts="--set train.batch_size=13" (the value starts with --)
exp=exp                  # experiment root: one dir per variant, exp/<variant>

help_message="Usage: $0 --corpus-dir PATH [options]
Stages: 0 check the corpus, 1 data dirs (data/train, data/test[, data/heldout]),
2 features (feats/<set>), 3 train each variant (exp/<variant>),
4 evaluate on feats/test and print the dB^2 table next to the paper's
(exp/RESULTS.md, exp/curves.png); all written next to run.sh."

SQVAE_ROOT=${SQVAE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
. "$SQVAE_ROOT/tools/parse_options.sh"
. "$SQVAE_ROOT/tools/log.sh"

for v in stage stop_stage nj test_per_speaker max_utts_per_speaker steps; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { log "error: --${v//_/-} must be a non-negative integer, not '${!v}'"; exit 1; }
done
if [ -z "$corpus_dir" ]; then
  log "error: --corpus-dir is required: the CSTR VCTK Corpus (0.80 or 0.92) from the University of" \
    "Edinburgh DataShare, https://datashare.ed.ac.uk/handle/10283/3443 (0.92) or .../10283/2651 (0.80)"
  exit 1
fi

# Paths given on the command line are relative to where the user is; the recipe works
# in its own directory.
corpus_dir=$(realpath -m -- "$corpus_dir")
cd "$(dirname "${BASH_SOURCE[0]}")"
. ./path.sh

corpus_opts="--vctk-version $vctk_version --mic $mic"
prepare_opts="$corpus_opts --test-per-speaker $test_per_speaker --max-utts-per-speaker $max_utts_per_speaker"
prepare_opts="$prepare_opts --heldout-speakers $heldout_speakers"
sets="train test"
if [ -n "$heldout_speakers" ]; then sets="$sets heldout"; fi

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  log "Stage 0: check the corpus at $corpus_dir"
  sqvae-speech prepare vctk "$corpus_dir" --check $corpus_opts
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "Stage 1: prepare data/{${sets// /,}}"
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
    sqvae-speech prepare vctk "$corpus_dir" data --nj $nj $prepare_opts
    for x in $sets; do
      sqvae-speech validate-data data/$x
    done
    echo "$corpus_dir $prepare_opts" > data/.done
  fi
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "Stage 2: extract log-mel features (48 kHz -> 16 kHz) into feats/{${sets// /,}}"
  for x in $sets; do
    if [ -f feats/$x/.done ]; then
      log "feats/$x/.done exists: skipping"
      continue
    fi
    # --skip-bad: a file that cannot be read is listed in failed.txt, not fatal.
    sqvae-speech extract data/$x feats/$x --nj $nj --config "$feature_config" --skip-bad
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
  log "Stage 4: dB^2 MSE and codebook usage on feats/test (held-out utterances, own speakers)"
  exps=""
  for v in $variants; do
    sqvae-speech evaluate --exp $exp/$v --feats feats/test --no-progress
    exps="$exps $exp/$v"
  done
  sqvae-speech compare $exps --out $exp/RESULTS.md --curves $exp/curves.png
  cat local/paper_table3.md
  cat local/paper_table3.md >> $exp/RESULTS.md
  log "table: $exp/RESULTS.md, training curves: $exp/curves.png"
fi

# Stages 5 (conversion demo page) and 6 (export) come with the conversion and export
# modules.

log "Done (stages $stage to $stop_stage)"
