package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/mdnctl/mdnctl/sweep"
)

// The warm-point line says how many gates the worker answered from its cache.
func TestSummaryLineCountsCachedGates(t *testing.T) {
	f := &sweep.File{Name: "s"}
	sum := &sweep.Summary{Ran: 6, Statuses: map[string]int{"ok": 6}, Workers: []sweep.WorkerInfo{{SpawnS: 0.1, ImportS: 5}},
		Overhead: sweep.OverheadStats{WarmWallS: 3, WarmCheckS: 0.001, WarmChecks: 5, WarmChecksCached: 3, WarmCheckFreshS: 2.5}}
	var b bytes.Buffer
	printSweepSummary(&b, f, &sweep.Plan{}, sum, "rows.jsonl")
	if !strings.Contains(b.String(), "the gate 0.001s (3 of 5 gates cached; a gate that ran 2.500s), the first call") {
		t.Errorf("summary:\n%s", b.String())
	}
	sum.Overhead.WarmChecksCached = 5
	b.Reset()
	printSweepSummary(&b, f, &sweep.Plan{}, sum, "rows.jsonl")
	if !strings.Contains(b.String(), "the gate 0.001s (5 of 5 gates cached), the first call") {
		t.Errorf("summary:\n%s", b.String())
	}
}

// The slowest points are listed when there are more points than the list holds.
func TestSummaryLineNamesTheSlowestPoints(t *testing.T) {
	f := &sweep.File{Name: "s"}
	slow := []sweep.SlowPoint{{Label: "kda fwd B16 T2048", Status: "ok", WallS: 235.7, CheckS: 179.1, FirstCallS: 56.4},
		{Label: "gdn fwdbwd B16 T2048", Status: "ok", WallS: 143.4, FirstCallS: 142.9, Cold: true}}
	sum := &sweep.Summary{Ran: 6, Statuses: map[string]int{"ok": 6}, Overhead: sweep.OverheadStats{Slowest: slow}}
	var b bytes.Buffer
	printSweepSummary(&b, f, &sweep.Plan{}, sum, "rows.jsonl")
	want := "slowest points: kda fwd B16 T2048 235.7s (ok; gate 179.1s, first call 56.4s); " +
		"gdn fwdbwd B16 T2048 143.4s (ok; gate 0.0s, first call 142.9s, first of its worker)"
	if !strings.Contains(b.String(), want) {
		t.Errorf("summary:\n%s", b.String())
	}
	sum.Ran = 2 // every point is in the list: nothing to single out
	b.Reset()
	printSweepSummary(&b, f, &sweep.Plan{}, sum, "rows.jsonl")
	if strings.Contains(b.String(), "slowest points") {
		t.Errorf("summary of 2 points lists the slowest:\n%s", b.String())
	}
}
