#!/usr/bin/env bash
# A single-node Slurm (Debian bookworm, Slurm 22.05) on localhost for tests: munge + slurmctld + slurmd,
# no systemd, two fake GPUs via gres, no accounting. Needs root (apt-get, daemons).
#
#   scripts/slurm-up.sh      install if needed, (re)start what is not running, wait for the node to be idle
#   scripts/slurm-down.sh    stop it again
#
# Idempotent: a second run with everything up installs nothing, restarts nothing and returns in about a second.
# A changed configuration (e.g. after editing this script) restarts the daemons.
# Environment: SLURM_UP_GPUS (fake GPUs, default 2), SLURM_UP_TIMEOUT (seconds to wait for idle, default 60).
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then exec sudo -E "$0" "$@"; fi
  echo "slurm-up: needs root (apt-get and the daemons); run it as root or install sudo" >&2
  exit 1
fi

GPUS=${SLURM_UP_GPUS:-2}
TIMEOUT=${SLURM_UP_TIMEOUT:-60}
say() { echo "slurm-up: $*"; }
die() { echo "slurm-up: ERROR: $*" >&2; exit 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# --- packages -----------------------------------------------------------------------------------------
missing=0
for f in /usr/sbin/slurmctld /usr/sbin/slurmd /usr/bin/sbatch /usr/sbin/munged /usr/bin/munge; do
  [ -x "$f" ] || missing=1
done
if [ "$missing" = 1 ]; then
  say "installing slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed (no network to the Debian mirror?)"
  # No systemd here: postinst scripts print 'invoke-rc.d: policy-rc.d denied execution of start'; harmless.
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null 2>&1 \
    || apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge \
    || die "apt-get install of slurm failed"
fi

HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 * 8 / 10 ))   # 80% of RAM

# --- munge --------------------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge
if ! alive /run/munge/munged.pid; then
  say "starting munged"
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged --force
fi
munge -n | unmunge >/dev/null || die "munge credential round trip failed"

# --- configuration ------------------------------------------------------------------------------------
install -d -o slurm -g slurm /var/spool/slurmctld /var/log/slurm /run/slurm
install -d /var/spool/slurmd /etc/slurm

# Fake GPUs: Slurm only stat()s the device files and hands out indices via CUDA_VISIBLE_DEVICES.
DEVS=()
for i in $(seq 0 $((GPUS - 1))); do
  d=/dev/mdn-fake-gpu$i
  [ -e "$d" ] || mknod "$d" c 1 3 2>/dev/null || touch "$d"   # a copy of /dev/null, or a plain file
  DEVS+=("$d")
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/slurm.conf" <<CONF
# Written by mdnctl scripts/slurm-up.sh: single-node test cluster.
ClusterName=local
SlurmctldHost=${HOST}
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
KillWait=5
MinJobAge=300
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
GresTypes=gpu
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM_MB} Gres=gpu:${GPUS} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
{
  echo "AutoDetect=off"
  for d in "${DEVS[@]}"; do echo "NodeName=${HOST} Name=gpu File=$d"; done
} > "$tmp/gres.conf"

changed=0
for f in slurm.conf gres.conf; do
  if ! cmp -s "$tmp/$f" "/etc/slurm/$f"; then
    install -m 0644 "$tmp/$f" "/etc/slurm/$f"
    changed=1
  fi
done

# --- daemons ------------------------------------------------------------------------------------------
stop() {  # stop the daemon whose pid file is $1 and wait for it to exit
  local pf=$1 pid
  alive "$pf" || return 0
  pid=$(cat "$pf")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}
if [ "$changed" = 1 ]; then
  say "configuration changed: (re)starting the daemons"
  stop /run/slurm/slurmd.pid
  stop /run/slurm/slurmctld.pid
fi
if ! alive /run/slurm/slurmctld.pid; then
  say "starting slurmctld"
  /usr/sbin/slurmctld || die "slurmctld did not start; see /var/log/slurm/slurmctld.log"
fi
if ! alive /run/slurm/slurmd.pid; then
  say "starting slurmd"
  /usr/sbin/slurmd || die "slurmd did not start; see /var/log/slurm/slurmd.log"
fi

state=""
for _ in $(seq 1 "$((TIMEOUT * 2))"); do
  state=$(sinfo -h -n "$HOST" -o %t 2>/dev/null | head -1 || true)
  case "$state" in
    idle|mix|alloc) break ;;
    down*|drain*|drng*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 0.5
done
case "$state" in
  idle|mix|alloc) ;;
  *) tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
     die "node $HOST is '${state:-unknown}' after ${TIMEOUT}s (logs above)" ;;
esac
sinfo -o "%P %a %D %t %N %G"
say "up (node $HOST, $CPUS CPUs, gpu:$GPUS fake)"
