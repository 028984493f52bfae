#!/usr/bin/env bash
# How the bundled model is made, end to end, on one GPU machine with many CPU cores:
#   BridgeSim data -> tokenizer -> video2world -> action post-training -> convert -> eval -> benchmarks.
# Each stage has a wall-clock budget (trainer.max_minutes) so the whole run fits one GPU lease;
# every stage is resumable (rerun the script: finished stages are skipped, a stage in progress resumes).
#
#   WORK=/root/ws bash scripts/gpu_pipeline.sh            # writes everything under $WORK
#
# Environment knobs (minutes and counts): TRAIN_EPISODES TRAIN_SEED VAL_EPISODES GEN_MINUTES TOK_MINUTES
# V2W_MINUTES ACT_MINUTES ACT_CHUNK ACT_ITERS DEC_MINUTES WORKERS ACT_GPUS ACT_BATCH ACT_LR ACT_COMPILE ACTION_INIT RETOKENIZE SUCCESS_EPISODES
# SUCCESS_STEPS STOP_AFTER (=cache: only make the data). Logs go to $WORK/logs/*.log; progress lines to stdout.
#
# Where one command may run only N minutes but a process started in its own session (setsid) runs on after
# the command returns, run a long stage detached and poll its log from later commands:
#   setsid nohup env ACTION_INIT=checkpoints/bridge_small TRAIN_EPISODES=6000 TRAIN_SEED=7 ACT_BATCH=64 \
#     ACT_LR=2e-4 ACT_COMPILE=true ACT_MINUTES=16 bash scripts/gpu_pipeline.sh > $WORK/pipeline.log 2>&1 < /dev/null &
# (lease 9: one 16-minute schedule, no chunks). Otherwise ACT_CHUNK below splits the stage into commands.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/root/ws}
DATA=$WORK/data
export WORLDSIM_OUTPUT_ROOT=$WORK/output
export MUJOCO_GL=${MUJOCO_GL:-egl}
export PYTHONUNBUFFERED=1
TRAIN_EPISODES=${TRAIN_EPISODES:-3000}
TRAIN_SEED=${TRAIN_SEED:-0}  # episode seeds depend on (seed, split, index): another seed is new data
VAL_EPISODES=${VAL_EPISODES:-100}
GEN_MINUTES=${GEN_MINUTES:-5}
TOK_MINUTES=${TOK_MINUTES:-4}
V2W_MINUTES=${V2W_MINUTES:-2}
ACT_MINUTES=${ACT_MINUTES:-9}
DEC_MINUTES=${DEC_MINUTES:-0}  # then sharpen the decoder (encoder and dynamics frozen); 0 = skip
WORKERS=${WORKERS:-$(($(nproc) - 1))}
RES=${RES:-256,320}
MIN_EPISODES=${MIN_EPISODES:-200}  # train episodes written before the tokenizer starts
EXTRA=${EXTRA:-}  # extra dotted overrides for every training stage (e.g. a CPU dry run)
ACT_BATCH=${ACT_BATCH:-32}  # windows per GPU
ACT_LR=${ACT_LR:-2e-4}
ACT_GPUS=${ACT_GPUS:-1}  # action post-training on this many GPUs (torchrun, FSDP2)
ACT_COMPILE=${ACT_COMPILE:-false}  # torch.compile the transformer blocks, the encoder and the decoder
# ACT_CHUNK=N: action post-training as one schedule of ACT_ITERS steps run N minutes per invocation
# (trainer.stop_after_minutes; rerun the script until the stage is done) instead of ACT_MINUTES in one go
ACT_CHUNK=${ACT_CHUNK:-}
ACT_ITERS=${ACT_ITERS:-7000}
# Success model shipped beside the model (is_success in BridgeWorld-v0): BridgeSim episodes to
# train it on (0 = skip), and its training steps.
SUCCESS_EPISODES=${SUCCESS_EPISODES:-0}
SUCCESS_STEPS=${SUCCESS_STEPS:-4000}
# Continue action post-training from an earlier bundle/checkpoint instead of training the tokenizer and
# video2world stages first (a later lease improving the shipped model).
ACTION_INIT=${ACTION_INIT:-}
# RETOKENIZE=1 (with ACTION_INIT): first train ACTION_INIT's tokenizer on (TOK_MINUTES, focused loss), then
# post-train ACTION_INIT's dynamics with that tokenizer under it (tokenizer_path); the latents move, the
# dynamics follows (lease 6: round trip 34.2 -> 37.5 dB with the focused loss, the blocks' colours kept).
RETOKENIZE=${RETOKENIZE:-}
mkdir -p "$WORK/logs"
if [ -n "$ACTION_INIT" ]; then
  touch "$WORK/logs/video2world.done"
  if [ -z "$RETOKENIZE" ]; then touch "$WORK/logs/tokenizer.done"; fi
