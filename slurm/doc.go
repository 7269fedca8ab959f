// Package slurm runs mdnctl work on a Slurm cluster: sweeps become job arrays (one array task per shard of
// points, at most Concurrency at a time), training becomes one sbatch job that starts torchrun on every node
// with the rendezvous taken from the Slurm environment.
//
// Everything Slurm does goes through a Runner (sbatch, squeue, scancel, scontrol), so tests use a fake.
// Generated scripts are plain bash, kept in the run directory (<dir>/slurm/) and shown by a dry run.
// An array task runs `mdnctl run-shard`, which runs its points through launcher.Worker (the same supervisor as
// local runs) and appends one row per point to its own file, <dir>/results.<jobid>_<task>.jsonl; readers merge
// every results*.jsonl of the directory. Job state comes from `squeue --json` (fallback: `squeue -h -o`) and from
// marker files each task writes, because clusters without accounting have no `sacct` and squeue forgets jobs
// MinJobAge seconds after they end. See docs/slurm.md.
package slurm
