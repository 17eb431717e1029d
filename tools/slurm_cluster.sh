#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the slow lane's cluster tests and for trying the SLURM paths by hand:
#   tools/slurm_cluster.sh start    # munge, slurmctld and slurmd from Debian's packages; prints the SLURM_CONF to export
#   tools/slurm_cluster.sh stop
# No systemd: the daemons run as this (root) user with their state under $TINYVISION_SLURM_DIR (default
# /tmp/tinyvision-slurm). slurm.conf is written for this machine's cores and memory; one partition, "debug".
# Needs: apt-get install slurm-wlm munge (make cluster does it where apt-get can be used).
set -euo pipefail
DIR=${TINYVISION_SLURM_DIR:-/tmp/tinyvision-slurm}
CONF=$DIR/slurm.conf
HOST=$(hostname -s)

stop() {
    for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munged.pid"; do
        if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            kill "$(cat "$pidfile")" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
    sleep 1
}

start() {
    for program in munged slurmctld slurmd sbatch; do
        command -v "$program" >/dev/null || { echo "error: $program is missing: apt-get install slurm-wlm munge" >&2; exit 2; }
    done
    stop
    rm -rf "$DIR/state" "$DIR/spool" "$DIR/slurmctld.log" "$DIR/slurmd.log"
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/munge"
    chmod 700 "$DIR/munge"
    # munge: its own key and socket, so nothing of the system's is touched
    if [ ! -f "$DIR/munge/munge.key" ]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
        chmod 400 "$DIR/munge/munge.key"
    fi
    munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
        --pid-file="$DIR/munged.pid" --log-file="$DIR/munged.log" --seed-file="$DIR/munge/munge.seed"
    local cpus memory
    cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc counts OpenMP's thread limit, not the cores, when set
    memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))  # MB, with a tenth left to the system
    cat > "$CONF" <<CONFIG
ClusterName=tinyvision
SlurmctldHost=$HOST
SlurmUser=$(id -un)
SlurmdUser=$(id -un)
AuthType=auth/munge
# cred_expire: also how long SLURM holds a requeued job back before it starts again (120 s by default); a test
# cluster on one machine launches its steps in well under 30 s
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=30
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldPort=${TINYVISION_SLURMCTLD_PORT:-16817}
SlurmdPort=${TINYVISION_SLURMD_PORT:-16818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
# a pass every 5 s (60 s by default), so that a requeued job starts soon after its hold ends
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobRequeue=1
KillWait=10
NodeName=$HOST CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONFIG
    export SLURM_CONF=$CONF
    slurmctld -f "$CONF"
    slurmd -f "$CONF"
    for _ in $(seq 1 30); do
        if sinfo -h -o %T 2>/dev/null | grep -q idle; then
            echo "export SLURM_CONF=$CONF"
            return 0
        fi
        sleep 1
    done
    echo "error: the SLURM node did not come up; see $DIR/slurmctld.log and $DIR/slurmd.log" >&2
    tail -5 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
    exit 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
