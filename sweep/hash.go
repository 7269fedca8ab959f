package sweep

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"sort"
	"strings"
)

// HashLen is the number of hex digits of point ids and variant hashes.
const HashLen = 12

// canonicalJSON renders a flat map with sorted keys (encoding/json sorts map keys) and no spaces.
func canonicalJSON(m map[string]any) string {
	b, err := json.Marshal(m)
	if err != nil { // values are int64, float64, string, bool or nil: cannot fail
		panic(err)
	}
	return string(b)
}

func hashOf(kind string, m map[string]any) string {
	sum := sha256.Sum256([]byte(kind + "\n" + canonicalJSON(m)))
	return hex.EncodeToString(sum[:])[:HashLen]
}

// PointID names a point of this file (see the package functions PointID and, for generic tasks, every value).
func (f *File) PointID(values map[string]any) string {
	if !f.Generic {
		return PointID(f.Job, values)
	}
	m := map[string]any{"job": f.Job}
	for k, v := range values {
		m[k] = v
	}
	return hashOf("point/v1", m)
}

// VariantHash names a point's configuration: the launch spec of a kernel task; for a generic task every value
// but the repeat index.
func (f *File) VariantHash(values map[string]any) string {
	if !f.Generic {
		return VariantHash(values)
	}
	return hashOf("variant/v1", f.LaunchSpec(values))
}

// LaunchSpec is what the variant hash covers (see LaunchSpec; for a generic task the job and every value but
// the repeat index).
func (f *File) LaunchSpec(values map[string]any) map[string]any {
	if !f.Generic {
		return LaunchSpec(values)
	}
	m := map[string]any{"job": f.Job}
	for k, v := range values {
		if k != RepeatField {
			m[k] = v
		}
	}
	return m
}

// LaunchSpec is the kernel configuration of a point: the variant fields (op, chunk size, tiles, warps,
// stages, constraint, dtype). Its hash names the variant.
func LaunchSpec(values map[string]any) map[string]any {
	spec := map[string]any{}
	for _, f := range Fields {
		if f.Variant {
			spec[f.Name] = values[f.Name]
		}
	}
	return spec
}

// VariantHash names a launch spec.
func VariantHash(values map[string]any) string { return hashOf("variant/v1", LaunchSpec(values)) }

// PointID names a grid point: the job kind, every field and the repeat index. Derived values that are not
// fields are functions of these and do not enter the id, so renaming one does not invalidate results.
func PointID(job string, values map[string]any) string {
	m := map[string]any{"job": job}
	for _, f := range Fields {
		m[f.Name] = values[f.Name]
	}
	m[RepeatField] = values[RepeatField]
	return hashOf("point/v1", m)
}

// MatchHash reports whether h (a full hash or a prefix of at least 4 digits) names id.
func MatchHash(id, h string) bool {
	h = strings.ToLower(strings.TrimSpace(h))
	return len(h) >= 4 && strings.HasPrefix(id, h)
}

func sortedKeysAny(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
