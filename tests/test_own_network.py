"""A network of one's own: through the config (`model.target`) and in a training loop of one's own (the README's)."""
from __future__ import annotations

import textwrap

import torch
from torch import nn

from rmflow.cli import main
from rmflow.flow import (CMFMLoss, LikelihoodSchedule, RMFlow, RMFlowObjective, TeacherPairing, TimeSampler,
                         meanflow, one_step)

NET = textwrap.dedent("""
    import torch
    from torch import nn


    class TinyNet(nn.Module):
        \"\"\"u(x, t, r): an MLP of (x, t, r - t); no condition, no mask argument.\"\"\"

        def __init__(self, dim, width=32):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(dim + 2, width), nn.SiLU(), nn.Linear(width, dim))

        def forward(self, x, t, r, cond=None):
            return self.body(torch.cat([x, t[:, None], (r - t)[:, None]], 1))
    """)


def test_a_network_named_in_the_config_trains_and_samples(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "runs"
    args = ["ring", f"out_dir={out}", "name=n", "model.target=my_nets:TinyNet", "model.options={width: 8}",
            "train.steps=4", "train.batch_size=16", "train.progress=false", "rmflow.nll_start_step=2",
            "rmflow.teacher_bank=64", "rmflow.teacher_filter=0", "rmflow.teacher_steps=2"]
    assert main(["train", *args]) == 0
    from rmflow import load
    pipe = load(out / "n")
    assert type(pipe.model.net).__name__ == "TinyNet" and pipe.model.net.body[0].out_features == 8
    assert pipe.sample(5).shape == (5, 2)
    assert main(["train", "ring", f"out_dir={out}", "name=m", "model.target=my_nets:Nope"]) == 2


class MyNet(nn.Module):
    def __init__(self, dim=2, width=32):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim + 2, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                  nn.Linear(width, dim))

    def forward(self, x, t, r, cond=None):
        return self.body(torch.cat([x, t[:, None], (r - t)[:, None]], 1))


def test_the_objective_trains_inside_a_loop_of_ones_own():
    """The README's loop: the user's network and data loader, rmflow's objective, two stages. Training moves the
    8-step samples of a 2-Gaussian target towards its modes, and stage 2 brings the one-step map near the teacher."""
    torch.manual_seed(0)
    data = torch.cat([torch.randn(4096, 2) * 0.3 + 2, torch.randn(4096, 2) * 0.3 - 2])
    loader = torch.utils.data.DataLoader(data, batch_size=256, shuffle=True)
    model = RMFlow(MyNet())                                       # Gaussian source, fixed refinement
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def fit(objective, epochs):
        for _ in range(epochs):
            for x in loader:
                loss = objective(x).loss.mean()
                opt.zero_grad()
                loss.backward()
                opt.step()

    fit(RMFlowObjective(model, CMFMLoss(TimeSampler(), adaptive_p=0.0)), 8)     # L_CMFM only: MeanFlow
    x0 = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    eight = meanflow(model, x0, 8).x
    assert (eight.abs().mean(0) > 1.2).all()                      # mass sits near ±2, not at the origin
    teacher = TeacherPairing(model, steps=8)                       # the likelihood term against a frozen copy
    stage2 = RMFlowObjective(model, CMFMLoss(TimeSampler(), adaptive_p=0.0), teacher, sigma_min=0.05,
                             lambda_nll=1.0, schedule=LikelihoodSchedule(start=0))
    stage2.start_likelihood_stage(model)
    before = (one_step(model, x0, refine=False).x - meanflow(teacher.teacher, x0, 8).x).norm(dim=1).mean()
    fit(stage2, 4)
    after = (one_step(model, x0, refine=False).x - meanflow(teacher.teacher, x0, 8).x).norm(dim=1).mean()
    assert after < 0.7 * before


def test_the_vectors_task_takes_a_network_of_ones_own(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = tmp_path / "points.npy"
    import numpy as np
    np.save(data, np.random.default_rng(0).standard_normal((200, 3)))
    from rmflow.config import load_config
    from rmflow.train import Trainer
    cfg = load_config("vectors-example", [f"task.path={data}", "model.target=my_nets:TinyNet",
                                          "model.options={width: 8}", "train.steps=3", "train.progress=false",
                                          "rmflow.nll_start_step=2", "rmflow.teacher_bank=64"])
    trainer = Trainer(cfg)
    assert type(trainer.model.net).__name__ == "TinyNet" and trainer.model.net.body[-1].out_features == 3
    assert len(trainer.train()) == 3
