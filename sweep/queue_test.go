package sweep

import (
	"fmt"
	"testing"
)

func familyPoint(i int, op string, T int64, mode string) Point {
	return Point{Index: i, ID: fmt.Sprintf("p%d", i),
		Values: map[string]any{"op": op, "T": T, "B": 32768 / T, "mode": mode, RepeatField: int64(0)}}
}

func TestFamilyKeyIgnoresBatchLengthModeAndRepeat(t *testing.T) {
	a := familyPoint(0, "mdn", 2048, "fwd")
	b := familyPoint(1, "mdn", 8192, "fwdbwd")
	b.Values[RepeatField] = int64(3)
	if familyKey(a) != familyKey(b) {
		t.Fatalf("points that differ only in B, T, mode and repeat should share a family:\n%s\n%s", familyKey(a), familyKey(b))
	}
	c := familyPoint(2, "gdn", 2048, "fwd")
	if familyKey(a) == familyKey(c) {
		t.Fatalf("the op differs but the family is the same: %v", c.Values)
	}
	d := familyPoint(3, "mdn", 2048, "fwd")
	d.Values["dtype"] = "float32"
	if familyKey(a) == familyKey(d) {
		t.Fatalf("the dtype differs but the family is the same: %v", d.Values)
	}
}

// Two slots over a plan ordered op, T, mode (mode innermost, as sweeps/baselines.toml), each asking twice in a
// row (first-in-first-out would give gpu0 points 0 and 1 and then gpu1 point 2, a sibling of gpu0's point 0):
// each slot keeps to the families it started, so a family's gate runs once, in one worker.
func TestQueueKeepsFamiliesOnOneSlot(t *testing.T) {
	var pts []Point
	for _, op := range []string{"mdn", "gdn"} {
		for _, T := range []int64{2048, 4096, 8192} {
			for _, mode := range []string{"fwd", "fwdbwd"} {
				pts = append(pts, familyPoint(len(pts), op, T, mode))
			}
		}
	}
	q := newWorkQueue(pts)
	slotOf := map[string]string{} // family -> slot that ran it
	order := map[string][]int{}
	for n := 0; n < len(pts); n++ {
		slot := []string{"gpu0", "gpu0", "gpu1", "gpu1"}[n%4]
		p, ok := q.pop(slot)
		if !ok {
			t.Fatalf("queue empty after %d of %d points", n, len(pts))
		}
		q.done(nil)
		order[slot] = append(order[slot], p.Index)
		fam := familyKey(p)
		if s, seen := slotOf[fam]; seen && s != slot {
			t.Fatalf("family of point %d split between %s and %s (order %v)", p.Index, s, slot, order)
		}
		slotOf[fam] = slot
	}
	if _, ok := q.pop("gpu0"); ok {
		t.Fatal("queue should be empty")
	}
	if got := order["gpu0"]; len(got) != 6 || got[0] != 0 || got[5] != 5 {
		t.Fatalf("gpu0 should run the whole mdn family (points 0-5, fwd and fwdbwd) first, got %v", order["gpu0"])
	}
	if got := order["gpu1"]; len(got) != 6 || got[0] != 6 {
		t.Fatalf("gpu1 should run the gdn family (points 6-11), got %v", order["gpu1"])
	}
}

// A slot whose families are done takes another slot's pending sibling rather than idling (load balance).
func TestQueueStealsWhenNothingElseIsLeft(t *testing.T) {
	pts := []Point{familyPoint(0, "mdn", 2048, "fwd"), familyPoint(1, "mdn", 4096, "fwd"),
		familyPoint(2, "mdn", 8192, "fwd")}
	q := newWorkQueue(pts)
	if p, _ := q.pop("gpu0"); p.Index != 0 {
		t.Fatalf("first pop: got %d", p.Index)
	}
	p, ok := q.pop("gpu1")
	if !ok || p.Index != 1 {
		t.Fatalf("gpu1 should take the next point of gpu0's family when nothing else is left, got %v %v", p.Index, ok)
	}
}

