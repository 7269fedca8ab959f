#!/usr/bin/env python3
"""Side-by-side op benchmark: our MDN chunk op vs the official MDN kernel, fla GDN/KDA and SDPA.

Each implementation runs in its own child process (the official code ships its own `fla` package, which clashes
with fla from PyPI), one after another with the GPU to itself. Prints JSON lines and a Markdown table.

    python scripts/bench_ops.py --impls mdn,official,gdn,sdpa --out results/bench_ops.jsonl

Environment: MDN_OFFICIAL_PATH = folder holding the official `fla` package (patched only to import, spec §3.5);
fla (flash-linear-attention + fla-core) importable for gdn/kda. Missing ones are reported `unavailable`.
Timing: triton.testing.do_bench median (p20, p80), after a warm-up call that also runs any autotuning.
Accuracy: every MDN implementation is also compared with the float64 recurrence at a small size.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback

SHAPES = {"h6k256v512": (6, 256, 512), "h16k128v128": (16, 128, 128)}


def layer_like_gates(B, T, H, device, min_log_mu=-2.0, seed=0):
    """Gates drawn like the MDN layer at init (spec §5.1, `trig` constraint)."""
    import torch
    import torch.nn.functional as F
    g = torch.Generator(device="cpu").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    u = lambda *s: torch.rand(*s, generator=g)
    A_log = torch.log(u(H) * 16 + 1e-3)
    Mu_log = torch.log(u(H) * 16 + 1e-3)
    dt = torch.exp(u(H) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp_min(1e-4)
    dt_bias = dt + torch.log(-torch.expm1(-dt))
    log_factor = torch.log(u(H) * 4 + 1e-3)
    a, b, m, e = r(B, T, H), r(B, T, H), r(B, T, H), r(B, T, H) / 16
    log_alpha = -A_log.exp() * F.softplus(a + dt_bias)
    log_mu = -Mu_log.exp() * F.softplus(m + dt_bias)
    eta = torch.tanh(e) + 1
    theta = torch.atan(eta * log_factor.exp())
    beta = torch.sin(theta) ** 2 * torch.sigmoid(b)
    log_alpha = log_alpha + torch.log(torch.cos(theta) ** 2)
    log_mu = log_mu.clamp_min(min_log_mu)
    return [x.to(device=device, dtype=torch.float32) for x in (log_alpha, beta, log_mu, eta)]


def rel_rms(ref, out):
    ref, out = ref.double(), out.double()
    return float((ref - out).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30))


# ---------------------------------------------------------------------------------------------------------------
# implementations: make(q, k, v, la, beta, lm, eta) -> o  (all [B,T,H,.] layout)

def impl_fn(name):
    import torch
    if name == "mdn":
        from mdn.ops import chunk_momentum_delta_rule as op
        return lambda q, k, v, la, b, lm, e, s0=None: op(q, k, v, la, b, lm, e, initial_state=s0, output_final_state=True)
    if name == "mdn_recurrent":
        from mdn.ops import fused_recurrent_momentum_delta_rule as op
        return lambda q, k, v, la, b, lm, e, s0=None: op(q, k, v, la, b, lm, e, initial_state=s0, output_final_state=True)
    if name == "official":
        path = os.environ.get("MDN_OFFICIAL_PATH")
        if not path:
            raise ImportError("MDN_OFFICIAL_PATH is not set")
        sys.path.insert(0, path)
        from fla.ops.momentum_delta_rule import chunk_mode_rule as op
        return lambda q, k, v, la, b, lm, e, s0=None: op(q, k, v, la, lm, p=None, beta=b, eta=e, initial_state=s0,
                                                        output_final_state=True, use_qk_l2norm_in_kernel=True,
                                                        use_p_times_alpha=True)
    if name == "gdn":
        import fla.ops.common.chunk_o as fco
        # fla refuses the gated dq/dk backward on Hopper with Triton 3.4-3.7.0 (fla issue 640: dk may be wrong).
        # Bypassed for TIMING ONLY; its gradients are not checked here.
        fco.TRITON_ABOVE_3_7_1 = True
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as op
        return lambda q, k, v, la, b, lm, e, s0=None: op(q, k, v, la, b, use_qk_l2norm_in_kernel=True,
                                                        output_final_state=True)
    if name == "kda":
        from fla.ops.kda import chunk_kda as op
        return lambda q, k, v, la, b, lm, e, s0=None: op(q, k, v, la[..., None].expand_as(k).contiguous(), b,
                                                        use_qk_l2norm_in_kernel=True, output_final_state=True)
    if name == "sdpa":
        import torch.nn.functional as F

        def sdpa(q, k, v, la, b, lm, e, s0=None):
            # SDPA needs equal head dims; the flash backend at the GDN comparison width (16 heads x 128).
            with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.FLASH_ATTENTION]):
                o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
            return o.transpose(1, 2), None
        return sdpa
    raise ValueError(f"unknown impl {name!r}")


def accuracy(name, fn, device):
    """Errors vs the float64 recurrence, bf16 inputs, layer-like gates, T=1000 (T mod 64 != 0)."""
    import torch
    from mdn.ops.naive import naive_recurrent_momentum_delta_rule as ref_op
    B, T, H, K, V = 1, 1000, 2, 64, 128
    torch.manual_seed(1)
    q = torch.randn(B, T, H, K, device=device, dtype=torch.bfloat16)
    k = torch.randn(B, T, H, K, device=device, dtype=torch.bfloat16)
    v = torch.randn(B, T, H, V, device=device, dtype=torch.bfloat16)
    la, b, lm, e = layer_like_gates(B, T, H, device, seed=1)
    s0 = torch.randn(2, B, H, K, V, device=device)
    ins = [q, k, v, la, b, lm, e, s0]
    names = ["q", "k", "v", "log_alpha", "beta", "log_mu", "eta", "initial_state"]
    do = torch.randn(B, T, H, V, device=device)
    dst = torch.randn(2, B, H, K, V, device=device)

    def grads(f, xs):
        xs = [x.detach().clone().requires_grad_(True) for x in xs]
        o, st = f(*xs)
        loss = (o.float() * do).sum() + (st.float() * dst).sum()
        loss.backward()
        return o.detach(), st.detach(), [x.grad for x in xs]

    o_r, s_r, g_r = grads(ref_op_wrapper(ref_op), [x.double() for x in ins])
    o, s, g = grads(fn, ins)
    errs = {"o": rel_rms(o_r, o), "S": rel_rms(s_r[0], s[0]), "M": rel_rms(s_r[1], s[1])}
    for n, a_, b_ in zip(names, g_r, g):
        errs["d" + n] = rel_rms(a_, b_) if b_ is not None else float("nan")
    return errs


def ref_op_wrapper(ref_op):
    return lambda q, k, v, la, b, lm, e, s0=None: ref_op(q, k, v, la, b, lm, e, initial_state=s0, output_final_state=True)


def child(name, args):
    import torch
    from triton.testing import do_bench
    device = "cuda"
    try:
        fn = impl_fn(name)
    except Exception as exc:  # noqa: BLE001
        print(json.dumps({"impl": name, "status": "unavailable", "reason": f"{type(exc).__name__}: {exc}"}), flush=True)
        return
    if name in ("mdn", "official", "mdn_recurrent") and not args.no_accuracy:
        try:
            errs = accuracy(name, fn, device)
            print(json.dumps({"impl": name, "kind": "accuracy", "case": "B1 T1000 H2 K64 V128 bf16 layer-gates", **errs}), flush=True)
        except Exception as exc:  # noqa: BLE001
            print(json.dumps({"impl": name, "kind": "accuracy", "status": "failed", "reason": f"{type(exc).__name__}: {exc}"}), flush=True)
    for shape in args.shapes.split(","):
        H, K, V = SHAPES[shape]
        if name == "sdpa" and shape != "h16k128v128":
            continue
        if f"{name}:{shape}" in args.skip.split(","):
            print(json.dumps({"impl": name, "kind": "timing", "shape": shape, "status": "skipped",
                              "reason": "--skip (device-time budget)"}), flush=True)
            continue
        for T in [int(t) for t in args.T.split(",")]:
            B = max(1, args.tokens // T)
            torch.manual_seed(0)
            q = torch.randn(B, T, H, K, device=device, dtype=torch.bfloat16, requires_grad=True)
            k = torch.randn(B, T, H, K, device=device, dtype=torch.bfloat16, requires_grad=True)
            v = torch.randn(B, T, H, V, device=device, dtype=torch.bfloat16, requires_grad=True)
            gates = [x.requires_grad_(True) for x in layer_like_gates(B, T, H, device)]
            ins = [q, k, v, *gates]
            do = torch.randn(B, T, H, V, device=device, dtype=torch.bfloat16)
            for mode in args.modes.split(","):
                row = {"impl": name, "kind": "timing", "shape": shape, "B": B, "T": T, "H": H, "K": K, "V": V,
                       "dtype": "bfloat16", "mode": mode}
                try:
                    if mode == "fwd":
                        def run():
                            with torch.no_grad():
                                fn(*ins)
                    else:
                        def run():
                            o, _ = fn(*ins)
                            o.backward(do)
                    t0 = time.time()
                    run()  # warm-up: compiles and autotunes
                    torch.cuda.synchronize()
                    row["first_call_s"] = round(time.time() - t0, 2)
                    torch.cuda.empty_cache()
                    base = torch.cuda.memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                    run()
                    torch.cuda.synchronize()
                    row["peak_mem_gib"] = round((torch.cuda.max_memory_allocated() - base) / 2**30, 3)
                    med, p20, p80 = do_bench(run, quantiles=[0.5, 0.2, 0.8], grad_to_none=ins, warmup=50, rep=300)
                    row[f"{mode}_ms"] = round(med, 3)  # mode-named copy: what mdnctl report's plots look for
                    row.update(ms=round(med, 3), ms_p20=round(p20, 3), ms_p80=round(p80, 3),
                               tokens_per_s=round(B * T / (med / 1e3)), status="ok")
                except Exception as exc:  # noqa: BLE001
                    row.update(status="failed", reason=f"{type(exc).__name__}: {str(exc)[:300]}")
                    traceback.print_exc()
                    torch.cuda.empty_cache()
                print(json.dumps(row), flush=True)
            del q, k, v, gates, ins, do
            torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impls", default="mdn,official,gdn,sdpa")
    ap.add_argument("--shapes", default="h6k256v512,h16k128v128")
    ap.add_argument("--T", default="2048,4096,8192")
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--modes", default="fwd,fwdbwd")
    ap.add_argument("--out", default="")
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--skip", default="", help="impl:shape pairs to leave out, e.g. official:h16k128v128")
    ap.add_argument("--child", default="")
    args = ap.parse_args()
    if args.child:
        child(args.child, args)
        return
    import torch
    meta = {"kind": "meta", "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "argv": sys.argv}
    try:
        import triton
        meta["triton"] = triton.__version__
    except ImportError:
        pass
    rows = [meta]
    print(json.dumps(meta), flush=True)
    for name in args.impls.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", name] + [a for a in sys.argv[1:] if a]
        # Stream the child's lines as they come: a run cut short by a timeout still shows what it measured.
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1)
        for line in p.stdout:
            try:
                row = json.loads(line)
                # every row carries the card and versions, so a report never mixes machines unknowingly
                row.update({k: meta[k] for k in ("device", "torch", "triton", "date") if k in meta})
                row.setdefault("op", row.get("impl"))
                rows.append(row)
                print(json.dumps(row), flush=True)
            except ValueError:
                pass
        p.wait()
        if p.returncode != 0:
            rows.append({"impl": name, "status": "failed", "reason": f"child exit {p.returncode}"})
    if args.out:
        with open(args.out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    # Markdown summary
    print("\n| impl | shape | T | B | fwd ms | fwd+bwd ms | fwd+bwd peak GiB |\n|---|---|---|---|---|---|---|")
    tim = {}
    for r in rows:
        if r.get("kind") == "timing":
            tim.setdefault((r["impl"], r["shape"], r["T"], r["B"]), {})[r["mode"]] = r
    for (impl, shape, T, B), m in tim.items():
        f = m.get("fwd", {})
        fb = m.get("fwdbwd", {})
        print(f"| {impl} | {shape} | {T} | {B} | {f.get('ms', f.get('status', '-'))} | {fb.get('ms', fb.get('status', '-'))} | {fb.get('peak_mem_gib', '-')} |")
    for r in rows:
        if r.get("kind") == "accuracy":
            print("accuracy", r["impl"], {k: (f"{v:.2e}" if isinstance(v, float) else v) for k, v in r.items() if k not in ("impl", "kind")})
        if r.get("status") == "unavailable":
            print("unavailable", r["impl"], r.get("reason"))


if __name__ == "__main__":
    main()
