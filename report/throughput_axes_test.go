package report

import "testing"

// A fixed-token benchmark (B = 32768 / T) must give one line per op over T, not one-point figures per B.
func TestThroughputFixedTokensIsOneFigure(t *testing.T) {
	var rows []Row
	for _, op := range []string{"mdn", "gdn"} {
		for _, T := range []float64{2048, 4096, 8192} {
			rows = append(rows, Row{"op": op, "T": T, "B": 32768 / T, "fwdbwd_ms": T / 1000, "status": "ok"})
		}
	}
	b := &plotBuilder{o: PlotOptions{}, colors: map[string]int{}}
	figs, err := b.throughput(rows)
	if err != nil {
		t.Fatal(err)
	}
	if len(figs) != 1 {
		t.Fatalf("got %d figures, want 1 (B follows T and must not split them)", len(figs))
	}
	// B varying at a fixed T is a real axis and still splits.
	rows = append(rows, Row{"op": "mdn", "T": 2048.0, "B": 1.0, "fwdbwd_ms": 1.0, "status": "ok"})
	if determinedBy(rows, "B", "T") {
		t.Fatal("B takes two values at T=2048: it is not determined by T")
	}
}
