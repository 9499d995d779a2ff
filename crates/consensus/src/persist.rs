//! What the core asks the node to make durable, and the state it is restored from.
//!
//! Every call of [`Consensus::handle`](crate::Consensus::handle) that changes durable
//! state returns exactly one [`Action::Persist`](crate::Action::Persist), **first** in
//! the returned list. The node writes its [`StateDelta`] in one atomic RocksDB
//! `WriteBatch` and only then executes the remaining actions. That ordering is what
//! makes a crash at any instant safe: a vote is on disk before it can leave the node,
//! so after a restart [`Consensus::restore`](crate::Consensus::restore) knows every
//! digest this validator ever vouched for and refuses a different one.
//!
//! [`PersistedState::apply`] is the reference semantics of a delta; the store must
//! behave the same. Each [`Change`] names its suggested column family and key.

use crate::{Certificate, Equivocation, Millis, ValidatorIndex, Vote};
use btcfi_types::{Attestation, EventId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// This validator's own observation and the vote it signed for it. Written before the
/// vote is broadcast; never overwritten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnVoteRecord {
    pub attestation: Attestation,
    pub vote: Vote,
    pub voted_at: Millis,
}

/// A peer's first valid vote for an event (later votes with another digest go to
/// evidence instead).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerVoteRecord {
    pub vote: Vote,
    pub received_at: Millis,
}

/// An attestation certified by this node: own observation plus q+ matching votes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertifiedRecord {
    pub attestation: Attestation,
    pub certificate: Certificate,
    pub certified_at: Millis,
}

/// A verified certificate received from peers for an event this node has not certified
/// (either not observed yet, "certified by the network, awaiting own observation", or
/// observed with another digest, which raised an alert).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkCertificateRecord {
    pub certificate: Certificate,
    pub received_at: Millis,
}

/// One durable change. The suggested layout uses the store crate's column families
/// (`observations`, `votes`, `evidence`, `attestations`) plus one it does not list yet,
/// `network_certificates`. Values: the record, serde-encoded (the store's JSON helpers),
/// or [`Certificate::encode`] for certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Put `observations / event.to_bytes()`. Never overwrites an existing row: this is
    /// the record that forbids a second digest.
    OwnVote(OwnVoteRecord),
    /// Put `votes / event.to_bytes() ++ validator u16 BE`.
    PeerVote(PeerVoteRecord),
    /// Put `evidence / event.to_bytes() ++ validator u16 BE` (prefix the key if the
    /// column family is shared with the signer's culprit records).
    Evidence(Equivocation),
    /// Put `attestations / event.to_bytes()`.
    Certified(CertifiedRecord),
    /// Put `network_certificates / event.to_bytes()`.
    NetworkCertificate(NetworkCertificateRecord),
    /// Delete every `votes` row with the prefix `event.to_bytes()`: the votes for an
    /// event this node never observed expired.
    ForgetEvent { event: EventId },
}

/// Everything one input changed, to be written atomically before any other action runs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StateDelta {
    pub changes: Vec<Change>,
}

/// The durable state of a core, as read back from the store at start.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PersistedState {
    pub own_votes: BTreeMap<EventId, OwnVoteRecord>,
    pub peer_votes: BTreeMap<(EventId, ValidatorIndex), PeerVoteRecord>,
    pub evidence: BTreeMap<(EventId, ValidatorIndex), Equivocation>,
    pub certified: BTreeMap<EventId, CertifiedRecord>,
    pub network_certificates: BTreeMap<EventId, NetworkCertificateRecord>,
}

impl PersistedState {
    /// Applies a delta, change by change, exactly as the store must.
    pub fn apply(&mut self, delta: &StateDelta) {
        for change in &delta.changes {
            match change {
                Change::OwnVote(r) => {
                    self.own_votes.entry(r.vote.event).or_insert_with(|| r.clone());
                }
                Change::PeerVote(r) => {
                    self.peer_votes.insert((r.vote.event, r.vote.validator), r.clone());
                }
                Change::Evidence(e) => {
                    self.evidence.insert((e.event(), e.validator()), e.clone());
                }
                Change::Certified(r) => {
                    self.certified.insert(r.certificate.event, r.clone());
                }
                Change::NetworkCertificate(r) => {
                    self.network_certificates.insert(r.certificate.event, r.clone());
                }
                Change::ForgetEvent { event } => {
                    let range = (*event, ValidatorIndex(0))..=(*event, ValidatorIndex(u16::MAX));
                    let doomed: Vec<_> = self.peer_votes.range(range).map(|(k, _)| *k).collect();
                    for k in doomed {
                        self.peer_votes.remove(&k);
                    }
                }
            }
        }
    }
}
