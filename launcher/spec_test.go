package launcher

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
)

func TestParseEvent(t *testing.T) {
	ev, err := ParseEvent([]byte(`{"v":1,"event":"progress","job":"a","t":1.5,"done":2,"total":4,"message":"m","new_field":1}`))
	if err != nil || ev.Event != "progress" || ev.Done != 2 || ev.Total != 4 || ev.Message != "m" {
		t.Fatalf("ParseEvent = %+v, %v", ev, err)
	}
	if ev, err := ParseEvent([]byte(`{"v":1,"event":"heartbeat","job":"a"}`)); err != nil || ev.Event != "heartbeat" {
		t.Errorf("unknown event kinds must pass (forward compatible): %+v %v", ev, err)
	}
	for _, bad := range []string{
		``, `not json`, `[1]`, `{"event":"start","job":"a"}`, `{"v":2,"event":"start"}`,
		`{"v":1,"job":"a"}`, `{"v":1,"event":"end","job":"a"}`, `{"v":1,"event":"end","job":"a","status":"done"}`,
		`{"v":1,"event":"error","job":"a","message":"no kind"}`, `{"v":1,"event":"start","job":"a","t":NaN}`,
	} {
		_, err := ParseEvent([]byte(bad))
		var pe *ProtocolError
		if !errors.As(err, &pe) {
			t.Errorf("ParseEvent(%q) = %v, want ProtocolError", bad, err)
			continue
		}
		if strings.Contains(pe.Error(), "\n") {
			t.Errorf("ProtocolError must be one line: %q", pe.Error())
		}
	}
}

func TestErrorsAreOneLine(t *testing.T) {
	tail := []string{"Traceback (most recent call last):", `  File "x.py", line 1`, "RuntimeError: boom", ""}
	for _, err := range []error{
		&ExitError{Job: "j", Code: 1, StderrTail: tail},
		&ExitError{Code: -1, Signal: "killed"},
		&MissingEndError{Job: "j", StderrTail: tail},
		&TimeoutError{Job: "j", After: 3e9, StderrTail: tail},
		&JobError{Job: "j", Kind: "oom", Message: "CUDA out of memory.\nTried to allocate"},
		&ProtocolError{Job: "j", Line: "x\ny", Err: errors.New("bad")},
	} {
		msg := err.Error()
		if strings.ContainsAny(msg, "\r\n") {
			t.Errorf("%T.Error() = %q, want one line", err, msg)
		}
	}
	if msg := (&ExitError{Job: "j", Code: 1, StderrTail: tail}).Error(); !strings.HasSuffix(msg, "(last stderr line: RuntimeError: boom)") {
		t.Errorf("ExitError = %q, want the last non-empty stderr line", msg)
	}
}

func TestFloat(t *testing.T) {
	var v struct{ A, B, C, D Float }
	if err := json.Unmarshal([]byte(`{"A":1.5,"B":"nan","C":"inf","D":"-inf"}`), &v); err != nil {
		t.Fatal(err)
	}
	if v.A != 1.5 || !math.IsNaN(float64(v.B)) || !math.IsInf(float64(v.C), 1) || !math.IsInf(float64(v.D), -1) {
		t.Errorf("decoded %+v", v)
	}
	b, err := json.Marshal(v)
	if err != nil || string(b) != `{"A":1.5,"B":"nan","C":"inf","D":"-inf"}` {
		t.Errorf("Marshal = %s, %v", b, err)
	}
	var f Float
	for _, bad := range []string{`"NaN"`, `"x"`, `true`, `{}`} {
		if err := json.Unmarshal([]byte(bad), &f); err == nil {
			t.Errorf("Float accepted %s", bad)
		}
	}
}

func TestTailBuffer(t *testing.T) {
	tb := newTailBuffer(3, 8)
	tb.Write([]byte("one\ntwo\r\nthree\nfo"))
	tb.Write([]byte("ur\n10%\r50%\r100%\n"))
	tb.Write([]byte("a very long line indeed\nhé"))
	tb.Write([]byte("llo wörld\npartial"))
	got := tb.lines()
	want := []string{"a very l…", "héllo w…", "partial"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("lines = %q, want %q", got, want)
	}
	tb = newTailBuffer(5, 100)
	tb.Write([]byte("x\r"))
	tb.Write([]byte("\ny\n"))
	if got := tb.lines(); strings.Join(got, "|") != "x|y" {
		t.Errorf("a CRLF split across writes: %q", got)
	}
}

func TestValidPrefixNeverSplitsARune(t *testing.T) {
	s := "aé" // 'é' is 2 bytes
	if got := validPrefix(s[:2]); got != "a" {
		t.Errorf("validPrefix = %q", got)
	}
	if got := truncate("ééé", 3); got != "é…" {
		t.Errorf("truncate = %q", got)
	}
}
