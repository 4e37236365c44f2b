#!/usr/bin/env bash
# Measures `observer run` the way the DaemonSet runs it, for the resource figures in deploy/README.md:
# uid 0 with the bounding set reduced to the DaemonSet's capabilities, in a throwaway network namespace,
# in a throwaway memory cgroup (cgroup v1 or v2) so that the BPF maps' kernel memory is counted too.
# Then N connection attempts to a port nobody listens on (a reset each) and the daemon's CPU time.
#
#   sudo deploy/measure.sh [path/to/observer]       (default: target/release/observer; N=5000 attempts)
#
# The binary must embed the eBPF object: build it without AYA_BUILD_SKIP (`cargo build --release -p observer`).
set -euo pipefail
BIN=$(realpath "${1:-target/release/observer}")
N=${N:-5000}
KEEP=${KEEP:-cap_bpf,cap_net_admin,cap_perfmon}
NS=observer-measure
if [ -d /sys/fs/cgroup/memory ]; then
    CG=/sys/fs/cgroup/memory/observer-measure; CUR=memory.usage_in_bytes; PEAK=memory.max_usage_in_bytes
else
    CG=/sys/fs/cgroup/observer-measure; CUR=memory.current; PEAK=memory.peak
fi
ALL=$(capsh --print | sed -n 's/^Bounding set =//p')
DROP=$(tr ',' '\n' <<<"$ALL" | grep -vxF -f <(tr ',' '\n' <<<"$KEEP") | paste -sd,)
PID=
cleanup() {
    [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && sleep 1
    ip netns del $NS 2>/dev/null || true
    rmdir $CG 2>/dev/null || true
}
trap cleanup EXIT
ip netns add $NS
ip -n $NS link set lo up
ip -n $NS link add veth-a type veth peer name veth-b
ip -n $NS link set veth-a up
ip -n $NS link set veth-b up
mkdir -p $CG
(
    echo $BASHPID >$CG/cgroup.procs
    exec ip netns exec $NS capsh --drop="$DROP" -- -c \
        "exec $BIN run --interfaces 'lo,veth-*' --ports 50051 --log-format json >/dev/null"
) 2>/tmp/observer-measure.err &
sleep 3
PID=$(pgrep -f "^$BIN run" | head -1)
[ -n "$PID" ] || { cat /tmp/observer-measure.err; exit 1; }
kib() { echo "$(($(cat $CG/$1) / 1024)) KiB"; }
status() { grep -E '^(VmHWM|VmRSS|RssAnon)' /proc/$PID/status | tr -s '\t ' ' ' | paste -sd' '; }
grep -E '^Cap(Eff|Bnd)' /proc/$PID/status | paste -sd' '
echo "after start:  $(status); cgroup $(kib $CUR)"
HZ=$(getconf CLK_TCK)
T0=$(awk '{print $14 + $15}' /proc/$PID/stat)
S0=$(date +%s%N)
ip netns exec $NS bash -c "for i in \$(seq $N); do (exec 3<>/dev/tcp/127.0.0.1/50051) 2>/dev/null; done; true"
S1=$(date +%s%N)
sleep 1
T1=$(awk '{print $14 + $15}' /proc/$PID/stat)
echo "after $N attempts in $(((S1 - S0) / 1000000)) ms: $(status); cgroup $(kib $CUR), peak $(kib $PEAK)"
echo "daemon CPU: $(((T1 - T0) * 1000 / HZ)) ms"
