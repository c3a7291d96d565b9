"""python -m rmflow.tools.dyn_references CONFIG [key=value ...]: the reference rows of a dynamics config (data,
persistence, climatology, analogue, true system) for each of its seeds, scored as `rmflow compare` scores them; no
training."""
from __future__ import annotations

import sys
import time

import numpy as np

from ..compare import markdown_table
from ..config import load_config
from ..tasks.dynamics import DynamicsTask
from ..tasks.dynamics.references import PARTICLES


def main(argv: list[str] | None = None) -> None:
    """python -m rmflow.tools.dyn_references CONFIG [key=value ...]: the reference rows of a dynamics config
    for each of its seeds, on exactly the reference `rmflow compare` scores (task.reference(eval.num_samples,
    10000 + seed), rows drawn with seed 20000 + seed), printed as compare's table. No training."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(main.__doc__)
        return
    cfg = load_config(args[0], args[1:])
    task = DynamicsTask(cfg)
    rows = []
    for seed in cfg.seeds:
        reference = task.reference(cfg.eval.num_samples, seed=10_000 + seed)
        t0 = time.perf_counter()
        forecasts = task.reference_rows(reference, 20_000 + seed)
        print(f"seed {seed}: {len(forecasts)} reference rows in {time.perf_counter() - t0:.1f} s"
              + (f"; true-system importance sampling, effective sample size per context: min "
                 f"{task.last_ess.min():.0f}, median {np.median(task.last_ess):.0f} of {PARTICLES}"
                 if task.last_ess is not None else ""))
        for label, x in forecasts.items():
            rows.append({"method": "reference", "sampler": label, "label": label, "nfe": 0, "seed": seed,
                         **task.evaluate(x, reference)})
    print(markdown_table(rows, task.metric_format))



if __name__ == "__main__":
    main()
