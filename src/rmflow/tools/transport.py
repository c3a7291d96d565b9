"""Where a one-step map goes wrong: the source plane coloured by the mode each source point is sent to.

    python -m rmflow.tools.transport STUDENT_RUN TEACHER_RUN [--steps 8] [--out map.png]

STUDENT_RUN is a finished run whose EMA model's one-step map f(x0) = x0 + u(x0, 0, 1) is examined (no refinement
noise); TEACHER_RUN a finished run whose k-step MeanFlow transport T_k is the reference. For x0 on a grid over
[-3, 3]² the figure shows the nearest mode of T_k(x0) and of f(x0) (black where the point lands off every mode,
the task's `off_mode` rule) and the distance ‖f(x0) − T_k(x0)‖. On fresh source draws it prints the off-mode share
of both maps, how far the student's off-mode points sit from the nearest mode centre in angle and radius, and the
error quantiles. Data with `means` (the ring, the grids); 2-D only.
"""
from __future__ import annotations

import argparse
import math
import torch

from ..flow import meanflow
from ..train.build import load_run


@torch.no_grad()
def diagnose(student, teacher, density, steps: int, n: int = 20000, seed: int = 1) -> dict[str, float]:
    """Off-mode shares and one-step errors on n source draws; angles in degrees, radii in data units."""
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    f, t = meanflow(student, x0, 1).x, meanflow(teacher, x0, steps).x
    err = (f - t).norm(dim=1)
    off = density.off_mode(f)
    xo, centres = f[off], density.means
    nearest = centres[torch.cdist(xo, centres).argmin(1)]
    angle = torch.atan2(xo[:, 1], xo[:, 0]) - torch.atan2(nearest[:, 1], nearest[:, 0])
    angle = torch.remainder(angle + math.pi, 2 * math.pi) - math.pi
    radial = xo.norm(dim=1) - nearest.norm(dim=1)
    same = torch.cdist(f, centres).argmin(1) == torch.cdist(t, centres).argmin(1)
    q = lambda v, p: float(v.quantile(p)) if len(v) else float("nan")  # noqa: E731
    return {"off_mode_student": float(off.float().mean()), "off_mode_teacher": float(density.off_mode(t).float().mean()),
            "mode_disagreement": 1 - float(same.float().mean()),
            "err_median": q(err, 0.5), "err_q90": q(err, 0.9), "err_q99": q(err, 0.99),
            "off_angle_median_deg": q(angle.abs() * 180 / math.pi, 0.5),
            "off_radial_median": q(radial.abs(), 0.5), "off_x0_radius_median": q(x0[off].norm(dim=1), 0.5)}


@torch.no_grad()
def plot_maps(student, teacher, density, steps: int, path, bound: float = 3.0, res: int = 400) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap, LogNorm

    axis = torch.linspace(-bound, bound, res)
    x0 = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    f, t = meanflow(student, x0, 1).x, meanflow(teacher, x0, steps).x
    k = len(density.means)

    def labels(x):
        lab = torch.cdist(x, density.means).argmin(1).float()
        lab[density.off_mode(x)] = -1
        return lab.reshape(res, res).numpy()

    cmap = ListedColormap(["black"] + [plt.get_cmap("tab20")(i % 20) for i in range(k)])
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.8))
    extent = (-bound, bound, -bound, bound)
    for ax, x, title in ((axes[0], t, f"teacher T_{steps}(x0): mode"), (axes[1], f, "one step f(x0): mode")):
        ax.imshow(labels(x), origin="lower", extent=extent, cmap=cmap, vmin=-1.5, vmax=k - 0.5,
                  interpolation="nearest")
        ax.set_title(title + " (black: off-mode)", fontsize=9)
    im = axes[2].imshow((f - t).norm(dim=1).reshape(res, res).clamp_min(1e-3).numpy(), origin="lower",
                        extent=extent, cmap="viridis", norm=LogNorm(vmin=1e-2, vmax=5))
    axes[2].set_title("‖f(x0) − T(x0)‖", fontsize=9)
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.set_xlabel("x0[0]")
        ax.set_ylabel("x0[1]")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("student")
    p.add_argument("teacher")
    p.add_argument("--steps", type=int, default=8, help="k of the teacher's k-step MeanFlow transport")
    p.add_argument("--out", default=None, help="figure path (png); none: print only")
    a = p.parse_args(argv)
    student, task, _ = load_run(a.student)
    teacher, _, _ = load_run(a.teacher)
    density = task.density
    if not hasattr(density, "means") or density.dim != 2:
        raise SystemExit("this diagnostic needs 2-D data with mode centres (ring8, grid25)")
    for key, value in diagnose(student, teacher, density, a.steps).items():
        print(f"{key:24s} {value:.4f}")
    if a.out:
        plot_maps(student, teacher, density, a.steps, a.out)
        print(f"figure: {a.out}")


if __name__ == "__main__":
    main()
