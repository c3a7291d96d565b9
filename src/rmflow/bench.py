"""`rmflow bench CONFIG [key=value ...]`: training-step time, peak memory and sampling throughput, measured in one
run, for the config's task and default network. It prints ratios (absolute times drift on shared machines).

Methods (each a full Trainer.train_step: data, loss, backward, clipping, AdamW, EMA):

    fm            flow matching: L_CMFM with r = t everywhere (flow.time.ratio_neq = 0): one forward + backward,
                  no JVP
    meanflow      L_CMFM (no-grad JVP + forward + backward), the config's time sampler
    meanflow_sub  as meanflow, the JVP evaluated only on the rows with r != t (flow.jvp_subset: the same loss)
    rmflow        L_CMFM + λ1·L_NLL with the config's pairing (teacher: k no-grad teacher forwards per step)
    rmflow_bank   pairing teacher with a precomputed bank of teacher pairs (rmflow.teacher_bank; built in warm-up)
    rmflow_ot     pairing minibatch_ot;  rmflow_indep: pairing independent
    --variant NAME=key=value,...   rmflow with extra config keys, timed in the same rounds (e.g. the cheaper
                  likelihood step: lean=rmflow.focus_errors=stored,rmflow.nll_batch=0.5,rmflow.batch_split=true)

Peak memory is the peak of bytes held by tensors allocated during the loss forward + backward of one step
(activations, JVP tangents, teacher passes, gradients, temporaries; weights and optimiser state allocated earlier
are excluded): CUDA's allocator statistics on a GPU, a dispatch-mode tensor tracker on CPU.
Samplers: MeanFlow with k = 1, 8, 32, 100 NFE, RMFlow (1 NFE + refinement) and the flow-matching Euler ODE at
100 NFE, all at the same batch.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .config import Config, ConfigError, apply_overrides, build_config, read_yaml
from .flow import sample, to_device

METHODS = ("fm", "meanflow", "meanflow_sub", "rmflow", "rmflow_bank", "rmflow_ot", "rmflow_indep")
DEFAULT_METHODS = METHODS
BANK_SIZE = 16384   # rmflow_bank's teacher_bank when the config sets none


# ---------------------------------------------------------------------------------------------- peak memory
class TensorMemoryTracker(TorchDispatchMode):
    """Peak bytes of the tensor storages created while active (each storage counted once, freed when its
    Python storage object dies). Device-agnostic; used on CPU where no allocator statistics exist."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen: dict[int, weakref.ref] = {}

    def _free(self, key: int, nbytes: int) -> None:
        if self._seen.pop(key, None) is not None:
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            try:
                st = t.untyped_storage()
                key, nbytes = st.data_ptr(), st.nbytes()
            except (RuntimeError, NotImplementedError):  # functorch/compile wrapper tensors own no storage
                continue
            if nbytes == 0 or key in self._seen:
                continue
            self._seen[key] = weakref.ref(st, lambda _r, key=key, n=nbytes: self._free(key, n))
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _loss_and_backward(trainer) -> None:
    """The part of a training step that differs between methods: batch, loss forward, backward (into fresh
    gradients). The optimiser update, identical for all methods, is left out."""
    trainer.objective.set_step(trainer.step)
    batch = trainer.task.batch(trainer.cfg.train.batch_size)
    dev = trainer.device
    out = trainer.loss_module(batch.x.to(dev), to_device(batch.cond, dev), to_device(batch.mask, dev))
    out.loss.mean().backward()


def peak_step_memory(trainer) -> int:
    """Peak bytes allocated during the loss forward + backward of one step (gradients included) beyond what was
    allocated before it."""
    dev = trainer.device
    trainer.optimizer.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        _sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        _loss_and_backward(trainer)
        _sync(dev)
        peak = torch.cuda.max_memory_allocated(dev) - before
    else:
        with TensorMemoryTracker() as tracker:
            _loss_and_backward(trainer)
        peak = tracker.peak
    trainer.optimizer.zero_grad(set_to_none=True)
    return peak


# ----------------------------------------------------------------------------------------------- trainers
@dataclass
class Variant:
    method: str
    compiled: bool
    trainer: object
    first_step_s: float = 0.0
    times: list | None = None
    peak_bytes: int | None = None

    @property
    def key(self) -> str:
        return f"{self.method}{'+compile' if self.compiled else ''}"


