# What recipes/vctk/run.sh and recipes/zerospeech2019/run.sh share: the options common
# to both (declared here once, with their defaults), the parsing of the command line,
# the checks of those options and the helpers their stages call. A recipe declares its
# own options and help_message, sets SQVAE_ROOT and sources this file; `./run.sh --help`
# lists both kinds of options (tools/parse_options.sh reads the two files). Nothing here
# runs a stage: the stages are in each run.sh.

stage=0                  # first stage to run
stop_stage=6             # last stage to run
nj=2                     # parallel jobs for data prep (file headers), feature extraction and F0 statistics
max_utts_per_speaker=0   # keep at most this many training utterances per speaker, for quick runs; 0: all
feature_config=conf/features.yaml  # feature settings (a 'features' section), relative to the recipe
config=../conf/small.yaml  # model/training config (stage 3), relative to the recipe: ../conf/small.yaml (CPU) or ../conf/paper.yaml (GPU, the paper's)
variants="gaussian_1 gaussian_3 gaussian_4 vqvae_ema"  # models to train: gaussian_1..gaussian_4, vqvae_ema
steps=0                  # training steps per variant; 0: the config's train.steps
launcher=sqvae-speech    # runs `train`; multi-GPU: "accelerate launch --multi_gpu --num_processes 4 -m sqvae_speech.cli"
train_opts=""            # more `train` arguments; write --train-opts="--set train.batch_size=13" (the value starts with --)
exp=exp                  # experiment root: one dir per variant, exp/<variant>
vocoder_config=../conf/vocoder_cpu.yaml  # stage 3: the neural vocoder's config (../conf/vocoder_gpu.yaml: HiFi-GAN V1 size, for a GPU)
train_vocoder=true       # stage 3: also train the neural vocoder (exp/vocoder); false: stage 5 uses WORLD and Griffin-Lim only
convert_per_speaker=2    # stage 5: source utterances per speaker (each >= 1.5 s if possible)
vocoder=neural           # stage 5: neural (stage 3's), world (F0 from the source, converted to the target) or griffinlim
f0_norm=utterance        # stage 5: WORLD / neural F0 mapping from each utterance's own log-F0 statistics (utterance) or the source speaker's (speaker)
abx_item=""              # stage 6: ABX item file on the utterances of data/test (#file = utterance id); empty: no ABX

. "$SQVAE_ROOT/tools/parse_options.sh"
. "$SQVAE_ROOT/tools/log.sh"
. "$SQVAE_ROOT/tools/recipe_helpers.sh"

require_uint stage stop_stage nj max_utts_per_speaker steps convert_per_speaker
require_one_of vocoder neural world griffinlim
require_one_of train_vocoder true false
require_one_of f0_norm utterance speaker
# A path on the command line is relative to where the user is (the recipe then works in
# its own dir).
if [ -n "$abx_item" ]; then
  [ -f "$abx_item" ] || { log "error: --abx-item $abx_item is not a file"; exit 1; }
  abx_item=$(realpath -- "$abx_item")
fi

# Derived from the options.
train_args=$train_opts           # stage 3: `train` arguments beyond the fixed ones
if [ "$steps" -gt 0 ]; then train_args="--steps $steps $train_opts"; fi
exp_dirs=""                      # stage 4: every variant's dir, for `compare`
for v in $variants; do exp_dirs="$exp_dirs $exp/$v"; done
first_variant=${variants%% *}    # stage 5: the variant whose conversions make the listening page

# export_variant VARIANT QUANTIZED_DIR AUXILIARY_DIR BITRATE_JSON: stage 6 for one variant.
# Exports z_q (the codebook vectors) and z (the encoder means) of every utterance of
# feats/test, one <utt>.txt per utterance with one 50 Hz frame per line (a rerun skips
# the files already written); the bitrate of z_q; with --abx-item, the ABX error rates
# of the log-mel input, z and z_q (exp/<variant>/abx.{json,md}).
export_variant() {
  local v=$1 quantized=$2 auxiliary=$3 bitrate=$4
  sqvae-speech export --exp $exp/$v --feats feats/test --out $quantized --kind quantized --no-progress
  sqvae-speech export --exp $exp/$v --feats feats/test --out $auxiliary --kind auxiliary --no-progress
  sqvae-speech bitrate $quantized --json $bitrate
  if [ -n "$abx_item" ]; then
    sqvae-speech abx --features feats/test $auxiliary $quantized \
      --labels "log-mel (model input)" "$v auxiliary (z)" "$v quantized (z_q)" \
      --items "$abx_item" --out $exp/$v/abx.json --table $exp/$v/abx.md --no-progress
  fi
}
