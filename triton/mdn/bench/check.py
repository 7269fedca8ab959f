"""The correctness gate: an op's output, final state and (in fwdbwd) input gradients against its float64 reference,
at a small shape with the variant's own K, V, dtype, chunk size and gate distribution.

Two caches live in the process (a sweep's warm worker runs many points; see ``gate(cache=True)``):

* verdicts (``GATES``), keyed by everything that decides a gate: the op (class, implementation, load-time state
  such as tile overrides, fallbacks, paths), the whole variant (chunk size, tiles/warps/stages, dtype,
  constraint), the check shape, device, mode, seed, tolerances and the environment knobs the kernels read
  (``MDN_*``, ``FLA_*``, ``TRITON_*``). Points that differ only in the timed B and T (a sweep over T) share one
  gate. A cached verdict, pass or fail, is returned with ``cached: True`` and the point that computed it. A
  ``fwd`` gate never reuses an ``fwdbwd`` verdict: the ops take other paths when no gradient is required (MDN's
  fused recurrent saves no checkpoints, MDN_INTRA=triton runs only then), so an fwdbwd pass does not check the
  forward that a fwd point times.
* float64 references (``REFERENCES``), keyed by the reference (its name and the functions that draw, select and
  compute it), the check shape, the op's input dtype (the reference sees the op's rounded inputs), gate
  distribution, seed, device and whether gradients were taken. mdn, mdn_recurrent, mdn_naive and official share
  one. Kept on the CPU; an entry with gradients also serves a request without them (same forward values).

Both are LRU-bounded (entries, and bytes for the references) so a long sweep does not grow without bound.
``clear_caches()`` empties them; ``MDN_BENCH_CACHE=0`` turns them off for the bench job.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from collections import OrderedDict

import torch

from .registry import BenchOp, Shape, Variant

# Relative RMS error bounds by dtype: (outputs, gradients). Loose enough for the precision of the dtype (the
# official kernel's bf16 gradients reach 2.6e-2), tight enough to catch a wrong kernel (errors of 0.3 and more).
TOLERANCE = {"bfloat16": (2e-2, 6e-2), "float16": (1e-2, 4e-2), "float32": (2e-3, 1e-2)}


def rel_rms(ref: torch.Tensor, out: torch.Tensor) -> float:
    """RMS(ref - out) / RMS(ref) in float64; NaN when either is not finite (never passes)."""
    r = ref.detach().to(torch.float64)
    o = out.detach().to(device=r.device, dtype=torch.float64)
    if r.shape != o.shape:
        raise ValueError(f"shape mismatch: reference {tuple(r.shape)} vs output {tuple(o.shape)}")
    if not (torch.isfinite(r).all() and torch.isfinite(o).all()):
        return float("nan")
    if r.numel() == 0:
        return 0.0
    diff = (r - o).pow(2).mean().sqrt().item()
    base = r.pow(2).mean().sqrt().item()
    return diff / base if base > 0 else diff


class LRU:
    """A small least-recently-used map with an entry bound and an optional size bound (``sizeof(value)``)."""

    def __init__(self, max_entries: int, max_bytes: int | None = None, sizeof=None):
        self.max_entries, self.max_bytes, self.sizeof = max_entries, max_bytes, sizeof
        self._d: OrderedDict = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key) -> bool:
        return key in self._d

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key, default=None):
        if key in self._d:
            self._d.move_to_end(key)
            self.hits += 1
            return self._d[key]
        self.misses += 1
        return default

    def put(self, key, value) -> None:
        if key in self._d:
            self._bytes -= self._size(self._d.pop(key))
        self._d[key] = value
        self._bytes += self._size(value)
        while len(self._d) > self.max_entries or (self.max_bytes is not None and self._bytes > self.max_bytes
                                                  and len(self._d) > 1):
            _, old = self._d.popitem(last=False)
            self._bytes -= self._size(old)
            self.evictions += 1

    def clear(self) -> None:
        self._d.clear()
        self._bytes = 0
        self.hits = self.misses = self.evictions = 0

    def _size(self, value) -> int:
        return int(self.sizeof(value)) if self.sizeof else 0


def _ref_nbytes(entry: dict) -> int:
    ts = [entry["o"], entry["state"], *entry["grads"].values()]
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


GATES = LRU(256)  # verdicts: small dicts
REFERENCES = LRU(32, max_bytes=1 << 30, sizeof=_ref_nbytes)  # CPU tensors (~10 MB at B1 T256 H2 K256 V512)


def clear_caches() -> None:
    GATES.clear()
    REFERENCES.clear()


def cache_enabled(env=None) -> bool:
    return (os.environ if env is None else env).get("MDN_BENCH_CACHE", "1") != "0"


ENV_PREFIXES = ("MDN_", "FLA_", "TRITON_")
# Left out of the key: MDN_BENCH_CACHE decides caching, not results; MDN_PROTOCOL is the launcher's protocol
# version; the others are where tools and caches live,
# and libraries set them in the middle of a run (inductor sets TRITON_PTXAS_PATH at its first compile, and
# TRITON_CACHE_DIR when unset), which made every gate after a worker's first compile a cache miss.
ENV_NOT_KNOBS = frozenset({"MDN_BENCH_CACHE", "MDN_PROTOCOL", "TRITON_PTXAS_PATH", "TRITON_CACHE_DIR", "TRITON_HOME",
                           "TRITON_DUMP_DIR", "TRITON_OVERRIDE_DIR", "FLA_CONFIG_DIR"})


def env_knobs(env=None) -> tuple:
    """The environment the kernels may read (MDN_SCAN_FORM, MDN_SCAN_CONFIG, MDN_SCAN_LOAD, MDN_INTRA, ...,
    TRITON_INTERPRET, fla's switches), as a sorted tuple: part of the gate's cache key (ENV_NOT_KNOBS left out)."""
    env = os.environ if env is None else env
    return tuple(sorted((k, v) for k, v in env.items() if k.startswith(ENV_PREFIXES) and k not in ENV_NOT_KNOBS))


def _fn_id(f) -> str:
    f = getattr(f, "__func__", f)
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', type(f).__qualname__)}"


def gate_key(op: BenchOp, fn, variant: Variant, shape: Shape, device: str, mode: str, seed: int,
             tols: tuple) -> tuple:
    return ("gate", op.cache_token(), _fn_id(fn), dataclasses.astuple(variant), dataclasses.astuple(shape),
            str(device), mode, int(seed), tuple(float(t) for t in tols), env_knobs())


def reference_key(op: BenchOp, variant: Variant, shape: Shape, device: str, seed: int, grads: bool) -> tuple:
    """The identity of a float64 reference result: which reference computes it (name and functions) from which
    inputs (how they are drawn and selected, the check shape, the op's input dtype, the gate distribution, the
    seed, the device that draws them) and whether gradients were taken."""
    cls = type(op)
    return ("ref", op.reference_name, _fn_id(cls.reference), _fn_id(cls.select), _fn_id(cls.make_inputs),
            dataclasses.astuple(shape), variant.dtype, variant.constraint, int(seed), str(device), bool(grads))


def _run(op: BenchOp, fn, x: dict, variant: Variant, grads: bool, seed: int, ref: bool):
    leaves = {n: t.detach().clone().requires_grad_(grads) for n, t in x.items()}
    if ref:
        o, st = op.reference(leaves)
    else:
        o, st = op.call(fn, leaves, variant)
    g = {}
    if grads:
        gen = torch.Generator(device="cpu").manual_seed(seed + 1)
        do = torch.randn(tuple(o.shape), generator=gen, dtype=torch.float64).to(o.device)
        loss = (o.to(torch.float64) * do).sum()
        if st is not None:
            dst = torch.randn(tuple(st.shape), generator=gen, dtype=torch.float64).to(st.device)
            loss = loss + (st.to(torch.float64) * dst).sum()
        loss.backward()
        g = {n: t.grad for n, t in leaves.items()}
    return o.detach(), (st.detach() if st is not None else None), g


def _reference(op: BenchOp, x: dict, variant: Variant, shape: Shape, device: str, seed: int, grads: bool,
               cache: bool, timing: dict):
    """(o, state, grads) of the float64 reference on the CPU, from the cache when allowed and present."""
    p = time.perf_counter()
    key = reference_key(op, variant, shape, device, seed, grads)
    hit = None
    if cache:
        hit = REFERENCES.get(key)
        if hit is None and not grads:  # a reference with gradients has the same forward values
            hit = REFERENCES.get(key[:-1] + (True,))
            if hit is not None:
                hit = {**hit, "grads": {}}
    if hit is None:
        x64 = {n: t.detach().to(torch.float64) for n, t in x.items()}
        o_r, st_r, g_r = _run(op, None, x64, variant, grads, seed, ref=True)
        hit = {"o": o_r.cpu(), "state": st_r.cpu() if st_r is not None else None,
               "grads": {n: (t.cpu() if t is not None else None) for n, t in g_r.items()}}
        del x64, o_r, st_r, g_r
        if cache:
            REFERENCES.put(key, hit)
        timing["reference_cached"] = False
    else:
        timing["reference_cached"] = True
    timing["reference_s"] = time.perf_counter() - p
    return hit["o"], hit["state"], hit["grads"]


def gate(op: BenchOp, fn, variant: Variant, shape: Shape, device: str, mode: str, seed: int = 0,
         tolerance: float = 0.0, cache: bool = False, origin: str | None = None, timing: dict | None = None) -> dict:
    """Compare op against its float64 reference. Returns {passed, errors, tol, worst, shape, reference, cached}.

    With cache=True a verdict already computed in this process for the same key (``gate_key``) is returned
    with ``cached: True`` and ``cached_from`` (the ``origin`` that computed it, e.g. the sweep point id), and the
    float64 reference is taken from / put in the reference cache. ``timing`` (a dict) receives
    {gate_cached, reference_cached, op_s, reference_s} (the last three only when the gate ran)."""
    timing = {} if timing is None else timing
    tol_o, tol_g = TOLERANCE[variant.dtype]
    if tolerance and tolerance > 0:
        tol_o = tol_g = float(tolerance)
    key = gate_key(op, fn, variant, shape, device, mode, seed, (tol_o, tol_g)) if cache else None
    if cache:
        hit = GATES.get(key)
        if hit is not None:
            timing["gate_cached"] = True
            res = dict(hit["result"])
            res["cached"] = True
            res["cached_from"] = hit["origin"]
            return res
    timing["gate_cached"] = False
    grads = mode == "fwdbwd"
    x = op.make_inputs(shape, variant.torch_dtype, device, variant.constraint, seed)
    p = time.perf_counter()
    o, st, g = _run(op, fn, x, variant, grads, seed, ref=False)
    timing["op_s"] = time.perf_counter() - p
    o_r, st_r, g_r = _reference(op, x, variant, shape, device, seed, grads, cache, timing)
    errors, tols = {"o": rel_rms(o_r, o)}, {"o": tol_o}
    if st_r is not None:
        if st is None:
            errors["state"] = float("nan")
        else:
            errors["state"] = rel_rms(st_r, st)
        tols["state"] = tol_o
    for n in g_r:
        if g_r[n] is None:
            continue
        errors["d" + n] = rel_rms(g_r[n], g[n]) if g.get(n) is not None else float("nan")
        tols["d" + n] = tol_g
    failed = {n: e for n, e in errors.items() if not (e <= tols[n])}  # NaN fails
    worst = max(errors, key=lambda n: (math.inf if math.isnan(errors[n]) else errors[n] / tols[n]))
    res = {"passed": not failed, "errors": errors, "tol": {"output": tol_o, "grad": tol_g}, "worst": worst,
           "failed": sorted(failed), "shape": {n: getattr(shape, n) for n in "BTHKV"}, "mode": mode,
           "reference": op.reference_name, "cached": False}
    if cache:
        GATES.put(key, {"result": dict(res), "origin": origin})
    return res


FORWARD_ERRORS = ("o", "state")


def forward_verdict(res: dict) -> dict:
    """The verdict of a forward-only point from a forward+backward gate of the same variant and inputs: the same
    forward ran, so its output and state errors decide; the gradient errors are dropped. ``checked_with`` records
    that the verdict came from the ``fwdbwd`` gate (the sweep shares one gate between a family's fwd and fwdbwd
    points, sweep.shareGates)."""
    errors = {n: e for n, e in res["errors"].items() if n in FORWARD_ERRORS}
    tol = res["tol"]["output"]
    failed = sorted(n for n, e in errors.items() if not (e <= tol))  # NaN fails
    worst = max(errors, key=lambda n: math.inf if math.isnan(errors[n]) else errors[n])
    return {**res, "passed": not failed, "errors": errors, "failed": failed, "worst": worst, "mode": "fwd",
            "checked_with": "fwdbwd"}


def describe_failure(res: dict) -> str:
    parts = [f"{n}: {res['errors'][n]:.3g} > {res['tol']['grad' if n.startswith('d') else 'output']:.1g}"
             for n in res["failed"]]
    s = res["shape"]
    cached = f" (cached verdict of point {res.get('cached_from') or '?'})" if res.get("cached") else ""
    return (f"correctness gate failed at B{s['B']} T{s['T']} H{s['H']} K{s['K']} V{s['V']} ({res['mode']}) vs "
            f"{res['reference']}: " + ", ".join(parts) + cached)
