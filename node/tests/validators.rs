//! Four real `btcfi-node` validator processes over libp2p on loopback, watching one
//! real bitcoind and one real anvil with the bridge deployed: they certify the same
//! attestations (a BTC deposit, an EVM burn); one killed with SIGKILL and restarted
//! catches up; a fifth node whose key is not in the set is refused.
//!

use alloy::primitives::B256;
use bitcoin::hashes::Hash;
use bitcoin::{Address, Amount, Network};
use bitcoincore_rpc::RpcApi;
use btcfi_chain_adapters::evm::bindings::IBridge;
use btcfi_signer::evm::mint_message;
use btcfi_testkit::{
    Anvil,
    contracts::{Deployed, KeyedBridge},
    frost::{DealerKey, TestRng},
};
use btcfi_testkit::{Bitcoind, free_port, wait_until};
use btcfi_types::{ChainId, DepositMemo, EvmAddress};
use serde_json::{Value, json};
use std::{
    io::{Read, Write},
    path::PathBuf,
    process::{Child, Command, Stdio},
    str::FromStr,
    time::Duration,
};

fn node_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_btcfi-node"))
}

struct Validator {
    name: String,
    home: tempfile::TempDir,
    peer_id: String,
    p2p_port: u16,
    api_port: u16,
    child: Option<Child>,
}

