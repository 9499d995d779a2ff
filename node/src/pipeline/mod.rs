//! What happens after certification: signing with the epoch's group keys, relaying
//! mints, and paying peg-outs from the vault.
//!
//! [`Pipeline`] lives in the run loop. It owns the two signing [`Suite`]s
//! ([`signers`]), checks a fresh key with a test signature before using it, turns
//! certified attestations over ([`certified`]): peg-ins and EVM-to-EVM moves to the
//! mint book's driver ([`mints`]: batched, signed, stored, served by the API, handed to
//! the relayer), payouts to the release book's ([`releases`]). Who proposes what, and when, is
//! [`validators`]; what it stores is [`crate::records`].

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use crate::{
    batch::{BatchProposal, Leaf, TAG_BATCH, TAG_BATCH_READY, TAG_BATCH_SIGNED},
    bridge_key::BridgeKeys,
    config::NodeConfig,
    keys::{self, KeyKind},
    metrics::Metrics,
    records::*,
    relay::{self, BatchJob, MintJob, RelayJob},
    release::{self, Payout, Policy, Proposal, ReleaseError, TAG_RELEASE},
    signing::{Effect, Purpose, SigningFault, Suite, TAG_BTC, TAG_EVM, TAG_ROUND},
};
use alloy::primitives::Address;
use bitcoin::{OutPoint, ScriptBuf, Txid, hashes::Hash};
use btcfi_chain_adapters::{
    Rejected, SpendOutput, VaultSpend,
    bitcoin::{BitcoinSource, BtcError, MempoolVerdict, VaultUtxo},
    evm::{BatchLeaf, BatchMintRequest, MintRequest, MintSignature},
};
use btcfi_p2p::{MessageKind, NetworkHandle, PeerId};
use btcfi_signer::{
    btc as btcsig, evm::EvmSignature, frost_secp256k1::Secp256K1Sha256 as Evm,
    frost_secp256k1_tr::Secp256K1Sha256TR as Btc, session::SessionConfig,
};
use btcfi_store::{Batch, Store};
use btcfi_types::{Attestation, AttestationKind, ChainId, EventId, EvmAddress, Sats, TxHash};
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

mod certified;
mod explain;
mod mints;
mod releases;
mod signers;
mod validators;

use releases::*;
use signers::*;

/// `0x` + the 32 bytes in hex, as the records store words.
fn word(b: &[u8; 32]) -> String {
    format!("0x{}", hex::encode(b))
}

/// This node's own aggregated `evm` signature, in the form the bridges verify.
fn own_evm_signature(signature: &[u8]) -> eyre::Result<EvmSignature> {
    let sig = btcfi_signer::frost_secp256k1::Signature::deserialize(signature)
        .map_err(|e| eyre::eyre!("own signature does not decode: {e}"))?;
    Ok(EvmSignature::from_frost(&sig)?)
}

fn hex32(s: &str) -> eyre::Result<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim_start_matches("0x"), &mut out)
        .map_err(|e| eyre::eyre!("stored signature word {s}: {e}"))?;
    Ok(out)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Deliberate misbehaviour, testing only.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub signing: Option<SigningFault>,
    pub release: Option<ReleaseFault>,
}

/// Deliberate misbehaviour of a release proposer, testing only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseFault {
    /// Send each fresh proposal as two releases with different inputs for the same
    /// peg-outs, each to a minority of the validators (an equivocating proposer).
    SplitProposals,
    /// Propose at once (whatever the turn) at ten times the honest fee rate.
    GreedyFee,
    /// Propose at once at the honest fee rate, whatever the turn and whatever is
    /// promised already (from the smallest vault UTXO).
    OutOfTurn,
    /// The payment bound off: the vault's final payments on chain are not told to the
    /// release book (the negative control of the tests that a restored database never
    /// pays again).
    NoPaymentBound,
}

