#!/usr/bin/env bash
# Stop the single-node test Slurm started by scripts/slurm-up.sh (slurmd, slurmctld, munged).
# Idempotent: stopping what is not running is fine.
#   scripts/slurm-down.sh          stop the daemons (job state is kept for the next slurm-up.sh)
#   scripts/slurm-down.sh --purge  also forget all jobs (controller state and slurmd spool)
set -euo pipefail
PURGE=0
for a in "$@"; do
  case "$a" in
    --purge) PURGE=1 ;;
    *) echo "slurm-down: unknown argument '$a' (expected --purge)" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then exec sudo -E "$0" "$@"; fi
  echo "slurm-down: needs root" >&2
  exit 1
fi
stop() {  # $1 = name, $2 = pid file
  local pid
  [ -s "$2" ] || { echo "slurm-down: $1 not running"; return 0; }
  pid=$(cat "$2")
  if ! kill -0 "$pid" 2>/dev/null; then echo "slurm-down: $1 not running"; rm -f "$2"; return 0; fi
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
  rm -f "$2"
  echo "slurm-down: stopped $1 (pid $pid)"
}
stop slurmd /run/slurm/slurmd.pid
stop slurmctld /run/slurm/slurmctld.pid
stop munged /run/munge/munged.pid
if [ "$PURGE" = 1 ]; then
  rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*
  echo "slurm-down: purged job state"
fi
