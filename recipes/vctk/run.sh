#!/usr/bin/env bash
# CSTR VCTK Corpus (0.80 or 0.92): corpus check -> Kaldi data dirs -> log-mel features
# -> SQ-VAE (I, III, IV) / VQ-VAE training -> the paper's dB^2 table (Table 3, VCTK)
# -> voice conversion with a listening page -> ZeroSpeech-format export, bitrate (and ABX).
# Every step is a stage; `./run.sh --corpus-dir PATH --stage 2 --stop-stage 2` reruns one.
# Stages that finish leave a .done marker, and a rerun skips them (delete it to redo).
# See README.md for the layouts, the split, CPU and multi-GPU runs and the paper's numbers.
set -euo pipefail

stage=0                  # first stage to run
stop_stage=6             # last stage to run
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
convert_speakers=""      # stage 5: training speakers to decode as, their data/test utterances converted too; empty: the first 4 of data/train/spk2utt
convert_per_speaker=2    # stage 5: source utterances per speaker (each >= 1.5 s if possible); held-out speakers are sources as well
vocoder=world            # stage 5: world (F0 from the source, converted to the target) or griffinlim
f0_norm=utterance        # stage 5: WORLD F0 mapping from each utterance's own log-F0 statistics (utterance) or the source speaker's (speaker)
abx_item=""              # stage 6: ABX item file on the utterances of data/test (#file = utterance id); empty: no ABX

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
. "$SQVAE_ROOT/tools/parse_options.sh"
. "$SQVAE_ROOT/tools/log.sh"

for v in stage stop_stage nj test_per_speaker max_utts_per_speaker steps convert_per_speaker; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { log "error: --${v//_/-} must be a non-negative integer, not '${!v}'"; exit 1; }
done
case $vocoder in world|griffinlim) ;; *) log "error: --vocoder must be world or griffinlim, not '$vocoder'"; exit 1;; esac
case $f0_norm in utterance|speaker) ;; *) log "error: --f0-norm must be utterance or speaker, not '$f0_norm'"; exit 1;; esac
if [ -z "$corpus_dir" ]; then
  log "error: --corpus-dir is required: the CSTR VCTK Corpus (0.80 or 0.92) from the University of" \
    "Edinburgh DataShare, https://datashare.ed.ac.uk/handle/10283/3443 (0.92) or .../10283/2651 (0.80)"
  exit 1
fi

# Paths given on the command line are relative to where the user is; the recipe works
# in its own directory.
corpus_dir=$(realpath -m -- "$corpus_dir")
if [ -n "$abx_item" ]; then
  [ -f "$abx_item" ] || { log "error: --abx-item $abx_item is not a file"; exit 1; }
  abx_item=$(realpath -- "$abx_item")
fi
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

# True when word $1 is one of the words $2.
in_list() { [[ " $(echo $2) " == *" $1 "* ]]; }

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log "Stage 5: F0 statistics, voice conversion and a listening page"
  for x in $sets; do
    [ -f data/$x/spk2utt ] || { log "error: data/$x/spk2utt not found: run stage 1 first"; exit 1; }
  done
  train_speakers=$(cut -d' ' -f1 data/train/spk2utt)
  targets=$(echo ${convert_speakers//,/ })
  if [ -z "$targets" ]; then targets=$(echo $(echo "$train_speakers" | head -n 4)); fi
  for spk in $targets; do
    if ! in_list "$spk" "$train_speakers"; then
      log "error: --convert-speakers: '$spk' is not a training speaker (data/train/spk2utt); the model decodes" \
        "only those: $(echo $train_speakers). Held-out speakers (--heldout-speakers) are converted from, never to."
      exit 1
    fi
  done
  # Sources: the targets' held-out utterances (data/test; a speaker with none is a target
  # only) and every held-out speaker's utterances (data/heldout: unseen speakers).
  sources="" source_dirs=data/test
  for spk in $targets; do
    if in_list "$spk" "$(cut -d' ' -f1 data/test/spk2utt)"; then sources="$sources $spk"; fi
  done
  if [ -n "$heldout_speakers" ]; then
    sources="$sources $(echo $(cut -d' ' -f1 data/heldout/spk2utt))"
    source_dirs="$source_dirs data/heldout"
  fi
  sources=$(echo $sources)
  [ -n "$sources" ] || { log "error: none of $targets has an utterance in data/test, and there are no held-out speakers"; exit 1; }
  bash "$SQVAE_ROOT/tools/subset_data.sh" data/convert/sources "$sources" $source_dirs
  v=${variants%% *}  # the first variant of stage 3
  bash "$SQVAE_ROOT/tools/convert_page.sh" --exp $exp/$v --sources "$sources" --targets "$targets" \
    --f0-speakers "$targets" --per-speaker $convert_per_speaker --vocoder $vocoder --f0-norm $f0_norm \
    --nj $nj --feature-config "$feature_config"
fi

if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  log "Stage 6: ZeroSpeech 2019 export and bitrate of feats/test${abx_item:+, ABX with $abx_item}"
  for v in $variants; do
    for kind in quantized auxiliary; do
      # <utt>.txt per held-out utterance, one 50 Hz frame per line (a rerun skips written files)
      sqvae-speech export --exp $exp/$v --feats feats/test --out $exp/$v/zerospeech/$kind --kind $kind --no-progress
    done
    sqvae-speech bitrate $exp/$v/zerospeech/quantized --json $exp/$v/zerospeech/bitrate.json
    if [ -n "$abx_item" ]; then
      sqvae-speech abx --features feats/test $exp/$v/zerospeech/auxiliary $exp/$v/zerospeech/quantized \
        --labels "log-mel (model input)" "$v auxiliary (z)" "$v quantized (z_q)" \
        --items "$abx_item" --out $exp/$v/abx.json --table $exp/$v/abx.md --no-progress
    fi
  done
  if [ -z "$abx_item" ]; then
    log "ABX skipped: no --abx-item. To score the exports, pass --abx-item FILE, an item file" \
      "('#file onset offset #phone prev-phone next-phone speaker', #file an utterance id of data/test)"
  fi
fi

log "Done (stages $stage to $stop_stage)"
