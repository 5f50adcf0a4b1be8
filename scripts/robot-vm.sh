#!/usr/bin/env bash
# The robot in a box: the project's armv7 .deb, installed with dpkg on an emulated Alpha2-like
# board (Debian armhf, Debian's armmp kernel, systemd as PID 1, qemu-system-arm -M virt), proven
# there under the shipped unit, then real power cuts (SIGKILL of the emulator) on that board and
# on a faster x86 guest (Debian's amd64 kernel, busybox, the agent with its C library).
# Writes target/robot-vm/report.json and target/robot-vm/journal.txt; exits non-zero when a proof
# fails or an invariant broke. ARCHITECTURE.md ("The robot in a box") says what each part proves.
#
#   scripts/robot-vm.sh            every proof, 3 power cuts on the board, 30 on the x86 guest
#                                  (what CI runs, with ROBOT_VM_TEETH=staged)
#   scripts/robot-vm.sh --full     the full loop: 10 power cuts on the board, 100 on the x86 guest
#   scripts/robot-vm.sh --prepare  only makes the cached parts (the board's base system, the x86
#                                  kernel) and the host's set-up, and builds nothing of the project
#
#   ROBOT_VM_SEED=N          replays the cut plan of an earlier run (it prints its seed)
#   ROBOT_VM_CUTS=N          power cuts on the x86 guest (overrides the default above)
#   ROBOT_VM_ARM_CUTS=N      power cuts on the ARM board (overrides the default above)
#   ROBOT_VM_ONLY=a,b        only some parts: proofs, arm (the board's cuts), x86; with none
#                            of them (ROBOT_VM_ONLY=none), only the ROBOT_VM_TEETH loops run
#   ROBOT_VM_TEETH=P,Q       one more x86 loop per fsync P, Q, ... that the x86 guest's agent
#                            skips (agent/src/fault.rs): each must end in a violation within
#                            ROBOT_VM_TOOTH_CUTS cuts (default 3), or the run fails
#
# The guests reach the host only through QEMU's user network with restrict=on, which forwards
# 10.0.2.100:8080 to the mock server on the host's loopback. The board's base system and the x86
# guest's kernel are cached under ~/.cache/ota-agent-ci/robot-vm, each under a key that changes
# with its recipe (scripts/robot-vm/image-arm.sh; the kernel package's version).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mode=short
case "${1:-}" in
  "") ;;
  --full) mode=full ;;
  --prepare) mode=prepare ;;
  *) echo "usage: scripts/robot-vm.sh [--full | --prepare]" >&2; exit 2 ;;
esac
out=${CARGO_TARGET_DIR:-$root/target}
vm=$out/robot-vm
cache=${XDG_CACHE_HOME:-$HOME/.cache}/ota-agent-ci/robot-vm
mkdir -p "$vm/run" "$cache"
started=$(date +%s)
phase() { echo "::: robot-vm: $* ($(($(date +%s) - started)) s)"; }

