//! What the chain tasks write: each chain's checkpoint (`cursors`, by chain id, u64
//! BE) and the events its adapter reported (`events`, by event id), in one batch per
//! poll, so that none is lost on a crash.

use super::all;
use btcfi_chain_adapters::{BlockRef, ChainEvent, Checkpoint};
use btcfi_store::{Batch, Cf, Store, StoreError};
use btcfi_types::{ChainId, EventId};
use serde::{Deserialize, Serialize};

/// A chain event as stored with its adapter's checkpoint; `reorged` is set when its
/// block later left the canonical chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub event: ChainEvent,
    pub reorged: Option<BlockRef>,
}

/// Chain events the adapters reported, as stored with their checkpoints.
pub fn load_events(store: &Store) -> Result<Vec<StoredEvent>, StoreError> {
    all(store, Cf::Events, b"")
}

pub fn get_event(store: &Store, id: &EventId) -> Result<Option<StoredEvent>, StoreError> {
    store.get_json(Cf::Events, id.to_bytes())
}

/// Stores `rec` under its event's id.
pub fn put_event(batch: &mut Batch, rec: &StoredEvent) -> Result<(), StoreError> {
    batch.put_json(Cf::Events, rec.event.id().to_bytes(), rec)?;
    Ok(())
}

fn cursor_key(chain: ChainId) -> [u8; 8] {
    chain.0.to_be_bytes()
}

/// The checkpoint `chain`'s adapter resumes from, if it has one.
pub fn load_checkpoint(store: &Store, chain: ChainId) -> Result<Option<Checkpoint>, StoreError> {
    store.get_json(Cf::Cursors, cursor_key(chain))
}

/// Stores `chain`'s checkpoint.
pub fn put_checkpoint(batch: &mut Batch, chain: ChainId, cp: &Checkpoint) -> Result<(), StoreError> {
    batch.put_json(Cf::Cursors, cursor_key(chain), cp)?;
    Ok(())
}
