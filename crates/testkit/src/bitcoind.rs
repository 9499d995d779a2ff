use crate::process::{free_port, tool, wait_until};
use bitcoin::{Address, Amount, BlockHash, Network, OutPoint, ScriptBuf, Txid};
use bitcoincore_rpc::{Auth, Client, RpcApi};
use eyre::{WrapErr, eyre};
use serde_json::{Value, json};
use std::{process::Stdio, str::FromStr, sync::Arc, time::Duration};
use tempfile::TempDir;
use tokio::process::{Child, Command};

pub const RPC_USER: &str = "btcfi";
pub const RPC_PASSWORD: &str = "btcfi-regtest";

/// A real `bitcoind -regtest` with a funded wallet `miner`; killed on drop.
#[derive(Debug)]
pub struct Bitcoind {
    child: Option<Child>,
    rpc_port: u16,
    dir: TempDir,
    wallet: Arc<Client>,
    mining_address: Address,
}

/// A deposit transaction sent by [`Bitcoind::send_deposit`].
#[derive(Debug, Clone)]
pub struct DepositTx {
    pub txid: Txid,
    /// Output index of the payment to the vault.
    pub vout: u32,
}

impl Bitcoind {
    /// Starts bitcoind in regtest with `-txindex`, creates wallet `miner` and mines
    /// 101 blocks so that it has spendable coins.
    pub async fn start() -> eyre::Result<Self> {
        Self::start_with(&[]).await
    }

