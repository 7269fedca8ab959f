"""Benchmarks: one op registry (MDN and the baselines) with one contract, gate distributions, fp64 references,
the correctness gate and the timers used by the runner's `bench` and `verify` jobs."""
