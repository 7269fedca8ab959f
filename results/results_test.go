package results

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestAppendReadRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a", "b", FileName)
	w, rep, err := Open(path)
	if err != nil || rep.TornBytes != 0 {
		t.Fatal(err, rep)
	}
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := w.Append(Row{"point": fmt.Sprintf("p%02d", i), "status": "ok", "msg": "line\nbreak"}); err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	rows, info, err := Read(path)
	if err != nil || info.TornTail || len(info.BadLines) > 0 || len(rows) != 50 {
		t.Fatalf("rows %d info %+v err %v", len(rows), info, err)
	}
	data, _ := os.ReadFile(path)
	if strings.Count(string(data), "\n") != 50 {
		t.Fatal("one line per row")
	}
}

func TestLockExclusive(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	w, _, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := Open(path); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v", err)
	}
	w.Close()
	w2, _, err := Open(path)
	if err != nil {
		t.Fatalf("after close: %v", err)
	}
	w2.Close()
}

// A writer killed mid-line leaves a fragment; readers skip it and the next Open cuts it off, keeping a copy.
func TestTornTailRepaired(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	good := `{"point":"a","status":"ok"}` + "\n"
	torn := `{"point":"b","sta`
	if err := os.WriteFile(path, []byte(good+torn), 0o644); err != nil {
		t.Fatal(err)
	}
	rows, info, _ := Read(path)
	if len(rows) != 1 || !info.TornTail {
		t.Fatalf("read: %d rows, %+v", len(rows), info)
	}
	w, rep, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if rep.TornBytes != len(torn) {
		t.Fatalf("repair %+v", rep)
	}
	if err := w.Append(Row{"point": "b", "status": "ok"}); err != nil {
		t.Fatal(err)
	}
	w.Close()
	data, _ := os.ReadFile(path)
	want := good + `{"point":"b","status":"ok"}` + "\n"
	if string(data) != want {
		t.Fatalf("file:\n%s\nwant:\n%s", data, want)
	}
	saved, _ := os.ReadFile(path + ".torn")
	if !strings.Contains(string(saved), torn) {
		t.Fatalf("torn copy %q", saved)
	}
	// A file that is all fragment (no newline at all) is emptied.
	os.WriteFile(path, []byte(`{"po`), 0o644)
	w, rep, err = Open(path)
	if err != nil || rep.TornBytes != 4 {
		t.Fatal(err, rep)
	}
	w.Close()
	if st, _ := os.Stat(path); st.Size() != 0 {
		t.Fatal("not emptied")
	}
}

func TestBadLineSkipped(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	os.WriteFile(path, []byte("{\"point\":\"a\"}\nnot json\n\n[1]\n{\"point\":\"b\"}\n"), 0o644)
	rows, info, err := Read(path)
	if err != nil || len(rows) != 2 || fmt.Sprint(info.BadLines) != "[2 4]" {
		t.Fatalf("%d %+v %v", len(rows), info, err)
	}
	if rows, _, err := Read(filepath.Join(t.TempDir(), "missing.jsonl")); err != nil || rows != nil {
		t.Fatal("missing file is no rows")
	}
}

type failingFile struct {
	file
	budget int // bytes that reach the file before the failure
}

func (f *failingFile) Write(b []byte) (int, error) {
	if len(b) <= f.budget {
		f.budget -= len(b)
		return f.file.Write(b)
	}
	n, _ := f.file.Write(b[:f.budget])
	f.budget = 0
	return n, errors.New("disk full")
}

// A write that fails part-way is cut off again, and the writer refuses further rows.
func TestShortWriteCutOff(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	w, _, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Append(Row{"point": "a"}); err != nil {
		t.Fatal(err)
	}
	w.f = &failingFile{file: w.f, budget: 5}
	if err := w.Append(Row{"point": "b"}); err == nil {
		t.Fatal("want error")
	}
	if err := w.Append(Row{"point": "c"}); err == nil {
		t.Fatal("sticky error")
	}
	w.Close()
	data, _ := os.ReadFile(path)
	if string(data) != `{"point":"a"}`+"\n" {
		t.Fatalf("file %q", data)
	}
}

func TestMergeAndIndex(t *testing.T) {
	rows := []Row{
		{"point": "a", "status": "failed"},
		{"point": "b", "status": "ok"},
		{"point": "a", "status": "ok"},
		{"point": "c", "status": "timeout"},
		{"note": "no point"},
		{"point": "d", "status": "unavailable"},
	}
	m := Merge(rows)
	if len(m) != 5 || Str(m[0], "status") != "ok" || Str(m[1], "point") != "b" {
		t.Fatalf("merge %v", m)
	}
	ix := NewIndex(rows)
	for p, want := range map[string][2]bool{"a": {true, true}, "b": {true, true}, "c": {true, false}, "d": {true, true}, "e": {false, false}} {
		if ix.Done(p, false) != want[0] || ix.Done(p, true) != want[1] {
			t.Errorf("%s: done %v/%v want %v", p, ix.Done(p, false), ix.Done(p, true), want)
		}
	}
	if ix.Len() != 4 {
		t.Fatal("len")
	}
}

func TestRotate(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	w, _, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	w.Append(Row{"point": "old"})
	if err := w.Rotate(path + ".prev"); err != nil {
		t.Fatal(err)
	}
	w.Append(Row{"point": "new"})
	w.Close()
	a, _ := os.ReadFile(path + ".prev")
	b, _ := os.ReadFile(path)
	if string(a) != `{"point":"old"}`+"\n" || string(b) != `{"point":"new"}`+"\n" {
		t.Fatalf("%q %q", a, b)
	}
}
