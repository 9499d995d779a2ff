# Source me: points the tools at the project's dependency prefix (see install-deps.sh).
_btcfi_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export BTCFI_DEPS="${BTCFI_DEPS:-$_btcfi_root/.deps}"
export PATH="$BTCFI_DEPS/bin:$PATH"
export BITCOIND="${BITCOIND:-$BTCFI_DEPS/bin/bitcoind}"
export BITCOIN_CLI="${BITCOIN_CLI:-$BTCFI_DEPS/bin/bitcoin-cli}"
export ANVIL="${ANVIL:-$BTCFI_DEPS/bin/anvil}"
export SOLCJS="${SOLCJS:-$BTCFI_DEPS/bin/solcjs}"
unset _btcfi_root
