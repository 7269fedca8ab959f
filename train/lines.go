package train

import (
	"strings"
)

// keyLines maps "section.key" (or "key" before any table) to its 1-based line in a TOML file, so validation
// errors can say file:line. It understands the subset our configs use: [table] headers and `key = value`
// lines (bare or quoted keys); anything else is ignored.
func keyLines(src string) map[string]int {
	out := map[string]int{}
	section := ""
	depth := 0 // open brackets of a multi-line array value
	for i, raw := range strings.Split(src, "\n") {
		line := strings.TrimSpace(stripComment(raw))
		if line == "" {
			continue
		}
		if depth > 0 {
			depth += strings.Count(line, "[") - strings.Count(line, "]")
			continue
		}
		if strings.HasPrefix(line, "[") && !strings.HasPrefix(line, "[[") {
			section = strings.TrimSpace(strings.Trim(line, "[]"))
			if _, ok := out[section]; !ok {
				out[section] = i + 1
			}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		key := strings.Trim(strings.TrimSpace(k), `"'`)
		if section != "" {
			key = section + "." + key
		}
		if _, seen := out[key]; !seen {
			out[key] = i + 1
		}
		depth = strings.Count(v, "[") - strings.Count(v, "]")
	}
	return out
}

// stripComment removes a # comment that is not inside a string.
func stripComment(s string) string {
	inStr := byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case inStr != 0:
			if c == '\\' && inStr == '"' {
				i++
			} else if c == inStr {
				inStr = 0
			}
		case c == '"' || c == '\'':
			inStr = c
		case c == '#':
			return s[:i]
		}
	}
	return s
}
