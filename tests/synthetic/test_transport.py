import math

import torch
from torch import nn

from rmflow.tasks.synthetic.data import make_dataset
from rmflow.tools.transport import diagnose, plot_maps


class SectorMap(nn.Module):
    """u(x, t, r) = (c(x) - x)/(1 - t), c(x) the ring centre of x's angular sector (sectors are convex cones, so
    each MeanFlow jump stays in its sector): 1 step and k steps land exactly on c(x0). `blur` bends the sectors."""

    def __init__(self, means, blur: float = 0.0):
        super().__init__()
        self.means, self.blur = means, blur

    def forward(self, x, t, r, cond=None, mask=None):
        angle = torch.atan2(x[:, 1], x[:, 0]) + self.blur * torch.sin(8 * x[:, 0])
        centre_angles = torch.atan2(self.means[:, 1], self.means[:, 0])
        diff = torch.remainder(angle[:, None] - centre_angles[None] + math.pi, 2 * math.pi) - math.pi
        target = self.means[diff.abs().argmin(1)]
        return (target - x) / (1 - t)[:, None]


def test_diagnose_is_zero_for_identical_maps_and_sees_a_wrong_one(tmp_path):
    ring = make_dataset("ring8")
    exact = SectorMap(ring.means)
    same = diagnose(exact, exact, ring, steps=4, n=4000)
    assert same["off_mode_student"] == same["off_mode_teacher"] == 0.0
    assert same["mode_disagreement"] == 0.0 and same["err_q99"] < 1e-5
    blurred = diagnose(SectorMap(ring.means, blur=0.3), exact, ring, steps=4, n=4000)
    assert blurred["mode_disagreement"] > 0.05 and blurred["err_q90"] > 1.0
    plot_maps(exact, exact, ring, 2, tmp_path / "m.png", res=40)
    assert (tmp_path / "m.png").stat().st_size > 1000
