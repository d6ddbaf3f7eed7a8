#!/usr/bin/env bash
# ZeroSpeech 2019 English: corpus check -> Kaldi data dirs -> log-mel features ->
# SQ-VAE (I, III, IV) / VQ-VAE training -> the paper's dB^2 table (Table 3, ZeroSpeech
# 2019, on its 190-utterance list) -> voice conversion of the test speakers to the target
# voices with a listening page -> the test set in the ZeroSpeech 2019 submission layout,
# bitrate (and ABX with an item file).
# Every step is a stage; `./run.sh --corpus-dir PATH --stage 2 --stop-stage 2` reruns one.
# Stages that finish leave a .done marker, and a rerun skips them (delete it to redo).
# See README.md for the layout, the data sets, CPU and multi-GPU runs and the paper's numbers.
set -euo pipefail

stage=0                  # first stage to run
stop_stage=6             # last stage to run
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
convert_sources=""       # stage 5: speakers of data/test (english/test) whose utterances are converted; empty: the first 4 of data/test/spk2utt
convert_targets="V001 V002"  # stage 5: training speakers to decode as (the challenge's target voices)
convert_per_speaker=2    # stage 5: source utterances per speaker (each >= 1.5 s if possible)
vocoder=world            # stage 5: world (F0 from the source, converted to the target) or griffinlim
f0_norm=utterance        # stage 5: WORLD F0 mapping from each utterance's own log-F0 statistics (utterance) or the source speaker's (speaker)
abx_item=""              # stage 6: ABX item file on english/test (#file = file name without .wav); empty: no ABX

help_message="Usage: $0 --corpus-dir PATH [options]
Stages: 0 check the corpus and the evaluation list, 1 data dirs (data/train,
data/eval + data/eval_list.txt, data/test), 2 features (feats/<set>), 3 train each
variant (exp/<variant>), 4 evaluate on the paper's list and print the dB^2 table next to
the paper's (exp/RESULTS.md, exp/curves.png), 5 F0 statistics of the target voices
(feats/train/f0_stats.json) and conversion of test speakers to them by the first variant,
with a listening page (exp/<variant>/conversion/index.html), 6 export of english/test in
the ZeroSpeech 2019 submission layout (exp/<variant>/submission/english/test and
.../english/auxiliary_embedding1) and its bitrate (exp/<variant>/bitrate.json); with
--abx-item FILE also ABX (exp/<variant>/abx.md); all written next to run.sh."

SQVAE_ROOT=${SQVAE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
. "$SQVAE_ROOT/tools/parse_options.sh"
. "$SQVAE_ROOT/tools/log.sh"

for v in stage stop_stage nj max_utts_per_speaker steps convert_per_speaker; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { log "error: --${v//_/-} must be a non-negative integer, not '${!v}'"; exit 1; }
done
case $vocoder in world|griffinlim) ;; *) log "error: --vocoder must be world or griffinlim, not '$vocoder'"; exit 1;; esac
case $f0_norm in utterance|speaker) ;; *) log "error: --f0-norm must be utterance or speaker, not '$f0_norm'"; exit 1;; esac
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
if [ -n "$abx_item" ]; then
  [ -f "$abx_item" ] || { log "error: --abx-item $abx_item is not a file"; exit 1; }
  abx_item=$(realpath -- "$abx_item")
fi
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

# True when word $1 is one of the words $2.
in_list() { [[ " $(echo $2) " == *" $1 "* ]]; }

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log "Stage 5: F0 statistics, voice conversion and a listening page"
  for x in $sets; do
    [ -f data/$x/spk2utt ] || { log "error: data/$x/spk2utt not found: run stage 1 first"; exit 1; }
  done
  train_speakers=$(cut -d' ' -f1 data/train/spk2utt)
  test_speakers=$(cut -d' ' -f1 data/test/spk2utt)
  targets=$(echo ${convert_targets//,/ })
  [ -n "$targets" ] || { log "error: --convert-targets is empty; name the training speakers to decode as (V001 V002)"; exit 1; }
  for spk in $targets; do
    if ! in_list "$spk" "$train_speakers"; then
      log "error: --convert-targets: '$spk' is not a training speaker (data/train/spk2utt, from english/train/unit" \
        "and english/train/voice); the model decodes only those: $(echo $train_speakers)"
      exit 1
    fi
  done
  sources=$(echo ${convert_sources//,/ })
  if [ -z "$sources" ]; then sources=$(echo $(echo "$test_speakers" | head -n 4)); fi
  for spk in $sources; do
    if ! in_list "$spk" "$test_speakers"; then
      log "error: --convert-sources: '$spk' has no utterance in data/test (english/test); speakers there: $(echo $test_speakers)"
      exit 1
    fi
  done
  # Sources: the test speakers' utterances (data/test) and, as references for the
  # listener, each target's own held-out recordings (data/eval, english/train/parallel/voice).
  eval_speakers=$(cut -d' ' -f1 data/eval/spk2utt)
  for spk in $targets; do
    if in_list "$spk" "$eval_speakers" && ! in_list "$spk" "$sources"; then sources="$sources $spk"; fi
  done
  sources=$(echo $sources)
  bash "$SQVAE_ROOT/tools/subset_data.sh" data/convert/sources "$sources" data/test data/eval
  # WORLD maps F0 to the targets' log-F0 statistics (and, with --f0-norm speaker, from a
  # source speaker's when it is a training speaker): harvest on 50 training
  # utterances per speaker concerned, not on all 102 speakers.
  f0_speakers=""
  for spk in $targets $sources; do
    if in_list "$spk" "$train_speakers" && ! in_list "$spk" "$f0_speakers"; then f0_speakers="$f0_speakers $spk"; fi
  done
  f0_speakers=$(echo $f0_speakers)
  v=${variants%% *}  # the first variant of stage 3
  bash "$SQVAE_ROOT/tools/convert_page.sh" --exp $exp/$v --sources "$sources" --targets "$targets" \
    --f0-speakers "$f0_speakers" --per-speaker $convert_per_speaker --vocoder $vocoder --f0-norm $f0_norm \
    --nj $nj --feature-config "$feature_config"
fi

if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  log "Stage 6: english/test in the ZeroSpeech 2019 submission layout, bitrate${abx_item:+, ABX with $abx_item}"
  for v in $variants; do
    sub=$exp/$v/submission/english
    # <name>.txt per test file, one 50 Hz frame per line; utterance ids are the corpus'
    # file names (S002_0379), as the challenge expects (a rerun skips written files).
    sqvae-speech export --exp $exp/$v --feats feats/test --out $sub/test --kind quantized --no-progress
    sqvae-speech export --exp $exp/$v --feats feats/test --out $sub/auxiliary_embedding1 --kind auxiliary --no-progress
    sqvae-speech bitrate $sub/test --json $exp/$v/bitrate.json
    if [ -n "$abx_item" ]; then
      sqvae-speech abx --features feats/test $sub/auxiliary_embedding1 $sub/test \
        --labels "log-mel (model input)" "$v auxiliary (z)" "$v quantized (z_q)" \
        --items "$abx_item" --out $exp/$v/abx.json --table $exp/$v/abx.md --no-progress
    fi
  done
  if [ -z "$abx_item" ]; then
    log "ABX skipped: no --abx-item. To score the exports, pass --abx-item FILE, an item file" \
      "('#file onset offset #phone prev-phone next-phone speaker', #file a file name of english/test" \
      "without .wav), e.g. the challenge's English test item file"
  fi
fi

log "Done (stages $stage to $stop_stage)"
