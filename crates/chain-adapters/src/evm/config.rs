//! Per-chain settings of the EVM adapter.

use super::EvmError;
use alloy::primitives::Address;
use btcfi_types::ChainId;
use serde::{Deserialize, Serialize};
use std::{fmt, time::Duration};
use url::Url;

/// When a block counts as final on an EVM chain.
///
/// In configuration files it is written either as a number of blocks behind the
/// head (`finality = 12`, or `finality = { depth = 12 }`) or as a block tag
/// (`finality = "finalized"`, `finality = { tag = "safe" }`). Environment variables
/// deliver numbers as text, so `"12"` means depth 12 as well.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawFinality", into = "RawFinality")]
pub enum Finality {
    /// Final once this many blocks are built on top: `finalized = head - depth`.
    /// Depth 0 follows the head itself (no reorg protection: tests only).
    Depth(u64),
    /// Final at the block the node returns for this tag (`eth_getBlockByNumber`).
    Tag(FinalityTag),
}

/// The block tags a node can be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinalityTag {
    /// The block the consensus layer finalized (Ethereum: about 13-19 minutes).
    Finalized,
    /// The latest block the consensus layer considers safe from reorgs.
    Safe,
}

impl FinalityTag {
    pub fn as_str(self) -> &'static str {
        match self {
            FinalityTag::Finalized => "finalized",
            FinalityTag::Safe => "safe",
        }
    }
}