phase "system packages"
# path:package pairs; only what is missing is installed.
missing=()
for pair in /usr/bin/qemu-system-arm:qemu-system-arm /usr/bin/qemu-system-x86_64:qemu-system-x86 \
  /usr/bin/qemu-arm-static:qemu-user-static /usr/sbin/update-binfmts:binfmt-support \
  /usr/bin/arch-test:arch-test /usr/bin/mmdebstrap:mmdebstrap /bin/busybox:busybox-static \
  /usr/bin/cpio:cpio /usr/bin/nc.openbsd:netcat-openbsd /usr/sbin/debugfs:e2fsprogs \
  /etc/ssl/certs/ca-certificates.crt:ca-certificates /usr/sbin/modprobe:kmod /usr/bin/python3:python3 \
  /usr/bin/dpkg-deb:dpkg /usr/bin/strip:binutils; do
  [ -e "${pair%%:*}" ] || missing+=("${pair##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# mmdebstrap runs the board's armhf programs through qemu-user, which binfmt_misc hands them to.
[ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-arm >/dev/null 2>&1 || true
[ -e /proc/sys/fs/binfmt_misc/qemu-arm ] || { echo "binfmt_misc has no qemu-arm entry" >&2; exit 1; }

phase "the board's base system"
recipe=$(sha256sum scripts/robot-vm/image-arm.sh | cut -c1-16)
arm_base=$cache/arm-$recipe
if [ ! -f "$arm_base/rootfs.tar" ]; then
  rm -rf "$cache"/arm-*
  echo "building $arm_base (Debian armhf with systemd, about 4 min)"
  scripts/robot-vm/image-arm.sh "$arm_base"
fi

phase "the x86 guest's kernel"
kversion=$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: linux-image-\(.*-amd64\)$/\1/p' | head -n 1)
x86_kernel=$cache/x86-$kversion-pvh
if [ ! -f "$x86_kernel/vmlinuz" ]; then
  rm -rf "$cache"/x86-* "$x86_kernel.tmp"
  mkdir -p "$x86_kernel.tmp/modules"
  (cd "$x86_kernel.tmp" && apt-get download -q "linux-image-$kversion" 2>/dev/null)
  dpkg-deb -x "$x86_kernel.tmp"/linux-image-*.deb "$x86_kernel.tmp/root"
  cp "$x86_kernel.tmp/root/boot/vmlinuz-$kversion" "$x86_kernel.tmp/vmlinuz"
  # The kernel unpacked: QEMU boots its ELF through the PVH entry, and the guest skips
  # decompressing itself under emulation (2.4 s instead of 5.2 s to the agent's start, and the
  # loop boots the guest over a hundred times). Debian compresses it with xz.
  python3 - "$x86_kernel.tmp/vmlinuz" "$x86_kernel.tmp/vmlinux" <<'PY'
import lzma, sys
data = open(sys.argv[1], "rb").read()
at = data.find(b"\xfd7zXZ\x00")
while at >= 0:
    try:
        elf = lzma.LZMADecompressor().decompress(data[at:])
    except lzma.LZMAError:
        elf = b""
    if elf[:4] == b"\x7fELF":
        open(sys.argv[2], "wb").write(elf)
        break
    at = data.find(b"\xfd7zXZ\x00", at + 1)
else:
    sys.exit("no xz-compressed ELF kernel in " + sys.argv[1])
PY
  depmod -b "$x86_kernel.tmp/root" "$kversion"
  # The modules the guest needs, dependencies first, flat in modules/ with modules.order.
  for m in virtio_pci virtio_blk virtio_net crc32c_generic ext4; do
    modprobe -d "$x86_kernel.tmp/root" -S "$kversion" --show-depends "$m"
  done | awk '$1 == "insmod" {print $2}' | awk '!seen[$0]++' | while read -r ko; do
    cp "$ko" "$x86_kernel.tmp/modules/"
    basename "$ko"
  done >"$x86_kernel.tmp/modules.order"
  rm -rf "$x86_kernel.tmp/root" "$x86_kernel.tmp"/*.deb
  mv "$x86_kernel.tmp" "$x86_kernel"
fi
if [ "$mode" = prepare ]; then
  phase "prepared"
  exit 0
fi

phase "builds"
# The board's agent is the armv7 release binary that cross builds (a no-op when scripts/cross.sh
# built it already), packaged as the users' .deb unless a package newer than it is there.
scripts/cross-build.sh armv7-unknown-linux-gnueabihf
arm_bin=$out/armv7-unknown-linux-gnueabihf/release/ota-agent
deb=$(ls -t "$out/armv7-unknown-linux-gnueabihf/debian/"ota-agent_*.deb 2>/dev/null | head -n 1 || true)
if [ -z "$deb" ] || [ "$arm_bin" -nt "$deb" ]; then
  scripts/deb.sh armv7-unknown-linux-gnueabihf >"$vm/run/deb.log"
  deb=$(ls -t "$out/armv7-unknown-linux-gnueabihf/debian/"ota-agent_*.deb | head -n 1)
fi
# The released .deb never reads the fault switch: only the fault-injection feature compiles it.
if grep -q OTA_AGENT_SKIP_FSYNC "$arm_bin"; then
  echo "the release build reads OTA_AGENT_SKIP_FSYNC" >&2
  exit 1
fi
# The host's side (the mock server, ota-sign) and the x86 guest's agent are the workspace's
# debug builds, which the test command has built already: only the agent is compiled again, with
# the fault switch in; it skips nothing unless ROBOT_VM_TEETH names one. The guest gets it
# stripped, with the C library it was linked against (busybox has none).
cargo build --quiet --locked -p ota-mock-server -p ota-signing
cargo build --quiet --locked -p ota-agent --features fault-injection
x86_agent=$vm/ota-agent-x86
strip -o "$x86_agent" "$out/debug/ota-agent"
# The check above is only worth something if the string is there when the feature is on.
grep -q OTA_AGENT_SKIP_FSYNC "$x86_agent" || { echo "$x86_agent does not read OTA_AGENT_SKIP_FSYNC" >&2; exit 1; }
# The test command's own binary again, so that the fault switch stays out of the debug build.
cargo build --quiet --locked -p ota-agent

phase "the proofs and the power cuts"
if [ "$mode" = full ]; then
  arm_cuts=10 x86_cuts=100
else
  arm_cuts=3 x86_cuts=30
fi
set +e
ROBOT_VM_OUT=$vm ROBOT_VM_MOCK_SERVER=$out/debug/ota-mock-server ROBOT_VM_SIGN=$out/debug/ota-sign \
  ROBOT_VM_DEB=$deb ROBOT_VM_ARM_BASE=$arm_base ROBOT_VM_X86_KERNEL=$x86_kernel \
  ROBOT_VM_X86_AGENT=$x86_agent ROBOT_VM_ARM_CUTS=${ROBOT_VM_ARM_CUTS:-$arm_cuts} \
  ROBOT_VM_CUTS=${ROBOT_VM_CUTS:-$x86_cuts} python3 scripts/robot-vm/driver.py
status=$?
set -e
phase "done (exit $status)"
exit $status
