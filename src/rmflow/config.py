"""Typed configuration: dataclasses loaded from YAML, validated once on load, overridable as `key.sub=value`.

Field types are checked and coerced by `from_dict` (int, float, bool, str, `Literal[...]` choices, `list[...]`,
nested sections); each section's `validate` adds ranges and the rules that tie fields together. Every error names
the offending key and what is allowed. The task's own sections (`task`, `model`) are dataclasses that the task
registers; `load_config` resolves them, so a typo anywhere is caught at load time, before anything is written.
(Dataclasses rather than pydantic: the same checks with no extra dependency, and the sections stay plain classes
that tasks define without importing a validation library.)
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError, check

PRESET_DIR = Path(__file__).parent / "configs"
__all__ = ["ConfigError", "check", "Config", "load_config", "build_config", "read_yaml", "apply_overrides"]


# ---------------------------------------------------------------------------------------------------- sections
@dataclass
class TimeConfig:
    # default: the r = t rows from logit-normal(1, 1) (towards the data), the r != t pairs from two sorted uniforms
    # (docs/METHOD.md §6, chosen on the density suite's development subset, docs/RESULTS.md §1)
    dist: Literal["uniform", "logit_normal"] = "logit_normal"
    mean: float = 1.0              # logit-normal location (prior at t = 0, data at t = 1)
    std: float = 1.0
    ratio_neq: float = 0.25        # share of the batch with r != t
    ratio_one_step: float = 0.0    # share with (t, r) = (0, 1), included in ratio_neq
    fm_warmup: int = 0             # the first k training steps draw r = t only (flow matching); MeanFlow rows
                                   # (ratio_neq, ratio_one_step) from step k on (docs/METHOD.md §9)
    pair_dist: Literal["same", "uniform"] = "uniform"   # the r != t rows' draw: two sorted uniforms, or like `dist`

    def validate(self, key: str) -> None:
        check(self.std > 0, f"{key}.std", "must be > 0")
        check(isinstance(self.fm_warmup, int) and self.fm_warmup >= 0, f"{key}.fm_warmup",
              f"must be an integer >= 0 (steps); got {self.fm_warmup!r}")
        check(0 <= self.ratio_neq <= 1, f"{key}.ratio_neq", "must be in [0, 1]")
        check(0 <= self.ratio_one_step <= self.ratio_neq, f"{key}.ratio_one_step", "must be in [0, ratio_neq]")


@dataclass
class GuidanceConfig:
    """Classifier-free guidance in training (flow/cmfm.py); the defaults switch it off (no dropout, ω = 1)."""
    p_drop: float = 0.0            # each row's condition is replaced by the null condition (zeros) with this probability
    w_min: float = 1.0             # guidance scale ω ~ Uniform[w_min, w_max] per kept row (dropped rows: ω = 1); the
    w_max: float = 1.0             # target becomes ω·v + (1 − ω)·u_θ(x_t, t, t | ∅). w_min < w_max needs a network
                                   # that takes ω as an input (e.g. UNet guidance_embed); w_min = w_max ≠ 1 bakes
                                   # one scale into a plain network (sample it with ω = 1)

    @property
    def enabled(self) -> bool:
        return self.p_drop > 0 or self.w_min != 1 or self.w_max != 1

    def validate(self, key: str) -> None:
        check(0 <= self.p_drop < 1, f"{key}.p_drop", f"must be in [0, 1), got {self.p_drop}")
        check(self.w_min >= 0, f"{key}.w_min", f"must be >= 0, got {self.w_min}")
        check(self.w_min <= self.w_max, f"{key}.w_max", f"must be >= w_min ({self.w_min}), got {self.w_max}")
        check(not (self.w_min != 1 or self.w_max != 1) or self.p_drop > 0, f"{key}.p_drop",
              "must be > 0 when w_min or w_max != 1: the guided target needs the unconditional velocity "
              "u(x_t, t, t | ∅), which only rows trained with the null condition teach")


@dataclass
class FlowConfig:
    sigma: float = 0.0             # data smoothing x1 = x_data + σ·ε1, 0 <= σ < σ_min
    adaptive_p: float = 0.0        # adaptive loss weight 1/(‖Δ‖² + c)^p; p = 0 is plain MSE, the only p whose
                                   # minimiser is the marginal velocity (docs/METHOD.md §7)
    adaptive_c: float = 1e-3
    jvp: Literal["func", "autograd"] = "func"
    jvp_subset: bool = False       # the JVP only on the rows with r != t (the same loss; bench: meanflow_sub)
    path_coupling: Literal["independent", "minibatch_ot"] = "independent"   # how the L_CMFM path pairs x0 with x1
    objective: Literal["meanflow", "imf"] = "meanflow"   # imf: improved MeanFlow (Geng et al. 2025, arXiv 2512.02012),
                                   # ‖u_θ - (r-t)·sg(du/dt) - v‖² with the model's own u(x_t, t, t) as the JVP tangent
    time: TimeConfig = field(default_factory=TimeConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)   # classifier-free guidance (conditional tasks)

    def validate(self, key: str) -> None:
        check(self.sigma >= 0, f"{key}.sigma", "must be >= 0")
        self.guidance.validate(f"{key}.guidance")
        check(self.adaptive_p >= 0, f"{key}.adaptive_p", "must be >= 0")
        check(self.adaptive_c > 0, f"{key}.adaptive_c", "must be > 0")
        self.time.validate(f"{key}.time")


@dataclass
class RMFlowConfig:
    lambda_nll: float = 10.0       # λ1; 0 = plain MeanFlow (10: L_NLL against the plain squared error of L_CMFM, §6)
    lambda_enc: float = 0.0        # λ2, penalty on ‖φ_ω(c)‖² for guided sources
    sigma_min: float = 0.03        # refinement: x̂1 + sqrt(σ_min² - σ²)·ε2
    pairing: Literal["independent", "minibatch_ot", "inverse", "self", "teacher"] = "teacher"   # of L_NLL
    teacher_steps: int = 64        # k of the k-step partner (self / teacher)
    teacher_sampler: Literal["meanflow", "ode"] = "ode"   # the teacher's map: k MeanFlow jumps, or k Euler
                                   # steps of the ODE of its instantaneous velocity u(x, t, t)
    teacher_source: Literal["ema", "model"] = "ema"   # what the frozen teacher is copied from
    cmfm_velocity: Literal["auto", "data", "teacher"] = "auto"   # what L_CMFM regresses in the likelihood stage:
                                   # x1 − x0 (data) or the frozen teacher's velocity u_T(x_t, t, t) (teacher: pairing
                                   # 'teacher' only); auto: teacher with pairing 'teacher', data otherwise
    nll_start_step: int = 10000    # the likelihood stage begins here (stage 2 of the two-stage protocol)
    teacher_bank: int = 50000      # precomputed teacher pairs (0: teacher evaluated every step), at most the L_NLL
                                   # rows that stage 2 reads (train/build.py bank_size); conditional data: for as
                                   # many training conditions, drawn once
    nll_focus: float = 0.5         # share of the L_NLL batch taken from the hardest of 4·B candidates
    nll_batch: float = 0.5         # share of the batch whose pairs form L_NLL (1: every row, a costlier step)
    batch_split: bool = True       # the ⌈nll_batch·B⌉ L_NLL rows replace L_CMFM rows; one forward for both
    focus_errors: Literal["auto", "fresh", "stored"] = "auto"   # fresh: score the focus candidates every step |
                                   # stored: each bank pair's error from its last use (no candidate forward; needs
                                   # teacher_bank and nll_focus) | auto: stored when both are on, else fresh
    teacher_filter: float = 0.99   # q in (0, 1): drop bank pairs whose partner lies farther from the data than the
                                   # q-quantile of the data's own nearest-neighbour distances (0: keep all); for
                                   # unconditional, unmasked data (a conditional bank is not filtered)
    filter_reference: int = 20000  # data points the filter measures against
    refine: Literal["auto", "fixed", "learned", "mixture"] = "auto"   # mixture: flat vector data only; auto:
                                   # mixture where the task has flat vectors, fixed elsewhere
    mixture_components: int = 4    # K of refine 'mixture'
    mixture_hidden: int = 256      # width of the mixture refiner's MLP g(x0, x̂1)
    mixture_pick: Literal["argmax", "sample"] = "argmax"   # how the sampler chooses the mixture component
    sigma_c: float = 1e-3          # guided-encoding source noise

    @property
    def stored_focus_errors(self) -> bool:
        """Whether the focus reads each bank pair's stored error (focus_errors 'stored', or 'auto' with a bank and
        a focus) instead of scoring fresh candidates every step."""
        with_bank = bool(self.teacher_bank and self.nll_focus)
        return self.focus_errors == "stored" or (self.focus_errors == "auto" and with_bank)

    def validate(self, key: str, sigma: float) -> None:
        check(self.lambda_nll >= 0, f"{key}.lambda_nll", "must be >= 0")
        check(self.lambda_enc >= 0, f"{key}.lambda_enc", "must be >= 0")
        check(self.sigma_min > sigma, f"{key}.sigma_min",
              f"must be > flow.sigma ({sigma}); got {self.sigma_min} (the refinement variance σ_min² - σ² must be > 0)")
        check(self.teacher_steps >= 1, f"{key}.teacher_steps", "must be >= 1")
        check(self.nll_start_step >= 0, f"{key}.nll_start_step", "must be >= 0")
        check(not (self.pairing == "teacher" and self.lambda_nll > 0 and self.nll_start_step < 1),
              f"{key}.nll_start_step", "must be >= 1 with pairing 'teacher' (the teacher is frozen at that step)")
        check(not (self.cmfm_velocity == "teacher" and self.pairing != "teacher"), f"{key}.cmfm_velocity",
              "'teacher' regresses the frozen teacher's velocity: needs rmflow.pairing 'teacher' (or 'auto')")
        check(self.teacher_bank >= 0, f"{key}.teacher_bank", "must be >= 0")
        check(0 <= self.nll_focus < 1, f"{key}.nll_focus", "must be in [0, 1)")
        check(0 < self.nll_batch <= 1, f"{key}.nll_batch", "must be in (0, 1]")
        check(not (self.batch_split and self.nll_batch >= 1), f"{key}.batch_split",
              "gives ⌈nll_batch·B⌉ rows to L_NLL and the rest to L_CMFM: needs rmflow.nll_batch < 1 (or "
              "rmflow.batch_split=false: L_NLL on extra rows, the full batch for L_CMFM)")
        check(not (self.focus_errors == "stored" and not (self.teacher_bank and self.nll_focus)),
              f"{key}.focus_errors", "'stored' keeps an error per bank pair: needs teacher_bank > 0 and nll_focus > 0")
        check(0 <= self.teacher_filter < 1, f"{key}.teacher_filter", "must be in [0, 1)")
        check(not (self.teacher_filter > 0 and not self.teacher_bank), f"{key}.teacher_filter",
              "filters the teacher bank: needs rmflow.teacher_bank > 0")
        check(self.filter_reference >= 2, f"{key}.filter_reference", "must be >= 2")
        check(self.mixture_components >= 2, f"{key}.mixture_components", "must be >= 2")
        check(self.mixture_hidden >= 1, f"{key}.mixture_hidden", "must be >= 1")
        check(self.sigma_c >= 0, f"{key}.sigma_c", "must be >= 0")


@dataclass
class TrainConfig:
    steps: int = 12000
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    adam_beta2: float = 0.999      # AdamW's second-moment decay (its β1 is 0.9)
    warmup_steps: int = 100
    lr_schedule: Literal["constant", "cosine", "cosine_stages"] = "cosine_stages"   # cosine: decay to 0 from
                                   # lr_decay_start to steps; cosine_stages: warm-up + decay per stage (restart at
                                   # rmflow.nll_start_step)
    lr_decay_start: int = 0
    ema_decay: float = 0.999
    grad_clip: float = 1.0         # max global grad norm; 0 disables
    log_every: int = 100
    ckpt_every: int = 1000
    device: str = "cpu"
    num_threads: int = 0           # torch CPU threads; 0 = leave as is
    progress: bool = True
    tensorboard: bool = False      # also write the logged scalars to run_dir/tensorboard (pip install tensorboard)
    precision: Literal["fp32", "bf16"] = "fp32"   # bf16: autocast; the JVP target and the losses stay in float32
    compile: bool = False          # torch.compile the whole loss module, falling back to eager if that fails

    def validate(self, key: str) -> None:
        for name in ("steps", "batch_size", "log_every", "ckpt_every"):
            check(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        check(self.lr > 0, f"{key}.lr", "must be > 0")
        check(self.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")
        check(0 < self.adam_beta2 < 1, f"{key}.adam_beta2", "must be in (0, 1)")
        check(self.warmup_steps >= 0, f"{key}.warmup_steps", "must be >= 0")
        check(0 <= self.lr_decay_start < self.steps, f"{key}.lr_decay_start", f"must be in [0, steps={self.steps})")
        check(0 <= self.ema_decay < 1, f"{key}.ema_decay", "must be in [0, 1)")
        check(self.grad_clip >= 0, f"{key}.grad_clip", "must be >= 0")
        check(self.num_threads >= 0, f"{key}.num_threads", "must be >= 0")


@dataclass
class EvalConfig:
    num_samples: int = 10000
    samplers: list[str] = field(default_factory=lambda: ["rmflow", "meanflow@1", "meanflow@8", "meanflow@32"])
    use_ema: bool = True
    batch_size: int = 20000        # samples drawn per network call (lower it for large molecules or images)

    def validate(self, key: str) -> None:
        check(self.num_samples >= 1, f"{key}.num_samples", "must be >= 1")
        check(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        check_samplers(self.samplers, f"{key}.samplers")


def check_samplers(specs, key: str = "") -> None:
    """Every spec parses (parse_sampler), else a ConfigError naming the config key (or, without one, the spec)."""
    for i, spec in enumerate(specs):
        try:
            parse_sampler(spec)
        except ValueError as e:
            where = f"config key '{key}[{i}]'" if key else f"sampler {spec!r}"
            raise ConfigError(f"{where}: {e}") from None


def parse_sampler(spec: str) -> tuple[str, int]:
    """'meanflow@8' -> ('meanflow', 8); 'rmflow' -> ('rmflow', 1); 'fm@100' -> ('fm', 100). A guidance suffix
    (parse_sampler_spec) is checked and left out."""
    return parse_sampler_spec(spec)[:2]


def parse_sampler_spec(spec: str) -> tuple[str, int, float | None]:
    """NAME[@K][:w=ω] -> (name, k, ω or None): 'meanflow@8:w=2.5' -> ('meanflow', 8, 2.5), 'rmflow' ->
    ('rmflow', 1, None). ω is the classifier-free guidance scale (flow/samplers.py), a finite number >= 0."""
    base, colon, suffix = str(spec).partition(":")
    guidance = None
    if colon:
        key, eq, value = suffix.partition("=")
        try:
            guidance = float(value) if key.strip() == "w" and eq else None
        except ValueError:
            pass
        if guidance is None or not math.isfinite(guidance) or guidance < 0:
            raise ValueError(f"bad guidance suffix ':{suffix}' in sampler {spec!r}; write NAME[@K]:w=SCALE with a "
                             "scale >= 0, e.g. meanflow@8:w=2.5")
    name, _, steps = base.partition("@")
    if name not in ("rmflow", "meanflow", "fm", "fm_heun"):
        raise ValueError(f"unknown sampler {name!r}; use rmflow, meanflow@K, fm@K or fm_heun@K (optionally "
                         "followed by :w=SCALE)")
    try:
        k = int(steps) if steps else (100 if name.startswith("fm") else 1)
    except ValueError:
        raise ValueError(f"bad step count in sampler {spec!r}") from None
    if k < 1 or (name == "rmflow" and k != 1):
        raise ValueError(f"bad step count in sampler {spec!r}")
    return name, k, guidance


@dataclass
class MethodSpec:
    """One row of a comparison (`compare:` in YAML, run by `rmflow compare`): the config keys in which the method
    differs from the preset's top level, its samplers, and optionally `from`, the method whose final checkpoint it
    continues (same seed), e.g. stage 2 of RMFlow continuing a MeanFlow run."""
    set: dict = field(default_factory=dict)        # {"rmflow.lambda_nll": 0.0, ...}
    samplers: list[str] = field(default_factory=list)   # empty: eval.samplers
    start_from: str = ""                           # YAML key `from`

    def validate(self, key: str, methods) -> None:
        for k in self.set:
            check(isinstance(k, str) and bool(k), f"{key}.set", f"keys must be dotted config keys, got {k!r}")
        check_samplers(self.samplers, f"{key}.samplers")
        check(not self.start_from or self.start_from in methods, f"{key}.from",
              f"no method named {self.start_from!r}; methods: {', '.join(methods)}")
        check(self.start_from != key.rpartition(".")[2], f"{key}.from", "a method cannot start from itself")


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    out_dir: str = "runs"
    task: Any = None               # the task's data config (dataclass registered by the task)
    model: Any = None              # the task's network config
    flow: FlowConfig = field(default_factory=FlowConfig)
    rmflow: RMFlowConfig = field(default_factory=RMFlowConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seeds: list[int] = field(default_factory=lambda: [0])   # seeds of `rmflow compare`
    compare: dict[str, MethodSpec] = field(default_factory=dict)   # `rmflow compare`: method name -> MethodSpec

    def validate(self) -> "Config":
        self.flow.validate("flow")
        self.rmflow.validate("rmflow", self.flow.sigma)
        self.train.validate("train")
        self.eval.validate("eval")
        check(len(self.seeds) > 0, "seeds", "must list at least one seed")
        check_run_name(self.out_dir, self.name)
        for method, spec in self.compare.items():
            spec.validate(f"compare.{method}", list(self.compare))
        for section in ("task", "model"):
            v = getattr(self, section)
            if hasattr(v, "validate"):
                v.validate(section)
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


def check_run_name(out_dir: str | Path, name: str) -> Path:
    """The run folder Path(out_dir) / name, after checking that the name stays inside out_dir.

    Raises ConfigError naming the key 'name' for an empty name, an absolute path, a '..' component, or a name whose
    resolved folder (symlinks followed) is out_dir itself or lies outside it. Subfolders (ring/meanflow-s0) are fine.
    """
    def refuse(why: str):
        raise ConfigError(f"config key 'name': {name!r} {why}; a run name must be a relative folder path inside "
                          f"out_dir={str(out_dir)!r}, such as 'ring/meanflow-s0'")

    if not isinstance(name, str) or not name.strip():
        refuse("is empty" if isinstance(name, str) or name is None else f"is a {type(name).__name__}, not a string")
    if "\x00" in name:
        refuse("contains a NUL character")
    if Path(name).is_absolute() or name.startswith(("/", "\\")):
        refuse("is an absolute path")
    if ".." in re.split(r"[\\/]", name):
        refuse("contains a '..' component")
    root, run = Path(out_dir).resolve(), (Path(out_dir) / name).resolve()
    if run == root:
        refuse("names out_dir itself")
    if root not in run.parents:
        refuse(f"resolves to {run}, outside out_dir (through a symbolic link?)")
    return Path(out_dir) / name


# --------------------------------------------------------------------------------------------- dict <-> classes
def from_dict(cls, data: dict, key: str = ""):
    """Build dataclass `cls` from a dict, rejecting unknown keys and coercing scalar types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{key or '<root>'}': expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"'{key}.{unknown[0]}'" if key else f"'{unknown[0]}'"
        raise ConfigError(f"unknown config key {where}; allowed here: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        sub = f"{key}.{name}" if key else name
        kwargs[name] = _coerce(hints[name], value, sub)
    return cls(**kwargs)


def _coerce(tp, value, key):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is MethodSpec:
        if isinstance(value, dict) and "from" in value:
            value = {("start_from" if k == "from" else k): v for k, v in value.items()}
        return from_dict(MethodSpec, value, key)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key '{key}': must be one of {', '.join(map(repr, args))}; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return {k: _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()} if args else dict(value)
    if tp in (int, float, bool, str):
        if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if tp is float and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"config key '{key}': expected {tp.__name__}, got {value!r}")
    return value


