#!/usr/bin/env bash
# Brings up the btcfi devnet on this machine:
#   bitcoind (regtest, blocks mined automatically) and four anvil chains standing for
#   Ethereum, Polygon, BSC and Arbitrum (distinct chain ids, 1 s blocks) with the bridge
#   contracts deployed on each; N btcfi-node validators that run their DKG together
#   (the vault address and the EVM group key come from it), the EVM group key
#   registered in every bridge; then the validators, started and waited for until
#   ready. Writes .devnet/devnet.json. Installs whatever is missing first.
# Stop everything with scripts/devnet/down.sh; try it with scripts/devnet/demo.sh.
#
# Options / environment:
#   --validators N              validators to start (default 4)
#   --release                   build and run an optimised btcfi-node (as operators do;
#                               for load runs: a debug build is several times slower)
#   BTCFI_DEVNET_DIR            where state, logs and devnet.json go (default <repo>/.devnet)
#   BTCFI_DEVNET_BTC_RPC_PORT   bitcoind RPC port (default 18443)
#   BTCFI_DEVNET_EVM_BASE_PORT  first anvil port, the others follow (default 8545)
#   BTCFI_DEVNET_BLOCK_INTERVAL seconds between Bitcoin blocks (default 5)
#   BTCFI_DEVNET_CONFIRMATIONS  Bitcoin confirmation depth (default 2, at least 2)
#   BTCFI_DEVNET_P2P_BASE_PORT  first validator's libp2p port (default 19000)
#   BTCFI_DEVNET_API_BASE_PORT  first validator's HTTP API port (default 18080)
#   BTCFI_DEVNET_PEG_OUT_FEE    sats kept from each peg-out (default 2000)
#   BTCFI_DEVNET_DKG_TIMEOUT    seconds the DKG may take (default 120)
#   BTCFI_DEVNET_READY_TIMEOUT  seconds to wait for the validators' /ready (default 90)
#   BTCFI_DEVNET_PASSPHRASE     key-share passphrase (default: a fixed devnet one),
#                               written to <dir>/passphrase (mode 600)
#   BTCFI_NODE_BIN              use this btcfi-node binary instead of building one
#   BTCFI_DEVNET_KEEP_ON_FAILURE=1  leave the processes running when up.sh fails
#                               (by default a failed up.sh stops what it started)
set -euo pipefail
CALLER_PWD="$PWD"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

VALIDATORS=4
PROFILE=debug
while [ $# -gt 0 ]; do
  case "$1" in
    --validators) VALIDATORS="${2:?--validators needs a number}"; shift 2 ;;
    --validators=*) VALIDATORS="${1#*=}"; shift ;;
    --release) PROFILE=release; shift ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "up.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done

BTC_PORT="${BTCFI_DEVNET_BTC_RPC_PORT:-18443}"
EVM_BASE="${BTCFI_DEVNET_EVM_BASE_PORT:-8545}"
INTERVAL="${BTCFI_DEVNET_BLOCK_INTERVAL:-5}"
CONFIRMATIONS="${BTCFI_DEVNET_CONFIRMATIONS:-2}"
P2P_BASE="${BTCFI_DEVNET_P2P_BASE_PORT:-19000}"
API_BASE="${BTCFI_DEVNET_API_BASE_PORT:-18080}"
PEG_OUT_FEE="${BTCFI_DEVNET_PEG_OUT_FEE:-2000}"
DKG_TIMEOUT="${BTCFI_DEVNET_DKG_TIMEOUT:-120}"
READY_TIMEOUT="${BTCFI_DEVNET_READY_TIMEOUT:-90}"
PASSPHRASE="${BTCFI_DEVNET_PASSPHRASE:-btcfi devnet passphrase, not for real funds}"
MIN_DEPOSIT=10000
case "$VALIDATORS" in ''|*[!0-9]*) echo "up.sh: --validators must be a number (got '$VALIDATORS')" >&2; exit 2 ;; esac
for v in BTC_RPC_PORT:BTC_PORT EVM_BASE_PORT:EVM_BASE BLOCK_INTERVAL:INTERVAL CONFIRMATIONS:CONFIRMATIONS \
  P2P_BASE_PORT:P2P_BASE API_BASE_PORT:API_BASE PEG_OUT_FEE:PEG_OUT_FEE DKG_TIMEOUT:DKG_TIMEOUT READY_TIMEOUT:READY_TIMEOUT; do
  val="${v#*:}"
  case "${!val}" in ''|*[!0-9]*) echo "up.sh: BTCFI_DEVNET_${v%%:*} must be a number (got '${!val}')" >&2; exit 2 ;; esac
