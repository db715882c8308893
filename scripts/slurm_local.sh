#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for testing the workflow's SLURM profile
# against a real scheduler (tests/test_slurm.py; CI runs it through .ci/run).
#
#   sudo scripts/slurm_local.sh install start   # apt-get slurm-wlm + munge; start the daemons
#   eval "$(scripts/slurm_local.sh env)"        # SLURM_CONF, and its client wrappers on PATH
#   sbatch --wrap hostname; squeue --states=all
#   sudo scripts/slurm_local.sh stop            # cancels its jobs, stops its daemons
#
# Subcommands (several run in order): install, start, stop, status, env.
# `install` is idempotent (apt-get install slurm-wlm munge, with no service started). `start`
# runs munged, slurmctld and slurmd as root without systemd and waits for the node to be
# idle; there is no slurmdbd, so `sacct` has no data: query jobs with squeue, which keeps
# finished jobs for MinJobAge (900 s). Everything it writes lives in one state directory,
# $PRUNEBENCH_SLURM_DIR or --dir DIR (default /tmp/prunebench-slurm): slurm.conf, gres.conf,
# the munge key and socket, spool and state directories, logs, pid files and bin/ (client
# wrappers that carry SLURM_CONF). `stop` ends exactly the daemons named in its pid files.
#
# Settings (environment): PRUNEBENCH_SLURM_PARTITION (default "local"),
# PRUNEBENCH_SLURM_GPUS (default 0; N > 0: a GPU GRES of N fake devices, empty files, so that
# `--gpus` jobs are scheduled on a machine without GPUs), PRUNEBENCH_SLURM_PORT (slurmctld's,
# default 16817, away from a real SLURM's 6817; slurmd uses the next one),
# PRUNEBENCH_SLURM_TIMEOUT (seconds to wait for an idle node, default 60).
set -euo pipefail

DIR="${PRUNEBENCH_SLURM_DIR:-/tmp/prunebench-slurm}"
PARTITION="${PRUNEBENCH_SLURM_PARTITION:-local}"
GPUS="${PRUNEBENCH_SLURM_GPUS:-0}"
PORT="${PRUNEBENCH_SLURM_PORT:-16817}"
TIMEOUT="${PRUNEBENCH_SLURM_TIMEOUT:-60}"
DAEMONS=(munged slurmctld slurmd)  # start order; stopped in reverse

log() { echo "slurm_local: $*" >&2; }
die() { log "error: $*"; exit 1; }
need_root() { [ "$(id -u)" -eq 0 ] || die "$1 needs root (the daemons run as root)"; }
installed() { command -v munged >/dev/null && command -v slurmctld >/dev/null \
    && command -v slurmd >/dev/null && command -v sbatch >/dev/null; }

# ----------------------------------------------------------------------------- install
# Idempotent. Debian's packages would start their services on installation; where no
# policy-rc.d forbids that already (as in Docker images), one is put in place for the
# duration of the installation so that the only daemons running are the ones `start` starts.
POLICY_ADDED=""
remove_policy() { [ -z "$POLICY_ADDED" ] || rm -f "$POLICY_ADDED"; POLICY_ADDED=""; }

apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurm-wlm munge >/dev/null
}

cmd_install() {
    if installed; then
        log "slurm and munge are installed ($(slurmctld -V))"
        return
    fi
    need_root install
    command -v apt-get >/dev/null || die "install needs apt-get (Debian/Ubuntu)"
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        POLICY_ADDED=/usr/sbin/policy-rc.d
        trap remove_policy EXIT
    fi
    local rc=0 t0=$SECONDS
    # Stale or missing package lists (a fresh machine): update them and try again.
    apt_install 2>/dev/null || { apt-get update -qq && apt_install; } || rc=$?
    remove_policy
    [ $rc -eq 0 ] || die "apt-get install slurm-wlm munge failed ($rc)"
    installed || die "slurm-wlm is installed but munged/slurmctld/slurmd/sbatch are missing"
    log "installed $(slurmctld -V) in $((SECONDS - t0)) s"
}

# ----------------------------------------------------------------------------- helpers
pidfile() { echo "$DIR/run/$1.pid"; }

