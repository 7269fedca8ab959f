"""The correctness gate: an op's output, final state and (in fwdbwd) input gradients against its float64 reference,
at a small shape with the variant's own K, V, dtype, chunk size and gate distribution."""
from __future__ import annotations

import math

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


def gate(op: BenchOp, fn, variant: Variant, shape: Shape, device: str, mode: str, seed: int = 0,
         tolerance: float = 0.0) -> dict:
    """Compare op against its float64 reference. Returns {passed, errors, tol, worst, shape, reference}."""
    tol_o, tol_g = TOLERANCE[variant.dtype]
    if tolerance and tolerance > 0:
        tol_o = tol_g = float(tolerance)
    grads = mode == "fwdbwd"
    x = op.make_inputs(shape, variant.torch_dtype, device, variant.constraint, seed)
    x64 = {n: t.detach().to(torch.float64) for n, t in x.items()}
    o, st, g = _run(op, fn, x, variant, grads, seed, ref=False)
    o_r, st_r, g_r = _run(op, None, x64, variant, grads, seed, ref=True)
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
    return {"passed": not failed, "errors": errors, "tol": {"output": tol_o, "grad": tol_g}, "worst": worst,
            "failed": sorted(failed), "shape": {n: getattr(shape, n) for n in "BTHKV"}, "mode": mode,
            "reference": op.reference_name}


def describe_failure(res: dict) -> str:
    parts = [f"{n}: {res['errors'][n]:.3g} > {res['tol']['grad' if n.startswith('d') else 'output']:.1g}"
             for n in res["failed"]]
    s = res["shape"]
    return (f"correctness gate failed at B{s['B']} T{s['T']} H{s['H']} K{s['K']} V{s['V']} ({res['mode']}) vs "
            f"{res['reference']}: " + ", ".join(parts))
