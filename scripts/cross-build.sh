#!/usr/bin/env bash
# Builds the robot's release binaries the way the project's users do: `cross build --release
# --locked --target TARGET -p ota-agent`, in a container (Cross.toml), with cross 0.2.5 pinned.
# The binaries land where cargo puts them: target/TARGET/release/ota-agent.
#
#   scripts/cross-build.sh [TARGET...]   default: armv7-unknown-linux-gnueabihf aarch64-unknown-linux-gnu
#
#   CROSS_IMAGES=stock   build in the stock images Cross.toml names (ghcr.io, with Docker or
#                        podman as cross finds them) instead of the default: the local image
#                        scripts/cross-image.sh makes from Debian's packages, run by podman
#
# With the local image the script needs root on Debian (it installs podman and builds the image
# once); Cross.toml is not touched, cross is told the image through CROSS_TARGET_<TRIPLE>_IMAGE.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(armv7-unknown-linux-gnueabihf aarch64-unknown-linux-gnu)

# shellcheck source=scripts/tools.sh
source "$root/scripts/tools.sh"
cargo_tool cross 0.2.5

if [ "${CROSS_IMAGES:-local}" = local ]; then
  image=$(scripts/cross-image.sh)
  export CROSS_CONTAINER_ENGINE=podman CONTAINERS_CONF=$root/scripts/containers.conf
  for target in "${targets[@]}"; do
    variable=CROSS_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$target")_IMAGE
    export "$variable=$image"
    echo "cross-build: $variable=$image"
  done
fi

# cross 0.2.5 with a current rustup: the shim's comment says why it stands in for rustup.
# CROSS_CUSTOM_TOOLCHAIN keeps cross from managing the toolchain itself: it would add rust-src
# (which a build without -Zbuild-std never reads) from the network; the targets are added here.
OTA_REAL_RUSTUP=$(command -v rustup)
export OTA_REAL_RUSTUP PATH=$root/scripts/cross-shim:$PATH CROSS_CUSTOM_TOOLCHAIN=1

for target in "${targets[@]}"; do
  rustup target add "$target" >/dev/null
  t0=$(date +%s)
  cross build --release --locked --target "$target" -p ota-agent
  echo "cross-build: $target in $(($(date +%s) - t0)) s: ${CARGO_TARGET_DIR:-$root/target}/$target/release/ota-agent"
done
