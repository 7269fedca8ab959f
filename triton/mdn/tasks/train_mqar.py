"""Train a small model on MQAR and measure recall accuracy on held-out examples (Zoology-style).

    run = train_mqar(model_cfg, MQARConfig(...), MQARTrainConfig(lr=1e-3, steps=2000, ...),
                     test_splits=[MQARConfig(seq_len=1024, num_pairs=256)])
    best = train_mqar_lrs(model_cfg, task, train_cfg, lrs=[1e-4, 4.6e-4, 2.2e-3, 1e-2])

AdamW (decoupled weight decay on matrices only), linear warm-up then cosine decay, gradient clipping, optional
bf16 autocast on CUDA. The training set is a fixed pool of ``num_train`` examples visited in shuffled epochs
(Zoology), or fresh examples every step when ``num_train = 0``. The held-out test set of each split uses a
seed derived from (seed, "test", split), so it never shares the training stream. Loss and logits are computed
only at query positions (the hidden states of all positions, the LM head only where labels are set).

Best-of-N learning rates (Zoology reports the best accuracy over its learning-rate grid): every rate trains
from the same initial weights on the same data; the best is the highest accuracy on the training split's test
set (ties: lower test loss). A run whose loss becomes NaN/inf stops and is recorded with ``status = "nan"``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .mqar import IGNORE_INDEX, MQARConfig, chance_accuracy, derive_seed, mqar_batch

PRECISIONS = ("fp32", "bf16")
CUDA_GRAPH_MODES = ("off", "auto", "on")


@dataclass
class MQARTrainConfig:
    lr: float = 1e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # 0: no clipping
    batch_size: int = 64
    steps: int = 1000  # optimizer steps
    num_train: int = 100_000  # 0: fresh examples every step
    num_test: int = 1000
    eval_every: int = 0  # 0: evaluate only at the end
    eval_batch_size: int = 256
    early_stop_accuracy: float = 0.0  # > 0: stop once the test accuracy reaches it (checked at each eval)
    max_seconds: float = 0.0  # > 0: fit the schedule into this much training time (after 3 warm-up steps)
    seed: int = 0  # data (train and test) and weight init
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (autocast on CUDA)
    cuda_graph: str = "off"  # off | auto | on: replay the training step as one CUDA graph (see _GraphedStep)

    def validate(self, prefix: str = "train") -> "MQARTrainConfig":
        def bad(key, want):
            raise ValueError(f"{prefix}.{key} = {getattr(self, key)!r}: expected {want}")

        def num(key):
            v = getattr(self, key)
            return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)

        def integer(key):
            v = getattr(self, key)
            return not isinstance(v, bool) and isinstance(v, int)

        if not num("lr") or self.lr <= 0:
            bad("lr", "a number > 0")
        if not num("weight_decay") or self.weight_decay < 0:
            bad("weight_decay", "a number >= 0")
        for key in ("beta1", "beta2"):
            if not num(key) or not 0 <= getattr(self, key) < 1:
                bad(key, "a number in [0, 1)")
        if not num("min_lr_ratio") or not 0 <= self.min_lr_ratio <= 1:
            bad("min_lr_ratio", "a number in [0, 1]")
        if not num("grad_clip") or self.grad_clip < 0:
            bad("grad_clip", "a number >= 0 (0: no clipping)")
        for key in ("batch_size", "steps", "num_test", "eval_batch_size"):
            if not integer(key) or getattr(self, key) < 1:
                bad(key, "an integer >= 1")
        for key in ("warmup_steps", "num_train", "eval_every", "seed"):
            if not integer(key) or getattr(self, key) < 0:
                bad(key, "an integer >= 0")
        if not num("early_stop_accuracy") or not 0 <= self.early_stop_accuracy <= 1:
            bad("early_stop_accuracy", "a number in [0, 1] (0: off)")
        if not num("max_seconds") or self.max_seconds < 0:
            bad("max_seconds", "a number >= 0 (0: no limit)")
        if self.precision not in PRECISIONS:
            bad("precision", "one of " + ", ".join(PRECISIONS))
        if self.cuda_graph not in CUDA_GRAPH_MODES:
            bad("cuda_graph", "one of " + ", ".join(CUDA_GRAPH_MODES))
        if not isinstance(self.device, str) or not (self.device in ("auto", "cpu", "cuda")
                                                    or self.device.startswith("cuda:")):
            bad("device", "auto, cpu, cuda or cuda:N")
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any], prefix: str = "train") -> "MQARTrainConfig":
        if not isinstance(d, dict):
            raise ValueError(f"{prefix} must be an object, got {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ValueError(f"{prefix}.{unknown[0]}: unknown key (known: {', '.join(sorted(fields))})")
        kw = {}
        for k, v in d.items():
            if fields[k].type in ("int", int) and isinstance(v, float) and v.is_integer():
                v = int(v)
            if fields[k].type in ("float", float) and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            kw[k] = v
        return cls(**kw).validate(prefix)


# ---------------------------------------------------------------------------------------------- helpers
def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device = {device!r}: no CUDA device is available")
    return torch.device(device)


def lr_at(step: int, cfg: MQARTrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up, then cosine to lr * min_lr_ratio."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (dim >= 2) except embeddings flagged ``_no_weight_decay``; none on the rest."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and not getattr(p, "_no_weight_decay", False) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def query_logits(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, n_query: int | None = None):
    """(logits [n_query, vocab], targets [n_query]) at labelled positions only.

    Uses ``model.hidden_states`` + ``model.logits`` when the model has them (mdn.models.CausalLM), so the
    LM head runs only where a label is set; otherwise the full ``model(inputs)`` logits are indexed.
    ``n_query``: the number of labelled positions when it is known in advance (MQAR batches hold exactly
    num_pairs per example); the positions are then found with ``torch.nonzero_static``, which, unlike boolean
    indexing, does not wait for the GPU to learn the count (one host sync less per training step).
    """
    mask = (labels != IGNORE_INDEX).flatten()  # [B * T]
    if n_query is None:
        idx = mask.nonzero().squeeze(-1)
    else:
        idx = torch.nonzero_static(mask, size=n_query).squeeze(-1)
    tgt = labels.flatten()[idx]
    if hasattr(model, "hidden_states") and hasattr(model, "logits"):
        h = model.hidden_states(inputs)  # [B, T, d]
        return model.logits(h.flatten(0, 1)[idx]), tgt
    out = model(inputs)
    return out.flatten(0, 1)[idx], tgt


def _autocast(device: torch.device, precision: str, cache: bool = True):
    if precision == "bf16" and device.type == "cuda":
        # cache=False under CUDA-graph capture: autocast's weight-cast cache would hold tensors of the capture
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16, cache_enabled=cache)
    return torch.autocast(device_type=device.type, enabled=False)


@torch.no_grad()
def evaluate(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int,
             precision: str = "fp32") -> dict[str, float]:
    """Accuracy and mean cross-entropy over all labelled positions of a held-out set."""
    was_training = model.training
    model.eval()
    # Sums stay on the device and are read once at the end: one host sync per evaluation, not three per batch.
    # The query count is known when every example holds the same number of labelled positions (MQAR batches do),
    # which lets query_logits skip the count's sync too.
    per_row = (labels != IGNORE_INDEX).sum(1)  # [n]
    same = bool((per_row == per_row[0]).all()) if per_row.numel() else False
    n_row = int(per_row[0]) if same else None
    correct = torch.zeros((), dtype=torch.long, device=inputs.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=inputs.device)
    total = int(per_row.sum())
    for s in range(0, inputs.shape[0], batch_size):
        x, y = inputs[s:s + batch_size], labels[s:s + batch_size]
        with _autocast(x.device, precision):
            logits, tgt = query_logits(model, x, y, n_query=None if n_row is None else n_row * x.shape[0])
        logits = logits.float()
        loss_sum += torch.nn.functional.cross_entropy(logits, tgt, reduction="sum").double()
        correct += (logits.argmax(-1) == tgt).sum()
    model.train(was_training)
    correct_n, loss_total = int(correct), float(loss_sum)
    return {"accuracy": correct_n / max(total, 1), "loss": loss_total / max(total, 1), "queries": total}


def _default_builder(model_cfg: dict, device: torch.device, seed: int) -> torch.nn.Module:
    from mdn.models import build_model

    return build_model(model_cfg, device=device, seed=seed)


def _check_vocab(model_cfg: dict, splits: list[MQARConfig]) -> dict:
    cfg = dict(model_cfg)
    need = max(s.vocab_size for s in splits)
    have = cfg.get("vocab_size")
    if have is None:
        cfg["vocab_size"] = need
    elif isinstance(have, bool) or not isinstance(have, int) or have < need:
        raise ValueError(f"model.vocab_size = {have!r}: expected an integer >= the task vocab_size {need}")
    return cfg


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_TICKS = 25  # loss reads (host syncs) and progress events per run: every steps // _TICKS steps
_WARM_STEPS = 3  # steps before the per-step time is measured (the first ones compile kernels)
_BUDGET_CHECKS = frozenset({13, 50, 200, 1000, 5000})


def _fit_to_budget(cfg: MQARTrainConfig, done: int, t_warm: float, device: torch.device) -> MQARTrainConfig:
    """The schedule with its horizon fitted so that training ends ``cfg.max_seconds`` after the warm-up steps
    (at most ``cfg.steps``; the clock starts after them so that kernel compilation is not counted). Re-fitted at a few steps as the per-step time (measured after the warm-up steps) firms up;
    10% of the remaining time is kept for evaluations. The cosine follows the horizon, so a time-limited run
    still anneals its learning rate."""
    _sync(device)
    now = time.perf_counter()
    per_step = (now - t_warm) / max(1, done - _WARM_STEPS)
    left = cfg.max_seconds - (now - t_warm)
    fit = done + max(1, int(0.9 * left / max(per_step, 1e-9)))
    return dataclasses.replace(cfg, steps=min(cfg.steps, fit))


Builder = Callable[[dict, torch.device, int], torch.nn.Module]
Callback = Callable[[dict], None]


# ---------------------------------------------------------------------------------------------- training
_POOL_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # the latest training pool, on the CPU


class _Data:
    """Training batches: a shuffled fixed pool (num_train > 0) or fresh examples per step."""

    def __init__(self, task: MQARConfig, cfg: MQARTrainConfig, device: torch.device):
        self.task, self.cfg, self.device = task, cfg, device
        self.pool = None
        if cfg.num_train > 0:
            key = (task, cfg.num_train, cfg.seed)
            if key not in _POOL_CACHE:  # consecutive points of a sweep (e.g. learning rates) share the pool
                _POOL_CACHE.clear()
                _POOL_CACHE[key] = mqar_batch(task, cfg.num_train, derive_seed(cfg.seed, "train", task.name))
            self.pool = tuple(t.to(device) for t in _POOL_CACHE[key])
        self.reset()

    def reset(self) -> None:
        """Back to the first batch (the pool itself is kept)."""
        self.order = torch.empty(0, dtype=torch.long)
        self.pos = 0
        self.epoch = 0

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.cfg.batch_size
        if self.pool is None:
            return mqar_batch(self.task, b, derive_seed(self.cfg.seed, "train", self.task.name, step), self.device)
        n = self.pool[0].shape[0]
        if self.pos + b > self.order.numel():  # new epoch (drop the ragged tail, as a sampler with drop_last)
            g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "epoch", self.epoch))
            self.order = torch.randperm(n, generator=g)
            if b > n:
                self.order = self.order.repeat(math.ceil(b / n))
            self.order = self.order.to(self.device)
            self.pos, self.epoch = 0, self.epoch + 1
        idx = self.order[self.pos:self.pos + b]
        self.pos += b
        return self.pool[0][idx], self.pool[1][idx]


def make_test_sets(task: MQARConfig, test_splits: list[MQARConfig], cfg: MQARTrainConfig, device: torch.device):
    """{split name: (inputs, labels)} for the training split and each extra split (deduplicated)."""
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for split in [task, *test_splits]:
        if split.name not in out:
            out[split.name] = mqar_batch(split, cfg.num_test, derive_seed(cfg.seed, "test", split.name), device)
    return out


def train_mqar(model_cfg: dict, task: MQARConfig, cfg: MQARTrainConfig, test_splits: list[MQARConfig] = (),
               *, on_metric: Callback | None = None, on_progress: Callable[[int, int, str], None] | None = None,
               build: Builder | None = None, data: "_Data | None" = None, tests: dict | None = None) -> dict:
    """Train one model at one learning rate; return its test metrics (see module docstring).

    ``on_metric(dict)`` gets one record per evaluation (``step``, ``lr``, ``train_loss``, ``accuracy``,
    ``loss`` on the training split, plus ``split``-prefixed entries at the end); ``on_progress(done, total,
    message)`` is called about 25 times (each reads the loss: a host sync). ``data``/``tests`` let
    ``train_mqar_lrs`` share generated data.
    """
    task.validate()
    cfg.validate()
    test_splits = list(test_splits)
    for s in test_splits:
        s.validate("test_splits[]")
    model_cfg = _check_vocab(model_cfg, [task, *test_splits])
    device = resolve_device(cfg.device)
    build = build or _default_builder
    data = data or _Data(task, cfg, device)
    tests = tests or make_test_sets(task, test_splits, cfg, device)

    with _cpu_threads(device):
        return _train(model_cfg, task, cfg, device, build, data, tests, on_metric, on_progress)


@contextlib.contextmanager
def _cpu_threads(device: torch.device):
    """One intra-op thread on the CPU unless OMP_NUM_THREADS says otherwise: tiny models are all small ops,
    and extra threads only add contention (several times slower on a busy machine)."""
    threads = torch.get_num_threads()
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)  # the graphed step's AdamW reads its rate on the device
        else:
            group["lr"] = lr


def _make_optimizer(model: torch.nn.Module, cfg: MQARTrainConfig, device: torch.device, graphed: bool):
    groups = param_groups(model, cfg.weight_decay)
    if graphed:
        # a CUDA graph bakes Python scalars in at capture: the rate must be a device tensor that the captured
        # fused AdamW reads (capturable=True keeps its step counters on the device too)
        return torch.optim.AdamW(groups, lr=torch.tensor(cfg.lr, device=device), betas=(cfg.beta1, cfg.beta2),
                                 fused=True, capturable=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


class _EagerStep:
    """One optimizer step run op by op: forward at the query positions, loss, backward, clipping, AdamW."""

    mode = "eager"

    def __init__(self, model, opt, task: MQARConfig, cfg: MQARTrainConfig, device: torch.device):
        self.model, self.opt, self.task, self.cfg, self.device = model, opt, task, cfg, device

    def loss(self, x: torch.Tensor, y: torch.Tensor, cache: bool = True) -> torch.Tensor:
        with _autocast(self.device, self.cfg.precision, cache):
            logits, tgt = query_logits(self.model, x, y, n_query=x.shape[0] * self.task.num_pairs)
        return torch.nn.functional.cross_entropy(logits.float(), tgt)

    def update(self, loss: torch.Tensor) -> None:
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()

    def __call__(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor:
        _set_lr(self.opt, lr)
        loss = self.loss(x, y)
        self.opt.zero_grad(set_to_none=True)
        self.update(loss)
        return loss.detach()


_GRAPH_WARM = 3  # eager steps (on a side stream) before the capture: kernels compile and autotune in them


class _GraphedStep(_EagerStep):
    """The whole training step captured once as a CUDA graph and replayed for every later step.

    The MQAR models are tiny: an eager step launches hundreds of small kernels (the MDN op alone dozens per
    layer), so with several workers per GPU a step waits on launches, not on the GPU. A replay launches the
    captured kernels at once. What makes the step capturable: static shapes (every MQAR batch has the same),
    no host sync inside it (query_logits finds the query positions with nonzero_static), the learning rate as a
    device tensor read by a fused capturable AdamW (_make_optimizer), and autocast without its cast cache.
    The first _GRAPH_WARM steps run eagerly on a side stream; then the step is captured and its first replay is
    checked: the loss it computes must equal an eager forward's on the same weights and batch. A capture that
    raises (an op that syncs with the host, say) or a replay that disagrees is undone and falls back to eager
    steps in mode "auto" (``mode`` says why, and the result records it), and raises in mode "on".
    """

    def __init__(self, model, opt, task, cfg, device, strict: bool):
        super().__init__(model, opt, task, cfg, device)
        self.strict = strict
        self.warm = 0
        self.graph = None
        self.eager_only = False
        self.side = torch.cuda.Stream(device)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor:
        if self.eager_only:
            return super().__call__(x, y, lr)
        if self.graph is None and self.warm < _GRAPH_WARM:
            self.warm += 1
            cur = torch.cuda.current_stream(self.device)
            self.side.wait_stream(cur)
            with torch.cuda.stream(self.side):
                loss = super().__call__(x, y, lr)
            cur.wait_stream(self.side)
            return loss
        _set_lr(self.opt, lr)
        if self.graph is None:
            if not self._capture_and_step(x, y):
                return super().__call__(x, y, lr)
            return self.static_loss
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.graph.replay()
        return self.static_loss

    def _capture_and_step(self, x: torch.Tensor, y: torch.Tensor) -> bool:
        """Capture the step, then replay it once as this step, checked: its loss (computed before its update)
        must equal an eager forward's on the same weights and batch. False (and the weights and optimizer state
        as they were) if either fails in mode "auto"."""
        self.static_x, self.static_y = x.clone(), y.clone()
        params = [p.detach().clone() for p in self.model.parameters()]
        state = {p: {k: v.clone() for k, v in st.items() if isinstance(v, torch.Tensor)}
                 for p, st in self.opt.state.items()}
        try:
            # with grad enabled, as in the step: a no-grad call may take another kernel (the MDN layer decodes
            # calls of <= 64 tokens with the fused recurrent op)
            want = float(self.loss(self.static_x, self.static_y, cache=False).detach())
            self.opt.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):  # records the kernels; nothing runs until a replay
                loss = self.loss(self.static_x, self.static_y, cache=False)
                self.update(loss)
            self.static_loss = loss.detach()
            graph.replay()
            got = float(self.static_loss)
            if not math.isclose(got, want, rel_tol=1e-3, abs_tol=1e-4):
                raise RuntimeError(f"the replayed step's loss {got:.6g} differs from the eager forward's {want:.6g}")
        except Exception as exc:  # noqa: BLE001 - any capture failure means: run eagerly (or fail in "on")
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            if self.strict:
                raise RuntimeError(f"mqar.cuda_graph = 'on': the training step could not be captured ({reason})") \
                    from exc
            torch.cuda.synchronize(self.device)
            with torch.no_grad():  # undo whatever a replay changed
                for p, saved in zip(self.model.parameters(), params):
                    p.copy_(saved)
                for p, saved in state.items():
                    for k, v in saved.items():
                        self.opt.state[p][k].copy_(v)
            self.opt.zero_grad(set_to_none=True)
            self.eager_only = True
            self.mode = f"eager (capture failed: {reason})"
            return False
        self.graph = graph
        self.mode = "cuda_graph"
        return True


def _make_step(model, opt, task, cfg, device, graphed: bool):
    if graphed:
        return _GraphedStep(model, opt, task, cfg, device, strict=cfg.cuda_graph == "on")
    return _EagerStep(model, opt, task, cfg, device)


def _train(model_cfg, task, cfg, device, build, data, tests, on_metric, on_progress) -> dict:
    if cfg.cuda_graph == "on" and device.type != "cuda":
        raise ValueError(f"mqar.cuda_graph = 'on': needs a CUDA device, got {device} (use 'auto' or 'off')")
    model = build(model_cfg, device, cfg.seed)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    graphed = cfg.cuda_graph != "off" and device.type == "cuda"
    opt = _make_optimizer(model, cfg, device, graphed)
    run_step = _make_step(model, opt, task, cfg, device, graphed)
    t0 = time.perf_counter()
    status, stop = "ok", "steps"
    sched = cfg  # the schedule's horizon; shortened by the time budget (see _fit_to_budget)
    step = done = 0
    ema = None
    t_warm = None  # wall time after the first steps (compilation, allocator warm-up) are over
    while done < sched.steps:
        step = done
        lr = lr_at(step, sched)
        x, y = data.batch(step)
        loss = run_step(x, y, lr)
        done = step + 1
        tick = max(1, sched.steps // _TICKS)
        if done % tick == 0 or done == sched.steps:
            lv = float(loss.detach())
            if not math.isfinite(lv):
                status, stop = "nan", "nan"
                break
            ema = lv if ema is None else 0.9 * ema + 0.1 * lv
            if on_progress:
                on_progress(done, sched.steps, f"lr {cfg.lr:.2e} loss {lv:.3f}")
        if cfg.max_seconds:
            if done == _WARM_STEPS:
                _sync(device)
                t_warm = time.perf_counter()
            if t_warm is not None and done in _BUDGET_CHECKS:
                sched = _fit_to_budget(cfg, done, t_warm, device)
        if cfg.eval_every and done % cfg.eval_every == 0 and done < sched.steps:
            name = task.name
            last_eval = evaluate(model, *tests[name], cfg.eval_batch_size, cfg.precision)
            if on_metric:
                on_metric({"step": done, "lr_now": lr, "base_lr": cfg.lr, "train_loss": ema,
                           "accuracy": last_eval["accuracy"], "loss": last_eval["loss"], "split": name,
                           "elapsed_s": time.perf_counter() - t0})
            if cfg.early_stop_accuracy and last_eval["accuracy"] >= cfg.early_stop_accuracy:
                stop = "early"
                break
        if cfg.max_seconds and t_warm is not None and time.perf_counter() - t_warm > cfg.max_seconds:
            stop = "time"
            break
    if stop == "steps" and sched.steps < cfg.steps:
        stop = "time"  # the horizon was shortened to fit max_seconds
    steps_done = done
    _sync(device)
    train_s = time.perf_counter() - t0

    splits: dict[str, dict] = {}
    if status == "ok":
        for name, (xi, yi) in tests.items():
            splits[name] = evaluate(model, xi, yi, cfg.eval_batch_size, cfg.precision)
            if not math.isfinite(splits[name]["loss"]):
                status = "nan"
    main = splits.get(task.name, {"accuracy": 0.0, "loss": float("nan"), "queries": 0})
    result = {
        "status": status, "stop": stop, "lr": cfg.lr, "accuracy": main["accuracy"], "loss": main["loss"],
        "train_loss": ema, "steps": steps_done, "planned_steps": cfg.steps, "examples_seen": steps_done * cfg.batch_size,
        "train_seconds": train_s, "tokens_per_s": steps_done * cfg.batch_size * task.seq_len / max(train_s, 1e-9),
        "params": params, "splits": splits, "step_mode": run_step.mode,
    }
    if on_metric:
        rec = {"step": steps_done, "lr_now": lr_at(max(steps_done - 1, 0), sched), "base_lr": cfg.lr, "train_loss": ema,
               "accuracy": main["accuracy"], "loss": main["loss"], "split": task.name, "final": True,
               "elapsed_s": train_s}
        for name, m in splits.items():
            if name != task.name:
                rec[f"accuracy@{name}"] = m["accuracy"]
        on_metric(rec)
    return result


def _better(a: dict, b: dict | None) -> bool:
    if b is None:
        return True
    if a["status"] != b["status"]:
        return a["status"] == "ok"
    if a["accuracy"] != b["accuracy"]:
        return a["accuracy"] > b["accuracy"]
    la, lb = a["loss"], b["loss"]
    return math.isfinite(la) and (not math.isfinite(lb) or la < lb)


def train_mqar_lrs(model_cfg: dict, task: MQARConfig, cfg: MQARTrainConfig, lrs: list[float],
                   test_splits: list[MQARConfig] = (), *, on_metric: Callback | None = None,
                   on_progress: Callable[[int, int, str], None] | None = None,
                   build: Builder | None = None) -> dict:
    """Train once per learning rate (same init, same data) and keep the best (see module docstring).

    Returns the best run's metrics at the top level (``accuracy``, ``loss``, ``lr``, ``splits``, ...) plus
    ``runs`` (one summary per rate, in the order given) and ``chance`` (1 / number of value tokens).
    """
    if not isinstance(lrs, (list, tuple)) or not lrs:
        raise ValueError(f"lrs = {lrs!r}: expected a non-empty list of learning rates")
    for lr in lrs:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lrs = {lrs!r}: every learning rate must be a number > 0")
    task.validate()
    cfg.validate()
    device = resolve_device(cfg.device)
    data = _Data(task, cfg, device)
    tests = make_test_sets(task, list(test_splits), cfg, device)
    runs, best = [], None
    total = cfg.steps * len(lrs)
    for i, lr in enumerate(lrs):
        sub = dataclasses.replace(cfg, lr=float(lr))

        def progress(done, _total, msg, _i=i):
            if on_progress:
                on_progress(_i * cfg.steps + done, total, f"[{_i + 1}/{len(lrs)}] {msg}")

        data.reset()  # every rate sees the same examples in the same order
        run = train_mqar(model_cfg, task, sub, test_splits, on_metric=on_metric, on_progress=progress,
                         build=build, data=data, tests=tests)
        runs.append({k: run[k] for k in ("lr", "status", "stop", "accuracy", "loss", "steps", "train_seconds",
                                         "step_mode")})
        if _better(run, best):
            best = run
    out = dict(best)
    out["runs"] = runs
    out["chance"] = chance_accuracy(task)
    return out
