#!/usr/bin/env bash
# Stage 5 of the corpus recipes (recipes/vctk, recipes/zerospeech2019): the F0 statistics
# a WORLD conversion needs, then `sqvae-speech convert` of the utterances in
# data/convert/sources into each target voice, with a listening page in EXP/conversion.
# Run it from the recipe dir (data/, feats/ are relative to it) with sqvae-speech on PATH:
#   tools/convert_page.sh --exp exp/gaussian_4 --sources "p225 p227" --targets "p225 p226" \
#     --f0-speakers "p225 p226"
# The F0 statistics (feats/train/f0_stats.json) are harvested on up to 50 training
# utterances of each --f0-speakers speaker; feats/train/.f0_stats.done records the speakers,
# so a rerun with the same ones skips them and a rerun with others redoes them.
set -euo pipefail

exp=""               # experiment dir of the model that converts (exp/<variant>)
sources=""           # speakers of data/convert/sources whose utterances are converted
targets=""           # training speakers to decode as
f0_speakers=""       # training speakers whose log-F0 statistics WORLD needs (the targets, and the sources for --f0-norm speaker)
per_speaker=2        # source utterances per source speaker (each >= 1.5 s if possible)
vocoder=world        # world (F0 from the source, converted to the target) or griffinlim
f0_norm=utterance    # WORLD F0 mapping from each utterance's own log-F0 statistics (utterance) or the source speaker's (speaker)
nj=2                 # parallel jobs for the F0 statistics
feature_config=conf/features.yaml  # feature settings of the recipe

help_message="Usage: $0 --exp EXP --sources \"SPK ...\" --targets \"SPK ...\" [options]
Converts data/convert/sources into each target voice with the model of EXP; writes
EXP/conversion/index.html (and F0 statistics in feats/train/f0_stats.json for WORLD)."

SQVAE_ROOT=${SQVAE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
. "$SQVAE_ROOT/tools/parse_options.sh"
. "$SQVAE_ROOT/tools/log.sh"

for v in exp sources targets; do
  [ -n "${!v}" ] || { log "error: --${v//_/-} is required"; exit 1; }
done
[ -f data/convert/sources/utt2spk ] || { log "error: data/convert/sources is not a data dir: gather the sources first"; exit 1; }

f0_opts=""
if [ "$vocoder" = world ]; then
  [ -n "$f0_speakers" ] || { log "error: --vocoder world needs --f0-speakers"; exit 1; }
  if [ -f feats/train/.f0_stats.done ] && [ "$(cat feats/train/.f0_stats.done)" = "$f0_speakers" ]; then
    log "feats/train/.f0_stats.done exists (speakers $f0_speakers): skipping the F0 statistics"
  else
    bash "$SQVAE_ROOT/tools/subset_data.sh" data/convert/train "$f0_speakers" data/train
    sqvae-speech f0-stats data/convert/train feats/train/f0_stats.json --nj "$nj" --max-utts-per-speaker 50 \
      --config "$feature_config" --no-progress
    echo "$f0_speakers" > feats/train/.f0_stats.done
  fi
  f0_opts="--f0-stats feats/train/f0_stats.json"
else
  log "--vocoder $vocoder: no F0 statistics needed"
fi
# each source speaker's first utterances, decoded as every target
sqvae-speech convert --exp "$exp" --make-list data/convert/sources --speakers "${sources// /,}" \
  --targets "${targets// /,}" --per-speaker "$per_speaker" --feats feats/test $f0_opts \
  --vocoder "$vocoder" --f0-norm "$f0_norm" --out "$exp/conversion" --no-progress
log "listening page: $exp/conversion/index.html"
