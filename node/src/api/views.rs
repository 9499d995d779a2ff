//! What the API serves: one typed view per resource. The OpenAPI document is generated
//! from these types, so a field named here is a field of the contract: fields marked
//! "absent" are left out when they do not apply, fields marked "null" are always there.

use super::{ApiError, ApiState};
use crate::records::{RelayOutcome, RelayRecord};
use crate::records::{ReleaseStatus, SignedRecord};
use btcfi_chain_adapters::{BlockRef, ChainEvent, Rejected};
use btcfi_consensus::{ValidatorIndex, persist::PeerVoteRecord};
use btcfi_store::Cf;
use btcfi_types::{Attestation, AttestationKind, EventId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// The body of every error (4xx, 5xx).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// `/health`: the process answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: &'static str,
}

/// `/ready`: 200 when ready, 503 with the reasons otherwise.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub reasons: Vec<String>,
}

/// One group key's state, in `/v1/status` under `signing.keys`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyView {
    /// The group key (hex); null before the DKG.
    pub group_key: Option<String>,
    /// Its test signature verified: it signs.
    pub usable: bool,
    pub sessions_in_flight: Option<usize>,
    pub max_sessions_in_flight: Option<usize>,
    pub queued: Option<usize>,
    pub queued_for_secs: Option<u64>,
}

/// The signing side of `/v1/status`: group keys, vault and releases.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SigningSummary {
    /// By key kind: `evm`, `btc`.
    pub keys: BTreeMap<String, KeyView>,
    pub vault_address: String,
    pub peg_outs_pending: i64,
    /// Releases this node holds, by status.
    pub releases_in_flight: BTreeMap<String, usize>,
    pub peg_outs_paid: usize,
    /// This node relays mints.
    pub relayer: bool,
}

/// Where an event stands. Filtered on by `/v1/attestations?status=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// Seen at depth, not certified yet.
    Observed,
    Certified,
    /// A mint's threshold signature exists.
    Signed,
    /// A peg-out in a release not yet at depth.
    Releasing,
    Paid,
    /// A peg-out that can never be paid (`unpayable_reason` says why).
    Unpayable,
    /// A deposit refused (`reason`), with no refund payable.
    Rejected,
    Refunding,
    Refunded,
    /// Reorged out past finality: never acted on again.
    Reorged,
}

