#!/usr/bin/env python3
"""Benchmark of chunk_momentum_delta_rule alone (GPU): fwd, fwd+bwd, peak memory and a phase breakdown.

    python triton/mdn/bench/bench_op.py                               # target shapes, bf16, 32768 tokens
    python triton/mdn/bench/bench_op.py --phases                      # + intra / scan fwd / scan bwd split
    python triton/mdn/bench/bench_op.py --scan-configs "default 32,4 64,8 32,4;64,8"  # sweep scan tiles: BV,warps or fwd;bwd
    python triton/mdn/bench/bench_op.py --eager-intra                 # intra part in eager torch (default: compiled)
    python triton/mdn/bench/bench_op.py --check --profile             # + accuracy vs fp64 (T=1000), top kernels
    MDN_INTRA_GEMM=fp32 python triton/mdn/bench/bench_op.py           # fp32 GEMMs in the intra part (default: bf16)
    MDN_SCAN_LOAD=tma python triton/mdn/bench/bench_op.py --phases --T 4096  # scans load [C, K] tiles via descriptors
    MDN_SCAN_FORM=six python triton/mdn/bench/bench_op.py --phases --T 4096  # the first scan form (default: pqk)
    python triton/mdn/bench/bench_op.py --intra triton --check        # fused Triton intra part (fwd; bwd in pqk)
    python triton/mdn/bench/bench_op.py --out results/bench_op.jsonl
    python triton/mdn/bench/bench_op.py --env-sets "default|MDN_SCAN_STAGES=1,2,1|MDN_BWD_GEMM=stacked"  # knob A/B

Shapes: H6 K256 V512 (1.3B layer) and H16 K128 V128, T in {2048, 4096, 8192}, B = tokens / T, gates drawn like the
layer at init. Timing: triton.testing.do_bench median (and p20/p80) after a warm-up call; fwd+bwd back-propagates
sum(o * do) into q, k, v and the four gates. Peak memory: max_memory_allocated during one fwd+bwd minus what was
allocated before it (inputs excluded). Prints JSON lines and then a Markdown table.
For the side-by-side with the official kernel and fla, see scripts/bench_ops.py.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

SHAPES = {"h6k256v512": (6, 256, 512), "h16k128v128": (16, 128, 128)}


def layer_gates(B, T, H, device, min_log_mu=-2.0, seed=0):
    """Gates as the MDN layer makes them at init (spec §5.1): alpha + beta <= 1, log_mu >= min_log_mu."""
    import torch
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(seed)
    u = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    A_log, Mu_log = torch.log(u(H) * 16 + 1e-3), torch.log(u(H) * 16 + 1e-3)
    dt = torch.exp(u(H) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp_min(1e-4)
    dt_bias = dt + torch.log(-torch.expm1(-dt))
    log_factor = torch.log(u(H) * 4 + 1e-3)
    a, b, m, e = r(B, T, H), r(B, T, H), r(B, T, H), r(B, T, H) / 16
    eta = torch.tanh(e) + 1
    theta = torch.atan(eta * log_factor.exp())
    beta = torch.sin(theta) ** 2 * torch.sigmoid(b)
    log_alpha = -A_log.exp() * F.softplus(a + dt_bias) + torch.log(torch.cos(theta) ** 2)
    log_mu = (-Mu_log.exp() * F.softplus(m + dt_bias)).clamp_min(min_log_mu)
    return [x.to(device=device, dtype=torch.float32) for x in (log_alpha, beta, log_mu, eta)]


def make_inputs(B, T, H, K, V, dtype, device, requires_grad):
    import torch
    g = torch.Generator(device=device).manual_seed(1)
    q = torch.randn(B, T, H, K, device=device, dtype=dtype, generator=g)
    k = torch.randn(B, T, H, K, device=device, dtype=dtype, generator=g)
    v = torch.randn(B, T, H, V, device=device, dtype=dtype, generator=g)
    xs = [q, k, v] + layer_gates(B, T, H, device)
    return [x.requires_grad_(requires_grad) for x in xs]


def bench(fn, grad_to_none=None):
    from triton.testing import do_bench
    fn()
    p20, p50, p80 = do_bench(fn, quantiles=[0.2, 0.5, 0.8], grad_to_none=grad_to_none, warmup=25, rep=100)
    return {"ms": p50, "p20": p20, "p80": p80}


def run_check(shape, dtype, chunk_size, T=1000, device="cuda"):
    """Relative RMS errors vs the fp64 recurrence (B=1, T=1000, H<=2, the shape's K and V, layer-like gates)."""
    import torch
    from mdn.ops.momentum_delta_rule.chunk import chunk_momentum_delta_rule as op
    from mdn.ops.naive import naive_recurrent_momentum_delta_rule as ref
    H, K, V = SHAPES[shape]
    H = min(H, 2)
    xs = make_inputs(1, T, H, K, V, dtype, device, requires_grad=False)
    g = torch.Generator(device=device).manual_seed(2)
    h0 = torch.randn(2, 1, H, K, V, device=device, generator=g)
    do = torch.randn(1, T, H, V, device=device, dtype=torch.float64, generator=g)
    dht = torch.randn(2, 1, H, K, V, device=device, dtype=torch.float64, generator=g)
    names = ["q", "k", "v", "log_alpha", "beta", "log_mu", "eta", "h0"]

    def run(fn, inputs, **kw):
        leaves = [x.detach().clone().requires_grad_() for x in inputs]
        o, ht = fn(*leaves[:7], initial_state=leaves[7], output_final_state=True, **kw)
        ((o.double() * do).sum() + (ht.double() * dht).sum()).backward()
        return [o, ht[0], ht[1]] + [x.grad for x in leaves]

    out = run(op, xs + [h0], chunk_size=chunk_size)
    exp = run(ref, [x.double() for x in xs + [h0]])
    errs = {}
    for n, a, b in zip(["o", "S", "M"] + ["d" + n for n in names], exp, out):
        a, b = a.double(), b.double()
        errs[n] = float(((a - b).pow(2).mean().sqrt() / a.pow(2).mean().sqrt()).item())
    if os.environ.get("MDN_INTRA", "") == "triton":
        # the no-grad forward (where MDN_INTRA=triton applies): o and the final states vs the fp64 recurrence
        with torch.no_grad():
            o, ht = op(*xs, initial_state=h0, output_final_state=True, chunk_size=chunk_size)
        for n, a, b in zip(["o_nograd", "S_nograd", "M_nograd"], exp[:3], [o, ht[0], ht[1]]):
            a, b = a.double(), b.double()
            errs[n] = float(((a - b).pow(2).mean().sqrt() / a.pow(2).mean().sqrt()).item())
    return errs


def run_profile(fn, top=40):
    """Top CUDA kernels of one call by self device time: [(name, ms, calls)], then ("(all kernels)", the sum of
    every kernel's time, the number of launches), so that the share of the many small kernels shows."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        if t > 0:
            rows.append((e.key[:60], t / 1000.0, e.count))
    rows.sort(key=lambda r: -r[1])
    return rows[:top] + [("(all kernels)", sum(r[1] for r in rows), sum(r[2] for r in rows))]


def run_profile_ops(fn, top=16):
    """Top torch ops of one call by the device time of the kernels they launch themselves, with input shapes:
    [(op, shapes, ms, calls)]; names the producers of the generic elementwise kernels in run_profile's list."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        fn()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages(group_by_input_shape=True):
        t = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        if t > 0 and e.key.startswith("aten::"):
            rows.append((e.key, str(e.input_shapes)[:120], t / 1000.0, e.count))
    rows.sort(key=lambda r: -r[2])
    return rows[:top]


def run_case(shape, T, tokens, dtype, chunk_size, phases, check=False, prof=False):
    import torch
    from mdn.ops.momentum_delta_rule.chunk import chunk_momentum_delta_rule as op
    from mdn.ops.momentum_delta_rule.chunk import scan_form
    from mdn.ops.momentum_delta_rule.chunk_scan import scan_load
    H, K, V = SHAPES[shape]
    B = max(1, tokens // T)
    dev = "cuda"
    row = {"shape": shape, "B": B, "T": T, "H": H, "K": K, "V": V, "dtype": str(dtype).replace("torch.", ""),
           "chunk_size": chunk_size, "scan_config": os.environ.get("MDN_SCAN_CONFIG", "default"),
           "scan_load": scan_load(), "scan_form": scan_form(),
           "compile_intra": os.environ.get("MDN_CHUNK_COMPILE", "") != "0",
           "device": torch.cuda.get_device_name(), "torch": torch.__version__}
    import triton
    row["triton"] = triton.__version__

    xs = make_inputs(B, T, H, K, V, dtype, dev, requires_grad=False)
    with torch.no_grad():
        row["fwd"] = bench(lambda: op(*xs, output_final_state=True, chunk_size=chunk_size))

    leaves = make_inputs(B, T, H, K, V, dtype, dev, requires_grad=True)
    do = torch.randn(B, T, H, V, device=dev, dtype=dtype)
    # the forward as training runs it (autograd graph, states saved for the backward where a knob says so)
    row["fwd_grad"] = bench(lambda: op(*leaves, output_final_state=True, chunk_size=chunk_size))

    def fwd_bwd():
        o, _ = op(*leaves, output_final_state=True, chunk_size=chunk_size)
        o.backward(do)

    row["fwd_bwd"] = bench(fwd_bwd, grad_to_none=leaves)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fwd_bwd()
    torch.cuda.synchronize()
    row["peak_mem_gib"] = (torch.cuda.max_memory_allocated() - base) / 2 ** 30
    for x in leaves:
        x.grad = None

    if phases:
        row.update(run_phases(xs, do, chunk_size))
    if prof:
        def fwd_bwd_fresh():  # as do_bench runs it (grad_to_none): no accumulation into the leaves' .grad
            for x in leaves:
                x.grad = None
            fwd_bwd()
        row["profile"] = run_profile(fwd_bwd_fresh)
        with torch.no_grad():
            row["profile_fwd"] = run_profile(lambda: op(*xs, output_final_state=True, chunk_size=chunk_size), top=20)
        row["profile_ops"] = run_profile_ops(fwd_bwd_fresh)
        for x in leaves:
            x.grad = None
    if check:
        row["check"] = run_check(shape, dtype, chunk_size)
    from mdn.ops.momentum_delta_rule.chunk import _bf16_gemm_wanted
    op_dtype = torch.float32 if dtype == torch.float32 else torch.bfloat16
    row["intra_gemm"] = "bf16" if _bf16_gemm_wanted(op_dtype) else "fp32"
    row["intra"] = os.environ.get("MDN_INTRA", "torch") or "torch"
    row["save_states"] = os.environ.get("MDN_SAVE_STATES", "0") or "0"
    # the knobs' own readers, so that a row records the default that ran (MDN_FWD_O was recorded as "scan" after
    # the default had become "kernel", in the eleventh and twelfth sessions' rows)
    from mdn.ops.momentum_delta_rule import chunk_scan as cs
    from mdn.ops.momentum_delta_rule import chunk_scan_pqk as sp
    row["fwd_o"] = sp.fwd_o()
    row["dhc"] = cs.dhc_format()
    row["scan_v"] = sp.scan_v()
    row["scan_v_dots"] = sp.scan_v_dots()
    row["tril_inv"] = os.environ.get("MDN_TRIL_INV", "") or "auto"  # auto: the Triton kernel on CUDA
    row["tril_inv_fwd"] = os.environ.get("MDN_TRIL_INV_FWD", "") or "auto"
    row["tril_inv_bwd"] = os.environ.get("MDN_TRIL_INV_BWD", "") or "auto"
    row["bwd_gemm"] = sp.bwd_gemm()
    row["scan_stages"] = os.environ.get("MDN_SCAN_STAGES", "") or "default"
    row["bwd_dg"] = sp.bwd_dg()
    from mdn.ops.momentum_delta_rule import chunk_chain_bwd as cb
    from mdn.ops.momentum_delta_rule import chunk_intra_qk as cq
    row["intra_qk"] = cq.intra_qk_mode()
    row["bwd_chain"] = cb.chain_mode()
    row["bwd_chain_config"] = os.environ.get("MDN_BWD_CHAIN_CONFIG", "") or "default"
    row["compile_mode"] = os.environ.get("MDN_CHUNK_COMPILE_MODE", "") or "default"
    row["gates_segsum"] = os.environ.get("MDN_GATES_SEGSUM", "") or "auto"  # intra_gates.segsum_dot
    if row["intra"] == "triton":
        row["intra_dot"] = os.environ.get("MDN_INTRA_DOT", "ieee") or "ieee"
    return row


def run_phases(xs, do, C):
    """Times of the pieces: intra fwd (torch; compiled unless --eager-intra), intra fwd (fused Triton, with
    --intra triton), intra fwd+bwd (autograd, scan grads random), scan fwd, scan bwd."""
    import torch
    from mdn.ops.momentum_delta_rule.chunk import _pack_dense, _bf16_gemm_wanted, _run_intra, scan_form
    from mdn.ops.momentum_delta_rule.chunk_scan import scan_bwd, scan_fwd
    from mdn.ops.momentum_delta_rule.chunk_scan_pqk import scan_pqk_bwd, scan_pqk_fwd
    form = scan_form()
    if form == "pqk":  # the scan ops of MDN_SCAN_FORM (same argument layout: intra outputs, h0, offsets, ...)
        scan_fwd, scan_bwd = scan_pqk_fwd, scan_pqk_bwd
    q, k, v, la, beta, lm, eta = xs
    B, T, H, K = q.shape
    op_dtype = torch.float32 if q.dtype == torch.float32 else torch.bfloat16
    NT = -(-T // C)
    off = torch.arange(B + 1, device=q.device, dtype=torch.int32) * NT
    packed = [_pack_dense(x, C) for x in (q, k, v)]
    gates = _pack_dense(torch.stack([la, beta, lm, eta], -1), C)
    gl = [gates[..., i] for i in range(4)]
    bf16_gemm = _bf16_gemm_wanted(op_dtype)

    def chunk_mdn_intra(q, k, v, la, beta, lm, eta, scale, out_dtype):
        """packing + intra exactly as the op runs it (compiled unless --eager-intra), from [B, T, H, D] inputs"""
        return _run_intra(q, k, v, la, beta, lm, eta, None, B * NT, C, scale, True, True, out_dtype, bf16_gemm,
                          form)

    out = {}
    with torch.no_grad():
        out["intra_fwd"] = bench(lambda: chunk_mdn_intra(*xs, K ** -0.5, out_dtype=op_dtype))
        if os.environ.get("MDN_INTRA", "") == "triton":
            from mdn.ops.momentum_delta_rule.chunk_intra_fwd import chunk_mdn_intra_fwd_triton
            out["intra_fwd_triton"] = bench(
                lambda: chunk_mdn_intra_fwd_triton(*packed, *gl, K ** -0.5, out_dtype=op_dtype))
        intra = chunk_mdn_intra(*xs, K ** -0.5, out_dtype=op_dtype)
        out["scan_fwd"] = bench(lambda: scan_fwd(*intra, None, off))
        o, vt, ht = scan_fwd(*intra, None, off)
        dO = torch.randn_like(o)
        out["scan_bwd"] = bench(lambda: scan_bwd(*intra[1:], None, off, vt, dO, None))
        grads = scan_bwd(*intra[1:], None, off, vt, dO, None)
    leaves = [x.detach().requires_grad_() for x in xs]

    def intra_fb():
        r = chunk_mdn_intra(*leaves, K ** -0.5, out_dtype=op_dtype)
        torch.autograd.backward(list(r), list(grads[:len(r)]))

    out["intra_fwd_bwd"] = bench(intra_fb, grad_to_none=leaves)
    return out


PER_PROCESS_KNOBS = ("MDN_CHUNK_COMPILE", "MDN_CHUNK_COMPILE_MODE", "MDN_CHUNK_COMPILE_BACKEND")


def parse_env_sets(text: str) -> list:
    """--env-sets: [[(VAR, VALUE), ...], ...]; [[]] (one run, the environment as it is) when empty."""
    sets = []
    for part in (text.split("|") if text.strip() else ["default"]):
        words = part.split()
        if words == ["default"]:
            sets.append([])
            continue
        pairs = []
        for w in words:
            var, eq, val = w.partition("=")
            if not eq or not var.startswith("MDN_"):
                raise ValueError(f"--env-sets: {w!r} in {part.strip()!r}; expected MDN_VAR=VALUE or 'default'")
            pairs.append((var, val))
        if not pairs:
            raise ValueError(f"--env-sets: empty set in {text!r}")
        sets.append(pairs)
    # the op compiles its intra part once per process: a compile knob set in a later run would not take effect
    per_process = sorted({v for pairs in sets for v, _ in pairs if v in PER_PROCESS_KNOBS})
    if per_process and len(sets) > 1:
        raise ValueError(f"--env-sets: {', '.join(per_process)} take effect once per process (the compiled intra "
                         f"part is cached); A/B them in separate runs, e.g. VAR=x python bench_op.py ...")
    return sets


_ENV_SET_VARS: dict = {}  # what apply_env_set changed: var -> the value before (None: was unset)


def apply_env_set(pairs) -> None:
    """Undo the previous set, then set this one's variables."""
    for var, old in _ENV_SET_VARS.items():
        if old is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = old
    _ENV_SET_VARS.clear()
    for var, val in pairs:
        _ENV_SET_VARS[var] = os.environ.get(var)
        os.environ[var] = val


def apply_scan_config(cfg, env_set) -> None:
    """MDN_SCAN_CONFIG for one run: --scan-configs' entry ``cfg`` if given; else the env set's own value if it has
    one (it was set by apply_env_set and stays); else unset."""
    if cfg:
        os.environ["MDN_SCAN_CONFIG"] = cfg
    elif "MDN_SCAN_CONFIG" not in dict(env_set):
        os.environ.pop("MDN_SCAN_CONFIG", None)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--T", default="2048,4096,8192")
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--phases", action="store_true", help="also time intra / scan pieces")
    p.add_argument("--scan-configs", default="",
                   help='space-separated list to sweep: "BV,warps" (both phases), "BV,w;BV,w" (fwd;bwd) or "default"; '
                        '--phases applies to the first only')
    p.add_argument("--env-sets", default="",
                   help='"|"-separated list of knob settings to A/B in one process, each "default" or space-separated '
                        'VAR=VALUE (e.g. "default|MDN_SCAN_STAGES=2|MDN_BWD_GEMM=stacked MDN_SCAN_STAGES=1,2,1"); '
                        'each run sets only its own, on top of the environment; rows record it as "env"')
    p.add_argument("--eager-intra", action="store_true", help="MDN_CHUNK_COMPILE=0 (eager torch intra part)")
    p.add_argument("--intra", default="torch", choices=["torch", "triton"],
                   help="intra part: torch (default) or the fused Triton kernels (MDN_INTRA=triton: forward and, in "
                        "the pqk scan form, backward; the six form's is forward-only, so its fwd+bwd uses torch)")
    p.add_argument("--check", action="store_true", help="accuracy vs the fp64 recurrence (T=1000) per shape")
    p.add_argument("--profile", action="store_true", help="top CUDA kernels of one fwd+bwd (first config)")
    p.add_argument("--out", default="", help="append JSON lines here")
    a = p.parse_args(argv)

    import torch
    from mdn.ops.momentum_delta_rule.chunk import scan_form
    from mdn.ops.momentum_delta_rule.chunk_scan import scan_load
    try:
        scan_load()  # a bad MDN_SCAN_LOAD fails here, before any run
        scan_form()  # and a bad MDN_SCAN_FORM
    except ValueError as e:
        print(f"bench_op.py: {e}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("bench_op.py needs a CUDA device", file=sys.stderr)
        return 2
    if a.eager_intra:
        os.environ["MDN_CHUNK_COMPILE"] = "0"
    if a.intra == "triton":
        os.environ["MDN_INTRA"] = "triton"
    dtype = getattr(torch, a.dtype)
    configs = a.scan_configs.split() or [None]
    try:
        env_sets = parse_env_sets(a.env_sets)
    except ValueError as e:
        print(f"bench_op.py: {e}", file=sys.stderr)
        return 2
    rows = []
    for shape in a.shapes.split(","):
        for T in (int(t) for t in a.T.split(",")):
            for i_run, (i_cfg, cfg, env_set) in enumerate((i, c, e) for e in env_sets for i, c in enumerate(configs)):
                apply_env_set(env_set)
                if cfg == "default":
                    cfg = None
                apply_scan_config(cfg, env_set)
                try:
                    # --phases: every env set's first scan config; --check and --profile: the first run only
                    row = run_case(shape, T, a.tokens, dtype, a.chunk_size, a.phases and i_cfg == 0,
                                   check=a.check and i_run == 0, prof=a.profile and i_run == 0)
                except torch.cuda.OutOfMemoryError as e:
                    row = {"shape": shape, "T": T, "scan_config": cfg or "default", "scan_load": scan_load(),
                           "scan_form": scan_form(), "error": f"oom: {e}"}
                    torch.cuda.empty_cache()
                except Exception as e:  # e.g. triton's OutOfResources (shared memory) for a knob that cannot fit
                    if type(e).__name__ != "OutOfResources":
                        raise
                    row = {"shape": shape, "T": T, "scan_config": cfg or "default", "scan_load": scan_load(),
                           "scan_form": scan_form(), "error": f"out of resources: {e}"}
                row["env"] = " ".join(f"{k}={v}" for k, v in env_set) or "default"
                print(json.dumps(row), flush=True)
                rows.append(row)
                if a.out:
                    with open(a.out, "a") as f:
                        f.write(json.dumps(row) + "\n")

    print()
    cols = ["fwd", "fwd_grad", "fwd_bwd", "intra_fwd", "intra_fwd_triton", "intra_fwd_bwd", "scan_fwd", "scan_bwd"]
    if not any("intra_fwd_triton" in r for r in rows):
        cols.remove("intra_fwd_triton")
    print("| shape | T | B | env | scan cfg | scan load | scan form | " + " | ".join(c + " ms" for c in cols)
          + " | peak GiB |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(cols) + "---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['shape']} | {r['T']} | | {r['env']} | {r['scan_config']} | {r['scan_load']} | {r['scan_form']} | "
                  f"{r['error'][:40]} |")
            continue
        vals = [f"{r[c]['ms']:.3f}" if c in r else "" for c in cols]
        print(f"| {r['shape']} | {r['T']} | {r['B']} | {r['env']} | {r['scan_config']} | {r['scan_load']} | {r['scan_form']} | "
              + " | ".join(vals)
              + f" | {r['peak_mem_gib']:.2f} |")
    for r in rows:
        if "check" in r:
            print(f"check {r['shape']} ({r['intra_gemm']} intra GEMMs, {r['intra']} no-grad intra): "
                  + " ".join(f"{n} {e:.1e}" for n, e in r["check"].items()))
        if "profile" in r:
            print(f"profile {r['shape']} T={r['T']} (self CUDA ms, calls):")
            for name, ms, n in r["profile"]:
                print(f"  {ms:8.3f} {n:5d}  {name}")
        if "profile_fwd" in r:
            print(f"profile {r['shape']} T={r['T']} forward without grad (self CUDA ms, calls):")
            for name, ms, n in r["profile_fwd"]:
                print(f"  {ms:8.3f} {n:5d}  {name}")
        if "profile_ops" in r:
            print(f"profile {r['shape']} T={r['T']} by torch op (self CUDA ms, calls, input shapes):")
            for name, shapes, ms, n in r["profile_ops"]:
                print(f"  {ms:8.3f} {n:5d}  {name} {shapes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
