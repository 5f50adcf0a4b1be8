#!/usr/bin/env bash
# Benchmarks of ota-agent and ota-mock-server against the tools one would otherwise script by
# hand (Debian's bsdiff/bspatch 4.3, curl, sha256sum), in one run, ending with one markdown table.
# How each figure is measured is explained in BENCHMARKS.md.
#
#   scripts/bench.sh [--size BYTES] [--runs N] [--idle-seconds S] [--wrk-seconds S]
#                    [--latency-seconds S] [--only LIST] [--data DIR] [--hpatchz PATH]
#
#   --size          size of the firmware-like test file (default 67108864 = 64 MiB); also the
#                   size of the file the download benchmark fetches
#   --runs          runs per measurement; the median is reported (default 5, at least 5 advised)
#   --idle-seconds  how long the idle daemon is watched (default 60)
#   --wrk-seconds   duration of each wrk run against the mock server (default 10)
#   --latency-seconds  how long the foreground task is watched in each run and setting
#                   (default 10)
#   --only          a comma-separated subset of apply,download,update,footprint,server,latency,
#                   patchers,memory,cgroup (the last three are in scripts/bench-memory.sh)
#   --data          where the test data and the Debian patches are kept between runs
#                   (default $CARGO_TARGET_DIR/bench-data/SIZE, or target/bench-data/SIZE)
#   --hpatchz       HDiffPatch's hpatchz, to compare the patch apply with (without it, its
#                   columns say n/a: not measured)
#
# Figures are not asserted: the script exits non-zero only when a measurement could not be
# taken, never because a goal was missed.
set -euo pipefail

size=67108864
runs=5
idle_seconds=60
wrk_seconds=10
latency_seconds=10
data=
only=apply,download,update,footprint,server,latency,patchers,memory,cgroup
hpatchz=
while [ $# -gt 0 ]; do
  case "$1" in
    --size) size=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --idle-seconds) idle_seconds=$2; shift 2 ;;
    --wrk-seconds) wrk_seconds=$2; shift 2 ;;
    --latency-seconds) latency_seconds=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --hpatchz) hpatchz=$(realpath "$2"); shift 2 ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$root/scripts/lib.sh"
# shellcheck source=scripts/bench-memory.sh
source "$root/scripts/bench-memory.sh"
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
data=${data:-$target/bench-data/$size}
mkdir -p "$data"
data=$(cd "$data" && pwd)

log() { printf '== %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# Tools and binaries
missing=()
command -v bsdiff >/dev/null || missing+=(bsdiff)
command -v bzip2 >/dev/null || missing+=(bzip2)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
[ -x /usr/bin/time ] || missing+=(time)
command -v wrk >/dev/null || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  sudo=
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

log "building release binaries"
cargo build --quiet --release -p ota-agent -p ota-mock-server -p ota-e2e-tests \
  --bin ota-agent --bin ota-mock-server --bin latency-probe
agent=$target/release/ota-agent
server_bin=$target/release/ota-mock-server
probe=$target/release/latency-probe

work=$(mktemp -d "${TMPDIR:-/tmp}/ota-bench.XXXXXX")
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  rm -rf "$work"
}
trap cleanup EXIT

res=$work/results # one file per figure: the value, or absent when it could not be taken
mkdir -p "$res"
put() { printf '%s\n' "$2" >"$res/$1"; }
get() { if [ -s "$res/$1" ]; then cat "$res/$1"; else echo n/a; fi; }

# The median of the numbers on stdin.
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit 1; if (NR % 2) print v[(NR + 1) / 2]; else printf "%.6g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# a / b with 2 decimals, or n/a.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || b == "n/a" || b + 0 == 0) print "n/a"; else printf "%.2f\n", a / b }'; }
now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f\n", b - a }'; }

# Runs a command under GNU time; appends "wall_seconds max_rss_kib" to the file $1.
timed() {
  local out=$1
  shift
  /usr/bin/time -f '%e %M' -o "$work/time.tmp" "$@"
  tail -n 1 "$work/time.tmp" >>"$out"
}

token_of() {
  curl -sS "$1/oauth/token?client_id=mobile_1&client_secret=secret_1&grant_type=password&username=aa&password=aa" |
    sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p'
}

