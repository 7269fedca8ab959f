"""Writes the report test fixtures. The numbers are SYNTHETIC (smooth formulas), not measurements: they only
exercise the report code. Run from report/testdata: python3 gen_fixtures.py"""
import cmath, hashlib, json, math, os

H100 = "NVIDIA H100 80GB HBM3"
H200 = "NVIDIA H200"
VERS = {"torch": "2.11.0+cu128", "triton": "3.6.0", "mdn": "0.1.0"}


def vhash(*parts):
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def bench_row(op, T, device=H100, versions=VERS, status="ok", scale=1.0, chunk=64, constraint="none",
              repeat=0, extra=None):
    B, H, K, V = 4, 8, 128, 128
    point = vhash("point", op, T, chunk, constraint, repeat)
    row = {"point": point, "variant": vhash(op, T, chunk, constraint, "fp16"), "status": status, "op": op,
           "B": B, "T": T, "H": H, "K": K, "V": V, "dtype": "bf16", "mode": "fwdbwd",
           "device": device, "versions": dict(versions), "repeat": repeat}
    if op in ("mdn", "gdn", "kda"):
        row["chunk_size"] = chunk
    if op == "mdn":
        row["constraint"] = constraint
    if status == "ok":
        base = {"mdn": 0.9, "gdn": 0.75, "kda": 1.1, "sdpa": 0.35, "mamba2": 0.6}[op]
        quad = 0.00011 if op == "sdpa" else 0.0
        fwd = scale * (base * T / 1024 + quad * T * T / 1024) * (1 + 0.03 * repeat)
        fb = 2.9 * fwd
        row.update({"fwd_ms": round(fwd, 4), "fwd_ms_p20": round(fwd * 0.98, 4), "fwd_ms_p80": round(fwd * 1.03, 4),
                    "fwdbwd_ms": round(fb, 4), "fwdbwd_ms_p20": round(fb * 0.97, 4), "fwdbwd_ms_p80": round(fb * 1.04, 4),
                    "tokens_per_s": round(B * T / (fb / 1e3), 1), "peak_mem_bytes": int(B * T * H * (K + V) * 2 * 6)})
    else:
        row["error"] = {"failed": "CUDA out of memory. Tried to allocate 2.00 GiB\nstderr tail...",
                        "unavailable": "fla is not installed",
                        "incorrect": "dq max abs err 3.1e-01 > tol 1e-02",
                        "timeout": "point exceeded 600 s"}[status]
    if extra:
        row.update(extra)
    return row