impl EventStatus {
    pub const ALL: [EventStatus; 10] = [
        EventStatus::Observed,
        EventStatus::Certified,
        EventStatus::Signed,
        EventStatus::Releasing,
        EventStatus::Paid,
        EventStatus::Unpayable,
        EventStatus::Rejected,
        EventStatus::Refunding,
        EventStatus::Refunded,
        EventStatus::Reorged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Observed => "observed",
            EventStatus::Certified => "certified",
            EventStatus::Signed => "signed",
            EventStatus::Releasing => "releasing",
            EventStatus::Paid => "paid",
            EventStatus::Unpayable => "unpayable",
            EventStatus::Rejected => "rejected",
            EventStatus::Refunding => "refunding",
            EventStatus::Refunded => "refunded",
            EventStatus::Reorged => "reorged",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BlockView {
    pub height: u64,
    /// Hex.
    pub hash: String,
}

impl From<&BlockRef> for BlockView {
    fn from(b: &BlockRef) -> Self {
        BlockView { height: b.height, hash: hex::encode(b.hash) }
    }
}

/// What an attestation says, by `type`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AttestationView {
    PegIn { destination_chain: u64, recipient: String, amount_sats: u64 },
    PegOut { nonce: u64, amount_sats: u64, script_pubkey: String },
    EvmToEvm { nonce: u64, destination_chain: u64, recipient: String, amount_sats: u64 },
    Refund { amount_sats: u64, script_pubkey: String },
}

impl From<&Attestation> for AttestationView {
    fn from(a: &Attestation) -> Self {
        match &a.kind {
            AttestationKind::PegIn { dest_chain, recipient, amount } => AttestationView::PegIn {
                destination_chain: dest_chain.0,
                recipient: recipient.to_string(),
                amount_sats: amount.0,
            },
            AttestationKind::PegOut { nonce, amount, script_pubkey } => AttestationView::PegOut {
                nonce: *nonce,
                amount_sats: amount.0,
                script_pubkey: hex::encode(script_pubkey),
            },
            AttestationKind::EvmToEvm { nonce, dest_chain, recipient, amount } => AttestationView::EvmToEvm {
                nonce: *nonce,
                destination_chain: dest_chain.0,
                recipient: recipient.to_string(),
                amount_sats: amount.0,
            },
            AttestationKind::Refund { amount, script_pubkey } => {
                AttestationView::Refund { amount_sats: amount.0, script_pubkey: hex::encode(script_pubkey) }
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CertificateSignatureView {
    pub validator: u16,
    /// Null if the index names no configured peer.
    pub peer_id: Option<String>,
    /// Hex.
    pub signature: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CertificateView {
    pub epoch: u64,
    pub digest: String,
    pub signatures: Vec<CertificateSignatureView>,
    /// The encoded certificate (hex).
    pub encoded: String,
}

/// A mint's threshold signature (FROST, as `FROST.sol` verifies it).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SignatureView {
    pub rx: String,
    pub ry: String,
    pub z: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MintView {
    pub chain_id: u64,
    pub bridge: String,
    pub event_id: String,
    pub recipient: String,
    pub amount_sats: u64,
    /// The 32-byte message the contract verifies.
    pub message: String,
    pub signers: Vec<String>,
    pub attempt: u32,
    pub signed_at_ms: u64,
}

impl From<&SignedRecord> for MintView {
    fn from(s: &SignedRecord) -> Self {
        MintView {
            chain_id: s.chain_id,
            bridge: s.bridge.clone(),
            event_id: s.contract_event_id.clone(),
            recipient: s.recipient.clone(),
            amount_sats: s.amount_sats,
            message: s.message.clone(),
            signers: s.signers.clone(),
            attempt: s.attempt,
            signed_at_ms: s.signed_at_ms,
        }
    }
}

/// What this node did with a mint's relay.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RelayView {
    pub chain_id: u64,
    pub outcome: RelayOutcome,
    pub tx_hash: Option<String>,
    pub detail: Option<String>,
    pub at_ms: u64,
}

impl From<RelayRecord> for RelayView {
    fn from(r: RelayRecord) -> Self {
        RelayView { chain_id: r.chain_id, outcome: r.outcome, tx_hash: r.tx_hash, detail: r.detail, at_ms: r.at_ms }
    }
}

/// The release paying a peg-out (or a refund).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReleaseView {
    pub txid: String,
    pub status: ReleaseStatus,
    pub peg_out_fee_sats: u64,
    /// The amount less the peg-out fee.
    pub paid_sats: u64,
    pub network_fee_sats: u64,
    pub fee_rate_sat_per_vb: u64,
    pub confirmations: u64,
    /// The release this one replaced (RBF); null if none.
    pub replaces: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    Refunding,
    Refunded,
    Unpayable,
}

/// A rejected deposit paid back: where, how much, and how far.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RefundView {
    pub status: RefundStatus,
    pub script_pubkey: String,
    pub deposit_sats: u64,
    pub refund_fee_sats: u64,
    pub refund_sats: u64,
    pub digest: String,
    pub certified: bool,
    /// The release paying it; null until there is one.
    pub txid: Option<String>,
}

/// Everything known about one event.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventView {
    /// `<chain id>:<tx hash>:<index>`.
    pub id: String,
    pub status: EventStatus,
    /// Absent for an event certified here but not seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_chain: Option<u64>,
    /// Absent if not seen (or a vault spend).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<BlockView>,
    /// The attestation's digest: absent for a rejection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_chain: Option<u64>,
    /// Absent if not seen; null for a rejection of an unknown amount.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>)]
    pub amount_sats: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attestation: Option<AttestationView>,
    /// The encoded attestation (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The id the bridge contract knows the event by (`0x` + 32 bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contract_event_id: Option<String>,
    /// Why a deposit was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certified_at_ms: Option<u64>,
    /// Only in the view of one event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateView>,
    /// Peer ids of the validators that voted for it (or signed its certificate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signers: Option<Vec<String>>,
    /// A mint's threshold signature: null until signed (absent if not seen).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<SignatureView>)]
    pub signature: Option<Option<SignatureView>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mint: Option<MintView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unpayable_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refund: Option<RefundView>,
    /// Why it waits, from the daemon loop (one event's view only; absent if nothing
    /// waits here or the loop is busy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<super::Waiting>,
}

impl EventView {
    pub(super) fn new(id: &EventId, status: EventStatus) -> Self {
        EventView {
            id: id.to_string(),
            status,
            source_chain: None,
            block: None,
            digest: None,
            destination_chain: None,
            amount_sats: None,
            attestation: None,
            message: None,
            contract_event_id: None,
            reason: None,
            certified_at_ms: None,
            certificate: None,
            signers: None,
            signature: None,
            mint: None,
            relay: None,
            unpayable_reason: None,
            release: None,
            refund: None,
            waiting: None,
        }
    }
}

/// `/v1/attestations`: one page.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    /// Events matching the filter, over all pages.
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    pub items: Vec<EventView>,
}

/// The gate that holds a deposit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    /// Not seen at the confirmation depth yet.
    Depth,
    Quorum,
    Signing,
    Submission,
    Done,
    Rejected,
    Refund,
    Reorged,
}

