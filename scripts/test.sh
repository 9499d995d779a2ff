#!/usr/bin/env bash
# Runs every check and test of btcfi-node on a fresh Debian machine: installs what is
# missing (scripts/devnet/install-deps.sh), compiles the contracts, then formatting,
# clippy, the whole test suite (nextest) and doctests.
# The cargo target dir defaults to $HOME/.cache/btcfi-target so that repeated runs
# build incrementally; override with CARGO_TARGET_DIR.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/devnet/install-deps.sh
# shellcheck source=devnet/env.sh
source scripts/devnet/env.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/btcfi-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi

bash scripts/contracts/build.sh

step() { printf '\n== %s\n' "$*"; }
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo nextest"
cargo nextest run --workspace --locked --profile ci
step "doctests"
cargo test --workspace --doc --locked
step "fuzz corpus replay (every peer-bytes decoder, on stable)"
bash scripts/fuzz.sh --replay
step "all checks passed"