def method_overrides(method: str, cfg: Config) -> list[str]:
    rm = cfg.rmflow
    lam = rm.lambda_nll if rm.lambda_nll > 0 else 0.1
    if method == "fm":
        return ["rmflow.lambda_nll=0", "flow.time.ratio_neq=0", "flow.time.ratio_one_step=0"]
    if method in ("meanflow", "meanflow_sub"):
        return ["rmflow.lambda_nll=0", f"flow.jvp_subset={str(method == 'meanflow_sub').lower()}"]
    pairing = {"rmflow": rm.pairing, "rmflow_bank": "teacher", "rmflow_ot": "minibatch_ot",
               "rmflow_indep": "independent"}[method]
    start = max(rm.nll_start_step, 1) if pairing == "teacher" else 0
    out = [f"rmflow.lambda_nll={lam}", f"rmflow.pairing={pairing}", f"rmflow.nll_start_step={start}"]
    if method == "rmflow_bank":
        if not hasattr(rm, "teacher_bank"):
            raise ValueError("bench method 'rmflow_bank' needs the config key rmflow.teacher_bank")
        out.append(f"rmflow.teacher_bank={rm.teacher_bank or BANK_SIZE}")
    return out


def build_variant(base: dict, method: str, compiled: bool, precision: str | None, task=None,
                  extra_keys: tuple[str, ...] = (), name: str | None = None):
    """A Trainer for one method (`extra_keys`: further key=value overrides; `name`: the row's name, for
    --variant). `task` is shared between variants (the methods differ only in flow/rmflow/train keys, which the
    task's data and network do not depend on), so data loading happens once."""
    from .train import Trainer
    cfg0 = build_config(base)
    extra = method_overrides(method, cfg0) + list(extra_keys) + [f"train.compile={str(compiled).lower()}"]
    if precision:
        extra.append(f"train.precision={precision}")
    cfg = build_config(apply_overrides(json.loads(json.dumps(base)), extra))
    trainer = Trainer(cfg, task=task)
    if method.startswith("rmflow"):   # the first timed step is the stage boundary: the likelihood stage throughout
        trainer.step = cfg.rmflow.nll_start_step
    return Variant(name or method, compiled, trainer)


def _time_steps(trainer, steps: int) -> float:
    dev = trainer.device
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    _sync(dev)
    return (time.perf_counter() - t0) / steps


# ----------------------------------------------------------------------------------------------- sampling
def sampler_throughput(model, task, batch_size: int, nfes: list[int], repeats: int, device: torch.device
                       ) -> list[dict]:
    """samples/s of MeanFlow k-NFE for k in nfes, RMFlow 1-NFE and FM Euler 100 NFE, at batch_size."""
    specs = [("meanflow", k) for k in nfes] + [("rmflow", 1), ("fm", 100)]
    batch = task.batch(batch_size)
    x = batch.x.to(device)
    cond, mask = to_device(batch.cond, device), to_device(batch.mask, device)
    model.eval()
    rows = []
    with torch.no_grad():
        x0 = model.draw_source(x, cond, mask)
        sample(model, x0, "meanflow", 1, cond, mask)   # warm-up
        times: dict[tuple, list] = {s: [] for s in specs}
        nfe: dict[tuple, int] = {}
        for _ in range(repeats):   # interleaved, so drift hits every sampler alike
            for name, k in specs:
                _sync(device)
                t0 = time.perf_counter()
                res = sample(model, x0, name, k, cond, mask)
                _sync(device)
                times[(name, k)].append(time.perf_counter() - t0)
                nfe[(name, k)] = res.nfe
        for (name, k), ts in times.items():
            med = statistics.median(ts)
            rows.append({"sampler": f"{name}@{k}", "nfe": nfe[(name, k)],
                         "batch": batch_size, "seconds": med, "samples_per_s": batch_size / med})
    return rows


