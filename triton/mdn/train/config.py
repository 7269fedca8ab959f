"""The resolved training job (what Go sends as the ``train`` job's params; docs/TRAINING.md).

    {"name": str, "out_dir": str, "resume": bool,
     "model": {...ModelConfig...}, "train": {...}, "optim": {...}, "data": {...DataConfig...}, "parallel": {...}}

Go resolves and validates everything first (configs/*.toml + --set); this module re-checks types and ranges so a
hand-written spec fails with a clear message too. Unknown keys are errors.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ..data.sources import DataConfig
from ..models.config import ModelConfig

SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "bf16", "fp32")
STRATEGIES = ("auto", "none", "ddp", "fsdp")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainSection:
    steps: int = 1000
    batch_size: int = 8  # sequences per micro-batch per process
    seq_len: int = 2048
    grad_accum: int = 1
    seed: int = 42
    precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    compile: bool = False
    checkpoint_activations: bool = False  # recompute each block in the backward (less memory, ~1/3 more compute)
    device: str = "auto"
    log_every: int = 1
    ckpt_every: int = 0  # 0: only at the end and when interrupted
    save_checkpoints: bool = True  # false: none at all (throughput runs)
    keep_checkpoints: int = 2
    max_skipped: int = 10  # consecutive non-finite steps tolerated before the job fails with kind "nan"
    peak_tflops: float = 0.0  # 0: from the GPU name (mdn.models.flops.PEAK_BF16)
    stop_after: int = 0  # >0: checkpoint and stop after this many steps (tests; simulates an interruption)
    stop_grace_s: float = 120.0  # informational for the Go side (SIGTERM -> SIGKILL delay)


@dataclass
class OptimSection:
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-15
    weight_decay: float = 0.1
    warmup_steps: int = 1024
    min_lr_ratio: float = 0.1
    schedule: str = "cosine"
    clip: float = 1.0  # max grad norm; 0 disables clipping (the norm is still measured)


@dataclass
class ParallelSection:
    strategy: str = "auto"  # auto: none for 1 process, fsdp when params >= fsdp_min_params, else ddp
    fsdp_min_params: int = 300_000_000
    # launch-side keys (used by Go to build the torchrun command; ignored here)
    nproc_per_node: Any = "auto"
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str = ""
    rdzv_id: str = ""
    rdzv_backend: str = "c10d"
    master_port: int = 0


def _section(cls, name: str, d: dict | None):
    d = dict(d or {})
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"{name}.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    out = cls()
    for k, v in d.items():
        default = getattr(out, k)
        if k == "nproc_per_node":  # "auto" or an int; a launch key, not used here
            pass
        elif isinstance(default, bool):
            if not isinstance(v, bool):
                raise ValueError(f"{name}.{k} = {v!r}: expected true or false")
        elif isinstance(default, int) and not isinstance(default, bool):
            if isinstance(v, bool) or not isinstance(v, int):
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                else:
                    raise ValueError(f"{name}.{k} = {v!r}: expected an integer")
        elif isinstance(default, float):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{name}.{k} = {v!r}: expected a number")
            v = float(v)
        elif isinstance(default, str) and not isinstance(v, str):
            raise ValueError(f"{name}.{k} = {v!r}: expected a string")
        setattr(out, k, v)
    return out


@dataclass
class TrainJob:
    name: str
    out_dir: str
    resume: bool
    model: ModelConfig
    train: TrainSection
    optim: OptimSection
    data: DataConfig
    parallel: ParallelSection
    raw: dict

    @classmethod
    def from_params(cls, p: dict) -> "TrainJob":
        known = {"name", "out_dir", "resume", "model", "train", "optim", "data", "parallel", "python", "launch"}
        unknown = sorted(set(p) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown key in the train job (known: {', '.join(sorted(known))})")
        if not p.get("out_dir"):
            raise ValueError("out_dir is empty: the train job needs a run directory")
        job = cls(name=str(p.get("name", "run")), out_dir=str(p["out_dir"]), resume=bool(p.get("resume", False)),
                  model=ModelConfig.from_dict(p.get("model") or {}), train=_section(TrainSection, "train", p.get("train")),
                  optim=_section(OptimSection, "optim", p.get("optim")), data=DataConfig.from_dict(p.get("data") or {}),
                  parallel=_section(ParallelSection, "parallel", p.get("parallel")), raw=p)
        job.validate()
        return job

    def validate(self) -> None:
        t, o, par = self.train, self.optim, self.parallel

        def bad(key, val, want):
            raise ValueError(f"{key} = {val!r}: expected {want}")

        for key in ("steps", "batch_size", "seq_len", "grad_accum", "log_every", "keep_checkpoints"):
            if getattr(t, key) < 1:
                bad("train." + key, getattr(t, key), "an integer >= 1")
        for key in ("ckpt_every", "max_skipped", "stop_after"):
            if getattr(t, key) < 0:
                bad("train." + key, getattr(t, key), "an integer >= 0")
        if t.precision not in PRECISIONS:
            bad("train.precision", t.precision, "one of " + ", ".join(PRECISIONS))
        if t.device not in DEVICES:
            bad("train.device", t.device, "one of " + ", ".join(DEVICES))
        if o.lr <= 0:
            bad("optim.lr", o.lr, "> 0")
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            bad("optim.betas", o.betas, "two numbers in [0, 1)")
        if o.eps <= 0:
            bad("optim.eps", o.eps, "> 0")
        if o.weight_decay < 0:
            bad("optim.weight_decay", o.weight_decay, ">= 0")
        if o.warmup_steps < 0:
            bad("optim.warmup_steps", o.warmup_steps, ">= 0")
        if not 0 <= o.min_lr_ratio <= 1:
            bad("optim.min_lr_ratio", o.min_lr_ratio, "in [0, 1]")
        if o.schedule not in SCHEDULES:
            bad("optim.schedule", o.schedule, "one of " + ", ".join(SCHEDULES))
        if o.clip < 0:
            bad("optim.clip", o.clip, ">= 0 (0 disables clipping)")
        if par.strategy not in STRATEGIES:
            bad("parallel.strategy", par.strategy, "one of " + ", ".join(STRATEGIES))
