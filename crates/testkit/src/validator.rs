//! Validator processes for multi-process tests: each in its own temp home on free
//! loopback ports, its config written from a [`Setup`], the DKG run across a set, and
//! the process SIGKILLed on drop.
//!
//! The binary is the caller's (a node test passes `env!("CARGO_BIN_EXE_btcfi-node")`).

use crate::{ApiClient, Bitcoind, free_port, wait_until};
use serde_json::Value;
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

/// The passphrase the tests seal key shares with.
pub const PASSPHRASE: &str = "test passphrase, not for mainnet";

/// One EVM chain as a validator config lists it.
#[derive(Debug, Clone)]
pub struct EvmChain {
    pub name: String,
    pub chain_id: u64,
    pub url: String,
    pub bridge: String,
}

/// What every validator's config shares.
#[derive(Debug, Clone)]
pub struct Setup {
    pub btc_url: String,
    pub btc_user: String,
    pub btc_password: String,
    /// Empty: the DKG's vault.
    pub vault: String,
    pub start_height: u64,
    pub evm: Vec<EvmChain>,
    /// Extra TOML appended to every config (e.g. `[signing]`).
    pub extra: String,
}

impl Setup {
    pub fn new(btc: &Bitcoind, start_height: u64) -> Self {
        Self {
            btc_url: btc.rpc_url(),
            btc_user: btc.rpc_user().into(),
            btc_password: btc.rpc_password().into(),
            vault: String::new(),
            start_height,
            evm: vec![],
            extra: String::new(),
        }
    }
}

#[derive(Debug)]
pub struct Validator {
    /// The `btcfi-node` binary it runs.
    pub bin: PathBuf,
    pub name: String,
    pub home: tempfile::TempDir,
    pub peer_id: String,
    pub p2p_port: u16,
    pub api_port: u16,
    pub child: Option<Child>,
    /// `[relayer] private_key`, if this validator relays.
    pub relayer_key: Option<String>,
    /// Hidden `--test-fault` for `run`.
    pub fault: Option<String>,
}

impl Validator {
    /// `btcfi-node init` of a validator called `name` in a fresh temp home.
    pub fn init(bin: &Path, name: &str) -> Self {
        let home = tempfile::tempdir().unwrap();
        let p2p_port = free_port();
        let api_port = free_port();
        let out = Command::new(bin)
            .args(["init", "--home"])
            .arg(home.path())
            .args(["--name", name, "--p2p-listen", &format!("/ip4/127.0.0.1/tcp/{p2p_port}")])
            .args(["--api-listen", &format!("127.0.0.1:{api_port}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
        let peer_id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert!(peer_id.starts_with("12D3KooW"), "init printed {peer_id:?}");
        Self {
            bin: bin.to_owned(),
            name: name.into(),
            home,
            peer_id,
            p2p_port,
            api_port,
            child: None,
            relayer_key: None,
            fault: None,
        }
    }

    pub fn entry(&self) -> String {
        format!(
            "[[validators]]\nname = \"{}\"\npeer_id = \"{}\"\naddress = \"/ip4/127.0.0.1/tcp/{}\"\n",
            self.name, self.peer_id, self.p2p_port
        )
    }

    pub fn write_config(&self, set: &[&Validator], s: &Setup) {
        let validators: String = set.iter().map(|v| v.entry()).collect();
        let evm: String = s
            .evm
            .iter()
            .map(|c| {
                format!(
                    "[[evm]]\nname = \"{}\"\nchain_id = {}\nendpoints = [\"{}\"]\nbridge = \"{}\"\nfinality = 2\npoll_interval_ms = 300\n\n",
                    c.name, c.chain_id, c.url, c.bridge
                )
            })
            .collect();
        let relayer =
            self.relayer_key.as_ref().map(|k| format!("[relayer]\nprivate_key = \"{k}\"\n\n")).unwrap_or_default();
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

{evm}{relayer}{extra}
"#,
            name = self.name,
            p2p = self.p2p_port,
            api = self.api_port,
            url = s.btc_url,
            user = s.btc_user,
            password = s.btc_password,
            vault = s.vault,
            start_height = s.start_height,
            extra = s.extra,
        );
        std::fs::write(self.home.path().join("config.toml"), cfg).unwrap();
    }

    pub fn start(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.home.path().join("node.log")).unwrap();
        let mut cmd = Command::new(&self.bin);
        cmd.args(["run", "--home"]).arg(self.home.path()).env("BTCFI_KEY_PASSPHRASE", PASSPHRASE);
        if let Some(f) = &self.fault {
            cmd.args(["--test-fault", f]);
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::from(log)).spawn().unwrap();
        self.child = Some(child);
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The client of its API.
    pub fn api(&self) -> ApiClient {
        ApiClient::new(self.api_port)
    }

    /// `GET path` on its API (see [`ApiClient::get`]).
    pub fn get(&self, path: &str) -> Option<Value> {
        self.api().get(path)
    }

    /// One raw request to its API (see [`ApiClient::request`]).
    pub fn request(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        self.api().request(method, path, body)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("node.log")).unwrap_or_default()
    }

    /// The digest this node certified for `id`, if it did.
    pub fn certified_digest(&self, id: &str) -> Option<String> {
        let v = self.get(&format!("/v1/attestations/{id}"))?;
        // Certified, and maybe signed, being paid or paid since.
        v["certificate"]["digest"].as_str().map(str::to_owned)
    }
}

impl Drop for Validator {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn wait_certified(nodes: &[&Validator], id: &str) -> String {
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

pub fn tail(s: &str) -> String {
    s.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
}

impl Validator {
    /// A counter or gauge from its `/metrics` (see [`ApiClient::metric`]).
    pub fn metric(&self, name: &str, filter: &str) -> f64 {
        self.api().metric(name, filter)
    }

