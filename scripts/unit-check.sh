#!/usr/bin/env bash
# Checks the systemd unit: `systemd-analyze verify` (with ExecStart pointed at this workspace's
# build, since the unit names the installed path) and the offline security exposure score.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
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
