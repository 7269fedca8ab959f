package launcher

import (
	"bufio"
	"io"
	"sync"
)

// tailBuffer keeps the last n lines of a stream (each cut to maxLen bytes), whatever the stream's size.
type tailBuffer struct {
	mu     sync.Mutex
	buf    []string
	n      int
	maxLen int
}

func newTailBuffer(n, maxLen int) *tailBuffer { return &tailBuffer{n: n, maxLen: maxLen} }

func (t *tailBuffer) add(line string) {
	if len(line) > t.maxLen {
		line = line[:t.maxLen] + "…"
	}
	t.mu.Lock()
	t.buf = append(t.buf, line)
	if len(t.buf) > t.n {
		t.buf = t.buf[len(t.buf)-t.n:]
	}
	t.mu.Unlock()
}

func (t *tailBuffer) lines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.buf...)
}

// consume reads r to EOF, keeping the tail and copying to tee when given.
func (t *tailBuffer) consume(r io.Reader, tee io.Writer) {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		chunk, isPrefix, err := br.ReadLine()
		if len(chunk) > 0 || (err == nil && !isPrefix) {
			line := string(chunk)
			if tee != nil {
				_, _ = io.WriteString(tee, line)
				if !isPrefix {
					_, _ = io.WriteString(tee, "\n")
				}
			}
			// Long lines arrive in pieces; keep only the first piece of each.
			t.add(line)
			for isPrefix && err == nil {
				chunk, isPrefix, err = br.ReadLine()
				if tee != nil {
					_, _ = tee.Write(chunk)
					if !isPrefix {
						_, _ = io.WriteString(tee, "\n")
					}
				}
			}
		}
		if err != nil {
			return
		}
	}
}
