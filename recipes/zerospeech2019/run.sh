#!/usr/bin/env bash
# ZeroSpeech 2019 English: corpus check -> Kaldi data dirs -> log-mel features ->
# SQ-VAE (I, III, IV) / VQ-VAE training -> the paper's dB^2 table (Table 3, ZeroSpeech
# 2019, on its 190-utterance list) -> voice conversion of the test speakers to the target
# voices with a listening page -> the test set in the ZeroSpeech 2019 submission layout,
# bitrate (and ABX with an item file).
# Every step is a stage; `./run.sh --corpus-dir PATH --stage 2 --stop-stage 2` reruns one.
# A finished stage leaves a .done marker (stage 1: data/.prepare.json) and a rerun skips
# it (delete the marker to redo it). The options shared with ../vctk (stages, jobs,
# configs, variants, stage 5 and 6 settings) are declared in tools/speech_recipe.sh;
# `./run.sh --help` lists them all. See README.md.
set -euo pipefail

corpus_dir=""            # the dir holding english/ (or english/ itself)
eval_list=zerospeech2019_english_mse_evaluation.json  # the paper's dB^2 list (JSON [[path, speaker], ...]); relative: from the current dir, else the recipe dir
convert_sources=""       # stage 5: speakers of data/test (english/test) whose utterances are converted; empty: the first 4 of data/test
convert_targets="V001 V002"  # stage 5: training speakers to decode as (the challenge's target voices)
synthesis_vocoder=neural  # stage 6: vocoder of the submission's speech (english/synthesis.txt): neural (stage 3's; WORLD without it), world (both need stage 5's feats/train/f0_stats.json) or griffinlim
author="anonymous"       # stage 6: metadata.yaml 'author' of the submission
affiliation="unaffiliated"  # stage 6: metadata.yaml 'affiliation' of the submission

help_message="Usage: $0 --corpus-dir PATH [options]
Stages: 0 check the corpus and the evaluation list, 1 data dirs (data/train,
data/eval + data/eval_list.txt, data/test), 2 features (feats/<set>), 3 train each
variant (exp/<variant>), 4 evaluate on the paper's list and print the dB^2 table next to
the paper's (exp/RESULTS.md, exp/curves.png), 5 F0 statistics of the target voices
(feats/train/f0_stats.json) and conversion of test speakers to them by the first variant,
with a listening page (exp/<variant>/conversion/index.html), 6 a ZeroSpeech 2019
submission per variant: english/test exported (exp/<variant>/submission/english/test and
.../english/auxiliary_embedding1), its bitrate (exp/<variant>/bitrate.json), the speech
of the challenge's synthesis list in V001 / V002, metadata.yaml and code/, packed into
exp/<variant>/submission.zip and validated; with --abx-item FILE also ABX
(exp/<variant>/abx.md); all written next to run.sh."

