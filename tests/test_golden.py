"""Golden values recorded with the code of commit 33c815f, before the objective refactor (issue 14): the per-step
losses and 1-NFE samples of tiny runs of every pairing and of the cheap likelihood step on molecules, series and
a LoRA stage 2. The refactor left them bit for bit unchanged (torch.equal, one CPU thread, on the machine that
recorded them). Another CPU runs other SIMD kernels and differs in the last float32 bits (1e-7 after 50 steps), so
the test allows a relative 1e-4: far below what any change of behaviour moves. Each case pins every setting whose
code default has changed since (LEGACY), so the goldens keep testing the same runs. Re-recorded since, each for an
intended change: ring_rmflow_fixed, qm9_bank_split and lorenz_bank_split when the teacher bank was capped at the
L_NLL rows that stage 2 reads (train/build.py bank_size; with the cap undone they reproduce the old values).

    python tests/test_golden.py --write      # re-record (only when a change of behaviour is intended)
"""
from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from rmflow.config import apply_overrides, build_config, deep_merge
from rmflow.evaluate import draw_samples
from rmflow.train.lora import trainer_class

GOLDEN = Path(__file__).parent / "golden.json"   # {case: {losses, samples_shape, samples}}, plain numbers
TINY_RING = ["model.hidden=32", "model.depth=2", "train.batch_size=64", "train.progress=false",
             "train.warmup_steps=3", "train.steps=50", "rmflow.nll_start_step=25", "rmflow.teacher_bank=2048",
             "rmflow.filter_reference=500", "train.ema_decay=0.9"]
RING_DEFAULT = ["rmflow.refine=mixture", "rmflow.teacher_steps=8", "rmflow.mixture_components=4",
                "rmflow.sigma_min=0.03", "rmflow.teacher_filter=0.99"]


RING = {  # the ring preset's top level at commit 33c815f
    "name": "ring", "task": {"name": "synthetic", "dataset": "ring8"}, "model": {"hidden": 256, "depth": 3},
    "flow": {"sigma": 0.0, "adaptive_p": 1.0, "adaptive_c": 1.0e-3, "time": {"dist": "uniform", "ratio_neq": 0.25}},
    "rmflow": {"lambda_nll": 1.0, "sigma_min": 0.1, "pairing": "teacher", "teacher_steps": 32, "teacher_bank": 50000,
               "nll_focus": 0.5, "nll_start_step": 5000},
    "train": {"steps": 7000, "batch_size": 512, "lr": 1.0e-3, "warmup_steps": 100, "ema_decay": 0.999,
              "log_every": 100, "ckpt_every": 1000}}


LEGACY = {  # code defaults at commit 33c815f that have changed since
    "flow": {"adaptive_p": 1.0, "time": {"dist": "uniform", "mean": 0.0, "pair_dist": "same"}},
    "rmflow": {"teacher_steps": 32, "refine": "fixed", "mixture_components": 2, "sigma_min": 0.1, "teacher_bank": 0,
               "teacher_filter": 0.0, "nll_focus": 0.0, "teacher_sampler": "meanflow", "cmfm_velocity": "data",
               "nll_batch": 1.0, "batch_split": False, "focus_errors": "fresh", "nll_start_step": 5000},
    "train": {"steps": 5000, "lr_schedule": "constant", "ema_decay": 0.999},
}


def _legacy(data: dict) -> dict:
    """`data` on top of the legacy defaults, merged at every depth (its own settings win)."""
    return deep_merge(copy.deepcopy(LEGACY), data)


def _ring(*extra):
    return build_config(apply_overrides(_legacy(RING), TINY_RING + list(extra)))


def _qm9(tmp):
    return build_config(_legacy({
        "name": "t", "task": {"name": "qm9", "max_train": 300, "cache": str(tmp), "condition": "alpha",
                              "novelty": False},
        "model": {"hidden": 8, "layers": 2, "time_dim": 8, "edge_mlp": False, "encoder_hidden": 8},
        "rmflow": {"lambda_nll": 0.02, "sigma_min": 0.01, "pairing": "teacher", "teacher_steps": 2,
                   "nll_start_step": 2, "sigma_c": 1.0, "lambda_enc": 1e-3, "teacher_bank": 32, "nll_batch": 0.5,
                   "batch_split": True},
        "train": {"steps": 5, "batch_size": 4, "progress": False, "warmup_steps": 0},
        "eval": {"num_samples": 6}}))