def to_dict(obj) -> Any:
    if isinstance(obj, MethodSpec):
        out = {"set": to_dict(obj.set), "samplers": list(obj.samplers)}
        return {**out, "from": obj.start_from} if obj.start_from else out
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ['train.steps=100', 'rmflow.pairing=teacher', ...] to a nested dict (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        path, _, raw = item.partition("=")
        keys = path.strip().split(".")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: the value is not valid YAML") from None
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{k}' is not a section")
        node[keys[-1]] = value
    return data


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path_or_preset: str) -> dict:
    """A YAML file path, or the name of a preset in rmflow/configs/ (e.g. 'ring')."""
    path = Path(path_or_preset)
    if not path.exists():
        path = PRESET_DIR / f"{path_or_preset}.yaml"
    if not path.exists():
        presets = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
        raise ConfigError(f"no config file or preset named {path_or_preset!r}; presets: {presets}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    if "base" in data:  # presets may extend another preset; a `compare` section replaces the base's whole
        base = read_yaml(data.pop("base"))
        if "compare" in data:
            base.pop("compare", None)
        data = deep_merge(base, data)
    return data


def build_config(data: dict) -> Config:
    """Resolve the task's sections and validate everything."""
    from .tasks import get_task
    data = dict(data)
    task_data = dict(data.pop("task", None) or {})
    spec = get_task(task_data.setdefault("name", "synthetic"))
    model_data = data.pop("model", None) or {}
    cfg = from_dict(Config, data)
    cfg.task = from_dict(spec.data_config, task_data, "task")
    cfg.model = from_dict(spec.model_config, model_data, "model")
    return cfg.validate()


def load_config(path_or_preset: str, overrides: list[str] | None = None) -> Config:
    return build_config(apply_overrides(read_yaml(path_or_preset), overrides or []))


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
