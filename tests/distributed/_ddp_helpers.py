"""Shared by test_ddp.py and ddp_worker.py: a task whose data, source noise, partner noise and (t, r) are fixed
tensors, so a 2-rank DDP step and a single-process step on the combined batch see exactly the same numbers.
Everything runs in float64 (make_trainer sets the default dtype) so that the comparison can be tight."""
from __future__ import annotations

import torch

from rmflow.config import build_config
from rmflow.flow import EuclideanSpace, FixedScale, GaussianSource, RMFlow
from rmflow.nets import MLP
from rmflow.tasks import Batch, Task

COMBINED = 8        # combined batch; each of the 2 ranks gets 4 rows
DIM = 2


def tensors():
    """Data x, source noise eps0, partner noise eps2: (COMBINED, DIM); times t <= r: (COMBINED,)."""
    g = torch.Generator().manual_seed(1234)
    kw = {"generator": g, "dtype": torch.float64}
    x = 3 * torch.randn(COMBINED, DIM, **kw)
    eps0, eps2 = torch.randn(COMBINED, DIM, **kw), torch.randn(COMBINED, DIM, **kw)
    a, b = torch.rand(COMBINED, **kw), torch.rand(COMBINED, **kw)
    t, r = torch.minimum(a, b), torch.maximum(a, b)
    r[::2] = t[::2]          # half the rows plain flow matching (r = t), half with r != t
    return x, eps0, eps2, t, r


def config(batch_size: int):
    return build_config({
        "name": "ddp-test", "seed": 7, "task": {"name": "synthetic"},
        "model": {"hidden": 32, "depth": 2, "time_dim": 16},
        "flow": {"adaptive_p": 1.0, "adaptive_c": 1e-3},
        "rmflow": {"lambda_nll": 0.5, "sigma_min": 0.1, "pairing": "teacher", "teacher_steps": 2,
                   "nll_start_step": 1, "teacher_source": "model", "teacher_sampler": "meanflow",
                   "teacher_bank": 0, "teacher_filter": 0.0, "nll_focus": 0.0, "refine": "fixed", "nll_batch": 1.0,
                   "batch_split": False},
        "train": {"lr_schedule": "constant", "batch_size": batch_size, "lr": 1e-2, "warmup_steps": 0, "grad_clip": 1.0, "ema_decay": 0.9,
                  "num_threads": 1, "progress": False, "log_every": 1, "ckpt_every": 1000},
    })


class FixedSource(GaussianSource):
    """x0 = the given noise (a plain attribute, not a buffer: DDP would broadcast rank 0's buffers)."""

    def __init__(self, eps, space):
        super().__init__(space)
        self.eps = eps

    def forward(self, template, cond=None, mask=None, generator=None):
        assert template.shape == self.eps.shape
        return self.eps.clone()


class FixedSpace(EuclideanSpace):
    """Its 'noise' is a fixed tensor (used for the σ_min noise of the likelihood partner)."""

    def __init__(self, eps):
        self.eps = eps

    def randn_like(self, x, mask=None, generator=None):
        assert x.shape == self.eps.shape
        return self.eps.clone()


class FixedTimes:
    def __init__(self, t, r):
        self.t, self.r = t, r

    def sample(self, batch_size, generator=None, device="cpu"):
        assert batch_size == len(self.t)
        return self.t.clone(), self.r.clone()


class ScriptedTask(Task):
    def __init__(self, cfg, rows: slice):
        x, eps0, eps2, _, _ = tensors()
        self.cfg, self.x = cfg, x[rows]
        self.space = FixedSpace(eps2[rows])
        self.eps0 = eps0[rows]

    def build_model(self):
        m = self.cfg.model
        net = MLP(DIM, hidden=m.hidden, depth=m.depth, time_dim=m.time_dim)
        return RMFlow(net, FixedSource(self.eps0, self.space), FixedScale(0.1, 0.0), self.space)

    def batch(self, batch_size):
        assert batch_size == len(self.x)
        return Batch(self.x.clone())


def make_trainer(rows: slice, dist=None, run_dir=None):
    """A Trainer on rows `rows` of the scripted data with the scripted (t, r)."""
    from rmflow.train import Trainer
    torch.set_default_dtype(torch.float64)
    cfg = config(rows.stop - rows.start)
    trainer = Trainer(cfg, run_dir, task=ScriptedTask(cfg, rows), dist=dist)
    _, _, _, t, r = tensors()
    trainer.objective.cmfm.times = FixedTimes(t[rows], r[rows])
    return trainer


def parameters(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
