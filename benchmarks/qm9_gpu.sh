#!/usr/bin/env bash
# QM9 context-to-molecule (α) on one GPU, the run behind docs/results/qm9.md §5d: EDM's property classifier on the
# first half, the `qm9-alpha` comparison on the second half (MeanFlow 1/8/32-NFE, the equal-steps MeanFlow control,
# the flow-matching ODE and RMFlow 1-NFE), 10,000 molecules per sampler, on one card in parallel processes:
#
#   PHASE=train   classifier ───────────────────────────┐
#                 flow_matching ────────────────────────┤
#                 meanflow ─┬─ rmflow ──────────────────┤
#                           └─ meanflow_long ───────────┘
#   PHASE=score   each method scored in its own process (rows cached in its run folder's evals.json), then one
#                 `rmflow compare` collects the cached rows, scores the data row and draws the figure.
#   PHASE=all     both (default).
#
# Measured on an H200 (docs/results/qm9.md §5d), with the four processes sharing the card: MeanFlow ~12 steps/s,
# the RMFlow stage 2–6 steps/s (4-step teacher), the classifier ~23 steps/s, scoring one method's samplers on
# 10,000 molecules (RDKit on the host CPU) up to ~110 s. A whole run therefore needs about 10 minutes of GPU time;
# where one command may run for less, run PHASE=train and PHASE=score as two commands on the same machine.
#
# Usage (repository root, rmflow importable, RMFLOW_CACHE holding the QM9 cache):
#     OUT=runs/qm9-gpu bash benchmarks/qm9_gpu.sh [key=value ...]
# Extra arguments override the config; CONFIG (default qm9-alpha) and CLS_ARGS (default --steps 8000) change the
# comparison and the classifier, DEV=cpu with a tiny CONFIG checks the script on a CPU. Every stage runs under a
# time limit and logs to $OUT/<stage>.log.
set -uo pipefail
OUT=${OUT:-runs/qm9-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
DEV=${DEV:-cuda}
PHASE=${PHASE:-all}
CONFIG=${CONFIG:-qm9-alpha}
CLS_ARGS=${CLS_ARGS:---steps 8000}
RUN="$PY -m rmflow compare $CONFIG out_dir=$OUT/runs train.progress=false train.device=$DEV $*"
t0=$SECONDS
stamp() { echo "[$((SECONDS - t0))s] $*"; }
stage() {  # stage NAME SECONDS CMD...: run under a time limit, log to $OUT/NAME.log; never aborts the script
    local name=$1 limit=$2; shift 2
    stamp "start $name"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    stamp "end $name: exit $?"
}
if [ "$PHASE" != score ]; then
    stage classifier 420 $PY -m rmflow.tasks.qm9.classifier --property alpha $CLS_ARGS --device "$DEV" \
        --out "$OUT/classifier/alpha" &
    stage train-fm 400 $RUN --train-only --methods flow_matching &
    stage train-meanflow 260 $RUN --train-only --methods meanflow
    stage train-rmflow 240 $RUN --train-only --methods rmflow &
    stage train-meanflow_long 240 $RUN --train-only --methods meanflow_long &
    wait
fi
if [ "$PHASE" != train ]; then
    CLS="task.classifier=$OUT/classifier/alpha"
    for m in meanflow meanflow_long flow_matching rmflow; do
        stage "score-$m" 240 $RUN $CLS --methods "$m" &
    done
    wait
    stage collect 240 $RUN $CLS
    tail -n 1 "$OUT/classifier.log"
    cat "$OUT"/runs/*/results.md
fi
stamp done
