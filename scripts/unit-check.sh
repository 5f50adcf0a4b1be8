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