def write_jsonl(path, rows, tail=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")
        if tail is not None:
            f.write(tail)


# --- baselines: one H100, ops × T, with failures, an unavailable baseline and a repeated point ---------------
rows = []
for T in (1024, 2048, 4096, 8192):
    for op in ("gdn", "mdn", "sdpa", "mamba2"):
        if op == "sdpa" and T == 8192:
            rows.append(bench_row(op, T, status="failed"))
        elif op == "sdpa" and T == 2048:
            # timed out first, then measured again on resume: the later row supersedes the first
            rows.append(bench_row(op, T, status="timeout", extra={"time": "2026-11-20T10:00:00Z"}))
        else:
            rows.append(bench_row(op, T))
    rows.append(bench_row("kda", T, status="unavailable"))
rows.append(bench_row("mdn", 4096, repeat=1))
rows.append(bench_row("mdn", 4096, repeat=2))
rows.append(bench_row("sdpa", 2048, extra={"time": "2026-11-20T11:00:00Z"}))
write_jsonl("baselines/results.jsonl", rows)

# --- two machines and two torch versions in one directory -----------------------------------------------
rows = [bench_row(op, T) for op in ("gdn", "mdn") for T in (1024, 4096)]
rows += [bench_row(op, T, device=H200, scale=0.8, versions={**VERS, "torch": "2.10.0+cu128"}) for op in ("gdn", "mdn") for T in (1024, 4096)]
write_jsonl("mixed/h100/results.jsonl", rows[:4])
write_jsonl("mixed/h200/results.jsonl", rows[4:])

# --- chunk sizes × constraints (one incorrect variant) -------------------------------------------------------
rows = []
for c in ("none", "clamp", "trig"):
    for cs in (16, 32, 64, 128):
        if c == "trig" and cs == 128:
            rows.append(bench_row("mdn", 4096, chunk=cs, constraint=c, status="incorrect"))
            continue
        s = {16: 1.6, 32: 1.15, 64: 1.0, 128: 1.08}[cs] * {"none": 1.0, "clamp": 1.01, "trig": 1.04}[c]
        rows.append(bench_row("mdn", 4096, chunk=cs, constraint=c, scale=s))
write_jsonl("chunks/results.jsonl", rows)

# --- truncated files --------------------------------------------------------------------------------------
ok = [bench_row("gdn", 1024), bench_row("mdn", 1024)]
write_jsonl("bad/truncated_last/results.jsonl", ok, tail=json.dumps(bench_row("sdpa", 1024))[:57])
with open("bad/truncated_mid.jsonl", "w") as f:
    f.write(json.dumps(ok[0]) + "\n")
    f.write(json.dumps(ok[1])[:40] + "\n")
    f.write(json.dumps(bench_row("sdpa", 1024)) + "\n")

# --- training runs: metrics.jsonl, one as runner events and one flat --------------------------------------
def train_rows(model, final, tps, steps=60, tokens_per_step=8 * 512):
    out = []
    for s in range(1, steps + 1):
        loss = final + (5.6 - final) * math.exp(-s / 12.0) + 0.03 * math.sin(1.7 * s)
        warm = 0.3 if s <= 3 else 1.0
        out.append({"step": s, "loss": round(loss, 4), "lr": round(3e-4 * min(1, s / 10), 8),
                    "grad_norm": round(1.0 + 2.0 * math.exp(-s / 20), 4), "tokens": s * tokens_per_step,
                    "tokens_per_s": round(tps * warm * (1 + 0.02 * math.sin(s)), 1),
                    "tokens_per_s_per_gpu": round(tps * warm * (1 + 0.02 * math.sin(s)), 1),
                    "peak_mem_bytes": 2_400_000_000, "model": model, "device": H100, "versions": VERS})
    return out

ev = [{"v": 1, "event": "metric", "job": "train-1", "t": 1767000000.0 + i, "data": d}
      for i, d in enumerate(train_rows("mdn-tiny", 2.1, 51000.0))]
ev.insert(0, {"v": 1, "event": "start", "job": "train-1", "t": 1766999999.0, "kind": "train", "pid": 42, "host": "h"})
write_jsonl("train/mdn-tiny/metrics.jsonl", ev)
write_jsonl("train/gdn-tiny/metrics.jsonl", train_rows("gdn-tiny", 2.25, 56000.0))

# --- MQAR: accuracy per model × width × lr ------------------------------------------------------------------
rows = []
for model, constraint, q in (("mdn", "trig", 1.0), ("mdn", "none", 0.97), ("gdn", "", 0.93), ("transformer", "", 0.99)):
    for L, N in ((128, 8), (256, 16), (512, 64)):
        for d in (64, 128, 256):
            for lr in (1e-4, 4.6e-4, 2.2e-3, 1e-2):
                hard = N / 64.0
                acc = q * (1 - 0.6 * hard * math.exp(-d / 128.0)) * (1 - 0.2 * abs(math.log10(lr) + 3) / 2)
                r = {"task": "mqar", "model": model, "seq_len": L, "num_pairs": N, "d_model": d, "lr": lr,
                     "status": "ok", "accuracy": round(max(0.0, min(1.0, acc)), 4), "device": H100, "versions": VERS,
                     "variant": vhash(model, constraint, L, N, d, lr), "point": vhash("p", model, constraint, L, N, d, lr)}
                if constraint:
                    r["constraint"] = constraint
                rows.append(r)
write_jsonl("mqar/results.jsonl", rows)

# --- stability grid (spec §5.3 recipe), CSV as `mdnctl stability` would write it --------------------------
os.makedirs("stability", exist_ok=True)
with open("stability/stability.csv", "w") as f:
    f.write("alpha,beta,eta,mu,rho,eig1_re,eig1_im,eig2_re,eig2_im,spectral_radius,schur_stable,right_half,oscillatory\n")
    for alpha in (0.9,):
        for mu in (0.5, 0.9):
            for i in range(21):
                beta = i / 20
                for j in range(21):
                    eta = 4.0 * j / 20
                    rho = alpha
                    tr = alpha + mu - beta * eta * rho
                    det = alpha * mu
                    disc = tr * tr - 4 * det
                    s = cmath.sqrt(disc)
                    l1, l2 = (tr + s) / 2, (tr - s) / 2
                    r = max(abs(l1), abs(l2))
                    f.write(f"{alpha},{beta:.2f},{eta:.2f},{mu},alpha,{l1.real:.6f},{l1.imag:.6f},{l2.real:.6f},{l2.imag:.6f},"
                            f"{r:.6f},{str(r < 1).lower()},{str(tr > 0).lower()},{str(disc < 0).lower()}\n")

# --- rows shaped like `mdnctl sweep` writes them: mode axis, ms/ms_p20/ms_p80, gpu index, nested params,
# versions with the CLI build (which differs between two builds here and must not split tables) ---------------
rows = []
for i, (op, T, mode) in enumerate((o, T, m) for m in ("fwd", "fwdbwd") for o in ("gdn", "mdn") for T in (2048, 8192)):
    ms = {"gdn": 0.7, "mdn": 0.85}[op] * T / 1024 * (2.9 if mode == "fwdbwd" else 1.0)
    vers = {"torch": "2.11.0+cu128", "triton": "3.6.0", "mdnctl": "dev+abc123" if i % 2 else "dev+def456"}
    rows.append({"sweep": "baselines", "point": vhash("pt", op, T, mode), "variant": vhash(op), "job": "bench",
                 "op": op, "chunk_size": 64, "constraint": "layer_init", "dtype": "bfloat16", "mode": mode,
                 "B": 4, "T": T, "H": 16, "K": 128, "V": 128, "repeat": 0, "launch": {"op": op, "chunk_size": 64},
                 "slot": f"gpu{i % 2}", "gpu": str(i % 2), "device": H100, "versions": vers,
                 "time": f"2026-11-26T10:{i:02d}:00Z", "params": {"op": op, "T": T, "mode": mode, "seed": 0},
                 "status": "ok", "ms": round(ms, 4), "ms_p20": round(ms * 0.98, 4), "ms_p80": round(ms * 1.03, 4),
                 "tokens_per_s": round(4 * T / (ms / 1e3), 1), "peak_mem_bytes": 123456789,
                 "overhead": {"cold": i == 0, "wall_s": 0.5}})
write_jsonl("sweep/results.jsonl", rows)
