//! The validator's libp2p ed25519 identity (`HOME/identity.key`): it authenticates the
//! node on the p2p network and signs its votes.

use eyre::{WrapErr, bail};
use libp2p::identity::Keypair;
use std::path::{Path, PathBuf};

pub fn key_path(home: &Path) -> PathBuf {
    home.join("identity.key")
}

/// Creates a new identity at `path`; refuses to overwrite one (that would change the
/// validator's peer id and lock it out of its own validator set).
pub fn create(path: &Path) -> eyre::Result<Keypair> {
    if path.exists() {
        bail!("{} already exists; refusing to replace this validator's identity", path.display());
    }
    let kp = Keypair::generate_ed25519();
    let bytes = kp.to_protobuf_encoding().wrap_err("encoding the identity key")?;
    write_secret(path, &bytes)?;
    Ok(kp)
}

pub fn load(path: &Path) -> eyre::Result<Keypair> {
    let bytes = std::fs::read(path)
        .wrap_err_with(|| format!("reading {} (create it with `btcfi-node init`)", path.display()))?;
    let kp = Keypair::from_protobuf_encoding(&bytes)
        .wrap_err_with(|| format!("{} is not a libp2p identity key", path.display()))?;
    if kp.clone().try_into_ed25519().is_err() {
        bail!("{}: the identity key must be ed25519", path.display());
    }
    Ok(kp)
}

fn write_secret(path: &Path, bytes: &[u8]) -> eyre::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).wrap_err_with(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}
