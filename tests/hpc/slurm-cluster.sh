#!/usr/bin/env bash
# Start, stop or query a throwaway one-node SLURM cluster (munged + slurmctld + slurmd on this
# host) for the workflow tests.  Everything lives in one state directory and nothing depends
# on systemd.  The one thing outside it is a symlink /etc/slurm/slurm.conf -> our slurm.conf,
# made only where no such file (or just a stale link of ours) exists and removed on stop:
# snakemake-executor-plugin-slurm-jobstep strips every SLURM_* variable, SLURM_CONF included,
# before its `srun` inside the job, so that srun finds a configuration only at the default path.
#
#   tests/hpc/slurm-cluster.sh start|stop|status
#
# Environment:
#   OMIXED_SLURM_DIR    state directory (default /tmp/omixed-slurm)
#   OMIXED_SLURM_PORT   slurmctld port; slurmd uses the next one (default 6817)
#
# Exit codes: 0 ok; 1 the cluster failed to start (nothing is left running) or to stop;
# 2 this machine cannot host it (not root, no apt-get, install failed, a foreign
# /etc/slurm/slurm.conf).
# `status` exits 0 when all daemons run and 3 when none or only some do.
set -euo pipefail

STATE_DIR="$(realpath -m "${OMIXED_SLURM_DIR:-/tmp/omixed-slurm}")"
CTLD_PORT="${OMIXED_SLURM_PORT:-6817}"
SLURMD_PORT=$((CTLD_PORT + 1))
CONF="$STATE_DIR/slurm.conf"
SYSTEM_CONF=/etc/slurm/slurm.conf
MARKER="# written by omixed tests/hpc/slurm-cluster.sh"
ENV_FILE="$STATE_DIR/env.sh"
MUNGE_SOCKET="$STATE_DIR/munge/munge.socket.2"
START_TIMEOUT=60
STOP_TIMEOUT=30
DAEMONS=(munged slurmctld slurmd)

log() { echo "slurm-cluster: $*" >&2; }
die() { log "$2"; exit "$1"; }

pid_file() { echo "${2:-$STATE_DIR}/pids/$1.pid"; }

# PID of a daemon started from state directory $2 (default: ours), if it is still alive *and*
# still that program (guards against the PID having been reused after a crash).
live_pid() {
    local file pid
    file="$(pid_file "$1" "${2:-}")"
    [[ -f $file ]] || return 1
    pid="$(<"$file")"
    [[ -n $pid && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$1" ]] || return 1
    echo "$pid"
}

# Poll a command until it succeeds or `timeout` seconds pass.
wait_until() {
    local timeout="$1"
    shift
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null; }
node_idle() { [[ "$(node_state)" == idle ]]; }
# Up and serving, possibly running jobs ("*" would mark a node that does not respond).
node_up() { [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing)$ ]]; }
no_active_jobs() { [[ -z "$(squeue -h -t PD,R,CG,S -o %A 2>/dev/null)" ]]; }

install_if_missing() {
    local cmd missing=0
    for cmd in munged mungekey slurmctld slurmd sbatch squeue sinfo; do
        command -v "$cmd" >/dev/null || missing=1
    done
    ((missing)) || return 0
    command -v apt-get >/dev/null || die 2 "SLURM is not installed and apt-get is unavailable"
    log "installing slurmctld slurmd slurm-client munge with apt-get"
    {
        apt-get update &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y slurmctld slurmd slurm-client munge
    } >"$STATE_DIR/log/apt.log" 2>&1 ||
        die 2 "apt-get install of SLURM failed (see $STATE_DIR/log/apt.log)"
}

write_config() {
    local cpus mem_total real_mem
    cpus="$(nproc)"
    mem_total="$(free -m | awk '/^Mem:/ {print $2}')"
    # Keep a margin: slurmd drains a node whose configured memory exceeds what it detects.
    real_mem=$((mem_total > 2048 ? mem_total - 1024 : mem_total / 2))

    if [[ ! -f $STATE_DIR/munge/munge.key ]]; then
        mungekey --create --keyfile="$STATE_DIR/munge/munge.key" 2>/dev/null ||
            dd if=/dev/urandom of="$STATE_DIR/munge/munge.key" bs=1024 count=1 status=none
        chmod 0400 "$STATE_DIR/munge/munge.key"
    fi

    # Accounting is off on purpose: `sacct` then fails, so job states must come from `squeue`,
    # which keeps finished jobs for MinJobAge seconds (see profiles/slurm/config.yaml).
    cat >"$CONF" <<EOF
$MARKER
ClusterName=omixed
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool/%n
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd-%n.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
# Start a batch job right after submission (default: up to 3 s later); test jobs are short.
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
ReturnToService=2
KillWait=5
InactiveLimit=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    echo "export SLURM_CONF=$CONF" >"$ENV_FILE"
}

ours_at_system_path() { [[ -L $SYSTEM_CONF && "$(readlink "$SYSTEM_CONF")" == "$CONF" ]]; }

