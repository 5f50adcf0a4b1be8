#!/usr/bin/env bash
# Checks the systemd unit: `systemd-analyze verify` (with ExecStart pointed at this workspace's
# build, since the unit names the installed path) and the offline security exposure score.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$root/scripts/lib.sh"
unit=$root/systemd/ota-agent.service
bin=${CARGO_TARGET_DIR:-$root/target}/debug/ota-agent
[ -x "$bin" ] || cargo build --quiet -p ota-agent
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed "s#/usr/bin/ota-agent#$bin#" "$unit" >"$work/ota-agent.service"
systemd-analyze verify "$work/ota-agent.service"
echo "systemd-analyze verify: ok"
score=$(systemd-analyze security --offline=true "$unit" 2>&1 | grep 'Overall exposure level')
echo "systemd-analyze security: ${score#→ }"
# Every ReadWritePaths= entry starts with "-": systemd refuses to start a unit whose read-write
# path does not exist (226/NAMESPACE), and a robot may not have the directory yet. The start on
# a board without /opt/alpha2 is proven by scripts/robot-vm.sh (missing_directory_starts).
strict=$(sed -n 's/^ReadWritePaths=//p' "$unit" | tr ' ' '\n' | grep -v '^-' | grep . || true)
if [ -n "$strict" ]; then
  echo "ReadWritePaths= without a leading '-' (the unit would not start without it): $strict" >&2
  exit 1
fi
echo "ReadWritePaths=: every path may be missing"
# The agent runs at low priority, which only the unit can set (the agent's own system call filter
# holds setpriority and ioprio_set); BENCHMARKS.md measures what it spares the robot's services.
setting() { sed -n "s/^$1=//p" "$unit" | tail -n 1; }
low=()
[ "$(setting Nice)" -gt 0 ] 2>/dev/null || low+=("Nice= above 0")
[ "$(setting CPUWeight)" -lt 100 ] 2>/dev/null || low+=("CPUWeight= below 100")
[ "$(setting IOWeight)" -lt 100 ] 2>/dev/null || low+=("IOWeight= below 100")
[ "$(setting IOSchedulingClass)" = idle ] || low+=("IOSchedulingClass=idle")
if [ ${#low[@]} -gt 0 ]; then
  printf 'the unit does not run the agent at low priority; missing: %s\n' "${low[*]}" >&2
  exit 1
fi
echo "priority: Nice=$(setting Nice) CPUWeight=$(setting CPUWeight) IOSchedulingClass=idle IOWeight=$(setting IOWeight)"
# The agent's memory is capped (the unit's comment says how the values were chosen): MemoryHigh=
# below MemoryMax=, both set.
high=$(setting MemoryHigh)
max=$(setting MemoryMax)
if [ -z "$high" ] || [ -z "$max" ] || [ "$(size_bytes "$high")" -ge "$(size_bytes "$max")" ] || [ "$(size_bytes "$high")" -lt $((32 << 20)) ]; then
  echo "the unit must cap the agent's memory with MemoryHigh= (at least 32M) below MemoryMax=; it has MemoryHigh=${high:-none} MemoryMax=${max:-none}" >&2
  exit 1
fi
echo "memory: MemoryHigh=$high MemoryMax=$max"
# Ordered after time-sync.target, so that a robot without a clock battery checks once its clock
# is set; not pulled in, since the target is passive (systemd.special(7)): only a time sync
# service may pull it in, and without one the agent must start at once.
deps() { sed -n "s/^$1=//p" "$unit" | tr ' ' '\n'; }
if ! deps After | grep -qx time-sync.target; then
  echo "the unit is not ordered After=time-sync.target" >&2
  exit 1
fi
if deps Wants | grep -qx time-sync.target || deps Requires | grep -qx time-sync.target; then
  echo "the unit pulls in time-sync.target, a passive target only a time sync service may pull in" >&2
  exit 1
fi
echo "time: After=time-sync.target, not pulled in"