# Runs a section in a subshell with errexit on; a failure is recorded, not fatal.
failed=()
section() {
  local name=$1
  [[ ",$only," == *",${name#bench_},"* ]] || return 0
  set +e
  (
    set -e
    # Servers and daemons the section starts are stopped when it ends, however it ends.
    base=${#pids[@]}
    trap 'for p in "${pids[@]:$base}"; do kill "$p" 2>/dev/null || true; done' EXIT
    "$name"
  )
  local rc=$?
  set -e
  if [ $rc -ne 0 ]; then
    echo "!! measurement '$name' could not be taken (exit $rc)" >&2
    failed+=("$name")
  fi
}

# ---------------------------------------------------------------------------------------------
# Test data: the mock server's demo catalog (versions 16, 17, 18 of a firmware-like file, made
# reproducibly from a fixed seed, with the server's own patches cached), and Debian's patches.
log "test data in $data ($size bytes; generated once, then reused)"
t0=$(now)
start_server demo demo --dir "$data/server" --size "$size" --listen 127.0.0.1:0
demo_url=$url
demo_pid=${pids[-1]}
log "demo server at $demo_url (ready after $(elapsed "$t0" "$(now)") s)"
v16=$data/server/versions/16
v17=$data/server/versions/17
v18=$data/server/versions/18
bsdiff_jobs=()
for pair in "16 17" "17 18"; do
  set -- $pair
  patch=$data/debian-$1-$2.patch
  # Only the patch apply needs Debian's patches, and each takes minutes to make.
  if [ ! -s "$patch" ] && [[ ",$only," == *,apply,* || ",$only," == *,patchers,* ]]; then
    log "making $patch with Debian's bsdiff"
    (
      t=$(now)
      bsdiff "$data/server/versions/$1" "$data/server/versions/$2" "$patch.tmp"
      mv "$patch.tmp" "$patch"
      echo "   bsdiff $1->$2 took $(elapsed "$t" "$(now)") s" >&2
    ) &
    bsdiff_jobs+=($!)
  fi
done
for job in "${bsdiff_jobs[@]}"; do wait "$job"; done
echo "   file sizes: $(stat -c %s "$v16") / $(stat -c %s "$v17") / $(stat -c %s "$v18") bytes;" \
  "Debian patches $(stat -c %s "$data/debian-16-17.patch" 2>/dev/null || echo none) and" \
  "$(stat -c %s "$data/debian-17-18.patch" 2>/dev/null || echo none) bytes" >&2

# ---------------------------------------------------------------------------------------------
# a. Patch apply: ota-agent bspatch against Debian's bspatch, interleaved, outputs checked.
bench_apply() {
  local from to patch out
  for pair in "16 17" "17 18"; do
    set -- $pair
    from=$data/server/versions/$1
    to=$data/server/versions/$2
    patch=$data/debian-$1-$2.patch
    out=$work/apply.out
    log "a. patch apply $1->$2: $runs runs each (after one warm-up each)"
    : >"$work/apply-agent-$1"
    : >"$work/apply-ref-$1"
    "$agent" bspatch "$from" "$out" "$patch"
    cmp "$out" "$to"
    rm -f "$out"
    bspatch "$from" "$out" "$patch"
    cmp "$out" "$to"
    rm -f "$out"
    for _ in $(seq "$runs"); do
      timed "$work/apply-agent-$1" "$agent" bspatch "$from" "$out" "$patch"
      cmp "$out" "$to"
      rm -f "$out"
      timed "$work/apply-ref-$1" bspatch "$from" "$out" "$patch"
      cmp "$out" "$to"
      rm -f "$out"
    done
    put "apply$1_agent_s" "$(cut -d' ' -f1 "$work/apply-agent-$1" | median)"
    put "apply$1_agent_kib" "$(cut -d' ' -f2 "$work/apply-agent-$1" | median)"
    put "apply$1_ref_s" "$(cut -d' ' -f1 "$work/apply-ref-$1" | median)"
    put "apply$1_ref_kib" "$(cut -d' ' -f2 "$work/apply-ref-$1" | median)"
    echo "   agent: $(tr '\n' ',' <"$work/apply-agent-$1")  bspatch: $(tr '\n' ',' <"$work/apply-ref-$1")" >&2
  done
}

# ---------------------------------------------------------------------------------------------
# b. Download: a SIZE-byte "patch" (BSDIFF40 and firmware bytes; the catalog checks only the
# magic) served as a ready patch by a second mock server, fetched by curl -o and by the agent.
bench_download() {
  local dir=$work/dl-server
  mkdir -p "$dir"
  head -c 1024 "$v16" >"$dir/16"
  cat "$v17" "$v18" >"$dir/body"
  printf 'BSDIFF40' >"$dir/big.patch"
  head -c $((size - 8)) "$dir/body" >>"$dir/big.patch"
  rm "$dir/body"
  cat >"$dir/catalog.toml" <<'TOML'
[[client]]
id = "mobile_1"
secret = "secret_1"

[[user]]
username = "aa"
password = "aa"

[[package]]
name = "com.ubtechinc.alpha2services"
label = "Alpha2Services"

[[package.file]]
file_name = "service5mic"
language = "CN"

[[package.file.version]]
code = 16
name = "1.1.0.32"
file = "16"

[[package.file.version]]
code = 17
name = "1.1.1.32"
id = "23"
patch = "big.patch"
TOML
  start_server dl --listen 127.0.0.1:0 --catalog "$dir/catalog.toml"
  local dl_url=$url
  local token patch_url
  token=$(token_of "$dl_url")
  patch_url=$(curl -sS "$dl_url/file/download?access_token=$token&package_name=com.ubtechinc.alpha2services&version=16&file_name=service5mic&language=CN&robot_version=1&robot_id=15ae48ecs171faef35fafa5feafew" |
    sed -n 's/.*"data":"\([^";]*\)[";].*/\1/p')
  [ -n "$patch_url" ]
  log "b. download of $size bytes from $patch_url: $runs runs each (after one warm-up each)"
  : >"$work/dl-curl"
  : >"$work/dl-agent"
  : >"$work/dl-agent-check"
  : >"$work/dl-curl-sync"
  : >"$work/dl-agent-body"
  local i t1 t2 line start got
  for i in $(seq 0 "$runs"); do
    rm -f "$work/dl.out"
    t1=$(now)
    curl -sS -o "$work/dl.out" "$patch_url"
    t2=$(now)
    got=$(stat -c %s "$work/dl.out")
    [ "$got" -eq "$size" ]
    [ "$i" -gt 0 ] && elapsed "$t1" "$t2" >>"$work/dl-curl"
    rm -f "$work/dl.out"
    # For reading the figures only: curl with the durability the agent has (fsync at the end).
    t1=$(now)
    curl -sS -o "$work/dl.out" "$patch_url"
    sync "$work/dl.out"
    t2=$(now)
    [ "$i" -gt 0 ] && elapsed "$t1" "$t2" >>"$work/dl-curl-sync"
    rm -f "$work/dl.out"

    # The agent: `check` on a robot at version 16 downloads the patch (streamed to its state
    # directory, hashed as it goes, fsynced), then fails to apply it (it is not a real patch)
    # and reports result 2. The download time is from the start of the process to the moment
    # its "downloaded N bytes" log line arrives; the whole `check` is kept too.
    rm -rf "$work/dl-state" "$work/dl-robot"
    mkdir -p "$work/dl-robot"
    cp "$dir/16" "$work/dl-robot/file"
    agent_config "$work/dl.toml" "$dl_url" "$work/dl-state" "$work/dl-robot/file" 16 1h
    start=$(now)
    { OTA_AGENT_LOG=info "$agent" --config "$work/dl.toml" check 2>&1 >/dev/null || true; } |
      while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$work/dl-agent.log"
    t2=$(now)
    line=$(grep -m1 "downloaded $size bytes" "$work/dl-agent.log") || {
      echo "the agent did not log a complete download:" >&2
      cat "$work/dl-agent.log" >&2
      return 1
    }
    if [ "$i" -gt 0 ]; then
      elapsed "$start" "${line%% *}" >>"$work/dl-agent"
      elapsed "$start" "$t2" >>"$work/dl-agent-check"
      # The body alone: from the accepted offer to the last byte, before the final fsync.
      t1=$(grep -m1 "lead from version" "$work/dl-agent.log" | cut -d' ' -f1)
      t2=$(grep -m1 "downloaded 100%" "$work/dl-agent.log" | cut -d' ' -f1)
      elapsed "$t1" "$t2" >>"$work/dl-agent-body"
    fi
  done
  local mib=$((size)) c a
  c=$(median <"$work/dl-curl")
  a=$(median <"$work/dl-agent")
  put dl_curl_s "$c"
  put dl_agent_s "$a"
  put dl_agent_check_s "$(median <"$work/dl-agent-check")"
  put dl_curl_sync_s "$(median <"$work/dl-curl-sync")"
  put dl_curl_sync_mbs "$(awk -v b="$size" -v s="$(get dl_curl_sync_s)" 'BEGIN { printf "%.0f\n", b / s / 1e6 }')"
  put dl_curl_mbs "$(awk -v b="$mib" -v s="$c" 'BEGIN { printf "%.0f\n", b / s / 1e6 }')"
  put dl_agent_mbs "$(awk -v b="$mib" -v s="$a" 'BEGIN { printf "%.0f\n", b / s / 1e6 }')"
  put dl_agent_body_s "$(median <"$work/dl-agent-body")"
  put dl_agent_body_mbs "$(awk -v b="$mib" -v s="$(get dl_agent_body_s)" 'BEGIN { printf "%.0f\n", b / s / 1e6 }')"
  echo "   curl: $(tr '\n' ',' <"$work/dl-curl")  curl+sync: $(tr '\n' ',' <"$work/dl-curl-sync")  agent: $(tr '\n' ',' <"$work/dl-agent")" >&2
  echo "   the agent's log of the last run, seconds since its start:" >&2
  awk -v s="$start" '{ t = $1; $1 = ""; printf "   %7.3f%s\n", t - s, $0 }' "$work/dl-agent.log" >&2
}

# ---------------------------------------------------------------------------------------------
# c. Whole update 16 -> 18 through the demo catalog's two-patch chain: `ota-agent check` (fresh
# state each run) against two curl downloads, two Debian bspatch runs, one sha256sum and an
# fsync of the result (`sync FILE`).
bench_update() {
  local token urls u1 u2 want i sha
  token=$(token_of "$demo_url")
  urls=$(curl -sS "$demo_url/file/download?access_token=$token&package_name=com.ubtechinc.alpha2services&version=16&file_name=service5mic&language=CN&robot_version=1&robot_id=15ae48ecs171faef35fafa5feafew" |
    sed -n 's/.*"data":"\([^"]*\)".*/\1/p')
  u1=${urls%%;*}
  u2=${urls#*;}
  [ -n "$u1" ] && [ -n "$u2" ] && [ "$u1" != "$u2" ]
  want=$(sha256sum "$v18" | cut -d' ' -f1)
  cat >"$work/manual.sh" <<'SH'
set -euo pipefail
cd "$1"
curl -sS -o 17.patch "$2"
curl -sS -o 18.patch "$3"
bspatch "$4" 17 17.patch
bspatch 17 18 18.patch
sha256sum 18 >18.sha256
sync 18
SH
  log "c. whole update 16->18: $runs runs each (after one warm-up each)"
  : >"$work/upd-agent"
  : >"$work/upd-manual"
  for i in $(seq 0 "$runs"); do
    rm -rf "$work/upd-state" "$work/upd-robot"
    mkdir -p "$work/upd-robot"
    cp "$v16" "$work/upd-robot/file"
    agent_config "$work/upd.toml" "$demo_url" "$work/upd-state" "$work/upd-robot/file" 16 1h
    sync
    if [ "$i" -gt 0 ]; then
      timed "$work/upd-agent" "$agent" --config "$work/upd.toml" check >&2 2>"$work/upd-agent.log"
    else
      "$agent" --config "$work/upd.toml" check >&2 2>"$work/upd-agent.log"
    fi
    sha=$(sha256sum "$work/upd-robot/file" | cut -d' ' -f1)
    [ "$sha" = "$want" ] || { echo "the agent's update did not give version 18" >&2; return 1; }

    rm -rf "$work/manual"
    mkdir -p "$work/manual"
    sync
    if [ "$i" -gt 0 ]; then
      timed "$work/upd-manual" bash "$work/manual.sh" "$work/manual" "$u1" "$u2" "$v16"
    else
      bash "$work/manual.sh" "$work/manual" "$u1" "$u2" "$v16"
    fi
    [ "$(cut -d' ' -f1 "$work/manual/18.sha256")" = "$want" ] || { echo "the manual route did not give version 18" >&2; return 1; }
  done
  put upd_agent_s "$(cut -d' ' -f1 "$work/upd-agent" | median)"
  put upd_agent_kib "$(cut -d' ' -f2 "$work/upd-agent" | median)"
  put upd_manual_s "$(cut -d' ' -f1 "$work/upd-manual" | median)"
  put upd_manual_kib "$(cut -d' ' -f2 "$work/upd-manual" | median)"
  echo "   agent: $(tr '\n' ',' <"$work/upd-agent")  manual: $(tr '\n' ',' <"$work/upd-manual")" >&2
}

# ---------------------------------------------------------------------------------------------
# d. Footprint: two daemons (`ota-agent run`, poll_interval 1h): one that has just done the
# 16 -> 18 update, one that found itself up to date at 18. Once each has logged "next check in",
# their RSS, CPU time and context switches are read from /proc over the idle window.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
# "TID SWITCHES" for every thread of a process (voluntary and involuntary context switches).
ctx_switches() {
  local t
  for t in /proc/"$1"/task/*; do
    awk -v tid="${t##*/}" '/^(non)?voluntary_ctxt_switches/ { n += $2 } END { print tid, n }' "$t/status" 2>/dev/null || true
  done
}
# Context switches between two ctx_switches snapshots: threads in both count their difference,
# new threads all of theirs (a thread that ended in between cannot be counted).
ctx_delta() { awk 'NR == FNR { a[$1] = $2; next } { n += $2 - ($1 in a ? a[$1] : 0) } END { print n + 0 }' "$1" "$2"; }
vmrss() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }

bench_footprint() {
  local kind version pid n
  local -A dpid
  for kind in updated uptodate; do
    version=16
    [ "$kind" = uptodate ] && version=18
    mkdir -p "$work/fp-$kind"
    cp "$data/server/versions/$version" "$work/fp-$kind/file"
    agent_config "$work/fp-$kind.toml" "$demo_url" "$work/fp-$kind/state" "$work/fp-$kind/file" "$version" 1h
    OTA_AGENT_LOG=info "$agent" --config "$work/fp-$kind.toml" run 2>"$work/fp-$kind.log" &
    dpid[$kind]=$!
    pids+=($!)
  done
  for kind in updated uptodate; do
    n=0
    until grep -q "next check in" "$work/fp-$kind.log"; do
      kill -0 "${dpid[$kind]}" 2>/dev/null || { cat "$work/fp-$kind.log" >&2; return 1; }
      n=$((n + 1))
      [ $n -lt 6000 ] || { echo "the daemon ($kind) never went idle" >&2; return 1; }
      sleep 0.1
    done
  done
  # Blocking-pool threads that worked during the first check end after 10 s of idleness.
  sleep 12
  log "d. footprint: watching two idle daemons for $idle_seconds s"
  local hz c0u c0d
  hz=$(getconf CLK_TCK)
  c0u=$(cpu_ticks "${dpid[updated]}")
  c0d=$(cpu_ticks "${dpid[uptodate]}")
  ctx_switches "${dpid[updated]}" >"$work/ctx0-updated"
  ctx_switches "${dpid[uptodate]}" >"$work/ctx0-uptodate"
  sleep "$idle_seconds"
  put idle_rss_updated_kib "$(vmrss "${dpid[updated]}")"
  put idle_rss_uptodate_kib "$(vmrss "${dpid[uptodate]}")"
  put idle_cpu_updated_ms "$(($(($(cpu_ticks "${dpid[updated]}") - c0u)) * 1000 / hz))"
  put idle_cpu_uptodate_ms "$(($(($(cpu_ticks "${dpid[uptodate]}") - c0d)) * 1000 / hz))"
  ctx_switches "${dpid[updated]}" >"$work/ctx1-updated"
  ctx_switches "${dpid[uptodate]}" >"$work/ctx1-uptodate"
  put idle_ctx_updated "$(ctx_delta "$work/ctx0-updated" "$work/ctx1-updated")"
  put idle_ctx_uptodate "$(ctx_delta "$work/ctx0-uptodate" "$work/ctx1-uptodate")"
  put idle_threads "$(wc -l <"$work/ctx1-updated") / $(wc -l <"$work/ctx1-uptodate")"
  echo "   idle RSS detail (after update): $(grep -E '^(VmRSS|RssAnon|RssFile)' "/proc/${dpid[updated]}/status" | tr -s ' \t' ' ' | tr '\n' ' ')" >&2
  echo "   idle RSS detail (up to date):   $(grep -E '^(VmRSS|RssAnon|RssFile)' "/proc/${dpid[uptodate]}/status" | tr -s ' \t' ' ' | tr '\n' ' ')" >&2
  for kind in updated uptodate; do
    kill -TERM "${dpid[$kind]}"
    wait "${dpid[$kind]}" || true
  done
  [ "$(sha256sum <"$work/fp-updated/file")" = "$(sha256sum <"$v18")" ]
  local b
  for b in ota-agent ota-mock-server; do
    strip -o "$work/$b.stripped" "$target/release/$b"
    put "size_$b" "$(stat -c %s "$work/$b.stripped")"
  done
}

