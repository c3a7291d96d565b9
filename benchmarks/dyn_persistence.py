"""The persistence reference row of docs/results/dynamics.md: the last context state copied over the forecast
horizon (and over every ensemble member), scored by the task's own `evaluate` on the same held-out reference.

    python benchmarks/dyn_persistence.py lorenz-cpu
"""
import sys

from rmflow.config import load_config
from rmflow.tasks import get_task

cfg = load_config(sys.argv[1])
task = get_task("dynamics").factory(cfg)
ref = task.reference(cfg.eval.num_samples, seed=10_000)
persistence = ref.cond[..., -1:].expand_as(ref.x).contiguous()
print(task.evaluate(persistence, ref))
