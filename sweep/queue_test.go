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
