//! The node's configuration: `HOME/config.toml`, overridden by `BTCFI_`-prefixed
//! environment variables (`__` for nesting: `BTCFI_API__LISTEN=127.0.0.1:9090`).
//!
//! Parsing is two-step: serde reads the raw shape (unknown keys are errors), then
//! [`NodeConfig::validate`] checks what serde cannot and reports *every* problem with its
//! key path, so an operator fixes a broken file in one go.

use btcfi_chain_adapters::{ChainsConfig, bitcoin::BitcoinConfig, evm::EvmChainConfig};
use serde::{Deserialize, Serialize};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// This validator's name, as in the `validators` list.
    pub name: String,
    /// The validator-set epoch.
    #[serde(default = "one")]
    pub epoch: u64,
    /// How often the Bitcoin adapter polls bitcoind, in milliseconds.
    #[serde(default = "default_btc_poll")]
    pub bitcoin_poll_ms: u64,
}

fn default_btc_poll() -> u64 {
    5_000
}

fn one() -> u64 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct P2pSection {
    /// libp2p listen address, e.g. `/ip4/0.0.0.0/tcp/9000`.
    pub listen: String,
}

/// One validator of the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorEntry {
    pub name: String,
    /// libp2p peer id (printed by `btcfi-node init`).
    pub peer_id: String,
    /// Where to dial it, e.g. `/ip4/10.0.0.2/tcp/9000`.
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// HTTP address for /health, /ready, /metrics and /v1/*.
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    #[serde(default)]
    pub format: LogFormat,
    /// tracing filter, e.g. `info,chain::btc=debug`.
    #[serde(default = "default_filter")]
    pub filter: String,
}

fn default_filter() -> String {
    "info".into()
}

/// Timing of the consensus core; unset keys keep the core's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsensusSection {
    /// First rebroadcast of an own vote that has not certified yet (doubles each time).
    pub rebroadcast_interval_ms: Option<u64>,
    /// Upper bound of the rebroadcast interval.
    pub rebroadcast_max_interval_ms: Option<u64>,
    /// After this long without a certificate, ask peers for it (catch-up).
    pub catch_up_after_ms: Option<u64>,
    /// Votes on events this node never observes are forgotten after this long.
    pub vote_expiry_ms: Option<u64>,
}

impl ConsensusSection {
    pub fn apply(&self, c: &mut btcfi_consensus::Config) {
        if let Some(v) = self.rebroadcast_interval_ms {
            c.rebroadcast_interval_ms = v;
        }
        if let Some(v) = self.rebroadcast_max_interval_ms {
            c.rebroadcast_max_interval_ms = v;
        }
        if let Some(v) = self.catch_up_after_ms {
            c.catch_up_after_ms = v;
        }
        if let Some(v) = self.vote_expiry_ms {
            c.vote_expiry_ms = v;
        }
    }
}

/// Threshold signing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningSection {
    /// How long a coordinator waits for commitments and shares before it ends an
    /// attempt (others wait twice as long for the coordinator).
    #[serde(default = "default_sign_timeout")]
    pub timeout_ms: u64,
    /// A validator proposing releases (and relaying mints) waits this long per rank
    /// before taking over from the one ranked before it.
    #[serde(default = "default_takeover")]
    pub takeover_ms: u64,
    /// A release still being signed this long after it was accepted, beside a competing
    /// release for the same peg-outs, is merged with it (by turns, `takeover_ms` apart).
    #[serde(default = "default_merge_after")]
    pub merge_after_ms: u64,
    /// Attempts a signing session makes (each excluding silent or cheating signers)
    /// before it fails; a failed session is retried as a new round (1..=64).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Every bridge's `groupKey()` is checked against the epoch's evm key this often.
    #[serde(default = "default_bridge_key_check")]
    pub bridge_key_check_secs: u64,
    /// Signing sessions run at once per key; more wait in a queue (key checks, then
    /// release inputs, then mints, oldest first), so that a burst never runs thousands
    /// of sessions, each with its own timeouts, at once.
    #[serde(default = "default_max_sessions_in_flight")]
    pub max_sessions_in_flight: usize,
    /// A signing queue that has not been empty for this long makes the node not ready
    /// (it signs more slowly than work arrives).
    #[serde(default = "default_queue_saturated_secs")]
    pub queue_saturated_secs: u64,
    /// Certified mints to one bridge are signed together: one FROST signature over the
    /// Merkle root of at most this many (1..=1024; one alone is signed as a `mint`).
    #[serde(default = "default_batch_max_mints")]
    pub batch_max_mints: usize,
    /// A batch smaller than `batch_max_mints` is proposed once its oldest mint waited
    /// this long (the daemon looks once a second, and at once when a batch fills).
    #[serde(default = "default_batch_wait_ms")]
    pub batch_wait_ms: u64,
}

