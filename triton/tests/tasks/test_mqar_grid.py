"""Shards and the summary table of scripts/gpu_mqar.sh (mdn.tasks.mqar_grid)."""
from __future__ import annotations

import json
import os

from mdn.tasks.mqar_grid import best_over_lr, deal, lr_blocks, main, read_rows, summary_table


def test_deal_keeps_blocks_together():
    pts = [{"point": f"p{i}"} for i in range(10)]
    shards = deal(pts, 3, 4)
    assert shards == [["p0", "p1", "p2", "p3"], ["p4", "p5", "p6", "p7"], ["p8", "p9"]]
    assert sorted(sum(deal(pts, 4, 1), [])) == sorted(p["point"] for p in pts)


def test_deal_by_lr_runs_keeps_plan_order():
    # a plan as `mdnctl sweep --plan --json` writes it: width 128 first, then the rest; 2 rates per cell
    pts = []
    for d in (128, 64):
        for model in ("mdn", "gdn", "transformer"):
            for lr in (1e-3, 3e-3):
                pts.append({"point": f"{model}{d}-{lr}", "index": len(pts), "variant": "v", "model": model,
                            "d_model": d, "lr": lr, "repeat": 0})
    blocks = lr_blocks(pts)
    assert [len(b) for b in blocks] == [2] * 6
    assert [b[0]["model"] for b in blocks[:3]] == ["mdn", "gdn", "transformer"]
    shards = deal(pts, 3, 0)
    # each of the 3 workers starts with one width-128 cell (both rates), then a width-64 cell
    assert [s[:2] for s in shards] == [["mdn128-0.001", "mdn128-0.003"], ["gdn128-0.001", "gdn128-0.003"],
                                       ["transformer128-0.001", "transformer128-0.003"]]
    assert [s[2][:-6] for s in shards] == ["mdn64", "gdn64", "transformer64"]
    assert sorted(sum(shards, [])) == sorted(p["point"] for p in pts)


def _row(point, model, constraint, d, lr, acc, status="ok", loss=1.0, nested=False, **kw):
    row = {"point": point, "model": model, "constraint": constraint, "seq_len": 128, "num_pairs": 8,
           "d_model": d, "lr": lr, "status": status}
    res = {"accuracy": acc, "loss": loss, "steps_done": 100, "accuracy_1024x256": acc / 2, **kw}
    if status != "ok":
        res = {}
    if nested:
        row["result"] = res
    else:
        row.update(res)
    return row


def test_best_over_lr_and_table(tmp_path):
    rows = [
        _row("a", "mdn", "trig", 64, 1e-3, 0.5),
        _row("b", "mdn", "trig", 64, 1e-2, 0.9, nested=True),  # run-shard generic rows nest the result
        _row("c", "mdn", "trig", 64, 1e-4, 0.0, status="failed"),
        _row("d", "gdn", "none", 64, 1e-3, 0.0, status="unavailable"),
        _row("e", "transformer", "none", 64, 1e-3, 0.9, loss=0.5),
        _row("f", "transformer", "none", 64, 1e-2, 0.9, loss=0.7),
    ]
    with open(tmp_path / "rows-0.jsonl", "w") as f:
        for r in rows[:3]:
            f.write(json.dumps(r) + "\n")
        f.write('{"torn line')  # a killed writer's last line is skipped
    with open(tmp_path / "rows-1.jsonl", "w") as f:
        for r in rows[3:]:
            f.write(json.dumps(r) + "\n")
    got = read_rows(str(tmp_path))
    assert len(got) == 6 and all("result" not in r for r in got)
    cells = best_over_lr(got)
    assert cells[("mdn", "trig", 128, 8, 64)]["point"] == "b"
    assert cells[("transformer", "none", 128, 8, 64)]["point"] == "e", "ties go to the lower loss"
    assert cells[("gdn", "none", 128, 8, 64)]["status"] == "unavailable"
    table = summary_table(got)
    assert "| mdn (trig) | 128x8 | 0.900 (lr 1.0e-02, 100 steps) | 0.450 |" in table
    assert "| gdn | 128x8 | unavailable |  |" in table
    assert "6 rows: failed 1, ok 4, unavailable 1" in table


def test_cli(tmp_path, capsys):
    plan = [{"point": f"p{i}"} for i in range(6)]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert main(["shards", str(tmp_path / "plan.json"), "--out", str(tmp_path), "--shards", "4", "--block", "2"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["plan.json", "shard-0.jsonl", "shard-1.jsonl", "shard-2.jsonl"]
    with open(tmp_path / "rows-0.jsonl", "w") as f:
        f.write(json.dumps(_row("p0", "mdn", "none", 64, 1e-3, 0.7)) + "\n")
    assert main(["summary", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "0.700" in out and "6 points planned, 5 without a row" in out
    assert (tmp_path / "results.jsonl").read_text().count("\n") == 1


def test_shards_resume_skips_only_ok_points(tmp_path, capsys):
    plan = [{"point": f"p{i}"} for i in range(6)]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    rows = [{"point": "p0", "status": "ok"}, {"point": "p1", "status": "failed"},
            {"point": "p2", "status": "failed"}, {"point": "p2", "status": "ok"},  # a re-run that succeeded
            {"point": "p3", "status": "ok"}, {"point": "p3", "status": "timeout"}]  # the latest row counts
    (tmp_path / "rows-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"point": "p4", "sta')
    assert main(["shards", str(tmp_path / "plan.json"), "--out", str(tmp_path), "--shards", "2", "--block", "1",
                 "--resume"]) == 0
    dealt = sorted(json.loads(line)["point"] for f in tmp_path.glob("shard-*.jsonl") for line in f.open())
    assert dealt == ["p1", "p3", "p4", "p5"]
    assert "(2 already ok, skipped)" in capsys.readouterr().err
    # without --resume every point is dealt again
    assert main(["shards", str(tmp_path / "plan.json"), "--out", str(tmp_path), "--shards", "2"]) == 0
    assert sum(1 for f in tmp_path.glob("shard-*.jsonl") for _ in f.open()) == 6
