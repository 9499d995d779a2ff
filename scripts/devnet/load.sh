#!/usr/bin/env bash
# A load generator against a devnet started by up.sh: N BTC deposits (each from its own
# confirmed coin of the bitcoind wallet "load", spread round-robin over the EVM chains
# and a few anvil dev accounts), then M burnToBitcoin back to fresh "load" addresses.
# Follows every deposit to its Bitcoin finality and its Minted event, every burn to its
# payout in a block, and prints throughput and latency percentiles. Exits 1 on any
# missing, duplicate or wrong mint or payout, or on a timeout.
#
# Options:
#   --deposits N      deposits to send (default 100)
#   --burns M         burnToBitcoin calls once the mints are in (default 0)
#   --chains A,B      only these chains (default: every chain in devnet.json)
#   --amount SATS     deposit i pays SATS + i to the vault (default 20000)
#   --concurrency K   deposits / burns in flight at once (default 16)
#   --timeout SECS    longest wait for each phase: funding, mints, payouts (default 900)
#   --json FILE       write a machine-readable summary (figures plus every deposit/burn)
# Environment: BTCFI_DEVNET_DIR (default <repo>/.devnet), as for up.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
case "${1:-}" in -h|--help) sed -n '2,17p' "$0"; exit 0 ;; esac
if [ -n "${BTCFI_DEVNET_DIR:-}" ]; then
  case "$BTCFI_DEVNET_DIR" in /*) ;; *) BTCFI_DEVNET_DIR="$PWD/$BTCFI_DEVNET_DIR" ;; esac
  export BTCFI_DEVNET_DIR
fi
# shellcheck source=env.sh
source "$ROOT/scripts/devnet/env.sh"
exec node "$ROOT/scripts/devnet/load.mjs" "$@"