impl Default for SigningSection {
    fn default() -> Self {
        Self {
            timeout_ms: default_sign_timeout(),
            takeover_ms: default_takeover(),
            merge_after_ms: default_merge_after(),
            bridge_key_check_secs: default_bridge_key_check(),
            max_attempts: default_max_attempts(),
            max_sessions_in_flight: default_max_sessions_in_flight(),
            queue_saturated_secs: default_queue_saturated_secs(),
            batch_max_mints: default_batch_max_mints(),
            batch_wait_ms: default_batch_wait_ms(),
        }
    }
}

fn default_batch_max_mints() -> usize {
    256
}

fn default_batch_wait_ms() -> u64 {
    250
}

fn default_max_sessions_in_flight() -> usize {
    64
}

fn default_queue_saturated_secs() -> u64 {
    120
}

fn default_max_attempts() -> u32 {
    btcfi_signer::session::MAX_ATTEMPTS
}

fn default_bridge_key_check() -> u64 {
    60
}

fn default_merge_after() -> u64 {
    600_000
}

fn default_sign_timeout() -> u64 {
    5_000
}
fn default_takeover() -> u64 {
    30_000
}

/// What a release proposal may spend, beyond the fee bounds of `[bitcoin.fees]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSection {
    /// A proposal's fee rate may be at most this multiple of this signer's own
    /// `estimatesmartfee` (never above `bitcoin.fees.ceiling_sat_per_vb`).
    #[serde(default = "default_max_fee_multiple")]
    pub max_fee_multiple: u64,
    /// Inputs a proposal may spend beyond those its payouts and fee need.
    #[serde(default = "default_consolidation_inputs")]
    pub consolidation_inputs: usize,
    /// The dust relay fee (sat per 1,000 vB) that sets each output type's dust limit:
    /// Bitcoin Core's `-dustrelayfee` (default 3,000).
    #[serde(default = "default_dust_relay")]
    pub dust_relay_sat_per_kvb: u64,
    /// Vault fees paid per day above which the `BtcfiVaultFeesHigh` alert fires
    /// (exported as `btcfi_vault_fee_alert_sats`).
    #[serde(default = "default_daily_fee_alert")]
    pub daily_fee_alert_sats: u64,
    /// What decides this node's releases: `book`, the sans-IO release book
    /// (`btcfi_release::book`) that the whole-network simulation attacks. The only
    /// engine since the node's earlier release path (`ledger`) was removed: a config
    /// that asks for it is refused with the reason.
    #[serde(default)]
    pub engine: ReleaseEngine,
}

/// The release engine (`[release] engine`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseEngine {
    #[default]
    Book,
    /// Removed: refused at load with the reason.
    Ledger,
}

impl Default for ReleaseSection {
    fn default() -> Self {
        Self {
            max_fee_multiple: default_max_fee_multiple(),
            consolidation_inputs: default_consolidation_inputs(),
            dust_relay_sat_per_kvb: default_dust_relay(),
            daily_fee_alert_sats: default_daily_fee_alert(),
            engine: ReleaseEngine::default(),
        }
    }
}

fn default_max_fee_multiple() -> u64 {
    crate::release::DEFAULT_MAX_FEE_MULTIPLE
}
fn default_consolidation_inputs() -> usize {
    crate::release::DEFAULT_CONSOLIDATION_INPUTS
}
fn default_dust_relay() -> u64 {
    crate::release::DEFAULT_DUST_RELAY_SAT_PER_KVB
}
fn default_daily_fee_alert() -> u64 {
    1_000_000
}

/// The account this validator submits `mint` transactions with (it pays their gas on
/// every EVM chain). Without it the node signs but leaves relaying to others.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayerSection {
    /// Hex secp256k1 private key (`0x…`), for a devnet. On a real network use
    /// `private_key_file` (or the environment, `BTCFI_RELAYER__PRIVATE_KEY`).
    #[serde(default)]
    pub private_key: Option<String>,
    /// A file holding the hex private key (mode 600: readable by the node's user only).
    #[serde(default)]
    pub private_key_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for RelayerSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayerSection")
            .field("private_key", &self.private_key.as_ref().map(|_| "***"))
            .field("private_key_file", &self.private_key_file)
            .finish()
    }
}

