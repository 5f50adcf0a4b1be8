# The cargo-installed tools CI and the scripts use, each pinned; sourced by .ci/run and the
# scripts that need one. `cargo_tool NAME VERSION` installs NAME at VERSION with `cargo install
# --locked` unless that very version is installed already.
#
# The tools are built for CI, not for shipping: unoptimised (opt-level 0, no LTO, 16 codegen
# units, whatever their own release profiles say). On a 2-core machine that took cargo-deny
# from 172 s to 51 s and cargo-cyclonedx from 98 s to 38 s; none of them does work where the
# slower code shows (cargo deny check takes 1.5 s instead of 0.8 s). The build directory, under
# ~/.cache, is removed once the tool is installed: kept, it held over a gigabyte of a CI
# machine's disk for nothing.

cargo_tool() {
  local name=$1 version=$2
  if cargo install --list | grep -qx "$name v$version:"; then
    return 0
  fi
  echo "installing $name $version (cargo install)"
  local build_dir=${XDG_CACHE_HOME:-$HOME/.cache}/ota-agent-ci/tools-target
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_TARGET_DIR=$build_dir cargo install --quiet --locked "$name" --version "$version"
  rm -rf "$build_dir"
}
