//! Threshold signing end to end, with real validator processes, bitcoind and anvil:
//! the DKG's keys mint on a destination bridge and pay peg-outs from the Taproot vault
//! (bitcoind's own consensus rules check the signatures); signing survives a stopped
//! validator, one returning invalid shares, and one SIGKILLed between commitment and
//! share.

use crate::common::{EvmChain, Setup, Validator, dkg_all, tail};
use alloy::primitives::{Address, B256, U256};
use bitcoin::Amount;
use bitcoincore_rpc::RpcApi;
use btcfi_chain_adapters::evm::bindings::{IBridge, IBridge::IBridgeErrors, IWrappedBTC};
use btcfi_signer::{
    evm::mint_message,
    frost_secp256k1::{Identifier, Secp256K1Sha256},
    session::{Attempt, SessionId, coordinator},
};
use btcfi_testkit::{
    Anvil, Bitcoind, Miner,
    contracts::{deploy_bridge, reverts},
    wait_until,
};
use btcfi_types::{ChainId, DepositMemo, EventId, EvmAddress, TxHash};
use std::{collections::BTreeSet, str::FromStr, sync::Arc, time::Duration};

const PEG_OUT_FEE: u64 = 2_000;

/// The bridge on `c` as anvil dev account `account`.
fn as_account(c: &Chain, account: usize) -> IBridge::IBridgeInstance<alloy::providers::DynProvider> {
    IBridge::new(c.bridge, c.anvil.wallet_provider(account))
}

struct Chain {
    anvil: Anvil,
    bridge: Address,
    token: Address,
}

struct Net {
    btc: Arc<Bitcoind>,
    chains: Vec<Chain>,
    nodes: Vec<Validator>,
    vault: bitcoin::Address,
    /// A block every 700 ms, unless paused.
    miner: Miner,
    /// The DKG's group keys, as `btcfi-node dkg` printed them.
    keys: serde_json::Value,
}

/// How a test network differs from the default one.
struct Opts {
    /// Validator `i` runs with `faults[i]`.
    faults: [Option<&'static str>; 4],
    /// Releases are replaced (RBF) after this long unconfirmed.
    rbf_after_secs: u64,
    /// Stalled releases are merged with a competing one after this long.
    merge_after_ms: u64,
    /// The bridge of this chain gets no key (its `groupKey()` is zero), and the
    /// validators are started without waiting for them to be ready.
    unkeyed: Option<usize>,
    /// Attempts of a signing session before it fails and is retried as a new round.
    max_attempts: u32,
    /// bitcoind's own extra options (a relay policy).
    bitcoind_args: &'static [&'static str],
    /// Signing sessions per key at once.
    max_sessions_in_flight: usize,
    /// Most mints one batch signature covers.
    batch_max_mints: usize,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            faults: [None; 4],
            rbf_after_secs: 600,
            merge_after_ms: 600_000,
            unkeyed: None,
            max_attempts: 64,
            bitcoind_args: &[],
            batch_max_mints: 256,
            max_sessions_in_flight: 64,
        }
    }
}