    /// [`Bitcoind::start`] with extra command-line options (a policy setting such as
    /// `-dustrelayfee=…`).
    pub async fn start_with(extra: &[&str]) -> eyre::Result<Self> {
        let bin = tool("BITCOIND", "bitcoind")?;
        let mut last_err = None;
        for _ in 0..5 {
            let dir = tempfile::tempdir()?;
            let rpc_port = free_port();
            let p2p_port = free_port();
            let log = std::fs::File::create(dir.path().join("bitcoind.out"))?;
            let child = Command::new(&bin)
                .arg("-regtest")
                .arg(format!("-datadir={}", dir.path().display()))
                .args(["-server=1", "-txindex=1", "-listen=0", "-dnsseed=0", "-fixedseeds=0", "-printtoconsole=0"])
                .args(["-fallbackfee=0.0002", "-rpcbind=127.0.0.1", "-rpcallowip=127.0.0.1"])
                .arg(format!("-rpcport={rpc_port}"))
                .arg(format!("-port={p2p_port}"))
                .arg(format!("-rpcuser={RPC_USER}"))
                .arg(format!("-rpcpassword={RPC_PASSWORD}"))
                .args(extra)
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log))
                .kill_on_drop(true)
                .spawn()
                .wrap_err_with(|| format!("spawning {}", bin.display()))?;
            match Self::finish_start(child, rpc_port, dir).await {
                Ok(b) => return Ok(b),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| eyre!("bitcoind did not start")))
    }

    async fn finish_start(mut child: Child, rpc_port: u16, dir: TempDir) -> eyre::Result<Self> {
        let node = Arc::new(Client::new(&format!("http://127.0.0.1:{rpc_port}"), Self::auth())?);
        let res = wait_until("bitcoind to answer getblockcount", Duration::from_secs(30), || {
            let exited = child.try_wait().ok().flatten().is_some();
            let node = node.clone();
            async move {
                if exited {
                    return Some(Err(eyre!("bitcoind exited (port clash?)")));
                }
                let r = tokio::task::spawn_blocking(move || node.get_block_count()).await.ok()?;
                r.ok().map(Ok)
            }
        })
        .await;
        match res {
            Ok(Ok(_)) => {}
            Ok(Err(e)) | Err(e) => {
                let _ = child.kill().await;
                return Err(e);
            }
        }
        let n = node.clone();
        tokio::task::spawn_blocking(move || n.call::<Value>("createwallet", &[json!("miner")])).await??;
        let wallet = Arc::new(Client::new(&format!("http://127.0.0.1:{rpc_port}/wallet/miner"), Self::auth())?);
        let w = wallet.clone();
        let mining_address = tokio::task::spawn_blocking(move || w.get_new_address(None, None))
            .await??
            .require_network(Network::Regtest)?;
        let b = Bitcoind { child: Some(child), rpc_port, dir, wallet, mining_address };
        b.mine(101).await?;
        Ok(b)
    }

    fn auth() -> Auth {
        Auth::UserPass(RPC_USER.into(), RPC_PASSWORD.into())
    }
    pub fn rpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rpc_port)
    }
    pub fn rpc_user(&self) -> &str {
        RPC_USER
    }
    pub fn rpc_password(&self) -> &str {
        RPC_PASSWORD
    }
    pub fn datadir(&self) -> &std::path::Path {
        self.dir.path()
    }
    /// A client on the `miner` wallet (also serves node-level calls).
    pub fn client(&self) -> Arc<Client> {
        self.wallet.clone()
    }

    /// Runs a blocking RPC on the wallet client off the async runtime.
    pub async fn rpc<T, F>(&self, f: F) -> eyre::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Client) -> Result<T, bitcoincore_rpc::Error> + Send + 'static,
    {
        let c = self.wallet.clone();
        Ok(tokio::task::spawn_blocking(move || f(&c)).await??)
    }

    /// Mines `n` blocks (including mempool transactions) to the wallet.
    pub async fn mine(&self, n: u64) -> eyre::Result<Vec<BlockHash>> {
        let addr = self.mining_address.clone();
        self.rpc(move |c| c.generate_to_address(n, &addr)).await
    }

    /// Mines `n` blocks that include no transaction from the mempool
    /// (`generateblock` with an empty list): a reorg that drops a transaction.
    pub async fn mine_empty(&self, n: u64) -> eyre::Result<Vec<BlockHash>> {
        let mut out = Vec::new();
        for _ in 0..n {
            let addr = self.mining_address.to_string();
            let v: Value = self.rpc(move |c| c.call("generateblock", &[json!(addr), json!([])])).await?;
            let hash = v["hash"].as_str().ok_or_else(|| eyre!("generateblock returned {v}"))?;
            out.push(BlockHash::from_str(hash)?);
        }
        Ok(out)
    }

    pub async fn block_count(&self) -> eyre::Result<u64> {
        self.rpc(|c| c.get_block_count()).await
    }
    pub async fn block_hash(&self, height: u64) -> eyre::Result<BlockHash> {
        self.rpc(move |c| c.get_block_hash(height)).await
    }

    /// Invalidates the block at `height` and everything above it: the start of a reorg.
    pub async fn invalidate_from(&self, height: u64) -> eyre::Result<()> {
        let hash = self.block_hash(height).await?;
        self.rpc(move |c| c.invalidate_block(&hash)).await
    }

    /// Replaces the blocks from `height` up with `new_len` blocks that drop every
    /// transaction the old ones carried (they stay in the mempool).
    pub async fn reorg_from(&self, height: u64, new_len: u64) -> eyre::Result<Vec<BlockHash>> {
        self.invalidate_from(height).await?;
        self.mine_empty(new_len).await
    }

    /// Creates another wallet and returns a client on it (e.g. a wallet that holds the
    /// vault key in a test, separate from the wallet that pays deposits).
    pub async fn create_wallet(&self, name: &str) -> eyre::Result<Arc<Client>> {
        let n = name.to_owned();
        self.rpc(move |c| c.call::<Value>("createwallet", &[json!(n)])).await?;
        self.wallet(name)
    }

    /// A client on an existing wallet.
    pub fn wallet(&self, name: &str) -> eyre::Result<Arc<Client>> {
        Ok(Arc::new(Client::new(&format!("http://127.0.0.1:{}/wallet/{name}", self.rpc_port), Self::auth())?))
    }

    pub async fn new_address(&self) -> eyre::Result<Address> {
        Ok(self.rpc(|c| c.get_new_address(None, None)).await?.require_network(Network::Regtest)?)
    }

    /// Sends a transaction paying `amount` to `vault` with, if given, an OP_RETURN
    /// output carrying `memo`. Returns the txid and the vault output's index.
    pub async fn send_deposit(&self, vault: &Address, amount: Amount, memo: Option<&[u8]>) -> eyre::Result<DepositTx> {
        let mut outputs = vec![json!({ vault.to_string(): amount.to_btc() })];
        if let Some(m) = memo {
            outputs.push(json!({ "data": hex::encode(m) }));
        }
        let raw: String = self.rpc(move |c| c.call("createrawtransaction", &[json!([]), json!(outputs)])).await?;
        let funded: Value = self.rpc(move |c| c.call("fundrawtransaction", &[json!(raw)])).await?;
        let funded_hex = funded["hex"].as_str().ok_or_else(|| eyre!("fundrawtransaction: {funded}"))?.to_owned();
        let signed: Value = self.rpc(move |c| c.call("signrawtransactionwithwallet", &[json!(funded_hex)])).await?;
        let signed_hex = signed["hex"].as_str().ok_or_else(|| eyre!("signrawtransactionwithwallet: {signed}"))?;
        let tx: bitcoin::Transaction = bitcoin::consensus::encode::deserialize_hex(signed_hex)?;
        let script: ScriptBuf = vault.script_pubkey();
        let vout = tx
            .output
            .iter()
            .position(|o| o.script_pubkey == script)
            .ok_or_else(|| eyre!("no vault output in the deposit"))? as u32;
        let txid = self.rpc(move |c| c.send_raw_transaction(&tx)).await?;
        Ok(DepositTx { txid, vout })
    }

    /// Sends `amount` to `address` from the wallet.
    pub async fn fund(&self, address: &Address, amount: Amount) -> eyre::Result<OutPoint> {
        let a = address.clone();
        let txid = self.rpc(move |c| c.send_to_address(&a, amount, None, None, None, None, None, None)).await?;
        let tx = self.rpc(move |c| c.get_raw_transaction(&txid, None)).await?;
        let script = address.script_pubkey();
        let vout = tx.output.iter().position(|o| o.script_pubkey == script).ok_or_else(|| eyre!("no output"))?;
        Ok(OutPoint { txid, vout: vout as u32 })
    }

    /// Kills the node now.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}

impl Drop for Bitcoind {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}
