//! Durable state of btcfi-node in RocksDB.
//!
//! One database per node, one column family per record kind ([`Cf`]), a schema version
//! in `meta`. Every state transition is one [`Batch`] committed atomically with a
//! synced write-ahead log: a node killed at any instant (SIGKILL, power loss) reopens
//! with either all of a transition or none of it.
//!
//! The store knows keys and bytes, not the meaning of records: each owner (chain
//! adapters, consensus, signer) encodes its own records, and [`Batch::put_json`] /
//! [`Store::get_json`] serve those that use serde JSON.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

mod error;

pub use error::StoreError;

use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};
use serde::{Serialize, de::DeserializeOwned};
use std::path::{Path, PathBuf};

/// The schema this build reads and writes. Bump on any incompatible change of a key or
/// record layout, with a migration in [`Store::open`].
pub const SCHEMA_VERSION: u32 = 1;
const SCHEMA_KEY: &[u8] = b"schema_version";

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Column families, one per record kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cf {
    /// Schema version and node metadata.
    Meta,
    /// Chain checkpoints, by chain id.
    Cursors,
    /// Chain events as the adapters reported them (observed, rejected, reorged), by
    /// event id: written with the adapter's checkpoint, so none is lost on a crash.
    Events,
    /// This validator's own vote for each event it observed, by event id.
    Observations,
    /// Signed votes, by (event id, validator).
    Votes,
    /// Certified attestations, by event id.
    Attestations,
    /// Certificates received from peers for events this node has not observed yet.
    NetworkCertificates,
    /// Equivocation and signing-culprit evidence.
    Evidence,
    /// The signing side: "commitment issued" records and signing rounds, signed mints
    /// and batches, and relay records (the node's `records` module has the keys).
    SigningAttempts,
    /// Bitcoin releases (peg-out transactions) and their state.
    Releases,
    /// Key material (encrypted at rest by its owner) and public key packages.
    Keys,
}

impl Cf {
    pub const ALL: [Cf; 11] = [
        Cf::Meta,
        Cf::Cursors,
        Cf::Events,
        Cf::Observations,
        Cf::Votes,
        Cf::Attestations,
        Cf::NetworkCertificates,
        Cf::Evidence,
        Cf::SigningAttempts,
        Cf::Releases,
        Cf::Keys,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Cursors => "cursors",
            Cf::Events => "events",
            Cf::Observations => "observations",
            Cf::Votes => "votes",
            Cf::Attestations => "attestations",
            Cf::NetworkCertificates => "network_certificates",
            Cf::Evidence => "evidence",
            Cf::SigningAttempts => "signing_attempts",
            Cf::Releases => "releases",
            Cf::Keys => "keys",
        }
    }
}

/// Column families earlier builds created and this one no longer uses: dropped when a
/// database that has them is opened (RocksDB refuses to open a database without naming
/// every family it holds).
const RETIRED: [&str; 1] = [
    // The vault's UTXO set: never written; the chain is asked instead.
    "vault_utxos",
];

/// The node's database.
#[derive(Debug)]
pub struct Store {
    db: DB,
    path: PathBuf,
}

