#!/usr/bin/env bash
# Fish Fillets NG voices (Czech and Dutch): corpus -> Kaldi data dirs -> log-mel features
# -> SQ-VAE / VQ-VAE training -> dB^2 MSE and codebook usage -> voice conversion with a
# listening page -> ZeroSpeech export, bitrate and ABX -> a model file to share.
# Every step is a stage; `./run.sh --stage 1 --stop-stage 1` reruns one. A finished stage
# leaves a .done marker (stage 1: data/.prepare.json) and a rerun skips it (delete the
# marker to redo it). See README.md for the corpus, the split and the outputs.
set -euo pipefail

stage=0                  # first stage to run
stop_stage=8             # last stage to run
nj=2                     # parallel jobs for feature extraction
feature_config=conf/features.yaml  # feature settings (a 'features' section), relative to this recipe
corpus_dir=""            # an existing sound dir (.../fillets-ng/sound) or download dir; empty: download into download/
include_minor=false      # also train on the minor characters (cs-b1, cs-b2, cs-c, cs-hs, cs-pap)
test_per_speaker=30      # held-out clips per speaker (each >= 1 s, at most a fifth of the speaker)
max_utts_per_speaker=0   # keep at most this many training clips per speaker, for quick runs; 0: all
config=conf/demo.yaml    # model/training config (stage 3), relative to this recipe
variants="gaussian_4 vqvae_ema"  # models to train: any quantizer name (gaussian_1..4, vqvae_ema, vq_kmeans, fsq, ...)
seeds=""                 # train each variant once per seed, e.g. "0 1 2" (exp/<variant>_seed<N>); empty: the config's seed (exp/<variant>)
steps=0                  # training steps per variant; 0: the config's train.steps
exp=exp                  # experiment root: one dir per variant (and seed)
vocoder_config=../conf/vocoder_cpu.yaml  # stage 3: the neural vocoder's config (../conf/vocoder_gpu.yaml on a GPU)
train_vocoder=true       # stage 3: also train the neural vocoder (exp/vocoder); false: stages 5 and 8 use WORLD / Griffin-Lim only
vocoder_dir=exp/vocoder  # stages 3, 5, 8: where the neural vocoder is trained and found (e.g. exp_quality/vocoder for conf/quality.yaml)
convert_per_speaker=2    # stage 5: held-out source utterances per main speaker (each >= 1.5 s if possible)
vocoder=neural           # stage 5: neural (the vocoder of stage 3), world (F0 from the source, converted to the target) or griffinlim
f0_norm=utterance        # stage 5: WORLD F0 mapping from each utterance's own log-F0 statistics (utterance) or the source speaker's (speaker)
flite_dir=""             # stage 6: flite unpacked by tools/fetch_flite.sh; empty: $SQVAE_ROOT/tools/flite
flite_voices=awb,rms,slt,kal16  # stage 6: English TTS voices of the ABX set, one speaker each
flite_sentences=0        # stage 6: only the first N sentences of the ABX set (quick runs); 0: all
report_utts=12           # stage 8: held-out utterances scored for resynthesis, spread over the speakers; 0: none

help_message="Usage: $0 [options]
Stages: 0 corpus (download/), 1 data dirs (data/train, data/test),
2 features (feats/train, feats/test), 3 train each variant (exp/<variant>, or
exp/<variant>_seed<N> with --seeds) and the neural vocoder (--vocoder-dir, exp/vocoder/vocoder.pt), 4 evaluate on feats/test and print the comparison,
mean +- std over seeds (exp/RESULTS.md, exp/curves.png),
5 F0 statistics (feats/train/f0_stats.json) and voice conversion of held-out speech by
every run, with a listening page (exp/<variant>/conversion/index.html) and speaker similarity,
each item also through the other vocoders,
6 ZeroSpeech 2019 export + bitrate of feats/test, ABX on an English flite set
(exp/<variant>/abx.md), 7 the first variant (its first seed) packaged into one model file
with its F0 statistics and results (exp/<variant>.pt, model card exp/<variant>.md),
8 a report of every run: units against phones, speaker probe, resynthesis and conversion
quality (exp/report/report.html, report.md, report.json);
all written next to run.sh."

