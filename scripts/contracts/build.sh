#!/usr/bin/env bash
# Compiles the bridge contracts with solcjs (the npm `solc` package, installed by
# scripts/devnet/install-deps.sh) into contracts/out/ under stable names:
#   Bridge.bin  Bridge.abi  WrappedBTC.bin  WrappedBTC.abi
# (.bin is the creation bytecode as hex without 0x, .abi the JSON ABI; FROST is an
# internal library, inlined into Bridge).
#
# Idempotent: compiles into a temporary directory and renames each artifact into
# place, so concurrent runs (parallel test processes) never see a half-written file.
# Fails on any compiler error or missing artifact. SOLCJS overrides the compiler.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=../devnet/env.sh
source "$root/scripts/devnet/env.sh"

src="$root/contracts"
out="$src/out"
contracts=(Bridge WrappedBTC)

if [[ ! -x "$SOLCJS" ]] && ! command -v "$SOLCJS" >/dev/null 2>&1; then
    echo "build.sh: solcjs not found at $SOLCJS: run scripts/devnet/install-deps.sh or set SOLCJS" >&2
    exit 1
fi

mkdir -p "$out"
tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# Source unit names are relative to contracts/ (base path), so artifacts are named
# <File>_sol_<Contract>.{bin,abi}.
if ! (cd "$src" && "$SOLCJS" --bin --abi --optimize --optimize-runs 100000 --base-path . -o "$tmp" ./*.sol); then
    echo "build.sh: solcjs failed" >&2
    exit 1
fi

for c in "${contracts[@]}"; do
    for ext in bin abi; do
        f="$tmp/${c}_sol_${c}.$ext"
        if [[ ! -s "$f" ]]; then
            echo "build.sh: solcjs produced no $c.$ext (expected $(basename "$f"))" >&2
            exit 1
        fi
        mv -f "$f" "$out/$c.$ext"
    done
done

echo "build.sh: wrote ${contracts[*]} (.bin, .abi) to ${out#"$root"/}" >&2
