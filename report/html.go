package report

import (
	"encoding/base64"
	"fmt"
	"html/template"
	"io"
	"sort"
	"strings"
)

// Page is everything on the HTML report: run metadata, tables and figures.
type Page struct {
	Title     string
	Command   string // the command that made the report
	Generated string // when (left empty in tests for stable output)
	Version   string // mdnctl version
	Inputs    []SourceFile
	Meta      []MetaItem // cards, versions and commands found in the rows
	Warnings  []string
	Report    *Report // may be nil when only figures were asked for
	TableNote string  // why there is no table, when Report is nil
	Figures   []*Figure
}

// MetaItem is one line of run metadata: a field and its distinct values with row counts.
type MetaItem struct {
	Key    string
	Values []string
}

// RunMetadata lists the cards, software versions and recorded commands of the rows.
func RunMetadata(rows []Row) []MetaItem {
	var out []MetaItem
	keys := GroupFields(rows)
	for _, k := range AllFields(rows) {
		base := k
		if i := strings.LastIndexByte(k, '.'); i >= 0 {
			base = k[i+1:]
		}
		if contains([]string{"command", "cmd", "argv", "commandline", "sweep", "host", "hostname", "git", "git_commit", "commit"}, base) && !contains(keys, k) {
			keys = append(keys, k)
		}
	}
	for _, k := range keys {
		counts := map[string]int{}
		for _, r := range rows {
			s, ok := r.Str(k)
			if !ok {
				s = "(missing)"
			}
			counts[s]++
		}
		var vals []string
		for v := range counts {
			vals = append(vals, v)
		}
		sort.Strings(vals)
		item := MetaItem{Key: k}
		for _, v := range vals {
			item.Values = append(item.Values, fmt.Sprintf("%s (%d rows)", v, counts[v]))
		}
		out = append(out, item)
	}
	return out
}

// WriteHTML writes one self-contained page: figures are embedded as base64 PNG, styles and the small script
// are inline, nothing is fetched. The script marks each image data-loaded="yes|no" and sets
// body[data-images-loaded] to "ok/total" (the browser test reads it).
func WriteHTML(w io.Writer, pg *Page) error {
	type fig struct {
		Title, Name string
		Img         template.HTML
		Notes       []string
	}
	var figs []fig
	for _, f := range pg.Figures {
		b, err := f.PNG()
		if err != nil {
			return err
		}
		// built by hand: html/template would entity-escape every '+' of the base64 text
		img := `<img src="data:image/png;base64,` + base64.StdEncoding.EncodeToString(b) + `" alt="` + template.HTMLEscapeString(f.Title) + `">`
		figs = append(figs, fig{Title: f.Title, Name: f.Name, Notes: f.Notes, Img: template.HTML(img)})
	}
	data := map[string]any{"P": pg, "Figures": figs}
	funcs := template.FuncMap{
		"caption": Caption,
		"group":   groupTitle,
		"coltitle": func(c []string) string {
			return colTitle(pg.Report, c)
		},
		"key": func(k string) string {
			if k == "" {
				return "—"
			}
			return k
		},
		"cell": func(c *Cell) template.HTML { return cellHTML(pg.Report, c) },
	}
	t, err := template.New("page").Funcs(funcs).Parse(pageTemplate)
	if err != nil {
		return err
	}
	return t.Execute(w, data)
}

