"""Held-out loss / perplexity of a training checkpoint, at the training length and beyond (length extrapolation).

    res = evaluate_run(EvalConfig(run_dir="runs/tiny", model={...}, data={...}, seq_len=64))

For each length L = factor × seq_len (factors 1, 2, 4 by default) the model reads windows of L + 1 tokens from a
held-out version of the data source it was trained on and scores every next-token prediction. Besides the mean
loss over the whole window, the loss is split by position into segments [0, T), [T, 2T), [2T, 4T) (T = seq_len),
so extrapolation shows where it breaks: the [T, 2T) segment of a 2× window holds positions never seen in training.

Held-out data, by source (``held_out_data``):
  bytes      the same generator with ``corpus_seed + HELD_OUT_SEED_OFFSET``: new stories, same distribution
  synthetic  uniform tokens from another seed (the loss is ln(vocab) for any model; a pipeline check)
  shards     ``val_path`` when given (shards of the same tokenizer); otherwise the training shards themselves,
             and the result says ``held_out: false``
  hf         ``hf_split`` when given (e.g. "validation"); otherwise the training split, ``held_out: false``

Windows are drawn by the source's seeded sampler (seed ``EVAL_SEED_TAG`` apart from training), so a run gives
the same numbers every time. Checkpoints are the trainer's DCP directories (mdn.train.checkpoint); only the model
weights are read.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

HELD_OUT_SEED_OFFSET = 1_000_003
EVAL_SEED_TAG = 0xE7A1
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class EvalConfig:
    run_dir: str = ""
    checkpoint: str = ""  # a checkpoint directory; "" = the latest in run_dir/checkpoints
    model: dict | None = None  # the run's model config; None = from the checkpoint's meta.json
    data: dict = field(default_factory=dict)  # the run's data config (mdn.data.DataConfig keys)
    seq_len: int = 0  # the training length T
    factors: list[int] = field(default_factory=lambda: [1, 2, 4])
    batch_size: int = 8  # sequences per batch at length T (scaled down by the factor at longer lengths)
    eval_tokens: int = 65536  # scored tokens per length (rounded up to whole windows)
    val_path: str = ""  # shards: held-out shard file/dir/glob
    hf_split: str = ""  # hf: held-out split
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU

    def validate(self) -> "EvalConfig":
        def bad(key, want):
            raise ValueError(f"{key} = {getattr(self, key)!r}: expected {want}")

        def pos_int(key):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(key, "an integer >= 1")

        if not self.checkpoint and not self.run_dir:
            raise ValueError("run_dir and checkpoint are both empty: name the run directory or a checkpoint")
        for key in ("seq_len", "batch_size", "eval_tokens"):
            pos_int(key)
        if not isinstance(self.factors, list) or not self.factors or any(
                isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in self.factors):
            bad("factors", "a non-empty list of integers >= 1 (multiples of the training length)")
        if self.precision not in PRECISIONS:
            bad("precision", "one of " + ", ".join(PRECISIONS))
        if not isinstance(self.device, str) or not (self.device in ("auto", "cpu", "cuda")
                                                    or self.device.startswith("cuda:")):
            bad("device", "auto, cpu, cuda or cuda:N")
        if not isinstance(self.data, dict):
            bad("data", "a table of data config keys")
        if self.model is not None and not isinstance(self.model, dict):
            bad("model", "a table of model config keys")
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvalConfig":
        if not isinstance(d, dict):
            raise ValueError(f"eval params must be an object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown eval parameter (known: {', '.join(sorted(names))})")
        kw = {k: (int(v) if isinstance(v, float) and v.is_integer() and k in ("seq_len", "batch_size",
                                                                               "eval_tokens", "seed") else v)
              for k, v in d.items()}
        return cls(**kw).validate()


# ---------------------------------------------------------------------------------------------- checkpoints
def find_checkpoint(cfg: EvalConfig) -> str:
    """The checkpoint directory to evaluate (explicit, else the latest complete one of the run)."""
    from mdn.train import checkpoint

    if cfg.checkpoint:
        path = cfg.checkpoint
        if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "meta.json")):
            raise ValueError(f"checkpoint = {path!r}: not a checkpoint directory (no meta.json)")
        return path
    found = checkpoint.latest(cfg.run_dir)
    if found is None:
        raise ValueError(f"run_dir = {cfg.run_dir!r}: no checkpoint in {checkpoint.ckpt_root(cfg.run_dir)}")
    return found[0]


def load_model(path: str, model_cfg: dict | None, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """Build the model and load the checkpoint's weights (the optimizer state is not read)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    from mdn.models import ModelConfig, build_model

    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    saved = meta.get("model")
    if model_cfg is None:
        if saved is None:
            raise ValueError(f"{path}/meta.json has no model config; pass the run's model config")
        model_cfg = saved
    elif saved is not None and ModelConfig.from_dict(saved).to_dict() != ModelConfig.from_dict(model_cfg).to_dict():
        a, b = ModelConfig.from_dict(saved).to_dict(), ModelConfig.from_dict(model_cfg).to_dict()
        key = next(k for k in a if a[k] != b.get(k))
        raise ValueError(f"model.{key}: the run config says {b.get(key)!r} but checkpoint {path} was trained with "
                         f"{a[key]!r}")
    model = build_model(model_cfg, device=device, init=False)
    state = {"model": get_model_state_dict(model)}
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to.*")
        dcp.load(state, checkpoint_id=path, no_dist=True)
    set_model_state_dict(model, state["model"])
    model.eval()
    return model, meta


