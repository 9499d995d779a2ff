//! The epoch's threshold keys at rest: FROST key packages sealed under the operator's
//! passphrase, public key packages in the clear, all in the store's `keys` column family.
//!
//! Sealing: Argon2id (64 MiB, 3 passes) derives a 256-bit key from the passphrase and a
//! random 16-byte salt; XChaCha20-Poly1305 with a random 24-byte nonce encrypts the
//! serialized key package, with the record's kind and epoch as associated data. A wrong
//! passphrase (or a tampered record) fails authentication: [`KeyError::WrongPassphrase`],
//! never a corrupted share.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use argon2::{Algorithm, Argon2, Params, Version};
use btcfi_signer::{
    btc,
    evm::{self},
    frost_secp256k1 as fe, frost_secp256k1_tr as ft,
};
use btcfi_store::StoreError;
use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Environment variable holding the passphrase (or use [`PASSPHRASE_FILE_ENV`]).
pub const PASSPHRASE_ENV: &str = "BTCFI_KEY_PASSPHRASE";
/// Environment variable naming a file whose first line is the passphrase.
pub const PASSPHRASE_FILE_ENV: &str = "BTCFI_KEY_PASSPHRASE_FILE";
/// Shortest passphrase accepted when keys are created.
pub const MIN_PASSPHRASE_LEN: usize = 12;

/// Which group key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// `frost-secp256k1`: attestations verified by the bridge contracts.
    Evm,
    /// `frost-secp256k1-tr`: the Taproot vault.
    Btc,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Evm => "evm",
            KeyKind::Btc => "btc",
        }
    }
    pub fn byte(self) -> u8 {
        match self {
            KeyKind::Evm => 1,
            KeyKind::Btc => 2,
        }
    }
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(KeyKind::Evm),
            2 => Some(KeyKind::Btc),
            _ => None,
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a key could not be sealed, stored or opened.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no passphrase: set keys.passphrase_file (or {PASSPHRASE_FILE_ENV}) to a file holding it, or {PASSPHRASE_ENV} (the one used at `btcfi-node dkg`)"
    )]
    NoPassphrase,
    #[error("the passphrase is shorter than {MIN_PASSPHRASE_LEN} characters")]
    WeakPassphrase,
    #[error(transparent)]
    SecretFile(#[from] SecretFileError),
    #[error("wrong passphrase for the {kind} key of epoch {epoch} (or its record was altered): the key stays sealed")]
    WrongPassphrase { kind: KeyKind, epoch: u64 },
    #[error("no {kind} key for epoch {epoch}: run `btcfi-node dkg --home HOME` with the other validators first")]
    Missing { kind: KeyKind, epoch: u64 },
    #[error("the stored {kind} key of epoch {epoch} is unreadable: {detail}")]
    Corrupt { kind: KeyKind, epoch: u64, detail: String },
    #[error("a {kind} key for epoch {epoch} already exists; refusing to overwrite it")]
    Exists { kind: KeyKind, epoch: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a secret file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretFileError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is readable or writable by other users (mode {mode:o}): `chmod 600 {path}`")]
    Exposed { path: String, mode: u32 },
    #[error("{path} is empty")]
    Empty { path: String },
}

/// The secret held in `path` (its first line, without surrounding whitespace). The file
/// must not be readable or writable by group or others.
pub fn read_secret_file(path: &std::path::Path) -> Result<String, SecretFileError> {
    use std::io::Read;
    let shown = path.display().to_string();
    let read = |source| SecretFileError::Read { path: shown.clone(), source };
    // One handle for the mode check and the read: the file cannot be swapped between.
    let mut file = std::fs::File::open(path).map_err(read)?;
    let meta = file.metadata().map_err(read)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretFileError::Exposed { path: shown, mode });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read)?;
    // The first line, as written: only its line ending is dropped (a passphrase may
    // start or end with spaces).
    let secret = text.lines().next().unwrap_or_default().to_owned();
    if secret.is_empty() {
        return Err(SecretFileError::Empty { path: shown });
    }
    Ok(secret)
}

/// The passphrase: [`PASSPHRASE_ENV`], else the file named by [`PASSPHRASE_FILE_ENV`],
/// else the config's `keys.passphrase_file` (files must be private to the node's user).
pub fn passphrase(configured_file: Option<&std::path::Path>) -> Result<String, KeyError> {
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        return Ok(p);
    }
    if let Ok(path) = std::env::var(PASSPHRASE_FILE_ENV) {
        return Ok(read_secret_file(std::path::Path::new(&path))?);
    }
    if let Some(path) = configured_file {
        return Ok(read_secret_file(path)?);
    }
    Err(KeyError::NoPassphrase)
}

