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
