#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, from Debian's packages, for emkit's tests of the
# slurm executor: real slurmctld, slurmd and munge, real sbatch, squeue and scontrol.
#
#   scripts/slurm-single-node.sh [start|stop|status]     (as root; start is idempotent)
#
# Set-up facts this script encodes (found on a container without systemd):
#  - the daemons run directly as root, without systemd;
#  - four fake GPUs: gres.conf points File= at character devices (copies of /dev/null), with
#    AutoDetect=off, so Slurm schedules them and sets CUDA_VISIBLE_DEVICES; plain files or a bare
#    Count leave the node INVAL;
#  - cred_expire=10: a requeued job starts again after ~15 s instead of ~150 s;
#  - no accounting (no slurmdbd): emkit watches jobs with squeue and submitit's result files,
#    never with sacct;
#  - PID 1 here does not reap daemons, so "alive" means the daemon answers (scontrol ping,
#    sinfo), not that its pid exists.
set -euo pipefail
action=${1:-start}
conf_dir=/etc/slurm
state=/var/lib/emkit-slurm
node=$(hostname -s)
cpus=${EMKIT_SLURM_CPUS:-8}   # more than this machine's cores: several small jobs run at once
gpus=${EMKIT_SLURM_GPUS:-4}

answers() { timeout 5 scontrol ping 2>/dev/null | grep -q "is UP" && timeout 5 sinfo -h -N -o "%T" 2>/dev/null | grep -qE "idle|mix|alloc"; }

stop() {
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  sleep 1
}

if [ "$action" = stop ]; then stop; exit 0; fi
if [ "$action" = status ]; then answers && echo "slurm is up" || { echo "slurm is down"; exit 1; }; exit 0; fi

if answers; then echo "slurm is already up on $node"; exit 0; fi
if [ "$(id -u)" != 0 ]; then echo "starting Slurm needs root" >&2; exit 1; fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi
stop

mkdir -p "$conf_dir" "$state/ctld" "$state/d" "$state/log" /run/munge /var/log/munge /var/lib/munge /etc/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
if ! munge -n >/dev/null 2>&1; then
  su -s /bin/sh munge -c "munged --force" 2>/dev/null || munged --force
fi
for i in $(seq 0 $((gpus - 1))); do
  [ -c /dev/emkit-fake-gpu$i ] || mknod /dev/emkit-fake-gpu$i c 1 3
done
memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))
cat > "$conf_dir/slurm.conf" <<CONF
ClusterName=emkit-test
SlurmctldHost=$node(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
GresTypes=gpu
MinJobAge=600
KillWait=5
InactiveLimit=0
# a job of the urgent partition preempts debug's jobs, which Slurm requeues (tests/test_slurm.py)
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory Gres=gpu:$gpus State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=2
# a partition whose one-minute limit keeps longer jobs pending for ever (PartitionTimeLimit)
PartitionName=short Nodes=ALL MaxTime=1 State=UP PriorityTier=1
CONF
{
  echo "AutoDetect=off"
  echo "NodeName=$node Name=gpu File=/dev/emkit-fake-gpu[0-$((gpus - 1))]"
} > "$conf_dir/gres.conf"


slurmctld -i
slurmd
for _ in $(seq 1 60); do
  if answers; then echo "slurm is up on $node: $cpus CPUs, $gpus fake GPUs"; exit 0; fi
  scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
  sleep 1
done
echo "slurm did not come up; see $state/log" >&2
tail -5 "$state/log/slurmctld.log" "$state/log/slurmd.log" >&2 || true
exit 1