/// Where the key shares' passphrase comes from, besides `BTCFI_KEY_PASSPHRASE` and
/// `BTCFI_KEY_PASSPHRASE_FILE` (which win when set).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    /// A file holding the passphrase on its first line (mode 600).
    #[serde(default)]
    pub passphrase_file: Option<std::path::PathBuf>,
}

/// Everything the node reads at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node: NodeSection,
    pub p2p: P2pSection,
    pub validators: Vec<ValidatorEntry>,
    pub api: ApiSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub consensus: ConsensusSection,
    pub bitcoin: BitcoinConfig,
    #[serde(default)]
    pub evm: Vec<EvmChainConfig>,
    #[serde(default)]
    pub signing: SigningSection,
    #[serde(default)]
    pub release: ReleaseSection,
    #[serde(default)]
    pub relayer: RelayerSection,
    #[serde(default)]
    pub keys: KeysSection,
}

/// A configuration that cannot be used, with every problem found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {detail}")]
    Read { path: PathBuf, detail: String },
    #[error("{path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("{path}: invalid configuration:\n  - {}", .problems.join("\n  - "))]
    Invalid { path: PathBuf, problems: Vec<String> },
}

impl NodeConfig {
    /// Loads `home/config.toml` with `BTCFI_*` environment overrides from `env`.
    pub fn load(home: &Path, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let path = home.join("config.toml");
        if !path.exists() {
            return Err(ConfigError::Read {
                path,
                detail: "no such file: run `btcfi-node init --home DIR` first, or pass the right --home".into(),
            });
        }
        // Every top-level key is a table, so an override always nests (`BTCFI_A__B`);
        // other BTCFI_ variables (BTCFI_HOME, BTCFI_LOG, BTCFI_DEPS) are not config keys.
        let env: config::Map<String, String> =
            env.into_iter().filter(|(k, _)| k.starts_with("BTCFI_") && k.contains("__")).collect();
        let raw = config::Config::builder()
            .add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("BTCFI")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(env)),
            )
            .build()
            .map_err(|e| ConfigError::Parse { path: path.clone(), detail: e.to_string() })?;
        let cfg: NodeConfig =
            raw.try_deserialize().map_err(|e| ConfigError::Parse { path: path.clone(), detail: e.to_string() })?;
        cfg.validate().map_err(|problems| ConfigError::Invalid { path, problems })?;
        Ok(cfg)
    }

    pub fn bitcoin_poll_ms(&self) -> u64 {
        self.node.bitcoin_poll_ms
    }

    pub fn chains(&self) -> ChainsConfig {
        ChainsConfig { bitcoin: self.bitcoin.clone(), evm: self.evm.clone() }
    }

    /// Every problem, each naming its key.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = self.chains().validate().err().unwrap_or_default();
        if self.node.bitcoin_poll_ms == 0 {
            errs.push("node.bitcoin_poll_ms: must be positive".into());
        }
        if self.node.name.trim().is_empty() {
            errs.push("node.name: must not be empty".into());
        }
        if self.validators.is_empty() {
            errs.push("validators: the epoch's validator set is empty".into());
        }
        if !self.validators.iter().any(|v| v.name == self.node.name) {
            errs.push(format!("node.name: {:?} is not in the validators list", self.node.name));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, v) in self.validators.iter().enumerate() {
            if v.peer_id.parse::<libp2p::PeerId>().is_err() {
                errs.push(format!("validators[{i}].peer_id: {:?} is not a libp2p peer id", v.peer_id));
            }
            if v.address.parse::<libp2p::Multiaddr>().is_err() {
                errs.push(format!("validators[{i}].address: {:?} is not a multiaddr", v.address));
            }
            if !seen.insert(v.peer_id.clone()) {
                errs.push(format!("validators[{i}].peer_id: appears twice"));
            }
        }
        if self.p2p.listen.parse::<libp2p::Multiaddr>().is_err() {
            errs.push(format!("p2p.listen: {:?} is not a multiaddr (e.g. /ip4/0.0.0.0/tcp/9000)", self.p2p.listen));
        }
        let mut core = btcfi_consensus::Config::new(
            btcfi_consensus::Epoch(self.node.epoch),
            u16::try_from(self.validators.len().max(1)).unwrap_or(u16::MAX),
            btcfi_consensus::ValidatorIndex(0),
        );
        self.consensus.apply(&mut core);
        if let Err(e) = core.validate() {
            errs.push(format!("consensus: {e}"));
        }
        if self.signing.timeout_ms < 100 {
            errs.push("signing.timeout_ms: at least 100".into());
        }
        if self.release.engine == ReleaseEngine::Ledger {
            errs.push("release.engine: \"ledger\" was removed; \"book\" is the only release engine".into());
        }
        if self.signing.takeover_ms < 4_000 {
            errs.push(
                "signing.takeover_ms: at least 4000 (a release proposer sends in the middle half of its turn, checked every second)".into(),
            );
        }
        if self.signing.merge_after_ms < self.signing.timeout_ms.saturating_mul(2) {
            errs.push(
                "signing.merge_after_ms: at least twice signing.timeout_ms (a release needs time to be signed)".into(),
            );
        }
        if !(1..=crate::batch::MAX_BATCH_LEAVES).contains(&self.signing.batch_max_mints) {
            errs.push(format!("signing.batch_max_mints: between 1 and {}", crate::batch::MAX_BATCH_LEAVES));
        }
        if self.signing.batch_wait_ms > 60_000 {
            errs.push("signing.batch_wait_ms: at most 60000 (a minute)".into());
        }
        if !(1..=4096).contains(&self.signing.max_sessions_in_flight) {
            errs.push("signing.max_sessions_in_flight: between 1 and 4096".into());
        }
        if !(1..=btcfi_signer::session::MAX_ATTEMPTS).contains(&self.signing.max_attempts) {
            errs.push(format!("signing.max_attempts: between 1 and {}", btcfi_signer::session::MAX_ATTEMPTS));
        }
        if self.signing.bridge_key_check_secs == 0 {
            errs.push("signing.bridge_key_check_secs: must be positive".into());
        }
        if !(1..=10).contains(&self.release.max_fee_multiple) {
            errs.push("release.max_fee_multiple: between 1 and 10".into());
        }
        if self.release.consolidation_inputs > 50 {
            errs.push("release.consolidation_inputs: at most 50".into());
        }
        // The bridge contract's minimum burn uses Bitcoin Core's default (3,000): a higher
        // rate here would set apart burns the contract accepted.
        if !(1..=crate::release::DEFAULT_DUST_RELAY_SAT_PER_KVB).contains(&self.release.dust_relay_sat_per_kvb) {
            errs.push(format!(
                "release.dust_relay_sat_per_kvb: between 1 and {} (the bridge's minimum burn assumes Bitcoin Core's default; run bitcoind with -dustrelayfee at or below it)",
                crate::release::DEFAULT_DUST_RELAY_SAT_PER_KVB
            ));
        }
        match (&self.relayer.private_key, &self.relayer.private_key_file) {
            (Some(_), Some(_)) => {
                errs.push("relayer.private_key_file: set either it or relayer.private_key, not both".into())
            }
            (Some(k), None) if k.parse::<alloy::signers::local::PrivateKeySigner>().is_err() => {
                errs.push("relayer.private_key: not a hex secp256k1 private key".into());
            }
            (None, Some(path)) => match crate::keys::read_secret_file(path) {
                Ok(k) if k.parse::<alloy::signers::local::PrivateKeySigner>().is_err() => {
                    errs.push(format!(
                        "relayer.private_key_file: {} holds no hex secp256k1 private key",
                        path.display()
                    ));
                }
                Ok(_) => {}
                Err(e) => errs.push(format!("relayer.private_key_file: {e}")),
            },
            _ => {}
        }
        if let Some(path) = &self.keys.passphrase_file
            && let Err(e) = crate::keys::read_secret_file(path)
        {
            errs.push(format!("keys.passphrase_file: {e}"));
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }

    /// The relayer's signer, if configured (validated at load).
    pub fn relayer_signer(&self) -> Option<alloy::signers::local::PrivateKeySigner> {
        match (&self.relayer.private_key, &self.relayer.private_key_file) {
            (Some(k), _) => k.parse().ok(),
            (None, Some(path)) => crate::keys::read_secret_file(path).ok().and_then(|k| k.parse().ok()),
            (None, None) => None,
        }
    }

    /// The configuration as TOML with secrets masked (`config check`).
    pub fn redacted_toml(&self) -> String {
        let mut c = self.clone();
        if c.bitcoin.rpc_password.is_some() {
            c.bitcoin.rpc_password = Some("***".into());
        }
        if c.relayer.private_key.is_some() {
            c.relayer.private_key = Some("***".into());
        }
        for e in &mut c.evm {
            for url in &mut e.endpoints {
                if let Ok(u) = url::Url::parse(url) {
                    *url = btcfi_chain_adapters::evm::redact_url(&u);
                }
            }
        }
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

#[cfg(test)]
mod tests;