impl Validator {
    fn init(name: &str) -> Self {
        let home = tempfile::tempdir().unwrap();
        let p2p_port = free_port();
        let api_port = free_port();
        let out = Command::new(node_bin())
            .args(["init", "--home"])
            .arg(home.path())
            .args(["--name", name, "--p2p-listen", &format!("/ip4/127.0.0.1/tcp/{p2p_port}")])
            .args(["--api-listen", &format!("127.0.0.1:{api_port}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
        let peer_id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert!(peer_id.starts_with("12D3KooW"), "init printed {peer_id:?}");
        Self { name: name.into(), home, peer_id, p2p_port, api_port, child: None }
    }

    fn entry(&self) -> String {
        format!(
            "[[validators]]\nname = \"{}\"\npeer_id = \"{}\"\naddress = \"/ip4/127.0.0.1/tcp/{}\"\n",
            self.name, self.peer_id, self.p2p_port
        )
    }

    fn write_config(&self, set: &[&Validator], btc: &Bitcoind, vault: &Address, start_height: u64, evm: &Evm) {
        let validators: String = set.iter().map(|v| v.entry()).collect();
        let cfg = format!(
            r#"[node]
name = "{name}"
epoch = 1
bitcoin_poll_ms = 300

[p2p]
listen = "/ip4/127.0.0.1/tcp/{p2p}"

{validators}
[api]
listen = "127.0.0.1:{api}"

[log]
format = "json"
filter = "info"

[consensus]
rebroadcast_interval_ms = 1000
rebroadcast_max_interval_ms = 2000
catch_up_after_ms = 2000

[bitcoin]
rpc_url = "{url}"
rpc_user = "{user}"
rpc_password = "{password}"
network = "regtest"
vault_address = "{vault}"
confirmations = 2
min_deposit = 10000
reorg_window = 20
start_height = {start_height}

[[evm]]
name = "ethereum"
chain_id = {chain_id}
endpoints = ["{evm_url}"]
bridge = "{bridge}"
finality = 2
poll_interval_ms = 300
"#,
            chain_id = evm.anvil.chain_id(),
            evm_url = evm.anvil.url(),
            bridge = evm.deployed.bridge,
            name = self.name,
            p2p = self.p2p_port,
            api = self.api_port,
            url = btc.rpc_url(),
            user = btc.rpc_user(),
            password = btc.rpc_password(),
        );
        std::fs::write(self.home.path().join("config.toml"), cfg).unwrap();
    }

    fn start(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.home.path().join("node.log")).unwrap();
        let child = Command::new(node_bin())
            .args(["run", "--home"])
            .arg(self.home.path())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL: no chance to flush or say goodbye.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn get(&self, path: &str) -> Option<Value> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.api_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        let (_, b) = body.split_once("\r\n\r\n")?;
        serde_json::from_str(b).ok().or_else(|| Some(Value::String(b.to_owned())))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("node.log")).unwrap_or_default()
    }

    /// The digest this node certified for `id`, if it did.
    fn certified_digest(&self, id: &str) -> Option<String> {
        let v = self.get(&format!("/v1/attestations/{id}"))?;
        (v["status"] == "certified").then(|| v["certificate"]["digest"].as_str().map(str::to_owned)).flatten()
    }
}

impl Drop for Validator {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn wait_certified(nodes: &[&Validator], id: &str) -> String {
    let mut digests = Vec::new();
    for n in nodes {
        let d = wait_until(&format!("{} to certify {id}", n.name), Duration::from_secs(90), || async {
            n.certified_digest(id)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- {} log tail:\n{}", n.name, tail(&n.log())));
        digests.push(d);
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "validators certified different digests: {digests:?}");
    digests.remove(0)
}

fn tail(s: &str) -> String {
    s.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// A real anvil with the bridge deployed under a dealer group key.
struct Evm {
    anvil: Anvil,
    deployed: Deployed,
    key: DealerKey,
    rng: TestRng,
}

impl Evm {
    async fn start() -> Self {
        let KeyedBridge { anvil, deployed, key, rng } = KeyedBridge::start(31337, 7, 4, 3).await.unwrap();
        Self { anvil, deployed, key, rng }
    }

    /// Mints `sats` to dev account `user` (signed by the group key), then the user burns
    /// them towards Bitcoin. Returns the burn's event id `chain:tx:log index`.
    async fn mint_and_burn(&mut self, user: usize, sats: u64) -> String {
        let to = self.anvil.dev_address(user);
        let event_id = self.rng.bytes32();
        let msg = mint_message(self.anvil.chain_id(), self.deployed.bridge, event_id, to, sats);
        let sig = self.key.sign(&mut self.rng, msg);
        let bridge = IBridge::new(self.deployed.bridge, self.anvil.wallet_provider(0));
        let r = bridge.mint(B256::from(event_id), to, sats, sig.rx, sig.ry, sig.z).send().await.unwrap();
        assert!(r.get_receipt().await.unwrap().status());
        let as_user = IBridge::new(self.deployed.bridge, self.anvil.wallet_provider(user));
        let script = bitcoin::ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array([9; 20]));
        let receipt =
            as_user.burnToBitcoin(sats, script.to_bytes().into()).send().await.unwrap().get_receipt().await.unwrap();
        assert!(receipt.status());
        let log = receipt.inner.logs().iter().find(|l| l.address() == self.deployed.bridge).expect("burn log");
        format!("{}:{}:{}", self.anvil.chain_id(), hex_str(receipt.transaction_hash.0), log.log_index.unwrap())
    }
}

fn hex_str(b: [u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn deposit(btc: &Bitcoind, vault: &Address, sats: u64) -> String {
    let memo = DepositMemo { dest_chain: ChainId(31337), recipient: EvmAddress([0x42; 20]) }.encode();
    let d = btc.send_deposit(vault, Amount::from_sat(sats), Some(&memo)).await.unwrap();
    format!("0:{}:{}", d.txid, d.vout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_validators_certify_catch_up_and_refuse_strangers() {
    let btc = Bitcoind::start().await.unwrap();
    let vault_wallet = btc.create_wallet("vault").await.unwrap();
    let vault: String = tokio::task::spawn_blocking(move || {
        vault_wallet.call::<String>("getnewaddress", &[json!(""), json!("bech32m")])
    })
    .await
    .unwrap()
    .unwrap();
    let vault = Address::from_str(&vault).unwrap().require_network(Network::Regtest).unwrap();
    let start = btc.block_count().await.unwrap() + 1;
    let mut evm = Evm::start().await;

    let mut nodes: Vec<Validator> = (0..4).map(|i| Validator::init(&format!("v{i}"))).collect();
    {
        let set: Vec<&Validator> = nodes.iter().collect();
        for n in &nodes {
            n.write_config(&set, &btc, &vault, start, &evm);
        }
    }
    // `config check` accepts what we wrote.
    let check =
        Command::new(node_bin()).args(["config", "check", "--home"]).arg(nodes[0].home.path()).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    assert!(String::from_utf8_lossy(&check.stdout).contains("rpc_password = \"***\""), "password masked");

    for n in &mut nodes {
        n.start();
    }
    for n in &nodes {
        wait_until(&format!("{} ready", n.name), Duration::from_secs(60), || async {
            n.get("/ready").filter(|v| v["ready"] == true)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&n.log())));
    }

    // One deposit: all four certify the same digest.
    let first = deposit(&btc, &vault, 1_000_000).await;
    btc.mine(2).await.unwrap();
    let d1 = wait_certified(&nodes.iter().collect::<Vec<_>>(), &first).await;
    let detail = nodes[0].get(&format!("/v1/attestations/{first}")).unwrap();
    assert_eq!(detail["amount_sats"], 1_000_000);
    assert_eq!(detail["destination_chain"], 31337);
    assert!(detail["certificate"]["signatures"].as_array().unwrap().len() >= 3, "{detail}");
    let dep = nodes[1].get(&format!("/v1/deposits/{}", &first[2..])).unwrap();
    assert_eq!(dep["status"], "certified", "{dep}");

    // A burn on the EVM chain: reported at depth 2 by every node's EVM adapter, certified.
    let burn = evm.mint_and_burn(2, 70_000).await;
    evm.anvil.mine(2).await.unwrap();
    wait_certified(&nodes.iter().collect::<Vec<_>>(), &burn).await;
    let b = nodes[2].get(&format!("/v1/attestations/{burn}")).unwrap();
    assert_eq!(b["attestation"]["type"], "peg_out", "{b}");
    assert_eq!(b["attestation"]["amount_sats"], 70_000);
    let metrics = nodes[0].get("/metrics").unwrap();
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("btcfi_rpc_endpoint_healthy{chain=\"ethereum\"") && l.ends_with(" 1")),
        "endpoint health exported"
    );
    assert!(metrics.contains("btcfi_chain_events_total{chain=\"ethereum\",kind=\"observed\"} 1"));

    // Kill one validator; the other three (= q) still certify the next deposit.
    nodes[3].kill();
    let second = deposit(&btc, &vault, 2_000_000).await;
    btc.mine(2).await.unwrap();
    let d2 = wait_certified(&nodes[..3].iter().collect::<Vec<_>>(), &second).await;
    assert_ne!(d1, d2);
    // Restarted, it resumes from its checkpoint, still knows the first, and catches up on the second.
    nodes[3].start();
    assert_eq!(wait_certified(&[&nodes[3]], &second).await, d2);
    assert_eq!(nodes[3].certified_digest(&first).as_deref(), Some(d1.as_str()));

    // A fifth node with a key outside the set is refused by the validators.
    let stranger = Validator::init("stranger");
    {
        let mut set: Vec<&Validator> = nodes.iter().collect();
        set.push(&stranger);
        stranger.write_config(&set, &btc, &vault, start, &evm);
    }
    let mut stranger = stranger;
    stranger.start();
    wait_until("a validator to refuse the stranger", Duration::from_secs(60), || async {
        let m = nodes[0].get("/metrics")?;
        let text = m.as_str()?.to_owned();
        let refused: f64 = text
            .lines()
            .find(|l| l.starts_with("btcfi_p2p_peers_refused_total"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        (refused >= 1.0).then_some(())
    })
    .await
    .unwrap();
    // The stranger may see a dial complete for an instant before the validator closes
    // it; what counts is that no validator keeps it, and it never gets a quorum.
    let st = stranger.get("/v1/status").unwrap();
    assert_eq!(st["ready"], false, "{st}");
    for n in &nodes {
        let s = n.get("/v1/status").unwrap();
        assert!(!s["connected_peers"].as_array().unwrap().iter().any(|p| p == stranger.peer_id.as_str()));
    }
    // Outside the set, the stranger never gathers a quorum for anything.
    assert_eq!(stranger.certified_digest(&first), None);
}
