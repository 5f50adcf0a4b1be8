#!/usr/bin/env bash
# Builds the emulated board's base system into DIR: a Debian armhf root file system with
# systemd as PID 1 (rootfs.tar), Debian's armmp-lpae kernel (vmlinuz) and an initramfs that
# can find a virtio disk (initrd.img). robot-vm.sh keeps DIR under target/ and calls this only
# when the recipe (this file) changed; the project's own files go in at every run.
#
#   scripts/robot-vm/image-arm.sh DIR
set -euo pipefail
dir=$1
rm -rf "$dir.tmp"
mkdir -p "$dir.tmp"
rootfs=$dir.tmp/rootfs
# "stable" by name with the mirror given: a foreign-architecture mmdebstrap does not resolve a
# code name by itself. curl and jq are for the proofs that run on the board (they talk to the
# mock server's /admin endpoints), e2fsprogs for the data checks, procps for the process list.
mmdebstrap --mode=root --arch=armhf --variant=minbase --quiet \
  --include=systemd,systemd-sysv,udev,dbus,linux-image-armmp-lpae,initramfs-tools,kmod,procps,iproute2,curl,jq,e2fsprogs \
  stable "$rootfs" http://deb.debian.org/debian
# The stock initramfs has no driver for the virt machine's virtio disk.
printf 'virtio_mmio\nvirtio_blk\nvirtio_net\next4\n' >>"$rootfs/etc/initramfs-tools/modules"
chroot "$rootfs" update-initramfs -u -k all
cp "$(ls "$rootfs"/boot/vmlinuz-* | head -n 1)" "$dir.tmp/vmlinuz"
cp "$(ls "$rootfs"/boot/initrd.img-* | head -n 1)" "$dir.tmp/initrd.img"
tar -C "$rootfs" --numeric-owner -cf "$dir.tmp/rootfs.tar" .
rm -rf "$rootfs"
rm -rf "$dir"
mv "$dir.tmp" "$dir"