// A point given back goes to the front and keeps its family's owner.
func TestQueueGivenBackPointComesFirst(t *testing.T) {
	pts := []Point{familyPoint(0, "mdn", 2048, "fwd"), familyPoint(1, "gdn", 2048, "fwd")}
	q := newWorkQueue(pts)
	p, _ := q.pop("gpu0")
	q.done(&p)
	if again, _ := q.pop("gpu0"); again.Index != 0 {
		t.Fatalf("the given-back point should come first, got %d", again.Index)
	}
}

// Families of one op (here two head shapes each of mdn and gdn, plan order mdn, mdn, gdn, gdn) stay on the slot
// that started the op, so each worker pays an op's first use once; first-unowned-family order would give each
// slot one mdn and one gdn family.
func TestQueueKeepsAnOpsFamiliesOnOneSlot(t *testing.T) {
	var pts []Point
	for _, op := range []string{"mdn", "gdn"} {
		for _, H := range []int64{6, 16} {
			p := familyPoint(len(pts), op, 4096, "fwdbwd")
			p.Values["H"] = H
			pts = append(pts, p)
		}
	}
	q := newWorkQueue(pts)
	got := map[string][]string{}
	for n, slot := range []string{"gpu0", "gpu1", "gpu0", "gpu1"} {
		p, ok := q.pop(slot)
		if !ok {
			t.Fatalf("queue empty after %d of %d points", n, len(pts))
		}
		q.done(nil)
		got[slot] = append(got[slot], fmt.Sprintf("%v/H%v", p.Values["op"], p.Values["H"]))
	}
	if fmt.Sprint(got["gpu0"]) != "[mdn/H6 mdn/H16]" || fmt.Sprint(got["gpu1"]) != "[gdn/H6 gdn/H16]" {
		t.Fatalf("each op's families should stay on one slot, got gpu0 %v, gpu1 %v", got["gpu0"], got["gpu1"])
	}
}

// With more slots than ops, a slot with nothing of its own takes an unowned family of an op another slot has
// started before it steals a sibling of a family in flight.
func TestQueueSharesAnOpWhenNoNewOpIsLeft(t *testing.T) {
	var pts []Point
	for _, H := range []int64{6, 16} {
		p := familyPoint(len(pts), "mdn", 4096, "fwdbwd")
		p.Values["H"] = H
		pts = append(pts, p)
	}
	q := newWorkQueue(pts)
	a, _ := q.pop("gpu0")
	b, ok := q.pop("gpu1")
	if !ok || a.Index != 0 || b.Index != 1 {
		t.Fatalf("gpu0 should get point 0 and gpu1 the other family's point 1, got %d and %d (ok %v)", a.Index, b.Index, ok)
	}
	if q.owner[familyKey(b)] != "gpu1" {
		t.Fatalf("gpu1 should own the family it started, owners %v", q.owner)
	}
}

// Task points (no op) all share the op "", so the queue keeps their plan order: three models, two slots, each
// slot asking in turn, get the families in plan order as before.
func TestQueueKeepsPlanOrderForTaskSweeps(t *testing.T) {
	var pts []Point
	for i, model := range []string{"mdn", "mdn", "gdn", "transformer"} {
		pts = append(pts, Point{Index: i, ID: fmt.Sprintf("p%d", i),
			Values: map[string]any{"model": model, "lr": float64(i), RepeatField: int64(0)}})
	}
	q := newWorkQueue(pts)
	var got []int
	for _, slot := range []string{"gpu0", "gpu1", "gpu0", "gpu1"} {
		p, _ := q.pop(slot)
		q.done(nil)
		got = append(got, p.Index)
	}
	if fmt.Sprint(got) != "[0 1 2 3]" {
		t.Fatalf("task points should go out in plan order, got %v", got)
	}
	if opKey(pts[0]) != "" {
		t.Fatalf("a task point has no op, got %q", opKey(pts[0]))
	}
}
