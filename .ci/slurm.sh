#!/usr/bin/env bash
# A real single-node SLURM on localhost for the SLURM tests: munge, slurmctld and slurmd, with two fake GPUs.
#   .ci/slurm.sh start   install (Debian packages) if needed, configure, start; idempotent
#   .ci/slurm.sh stop    stop only the daemons this script started, by the pids it recorded, and remove the
#                        config files it wrote: with a config but no controller, `scontrol` waits 10 s, and the
#                        SLURM executor plugin runs it when Snakemake starts, so every snakemake call would wait
# Needs root and no systemd (as on CI). The config goes to /etc/slurm (job steps run srun, which finds
# its config only there or through DNS); state and logs live in $NEGFLOW_SLURM_DIR (default /tmp/negflow-slurm).
set -euo pipefail

DIR=${NEGFLOW_SLURM_DIR:-/tmp/negflow-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by negflow .ci/slurm.sh"
NODE=$(hostname -s)
# Declared node size: larger than this 2-core CI machine on purpose (SlurmdParameters=config_overrides),
# so profiles/slurm's real-cluster requests (8 CPUs per GPU, GBs of memory) are accepted unchanged.
CPUS=16
MEM_MB=65536

log() { echo "slurm.sh: $*" >&2; }

alive() { [[ -r /proc/$1/stat ]] && [[ $(awk '{print $3}' "/proc/$1/stat") != Z ]]; } # zombies do not count
running() { [[ -f $DIR/$1.pid ]] && alive "$(cat "$DIR/$1.pid")"; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    && command -v sbatch >/dev/null; then
    return
  fi
  log "installing slurmctld slurmd slurm-client munge"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
  mkdir -p "$DIR/state" "$DIR/spool" /etc/slurm
  if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
    log "$CONF exists and was not written by this script; not touching it"
    exit 1
  fi
  cat >"$CONF" <<EOF
$MARK
ClusterName=negflow-ci
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.daemon.pid
SlurmdPidFile=$DIR/slurmd.daemon.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=300
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:h100:2 State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
  # every GPU needs a File= (a file-less GPU is dropped and the node drained); nothing opens these
  cat >/etc/slurm/gres.conf <<EOF
$MARK
NodeName=$NODE Name=gpu Type=h100 File=/dev/null
NodeName=$NODE Name=gpu Type=h100 File=/dev/zero
EOF
}

start_munge() {
  if running munged; then return; fi
  if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "a munged not started by this script answers; using it"
    return
  fi
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged --force
  wait_for_file /run/munge/munged.pid
  cp /run/munge/munged.pid "$DIR/munged.pid"
}

start_daemons() {
  if ! running slurmctld; then
    rm -f "$DIR/slurmctld.daemon.pid"
    /usr/sbin/slurmctld -c -f "$CONF"
    wait_for_file "$DIR/slurmctld.daemon.pid"
    cp "$DIR/slurmctld.daemon.pid" "$DIR/slurmctld.pid"
  fi
  if ! running slurmd; then
    rm -f "$DIR/slurmd.daemon.pid"
    /usr/sbin/slurmd -f "$CONF" -N "$NODE"
    wait_for_file "$DIR/slurmd.daemon.pid"
    cp "$DIR/slurmd.daemon.pid" "$DIR/slurmd.pid"
  fi
  for _ in $(seq 60); do
    state=$(sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -n1 || true)
    if [[ $state == idle* || $state == mix* || $state == alloc* ]]; then
      log "node $NODE is $state"
      return
    fi
    sleep 0.5
  done
  log "node $NODE did not come up (state '${state:-none}'); see $DIR/slurmctld.log and $DIR/slurmd.log"
  tail -n 20 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
  exit 1
}

wait_for_file() {
  for _ in $(seq 100); do
    [[ -s $1 ]] && return
    sleep 0.1
  done
  log "$1 did not appear"
  exit 1
}

stop() {
  for daemon in slurmd slurmctld munged; do
    if running "$daemon"; then
      pid=$(cat "$DIR/$daemon.pid")
      kill "$pid"
      for _ in $(seq 100); do
        alive "$pid" || break
        sleep 0.1
      done
      alive "$pid" && kill -9 "$pid"
      log "stopped $daemon ($pid)"
    fi
    rm -f "$DIR/$daemon.pid"
  done
  for file in "$CONF" /etc/slurm/gres.conf; do
    if [[ -f $file ]] && grep -qF "$MARK" "$file"; then
      rm -f "$file"
      log "removed $file"
    fi
  done
}

case ${1:-} in
  start)
    install_packages
    mkdir -p "$DIR"
    write_config
    start_munge
    start_daemons
    ;;
  stop) stop ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
