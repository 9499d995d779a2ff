//! Four real `btcfi-node` validator processes over libp2p on loopback, watching one
//! real bitcoind and one real anvil with the bridge deployed: they certify the same
//! attestations (a BTC deposit, an EVM burn); one killed with SIGKILL and restarted
//! catches up; a fifth node whose key is not in the set is refused. The vault is the
//! validators' own (from `btcfi-node dkg`).

use crate::common::{EvmChain, Setup, Validator, dkg_all, node_bin, wait_certified};
use alloy::primitives::B256;
use bitcoin::hashes::Hash;
use bitcoin::{Address, Amount};
use btcfi_chain_adapters::evm::bindings::IBridge;
use btcfi_signer::evm::mint_message;
use btcfi_testkit::{
    Anvil,
    contracts::{Deployed, KeyedBridge},
    frost::{DealerKey, TestRng},
};
use btcfi_testkit::{Bitcoind, wait_until};
use btcfi_types::{ChainId, DepositMemo, EvmAddress};
use std::{process::Command, time::Duration};

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

    /// Mints `sats` to dev account `user`, signed by the dealer group key.
    async fn mint(&mut self, user: usize, sats: u64) {
        let to = self.anvil.dev_address(user);
        let event_id = self.rng.bytes32();
        let msg = mint_message(self.anvil.chain_id(), self.deployed.bridge, event_id, to, sats);
        let sig = self.key.sign(&mut self.rng, msg);
        let bridge = IBridge::new(self.deployed.bridge, self.anvil.wallet_provider(0));
        let r = bridge.mint(B256::from(event_id), to, sats, sig.rx, sig.ry, sig.z).send().await.unwrap();
        assert!(r.get_receipt().await.unwrap().status());
    }

    /// Hands the bridge over to the validators' DKG key (`rotateKey`, signed by the
    /// dealer key): the node signs nothing for a bridge that holds another key.
    async fn rotate_to(&mut self, keys: &serde_json::Value) {
        let parse = |v: &serde_json::Value| {
            alloy::primitives::U256::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
        };
        let (x, y) = (parse(&keys["evm"]["x"]), parse(&keys["evm"]["y"]));
        let bridge = IBridge::new(self.deployed.bridge, self.anvil.wallet_provider(0));
        let msg = bridge.rotateMessage(x, y).call().await.unwrap();
        let sig = self.key.sign(&mut self.rng, msg.0);
        let r = bridge.rotateKey(x, y, sig.rx, sig.ry, sig.z).send().await.unwrap();
        assert!(r.get_receipt().await.unwrap().status(), "rotateKey");
    }

    /// Dev account `user` burns `sats` towards Bitcoin. Returns the burn's event id
    /// `chain:tx:log index`.
    async fn burn(&mut self, user: usize, sats: u64) -> String {
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
    let start = btc.block_count().await.unwrap() + 1;
    let mut evm = Evm::start().await;
    let mut setup = Setup::new(&btc, start);
    setup.evm.push(EvmChain {
        name: "ethereum".into(),
        chain_id: evm.anvil.chain_id(),
        url: evm.anvil.url(),
        bridge: evm.deployed.bridge.to_string(),
    });

    let mut nodes: Vec<Validator> =
        (0..4).map(|i| Validator::init(&crate::common::node_bin(), &format!("v{i}"))).collect();
    {
        let set: Vec<&Validator> = nodes.iter().collect();
        for n in &nodes {
            n.write_config(&set, &setup);
        }
    }
    // `config check` accepts what we wrote.
    let check =
        Command::new(node_bin()).args(["config", "check", "--home"]).arg(nodes[0].home.path()).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    assert!(String::from_utf8_lossy(&check.stdout).contains("rpc_password = \"***\""), "password masked");
    let keys = dkg_all(&nodes.iter().collect::<Vec<_>>());
    let vault = crate::common::vault_of(&keys);
    // Wrapped BTC for the burn below, minted under the dealer key; then the bridge is
    // the validators'.
    evm.mint(2, 70_000).await;
    evm.rotate_to(&keys).await;
    crate::common::start_all(&mut nodes).await;

    // One deposit: all four certify the same digest.
    let first = deposit(&btc, &vault, 1_000_000).await;
    btc.mine(2).await.unwrap();
    let d1 = wait_certified(&nodes.iter().collect::<Vec<_>>(), &first).await;
    let detail = nodes[0].get(&format!("/v1/attestations/{first}")).unwrap();
    assert_eq!(detail["amount_sats"], 1_000_000);
    assert_eq!(detail["destination_chain"], 31337);
    assert!(detail["certificate"]["signatures"].as_array().unwrap().len() >= 3, "{detail}");
    let dep = nodes[1].get(&format!("/v1/deposits/{}", &first[2..])).unwrap();
    assert!(["certified", "signed"].contains(&dep["status"].as_str().unwrap()), "{dep}");
    assert!(["signing", "submission"].contains(&dep["gate"].as_str().unwrap()), "{dep}");

    // A burn on the EVM chain: reported at depth 2 by every node's EVM adapter, certified.
    let burn = evm.burn(2, 70_000).await;
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
    let stranger = Validator::init(&crate::common::node_bin(), "stranger");
    {
        let mut set: Vec<&Validator> = nodes.iter().collect();
        set.push(&stranger);
        // It has no key share: it names the vault in its config instead.
        let mut own = setup.clone();
        own.vault = vault.to_string();
        stranger.write_config(&set, &own);
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

    // The API answers bad requests with a JSON error and a 4xx code, never a panic.
    let api = &nodes[1];
    let bad: [(&str, &str, u16); 7] = [
        ("GET", "/v2/nothing", 404),
        ("GET", "/v1/attestations/not-an-id", 400),
        ("GET", "/v1/attestations?status=lost", 400),
        ("GET", "/v1/attestations?limit=0", 400),
        ("GET", "/v1/attestations?offset=-1", 400),
        ("GET", "/v1/deposits/zz:1", 400),
        ("GET", &format!("/v1/attestations/0:{}:0", "00".repeat(32)), 404),
    ];
    for (method, path, want) in bad {
        let (code, body) = api.request(method, path, "");
        assert_eq!(code, want, "{method} {path}: {body}");
        assert!(body["error"].is_string(), "{method} {path}: a JSON error, got {body}");
    }
    // A deposit not seen yet is a deposit held at the depth gate, not an error.
    let (code, unseen) = api.request("GET", &format!("/v1/deposits/{}:7", "ab".repeat(32)), "");
    assert_eq!((code, unseen["status"].as_str(), unseen["gate"].as_str()), (200, Some("unknown"), Some("depth")));
    let (code, _) = api.request("GET", "/v1/status", &"x".repeat(64 * 1024));
    assert!(code == 413 || code == 200, "an oversized body is refused or ignored, got {code}");
    let (code, spec) = api.request("GET", "/v1/openapi.json", "");
    assert_eq!(code, 200);
    for route in ["/health", "/ready", "/metrics", "/v1/status", "/v1/attestations", "/v1/deposits/{outpoint}"] {
        assert!(spec["paths"].as_object().unwrap().keys().any(|k| k == route), "openapi lists {route}: {spec}");
    }
    // Every route the document lists is served, with a status it declares, and the
    // required fields of its 200 body are there.
    for (route, item) in spec["paths"].as_object().unwrap() {
        let path = route.replace("{id}", &first).replace("{outpoint}", &first[2..]);
        let (code, body) = api.request("GET", &path, "");
        let declared = &item["get"]["responses"][code.to_string()];
        assert!(declared.is_object(), "{path}: {code} is not a status the document declares: {body}");
        if code != 200 || route == "/metrics" {
            continue;
        }
        let mut schema = &declared["content"]["application/json"]["schema"];
        if let Some(name) = schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/schemas/")) {
            schema = &spec["components"]["schemas"][name];
        }
        for field in schema["required"].as_array().into_iter().flatten() {
            let field = field.as_str().unwrap();
            assert!(body.get(field).is_some(), "{path}: required field {field} missing from {body}");
        }
    }
    // Mints are signed in batches, a moment after certification.
    wait_until("the deposits' mints signed", Duration::from_secs(60), || async {
        let (_, listed) = api.request("GET", "/v1/attestations?status=signed&source=0", "");
        (listed["total"].as_u64() >= Some(2)).then_some(())
    })
    .await
    .unwrap();
    let (code, listed) = api.request("GET", "/v1/attestations?status=signed&limit=1&source=0", "");
    assert_eq!(code, 200, "{listed}");
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
    assert!(listed["total"].as_u64().unwrap() >= 2, "{listed}");
}
