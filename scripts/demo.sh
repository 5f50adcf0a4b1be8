#!/usr/bin/env bash
# The demo, end to end: the mock server serves its demo catalog (a 16 MiB firmware-like file in
# versions 16, 17 and 18, every patch with signed metadata), a robot at version 16 that requires
# the vendor's signature runs one `ota-agent check`, and the script shows that the installed file
# became version 18 and which results the server recorded.
#
# For other builds of the agent (the ARM ones under qemu, in scripts/cross.sh):
#   AGENT=path/to/ota-agent      the agent binary to run (default: this workspace's build)
#   AGENT_RUNNER="qemu-arm -L …" a command to run it with
#   DEMO_SIZE=BYTES              the size of the demo firmware (default 16 MiB)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
profile=${PROFILE:-debug}
if [ "$profile" = release ]; then flag=--release; else flag=; fi
cargo build --quiet $flag -p ota-agent -p ota-mock-server
bin=${CARGO_TARGET_DIR:-$root/target}/$profile
agent=${AGENT:-$bin/ota-agent}
runner=${AGENT_RUNNER:-}
size_args=()
[ -n "${DEMO_SIZE:-}" ] && size_args=(--size "$DEMO_SIZE")

# shellcheck source=scripts/lib.sh
source "$root/scripts/lib.sh"
server_bin=$bin/ota-mock-server
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT

echo "== starting the mock server (demo catalog in $work/server)"
start_server demo demo --dir "$work/server" --sign --listen 127.0.0.1:0 "${size_args[@]}"
echo "   serving at $url, signing with $work/server/vendor.key"

echo "== a robot at version 16 that trusts the vendor's key $(cat "$work/server/vendor.pub")"
mkdir -p "$work/robot"
cp "$work/server/versions/16" "$work/robot/Alpha2Services.apk"
agent_config "$work/agent.toml" "$url" "$work/state" "$work/robot/Alpha2Services.apk" 16 6h \
  "public_keys = [\"$(cat "$work/server/vendor.pub")\"]
require_signatures = true"

echo "== ota-agent check"
$runner "$agent" --config "$work/agent.toml" check

echo "== ota-agent status"
$runner "$agent" --config "$work/agent.toml" status

echo "== the result"
installed=$(sha256sum "$work/robot/Alpha2Services.apk" | cut -d' ' -f1)
newest=$(sha256sum "$work/server/versions/18" | cut -d' ' -f1)
echo "   installed file sha256:        $installed"
echo "   server's version 18 sha256:   $newest"
if command -v curl >/dev/null; then
  echo "   callbacks the server recorded: $(curl -sS "$url/admin/callbacks")"
else
  echo "   callbacks the server recorded: $(python3 -c 'import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1]).read().decode())' "$url/admin/callbacks")"
fi
if [ "$installed" != "$newest" ]; then
  echo "demo FAILED: the installed file is not version 18" >&2
  exit 1
fi
echo "demo OK: the robot went from version 16 to 18 through a two-patch chain, every patch signed"