func cellHTML(rep *Report, c *Cell) template.HTML {
	esc := template.HTMLEscapeString
	title := ""
	if len(c.Statuses) > 0 {
		var parts []string
		for _, st := range sortedKeys(c.Statuses) {
			parts = append(parts, fmt.Sprintf("%s: %d", st, c.Statuses[st]))
		}
		title = strings.Join(parts, ", ")
		if len(c.Reasons) > 0 {
			title += " — " + strings.Join(c.Reasons, " | ")
		}
	}
	attr := ""
	if title != "" {
		attr = ` title="` + esc(title) + `"`
	}
	if c.Value == nil {
		cls := "bad"
		if c.Status == StatusEmpty || c.Status == StatusMissing || c.Status == "unavailable" {
			cls = "dim"
		}
		return template.HTML(fmt.Sprintf(`<span class="%s"%s>%s</span>`, cls, attr, esc(CellText(rep, c, false))))
	}
	s := `<span class="v"` + attr + `>` + esc(FormatNumber(*c.Value)) + `</span>`
	if c.Lo != nil && c.Hi != nil {
		s += ` <span class="spread">[` + esc(FormatNumber(*c.Lo)) + `–` + esc(FormatNumber(*c.Hi)) + `]</span>`
	}
	if c.Status == StatusPartial {
		s += fmt.Sprintf(` <span class="bad">(%d/%d ok)</span>`, c.Statuses["ok"], c.Total)
	}
	if c.Ratio != nil {
		s += ` <span class="ratio ` + ratioVerdict(rep, *c.Ratio) + `">` + esc(FormatRatio(*c.Ratio)) + `</span>`
	}
	return template.HTML(s)
}

func sortedKeys(m map[string]int) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

const pageTemplate = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{.P.Title}}</title>
<style>
body { font: 14px/1.45 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; }
th { background: #f3f3f3; } td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
table.meta td:first-child { font-weight: 600; white-space: nowrap; }
.caption { font-style: italic; color: #444; }
.spread { color: #777; font-size: .9em; }
.ratio { font-weight: 600; } .good { color: #0a7a32; } .bad { color: #b3261e; } .dim { color: #888; }
.warn { color: #8a5300; } code { background: #f5f5f5; padding: 0 .2em; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .92em; }
</style>
</head>
<body>
<h1>{{.P.Title}}</h1>
<h2>Run metadata</h2>
<table class="meta">
{{- if .P.Command}}<tr><td>report command</td><td><code>{{.P.Command}}</code></td></tr>{{end}}
{{- if .P.Version}}<tr><td>mdnctl</td><td>{{.P.Version}}</td></tr>{{end}}
{{- if .P.Generated}}<tr><td>generated</td><td>{{.P.Generated}}</td></tr>{{end}}
<tr><td>inputs</td><td>{{range .P.Inputs}}<code>{{.Path}}</code> ({{.Rows}} rows)<br>{{end}}</td></tr>
{{- range .P.Meta}}
<tr><td>{{.Key}}</td><td>{{range .Values}}{{.}}<br>{{end}}</td></tr>
{{- end}}
</table>
{{- if .P.Warnings}}
<h2>Warnings</h2>
<ul>{{range .P.Warnings}}<li class="warn">{{.}}</li>{{end}}</ul>
{{- end}}
{{- with .P.Report}}
<h2>Tables</h2>
{{- $rep := .}}
{{- range .Tables}}
{{- $g := group .}}{{if $g}}<h3>{{$g}} ({{.NRows}} result rows)</h3>{{end}}
<p class="caption">{{caption $rep}}</p>
<table class="pivot">
<tr>{{range $rep.RowKeys}}<th>{{.}}</th>{{end}}{{range .Columns}}<th>{{coltitle .}}</th>{{end}}</tr>
{{- range .Lines}}
<tr>{{$base := .Baseline}}{{range $i, $k := .Key}}<td>{{key $k}}{{if and $base (eq $i 0)}} (baseline){{end}}</td>{{end}}{{range .Cells}}<td class="num">{{cell .}}</td>{{end}}</tr>
{{- end}}
</table>
{{- end}}
{{- if .Notes}}<ul>{{range .Notes}}<li>{{.}}</li>{{end}}</ul>{{end}}
{{- else}}
{{- if .P.TableNote}}<p class="dim">No table: {{.P.TableNote}}</p>{{end}}
{{- end}}
{{- if .Figures}}
<h2>Plots</h2>
{{- range .Figures}}
<figure id="{{.Name}}">{{.Img}}<figcaption>{{.Title}}{{range .Notes}}<br>{{.}}{{end}}</figcaption></figure>
{{- end}}
{{- end}}
<script>
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    var good = imgs[i].complete && imgs[i].naturalWidth > 0;
    imgs[i].setAttribute("data-loaded", good ? "yes" : "no");
    if (good) ok++;
  }
  document.body.setAttribute("data-images-loaded", ok + "/" + imgs.length);
});
</script>
</body>
</html>
`