    pub async fn wait_ready(&self) {
        wait_until(&format!("{} ready", self.name), Duration::from_secs(90), || async {
            self.get("/ready").filter(|v| v["ready"] == true)
        })
        .await
        .unwrap_or_else(|e| {
            let full = self.log();
            let log: String = full
                .lines()
                .filter(|l| l.contains("signing") || l.contains("WARN") || l.contains("ERROR"))
                .collect::<Vec<_>>()
                .join("\n");
            // The last lines whatever they say (a start-up error is not a WARN line).
            let lines: Vec<&str> = full.lines().collect();
            let last = lines[lines.len().saturating_sub(30)..].join("\n");
            panic!("{e}: {:?}\n{log}\n--- last lines of {}:\n{last}", self.get("/ready"), self.name)
        });
    }
}

/// `btcfi-node dkg` on every validator at once; returns the (identical) JSON output.
pub fn dkg_all(nodes: &[&Validator]) -> Value {
    let children: Vec<_> = nodes
        .iter()
        .map(|n| {
            Command::new(&n.bin)
                .args(["dkg", "--timeout-secs", "90", "--home"])
                .arg(n.home.path())
                .env("BTCFI_KEY_PASSPHRASE", PASSPHRASE)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let mut first: Option<Value> = None;
    for (n, o) in nodes.iter().zip(&outs) {
        assert!(o.status.success(), "dkg on {}: {}", n.name, String::from_utf8_lossy(&o.stderr));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        match &first {
            None => first = Some(v),
            Some(f) => assert_eq!(f, &v, "{} holds other keys", n.name),
        }
    }
    first.unwrap()
}

/// The vault (regtest P2TR) address of a DKG's output.
pub fn vault_of(keys: &Value) -> bitcoin::Address {
    let a: bitcoin::Address<bitcoin::address::NetworkUnchecked> =
        keys["btc"]["vault_address"].as_str().expect("dkg output names the vault").parse().expect("an address");
    a.require_network(bitcoin::Network::Regtest).expect("a regtest address")
}

/// Starts every validator, then waits until each is ready.
pub async fn start_all(nodes: &mut [Validator]) {
    for n in nodes.iter_mut() {
        n.start();
    }
    for n in nodes.iter() {
        n.wait_ready().await;
    }
}
