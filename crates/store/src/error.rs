use std::path::PathBuf;
use thiserror::Error;

/// Errors of the store.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("cannot open the database at {path}: {detail} (is another btcfi-node using this --home?)")]
    Open { path: PathBuf, detail: String },
    #[error(
        "database at {path} has schema version {found}, this build expects {expected}: run the matching btcfi-node version or restore a backup"
    )]
    SchemaMismatch { found: u32, expected: u32, path: PathBuf },
    #[error("column family {0} is missing")]
    MissingColumnFamily(&'static str),
    #[error("write failed: {0}")]
    Write(String),
    #[error("read failed: {0}")]
    Read(String),
    #[error("record in {cf} does not decode: {detail}")]
    Corrupt { cf: &'static str, detail: String },
    #[error("record for {cf} does not encode: {detail}")]
    Encode { cf: &'static str, detail: String },
    #[error("backup failed: {0}")]
    Backup(String),
}

impl StoreError {
    pub(crate) fn open(path: &std::path::Path, e: rocksdb::Error) -> Self {
        StoreError::Open { path: path.to_path_buf(), detail: e.to_string() }
    }
}