fi
TOK_INIT=""; TOK_UNDER=""
if [ -n "$ACTION_INIT" ] && [ -n "$RETOKENIZE" ]; then
  TOK_INIT="tokenizer_path=$ACTION_INIT"
  TOK_UNDER="tokenizer_path=$WORLDSIM_OUTPUT_ROOT/worldsim/bridge/bridge_small_tokenizer/checkpoints"
fi
say() { echo "[$(date +%H:%M:%S)] $*"; }
job() { echo "$WORLDSIM_OUTPUT_ROOT/worldsim/bridge/$1"; }
latest() { local j; j=$(job "$1"); echo "$j/checkpoints/$(cat "$j/checkpoints/latest_checkpoint.txt")"; }
done_stage() { [ -f "$WORK/logs/$1.done" ]; }
# train_stage NAME EXPERIMENT [LAUNCHER...] -- OVERRIDES...: one worldsim-train stage on $DATA (EXTRA last, so
# it wins), logged to $WORK/logs/NAME.log and marked done; a rerun of the script resumes it until then.
train_stage() {
  local name=$1 experiment=$2; shift 2
  local launch=()
  while [ "$1" != -- ]; do launch+=("$1"); shift; done
  shift
  "${launch[@]:-python}" -m worldsim.train experiment="$experiment" dataset.root="$DATA" "$@" $EXTRA \
    > "$WORK/logs/$name.log" 2>&1
  local stopped
  stopped=$(grep -o "stopped at iteration [0-9]* of [0-9]*" "$WORK/logs/$name.log" || true)
  if [ -n "$stopped" ]; then say "$name: $stopped (trainer.stop_after_minutes); rerun the script to continue"; exit 0; fi
  touch "$WORK/logs/$name.done"
}

# 1. Data. Validation first (small); the training split is generated in the background while the
# tokenizer trains on the episodes already written (writes are atomic: a reader never sees half an
# episode), and generation stops at its time budget with however many episodes it has.
if ! done_stage gen_val; then
  say "generating $VAL_EPISODES val episodes"
  python -m worldsim.sim.generate --out "$DATA" --episodes "$VAL_EPISODES" --split val --seed 1 \
    --workers "$WORKERS" --resolution "$RES" > "$WORK/logs/gen_val.log" 2>&1
  touch "$WORK/logs/gen_val.done"
fi
GEN_PID=""
if ! done_stage gen_train; then
  say "generating up to $TRAIN_EPISODES train episodes for at most $GEN_MINUTES min (background)"
  (timeout "$((GEN_MINUTES * 60))" python -m worldsim.sim.generate --out "$DATA" --episodes "$TRAIN_EPISODES" \
     --split train --seed "$TRAIN_SEED" --workers "$WORKERS" --resolution "$RES" > "$WORK/logs/gen_train.log" 2>&1 || true
   touch "$WORK/logs/gen_train.done") &
  GEN_PID=$!
  while ! done_stage tokenizer && [ "$(ls "$DATA/annotation/train" 2>/dev/null | grep -c '\.json$')" -lt "$MIN_EPISODES" ]; do sleep 5; done
fi

# 2. Tokenizer (while generation goes on).
if ! done_stage tokenizer; then
  say "tokenizer: $(ls "$DATA/annotation/train" | grep -c '\.json$') episodes so far"
  train_stage tokenizer bridge_small_tokenizer -- dataset.num_workers=2 $TOK_INIT trainer.max_minutes="$TOK_MINUTES" \
    trainer.batch_size=16 trainer.val_every=2000 checkpoint.save_iter=2000
