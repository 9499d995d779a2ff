//! The bridge contracts for tests: compiled artifacts (built on demand by
//! `scripts/contracts/build.sh`) and a deployer.

use crate::process::repo_root;
use alloy::{
    network::TransactionBuilder,
    primitives::Address,
    providers::{Provider, ProviderBuilder},
    rpc::types::TransactionRequest,
    signers::local::PrivateKeySigner,
    sol_types::SolValue,
};
use btcfi_chain_adapters::evm::bindings::IBridge;
use eyre::{WrapErr, bail, eyre};
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, PoisonError},
    time::SystemTime,
};

/// Artifacts that `build.sh` writes to `contracts/out/`.
const ARTIFACTS: [&str; 4] = ["Bridge.bin", "Bridge.abi", "WrappedBTC.bin", "WrappedBTC.abi"];

/// Serializes builds within one test process (build.sh itself is safe across processes).
static BUILD: Mutex<()> = Mutex::new(());

/// A freshly deployed bridge and the wrapped BTC token its constructor created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deployed {
    pub bridge: Address,
    pub token: Address,
}

/// `contracts/out` of the repository, compiled first (`scripts/contracts/build.sh`) if an
/// artifact is missing or older than a Solidity source or the build script.
///
/// # Panics
/// If the contracts do not compile (test infrastructure: the message says why); use
/// [`try_artifacts_dir`] to handle that instead.
pub fn artifacts_dir() -> PathBuf {
    match try_artifacts_dir() {
        Ok(dir) => dir,
        Err(e) => panic!("bridge contract artifacts unavailable: {e:#}"),
    }
}

/// [`artifacts_dir`] without the panic.
pub fn try_artifacts_dir() -> eyre::Result<PathBuf> {
    let root = repo_root();
    let out = root.join("contracts/out");
    let _guard = BUILD.lock().unwrap_or_else(PoisonError::into_inner);
    if is_stale(&root, &out)? {
        let script = root.join("scripts/contracts/build.sh");
        let output = Command::new("bash")
            .arg(&script)
            .current_dir(&root)
            .output()
            .wrap_err_with(|| format!("running {}", script.display()))?;
        if !output.status.success() {
            bail!(
                "{} failed ({}):\n{}{}",
                script.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        if is_stale(&root, &out)? {
            bail!("{} succeeded but {} is still incomplete or stale", script.display(), out.display());
        }
    }
    Ok(out)
}

/// Whether any artifact is missing or older than the newest input.
fn is_stale(root: &Path, out: &Path) -> eyre::Result<bool> {
    let mut newest_input = mtime(&root.join("scripts/contracts/build.sh"))?;
    let sources = root.join("contracts");
    for entry in std::fs::read_dir(&sources).wrap_err_with(|| format!("reading {}", sources.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "sol") {
            newest_input = newest_input.max(mtime(&path)?);
        }
    }
    for name in ARTIFACTS {
        match std::fs::metadata(out.join(name)).and_then(|m| m.modified()) {
            Ok(t) if t >= newest_input => {}
            _ => return Ok(true),
        }
    }
    Ok(false)
}

fn mtime(path: &Path) -> eyre::Result<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).wrap_err_with(|| format!("reading mtime of {}", path.display()))
}

/// Creation bytecode of `contract` ("Bridge", "WrappedBTC") from the artifacts.
pub fn bytecode(contract: &str) -> eyre::Result<Vec<u8>> {
    let path = try_artifacts_dir()?.join(format!("{contract}.bin"));
    let text = std::fs::read_to_string(&path).wrap_err_with(|| format!("reading {}", path.display()))?;
    hex::decode(text.trim().trim_start_matches("0x")).wrap_err_with(|| format!("{} is not hex", path.display()))
}

/// JSON ABI of `contract` ("Bridge", "WrappedBTC") from the artifacts.
pub fn abi_json(contract: &str) -> eyre::Result<serde_json::Value> {
    let path = try_artifacts_dir()?.join(format!("{contract}.abi"));
    let text = std::fs::read(&path).wrap_err_with(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).wrap_err_with(|| format!("{} is not JSON", path.display()))
}

/// The devnet's EVM chain ids (`scripts/devnet/up.sh`): the destination chains a test
/// bridge knows by default.
pub const DEVNET_CHAIN_IDS: [u64; 4] = [31_337, 31_338, 31_339, 31_340];

/// The validators' default `bitcoin.peg_out_fee` in satoshis (the devnet's too).
pub const DEFAULT_PEG_OUT_FEE: u64 = 2_000;

/// Deployment-time configuration of a bridge: its constructor arguments after the
/// guardian.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// `pegOutFee`: the flat fee the validators keep from each peg-out. `burnToBitcoin`
    /// refuses amounts below it plus the dust limit of the script's output type.
    pub peg_out_fee: u64,
    /// The destination chains `burnToChain` accepts from the start. Neither 0 nor the
    /// deployment's own chain id (the constructor reverts `InvalidChain` on those).
    pub known_chains: Vec<u64>,
}

