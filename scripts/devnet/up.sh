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
#   BTCFI_DEVNET_P2P_BASE_PORT  first validator's libp2p port (default 19000)
#   BTCFI_DEVNET_API_BASE_PORT  first validator's HTTP API port (default 18080)
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
P2P_BASE="${BTCFI_DEVNET_P2P_BASE_PORT:-19000}"
API_BASE="${BTCFI_DEVNET_API_BASE_PORT:-18080}"
[ "$CONFIRMATIONS" -ge 2 ] || { echo "up.sh: BTCFI_DEVNET_CONFIRMATIONS must be at least 2" >&2; exit 2; }

bash scripts/devnet/install-deps.sh
# shellcheck source=env.sh
source scripts/devnet/env.sh
bash scripts/contracts/build.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/btcfi-target}"
echo "building btcfi-node"
cargo build -q -p btcfi-node
NODE_BIN="$CARGO_TARGET_DIR/debug/btcfi-node"

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
ports=("$BTC_PORT" $((EVM_BASE)) $((EVM_BASE + 1)) $((EVM_BASE + 2)) $((EVM_BASE + 3)))
for ((i = 0; i < VALIDATORS; i++)); do ports+=($((P2P_BASE + i)) $((API_BASE + i))); done
for p in "${ports[@]}"; do
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

# Validators. Until the threshold-key DKG exists, the vault is a stand-in P2TR address
# held by a bitcoind wallet named "vault" (see README, Status).
cli createwallet vault >/dev/null
VAULT=$(cli -rpcwallet=vault getnewaddress "" bech32m)
START=$(( $(cli getblockcount) + 1 ))
mkdir -p "$DEV/validators"
PEERS=()
for ((i = 0; i < VALIDATORS; i++)); do
  home="$DEV/validators/v$i"
  PEERS+=("$("$NODE_BIN" init --home "$home" --name "v$i" \
    --p2p-listen "/ip4/127.0.0.1/tcp/$((P2P_BASE + i))" --api-listen "127.0.0.1:$((API_BASE + i))" 2>/dev/null)")
done
for ((i = 0; i < VALIDATORS; i++)); do
  home="$DEV/validators/v$i"
  {
    printf '[node]\nname = "v%s"\nepoch = 1\nbitcoin_poll_ms = 1000\n\n' "$i"
    printf '[p2p]\nlisten = "/ip4/127.0.0.1/tcp/%s"\n\n' $((P2P_BASE + i))
    for ((j = 0; j < VALIDATORS; j++)); do
      printf '[[validators]]\nname = "v%s"\npeer_id = "%s"\naddress = "/ip4/127.0.0.1/tcp/%s"\n\n' "$j" "${PEERS[$j]}" $((P2P_BASE + j))
    done
    printf '[api]\nlisten = "127.0.0.1:%s"\n\n' $((API_BASE + i))
    printf '[log]\nformat = "json"\nfilter = "info"\n\n'
    printf '[consensus]\nrebroadcast_interval_ms = 2000\ncatch_up_after_ms = 5000\n\n'
    printf '[bitcoin]\nrpc_url = "http://127.0.0.1:%s"\nrpc_user = "%s"\nrpc_password = "%s"\n' "$BTC_PORT" "$RPC_USER" "$RPC_PASSWORD"
    printf 'network = "regtest"\nvault_address = "%s"\nconfirmations = %s\nmin_deposit = 10000\nreorg_window = 20\nstart_height = %s\n\n' "$VAULT" "$CONFIRMATIONS" "$START"
    node -e '
      const d = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
      for (const c of d.evm) {
        console.log(`[[evm]]\nname = "${c.name}"\nchain_id = ${c.chain_id}\nendpoints = ["${c.rpc_url}"]\nbridge = "${c.bridge_address}"\nfinality = 2\npoll_interval_ms = 1000\n`);
      }' "$DEV/devnet.json"
  } >"$home/config.toml"
  "$NODE_BIN" config check --home "$home" >/dev/null
  nohup "$NODE_BIN" run --home "$home" >"$DEV/logs/v$i.log" 2>&1 &
  echo "validator-v$i $!" >>"$PIDS"
  echo "started validator v$i (${PEERS[$i]}) api http://127.0.0.1:$((API_BASE + i))"
done
for ((i = 0; i < VALIDATORS; i++)); do
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$((API_BASE + i))/ready" >/dev/null && break
    sleep 0.1
  done
  curl -sf "http://127.0.0.1:$((API_BASE + i))/ready" >/dev/null ||
    echo "up.sh: validator v$i is not ready yet: curl http://127.0.0.1:$((API_BASE + i))/ready ; logs in $DEV/logs/v$i.log" >&2
done

node -e '
  const fs = require("fs");
  const [file, vault, peers, p2p, api, dir] = process.argv.slice(1);
  const d = JSON.parse(fs.readFileSync(file, "utf8"));
  d.bitcoin.vault_address = vault;
  d.validators = peers.split(" ").filter(Boolean).map((peer_id, i) => ({
    name: `v${i}`,
    api_url: `http://127.0.0.1:${Number(api) + i}`,
    metrics_url: `http://127.0.0.1:${Number(api) + i}/metrics`,
    peer_id,
    home: `${dir}/v${i}`,
  }));
  fs.writeFileSync(file, JSON.stringify(d, null, 2) + "\n");
' "$DEV/devnet.json" "$VAULT" "${PEERS[*]}" "$P2P_BASE" "$API_BASE" "$DEV/validators"

echo
echo "devnet up in $(( $(date +%s) - t0 )) s; description in $DEV/devnet.json:"
cat "$DEV/devnet.json"
echo
echo "A deposit: bitcoin-cli -regtest -rpcport=$BTC_PORT -rpcuser=$RPC_USER -rpcpassword=$RPC_PASSWORD ... to $VAULT"
echo "with an OP_RETURN memo \"BTCFI\"|01|dest chain id (8 bytes BE)|recipient (20 bytes); then watch"
echo "http://127.0.0.1:$API_BASE/v1/attestations"
echo "stop it with scripts/devnet/down.sh"
