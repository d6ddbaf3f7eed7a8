#!/usr/bin/env bash
# Fish Fillets NG voices (Czech and Dutch): corpus -> Kaldi data dirs -> log-mel features
# -> SQ-VAE / VQ-VAE training -> dB^2 MSE and codebook usage -> voice conversion with a
# listening page -> ZeroSpeech export, bitrate and ABX.
# Every step is a stage; `./run.sh --stage 1 --stop-stage 1` reruns one. Stages that
# finish leave a .done marker, and a rerun skips them (delete the marker to redo one).
# See README.md for the corpus, the split and the outputs.
set -euo pipefail

stage=0                  # first stage to run
stop_stage=6             # last stage to run
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
convert_per_speaker=2    # stage 5: held-out source utterances per main speaker (each >= 1.5 s if possible)
vocoder=world            # stage 5: world (F0 from the source, converted to the target) or griffinlim
f0_norm=utterance        # stage 5: WORLD F0 mapping from each utterance's own log-F0 statistics (utterance) or the source speaker's (speaker)
flite_dir=""             # stage 6: flite unpacked by tools/fetch_flite.sh; empty: $SQVAE_ROOT/tools/flite
flite_voices=awb,rms,slt,kal16  # stage 6: English TTS voices of the ABX set, one speaker each
flite_sentences=0        # stage 6: only the first N sentences of the ABX set (quick runs); 0: all

help_message="Usage: $0 [options]
Stages: 0 corpus (download/), 1 data dirs (data/train, data/test),
2 features (feats/train, feats/test), 3 train each variant (exp/<variant>),
4 evaluate on feats/test and print the comparison (exp/RESULTS.md, exp/curves.png),
5 F0 statistics (feats/train/f0_stats.json) and voice conversion of held-out speech by the
first variant, with a listening page (exp/<variant>/conversion/index.html),
6 ZeroSpeech 2019 export + bitrate of feats/test, ABX on an English flite set
(exp/<variant>/abx.md); all written next to run.sh."

SQVAE_ROOT=${SQVAE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
. "$SQVAE_ROOT/tools/parse_options.sh"
. "$SQVAE_ROOT/tools/log.sh"

for v in stage stop_stage nj test_per_speaker max_utts_per_speaker steps convert_per_speaker flite_sentences; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { log "error: --${v//_/-} must be a non-negative integer, not '${!v}'"; exit 1; }
done

# Paths given on the command line are relative to where the user is; the recipe works
# in its own directory.
[ -z "$corpus_dir" ] || corpus_dir=$(realpath -m -- "$corpus_dir")
[ -z "$flite_dir" ] || flite_dir=$(realpath -m -- "$flite_dir")
flite_dir=${flite_dir:-$SQVAE_ROOT/tools/flite}
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

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log "Stage 5: F0 statistics, voice conversion and a listening page"
  if [ -f feats/train/.f0_stats.done ]; then
    log "feats/train/.f0_stats.done exists: skipping the F0 statistics"
  else
    # Harvest F0 of 50 clips per speaker (~3 min of speech each): ~75 s on 2 idle cores.
    sqvae-speech f0-stats data/train feats/train/f0_stats.json --nj $nj --max-utts-per-speaker 50 --no-progress
    touch feats/train/.f0_stats.done
  fi
  v=${variants%% *}  # the first variant of stage 3
  # every main speaker's first held-out clips, decoded as every main speaker (itself included)
  sqvae-speech convert --exp $exp/$v --make-list data/test --speakers cs-m,cs-v,nl-m,nl-v \
    --per-speaker $convert_per_speaker --feats feats/test --f0-stats feats/train/f0_stats.json \
    --vocoder $vocoder --f0-norm $f0_norm --out $exp/$v/conversion --no-progress
  log "listening page: $exp/$v/conversion/index.html"
fi

if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  log "Stage 6: ZeroSpeech 2019 export and bitrate of feats/test; ABX on an English flite set"
  for v in $variants; do
    for kind in quantized auxiliary; do
      # <utt>.txt per held-out utterance, one 50 Hz frame per line (a rerun skips written files)
      sqvae-speech export --exp $exp/$v --feats feats/test --out $exp/$v/zerospeech/$kind --kind $kind --no-progress
    done
    sqvae-speech bitrate $exp/$v/zerospeech/quantized --json $exp/$v/zerospeech/bitrate.json
  done
  flite_opts="--voices $flite_voices --num-sentences $flite_sentences"
  if [ -f data/flite/.done ] && [ "$(cat data/flite/.done)" != "$flite_opts" ]; then
    log "error: data/flite was made with '$(cat data/flite/.done)', not '$flite_opts'; remove data/flite and feats/flite to redo it"
    exit 1
  fi
  if [ ! -f data/flite/.done ]; then
    bash "$SQVAE_ROOT/tools/fetch_flite.sh" "$flite_dir"
    sqvae-speech flite-abx-set data/flite --flite-dir "$flite_dir" $flite_opts --no-progress
    echo "$flite_opts" > data/flite/.done
  fi
  if [ ! -f feats/flite/.done ]; then
    sqvae-speech extract data/flite/data feats/flite --nj $nj --config "$feature_config"
    touch feats/flite/.done
  fi
  for v in $variants; do
    for kind in quantized auxiliary; do
      sqvae-speech export --exp $exp/$v --feats feats/flite --out $exp/$v/flite/$kind --kind $kind --format npy --no-progress
    done
    sqvae-speech abx --features feats/flite $exp/$v/flite/auxiliary $exp/$v/flite/quantized \
      --labels "log-mel (model input)" "$v auxiliary (z)" "$v quantized (z_q)" \
      --items data/flite/abx.item --out $exp/$v/abx.json --table $exp/$v/abx.md --no-progress \
      --note "The models were trained on Czech and Dutch speech (Fish Fillets NG) and are scored here on English TTS voices (flite $flite_voices): a cross-language, out-of-domain test, not ZeroSpeech 2019 English."
  done
fi

log "Done (stages $stage to $stop_stage)"
