package train

import (
	"fmt"
	"io"
	"strconv"
	"strings"
)

// WriteTOML writes the resolved config (every key, schema order) as TOML that Load reads back unchanged.
func (c *Config) WriteTOML(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# resolved run config: %s", c.Source)
	if len(c.Overrides) > 0 {
		fmt.Fprintf(&b, " with --set %s", strings.Join(c.Overrides, " --set "))
	}
	fmt.Fprintf(&b, "\nname = %s\n", strconv.Quote(c.Name))
	for _, sec := range Sections {
		fmt.Fprintf(&b, "\n[%s]\n", sec)
		for _, f := range sectionFields(sec) {
			fmt.Fprintf(&b, "%s = %s\n", f.Name, show(c.Values[sec][f.Name]))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Params is the `train` job's params (mdn.train.config.TrainJob): every section, "none" as null.
func (c *Config) Params(outDir string, resume bool) map[string]any {
	p := map[string]any{"name": c.Name, "out_dir": outDir, "resume": resume}
	for _, sec := range Sections {
		m := map[string]any{}
		for _, f := range sectionFields(sec) {
			m[f.Name] = c.Values[sec][f.Name]
		}
		p[sec] = m
	}
	return p
}