# ---------------------------------------------------------------------------------------------
# e. Mock server: requests per second for /file/download, 64 connections, wrk -t2 -c64.
bench_server() {
  local token q i out
  token=$(token_of "$demo_url")
  [ -n "$token" ]
  q="access_token=$token&package_name=com.ubtechinc.alpha2services&version=16&file_name=service5mic&language=CN&robot_version=1&robot_id=x"
  curl -sS "$demo_url/file/download?$q" | grep -q '"code":"100"'
  log "e. mock server: $runs runs of wrk -t2 -c64 -d${wrk_seconds}s on /file/download"
  : >"$work/wrk"
  for i in $(seq "$runs"); do
    out=$(wrk -t2 -c64 -d"${wrk_seconds}s" "$demo_url/file/download?$q")
    if grep -q 'Non-2xx' <<<"$out"; then
      echo "$out" >&2
      return 1
    fi
    awk '/^Requests\/sec/ { print $2 }' <<<"$out" >>"$work/wrk"
  done
  put rps "$(median <"$work/wrk")"
  echo "   req/s: $(tr '\n' ',' <"$work/wrk")" >&2
}

# ---------------------------------------------------------------------------------------------
# f. Foreground latency: a periodic task at normal priority (latency-probe, a 10 ms period)
# alone, then while the agent does the whole update 16 -> 18 over and over, at the unit's
# priority (Nice=10, IOSchedulingClass=idle) and, for reference, at normal priority; the three
# take turns run by run. CPUWeight= and IOWeight= need a cgroup that systemd makes, so they are
# not applied here.
# "busy total" jiffies of all CPUs: user, nice, system, irq, softirq and steal are busy.
cpu_jiffies() { awk '/^cpu / { b = $2 + $3 + $4 + $7 + $8 + $9; print b, b + $5 + $6 }' /proc/stat; }
busy_percent() { awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.1f\n", 100 * (y[1] - x[1]) / (y[2] - x[2]) }'; }
# p50, p99 and max (nearest rank) of the microsecond samples in the files given.
lateness() {
  cat "$@" | sort -n | awk 'function rank(p) { r = int(p * NR); return r < p * NR ? r + 1 : r }
    { v[NR] = $1 } END { if (NR == 0) exit 1; print v[rank(0.5)], v[rank(0.99)], v[NR] }'
}

# The agent's whole update again and again, until $work/lat-stop exists, under the command
# prefix given (none: normal priority). The copy of version 16 before each round runs under the
# prefix too, since on a robot that file is already there. Writes the rounds done to lat-rounds.
lat_load() {
  local n=0
  while [ ! -e "$work/lat-stop" ]; do
    rm -rf "$work/lat-state" "$work/lat-robot"
    mkdir -p "$work/lat-robot"
    "$@" cp "$v16" "$work/lat-robot/file"
    "$@" "$agent" --config "$work/lat.toml" check >/dev/null 2>>"$work/lat-agent.log"
    n=$((n + 1))
  done
  echo "$n" >"$work/lat-rounds"
}

bench_latency() {
  local want r kind load rc j0 j1 s0
  # pinned: the unit's priority and one core of two left to the robot (taskset, as a drop-in's
  # CPUAffinity= would do), on a machine that has a second core.
  local -A prefix=([low]="nice -n 10 ionice -c 3" [pinned]="taskset -c 1 nice -n 10 ionice -c 3" [normal]="")
  local kinds="alone low pinned normal"
  [ "$(nproc)" -ge 2 ] || kinds="alone low normal"
  want=$(sha256sum <"$v18")
  agent_config "$work/lat.toml" "$demo_url" "$work/lat-state" "$work/lat-robot/file" 16 1h
  # One untimed update first, as every measurement has.
  mkdir -p "$work/lat-robot"
  cp "$v16" "$work/lat-robot/file"
  "$agent" --config "$work/lat.toml" check >/dev/null 2>>"$work/lat-agent.log"
  log "f. foreground latency: $runs runs of ${latency_seconds} s each of: $kinds (low: the agent at nice 10 and ionice idle; pinned: the same on one core)"
  echo "   load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  put lat_load_before "$(cut -d' ' -f1 /proc/loadavg)"
  for kind in $kinds; do : >"$work/lat-$kind.busy"; : >"$work/lat-$kind.rounds"; done
  for r in $(seq "$runs"); do
    for kind in $kinds; do
      rm -rf "$work/lat-stop" "$work/lat-state" "$work/lat-robot"
      sync
      if [ "$kind" != alone ]; then
        # shellcheck disable=SC2086 # the prefix is words on purpose
        lat_load ${prefix[$kind]} &
        load=$!
        pids+=("$load")
      fi
      s0=$(cpu_ticks "$demo_pid")
      j0=$(cpu_jiffies)
      "$probe" --seconds "$latency_seconds" --samples "$work/lat-$kind-$r.us" >"$work/lat.line"
      j1=$(cpu_jiffies)
      busy_percent "$j0" "$j1" >>"$work/lat-$kind.busy"
      echo "   run $r, $kind: $(cat "$work/lat.line"), CPUs busy $(tail -n 1 "$work/lat-$kind.busy") %" >&2
      if [ "$kind" != alone ]; then
        touch "$work/lat-stop"
        rc=0
        wait "$load" || rc=$?
        if [ $rc -ne 0 ]; then
          echo "the agent's update failed during the latency run:" >&2
          tail -n 20 "$work/lat-agent.log" >&2
          return 1
        fi
        [ "$(sha256sum <"$work/lat-robot/file")" = "$want" ] || { echo "the agent's update did not give version 18" >&2; return 1; }
        cat "$work/lat-rounds" >>"$work/lat-$kind.rounds"
        echo "   $(cat "$work/lat-rounds") updates done; the mock server used $(($(cpu_ticks "$demo_pid") - s0)) ticks of CPU" >&2
      fi
    done
  done
  put lat_load_after "$(cut -d' ' -f1 /proc/loadavg)"
  echo "   load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  for kind in $kinds; do
    put "lat_$kind" "$(lateness "$work"/lat-"$kind"-*.us)"
    put "lat_${kind}_busy" "$(median <"$work/lat-$kind.busy")"
  done
  put lat_low_rounds "$(awk '{ n += $1 } END { print n }' "$work/lat-low.rounds")"
  put lat_normal_rounds "$(awk '{ n += $1 } END { print n }' "$work/lat-normal.rounds")"
  [ ! -e "$work/lat-pinned.rounds" ] || put lat_pinned_rounds "$(awk '{ n += $1 } END { print n }' "$work/lat-pinned.rounds")"
}

section bench_apply
section bench_download
section bench_update
section bench_footprint
section bench_server
section bench_latency
section bench_patchers
section bench_memory
section bench_cgroup

# ---------------------------------------------------------------------------------------------
# The table
mib() { awk -v k="$1" 'BEGIN { if (k == "n/a") print "n/a"; else printf "%.1f MiB\n", k / 1024 }'; }
sec() { awk -v s="$1" 'BEGIN { if (s == "n/a") print "n/a"; else printf "%.2f s\n", s }'; }
sec_ms() { awk -v u="$1" 'BEGIN { if (u == "n/a") print "n/a"; else printf "%.2f ms\n", u / 1e3 }'; }
verdict() { # value, op, bound
  awk -v v="$1" -v op="$2" -v b="$3" 'BEGIN {
    if (v == "n/a") { print "n/a"; exit }
    ok = (op == "<=") ? (v + 0 <= b + 0) : (op == "<") ? (v + 0 < b + 0) : (v + 0 >= b + 0)
    print ok ? "met" : "**missed**" }'
}

