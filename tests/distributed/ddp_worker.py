"""Started by test_ddp.py with `torchrun --standalone --nproc-per-node 2 ddp_worker.py OUT_DIR`.

Two runs, one after the other. "ddp": the real path (Trainer with a DistContext: the objective wrapped in DDP).
"inner": the bug the issue warns about, calling the unwrapped objective, so no gradient all-reduce happens (the
negative control). Each rank trains 2 steps on its half of the scripted batch and writes its parameters to
OUT_DIR/<run>/rank<r>.safetensors.
"""
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _ddp_helpers import COMBINED, make_trainer, parameters  # noqa: E402

from rmflow.train.distributed import init_distributed, shutdown_distributed  # noqa: E402


def main(out_dir: str) -> None:
    ctx = init_distributed("cpu")
    assert ctx.world_size == 2 and ctx.backend == "gloo", ctx
    half = COMBINED // 2
    rows = slice(ctx.rank * half, (ctx.rank + 1) * half)
    for mode in ("ddp", "inner"):
        out_mode = os.path.join(out_dir, mode)
        trainer = make_trainer(rows, dist=ctx, run_dir=os.path.join(out_mode, "run"))
        if mode == "inner":
            trainer.loss_module = trainer.objective
        losses = [trainer.train_step()["loss"] for _ in range(2)]
        trainer.save()                     # every rank joins (RNG gather); rank 0 writes
        out = {f"param.{k}": v for k, v in parameters(trainer).items()}
        out["rng"] = torch.get_rng_state()
        out["draw"] = torch.rand(4)        # the rank's data/noise stream after the steps
        out["losses"] = torch.tensor(losses)
        os.makedirs(out_mode, exist_ok=True)
        save_file(out, os.path.join(out_mode, f"rank{ctx.rank}.safetensors"))
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