done
[ "$VALIDATORS" -ge 1 ] || { echo "up.sh: --validators must be at least 1" >&2; exit 2; }
[ "$CONFIRMATIONS" -ge 2 ] || { echo "up.sh: BTCFI_DEVNET_CONFIRMATIONS must be at least 2" >&2; exit 2; }
[ "$INTERVAL" -ge 1 ] || { echo "up.sh: BTCFI_DEVNET_BLOCK_INTERVAL must be at least 1" >&2; exit 2; }
[ "${#PASSPHRASE}" -ge 12 ] || { echo "up.sh: BTCFI_DEVNET_PASSPHRASE must have at least 12 characters" >&2; exit 2; }

DEV="${BTCFI_DEVNET_DIR:-$ROOT/.devnet}"
case "$DEV" in /*) ;; *) DEV="$CALLER_PWD/$DEV" ;; esac
DEV="${DEV%/}"
PIDS="$DEV/pids"

t0=$(date +%s)
step() { printf '[up %4ss] %s\n' "$(($(date +%s) - t0))" "$*"; }
die() { echo "up.sh: $*" >&2; exit 1; }

alive() { kill -0 "$1" 2>/dev/null && [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]; }
if [ -f "$PIDS" ]; then
  while read -r _ pid; do
    if alive "$pid"; then
      die "the devnet in $DEV is already running (pid $pid); run scripts/devnet/down.sh first"
    fi
  done <"$PIDS"
fi
# Never wipe a directory this script did not make.
if [ -d "$DEV" ] && [ "$DEV" != "$ROOT/.devnet" ] && [ ! -f "$DEV/.btcfi-devnet" ] && [ -n "$(ls -A "$DEV")" ]; then
  die "$DEV exists, is not empty and is not a devnet directory; refusing to delete it (choose another BTCFI_DEVNET_DIR)"
fi

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports=("$BTC_PORT" $((EVM_BASE)) $((EVM_BASE + 1)) $((EVM_BASE + 2)) $((EVM_BASE + 3)))
for ((i = 0; i < VALIDATORS; i++)); do ports+=($((P2P_BASE + i)) $((API_BASE + i))); done
for p in "${ports[@]}"; do
  port_free "$p" || die "port $p is in use; choose others with BTCFI_DEVNET_BTC_RPC_PORT / BTCFI_DEVNET_EVM_BASE_PORT / BTCFI_DEVNET_P2P_BASE_PORT / BTCFI_DEVNET_API_BASE_PORT"
done

bash scripts/devnet/install-deps.sh
# shellcheck source=env.sh
source scripts/devnet/env.sh
bash scripts/contracts/build.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/btcfi-target}"
if [ -n "${BTCFI_NODE_BIN:-}" ]; then
  NODE_BIN="$BTCFI_NODE_BIN"
else
  step "building btcfi-node ($PROFILE)"
  if [ "$PROFILE" = release ]; then cargo build -q --release -p btcfi-node; else cargo build -q -p btcfi-node; fi
  NODE_BIN="$CARGO_TARGET_DIR/$PROFILE/btcfi-node"
fi
[ -x "$NODE_BIN" ] || die "no btcfi-node binary at $NODE_BIN"

rm -rf "$DEV"
mkdir -p "$DEV/bitcoin" "$DEV/logs" "$DEV/validators"
: >"$DEV/.btcfi-devnet"
: >"$PIDS"

# From here on, a failure stops whatever was started (unless asked to keep it).
on_exit() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "up.sh: FAILED (exit $rc) after $(($(date +%s) - t0)) s; logs in $DEV/logs" >&2
    if [ "${BTCFI_DEVNET_KEEP_ON_FAILURE:-0}" = 1 ]; then
      echo "up.sh: leaving the processes running (BTCFI_DEVNET_KEEP_ON_FAILURE=1); stop them with scripts/devnet/down.sh" >&2
    else
      BTCFI_DEVNET_DIR="$DEV" bash "$ROOT/scripts/devnet/down.sh" >&2 || true
    fi
  fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM

RPC_USER=btcfi
RPC_PASSWORD=btcfi-devnet
cli() { "$BITCOIN_CLI" -regtest -datadir="$DEV/bitcoin" -rpcport="$BTC_PORT" -rpcuser="$RPC_USER" -rpcpassword="$RPC_PASSWORD" "$@"; }

step "starting bitcoind (regtest) on 127.0.0.1:$BTC_PORT"
nohup "$BITCOIND" -regtest -datadir="$DEV/bitcoin" -server=1 -txindex=1 -listen=0 -dnsseed=0 -fixedseeds=0 \
  -fallbackfee=0.0002 -rpcbind=127.0.0.1 -rpcallowip=127.0.0.1 -rpcport="$BTC_PORT" \
  -rpcuser="$RPC_USER" -rpcpassword="$RPC_PASSWORD" -printtoconsole=0 >"$DEV/logs/bitcoind.log" 2>&1 &
echo "bitcoind $!" >>"$PIDS"
for _ in $(seq 1 300); do cli getblockcount >/dev/null 2>&1 && break; sleep 0.1; done
cli getblockcount >/dev/null || die "bitcoind did not answer; see $DEV/logs/bitcoind.log"
cli createwallet miner >/dev/null
MINER=$(cli -rpcwallet=miner getnewaddress)
cli generatetoaddress 101 "$MINER" >/dev/null

# Automatic mining, one block every $INTERVAL seconds.
nohup bash -c "while sleep $INTERVAL; do \"$BITCOIN_CLI\" -regtest -rpcport=$BTC_PORT -rpcuser=$RPC_USER -rpcpassword=$RPC_PASSWORD generatetoaddress 1 $MINER >/dev/null || exit 0; done" \
  >"$DEV/logs/miner.log" 2>&1 &
echo "miner $!" >>"$PIDS"
step "mining a block every $INTERVAL s to the wallet 'miner'"

NAMES=(ethereum polygon bsc arbitrum)
CHAIN_IDS=(31337 31338 31339 31340)
# Anvil's dev accounts (its default mnemonic): 0 deploys the bridges and is their
# guardian, 1..N are the validators' relayers, 9 (or N+1 if N > 8) is demo.sh's user.
ACCOUNTS=$((VALIDATORS + 2 > 10 ? VALIDATORS + 2 : 10))
EVM_URLS=()
for i in 0 1 2 3; do
  port=$((EVM_BASE + i))
  step "starting anvil ${NAMES[$i]} (chain id ${CHAIN_IDS[$i]}) on 127.0.0.1:$port"
  nohup "$ANVIL" --host 127.0.0.1 --port "$port" --chain-id "${CHAIN_IDS[$i]}" --block-time 1 --max-persisted-states 0 \
    --accounts "$ACCOUNTS" --config-out "$DEV/anvil-${NAMES[$i]}.json" \
    >"$DEV/logs/anvil-${NAMES[$i]}.log" 2>&1 &
  echo "anvil-${NAMES[$i]} $!" >>"$PIDS"
  EVM_URLS+=("http://127.0.0.1:$port")
done

step "deploying the bridge contracts"
export DEVNET_DIR="$DEV" DEVNET_BTC_RPC="http://127.0.0.1:$BTC_PORT" DEVNET_RPC_USER="$RPC_USER" \
  DEVNET_RPC_PASSWORD="$RPC_PASSWORD" DEVNET_CONFIRMATIONS="$CONFIRMATIONS" \
  DEVNET_EVM_NAMES="${NAMES[*]}" DEVNET_EVM_CHAIN_IDS="${CHAIN_IDS[*]}" DEVNET_EVM_URLS="${EVM_URLS[*]}" \
  DEVNET_VALIDATORS="$VALIDATORS" DEVNET_PEG_OUT_FEE="$PEG_OUT_FEE"
export BTCFI_DEVNET_DIR="$DEV"
node scripts/devnet/deploy.mjs
[ -s "$DEV/anvil-ethereum.json" ] || die "anvil wrote no $DEV/anvil-ethereum.json (its dev accounts)"
# shellcheck disable=SC2207
RELAYER_KEYS=($(node -e '
  const a = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  console.log(a.private_keys.slice(1, 1 + Number(process.argv[2])).join(" "));' "$DEV/anvil-ethereum.json" "$VALIDATORS"))
[ "${#RELAYER_KEYS[@]}" -eq "$VALIDATORS" ] || die "anvil has fewer dev accounts than validators"

# The key-share passphrase: `dkg` seals the shares under it, `run` opens them.
(umask 077 && printf '%s\n' "$PASSPHRASE" >"$DEV/passphrase")

step "initialising $VALIDATORS validators"
START=$(($(cli getblockcount) + 1))
PEERS=()
for ((i = 0; i < VALIDATORS; i++)); do
  home="$DEV/validators/v$i"
  PEERS+=("$("$NODE_BIN" init --home "$home" --name "v$i" \
    --p2p-listen "/ip4/127.0.0.1/tcp/$((P2P_BASE + i))" --api-listen "127.0.0.1:$((API_BASE + i))" 2>/dev/null)")
done
# The vault address stays empty until the DKG has produced the vault key.
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
    printf '[signing]\ntimeout_ms = 3000\ntakeover_ms = 10000\n\n'
    printf '# The EVM account that submits mint transactions (anvil dev account %s).\n' $((i + 1))
    printf '[relayer]\nprivate_key = "%s"\n\n' "${RELAYER_KEYS[$i]}"
    printf '[bitcoin]\nrpc_url = "http://127.0.0.1:%s"\nrpc_user = "%s"\nrpc_password = "%s"\n' "$BTC_PORT" "$RPC_USER" "$RPC_PASSWORD"
    printf 'network = "regtest"\nvault_address = ""\nconfirmations = %s\nmin_deposit = %s\nreorg_window = 20\nstart_height = %s\n' \
      "$CONFIRMATIONS" "$MIN_DEPOSIT" "$START"
    printf 'peg_out_fee = %s\nrbf_after_secs = 60\n\n' "$PEG_OUT_FEE"
    node -e '
      const d = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
      for (const c of d.evm) {
        console.log(`[[evm]]\nname = "${c.name}"\nchain_id = ${c.chain_id}\nendpoints = ["${c.rpc_url}"]\nbridge = "${c.bridge_address}"\nfinality = 2\npoll_interval_ms = 1000\n`);
      }' "$DEV/devnet.json"
  } >"$home/config.toml"
  chmod 600 "$home/config.toml"
  "$NODE_BIN" config check --home "$home" >/dev/null 2>"$DEV/logs/config-check-v$i.log" ||
    die "v$i: config check failed: $(cat "$DEV/logs/config-check-v$i.log")"
done

# DKG: every validator at once; the first failure stops the others.
step "running the DKG on all $VALIDATORS validators (timeout ${DKG_TIMEOUT} s)"
declare -A DKG_NAME
running=()
for ((i = 0; i < VALIDATORS; i++)); do
  BTCFI_KEY_PASSPHRASE="$PASSPHRASE" "$NODE_BIN" dkg --home "$DEV/validators/v$i" --timeout-secs "$DKG_TIMEOUT" \
    >"$DEV/logs/dkg-v$i.json" 2>"$DEV/logs/dkg-v$i.log" &
  DKG_NAME[$!]="v$i"
  running+=("$!")
  echo "dkg-v$i $!" >>"$PIDS"
done
dkg_failed=""
while [ "${#running[@]}" -gt 0 ]; do
  done_pid=""
  set +e
  wait -n -p done_pid "${running[@]}"
  rc=$?
  set -e
  [ -n "$done_pid" ] || die "lost track of the dkg processes"
  next=()
  for p in "${running[@]}"; do [ "$p" = "$done_pid" ] || next+=("$p"); done
  running=("${next[@]+"${next[@]}"}")
  if [ "$rc" -ne 0 ]; then
    dkg_failed="${DKG_NAME[$done_pid]}"
    for p in "${running[@]+"${running[@]}"}"; do kill "$p" 2>/dev/null || true; done
    for p in "${running[@]+"${running[@]}"}"; do wait "$p" 2>/dev/null || true; done
    break
  fi
  step "  ${DKG_NAME[$done_pid]}: DKG done"
done
sed -i '/^dkg-/d' "$PIDS"
if [ -n "$dkg_failed" ]; then
  echo "up.sh: the DKG failed on $dkg_failed (exit $rc):" >&2
  tail -n 5 "$DEV/logs/dkg-$dkg_failed.log" >&2
  die "DKG failed; logs in $DEV/logs/dkg-v*.log"
fi
DKG_OUT="$(grep -v '^[[:space:]]*$' "$DEV/logs/dkg-v0.json" | tail -n 1)"
for ((i = 1; i < VALIDATORS; i++)); do
  other="$(grep -v '^[[:space:]]*$' "$DEV/logs/dkg-v$i.json" | tail -n 1)"
  [ "$other" = "$DKG_OUT" ] || die "the validators disagree on the DKG result:
  v0: $DKG_OUT
  v$i: $other"
done
printf '%s\n' "$DKG_OUT" >"$DEV/dkg.json"
read -r EPOCH EVM_GROUP_KEY EVM_X EVM_Y BTC_GROUP_KEY VAULT < <(node -e '
  const r = JSON.parse(process.argv[1]);
  const need = (v, what) => { if (typeof v !== "string" && typeof v !== "number") throw new Error(`dkg output lacks ${what}: ${process.argv[1]}`); return v; };
  console.log([need(r.epoch, "epoch"), need(r.evm?.group_key, "evm.group_key"), need(r.evm?.x, "evm.x"), need(r.evm?.y, "evm.y"),
    need(r.btc?.group_key, "btc.group_key"), need(r.btc?.vault_address, "btc.vault_address")].join(" "));' "$DKG_OUT")
case "$VAULT" in bcrt1p*) ;; *) die "the DKG's vault address $VAULT is not a regtest P2TR address" ;; esac
step "DKG agreed on every validator: vault $VAULT, EVM group key $EVM_GROUP_KEY"

step "registering the EVM group key in every bridge (setInitialKey)"
node scripts/devnet/set-key.mjs "$EVM_X" "$EVM_Y"

for ((i = 0; i < VALIDATORS; i++)); do
  home="$DEV/validators/v$i"
  sed -i "s|^vault_address = \"\"\$|vault_address = \"$VAULT\"|" "$home/config.toml"
  grep -q "^vault_address = \"$VAULT\"\$" "$home/config.toml" || die "could not write the vault address into $home/config.toml"
  "$NODE_BIN" config check --home "$home" >/dev/null 2>"$DEV/logs/config-check-v$i.log" ||
    die "v$i: config check failed: $(cat "$DEV/logs/config-check-v$i.log")"
done

# devnet.json: the fields documented in the README are a contract; the rest are extras.
node -e '
  const fs = require("fs");
  const [file, vault, peers, api, dir, dkg, fee, minDeposit, anvil, passfile] = process.argv.slice(1);
  const d = JSON.parse(fs.readFileSync(file, "utf8"));
  const r = JSON.parse(dkg);
  const accounts = JSON.parse(fs.readFileSync(anvil, "utf8")).available_accounts;
  d.bitcoin.vault_address = r.btc.vault_address;
  d.bitcoin.peg_out_fee = Number(fee);
  d.bitcoin.min_deposit = Number(minDeposit);
  d.bitcoin.funding_wallet = "miner";
  d.epoch = r.epoch;
  d.evm_group_key = r.evm;
  d.btc_group_key = r.btc.group_key;
  d.passphrase_file = passfile;
  d.validators = peers.split(" ").filter(Boolean).map((peer_id, i) => ({
    name: `v${i}`,
    api_url: `http://127.0.0.1:${Number(api) + i}`,
    metrics_url: `http://127.0.0.1:${Number(api) + i}/metrics`,
    peer_id,
    home: `${dir}/v${i}`,
    relayer_address: accounts[i + 1],
  }));
  fs.writeFileSync(file, JSON.stringify(d, null, 2) + "\n");
' "$DEV/devnet.json" "$VAULT" "${PEERS[*]}" "$API_BASE" "$DEV/validators" "$DKG_OUT" "$PEG_OUT_FEE" "$MIN_DEPOSIT" \
  "$DEV/anvil-ethereum.json" "$DEV/passphrase"

VAL_PIDS=()
for ((i = 0; i < VALIDATORS; i++)); do
  home="$DEV/validators/v$i"
  BTCFI_KEY_PASSPHRASE="$PASSPHRASE" nohup "$NODE_BIN" run --home "$home" >"$DEV/logs/v$i.log" 2>&1 &
  VAL_PIDS+=("$!")
  echo "validator-v$i $!" >>"$PIDS"
  step "started validator v$i (${PEERS[$i]}) api http://127.0.0.1:$((API_BASE + i))"
done
step "waiting for the validators to be ready (up to $READY_TIMEOUT s)"
deadline=$(($(date +%s) + READY_TIMEOUT))
for ((i = 0; i < VALIDATORS; i++)); do
  url="http://127.0.0.1:$((API_BASE + i))/ready"
  until curl -sf --max-time 2 "$url" >/dev/null 2>&1; do
    if ! alive "${VAL_PIDS[$i]}"; then
      echo "up.sh: validator v$i exited; the end of $DEV/logs/v$i.log:" >&2
      tail -n 20 "$DEV/logs/v$i.log" >&2
      die "validator v$i did not start"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      die "validator v$i is not ready after $READY_TIMEOUT s: $(curl -s --max-time 2 "$url" || true); logs in $DEV/logs/v$i.log"
    fi
    sleep 0.2
  done
  step "  v$i ready"
done

echo
step "devnet up; description in $DEV/devnet.json:"
cat "$DEV/devnet.json"
HINT=""
[ "$DEV" = "$ROOT/.devnet" ] || HINT="BTCFI_DEVNET_DIR=$DEV "
echo
echo "Try it: ${HINT}scripts/devnet/demo.sh (a deposit to every chain and back)."
echo "By hand: pay BTC to $VAULT with an OP_RETURN memo \"BTCFI\"|01|dest chain id (8 bytes BE)|recipient (20 bytes)"
echo "  (bitcoin-cli -regtest -rpcport=$BTC_PORT -rpcuser=$RPC_USER -rpcpassword=$RPC_PASSWORD -rpcwallet=miner ...), then watch"
echo "  http://127.0.0.1:$API_BASE/v1/attestations"
echo "Stop it with ${HINT}scripts/devnet/down.sh"
