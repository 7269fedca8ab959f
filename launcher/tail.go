package launcher

import (
	"bytes"
	"io"
	"sync"
	"unicode/utf8"
)

// tailBuffer keeps the last n lines of a stream, each cut to maxLen bytes, in O(n*maxLen) memory whatever the
// stream's size. A carriage return starts the line over (as on a terminal), so progress bars keep only their
// final state; "\r\n" is a plain line end.
type tailBuffer struct {
	mu     sync.Mutex
	ring   []string
	next   int // where the next line goes
	full   bool
	maxLen int

	cur       []byte // the line being read (at most maxLen bytes)
	cut       bool   // cur lost bytes beyond maxLen
	pendingCR bool
}

func newTailBuffer(n, maxLen int) *tailBuffer {
	if n < 1 {
		n = 1
	}
	return &tailBuffer{ring: make([]string, n), maxLen: maxLen}
}

// Write feeds raw bytes; it never fails and never blocks on anything but the mutex.
func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		if t.pendingCR {
			t.pendingCR = false
			if p[0] == '\n' {
				t.commit()
				p = p[1:]
				continue
			}
			t.cur, t.cut = t.cur[:0], false // a lone CR: the line starts over
		}
		i := bytes.IndexAny(p, "\r\n")
		if i < 0 {
			t.appendCur(p)
			break
		}
		t.appendCur(p[:i])
		if p[i] == '\n' {
			t.commit()
		} else {
			t.pendingCR = true
		}
		p = p[i+1:]
	}
	return n, nil
}

func (t *tailBuffer) appendCur(b []byte) {
	if room := t.maxLen - len(t.cur); room < len(b) {
		if room > 0 {
			t.cur = append(t.cur, b[:room]...)
		}
		t.cut = true
		return
	}
	t.cur = append(t.cur, b...)
}

func (t *tailBuffer) commit() {
	line := string(t.cur)
	if t.cut {
		line = validPrefix(line) + "…"
	}
	t.ring[t.next] = line
	t.next = (t.next + 1) % len(t.ring)
	if t.next == 0 {
		t.full = true
	}
	t.cur, t.cut = t.cur[:0], false
}

// lines returns the kept lines, oldest first, plus a final unterminated line if there is one.
func (t *tailBuffer) lines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	if t.full {
		out = append(out, t.ring[t.next:]...)
	}
	out = append(out, t.ring[:t.next]...)
	if len(t.cur) > 0 {
		line := string(t.cur)
		if t.cut {
			line = validPrefix(line) + "…"
		}
		out = append(out, line)
		if len(out) > len(t.ring) {
			out = out[1:]
		}
	}
	return out
}

// consume reads r to EOF (or a read error), keeping the tail and copying every byte to tee when given.
// A failing tee is dropped; reading goes on so the child never blocks on a full pipe.
func (t *tailBuffer) consume(r io.Reader, tee io.Writer) {
	buf := make([]byte, 64<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			_, _ = t.Write(buf[:n])
			if tee != nil {
				if _, werr := tee.Write(buf[:n]); werr != nil {
					tee = nil
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// validPrefix drops a rune cut in half at the end of s (at most utf8.UTFMax-1 bytes).
func validPrefix(s string) string {
	for i := 0; i < utf8.UTFMax-1 && len(s) > 0; i++ {
		if r, size := utf8.DecodeLastRuneInString(s); r != utf8.RuneError || size != 1 {
			break
		}
		s = s[:len(s)-1]
	}
	return s
}
