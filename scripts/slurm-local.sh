#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine (Debian/Ubuntu, root; no systemd or cgroups
# needed), to try `equirun sweep CONFIG --emit slurm` job arrays for real.
#
#   eval "$(scripts/slurm-local.sh start)"   # installs the packages if missing; stdout: export SLURM_CONF=...
#   bash sweeps/NAME/submit.sh               # or any sbatch / squeue / scontrol, with SLURM_CONF set
#   scripts/slurm-local.sh status            # PIDs, sinfo, squeue; exit 0 only if all 3 daemons are alive
#   scripts/slurm-local.sh test              # a 6-task array with a %2 throttle, checks every task ran
#   scripts/slurm-local.sh stop              # cancels all jobs, stops exactly the daemons `start` began
#
# Settings (environment):
#   SLURM_LOCAL_DIR            state folder: slurm.conf, munge key + socket, logs in log/, PIDs in
#                              run/pids (default ${TMPDIR:-/tmp}/slurm-local)
#   SLURM_LOCAL_CTLD_PORT      slurmctld / slurmd TCP ports (default 6817 / 6818; when unset and
#   SLURM_LOCAL_SLURMD_PORT    those are taken, the next free pair 6819/6820, ... is used)
#   SLURM_LOCAL_PARTITION      partition name (default debug)
#   SLURM_LOCAL_START_TIMEOUT  seconds to wait for the node to become idle (default 60)
#   SLURM_LOCAL_NO_INSTALL=1   never run apt-get
#
# Exit codes: 0 ok; 1 failure (daemon logs are printed); 3 this machine cannot run the cluster
# (not root, no apt-get, or the packages cannot be installed): the message says why.
# Packages: slurmctld slurmd slurm-client munge (Debian 12: Slurm 22.05, about 13 MB). `stop`
# does not uninstall them. Measurements and the reasons for each config line:
# ../shared/spec/slurm-local.md (ProctrackType=proctrack/linuxproc is required without cgroups).
set -euo pipefail

D=${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/slurm-local}
PARTITION=${SLURM_LOCAL_PARTITION:-debug}
START_TIMEOUT=${SLURM_LOCAL_START_TIMEOUT:-60}
CONF=$D/slurm.conf
PIDS=$D/run/pids
PACKAGES=(slurmctld slurmd slurm-client munge)
NEEDED=(munged mungekey slurmctld slurmd sbatch squeue sinfo scontrol scancel)

say() { echo "slurm-local: $*" >&2; }
die() { say "$*"; exit 1; }
cannot() { say "$*"; exit 3; }

missing_programs() {
  local p out=()
  for p in "${NEEDED[@]}"; do
    command -v "$p" >/dev/null 2>&1 || [ -x "/usr/sbin/$p" ] || out+=("$p")
  done
  echo "${out[*]}"
}

