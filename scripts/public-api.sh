#!/usr/bin/env bash
# The public API of jobagent, as `cargo public-api` lists it, against the committed listing
# `agent-sdk/public-api.txt`: the surface changes only on purpose.
#
#   scripts/public-api.sh           check (CI): fail with the diff when the surface changed
#   scripts/public-api.sh --bless   rewrite the listing after a deliberate change
#
# Needs a nightly toolchain (rustdoc's JSON output) and cargo-public-api, which this script
# installs when missing (`cargo install cargo-public-api --locked`).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=0.52.0
LISTING=agent-sdk/public-api.txt

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "public-api: no nightly toolchain; install one with: rustup toolchain install nightly --profile minimal" >&2
  exit 1
fi
if ! cargo public-api --version 2>/dev/null | grep -q "$VERSION"; then
  echo "public-api: installing cargo-public-api $VERSION"
  cargo install cargo-public-api --locked --version "$VERSION"
fi

current=$(mktemp)
trap 'rm -f "$current"' EXIT
# -ss: without blanket and auto-trait impls, which change with dependencies, not with us.
cargo public-api -p jobagent -ss 2>/dev/null > "$current"

if [ "${1:-}" = "--bless" ]; then
  cp "$current" "$LISTING"
  echo "public-api: wrote $LISTING ($(wc -l < "$LISTING") lines)"
  exit 0
fi
if ! diff -u "$LISTING" "$current"; then
  echo "public-api: jobagent's public API differs from $LISTING (above); if the change is meant, run scripts/public-api.sh --bless and commit the listing" >&2
  exit 1
fi
echo "public-api: unchanged ($(wc -l < "$LISTING") lines)"