# A link left behind by an earlier run (perhaps with another state directory) may be replaced:
# it dangles, or points at a file this script wrote for a cluster that is no longer running.
stale_link_at_system_path() {
    local target
    [[ -L $SYSTEM_CONF ]] || return 1
    [[ -e $SYSTEM_CONF ]] || return 0
    target="$(readlink "$SYSTEM_CONF")"
    grep -qxF "$MARKER" "$target" && ! live_pid slurmctld "$(dirname "$target")" >/dev/null
}

link_system_conf() {
    ours_at_system_path && return 0
    [[ ! -e $SYSTEM_CONF && ! -L $SYSTEM_CONF ]] || stale_link_at_system_path ||
        die 2 "$SYSTEM_CONF exists (-> $(readlink -f "$SYSTEM_CONF")); refusing to shadow it"
    mkdir -p "$(dirname "$SYSTEM_CONF")"
    ln -sfn "$CONF" "$SYSTEM_CONF"
}

# Run a daemon in the foreground of its own session (so it outlives this script and the
# caller's terminal) and record its PID.  setsid execs without forking here because a
# background child of a non-interactive shell is never a process-group leader.
launch() {
    local name="$1"
    shift
    setsid "$@" </dev/null >>"$STATE_DIR/log/$name.out" 2>&1 &
    echo $! >"$(pid_file "$name")"
    sleep 0.2
    live_pid "$name" >/dev/null || abort_start "$name exited at once; see $STATE_DIR/log/$name.out"
}

# Leave nothing half-started behind.
abort_start() {
    log "$1"
    cmd_stop
    exit 1
}

cmd_start() {
    ((EUID == 0)) || die 2 "must run as root: the daemons run as SlurmUser=root"
    mkdir -p "$STATE_DIR"/{log,pids,run,state,spool,munge}
    # munged wants its socket directory searchable by everyone, but not writable.
    chmod 0711 "$STATE_DIR/munge"
    install_if_missing

    local running=0 name
    for name in "${DAEMONS[@]}"; do
        live_pid "$name" >/dev/null && running=$((running + 1))
    done
    export SLURM_CONF="$CONF"
    if ((running == ${#DAEMONS[@]})) && wait_until 10 node_up; then
        link_system_conf
        log "already running"
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    ((running == 0)) || { log "partially running; restarting"; cmd_stop; }

    write_config
    link_system_conf
    launch munged munged --foreground --force \
        --key-file="$STATE_DIR/munge/munge.key" --socket="$MUNGE_SOCKET" \
        --pid-file="$STATE_DIR/run/munged.pid" --seed-file="$STATE_DIR/munge/munged.seed"
    wait_until 10 test -S "$MUNGE_SOCKET" || abort_start "munged did not create $MUNGE_SOCKET"

    # -c: forget jobs of a previous run so every start is a clean cluster.
    launch slurmctld slurmctld -D -c -f "$CONF"
    wait_until "$START_TIMEOUT" scontrol ping ||
        abort_start "slurmctld did not answer; see $STATE_DIR/log/slurmctld.log"
    launch slurmd slurmd -D -N "$NODE" -f "$CONF"
    wait_until "$START_TIMEOUT" node_idle ||
        abort_start "node $NODE not idle after ${START_TIMEOUT}s: $(sinfo -h -N -o '%T %E' 2>&1)"
    log "cluster up: node $NODE idle, partition debug"
    echo "export SLURM_CONF=$CONF"
}

stop_daemon() {
    local pid
    pid="$(live_pid "$1")" || { rm -f "$(pid_file "$1")"; return 0; }
    kill -TERM "$pid"
    if ! wait_until "$STOP_TIMEOUT" eval "! kill -0 $pid"; then
        log "$1 ($pid) ignored SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_until 5 eval "! kill -0 $pid" || die 1 "$1 ($pid) would not exit"
    fi
    rm -f "$(pid_file "$1")"
}

cmd_stop() {
    export SLURM_CONF="$CONF"
    # Cancel leftover jobs first: their slurmstepd processes are not children of slurmd and
    # would otherwise outlive the cluster.
    if live_pid slurmctld >/dev/null; then
        local ids
        ids="$(squeue -h -t PD,R,CG,S -o %A 2>/dev/null || true)"
        if [[ -n $ids ]]; then
            # shellcheck disable=SC2086  # one argument per job id
            scancel $ids || true
            wait_until "$STOP_TIMEOUT" no_active_jobs ||
                log "jobs still active: $(squeue -h -o '%A %T')"
        fi
    fi
    # Reverse start order: slurmd still needs slurmctld and munged while shutting down.
    stop_daemon slurmd
    stop_daemon slurmctld
    stop_daemon munged
    if ours_at_system_path; then rm -f "$SYSTEM_CONF"; fi
    log "stopped"
}

cmd_status() {
    local name pid running=0
    for name in "${DAEMONS[@]}"; do
        if pid="$(live_pid "$name")"; then
            echo "$name running (pid $pid)"
            running=$((running + 1))
        else
            echo "$name not running"
        fi
    done
    if ((running == ${#DAEMONS[@]})); then
        echo "export SLURM_CONF=$CONF"
        SLURM_CONF="$CONF" sinfo -N -o '%N %P %T %c %m' || true
        return 0
    fi
    return 3
}

NODE="$(hostname -s)"
case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) die 1 "usage: $0 start|stop|status" ;;
esac