impl BridgeConfig {
    /// The devnet's configuration for a bridge on chain `own_chain_id`: the default
    /// peg-out fee, and every devnet chain except `own_chain_id` known.
    pub fn devnet(own_chain_id: u64) -> Self {
        Self {
            peg_out_fee: DEFAULT_PEG_OUT_FEE,
            known_chains: DEVNET_CHAIN_IDS.into_iter().filter(|id| *id != own_chain_id).collect(),
        }
    }
}

/// Deploys `Bridge(guardian, pegOutFee, knownChains)` from `deployer_private_key_hex`
/// (0x-hex) through `rpc_url` with [`BridgeConfig::devnet`] for the node's chain id
/// (peg-out fee 2,000 sat, the other devnet chains 31337..=31340 known); the deployer
/// is the only account that may call `setInitialKey`.
pub async fn deploy_bridge(rpc_url: &str, deployer_private_key_hex: &str, guardian: Address) -> eyre::Result<Deployed> {
    let url = rpc_url.parse().wrap_err("rpc url")?;
    let chain_id = ProviderBuilder::new().connect_http(url).get_chain_id().await.wrap_err("reading the chain id")?;
    deploy_bridge_with(rpc_url, deployer_private_key_hex, guardian, &BridgeConfig::devnet(chain_id)).await
}

/// [`deploy_bridge`] with an explicit [`BridgeConfig`].
pub async fn deploy_bridge_with(
    rpc_url: &str,
    deployer_private_key_hex: &str,
    guardian: Address,
    config: &BridgeConfig,
) -> eyre::Result<Deployed> {
    let signer: PrivateKeySigner = deployer_private_key_hex
        .parse()
        .map_err(|e| eyre!("deployer private key is not a 0x-hex secp256k1 key: {e}"))?;
    let provider = ProviderBuilder::new().wallet(signer).connect_http(rpc_url.parse().wrap_err("rpc url")?);

    let mut code = tokio::task::spawn_blocking(|| bytecode("Bridge")).await??;
    code.extend_from_slice(&(guardian, config.peg_out_fee, config.known_chains.clone()).abi_encode_params());
    let tx = TransactionRequest::default().with_deploy_code(code);
    let receipt = provider
        .send_transaction(tx)
        .await
        .wrap_err("sending the Bridge deployment")?
        .get_receipt()
        .await
        .wrap_err("waiting for the Bridge deployment receipt")?;
    if !receipt.status() {
        bail!("Bridge deployment reverted (tx {})", receipt.transaction_hash);
    }
    let bridge = receipt.contract_address.ok_or_else(|| eyre!("Bridge deployment receipt has no contract address"))?;
    let token = IBridge::new(bridge, &provider).token().call().await.wrap_err("reading Bridge.token()")?;
    Ok(Deployed { bridge, token })
}

/// A real anvil with the bridge deployed (dev account 0 deploys, dev account 1 is the
/// guardian; [`BridgeConfig::devnet`] unless [`KeyedBridge::start_with`] says otherwise)
/// and a trusted-dealer group key installed with `setInitialKey`.
#[derive(Debug)]
pub struct KeyedBridge {
    pub anvil: crate::Anvil,
    pub deployed: Deployed,
    pub key: crate::frost::DealerKey,
    pub rng: crate::frost::TestRng,
}

impl KeyedBridge {
    /// `max_signers`/`min_signers` shape the dealer key; `seed` makes it replayable.
    pub async fn start(chain_id: u64, seed: u64, max_signers: u16, min_signers: u16) -> eyre::Result<Self> {
        Self::start_with(chain_id, seed, max_signers, min_signers, &BridgeConfig::devnet(chain_id)).await
    }

    /// [`KeyedBridge::start`] with the bridge deployed with `config`.
    pub async fn start_with(
        chain_id: u64,
        seed: u64,
        max_signers: u16,
        min_signers: u16,
        config: &BridgeConfig,
    ) -> eyre::Result<Self> {
        let mut rng = crate::frost::TestRng::new(seed);
        let key = crate::frost::DealerKey::generate(&mut rng, max_signers, min_signers);
        let anvil = crate::Anvil::start(chain_id).await?;
        let deployed = deploy_bridge_with(&anvil.url(), &anvil.dev_key(0), anvil.dev_address(1), config).await?;
        let bridge = IBridge::new(deployed.bridge, anvil.wallet_provider(0));
        let receipt = bridge.setInitialKey(key.px, key.py).send().await?.get_receipt().await?;
        if !receipt.status() {
            bail!("setInitialKey reverted on chain {chain_id}");
        }
        Ok(Self { anvil, deployed, key, rng })
    }
}

/// Requires that sending `call` reverts with `expected`, decoded from the revert data
/// (gas estimation already sees it): a test that means one error must not pass on
/// another, or on a call that goes through.
pub async fn reverts<D, E>(call: alloy::contract::CallBuilder<&alloy::providers::DynProvider, D>, expected: E)
where
    D: alloy::contract::CallDecoder,
    E: alloy::sol_types::SolInterface + std::fmt::Debug + PartialEq,
{
    match call.send().await {
        Ok(pending) => panic!("expected revert {expected:?}, but the transaction was sent: {:?}", pending.tx_hash()),
        Err(e) => {
            let got = e.as_decoded_interface_error::<E>();
            assert_eq!(got.as_ref(), Some(&expected), "expected revert {expected:?}, got {e}");
        }
    }
}
