//! The store schema: every key and value the node keeps in its RocksDB column
//! families, and the only code that writes them (a test below holds every other node
//! module to that). Values are JSON unless said otherwise; event ids are their 44-byte
//! encoding, txids their display form unless said otherwise.
//!
//! | column family | key | value | module |
//! |---|---|---|---|
//! | `cursors` | chain id (u64 BE) | the adapter's checkpoint | [`chains`] |
//! | `events` | event id | [`StoredEvent`] | [`chains`] |
//! | `observations` | event id | own vote (never overwritten) | [`consensus`] |
//! | `votes` | event id, validator (u16 BE) | peer vote | [`consensus`] |
//! | `attestations` | event id | certified attestation | [`consensus`] |
//! | `network_certificates` | event id | a peer's certificate | [`consensus`] |
//! | `evidence` | `eq/`, event id, validator | equivocation | [`consensus`] |
//! | `evidence` | `sign/<kind>/`, session, attempt, culprit | [`signing::ShareEvidence`] | [`signing`] |
//! | `keys` | `<kind>/<epoch:020>` (`/check`) | sealed key share (its test signature) | [`keys`] |
//! | `signing_attempts` | kind byte, session, attempt (u32 BE) | empty: commitment issued | [`signing`] |
//! | `signing_attempts` | `round/`, kind byte, message | round (u32 BE) | [`signing`] |
//! | `signing_attempts` | `sig/`, event id | [`SignedRecord`] | [`mints`] |
//! | `signing_attempts` | `mintsig/`, message | [`MintSigRecord`] | [`mints`] |
//! | `signing_attempts` | `relay/`, event id | [`RelayRecord`] | [`mints`] |
//! | `releases` | `rel/`, txid | [`ReleaseRecord`] | [`releases`] |
//! | `releases` | `paying/`, event id | txids of the releases paying it | [`releases`] |
//! | `releases` | `unpayable/`, event id | [`UnpayableRecord`] | [`releases`] |
//! | `releases` | `book/`, sequence (u64 BE) | [`BookChange`] | [`releases`] |
//! | `releases` | `onchain/`, txid (display order) | a vault spend at depth | [`releases`] |
//!
//! `meta` holds the store's schema version, written by `btcfi-store` itself.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

pub mod chains;
pub mod consensus;
pub mod keys;
pub mod mints;
pub mod releases;
pub mod signing;

pub use chains::*;
pub use consensus::*;
pub use mints::*;
pub use releases::*;

/// Every value under `prefix` in `cf`, in key order; one that does not decode is a
/// [`StoreError::Corrupt`] naming the column family.
fn all<T: serde::de::DeserializeOwned>(
    store: &btcfi_store::Store,
    cf: btcfi_store::Cf,
    prefix: &[u8],
) -> Result<Vec<T>, btcfi_store::StoreError> {
    store
        .scan_prefix(cf, prefix)?
        .into_iter()
        .map(|(_, v)| {
            serde_json::from_slice(&v)
                .map_err(|e| btcfi_store::StoreError::Corrupt { cf: cf.name(), detail: e.to_string() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read the source tree") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// No node module but this one writes the store: each key has one writer, here.
    /// (Fails if a `put`, `put_json` or `delete` on a batch appears anywhere else.)
    #[test]
    fn only_the_records_module_writes_the_store() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let own = src.join("records");
        let mut files = Vec::new();
        sources(&src, &mut files);
        assert!(files.len() > 20, "the node's sources are found: {}", files.len());
        let mut writers = Vec::new();
        for f in files.iter().filter(|f| !f.starts_with(&own)) {
            let text = std::fs::read_to_string(f).expect("read");
            for (i, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                if [".put(Cf::", ".put_json(Cf::", ".delete(Cf::"].iter().any(|w| code.contains(w)) {
                    writers.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
                }
            }
        }
        assert!(writers.is_empty(), "store writes outside `records`:\n{}", writers.join("\n"));
    }
}