impl fmt::Display for Finality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finality::Depth(d) => write!(f, "depth {d}"),
            Finality::Tag(t) => write!(f, "tag {}", t.as_str()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum RawFinality {
    Depth(u64),
    Text(String),
    Table(FinalityTable),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum FinalityTable {
    Depth(u64),
    Tag(String),
}

fn parse_text_finality(s: &str) -> Result<Finality, String> {
    match s.trim() {
        "finalized" => Ok(Finality::Tag(FinalityTag::Finalized)),
        "safe" => Ok(Finality::Tag(FinalityTag::Safe)),
        other => other.parse::<u64>().map(Finality::Depth).map_err(|_| {
            format!("finality {other:?}: expected a depth in blocks (e.g. 12) or the tag \"finalized\" or \"safe\"")
        }),
    }
}

impl TryFrom<RawFinality> for Finality {
    type Error = String;
    fn try_from(raw: RawFinality) -> Result<Self, Self::Error> {
        match raw {
            RawFinality::Depth(d) | RawFinality::Table(FinalityTable::Depth(d)) => Ok(Finality::Depth(d)),
            RawFinality::Text(s) => parse_text_finality(&s),
            RawFinality::Table(FinalityTable::Tag(s)) => match parse_text_finality(&s)? {
                Finality::Depth(_) => Err(format!("finality tag {s:?}: expected \"finalized\" or \"safe\"")),
                tag => Ok(tag),
            },
        }
    }
}

impl From<Finality> for RawFinality {
    fn from(f: Finality) -> Self {
        match f {
            Finality::Depth(d) => RawFinality::Depth(d),
            Finality::Tag(t) => RawFinality::Text(t.as_str().to_owned()),
        }
    }
}

fn default_max_log_range() -> u64 {
    2000
}
fn default_min_log_range() -> u64 {
    10
}
fn default_poll_interval_ms() -> u64 {
    4_000
}
fn default_stale_threshold() -> u64 {
    20
}
fn default_request_timeout_ms() -> u64 {
    10_000
}
fn default_probe_interval_ms() -> u64 {
    30_000
}
fn default_retry_backoff_ms() -> u64 {
    5_000
}
fn default_max_retry_backoff_ms() -> u64 {
    300_000
}

/// Settings of one EVM chain (`[chains.<name>]` in the node's config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvmChainConfig {
    /// Operator-facing name (`ethereum`, `polygon`, ...), used in logs and metrics.
    pub name: String,
    /// EIP-155 chain id; every endpoint is checked to serve this chain.
    pub chain_id: ChainId,
    /// JSON-RPC endpoints in order of preference. The first healthy one serves.
    pub endpoints: Vec<String>,
    /// The bridge contract; only its logs are read.
    pub bridge: Address,
    /// When a block counts as final.
    pub finality: Finality,
    /// Largest `eth_getLogs` block range asked for.
    #[serde(default = "default_max_log_range")]
    pub max_log_range: u64,
    /// Smallest range the adapter shrinks to when a provider refuses larger ones.
    #[serde(default = "default_min_log_range")]
    pub min_log_range: u64,
    /// How often the node polls this chain.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// An endpoint whose head lags the best head seen by more than this many blocks
    /// is demoted as stale.
    #[serde(default = "default_stale_threshold")]
    pub stale_threshold_blocks: u64,
    /// Deadline of each JSON-RPC request.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// How often the other endpoints' heads are probed (and demoted ones retried).
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
    /// First wait before a demoted endpoint is retried; doubles per failure.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// Longest wait before a demoted endpoint is retried.
    #[serde(default = "default_max_retry_backoff_ms")]
    pub max_retry_backoff_ms: u64,
    /// Ceiling on the EIP-1559 `maxFeePerGas` of submitted transactions, in gwei
    /// (none: whatever the fee estimate says).
    #[serde(default)]
    pub max_fee_per_gas_gwei: Option<u64>,
    /// An event counts only once this many distinct endpoints return the same logs
    /// (same blocks, same block hashes, same contents) for its range; fewer, and the
    /// range is read again later. 2 or more on a real network, 1 on a devnet.
    #[serde(default = "default_min_agreeing_endpoints")]
    pub min_agreeing_endpoints: usize,
}

fn default_min_agreeing_endpoints() -> usize {
    1
}

impl EvmChainConfig {
    /// A config with every optional setting at its default.
    pub fn new(
        name: impl Into<String>,
        chain_id: ChainId,
        endpoints: Vec<String>,
        bridge: Address,
        finality: Finality,
    ) -> Self {
        Self {
            name: name.into(),
            chain_id,
            endpoints,
            bridge,
            finality,
            max_log_range: default_max_log_range(),
            min_log_range: default_min_log_range(),
            poll_interval_ms: default_poll_interval_ms(),
            stale_threshold_blocks: default_stale_threshold(),
            request_timeout_ms: default_request_timeout_ms(),
            probe_interval_ms: default_probe_interval_ms(),
            retry_backoff_ms: default_retry_backoff_ms(),
            max_retry_backoff_ms: default_max_retry_backoff_ms(),
            max_fee_per_gas_gwei: None,
            min_agreeing_endpoints: default_min_agreeing_endpoints(),
        }
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.probe_interval_ms)
    }

    /// The validated endpoint set these settings describe, with their health policy.
    pub fn endpoint_set(&self) -> Result<super::EndpointSet, EvmError> {
        let urls = self.validate()?;
        let policy = super::EndpointPolicy {
            request_timeout: self.request_timeout(),
            stale_threshold: self.stale_threshold_blocks,
            probe_interval: self.probe_interval(),
            retry_backoff: Duration::from_millis(self.retry_backoff_ms),
            max_retry_backoff: Duration::from_millis(self.max_retry_backoff_ms.max(self.retry_backoff_ms)),
        };
        super::EndpointSet::new(&urls, self.chain_id.0, policy)
    }

    /// Checks every setting and parses the endpoint URLs; errors name the key.
    pub fn validate(&self) -> Result<Vec<Url>, EvmError> {
        let bad = |key: &str, reason: String| EvmError::Config { key: format!("{}.{key}", self.name), reason };
        if self.name.is_empty() {
            return Err(EvmError::Config { key: "name".into(), reason: "must not be empty".into() });
        }
        if self.chain_id.0 == 0 {
            return Err(bad("chain_id", "0 is reserved for Bitcoin".into()));
        }
        if self.endpoints.is_empty() {
            return Err(bad("endpoints", "at least one JSON-RPC URL is required".into()));
        }
        if self.bridge == Address::ZERO {
            return Err(bad("bridge", "the zero address cannot be the bridge".into()));
        }
        if self.min_log_range == 0 {
            return Err(bad("min_log_range", "must be at least 1".into()));
        }
        if self.max_log_range < self.min_log_range {
            return Err(bad(
                "max_log_range",
                format!("{} is below min_log_range {}", self.max_log_range, self.min_log_range),
            ));
        }
        if self.request_timeout_ms == 0 {
            return Err(bad("request_timeout_ms", "must be positive".into()));
        }
        if self.min_agreeing_endpoints == 0 || self.min_agreeing_endpoints > self.endpoints.len() {
            return Err(bad(
                "min_agreeing_endpoints",
                format!(
                    "{} must be between 1 and the {} endpoint(s) listed",
                    self.min_agreeing_endpoints,
                    self.endpoints.len()
                ),
            ));
        }
        let mut urls: Vec<Url> = Vec::with_capacity(self.endpoints.len());
        for (i, e) in self.endpoints.iter().enumerate() {
            let url = Url::parse(e).map_err(|err| bad(&format!("endpoints[{i}]"), format!("{err}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(bad(&format!("endpoints[{i}]"), format!("scheme {:?}: only http and https", url.scheme())));
            }
            if urls.contains(&url) {
                return Err(bad(
                    &format!("endpoints[{i}]"),
                    "listed twice (agreement needs distinct endpoints)".into(),
                ));
            }
            urls.push(url);
        }
        Ok(urls)
    }
}

/// The URL as it may appear in logs and metrics: scheme, host and port only, since
/// providers put API keys in paths, queries and user info.
pub fn redact_url(url: &Url) -> String {
    let host = url.host_str().unwrap_or("?");
    let hidden =
        url.path().len() > 1 || url.query().is_some() || !url.username().is_empty() || url.password().is_some();
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!("{}://{host}{port}{}", url.scheme(), if hidden { "/***" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Finality, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn finality_forms() {
        assert_eq!(parse("12").unwrap(), Finality::Depth(12));
        assert_eq!(parse("\"12\"").unwrap(), Finality::Depth(12));
        assert_eq!(parse("\"finalized\"").unwrap(), Finality::Tag(FinalityTag::Finalized));
        assert_eq!(parse("{\"tag\":\"safe\"}").unwrap(), Finality::Tag(FinalityTag::Safe));
        assert_eq!(parse("{\"depth\":3}").unwrap(), Finality::Depth(3));
        assert!(parse("\"latest\"").is_err());
        assert!(parse("{\"tag\":\"7\"}").is_err());
        assert!(parse("-1").is_err());
        let s = serde_json::to_string(&Finality::Tag(FinalityTag::Safe)).unwrap();
        assert_eq!(parse(&s).unwrap(), Finality::Tag(FinalityTag::Safe));
    }

    #[test]
    fn config_defaults_and_validation() {
        let json = r#"{"name":"ethereum","chain_id":1,"endpoints":["https://rpc.example/v3/SECRET"],
            "bridge":"0x1111111111111111111111111111111111111111","finality":"finalized"}"#;
        let c: EvmChainConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.max_log_range, 2000);
        assert_eq!(c.finality, Finality::Tag(FinalityTag::Finalized));
        let urls = c.validate().unwrap();
        assert_eq!(redact_url(&urls[0]), "https://rpc.example/***");

        let mut bad = c.clone();
        bad.endpoints.push("ws://x".into());
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("ethereum.endpoints[1]"), "{err}");
        let mut bad = c.clone();
        bad.max_log_range = 1;
        assert!(bad.validate().unwrap_err().to_string().contains("max_log_range"));
        let mut bad = c;
        bad.endpoints.clear();
        assert!(bad.validate().is_err());
        assert!(serde_json::from_str::<EvmChainConfig>(&json.replace("\"name\"", "\"nmae\"")).is_err());
    }

    #[test]
    fn redaction_keeps_plain_local_urls() {
        assert_eq!(redact_url(&Url::parse("http://127.0.0.1:8545").unwrap()), "http://127.0.0.1:8545");
        assert_eq!(redact_url(&Url::parse("http://u:p@h:1/").unwrap()), "http://h:1/***");
    }
}
