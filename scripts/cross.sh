#!/usr/bin/env bash
# The robot's builds, proven under emulation: builds ota-agent in release for each ARM target
# with Debian's cross linkers (no Docker), prints the stripped binary's size, then runs the demo's
# real two-patch update with the ARM binary under qemu-user against the host's mock server.
#
#   scripts/cross.sh [TARGET...]   default: armv7-unknown-linux-gnueabihf aarch64-unknown-linux-gnu
#
# Needs: rustup, gcc-arm-linux-gnueabihf, gcc-aarch64-linux-gnu, qemu-user (.ci/run installs them).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(armv7-unknown-linux-gnueabihf aarch64-unknown-linux-gnu)
out=${CARGO_TARGET_DIR:-$root/target}

declare -A qemu=(
  [armv7-unknown-linux-gnueabihf]="qemu-arm -L /usr/arm-linux-gnueabihf"
  [aarch64-unknown-linux-gnu]="qemu-aarch64 -L /usr/aarch64-linux-gnu"
)

sizes=()
for target in "${targets[@]}"; do
  echo "== $target: release build"
  rustup target add "$target" >/dev/null
  t0=$(date +%s)
  cargo build --quiet --release --locked --target "$target" -p ota-agent
  bin=$out/$target/release/ota-agent
  bytes=$(stat -c %s "$bin")
  echo "   built in $(($(date +%s) - t0)) s; $(file -b "$bin" | cut -d, -f1-2)"
  sizes+=("$target: $bytes bytes ($(awk "BEGIN {printf \"%.2f\", $bytes / 1048576}") MiB) stripped")

  echo "== $target: a real update under ${qemu[$target]%% *}"
  AGENT="$bin" AGENT_RUNNER="${qemu[$target]}" DEMO_SIZE=$((4 * 1024 * 1024)) scripts/demo.sh
done

echo "== binary sizes"
printf '   %s\n' "${sizes[@]}"
