# Helpers for recipe scripts, sourced after tools/log.sh:
#   once MARKER CMD [ARG...]   run CMD unless the file MARKER exists; create MARKER when
#                              CMD succeeds (the .done markers of icefall / Kaldi recipes)
#   once_with TEXT MARKER CMD..  the same, MARKER recording TEXT (see below)
#   require_uint NAME...       each option NAME must be a non-negative integer
#   require_one_of NAME A B..  option NAME must be one of A B ...
#   train_vocoder_stage CONFIG MODEL  stage 3's neural vocoder ($vocoder_dir, default
#                              exp/vocoder), half its windows decoded by the SQ-VAE MODEL;
#                              resumable, skipped once done
#   vocoder_options VOCODER    convert's vocoder arguments: VOCODER, the others beside it
# Errors are logged and exit the script (status 1).

once() {
  local marker=$1
  shift
  if [ -f "$marker" ]; then
    log "$marker exists: skipping"
    return 0
  fi
  "$@"
  mkdir -p "$(dirname "$marker")"
  touch "$marker"
}

require_uint() {
  local name
  for name in "$@"; do
    [[ ${!name} =~ ^[0-9]+$ ]] || { log "error: --${name//_/-} must be a non-negative integer, not '${!name}'"; exit 1; }
  done
}

require_one_of() {
  local name=$1 choice
  shift
  for choice in "$@"; do
    [ "${!name}" = "$choice" ] && return 0
  done
  log "error: --${name//_/-} must be one of: $*; not '${!name}'"
  exit 1
}

# once_with TEXT MARKER CMD [ARG...]: once, with MARKER holding TEXT (the options CMD ran
# with): a rerun with the same TEXT skips, a rerun with another one stops with an error
# (for commands that do not record their own options, as `sqvae-speech prepare` does).
once_with() {
  local text=$1 marker=$2
  shift 2
  if [ -f "$marker" ]; then
    if [ "$(< "$marker")" != "$text" ]; then
      log "error: $marker records '$(< "$marker")', not '$text': remove $(dirname "$marker")" \
        "and what was made from it to redo it"
      exit 1
    fi
    log "$marker exists: skipping"
    return 0
  fi
  "$@"
  mkdir -p "$(dirname "$marker")"
  echo "$text" > "$marker"
}

# train_vocoder_stage CONFIG MODEL: train the neural vocoder on data/train + feats/train into
# $vocoder_dir (default exp/vocoder; docs/VOCODER.md): log-mel + F0 -> speech, half the
# windows as MODEL (an SQ-VAE of this recipe) reconstructs them, which is what conversion
# feeds it. Uses $nj.
train_vocoder_stage() {
  local dir=${vocoder_dir:-exp/vocoder}
  log "Stage 3: train the neural vocoder ($dir) with $1"
  once "$dir/.done" sqvae-speech train-vocoder --config "$1" --data data/train --feats feats/train \
    --exp "$dir" --decoded-from "$2" --nj "$nj" --resume
}

# vocoder_options VOCODER: the vocoder arguments of `convert` in stage 5: VOCODER for the
# conversions, every item also through the other two on the listening page. The neural
# vocoder needs $vocoder_dir/vocoder.pt (stage 3; default exp/vocoder); without it WORLD
# takes its place, and WORLD is compared with Griffin-Lim only (Griffin-Lim, asked for
# alone, stays alone).
vocoder_options() {
  local model=${vocoder_dir:-exp/vocoder}/vocoder.pt
  if [ -f "$model" ]; then
    echo "--vocoder $1 --vocoder-model $model --compare-vocoders neural,world,griffinlim"
  elif [ "$1" = neural ]; then
    log "no $model (stage 3 with --train-vocoder true writes it): converting with WORLD"
    echo "--vocoder world --compare-vocoders griffinlim"
  elif [ "$1" = world ]; then
    echo "--vocoder world --compare-vocoders griffinlim"
  else
    echo "--vocoder $1"  # Griffin-Lim alone needs no F0 statistics
  fi
}
