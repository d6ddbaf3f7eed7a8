#!/usr/bin/env bash
# CSTR VCTK Corpus (0.80 or 0.92): corpus check -> Kaldi data dirs -> log-mel features
# -> SQ-VAE (I, III, IV) / VQ-VAE training -> the paper's dB^2 table (Table 3, VCTK)
# -> voice conversion with a listening page -> ZeroSpeech-format export, bitrate (and ABX).
# Every step is a stage; `./run.sh --corpus-dir PATH --stage 2 --stop-stage 2` reruns one.
# A finished stage leaves a .done marker (stage 1: data/.prepare.json) and a rerun skips
# it (delete the marker to redo it). The options shared with ../zerospeech2019 (stages,
# jobs, configs, variants, stage 5 and 6 settings) are declared in
# tools/speech_recipe.sh; `./run.sh --help` lists them all. See README.md.
set -euo pipefail

corpus_dir=""            # the VCTK dir (wav48/ for 0.80, wav48_silence_trimmed/ for 0.92) or the dir above it
vctk_version=auto        # auto (detected from the layout), 0.80 or 0.92
mic=mic1                 # 0.92 only: mic1 (DPA 4035) or mic2 (Sennheiser MKH 800)
test_per_speaker=10      # held-out utterances per speaker for the dB^2 table (at most a fifth of the speaker)
heldout_speakers=""      # speakers kept out of training entirely (data/heldout), e.g. "p225 p226"
convert_speakers=""      # stage 5: training speakers to decode as, their data/test utterances converted too; empty: the first 4 training speakers

help_message="Usage: $0 --corpus-dir PATH [options]
Stages: 0 check the corpus, 1 data dirs (data/train, data/test[, data/heldout]),
2 features (feats/<set>), 3 train each variant (exp/<variant>),
4 evaluate on feats/test and print the dB^2 table next to the paper's
(exp/RESULTS.md, exp/curves.png), 5 F0 statistics (feats/train/f0_stats.json) and voice
conversion of held-out speech (data/test, data/heldout) by the first variant, with a
listening page (exp/<variant>/conversion/index.html), 6 ZeroSpeech 2019 export of
feats/test (exp/<variant>/zerospeech/{quantized,auxiliary}) and its bitrate
(exp/<variant>/zerospeech/bitrate.json); with --abx-item FILE also ABX
(exp/<variant>/abx.md); all written next to run.sh."

SQVAE_ROOT=${SQVAE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
. "$SQVAE_ROOT/tools/speech_recipe.sh"  # the shared options; parses the command line

require_uint test_per_speaker
if [ -z "$corpus_dir" ]; then
  log "error: --corpus-dir is required: the CSTR VCTK Corpus (0.80 or 0.92) from the University of" \
    "Edinburgh DataShare, https://datashare.ed.ac.uk/handle/10283/3443 (0.92) or .../10283/2651 (0.80)"
  exit 1
fi
corpus_dir=$(realpath -m -- "$corpus_dir")  # relative to where the user is
cd "$(dirname "${BASH_SOURCE[0]}")"
. "$SQVAE_ROOT/tools/path.sh"

sets="train test${heldout_speakers:+ heldout}"  # the data dirs (data/<set>) and feature stores (feats/<set>)

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  log "Stage 0: check the corpus at $corpus_dir"
  sqvae-speech prepare vctk "$corpus_dir" --check --vctk-version $vctk_version --mic $mic
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "Stage 1: prepare data/{${sets// /,}}"
  # `prepare` checks the dirs it writes and records the corpus and options in
  # data/.prepare.json: a rerun with the same ones skips, a rerun with others stops.
  sqvae-speech prepare vctk "$corpus_dir" data --nj $nj --vctk-version $vctk_version --mic $mic \
    --test-per-speaker $test_per_speaker --max-utts-per-speaker $max_utts_per_speaker \
    --heldout-speakers $heldout_speakers
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "Stage 2: extract log-mel features (48 kHz -> 16 kHz) into feats/{${sets// /,}}"
  for x in $sets; do
    # --skip-bad: a file that cannot be read is listed in feats/$x/failed.txt, not fatal.
    once feats/$x/.done sqvae-speech extract data/$x feats/$x --nj $nj --config "$feature_config" --skip-bad
  done
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
  log "Stage 4: dB^2 MSE and codebook usage on feats/test (held-out utterances, own speakers)"
  for v in $variants; do
    sqvae-speech evaluate --exp $exp/$v --feats feats/test --no-progress
  done
  sqvae-speech compare $exp_dirs --out $exp/RESULTS.md --curves $exp/curves.png
  tee -a $exp/RESULTS.md < local/paper_table3.md  # the paper's numbers, under ours
  log "table: $exp/RESULTS.md, training curves: $exp/curves.png"
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log "Stage 5: F0 statistics, voice conversion by $first_variant and a listening page"
  # Targets: --convert-speakers, else the first 4 training speakers. Sources: every
  # held-out speaker's utterances (data/heldout: voices the model never heard) and each
  # target's own held-out ones (data/test), decoded as every target. For WORLD, `convert`
  # computes the targets' F0 statistics from data/train unless feats/train/f0_stats.json
  # holds them.
  sqvae-speech convert --exp $exp/$first_variant --make-list data/test ${heldout_speakers:+data/heldout} \
    --speakers "$heldout_speakers" --targets "$convert_speakers" --num-targets 4 --target-sources \
    --per-speaker $convert_per_speaker --feats feats/test $(vocoder_options $vocoder) --f0-norm $f0_norm \
    --f0-stats feats/train/f0_stats.json --f0-data data/train --nj $nj \
    --out $exp/$first_variant/conversion --no-progress
  log "listening page: $exp/$first_variant/conversion/index.html"
fi

if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  log "Stage 6: ZeroSpeech 2019 export and bitrate of feats/test${abx_item:+, ABX with $abx_item}"
  for v in $variants; do
    export_variant $v $exp/$v/zerospeech/quantized $exp/$v/zerospeech/auxiliary $exp/$v/zerospeech/bitrate.json
  done
  if [ -z "$abx_item" ]; then
    log "ABX skipped: no --abx-item. To score the exports, pass --abx-item FILE, an item file" \
      "('#file onset offset #phone prev-phone next-phone speaker', #file an utterance id of data/test)"
  fi
fi

log "Done (stages $stage to $stop_stage)"
