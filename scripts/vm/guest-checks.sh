#!/bin/bash
# The checks of the qcapsd package under a real systemd, run in the VM at
# boot by scripts/vm-test. Prints "PASS name" or "FAIL name: why" per
# check; the runner adds "exit=N".
set -u
payload=$1
api=http://127.0.0.1:9733
sock=/run/qcapsd/qcapsd.sock
fails=0
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; fails=$((fails + 1)); }
# check NAME COMMAND...: passes when the command succeeds.
check() {
  local name=$1
  shift
  if "$@" > /tmp/check.out 2>&1; then pass "$name"; else fail "$name" "$* ($(head -c 300 /tmp/check.out | tr '\n' ' '))"; fi
}
main_pid() { systemctl show -P MainPID qcapsd; }
restarts() { systemctl show -P NRestarts qcapsd; }
# The sum of a metric's series.
metric_sum() {
  curl -s "$api/metrics" | awk -v n="$1" '$1 ~ "^" n "[{ ]" {s += $2} END {print s + 0}'
}
state_of() {
  curl -s "$api/v1/emulators" | tr '{' '\n' | grep "\"name\":\"$1\"" | sed 's/.*"state":"\([a-z]*\)".*/\1/'
}
state_is() { test "$(state_of "$1")" = "$2"; }
# The accelerator probes use here: KVM where the guest has a usable
# /dev/kvm (QEMU's TCG emulates AMD SVM for the guest), else TCG.
expected_accel() {
  if [ -c /dev/kvm ] && grep -qw svm /proc/cpuinfo; then echo kvm; else echo tcg; fi
}
accel_of() {
  curl -s "$api/v1/emulators/$1" | grep -o '"accel":"[a-z]*"' | head -1 | cut -d'"' -f4
}
# wait_for SECONDS COMMAND...: polls once a second.
wait_for() {
  local n=$1
  shift
  for _ in $(seq "$n"); do
    "$@" > /dev/null 2>&1 && return 0
    sleep 1
  done
  return 1
}
config() {
  cat > /etc/qcapsd/config.yaml <<YAML
listen: 127.0.0.1:9733
unix_socket: $sock
cache_dir: /var/cache/qcapsd
emulators:
  - path: /usr/bin/qemu-system-x86_64
$1
YAML
}

echo "kernel $(uname -r), $(systemctl --version | head -1), $(qemu-system-x86_64 --version | head -1)"
cp "$payload/qcapsd-consumer.service" /etc/systemd/system/
cp "$payload/consumer.sh" /usr/local/sbin/qcapsd-consumer
chmod 0755 /usr/local/sbin/qcapsd-consumer
systemctl daemon-reload

# Install: the unit is enabled and started, with the shipped config.
check "dpkg -i installs the package" dpkg -i "$payload/qcapsd.deb"
check "the unit is enabled on install" systemctl is-enabled --quiet qcapsd
check "the unit is started on install" systemctl is-active --quiet qcapsd
check "the config is a conffile" grep -qx /etc/qcapsd/config.yaml /var/lib/dpkg/info/qcapsd.conffiles
check "the man page is installed" test -s /usr/share/man/man1/qcapsd.1.gz

# Start is ready: from a cold cache, the consumer (ordered after qcapsd)
# finds /readyz 200 and x86_64's capabilities at its start, and its
# queries cause no exec.
systemctl stop qcapsd
config ""
rm -rf /var/cache/private/qcapsd/*
start=$(date +%s)
check "starting the consumer starts qcapsd first" systemctl start qcapsd-consumer
echo "note: cold start to ready took $(( $(date +%s) - start )) s"
result=$(cat /run/qcapsd-consumer.result 2>/dev/null)
check "the consumer found /readyz 200, the capabilities and made 0 execs ($result)" \
  test "$result" = "readyz=200 doc=200 query=0 execs=0"
check "the capabilities are of /usr/bin/qemu-system-x86_64" \
  grep -q '"path":"/usr/bin/qemu-system-x86_64"' /run/qcapsd-consumer.doc
accel=$(expected_accel)
echo "note: /dev/kvm in the guest: $(ls -l /dev/kvm 2>&1); probes should use $accel"
check "the probe ran under the hardening with $accel" grep -q "\"accel\":\"$accel\"" /run/qcapsd-consumer.doc

# Security: the exposure inside the guest, and probes work under it.
exposure=$(systemd-analyze security --no-pager qcapsd 2>/dev/null | sed -n 's/.*Overall exposure level for qcapsd.service: \([0-9.]*\).*/\1/p')
check "systemd-analyze security qcapsd: $exposure <= 2.0" awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 2.0) }'
check "x86_64 is fresh under the hardening" test "$(state_of qemu-system-x86_64)" = fresh