SQVAE_ROOT=${SQVAE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
. "$SQVAE_ROOT/tools/parse_options.sh"
. "$SQVAE_ROOT/tools/log.sh"
. "$SQVAE_ROOT/tools/recipe_helpers.sh"

require_one_of train_vocoder true false
require_one_of vocoder neural world griffinlim
require_uint stage stop_stage nj test_per_speaker max_utts_per_speaker steps convert_per_speaker flite_sentences \
  report_utts
# Paths given on the command line are relative to where the user is; the recipe works
# in its own directory.
[ -z "$corpus_dir" ] || corpus_dir=$(realpath -m -- "$corpus_dir")
[ -z "$flite_dir" ] || flite_dir=$(realpath -m -- "$flite_dir")
flite_dir=${flite_dir:-$SQVAE_ROOT/tools/flite}
cd "$(dirname "${BASH_SOURCE[0]}")"
. "$SQVAE_ROOT/tools/path.sh"

sound_dir=${corpus_dir:-download}
train_args=""                  # stage 3: `train` arguments beyond the fixed ones
if [ "$steps" -gt 0 ]; then train_args="--steps $steps"; fi
runs=""                        # stages 3-6: one experiment dir under $exp per variant and seed
for v in $variants; do
  if [ -z "$seeds" ]; then runs="$runs $v"; else for s in $seeds; do runs="$runs ${v}_seed$s"; done; fi
done
for s in $seeds; do [[ $s =~ ^[0-9]+$ ]] || { log "error: --seeds takes non-negative integers, not '$s'"; exit 1; }; done

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  log "Stage 0: get the corpus"
  if [ -n "$corpus_dir" ]; then
    [ -d "$corpus_dir" ] || { log "error: --corpus-dir $corpus_dir is not a directory"; exit 1; }
    log "using the existing corpus at $corpus_dir"
  else
    bash local/download.sh download  # nothing to do when download/.done exists
  fi
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "Stage 1: prepare data/train and data/test"
  # `prepare` checks the dirs it writes and records the corpus and options in
  # data/.prepare.json: a rerun with the same ones skips, a rerun with others stops.
  sqvae-speech prepare fishfillets "$sound_dir" data --include-minor $include_minor \
    --test-per-speaker $test_per_speaker --max-utts-per-speaker $max_utts_per_speaker
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "Stage 2: extract log-mel features into feats/train and feats/test"
  for x in train test; do
    # --skip-bad: a clip that cannot be read is listed in feats/$x/failed.txt, not fatal.
    once feats/$x/.done sqvae-speech extract data/$x feats/$x --nj $nj --config "$feature_config" --skip-bad
  done
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log "Stage 3: train$runs with $config"
  for r in $runs; do
    seed_args=""  # <variant>_seed<N> trains with train.seed=N
    if [ "$r" != "${r%_seed*}" ]; then seed_args="--set train.seed=${r##*_seed}"; fi
    # --resume: a killed run continues from its newest checkpoint (a fresh dir starts at 0).
    once $exp/$r/.done sqvae-speech train --config "$config" --feats feats/train --exp $exp/$r --variant ${r%_seed*} \
      $train_args $seed_args --resume
  done
  if [ "$train_vocoder" = true ]; then
    first_run=${runs# }; first_run=${first_run%% *}
    train_vocoder_stage "$vocoder_config" $exp/$first_run
  fi
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log "Stage 4: dB^2 MSE and codebook usage on feats/test"
  exps=""
  for r in $runs; do
    sqvae-speech evaluate --exp $exp/$r --feats feats/test --no-progress
    exps="$exps $exp/$r"
  done
  sqvae-speech compare $exps --out $exp/RESULTS.md --curves $exp/curves.png
  log "table: $exp/RESULTS.md, training curves: $exp/curves.png"
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log "Stage 5: F0 statistics, voice conversion and a listening page"
  # Harvest F0 of 50 clips per speaker (~3 min of speech each): ~75 s on 2 idle cores.
  once feats/train/.f0_stats.done sqvae-speech f0-stats data/train feats/train/f0_stats.json --nj $nj \
    --max-utts-per-speaker 50 --no-progress
  voc_opts=$(vocoder_options $vocoder)  # neural (stage 3), with WORLD and Griffin-Lim beside it on the page
  for v in $runs; do
    # every main speaker's first held-out clips, decoded as every main speaker (itself included),
    # each output's speaker similarity to the held-out recordings of its target and source
    sqvae-speech convert --exp $exp/$v --make-list data/test --speakers cs-m,cs-v,nl-m,nl-v \
      --per-speaker $convert_per_speaker --feats feats/test --f0-stats feats/train/f0_stats.json \
      $voc_opts --f0-norm $f0_norm --similarity data/test --out $exp/$v/conversion --no-progress
    log "listening page: $exp/$v/conversion/index.html"
  done
fi

if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  log "Stage 6: ZeroSpeech 2019 export and bitrate of feats/test; ABX on an English flite set"
  bash "$SQVAE_ROOT/tools/fetch_flite.sh" "$flite_dir"  # nothing to do when it is there
  flite_opts="--voices $flite_voices --num-sentences $flite_sentences"  # recorded in data/flite/.done
  once_with "$flite_opts" data/flite/.done \
    sqvae-speech flite-abx-set data/flite --flite-dir "$flite_dir" $flite_opts --no-progress
  once feats/flite/.done sqvae-speech extract data/flite/data feats/flite --nj $nj --config "$feature_config"
  for v in $runs; do
    for kind in quantized auxiliary; do
      # <utt>.txt per held-out utterance, one 50 Hz frame per line (a rerun skips written files)
      sqvae-speech export --exp $exp/$v --feats feats/test --out $exp/$v/zerospeech/$kind --kind $kind --no-progress
      sqvae-speech export --exp $exp/$v --feats feats/flite --out $exp/$v/flite/$kind --kind $kind --format npy \
        --no-progress
    done
    sqvae-speech bitrate $exp/$v/zerospeech/quantized --json $exp/$v/zerospeech/bitrate.json
    sqvae-speech abx --features feats/flite $exp/$v/flite/auxiliary $exp/$v/flite/quantized \
      --labels "log-mel (model input)" "$v auxiliary (z)" "$v quantized (z_q)" \
      --items data/flite/abx.item --out $exp/$v/abx.json --table $exp/$v/abx.md --no-progress \
      --note "The models were trained on Czech and Dutch speech (Fish Fillets NG) and are scored here on English TTS voices (flite $flite_voices): a cross-language, out-of-domain test, not ZeroSpeech 2019 English."
  done
fi

if [ $stage -le 7 ] && [ $stop_stage -ge 7 ]; then
  v=${runs# }; v=${v%% *}  # the first run of stage 3
  log "Stage 7: package $exp/$v into the model file $exp/$v.pt"
  f0_opt=""  # the F0 statistics of stage 5 travel with the model (WORLD conversion needs them)
  if [ -f feats/train/f0_stats.json ]; then f0_opt="--f0-stats feats/train/f0_stats.json"; fi
  sqvae-speech package $exp/$v $exp/$v.pt $f0_opt
  log "use it on any audio: sqvae-speech encode --model $exp/$v.pt FILE_OR_DIR... --out DIR --format units"
fi

if [ $stage -le 8 ] && [ $stop_stage -ge 8 ]; then
  log "Stage 8: report: units against phones, speaker probe, resynthesis and conversion quality"
  exps=""
  for r in $runs; do exps="$exps $exp/$r"; done
  opts=""  # the phone-labelled set of stage 6 and the F0 statistics of stage 5, when they exist
  if [ -f data/flite/phones.ctm ]; then opts="--phone-feats feats/flite --alignment data/flite/phones.ctm"; fi
  if [ -f feats/train/f0_stats.json ]; then opts="$opts --f0-stats feats/train/f0_stats.json"; fi
  if [ -f $vocoder_dir/vocoder.pt ]; then opts="$opts --vocoder-model $vocoder_dir/vocoder.pt"; fi
  sqvae-speech report $exps --out $exp/report --data data/test --feats feats/test $opts \
    --resynth-utts $report_utts --nj $nj --no-progress
  log "report: $exp/report/report.html (tables: $exp/report/report.md)"
fi

log "Done (stages $stage to $stop_stage)"