# ------------------------------------------------------------------------------------------------ the run
def run_benchmark(base: dict, methods=DEFAULT_METHODS, steps: int = 10, rounds: int = 3, warmup: int = 2,
                  compile_mode: str = "off", precision: str | None = None, nfes=(1, 8, 32, 100),
                  sample_batch: int | None = None, sample_repeats: int = 3, memory: bool = True,
                  log=print, variant_keys: dict[str, list[str]] | None = None) -> dict:
    """Measure everything in one process; returns a JSON-able dict (also printed as tables by `report`).
    `variant_keys`: {name: [key=value, ...]}, RMFlow steps with extra config keys, timed like the methods."""
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown bench method {m!r}; choose from {', '.join(METHODS)}")
    variant_keys = variant_keys or {}
    for name in variant_keys:
        if name in METHODS:
            raise ConfigError(f"bench variant name {name!r} is a method name; choose another")
    if compile_mode not in ("off", "on", "both"):
        raise ConfigError("--compile must be off, on or both")
    flags = {"off": [False], "on": [True], "both": [False, True]}[compile_mode]
    rows = [(m, (), None) for m in methods] + [("rmflow", tuple(keys), name) for name, keys in variant_keys.items()]
    variants = []
    for c in flags:
        for m, keys, name in rows:
            variants.append(build_variant(base, m, c, precision, variants[0].trainer.task if variants else None,
                                          keys, name))
    cfg = variants[0].trainer.cfg
    device = variants[0].trainer.device
    log(f"bench: task {cfg.task.name}, {sum(p.numel() for p in variants[0].trainer.model.parameters()):,} "
        f"parameters, batch {cfg.train.batch_size}, device {device}, threads {torch.get_num_threads()}")
    for v in variants:   # warm-up (compiles)
        t0 = time.perf_counter()
        v.trainer.train_step()
        _sync(device)
        v.first_step_s = time.perf_counter() - t0
        for _ in range(max(warmup - 1, 0)):
            v.trainer.train_step()
        comp = v.trainer.loss_module
        if v.compiled and not getattr(comp, "compiled", False):
            log(f"  {v.key}: compilation fell back to eager ({getattr(comp, 'failure', '?')})")
        log(f"  warm-up {v.key}: first step {v.first_step_s:.2f}s")
        v.times = []
    t0 = time.perf_counter()
    for _ in range(rounds):   # interleaved rounds
        for v in variants:
            v.times.append(_time_steps(v.trainer, steps))
    log(f"  timed {rounds} rounds of {steps} steps in {time.perf_counter() - t0:.1f}s")
    if memory:
        t0 = time.perf_counter()
        for v in variants:
            if not v.compiled or device.type == "cuda":
                v.peak_bytes = peak_step_memory(v.trainer)
        log(f"  memory pass in {time.perf_counter() - t0:.1f}s")
    mf = next((v for v in variants if v.method == "meanflow" and not v.compiled), variants[0])
    nb = sample_batch or cfg.train.batch_size
    t0 = time.perf_counter()
    samplers = sampler_throughput(mf.trainer.model, mf.trainer.task, nb, list(nfes), sample_repeats, device)
    log(f"  samplers timed in {time.perf_counter() - t0:.1f}s")
    steps_out = [{"method": v.method, "compiled": v.compiled,
                  "compile_ok": (not v.compiled) or bool(getattr(v.trainer.loss_module, "compiled", False)),
                  "step_s": statistics.median(v.times), "step_s_rounds": v.times, "first_step_s": v.first_step_s,
                  "peak_bytes": v.peak_bytes} for v in variants]
    return {"task": cfg.task.name, "device": _device_name(device), "threads": torch.get_num_threads(),
            "batch_size": cfg.train.batch_size, "steps_per_round": steps, "rounds": rounds,
            "precision": cfg.train.precision, "pairing": cfg.rmflow.pairing,
            "teacher_steps": cfg.rmflow.teacher_steps, "torch": torch.__version__,
            "steps": steps_out, "ratios": ratios(steps_out, samplers), "samplers": samplers}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    return f"cpu ({platform.processor() or platform.machine()})"


