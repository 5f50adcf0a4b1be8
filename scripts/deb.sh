#!/usr/bin/env bash
# Makes the robot's Debian package from the release build of a target (scripts/cross.sh builds
# it) and checks what it holds.
#
#   scripts/deb.sh [TARGET]   default: armv7-unknown-linux-gnueabihf
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=${1:-armv7-unknown-linux-gnueabihf}
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb --version 3.8.0
cargo deb --quiet -p ota-agent --target "$target" --no-build
deb=$(ls -t "${CARGO_TARGET_DIR:-$root/target}/$target/debian/"ota-agent_*.deb | head -n 1)
echo "== $deb"
dpkg-deb --info "$deb" | sed -n '/Package:/,/Description:/p'
contents=$(dpkg-deb --contents "$deb")
echo "$contents"
for path in ./usr/bin/ota-agent ./usr/lib/systemd/system/ota-agent.service ./etc/ota-agent/agent.toml; do
  grep -q " $path\$" <<<"$contents" || { echo "missing from the package: $path" >&2; exit 1; }
done
grep -q '^-rw------- .* ./etc/ota-agent/agent.toml$' <<<"$contents" || { echo "the config is not mode 0600" >&2; exit 1; }
control=$(mktemp -d)
trap 'rm -rf "$control"' EXIT
dpkg-deb --control "$deb" "$control"
grep -qx /etc/ota-agent/agent.toml "$control/conffiles" || { echo "the config is not a conffile" >&2; exit 1; }
grep -q 'install -d -m 0700 /var/lib/ota-agent' "$control/postinst" || { echo "postinst does not make the state directory" >&2; exit 1; }
echo "package ok: binary, unit, config (conffile, 0600), state directory"