# The pid in a daemon's pid file, if that process is alive and is that daemon of this state
# directory (its name, and $DIR on its command line), never a recycled pid.
live_pid() {
    local f pid
    f="$(pidfile "$1")"
    [ -s "$f" ] || return 1
    pid="$(tr -dc 0-9 <"$f")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$DIR/" || return 1
    echo "$pid"
}

slurm_env() { export SLURM_CONF="$DIR/slurm.conf"; }

node_state() { slurm_env; sinfo -h -N -o '%T' 2>/dev/null | head -n1; }

# ----------------------------------------------------------------------------- configure
write_config() {
    local host hw cpus mem_mb real_mb defmem gres_node=""
    host="$(hostname -s)"
    # The node as slurmd sees it, with RealMemory lowered: a node that reports less memory
    # than slurm.conf claims is drained.
    hw="$(slurmd -C | head -n1)"
    cpus="$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")"
    mem_mb="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")"
    [ -n "$cpus" ] && [ -n "$mem_mb" ] || die "cannot read the node's CPUs/memory from: $hw"
    real_mb=$(( mem_mb * 9 / 10 ))
    # Without DefMemPerCPU a job that names no memory gets the whole node.
    defmem=$(( real_mb / cpus < 1024 ? real_mb / cpus : 1024 ))
    : >"$DIR/gres.conf"
    if [ "$GPUS" -gt 0 ]; then
        # GPUs on a node without any: slurmd wants a distinct, existing file per device
        # (empty files here): `--gpus` jobs are scheduled, and run on the CPU.
        mkdir -p "$DIR/dev"
        for ((i = 0; i < GPUS; i++)); do
            : >"$DIR/dev/gpu$i"
            echo "NodeName=$host Name=gpu File=$DIR/dev/gpu$i" >>"$DIR/gres.conf"
        done
        gres_node="Gres=gpu:$GPUS"
    fi
    cat >"$DIR/slurm.conf" <<CONF
# Written by scripts/slurm_local.sh: a one-node cluster on $host, state in $DIR.
ClusterName=prunebench
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
MailProg=/bin/true
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$DIR/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$defmem
# squeue reports finished jobs for MinJobAge seconds: the executor plugin's status checks
# without slurmdbd rely on it (it wants 3 x its first check interval at least); long
# enough for a test to list all its jobs at the end.
MinJobAge=900
ReturnToService=2
SchedulerParameters=sched_interval=2
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mb $gres_node State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    : >"$DIR/plugstack.conf"
    write_wrappers
}

# Client commands that find this cluster from any process that has $DIR/bin on its PATH.
# SLURM_CONF alone is not enough: snakemake-executor-plugin-slurm-jobstep (0.6.1) removes
# every SLURM_* variable, SLURM_CONF too, before the `srun` inside a job, which then looks
# for /etc/slurm/slurm.conf (and DNS) and fails with "Could not establish a configuration
# source". Real clusters keep their slurm.conf where srun finds it; this one stays in $DIR.
write_wrappers() {
    local cmd real
    mkdir -p "$DIR/bin"
    for cmd in sbatch srun salloc squeue scancel sinfo scontrol sacct; do
        real="$(PATH="$(sed "s#$DIR/bin:##g" <<<"$PATH")" command -v "$cmd")" || continue
        printf '#!/bin/sh\nSLURM_CONF=%q exec %q "$@"\n' "$DIR/slurm.conf" "$real" >"$DIR/bin/$cmd"
        chmod 755 "$DIR/bin/$cmd"
    done
}

# ----------------------------------------------------------------------------- start/stop
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local t=$1 what=$2; shift 2
    for ((i = 0; i < t * 5; i++)); do
        "$@" && return 0
        sleep 0.2
    done
    log "timed out after ${t}s waiting for $what (logs: $DIR/log)"
    cmd_stop quiet
    exit 1
}

quiet() { "$@" >/dev/null; }

failed() {  # a daemon exited at once: say why, stop what started
    log "$1 did not start; the end of $DIR/log/$1.log:"
    tail -n 5 "$DIR/log/$1.log" >&2 2>/dev/null || true
    cmd_stop quiet
    exit 1
}

node_idle() { case "$(node_state)" in idle | mixed | allocated) return 0 ;; esac; return 1; }