install_packages() {
  local missing=$1
  [ "${SLURM_LOCAL_NO_INSTALL:-0}" = 1 ] &&
    cannot "missing programs ($missing) and SLURM_LOCAL_NO_INSTALL=1: install ${PACKAGES[*]} first"
  [ "$(id -u)" = 0 ] ||
    cannot "missing programs ($missing): run as root to install them, or install ${PACKAGES[*]} yourself"
  command -v apt-get >/dev/null 2>&1 ||
    cannot "missing programs ($missing) and no apt-get: install Slurm (slurmctld, slurmd, client) and munge with your package manager"
  # The packages' postinst scripts try to start the system services; a policy-rc.d that
  # answers 101 stops them (ours use their own config). Only added when absent, then removed.
  local policy_added=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    policy_added=1
  fi
  say "installing ${PACKAGES[*]} (missing: $missing)"
  local t0=$SECONDS rc=0
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >"$D/log/apt.log" 2>&1 || {
    say "install failed; running apt-get update and retrying"
    { apt-get update -q && apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"; } \
      >>"$D/log/apt.log" 2>&1 || rc=$?
  }
  [ "$policy_added" = 1 ] && rm -f /usr/sbin/policy-rc.d
  if [ "$rc" != 0 ]; then
    tail -n 15 "$D/log/apt.log" >&2
    cannot "could not install ${PACKAGES[*]} (no package access?); full log: $D/log/apt.log"
  fi
  say "installed in $((SECONDS - t0)) s"
}

# true when something listens on TCP port $1 (IPv4 or IPv6)
port_in_use() {
  local hex
  hex=$(printf ':%04X' "$1")
  awk -v h="$hex" 'FNR > 1 && $4 == "0A" && substr($2, length($2) - 4) == h { f = 1 } END { exit !f }' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

choose_ports() {
  if [ -n "${SLURM_LOCAL_CTLD_PORT:-}" ] || [ -n "${SLURM_LOCAL_SLURMD_PORT:-}" ]; then
    CTLD_PORT=${SLURM_LOCAL_CTLD_PORT:-6817}
    SLURMD_PORT=${SLURM_LOCAL_SLURMD_PORT:-$((CTLD_PORT + 1))}
    for p in "$CTLD_PORT" "$SLURMD_PORT"; do
      port_in_use "$p" && die "port $p is already in use: choose others with SLURM_LOCAL_CTLD_PORT / SLURM_LOCAL_SLURMD_PORT"
    done
    return 0
  fi
  local p
  for ((p = 6817; p < 6917; p += 2)); do
    if ! port_in_use "$p" && ! port_in_use $((p + 1)); then
      CTLD_PORT=$p
      SLURMD_PORT=$((p + 1))
      return 0
    fi
  done
  die "no free port pair in 6817-6916: set SLURM_LOCAL_CTLD_PORT / SLURM_LOCAL_SLURMD_PORT"
}

# "NodeName=... CPUs=... RealMemory=..." as slurmd detects it; nproc + /proc/meminfo otherwise
node_line() {
  local node=$1 hw
  hw=$(slurmd -C 2>/dev/null | head -n 1 | tr ' ' '\n' | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore|RealMemory)=' | tr '\n' ' ' || true)
  if ! grep -q 'CPUs=' <<<"$hw"; then
    hw="CPUs=$(nproc --all) RealMemory=$(awk '/MemTotal/ { print int($2 / 1024) }' /proc/meminfo)"
  fi
  echo "NodeName=$node NodeAddr=127.0.0.1 ${hw}State=UNKNOWN"
}

write_conf() {
  local node=$1
  cat >"$CONF.tmp" <<EOF
# written by scripts/slurm-local.sh start; every path points into $D
ClusterName=slurmlocal
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$D/munge/munge.socket.2
StateSaveLocation=$D/ctld-state
SlurmdSpoolDir=$D/slurmd-spool
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
MailProg=/bin/true
$(node_line "$node")
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
}

# the PID recorded for daemon $1, if it is still that program
live_pid() {
  local name=$1 pid comm
  [ -f "$PIDS" ] || return 1
  pid=$(awk -v n="$name" '$1 == n { print $2 }' "$PIDS")
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [ "$comm" = "$name" ] || return 1
  # a zombie is not alive
  [ "$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
  echo "$pid"
}

all_alive() {
  live_pid munged >/dev/null && live_pid slurmctld >/dev/null && live_pid slurmd >/dev/null
}

record_pid() { # name pidfile
  local i pid
  for ((i = 0; i < 100; i++)); do
    if [ -s "$2" ]; then
      pid=$(tr -dc 0-9 <"$2")
      if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]; then
        echo "$1 $pid" >>"$PIDS"
        return 0
      fi
    fi
    sleep 0.1
  done
  return 1
}

show_logs() {
  local f
  for f in "$D"/log/munged.log "$D"/log/slurmctld.log "$D"/log/slurmd.log; do
    [ -f "$f" ] && { say "--- last lines of $f"; tail -n 20 "$f" >&2; }
  done
  return 0
}

start_failed() {
  say "$*"
  show_logs
  stop_daemons
  exit 1
}

cmd_start() {
  mkdir -p "$D/log"
  if all_alive && [ -f "$CONF" ]; then
    say "already running (state in $D)"
    echo "export SLURM_CONF=$CONF"
    return 0
  fi
  [ "$(id -u)" = 0 ] || cannot "the local cluster runs its daemons as root: run 'start' as root (sudo)"
  local missing
  missing=$(missing_programs)
  [ -z "$missing" ] || install_packages "$missing"
  export PATH="$PATH:/usr/sbin:/sbin"
  [ -z "$(missing_programs)" ] || cannot "still missing after install: $(missing_programs)"

  local t0=$SECONDS node
  node=$(hostname -s)
  # a fresh state each start (logs of the previous run are replaced)
  rm -rf "$D/ctld-state" "$D/slurmd-spool" "$D/run" "$D/munge"
  rm -f "$D"/log/munged.log "$D"/log/slurm*.log "$D"/log/slurm*.stdout
  mkdir -p "$D/ctld-state" "$D/slurmd-spool" "$D/run" "$D/munge" "$D/log"
  # munged wants every folder above its socket to be o+x (a mktemp -d folder is 0700)
  chmod a+x "$D"
  chmod 0755 "$D/munge"
  : >"$PIDS"
  choose_ports
  write_conf "$node"
  export SLURM_CONF=$CONF

  mungekey --create --keyfile="$D/munge/munge.key" >/dev/null 2>&1 ||
    dd if=/dev/urandom of="$D/munge/munge.key" bs=128 count=1 status=none
  chmod 0400 "$D/munge/munge.key"
  munged --key-file="$D/munge/munge.key" --socket="$D/munge/munge.socket.2" \
    --pid-file="$D/run/munged.pid" --log-file="$D/log/munged.log" \
    --seed-file="$D/munge/munged.seed" || start_failed "munged did not start"
  record_pid munged "$D/run/munged.pid" || start_failed "munged wrote no PID file"
  slurmctld -c -i -f "$CONF" </dev/null >>"$D/log/slurmctld.stdout" 2>&1 ||
    start_failed "slurmctld did not start"
  record_pid slurmctld "$D/run/slurmctld.pid" || start_failed "slurmctld wrote no PID file"
  slurmd -f "$CONF" -N "$node" </dev/null >>"$D/log/slurmd.stdout" 2>&1 ||
    start_failed "slurmd did not start"
  record_pid slurmd "$D/run/slurmd.pid" || start_failed "slurmd wrote no PID file"

  local state=""
  while ((SECONDS - t0 < START_TIMEOUT)); do
    state=$(sinfo -h -n "$node" -o %t 2>/dev/null | head -n 1 || true)
    [ "$state" = idle ] && break
    all_alive || start_failed "a daemon exited during start"
    sleep 0.2
  done
  [ "$state" = idle ] ||
    start_failed "node $node not idle after ${START_TIMEOUT}s (state '${state:-none}')"
  say "up in $((SECONDS - t0)) s: node $node idle, partition $PARTITION, ports $CTLD_PORT/$SLURMD_PORT, state in $D"
  echo "export SLURM_CONF=$CONF"
}

# TERM the recorded daemon, KILL it after 10 s; only if /proc/PID/comm still names it
stop_one() {
  local name=$1 pid i
  pid=$(live_pid "$name") || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do
    live_pid "$name" >/dev/null || { say "stopped $name ($pid)"; return 0; }
    sleep 0.1
  done
  say "$name ($pid) still running after 10 s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

stop_daemons() {
  export SLURM_CONF=$CONF
  if live_pid slurmctld >/dev/null; then
    local jobs i
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ' || true)
    if [ -n "${jobs// /}" ]; then
      say "cancelling jobs: $jobs"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for ((i = 0; i < 100; i++)); do
        [ -z "$(squeue -h -o %A 2>/dev/null || true)" ] && break
        sleep 0.1
      done
    fi
  fi
  stop_one slurmd
  stop_one slurmctld
  stop_one munged
  rm -f "$PIDS"
}

cmd_stop() {
  if [ ! -f "$PIDS" ]; then
    say "nothing to stop (no $PIDS)"
    return 0
  fi
  stop_daemons
  say "stopped; logs kept in $D/log"
}

cmd_status() {
  local name pid rc=0
  for name in munged slurmctld slurmd; do
    if pid=$(live_pid "$name"); then
      echo "$name: running, pid $pid"
    else
      echo "$name: not running"
      rc=1
    fi
  done
  if [ "$rc" = 0 ]; then
    export SLURM_CONF=$CONF
    echo "export SLURM_CONF=$CONF"
    sinfo
    squeue
  fi
  return $rc
}

# a %2-throttled 6-task array: every task must run once, with its own index
cmd_test() {
  all_alive || die "not running: scripts/slurm-local.sh start first"
  export SLURM_CONF=$CONF
  local t rc=0 id i
  t=$(mktemp -d)
  chmod a+rx "$t"
  cat >"$t/job.sbatch" <<'EOF'
#!/bin/bash
#SBATCH --job-name=slurm-local-test
#SBATCH --output=%x_%A_%a.out
#SBATCH --time=00:05:00
echo "task $SLURM_ARRAY_TASK_ID of array $SLURM_ARRAY_JOB_ID on $(hostname)"
echo "$SLURM_ARRAY_TASK_ID" >"done-$SLURM_ARRAY_TASK_ID"
sleep 1
EOF
  local t0=$SECONDS
  id=$(cd "$t" && sbatch --parsable --array=0-5%2 job.sbatch)
  id=${id%%;*}
  while [ -n "$(squeue -h -j "$id" 2>/dev/null)" ]; do
    ((SECONDS - t0 < 120)) || { scancel "$id"; die "array $id not finished after 120 s"; }
    sleep 0.2
  done
  for i in 0 1 2 3 4 5; do
    [ "$(cat "$t/done-$i" 2>/dev/null)" = "$i" ] || { say "task $i did not run"; rc=1; }
  done
  scontrol -o show job "$id" |
    sed -E 's/.*ArrayTaskId=([^ ]*).*JobState=([^ ]*).*ExitCode=([^ ]*).*/  task \1: \2, exit code \3/' >&2 || true
  [ "$rc" = 0 ] && say "test passed: array $id, 6 tasks, $((SECONDS - t0)) s" || say "test FAILED (files in $t)"
  [ "$rc" = 0 ] && rm -rf "$t"
  return $rc
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  test) cmd_test ;;
  *)
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    echo "usage: $0 start|stop|status|test" >&2
    exit 2
    ;;
esac
