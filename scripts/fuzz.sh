#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each, with one command:
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]        # default: 60 s, all targets
#   scripts/fuzz.sh --replay                     # stable only: replay seeds + corpus
#
# Targets live in fuzz/ (a cargo-fuzz project outside the workspace) and cover every
# decoder of peer bytes: p2p envelopes, heartbeats and request frames, attestations,
# deposit memos and consensus messages. Needs a nightly toolchain for libFuzzer's
# sanitizer coverage; cargo-fuzz is installed (crates.io, --locked) when missing.
# Before fuzzing, the corpus-replay tests run on stable and write the seed corpus.
# Crashes land in fuzz/artifacts/<target>/; copy a crash into
# fuzz/regressions/<target>/ to keep it as a regression test of `--replay`.
#
# Environment: FUZZ_TOOLCHAIN (default: nightly), FUZZ_JOBS (parallel jobs per target,
# default 1), CARGO_TARGET_DIR is honoured (fuzz builds use their own flags, so a
# separate directory such as $HOME/.cache/btcfi-fuzz-target avoids rebuild churn).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

replay() {
    echo "==> corpus replay (stable): cargo test --manifest-path fuzz/Cargo.toml"
    BTCFI_FUZZ_WRITE_SEEDS=1 cargo test --manifest-path fuzz/Cargo.toml
}

if [[ "${1:-}" == "--replay" ]]; then
    replay
    exit 0
fi

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [SECONDS] [TARGET...] | --replay" >&2
    exit 2
fi
shift || true

toolchain="${FUZZ_TOOLCHAIN:-nightly}"
if ! rustup toolchain list 2>/dev/null | grep -q "^${toolchain}"; then
    echo "error: the '${toolchain}' toolchain is not installed; libFuzzer needs nightly." >&2
    echo "       install it with 'rustup toolchain install nightly', or run '$0 --replay'" >&2
    echo "       to replay the seeds and corpus on stable." >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

replay

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo "+${toolchain}" fuzz list)
fi

jobs=()
if [[ "${FUZZ_JOBS:-1}" -gt 1 ]]; then
    jobs=(--jobs "${FUZZ_JOBS}")
fi

failed=()
for target in "${targets[@]}"; do
    echo "==> fuzzing ${target} for ${seconds}s"
    if ! cargo "+${toolchain}" fuzz run "${jobs[@]}" "${target}" -- \
        -max_total_time="${seconds}" -print_final_stats=1; then
        failed+=("${target}")
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "FAILED targets: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
    exit 1
fi
echo "all ${#targets[@]} targets ran ${seconds}s without a finding"
