#!/usr/bin/env bash
# The runs behind docs/results/speed.md (CPU, 1 thread). Each prints tables of step time, peak memory,
# ratios and sampler throughput, measured in one process; raw results go to runs/bench/*.json.
# On a GPU add train.device=cuda (and optionally --precision bf16); the card's name is printed in the header.
set -euo pipefail
export OMP_NUM_THREADS=1
mkdir -p runs/bench
python -m rmflow bench ring train.num_threads=1 --compile both --steps 10 --rounds 3 --sample-batch 4096 \
    --json runs/bench/ring-cpu.json
python -m rmflow bench ring train.num_threads=1 --methods fm meanflow rmflow rmflow_bank rmflow_indep \
    --steps 10 --rounds 3 --nfe 1 --sample-batch 4096 --sample-repeats 1 --json runs/bench/ring-bank.json
python -m rmflow bench lorenz train.num_threads=1 --steps 5 --rounds 3 --sample-batch 256 \
    --json runs/bench/lorenz.json
python -m rmflow bench qm9-cpu train.num_threads=1 --methods fm meanflow rmflow rmflow_indep --steps 3 --rounds 2 \
    --warmup 1 --sample-batch 64 --sample-repeats 1 --json runs/bench/qm9-cpu.json
