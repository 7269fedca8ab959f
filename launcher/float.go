package launcher

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
)

// Float is a float64 that crosses the protocol safely: JSON has no NaN or infinities, so the runner writes them
// as the strings "nan", "inf" and "-inf" (docs/protocol.md). Use it for result/metric fields that may be
// non-finite; it reads both plain numbers and those strings, and writes them back the same way.
type Float float64

func (f *Float) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		switch s {
		case "nan":
			*f = Float(math.NaN())
		case "inf":
			*f = Float(math.Inf(1))
		case "-inf":
			*f = Float(math.Inf(-1))
		default:
			return fmt.Errorf("launcher.Float: %q is not a number, \"nan\", \"inf\" or \"-inf\"", s)
		}
		return nil
	}
	var x float64
	if err := json.Unmarshal(b, &x); err != nil {
		return fmt.Errorf("launcher.Float: %s is not a number", b)
	}
	*f = Float(x)
	return nil
}

func (f Float) MarshalJSON() ([]byte, error) {
	x := float64(f)
	switch {
	case math.IsNaN(x):
		return []byte(`"nan"`), nil
	case math.IsInf(x, 1):
		return []byte(`"inf"`), nil
	case math.IsInf(x, -1):
		return []byte(`"-inf"`), nil
	}
	return strconv.AppendFloat(nil, x, 'g', -1, 64), nil
}
