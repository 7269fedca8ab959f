"""The training loop (one process per GPU under torchrun, or one CPU/GPU process alone).

AdamW (no weight decay on norms, biases and the mixers' per-head scalars), warmup + cosine, gradient
accumulation, clipping, non-finite steps skipped (the job fails after ``max_skipped`` in a row), bf16 autocast
(or FSDP2 bf16 parameters with fp32 reduction), optional per-block torch.compile, DCP checkpoints every
``ckpt_every`` steps, at the end and on SIGTERM/SIGINT, and ``resume`` from the newest checkpoint with the same
loss curve (the data order is a function of the step, the LR a function of the step, and model + optimizer state
are restored exactly).
"""
from __future__ import annotations

import math
import os
import resource
import signal
import time
from contextlib import nullcontext
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.sources import make_source
from ..models.build import build_model, count_parameters
from ..models.flops import flops_per_token, peak_flops
from . import checkpoint
from .config import TrainJob
from .distributed import DistInfo, all_reduce_mean, any_rank, choose_strategy, setup, teardown, wrap
from .schedule import lr_at


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite steps (reported as error kind ``nan``)."""


class Reporter:
    """Where events go: the runner's JobContext on rank 0, nowhere on the other ranks."""

    def __init__(self, progress: Callable | None = None, metric: Callable | None = None,
                 log: Callable | None = None):
        self._progress, self._metric, self._log = progress, metric, log

    def progress(self, done, total, msg=""):
        if self._progress:
            self._progress(done, total, msg)

    def metric(self, data):
        if self._metric:
            self._metric(data)

    def log(self, msg):
        if self._log:
            self._log(msg)


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop checkpoints and stops at the end of the current step."""

    def __init__(self):
        self.stop = False
        self.signal = None
        self._old = {}

    def _handle(self, signum, frame):
        self.stop = True
        self.signal = signal.Signals(signum).name

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def param_groups(model: nn.Module, weight_decay: float):
    """Decay the matrices; not the norms, biases, or parameters marked ``_no_weight_decay`` (spec §5.1 table)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if getattr(p, "_no_weight_decay", False) or p.ndim < 2:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _peak_mem_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def _grad_norm(model: nn.Module, clip: float) -> torch.Tensor:
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"), foreach=True)
    if hasattr(norm, "full_tensor"):  # DTensor under FSDP2
        norm = norm.full_tensor()
    return norm


def train(job: TrainJob, reporter: Reporter | None = None, stop: StopFlag | None = None) -> tuple[dict, list[dict]]:
    """Run (or resume) the job. Returns (summary, metric history). Raises ValueError for bad input.

    ``stop``: an installed StopFlag (the runner job installs one before the heavy imports); else one is
    installed for the duration of the call."""
    rep = reporter or Reporter()
    t_cfg = job.train
    info = setup(t_cfg.device)
    if not info.is_main:
        rep = Reporter()
    threads = torch.get_num_threads()
    if info.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Tiny CPU models are all small ops: extra threads only add contention (10x slower on a busy box).
        torch.set_num_threads(1)
    try:
        if stop is not None:
            return _train(job, info, rep, stop)
        with StopFlag() as own:
            return _train(job, info, rep, own)
    finally:
        torch.set_num_threads(threads)
        teardown(info)