/// bitcoind, two anvil chains with bridges, 4 validators after their DKG, the EVM
/// group key installed in both bridges; validator `i` runs with `faults[i]`.
async fn network(faults: [Option<&'static str>; 4]) -> Net {
    network_opts(Opts { faults, ..Opts::default() }).await
}

async fn network_opts(o: Opts) -> Net {
    let Opts {
        faults,
        rbf_after_secs,
        merge_after_ms,
        unkeyed,
        max_attempts,
        bitcoind_args,
        max_sessions_in_flight,
        batch_max_mints,
    } = o;
    let btc = Bitcoind::start_with(bitcoind_args).await.unwrap();
    let btc = Arc::new(btc);
    let start = btc.block_count().await.unwrap() + 1;
    let mut chains = Vec::new();
    for id in [31337u64, 31338] {
        let anvil = Anvil::start(id).await.unwrap();
        let d = deploy_bridge(&anvil.url(), &anvil.dev_key(0), anvil.dev_address(9)).await.unwrap();
        chains.push(Chain { anvil, bridge: d.bridge, token: d.token });
    }
    let mut setup = Setup::new(&btc, start);
    for (c, name) in chains.iter().zip(["ethereum", "polygon"]) {
        setup.evm.push(EvmChain {
            name: name.into(),
            chain_id: c.anvil.chain_id(),
            url: c.anvil.url(),
            bridge: c.bridge.to_string(),
        });
    }
    setup.extra = format!(
        "[signing]\ntimeout_ms = 3000\ntakeover_ms = 4000\nmerge_after_ms = {merge_after_ms}\nbridge_key_check_secs = 2\nmax_attempts = {max_attempts}\nmax_sessions_in_flight = {max_sessions_in_flight}\nbatch_max_mints = {batch_max_mints}\n\n\
         [bitcoin.fees]\nfloor_sat_per_vb = 2\nceiling_sat_per_vb = 50\nconf_target = 2\n"
    );
    let mut nodes: Vec<Validator> =
        (0..4).map(|i| Validator::init(&crate::common::node_bin(), &format!("v{i}"))).collect();
    for (i, n) in nodes.iter_mut().enumerate() {
        // Relayers: anvil dev accounts 1..=4 (the same on every anvil).
        n.relayer_key = Some(chains[0].anvil.dev_key(i + 1));
        n.fault = faults[i].map(str::to_owned);
    }
    {
        let set: Vec<&Validator> = nodes.iter().collect();
        for n in &nodes {
            n.write_config(&set, &setup);
            let cfg = std::fs::read_to_string(n.home.path().join("config.toml")).unwrap();
            let cfg = cfg.replace(
                "reorg_window = 20\n",
                &format!("reorg_window = 20\npeg_out_fee = {PEG_OUT_FEE}\nrbf_after_secs = {rbf_after_secs}\n"),
            );
            std::fs::write(n.home.path().join("config.toml"), cfg).unwrap();
        }
    }
    let keys = dkg_all(&nodes.iter().collect::<Vec<_>>());
    let (x, y) = (keys["evm"]["x"].as_str().unwrap(), keys["evm"]["y"].as_str().unwrap());
    for (i, c) in chains.iter().enumerate() {
        if unkeyed == Some(i) {
            continue;
        }
        let r = as_account(c, 0)
            .setInitialKey(U256::from_str(x).unwrap(), U256::from_str(y).unwrap())
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        assert!(r.status(), "setInitialKey");
    }
    let vault = crate::common::vault_of(&keys);
    if unkeyed.is_some() {
        nodes.iter_mut().for_each(Validator::start);
    } else {
        crate::common::start_all(&mut nodes).await;
    }
    // A block a second, as a live chain would.
    let miner = Miner::start(btc.clone(), Duration::from_millis(700));
    Net { btc, chains, nodes, vault, miner, keys }
}

impl Net {
    async fn deposit(&self, chain: usize, recipient: Address, sats: u64) -> EventId {
        let memo = DepositMemo {
            dest_chain: ChainId(self.chains[chain].anvil.chain_id()),
            recipient: EvmAddress(recipient.0.0),
        }
        .encode();
        let d = self.btc.send_deposit(&self.vault, Amount::from_sat(sats), Some(&memo)).await.unwrap();
        EventId::new(ChainId::BITCOIN, TxHash::from_str(&d.txid.to_string()).unwrap(), d.vout)
    }

    async fn balance(&self, chain: usize, who: Address) -> u64 {
        let c = &self.chains[chain];
        let token = IWrappedBTC::new(c.token, c.anvil.provider());
        token.balanceOf(who).call().await.unwrap().to::<u64>()
    }

    async fn wait_balance(&self, chain: usize, who: Address, want: u64) {
        let r = wait_until(&format!("balance {want} on chain {chain}"), Duration::from_secs(120), || async {
            (self.balance(chain, who).await == want).then_some(())
        })
        .await;
        if let Err(e) = r {
            for n in &self.nodes {
                let full = n.log();
                let lines: Vec<&str> =
                    full.lines().filter(|l| l.contains("\"target\":\"signing") || l.contains("relay")).collect();
                eprintln!("--- {}:\n{}", n.name, lines.join("\n"));
            }
            panic!("{e}");
        }
    }

    /// `burnToBitcoin(amount, payee)` on `chain` by anvil dev account `account`, made
    /// final; the burn's event id.
    async fn burn_to_bitcoin(&self, chain: usize, account: usize, amount: u64, payee: &bitcoin::Address) -> String {
        let id = self.burn_unmined(chain, account, amount, payee).await;
        self.chains[chain].anvil.mine(3).await.unwrap();
        id
    }

    /// [`Net::burn_to_bitcoin`] in a block of its own, not yet final.
    async fn burn_unmined(&self, chain: usize, account: usize, amount: u64, payee: &bitcoin::Address) -> String {
        let c = &self.chains[chain];
        let receipt = as_account(c, account)
            .burnToBitcoin(amount, payee.script_pubkey().to_bytes().into())
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        assert!(receipt.status());
        let log = receipt.inner.logs().iter().find(|l| l.address() == c.bridge).unwrap();
        format!("{}:{}:{}", c.anvil.chain_id(), hex::encode(receipt.transaction_hash.0), log.log_index.unwrap())
    }

    /// The attempt-0 coordinator of the mint session for a deposit.
    fn mint_coordinator(&self, chain: usize, event: &EventId, recipient: Address, sats: u64) -> usize {
        let c = &self.chains[chain];
        let msg = mint_message(c.anvil.chain_id(), c.bridge, event.contract_id(), recipient, sats);
        let ids: BTreeSet<Identifier> = (1..=4u16).map(|i| Identifier::try_from(i).unwrap()).collect();
        let sid = SessionId::derive::<Secp256K1Sha256>(&msg, 1, &ids);
        let coord = coordinator(&sid, Attempt(0), &ids).unwrap();
        (1..=4u16).position(|i| Identifier::try_from(i).unwrap() == coord).unwrap()
    }

    /// What a wallet address of bitcoind received in blocks.
    async fn received(&self, a: &bitcoin::Address) -> u64 {
        let a = a.clone();
        self.btc.rpc(move |c| c.get_received_by_address(&a, Some(1))).await.unwrap().to_sat()
    }

    /// Burns of 100,000 sats on the first chain by dev account 7, one after another
    /// (waiting `between` for `done` after each), until `done` holds or `most` were
    /// made: each burn's event id and payee.
    async fn burn_until(
        &self,
        most: usize,
        between: Duration,
        done: impl Fn(&Net) -> bool,
    ) -> Vec<(String, bitcoin::Address)> {
        let mut burns = Vec::new();
        for _ in 0..most {
            let payee = self.btc.new_address().await.unwrap();
            burns.push((self.burn_to_bitcoin(0, 7, 100_000, &payee).await, payee));
            if wait_until("the burns' effect", between, || async { done(self).then_some(()) }).await.is_ok() {
                break;
            }
        }
        burns
    }

    fn metric_sum(&self, name: &str, filter: &str) -> f64 {
        self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.metric(name, filter)).sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peg_in_mints_once_and_peg_out_is_paid_by_the_vault() {
    let mut net = network([None; 4]).await;
    let user = net.chains[1].anvil.dev_address(7);
    // The operator's summary names both keys as usable and the DKG's vault.
    let status = std::process::Command::new(crate::common::node_bin())
        .args(["status", "--home"])
        .arg(net.nodes[0].home.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(text.contains("ready") && !text.contains("NOT READY"), "{text}");
    assert_eq!(text.matches("(usable)").count(), 2, "{text}");
    assert!(text.contains(&net.vault.to_string()), "{text}");

    // Peg-in to the second chain: minted once, by a relayer, for exactly the amount.
    let deposit = net.deposit(1, user, 1_000_000).await;
    net.wait_balance(1, user, 1_000_000).await;
    let detail = wait_until("the signed attestation", Duration::from_secs(30), || async {
        net.nodes[0].get(&format!("/v1/attestations/{deposit}")).filter(|v| v["status"] == "signed")
    })
    .await
    .unwrap();
    let sig = &detail["signature"];
    // The same attestation submitted again does not mint twice: the contract refuses it.
    let c = &net.chains[1];
    let bridge = as_account(c, 5);
    let event_id = B256::from(deposit.contract_id());
    let again = bridge.mint(
        event_id,
        user,
        1_000_000,
        U256::from_str(sig["rx"].as_str().unwrap()).unwrap(),
        U256::from_str(sig["ry"].as_str().unwrap()).unwrap(),
        U256::from_str(sig["z"].as_str().unwrap()).unwrap(),
    );
    // Refused as a replay, not for any other reason (a bad signature, say).
    reverts(again, IBridgeErrors::AlreadyConsumed(IBridge::AlreadyConsumed { eventId: event_id })).await;
    assert_eq!(net.balance(1, user).await, 1_000_000, "minted exactly once");
    let supply = IWrappedBTC::new(c.token, c.anvil.provider()).totalSupply().call().await.unwrap();
    assert_eq!(supply, U256::from(1_000_000u64));
    let dep = net.nodes[2].get(&format!("/v1/deposits/{}:{}", deposit.tx, deposit.index)).unwrap();
    assert_eq!(dep["status"], "signed", "{dep}");
    assert_eq!(net.metric_sum("btcfi_relay_submissions_total", "outcome=\"submitted\""), 1.0, "one relayer submitted");

    // EVM to EVM: burned on this chain, minted on the other, by the same signature path.
    let other = net.chains[0].anvil.dev_address(6);
    let receipt = as_account(c, 7)
        .burnToChain(net.chains[0].anvil.chain_id(), other, 150_000)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(receipt.status(), "burnToChain");
    c.anvil.mine(3).await.unwrap();
    net.wait_balance(0, other, 150_000).await;
    assert_eq!(net.balance(1, user).await, 1_000_000 - 150_000, "burned on the source chain");

    // Peg-out from that chain back to a bitcoind wallet address.
    let payee = net.btc.new_address().await.unwrap();
    let burn = net.burn_to_bitcoin(1, 7, 600_000, &payee).await;
    let paid = wait_until("the peg-out paid at depth", Duration::from_secs(180), || async {
        net.nodes[1].get(&format!("/v1/attestations/{burn}")).filter(|v| v["status"] == "paid")
    })
    .await;
    let paid = match paid {
        Ok(v) => v,
        Err(e) => {
            for n in &net.nodes {
                eprintln!("--- {}:\n{}", n.name, tail(&n.log()));
            }
            panic!("{e}");
        }
    };
    assert_eq!(paid["release"]["paid_sats"], 600_000 - PEG_OUT_FEE, "{paid}");
    let txid = bitcoin::Txid::from_str(paid["release"]["txid"].as_str().unwrap()).unwrap();
    let tx = net.btc.rpc(move |c| c.get_raw_transaction_info(&txid, None)).await.unwrap();
    assert!(tx.confirmations.unwrap_or(0) >= 2, "in a block, at depth");
    let to_payee: Vec<_> =
        tx.vout.iter().filter(|o| o.script_pub_key.hex == payee.script_pubkey().to_bytes()).collect();
    assert_eq!(to_payee.len(), 1);
    assert_eq!(to_payee[0].value, Amount::from_sat(600_000 - PEG_OUT_FEE), "exact amount minus the stated fee");

    // One of the four stopped: the other three still sign (and relay) a mint.
    net.nodes[0].kill();
    let user2 = net.chains[0].anvil.dev_address(8);
    net.deposit(0, user2, 500_000).await;
    net.wait_balance(0, user2, 500_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_returning_invalid_shares_is_excluded_and_recorded() {
    let faulty = 3;
    let net = network([None, None, None, Some("invalid-signature-shares")]).await;
    let user = net.chains[0].anvil.dev_address(7);
    // A deposit whose first attempt an honest validator coordinates: the coordinator
    // waits for every responsive signer, so the faulty one's share is in the package.
    let mut total = 0;
    let mut amount = 300_000;
    loop {
        let event = net.deposit(0, user, amount).await;
        total += amount;
        let coord = net.mint_coordinator(0, &event, user, amount);
        net.wait_balance(0, user, total).await;
        if coord != faulty {
            let culprits = net.nodes[coord].metric("btcfi_signing_culprits_total", "key=\"evm\"");
            assert!(culprits >= 1.0, "the coordinator v{coord} recorded the culprit");
            let detail = net.nodes[coord].get(&format!("/v1/attestations/{event}")).unwrap();
            let signers: Vec<&str> =
                detail["mint"]["signers"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
            assert!(!signers.contains(&net.nodes[faulty].peer_id.as_str()), "excluded: {detail}");
            assert!(net.nodes[coord].log().contains("invalid signature share"));
            break;
        }
        amount += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signer_killed_between_commitment_and_share_never_answers_that_attempt() {
    let victim = 2;
    let mut net = network([None, None, Some("withhold-signature-shares"), None]).await;
    let user = net.chains[0].anvil.dev_address(7);
    let mut amount = 400_000;
    let mut expected = 0;
    loop {
        let withheld = |n: &Validator| n.log().matches("withholding a signature share").count();
        let before = withheld(&net.nodes[victim]);
        let event = net.deposit(0, user, amount).await;
        expected += amount;
        let coord = net.mint_coordinator(0, &event, user, amount);
        if coord == victim {
            // It coordinates (and signs for itself): not the case under test.
            net.wait_balance(0, user, expected).await;
            amount += 1;
            continue;
        }
        // The victim commits (the record is durable), gets the package, withholds the
        // share… (unless its commitment came too late to be in the package: try again).
        let caught = wait_until("the victim between commitment and share", Duration::from_secs(60), || async {
            if withheld(&net.nodes[victim]) > before {
                Some(true)
            } else if net.balance(0, user).await == expected {
                Some(false)
            } else {
                None
            }
        })
        .await
        .unwrap();
        if !caught {
            amount += 1;
            continue;
        }
        assert!(net.nodes[victim].metric("btcfi_signing_commitments_total", "key=\"evm\"") >= 1.0);
        // …and dies without a word.
        net.nodes[victim].kill();
        // The commitment of the attempt it withheld its share from is on disk: the
        // session's record, not any other (key checks commit too).
        let log = net.nodes[victim].log();
        let sid = withheld_session(&log).expect("the withholding line names its session");
        let committed = committed_attempts(&net.nodes[victim], &sid);
        assert!(!committed.is_empty(), "no durable commitment of session {sid} survived the kill");
        net.nodes[victim].fault = None;
        net.nodes[victim].start();
        // The session still completes: the coordinator excluded the silent signer.
        net.wait_balance(0, user, expected).await;
        // The restarted signer learned the signature but never committed again, let alone
        // answered the attempt it had committed to before the crash.
        let detail = wait_until("the victim to hold the signature", Duration::from_secs(60), || async {
            net.nodes[victim].get(&format!("/v1/attestations/{event}")).filter(|v| v["status"] == "signed")
        })
        .await
        .unwrap();
        assert_eq!(
            detail["signature"],
            net.nodes[coord].get(&format!("/v1/attestations/{event}")).unwrap()["signature"]
        );
        // The coordinator ended the attempt the victim had committed to and signed
        // without it.
        let at_coord = net.nodes[coord].get(&format!("/v1/attestations/{event}")).unwrap();
        assert!(at_coord["mint"]["attempt"].as_u64().unwrap() >= 1, "a later attempt signed: {at_coord}");
        let signers: Vec<&str> =
            at_coord["mint"]["signers"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        assert!(!signers.contains(&net.nodes[victim].peer_id.as_str()), "{at_coord}");
        assert_eq!(net.nodes[victim].metric("btcfi_signing_commitments_total", "key=\"evm\""), 0.0);
        break;
    }
}

/// The session (its id's first 8 bytes, hex) of the last share a validator withheld,
/// from its log line `session=SessionId(…)`.
fn withheld_session(log: &str) -> Option<String> {
    let line = log.lines().rev().find(|l| l.contains("withholding a signature share"))?;
    let at = line.find("SessionId(")? + "SessionId(".len();
    let hex: String = line[at..].chars().take_while(char::is_ascii_hexdigit).collect();
    (hex.len() == 16).then_some(hex)
}

/// The attempts of `evm` session `sid` (8-byte hex prefix) whose commitments `v` (stopped)
/// holds as issued: `kind | session (32) | attempt (4)` keys in `signing_attempts`.
fn committed_attempts(v: &Validator, sid: &str) -> Vec<u32> {
    let store = btcfi_store::Store::open(v.home.path().join("data")).expect("open the stopped validator's store");
    let kind = btcfi_node::keys::KeyKind::Evm.byte();
    store
        .scan_prefix(btcfi_store::Cf::SigningAttempts, &[kind])
        .expect("scan")
        .into_iter()
        .filter(|(k, _)| k.len() == 37 && hex::encode(&k[1..9]) == sid)
        .map(|(k, _)| u32::from_be_bytes(k[33..37].try_into().expect("4 bytes")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_release_is_replaced_by_fee_and_pays_once() {
    let net = network_opts(Opts { rbf_after_secs: 3, ..Opts::default() }).await;
    let user = net.chains[0].anvil.dev_address(7);
    net.deposit(0, user, 1_000_000).await;
    net.wait_balance(0, user, 1_000_000).await;

    // No blocks from the moment the burn is certified: the release stays in the mempool.
    let payee = net.btc.new_address().await.unwrap();
    let burn = net.burn_to_bitcoin(0, 7, 400_000, &payee).await;
    wait_until("the burn certified", Duration::from_secs(60), || async {
        net.nodes[0].get(&format!("/v1/attestations/{burn}")).filter(|v| v["certificate"]["digest"].is_string())
    })
    .await
    .unwrap();
    net.miner.pause().await;
    let mempool = || async {
        net.btc.rpc(|c| c.get_raw_mempool()).await.unwrap().into_iter().map(|t| t.to_string()).collect::<Vec<_>>()
    };
    // The first release, then (after rbf_after_secs unconfirmed) its replacement.
    let first = wait_until("the release in the mempool", Duration::from_secs(60), || async {
        let v = net.nodes[0].get(&format!("/v1/attestations/{burn}"))?;
        let txid = v["release"]["txid"].as_str()?.to_owned();
        mempool().await.contains(&txid).then_some((txid, v["release"]["network_fee_sats"].as_u64()?))
    })
    .await
    .unwrap();
    let second = wait_until("a replacement in the mempool", Duration::from_secs(90), || async {
        let v = net.nodes[0].get(&format!("/v1/attestations/{burn}"))?;
        let txid = v["release"]["txid"].as_str()?.to_owned();
        (txid != first.0 && mempool().await.contains(&txid)).then_some((txid, v["release"].clone()))
    })
    .await
    .unwrap_or_else(|e| {
        for n in &net.nodes {
            eprintln!("--- {}:\n{}", n.name, tail(&n.log()));
        }
        panic!("{e}")
    });
    // A replacement of the first (or, if blocks stay away, of a replacement of it).
    assert!(second.1["replaces"].is_string(), "{}", second.1);
    assert!(second.1["network_fee_sats"].as_u64().unwrap() > first.1, "a higher fee: {} vs {}", second.1, first.1);
    assert!(!mempool().await.contains(&first.0), "bitcoind replaced the first release");
    assert!(net.metric_sum("btcfi_releases_total", "outcome=\"replaced\"") >= 1.0);

    // Blocks again: the replacement confirms and pays exactly once.
    net.miner.resume();
    let paid = wait_until("the peg-out paid at depth", Duration::from_secs(120), || async {
        net.nodes[2].get(&format!("/v1/attestations/{burn}")).filter(|v| v["status"] == "paid")
    })
    .await
    .unwrap();
    assert_ne!(paid["release"]["txid"], first.0.as_str(), "{paid}");
    assert_eq!(paid["release"]["paid_sats"], 400_000 - PEG_OUT_FEE);
    let received = net.btc.rpc(move |c| c.get_received_by_address(&payee, Some(0))).await.unwrap();
    assert_eq!(received, Amount::from_sat(400_000 - PEG_OUT_FEE), "paid once, by the replacement only");
    let old = bitcoin::Txid::from_str(&first.0).unwrap();
    assert!(
        net.btc.rpc(move |c| c.get_raw_transaction_info(&old, None)).await.is_err(),
        "the first release never confirms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validators_restored_from_backups_older_than_a_payment_never_pay_it_again() {
    let (net, burn, release, payee) = restored_after_a_payment(None).await;
    // Longer than every validator's turn to propose (2 s + 3 × takeover of 4 s), with blocks.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    while tokio::time::Instant::now() < deadline {
        let received = net.btc.rpc({
            let payee = payee.clone();
            move |c| c.get_received_by_address(&payee, Some(0))
        });
        assert_eq!(received.await.unwrap(), Amount::from_sat(400_000 - PEG_OUT_FEE), "paid once, never again");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for &i in &[0usize, 1, 2] {
        let n = &net.nodes[i];
        assert_eq!(n.metric("btcfi_releases_pending", ""), 0.0, "{}: nothing left to pay", n.name);
        let v = n.get(&format!("/v1/attestations/{burn}")).unwrap();
        assert!(v["release"].is_null() || v["release"]["txid"] == release.as_str(), "{}: {v}", n.name);
    }
    // Not for want of working signers: the restored validators pay the next peg-out.
    let next_payee = net.btc.new_address().await.unwrap();
    let next = net.burn_to_bitcoin(0, 7, 300_000, &next_payee).await;
    wait_paid(&net, &next).await;
    assert_eq!(net.received(&next_payee).await, 300_000 - PEG_OUT_FEE, "paid once");
    assert_eq!(net.received(&payee).await, 400_000 - PEG_OUT_FEE, "the first still paid once");
}

/// The negative control of the test above: the same restore with the payment bound off
/// (the vault's payments on chain not counted) pays the peg-out a second time, so what
/// the test above shows is the bound's work, not a lack of time or of signers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_payment_bound_validators_restored_from_backups_pay_again() {
    let (net, _, _, payee) = restored_after_a_payment(Some("no-payment-bound")).await;
    let twice = Amount::from_sat(2 * (400_000 - PEG_OUT_FEE));
    wait_until("the peg-out paid a second time", Duration::from_secs(90), || async {
        let payee = payee.clone();
        let received = net.btc.rpc(move |c| c.get_received_by_address(&payee, Some(0))).await.ok()?;
        (received == twice).then_some(())
    })
    .await
    .unwrap();
}

/// Three validators (t of them) backed up before a peg-out is paid, then restored from
/// those backups after it was, running with `fault`; returns when each has certified
/// the burn again and seen the vault's spend on chain: the network, the burn, the
/// release that paid it, and the payee.
async fn restored_after_a_payment(fault: Option<&str>) -> (Net, String, String, bitcoin::Address) {
    let mut net = network([None; 4]).await;
    let user = net.chains[0].anvil.dev_address(7);
    net.deposit(0, user, 1_000_000).await;
    net.wait_balance(0, user, 1_000_000).await;

    // Backups of three validators (t of them) before the peg-out.
    let restored = [0usize, 1, 2];
    for &i in &restored {
        let n = &mut net.nodes[i];
        n.kill();
        let out = n.home.path().join("backup-before-peg-out");
        let done = std::process::Command::new(crate::common::node_bin())
            .args(["backup", "--home"])
            .arg(n.home.path())
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
        n.start();
    }
    for &i in &restored {
        net.nodes[i].wait_ready().await;
    }

    // The peg-out, paid at depth.
    let payee = net.btc.new_address().await.unwrap();
    let burn = net.burn_to_bitcoin(0, 7, 400_000, &payee).await;
    let paid = wait_until("the peg-out paid at depth", Duration::from_secs(120), || async {
        net.nodes[3].get(&format!("/v1/attestations/{burn}")).filter(|v| v["status"] == "paid")
    })
    .await
    .unwrap();
    let release = paid["release"]["txid"].as_str().unwrap().to_owned();

    // The three restored from before it: their databases know nothing of the release.
    for &i in &restored {
        let n = &mut net.nodes[i];
        n.kill();
        let data = n.home.path().join("data");
        std::fs::remove_dir_all(&data).unwrap();
        std::fs::rename(n.home.path().join("backup-before-peg-out"), &data).unwrap();
        n.fault = fault.map(str::to_owned);
        n.start();
    }
    for &i in &restored {
        net.nodes[i].wait_ready().await;
    }
    // They observe and certify the burn again; their Bitcoin view rescans the vault's
    // spend, and the chain, not their memory, says the peg-out is paid.
    for &i in &restored {
        let n = &net.nodes[i];
        wait_until(&format!("{} to certify the burn again", n.name), Duration::from_secs(90), || async {
            n.get(&format!("/v1/attestations/{burn}")).filter(|v| v["certificate"]["digest"].is_string())
        })
        .await
        .unwrap();
        wait_until(&format!("{} to see the release on chain", n.name), Duration::from_secs(60), || async {
            n.log().contains("a vault spend this node has no release for").then_some(())
        })
        .await
        .unwrap();
    }
    (net, burn, release, payee)
}

/// Whoever proposes sends two releases with different inputs for the same peg-out,
/// each to half of the validators: neither can reach t signers. The split heals and
/// the peg-out is paid once: the release book merges the halves, or lets the half
/// never shared to expire so that its holders sign the other (whichever comes first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_split_by_its_proposer_is_merged_and_pays_once() {
    let split = Some("split-release-proposals");
    let net =
        network_opts(Opts { faults: [split; 4], rbf_after_secs: 600, merge_after_ms: 8_000, ..Opts::default() }).await;
    let user = net.chains[0].anvil.dev_address(7);
    // Two vault UTXOs, each enough for the peg-out alone.
    net.deposit(0, user, 600_000).await;
    net.deposit(0, user, 650_000).await;
    net.wait_balance(0, user, 1_250_000).await;

    let payee = net.btc.new_address().await.unwrap();
    let burn = net.burn_to_bitcoin(0, 7, 400_000, &payee).await;
    let paid = wait_until("the peg-out paid at depth", Duration::from_secs(150), || async {
        net.nodes[2].get(&format!("/v1/attestations/{burn}")).filter(|v| v["status"] == "paid")
    })
    .await
    .unwrap_or_else(|e| {
        for n in &net.nodes {
            let lines: Vec<String> =
                n.log().lines().filter(|l| l.contains("\"target\":\"release")).map(str::to_owned).collect();
            eprintln!("--- {}:\n{}", n.name, lines.join("\n"));
        }
        panic!("{e}")
    });
    assert!(net.nodes.iter().any(|n| n.log().contains("TEST FAULT: splitting a release proposal")), "it split");
    let merged = net.metric_sum("btcfi_releases_total", "outcome=\"merged\"") >= 1.0;
    let txid = bitcoin::Txid::from_str(paid["release"]["txid"].as_str().unwrap()).unwrap();
    let tx = net.btc.rpc(move |c| c.get_raw_transaction_info(&txid, None)).await.unwrap();
    if tx.vin.len() == 2 {
        assert!(merged, "a merge was proposed");
        // The merge pays the peg-out, spending an input of each half's release.
        assert_eq!(tx.vin.len(), 2, "the merge conflicts with both halves' releases: {paid}");
    } else {
        // A half paid it (or a respin of one): the other expired where it was held,
        // never shared to.
        assert_eq!(tx.vin.len(), 1, "{paid}");
        let healed = ["expired", "respun"]
            .iter()
            .any(|o| net.metric_sum("btcfi_releases_total", &format!("outcome=\"{o}\"")) >= 1.0);
        assert!(healed, "a half expired or was respun: {paid}");
    }
    let received = net.btc.rpc(move |c| c.get_received_by_address(&payee, Some(0))).await.unwrap();
    assert_eq!(received, Amount::from_sat(400_000 - PEG_OUT_FEE), "paid once");
}

/// Faults for a network where validator `i` alone misbehaves with `fault`.
fn one_faulty(i: usize, fault: &'static str) -> [Option<&'static str>; 4] {
    let mut faults = [None; 4];
    faults[i] = Some(fault);
    faults
}

/// Every validator but `faulty` refused at least one release proposal for `reason`
/// (`btcfi_release_refusals_total`); the release logs are printed if one did not.
fn assert_refused_by_the_others(net: &Net, reason: &str, faulty: usize) {
    let refused: Vec<f64> =
        net.nodes.iter().map(|n| n.metric("btcfi_release_refusals_total", &format!("reason=\"{reason}\""))).collect();
    if refused.iter().enumerate().any(|(i, r)| i != faulty && *r < 1.0) {
        print_release_logs(net);
        panic!("every validator but v{faulty} refuses a proposal for {reason}: {refused:?}");
    }
}

/// No validator refused a proposal of `honest` out of turn: a proposer in its turn is
/// heard in its turn, by every clock.
fn assert_never_refused_out_of_turn(net: &Net, honest: impl Fn(usize) -> bool) {
    for n in &net.nodes {
        for line in n.log().lines().filter(|l| l.contains("release proposal refused")) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            let from = v["fields"]["from"].as_u64().unwrap_or(u64::MAX) as usize;
            let reason = v["fields"]["reason"].as_str().unwrap_or_default();
            if honest(from) && reason.contains("turn") {
                print_release_logs(net);
                panic!("{} refused an honest proposer out of turn: {line}", n.name);
            }
        }
    }
}

/// Every validator's release log lines, for a failed assertion.
fn print_release_logs(net: &Net) {
    for n in &net.nodes {
        let lines: Vec<String> =
            n.log().lines().filter(|l| l.contains("\"target\":\"release")).map(str::to_owned).collect();
        eprintln!("--- {}:\n{}", n.name, lines.join("\n"));
    }
}

/// Waits until `burn` is paid at depth (as validator 0 sees it), printing the release
/// logs on a timeout.
async fn wait_paid(net: &Net, burn: &str) -> serde_json::Value {
    wait_until("the peg-out paid at depth", Duration::from_secs(150), || async {
        net.nodes[0].get(&format!("/v1/attestations/{burn}")).filter(|v| v["status"] == "paid")
    })
    .await
    .unwrap_or_else(|e| {
        print_release_logs(net);
        panic!("{e}")
    })
}

/// One validator proposes every release at ten times the honest fee rate (within the
/// configured ceiling), at once, whatever the turn. Every honest signer refuses it (out
/// of its turn for the turn, in its turn for the fee, above twice their own estimate);
/// every peg-out is paid once by an honest proposal at the honest rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_at_ten_times_the_honest_fee_rate_is_refused_by_every_honest_signer() {
    let greedy = 1;
    let net = network(one_faulty(greedy, "greedy-fee-proposals")).await;
    let user = net.chains[0].anvil.dev_address(7);
    net.deposit(0, user, 5_000_000).await;
    net.wait_balance(0, user, 5_000_000).await;

    // Peg-outs, one after another, until every honest signer refused a greedy proposal
    // for its fee: a signer judges the turn before the fee, so only the faulty
    // proposer's proposals in its own turn (one turn in four) are refused for the fee.
    let refused = |n: &Validator| n.metric("btcfi_release_refusals_total", "reason=\"fee_out_of_band\"") >= 1.0;
    let all_refused = |net: &Net| net.nodes.iter().enumerate().all(|(i, n)| i == greedy || refused(n));
    let burns = net.burn_until(40, Duration::from_secs(2), all_refused).await;
    assert!(net.nodes[greedy].log().contains("TEST FAULT: sending a release proposal"), "it proposed");
    assert_refused_by_the_others(&net, "fee_out_of_band", greedy);
    let mut fees = 0.0;
    for (burn, payee) in burns {
        let paid = wait_paid(&net, &burn).await;
        // Paid by an honest release: the floor rate of 2 sat/vB (regtest has no
        // estimate), so at most twice that, never the greedy 20.
        let rate = paid["release"]["fee_rate_sat_per_vb"].as_u64().unwrap();
        assert!(rate <= 4, "honest fee rate, not the greedy one: {paid}");
        assert_eq!(net.received(&payee).await, 100_000 - PEG_OUT_FEE, "paid once");
        fees = f64::max(fees, paid["release"]["network_fee_sats"].as_f64().unwrap());
    }
    assert!(net.metric_sum("btcfi_vault_fees_paid_sats_total", "") >= fees);
}

/// One validator proposes, at the honest rate, whenever the turn to propose is not its
/// own (and never in its turn). Every honest signer refuses it; the validator in turn
/// proposes, and every peg-out is paid once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_out_of_turn_is_refused_by_every_honest_signer() {
    let eager = 2;
    let net = network(one_faulty(eager, "out-of-turn-proposals")).await;
    let user = net.chains[0].anvil.dev_address(7);
    // Two vault UTXOs: the faulty validator spends the smaller, the one in turn the larger.
    net.deposit(0, user, 1_600_000).await;
    net.deposit(0, user, 1_500_000).await;
    net.wait_balance(0, user, 3_100_000).await;

    // Peg-outs, one after another, until every honest signer refused one of its
    // proposals: it is silent around its own turn, and a peg-out may be paid inside
    // that silence.
    let refused = |n: &Validator| n.metric("btcfi_release_refusals_total", "reason=\"not_in_turn\"") >= 1.0;
    let all_refused = |net: &Net| net.nodes.iter().enumerate().all(|(i, n)| i == eager || refused(n));
    let burns = net.burn_until(20, Duration::from_secs(3), all_refused).await;
    for (burn, _) in &burns {
        wait_paid(&net, burn).await;
    }
    assert_refused_by_the_others(&net, "not_in_turn", eager);
    assert_never_refused_out_of_turn(&net, |from| from != eager);
    for (_, payee) in burns {
        assert_eq!(net.received(&payee).await, 100_000 - PEG_OUT_FEE, "paid once");
    }
}

/// A burst of 250 peg-outs over two chains, burned in waves for seconds, is
/// paid in the fewest releases the batch limit allows (200 payouts each: two), each
/// peg-out once: one validator proposes at a time, and a batch that is not full waits
/// while peg-outs keep coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_peg_outs_is_paid_in_as_few_releases_as_the_batch_limit_allows() {
    const BURNS: u64 = 250;
    let net = network([None; 4]).await;
    let users = [net.chains[0].anvil.dev_address(7), net.chains[1].anvil.dev_address(7)];
    // One vault UTXO for each release: a release spends only final UTXOs.
    net.deposit(0, users[0], 30_000_000).await;
    net.deposit(1, users[1], 30_000_000).await;
    net.wait_balance(0, users[0], 30_000_000).await;
    net.wait_balance(1, users[1], 30_000_000).await;
    // Ten waves half a second apart: peg-outs keep being certified for seconds.
    let mut burns = Vec::new();
    for j in 0..BURNS {
        let chain = (j % 2) as usize;
        let payee = net.btc.new_address().await.unwrap();
        let amount = 100_000 + j;
        let id = net.burn_unmined(chain, 7, amount, &payee).await;
        burns.push((id, payee, amount));
        if j % 25 == 24 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    for c in &net.chains {
        c.anvil.mine(3).await.unwrap();
    }
    let mut releases = BTreeSet::new();
    for (id, _, _) in &burns {
        let paid = wait_paid(&net, id).await;
        releases.insert(paid["release"]["txid"].as_str().unwrap().to_owned());
    }
    for (_, payee, amount) in burns {
        let received = net.btc.rpc(move |c| c.get_received_by_address(&payee, Some(0))).await.unwrap();
        assert_eq!(received, Amount::from_sat(amount - PEG_OUT_FEE), "paid once");
    }
    let fewest = (BURNS as usize).div_ceil(btcfi_release::MAX_PAYOUTS);
    if releases.len() != fewest {
        print_release_logs(&net);
    }
    assert_eq!(releases.len(), fewest, "{BURNS} peg-outs in {fewest} releases: {releases:?}");
    assert_never_refused_out_of_turn(&net, |_| true);
}

/// A bridge whose `groupKey()` is not the epoch's evm key (here: never set) makes its
/// chain not ready, with the reason, and nothing to it is signed; once the bridge holds
/// the key (checked periodically), the mint that waited is signed and minted. The other
/// chain works throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_holding_another_key_gets_nothing_signed_until_it_holds_the_epochs() {
    let net = network_opts(Opts { unkeyed: Some(1), ..Opts::default() }).await;
    let unkeyed = net.chains[1].anvil.chain_id();
    for n in &net.nodes {
        wait_until(&format!("{} names the bridge", n.name), Duration::from_secs(90), || async {
            let s = n.get("/v1/status")?;
            let why: Vec<String> =
                s["not_ready"].as_array()?.iter().filter_map(|r| r.as_str().map(str::to_owned)).collect();
            let about_bridge = |r: &String| r.contains(&format!("chain {unkeyed}")) && r.contains("groupKey()");
            (!why.is_empty() && why.iter().all(about_bridge)).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", n.get("/v1/status").unwrap_or_default()));
    }
    let user = net.chains[0].anvil.dev_address(7);
    let held = net.deposit(1, user, 700_000).await;
    net.deposit(0, user, 500_000).await;
    net.wait_balance(0, user, 500_000).await;
    // Certified like any other, but not signed: its bridge would not take our key.
    let rec = wait_until("the held deposit certified", Duration::from_secs(60), || async {
        net.nodes[0].get(&format!("/v1/attestations/{held}")).filter(|v| v["certificate"]["digest"].is_string())
    })
    .await
    .unwrap();
    assert_ne!(rec["status"], "signed", "{rec}");
    assert!(rec["signature"].is_null(), "{rec}");
    assert_eq!(net.balance(1, user).await, 0);

    // The bridge gets the epoch's key: the mint that waited is signed and minted.
    let keys = &net.keys;
    let (x, y) = (keys["evm"]["x"].as_str().unwrap(), keys["evm"]["y"].as_str().unwrap());
    let r = as_account(&net.chains[1], 0)
        .setInitialKey(U256::from_str(x).unwrap(), U256::from_str(y).unwrap())
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(r.status());
    net.wait_balance(1, user, 700_000).await;
    for n in &net.nodes {
        n.wait_ready().await;
    }
}

/// bitcoind relays less than the node's own checks allow (a `-dustrelayfee` twice the
/// default: dust limits twice the node's). A burn that leaves exactly the node's dust
/// limit after the fee passes the node's check and the contract's minimum, but bitcoind's
/// `testmempoolaccept` refuses any release paying it: the node blames that payout, sets
/// it apart (`unpayable`, with bitcoind's reason), and the burn made right after it is
/// paid. Without the check, the release holding both was signed and never relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payout_bitcoinds_policy_refuses_is_set_apart_and_the_others_are_paid() {
    let net = network_opts(Opts { bitcoind_args: &["-dustrelayfee=0.00006"], ..Opts::default() }).await;
    let user = net.chains[0].anvil.dev_address(7);
    net.deposit(0, user, 1_000_000).await;
    net.wait_balance(0, user, 1_000_000).await;

    let small_payee = net.btc.new_address().await.unwrap();
    // Exactly the node's own dust limit for its type after the fee: below bitcoind's.
    let script = small_payee.script_pubkey();
    let dust = btcfi_node::release::Policy::new(script.clone(), btcfi_types::Sats(0), 1, 1).dust_limit(&script);
    let small = net.burn_to_bitcoin(0, 7, PEG_OUT_FEE + dust, &small_payee).await;
    let payee = net.btc.new_address().await.unwrap();
    let regular = net.burn_to_bitcoin(0, 7, 300_000, &payee).await;
    wait_paid(&net, &regular).await;
    let received = net.btc.rpc(move |c| c.get_received_by_address(&payee, Some(0))).await.unwrap();
    assert_eq!(received, Amount::from_sat(300_000 - PEG_OUT_FEE));
    for n in &net.nodes {
        let v = wait_until("the small payout set apart", Duration::from_secs(30), || async {
            n.get(&format!("/v1/attestations/{small}")).filter(|v| v["status"] == "unpayable")
        })
        .await
        .unwrap_or_else(|e| panic!("{}: {e}: {:?}", n.name, n.get(&format!("/v1/attestations/{small}"))));
        assert!(v.to_string().contains("dust"), "bitcoind's reason is named: {v}");
    }
    let nothing = net.btc.rpc(move |c| c.get_received_by_address(&small_payee, Some(0))).await.unwrap();
    assert_eq!(nothing, Amount::ZERO);
}

/// A mint whose signers were away for longer than a whole session: with one validator
/// stopped and another taking no part in signing, the two left cannot reach t = 3, and
/// the session fails. The round is retried by itself with backoff (and at once when a
/// signer is back); the stopped validators come back (without their fault), join the
/// round their peers are in, and the mint that waited is signed and minted. Before
/// retries, a failed session could never sign that message again in the epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mint_whose_signers_were_away_for_longer_than_a_session_is_signed_when_they_return() {
    // A session gives up after 4 attempts here (64 by default: minutes at this timeout).
    let faults = [None, None, Some("silent-on-mints"), None];
    let mut net = network_opts(Opts { faults, max_attempts: 4, ..Opts::default() }).await;
    net.nodes[3].kill();
    let user = net.chains[0].anvil.dev_address(7);
    let failed = |net: &Net| net.nodes[0].metric("btcfi_signing_sessions_total", "outcome=\"failed\"");
    net.deposit(0, user, 800_000).await;
    wait_until("a failed session", Duration::from_secs(90), || async { (failed(&net) >= 1.0).then_some(()) })
        .await
        .unwrap();
    // The silent one stops too; the round fails again while two are away.
    net.nodes[2].kill();
    wait_until("a retried round failed too", Duration::from_secs(90), || async { (failed(&net) >= 2.0).then_some(()) })
        .await
        .unwrap();
    assert_eq!(net.balance(0, user).await, 0);
    net.nodes[2].fault = None;
    net.nodes[2].start();
    net.nodes[3].start();
    net.wait_balance(0, user, 800_000).await;
    assert!(net.nodes[0].log().contains("retried as a new round"), "the round was retried");
}

/// Two burns paid by one release that waits in the mempool; then the second burn's
/// block is reorged out past the EVM chain's finality. Every validator replaces the
/// release by its withdrawal (same inputs, the first burn's payout alone), which is the
/// one that confirms: the reorged peg-out is never paid, the other is, exactly. The
/// API says `reorged`, the alert's counter moved, and a validator restarted afterwards
/// holds nothing for the reorged peg-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peg_out_reorged_out_past_finality_is_left_out_of_its_live_release_and_never_paid() {
    let mut net = network([None; 4]).await;
    let user = net.chains[1].anvil.dev_address(7);
    net.deposit(1, user, 1_000_000).await;
    net.wait_balance(1, user, 1_000_000).await;
    let (kept_payee, gone_payee) = (net.btc.new_address().await.unwrap(), net.btc.new_address().await.unwrap());
    // No blocks from now: the release stays in the mempool.
    net.miner.pause().await;
    let kept = net.burn_unmined(1, 7, 300_000, &kept_payee).await;
    let gone = net.burn_unmined(1, 7, 200_000, &gone_payee).await;
    net.chains[1].anvil.mine(3).await.unwrap();
    let mempool = || async {
        net.btc.rpc(|c| c.get_raw_mempool()).await.unwrap().into_iter().map(|t| t.to_string()).collect::<Vec<_>>()
    };
    let release_of = |burn: &str| {
        net.nodes[0]
            .get(&format!("/v1/attestations/{burn}"))
            .and_then(|v| v["release"]["txid"].as_str().map(str::to_owned))
    };
    let first = wait_until("one release paying both burns in the mempool", Duration::from_secs(90), || async {
        let (a, b) = (release_of(&kept)?, release_of(&gone)?);
        (a == b && mempool().await.contains(&a)).then_some(a)
    })
    .await
    .unwrap_or_else(|e| {
        print_release_logs(&net);
        panic!("{e}")
    });

    // The second burn's block and the three after it replaced by empty ones: deeper
    // than the depth-2 finality the validators use.
    net.chains[1].anvil.reorg(4).await.unwrap();
    net.chains[1].anvil.mine(1).await.unwrap();
    wait_until("every validator saw the reorg", Duration::from_secs(60), || async {
        net.nodes
            .iter()
            .all(|n| n.get(&format!("/v1/attestations/{gone}")).is_some_and(|v| v["status"] == "reorged"))
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| {
        for n in &net.nodes {
            eprintln!("--- {}:\n{}", n.name, tail(&n.log()));
        }
        panic!("{e}")
    });
    let second = wait_until("the withdrawal in the mempool", Duration::from_secs(90), || async {
        let txid = release_of(&kept)?;
        let pool = mempool().await;
        (txid != first && pool.contains(&txid) && !pool.contains(&first)).then_some(txid)
    })
    .await
    .unwrap_or_else(|e| {
        print_release_logs(&net);
        panic!("{e}")
    });
    let txid = bitcoin::Txid::from_str(&second).unwrap();
    let tx = net.btc.rpc(move |c| c.get_raw_transaction(&txid, None)).await.unwrap();
    assert!(tx.output.iter().all(|o| o.script_pubkey != gone_payee.script_pubkey()), "{tx:?}");
    assert!(net.metric_sum("btcfi_chain_events_total", "kind=\"reorged\"") >= 4.0, "the alert's counter");

    net.miner.resume();
    let paid = wait_paid(&net, &kept).await;
    assert_eq!(paid["release"]["txid"], second.as_str(), "{paid}");
    assert_eq!(paid["release"]["paid_sats"], 300_000 - PEG_OUT_FEE, "{paid}");
    assert_eq!(net.received(&kept_payee).await, 300_000 - PEG_OUT_FEE);
    assert_eq!(net.received(&gone_payee).await, 0, "the reorged peg-out is never paid");

    // Restarted, a validator holds nothing for it: no peg-out pending, none proposed.
    net.nodes[2].kill();
    let before = net.nodes[2].log().matches("proposing a release").count();
    net.nodes[2].start();
    net.nodes[2].wait_ready().await;
    wait_until("the restarted validator's view", Duration::from_secs(30), || async {
        net.nodes[2].get(&format!("/v1/attestations/{kept}")).filter(|v| v["status"] == "paid")
    })
    .await
    .unwrap();
    assert_eq!(net.nodes[2].metric("btcfi_releases_pending", ""), 0.0);
    assert_eq!(net.nodes[2].log().matches("proposing a release").count(), before);
    assert!(net.nodes[2].log().contains("never signed, relayed or paid"));
    assert_eq!(net.received(&gone_payee).await, 0);
}

/// A deposit whose memo is malformed, and one whose memo names a chain without a
/// bridge: both rejected, and both paid back by a certified refund release to the
/// script of their transaction's first input, exactly the deposit less the refund fee
/// the API states. One too small to pay back stays rejected, with no refund.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_with_a_malformed_memo_comes_back_to_its_sender_less_the_refund_fee() {
    let net = network([None; 4]).await;
    let bad = net.btc.send_deposit(&net.vault, Amount::from_sat(250_000), Some(b"BTCFI\x01short")).await.unwrap();
    let memo = DepositMemo { dest_chain: ChainId(999), recipient: EvmAddress([7; 20]) }.encode();
    let unknown = net.btc.send_deposit(&net.vault, Amount::from_sat(180_000), Some(&memo)).await.unwrap();
    let tiny = net.btc.send_deposit(&net.vault, Amount::from_sat(PEG_OUT_FEE + 200), Some(b"junk")).await.unwrap();
    let view = |d: &btcfi_testkit::DepositTx| net.nodes[1].get(&format!("/v1/deposits/{}:{}", d.txid, d.vout));
    let refunded = wait_until("both refunds paid at depth", Duration::from_secs(180), || async {
        let (a, b) = (view(&bad)?, view(&unknown)?);
        (a["status"] == "refunded" && b["status"] == "refunded").then_some((a, b))
    })
    .await
    .unwrap_or_else(|e| {
        print_release_logs(&net);
        eprintln!("{:?}\n{:?}", view(&bad), view(&unknown));
        panic!("{e}")
    });
    for (d, amount, v) in [(&bad, 250_000u64, &refunded.0), (&unknown, 180_000, &refunded.1)] {
        assert!(v["reason"].is_string(), "{v}");
        assert_eq!(v["refund"]["refund_fee_sats"], PEG_OUT_FEE, "{v}");
        assert_eq!(v["refund"]["refund_sats"], amount - PEG_OUT_FEE, "{v}");
        // The sender: the script its transaction's first input spent.
        let txid = d.txid;
        let deposit = net.btc.rpc(move |c| c.get_raw_transaction(&txid, None)).await.unwrap();
        let prev = deposit.input[0].previous_output;
        let funding = net.btc.rpc(move |c| c.get_raw_transaction(&prev.txid, None)).await.unwrap();
        let sender = funding.output[prev.vout as usize].script_pubkey.clone();
        assert_eq!(v["refund"]["script_pubkey"], hex::encode(sender.as_bytes()), "{v}");
        let refund = bitcoin::Txid::from_str(v["refund"]["txid"].as_str().unwrap()).unwrap();
        let tx = net.btc.rpc(move |c| c.get_raw_transaction_info(&refund, None)).await.unwrap();
        assert!(tx.confirmations.unwrap_or(0) >= 2, "in a block, at depth");
        let back: Vec<Amount> =
            tx.vout.iter().filter(|o| o.script_pub_key.hex == sender.to_bytes()).map(|o| o.value).collect();
        assert!(back.contains(&Amount::from_sat(amount - PEG_OUT_FEE)), "{back:?}");
    }
    let small = view(&tiny).unwrap();
    assert_eq!(small["status"], "rejected", "{small}");
    assert!(small["refund"].is_null(), "{small}");
}

/// A burst of mints, signed in batches of two, with two signing sessions per key at
/// most: the rest wait in the queue (counted, and never more than two in flight when
/// sampled), none of them fails for waiting, and every deposit is minted once, for its
/// amount, by batches (one signature each, fewer sessions than mints).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_mints_waits_in_the_signing_queue_and_every_one_is_minted_once() {
    let net = network_opts(Opts { max_sessions_in_flight: 2, batch_max_mints: 2, ..Opts::default() }).await;
    let users = [net.chains[0].anvil.dev_address(6), net.chains[1].anvil.dev_address(7)];
    let mut want = [0u64; 2];
    let mut events = Vec::new();
    for i in 0..16u64 {
        let chain = (i % 2) as usize;
        let amount = 100_000 + i;
        events.push(net.deposit(chain, users[chain], amount).await);
        want[chain] += amount;
    }
    let mut peak = 0f64;
    // What the API says of the mints that wait: queued (where), or signing (which
    // session, attempt, coordinator).
    let mut explained: Vec<serde_json::Value> = Vec::new();
    let done = wait_until("every deposit of the burst minted", Duration::from_secs(180), || {
        for n in &net.nodes {
            peak = peak.max(n.metric("btcfi_signing_sessions_in_flight", "key=\"evm\""));
        }
        for e in &events {
            if let Some(w) = net.nodes[0].get(&format!("/v1/attestations/{e}")).map(|v| v["waiting"].clone())
                && !w.is_null()
            {
                explained.push(w);
            }
        }
        async { (net.balance(0, users[0]).await == want[0] && net.balance(1, users[1]).await == want[1]).then_some(()) }
    })
    .await;
    if let Err(e) = done {
        print_release_logs(&net);
        panic!("{e}: balances {} {}", net.balance(0, users[0]).await, net.balance(1, users[1]).await);
    }
    assert!(peak <= 2.0, "at most two sessions in flight, sampled {peak}");
    assert!(net.metric_sum("btcfi_signing_sessions_total", "outcome=\"queued\"") >= 1.0, "the burst was queued");
    assert_eq!(
        net.metric_sum("btcfi_signing_sessions_total", "outcome=\"failed\""),
        0.0,
        "no session failed for waiting"
    );
    // Once each on chain. (A relayer's submission may be duplicated by the one that
    // takes over when it is slow: the contract refuses the replay, so the relay
    // metrics count attempts, not mints.)
    let mut minted = Vec::new();
    for c in &net.chains {
        let logs = IBridge::new(c.bridge, c.anvil.provider()).Minted_filter().from_block(0).query().await.unwrap();
        minted.extend(logs.into_iter().map(|(m, _)| (m.eventId, m.amountSats)));
    }
    let mut want_minted: Vec<(B256, u64)> =
        events.iter().enumerate().map(|(i, e)| (B256::from(e.contract_id()), 100_000 + i as u64)).collect();
    want_minted.sort();
    minted.sort();
    assert_eq!(minted, want_minted, "each deposit minted once, for its amount");
    let mut roots = 0;
    for c in &net.chains {
        let bridge = IBridge::new(c.bridge, c.anvil.provider());
        roots += bridge.BatchAccepted_filter().from_block(0).query().await.unwrap().len();
    }
    assert!(roots >= 4, "mints went in batches under one signature each: {roots} roots accepted");
    let started = net.nodes[0].metric("btcfi_signing_sessions_total", "key=\"evm\",outcome=\"started\"");
    assert!(started < 16.0, "fewer sessions than mints: {started}");
    assert!(!explained.is_empty(), "the API explained a waiting mint");
    for w in &explained {
        match w["state"].as_str() {
            Some("queued") => assert!(w["position"].is_u64() && w["queued"].as_u64() >= Some(1), "{w}"),
            Some("signing") => {
                assert!(w["session"].is_string() && w["attempt"].is_u64() && w["coordinator"].is_u64(), "{w}")
            }
            Some("retrying") => assert!(w["next_round_in_ms"].is_u64(), "{w}"),
            Some("batching") => assert!(w["proposer"].is_u64() && w["chain_id"].is_u64(), "{w}"),
            Some("awaiting signers") => assert!(w["batch"]["root"].is_string() && w["ready"].is_array(), "{w}"),
            _ => panic!("an explanation of a waiting mint: {w}"),
        }
    }
    eprintln!("explanations seen: {}, e.g. {}", explained.len(), explained[0]);
}
