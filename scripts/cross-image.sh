#!/usr/bin/env bash
# The container image that `cross` builds the robot's binaries in, made on this machine from
# Debian's packages, for a machine that cannot pull the stock images Cross.toml names (they live
# on ghcr.io). One image serves both ARM targets: Debian 12 (bookworm, glibc 2.36) for amd64 with
# the host's C compiler (build scripts run on the host side) and the armhf and arm64 cross
# compilers with their C libraries (ring's and the suffix sorter's C, and the linkers), and the
# environment cross's own images set for those targets.
#
#   scripts/cross-image.sh      prints the image's name on stdout, making it when it is missing
#
# Needs root on Debian: it installs podman (with the runc runtime), mmdebstrap and their helpers.
# The image is tagged with a hash of this file, so that a changed recipe makes a new one; its
# root file system is also kept as a tar under ~/.cache/ota-agent-ci (emptied podman storage is
# filled again from it in seconds). podman runs with scripts/containers.conf (see there why).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/ota-agent-ci
recipe=$(sha256sum "$0" | cut -c1-12)
image=localhost/ota-agent-cross:$recipe
rootfs_tar=$cache/cross-image-$recipe.tar
export CONTAINERS_CONF=$root/scripts/containers.conf

say() { echo "cross-image: $*" >&2; }

# path:package pairs; only what is missing is installed. uidmap and fuse-overlayfs are podman's
# recommended packages (its user namespaces, and overlay storage where the kernel's is refused).
missing=()
for pair in /usr/bin/podman:podman /usr/sbin/runc:runc /usr/bin/newuidmap:uidmap \
  /usr/bin/fuse-overlayfs:fuse-overlayfs /usr/bin/mmdebstrap:mmdebstrap; do
  [ -e "${pair%%:*}" ] || missing+=("${pair##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

if podman image exists "$image"; then
  echo "$image"
  exit 0
fi

if [ ! -f "$rootfs_tar" ]; then
  say "building $image from Debian's packages (about 2 minutes)"
  rm -f "$cache"/cross-image-*.tar
  mkdir -p "$cache"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mmdebstrap --mode=root --variant=minbase --quiet \
    --include=gcc,libc6-dev,gcc-arm-linux-gnueabihf,libc6-dev-armhf-cross,gcc-aarch64-linux-gnu,libc6-dev-arm64-cross \
    --dpkgopt=path-exclude=/usr/share/doc/* --dpkgopt=path-exclude=/usr/share/man/* \
    --dpkgopt=path-exclude=/usr/share/locale/* \
    bookworm "$tmp/rootfs" http://deb.debian.org/debian >&2
  tar -C "$tmp/rootfs" --numeric-owner -cf "$rootfs_tar.tmp" .
  mv "$rootfs_tar.tmp" "$rootfs_tar"
fi

say "importing $image"
# The variables cross's stock images set for these targets: the linker and the C compiler.
podman import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc' \
  --change 'ENV CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc' \
  --change 'ENV CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc' \
  --change 'ENV CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc' \
  --change 'CMD ["/bin/sh"]' \
  "$rootfs_tar" "$image" >&2
echo "$image"
