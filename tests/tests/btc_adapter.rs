//! The Bitcoin adapter against a real bitcoind in regtest.

use bitcoin::{Address, Amount, Network};
use bitcoincore_rpc::RpcApi;
use btcfi_chain_adapters::{
    ChainEvent, ChainSource, Inclusion,
    bitcoin::{BitcoinConfig, BitcoinSource, BtcError, BtcRpc, ConfirmationTier, FeeBounds, FeeSource},
};
use btcfi_testkit::{
    Bitcoind,
    rpc::{FakeRpc, Reply},
};
use btcfi_types::{AttestationKind, ChainId, DepositMemo, EventId, EvmAddress, Sats, TxHash};
use serde_json::json;
use std::{
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

const MEMO_RECIPIENT: [u8; 20] = [0xab; 20];

fn memo(chain: u64) -> Vec<u8> {
    DepositMemo { dest_chain: ChainId(chain), recipient: EvmAddress(MEMO_RECIPIENT) }.encode().to_vec()
}

/// A P2TR vault address held by a wallet of its own, so that the paying wallet never
/// spends vault outputs as its own coins.
async fn vault_address(btc: &Bitcoind) -> eyre::Result<Address> {
    let vault = btc.create_wallet("vault").await?;
    let s: String =
        tokio::task::spawn_blocking(move || vault.call("getnewaddress", &[json!(""), json!("bech32m")])).await??;
    Ok(Address::from_str(&s)?.require_network(Network::Regtest)?)
}

async fn config(btc: &Bitcoind, vault: &Address, confirmations: u32) -> eyre::Result<BitcoinConfig> {
    Ok(BitcoinConfig {
        rpc_url: btc.rpc_url(),
        rpc_user: Some(btc.rpc_user().into()),
        rpc_password: Some(btc.rpc_password().into()),
        rpc_cookie_file: None,
        network: Network::Regtest,
        vault_address: vault.to_string(),
        confirmations,
        tiers: vec![],
        min_deposit: Sats(10_000),
        fees: FeeBounds { floor_sat_per_vb: 3, ceiling_sat_per_vb: 100, conf_target: 6 },
        peg_out_fee: Sats(2_000),
        rbf_after_secs: 600,
        start_height: btc.block_count().await? + 1,
        max_blocks_per_poll: 50,
        reorg_window: 20,
        destination_chains: vec![],
    })
}

fn event_id(txid: bitcoin::Txid, vout: u32) -> EventId {
    EventId::new(ChainId::BITCOIN, TxHash::from_str(&txid.to_string()).unwrap(), vout)
}

async fn poll(src: &mut BitcoinSource) -> Vec<ChainEvent> {
    src.poll().await.expect("poll").events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_are_reported_once_at_depth_and_bad_ones_rejected() -> eyre::Result<()> {
    let btc = Bitcoind::start().await?;
    let vault = vault_address(&btc).await?;
    let cfg = config(&btc, &vault, 3).await?;
    let mut src = BitcoinSource::new(cfg.clone(), None).await?;

    let good = btc.send_deposit(&vault, Amount::from_sat(50_000_000), Some(&memo(137))).await?;
    let bad = btc.send_deposit(&vault, Amount::from_sat(20_000), Some(b"BTCFI\x01short")).await?;
    let dust = btc.send_deposit(&vault, Amount::from_sat(5_000), Some(&memo(1))).await?;
    let none = btc.send_deposit(&vault, Amount::from_sat(30_000), None).await?;
    btc.mine(1).await?;
    assert!(poll(&mut src).await.is_empty(), "1 confirmation of 3: nothing yet");
    btc.mine(1).await?;
    assert!(poll(&mut src).await.is_empty(), "2 confirmations of 3: nothing yet");
    btc.mine(1).await?;
    let events = poll(&mut src).await;
    assert_eq!(events.len(), 4, "{events:#?}");
    let find = |id: EventId| events.iter().find(|e| e.id() == id).unwrap_or_else(|| panic!("{id} missing"));
    match find(event_id(good.txid, good.vout)) {
        ChainEvent::Observed(o) => {
            assert_eq!(
                o.attestation.kind,
                AttestationKind::PegIn {
                    dest_chain: ChainId(137),
                    recipient: EvmAddress(MEMO_RECIPIENT),
                    amount: Sats(50_000_000)
                }
            );
        }
        other => panic!("good deposit reported as {other:?}"),
    }
    for (d, needle, amount) in
        [(&bad, "malformed memo", 20_000), (&dust, "below the minimum", 5_000), (&none, "no OP_RETURN", 30_000)]
    {
        match find(event_id(d.txid, d.vout)) {
            ChainEvent::Rejected(r) => {
                assert!(r.reason.contains(needle), "{}", r.reason);
                assert_eq!(r.amount, Some(Sats(amount)));
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
    // The vault holds every output paid to it, valid or not.
    assert_eq!(src.vault_utxos().len(), 4);
    assert_eq!(src.vault_balance(), Sats(50_000_000 + 20_000 + 5_000 + 30_000));

    // Nothing is reported twice, neither by this adapter nor by one restarted from its checkpoint.
    btc.mine(3).await?;
    assert!(poll(&mut src).await.is_empty());
    let mut restarted = BitcoinSource::new(cfg, Some(src.checkpoint()?)).await?;
    btc.mine(2).await?;
    assert!(poll(&mut restarted).await.is_empty());
    assert_eq!(restarted.vault_utxos().len(), 4);

    // Regtest has no fee estimate: the configured floor is used.
    let fee = restarted.estimate_fee_rate().await?;
    assert_eq!((fee.sat_per_vb, fee.source), (3, FeeSource::Floor));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_reorged_out_before_depth_is_never_reported() -> eyre::Result<()> {
    let btc = Bitcoind::start().await?;
    let vault = vault_address(&btc).await?;
    let mut src = BitcoinSource::new(config(&btc, &vault, 3).await?, None).await?;

    let dep = btc.send_deposit(&vault, Amount::from_sat(1_000_000), Some(&memo(1))).await?;
    let mined_at = btc.block_count().await? + 1;
    btc.mine(2).await?;
    assert!(poll(&mut src).await.is_empty());
    // Replace both blocks with empty ones (the deposit drops back to the mempool) and
    // build well past the depth.
    btc.reorg_from(mined_at, 6).await?;
    for _ in 0..3 {
        btc.mine_empty(1).await?;
        let events = poll(&mut src).await;
        assert!(events.iter().all(|e| e.id() != event_id(dep.txid, dep.vout)), "{events:?}");
    }
    assert!(src.vault_utxos().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_deposit_reorged_out_is_surfaced() -> eyre::Result<()> {
    let btc = Bitcoind::start().await?;
    let vault = vault_address(&btc).await?;
    let mut src = BitcoinSource::new(config(&btc, &vault, 2).await?, None).await?;

    let dep = btc.send_deposit(&vault, Amount::from_sat(2_000_000), Some(&memo(56))).await?;
    let id = event_id(dep.txid, dep.vout);
    let mined_at = btc.block_count().await? + 1;
    btc.mine(2).await?;
    let events = poll(&mut src).await;
    let observed = match events.as_slice() {
        [ChainEvent::Observed(o)] if o.attestation.event == id => o.clone(),
        other => panic!("{other:?}"),
    };
    assert!(matches!(src.recheck(&observed).await?, Inclusion::Included { confirmations: 2 }));

    // A reorg deeper than the configured depth takes the deposit's block away.
    btc.reorg_from(mined_at, 4).await?;
    let events = poll(&mut src).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ChainEvent::Reorged { id: r, block } if *r == id && *block == observed.block)),
        "{events:?}"
    );
    assert_eq!(src.recheck(&observed).await?, Inclusion::NotCanonical);
    assert!(src.vault_utxos().is_empty(), "the rewound block's vault output is gone");

    // The transaction went back to the mempool; mined again, it is final again, in a new block.
    btc.mine(2).await?;
    let events = poll(&mut src).await;
    match events.as_slice() {
        [ChainEvent::Observed(o)] => {
            assert_eq!(o.attestation.event, id);
            assert_ne!(o.block, observed.block);
        }
        other => panic!("{other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_deposits_wait_for_their_tier_even_across_a_restart() -> eyre::Result<()> {
    let btc = Bitcoind::start().await?;
    let vault = vault_address(&btc).await?;
    let mut cfg = config(&btc, &vault, 2).await?;
    cfg.tiers = vec![ConfirmationTier { min_amount: Sats(100_000_000), confirmations: 5 }];
    let mut src = BitcoinSource::new(cfg.clone(), None).await?;

    let small = btc.send_deposit(&vault, Amount::from_sat(1_000_000), Some(&memo(1))).await?;
    let big = btc.send_deposit(&vault, Amount::from_sat(150_000_000), Some(&memo(1))).await?;
    btc.mine(2).await?;
    let ids: Vec<_> = poll(&mut src).await.iter().map(ChainEvent::id).collect();
    assert_eq!(ids, vec![event_id(small.txid, small.vout)]);
    btc.mine(2).await?;
    assert!(poll(&mut src).await.is_empty(), "4 confirmations of 5");
    let mut src = BitcoinSource::new(cfg, Some(src.checkpoint()?)).await?;
    btc.mine(1).await?;
    let ids: Vec<_> = poll(&mut src).await.iter().map(ChainEvent::id).collect();
    assert_eq!(ids, vec![event_id(big.txid, big.vout)]);
    btc.mine(3).await?;
    assert!(poll(&mut src).await.is_empty());
    Ok(())
}

/// One transaction paying each of `amounts` to the vault (separate outputs) plus the memo,
/// funded and signed by the miner wallet. Returns its txid and the vault outputs' indices.
/// Built by hand: `createrawtransaction` refuses one address twice.
async fn send_split_deposit(
    btc: &Bitcoind,
    vault: &Address,
    amounts: &[u64],
    memo: &[u8],
) -> eyre::Result<(bitcoin::Txid, Vec<u32>)> {
    let script = vault.script_pubkey();
    let mut output: Vec<bitcoin::TxOut> = amounts
        .iter()
        .map(|sat| bitcoin::TxOut { value: Amount::from_sat(*sat), script_pubkey: script.clone() })
        .collect();
    let push = bitcoin::script::PushBytesBuf::try_from(memo.to_vec())?;
    output.push(bitcoin::TxOut { value: Amount::ZERO, script_pubkey: bitcoin::ScriptBuf::new_op_return(push) });
    // The legacy serialization of a transaction without inputs, by hand: rust-bitcoin
    // writes such a transaction in the segwit format, which bitcoind refuses without
    // witnesses. `iswitness = false` tells bitcoind which one it is.
    let mut raw = 2i32.to_le_bytes().to_vec();
    raw.push(0); // no inputs
    raw.extend(bitcoin::consensus::encode::serialize(&output));
    raw.extend(0u32.to_le_bytes()); // lock time
    let raw = hex::encode(raw);
    let funded: serde_json::Value =
        btc.rpc(move |c| c.call("fundrawtransaction", &[json!(raw), json!({}), json!(false)])).await?;
    let funded_hex = funded["hex"].as_str().ok_or_else(|| eyre::eyre!("fundrawtransaction: {funded}"))?.to_owned();
    let signed: serde_json::Value =
        btc.rpc(move |c| c.call("signrawtransactionwithwallet", &[json!(funded_hex)])).await?;
    let signed_hex = signed["hex"].as_str().ok_or_else(|| eyre::eyre!("signrawtransactionwithwallet: {signed}"))?;
    let tx: bitcoin::Transaction = bitcoin::consensus::encode::deserialize_hex(signed_hex)?;
    // Funding may place its change anywhere: find the vault outputs again.
    let vouts: Vec<u32> = tx
        .output
        .iter()
        .enumerate()
        .filter(|(_, o)| o.script_pubkey == script)
        .map(|(i, _)| u32::try_from(i))
        .collect::<Result<_, _>>()?;
    eyre::ensure!(vouts.len() == amounts.len(), "vault outputs of the split deposit: {vouts:?}");
    let txid = btc.rpc(move |c| c.send_raw_transaction(&tx)).await?;
    Ok((txid, vouts))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_split_into_outputs_below_the_tier_waits_for_the_tier_of_its_sum() -> eyre::Result<()> {
    let btc = Bitcoind::start().await?;
    let vault = vault_address(&btc).await?;
    let mut cfg = config(&btc, &vault, 2).await?;
    cfg.tiers = vec![ConfirmationTier { min_amount: Sats(100_000_000), confirmations: 5 }];
    let mut src = BitcoinSource::new(cfg, None).await?;

    // Two vault outputs of 0.6 BTC in one transaction: each below the 1-BTC tier, 1.2 BTC
    // together. A separate 0.6-BTC deposit in the same block stays at the base depth.
    let (split, vouts) = send_split_deposit(&btc, &vault, &[60_000_000, 60_000_000], &memo(1)).await?;
    let alone = btc.send_deposit(&vault, Amount::from_sat(60_000_000), Some(&memo(1))).await?;
    btc.mine(2).await?;
    let ids: Vec<_> = poll(&mut src).await.iter().map(ChainEvent::id).collect();
    assert_eq!(ids, vec![event_id(alone.txid, alone.vout)], "only the lone deposit is final at 2 confirmations");
    btc.mine(2).await?;
    let events = poll(&mut src).await;
    assert!(events.is_empty(), "4 confirmations of the 5 the split transaction's sum needs: {events:?}");
    btc.mine(1).await?;
    let events = poll(&mut src).await;
    let mut ids: Vec<_> = events.iter().map(ChainEvent::id).collect();
    ids.sort();
    let mut expected: Vec<_> = vouts.iter().map(|v| event_id(split, *v)).collect();
    expected.sort();
    assert_eq!(ids, expected, "both outputs of the split deposit at the tier's depth");
    for e in &events {
        // Each deposit still attests its own amount.
        let ChainEvent::Observed(o) = e else { panic!("expected an observed deposit: {e:?}") };
        assert!(
            matches!(o.attestation.kind, AttestationKind::PegIn { amount: Sats(60_000_000), .. }),
            "{:?}",
            o.attestation.kind
        );
    }
    btc.mine(3).await?;
    assert!(poll(&mut src).await.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_spends_update_the_utxo_set_and_broadcast_is_followed() -> eyre::Result<()> {
    let btc = Bitcoind::start().await?;
    let vault = vault_address(&btc).await?;
    let mut src = BitcoinSource::new(config(&btc, &vault, 1).await?, None).await?;
    let dep = btc.send_deposit(&vault, Amount::from_sat(10_000_000), Some(&memo(1))).await?;
    btc.mine(1).await?;
    assert_eq!(poll(&mut src).await.len(), 1);

    // Spend the vault output: 6M to a user, change back to the vault (the wallet holds
    // the vault key in this test, standing in for the signer set).
    let user = btc.new_address().await?;
    let inputs = json!([{ "txid": dep.txid.to_string(), "vout": dep.vout }]);
    let outputs = json!([{ user.to_string(): 0.06 }, { vault.to_string(): 0.0399 }]);
    let raw: String = btc.rpc(move |c| c.call("createrawtransaction", &[inputs, outputs])).await?;
    let vault_wallet = btc.wallet("vault")?;
    let signed: serde_json::Value =
        tokio::task::spawn_blocking(move || vault_wallet.call("signrawtransactionwithwallet", &[json!(raw)])).await??;
    let tx: bitcoin::Transaction = bitcoin::consensus::encode::deserialize_hex(signed["hex"].as_str().unwrap())?;
    let txid = src.broadcast(tx.clone()).await?;
    assert_eq!(src.broadcast(tx).await?, txid, "re-broadcast is idempotent");
    assert_eq!(src.tx_confirmations(txid).await?, Some(0));
    btc.mine(2).await?;
    assert_eq!(src.tx_confirmations(txid).await?, Some(2));
    let events = poll(&mut src).await;
    // Change to the vault is not a deposit; the spend is reported with its one payment.
    let [ChainEvent::VaultSpend(spend)] = events.as_slice() else { panic!("one vault spend: {events:?}") };
    assert_eq!(spend.txid.to_string(), txid.to_string());
    assert_eq!(spend.spent, vec![bitcoin::OutPoint { txid: dep.txid, vout: dep.vout }], "{spend:?}");
    assert_eq!(spend.payouts.len(), 1, "{spend:?}");
    assert_eq!(spend.payouts[0].script_pubkey, user.script_pubkey().to_bytes());
    assert_eq!(spend.payouts[0].amount, Sats(6_000_000));
    let utxos = src.vault_utxos();
    assert_eq!(utxos.len(), 1);
    assert_eq!(utxos[0].outpoint.txid, txid);
    assert_eq!(utxos[0].amount, Sats(3_990_000));
    let unknown = bitcoin::Txid::from_str(&"11".repeat(32))?;
    assert_eq!(src.tx_confirmations(unknown).await?, None);
    Ok(())
}

/// A loopback JSON-RPC endpoint that answers every request with `body(id)`.
fn bad_node(body: fn(&serde_json::Value) -> String) -> FakeRpc {
    FakeRpc::start(move |req| Reply::Raw(body(&req["id"]))).expect("a loopback endpoint")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_answers_from_the_node_are_typed_errors() -> eyre::Result<()> {
    let vault = "bcrt1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqc8gma6";
    let cfg_for = |url: String| BitcoinConfig {
        rpc_url: url,
        rpc_user: Some("u".into()),
        rpc_password: Some("p".into()),
        rpc_cookie_file: None,
        network: Network::Regtest,
        vault_address: vault.into(),
        confirmations: 1,
        tiers: vec![],
        min_deposit: Sats(1),
        fees: FeeBounds::default(),
        peg_out_fee: Sats(2_000),
        rbf_after_secs: 600,
        start_height: 0,
        max_blocks_per_poll: 1,
        reorg_window: 10,
        destination_chains: vec![],
    };
    let truncated = bad_node(|id| format!("{{\"result\": 12, \"error\": null, \"id\": {id}"));
    let wrong_type = bad_node(|id| format!("{{\"result\": \"twelve\", \"error\": null, \"id\": {id}}}"));
    let bad_block = bad_node(|id| format!("{{\"result\": \"00ff\", \"error\": null, \"id\": {id}}}"));
    for node in [&truncated, &wrong_type] {
        let rpc = BtcRpc::new(&cfg_for(node.url()))?;
        match rpc.tip().await {
            Err(BtcError::BadResponse { method: "getblockcount", .. }) => {}
            other => panic!("expected BadResponse, got {other:?}"),
        }
    }
    let rpc = BtcRpc::new(&cfg_for(bad_block.url()))?;
    let hash = bitcoin::BlockHash::from_str(&"00".repeat(32))?;
    assert!(matches!(rpc.block(hash).await, Err(BtcError::BadResponse { method: "getblock", .. })));
    // An unreachable node is a retryable transport error.
    let dead = format!("http://127.0.0.1:{}", btcfi_testkit::free_port());
    let err = BtcRpc::new(&cfg_for(dead))?.tip().await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    // An adapter over a broken node fails to start with a typed error, not a panic.
    let broken = bad_node(|id| format!("{{\"id\": {id}, \"result\": [1,2"));
    let e = BitcoinSource::new(cfg_for(broken.url()), None).await;
    assert!(matches!(e, Err(BtcError::BadResponse { .. })), "{e:?}");
    Ok(())
}

/// The scriptPubKey of the output that the first input of `txid` spends, read from bitcoind.
async fn first_input_script(btc: &Bitcoind, txid: bitcoin::Txid) -> eyre::Result<Vec<u8>> {
    let tx = btc.rpc(move |c| c.get_raw_transaction(&txid, None)).await?;
    let prev = tx.input.first().ok_or_else(|| eyre::eyre!("{txid} has no inputs"))?.previous_output;
    let funding = btc.rpc(move |c| c.get_raw_transaction(&prev.txid, None)).await?;
    let out = usize::try_from(prev.vout)?;
    Ok(funding.output.get(out).ok_or_else(|| eyre::eyre!("no output {prev}"))?.script_pubkey.to_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_deposits_report_where_a_refund_would_go_and_wait_for_their_tier() -> eyre::Result<()> {
    let btc = Bitcoind::start().await?;
    let vault = vault_address(&btc).await?;
    let mut cfg = config(&btc, &vault, 2).await?;
    cfg.tiers = vec![ConfirmationTier { min_amount: Sats(100_000_000), confirmations: 4 }];
    let mut src = BitcoinSource::new(cfg.clone(), None).await?;

    // A block whose coinbase pays the vault (50 BTC, no memo of ours): rejected, with
    // nowhere to refund to, so reported at the base depth although above the tier.
    let addr = vault.to_string();
    let v: serde_json::Value = btc.rpc(move |c| c.call("generateblock", &[json!(addr), json!([])])).await?;
    let coinbase_block = bitcoin::BlockHash::from_str(v["hash"].as_str().unwrap_or_default())?;
    let coinbase = btc.rpc(move |c| c.get_block(&coinbase_block)).await?.txdata[0].compute_txid();

    let good = btc.send_deposit(&vault, Amount::from_sat(50_000_000), Some(&memo(137))).await?;
    let bad = btc.send_deposit(&vault, Amount::from_sat(20_000), Some(b"BTCFI\x01short")).await?;
    let big_bad = btc.send_deposit(&vault, Amount::from_sat(150_000_000), None).await?;
    let deposits_at = btc.block_count().await? + 1;
    btc.mine(1).await?;
    let events = poll(&mut src).await;
    match events.as_slice() {
        [ChainEvent::Rejected(r)] => {
            assert_eq!(r.id, event_id(coinbase, 0));
            assert_eq!(r.refund_to, None, "a coinbase has no input to refund to");
            assert_eq!(r.refund, None);
        }
        other => panic!("only the coinbase block is final: {other:?}"),
    }

    btc.mine(1).await?;
    let events = poll(&mut src).await;
    assert_eq!(events.len(), 2, "the large refundable rejection waits for its tier: {events:#?}");
    let find = |id: EventId| events.iter().find(|e| e.id() == id).unwrap_or_else(|| panic!("{id} missing"));
    match find(event_id(good.txid, good.vout)) {
        ChainEvent::Observed(o) => {
            assert!(matches!(o.attestation.kind, AttestationKind::PegIn { amount: Sats(50_000_000), .. }), "{o:?}")
        }
        other => panic!("good deposit reported as {other:?}"),
    }
    let bad_script = first_input_script(&btc, bad.txid).await?;
    match find(event_id(bad.txid, bad.vout)) {
        ChainEvent::Rejected(r) => {
            assert!(r.reason.contains("malformed memo"), "{}", r.reason);
            assert_eq!(r.amount, Some(Sats(20_000)));
            assert_eq!(r.refund_to.as_deref(), Some(bad_script.as_slice()), "refund to the first input's prevout");
            assert_eq!(r.refund, None);
        }
        other => panic!("expected a rejection, got {other:?}"),
    }

    // Held across a restart, then reported at the tier's depth with its refund_to.
    let mut src = BitcoinSource::new(cfg, Some(src.checkpoint()?)).await?;
    btc.mine(1).await?;
    assert!(poll(&mut src).await.is_empty(), "3 confirmations of 4");
    btc.mine(1).await?;
    let big_script = first_input_script(&btc, big_bad.txid).await?;
    match poll(&mut src).await.as_slice() {
        [ChainEvent::Rejected(r)] => {
            assert_eq!(r.id, event_id(big_bad.txid, big_bad.vout));
            assert!(r.reason.contains("no OP_RETURN"), "{}", r.reason);
            assert_eq!(r.refund_to, Some(big_script));
        }
        other => panic!("the held rejection at 4 confirmations: {other:?}"),
    }
    btc.mine(2).await?;
    assert!(poll(&mut src).await.is_empty(), "nothing twice");

    // A reorg taking the deposits' block away surfaces every one reported from it,
    // the rejection released from hold included.
    btc.reorg_from(deposits_at, 7).await?;
    let events = poll(&mut src).await;
    let mut reorged: Vec<_> =
        events.iter().filter_map(|e| if let ChainEvent::Reorged { id, .. } = e { Some(*id) } else { None }).collect();
    reorged.sort();
    let mut expected =
        vec![event_id(good.txid, good.vout), event_id(bad.txid, bad.vout), event_id(big_bad.txid, big_bad.vout)];
    expected.sort();
    assert_eq!(reorged, expected, "{events:#?}");
    Ok(())
}

/// A JSON-RPC proxy to bitcoind that, while `fail` is set, refuses `getblock <hash> 3`.
fn proxy_failing_verbose_blocks(btc: &Bitcoind, fail: Arc<AtomicBool>) -> eyre::Result<FakeRpc> {
    FakeRpc::proxy(&btc.rpc_url(), move |req| {
        let verbose_block = req["method"] == "getblock" && req["params"].get(1) == Some(&json!(3));
        (verbose_block && fail.load(Ordering::SeqCst)).then(|| {
            Reply::json(
                json!({ "result": null, "error": { "code": -1, "message": "injected failure" }, "id": req["id"] }),
            )
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_prevout_lookup_fails_the_poll_and_the_block_is_processed_once_on_retry() -> eyre::Result<()> {
    let btc = Bitcoind::start().await?;
    let vault = vault_address(&btc).await?;
    // Refusing from the start: a block without a rejected payment must not ask for it.
    let fail = Arc::new(AtomicBool::new(true));
    let mut cfg = config(&btc, &vault, 1).await?;
    let proxy = proxy_failing_verbose_blocks(&btc, fail.clone())?;
    cfg.rpc_url = proxy.url();
    let mut src = BitcoinSource::new(cfg, None).await?;
    let dep = btc.send_deposit(&vault, Amount::from_sat(10_000_000), Some(&memo(1))).await?;
    btc.mine(1).await?;
    assert_eq!(poll(&mut src).await.len(), 1, "a block with only a valid deposit needs no verbose block");

    // One block with a release spending the deposit (change back to the vault) and a
    // rejected deposit, so processing it needs the verbose block.
    let user = btc.new_address().await?;
    let inputs = json!([{ "txid": dep.txid.to_string(), "vout": dep.vout }]);
    let outputs = json!([{ user.to_string(): 0.06 }, { vault.to_string(): 0.0399 }]);
    let raw: String = btc.rpc(move |c| c.call("createrawtransaction", &[inputs, outputs])).await?;
    let vault_wallet = btc.wallet("vault")?;
    let signed: serde_json::Value =
        tokio::task::spawn_blocking(move || vault_wallet.call("signrawtransactionwithwallet", &[json!(raw)])).await??;
    let tx: bitcoin::Transaction =
        bitcoin::consensus::encode::deserialize_hex(signed["hex"].as_str().unwrap_or_default())?;
    let release = btc.rpc(move |c| c.send_raw_transaction(&tx)).await?;
    let bad = btc.send_deposit(&vault, Amount::from_sat(20_000), None).await?;
    btc.mine(1).await?;
    for _ in 0..2 {
        let r = src.poll().await;
        assert!(r.is_err(), "the poll fails while the prevouts cannot be read: {r:?}");
        assert_eq!(
            src.vault_utxos().iter().map(|u| u.outpoint).collect::<Vec<_>>(),
            vec![bitcoin::OutPoint { txid: dep.txid, vout: dep.vout }],
            "the unprocessed block left the UTXO set alone"
        );
    }

    fail.store(false, Ordering::SeqCst);
    let events = poll(&mut src).await;
    match events.as_slice() {
        [ChainEvent::VaultSpend(spend), ChainEvent::Rejected(r)] => {
            assert_eq!(spend.txid.to_string(), release.to_string());
            assert_eq!(r.id, event_id(bad.txid, bad.vout));
            assert_eq!(r.refund_to, Some(first_input_script(&btc, bad.txid).await?));
        }
        other => panic!("the release and the rejection, once: {other:?}"),
    }
    let mut utxos: Vec<_> = src.vault_utxos().iter().map(|u| (u.outpoint.txid, u.amount)).collect();
    utxos.sort();
    let mut expected = vec![(release, Sats(3_990_000)), (bad.txid, Sats(20_000))];
    expected.sort();
    assert_eq!(utxos, expected);
    btc.mine(1).await?;
    assert!(poll(&mut src).await.is_empty());

    // Prevouts that stay unavailable (pruned undo data, say) do not stop the adapter for
    // good: after a few failed polls the block goes through without refund scripts.
    fail.store(true, Ordering::SeqCst);
    let bad2 = btc.send_deposit(&vault, Amount::from_sat(30_000), None).await?;
    btc.mine(1).await?;
    let mut failed = 0;
    let events = loop {
        match src.poll().await {
            Err(_) => failed += 1,
            Ok(out) => break out.events,
        }
        assert!(failed < 10, "the adapter gives up on the prevouts");
    };
    assert!(failed >= 1, "it tried first");
    match events.as_slice() {
        [ChainEvent::Rejected(r)] => {
            assert_eq!(r.id, event_id(bad2.txid, bad2.vout));
            assert_eq!(r.refund_to, None, "no refund script: this node does not vote a refund");
        }
        other => panic!("the rejection, without refund script: {other:?}"),
    }
    Ok(())
}