# Socket: 0660; root is served; a user outside its group is not.
check "the socket is mode 0660" test "$(stat -c %a $sock)" = 660
check "qcapsd query --socket works for root" qcapsd query --socket $sock
useradd -M -s /usr/sbin/nologin outsider 2>/dev/null
runuser -u outsider -- qcapsd query --socket $sock > /dev/null 2>&1
check "a user outside the socket's group cannot connect (exit 69)" test $? = 69

# Journal: JSON lines, and no warning at this clean start.
pid=$(main_pid)
journalctl -q -o cat _PID="$pid" > /tmp/journal.txt
check "the journal has the agent's lines" test -s /tmp/journal.txt
check "every journal line is JSON" test "$(grep -cv '^{' /tmp/journal.txt)" = 0
check "no warning at a clean start" test "$(grep -c '"level":"WARN"' /tmp/journal.txt)" = 0

# Reload: an emulator added, no restart, back to active.
config "  - path: /usr/bin/qemu-system-i386"
check "systemctl reload qcapsd" systemctl reload qcapsd
check "reload keeps the main process" test "$(main_pid)" = "$pid"
check "the unit is active after the reload" systemctl is-active --quiet qcapsd
check "the added emulator is probed" wait_for 120 state_is qemu-system-i386 fresh

# Restart: a warm cache, no probe.
check "systemctl restart qcapsd" systemctl restart qcapsd
check "a restart runs 0 probes" test "$(metric_sum qcapsd_probes_total)" = 0

# kill -9 of the main process: systemd restarts it.
pid=$(main_pid)
before=$(restarts)
kill -9 "$pid"
check "systemd restarts a killed agent" wait_for 60 sh -c "[ \"\$(systemctl show -P NRestarts qcapsd)\" -gt $before ] && systemctl is-active --quiet qcapsd && [ \"\$(systemctl show -P MainPID qcapsd)\" != $pid ]"

# A probe that hangs longer than WatchdogSec does not trip the watchdog.
mkdir -p /etc/systemd/system/qcapsd.service.d
printf '[Service]\nWatchdogSec=6s\n' > /etc/systemd/system/qcapsd.service.d/watchdog.conf
printf '#!/bin/sh\nexec sleep 300\n' > /usr/local/bin/qemu-system-hang
chmod 0755 /usr/local/bin/qemu-system-hang
systemctl daemon-reload
systemctl restart qcapsd
pid=$(main_pid)
before=$(restarts)
config "  - path: /usr/local/bin/qemu-system-hang
probe_timeout: 40s"
systemctl reload qcapsd
sleep 20
check "the hanging probe is still running" test "$(state_of qemu-system-hang)" = probing
check "a probe hanging past WatchdogSec does not trip the watchdog" \
  test "$(main_pid)" = "$pid" -a "$(restarts)" = "$before"
rm -rf /etc/systemd/system/qcapsd.service.d
systemctl daemon-reload

# Stop: nothing left.
check "systemctl stop qcapsd" systemctl stop qcapsd
check "no qcapsd process is left" sh -c '! pgrep -x qcapsd'
check "no QEMU process is left" sh -c '! pgrep -f "[q]emu-system|[s]leep 300"'

# Removal: dpkg -r stops and removes the unit; dpkg -P removes the cache.
systemctl start qcapsd
check "dpkg -r removes the package" dpkg -r qcapsd
check "dpkg -r stops the agent" sh -c '! pgrep -x qcapsd'
check "dpkg -r removes the unit file" test ! -e /usr/lib/systemd/system/qcapsd.service
check "the unit is inactive after dpkg -r" sh -c '! systemctl is-active --quiet qcapsd'
check "dpkg -r keeps the cache" test -e /var/cache/private/qcapsd
check "dpkg -P purges the package" dpkg -P qcapsd
check "dpkg -P removes the cache" sh -c '! test -e /var/cache/qcapsd -o -e /var/cache/private/qcapsd'
check "after dpkg -P systemd knows no qcapsd unit" sh -c '! systemctl cat qcapsd > /dev/null 2>&1'

echo "failures=$fails"
[ "$fails" = 0 ]
