#!/usr/bin/env bash
# Stops everything scripts/devnet/up.sh started (pids in .devnet/pids). Logs stay in
# .devnet/logs; chain data is removed by the next up.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PIDS="$ROOT/.devnet/pids"
[ -f "$PIDS" ] || { echo "down.sh: no devnet running (no $PIDS)"; exit 0; }
# Reverse order: validators and the miner before the chains they talk to.
tac "$PIDS" | while read -r name pid; do
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    echo "stopped $name ($pid)"
  fi
done
rm -f "$PIDS"
