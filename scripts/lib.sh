# Shell functions shared by demo.sh, bench.sh and unit-check.sh. The callers of start_server
# set $work (a scratch directory) and $server_bin (the ota-mock-server binary), and declare the
# array `pids`.

# Starts a mock server with the given arguments; sets $url and appends its pid to $pids.
start_server() {
  local name=$1
  shift
  local fifo=$work/$name.stdout
  mkfifo "$fifo"
  "$server_bin" "$@" >"$fifo" 2>"$work/$name.log" &
  pids+=($!)
  exec 3<"$fifo"
  local line
  if ! read -r -t 3600 -u 3 line; then
    echo "the mock server ($name) did not start:" >&2
    cat "$work/$name.log" >&2
    return 1
  fi
  url=${line#listening on }
}

# Writes an agent config: $1 file, $2 server url, $3 state dir, $4 installed file, $5 version,
# $6 poll interval, and optionally $7 a [security] section's lines.
agent_config() {
  cat >"$1" <<TOML
[server]
url = "$2"
client_id = "mobile_1"
client_secret = "secret_1"
username = "aa"
password = "aa"

[robot]
id = "15ae48ecs171faef35fafa5feafew"
version = "1"
language = "CN"

[agent]
state_dir = "$3"
poll_interval = "$6"
startup_delay = "0s"

[[package]]
name = "com.ubtechinc.alpha2services"
file_name = "service5mic"
path = "$4"
version = "$5"
TOML
  if [ -n "${7:-}" ]; then
    printf '\n[security]\n%s\n' "$7" >>"$1"
  fi
  chmod 600 "$1"
}

# A systemd size ("64M", "1G", "4096") in bytes.
size_bytes() {
  awk -v v="$1" 'BEGIN { n = v + 0; u = substr(v, length(v)); if (u == "K") n *= 1024; if (u == "M") n *= 1048576; if (u == "G") n *= 1073741824; print n }'
}
