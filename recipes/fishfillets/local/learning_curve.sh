#!/usr/bin/env bash
# A learning curve: what more training buys. Each kept checkpoint of one training run is
# evaluated (dB^2 MSE), converts the 8 held-out sources of stage 5 to the 4 main voices
# with speaker similarity, and the report of all of them (`report --curve`) tabulates and
# plots every metric against the step, the reconstruction scored on 12 held-out utterances
# through the given vocoder. Run from recipes/fishfillets after stages 0-5:
#
#   local/learning_curve.sh [--per-speaker 2] [--resynth-utts 12] RUN OUT VOCODER [STEP...]
#
# RUN: an experiment dir (e.g. exp_quality/gaussian_4, trained with conf/quality.yaml,
# which keeps every checkpoint); OUT: the curve's dir; VOCODER: the neural vocoder's file
# (stage 3's, e.g. exp_quality/vocoder/vocoder.pt) or `world`; STEPs: the checkpoints to score
# (default: every one kept). Writes OUT/step_<N> per checkpoint (a hard link to it, its
# results.json and conversion/) and OUT/report/report.{md,html,json} with steps.png. A
# rerun skips the steps already scored. Scoring takes about a minute per step on 2 cores.
set -euo pipefail
per_speaker=2     # held-out source clips per main voice, each converted to the other voices
resynth_utts=12   # held-out utterances scored for resynthesis (PESQ, STOI, MCD)
help_message="Usage: $0 [options] RUN OUT VOCODER.pt|world [STEP...]"
SQVAE_ROOT=${SQVAE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)}
. "$SQVAE_ROOT/tools/parse_options.sh"
if [ $# -lt 3 ]; then
  echo "$help_message" >&2
  exit 1
fi
run=$1 out=$2 vocoder=$3
shift 3
[ -d "$run/checkpoints" ] || { echo "$0: $run/checkpoints does not exist: train $run first (stage 3)" >&2; exit 1; }
if [ "$vocoder" = world ]; then
  voc_opts=(--vocoder world) report_opts=(--vocoders world)
else
  [ -f "$vocoder" ] || { echo "$0: no vocoder file $vocoder: train it first (stage 3, or sqvae-speech train-vocoder), or pass world" >&2; exit 1; }
  voc_opts=(--vocoder neural --vocoder-model "$vocoder") report_opts=(--vocoders neural --vocoder-model "$vocoder")
fi
if [ $# -gt 0 ]; then
  ckpts=()
  for s in "$@"; do
    [[ $s =~ ^[0-9]+$ ]] || { echo "$0: a STEP is a number, not '$s'" >&2; exit 1; }
    c=$(printf "%s/checkpoints/ckpt-%08d.pt" "$run" "$s")
    [ -f "$c" ] || { echo "$0: $run keeps no checkpoint at step $s ($c); its checkpoints: $(ls "$run/checkpoints")" >&2; exit 1; }
    ckpts+=("$c")
  done
else
  mapfile -t ckpts < <(ls "$run"/checkpoints/ckpt-*.pt)
fi
[ ${#ckpts[@]} -ge 2 ] || { echo "$0: a curve needs two or more checkpoints, $run has ${#ckpts[@]}" >&2; exit 1; }
dirs=()
for c in "${ckpts[@]}"; do
  n=$(basename "$c" .pt); n=$((10#${n#ckpt-}))
  d=$out/step_$n
  dirs+=("$d")
  [ -f "$d/.done" ] && continue
  mkdir -p "$d/checkpoints"
  ln -f "$c" "$d/checkpoints/" 2>/dev/null || cp "$c" "$d/checkpoints/"
  sqvae-speech evaluate --exp "$d" --feats feats/test --no-progress > /dev/null
  line=$(sqvae-speech convert --exp "$d" --make-list data/test --speakers cs-m,cs-v,nl-m,nl-v --per-speaker "$per_speaker" \
    --feats feats/test --f0-stats feats/train/f0_stats.json --similarity data/test "${voc_opts[@]}" \
    --f0-norm utterance --out "$d/conversion" --no-progress | tail -n 1)
  echo "step $n: ${line#*; }"
  touch "$d/.done"
done
sqvae-speech report "${dirs[@]}" --curve --out "$out/report" --data data/test --feats feats/test \
  --f0-stats feats/train/f0_stats.json "${report_opts[@]}" --resynth-utts "$resynth_utts" --no-progress
