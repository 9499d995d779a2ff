#!/usr/bin/env bash
# Stops everything scripts/devnet/up.sh started (pids in .devnet/pids, or in
# $BTCFI_DEVNET_DIR/pids). Logs stay in <dir>/logs; chain data is removed by the next up.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEV="${BTCFI_DEVNET_DIR:-$ROOT/.devnet}"
case "$DEV" in /*) ;; *) DEV="$PWD/$DEV" ;; esac
PIDS="$DEV/pids"
[ -f "$PIDS" ] || { echo "down.sh: no devnet running (no $PIDS)"; exit 0; }
# Running: exists and is not a zombie (up.sh has exited, so whoever adopted its
# children reaps them, maybe late).
alive() { kill -0 "$1" 2>/dev/null && [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]; }
# Reverse order: validators and the miner before the chains they talk to.
tac "$PIDS" | while read -r name pid; do
  if alive "$pid"; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && kill -9 "$pid" 2>/dev/null || true
    echo "stopped $name ($pid)"
  fi
done
rm -f "$PIDS"
