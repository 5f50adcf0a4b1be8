#!/usr/bin/env bash
# Makes the robot's Debian package from the release build of a target (scripts/cross-build.sh
# builds it), with a CycloneDX SBOM of the agent for that target, and checks what the package holds.
#
#   scripts/deb.sh [TARGET]   default: armv7-unknown-linux-gnueabihf
#
# The build directory is $CARGO_TARGET_DIR when set, else target/ (cargo and cargo-deb read the
# same variable, so the binary, the SBOM and the package all land in one place).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=${1:-armv7-unknown-linux-gnueabihf}
out=${CARGO_TARGET_DIR:-$root/target}
# shellcheck source=scripts/tools.sh
source "$root/scripts/tools.sh"
cargo_tool cargo-deb 3.8.0
# The version is pinned so that every SBOM of a release is made the same way.
cargo_tool cargo-cyclonedx 0.5.9

# The SBOM: the agent's dependency graph as it is compiled for the target (dev-dependencies and
# build-time-only crates such as cc are not in the binary, so they are left out). cargo
# cyclonedx writes one file beside every workspace member's Cargo.toml and has no output
# directory option: the agent's is moved into the build directory, where the package's asset
# list (agent/Cargo.toml) expects it, and the others are removed (by the trap if it fails).
# The timestamp is the last commit's, so that the same commit gives the same SBOM.
sbom_name=ota-agent.cdx
trap 'rm -f "$root"/*/"$sbom_name.json"' EXIT
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)} \
  cargo cyclonedx --quiet --manifest-path agent/Cargo.toml --format json --spec-version 1.5 \
  --target "$target" --no-build-deps --override-filename "$sbom_name"
mkdir -p "$out/$target/release"
sbom=$out/$target/release/ota-agent.cdx.json
mv agent/"$sbom_name.json" "$sbom"
rm -f "$root"/*/"$sbom_name.json"
trap - EXIT
grep -q '"cdx:rustc:sbom:target:triple"' "$sbom" && grep -q "\"$target\"" "$sbom" ||
  { echo "$sbom does not describe $target" >&2; exit 1; }
echo "SBOM: $sbom ($(grep -c '"bom-ref"' "$sbom") components and targets)"

cargo deb --quiet -p ota-agent --target "$target" --no-build
deb=$(ls -t "$out/$target/debian/"ota-agent_*.deb | head -n 1)
echo "== $deb"
dpkg-deb --info "$deb" | sed -n '/Package:/,/Description:/p'
contents=$(dpkg-deb --contents "$deb")
echo "$contents"
for path in ./usr/bin/ota-agent ./usr/lib/systemd/system/ota-agent.service ./etc/ota-agent/agent.toml \
  ./usr/share/doc/ota-agent/ota-agent.cdx.json ./usr/share/doc/ota-agent/README.md \
  ./usr/share/doc/ota-agent/docs/operating.md; do
  grep -q " $path\$" <<<"$contents" || { echo "missing from the package: $path" >&2; exit 1; }
done
grep -q '^-rw------- .* ./etc/ota-agent/agent.toml$' <<<"$contents" || { echo "the config is not mode 0600" >&2; exit 1; }
control=$(mktemp -d)
trap 'rm -rf "$control"' EXIT
dpkg-deb --control "$deb" "$control"
grep -qx /etc/ota-agent/agent.toml "$control/conffiles" || { echo "the config is not a conffile" >&2; exit 1; }
grep -q 'install -d -m 0700 /var/lib/ota-agent' "$control/postinst" || { echo "postinst does not make the state directory" >&2; exit 1; }
# The SBOM in the package is the one just made for this target, not a stale file.
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/share/doc/ota-agent/ota-agent.cdx.json | cmp -s - "$sbom" ||
  { echo "the package's SBOM is not $sbom" >&2; exit 1; }
echo "package ok: binary, unit, config (conffile, 0600), state directory, README and docs/operating.md, SBOM for $target"
