"""Scale-out and speed: torchrun/DDP, per-rank seeds, bf16 autocast and torch.compile of the loss module.

    torchrun --nproc-per-node N -m rmflow train CONFIG [key=value ...]          (one machine, N processes)
    torchrun --nnodes M --node-rank I --rdzv-endpoint HOST:PORT --nproc-per-node N -m rmflow train ...

What is wrapped, and why gradients stay synchronised
----------------------------------------------------
The whole loss, `RMFlowObjective` (one nn.Module whose forward returns per-sample losses), is wrapped, not the
network: `torch.func.jvp` cannot run through DistributedDataParallel, and a call to the inner module skips the
all-reduce silently. Inside the objective the JVP of L_CMFM runs under `no_grad` on the inner network (it only
enters the stop-gradient target), and every gradient-carrying network call (u_θ(x_t, t, r) of L_CMFM, the one-step
map of L_NLL, the encoder φ_ω) happens inside `forward` of the wrapped module, so DDP's reducer sees all of them.

The trainer reduces the per-sample losses with a mean on each rank and DDP averages the gradients over ranks:
with equal per-rank batches B this is exactly the gradient of the mean over the combined batch N·B (the adaptive
weights w = sg(1/(‖Δ‖² + c)^p) are per sample, so they do not break this). `train.batch_size` is per process.
The minibatch-OT coupling/pairing and the k-step teacher act inside each rank's batch.

Wrapping order: Autocast(objective) -> DDP -> torch.compile (PyTorch's advice: wrap in DDP, then compile).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


PRECISIONS = ("fp32", "bf16")


# ------------------------------------------------------------------------------------------- process group
@dataclass
class DistContext:
    """Where this process sits in the job. The default is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, writes checkpoints and evaluates."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_with_torchrun() -> bool:
    """True when torchrun (or another launcher setting RANK/WORLD_SIZE) started more than one process."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str = "cpu", backend: str | None = None, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT); a single process when WORLD_SIZE is unset or 1.

    device: the config's train.device; with "cuda" each process takes cuda:LOCAL_RANK. backend: "nccl" on CUDA,
    "gloo" on CPU unless given.
    """
    dev = torch.device(device)
    if not launched_with_torchrun():
        return DistContext(device=dev)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("config key 'train.device': 'cuda' requested but CUDA is not available")
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices visible")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return DistContext(rank, world, local, dev, dist.get_backend())


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The data/noise seed of a rank: `seed` itself for rank 0 at step 0 (a single-process run is unchanged),
    an unrelated 63-bit seed otherwise, so ranks draw different batches and noise."""
    if rank == 0 and step == 0:
        return int(seed)
    digest = hashlib.sha256(f"rmflow:{seed}:{rank}:{step}".encode()).hexdigest()
    return int(digest[:15], 16)


def gather_rng_states(ctx: DistContext) -> list[torch.Tensor]:
    """torch's CPU RNG state of every rank (a collective: every rank must call it). Index = rank."""
    state = torch.get_rng_state()
    if not ctx.distributed:
        return [state]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, state)
    return [torch.as_tensor(s, dtype=torch.uint8) for s in out]


# ------------------------------------------------------------------------------------------------ precision
def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.precision` on `device`, or None for plain float32.

    bf16 autocast runs on CUDA (when the card supports bf16) and on CPU (PyTorch's CPU autocast); a CUDA card
    without bf16 falls back to float32 with a warning.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"config key 'train.precision': must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        warnings.warn("train.precision=bf16: this CUDA device has no bf16 support; training in float32")
        return None
    if device.type not in ("cuda", "cpu"):
        warnings.warn(f"train.precision=bf16: no autocast on device type {device.type!r}; training in float32")
        return None
    return torch.bfloat16


class Autocast(nn.Module):
    """Runs the wrapped loss module under torch.autocast(device_type, dtype); outputs keep their own dtypes
    (the objective returns float32 per-sample losses). `.module` is the wrapped module (see flow.jvp.unwrap)."""

    def __init__(self, module: nn.Module, device_type: str, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.module, self.device_type, self.dtype = module, device_type, dtype

    def forward(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.module(*args, **kwargs)


# ---------------------------------------------------------------------------------------------- compilation
class CompiledWithFallback(nn.Module):
    """torch.compile(module) that falls back to the eager module, for good, when compiling or running the compiled
    version raises (no C++ compiler, an operator Dynamo cannot trace, ...). `failure` keeps the reason.

    Compilation is lazy: the first call compiles (this can take a minute on CPU). A failure during the first
    backward (AOTAutograd compiles the backward lazily) is not caught here; it surfaces from loss.backward().
    """

    def __init__(self, module: nn.Module, backend: str = "inductor", mode: str | None = None):
        super().__init__()
        self.module = module
        self.failure: str | None = None
        try:
            compiled = torch.compile(module, backend=backend, mode=mode)
        except Exception as e:  # e.g. an unknown backend
            compiled, self.failure = None, f"{type(e).__name__}: {e}"
            warnings.warn(f"train.compile: torch.compile failed ({self.failure}); running eagerly")
        self.__dict__["_compiled"] = compiled   # not a registered submodule: parameters are listed once

    @property
    def compiled(self) -> bool:
        return self.__dict__["_compiled"] is not None

    def forward(self, *args, **kwargs):
        compiled = self.__dict__["_compiled"]
        if compiled is not None:
            try:
                return compiled(*args, **kwargs)
            except Exception as e:
                self.failure = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
                self.__dict__["_compiled"] = None
                warnings.warn(f"train.compile: the compiled loss failed ({self.failure}); "
                              "falling back to eager execution")
        return self.module(*args, **kwargs)


# ------------------------------------------------------------------------------------------------- assembly
def prepare_loss_module(objective: nn.Module, device: torch.device, ctx: DistContext | None = None,
                        precision: str = "fp32", compile: bool = False, compile_backend: str = "inductor",
                        find_unused_parameters: bool = True) -> nn.Module:
    """The module the trainer calls: objective [-> Autocast] [-> DDP] [-> compiled with fallback].

    Calling it is calling the objective: (x_data, cond, mask) -> ObjectiveOutput with (B,) float32 losses.
    find_unused_parameters: DDP must tolerate parameters that a step does not use (a learned refinement scale
    before the likelihood stage starts, a condition encoder of an unconditional batch).
    """
    ctx = ctx or DistContext(device=device)
    module: nn.Module = objective
    dtype = resolve_precision(precision, device)
    if dtype is not None:   # the objective computes the JVP target and the losses in float32 itself
        module = Autocast(module, device.type, dtype)
    if ctx.distributed:
        if not dist.is_initialized():
            raise RuntimeError("a distributed DistContext needs an initialised process group (init_distributed)")
        from torch.nn.parallel import DistributedDataParallel as DDP
        module = DDP(module, device_ids=[device.index] if device.type == "cuda" else None,
                     find_unused_parameters=find_unused_parameters)
    if compile:
        module = CompiledWithFallback(module, backend=compile_backend)
    return module


def all_reduce_mean(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Average logged scalars over ranks (a collective); identity in a single process."""
    if not ctx.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64,
                     device=ctx.device if ctx.backend == "nccl" else "cpu")
    dist.all_reduce(t)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, t.tolist())}
