#!/usr/bin/env bash
# The GPU checks and figures behind docs/results/speed.md ("GPU"): one prepared script, each stage under its own
# time limit so that one failure does not cost the others. Usage (repository root, a CUDA machine):
#     OUT=runs/bench-gpu bash benchmarks/gpu.sh
# Stages: the cheaper likelihood steps (ring and lorenz, eager), the ring benchmark eager (fp32, batch 512) and at a compute-bound batch (bf16, 16384), the lorenz
# benchmark, a short bf16 + torch.compile training run through the likelihood stage and its evaluation, a one-process
# torchrun (NCCL) run, and the ring benchmark compiled. It runs from the source tree (PYTHONPATH=src) under the
# machine's own torch; the project's other dependencies must be importable (POT for the synthetic metrics).
set -uo pipefail
OUT=${OUT:-runs/bench-gpu}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-}:$PWD/src PYTHONUNBUFFERED=1
PY=${PY:-python3}
DEV=${DEV:-cuda}   # DEV=cpu runs the same stages on a CPU (slowly), to check the script
stage() {  # stage NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.log, never abort the script
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "=== $name: exit $? after $((SECONDS - t0))s"
    tail -n 60 "$OUT/$name.log"
}
nvidia-smi -L; $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
MIX=rmflow.refine=mixture
# first: the cheaper likelihood steps of the fifth session (docs/RESULTS.md §2g), never timed on a GPU yet
DEFAULT="$MIX rmflow.teacher_steps=8 rmflow.mixture_components=4 rmflow.sigma_min=0.03 rmflow.teacher_filter=0.99"
SPLIT=rmflow.nll_batch=0.5,rmflow.batch_split=true
stage ring-lean 150 $PY -m rmflow bench ring train.device=$DEV $DEFAULT --methods fm meanflow rmflow \
    --variant stored=rmflow.focus_errors=stored --variant split50=$SPLIT \
    --variant stored_split50=rmflow.focus_errors=stored,$SPLIT --steps 20 --rounds 5 --nfe 1 --sample-batch 65536
stage lorenz-lean 120 $PY -m rmflow bench lorenz train.device=$DEV --methods meanflow rmflow \
    --variant split50=$SPLIT --variant bank_split50=rmflow.teacher_bank=16384,$SPLIT \
    --variant self_split50=rmflow.pairing=self,$SPLIT --steps 10 --rounds 5 --nfe 1 \
    --sample-batch 1024 --no-memory
stage ring-eager 100 $PY -m rmflow bench ring train.device=$DEV $MIX --methods fm meanflow rmflow rmflow_indep \
    --steps 20 --rounds 3 --sample-batch 65536
stage lorenz-eager 90 $PY -m rmflow bench lorenz train.device=$DEV --methods fm meanflow rmflow rmflow_indep \
    --steps 10 --rounds 3 --sample-batch 1024
stage ring-bf16-16k 80 $PY -m rmflow bench ring train.device=$DEV $MIX train.batch_size=16384 --precision bf16 \
    --methods fm meanflow rmflow --steps 10 --rounds 3 --nfe 1 100 --sample-batch 65536
stage train-bf16-compile 120 $PY -m rmflow train ring train.device=$DEV train.precision=bf16 train.compile=true \
    $MIX train.steps=600 rmflow.nll_start_step=400 rmflow.teacher_bank=8192 train.progress=false \
    train.log_every=100 name=gpu-check out_dir="$OUT/runs"
stage evaluate 40 $PY -m rmflow evaluate "$OUT/runs/gpu-check" --samplers meanflow@1 meanflow@8 rmflow --num-samples 2000
stage torchrun-nccl 60 $PY -m torch.distributed.run --standalone --nproc-per-node 1 -m rmflow train ring train.device=$DEV \
    train.steps=60 rmflow.nll_start_step=30 rmflow.teacher_bank=2048 train.progress=false train.log_every=20 \
    name=gpu-ddp out_dir="$OUT/runs"
stage ring-compiled 200 $PY -m rmflow bench ring train.device=$DEV $MIX --compile on --methods fm meanflow rmflow \
    --steps 20 --rounds 3 --warmup 3 --nfe 1 --sample-batch 65536
rm -rf "$OUT/runs"
