"""`bench`: one sweep point. The correctness gate at a small shape against the float64 reference, then timing.

Params (resolved by Go, see sweep.JobParams): op, chunk_size, BK, BV, num_warps, num_stages, constraint, dtype,
mode (fwd | fwdbwd), B, T, H, K, V, check_shape {B, T, H, K, V}, check (bool), check_mode (optional: "fwdbwd" on a
fwd point whose sweep family also times the backward; the gate then runs forward+backward, is shared with those
points through the cache, and the fwd point's verdict uses the forward errors only), tolerance (0: per dtype), seed,
device (cuda | cpu), timer (do_bench | wall_clock), warmup_ms, rep_ms, allow_naive_fallback, official_path.
With {"probe": true, "device": ...} it only reports the environment and how long the imports took.

Result: device_name, versions, impl, env (the MDN_/FLA_/TRITON_ knobs), check {passed, errors, tol, ..., cached,
cached_from}, median_ms, p20_ms,
p80_ms, timer, tokens_per_s, peak_mem_gib (CUDA only; None on the CPU), first_call_s (compile/autotune),
timed_s, notes, job_timing {import_s, load_s, check_s, check_cached, check_reference_cached, check_op_s,
check_reference_s, inputs_s, first_call_s, peak_mem_s, timed_s, cleanup_s, job_s} (check_reference_cached,
check_op_s, check_reference_s only for a gate that ran; peak_mem_s on CUDA only).

The gate is cached in the worker process (mdn.bench.check): points that differ only in B and T share one
verdict, shown as check.cached = true with check.cached_from = the point that computed it (a cached failure is
still `incorrect`); the float64 reference is shared by every op with the same reference and inputs.
MDN_BENCH_CACHE=0 turns both caches off.
Errors: unavailable (missing library/device/configuration), incorrect (the gate failed; its errors are sent as a
metric first), nan (non-finite output at the timed shape), oom, user (bad params).
"""
from __future__ import annotations

import os
import platform
import sys
import time

from ..protocol import JobError


def environment(device: str) -> dict:
    import importlib.metadata as md

    import torch
    import triton

    import mdn
    versions = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
                "mdn": mdn.__version__, "cuda": torch.version.cuda}
    for dist in ("fla-core", "flash-linear-attention"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    if device == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
    else:
        name = f"cpu ({platform.machine()})" + (" triton-interpreter" if os.environ.get("TRITON_INTERPRET") == "1" else "")
    return {"device_name": name, "versions": versions}


def _require_device(device: str) -> None:
    import torch
    if device not in ("cuda", "cpu"):
        raise JobError("user", f"device={device!r}: expected 'cuda' or 'cpu'")
    if device == "cuda" and not torch.cuda.is_available():
        raise JobError("unavailable", "CUDA requested but torch sees no GPU "
                                      f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})")


def _sync(device: str) -> None:
    if device == "cuda":
        import torch
        torch.cuda.synchronize()


def _all_finite(*ts) -> bool:
    import torch
    return all(t is None or bool(torch.isfinite(t).all()) for t in ts)


def _gate(op, impl, variant, check_shape, device, mode, check_mode, seed, params, gt) -> dict:
    from mdn.bench import check
    args = dict(tolerance=float(params.get("tolerance") or 0), cache=check.cache_enabled(),
                origin=params.get("point"), timing=gt)
    if check_mode == mode:
        return check.gate(op, impl, variant, check_shape, device, mode, seed, **args)
    try:
        return check.forward_verdict(check.gate(op, impl, variant, check_shape, device, "fwdbwd", seed, **args))
    except Exception as exc:  # the backward cannot run (e.g. a baseline without one): the forward gate decides
        gt.clear()
        g = check.gate(op, impl, variant, check_shape, device, mode, seed, **args)
        g["fwdbwd_gate_error"] = f"{type(exc).__name__}: {exc}"[:300]
        return g