SQVAE_ROOT=${SQVAE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
. "$SQVAE_ROOT/tools/speech_recipe.sh"  # the shared options; parses the command line
require_one_of synthesis_vocoder neural world griffinlim

if [ -z "$corpus_dir" ]; then
  log "error: --corpus-dir is required: the ZeroSpeech 2019 English dataset (the dir holding english/)," \
    "published at the ZeroSpeech challenge website, https://www.zerospeech.com"
  exit 1
fi
# Paths are relative to where the user is; a relative --eval-list not found there is
# looked up in the recipe dir (where the paper's list lives).
corpus_dir=$(realpath -m -- "$corpus_dir")
if [ -e "$eval_list" ]; then eval_list=$(realpath -- "$eval_list"); fi
cd "$(dirname "${BASH_SOURCE[0]}")"
eval_list=$(realpath -m -- "$eval_list")
. "$SQVAE_ROOT/tools/path.sh"

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  log "Stage 0: check the corpus at $corpus_dir and the evaluation list $eval_list"
  sqvae-speech prepare zerospeech2019 "$corpus_dir" --check --eval-list "$eval_list"
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "Stage 1: prepare data/{train,eval,test} and data/eval_list.txt"
  # `prepare` checks the dirs it writes and records the corpus and options in
  # data/.prepare.json: a rerun with the same ones skips, a rerun with others stops.
  sqvae-speech prepare zerospeech2019 "$corpus_dir" data --nj $nj --eval-list "$eval_list" \
    --max-utts-per-speaker $max_utts_per_speaker
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "Stage 2: extract log-mel features into feats/{train,test,eval}"
  for x in train test; do
    # --skip-bad: a file that cannot be read is listed in feats/$x/failed.txt, not fatal.
    once feats/$x/.done sqvae-speech extract data/$x feats/$x --nj $nj --config "$feature_config" --skip-bad
  done
  # Every listed utterance must be scored: a failure here is fatal, not skipped.
  once feats/eval/.done sqvae-speech extract data/eval feats/eval --nj $nj --config "$feature_config"
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log "Stage 3: train $variants with $config (launcher: $launcher)"
  for v in $variants; do
    # --resume: a killed run continues from its newest checkpoint (a fresh dir starts at 0).
    once $exp/$v/.done $launcher train --config "$config" --feats feats/train --exp $exp/$v --variant $v \
      $train_args --resume
  done
  if [ "$train_vocoder" = true ]; then train_vocoder_stage "$vocoder_config" $exp/$first_variant; fi
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log "Stage 4: dB^2 MSE and codebook usage on the paper's list (data/eval_list.txt)"
  for v in $variants; do
    sqvae-speech evaluate --exp $exp/$v --feats feats/eval --list data/eval_list.txt --no-progress
  done
  sqvae-speech compare $exp_dirs --out $exp/RESULTS.md --curves $exp/curves.png
  tee -a $exp/RESULTS.md < local/paper_table3.md  # the paper's numbers, under ours
  log "table: $exp/RESULTS.md, training curves: $exp/curves.png"
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log "Stage 5: F0 statistics, voice conversion by $first_variant and a listening page"
  # Sources: the first utterances of --convert-sources (else the first 4 speakers of
  # data/test) and, as the listener's reference, each target's own held-out recordings
  # (data/eval, english/train/parallel/voice); each decoded as every target. For WORLD,
  # `convert` computes the F0 statistics of the targets (and of sources that are training
  # speakers) from 50 utterances each of data/train, unless feats/train/f0_stats.json holds them.
  sqvae-speech convert --exp $exp/$first_variant --make-list data/test data/eval \
    --speakers "$convert_sources" --num-speakers 4 --targets "$convert_targets" --target-sources \
    --per-speaker $convert_per_speaker --feats feats/test $(vocoder_options $vocoder) --f0-norm $f0_norm \
    --f0-stats feats/train/f0_stats.json --f0-data data/train --nj $nj \
    --out $exp/$first_variant/conversion --no-progress
  log "listening page: $exp/$first_variant/conversion/index.html"
fi

if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  synth_opts="--vocoder $synthesis_vocoder"  # the neural vocoder is stage 3's; without it, WORLD
  if [ "$synthesis_vocoder" = neural ]; then
    if [ -f exp/vocoder/vocoder.pt ]; then synth_opts="$synth_opts --vocoder-model exp/vocoder/vocoder.pt"
    else log "no exp/vocoder/vocoder.pt (stage 3 with --train-vocoder true writes it): synthesizing with WORLD"
      synth_opts="--vocoder world"; fi
  fi
  log "Stage 6: ZeroSpeech 2019 submissions (english/test, bitrate${abx_item:+, ABX with $abx_item}, speech, zip)"
  for v in $variants; do
    # file names as in the corpus (S002_0379.txt): the utterance ids are the file names
    export_variant $v $exp/$v/submission/english/test $exp/$v/submission/english/auxiliary_embedding1 \
      $exp/$v/bitrate.json
    # The rest of a submission: english/synthesis.txt decoded as V001 / V002, test files the
    # export skipped (too short), metadata.yaml, code/README.md; zipped and validated (exit 2
    # naming each problem); a rerun keeps the files already written.
    sqvae-speech submission --exp $exp/$v --corpus-dir "$corpus_dir" --out $exp/$v/submission \
      $synth_opts --f0-stats feats/train/f0_stats.json --f0-norm $f0_norm \
      --author "$author" --affiliation "$affiliation" --no-progress
  done
  if [ -z "$abx_item" ]; then
    log "ABX skipped: no --abx-item. To score the exports, pass --abx-item FILE, an item file" \
      "('#file onset offset #phone prev-phone next-phone speaker', #file a file name of english/test" \
      "without .wav), e.g. the challenge's English test item file"
  fi
fi

log "Done (stages $stage to $stop_stage)"