/// A sealed secret.
#[derive(Clone, Serialize, Deserialize)]
pub struct Sealed {
    #[serde(with = "hex::serde")]
    salt: Vec<u8>,
    #[serde(with = "hex::serde")]
    nonce: Vec<u8>,
    #[serde(with = "hex::serde")]
    ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed").field("len", &self.ciphertext.len()).finish_non_exhaustive()
    }
}

fn derive_key(passphrase: &str, salt: &[u8]) -> Result<[u8; 32], String> {
    let params = Params::new(64 * 1024, 3, 1, Some(32)).map_err(|e| e.to_string())?;
    let mut key = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.as_bytes(), salt, &mut key)
        .map_err(|e| e.to_string())?;
    Ok(key)
}

fn aad(kind: KeyKind, epoch: u64) -> Vec<u8> {
    let mut a = b"BTCFI-KEY-v1".to_vec();
    a.push(kind.byte());
    a.extend_from_slice(&epoch.to_be_bytes());
    a
}

/// Seals `secret` under `passphrase`, bound to `(kind, epoch)`.
pub fn seal(passphrase: &str, kind: KeyKind, epoch: u64, secret: &[u8]) -> Result<Sealed, KeyError> {
    let mut salt = vec![0u8; 16];
    let mut nonce = vec![0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let corrupt = |detail: String| KeyError::Corrupt { kind, epoch, detail };
    let key = derive_key(passphrase, &salt).map_err(corrupt)?;
    let cipher = XChaCha20Poly1305::new((&key).into());
    let ciphertext = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: secret, aad: &aad(kind, epoch) })
        .map_err(|e| KeyError::Corrupt { kind, epoch, detail: e.to_string() })?;
    Ok(Sealed { salt, nonce, ciphertext })
}

/// Opens what [`seal`] made; a wrong passphrase is [`KeyError::WrongPassphrase`].
pub fn open(passphrase: &str, kind: KeyKind, epoch: u64, sealed: &Sealed) -> Result<Vec<u8>, KeyError> {
    if sealed.nonce.len() != 24 || sealed.salt.len() < 8 {
        return Err(KeyError::Corrupt { kind, epoch, detail: "bad salt or nonce length".into() });
    }
    let key = derive_key(passphrase, &sealed.salt).map_err(|detail| KeyError::Corrupt { kind, epoch, detail })?;
    let cipher = XChaCha20Poly1305::new((&key).into());
    cipher
        .decrypt(XNonce::from_slice(&sealed.nonce), Payload { msg: &sealed.ciphertext, aad: &aad(kind, epoch) })
        .map_err(|_| KeyError::WrongPassphrase { kind, epoch })
}

/// One stored group key: the sealed key package and the public parts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredKey {
    pub kind: KeyKind,
    pub epoch: u64,
    /// The group verifying key, hex (SEC1 compressed).
    pub group_key: String,
    /// `evm`: the affine coordinates the bridge contract's `setInitialKey` takes.
    #[serde(default)]
    pub evm_xy: Option<(String, String)>,
    /// `btc`: the vault's P2TR address on the configured network.
    #[serde(default)]
    pub vault_address: Option<String>,
    /// FROST serialization of the public key package.
    #[serde(with = "hex::serde")]
    pub public_key_package: Vec<u8>,
    pub sealed_key_package: Sealed,
    pub created_ms: u64,
}

/// The test signature that made a key usable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyCheck {
    /// The test message (hex).
    pub message: String,
    /// The verified group signature (hex).
    pub signature: String,
    pub verified_ms: u64,
}

/// The message every validator signs with a fresh key before using it.
pub fn test_message(kind: KeyKind, epoch: u64, group_key: &str) -> Vec<u8> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"BTCFI-KEY-CHECK-v1");
    h.update([kind.byte()]);
    h.update(epoch.to_be_bytes());
    h.update(group_key.as_bytes());
    h.finalize().to_vec()
}