sz_mib=$(awk -v s="$size" 'BEGIN { printf "%g", s / 1048576 }')
{
  echo
  echo "| measurement ($sz_mib MiB, median of $runs) | ota-agent | reference | ratio | goal | |"
  echo "|---|---|---|---|---|---|"
  for from in 16 17; do
    to=$((from + 1))
    r=$(ratio "$(get "apply${from}_agent_s")" "$(get "apply${from}_ref_s")")
    echo "| patch apply $from→$to (Debian patch), wall | $(sec "$(get "apply${from}_agent_s")") | $(sec "$(get "apply${from}_ref_s")") (bspatch) | ${r}× | ≤ 0.5× | $(verdict "$r" '<=' 0.5) |"
    r=$(ratio "$(get "apply${from}_agent_kib")" "$(get "apply${from}_ref_kib")")
    echo "| patch apply $from→$to, peak RSS | $(mib "$(get "apply${from}_agent_kib")") | $(mib "$(get "apply${from}_ref_kib")") (bspatch) | ${r}× | ≤ 0.6× | $(verdict "$r" '<=' 0.6) |"
  done
  r=$(ratio "$(get dl_agent_body_mbs)" "$(get dl_curl_mbs)")
  echo "| download over loopback, body throughput (offer accepted → last byte, hashed, before the final fsync) | $(get dl_agent_body_mbs) MB/s ($(sec "$(get dl_agent_body_s)")) | $(get dl_curl_mbs) MB/s ($(sec "$(get dl_curl_s)")) (curl -o) | ${r}× | ≥ 0.9× | $(verdict "$r" '>=' 0.9) |"
  r=$(ratio "$(get dl_agent_mbs)" "$(get dl_curl_mbs)")
  echo "| download, process start → durable on disk | $(get dl_agent_mbs) MB/s ($(sec "$(get dl_agent_s)")) | $(get dl_curl_mbs) MB/s (curl -o, not durable) | ${r}× | | |"
  r=$(ratio "$(get dl_agent_mbs)" "$(get dl_curl_sync_mbs)")
  echo "| download, durable on both sides | $(get dl_agent_mbs) MB/s | $(get dl_curl_sync_mbs) MB/s ($(sec "$(get dl_curl_sync_s)")) (curl -o, then sync FILE) | ${r}× | | |"
  echo "| download, the agent's whole \`check\` (download, failed apply, report) | $(sec "$(get dl_agent_check_s)") | | | | |"
  r=$(ratio "$(get upd_agent_s)" "$(get upd_manual_s)")
  echo "| whole update 16→18 (two patches), wall | $(sec "$(get upd_agent_s)") | $(sec "$(get upd_manual_s)") (curl, bspatch, sha256sum, sync) | ${r}× | ≤ 1.0× | $(verdict "$r" '<=' 1.0) |"
  r=$(ratio "$(get upd_agent_kib)" "$(get upd_manual_kib)")
  echo "| whole update 16→18, peak RSS | $(mib "$(get upd_agent_kib)") | $(mib "$(get upd_manual_kib)") (largest step) | ${r}× | | |"
  v=$(get idle_rss_updated_kib)
  echo "| idle daemon RSS, after a $sz_mib MiB update | $(mib "$v") | | | < 8 MiB | $(verdict "$v" '<' 8192) |"
  v=$(get idle_rss_uptodate_kib)
  echo "| idle daemon RSS, up to date since start | $(mib "$v") | | | < 8 MiB | $(verdict "$v" '<' 8192) |"
  echo "| idle daemon CPU time over ${idle_seconds} s (after update / up to date) | $(get idle_cpu_updated_ms) ms / $(get idle_cpu_uptodate_ms) ms | | | ~0 | |"
  echo "| idle daemon context switches over ${idle_seconds} s (after update / up to date) | $(get idle_ctx_updated) / $(get idle_ctx_uptodate) | | | ~0 | |"
  echo "| idle daemon threads (after update / up to date) | $(get idle_threads) | | | | |"
  echo "| stripped binary, x86_64: ota-agent / ota-mock-server | $(get size_ota-agent) B / $(get size_ota-mock-server) B | | | | |"
  echo "| mock server /file/download, 64 connections (wrk -t2 -c64 -d${wrk_seconds}s) | $(get rps) req/s | | | | |"
  # Lateness: "p50 p99 max" in µs, shown in ms.
  lat_ms() { awk -v l="$1" 'BEGIN { if (l == "n/a") { print "n/a"; exit } split(l, v, " "); printf "%.2f / %.2f / %.2f ms\n", v[1] / 1e3, v[2] / 1e3, v[3] / 1e3 }'; }
  p99() { awk -v l="$1" 'BEGIN { if (l == "n/a") print "n/a"; else { split(l, v, " "); print v[2] } }'; }
  a=$(p99 "$(get lat_alone)")
  bound=$(awk -v a="$a" 'BEGIN { if (a == "n/a") print "n/a"; else print 1.5 * a + 1000 }')
  echo "| foreground task, 10 ms period, lateness p50 / p99 / max (all wakes of $runs × ${latency_seconds} s): alone, CPUs $(get lat_alone_busy) % busy | $(lat_ms "$(get lat_alone)") | | | | |"
  r=$(ratio "$(p99 "$(get lat_low)")" "$(p99 "$(get lat_normal)")")
  echo "| … while the agent updates $sz_mib MiB over and over, at the unit's priority (nice 10, ionice idle; CPUWeight= and IOWeight= need systemd) | $(lat_ms "$(get lat_low)") | $(lat_ms "$(get lat_normal)") (agent at normal priority) | ${r}× (p99) | | |"
  r=$(ratio "$(p99 "$(get lat_low)")" "$bound")
  echo "| … p99 at the unit's priority against 1.5 × p99 alone + 1 ms | $(sec_ms "$(p99 "$(get lat_low)")") | $(sec_ms "$bound") | ${r}× | ≤ 1.0× | $(verdict "$r" '<=' 1.0) |"
  r=$(ratio "$(p99 "$(get lat_pinned)")" "$bound")
  echo "| … at the unit's priority and pinned to one of the two cores (taskset -c 1, as CPUAffinity=1 in a drop-in would), p99 against 1.5 × p99 alone + 1 ms | $(lat_ms "$(get lat_pinned)") | $(sec_ms "$bound") | ${r}× | | |"
  echo "| … updates done in the windows, at the unit's priority / pinned / normal priority | $(get lat_low_rounds) / $(get lat_pinned_rounds) / $(get lat_normal_rounds) | | | | |"
  echo "| … load average (1 min) before / after the latency runs | $(get lat_load_before) / $(get lat_load_after) | | | | |"
  memory_tables
  echo
  if [ ${#failed[@]} -gt 0 ]; then
    echo "Could not be measured: ${failed[*]}"
  fi
}

if [ ${#failed[@]} -gt 0 ]; then
  exit 1
fi
