"""The MQAR grid run in parallel shards on one GPU, and the summary table of its rows (scripts/gpu_mqar.sh).

Small MQAR models leave most of an H100 idle, and ``mdnctl sweep`` runs one worker per GPU, so the script deals
the points of a sweep file (``mdnctl sweep --plan FILE --json``) into shard files and runs one
``mdnctl run-shard --sweep-file FILE`` per shard side by side; rows are exactly those of ``mdnctl sweep``.

    python -m mdn.tasks.mqar_grid shards PLAN.json --out DIR --shards 8 [--resume]
    python -m mdn.tasks.mqar_grid summary DIR

``shards`` deals points in blocks (by default the consecutive points that differ only in the learning rate: one
model, split and width, which share their generated training data in a warm worker; ``--block K``: K points)
round-robin into DIR/shard-<i>.jsonl; with ``--resume`` points that already have an ok row in DIR/rows-*.jsonl are
left out, so a grid too long for one device call continues in the next (failed and unfinished points run again).
``summary`` reads DIR/rows-*.jsonl, writes them merged into DIR/results.jsonl (the latest row of each point;
``mdnctl report`` reads it) and prints, per model and split, the best accuracy over learning rates for each width
with the (1024, 256) test accuracy of that run, as a markdown table.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys


_BOOKKEEPING = ("point", "index", "variant", "lr")


def lr_blocks(points: list[dict]) -> list[list[dict]]:
    """Runs of consecutive points that differ only in ``lr`` (one model, split and width at each rate)."""
    blocks: list[list[dict]] = []
    prev = None
    for p in points:
        key = {k: v for k, v in p.items() if k not in _BOOKKEEPING}
        if blocks and key == prev:
            blocks[-1].append(p)
        else:
            blocks.append([p])
        prev = key
    return blocks


def deal(points: list[dict], shards: int, block: int) -> list[list[str]]:
    """Point ids dealt round-robin in blocks of ``block`` consecutive points (``block = 0``: the runs of
    ``lr_blocks``). Shard i gets blocks i, i + shards, ...: run side by side, the workers go through the plan
    roughly in its order, so the first points of a sweep file run first."""
    out: list[list[str]] = [[] for _ in range(shards)]
    blocks = lr_blocks(points) if block == 0 else [points[i:i + block] for i in range(0, len(points), block)]
    for i, b in enumerate(blocks):
        out[i % shards].extend(p["point"] for p in b)
    return out


def write_shards(points: list[dict], out_dir: str, shards: int, block: int) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    for old in glob.glob(os.path.join(out_dir, "shard-*.jsonl")):
        os.remove(old)
    paths = []
    for i, ids in enumerate(deal(points, shards, block)):
        if not ids:
            continue
        path = os.path.join(out_dir, f"shard-{i}.jsonl")
        with open(path, "w") as f:
            for pid in ids:
                f.write(json.dumps({"point": pid}) + "\n")
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------- summary
_KEYS = ("model", "constraint", "seq_len", "num_pairs", "d_model", "lr")


def read_rows(out_dir: str) -> list[dict]:
    """Rows of every rows-*.jsonl in out_dir, flattened (``result`` merged into the row); the last row of a
    point wins (a re-run replaces an earlier failure)."""
    by_point: dict[str, dict] = {}
    for path in sorted(glob.glob(os.path.join(out_dir, "rows-*.jsonl"))):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line of a killed writer
                res = row.pop("result", None)
                if isinstance(res, dict):
                    for k, v in res.items():
                        row.setdefault(k, v)
                params = row.get("params")
                if isinstance(params, dict):  # fixed values of the sweep's [mqar] table live in the params
                    for k in _KEYS:
                        if k in params:
                            row.setdefault(k, params[k])
                by_point[row.get("point", str(len(by_point)))] = row
    return list(by_point.values())


def best_over_lr(rows: list[dict]) -> dict[tuple, dict]:
    """{(model, constraint, seq_len, num_pairs, d_model): best ok row by accuracy (ties: lower loss)}, plus
    entries with ``status`` != ok when no rate of a cell finished."""
    cells: dict[tuple, dict] = {}
    for r in rows:
        key = (r.get("model"), r.get("constraint"), r.get("seq_len"), r.get("num_pairs"), r.get("d_model"))
        cur = cells.get(key)
        ok = r.get("status") == "ok" and isinstance(r.get("accuracy"), (int, float))
        if cur is None:
            cells[key] = r
            continue
        cur_ok = cur.get("status") == "ok" and isinstance(cur.get("accuracy"), (int, float))
        if ok and (not cur_ok or (r["accuracy"], -_num(r.get("loss"))) > (cur["accuracy"], -_num(cur.get("loss")))):
            cells[key] = r
    return cells


def _num(x) -> float:
    return float(x) if isinstance(x, (int, float)) else float("inf")


def summary_table(rows: list[dict], markdown: bool = True) -> str:
    cells = best_over_lr(rows)
    models = sorted({(k[0], k[1]) for k in cells}, key=lambda m: (m[0] != "mdn", m[0], m[1]))
    splits = sorted({(k[2], k[3]) for k in cells})
    widths = sorted({k[4] for k in cells})
    head = ["model", "split"] + [f"d={w}" for w in widths] + [f"d={w} @1024x256" for w in widths]
    lines = []
    for m in models:
        for s in splits:
            vals, tests = [], []
            for w in widths:
                r = cells.get((m[0], m[1], s[0], s[1], w))
                if r is None:
                    vals.append("")
                    tests.append("")
                elif r.get("status") != "ok":
                    vals.append(str(r.get("status")))
                    tests.append("")
                else:
                    lr = r.get("lr", r.get("best_lr"))
                    steps = r.get("steps_done")
                    vals.append(f"{r['accuracy']:.3f} (lr {lr:.1e}, {steps} steps)" if isinstance(lr, float)
                                else f"{r['accuracy']:.3f}")
                    t = r.get("accuracy_1024x256")
                    tests.append(f"{t:.3f}" if isinstance(t, (int, float)) else "")
            name = m[0] if m[0] != "mdn" else f"mdn ({m[1]})"
            lines.append([name, f"{s[0]}x{s[1]}"] + vals + tests)
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(l) + " |" for l in lines]
    else:
        out = ["\t".join(head)] + ["\t".join(l) for l in lines]
    status: dict[str, int] = {}
    for r in rows:
        status[str(r.get("status"))] = status.get(str(r.get("status")), 0) + 1
    out.append("")
    out.append(f"{len(rows)} rows: " + ", ".join(f"{k} {v}" for k, v in sorted(status.items())))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mdn.tasks.mqar_grid")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("shards", help="deal the points of a plan (mdnctl sweep --plan FILE --json) into shards")
    s.add_argument("plan", help="the plan JSON file ('-' for stdin)")
    s.add_argument("--out", required=True)
    s.add_argument("--shards", type=int, default=8)
    s.add_argument("--block", type=int, default=0,
                   help="consecutive points kept together (default 0: the points that differ only in lr)")
    s.add_argument("--resume", action="store_true",
                   help="leave out points whose latest row in OUT/rows-*.jsonl is ok (the grid spans several calls)")
    t = sub.add_parser("summary", help="merge the rows and print the best-over-lr table")
    t.add_argument("dir")
    t.add_argument("--tsv", action="store_true")
    a = ap.parse_args(argv)
    if a.cmd == "shards":
        points = json.load(sys.stdin if a.plan == "-" else open(a.plan))
        if not isinstance(points, list) or not all(isinstance(p, dict) and "point" in p for p in points):
            print("shards: the plan must be the JSON array of `mdnctl sweep --plan FILE --json`", file=sys.stderr)
            return 2
        done = 0
        if a.resume:
            ok = {r.get("point") for r in read_rows(a.out) if r.get("status") == "ok"}
            kept = [p for p in points if p["point"] not in ok]
            done, points = len(points) - len(kept), kept
        paths = write_shards(points, a.out, max(1, a.shards), max(0, a.block))
        print(f"{len(points)} points in {len(paths)} shards" + (f" ({done} already ok, skipped)" if a.resume else ""),
              file=sys.stderr)
        return 0
    rows = read_rows(a.dir)
    with open(os.path.join(a.dir, "results.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(summary_table(rows, markdown=not a.tsv))
    plan = os.path.join(a.dir, "plan.json")
    if os.path.exists(plan):
        with open(plan) as f:
            planned = {p["point"] for p in json.load(f)}
        missing = len(planned - {r.get("point") for r in rows})
        print(f"{len(planned)} points planned, {missing} without a row (not run within the time limit)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