// Stored and read back by `crate::records::keys`.

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The `evm` record for a DKG result.
pub fn evm_record(
    passphrase: &str,
    epoch: u64,
    key_package: &fe::keys::KeyPackage,
    public: &fe::keys::PublicKeyPackage,
) -> Result<StoredKey, KeyError> {
    let kind = KeyKind::Evm;
    let corrupt = |detail: String| KeyError::Corrupt { kind, epoch, detail };
    let secret = key_package.serialize().map_err(|e| corrupt(e.to_string()))?;
    let group_key = hex::encode(public.verifying_key().serialize().map_err(|e| corrupt(e.to_string()))?);
    let (x, y) = evm::group_key_xy(public.verifying_key()).map_err(|e| corrupt(e.to_string()))?;
    Ok(StoredKey {
        kind,
        epoch,
        group_key,
        evm_xy: Some((format!("{x:#066x}"), format!("{y:#066x}"))),
        vault_address: None,
        public_key_package: public.serialize().map_err(|e| corrupt(e.to_string()))?,
        sealed_key_package: seal(passphrase, kind, epoch, &secret)?,
        created_ms: now_ms(),
    })
}

/// The `btc` record for a DKG result.
pub fn btc_record(
    passphrase: &str,
    epoch: u64,
    network: bitcoin::Network,
    key_package: &ft::keys::KeyPackage,
    public: &ft::keys::PublicKeyPackage,
) -> Result<StoredKey, KeyError> {
    let kind = KeyKind::Btc;
    let corrupt = |detail: String| KeyError::Corrupt { kind, epoch, detail };
    let secret = key_package.serialize().map_err(|e| corrupt(e.to_string()))?;
    let group_key = hex::encode(public.verifying_key().serialize().map_err(|e| corrupt(e.to_string()))?);
    let address = btc::vault_address(public.verifying_key(), network).map_err(|e| corrupt(e.to_string()))?;
    Ok(StoredKey {
        kind,
        epoch,
        group_key,
        evm_xy: None,
        vault_address: Some(address.to_string()),
        public_key_package: public.serialize().map_err(|e| corrupt(e.to_string()))?,
        sealed_key_package: seal(passphrase, kind, epoch, &secret)?,
        created_ms: now_ms(),
    })
}

/// An opened key: the key package and the public key package of one ciphersuite.
#[derive(Debug, Clone)]
pub struct Opened<C: frost_core::Ciphersuite> {
    pub key_package: frost_core::keys::KeyPackage<C>,
    pub public_key_package: frost_core::keys::PublicKeyPackage<C>,
    pub record: StoredKey,
}

/// Opens the stored key `record` with `passphrase`.
pub fn open_key<C: frost_core::Ciphersuite>(record: StoredKey, passphrase: &str) -> Result<Opened<C>, KeyError> {
    let (kind, epoch) = (record.kind, record.epoch);
    let secret = open(passphrase, kind, epoch, &record.sealed_key_package)?;
    let corrupt = |detail: String| KeyError::Corrupt { kind, epoch, detail };
    let key_package = frost_core::keys::KeyPackage::<C>::deserialize(&secret).map_err(|e| corrupt(e.to_string()))?;
    let public_key_package = frost_core::keys::PublicKeyPackage::<C>::deserialize(&record.public_key_package)
        .map_err(|e| corrupt(e.to_string()))?;
    if key_package.verifying_key() != public_key_package.verifying_key() {
        return Err(corrupt("key package and public key package disagree".into()));
    }
    Ok(Opened { key_package, public_key_package, record })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_passphrase_is_a_clear_error_never_a_share() {
        let sealed = seal("correct horse battery", KeyKind::Btc, 3, b"share bytes").unwrap();
        assert_eq!(open("correct horse battery", KeyKind::Btc, 3, &sealed).unwrap(), b"share bytes");
        let err = open("correct horse batterY", KeyKind::Btc, 3, &sealed).unwrap_err();
        assert!(matches!(err, KeyError::WrongPassphrase { kind: KeyKind::Btc, epoch: 3 }), "{err}");
        assert!(err.to_string().contains("wrong passphrase"));
        // Bound to its kind and epoch: moving the record elsewhere does not open it.
        assert!(open("correct horse battery", KeyKind::Evm, 3, &sealed).is_err());
        assert!(open("correct horse battery", KeyKind::Btc, 4, &sealed).is_err());
        // A flipped ciphertext bit is refused, not decrypted to garbage.
        let mut bad = sealed.clone();
        bad.ciphertext[0] ^= 1;
        assert!(open("correct horse battery", KeyKind::Btc, 3, &bad).is_err());
    }
}
