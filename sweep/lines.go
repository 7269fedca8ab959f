package sweep

import (
	"strings"
)

// keyLines maps dotted TOML key paths ("axes.op", "derive.B") to the 1-based line where they are defined.
// BurntSushi/toml's MetaData gives the keys but not their lines, so the file is scanned: table headers set the
// prefix, `key = value` at bracket depth 0 defines prefix.key; multi-line strings and arrays are skipped over.
type keyLines map[string]int

func scanKeyLines(src string) keyLines {
	kl := keyLines{}
	prefix := ""
	depth := 0  // open [ and { inside a value
	inStr := "" // the open string's delimiter: `"`, `'`, `"""`, `'''`
	lines := strings.Split(src, "\n")
	for i, line := range lines {
		ln := i + 1
		j := 0
		if inStr == "" && depth == 0 {
			t := strings.TrimLeft(line, " \t")
			switch {
			case t == "" || t[0] == '#':
				continue
			case strings.HasPrefix(t, "[["):
				if end := strings.Index(t, "]]"); end > 0 {
					prefix = normKey(t[2:end])
					setLine(kl, prefix, ln)
				}
				continue
			case t[0] == '[':
				if end := strings.Index(t, "]"); end > 0 {
					prefix = normKey(t[1:end])
					setLine(kl, prefix, ln)
				}
				continue
			}
			if eq := keyEnd(t); eq > 0 {
				key := normKey(t[:eq])
				if prefix != "" {
					key = prefix + "." + key
				}
				setLine(kl, key, ln)
				j = len(line) - len(t) + eq + 1
			}
		}
		// Track strings and brackets through the rest of the line.
		for j < len(line) {
			c := line[j]
			if inStr != "" {
				if strings.HasPrefix(line[j:], inStr) && (inStr == "'" || inStr == "'''" || !escaped(line, j)) {
					j += len(inStr)
					inStr = ""
					continue
				}
				j++
				continue
			}
			switch {
			case c == '#':
				j = len(line)
				continue
			case strings.HasPrefix(line[j:], `"""`):
				inStr = `"""`
				j += 3
				continue
			case strings.HasPrefix(line[j:], `'''`):
				inStr = `'''`
				j += 3
				continue
			case c == '"' || c == '\'':
				inStr = string(c)
			case c == '[' || c == '{':
				depth++
			case c == ']' || c == '}':
				if depth > 0 {
					depth--
				}
			}
			j++
		}
		if inStr == `"` || inStr == "'" { // single-line strings end with the line
			inStr = ""
		}
	}
	return kl
}

func escaped(s string, j int) bool {
	n := 0
	for k := j - 1; k >= 0 && s[k] == '\\'; k-- {
		n++
	}
	return n%2 == 1
}

// keyEnd returns the index of the `=` that ends a (possibly quoted, dotted) key at the start of t, or -1.
func keyEnd(t string) int {
	q := byte(0)
	for i := 0; i < len(t); i++ {
		c := t[i]
		if q != 0 {
			if c == q && (q == '\'' || !escaped(t, i)) {
				q = 0
			}
			continue
		}
		switch c {
		case '"', '\'':
			q = c
		case '=':
			return i
		case '[', '{', '#':
			return -1
		}
	}
	return -1
}

// normKey turns `a . "b c" .d` into `a.b c.d`.
func normKey(k string) string {
	var parts []string
	var cur strings.Builder
	q := byte(0)
	for i := 0; i < len(k); i++ {
		c := k[i]
		if q != 0 {
			if c == q {
				q = 0
				continue
			}
			cur.WriteByte(c)
			continue
		}
		switch c {
		case '"', '\'':
			q = c
		case '.':
			parts = append(parts, strings.TrimSpace(cur.String()))
			cur.Reset()
		case ' ', '\t':
		default:
			cur.WriteByte(c)
		}
	}
	parts = append(parts, strings.TrimSpace(cur.String()))
	return strings.Join(parts, ".")
}

func setLine(kl keyLines, key string, ln int) {
	if _, ok := kl[key]; !ok {
		kl[key] = ln
	}
}

// line returns the line of key, or of its longest defined prefix; 0 when unknown.
func (kl keyLines) line(key string) int {
	for k := key; k != ""; {
		if l, ok := kl[k]; ok {
			return l
		}
		i := strings.LastIndexAny(k, ".[")
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return 0
}