/// Signing, relaying and releases of one node.
pub struct Pipeline {
    store: Arc<Store>,
    metrics: Metrics,
    net: NetworkHandle,
    peers: Vec<PeerId>,
    me: usize,
    n: usize,
    epoch: u64,
    evm: Option<Suite<Evm>>,
    btc: Option<Suite<Btc>>,
    group_keys: BTreeMap<KeyKind, String>,
    usable: BTreeSet<KeyKind>,
    deferred: Vec<(KeyKind, Vec<u8>, Purpose)>,
    bridges: BTreeMap<u64, Address>,
    vault_address: String,
    /// The vault's spends at depth and what each paid out (from the chain).
    onchain: BTreeMap<TxHash, Vec<SpendOutput>>,
    /// Those payments counted by class.
    paid: BTreeMap<release::PaymentClass, usize>,
    /// Whether the Bitcoin adapter has seen every final block.
    bitcoin_synced: bool,
    relay: Option<mpsc::Sender<RelayJob>>,
    finalized_at: BTreeMap<EventId, Instant>,
    // Releases.
    policy: Policy,
    confirmations: u64,
    /// The bitcoind driver's end (None without a usable bitcoind config), its answers
    /// until the run loop takes them, and what was asked of it.
    bitcoind: Option<releases::driver::Driver>,
    bitcoind_answers: Option<mpsc::Receiver<releases::driver::Answer>>,
    asked: Asked,
    /// The vault's UTXOs at depth.
    utxos: BTreeMap<OutPoint, Sats>,
    /// Testing only: when a faulty proposer last sent a proposal of its own.
    last_faulty: Option<Instant>,
    /// This node's own fee estimate (sat/vB, clamped to the bounds), and when it was
    /// read: what it proposes at, and the centre of the band it signs within.
    fee_estimate: Option<u64>,
    fee_estimated_at: Option<Instant>,
    /// Testing only: a proposer's misbehaviour.
    release_fault: Option<ReleaseFault>,
    key_checks_started: bool,
    /// Every bridge's `groupKey()` against the epoch's evm key (None before the DKG).
    bridge_keys: Option<BridgeKeys>,
    /// Events whose block left the canonical chain after they were reported final (a
    /// reorg deeper than finality): never signed, relayed or paid (from the store at
    /// start, then as the adapters report them).
    reorged: BTreeSet<EventId>,
    /// A signing queue not empty for this long makes the node not ready.
    queue_saturated: Duration,
    /// The mint book and its driver's state.
    mints: mints::Mints,
    /// The relayer's reports of consumed mints until the run loop takes them.
    relay_consumed: Option<mpsc::Receiver<Vec<EventId>>>,
    /// The epoch's evm group key as the bridges take it (None before the DKG).
    evm_xy: Option<(alloy::primitives::U256, alloy::primitives::U256)>,
    /// The release book and its driver's state.
    book: releases::Book,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("usable", &self.usable).finish_non_exhaustive()
    }
}

/// Of the events the books hold as reorged (`held`), those the store holds as final
/// again: not among the events it marks reorged (`stored_reorged`), and stored unmarked
/// (`stored_final`). A crash after the chain's write of such an event and before the
/// books' leaves exactly these.
fn final_again(
    held: impl IntoIterator<Item = EventId>,
    stored_reorged: &BTreeSet<EventId>,
    stored_final: impl Fn(&EventId) -> eyre::Result<bool>,
) -> eyre::Result<BTreeSet<EventId>> {
    let mut out = BTreeSet::new();
    for e in held {
        if !stored_reorged.contains(&e) && stored_final(&e)? {
            out.insert(e);
        }
    }
    Ok(out)
}