def _lorenz(tmp):
    return build_config(_legacy({
        "task": {"name": "dynamics", "system": "lorenz", "train_traj": 2, "valid_traj": 0, "test_traj": 1,
                 "traj_len": 120, "window_len": 24, "context_len": 8, "ensemble": 4, "cache_dir": str(tmp),
                 "transient": 2.0, "obs_noise": 0.0},
        "model": {"width": 8, "mults": [1, 2], "attention": True, "heads": 2},
        "rmflow": {"lambda_nll": 0.1, "pairing": "teacher", "teacher_steps": 2, "nll_start_step": 2,
                   "sigma_min": 0.05, "sigma_c": 0.5, "lambda_enc": 1e-3, "teacher_bank": 64, "nll_focus": 0.5,
                   "focus_errors": "stored", "nll_batch": 0.5, "batch_split": True},
        "train": {"steps": 5, "batch_size": 8, "progress": False, "warmup_steps": 1},
        "eval": {"num_samples": 16}}))


def _lora(tmp):
    return build_config(_legacy({
        "name": "t", "out_dir": str(tmp / "runs"),
        "task": {"name": "text2image", "dataset": "digits", "image_size": 8, "classifier_steps": 30,
                 "cache_dir": str(tmp / "cache")},
        "model": {"channels": 8, "channel_mult": [1, 2], "heads": 2, "num_tokens": 2, "encoder_hidden": 16,
                  "lora": {"rank": 2, "alpha": 4.0, "lr": 1e-2}},
        "flow": {"time": {"ratio_neq": 0.5}},
        "rmflow": {"lambda_nll": 0.5, "lambda_enc": 1e-3, "sigma_min": 0.05, "sigma_c": 1.0, "pairing": "teacher",
                   "teacher_steps": 2, "nll_start_step": 2},
        "train": {"steps": 4, "batch_size": 8, "warmup_steps": 0, "ema_decay": 0.5, "progress": False},
        "eval": {"num_samples": 12}}))


CASES = {
    "ring_default": (lambda tmp: _ring(*RING_DEFAULT), None),
    "ring_rmflow_fixed": (lambda tmp: _ring("rmflow.nll_focus=0.5"), None),
    "ring_rmflow_paper": (lambda tmp: _ring("rmflow.pairing=independent", "rmflow.teacher_bank=0",
                                            "rmflow.nll_focus=0"), None),
    "ring_minibatch_ot": (lambda tmp: _ring("rmflow.pairing=minibatch_ot", "rmflow.teacher_bank=0",
                                            "rmflow.nll_focus=0", "flow.path_coupling=minibatch_ot"), None),
    "ring_self": (lambda tmp: _ring("rmflow.pairing=self", "rmflow.teacher_bank=0", "rmflow.nll_focus=0",
                                    "rmflow.teacher_steps=2", "rmflow.refine=learned"), None),
    "ring_inverse_split": (lambda tmp: _ring("rmflow.pairing=inverse", "rmflow.teacher_bank=0", "rmflow.nll_focus=0",
                                             "rmflow.nll_batch=0.5", "rmflow.batch_split=true"), None),
    "ring_teacher_fresh_focus": (lambda tmp: _ring("rmflow.teacher_bank=0", "rmflow.teacher_steps=4"), None),
    "qm9_bank_split": (_qm9, "rdkit"),
    "lorenz_bank_split": (_lorenz, "scoringrules"),
    "lora_stage2": (_lora, "peft"),
}


def run_case(name: str, tmp: Path) -> dict[str, torch.Tensor]:
    build, _ = CASES[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = build(tmp)
        trainer = trainer_class(cfg)(cfg)
        losses = torch.tensor(trainer.train(), dtype=torch.float64)
        reference = trainer.task.reference(16, seed=10_001)
        samples = draw_samples(trainer.ema.shadow, reference, "rmflow", seed=3)[0]
    finally:
        torch.set_num_threads(threads)
    return {"losses": losses, "samples": samples.detach().float().contiguous()}


@pytest.mark.parametrize("name", list(CASES))
def test_golden_unchanged(name, tmp_path):
    needs = CASES[name][1]
    if needs and importlib.util.find_spec(needs) is None:
        pytest.skip(f"{needs} is not installed")
    case = json.loads(GOLDEN.read_text())[name]
    want = {"losses": torch.tensor(case["losses"], dtype=torch.float64),    # exact: JSON keeps every float64 digit
            "samples": torch.tensor(case["samples"], dtype=torch.float32).reshape(case["samples_shape"])}
    got = run_case(name, tmp_path)
    assert got["losses"].shape == want["losses"].shape
    torch.testing.assert_close(got["losses"], want["losses"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got["samples"], want["samples"], rtol=1e-4, atol=1e-5)


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    for case in sys.argv[sys.argv.index("--write") + 1:] or CASES:
        with tempfile.TemporaryDirectory() as d:
            out = run_case(case, Path(d))
        golden[case] = {"losses": out["losses"].tolist(), "samples_shape": list(out["samples"].shape),
                        "samples": out["samples"].flatten().tolist()}
        print(case, out["losses"][:3].tolist(), out["samples"].flatten()[:3].tolist())
    GOLDEN.write_text("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(golden.items()))
                      + "\n}\n")   # one line per case
