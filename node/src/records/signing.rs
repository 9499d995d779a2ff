//! The signer's durable state, in `signing_attempts` and `evidence`: "commitment
//! issued" records (written before a commitment leaves, so that a restart never
//! answers an attempt whose nonces it lost), the round each message's signing reached,
//! and the evidence of an invalid signature share.

use crate::keys::KeyKind;
use btcfi_signer::session::{Attempt, CommitmentIssued, SessionId};
use btcfi_store::{Batch, Cf, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// `kind | session (32) | attempt (4, BE)`: this node issued a commitment for it.
fn issued_key(kind: KeyKind, r: &CommitmentIssued) -> Vec<u8> {
    let mut k = vec![kind.byte()];
    k.extend_from_slice(&r.session.0);
    k.extend_from_slice(&r.attempt.0.to_be_bytes());
    k
}

/// Records that this node issued the commitment `r` (with `kind`'s key).
pub fn put_issued(batch: &mut Batch, kind: KeyKind, r: &CommitmentIssued) {
    batch.put(Cf::SigningAttempts, issued_key(kind, r), []);
}

/// Every commitment `kind`'s key issued here, as [`put_issued`] wrote them.
pub fn issued(store: &Store, kind: KeyKind) -> Result<BTreeSet<CommitmentIssued>, StoreError> {
    let mut issued = BTreeSet::new();
    for (k, _) in store.scan_prefix(Cf::SigningAttempts, &[kind.byte()])? {
        let session = k.get(1..33).and_then(|b| <[u8; 32]>::try_from(b).ok());
        let attempt = k.get(33..37).and_then(|b| <[u8; 4]>::try_from(b).ok());
        if let (37, Some(s), Some(a)) = (k.len(), session, attempt) {
            issued.insert(CommitmentIssued { session: SessionId(s), attempt: Attempt(u32::from_be_bytes(a)) });
        }
    }
    Ok(issued)
}

/// `round/ | kind | message`: the round signing `message` reached.
fn round_key(kind: KeyKind, message: &[u8]) -> Vec<u8> {
    let mut k = b"round/".to_vec();
    k.push(kind.byte());
    k.extend_from_slice(message);
    k
}

/// Records that signing `message` with `kind`'s key moved to `round`.
pub fn put_round(batch: &mut Batch, kind: KeyKind, message: &[u8], round: u32) {
    batch.put(Cf::SigningAttempts, round_key(kind, message), round.to_be_bytes());
}

/// The round signing `message` reached here (0 if it never moved on).
pub fn round(store: &Store, kind: KeyKind, message: &[u8]) -> Result<u32, StoreError> {
    Ok(match store.get(Cf::SigningAttempts, round_key(kind, message))? {
        Some(b) => <[u8; 4]>::try_from(b.as_slice()).map(u32::from_be_bytes).unwrap_or(0),
        None => 0,
    })
}

/// Evidence that a signer sent an invalid signature share, under `sign/<kind>/` +
/// session, attempt (u32 BE) and culprit (u64 BE, `u64::MAX` if unknown) in `evidence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareEvidence {
    /// Always `invalid_signature_share`.
    pub kind: String,
    /// The key's kind (`evm`, `btc`).
    pub key: String,
    pub session: String,
    pub attempt: u32,
    pub culprit: Option<usize>,
    /// The share (hex).
    pub share: String,
    /// The signing package it answered (hex), if it serializes.
    pub signing_package: Option<String>,
}

/// Records `e` (an invalid share of `kind`'s session `session`).
pub fn put_share_evidence(
    batch: &mut Batch,
    kind: KeyKind,
    session: &SessionId,
    e: &ShareEvidence,
) -> Result<(), StoreError> {
    let mut key = format!("sign/{kind}/").into_bytes();
    key.extend_from_slice(&session.0);
    key.extend_from_slice(&e.attempt.to_be_bytes());
    key.extend_from_slice(&(e.culprit.map_or(u64::MAX, |c| c as u64)).to_be_bytes());
    batch.put_json(Cf::Evidence, key, e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the signer writes reads back, per key kind, from a real store.
    #[test]
    fn commitments_and_rounds_read_back_per_key() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("store");
        let c = CommitmentIssued { session: SessionId([3; 32]), attempt: Attempt(7) };
        let mut b = Batch::new();
        put_issued(&mut b, KeyKind::Evm, &c);
        put_round(&mut b, KeyKind::Btc, b"message", 4);
        store.commit(b).expect("commit");
        assert_eq!(issued(&store, KeyKind::Evm).expect("read"), BTreeSet::from([c]));
        assert!(issued(&store, KeyKind::Btc).expect("read").is_empty(), "a round is no commitment");
        assert_eq!(round(&store, KeyKind::Btc, b"message").expect("read"), 4);
        assert_eq!(round(&store, KeyKind::Evm, b"message").expect("read"), 0);
    }
}