def run_point(params: dict, ctx, timed: bool) -> dict:
    t_job, p0 = time.time(), time.perf_counter()
    import torch

    from mdn.bench import check, registry, timing
    jt = {"import_s": time.perf_counter() - p0}
    device = params.get("device", "cpu")
    if params.get("probe"):
        _require_device(device)
        return {**environment(device), "import_s": jt["import_s"], "job_start_t": t_job}
    ctx.metric(environment(device))
    try:
        variant = registry.Variant.from_params(params)
        shape = registry.Shape.from_dict(params)
        check_shape = registry.Shape.from_dict(params.get("check_shape") or params)
    except (ValueError, TypeError) as exc:
        raise JobError("user", str(exc)) from None
    mode = params.get("mode", "fwd")
    if mode not in ("fwd", "fwdbwd"):
        raise JobError("user", f"mode={mode!r}: expected 'fwd' or 'fwdbwd'")
    check_mode = params.get("check_mode") or mode
    if check_mode not in ("fwd", "fwdbwd") or (mode == "fwdbwd" and check_mode != "fwdbwd"):
        raise JobError("user", f"check_mode={check_mode!r}: expected 'fwdbwd' or the point's mode ({mode!r})")
    seed = int(params.get("seed", 0))
    _require_device(device)
    op = registry.get(variant.op)

    p = time.perf_counter()
    try:
        op.supports(variant, shape, device)
        # Loaded for the gate's mode: a fwd point that runs its family's fwdbwd gate needs what a backward needs
        # (fla's Hopper guard bypass, registry._FLAOp); its forward is the same either way.
        impl = op.load(variant, {**params, "mode": check_mode} if params.get("check", True) else params)
    except registry.Unavailable as exc:
        raise JobError("unavailable", str(exc)) from None
    jt["load_s"] = time.perf_counter() - p
    # the kernel knobs of the environment (MDN_SCAN_FORM, MDN_INTRA, ...): what, besides the params, decides what
    # ran (check.env_knobs, the gate cache's key; tool and cache paths left out)
    res = {"impl": op.impl_label, "notes": op.notes(variant, mode), "env": dict(check.env_knobs())}

    if params.get("check", True):
        p = time.perf_counter()
        gt: dict = {}
        g = _gate(op, impl, variant, check_shape, device, mode, check_mode, seed, params, gt)
        jt["check_s"] = time.perf_counter() - p
        jt["check_cached"] = gt.get("gate_cached", False)
        for k in ("reference_cached", "op_s", "reference_s"):
            if k in gt:
                jt["check_" + k] = gt[k]
        res["check"] = g
        if not g["passed"]:
            ctx.metric({"check": g, "impl": res["impl"], "notes": res["notes"]})
            raise JobError("incorrect", check.describe_failure(g))
    else:
        res["check"] = {"skipped": True}
    if not timed:
        jt["job_s"] = time.perf_counter() - p0
        res["job_timing"] = jt
        return res

    p = time.perf_counter()
    x = op.make_inputs(shape, variant.torch_dtype, device, variant.constraint, seed)
    jt["inputs_s"] = time.perf_counter() - p
    leaves, do, fn, grads = list(x.values()), None, None, None
    try:
        if mode == "fwdbwd":
            for t in leaves:
                t.requires_grad_(True)
            gen = torch.Generator(device=device).manual_seed(seed + 1)
            do = torch.randn(shape.B, shape.T, shape.H, shape.V, generator=gen, device=device,
                             dtype=torch.float32).to(variant.torch_dtype)
        # First call: compiles and autotunes; its output at the timed shape must be finite.
        p = time.perf_counter()
        if mode == "fwd":
            with torch.no_grad():
                o, st = op.call(impl, x, variant)
            finite = _all_finite(o, st)
        else:
            o, st = op.call(impl, x, variant)
            o.backward(do)
            finite = _all_finite(o, st, *(t.grad for t in leaves))
        _sync(device)
        jt["first_call_s"] = time.perf_counter() - p
        if not finite:
            raise JobError("nan", f"non-finite {'output' if mode == 'fwd' else 'output or gradient'} at "
                                  f"B{shape.B} T{shape.T} H{shape.H} K{shape.K} V{shape.V}")
        del o, st
        for t in leaves:
            t.grad = None
        fn = op.fwd(impl, x, variant) if mode == "fwd" else op.fwdbwd(impl, x, variant, do)
        grads = leaves if mode == "fwdbwd" else None
        if device == "cuda":
            p = time.perf_counter()
            res["peak_mem_gib"] = timing.peak_memory_gib(fn)
            for t in leaves:
                t.grad = None
            jt["peak_mem_s"] = time.perf_counter() - p
        else:
            res["peak_mem_gib"] = None
        p = time.perf_counter()
        warm, rep = int(params.get("warmup_ms", 25)), int(params.get("rep_ms", 100))
        if params.get("timer", "do_bench" if device == "cuda" else "wall_clock") == "do_bench":
            stats = timing.bench_cuda(fn, warm, rep, grad_to_none=grads)
        else:
            stats = timing.bench_wall(fn, warm, rep)
        jt["timed_s"] = time.perf_counter() - p
    finally:
        p = time.perf_counter()
        # Drop every reference to the timed-shape tensors first, or empty_cache() has nothing to give back.
        del x, leaves, do, fn, grads
        if device == "cuda":
            torch.cuda.empty_cache()
        jt["cleanup_s"] = time.perf_counter() - p
    res.update(stats)
    res["tokens_per_s"] = shape.tokens / (stats["median_ms"] / 1e3) if stats["median_ms"] > 0 else None
    res["first_call_s"] = jt["first_call_s"]
    res["timed_s"] = jt["timed_s"]
    jt["job_s"] = time.perf_counter() - p0
    res["job_timing"] = jt
    return res


def run(params: dict, ctx) -> dict:
    return run_point(params, ctx, timed=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run through the runner: python -m mdn.runner")
