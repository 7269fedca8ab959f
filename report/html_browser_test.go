package report

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// chromiumPath finds Debian's chromium ($CHROMIUM overrides). In CI ($CI set) a missing browser fails the
// test; elsewhere the test is skipped with a message saying how to install it.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium not found and CI is set: the HTML report test must run in CI (scripts/ci-deps.sh installs it)")
	}
	t.Skip("chromium not found: skipping the headless-browser test of the HTML report (install it with scripts/ci-deps.sh; it is required when CI is set)")
	return ""
}

// runChromium runs headless chromium on a local file with the given extra flags and returns stdout.
func runChromium(t *testing.T, bin, page string, extra ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	args := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars",
		"--user-data-dir=" + t.TempDir(),
	}
	args = append(args, extra...)
	args = append(args, "file://"+page)
	cmd := exec.CommandContext(ctx, bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %s: %v\nstderr tail: %s", strings.Join(extra, " "), err, tail(errb.String(), 2000))
	}
	return out.Bytes()
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

var loadedRE = regexp.MustCompile(`data-images-loaded="(\d+)/(\d+)"`)

// TestHTMLInBrowser renders the report page in headless Chromium: the page loads from a file with no server,
// every embedded image decodes (naturalWidth > 0, marked by the page's own script), and a screenshot is taken.
// A page with a deliberately broken image must be caught, so the check itself can fail.
func TestHTMLInBrowser(t *testing.T) {
	bin := chromiumPath(t)
	dir := t.TempDir()
	var buf bytes.Buffer
	pg := samplePage(t)
	if err := WriteHTML(&buf, pg); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "index.html")
	if err := os.WriteFile(good, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	broken := filepath.Join(dir, "broken.html")
	page := strings.Replace(buf.String(), "<h2>Plots</h2>", `<h2>Plots</h2><img src="data:image/png;base64,iVBORw0KGgoAAAA" alt="broken">`, 1)
	if err := os.WriteFile(broken, []byte(page), 0o644); err != nil {
		t.Fatal(err)
	}

	n := len(pg.Figures)
	for _, c := range []struct {
		path    string
		ok, all int
	}{{good, n, n}, {broken, n, n + 1}} {
		dom := runChromium(t, bin, c.path, "--virtual-time-budget=10000", "--dump-dom")
		m := loadedRE.FindSubmatch(dom)
		if m == nil {
			t.Fatalf("%s: the page script did not run (no data-images-loaded in the DOM; %d bytes dumped)", filepath.Base(c.path), len(dom))
		}
		if got, want := string(m[1])+"/"+string(m[2]), fmt.Sprintf("%d/%d", c.ok, c.all); got != want {
			t.Fatalf("%s: images loaded %s, want %d/%d", filepath.Base(c.path), got, c.ok, c.all)
		}
		if c.path == good && (!bytes.Contains(dom, []byte("gdn (baseline)")) || !bytes.Contains(dom, []byte("Run metadata"))) {
			t.Fatal("the rendered DOM lacks the table or the metadata")
		}
	}

	shot := filepath.Join(dir, "shot.png")
	runChromium(t, bin, good, "--screenshot="+shot, "--window-size=1280,1800")
	b, err := os.ReadFile(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	if w, h := img.Bounds().Dx(), img.Bounds().Dy(); w != 1280 || h != 1800 {
		t.Fatalf("screenshot size %d×%d, want 1280×1800", w, h)
	}
	// something was drawn: not one flat colour
	first := img.At(0, 0)
	varied := false
	for y := 0; y < 1800 && !varied; y += 7 {
		for x := 0; x < 1280; x += 7 {
			if img.At(x, y) != first {
				varied = true
				break
			}
		}
	}
	if !varied {
		t.Fatal("the screenshot is blank")
	}
	if out := os.Getenv("MDN_REPORT_SCREENSHOT"); out != "" { // keep it for a human to look at
		_ = os.WriteFile(out, b, 0o644)
	}
}
