#!/usr/bin/env bash
# A real one-node SLURM cluster with accounting on localhost, for swag's SLURM tests.
#   scripts/slurm-cluster.sh start    install (if needed), configure and start; idempotent
#   scripts/slurm-cluster.sh stop     stop the daemons by their PIDs, in reverse order
#   scripts/slurm-cluster.sh status   exit 0 if the cluster answers
# Debian 12 as root, no systemd: munged -> mariadbd -> slurmdbd -> slurmctld -> slurmd.
set -euo pipefail
STATE=/var/lib/swag-slurm
ETC=/etc/slurm
CLUSTER=localci
DBPASS=swagci

need_root() { [ "$(id -u)" -eq 0 ] || { echo "slurm-cluster.sh: needs root" >&2; exit 2; }; }

install() {
  local pkgs=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server)
  local missing=()
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return
  export DEBIAN_FRONTEND=noninteractive
  # keep apt from starting services (no systemd here)
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

configure() {
  local host cpus mem
  host=$(hostname -s)
  mkdir -p "$ETC" "$STATE"/{ctld,d} /var/log/slurm /run/munge /run/mysqld
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 1024 ))
  cat > "$ETC/slurm.conf" <<CONF
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
SchedulerParameters=sched_interval=1,batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=5
MailProg=/bin/true
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  cat > "$ETC/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
CONF
  chmod 600 "$ETC/slurmdbd.conf"
  [ -f /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; }
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  chown mysql:mysql /run/mysqld
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS CMD...
  local n=$1; shift
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  return 1
}

start() {
  need_root; install; configure
  alive /run/munge/munged.pid || su -s /bin/sh munge -c "/usr/sbin/munged --pid-file=/run/munge/munged.pid"
  wait_for 20 munge -n
  if ! alive /run/mysqld/mysqld.pid; then
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    (mariadbd --user=mysql --skip-networking --socket=/run/mysqld/mysqld.sock \
       --pid-file=/run/mysqld/mysqld.pid >/var/log/slurm/mariadb.log 2>&1 &)
    wait_for 60 mariadb -e "select 1"
  fi
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  alive /run/slurmdbd.pid || slurmdbd
  wait_for 60 sacctmgr -n list cluster
  sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
  alive /run/slurmctld.pid || slurmctld
  wait_for 60 scontrol ping
  alive /run/slurmd.pid || slurmd
  wait_for 60 sh -c "sinfo -h -o %t | grep -qE '^(idle|mix|alloc)'" || {
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    wait_for 30 sh -c "sinfo -h -o %t | grep -qE '^(idle|mix|alloc)'"; }
  echo "slurm cluster '$CLUSTER' up: $(sinfo -h -o '%P %D %c %t')"
}

stop() {
  for pid in /run/slurmd.pid /run/slurmctld.pid /run/slurmdbd.pid /run/mysqld/mysqld.pid /run/munge/munged.pid; do
    if alive "$pid"; then
      local p; p=$(cat "$pid"); kill "$p" 2>/dev/null || true
      for _ in $(seq 60); do kill -0 "$p" 2>/dev/null || break; sleep 0.5; done
    fi
  done
  echo "slurm cluster stopped"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) sinfo -h >/dev/null 2>&1 && sacct -n -X >/dev/null 2>&1 ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
