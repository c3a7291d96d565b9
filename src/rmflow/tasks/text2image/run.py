"""One command for the text-to-image comparison: both stages of every method, evaluation, table and grid.

    python -m rmflow.tasks.text2image.run digits [key.sub=value ...]   (the same as `rmflow run digits ...`)

It is `rmflow run`: it trains every method of the config's `compare` section for every seed at the same step
budget (methods with model.lora.rank > 0 run stage 1 with L_CMFM and stage 2 as LoRA fine-tuning, see
rmflow.train.lora), evaluates each with its samplers, and writes results.json, results.md (mean ± std over
seeds, the text2image metric columns) and samples.png (a grid with captions) under runs/<name>/. Finished runs
are loaded, not retrained. `from: M` in a method starts it from method M's final checkpoint (same seed), as in
`rmflow run`: stage 2 of the LoRA methods continues the L_CMFM run M instead of repeating stage 1.
"""
from __future__ import annotations

import argparse

from ...config import apply_overrides, read_yaml
from ...experiment import run_comparison


def run_text2image(base: dict, log=print) -> dict:
    """`rmflow run` for a text-to-image config (the LoRA trainer and the task's columns come from there)."""
    return run_comparison(base, log=log)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="preset name (digits, shapes, ...) or YAML path")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    args = p.parse_args(argv)
    run_text2image(apply_overrides(read_yaml(args.config), args.overrides))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
