#!/usr/bin/env bash
# The demo, end to end: the mock server serves its demo catalog (a 16 MiB firmware-like file in
# versions 16, 17 and 18), a robot at version 16 runs one `ota-agent check`, and the script shows
# that the installed file became version 18 and which results the server recorded.
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

work=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

echo "== starting the mock server (demo catalog in $work/server)"
mkfifo "$work/stdout"
"$bin/ota-mock-server" demo --dir "$work/server" --listen 127.0.0.1:0 "${size_args[@]}" >"$work/stdout" 2>"$work/server.log" &
server_pid=$!
exec 3<"$work/stdout"
if ! read -r -t 300 -u 3 line; then
  echo "the mock server did not start:" >&2
  cat "$work/server.log" >&2
  exit 1
fi
url=${line#listening on }
echo "   serving at $url"

echo "== a robot at version 16"
mkdir -p "$work/robot"
cp "$work/server/versions/16" "$work/robot/Alpha2Services.apk"
cat >"$work/agent.toml" <<TOML
[server]
url = "$url"
client_id = "mobile_1"
client_secret = "secret_1"
username = "aa"
password = "aa"

[robot]
id = "15ae48ecs171faef35fafa5feafew"
version = "1"
language = "CN"

[agent]
state_dir = "$work/state"

[[package]]
name = "com.ubtechinc.alpha2services"
file_name = "service5mic"
path = "$work/robot/Alpha2Services.apk"
version = "16"
TOML
chmod 600 "$work/agent.toml"

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
echo "demo OK: the robot went from version 16 to 18 through a two-patch chain"
