//! Key records, in `keys`: each epoch's sealed key share and public key package
//! (`<kind>/<epoch:020>`) and the test signature that made it usable (`…/check`).

use crate::keys::{KeyCheck, KeyError, KeyKind, StoredKey};
use btcfi_store::{Batch, Cf, Store};

fn record_key(kind: KeyKind, epoch: u64) -> Vec<u8> {
    format!("{kind}/{epoch:020}").into_bytes()
}

fn check_key(kind: KeyKind, epoch: u64) -> Vec<u8> {
    format!("{kind}/{epoch:020}/check").into_bytes()
}

/// The record of `(kind, epoch)`, if any.
pub fn load(store: &Store, kind: KeyKind, epoch: u64) -> Result<Option<StoredKey>, KeyError> {
    Ok(store.get_json(Cf::Keys, record_key(kind, epoch))?)
}

/// Whether the key passed its test signature.
pub fn check(store: &Store, kind: KeyKind, epoch: u64) -> Result<Option<KeyCheck>, KeyError> {
    Ok(store.get_json(Cf::Keys, check_key(kind, epoch))?)
}

/// Marks the key usable.
pub fn mark_usable(store: &Store, kind: KeyKind, epoch: u64, check: &KeyCheck) -> Result<(), KeyError> {
    let mut b = Batch::new();
    b.put_json(Cf::Keys, check_key(kind, epoch), check)?;
    store.commit(b)?;
    Ok(())
}

/// Stores both keys of an epoch in one batch; refuses to overwrite.
pub fn store_all(store: &Store, keys: &[StoredKey]) -> Result<(), KeyError> {
    let mut b = Batch::new();
    for k in keys {
        if store.get(Cf::Keys, record_key(k.kind, k.epoch))?.is_some() {
            return Err(KeyError::Exists { kind: k.kind, epoch: k.epoch });
        }
        b.put_json(Cf::Keys, record_key(k.kind, k.epoch), k)?;
    }
    store.commit(b)?;
    Ok(())
}