/// A deposit seen here.
#[derive(Debug, Serialize, ToSchema)]
pub struct DepositView {
    #[serde(flatten)]
    pub event: EventView,
    pub gate: Gate,
    /// While observed: votes so far, the quorum, and who has not voted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub votes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quorum: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing_signers: Option<Vec<String>>,
}

/// A deposit not seen here at depth (or not a payment to the vault).
#[derive(Debug, Serialize, ToSchema)]
pub struct UnseenDeposit {
    pub id: String,
    /// Always `unknown`.
    pub status: &'static str,
    /// Always `depth`.
    pub gate: Gate,
    pub detail: &'static str,
    pub bitcoin_cursor_height: Option<u64>,
    pub bitcoin_head_height: Option<u64>,
}

/// `/v1/deposits/{outpoint}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum DepositResponse {
    Seen(Box<DepositView>),
    Unseen(UnseenDeposit),
}

/// Everything known about one event, as the API shows it (`detail`: with its
/// certificate).
pub(super) fn event_view(s: &ApiState, id: &EventId, detail: bool) -> Result<Option<EventView>, ApiError> {
    let stored = crate::records::get_event(&s.store, id)?;
    let certified = crate::records::get_certified(&s.store, id)?;
    let Some(stored) = stored else {
        return Ok(certified.map(|c| EventView {
            digest: Some(c.certificate.digest.to_string()),
            ..EventView::new(id, EventStatus::Certified)
        }));
    };
    let mut v = EventView { source_chain: Some(id.chain.0), ..EventView::new(id, EventStatus::Observed) };
    match &stored.event {
        ChainEvent::Observed(o) => {
            v.block = Some((&o.block).into());
            v.digest = Some(o.attestation.digest().to_string());
            v.destination_chain = Some(o.attestation.destination().0);
            v.amount_sats = Some(Some(o.attestation.amount().0));
            v.attestation = Some((&o.attestation).into());
            v.message = Some(hex::encode(o.attestation.encode()));
            v.contract_event_id = Some(format!("0x{}", hex::encode(id.contract_id())));
        }
        ChainEvent::Rejected(r) => {
            v.block = Some((&r.block).into());
            v.amount_sats = Some(r.amount.map(|a| a.0));
            v.reason = Some(r.reason.clone());
        }
        // Vault spends are kept apart (`onchain/` in the releases family), never here.
        ChainEvent::Reorged { .. } | ChainEvent::VaultSpend(_) => {}
    }
    v.status = if stored.reorged.is_some() {
        EventStatus::Reorged
    } else if matches!(stored.event, ChainEvent::Rejected(_)) {
        EventStatus::Rejected
    } else if certified.is_some() {
        EventStatus::Certified
    } else {
        EventStatus::Observed
    };
    // Voters: own vote plus peer votes of the same digest.
    let mut voters: Vec<u16> = Vec::new();
    if let Some(own) = s.store.get_json::<btcfi_consensus::persist::OwnVoteRecord>(Cf::Observations, id.to_bytes())? {
        voters.push(own.vote.validator.0);
        for (_, raw) in s.store.scan_prefix(Cf::Votes, &id.to_bytes())? {
            if let Ok(r) = serde_json::from_slice::<PeerVoteRecord>(&raw)
                && r.vote.digest == own.vote.digest
            {
                voters.push(r.vote.validator.0);
            }
        }
    }
    if let Some(c) = &certified {
        voters = c.certificate.signers().map(|i: ValidatorIndex| i.0).collect();
        v.certified_at_ms = Some(c.certified_at);
        if detail {
            v.certificate = Some(CertificateView {
                epoch: c.certificate.epoch.0,
                digest: c.certificate.digest.to_string(),
                signatures: c
                    .certificate
                    .signatures
                    .iter()
                    .map(|sig| CertificateSignatureView {
                        validator: sig.validator.0,
                        peer_id: s.peers.get(usize::from(sig.validator.0)).map(|p| p.to_string()),
                        signature: hex::encode(&sig.signature.0),
                    })
                    .collect(),
                encoded: hex::encode(c.certificate.encode()),
            });
        }
    }
    voters.sort_unstable();
    voters.dedup();
    v.signers = Some(voters.iter().filter_map(|i| s.peers.get(usize::from(*i)).map(|p| p.to_string())).collect());
    // The threshold signature (mints) and what this node did with it.
    v.signature = Some(None);
    if let Some(sig) = s.store.get_json::<SignedRecord>(Cf::SigningAttempts, crate::records::signed_key(id))? {
        v.status = EventStatus::Signed;
        v.signature = Some(Some(SignatureView { rx: sig.rx.clone(), ry: sig.ry.clone(), z: sig.z.clone() }));
        v.mint = Some((&sig).into());
        v.relay = crate::records::get_relay(&s.store, id)?.map(Into::into);
    }
    if let Some(u) = crate::records::get_unpayable(&s.store, id)? {
        v.status = EventStatus::Unpayable;
        v.unpayable_reason = Some(u.reason);
    }
    if let Ok(Some(r)) = crate::records::release_of(&s.store, id) {
        v.status = if r.status == ReleaseStatus::Confirmed { EventStatus::Paid } else { EventStatus::Releasing };
        let amount = v.amount_sats.flatten().unwrap_or(0);
        v.release = Some(ReleaseView {
            txid: r.txid,
            status: r.status,
            peg_out_fee_sats: r.peg_out_fee_sats,
            paid_sats: amount.saturating_sub(r.peg_out_fee_sats),
            network_fee_sats: r.fee_sats,
            fee_rate_sat_per_vb: r.fee_rate_sat_per_vb,
            confirmations: r.confirmations,
            replaces: r.replaces,
        });
    }
    if let ChainEvent::Rejected(Rejected { refund: Some(att), .. }) = &stored.event
        && let AttestationKind::Refund { amount, script_pubkey } = &att.kind
    {
        let fee = v.release.as_ref().map_or(s.refund_fee, |r| r.peg_out_fee_sats);
        let status = match v.status {
            EventStatus::Paid => RefundStatus::Refunded,
            EventStatus::Unpayable => RefundStatus::Unpayable,
            _ => RefundStatus::Refunding,
        };
        v.refund = Some(RefundView {
            status,
            script_pubkey: hex::encode(script_pubkey),
            deposit_sats: amount.0,
            refund_fee_sats: fee,
            refund_sats: amount.0.saturating_sub(fee),
            digest: att.digest().to_string(),
            certified: certified.is_some(),
            txid: v.release.as_ref().map(|r| r.txid.clone()),
        });
        match status {
            RefundStatus::Refunded => v.status = EventStatus::Refunded,
            RefundStatus::Refunding => v.status = EventStatus::Refunding,
            RefundStatus::Unpayable => {}
        }
    }
    // Reorged out past finality: whatever was done with it, it is never acted on again.
    if stored.reorged.is_some() {
        v.status = EventStatus::Reorged;
    }
    Ok(Some(v))
}

/// The gate that holds a deposit, from its view.
pub(super) fn gate_of(v: &EventView) -> Gate {
    match v.status {
        EventStatus::Observed => Gate::Quorum,
        EventStatus::Certified => Gate::Signing,
        EventStatus::Signed => match v.relay.as_ref().map(|r| r.outcome) {
            Some(RelayOutcome::Mined | RelayOutcome::AlreadyConsumed | RelayOutcome::Reverted) => Gate::Done,
            _ => Gate::Submission,
        },
        EventStatus::Rejected => Gate::Rejected,
        EventStatus::Refunding => Gate::Refund,
        EventStatus::Refunded => Gate::Done,
        EventStatus::Reorged => Gate::Reorged,
        EventStatus::Releasing | EventStatus::Paid | EventStatus::Unpayable => Gate::Depth,
    }
}
