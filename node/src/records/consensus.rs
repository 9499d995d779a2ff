//! The consensus core's durable state: own votes (`observations`), peers' votes
//! (`votes`, by event and validator), equivocation evidence (`evidence`, `eq/`),
//! certified attestations (`attestations`) and peers' certificates for events not
//! seen here (`network_certificates`), each keyed by event id. Written as the core's
//! deltas, one batch per transition; read back whole at start.

use super::all;
use btcfi_consensus::{
    PersistedState, StateDelta, ValidatorIndex,
    persist::{CertifiedRecord, Change, NetworkCertificateRecord, OwnVoteRecord, PeerVoteRecord},
};
use btcfi_store::{Batch, Cf, Store, StoreError};
use btcfi_types::EventId;

fn vote_key(event: &EventId, v: ValidatorIndex) -> Vec<u8> {
    let mut k = event.to_bytes().to_vec();
    k.extend_from_slice(&v.0.to_be_bytes());
    k
}

/// Adds a consensus delta to `batch`, following [`PersistedState::apply`].
pub fn add_delta(store: &Store, batch: &mut Batch, delta: &StateDelta) -> Result<(), StoreError> {
    for change in &delta.changes {
        match change {
            Change::OwnVote(r) => {
                let key = r.vote.event.to_bytes();
                // Never overwrite: the first own vote is what forbids a second digest.
                if store.get(Cf::Observations, key)?.is_none() {
                    batch.put_json(Cf::Observations, key, r)?;
                }
            }
            Change::PeerVote(r) => {
                batch.put_json(Cf::Votes, vote_key(&r.vote.event, r.vote.validator), r)?;
            }
            Change::Evidence(e) => {
                let mut key = b"eq/".to_vec();
                key.extend(vote_key(&e.event(), e.validator()));
                batch.put_json(Cf::Evidence, key, e)?;
            }
            Change::Certified(r) => {
                batch.put_json(Cf::Attestations, r.certificate.event.to_bytes(), r)?;
            }
            Change::NetworkCertificate(r) => {
                batch.put_json(Cf::NetworkCertificates, r.certificate.event.to_bytes(), r)?;
            }
            Change::ForgetEvent { event } => {
                for (k, _) in store.scan_prefix(Cf::Votes, &event.to_bytes())? {
                    batch.delete(Cf::Votes, k);
                }
            }
        }
    }
    Ok(())
}

/// Reads back everything the consensus core persisted.
pub fn load_consensus(store: &Store) -> Result<PersistedState, StoreError> {
    let mut s = PersistedState::default();
    for r in all::<OwnVoteRecord>(store, Cf::Observations, b"")? {
        s.own_votes.insert(r.vote.event, r);
    }
    for r in all::<PeerVoteRecord>(store, Cf::Votes, b"")? {
        s.peer_votes.insert((r.vote.event, r.vote.validator), r);
    }
    for e in all::<btcfi_consensus::Equivocation>(store, Cf::Evidence, b"eq/")? {
        s.evidence.insert((e.event(), e.validator()), e);
    }
    for r in all::<CertifiedRecord>(store, Cf::Attestations, b"")? {
        s.certified.insert(r.certificate.event, r);
    }
    for r in all::<NetworkCertificateRecord>(store, Cf::NetworkCertificates, b"")? {
        s.network_certificates.insert(r.certificate.event, r);
    }
    Ok(s)
}

pub fn get_certified(store: &Store, id: &EventId) -> Result<Option<CertifiedRecord>, StoreError> {
    store.get_json(Cf::Attestations, id.to_bytes())
}

pub fn all_certified(store: &Store) -> Result<Vec<CertifiedRecord>, StoreError> {
    all(store, Cf::Attestations, b"")
}