fi
if [ -n "$GEN_PID" ]; then wait "$GEN_PID"; fi
say "train episodes: $(ls "$DATA/annotation/train" | grep -c '\.json$'); $(tail -c 300 "$WORK/logs/gen_train.log" | tr '\r' '\n' | grep wrote || true)"

# 3. Decode + resize every episode once into the frame cache, on all cores.
if ! done_stage cache; then
  python - "$DATA" "$WORKERS" <<'EOF'
import sys
from worldsim.data.dataset import BridgeWindowDataset
from worldsim.models.config import get_preset
cfg = get_preset("small")
for split in ("train", "val"):
    BridgeWindowDataset(sys.argv[1], split, resolution=(cfg.height, cfg.width)).build_cache(workers=int(sys.argv[2]))
EOF
  touch "$WORK/logs/cache.done"
fi
if [ "${STOP_AFTER:-}" = cache ]; then say "data ready (STOP_AFTER=cache)"; exit 0; fi

# 4. Video2world pre-training (no actions), then action post-training from it.
if ! done_stage video2world; then
  say "video2world from $(latest bridge_small_tokenizer)"
  train_stage video2world bridge_small_video2world -- dataset.num_workers=6 \
    load_path="$(job bridge_small_tokenizer)/checkpoints" trainer.max_minutes="$V2W_MINUTES" trainer.batch_size=32 \
    trainer.warmup_iter=200 trainer.val_every=100000 checkpoint.save_iter=100000
fi
if ! done_stage action; then
  INIT=${ACTION_INIT:-$(job bridge_small_video2world)/checkpoints}
  say "action post-training from $INIT"
  BUDGET="trainer.max_minutes=$ACT_MINUTES"
  if [ -n "$ACT_CHUNK" ]; then BUDGET="trainer.max_iter=$ACT_ITERS trainer.stop_after_minutes=$ACT_CHUNK"; fi
  train_stage action bridge_small_action python -m torch.distributed.run --standalone --nproc_per_node="$ACT_GPUS" -- \
    dataset.num_workers=6 load_path="$INIT" $TOK_UNDER $BUDGET trainer.batch_size="$ACT_BATCH" \
    trainer.lr="$ACT_LR" trainer.compile="$ACT_COMPILE" trainer.warmup_iter=200 trainer.val_every=1500 \
    checkpoint.save_iter=1500
fi

# 5. Optionally the decoder stage from the action checkpoint: same latents, sharper frames.
FINAL=bridge_small_action
if [ "$DEC_MINUTES" != 0 ]; then
  FINAL=bridge_small_decoder
  if ! done_stage decoder; then
    say "decoder fine-tuning from $(latest bridge_small_action)"
    train_stage decoder bridge_small_decoder -- dataset.num_workers=6 \
      load_path="$(job bridge_small_action)/checkpoints" trainer.max_minutes="$DEC_MINUTES" trainer.batch_size=16 \
      trainer.warmup_iter=100 trainer.val_every=1000 checkpoint.save_iter=1000
  fi
fi

# 6. Convert the last checkpoint into the bundle (EMA weights + start frames from val).
say "convert $(latest $FINAL)"
python -m worldsim.train.convert "$(latest $FINAL)/model" "$WORK/converted" \
  --start-frames "$DATA" --split val --num-start-frames 32 > "$WORK/logs/convert.log" 2>&1
if [ "$SUCCESS_EPISODES" -gt 0 ]; then
  # 7. The success model: trained on BridgeSim frames (the eval's success stage trains one when
  # the bundle has none), measured on held-out episodes, then shipped in the bundle.
  say "success model on $SUCCESS_EPISODES BridgeSim episodes"
  python -m worldsim.eval.cli --checkpoint "$WORK/converted/bundle" --out "$WORK/success" --stages success \
    --success-train-episodes "$SUCCESS_EPISODES" --success-val-episodes 200 --success-steps "$SUCCESS_STEPS" \
    --workers "$WORKERS" --no-progress > "$WORK/logs/success.log" 2>&1
  cp "$WORK/success/success.safetensors" "$WORK/converted/bundle/"
fi
say "done: bundle in $WORK/converted/bundle"