# ---------------------------------------------------------------------------------------------- data
def held_out_data(data: dict, val_path: str = "", hf_split: str = "") -> tuple[dict, bool, str]:
    """(data config for evaluation, whether it is disjoint from training, a one-line note)."""
    from mdn.data import DataConfig

    d = DataConfig.from_dict(dict(data)).__dict__.copy()
    src = d["source"]
    if src == "bytes":
        d["corpus_seed"] = d["corpus_seed"] + HELD_OUT_SEED_OFFSET
        return d, True, f"generated text, corpus_seed {d['corpus_seed']} (training used {data.get('corpus_seed', 1234)})"
    if src == "synthetic":
        return d, True, "uniform random tokens from another seed (loss = ln(vocab) for any model)"
    if src == "shards":
        if val_path:
            d["path"] = val_path
            return d, True, f"held-out shards {val_path}"
        return d, False, "no val_path given: windows of the training shards (not held out)"
    if src == "hf":
        if hf_split:
            d["hf_split"] = hf_split
            return d, True, f"split {hf_split!r} of {d['hf_dataset']}"
        return d, False, f"no hf_split given: the training split {d['hf_split']!r} (not held out)"
    raise ValueError(f"data.source = {src!r}: no held-out rule")  # pragma: no cover (DataConfig checks)


# ---------------------------------------------------------------------------------------------- scoring
def segment_bounds(length: int, seq_len: int) -> list[tuple[int, int]]:
    """Position segments [0, T), [T, 2T), [2T, 4T), [4T, 8T), ... clipped to ``length``."""
    out, lo, hi = [], 0, seq_len
    while lo < length:
        out.append((lo, min(hi, length)))
        lo, hi = hi, hi * 2
    return out


@torch.no_grad()
def score_length(model: torch.nn.Module, source, length: int, seq_len: int, batch: int, tokens: int,
                 index0: int, device: torch.device, bf16: bool) -> dict:
    """Mean next-token loss over ``ceil(tokens / length)`` windows of ``length`` (+1) tokens, and per segment."""
    windows = max(1, math.ceil(tokens / length))
    segs = segment_bounds(length, seq_len)
    pos_loss = torch.zeros(length, dtype=torch.float64)
    done, index = 0, index0
    while done < windows:
        b = min(batch, windows - done)
        x = source.batch(index, b, length).to(device)  # [b, L+1]
        index += 1
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else torch.autocast(device.type, enabled=False)
        with ctx:
            logits = model(x[:, :-1])  # [b, L, vocab]
        nll = F.cross_entropy(logits.float().transpose(1, 2), x[:, 1:], reduction="none")  # [b, L]
        pos_loss += nll.double().sum(0).cpu()
        done += b
    pos_loss /= windows
    loss = float(pos_loss.mean())
    out = {"seq_len": length, "factor": length // seq_len if length % seq_len == 0 else length / seq_len,
           "loss": loss, "ppl": _ppl(loss), "tokens": windows * length, "windows": windows, "segments": []}
    for lo, hi in segs:
        seg = float(pos_loss[lo:hi].mean())
        out["segments"].append({"from": lo, "to": hi, "loss": seg, "ppl": _ppl(seg)})
    return out


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device = {name!r}: no CUDA device is available")
    return torch.device(name)


def evaluate_run(cfg: EvalConfig, on_metric: Callable[[dict], None] | None = None,
                 on_progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Evaluate a checkpoint at every length of ``cfg.factors``; see the module docstring for the result."""
    from mdn.data import make_source

    cfg.validate()
    t0 = time.perf_counter()
    device = _device(cfg.device)
    threads = torch.get_num_threads()
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # small ops: extra threads only add contention
    try:
        path = find_checkpoint(cfg)
        model, meta = load_model(path, cfg.model, device)
        data, held_out, note = held_out_data(cfg.data, cfg.val_path, cfg.hf_split)
        vocab = model.config.vocab_size
        source = make_source(data, vocab_size=vocab, seed=cfg.seed ^ EVAL_SEED_TAG)
        bf16 = device.type == "cuda" and cfg.precision in ("auto", "bf16")
        lengths = []
        total = len(cfg.factors)
        for i, f in enumerate(cfg.factors):
            L = f * cfg.seq_len
            batch = max(1, cfg.batch_size // f)
            try:
                rec = score_length(model, source, L, cfg.seq_len, batch, cfg.eval_tokens, 1_000_000 * (i + 1),
                                   device, bf16)
                rec["status"] = "ok" if math.isfinite(rec["loss"]) else "nan"
            except torch.cuda.OutOfMemoryError as exc:
                torch.cuda.empty_cache()
                rec = {"seq_len": L, "factor": f, "status": "oom", "reason": str(exc).splitlines()[0]}
            lengths.append(rec)
            if on_metric:
                m = {k: v for k, v in rec.items() if k != "segments"}
                on_metric(m)
            if on_progress:
                on_progress(i + 1, total, f"length {L}")
    finally:
        torch.set_num_threads(threads)
    res = {"checkpoint": path, "step": meta.get("step"), "train_seq_len": cfg.seq_len, "data": data,
           "held_out": held_out, "note": note, "lengths": lengths, "n_params": sum(p.numel() for p in model.parameters()),
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "precision": "bf16" if bf16 else "fp32", "elapsed_s": time.perf_counter() - t0}
    for rec in lengths:  # flat keys for tables: loss / ppl at 1x, loss_2x / ppl_2x, ...
        suffix = "" if rec["factor"] == 1 else f"_{rec['factor']}x"
        if rec.get("status") == "ok":
            res["loss" + suffix] = rec["loss"]
            res["ppl" + suffix] = rec["ppl"]
    return res


__all__ = ["EvalConfig", "HELD_OUT_SEED_OFFSET", "evaluate_run", "find_checkpoint", "held_out_data", "load_model",
           "score_length", "segment_bounds"]
