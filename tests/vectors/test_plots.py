"""The vectors figure in every dimension: a histogram (D = 1), the two columns (D = 2), principal components."""
import pytest
import torch

from rmflow.tasks.vectors.plots import plot_vectors, principal_axes, views


@pytest.mark.parametrize("d,rows", [(1, 1), (2, 1), (3, 1), (6, 2)])
def test_figure_for_every_dimension(tmp_path, d, rows):
    data = torch.randn(300, d)
    names = [f"c{j}" for j in range(d)]
    if d >= 2:
        assert len(views(data, names)) == rows
    plot_vectors({"data": data, "model": torch.randn(200, d) * 2}, names, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_principal_axes_follow_the_variance():
    x = torch.randn(2000, 3, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.1, 3.0, 1.0])
    axes = principal_axes(x, 2)
    assert abs(float(axes[1, 0])) > 0.99 and abs(float(axes[2, 1])) > 0.99
