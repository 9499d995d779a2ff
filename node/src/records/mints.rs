//! Signed mints: the API's per-mint `sig/` records, the mint book's signed batches
//! (`mintsig/`), and the relayer's `relay/` records, all in `signing_attempts`.

use btcfi_store::{Batch, Cf, Store, StoreError};
use btcfi_types::EventId;
use serde::{Deserialize, Serialize};

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A signed mint, stored under `sig/` + event id and served by the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedRecord {
    pub chain_id: u64,
    pub bridge: String,
    pub contract_event_id: String,
    pub recipient: String,
    pub amount_sats: u64,
    /// The 32-byte message the contract verifies (`mintMessage`).
    pub message: String,
    pub rx: String,
    pub ry: String,
    pub z: String,
    /// Validators eligible in the attempt that produced the signature.
    pub signers: Vec<String>,
    pub attempt: u32,
    pub signed_at_ms: u64,
    /// Signed as part of a batch: `message` is then the batch message and (rx, ry, z)
    /// its signature, and this leaf mints with its proof under the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchRef>,
}

/// Where a batch-signed mint sits in its batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchRef {
    /// `0x` + the Merkle root the group key signed.
    pub root: String,
    /// The leaf's proof, bottom up (`0x` + 32 bytes each).
    pub proof: Vec<String>,
    /// Mints in the batch.
    pub leaves: usize,
}

pub fn signed_key(event: &EventId) -> Vec<u8> {
    let mut k = b"sig/".to_vec();
    k.extend_from_slice(&event.to_bytes());
    k
}

/// Prefix of the mint book's signed batches: `mintsig/` + the 32-byte message.
pub(crate) const MINTSIG_PREFIX: &[u8] = b"mintsig/";

/// Key of the signed batch whose group-key message is `message`.
pub(crate) fn mintsig_key(message: &[u8]) -> Vec<u8> {
    [MINTSIG_PREFIX, message].concat()
}

/// A batch of mints the group key signed, as the mint book persists it
/// ([`btcfi_mint::Change::Signed`]): the proposal in its wire form and the signature's
/// words, in hex. The mint book is restored from these, the certified attestations and
/// the relay records; the API serves each mint's [`SignedRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintSigRecord {
    pub proposal: String,
    pub rx: String,
    pub ry: String,
    pub z: String,
}

impl MintSigRecord {
    pub fn of(proposal: &btcfi_mint::BatchProposal, s: &btcfi_signer::evm::EvmSignature) -> Self {
        let word = |w: alloy::primitives::U256| hex::encode(w.to_be_bytes::<32>());
        Self { proposal: hex::encode(proposal.encode()), rx: word(s.rx), ry: word(s.ry), z: word(s.z) }
    }

    /// The batch and its signature; an error names what does not decode.
    pub fn decode(&self) -> eyre::Result<(btcfi_mint::BatchProposal, btcfi_signer::evm::EvmSignature)> {
        let proposal = btcfi_mint::BatchProposal::decode(&hex::decode(&self.proposal)?)
            .map_err(|e| eyre::eyre!("signed batch record proposal: {e}"))?;
        let word = |h: &str| -> eyre::Result<alloy::primitives::U256> {
            let mut b = [0u8; 32];
            hex::decode_to_slice(h, &mut b).map_err(|e| eyre::eyre!("signed batch record word {h}: {e}"))?;
            Ok(alloy::primitives::U256::from_be_bytes(b))
        };
        Ok((proposal, btcfi_signer::evm::EvmSignature { rx: word(&self.rx)?, ry: word(&self.ry)?, z: word(&self.z)? }))
    }
}

/// Every batch of mints signed here, by message (what the mint book restores from).
pub fn mint_signatures(
    store: &Store,
) -> eyre::Result<Vec<(Vec<u8>, btcfi_mint::BatchProposal, btcfi_signer::evm::EvmSignature)>> {
    let mut out = Vec::new();
    for (k, raw) in store.scan_prefix(Cf::SigningAttempts, MINTSIG_PREFIX)? {
        let message = k.get(MINTSIG_PREFIX.len()..).unwrap_or_default().to_vec();
        let rec: MintSigRecord = serde_json::from_slice(&raw)?;
        let (proposal, signature) = rec.decode()?;
        out.push((message, proposal, signature));
    }
    Ok(out)
}

/// What became of this node's relay of a mint (stored and served as its snake_case
/// name, which is also the `outcome` label of `btcfi_relay_submissions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RelayOutcome {
    /// Sent; not mined yet.
    Submitted,
    /// The bridge had consumed the event already (another validator's mint).
    AlreadyConsumed,
    /// Mined and reverted (another validator's mint came first).
    Reverted,
    /// The submission failed; retried.
    Failed,
    /// This node's submission mined.
    Mined,
    /// The event left the canonical chain past finality: never relayed.
    Reorged,
}

