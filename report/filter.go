package report

import (
	"fmt"
	"strings"
)

// Filter keeps rows whose field equals (or, with Negate, differs from) one of Values.
type Filter struct {
	Key    string
	Values []string
	Negate bool
}

// ParseFilter reads "key=value", "key=v1,v2" (any of) or "key!=value".
func ParseFilter(s string) (Filter, error) {
	neg := false
	i := strings.Index(s, "!=")
	if i >= 0 {
		neg = true
	} else {
		i = strings.Index(s, "=")
	}
	if i <= 0 {
		return Filter{}, fmt.Errorf("bad --filter %q: expected key=value, key=v1,v2 or key!=value", s)
	}
	key := strings.TrimSpace(s[:i])
	rest := s[i+1:]
	if neg {
		rest = s[i+2:]
	}
	var vals []string
	for _, v := range strings.Split(rest, ",") {
		vals = append(vals, strings.TrimSpace(v))
	}
	return Filter{Key: key, Values: vals, Negate: neg}, nil
}

func (f Filter) String() string {
	op := "="
	if f.Negate {
		op = "!="
	}
	return f.Key + op + strings.Join(f.Values, ",")
}

// Match reports whether the row passes the filter. A row without the field fails "=" and passes "!=".
func (f Filter) Match(r Row) bool {
	v, ok := r.Get(f.Key)
	hit := false
	if ok {
		for _, want := range f.Values {
			if sameValue(v, want) {
				hit = true
				break
			}
		}
	}
	return hit != f.Negate
}

// ApplyFilters keeps the rows that pass every filter. A filter on a field no row has is an error, and so is a
// selection that leaves no rows: the message names the filter and the values the field does have.
func ApplyFilters(rows []Row, filters []Filter) ([]Row, error) {
	if len(rows) == 0 {
		return nil, fmt.Errorf("no rows to report: the inputs hold no result rows")
	}
	cur := rows
	for _, f := range filters {
		if !hasField(cur, f.Key) {
			if hasField(rows, f.Key) {
				return nil, fmt.Errorf("--filter %s: no row left by the earlier filters has field %q", f, f.Key)
			}
			return nil, fmt.Errorf("--filter %s: no row has field %q (fields: %s)", f, f.Key, strings.Join(visibleFields(rows), ", "))
		}
		var next []Row
		for _, r := range cur {
			if f.Match(r) {
				next = append(next, r)
			}
		}
		if len(next) == 0 {
			return nil, fmt.Errorf("empty selection: no row matches --filter %s (%s has: %s)", f, f.Key, strings.Join(nonEmpty(distinct(cur, f.Key)), ", "))
		}
		cur = next
	}
	return cur, nil
}

func visibleFields(rows []Row) []string {
	var out []string
	for _, k := range AllFields(rows) {
		if !strings.HasPrefix(k, "_") {
			out = append(out, k)
		}
	}
	return out
}

func nonEmpty(vals []string) []string {
	var out []string
	for _, v := range vals {
		if v == "" {
			v = "(missing)"
		}
		out = append(out, v)
	}
	return out
}