def _train(job: TrainJob, info: DistInfo, rep: Reporter, stop: StopFlag) -> tuple[dict, list[dict]]:
    t_cfg, o_cfg, mcfg = job.train, job.optim, job.model
    dev = info.device
    bf16 = t_cfg.precision == "bf16" or (t_cfg.precision == "auto" and dev.type == "cuda")
    os.makedirs(job.out_dir, exist_ok=True)

    # Same seed on every rank: replicas (DDP) and full models before sharding (FSDP) start identical.
    model = build_model(mcfg, device=dev, seed=t_cfg.seed)
    counts = count_parameters(model)
    strategy = choose_strategy(job.parallel.strategy, info.world, counts["total"], job.parallel.fsdp_min_params)
    model.activation_checkpointing = t_cfg.checkpoint_activations
    if t_cfg.compile:
        for block in model.layers:
            block.compile()
    model = wrap(model, strategy, info, bf16)
    core = model.module if hasattr(model, "module") else model
    fused = dev.type == "cuda" and strategy != "fsdp"  # one kernel per step; foreach for FSDP's DTensors
    opt = torch.optim.AdamW(param_groups(model, o_cfg.weight_decay), lr=o_cfg.lr, betas=tuple(o_cfg.betas),
                            eps=o_cfg.eps, fused=fused or None)

    start = 0
    resumed_from = None
    if job.resume:
        found = checkpoint.latest(job.out_dir)
        if found is not None:
            path, _ = found
            meta = checkpoint.peek_meta(path)
            if meta.get("model") != mcfg.to_dict():
                diff = sorted(k for k in mcfg.to_dict() if (meta.get("model") or {}).get(k) != mcfg.to_dict()[k])
                raise ValueError(f"cannot resume from {path}: it was made with a different model config "
                                 f"(model.{diff[0] if diff else '?'} differs)")
            meta = checkpoint.load(path, model, opt, info)
            start = int(meta["step"])
            resumed_from = path
            rep.log(f"resumed from {path} at step {start}")
        else:
            rep.log(f"--resume: no checkpoint in {checkpoint.ckpt_root(job.out_dir)}; starting from step 0")

    data = make_source(job.data, vocab_size=mcfg.vocab_size, seed=t_cfg.seed, rank=info.rank, world=info.world)
    B, T, GA = t_cfg.batch_size, t_cfg.seq_len, t_cfg.grad_accum
    tokens_per_step = B * T * GA * info.world
    fpt = flops_per_token(mcfg, T, counts["non_embedding"])
    peak = t_cfg.peak_tflops * 1e12 if t_cfg.peak_tflops > 0 else (
        peak_flops(torch.cuda.get_device_name(dev)) if dev.type == "cuda" else None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (bf16 and dev.type == "cuda" and strategy != "fsdp") \
        else (torch.autocast("cpu", dtype=torch.bfloat16) if bf16 and dev.type == "cpu" else nullcontext())

    meta_base = {"name": job.name, "model": mcfg.to_dict(), "world_size": info.world, "strategy": strategy}
    history: list[dict] = []
    skipped_total = skipped_run = 0
    first_loss = last_loss = None
    interrupted = None
    last_ckpt = resumed_from
    steady_tokens, steady_time = 0, 0.0
    warm_steps = 3 if t_cfg.compile else 2  # first steps: autotuning / compilation
    t_start = time.time()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rep.progress(start, t_cfg.steps, "training")

    step = start
    while step < t_cfg.steps:
        if stop.stop and info.world == 1 and step == start:
            interrupted = stop.signal  # stopped before the first step: nothing new to save
            break
        t0 = time.perf_counter()
        lr = lr_at(step, lr=o_cfg.lr, steps=t_cfg.steps, warmup_steps=o_cfg.warmup_steps,
                   min_lr_ratio=o_cfg.min_lr_ratio, schedule=o_cfg.schedule)
        for g in opt.param_groups:
            g["lr"] = lr
        loss_sum = torch.zeros((), device=dev)
        for micro in range(GA):
            last_micro = micro == GA - 1
            idx = (step * GA + micro) * info.world + info.rank
            batch = data.batch(idx, B, T).to(dev, non_blocking=True)  # [B, T+1]
            inp, tgt = batch[:, :-1], batch[:, 1:]
            if strategy == "ddp" and not last_micro:
                sync = model.no_sync()
            else:
                sync = nullcontext()
            if strategy == "fsdp":
                model.set_requires_gradient_sync(last_micro)
            with sync:
                with autocast:
                    logits = model(inp)  # [B, T, V]
                loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tgt.reshape(-1))
                (loss / GA).backward()
            loss_sum += loss.detach()
        gnorm = _grad_norm(model, o_cfg.clip)
        loss_avg = all_reduce_mean(loss_sum / GA, info)
        loss_val, gnorm_val = float(loss_avg.item()), float(gnorm.item())
        finite = math.isfinite(loss_val) and math.isfinite(gnorm_val)
        if finite:
            opt.step()
            skipped_run = 0
        else:
            skipped_total += 1
            skipped_run += 1
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        dt = time.perf_counter() - t0
        step += 1
        if step - start > warm_steps:
            steady_tokens += tokens_per_step
            steady_time += dt
        if finite:
            first_loss = loss_val if first_loss is None else first_loss
            last_loss = loss_val
        tps = tokens_per_step / dt
        rec = {"step": step, "loss": loss_val, "lr": lr, "grad_norm": gnorm_val, "tokens": step * tokens_per_step,
               "tokens_per_s": tps, "tokens_per_s_per_gpu": tps / info.world,
               "mfu": (fpt * tps / info.world / peak) if peak else None,
               "peak_mem_gb": _peak_mem_gb(dev), "step_time_s": dt, "skipped": skipped_total}
        if not finite:
            rec["skipped_step"] = True
        history.append(rec)
        if step % t_cfg.log_every == 0 or step == t_cfg.steps or step == start + 1 or not finite:
            rep.metric(rec)
        rep.progress(step, t_cfg.steps, f"loss {loss_val:.4f}")
        if skipped_run > t_cfg.max_skipped:
            raise NonFiniteError(f"{skipped_run} consecutive steps with a non-finite loss or gradient norm "
                                 f"(last at step {step}); lower optim.lr or check the data")
        want_stop = stop.stop or (t_cfg.stop_after > 0 and step >= t_cfg.stop_after and step < t_cfg.steps)
        want_stop = any_rank(want_stop, info)
        periodic = t_cfg.ckpt_every > 0 and step % t_cfg.ckpt_every == 0
        if t_cfg.save_checkpoints and (periodic or want_stop or step == t_cfg.steps):
            last_ckpt = checkpoint.save(job.out_dir, step, model, opt, info, meta_base,
                                        keep=t_cfg.keep_checkpoints)
        if want_stop:
            interrupted = stop.signal or "stop_after"
            rep.log(f"stopped at step {step} ({interrupted}); checkpoint {last_ckpt}")
            break

    summary = {
        "name": job.name, "steps_done": step, "steps": t_cfg.steps, "start_step": start,
        "interrupted": interrupted, "resumed_from": resumed_from, "checkpoint": last_ckpt,
        "first_loss": first_loss, "final_loss": last_loss, "skipped": skipped_total,
        "tokens_per_step": tokens_per_step, "tokens_per_s": (steady_tokens / steady_time) if steady_time else None,
        "tokens_per_s_per_gpu": (steady_tokens / steady_time / info.world) if steady_time else None,
        "flops_per_token": fpt, "peak_flops": peak,
        "mfu": (fpt * steady_tokens / steady_time / info.world / peak) if (peak and steady_time) else None,
        "peak_mem_gb": _peak_mem_gb(dev), "params": counts, "world_size": info.world, "strategy": strategy,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "precision": "bf16" if bf16 else "fp32", "compile": t_cfg.compile, "elapsed_s": time.time() - t_start,
        "mixer_impl": _mixer_impls(core),
        "op_env": _op_env(),
    }
    return summary, history


def _op_env() -> dict:
    """The kernel knobs of the environment (MDN_SCAN_FORM, MDN_INTRA, ...): which op variant the run trained with."""
    from ..bench.check import env_knobs

    return dict(env_knobs())


def _mixer_impls(model: nn.Module) -> dict:
    """Which implementation each linear mixer used in the latest step (so a result says whether the Triton op ran)."""
    from ..layers.momentum_deltanet import LAST_IMPL

    kinds = {type(m).__name__ for m in model.modules()}
    want = {"mdn": "MomentumDeltaNet" in kinds, "gdn": "GatedDeltaNet" in kinds}
    return {k: v for k, v in LAST_IMPL.items() if want.get(k)}
