package sweep

import (
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

// workQueue hands out points. A slot gets, in this order: the first point of a family it has started, the first
// point of a family no slot has started (which it then owns), or else the first point (load balance wins over
// affinity). A point given back (its slot could not start a worker) goes to the front. pop waits while other
// slots still hold points that may come back.
type workQueue struct {
	mu       sync.Mutex
	cond     *sync.Cond
	items    []Point
	owner    map[string]string // family -> the slot that started it
	inflight int
	closed   bool
}

func newWorkQueue(points []Point) *workQueue {
	q := &workQueue{items: append([]Point(nil), points...), owner: map[string]string{}}
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
	unowned := -1
	for i, p := range q.items {
		owner, ok := q.owner[familyKey(p)]
		if ok && owner == slot {
			return i
		}
		if !ok && unowned < 0 {
			unowned = i
		}
	}
	if unowned >= 0 {
		q.owner[familyKey(q.items[unowned])] = slot
		return unowned
	}
	return 0
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
