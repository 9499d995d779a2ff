use crate::process::{free_port, tool, wait_until};
use alloy::{
    primitives::Address,
    providers::{DynProvider, Provider, ProviderBuilder},
    signers::local::PrivateKeySigner,
};
use eyre::{WrapErr, eyre};
use std::{process::Stdio, time::Duration};
use tempfile::TempDir;
use tokio::process::{Child, Command};

/// A real anvil node on a free loopback port; killed on drop.
#[derive(Debug)]
pub struct Anvil {
    child: Option<Child>,
    port: u16,
    chain_id: u64,
    keys: Vec<String>,
    _dir: TempDir,
}

impl Anvil {
    /// Starts anvil with `chain_id`, auto-mining each transaction.
    pub async fn start(chain_id: u64) -> eyre::Result<Self> {
        Self::start_with(chain_id, &[]).await
    }

    /// Starts anvil with extra command-line arguments (e.g. `--block-time 1`).
    pub async fn start_with(chain_id: u64, extra: &[&str]) -> eyre::Result<Self> {
        let bin = tool("ANVIL", "anvil")?;
        let mut last_err = None;
        for _ in 0..5 {
            let dir = tempfile::tempdir()?;
            let port = free_port();
            let config = dir.path().join("anvil.json");
            let log = std::fs::File::create(dir.path().join("anvil.log"))?;
            let child = Command::new(&bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--chain-id", &chain_id.to_string()])
                .args(["--max-persisted-states", "0"])
                .arg("--config-out")
                .arg(&config)
                .args(extra)
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log))
                .kill_on_drop(true)
                .spawn()
                .wrap_err_with(|| format!("spawning {}", bin.display()))?;
            let mut anvil = Anvil { child: Some(child), port, chain_id, keys: Vec::new(), _dir: dir };
            match anvil.wait_ready(&config).await {
                Ok(()) => return Ok(anvil),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| eyre!("anvil did not start")))
    }

    async fn wait_ready(&mut self, config: &std::path::Path) -> eyre::Result<()> {
        let provider = self.provider();
        let child = self.child.as_mut().ok_or_else(|| eyre!("no child"))?;
        wait_until("anvil to answer eth_chainId", Duration::from_secs(20), || {
            let exited = child.try_wait().ok().flatten().is_some();
            let provider = provider.clone();
            async move {
                if exited {
                    return Some(Err(eyre!("anvil exited (port clash?)")));
                }
                provider.get_chain_id().await.ok().map(Ok)
            }
        })
        .await??;
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(config)?)?;
        self.keys = json["private_keys"]
            .as_array()
            .ok_or_else(|| eyre!("anvil config-out has no private_keys"))?
            .iter()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect();
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }
    /// Private key (0x-hex) of dev account `i` (anvil funds ten by default).
    pub fn dev_key(&self, i: usize) -> String {
        self.keys.get(i).cloned().unwrap_or_default()
    }
    pub fn dev_signer(&self, i: usize) -> PrivateKeySigner {
        self.dev_key(i).parse().unwrap_or_else(|_| PrivateKeySigner::random())
    }
    pub fn dev_address(&self, i: usize) -> Address {
        self.dev_signer(i).address()
    }
    /// A read-only provider.
    pub fn provider(&self) -> DynProvider {
        let url = self.url().parse().expect("a loopback url parses");
        ProviderBuilder::new().connect_http(url).erased()
    }
    /// A provider that signs with dev account `i`.
    pub fn wallet_provider(&self, i: usize) -> DynProvider {
        let url = self.url().parse().expect("a loopback url parses");
        ProviderBuilder::new().wallet(self.dev_signer(i)).connect_http(url).erased()
    }

    async fn raw(&self, method: &str, params: serde_json::Value) -> eyre::Result<serde_json::Value> {
        let v: serde_json::Value = self.provider().raw_request(method.to_owned().into(), params).await?;
        Ok(v)
    }
    /// Mines `n` empty blocks at once.
    pub async fn mine(&self, n: u64) -> eyre::Result<()> {
        self.raw("anvil_mine", serde_json::json!([format!("0x{n:x}")])).await.map(drop)
    }
    /// Replaces the last `depth` blocks with as many empty ones (`anvil_reorg`).
    pub async fn reorg(&self, depth: u64) -> eyre::Result<()> {
        self.raw("anvil_reorg", serde_json::json!([depth, []])).await.map(drop)
    }
    /// `evm_snapshot`: an id to return to with [`Anvil::revert`].
    pub async fn snapshot(&self) -> eyre::Result<String> {
        let v = self.raw("evm_snapshot", serde_json::json!([])).await?;
        v.as_str().map(str::to_owned).ok_or_else(|| eyre!("evm_snapshot returned {v}"))
    }
    pub async fn revert(&self, id: &str) -> eyre::Result<()> {
        self.raw("evm_revert", serde_json::json!([id])).await.map(drop)
    }
    pub async fn block_number(&self) -> eyre::Result<u64> {
        Ok(self.provider().get_block_number().await?)
    }
    /// Kills the node now (e.g. to test endpoint failover).
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}
