#!/usr/bin/env bash
# Builds the workspace against the newest releases of its dependencies that its manifests
# allow (what a new crate depending on the library gets), and fails on any warning, a
# deprecation included: `cargo update` in a scratch copy (the repository's lockfile is not
# touched), then `cargo clippy --workspace --all-targets -- -D warnings`.
#
#   scripts/check-latest-deps.sh            # scratch copy and its build in $TMPDIR, removed after
#   CARGO_TARGET_DIR=/tmp/latest scripts/check-latest-deps.sh   # keep the build for next time
#
# Newest means newest: the workspace's rust-version does not hold dependencies back, as it
# does not for a user's crate that sets none.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/jobagent-latest-deps.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

tar -C "$root" --exclude=./target --exclude=./.git -cf - . | tar -C "$scratch" -xf -
cd "$scratch"
CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=allow cargo update
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$scratch/target}"
cargo clippy --workspace --all-targets -- -D warnings
echo "check-latest-deps: clean against the newest compatible releases"
