"""Sampling and evaluation of a trained model with any list of samplers.

A sampler spec is NAME[@K][:w=ω] (rmflow.config.parse_sampler_spec): rmflow, meanflow@8, fm@100, and with a
classifier-free guidance scale ω, e.g. meanflow@8:w=2.5 (flow/samplers.py: ω as the network's input when it takes
one, else standard CFG at 2 NFE per step)."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from .config import ConfigError, parse_sampler_spec
from .flow import cond_rows, sample, to_device
from .flow.samplers import GuidedField
from .tasks import Batch

LABELS = {"rmflow": "RMFlow", "meanflow": "MeanFlow", "fm": "FM ODE (Euler)", "fm_heun": "FM ODE (Heun)"}


def sampler_label(spec: str) -> str:
    """'meanflow@8' -> 'MeanFlow 8-NFE', 'fm@100' -> 'FM ODE (Euler) 100-step'; with a guidance scale the steps and
    ω, 'meanflow@8:w=2.5' -> 'MeanFlow 8-step ω=2.5' (the NFE, 2 per step with standard CFG, is the rows' 'nfe')."""
    name, k, w = parse_sampler_spec(spec)
    if w is not None:
        return f"{LABELS[name]} {k}-step ω={w:g}"
    return f"{LABELS[name]} {k}-step" if name.startswith("fm") else f"{LABELS[name]} {k}-NFE"


@torch.no_grad()
def draw_samples(model, reference: Batch, spec: str, seed: int, batch_size: int = 20000
                 ) -> tuple[torch.Tensor, int, float]:
    """Samples for every condition/mask in `reference`: returns (samples, nfe, seconds spent in the network)."""
    name, steps, guidance = parse_sampler_spec(spec)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    if guidance is not None:   # a scale the model cannot use (no condition, ω input without a dict): one clear line
        try:
            GuidedField(model, cond_rows(reference.cond, slice(0, 1)), None, guidance)
        except ValueError as e:
            raise ConfigError(f"sampler {spec!r}: {e}") from None
    out, seconds, nfe = [], 0.0, 0
    for i in range(0, len(reference.x), batch_size):
        sl = slice(i, i + batch_size)
        template = reference.x[sl].to(device)
        cond = to_device(cond_rows(reference.cond, sl), device)
        mask = to_device(cond_rows(reference.mask, sl), device)
        x0 = model.draw_source(template, cond, mask, gen)
        t0 = time.perf_counter()
        res = sample(model, x0, name, steps, cond, mask, gen, guidance)
        seconds += time.perf_counter() - t0
        out.append(res.x.cpu())
        nfe = res.nfe
    return torch.cat(out), nfe, seconds


def evaluate_samplers(task, model, reference: Batch, samplers: list[str], seed: int, batch_size: int = 20000
                      ) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """One row per sampler (metrics, NFE, samples/s) and the samples themselves, keyed by label."""
    rows, panels = [], {}
    for spec in samplers:
        x, nfe, seconds = draw_samples(model, reference, spec, seed, batch_size)
        metrics = task.evaluate(x, reference)
        label = sampler_label(spec)
        rows.append({"sampler": spec, "label": label, "nfe": nfe, **metrics,
                     "samples_per_s": len(x) / max(seconds, 1e-9)})
        panels[label] = x
    return rows, panels


def log_to_tensorboard(run_dir: str | Path, step: int, rows: list[dict], panels: dict[str, torch.Tensor], task,
                       reference: Batch) -> None:
    """An evaluation into run_dir/tensorboard, next to the training scalars: every numeric metric of every row as
    `eval/<sampler>/<metric>` and the task's sample figure as the image `eval/samples`, all at `step`."""
    import matplotlib.image

    from .train.trainer import tensorboard_writer
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "samples.png"
        task.plot(panels, reference, png)
        image = matplotlib.image.imread(png)[..., :3]
    with tensorboard_writer(Path(run_dir)) as board:
        for row in rows:
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "seed":
                    board.add_scalar(f"eval/{row['sampler']}/{key}", value, step)
        board.add_image("eval/samples", image, step, dataformats="HWC")
