// Package sweeps holds the sweep files shipped with mdnctl. They are embedded in the binary: `mdnctl sweep` with
// no file runs demo.toml, and `mdnctl sweep NAME` finds NAME.toml here when no such file exists.
package sweeps

import (
	"embed"
	"io/fs"
	"strings"
)

//go:embed *.toml
var files embed.FS

// Default is the sweep `mdnctl sweep` runs without a file.
const Default = "demo.toml"

// Lookup returns an embedded sweep file by name ("demo", "demo.toml").
func Lookup(name string) ([]byte, bool) {
	if !strings.HasSuffix(name, ".toml") {
		name += ".toml"
	}
	if strings.ContainsAny(name, "/\\") {
		return nil, false
	}
	b, err := files.ReadFile(name)
	return b, err == nil
}

// Names lists the embedded sweep files.
func Names() []string {
	m, _ := fs.Glob(files, "*.toml")
	return m
}