def ratios(steps: list[dict], samplers: list[dict]) -> dict[str, float]:
    """The headline ratios: step-time ratios between methods (per compile flag), compiled/eager per method, and
    the 1-NFE throughput over the 100-NFE flow-matching sampler's."""
    t = {(s["method"], s["compiled"]): s["step_s"] for s in steps}
    out = {}
    for c, tag in ((False, "eager"), (True, "compiled")):
        def r(a, b):
            if (a, c) in t and (b, c) in t:
                out[f"{a}/{b} ({tag})"] = t[(a, c)] / t[(b, c)]
        for m in dict.fromkeys(m for m, _ in t):
            if m not in METHODS or m.startswith("rmflow"):   # every RMFlow method and --variant against MeanFlow
                r(m, "meanflow")
        r("meanflow", "fm")
        r("meanflow_sub", "fm")
        r("meanflow_sub", "meanflow")
    for (m, c), v in t.items():
        if c and (m, False) in t:
            out[f"{m} compiled/eager"] = v / t[(m, False)]
    sps = {s["sampler"]: s["samples_per_s"] for s in samplers}
    if "fm@100" in sps:
        for k in ("meanflow@1", "rmflow@1"):
            if k in sps:
                out[f"{k} / fm@100 throughput"] = sps[k] / sps["fm@100"]
    return out


def report(res: dict) -> str:
    """Markdown tables of a benchmark result."""
    lines = [f"task `{res['task']}` on {res['device']}, {res['threads']} thread(s), torch {res['torch']}, "
             f"batch {res['batch_size']}, precision {res['precision']}, rmflow pairing `{res['pairing']}` "
             f"(teacher k = {res['teacher_steps']}); step time = median over {res['rounds']} interleaved rounds "
             f"of {res['steps_per_round']} steps", "",
             "| method | compiled | step (ms) | first step (s) | peak fwd+bwd memory (MiB) |", "|---|---|---|---|---|"]
    for s in res["steps"]:
        mem = "-" if s["peak_bytes"] is None else f"{s['peak_bytes'] / 2**20:.2f}"
        comp = ("yes" if s["compile_ok"] else "fell back") if s["compiled"] else "no"
        lines.append(f"| {s['method']} | {comp} | {1e3 * s['step_s']:.2f} | {s['first_step_s']:.2f} | {mem} |")
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in res["ratios"].items()]
    lines += ["", "| sampler | NFE | batch | samples/s |", "|---|---|---|---|"]
    lines += [f"| {s['sampler']} | {s['nfe']} | {s['batch']} | {s['samples_per_s']:.4g} |" for s in res["samplers"]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- CLI
def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML path or preset name (its task's default network is benchmarked)")
    p.add_argument("overrides", nargs="*", help="key.sub=value, e.g. train.batch_size=256 train.num_threads=1")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                   help=f"a subset of {', '.join(METHODS)} (space- or comma-separated); a key=value among them is "
                        "an override, not a method")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (compilation happens here)")
    p.add_argument("--compile", dest="compile_mode", default="off", choices=("off", "on", "both"),
                   help="eager only, compiled only, or both (compiling takes about a minute per method on CPU)")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16"), help="override train.precision")
    p.add_argument("--nfe", nargs="+", type=int, default=[1, 8, 32, 100], help="MeanFlow sampler NFEs")
    p.add_argument("--sample-batch", type=int, default=None, help="sampling batch (default train.batch_size)")
    p.add_argument("--sample-repeats", type=int, default=3)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    p.add_argument("--json", default=None, help="also write the raw result here")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE...]",
                   help="an extra RMFlow row with these config keys, e.g. "
                        "lean=rmflow.focus_errors=stored,rmflow.nll_batch=0.5 (repeatable)")


def parse_variants(specs: list[str]) -> dict[str, list[str]]:
    """['lean=a.b=1,c.d=x'] -> {'lean': ['a.b=1', 'c.d=x']}, with an error that names a malformed spec."""
    out = {}
    for spec in specs:
        name, _, keys = spec.partition("=")
        items = [k for k in keys.split(",") if k]
        if not name or not items or any("=" not in k for k in items):
            raise ConfigError(f"--variant {spec!r}: expected NAME=key=value[,key=value...]")
        out[name] = items
    return out


def run_bench(args) -> dict:
    methods = [m for token in args.methods if "=" not in token for m in token.split(",") if m]
    overrides = list(args.overrides) + [t for t in args.methods if "=" in t]   # `--methods a b key=value`
    base = apply_overrides(read_yaml(args.config), overrides + ["train.progress=false"])
    base.pop("compare", None)
    res = run_benchmark(base, methods, args.steps, args.rounds, args.warmup, args.compile_mode,
                        args.precision, args.nfe, args.sample_batch, args.sample_repeats, not args.no_memory,
                        variant_keys=parse_variants(args.variant))
    print(report(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res