impl RelayOutcome {
    /// Every outcome a submission is counted under (`mined` is not a submission).
    pub const COUNTED: [RelayOutcome; 5] = [
        RelayOutcome::Submitted,
        RelayOutcome::Failed,
        RelayOutcome::Reverted,
        RelayOutcome::AlreadyConsumed,
        RelayOutcome::Reorged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RelayOutcome::Submitted => "submitted",
            RelayOutcome::AlreadyConsumed => "already_consumed",
            RelayOutcome::Reverted => "reverted",
            RelayOutcome::Failed => "failed",
            RelayOutcome::Mined => "mined",
            RelayOutcome::Reorged => "reorged",
        }
    }

    /// Whether the mint is on chain (by this node or another): nothing left to relay.
    pub fn is_final(self) -> bool {
        matches!(self, RelayOutcome::Mined | RelayOutcome::AlreadyConsumed | RelayOutcome::Reverted)
    }
}

/// What this node did with a mint, as stored under `relay/` + event id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayRecord {
    pub chain_id: u64,
    pub outcome: RelayOutcome,
    pub tx_hash: Option<String>,
    pub detail: Option<String>,
    pub at_ms: u64,
}

impl RelayRecord {
    pub fn new(chain_id: u64, outcome: RelayOutcome, tx_hash: Option<[u8; 32]>, detail: Option<String>) -> Self {
        RelayRecord {
            chain_id,
            outcome,
            tx_hash: tx_hash.map(|h| format!("0x{}", hex::encode(h))),
            detail,
            at_ms: now_ms(),
        }
    }
}

/// Prefix of the relay records: `relay/` + event id.
const RELAY_PREFIX: &[u8] = b"relay/";

fn relay_key(event: &EventId) -> Vec<u8> {
    [RELAY_PREFIX, &event.to_bytes()[..]].concat()
}

/// Stores `r` as the relay record of each of `events`, in one synced write.
pub fn put_relays(store: &Store, events: &[EventId], r: &RelayRecord) -> Result<(), StoreError> {
    let mut b = Batch::new();
    for e in events {
        b.put_json(Cf::SigningAttempts, relay_key(e), r)?;
    }
    store.commit(b)
}

/// This node's relay record of `event`, if any.
pub fn get_relay(store: &Store, event: &EventId) -> Result<Option<RelayRecord>, StoreError> {
    store.get_json(Cf::SigningAttempts, relay_key(event))
}

/// Every relay record, by event; one this version cannot read is `None` (at worst its
/// mint is relayed again, and the bridge refuses what it consumed).
pub fn all_relays(store: &Store) -> Result<Vec<(EventId, Option<RelayRecord>)>, StoreError> {
    let mut out = Vec::new();
    for (k, raw) in store.scan_prefix(Cf::SigningAttempts, RELAY_PREFIX)? {
        if let Some(event) = k.get(RELAY_PREFIX.len()..).and_then(|b| EventId::from_bytes(b).ok()) {
            out.push((event, serde_json::from_slice(&raw).ok()));
        }
    }
    Ok(out)
}

/// Every per-mint signature record, by event (an unreadable one left out).
pub fn all_signed(store: &Store) -> Result<Vec<(EventId, SignedRecord)>, StoreError> {
    const SIG_PREFIX: &[u8] = b"sig/";
    let mut out = Vec::new();
    for (k, raw) in store.scan_prefix(Cf::SigningAttempts, SIG_PREFIX)? {
        let event = k.get(SIG_PREFIX.len()..).and_then(|b| EventId::from_bytes(b).ok());
        if let (Some(event), Ok(rec)) = (event, serde_json::from_slice::<SignedRecord>(&raw)) {
            out.push((event, rec));
        }
    }
    Ok(out)
}

/// Adds to `batch` the batch of mints signed under `message` and the per-mint records
/// the API serves (`leaves`, by event).
pub fn put_signed_batch(
    batch: &mut Batch,
    message: &[u8],
    proposal: &btcfi_mint::BatchProposal,
    signature: &btcfi_signer::evm::EvmSignature,
    leaves: &[(EventId, SignedRecord)],
) -> Result<(), StoreError> {
    batch.put_json(Cf::SigningAttempts, mintsig_key(message), &MintSigRecord::of(proposal, signature))?;
    for (event, record) in leaves {
        batch.put_json(Cf::SigningAttempts, signed_key(event), record)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signed batch reads back as it was written, from a real store; a corrupt one is
    /// an error naming it.
    #[test]
    fn a_signed_batch_reads_back_as_it_was_written() {
        use btcfi_mint::{BatchProposal, Leaf};
        use btcfi_types::{ChainId, EvmAddress, Sats, TxHash};
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("store");
        let leaf = |i: u8| Leaf {
            event: EventId::new(ChainId::BITCOIN, TxHash([i; 32]), 0),
            recipient: EvmAddress([i; 20]),
            amount: Sats(u64::from(i)),
        };
        let p = BatchProposal::new(5, vec![leaf(1), leaf(2)]);
        let sig = btcfi_signer::evm::EvmSignature {
            rx: alloy::primitives::U256::from(7u8),
            ry: alloy::primitives::U256::MAX,
            z: alloy::primitives::U256::from(9u8),
        };
        let mut b = Batch::new();
        put_signed_batch(&mut b, &[3; 32], &p, &sig, &[]).expect("put");
        store.commit(b).expect("commit");
        assert_eq!(mint_signatures(&store).expect("read"), vec![(vec![3; 32], p, sig)]);
        let bad = MintSigRecord { proposal: "00".into(), rx: String::new(), ry: String::new(), z: String::new() };
        assert!(bad.decode().expect_err("refused").to_string().contains("signed batch record"));
    }
}