impl Pipeline {
    /// Opens the epoch's keys (if any) with `passphrase` and prepares signing.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &NodeConfig,
        store: Arc<Store>,
        metrics: Metrics,
        net: NetworkHandle,
        peers: Vec<PeerId>,
        me: usize,
        passphrase: Option<&str>,
        faults: Faults,
        tasks: &mut crate::tasks::Tasks,
    ) -> eyre::Result<Self> {
        let epoch = cfg.node.epoch;
        let n = peers.len();
        let timeout_ms = cfg.signing.timeout_ms;
        let open = SuiteOpener {
            store: &store,
            epoch,
            n,
            me,
            timeout_ms,
            max_attempts: cfg.signing.max_attempts,
            max_in_flight: cfg.signing.max_sessions_in_flight,
            passphrase,
            fault: faults.signing,
            metrics: &metrics,
        };
        let evm = open.suite::<Evm>(KeyKind::Evm)?;
        let btc = open.suite::<Btc>(KeyKind::Btc)?;
        let group_keys: BTreeMap<KeyKind, String> = [
            evm.as_ref().map(|(gk, _)| (KeyKind::Evm, gk.clone())),
            btc.as_ref().map(|(gk, _)| (KeyKind::Btc, gk.clone())),
        ]
        .into_iter()
        .flatten()
        .collect();
        let (evm, btc) = (evm.map(|(_, s)| s), btc.map(|(_, s)| s));
        let mut usable = BTreeSet::new();
        for kind in group_keys.keys() {
            if crate::records::keys::check(&store, *kind, epoch)?.is_some() {
                usable.insert(*kind);
                metrics.key_usable.with_label_values(&[kind.as_str()]).set(1);
            }
        }
        let (relay, relay_consumed) = match cfg.relayer_signer() {
            Some(s) if !cfg.evm.is_empty() => {
                let (consumed_tx, consumed) = mpsc::channel(mints::CONSUMED_QUEUE);
                let jobs = relay::spawn(&cfg.evm, s, store.clone(), metrics.clone(), consumed_tx, tasks)?;
                (Some(jobs), Some(consumed))
            }
            _ => {
                info!(target: "relay", "no relayer key configured: this node signs mints but leaves submitting them to others");
                (None, None)
            }
        };
        let bridges = cfg.evm.iter().map(|c| (c.chain_id.0, c.bridge)).collect();
        let vault_script = if cfg.bitcoin.vault_address.is_empty() {
            ScriptBuf::new()
        } else {
            cfg.bitcoin
                .vault_address
                .parse::<bitcoin::Address<bitcoin::address::NetworkUnchecked>>()?
                .require_network(cfg.bitcoin.network)?
                .script_pubkey()
        };
        let (bitcoind, bitcoind_answers) = match BitcoinSource::for_submission(cfg.bitcoin.clone()) {
            Ok(btc) => {
                let (d, answers) = releases::driver::Driver::spawn(btc, tasks);
                (Some(d), Some(answers))
            }
            Err(_) => (None, None),
        };
        let spends = crate::records::vault_spends(&store)?;
        let policy = Policy {
            dust_relay_sat_per_kvb: cfg.release.dust_relay_sat_per_kvb,
            max_fee_multiple: cfg.release.max_fee_multiple,
            consolidation_inputs: cfg.release.consolidation_inputs,
            ..Policy::new(
                vault_script,
                cfg.bitcoin.peg_out_fee,
                cfg.bitcoin.fees.floor_sat_per_vb,
                cfg.bitcoin.fees.ceiling_sat_per_vb,
            )
        };
        let (book, owed) = releases::Book::open(cfg, &store, &policy, me, n)?;
        let (mints, mints_owed) = mints::Mints::open(cfg, &store, me, n)?;
        let mut t = Self {
            store,
            metrics,
            net,
            peers,
            me,
            n,
            epoch,
            evm,
            btc,
            group_keys,
            usable,
            deferred: Vec::new(),
            bridges,
            vault_address: cfg.bitcoin.vault_address.clone(),
            paid: BTreeMap::new(),
            onchain: BTreeMap::new(),
            bitcoin_synced: false,
            relay,
            finalized_at: BTreeMap::new(),
            policy,
            fee_estimate: None,
            fee_estimated_at: None,
            confirmations: u64::from(cfg.bitcoin.confirmations),
            bitcoind,
            bitcoind_answers,
            asked: Asked::default(),
            utxos: BTreeMap::new(),
            last_faulty: None,
            release_fault: faults.release,
            key_checks_started: false,
            bridge_keys: None,
            reorged: BTreeSet::new(),
            queue_saturated: Duration::from_secs(cfg.signing.queue_saturated_secs),
            evm_xy: None,
            book,
            mints,
            relay_consumed,
        };
        t.book_actions(owed)?;
        t.book_catch_up(&spends)?;
        if let Some((x, y)) = crate::records::keys::load(&t.store, KeyKind::Evm, epoch)?.and_then(|k| k.evm_xy)
            && !cfg.evm.is_empty()
        {
            let parse = |v: &str| {
                alloy::primitives::U256::from_str_radix(v.trim_start_matches("0x"), 16)
                    .map_err(|e| eyre::eyre!("stored evm key coordinate {v}: {e}"))
            };
            t.evm_xy = Some((parse(&x)?, parse(&y)?));
            let every = Duration::from_secs(cfg.signing.bridge_key_check_secs);
            t.bridge_keys =
                Some(BridgeKeys::spawn(&cfg.evm, (parse(&x)?, parse(&y)?), cfg.bitcoin.peg_out_fee.0, every, tasks));
        }
        t.metrics.vault_fee_alert.set(i64::try_from(cfg.release.daily_fee_alert_sats).unwrap_or(i64::MAX));
        for spend in spends {
            Self::count_payments(&mut t.paid, &spend.payouts, false);
            t.onchain.insert(spend.txid, spend.payouts);
        }
        t.mint_actions(mints_owed)?;
        t.tell_mint_gates()?;
        t.update_pending_gauge();
        Ok(t)
    }

    /// Resumes work left by a restart: unsigned certified attestations (the book
    /// restored its releases when the pipeline was made).
    /// Picks up what the store holds after a start: `reorged` are the events stored as
    /// reorged out past finality (never acted on, whatever else the store holds).
    pub fn resume(&mut self, reorged: BTreeSet<EventId>) -> eyre::Result<()> {
        // The book logs the reorgs it was told; one stored by the chain's write just
        // before a crash is told now, before anything is signed.
        for e in &reorged {
            self.book_input(release::book::Input::Reorged(*e))?;
            self.mint_input(btcfi_mint::Input::Reorged(*e))?;
        }
        // One the books still hold as reorged that the store no longer marks so was
        // final again just before a crash (the chain's write landed, the books' did
        // not): they are told now, or it would never be paid or minted.
        let held: Vec<EventId> = self.book_reorged().into_iter().chain(self.mints.book.reorged().copied()).collect();
        let stored_final = |e: &EventId| -> eyre::Result<bool> {
            Ok(matches!(crate::records::get_event(&self.store, e)?, Some(r) if r.reorged.is_none()))
        };
        for e in final_again(held, &reorged, stored_final)? {
            info!(target: "signing", event = %e, "final again before the last stop: taken up again");
            self.book_input(release::book::Input::Final(e))?;
            self.mint_input(btcfi_mint::Input::Final(e))?;
        }
        self.reorged = reorged;
        for rec in crate::records::all_certified(&self.store)? {
            self.take_certified(&rec.attestation)?;
        }
        self.update_pending_gauge();
        Ok(())
    }

    /// An event became final on its chain (for the finality-to-signature histogram).
    pub fn on_final(&mut self, event: EventId) {
        // Reported final again (the same burn or deposit in the new chain): it stands,
        // and what it was certified for is taken up again.
        if self.reorged.remove(&event) {
            if self.pegout_pinned(&event) {
                warn!(target: "release", %event, "final again, but a release paying it was signed before the reorg and may still confirm: no other release pays it");
            }
            let again = self.mint_input(btcfi_mint::Input::Final(event)).and_then(|()| {
                self.book_input(release::book::Input::Final(event))?;
                match crate::records::get_certified(&self.store, &event)? {
                    Some(rec) => self.take_certified(&rec.attestation),
                    None => Ok(()),
                }
            });
            if let Err(e) = again {
                warn!(target: "signing", %event, error = %e, "cannot take up an event final again");
            }
        }
        if self.finalized_at.len() < 100_000 {
            self.finalized_at.insert(event, Instant::now());
        }
    }

    /// The vault's UTXOs at depth, from the Bitcoin adapter.
    pub fn set_utxos(&mut self, utxos: &[VaultUtxo]) {
        let utxos: BTreeMap<OutPoint, Sats> = utxos.iter().map(|u| (u.outpoint, u.amount)).collect();
        if utxos != self.utxos {
            self.book.utxos_changed = true;
        }
        self.utxos = utxos;
    }

    /// Sends a signing request, retrying for a few seconds (a peer may be redialling);
    /// the sessions tolerate duplicates and losses beyond that.
    fn send(&self, to: usize, payload: Vec<u8>) {
        let Some(peer) = self.peers.get(to).copied() else { return };
        let net = self.net.clone();
        tokio::spawn(async move {
            for delay in [0u64, 250, 500, 1000, 2000, 4000] {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                if net.request(peer, MessageKind::Signing, payload.clone()).await.is_ok() {
                    return;
                }
            }
        });
    }

    /// Sends `payload` to every other validator ([`Pipeline::send`] to each).
    fn send_to_peers(&self, payload: &[u8]) {
        for to in (0..self.n).filter(|i| *i != self.me) {
            self.send(to, payload.to_vec());
        }
    }

    /// A `MessageKind::Signing` request from validator `from`.
    pub fn on_request(&mut self, from: usize, payload: &[u8]) -> eyre::Result<()> {
        let Some((&tag, body)) = payload.split_first() else { return Ok(()) };
        let effects = match tag {
            TAG_EVM => match self.evm.as_mut() {
                Some(s) => s.on_message(from, body, now_ms())?,
                None => vec![],
            },
            TAG_BTC => match self.btc.as_mut() {
                Some(s) => s.on_message(from, body, now_ms())?,
                None => vec![],
            },
            TAG_ROUND => match body.split_first() {
                Some((&TAG_EVM, hint)) => match self.evm.as_mut() {
                    Some(s) => s.on_round_hint(from, hint, now_ms())?,
                    None => vec![],
                },
                Some((&TAG_BTC, hint)) => match self.btc.as_mut() {
                    Some(s) => s.on_round_hint(from, hint, now_ms())?,
                    None => vec![],
                },
                _ => vec![],
            },
            TAG_BATCH_READY => {
                self.on_batch_ready(from, body)?;
                vec![]
            }
            TAG_BATCH_SIGNED => {
                self.on_signed_batches(from, body)?;
                vec![]
            }
            TAG_BATCH => {
                self.on_batch(from, body)?;
                vec![]
            }
            TAG_RELEASE => {
                match Proposal::decode(body) {
                    Ok(proposal) => self.book_input(release::book::Input::Proposal { from, proposal })?,
                    Err(e) => warn!(target: "release", from, error = %e, "undecodable release proposal dropped"),
                }
                vec![]
            }
            _ => vec![],
        };
        self.apply(effects)
    }

    /// Once a second: session timeouts, release proposals and follow-up.
    pub fn tick(&mut self) -> eyre::Result<()> {
        self.start_key_checks()?;
        let mut effects = Vec::new();
        if let Some(s) = self.evm.as_mut() {
            effects.extend(s.tick(now_ms())?);
        }
        if let Some(s) = self.btc.as_mut() {
            effects.extend(s.tick(now_ms())?);
        }
        self.apply(effects)?;
        self.tell_mint_gates()?;
        self.mint_input(btcfi_mint::Input::Tick)?;
        if self.usable.contains(&KeyKind::Btc) {
            self.book_utxos()?;
            self.book_tick()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use btcfi_types::TxHash;

    /// What the books hold as reorged and the store no longer does is told final again;
    /// what the store still marks reorged, or does not hold, is not.
    #[test]
    fn an_event_final_again_before_a_crash_is_taken_up_again() {
        let e = |i: u8| EventId::new(ChainId(31337), TxHash([i; 32]), 0);
        let stored_reorged = BTreeSet::from([e(1)]);
        let stored = |x: &EventId| Ok(*x != e(3));
        let again = final_again([e(1), e(2), e(3), e(2)], &stored_reorged, stored).expect("read");
        assert_eq!(again, BTreeSet::from([e(2)]));
    }
}
