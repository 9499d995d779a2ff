#!/usr/bin/env bash
# The devnet round trip on every EVM chain, against a devnet started by up.sh:
#   BTC deposit to the vault (memo: chain id + recipient) → wrapped BTC minted to the
#   recipient (an anvil dev account) → burnToBitcoin to a fresh bitcoind address →
#   BTC paid out (amount minus the peg-out fee) in a block.
# The four chains run at once, each with distinct amounts; every step is printed with
# its elapsed time. Exits non-zero with a message on any mismatch or timeout.
#
# Options:
#   --json FILE          write a machine-readable summary (per chain: deposit txid:vout,
#                        mint tx, burn tx and event id, payout txid, amounts, timings)
#   --timeout SECS       longest wait for each step (mint, payout; default 300)
#   --chains A,B         only these chains (default: all four)
#   --amounts S,...      deposit amounts in sats, one per chain (default 0.01, 0.02, ... BTC)
#   --recipient-index N  anvil dev account that receives and burns (default 9)
# Environment: BTCFI_DEVNET_DIR (default <repo>/.devnet), as for up.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
case "${1:-}" in -h|--help) sed -n '2,16p' "$0"; exit 0 ;; esac
if [ -n "${BTCFI_DEVNET_DIR:-}" ]; then
  case "$BTCFI_DEVNET_DIR" in /*) ;; *) BTCFI_DEVNET_DIR="$PWD/$BTCFI_DEVNET_DIR" ;; esac
  export BTCFI_DEVNET_DIR
fi
# shellcheck source=env.sh
source "$ROOT/scripts/devnet/env.sh"
exec node "$ROOT/scripts/devnet/demo.mjs" "$@"