cmd_start() {
    need_root start
    installed || die "slurm is not installed: run '$0 install' first"
    if live_pid slurmctld >/dev/null && live_pid slurmd >/dev/null && live_pid munged >/dev/null; then
        log "already running (state: $DIR)"
        return
    fi
    cmd_stop quiet  # whatever is left of an earlier start
    mkdir -p "$DIR"/{munge,state,spool,log,run}
    chmod 755 "$DIR" "$DIR/munge"  # the socket: every user; the key: root only
    local key="$DIR/munge/munge.key"
    if [ ! -s "$key" ]; then
        dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
        chmod 400 "$key"
    fi
    write_config
    local t0=$SECONDS
    munged --key-file="$key" --socket="$DIR/munge/munge.socket" \
        --pid-file="$(pidfile munged)" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/munged.seed" --force || failed munged
    wait_for 10 munged quiet live_pid munged
    slurm_env
    # -c: a clean start, so no drained node or old job survives from an earlier run.
    slurmctld -c -f "$DIR/slurm.conf" || failed slurmctld
    wait_for 20 slurmctld quiet live_pid slurmctld
    slurmd -f "$DIR/slurm.conf" -N "$(hostname -s)" || failed slurmd
    wait_for 20 slurmd quiet live_pid slurmd
    wait_for "$TIMEOUT" "the node to become idle" node_idle
    log "started in $((SECONDS - t0)) s; partition $PARTITION, node $(node_state)"
    log "use it with: eval \"\$($0 --dir $DIR env)\"  (SLURM_CONF and $DIR/bin on PATH)"
}

ACTIVE_STATES=PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING
active_jobs() { slurm_env; squeue -h -o %i -t "$ACTIVE_STATES" 2>/dev/null; }
no_active_jobs() { [ -z "$(active_jobs)" ]; }

cmd_stop() {
    local quiet=${1:-} name pid ids
    # Jobs first, through the scheduler: their processes (slurmstepd and below) are not
    # daemons with pid files.
    if live_pid slurmctld >/dev/null && ids="$(active_jobs)" && [ -n "$ids" ]; then
        [ "$(id -u)" -eq 0 ] || die "stop needs root"
        # shellcheck disable=SC2086
        scancel $ids 2>/dev/null || true
        for ((j = 0; j < 50; j++)); do no_active_jobs && break; sleep 0.2; done
        [ -n "$quiet" ] || log "cancelled jobs $(echo $ids)"
    fi
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        name=${DAEMONS[i]}
        if pid="$(live_pid "$name")"; then
            [ "$(id -u)" -eq 0 ] || die "stop needs root"
            kill -TERM "$pid"
            for ((j = 0; j < 100; j++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            if kill -0 "$pid" 2>/dev/null; then
                log "$name ($pid) ignored SIGTERM for 10 s: SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            fi
            [ -n "$quiet" ] || log "stopped $name ($pid)"
        fi
        rm -f "$(pidfile "$name")"
    done
}

cmd_status() {
    local rc=0 name pid
    for name in "${DAEMONS[@]}"; do
        if pid="$(live_pid "$name")"; then echo "$name: running ($pid)"; else echo "$name: stopped"; rc=1; fi
    done
    if [ $rc -eq 0 ]; then
        slurm_env
        sinfo -N -o '%N %P %T %c %m %G' || rc=1
    fi
    return $rc
}

cmd_env() { printf 'export SLURM_CONF=%q PATH=%q:"$PATH"\n' "$DIR/slurm.conf" "$DIR/bin"; }

# ----------------------------------------------------------------------------- main
main() {
    local cmds=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --dir) DIR="$2"; shift 2 ;;
            --dir=*) DIR="${1#--dir=}"; shift ;;
            -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; return 0 ;;
            install | start | stop | status | env) cmds+=("$1"); shift ;;
            *) die "unknown argument '$1' (subcommands: install start stop status env)" ;;
        esac
    done
    [ ${#cmds[@]} -gt 0 ] || die "usage: $0 [--dir DIR] install|start|stop|status|env ..."
    DIR="$(realpath -m "$DIR")"
    for c in "${cmds[@]}"; do "cmd_$c"; done
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi
