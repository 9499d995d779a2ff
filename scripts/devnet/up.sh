#!/usr/bin/env bash
# Brings up the btcfi devnet on this machine:
#   bitcoind (regtest, blocks mined automatically) and four anvil chains standing for
#   Ethereum, Polygon, BSC and Arbitrum (distinct chain ids, 1 s blocks), with the
#   bridge contracts deployed on each, and writes .devnet/devnet.json.
# Installs whatever is missing first. Stop everything with scripts/devnet/down.sh.
#
# Options / environment:
#   --validators N              validators to start (default 4; see README for status)
#   BTCFI_DEVNET_BTC_RPC_PORT   bitcoind RPC port (default 18443)
#   BTCFI_DEVNET_EVM_BASE_PORT  first anvil port, the others follow (default 8545)
#   BTCFI_DEVNET_BLOCK_INTERVAL seconds between Bitcoin blocks (default 5)
#   BTCFI_DEVNET_CONFIRMATIONS  Bitcoin confirmation depth (default 2, at least 2)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

VALIDATORS=4
while [ $# -gt 0 ]; do
  case "$1" in
    --validators) VALIDATORS="${2:?--validators needs a number}"; shift 2 ;;
    --validators=*) VALIDATORS="${1#*=}"; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "up.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
case "$VALIDATORS" in ''|*[!0-9]*) echo "up.sh: --validators must be a number" >&2; exit 2 ;; esac

BTC_PORT="${BTCFI_DEVNET_BTC_RPC_PORT:-18443}"
EVM_BASE="${BTCFI_DEVNET_EVM_BASE_PORT:-8545}"
INTERVAL="${BTCFI_DEVNET_BLOCK_INTERVAL:-5}"
CONFIRMATIONS="${BTCFI_DEVNET_CONFIRMATIONS:-2}"
[ "$CONFIRMATIONS" -ge 2 ] || { echo "up.sh: BTCFI_DEVNET_CONFIRMATIONS must be at least 2" >&2; exit 2; }

bash scripts/devnet/install-deps.sh
# shellcheck source=env.sh
source scripts/devnet/env.sh
bash scripts/contracts/build.sh

DEV="$ROOT/.devnet"
PIDS="$DEV/pids"
if [ -f "$PIDS" ]; then
  while read -r _ pid; do
    if kill -0 "$pid" 2>/dev/null; then
      echo "up.sh: the devnet is already running (pid $pid); run scripts/devnet/down.sh first" >&2
      exit 1
    fi
  done <"$PIDS"
fi
rm -rf "$DEV"
mkdir -p "$DEV/bitcoin" "$DEV/logs"
: >"$PIDS"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$BTC_PORT" $((EVM_BASE)) $((EVM_BASE + 1)) $((EVM_BASE + 2)) $((EVM_BASE + 3)); do
  port_free "$p" || { echo "up.sh: port $p is in use; choose others with BTCFI_DEVNET_BTC_RPC_PORT / BTCFI_DEVNET_EVM_BASE_PORT" >&2; exit 1; }
done

t0=$(date +%s)
RPC_USER=btcfi
RPC_PASSWORD=btcfi-devnet
cli() { "$BITCOIN_CLI" -regtest -datadir="$DEV/bitcoin" -rpcport="$BTC_PORT" -rpcuser="$RPC_USER" -rpcpassword="$RPC_PASSWORD" "$@"; }

echo "starting bitcoind (regtest) on 127.0.0.1:$BTC_PORT"
nohup "$BITCOIND" -regtest -datadir="$DEV/bitcoin" -server=1 -txindex=1 -listen=0 -dnsseed=0 -fixedseeds=0 \
  -fallbackfee=0.0002 -rpcbind=127.0.0.1 -rpcallowip=127.0.0.1 -rpcport="$BTC_PORT" \
  -rpcuser="$RPC_USER" -rpcpassword="$RPC_PASSWORD" -printtoconsole=0 >"$DEV/logs/bitcoind.log" 2>&1 &
echo "bitcoind $!" >>"$PIDS"
for _ in $(seq 1 300); do cli getblockcount >/dev/null 2>&1 && break; sleep 0.1; done
cli getblockcount >/dev/null || { echo "up.sh: bitcoind did not answer; see $DEV/logs/bitcoind.log" >&2; exit 1; }
cli createwallet miner >/dev/null
MINER=$(cli -rpcwallet=miner getnewaddress)
cli generatetoaddress 101 "$MINER" >/dev/null

# Automatic mining, one block every $INTERVAL seconds.
nohup bash -c "while sleep $INTERVAL; do \"$BITCOIN_CLI\" -regtest -rpcport=$BTC_PORT -rpcuser=$RPC_USER -rpcpassword=$RPC_PASSWORD generatetoaddress 1 $MINER >/dev/null || exit 0; done" \
  >"$DEV/logs/miner.log" 2>&1 &
echo "miner $!" >>"$PIDS"

NAMES=(ethereum polygon bsc arbitrum)
CHAIN_IDS=(31337 31338 31339 31340)
EVM_URLS=()
for i in 0 1 2 3; do
  port=$((EVM_BASE + i))
  echo "starting anvil ${NAMES[$i]} (chain id ${CHAIN_IDS[$i]}) on 127.0.0.1:$port"
  nohup "$ANVIL" --host 127.0.0.1 --port "$port" --chain-id "${CHAIN_IDS[$i]}" --block-time 1 \
    >"$DEV/logs/anvil-${NAMES[$i]}.log" 2>&1 &
  echo "anvil-${NAMES[$i]} $!" >>"$PIDS"
  EVM_URLS+=("http://127.0.0.1:$port")
done

export DEVNET_DIR="$DEV" DEVNET_BTC_RPC="http://127.0.0.1:$BTC_PORT" DEVNET_RPC_USER="$RPC_USER" \
  DEVNET_RPC_PASSWORD="$RPC_PASSWORD" DEVNET_CONFIRMATIONS="$CONFIRMATIONS" \
  DEVNET_EVM_NAMES="${NAMES[*]}" DEVNET_EVM_CHAIN_IDS="${CHAIN_IDS[*]}" DEVNET_EVM_URLS="${EVM_URLS[*]}" \
  DEVNET_VALIDATORS="$VALIDATORS"
node scripts/devnet/deploy.mjs

echo
echo "devnet up in $(( $(date +%s) - t0 )) s; description in $DEV/devnet.json:"
cat "$DEV/devnet.json"
echo
echo "validators: $VALIDATORS requested; none started — they need the vault key from the"
echo "threshold-key DKG, which is not in this version (see README, Status)."
echo "stop it with scripts/devnet/down.sh"
