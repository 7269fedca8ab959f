package report

import (
	"math"
	"sort"
)

// quantile is the linearly interpolated q-quantile (0..1) of xs (which it sorts in place).
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	sort.Float64s(xs)
	if len(xs) == 1 {
		return xs[0]
	}
	pos := q * float64(len(xs)-1)
	lo := int(math.Floor(pos))
	hi := int(math.Ceil(pos))
	f := pos - float64(lo)
	return xs[lo]*(1-f) + xs[hi]*f
}

func median(xs []float64) float64 {
	c := append([]float64(nil), xs...)
	return quantile(c, 0.5)
}

func minMax(xs []float64) (float64, float64) {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, x := range xs {
		lo = math.Min(lo, x)
		hi = math.Max(hi, x)
	}
	return lo, hi
}

func mean(xs []float64) float64 {
	s := 0.0
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

// Aggregations a cell may use over its repeats.
var aggregations = []string{"median", "mean", "min", "max", "last"}

// aggregate reduces values (in row order) by the named aggregation.
func aggregate(agg string, xs []float64) float64 {
	switch agg {
	case "mean":
		return mean(xs)
	case "min":
		lo, _ := minMax(xs)
		return lo
	case "max":
		_, hi := minMax(xs)
		return hi
	case "last":
		return xs[len(xs)-1]
	}
	return median(xs)
}
