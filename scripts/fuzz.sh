#!/usr/bin/env bash
# Builds the cargo-fuzz targets in agent/fuzz and runs each for a bounded time; fails if any
# target crashes, leaks past libFuzzer's limits or hangs on one input for over 10 s.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 30; SANITIZER=none|address, default address)
#
# Only the stable toolchain is needed: RUSTC_BOOTSTRAP=1 lets it take cargo-fuzz's -Z flags.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-30}
sanitizer=${SANITIZER:-address}
export RUSTC_BOOTSTRAP=1

# shellcheck source=scripts/tools.sh
source "$root/scripts/tools.sh"
cargo_tool cargo-fuzz 0.13.2
cd "$root/agent"
fuzz=(cargo fuzz)
"${fuzz[@]}" build --fuzz-dir fuzz -s "$sanitizer"

# Seeds: the fuzzers get much further from a few valid inputs than from nothing.
corpus=$root/agent/fuzz/corpus
mkdir -p "$corpus"/{check_answer,token_answer,bspatch,config,signed_metadata}
printf '%s' '{"code": "100", "data": "http://10.10.1.14:8080/version/a--17--5mic.patch;https://h/b--18--5mic.patch", "id": "23;25"}' \
    >"$corpus/check_answer/seed-patches"
printf '%s' '{"code":"104","data":""}' >"$corpus/check_answer/seed-no-language"
printf '%s' '{"access_token":"10bb","token_type":"bearer","refresh_token":"8acf","expires_in":11999,"scope":"read write trust"}' \
    >"$corpus/token_answer/seed-token"
cp "$root/systemd/agent.toml.example" "$corpus/config/seed-example"
# The signed_metadata target signs its input (after a mode byte of 1) with its own key.
printf '\x01{"format":1,"package":"com.ubtechinc.alpha2services","file_name":"service5mic","from_version":17,"to_version":18,"patch_size":2539,"patch_sha256":"%s","result_size":205217,"result_sha256":"%s"}' \
    "$(printf 'a%.0s' {1..64})" "$(printf 'b%.0s' {1..64})" >"$corpus/signed_metadata/seed-metadata"
# Format 2 names the language and the robot model.
printf '\x01{"format":2,"package":"com.ubtechinc.alpha2services","file_name":"service5mic","language":"CN","robot_version":"1","from_version":17,"to_version":18,"patch_size":2539,"patch_sha256":"%s","result_size":205217,"result_sha256":"%s"}' \
    "$(printf 'a%.0s' {1..64})" "$(printf 'b%.0s' {1..64})" >"$corpus/signed_metadata/seed-metadata-2"
if command -v bsdiff >/dev/null; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    printf 'hello robot, version 17 of the services\n%.0s' {1..20} >"$work/old"
    printf 'hello robot, version 18 of the services!\n%.0s' {1..22} >"$work/new"
    bsdiff "$work/old" "$work/new" "$work/patch"
    size=$(stat -c %s "$work/old")
    # The bspatch target reads a little-endian u16 old-file length first.
    {
        printf "\\x$(printf %02x $((size & 255)))\\x$(printf %02x $((size >> 8)))"
        cat "$work/old" "$work/patch"
    } >"$corpus/bspatch/seed-debian"
fi

# The targets run side by side, as many at a time as there are cores: each libFuzzer process
# uses one.
run_target() {
    local target=$1 log=$root/agent/fuzz/artifacts/$1.log
    mkdir -p "$(dirname "$log")"
    local status=0
    "${fuzz[@]}" run --fuzz-dir fuzz -s "$sanitizer" "$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1 || status=$?
    echo "$status" >"$log.status"
}
targets=$("${fuzz[@]}" list --fuzz-dir fuzz)
jobs=$(nproc)
for target in $targets; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
    echo "== $target: ${seconds}s"
    run_target "$target" &
done
wait
status=0
summary=()
for target in $targets; do
    log=$root/agent/fuzz/artifacts/$target.log
    if [ "$(cat "$log.status")" = 0 ]; then
        result=ok
    else
        result=FAILED
        status=1
        tail -n 40 "$log"
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    summary+=("$(printf '%-16s %-6s %12s executions' "$target" "$result" "${runs:-?}")")
done
printf '%s\n' "${summary[@]}"
exit "$status"
