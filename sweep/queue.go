package sweep

import (
	"fmt"
	"sort"
	"strings"
	"sync"
)

// familyKey groups the points that share their correctness gate and most of their compiled kernels: every
// value but the batch B, the sequence length T, the mode and the repeat index (the gate runs at a check shape of
// its own, so the T axis of a sweep makes families of points that differ only in B and T; a `fwd` point shares
// the forward+backward gate of its `fwdbwd` siblings, see shareGates, and their forward kernels). A worker keeps
// gate verdicts and compiled kernels in memory, so the queue gives a slot the siblings of the families it has
// started.
func familyKey(p Point) string {
	keys := make([]string, 0, len(p.Values))
	for k := range p.Values {
		if k != "B" && k != "T" && k != "mode" && k != RepeatField {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(canonicalJSON(map[string]any{"v": p.Values[k]}))
		b.WriteByte(';')
	}
	return b.String()
}

// opKey names what a worker compiles and warms up once per process for a kernel point, whatever its shapes: the
// op. A fresh process pays each op's first use (imports, inductor start-up, kernels the op's families share): on an
// H200, MDN's first gate took 32-33 s in a fresh worker against 18 s for its second family in the same worker,
// GDN's first point 24-25 s against 11 s (docs/BENCHMARKS.md §1.10). Task sweeps (MQAR, training) have no op: their
// points cost minutes each, and grouping them by model would run a time-limited sweep out of its plan order, so
// they all share the op "" and the queue hands out their families in plan order.
func opKey(p Point) string {
	if v, ok := p.Values["op"]; ok {
		return fmt.Sprint(v)
	}
	return ""
}

// workQueue hands out points. A slot gets, in this order: the first point of a family it has started; the first
// point of a family no slot has started whose op this slot has started (the op is warm in its worker); the first
// point of a family of an op no slot has started; the first point of any family no slot has started (each of these
// families it then owns); or else the first point (load balance wins over affinity). So on several GPUs each op's
// families tend to stay in one worker, and each worker pays each op's first use once. A point given back (its slot
// could not start a worker) goes to the front. pop waits while other slots still hold points that may come back.
type workQueue struct {
	mu        sync.Mutex
	cond      *sync.Cond
	items     []Point
	owner     map[string]string          // family -> the slot that started it
	slotOps   map[string]map[string]bool // slot -> the ops of the families it owns
	opStarted map[string]bool            // op -> some slot owns a family of it
	inflight  int
	closed    bool
}

func newWorkQueue(points []Point) *workQueue {
	q := &workQueue{items: append([]Point(nil), points...), owner: map[string]string{},
		slotOps: map[string]map[string]bool{}, opStarted: map[string]bool{}}
	q.cond = sync.NewCond(&q.mu)
	return q
}

func (q *workQueue) pop(slot string) (Point, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.items) == 0 && q.inflight > 0 && !q.closed {
		q.cond.Wait()
	}
	if q.closed || len(q.items) == 0 {
		return Point{}, false
	}
	i := q.pick(slot)
	p := q.items[i]
	q.items = append(q.items[:i], q.items[i+1:]...)
	q.inflight++
	return p, true
}

// pick returns the index of the point slot should run next (items is not empty).
func (q *workQueue) pick(slot string) int {
	const (
		ownOp  = iota // unowned family, op warm in this slot
		newOp         // unowned family, op not started anywhere
		anyFam        // unowned family, op started by another slot
		nRanks
	)
	first := [nRanks]int{-1, -1, -1}
	for i, p := range q.items {
		owner, ok := q.owner[familyKey(p)]
		if ok && owner == slot {
			return i
		}
		if ok {
			continue
		}
		rank := anyFam
		if op := opKey(p); q.slotOps[slot][op] {
			rank = ownOp
		} else if !q.opStarted[op] {
			rank = newOp
		}
		if first[rank] < 0 {
			first[rank] = i
		}
	}
	for _, i := range first {
		if i >= 0 {
			q.claim(slot, q.items[i])
			return i
		}
	}
	return 0
}

// claim makes slot the owner of p's family (and records that it has started p's op).
func (q *workQueue) claim(slot string, p Point) {
	q.owner[familyKey(p)] = slot
	op := opKey(p)
	if q.slotOps[slot] == nil {
		q.slotOps[slot] = map[string]bool{}
	}
	q.slotOps[slot][op] = true
	q.opStarted[op] = true
}

func (q *workQueue) done(back *Point) {
	q.mu.Lock()
	q.inflight--
	if back != nil {
		q.items = append([]Point{*back}, q.items...)
	}
	q.mu.Unlock()
	q.cond.Broadcast()
}

func (q *workQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.cond.Broadcast()
}
