"""Kill -9 a training run at random moments, many times, then let it finish; report what survived.

    python -m rmflow.tools.fault_injection --kills 30 --out runs/fault-injection        (docs/RELIABILITY.md)

Each round starts training of a tiny ring model that writes a checkpoint after every step (so most kills land
inside a checkpoint write), waits until training has started, sleeps a random 0–0.4 s and sends SIGKILL. After the
last kill the run is finished normally and compared with an uninterrupted run of the same config: the newest
checkpoint must verify, metrics.jsonl must hold one row per logged step, and the loss history and the weights must
be equal bit for bit.
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..config import load_config
from ..train import Trainer, load_checkpoint

TRAIN = """
import sys
from rmflow.config import load_config
from rmflow.train import Trainer
cfg = load_config("ring", sys.argv[1:])
tr = Trainer(cfg, cfg.run_dir)
tr.resume()
print("started", tr.step, flush=True)
tr.train()
"""


def settings(out: str | Path, steps: int) -> list[str]:
    return [f"out_dir={out}", "model.hidden=16", "model.depth=1", "train.batch_size=32", "train.progress=false",
            f"train.steps={steps}", "train.ckpt_every=1", "train.log_every=5", f"rmflow.nll_start_step={steps // 3}",
            "rmflow.teacher_bank=256", "rmflow.teacher_filter=0", "rmflow.teacher_steps=2", "train.num_threads=1"]


def kill_loop(out: str | Path, kills: int = 30, steps: int = 200, seed: int = 0, env: dict | None = None) -> dict:
    """Run the experiment in folder `out`; returns the counts of the module docstring."""
    rng, keys = random.Random(seed), settings(out, steps)
    sent = resumed = 0
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", TRAIN, *keys, "name=k"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=env)
        line = proc.stdout.readline()
        resumed += bool(line) and int(line.split()[1]) > 0
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            sent += 1
        proc.wait()
    done = subprocess.run([sys.executable, "-c", TRAIN, *keys, "name=k"], capture_output=True, text=True, env=env)
    run = Path(out) / "k"
    tensors, state = load_checkpoint(run / "checkpoints" / f"step_{steps:08d}.json")   # raises unless it verifies
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = Trainer(load_config("ring", [*keys, "name=ref"]))
        ref.train()
    finally:
        torch.set_num_threads(threads)
    exact = state["history"] == ref.history and all(torch.equal(tensors[f"model.{k}"], v)
                                                    for k, v in ref.model.state_dict().items())
    return {"kills_sent": sent, "rounds_that_resumed": resumed, "final_exit_code": done.returncode,
            "newest_checkpoint_verifies": True, "metric_rows": len(logged),
            "duplicate_metric_rows": len(logged) - len(set(logged)),
            "missing_metric_rows": len(set(range(5, steps + 1, 5)) - set(logged)),
            "temporary_files_left": len(list(run.rglob("*.tmp*"))), "bit_exact_with_uninterrupted_run": exact}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=30)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    print(json.dumps(kill_loop(a.out, a.kills, a.steps, a.seed), indent=1))


if __name__ == "__main__":
    main()