/// One atomic state transition: puts and deletes across column families.
#[derive(Default)]
pub struct Batch {
    inner: WriteBatch,
    ops: Vec<(Cf, Vec<u8>, Option<Vec<u8>>)>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("ops", &self.ops.len()).finish()
    }
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn put(&mut self, cf: Cf, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut Self {
        self.ops.push((cf, key.as_ref().to_vec(), Some(value.as_ref().to_vec())));
        self
    }
    pub fn put_json<T: Serialize>(
        &mut self,
        cf: Cf,
        key: impl AsRef<[u8]>,
        value: &T,
    ) -> Result<&mut Self, StoreError> {
        let bytes =
            serde_json::to_vec(value).map_err(|e| StoreError::Encode { cf: cf.name(), detail: e.to_string() })?;
        Ok(self.put(cf, key, bytes))
    }
    pub fn delete(&mut self, cf: Cf, key: impl AsRef<[u8]>) -> &mut Self {
        self.ops.push((cf, key.as_ref().to_vec(), None));
        self
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path`. Refuses a database written
    /// by an incompatible schema.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Retired families the database still holds are opened, then dropped.
        let existing = DB::list_cf(&opts, &path).unwrap_or_default();
        let retired: Vec<&str> = RETIRED.into_iter().filter(|r| existing.iter().any(|e| e == r)).collect();
        let cfs = Cf::ALL
            .iter()
            .map(|cf| cf.name())
            .chain(retired.iter().copied())
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let mut db = DB::open_cf_descriptors(&opts, &path, cfs).map_err(|e| StoreError::open(&path, e))?;
        for name in retired {
            db.drop_cf(name).map_err(|e| StoreError::open(&path, e))?;
        }
        let store = Self { db, path };
        match store.get(Cf::Meta, SCHEMA_KEY)? {
            None => {
                let mut b = Batch::new();
                b.put(Cf::Meta, SCHEMA_KEY, SCHEMA_VERSION.to_be_bytes());
                store.commit(b)?;
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_slice()).map(u32::from_be_bytes).map_err(|_| {
                    StoreError::Corrupt { cf: "meta", detail: format!("schema version is {} bytes", v.len()) }
                })?;
                if found != SCHEMA_VERSION {
                    return Err(StoreError::SchemaMismatch {
                        found,
                        expected: SCHEMA_VERSION,
                        path: store.path.clone(),
                    });
                }
            }
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, cf: Cf) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db.cf_handle(cf.name()).ok_or(StoreError::MissingColumnFamily(cf.name()))
    }

    /// Commits `batch` atomically, with the WAL synced before returning.
    pub fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let Batch { mut inner, ops } = batch;
        for (cf, key, value) in &ops {
            let h = self.cf(*cf)?;
            match value {
                Some(v) => inner.put_cf(h, key, v),
                None => inner.delete_cf(h, key),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(inner, &wo).map_err(|e| StoreError::Write(e.to_string()))
    }

    pub fn get(&self, cf: Cf, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get_cf(self.cf(cf)?, key).map_err(|e| StoreError::Read(e.to_string()))
    }

    pub fn get_json<T: DeserializeOwned>(&self, cf: Cf, key: impl AsRef<[u8]>) -> Result<Option<T>, StoreError> {
        match self.get(cf, key)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| StoreError::Corrupt { cf: cf.name(), detail: e.to_string() }),
        }
    }

    /// All entries of `cf` whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, cf: Cf, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(self.cf(cf)?, IteratorMode::From(prefix, Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(|e| StoreError::Read(e.to_string()))?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Writes a consistent point-in-time copy of the database to `dir` (which must
    /// not exist), openable with [`Store::open`]. Cheap: hard links where possible.
    pub fn checkpoint(&self, dir: impl AsRef<Path>) -> Result<(), StoreError> {
        let dir = dir.as_ref();
        if dir.exists() {
            return Err(StoreError::Backup(format!("{} already exists; choose a new path", dir.display())));
        }
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(|e| StoreError::Backup(e.to_string()))?;
        self.db.flush_wal(true).map_err(|e| StoreError::Backup(e.to_string()))?;
        cp.create_checkpoint(dir).map_err(|e| StoreError::Backup(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopen_keeps_data_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let mut b = Batch::new();
            b.put(Cf::Cursors, b"btc", b"cursor-1").put(Cf::Votes, b"e1/0", b"v").put(Cf::Votes, b"e1/1", b"w");
            b.put(Cf::Votes, b"e2/0", b"x");
            b.put_json(Cf::Attestations, b"e1", &vec![1u8, 2, 3]).unwrap();
            s.commit(b).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.get(Cf::Cursors, b"btc").unwrap().as_deref(), Some(&b"cursor-1"[..]));
        assert_eq!(s.get_json::<Vec<u8>>(Cf::Attestations, b"e1").unwrap(), Some(vec![1, 2, 3]));
        let e1 = s.scan_prefix(Cf::Votes, b"e1/").unwrap();
        assert_eq!(e1.len(), 2);
        assert_eq!(s.get(Cf::Cursors, b"eth").unwrap(), None);
        let mut del = Batch::new();
        del.delete(Cf::Votes, b"e1/0");
        s.commit(del).unwrap();
        assert_eq!(s.scan_prefix(Cf::Votes, b"e1/").unwrap().len(), 1);
    }

    #[test]
    fn a_database_holding_a_retired_family_opens_and_loses_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut opts = Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let names = Cf::ALL.iter().map(|c| c.name()).chain(["vault_utxos"]);
            let db = DB::open_cf(&opts, dir.path(), names).unwrap();
            db.put_cf(db.cf_handle("vault_utxos").unwrap(), b"k", b"v").unwrap();
            db.put_cf(db.cf_handle("events").unwrap(), b"e", b"1").unwrap();
        }
        let store = Store::open(dir.path()).expect("opens");
        assert_eq!(store.get(Cf::Events, b"e").unwrap().as_deref(), Some(&b"1"[..]));
        drop(store);
        let left = DB::list_cf(&Options::default(), dir.path()).unwrap();
        assert!(!left.iter().any(|n| n == "vault_utxos"), "dropped: {left:?}");
        Store::open(dir.path()).expect("opens again");
    }

    #[test]
    fn another_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let mut b = Batch::new();
            b.put(Cf::Meta, SCHEMA_KEY, 99u32.to_be_bytes());
            s.commit(b).unwrap();
        }
        match Store::open(dir.path()) {
            Err(StoreError::SchemaMismatch { found: 99, expected: SCHEMA_VERSION, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn corrupt_json_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut b = Batch::new();
        b.put(Cf::Releases, b"r", b"{not json");
        s.commit(b).unwrap();
        assert!(matches!(s.get_json::<u64>(Cf::Releases, b"r"), Err(StoreError::Corrupt { cf: "releases", .. })));
    }

    #[test]
    fn checkpoint_is_a_restorable_copy() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("db")).unwrap();
        let mut b = Batch::new();
        b.put(Cf::Keys, b"k", b"v");
        s.commit(b).unwrap();
        s.checkpoint(dir.path().join("backup")).unwrap();
        let mut later = Batch::new();
        later.put(Cf::Keys, b"k2", b"after");
        s.commit(later).unwrap();
        assert!(s.checkpoint(dir.path().join("backup")).is_err(), "never overwrites a backup");
        let restored = Store::open(dir.path().join("backup")).unwrap();
        assert_eq!(restored.get(Cf::Keys, b"k").unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(restored.get(Cf::Keys, b"k2").unwrap(), None);
    }
}
