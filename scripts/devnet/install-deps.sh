#!/usr/bin/env bash
# Installs everything btcfi-node's build, tests and devnet need, idempotently:
#   - libclang-dev (RocksDB's bindgen) through apt, when missing
#   - anvil (npm @foundry-rs/anvil-linux-amd64) and solc (npm solc) into .deps/
#   - bitcoind + bitcoin-cli: one on PATH (or $BITCOIND) is preferred; otherwise
#     bitcoin-knots from Debian unstable, unpacked into .deps/knots and run through
#     unstable's own loader (see ../shared/design.md, "Test infrastructure").
# Everything lands in the git-ignored prefix $BTCFI_DEPS (default: <repo>/.deps).
# Source scripts/devnet/env.sh afterwards to get BITCOIND, BITCOIN_CLI, ANVIL, SOLCJS.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PREFIX="${BTCFI_DEPS:-$ROOT/.deps}"
ANVIL_VERSION="${ANVIL_VERSION:-1.5.1}"
SOLC_VERSION="${SOLC_VERSION:-0.8.30}"
mkdir -p "$PREFIX/bin"

log() { printf 'install-deps: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- libclang (rocksdb's bindgen) -------------------------------------------------
if ! dpkg -s libclang-dev >/dev/null 2>&1; then
  log "installing libclang-dev"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null
fi

# --- npm packages: anvil and solc -------------------------------------------------
NPM_DIR="$PREFIX/npm"
npm_install() { # $1 = package@version
  mkdir -p "$NPM_DIR"
  [ -f "$NPM_DIR/package.json" ] || printf '{"name":"btcfi-deps","private":true}\n' >"$NPM_DIR/package.json"
  (cd "$NPM_DIR" && npm install --no-audit --no-fund --silent "$1" >/dev/null)
}

if [ ! -x "$PREFIX/bin/anvil" ]; then
  if command -v anvil >/dev/null 2>&1; then
    ln -sf "$(command -v anvil)" "$PREFIX/bin/anvil"
  else
    log "installing anvil $ANVIL_VERSION from npm"
    npm_install "@foundry-rs/anvil-linux-amd64@$ANVIL_VERSION" || npm_install "@foundry-rs/anvil-linux-amd64"
    bin=$(find "$NPM_DIR/node_modules/@foundry-rs/anvil-linux-amd64" -type f -name anvil | head -n1)
    [ -n "$bin" ] || { log "anvil binary not found in the npm package"; exit 1; }
    chmod +x "$bin"
    ln -sf "$bin" "$PREFIX/bin/anvil"
  fi
fi

if [ ! -x "$PREFIX/bin/solcjs" ]; then
  log "installing solc $SOLC_VERSION from npm"
  npm_install "solc@$SOLC_VERSION"
  ln -sf "$NPM_DIR/node_modules/solc/solc.js" "$PREFIX/bin/solcjs"
  chmod +x "$NPM_DIR/node_modules/solc/solc.js"
fi

# --- bitcoind ---------------------------------------------------------------------
have_bitcoind() { [ -x "$PREFIX/bin/bitcoind" ] && "$PREFIX/bin/bitcoind" -version >/dev/null 2>&1; }
if ! have_bitcoind; then
  sys_bitcoind="${BITCOIND:-$(command -v bitcoind || true)}"
  if [ -n "$sys_bitcoind" ] && "$sys_bitcoind" -version >/dev/null 2>&1; then
    log "using bitcoind at $sys_bitcoind"
    ln -sf "$sys_bitcoind" "$PREFIX/bin/bitcoind"
    cli="${BITCOIN_CLI:-$(dirname "$sys_bitcoind")/bitcoin-cli}"
    ln -sf "$cli" "$PREFIX/bin/bitcoin-cli"
  else
    log "installing bitcoin-knots from Debian unstable into $PREFIX/knots"
    # Mirror: whatever the machine's own apt sources point at.
    mirror=$( (cat /etc/apt/sources.list 2>/dev/null; cat /etc/apt/sources.list.d/*.sources 2>/dev/null; cat /etc/apt/sources.list.d/*.list 2>/dev/null; true) |
      grep -Eo '(https?://[^ ]+/debian)/?( |$)' | grep -v -- '-security' | head -n1 | tr -d ' ' || true)
    mirror="${mirror%/}"
    [ -n "$mirror" ] || { log "no Debian mirror found in the apt sources"; exit 1; }
    APT="$PREFIX/apt"
    mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/debs"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main" >"$APT/sources.list"
    opts=(-o "Dir::Etc::SourceList=$APT/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
      -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -o "APT::Get::List-Cleanup=0"
      -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
    apt-get "${opts[@]}" update -qq
    (cd "$APT/debs" && apt-get "${opts[@]}" download bitcoin-knots libc6 libstdc++6 libgcc-s1 >/dev/null)
    # bookworm libraries the binary links against
    missing=()
    for p in libzmq5 libevent-extra-2.1-7 libevent-pthreads-2.1-7; do
      dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
      as_root apt-get update -qq
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    K="$PREFIX/knots"
    rm -rf "$K" && mkdir -p "$K"
    for d in "$APT"/debs/*.deb; do dpkg -x "$d" "$K"; done
    for b in bitcoind bitcoin-cli; do
      cat >"$PREFIX/bin/$b" <<WRAP
#!/bin/sh
exec "$K/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path "$K/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu" "$K/usr/bin/$b" "\$@"
WRAP
      chmod +x "$PREFIX/bin/$b"
    done
  fi
  have_bitcoind || { log "bitcoind does not run"; exit 1; }
fi

log "ok: $("$PREFIX/bin/bitcoind" -version | head -n1); anvil $("$PREFIX/bin/anvil" --version | head -n1); solc $("$PREFIX/bin/solcjs" --version)"
