#!/usr/bin/env bash
# The robot's builds, proven under emulation: builds ota-agent in release for each ARM target
# with cross (scripts/cross-build.sh: in a container, as the project's users build it), prints
# the stripped binary's size and the newest glibc symbol it needs, then runs the demo's real
# two-patch update with that very binary under qemu-user against the host's mock server.
#
#   scripts/cross.sh [TARGET...]   default: armv7-unknown-linux-gnueabihf aarch64-unknown-linux-gnu
#
# Needs what scripts/cross-build.sh needs, and qemu-user with the targets' C libraries to run
# the binaries on the host (libc6-armhf-cross, libc6-arm64-cross, libgcc-s1-armhf-cross,
# libgcc-s1-arm64-cross; .ci/run installs them).
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

scripts/cross-build.sh "${targets[@]}"

sizes=()
for target in "${targets[@]}"; do
  bin=$out/$target/release/ota-agent
  bytes=$(stat -c %s "$bin")
  # The oldest C library the binary runs with: the newest versioned glibc symbol it needs.
  glibc=$(grep -aoE 'GLIBC_[0-9]+(\.[0-9]+)+' "$bin" | sort -uV | tail -n 1)
  echo "== $target: $(file -b "$bin" | cut -d, -f1-2); needs ${glibc:-no versioned glibc symbol}"
  sizes+=("$target: $bytes bytes ($(awk "BEGIN {printf \"%.2f\", $bytes / 1048576}") MiB) stripped, needs $glibc")

  echo "== $target: a real update under ${qemu[$target]%% *}"
  AGENT="$bin" AGENT_RUNNER="${qemu[$target]}" DEMO_SIZE=$((4 * 1024 * 1024)) scripts/demo.sh
done

echo "== binary sizes"
printf '   %s\n' "${sizes[@]}"
