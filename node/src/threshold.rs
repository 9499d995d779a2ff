//! What happens after certification: signing with the epoch's group keys, relaying
//! mints, and paying peg-outs from the vault.
//!
//! [`Threshold`] lives in the run loop. It owns the two signing [`Suite`]s, checks a
//! fresh key with a test signature before using it, turns certified peg-ins and
//! EVM-to-EVM attestations into mint signatures (stored, served by the API, handed to
//! the relayer), and drives Bitcoin releases ([`crate::release`]).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use crate::{
    batch::{BatchProposal, Leaf, TAG_BATCH, TAG_BATCH_READY, TAG_BATCH_SIGNED},
    bridge_key::BridgeKeys,
    config::NodeConfig,
    keys::{self, KeyKind},
    metrics::Metrics,
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
    btc as btcsig,
    evm::{EvmSignature, mint_message},
    frost_secp256k1::Secp256K1Sha256 as Evm,
    frost_secp256k1_tr::Secp256K1Sha256TR as Btc,
    session::SessionConfig,
};
use btcfi_store::{Batch, Cf, Store};
use btcfi_types::{Attestation, AttestationKind, ChainId, EventId, EvmAddress, Sats, TxHash};
use serde::{Deserialize, Serialize};
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

/// A signed mint, stored under `sig/` + event id and served by the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedRecord {
    pub chain_id: u64,
    pub bridge: String,
    pub contract_event_id: String,
    pub recipient: String,
    pub amount_sats: u64,
    /// The 32-byte message the contract verifies (`mintMessage`).
    pub message: String,
    pub rx: String,
    pub ry: String,
    pub z: String,
    /// Validators eligible in the attempt that produced the signature.
    pub signers: Vec<String>,
    pub attempt: u32,
    pub signed_at_ms: u64,
    /// Signed as part of a batch: `message` is then the batch message and (rx, ry, z)
    /// its signature, and this leaf mints with its proof under the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchRef>,
}

/// Where a batch-signed mint sits in its batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchRef {
    /// `0x` + the Merkle root the group key signed.
    pub root: String,
    /// The leaf's proof, bottom up (`0x` + 32 bytes each).
    pub proof: Vec<String>,
    /// Mints in the batch.
    pub leaves: usize,
}

/// A batch not signed this long after it was proposed is given up and re-batched.
const BATCH_STALE_AFTER: Duration = Duration::from_secs(120);

/// A batch proposal refused only because a mint of it is not certified here yet is
/// tried again for this long; at most this many wait.
const EARLY_BATCH_FOR: Duration = Duration::from_secs(60);
const MAX_EARLY_BATCHES: usize = 256;
const NOT_CERTIFIED_YET: &str = "not certified here yet";
const ALL_SIGNED: &str = "every mint of it is signed here already";

/// A batch being signed here.
#[derive(Debug, Clone)]
struct ActiveBatch {
    proposal: BatchProposal,
    /// Who proposed it, and how far that validator stands after the batch's primary
    /// proposer (0: the primary): a better-ranked proposal of the same mints wins.
    proposer: usize,
    rank: usize,
    since: Instant,
    /// When its signing session started here: only once `t` validators (this one
    /// included) said they hold the batch, so that they start it together and their
    /// attempts do not drift apart while the others are still certifying its mints.
    /// Its staleness counts from then (under a burst, validators may hold a batch a
    /// minute before t of them certified all of its mints).
    started_at: Option<Instant>,
}

/// An unsigned batch's proposal (by its proposer) and readiness (by every holder) are
/// sent again this often.
const BATCH_RESEND_EVERY: Duration = Duration::from_secs(5);
/// Most batches one readiness note names.
const MAX_READY_PER_NOTE: usize = 1024;
/// Most batch messages whose readiness notes are kept before this node holds them.
const MAX_READY_NOTES: usize = 4096;

pub fn signed_key(event: &EventId) -> Vec<u8> {
    let mut k = b"sig/".to_vec();
    k.extend_from_slice(&event.to_bytes());
    k
}

/// Where a release stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseStatus {
    Signing,
    Broadcast,
    /// A replacement (RBF) was accepted; this one may still confirm instead.
    Replaced,
    Confirmed,
    /// Another release spending one of its inputs confirmed: it never will.
    Conflicted,
}

/// A release this node validated, under `rel/` + txid in the `releases` column family.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub txid: String,
    /// The encoded proposal (hex).
    pub proposal: String,
    pub payouts: Vec<EventId>,
    pub status: ReleaseStatus,
    /// FROST signature per input (hex), once signed.
    pub signatures: Vec<Option<String>>,
    pub fee_sats: u64,
    pub fee_rate_sat_per_vb: u64,
    pub peg_out_fee_sats: u64,
    pub proposer: usize,
    pub created_ms: u64,
    pub broadcast_ms: Option<u64>,
    pub confirmations: u64,
    /// The release this one replaced (RBF).
    pub replaces: Option<String>,
}

/// Key of the record of a certified peg-out that can never be paid (`{"reason"}`).
pub fn unpayable_key(event: &EventId) -> Vec<u8> {
    let mut k = b"unpayable/".to_vec();
    k.extend_from_slice(&event.to_bytes());
    k
}

/// Drops a release's stored signatures so that its inputs are signed again.
fn forget_signatures(rec: &mut ReleaseRecord) {
    rec.signatures.iter_mut().for_each(|s| *s = None);
    rec.status = ReleaseStatus::Signing;
}

const ONCHAIN_PREFIX: &[u8] = b"onchain/";

/// Key of a vault spend at depth (the chain's payments ledger), by txid.
pub fn onchain_key(txid: &TxHash) -> Vec<u8> {
    let mut k = ONCHAIN_PREFIX.to_vec();
    k.extend_from_slice(&txid.0);
    k
}

/// A display-order txid (as [`TxHash`] holds it) in the internal byte order.
fn internal_order(txid: &TxHash) -> [u8; 32] {
    let mut b = txid.0;
    b.reverse();
    b
}

/// The display-order [`TxHash`] of a txid.
fn display_txid(txid: &Txid) -> TxHash {
    let mut b = txid.to_byte_array();
    b.reverse();
    TxHash(b)
}

/// Key of the list of releases (txids) that pay `event`.
fn paying_key(event: &EventId) -> Vec<u8> {
    let mut k = b"paying/".to_vec();
    k.extend_from_slice(&event.to_bytes());
    k
}

fn release_key(txid: &Txid) -> Vec<u8> {
    let mut k = b"rel/".to_vec();
    k.extend_from_slice(txid.to_string().as_bytes());
    k
}

/// A `0x`-prefixed 32-byte hex word, as [`SignedRecord`] stores them.
/// The mint a peg-in or EVM-to-EVM attestation asks for: its destination chain and
/// leaf (None for payouts).
fn mint_of(att: &Attestation) -> Option<(ChainId, Leaf)> {
    match att.kind {
        AttestationKind::PegIn { dest_chain, recipient, amount }
        | AttestationKind::EvmToEvm { dest_chain, recipient, amount, .. } => {
            Some((dest_chain, Leaf { event: att.event, recipient, amount }))
        }
        AttestationKind::PegOut { .. } | AttestationKind::Refund { .. } => None,
    }
}

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

/// What the releases this node knows hold: the live ones (that may still confirm) with
/// their inputs and payouts, and the peg-outs paid by confirmed ones.
struct Locks {
    live: BTreeMap<Txid, release::Live>,
    paid: BTreeSet<EventId>,
}

impl Locks {
    /// Inputs a live release spends: not available to a new release.
    fn inputs(&self) -> BTreeSet<OutPoint> {
        self.live.values().flat_map(|l| l.inputs.iter().copied()).collect()
    }

    /// Peg-outs promised to a live release or paid: not to be proposed again.
    fn payouts(&self) -> BTreeSet<EventId> {
        self.live.values().flat_map(|l| l.payouts.iter().copied()).chain(self.paid.iter().copied()).collect()
    }
}

/// Longest one bitcoind call of the release path may take inside the main loop.
const RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest following the releases may take in one tick.
const FOLLOW_BUDGET: Duration = Duration::from_secs(3);

/// `call`, or an error once [`RPC_TIMEOUT`] passed (the call is abandoned, not undone:
/// every call here is a read or an idempotent broadcast).
async fn bounded<T>(call: impl Future<Output = Result<T, BtcError>>) -> Result<T, String> {
    match tokio::time::timeout(RPC_TIMEOUT, call).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("bitcoind did not answer within {RPC_TIMEOUT:?}")),
    }
}

/// The validator in turn proposes a release once its oldest peg-out waited this long
/// and no other was certified for as long (peg-outs certified together are batched),
/// or at once when [`release::MAX_PAYOUTS`] wait.
const BATCH_WAIT: Duration = Duration::from_secs(2);
/// ... or once its oldest peg-out waited this long, however many keep coming.
const BATCH_MAX_WAIT: Duration = Duration::from_secs(30);
/// After a proposal that could not be made (no funds, bitcoind's policy), the next
/// is tried this long after.
const PROPOSAL_BACK_OFF: Duration = Duration::from_secs(5);
/// A peg-out left out of releases this long for want of free funds (while the vault as
/// a whole holds enough) is paid before any newer one.
const DEFER_MAX: Duration = Duration::from_secs(600);
/// A withdrawal that does not validate yet is tried again after this long.
const WITHDRAW_RETRY: Duration = Duration::from_secs(10);

/// Proposals kept for a re-check (they name UTXOs or peg-outs this node does not see
/// at depth yet), in all and per proposer.
const MAX_WAITING: usize = 64;
const MAX_WAITING_PER_SENDER: usize = 8;
/// A proposer sends its releases still being signed again this often (a validator
/// that was restarting, or lagging, gets another chance to validate them).
const RESEND_EVERY: Duration = Duration::from_secs(30);

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
    /// The payment bound off: the vault's final payments on chain are not counted
    /// against the certified peg-outs (the negative control of the tests that a
    /// restored database never pays again).
    NoPaymentBound,
}

/// Opens the epoch's group keys into signing suites.
struct SuiteOpener<'a> {
    store: &'a Store,
    epoch: u64,
    n: usize,
    me: usize,
    timeout_ms: u64,
    max_attempts: u32,
    max_in_flight: usize,
    passphrase: Option<&'a str>,
    fault: Option<SigningFault>,
    metrics: &'a Metrics,
}

impl SuiteOpener<'_> {
    /// The suite of `kind` with its group key, or `None` (with a warning) before the DKG.
    fn suite<C: frost_core::Ciphersuite>(&self, kind: KeyKind) -> eyre::Result<Option<(String, Suite<C>)>> {
        if keys::load(self.store, kind, self.epoch)?.is_none() {
            warn!(target: "signing", key = %kind, epoch = self.epoch, "no key for this epoch: signing disabled until `btcfi-node dkg` has run");
            return Ok(None);
        }
        let passphrase = self.passphrase.ok_or(keys::KeyError::NoPassphrase)?;
        let k = keys::open_key::<C>(self.store, kind, self.epoch, passphrase)?;
        let config = SessionConfig {
            key_package: k.key_package,
            public_key_package: k.public_key_package,
            timeout_ms: self.timeout_ms,
            max_attempts: self.max_attempts,
        };
        let suite = Suite::new(
            kind,
            self.epoch,
            self.n,
            self.me,
            config,
            self.store,
            self.fault,
            self.metrics.clone(),
            self.max_in_flight,
        )?;
        Ok(Some((k.record.group_key, suite)))
    }
}

/// Signing, relaying and releases of one node.
pub struct Threshold {
    store: Arc<Store>,
    metrics: Metrics,
    net: NetworkHandle,
    peers: Vec<PeerId>,
    me: usize,
    n: usize,
    epoch: u64,
    takeover: Duration,
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
    /// Peg-outs paid by releases this node followed to depth (finished releases are
    /// not kept in memory).
    paid_events: BTreeSet<EventId>,
    /// Whether the Bitcoin adapter has seen every final block.
    bitcoin_synced: bool,
    relay: Option<mpsc::Sender<RelayJob>>,
    finalized_at: BTreeMap<EventId, Instant>,
    // Releases.
    policy: Policy,
    confirmations: u64,
    rbf_after: Duration,
    bitcoin: Option<BitcoinSource>,
    utxos: BTreeMap<OutPoint, Sats>,
    pegouts: BTreeMap<EventId, Payout>,
    pegout_seen: BTreeMap<EventId, Instant>,
    releases: BTreeMap<Txid, (ReleaseRecord, Proposal)>,
    waiting: Vec<(usize, Proposal, Instant)>,
    last_release_check: Instant,
    last_proposal: Option<Instant>,
    /// After a proposal that could not be made: none before this.
    proposals_resume: Option<Instant>,
    /// Fresh proposals refused here as out of turn, by the validators that sent them
    /// (and when first): one that f+1 of them sent on was accepted in turn by an honest
    /// one (validators resend only releases they accepted), and is accepted here too.
    vouched: BTreeMap<Txid, (BTreeSet<usize>, Instant)>,
    /// Peg-outs left out of this node's last release for want of free funds, and since
    /// when ([`release::build_fundable`]).
    unfunded: BTreeMap<EventId, Instant>,
    last_resend: Instant,
    resend_every: Duration,
    /// Proposals refused because another release holds their peg-outs or inputs here.
    competing: BTreeMap<Txid, (Proposal, Instant, usize)>,
    /// Stalled releases a merge was proposed for, and when.
    merged: BTreeMap<Txid, Instant>,
    merge_after: Duration,
    /// This node's own fee estimate (sat/vB, clamped to the bounds), and when it was
    /// read: what it proposes at, and the centre of the band it signs within.
    fee_estimate: Option<u64>,
    fee_estimated_at: Option<Instant>,
    /// Testing only: a proposer's misbehaviour.
    release_fault: Option<ReleaseFault>,
    key_checks_started: bool,
    /// Every bridge's `groupKey()` against the epoch's evm key (None before the DKG).
    bridge_keys: Option<BridgeKeys>,
    /// Certified mints held back while their destination bridge holds another key.
    held_mints: Vec<Attestation>,
    /// Peers' proposals valid here, to ask bitcoind's policy about before signing.
    to_check: Vec<(usize, Proposal)>,
    /// Signed releases bitcoind's policy refused to broadcast (named once).
    policy_refused: BTreeSet<Txid>,
    /// Events whose block left the canonical chain after they were reported final (a
    /// reorg deeper than finality): never signed, relayed or paid (from the store at
    /// start, then as the adapters report them).
    reorged: BTreeSet<EventId>,
    /// Releases paying a reorged peg-out, and when their withdrawal was last tried.
    withdraw_tried: BTreeMap<Txid, Instant>,
    /// A signing queue not empty for this long makes the node not ready.
    queue_saturated: Duration,
    /// Certified mints in no batch here yet, per destination chain, with when they
    /// were certified.
    unbatched: BTreeMap<u64, BTreeMap<EventId, (Leaf, Instant)>>,
    /// Batches being signed here, by the message the group key signs.
    batches: BTreeMap<Vec<u8>, ActiveBatch>,
    /// The message of the batch each mint is being signed in.
    in_batch: BTreeMap<EventId, Vec<u8>>,
    batch_max: usize,
    batch_wait: Duration,
    last_batch_resend: Instant,
    /// Peers' batch proposals that came before this node certified their mints.
    early_batches: Vec<(usize, BatchProposal, Instant)>,
    /// Validators that said they hold a batch (by its message), and since when.
    batch_ready: BTreeMap<Vec<u8>, (BTreeSet<usize>, Instant)>,
    /// The epoch's evm group key as the bridges take it (None before the DKG).
    evm_xy: Option<(alloy::primitives::U256, alloy::primitives::U256)>,
}

impl std::fmt::Debug for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Threshold").field("usable", &self.usable).finish_non_exhaustive()
    }
}

impl Threshold {
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
            if keys::check(&store, *kind, epoch)?.is_some() {
                usable.insert(*kind);
                metrics.key_usable.with_label_values(&[kind.as_str()]).set(1);
            }
        }
        let relay = match cfg.relayer_signer() {
            Some(s) if !cfg.evm.is_empty() => Some(relay::spawn(&cfg.evm, s, store.clone(), metrics.clone())?),
            _ => {
                info!(target: "relay", "no relayer key configured: this node signs mints but leaves submitting them to others");
                None
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
        let bitcoin = BitcoinSource::for_submission(cfg.bitcoin.clone()).ok();
        let mut spends = Vec::new();
        for (_, raw) in store.scan_prefix(Cf::Releases, ONCHAIN_PREFIX)? {
            spends.push(serde_json::from_slice::<VaultSpend>(&raw)?);
        }
        // In memory: the releases that may still confirm; of the finished ones, only the
        // peg-outs paid (the store keeps every record, for the API).
        let mut releases = BTreeMap::new();
        let mut paid_events = BTreeSet::new();
        for (_, raw) in store.scan_prefix(Cf::Releases, b"rel/")? {
            let rec: ReleaseRecord = serde_json::from_slice(&raw)?;
            match rec.status {
                ReleaseStatus::Confirmed => paid_events.extend(rec.payouts.iter().copied()),
                ReleaseStatus::Conflicted => {}
                _ => {
                    let p = Proposal::decode(&hex::decode(&rec.proposal)?)
                        .map_err(|e| eyre::eyre!("stored release: {e}"))?;
                    releases.insert(p.txid(), (rec, p));
                }
            }
        }
        let mut t = Self {
            store,
            metrics,
            net,
            peers,
            me,
            n,
            epoch,
            takeover: Duration::from_millis(cfg.signing.takeover_ms),
            evm,
            btc,
            group_keys,
            usable,
            deferred: Vec::new(),
            bridges,
            vault_address: cfg.bitcoin.vault_address.clone(),
            paid: BTreeMap::new(),
            paid_events,
            onchain: BTreeMap::new(),
            bitcoin_synced: false,
            relay,
            finalized_at: BTreeMap::new(),
            policy: Policy {
                dust_relay_sat_per_kvb: cfg.release.dust_relay_sat_per_kvb,
                max_fee_multiple: cfg.release.max_fee_multiple,
                consolidation_inputs: cfg.release.consolidation_inputs,
                ..Policy::new(
                    vault_script,
                    cfg.bitcoin.peg_out_fee,
                    cfg.bitcoin.fees.floor_sat_per_vb,
                    cfg.bitcoin.fees.ceiling_sat_per_vb,
                )
            },
            fee_estimate: None,
            fee_estimated_at: None,
            confirmations: u64::from(cfg.bitcoin.confirmations),
            rbf_after: Duration::from_secs(cfg.bitcoin.rbf_after_secs),
            bitcoin,
            utxos: BTreeMap::new(),
            pegouts: BTreeMap::new(),
            pegout_seen: BTreeMap::new(),
            releases,
            waiting: Vec::new(),
            last_release_check: Instant::now(),
            last_proposal: None,
            proposals_resume: None,
            vouched: BTreeMap::new(),
            unfunded: BTreeMap::new(),
            last_resend: Instant::now(),
            resend_every: RESEND_EVERY
                .min(Duration::from_millis(cfg.signing.merge_after_ms / 4))
                .max(Duration::from_secs(1)),
            competing: BTreeMap::new(),
            merged: BTreeMap::new(),
            merge_after: Duration::from_millis(cfg.signing.merge_after_ms),
            release_fault: faults.release,
            key_checks_started: false,
            bridge_keys: None,
            held_mints: Vec::new(),
            to_check: Vec::new(),
            policy_refused: BTreeSet::new(),
            reorged: BTreeSet::new(),
            withdraw_tried: BTreeMap::new(),
            queue_saturated: Duration::from_secs(cfg.signing.queue_saturated_secs),
            unbatched: BTreeMap::new(),
            batches: BTreeMap::new(),
            in_batch: BTreeMap::new(),
            batch_max: cfg.signing.batch_max_mints.clamp(1, crate::batch::MAX_BATCH_LEAVES),
            batch_wait: Duration::from_millis(cfg.signing.batch_wait_ms),
            last_batch_resend: Instant::now(),
            early_batches: Vec::new(),
            batch_ready: BTreeMap::new(),
            evm_xy: None,
        };
        if let Some((x, y)) = keys::load(&t.store, KeyKind::Evm, epoch)?.and_then(|k| k.evm_xy)
            && !cfg.evm.is_empty()
        {
            let parse = |v: &str| {
                alloy::primitives::U256::from_str_radix(v.trim_start_matches("0x"), 16)
                    .map_err(|e| eyre::eyre!("stored evm key coordinate {v}: {e}"))
            };
            t.evm_xy = Some((parse(&x)?, parse(&y)?));
            let every = Duration::from_secs(cfg.signing.bridge_key_check_secs);
            t.bridge_keys =
                Some(BridgeKeys::spawn(&cfg.evm, (parse(&x)?, parse(&y)?), cfg.bitcoin.peg_out_fee.0, every));
        }
        t.metrics.vault_fee_alert.set(i64::try_from(cfg.release.daily_fee_alert_sats).unwrap_or(i64::MAX));
        for spend in spends {
            Self::count_payments(&mut t.paid, &spend.payouts, false);
            t.onchain.insert(spend.txid, spend.payouts);
        }
        t.update_pending_gauge();
        Ok(t)
    }

    /// Group keys, vault and releases, for `/v1/status`.
    pub fn summary(&self) -> serde_json::Value {
        let keys: serde_json::Map<String, serde_json::Value> = [KeyKind::Evm, KeyKind::Btc]
            .into_iter()
            .map(|k| {
                let load = self.load(k);
                let v = serde_json::json!({
                    "group_key": self.group_keys.get(&k),
                    "usable": self.usable.contains(&k),
                    "sessions_in_flight": load.map(|l| l.in_flight),
                    "max_sessions_in_flight": load.map(|l| l.max_in_flight),
                    "queued": load.map(|l| l.queued),
                    "queued_for_secs": load.map(|l| l.backlog.as_secs()),
                });
                (k.as_str().to_owned(), v)
            })
            .collect();
        let mut releases = BTreeMap::<&str, usize>::new();
        for (r, _) in self.releases.values() {
            let status = match r.status {
                ReleaseStatus::Signing => "signing",
                ReleaseStatus::Broadcast => "broadcast",
                ReleaseStatus::Replaced => "replaced",
                ReleaseStatus::Confirmed => "confirmed",
                ReleaseStatus::Conflicted => "conflicted",
            };
            *releases.entry(status).or_default() += 1;
        }
        serde_json::json!({
            "keys": keys,
            "vault_address": self.vault_address,
            "peg_outs_pending": self.metrics.releases_pending.get(),
            "releases_in_flight": releases,
            "peg_outs_paid": self.paid_events.len(),
            "relayer": self.relay.is_some(),
        })
    }

    /// Why the bridge on `chain` may not be used now (its key is not this epoch's, or
    /// not checked yet), if it may not.
    fn bridge_not_ready(&self, chain: u64) -> Option<String> {
        self.bridge_keys.as_ref().and_then(|k| k.not_ready(chain))
    }

    /// Mints held back by a bridge's key: signed once the bridge holds this epoch's key.
    fn retry_held_mints(&mut self) -> eyre::Result<()> {
        if self.held_mints.is_empty() {
            return Ok(());
        }
        for att in std::mem::take(&mut self.held_mints) {
            self.take_certified(&att)?;
        }
        Ok(())
    }

    /// Which keys are missing or not yet verified, and which bridges hold another key
    /// (for `/ready`).
    pub fn not_ready(&self) -> Vec<String> {
        let mut why = self.bridge_keys.as_ref().map(BridgeKeys::issues).unwrap_or_default();
        for kind in [KeyKind::Evm, KeyKind::Btc] {
            if !self.group_keys.contains_key(&kind) {
                why.push(format!("no {kind} key for epoch {}: run `btcfi-node dkg`", self.epoch));
            } else if !self.usable.contains(&kind) {
                why.push(format!("{kind} key not verified yet (test signature pending)"));
            }
            if let Some(l) = self.load(kind)
                && l.queued > 0
                && l.backlog >= self.queue_saturated
            {
                why.push(format!(
                    "{kind} signing saturated: {} waiting behind {} sessions in flight for {} s",
                    l.queued,
                    l.in_flight,
                    l.backlog.as_secs()
                ));
            }
        }
        why
    }

    fn load(&self, kind: KeyKind) -> Option<crate::signing::Load> {
        match kind {
            KeyKind::Evm => self.evm.as_ref().map(Suite::load),
            KeyKind::Btc => self.btc.as_ref().map(Suite::load),
        }
    }

    /// Starts the test signatures of unverified keys once a threshold of validators is
    /// connected (before that, the session would only time out).
    fn start_key_checks(&mut self) -> eyre::Result<()> {
        if self.key_checks_started {
            return Ok(());
        }
        let threshold = self.n * 2 / 3 + 1;
        if self.net.connected_validators().len() + 1 < threshold {
            return Ok(());
        }
        self.key_checks_started = true;
        for kind in [KeyKind::Evm, KeyKind::Btc] {
            if let Some(gk) = self.group_keys.get(&kind).cloned()
                && !self.usable.contains(&kind)
            {
                let m = keys::test_message(kind, self.epoch, &gk);
                self.start_now(kind, m, Purpose::KeyCheck)?;
            }
        }
        Ok(())
    }

    /// Resumes work left by a restart: unsigned certified attestations, releases.
    /// Picks up what the store holds after a start: `reorged` are the events stored as
    /// reorged out past finality (never acted on, whatever else the store holds).
    pub fn resume(&mut self, reorged: BTreeSet<EventId>) -> eyre::Result<()> {
        self.reorged = reorged;
        for rec in crate::state::all_certified(&self.store)? {
            self.take_certified(&rec.attestation)?;
        }
        self.update_pending_gauge();
        // Releases still being signed: sign their remaining inputs.
        for txid in self.releases_in(&[ReleaseStatus::Signing]) {
            self.start_release_sessions(txid)?;
        }
        Ok(())
    }

    /// An event became final on its chain (for the finality-to-signature histogram).
    pub fn on_final(&mut self, event: EventId) {
        // Reported final again (the same burn or deposit in the new chain): it stands,
        // and what it was certified for is taken up again.
        if self.reorged.remove(&event)
            && let Ok(Some(rec)) = crate::state::get_certified(&self.store, &event)
            && let Err(e) = self.take_certified(&rec.attestation)
        {
            warn!(target: "signing", %event, error = %e, "cannot take up an event final again");
        }
        if self.finalized_at.len() < 100_000 {
            self.finalized_at.insert(event, Instant::now());
        }
    }

    /// The vault's UTXOs at depth, from the Bitcoin adapter.
    pub fn set_utxos(&mut self, utxos: &[VaultUtxo]) {
        self.utxos = utxos.iter().map(|u| (u.outpoint, u.amount)).collect();
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

    /// Sends `payload` to every other validator ([`Threshold::send`] to each).
    fn send_to_peers(&self, payload: &[u8]) {
        for to in (0..self.n).filter(|i| *i != self.me) {
            self.send(to, payload.to_vec());
        }
    }

    fn start_now(&mut self, kind: KeyKind, message: Vec<u8>, purpose: Purpose) -> eyre::Result<()> {
        let effects = match kind {
            KeyKind::Evm => match self.evm.as_mut() {
                Some(s) => s.start(&self.store, message, purpose, now_ms())?,
                None => return Ok(()),
            },
            KeyKind::Btc => match self.btc.as_mut() {
                Some(s) => s.start(&self.store, message, purpose, now_ms())?,
                None => return Ok(()),
            },
        };
        self.apply(effects)
    }

    /// Starts a session now if the key is verified, else after its test signature.
    fn start(&mut self, kind: KeyKind, message: Vec<u8>, purpose: Purpose) -> eyre::Result<()> {
        if !self.group_keys.contains_key(&kind) {
            return Ok(());
        }
        if self.usable.contains(&kind) {
            self.start_now(kind, message, purpose)
        } else {
            self.deferred.push((kind, message, purpose));
            Ok(())
        }
    }

    /// A certified attestation: sign its mint, or queue its payout.
    pub fn on_certified(&mut self, att: &Attestation) -> eyre::Result<()> {
        self.take_certified(att)?;
        if matches!(att.kind, AttestationKind::PegOut { .. } | AttestationKind::Refund { .. }) {
            self.update_pending_gauge();
        }
        Ok(())
    }

    /// [`Threshold::on_certified`] without the pending gauge (which walks every
    /// peg-out: [`Threshold::resume`] updates it once, not once per record).
    fn take_certified(&mut self, att: &Attestation) -> eyre::Result<()> {
        if self.reorged.contains(&att.event) {
            warn!(target: "signing", event = %att.event, "certified, but its block left the canonical chain past finality: never signed, relayed or paid");
            return Ok(());
        }
        match &att.kind {
            AttestationKind::PegIn { dest_chain, recipient, amount }
            | AttestationKind::EvmToEvm { dest_chain, recipient, amount, .. } => {
                if let Some(signed) =
                    self.store.get_json::<SignedRecord>(Cf::SigningAttempts, signed_key(&att.event))?
                {
                    // Signed before a restart: relay it again unless that is done.
                    let relayed =
                        self.store.get_json::<relay::RelayRecord>(Cf::SigningAttempts, relay::relay_key(&att.event))?;
                    if !relayed.is_some_and(|r| matches!(r.outcome.as_str(), "mined" | "already_consumed" | "reverted"))
                    {
                        let sig =
                            MintSignature { rx: hex32(&signed.rx)?, ry: hex32(&signed.ry)?, z: hex32(&signed.z)? };
                        match &signed.batch {
                            Some(b) => {
                                let proof = b.proof.iter().map(|p| hex32(p)).collect::<eyre::Result<Vec<_>>>()?;
                                let leaf =
                                    BatchLeaf { event: att.event, recipient: *recipient, amount: *amount, proof };
                                let request =
                                    BatchMintRequest { root: hex32(&b.root)?, signature: sig, leaves: vec![leaf] };
                                self.queue_batch(*dest_chain, request);
                            }
                            None => self.queue_mint(att.event, *dest_chain, *recipient, *amount, sig),
                        }
                    }
                    return Ok(());
                }
                if let Some(why) = self.bridge_not_ready(dest_chain.0) {
                    if !self.held_mints.iter().any(|a| a.event == att.event) {
                        warn!(target: "signing", event = %att.event, reason = %why, "mint held back: its bridge does not hold this epoch's key");
                        self.held_mints.push(att.clone());
                    }
                    return Ok(());
                }
                if self.mint_message_of(att).is_none() {
                    error!(target: "signing", event = %att.event, chain = dest_chain.0, "certified for a destination chain this node has no bridge for: not signed");
                    return Ok(());
                }
                if self.in_batch.contains_key(&att.event) {
                    return Ok(());
                }
                // Signed in a batch: proposed by the chain's proposer (or, late, by the
                // next ones), checked by every signer against what it certified.
                let leaf = Leaf { event: att.event, recipient: *recipient, amount: *amount };
                let waiting = self.unbatched.entry(dest_chain.0).or_default();
                waiting.entry(att.event).or_insert((leaf, Instant::now()));
                // A full batch goes at once from the chain's first proposer; everything
                // else waits for the tick (a burst would otherwise rescan the waiting
                // set once per certified mint).
                if waiting.len() >= self.batch_max
                    && self.usable.contains(&KeyKind::Evm)
                    && self.batch_rank_of(dest_chain.0, self.me) == 0
                {
                    self.propose_batches()?;
                }
                Ok(())
            }
            AttestationKind::PegOut { amount, script_pubkey, .. }
            | AttestationKind::Refund { amount, script_pubkey } => {
                let payout =
                    Payout { event: att.event, amount: *amount, script: ScriptBuf::from(script_pubkey.clone()) };
                if let Some(why) = release::unpayable(&payout, &self.policy) {
                    // Certified, but no release can ever pay it: keep it out of every
                    // batch (it would hold up the others) and say so.
                    return self.set_apart(att.event, why.to_string());
                }
                // Set apart before (bitcoind's policy refused it): it stays apart.
                if self.store.get(Cf::Releases, unpayable_key(&att.event))?.is_some() {
                    return Ok(());
                }
                self.pegouts.insert(att.event, payout);
                self.pegout_seen.entry(att.event).or_insert_with(Instant::now);
                Ok(())
            }
        }
    }

    /// Keeps a certified peg-out out of every release from now on, with the reason (in
    /// the store, for the API and across restarts).
    fn set_apart(&mut self, event: EventId, reason: String) -> eyre::Result<()> {
        self.pegouts.remove(&event);
        self.pegout_seen.remove(&event);
        if self.store.get(Cf::Releases, unpayable_key(&event))?.is_none() {
            error!(target: "release", %event, %reason, "certified peg-out can never be paid: left out of every release");
            self.metrics.releases.with_label_values(&["unpayable"]).inc();
            let mut b = Batch::new();
            b.put_json(Cf::Releases, unpayable_key(&event), &serde_json::json!({ "reason": reason }))?;
            self.store.commit(b)?;
        }
        Ok(())
    }

    /// Why bitcoind's relay policy refuses `tx`, if it does (`Ok(None)`: it passes, or
    /// only its missing signatures stop it). `Err`: bitcoind cannot tell now, and
    /// nothing is signed or set apart on that.
    async fn policy_refusal(&self, tx: bitcoin::Transaction) -> Result<Option<String>, String> {
        let btc = self.bitcoin.as_ref().ok_or("no bitcoind")?;
        match bounded(btc.test_mempool_accept(tx)).await? {
            MempoolVerdict::Policy(reason) => Ok(Some(reason)),
            _ => Ok(None),
        }
    }

    /// The payouts of `p` that bitcoind's policy refuses alone (each in a copy of the
    /// release that pays only it), with the reason; only reasons about an output
    /// blame one. Empty if bitcoind could not answer for every probe.
    async fn probe_payouts(&self, p: &Proposal) -> Vec<(EventId, String)> {
        let mut blamed = Vec::new();
        for (i, e) in p.payouts.iter().enumerate() {
            let Some(probe) = release::payout_probe(p, i, &self.policy) else { continue };
            if let Ok(Some(why)) = self.policy_refusal(probe).await
                && btcfi_chain_adapters::bitcoin::mempool::blames_an_output(&why)
            {
                blamed.push((*e, why));
            }
        }
        blamed
    }

    /// What [`Threshold::probe_payouts`] blames in release `txid`, for the log.
    async fn blamed_payouts(&self, txid: &Txid) -> Vec<EventId> {
        let Some((_, p)) = self.releases.get(txid) else { return Vec::new() };
        self.probe_payouts(p).await.into_iter().map(|(e, _)| e).collect()
    }

    /// `p` (not signed by anyone) is refused by bitcoind's policy for `reason`: the
    /// payouts refused alone are set apart with the reason. Returns them.
    async fn blame(&mut self, p: &Proposal, reason: &str) -> eyre::Result<Vec<EventId>> {
        let blamed = self.probe_payouts(p).await;
        if blamed.is_empty() {
            error!(target: "release", txid = %p.txid(), %reason, "bitcoind's policy refuses the release, and no payout alone: not signed");
        }
        let mut events = Vec::new();
        for (e, why) in blamed {
            self.set_apart(e, format!("Bitcoin Core's relay policy refuses its output: {why}"))?;
            events.push(e);
        }
        Ok(events)
    }

    /// Proposals from peers that validated here, asked of bitcoind's policy before they
    /// are accepted and signed.
    async fn check_accepted(&mut self) -> eyre::Result<()> {
        let budget = Instant::now() + FOLLOW_BUDGET;
        for (from, p) in std::mem::take(&mut self.to_check) {
            if self.releases.contains_key(&p.txid()) {
                continue;
            }
            if Instant::now() > budget {
                // A slow bitcoind: the rest next tick (the main loop must not stall).
                self.to_check.push((from, p));
                continue;
            }
            match self.policy_refusal(p.tx.clone()).await {
                Ok(None) => {}
                Ok(Some(reason)) => {
                    let blamed = self.blame(&p, &reason).await?;
                    warn!(target: "release", txid = %p.txid(), from, %reason, blamed = blamed.len(), "release refused by bitcoind's relay policy: not signed");
                    self.metrics.release_refusals.with_label_values(&["mempool_policy"]).inc();
                    continue;
                }
                Err(e) => {
                    // Not signed on bitcoind's silence: asked again next tick.
                    debug!(target: "release", txid = %p.txid(), error = %e, "testmempoolaccept unavailable: the proposal waits");
                    self.to_check.push((from, p));
                    continue;
                }
            }
            // The view may have moved while it waited (one tick at most).
            match self.validate(&p) {
                Ok(_) => self.accept(p, from)?,
                Err(e) => self.refused(from, &p.txid(), &e),
            }
        }
        Ok(())
    }

    /// Hands a signed mint to the relayer, after this node's turn (rank × takeover).
    fn queue_mint(&self, event: EventId, dest: ChainId, recipient: EvmAddress, amount: Sats, signature: MintSignature) {
        let Some(relay) = &self.relay else { return };
        let rank = relay::rank(&event, self.me, self.n);
        let request = MintRequest { event, recipient, amount, signature };
        let job = MintJob { dest, request, delay: self.takeover * rank as u32 };
        if relay.try_send(RelayJob::Mint(job)).is_err() {
            warn!(target: "relay", %event, "relay queue full: mint left to other validators");
        }
    }

    /// Hands a signed batch to the relayer, after this node's turn (by the root).
    fn queue_batch(&self, dest: ChainId, request: BatchMintRequest) {
        let Some(relay) = &self.relay else { return };
        let rank = relay::batch_rank(&request.root, self.me, self.n);
        let root = hex::encode(request.root);
        let job = BatchJob { dest, request, delay: self.takeover * rank as u32 };
        if relay.try_send(RelayJob::Batch(job)).is_err() {
            warn!(target: "relay", %root, "relay queue full: batch left to other validators");
        }
    }

    // ------------------------------------------------------------------ mint batches

    /// How far validator `who` stands after the first proposer of the batches of mints
    /// to `chain`: the others follow it `takeover` apart, each proposing only mints
    /// certified here for at least its rank × takeover.
    fn batch_rank_of(&self, chain: u64, who: usize) -> usize {
        let n = self.n.max(1);
        (who + n - self.batch_proposer(chain)) % n
    }

    /// The validator that proposes the batches of mints to `chain` first.
    fn batch_proposer(&self, chain: u64) -> usize {
        (chain % self.n.max(1) as u64) as usize
    }

    /// Proposes the batches that are due: for each chain, the mints certified here for
    /// at least this node's rank × takeover, once `batch_max` of them wait or the
    /// oldest waited `batch_wait` beyond that. Oldest first, sorted by event id inside.
    fn propose_batches(&mut self) -> eyre::Result<()> {
        // A batch that could not be signed in this long (its proposer gone, a split
        // between proposals) is given up here and its mints batched again.
        let stale: Vec<Vec<u8>> = self
            .batches
            .iter()
            .filter(|(_, b)| b.started_at.unwrap_or(b.since).elapsed() >= BATCH_STALE_AFTER)
            .map(|(m, _)| m.clone())
            .collect();
        for message in stale {
            warn!(target: "signing", "a batch of mints not signed in {} s: given up here, its mints batched again", BATCH_STALE_AFTER.as_secs());
            self.drop_batch(&message, true);
        }
        let chains: Vec<u64> = self.unbatched.keys().copied().collect();
        for chain in chains {
            if self.bridge_not_ready(chain).is_some() {
                continue;
            }
            let rank = self.batch_rank_of(chain, self.me);
            let patience = self.takeover * rank as u32;
            while let Some(waiting) = self.unbatched.get(&chain) {
                let mut due: Vec<(Instant, Leaf)> = waiting
                    .values()
                    .filter(|(_, at)| at.elapsed() >= patience)
                    .map(|(leaf, at)| (*at, *leaf))
                    .collect();
                let Some(oldest) = due.iter().map(|(at, _)| *at).min() else { break };
                if due.len() < self.batch_max && oldest.elapsed() < patience + self.batch_wait {
                    break;
                }
                due.sort_by_key(|(at, leaf)| (*at, leaf.event));
                due.truncate(self.batch_max);
                let proposal = BatchProposal::new(chain, due.into_iter().map(|(_, l)| l).collect());
                info!(target: "signing", chain, mints = proposal.leaves.len(), root = %hex::encode(proposal.root()), rank, "proposing a batch of mints");
                let payload = [&[TAG_BATCH][..], &proposal.encode()].concat();
                self.send_to_peers(&payload);
                self.accept_batch(proposal, self.me)?;
            }
        }
        Ok(())
    }

    /// The proposer of a batch still being signed sends it again (a peer that was
    /// away starts it then; one that has it ignores the copy).
    fn resend_batches(&mut self) {
        if self.last_batch_resend.elapsed() < BATCH_RESEND_EVERY {
            return;
        }
        self.last_batch_resend = Instant::now();
        // One readiness note for every batch held here, per peer; a proposal only to
        // the peers that have not said they hold it.
        let held: Vec<&Vec<u8>> = self
            .batches
            .iter()
            .filter(|(_, b)| b.since.elapsed() >= BATCH_RESEND_EVERY)
            .map(|(m, _)| m)
            .take(MAX_READY_PER_NOTE)
            .collect();
        if held.is_empty() {
            return;
        }
        let ready: Vec<u8> =
            std::iter::once(TAG_BATCH_READY).chain(held.iter().flat_map(|m| m.iter().copied())).collect();
        self.send_to_peers(&ready);
        for (message, b) in &self.batches {
            if b.proposer != self.me || b.since.elapsed() < BATCH_RESEND_EVERY {
                continue;
            }
            let holders = self.batch_ready.get(message).map(|(who, _)| who.clone()).unwrap_or_default();
            let payload = [&[TAG_BATCH][..], &b.proposal.encode()].concat();
            for to in (0..self.n).filter(|i| *i != self.me && !holders.contains(i)) {
                self.send(to, payload.clone());
            }
        }
    }

    /// A peer's batch proposal: signed here only if it is valid against this node's
    /// own view (see [`Threshold::check_batch`]).
    fn on_batch_proposal(&mut self, from: usize, p: BatchProposal) -> eyre::Result<()> {
        let Some(bridge) = self.bridges.get(&p.chain).copied() else {
            warn!(target: "signing", from, chain = p.chain, "batch for a chain with no bridge here refused");
            return Ok(());
        };
        let message = p.message(bridge);
        if self.batches.contains_key(&message) {
            // The proposer resent it: it may have missed this node's readiness.
            self.send(from, [&[TAG_BATCH_READY][..], &message].concat());
            return Ok(());
        }
        match self.check_batch(from, &p) {
            Ok(displaced) => {
                for message in displaced {
                    self.drop_batch(&message, true);
                }
                self.accept_batch(p, from)
            }
            Err(why) if why.starts_with(NOT_CERTIFIED_YET) => {
                // This node certifies a moment after the proposer: checked again on
                // each tick for a while.
                debug!(target: "signing", from, chain = p.chain, reason = %why, "batch proposal held until its mints are certified here");
                if self.early_batches.len() < MAX_EARLY_BATCHES
                    && !self.early_batches.iter().any(|(f, q, _)| *f == from && *q == p)
                {
                    self.early_batches.push((from, p, Instant::now()));
                }
                Ok(())
            }
            Err(why) if why == ALL_SIGNED => {
                // The proposer is behind (it was away while these were signed): it gets
                // the signatures instead, and checks them itself.
                let mut records = Vec::new();
                for leaf in &p.leaves {
                    if let Some(r) =
                        self.store.get_json::<SignedRecord>(Cf::SigningAttempts, signed_key(&leaf.event))?
                    {
                        records.push((leaf.event, r));
                    }
                }
                let body = serde_json::to_vec(&records)?;
                self.send(from, [&[TAG_BATCH_SIGNED][..], &body].concat());
                Ok(())
            }
            Err(why) => {
                debug!(target: "signing", from, chain = p.chain, mints = p.leaves.len(), reason = %why, "batch proposal refused");
                Ok(())
            }
        }
    }

    /// Signatures a peer holds for mints this node still wants signed: each taken only
    /// if it verifies here, under this epoch's key, for the mint this node certified
    /// (the plain mint message, or the batch message over a root its proof leads to).
    fn on_signed_records(&mut self, from: usize, body: &[u8]) -> eyre::Result<()> {
        let Ok(records) = serde_json::from_slice::<Vec<(EventId, SignedRecord)>>(body) else {
            warn!(target: "signing", from, "undecodable signed mints dropped");
            return Ok(());
        };
        let Some((px, py)) = self.evm_xy else { return Ok(()) };
        let mut adopted = 0;
        for (event, rec) in records.into_iter().take(crate::batch::MAX_BATCH_LEAVES) {
            if self.store.get(Cf::SigningAttempts, signed_key(&event))?.is_some() || self.reorged.contains(&event) {
                continue;
            }
            let Some(cert) = crate::state::get_certified(&self.store, &event)? else { continue };
            let Some((dest, Leaf { recipient, amount, .. })) = mint_of(&cert.attestation) else { continue };
            let Some(bridge) = self.bridges.get(&dest.0).copied() else { continue };
            let Ok(message) = hex32(&rec.message) else { continue };
            let expected = match &rec.batch {
                None => mint_message(dest.0, bridge, event.contract_id(), Address::from(recipient.0), amount.0),
                Some(b) => {
                    let (Ok(root), Ok(proof)) =
                        (hex32(&b.root), b.proof.iter().map(|p| hex32(p)).collect::<eyre::Result<Vec<_>>>())
                    else {
                        continue;
                    };
                    let leaf = btcfi_signer::evm::mint_leaf(event.contract_id(), Address::from(recipient.0), amount.0);
                    if !btcfi_signer::evm::verify_proof(leaf, &proof, root) {
                        continue;
                    }
                    btcfi_signer::evm::batch_message(dest.0, bridge, root)
                }
            };
            let (Ok(rx), Ok(ry), Ok(z)) = (hex32(&rec.rx), hex32(&rec.ry), hex32(&rec.z)) else { continue };
            let sig = EvmSignature {
                rx: alloy::primitives::U256::from_be_bytes(rx),
                ry: alloy::primitives::U256::from_be_bytes(ry),
                z: alloy::primitives::U256::from_be_bytes(z),
            };
            if message != expected || btcfi_signer::evm::verify(&expected, px, py, &sig).is_err() {
                warn!(target: "signing", from, %event, "a peer's mint signature does not verify here: dropped");
                continue;
            }
            let mut b = Batch::new();
            b.put_json(Cf::SigningAttempts, signed_key(&event), &rec)?;
            self.store.commit(b)?;
            adopted += 1;
            if let Some(m) = self.in_batch.get(&event).cloned() {
                self.drop_batch(&m, true);
            }
            for waiting in self.unbatched.values_mut() {
                waiting.remove(&event);
            }
        }
        if adopted > 0 {
            info!(target: "signing", from, mints = adopted, "mint signatures learned from a peer (signed while this node was away)");
        }
        Ok(())
    }

    /// Batch proposals that came before this node certified all their mints, tried
    /// again (kept for [`EARLY_BATCH_FOR`]).
    fn retry_early_batches(&mut self) -> eyre::Result<()> {
        let early = std::mem::take(&mut self.early_batches);
        for (from, p, at) in early {
            if at.elapsed() < EARLY_BATCH_FOR {
                let before = self.early_batches.len();
                self.on_batch_proposal(from, p.clone())?;
                // Still early: keep its first arrival time, not a new one.
                if let Some(last) = self.early_batches.get_mut(before) {
                    last.2 = at;
                }
            }
        }
        Ok(())
    }

    /// Whether this node signs batch `p` from validator `from`; if so, the batches here
    /// it displaces (a better-ranked proposal of some of their mints). Every leaf must
    /// be a mint this node certified itself, to that chain, for that recipient and
    /// amount, and not reorged; not every leaf may be signed here already; and a mint
    /// already in a batch here moves only to a proposer ranked before that batch's.
    fn check_batch(&self, from: usize, p: &BatchProposal) -> Result<Vec<Vec<u8>>, String> {
        if from >= self.n {
            return Err("proposer outside the validator set".into());
        }
        if p.leaves.len() > crate::batch::MAX_BATCH_LEAVES {
            return Err("too many mints".into());
        }
        if let Some(why) = self.bridge_not_ready(p.chain) {
            return Err(why);
        }
        if !self.usable.contains(&KeyKind::Evm) {
            return Err("the evm key is not verified here yet".into());
        }
        let rank = self.batch_rank_of(p.chain, from);
        let mut signed = 0;
        let mut displaced = BTreeSet::new();
        for leaf in &p.leaves {
            if self.reorged.contains(&leaf.event) {
                return Err(format!("{} was reorged out past finality", leaf.event));
            }
            let certified = crate::state::get_certified(&self.store, &leaf.event).map_err(|e| e.to_string())?;
            let Some(rec) = certified else { return Err(format!("{NOT_CERTIFIED_YET}: {}", leaf.event)) };
            if mint_of(&rec.attestation) != Some((ChainId(p.chain), *leaf)) {
                return Err(format!("{} is not that mint here", leaf.event));
            }
            if self.store.get(Cf::SigningAttempts, signed_key(&leaf.event)).map_err(|e| e.to_string())?.is_some() {
                signed += 1;
            }
            if let Some(message) = self.in_batch.get(&leaf.event) {
                match self.batches.get(message) {
                    Some(b) if b.rank <= rank => {
                        return Err(format!(
                            "{} is in a batch of a proposer ranked before or with this one",
                            leaf.event
                        ));
                    }
                    Some(_) => {
                        displaced.insert(message.clone());
                    }
                    None => {}
                }
            }
        }
        if signed == p.leaves.len() {
            return Err(ALL_SIGNED.into());
        }
        Ok(displaced.into_iter().collect())
    }

    /// Takes batch `p` (proposed by `proposer`, this node included) into signing: its
    /// mints leave the waiting set and one session signs its message.
    fn accept_batch(&mut self, p: BatchProposal, proposer: usize) -> eyre::Result<()> {
        let Some(bridge) = self.bridges.get(&p.chain).copied() else { return Ok(()) };
        let message = p.message(bridge);
        if let Some(waiting) = self.unbatched.get_mut(&p.chain) {
            for leaf in &p.leaves {
                waiting.remove(&leaf.event);
            }
        }
        for leaf in &p.leaves {
            self.in_batch.insert(leaf.event, message.clone());
        }
        let rank = self.batch_rank_of(p.chain, proposer);
        let active = ActiveBatch { proposal: p, proposer, rank, since: Instant::now(), started_at: None };
        self.batches.insert(message.clone(), active);
        self.send_to_peers(&[&[TAG_BATCH_READY][..], &message].concat());
        self.maybe_start_batch(&message)
    }

    /// Starts signing the batch of `message` once `t` validators hold it (this one and
    /// `t − 1` peers that said so).
    fn maybe_start_batch(&mut self, message: &[u8]) -> eyre::Result<()> {
        let t = self.n * 2 / 3 + 1;
        let peers = self.batch_ready.get(message).map_or(0, |(who, _)| who.len());
        let Some(b) = self.batches.get_mut(message) else { return Ok(()) };
        if b.started_at.is_some() || peers + 1 < t {
            return Ok(());
        }
        b.started_at = Some(Instant::now());
        let purpose = match b.proposal.leaves.as_slice() {
            [one] => Purpose::Mint { event: one.event },
            _ => Purpose::MintBatch {
                chain: b.proposal.chain,
                root: hex::encode(b.proposal.root()),
                mints: b.proposal.leaves.len(),
            },
        };
        self.start(KeyKind::Evm, message.to_vec(), purpose)
    }

    /// Validator `from` holds the batches whose messages `body` lists (32 bytes each).
    fn on_batch_ready(&mut self, from: usize, body: &[u8]) -> eyre::Result<()> {
        if !body.len().is_multiple_of(32) || body.len() / 32 > MAX_READY_PER_NOTE {
            return Ok(());
        }
        for message in body.chunks(32) {
            self.on_batch_ready_one(from, message)?;
        }
        Ok(())
    }

    fn on_batch_ready_one(&mut self, from: usize, message: &[u8]) -> eyre::Result<()> {
        if from >= self.n || from == self.me {
            return Ok(());
        }
        // Only batches held here, or a bounded number of notes for ones to come.
        if !self.batch_ready.contains_key(message) && self.batch_ready.len() >= MAX_READY_NOTES {
            // Forget the oldest note (of a batch long gone, most likely).
            if let Some(oldest) = self.batch_ready.iter().min_by_key(|(_, (_, at))| *at).map(|(m, _)| m.clone()) {
                self.batch_ready.remove(&oldest);
            }
        }
        self.batch_ready.entry(message.to_vec()).or_insert_with(|| (BTreeSet::new(), Instant::now())).0.insert(from);
        self.maybe_start_batch(message)
    }

    /// Stops signing the batch of `message` here; with `requeue`, its mints not
    /// signed yet wait for another batch again.
    fn drop_batch(&mut self, message: &[u8], requeue: bool) {
        let Some(b) = self.batches.remove(message) else { return };
        if let Some(suite) = self.evm.as_mut() {
            suite.abandon(message);
        }
        self.deferred.retain(|(_, m, _)| m.as_slice() != message);
        for leaf in &b.proposal.leaves {
            if self.in_batch.get(&leaf.event).is_some_and(|m| m.as_slice() == message) {
                self.in_batch.remove(&leaf.event);
                let signed = self.store.get(Cf::SigningAttempts, signed_key(&leaf.event)).ok().flatten().is_some();
                if requeue && !signed && !self.reorged.contains(&leaf.event) {
                    self.unbatched.entry(b.proposal.chain).or_default().insert(leaf.event, (*leaf, b.since));
                }
            }
        }
    }

    /// The batch of `message` is signed: it is no longer being signed here.
    fn finish_batch(&mut self, message: &[u8]) {
        self.batch_ready.remove(message);
        let Some(b) = self.batches.remove(message) else { return };
        for leaf in &b.proposal.leaves {
            if self.in_batch.get(&leaf.event).is_some_and(|m| m.as_slice() == message) {
                self.in_batch.remove(&leaf.event);
            }
        }
    }

    /// The stored record of mint `leaf` to `chain`, signed by `evm` over `message` in
    /// `attempt` with the validators `signers` eligible (not part of a batch).
    fn signed_record(
        &self,
        chain: u64,
        leaf: &Leaf,
        message: &[u8],
        evm: &EvmSignature,
        signers: &[usize],
        attempt: u32,
    ) -> SignedRecord {
        SignedRecord {
            chain_id: chain,
            bridge: self.bridges.get(&chain).copied().unwrap_or_default().to_string(),
            contract_event_id: word(&leaf.event.contract_id()),
            recipient: format!("0x{}", hex::encode(leaf.recipient.0)),
            amount_sats: leaf.amount.0,
            message: format!("0x{}", hex::encode(message)),
            rx: word(&evm.rx.to_be_bytes()),
            ry: word(&evm.ry.to_be_bytes()),
            z: word(&evm.z.to_be_bytes()),
            signers: signers.iter().filter_map(|i| self.peers.get(*i)).map(|p| p.to_string()).collect(),
            attempt,
            signed_at_ms: now_ms(),
            batch: None,
        }
    }

    /// A batch signature: each mint's record (with its proof) stored in one write, the
    /// batch handed to the relayer.
    fn on_batch_signed(
        &mut self,
        message: &[u8],
        signature: &[u8],
        signers: &[usize],
        attempt: u32,
    ) -> eyre::Result<()> {
        let Some(b) = self.batches.get(message).cloned() else { return Ok(()) };
        let evm = own_evm_signature(signature)?;
        let p = &b.proposal;
        let root = p.root();
        let proofs = p.proofs();
        let mut batch = Batch::new();
        let mut leaves = Vec::new();
        for (leaf, proof) in p.leaves.iter().zip(proofs) {
            if self.reorged.contains(&leaf.event) {
                continue;
            }
            let mut record = self.signed_record(p.chain, leaf, message, &evm, signers, attempt);
            record.batch =
                Some(BatchRef { root: word(&root), proof: proof.iter().map(word).collect(), leaves: p.leaves.len() });
            batch.put_json(Cf::SigningAttempts, signed_key(&leaf.event), &record)?;
            if let Some(at) = self.finalized_at.remove(&leaf.event) {
                self.metrics.finality_to_signature.observe(at.elapsed().as_secs_f64());
            }
            leaves.push(BatchLeaf { event: leaf.event, recipient: leaf.recipient, amount: leaf.amount, proof });
        }
        self.store.commit(batch)?;
        info!(target: "signing", chain = p.chain, mints = leaves.len(), root = %hex::encode(root), "batch of mints signed");
        self.finish_batch(message);
        let signature = MintSignature { rx: evm.rx.to_be_bytes(), ry: evm.ry.to_be_bytes(), z: evm.z.to_be_bytes() };
        self.queue_batch(ChainId(p.chain), BatchMintRequest { root, signature, leaves });
        Ok(())
    }

    /// A `MessageKind::Signing` request from validator `from`.
    pub fn on_request(&mut self, from: usize, payload: &[u8]) -> eyre::Result<()> {
        let Some((&tag, body)) = payload.split_first() else { return Ok(()) };
        let effects = match tag {
            TAG_EVM => match self.evm.as_mut() {
                Some(s) => s.on_message(&self.store, from, body, now_ms())?,
                None => vec![],
            },
            TAG_BTC => match self.btc.as_mut() {
                Some(s) => s.on_message(&self.store, from, body, now_ms())?,
                None => vec![],
            },
            TAG_ROUND => match body.split_first() {
                Some((&TAG_EVM, hint)) => match self.evm.as_mut() {
                    Some(s) => s.on_round_hint(&self.store, from, hint, now_ms())?,
                    None => vec![],
                },
                Some((&TAG_BTC, hint)) => match self.btc.as_mut() {
                    Some(s) => s.on_round_hint(&self.store, from, hint, now_ms())?,
                    None => vec![],
                },
                _ => vec![],
            },
            TAG_BATCH_READY => {
                self.on_batch_ready(from, body)?;
                vec![]
            }
            TAG_BATCH_SIGNED => {
                self.on_signed_records(from, body)?;
                vec![]
            }
            TAG_BATCH => {
                match BatchProposal::decode(body) {
                    Ok(p) => self.on_batch_proposal(from, p)?,
                    Err(e) => warn!(target: "signing", from, error = %e, "undecodable batch proposal dropped"),
                }
                vec![]
            }
            TAG_RELEASE => {
                match Proposal::decode(body) {
                    Ok(p) => self.on_proposal(from, p)?,
                    Err(e) => warn!(target: "release", from, error = %e, "undecodable release proposal dropped"),
                }
                vec![]
            }
            _ => vec![],
        };
        self.apply(effects)
    }

    /// Once a second: session timeouts, release proposals and follow-up.
    pub async fn tick(&mut self) -> eyre::Result<()> {
        self.start_key_checks()?;
        let mut effects = Vec::new();
        if let Some(s) = self.evm.as_mut() {
            effects.extend(s.tick(&self.store, now_ms())?);
        }
        if let Some(s) = self.btc.as_mut() {
            effects.extend(s.tick(&self.store, now_ms())?);
        }
        self.apply(effects)?;
        if self.usable.contains(&KeyKind::Evm) {
            self.retry_held_mints()?;
            self.retry_early_batches()?;
            self.propose_batches()?;
            self.resend_batches();
        }
        if self.usable.contains(&KeyKind::Btc) {
            self.refresh_fee_estimate().await;
            self.retry_waiting()?;
            self.check_accepted().await?;
            self.resend_proposals();
            if self.release_fault == Some(ReleaseFault::OutOfTurn) && self.bitcoin_synced {
                // Well clear of its own turn, on every validator's clock.
                let (now, margin) = (now_ms(), 2 * self.turn_slack_ms());
                let turns = [self.turn_at(now.saturating_sub(margin)), self.turn_at(now), self.turn_at(now + margin)];
                if !turns.contains(&self.me) {
                    self.propose_out_of_turn()?;
                }
            }
            if self.bitcoin_synced {
                self.maybe_withdraw()?;
                self.maybe_merge().await?;
            }
            self.maybe_propose().await?;
            if self.last_release_check.elapsed() >= Duration::from_secs(2) {
                self.last_release_check = Instant::now();
                self.follow_releases().await?;
            }
        }
        Ok(())
    }

    fn apply(&mut self, effects: Vec<Effect>) -> eyre::Result<()> {
        for e in effects {
            match e {
                Effect::Send { to, payload } => self.send(to, payload),
                Effect::Signed { kind, purpose, message, signature, signers, attempt, .. } => {
                    self.on_signed(kind, purpose, &message, &signature, signers, attempt)?;
                }
                Effect::Failed { kind, purpose, error } => {
                    error!(target: "signing", key = %kind, ?purpose, %error, "signing round failed (fewer than t responsive honest signers): retried as a new round after a backoff");
                }
            }
        }
        Ok(())
    }

    fn on_signed(
        &mut self,
        kind: KeyKind,
        purpose: Purpose,
        message: &[u8],
        signature: &[u8],
        signers: Vec<usize>,
        attempt: u32,
    ) -> eyre::Result<()> {
        match purpose {
            Purpose::KeyCheck => {
                let check = keys::KeyCheck {
                    message: hex::encode(message),
                    signature: hex::encode(signature),
                    verified_ms: now_ms(),
                };
                keys::mark_usable(&self.store, kind, self.epoch, &check)?;
                self.usable.insert(kind);
                self.metrics.key_usable.with_label_values(&[kind.as_str()]).set(1);
                info!(target: "signing", key = %kind, epoch = self.epoch, "key verified by a test signature: usable");
                let (now, later): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut self.deferred).into_iter().partition(|d| d.0 == kind);
                self.deferred = later;
                for (k, m, p) in now {
                    self.start_now(k, m, p)?;
                }
            }
            Purpose::Mint { event } => {
                let evm = own_evm_signature(signature)?;
                let Some(rec) = crate::state::get_certified(&self.store, &event)? else { return Ok(()) };
                if self.reorged.contains(&event) {
                    warn!(target: "signing", %event, "mint signed, but its event was reorged out past finality: not relayed");
                    return Ok(());
                }
                let Some((dest, leaf)) = mint_of(&rec.attestation) else { return Ok(()) };
                let (recipient, amount) = (leaf.recipient, leaf.amount);
                let record = self.signed_record(dest.0, &leaf, message, &evm, &signers, attempt);
                let mut b = Batch::new();
                b.put_json(Cf::SigningAttempts, signed_key(&event), &record)?;
                self.store.commit(b)?;
                self.finish_batch(message);
                if let Some(at) = self.finalized_at.remove(&event) {
                    self.metrics.finality_to_signature.observe(at.elapsed().as_secs_f64());
                }
                let sig = MintSignature { rx: evm.rx.to_be_bytes(), ry: evm.ry.to_be_bytes(), z: evm.z.to_be_bytes() };
                self.queue_mint(event, dest, recipient, amount, sig);
            }
            Purpose::MintBatch { .. } => self.on_batch_signed(message, signature, &signers, attempt)?,
            Purpose::ReleaseInput { txid, input } => {
                let Ok(txid) = txid.parse::<Txid>() else { return Ok(()) };
                let Some((rec, _)) = self.releases.get_mut(&txid) else { return Ok(()) };
                if let Some(slot) = rec.signatures.get_mut(input as usize) {
                    *slot = Some(hex::encode(signature));
                }
                self.save_release(&txid)?;
                self.try_complete(txid)?;
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ releases

    /// Certified peg-outs not paid at depth: per payment class, the certified ones less
    /// the vault's final payments of that class on chain.
    fn update_pending_gauge(&self) {
        let unpaid = release::payment_budget(&self.pegouts, self.paid_on_chain(), &BTreeSet::new(), &self.policy);
        self.metrics.releases_pending.set(unpaid.values().sum::<usize>() as i64);
    }

    /// Writes a release and, in the same batch, the index from each of its payouts to
    /// the releases paying it (so the API finds them without a scan).
    fn save_release(&self, txid: &Txid) -> eyre::Result<()> {
        if let Some((rec, _)) = self.releases.get(txid) {
            let mut b = Batch::new();
            b.put_json(Cf::Releases, release_key(txid), rec)?;
            for e in &rec.payouts {
                let mut paying: Vec<String> = self.store.get_json(Cf::Releases, paying_key(e))?.unwrap_or_default();
                if !paying.contains(&rec.txid) {
                    paying.push(rec.txid.clone());
                    b.put_json(Cf::Releases, paying_key(e), &paying)?;
                }
            }
            self.store.commit(b)?;
        }
        Ok(())
    }

    /// Inputs and payouts held by releases that may still confirm, and what is paid.
    fn locks(&self) -> Locks {
        let mut live = BTreeMap::new();
        let mut paid = self.paid_events.clone();
        for (txid, (rec, p)) in &self.releases {
            match rec.status {
                ReleaseStatus::Signing | ReleaseStatus::Broadcast | ReleaseStatus::Replaced => {
                    live.insert(*txid, release::Live::of(p));
                }
                ReleaseStatus::Confirmed => paid.extend(rec.payouts.iter().copied()),
                ReleaseStatus::Conflicted => {}
            }
        }
        Locks { live, paid }
    }

    fn validate(&self, p: &Proposal) -> Result<Vec<[u8; 32]>, ReleaseError> {
        let locks = self.locks();
        // Rivals it may merge: their inputs count as needed, like those of live releases.
        let rival_inputs: BTreeSet<OutPoint> =
            self.competing.values().flat_map(|(c, _, _)| c.tx.input.iter().map(|i| i.previous_output)).collect();
        // A replacement's band is centred on what the release it replaces paid, when
        // that is above this node's estimate (otherwise RBF could bump only once).
        let mine = release::Live::of(p);
        let replaced_rate = locks
            .live
            .iter()
            .filter(|(_, l)| !l.inputs.is_disjoint(&mine.inputs))
            .filter_map(|(t, _)| self.releases.get(t).map(|(r, _)| r.fee_rate_sat_per_vb))
            .max();
        let fee_estimate = match (self.fee_estimate, replaced_rate) {
            (Some(e), Some(r)) => Some(e.max(r)),
            (e, r) => e.or(r),
        };
        let view = release::View {
            utxos: &self.utxos,
            live: &locks.live,
            paid: &locks.paid,
            certified: &self.pegouts,
            fee_estimate,
            rival_inputs: &rival_inputs,
        };
        if !self.bitcoin_synced {
            return Err(ReleaseError::NotSynced);
        }
        // The withdrawal of a live release that pays a reorged peg-out: exactly the one
        // transaction every honest validator builds from it, valid at once (the release
        // it replaces must not confirm), without the fee band (its fee is the old one
        // plus the incremental relay fee). Anything else goes the ordinary way.
        if let Some(old) = self.withdrawal_base(p) {
            return release::validate_withdrawal(p, old, &self.reorged, &view, &self.policy);
        }
        // Nothing burned on a bridge that holds another key is paid.
        if let Some(e) = p.payouts.iter().find(|e| self.bridge_not_ready(e.chain.0).is_some()) {
            return Err(ReleaseError::SourceNotReady(*e));
        }
        let hashes = release::validate(p, &view, &self.policy)?;
        // A release that supersedes live ones only once they had their chance: signing
        // for `merge_after`, or waiting in the mempool for `rbf_after`; and, for the same
        // inputs, only at a higher fee. (Otherwise any validator could keep replacing
        // releases before they are signed.)
        let (now, mine, txid) = (now_ms(), release::Live::of(p), p.txid());
        for (t, l) in &locks.live {
            if *t == txid || (l.inputs.is_disjoint(&mine.inputs) && l.payouts.is_disjoint(&mine.payouts)) {
                continue;
            }
            let Some((rec, q)) = self.releases.get(t) else { continue };
            let (since, wait) = match rec.status {
                ReleaseStatus::Signing => (rec.created_ms, self.merge_after),
                ReleaseStatus::Broadcast => (rec.broadcast_ms.unwrap_or(rec.created_ms), self.rbf_after),
                _ => continue,
            };
            if now.saturating_sub(since) < wait.as_millis() as u64 {
                return Err(ReleaseError::TooEarly(*t));
            }
            if l.inputs == mine.inputs && p.fee() <= q.fee() {
                return Err(ReleaseError::NoFeeIncrease(*t));
            }
        }
        let own: BTreeSet<EventId> = p.payouts.iter().copied().collect();
        let promised: BTreeSet<EventId> = self.promised().difference(&own).copied().collect();
        release::check_budget(p, &self.pegouts, self.paid_on_chain(), &promised, &self.policy)?;
        Ok(hashes)
    }

    /// Final payments of each class on chain (the vault's spends at depth).
    fn paid_on_chain(&self) -> &BTreeMap<release::PaymentClass, usize> {
        static NONE: BTreeMap<release::PaymentClass, usize> = BTreeMap::new();
        if self.release_fault == Some(ReleaseFault::NoPaymentBound) { &NONE } else { &self.paid }
    }

    /// Counts (or, with `undo`, uncounts) the payments of a vault spend by class.
    fn count_payments(paid: &mut BTreeMap<release::PaymentClass, usize>, outputs: &[SpendOutput], undo: bool) {
        for o in outputs {
            let n = paid.entry((ScriptBuf::from(o.script_pubkey.clone()), o.amount.0)).or_default();
            *n = if undo { n.saturating_sub(1) } else { n.saturating_add(1) };
        }
    }

    /// Peg-outs promised to releases that are not on chain (yet, or ever).
    fn promised(&self) -> BTreeSet<EventId> {
        self.releases
            .values()
            .filter(|(r, p)| {
                r.status != ReleaseStatus::Conflicted && !self.onchain.contains_key(&display_txid(&p.txid()))
            })
            .flat_map(|(r, _)| r.payouts.iter().copied())
            .collect()
    }

    /// A vault spend at depth, from the Bitcoin adapter (already stored).
    ///
    /// Whatever this node did or did not follow: a release of its own that the spend
    /// is becomes confirmed, and every live release sharing one of its inputs can never
    /// confirm (conflicted), so that its payouts are not held by a dead release.
    pub fn on_vault_spend(&mut self, spend: VaultSpend) -> eyre::Result<()> {
        let txid = Txid::from_byte_array(internal_order(&spend.txid));
        let mut changed = Vec::new();
        match self.releases.get_mut(&txid) {
            None => {
                warn!(target: "release", txid = %spend.txid, payouts = spend.payouts.len(), "a vault spend this node has no release for (restored database, or a release it never validated): its payments count against the peg-outs they match");
            }
            Some((rec, p)) if rec.status != ReleaseStatus::Confirmed => {
                rec.status = ReleaseStatus::Confirmed;
                rec.confirmations = rec.confirmations.max(self.confirmations);
                self.metrics.releases.with_label_values(&["confirmed"]).inc();
                self.metrics.vault_fees_paid.inc_by(p.fee());
                info!(target: "release", %txid, payouts = rec.payouts.len(), "release final on chain: peg-outs paid");
                changed.push(txid);
            }
            Some(_) => {}
        }
        let spent: BTreeSet<OutPoint> = spend.spent.iter().copied().collect();
        let dead = self.mark_conflicts(&spent, &txid);
        for t in &dead {
            self.abandon_sessions(t);
        }
        changed.extend(dead);
        Self::count_payments(&mut self.paid, &spend.payouts, false);
        if let Some(before) = self.onchain.insert(spend.txid, spend.payouts) {
            Self::count_payments(&mut self.paid, &before, true);
        }
        for t in changed {
            self.save_release(&t)?;
        }
        self.retire_finished();
        self.update_pending_gauge();
        Ok(())
    }

    /// The releases in memory with one of `statuses`.
    fn releases_in(&self, statuses: &[ReleaseStatus]) -> Vec<Txid> {
        self.releases.iter().filter(|(_, (r, _))| statuses.contains(&r.status)).map(|(t, _)| *t).collect()
    }

    /// Finished releases leave memory (their records stay in the store); the peg-outs
    /// the confirmed ones paid are kept.
    fn retire_finished(&mut self) {
        for t in self.releases_in(&[ReleaseStatus::Confirmed, ReleaseStatus::Conflicted]) {
            if let Some((r, _)) = self.releases.remove(&t)
                && r.status == ReleaseStatus::Confirmed
            {
                self.paid_events.extend(r.payouts);
            }
        }
    }

    /// A vault spend left the best chain below its depth (already removed from the store).
    pub fn on_vault_spend_reorged(&mut self, txid: &TxHash) {
        if let Some(outputs) = self.onchain.remove(txid) {
            Self::count_payments(&mut self.paid, &outputs, true);
        }
        self.update_pending_gauge();
    }

    /// Where the Bitcoin adapter stands: releases are validated only once it has seen
    /// every final block (a node catching up would not know what the vault paid yet).
    pub fn set_bitcoin_progress(&mut self, cursor: u64, finalized: u64) {
        let synced = cursor >= finalized;
        if synced != self.bitcoin_synced {
            info!(target: "release", cursor, finalized, synced, "Bitcoin view {}", if synced { "caught up: releases may be signed" } else { "catching up: no release is signed meanwhile" });
        }
        self.bitcoin_synced = synced;
    }

    fn on_proposal(&mut self, from: usize, p: Proposal) -> eyre::Result<()> {
        let txid = p.txid();
        if self.releases.contains_key(&txid) || self.to_check.iter().any(|(_, q)| q.txid() == txid) {
            return Ok(());
        }
        // One known already, sent again (proposals are resent until signed): checked
        // again, as from whoever sent it first and when (it may be valid by now). Its
        // turn was that of its first arrival: a resend after the turn passed on neither
        // drops a rival kept for a merge nor counts as a refusal.
        if let Some((kept, at, first)) = self.competing.remove(&txid) {
            // Still a rival, or not valid yet: kept as it was, for its merge.
            let keep = match self.validate(&p) {
                Err(ReleaseError::PayoutLocked(_) | ReleaseError::Strands { .. }) => true,
                Err(e) => e.may_pass_later(),
                Ok(_) => false,
            };
            if keep {
                self.competing.insert(txid, (kept, at, first));
                return Ok(());
            }
            let (who, when) = self.delivery((first, at), (from, Instant::now()));
            return self.judge(who, p, when, false);
        }
        if let Some(i) = self.waiting.iter().position(|(_, w, _)| w.txid() == txid) {
            let (first, _, at) = self.waiting.remove(i);
            let (who, when) = self.delivery((first, at), (from, Instant::now()));
            return self.judge(who, p, when, false);
        }
        self.judge(from, p, Instant::now(), true)
    }

    /// Of two deliveries of one proposal (sender, arrival), the one its turn is judged
    /// by: the first while it is recent (two turns) and was in turn, or when the latest
    /// was not in turn either; else the latest. A proposal forwarded first by a
    /// validator that did not make it is then still heard from its proposer in turn,
    /// and an old arrival's turn does not pass a proposal resent long after.
    fn delivery(&self, first: (usize, Instant), latest: (usize, Instant)) -> (usize, Instant) {
        let recent = first.1.elapsed() < self.takeover * 2;
        if recent && (self.in_turn(first.0, first.1).is_ok() || self.in_turn(latest.0, latest.1).is_err()) {
            first
        } else {
            latest
        }
    }

    /// Validates a proposal from `from` (received at `at`) and files it: to be checked
    /// against bitcoind's policy and signed, kept for a re-check, kept as a rival for a
    /// merge, or refused. Proposals re-checked from `waiting` go the same way.
    fn judge(&mut self, from: usize, p: Proposal, at: Instant, fresh: bool) -> eyre::Result<()> {
        let txid = p.txid();
        match self.validate(&p).and_then(|_| self.check_turn(from, &p, at)) {
            Ok(()) => {
                self.queue_check(from, p);
                Ok(())
            }
            Err(e) if e.may_pass_later() => {
                if fresh {
                    info!(target: "release", %txid, from, reason = %e, "proposal not valid in this node's view yet; will re-check");
                }
                let from_sender = self.waiting.iter().filter(|(f, _, _)| *f == from).count();
                let known = self.waiting.iter().any(|(_, w, _)| w.txid() == txid);
                if !known && self.waiting.len() < MAX_WAITING && from_sender < MAX_WAITING_PER_SENDER {
                    self.waiting.push((from, p, at));
                }
                Ok(())
            }
            Err(e @ (ReleaseError::PayoutLocked(_) | ReleaseError::Strands { .. })) => {
                // Another release holds its peg-outs or inputs here. Kept: if that one
                // stalls, the two are merged (see `maybe_merge`).
                info!(target: "release", %txid, from, reason = %e, "proposal competes with a release this node holds; kept for a merge");
                // Only one that is valid in itself here (vault UTXOs, certified payouts,
                // exact amounts, fee): a bogus rival must not spoil a merge.
                let locks = self.locks();
                let alone = BTreeMap::new();
                let none = BTreeSet::new();
                let view = release::View {
                    utxos: &self.utxos,
                    live: &alone,
                    paid: &locks.paid,
                    certified: &self.pegouts,
                    fee_estimate: self.fee_estimate,
                    rival_inputs: &none,
                };
                let valid_alone = release::validate(&p, &view, &self.policy).is_ok();
                // A rival from a validator out of turn is refused, not kept.
                if valid_alone && let Err(e) = self.in_turn(from, at) {
                    self.refused(from, &txid, &e);
                    return Ok(());
                }
                let from_sender = self.competing.values().filter(|(_, _, f)| *f == from).count();
                if valid_alone && self.competing.len() < MAX_WAITING && from_sender < MAX_WAITING_PER_SENDER {
                    self.competing.insert(txid, (p, at, from));
                }
                Ok(())
            }
            Err(e @ ReleaseError::NotInTurn { .. }) => {
                // Valid, but not from the validator in turn: accepted once f+1
                // validators sent it on (at least one honest one accepted it in turn).
                let takeover = self.takeover;
                self.vouched.retain(|_, (_, since)| since.elapsed() < takeover * 4);
                let f = self.n.saturating_sub(1) / 3;
                let entry = self.vouched.entry(txid).or_insert_with(|| (BTreeSet::new(), Instant::now()));
                entry.0.insert(from);
                if entry.0.len() > f {
                    self.vouched.remove(&txid);
                    info!(target: "release", %txid, from, "proposal sent on by f+1 validators: accepted as made in turn");
                    self.queue_check(from, p);
                    return Ok(());
                }
                if self.vouched.len() > MAX_WAITING
                    && let Some(oldest) = self.vouched.iter().min_by_key(|(_, (_, t))| *t).map(|(t, _)| *t)
                {
                    self.vouched.remove(&oldest);
                }
                self.refused(from, &txid, &e);
                Ok(())
            }
            Err(e) => {
                self.refused(from, &txid, &e);
                Ok(())
            }
        }
    }

    /// Files a proposal valid here for bitcoind's policy check (once, within the cap).
    fn queue_check(&mut self, from: usize, p: Proposal) {
        let txid = p.txid();
        if self.to_check.len() < MAX_WAITING && !self.to_check.iter().any(|(_, q)| q.txid() == txid) {
            self.to_check.push((from, p));
        }
    }

    /// Counts and logs a refused proposal.
    fn refused(&self, from: usize, txid: &Txid, e: &ReleaseError) {
        warn!(target: "release", %txid, from, reason = %e, "release proposal refused");
        self.metrics.releases.with_label_values(&["refused"]).inc();
        self.metrics.release_refusals.with_label_values(&[e.reason()]).inc();
    }

    /// Whether validator `from` may propose `p`, received at `at`. A fresh release (one
    /// that touches no live release here) comes from the validator whose turn it is
    /// ([`Threshold::turn_at`]). Replacements and merges are gated in
    /// [`Threshold::validate`] instead (their predecessors' time to be signed or
    /// confirmed, a higher fee for the same inputs).
    fn check_turn(&self, from: usize, p: &Proposal, at: Instant) -> Result<(), ReleaseError> {
        let mine = release::Live::of(p);
        let touches_live = self
            .locks()
            .live
            .values()
            .any(|l| !l.inputs.is_disjoint(&mine.inputs) || !l.payouts.is_disjoint(&mine.payouts));
        if touches_live {
            return Ok(());
        }
        self.in_turn(from, at)
    }

    /// The validator whose turn it is to propose fresh releases at wall-clock time
    /// `at_ms`: the turn passes every `takeover` to the next validator, round robin.
    /// One proposer at a time builds every release of a burst from inputs and peg-outs
    /// it knows to be free, where proposers ranked per peg-out raced each other for
    /// the same largest vault UTXOs. A silent validator costs one `takeover` a round.
    pub fn turn_at(&self, at_ms: u64) -> usize {
        let slot = at_ms / (self.takeover.as_millis() as u64).max(1);
        (slot % self.n.max(1) as u64) as usize
    }

    /// The slack around a turn's ends (a quarter of `takeover`), for the validators'
    /// clocks and the network's delay.
    fn turn_slack_ms(&self) -> u64 {
        self.takeover.as_millis() as u64 / 4
    }

    /// Whether this node may send a fresh proposal now: its turn, away from the turn's
    /// ends by the slack, so that its proposals reach the others within its turn (as
    /// their clocks see it) and do not overlap the last proposer's final ones.
    fn may_propose_now(&self) -> bool {
        self.proposing_window_in_ms(now_ms()) == 0
    }

    /// How long from wall-clock `now_ms` until this node's proposing window opens (the
    /// middle of its turn, a slack away from either end): 0 while it is open. A lone
    /// validator's window never closes.
    fn proposing_window_in_ms(&self, now_ms: u64) -> u64 {
        let n = self.n.max(1);
        if n == 1 {
            return 0;
        }
        let (turn_ms, slack) = ((self.takeover.as_millis() as u64).max(1), self.turn_slack_ms());
        let into_turn = now_ms % turn_ms;
        match (self.me + n - self.turn_at(now_ms)) % n {
            0 if into_turn + slack <= turn_ms => slack.saturating_sub(into_turn),
            0 => turn_ms * n as u64 - into_turn + slack,
            k => turn_ms * k as u64 - into_turn + slack,
        }
    }

    /// Whether `from` held the turn when its proposal arrived here at `at` (within the
    /// slack at either end of the turn).
    fn in_turn(&self, from: usize, at: Instant) -> Result<(), ReleaseError> {
        if from == self.me {
            return Ok(());
        }
        let at_ms = now_ms().saturating_sub(at.elapsed().as_millis() as u64);
        let slack = self.turn_slack_ms();
        let turn = self.turn_at(at_ms);
        if [turn, self.turn_at(at_ms.saturating_sub(slack)), self.turn_at(at_ms.saturating_add(slack))].contains(&from)
        {
            return Ok(());
        }
        Err(ReleaseError::NotInTurn { proposer: from, in_turn: turn })
    }

    /// Inputs and peg-outs of peers' proposals, sent in turn, that this node holds but
    /// has not signed yet (it has not certified every peg-out yet, or bitcoind's policy
    /// check is pending). Its own proposals leave them alone for two `takeover`s, so
    /// that the turn passing on does not race the releases the last proposer just sent.
    fn claimed(&self) -> (BTreeSet<OutPoint>, BTreeSet<EventId>) {
        let waiting = self
            .waiting
            .iter()
            .filter(|(from, _, at)| at.elapsed() < self.takeover * 2 && self.in_turn(*from, *at).is_ok())
            .map(|(_, p, _)| p);
        let mut inputs = BTreeSet::new();
        let mut payouts = BTreeSet::new();
        // Only what this node could spend or pay itself: vault UTXOs it knows and
        // peg-outs it has certified (the rest it would not propose anyway).
        for p in waiting.chain(self.to_check.iter().map(|(_, p)| p)) {
            inputs.extend(p.tx.input.iter().map(|i| i.previous_output).filter(|op| self.utxos.contains_key(op)));
            payouts.extend(p.payouts.iter().copied().filter(|e| self.pegouts.contains_key(e)));
        }
        (inputs, payouts)
    }

    /// The refund of a rejected Bitcoin deposit, if one is due: back to the script of
    /// its transaction's first input ([`Rejected::refund_to`]), the deposit less the
    /// peg-out fee, when that script is one a release can pay and the rest is above its
    /// dust limit. Decided from the chain and the config alone, so that every honest
    /// validator attests the same refund.
    pub fn refund_for(&self, r: &Rejected) -> Option<Attestation> {
        if r.id.chain != ChainId::BITCOIN {
            return None;
        }
        let (script, amount) = (r.refund_to.clone()?, r.amount?);
        let payout = Payout { event: r.id, amount, script: ScriptBuf::from(script.clone()) };
        if let Some(why) = release::unpayable(&payout, &self.policy) {
            info!(target: "release", event = %r.id, reason = %why, "rejected deposit not refunded: no release can pay it back");
            return None;
        }
        info!(target: "release", event = %r.id, amount = amount.0, "rejected deposit: refund to its first input's script attested");
        Some(Attestation { event: r.id, kind: AttestationKind::Refund { amount, script_pubkey: script } })
    }

    /// An event reported final earlier left the canonical chain (a reorg deeper than
    /// finality; already stored as reorged): from now on it is never signed, relayed or
    /// paid. A mint being signed is abandoned; a peg-out (or refund) waiting for a
    /// release is dropped; one in a live release is left out by that release's
    /// withdrawal ([`Threshold::maybe_withdraw`]).
    pub fn on_reorged(&mut self, event: EventId) -> eyre::Result<()> {
        if !self.reorged.insert(event) {
            return Ok(());
        }
        self.held_mints.retain(|a| a.event != event);
        self.deferred.retain(|(_, _, p)| !matches!(p, Purpose::Mint { event: e } if *e == event));
        for waiting in self.unbatched.values_mut() {
            waiting.remove(&event);
        }
        // A batch being signed with it: dropped here, its other mints batched again.
        if let Some(message) = self.in_batch.get(&event).cloned() {
            self.drop_batch(&message, true);
        }
        self.to_check.retain(|(_, p)| !p.payouts.contains(&event));
        self.waiting.retain(|(_, p, _)| !p.payouts.contains(&event));
        self.competing.retain(|_, (p, _, _)| !p.payouts.contains(&event));
        let was_payout = self.pegouts.remove(&event).is_some();
        self.pegout_seen.remove(&event);
        // Releases still being signed that pay it: no more signatures from here.
        let signing: Vec<Txid> = self
            .releases
            .iter()
            .filter(|(_, (r, _))| r.status == ReleaseStatus::Signing && r.payouts.contains(&event))
            .map(|(t, _)| *t)
            .collect();
        for t in signing {
            self.abandon_sessions(&t);
        }
        if let Some(rec) = crate::state::get_certified(&self.store, &event)?
            && let Some(message) = self.mint_message_of(&rec.attestation)
            && let Some(suite) = self.evm.as_mut()
        {
            suite.abandon(&message);
        }
        let paid_by: Vec<String> = self
            .releases
            .iter()
            .filter(|(_, (r, _))| r.status == ReleaseStatus::Confirmed && r.payouts.contains(&event))
            .map(|(t, _)| t.to_string())
            .collect();
        if !paid_by.is_empty() {
            error!(target: "release", %event, releases = ?paid_by, "a peg-out reorged out past finality was paid already");
        } else if was_payout {
            warn!(target: "release", %event, "peg-out reorged out past finality: left out of every release from now on");
        }
        self.update_pending_gauge();
        Ok(())
    }

    /// The mint message of a mint attestation (None for payouts, or an unknown bridge).
    fn mint_message_of(&self, att: &Attestation) -> Option<Vec<u8>> {
        let (dest, leaf) = mint_of(att)?;
        let bridge = self.bridges.get(&dest.0).copied()?;
        Some(
            mint_message(dest.0, bridge, leaf.event.contract_id(), Address::from(leaf.recipient.0), leaf.amount.0)
                .to_vec(),
        )
    }

    /// Why `event` waits, as this node sees it now (None: nothing pending here): a mint
    /// held by its bridge's key, queued or being signed (the session, its attempt, the
    /// signers missing, the next retry); a payout waiting for a release, or in one
    /// being signed (which inputs, and their sessions); reorged.
    pub fn explain(&self, event: &EventId) -> Option<serde_json::Value> {
        use serde_json::json;
        if self.reorged.contains(event) {
            return Some(
                json!({"state": "reorged", "detail": "reorged out past finality: never signed, relayed or paid"}),
            );
        }
        if let Some(a) = self.held_mints.iter().find(|a| a.event == *event) {
            return Some(json!({"state": "held", "reason": self.bridge_not_ready(a.destination().0)}));
        }
        if self.pegouts.contains_key(event) {
            let live = self
                .releases
                .iter()
                .filter(|(_, (r, _))| matches!(r.status, ReleaseStatus::Signing | ReleaseStatus::Broadcast))
                .filter(|(_, (r, _))| r.payouts.contains(event))
                .max_by_key(|(_, (r, _))| r.created_ms);
            let Some((txid, (rec, p))) = live else {
                let now = now_ms();
                let mine_in_ms = self.proposing_window_in_ms(now);
                return Some(json!({
                    "state": "waiting for a release",
                    "certified_for_secs": self.pegout_seen.get(event).map(|t| t.elapsed().as_secs()),
                    "proposer_in_turn": self.turn_at(now),
                    "this_node_proposes_in_ms": mine_in_ms,
                }));
            };
            let hashes = release::sighashes(&p.tx, &p.prevouts).unwrap_or_default();
            let sessions: Vec<serde_json::Value> = rec
                .signatures
                .iter()
                .zip(&hashes)
                .enumerate()
                .filter(|(_, (sig, _))| sig.is_none())
                .map(|(i, (_, h))| json!({"input": i, "session": self.btc.as_ref().and_then(|b| b.explain(h))}))
                .collect();
            return Some(json!({
                "state": "releasing",
                "release": txid.to_string(),
                "status": rec.status,
                "inputs": rec.signatures.len(),
                "inputs_signed": rec.signatures.iter().filter(|s| s.is_some()).count(),
                "unsigned_inputs": sessions,
            }));
        }
        if let Some((chain, (_, at))) = self.unbatched.iter().find_map(|(c, w)| w.get(event).map(|entry| (*c, entry))) {
            let rank = self.batch_rank_of(chain, self.me);
            return Some(json!({
                "state": "batching",
                "chain_id": chain,
                "certified_for_ms": at.elapsed().as_millis() as u64,
                "proposer": self.batch_proposer(chain),
                "proposer_rank_of_this_node": rank,
                "this_node_proposes_in_ms": (self.takeover * rank as u32 + self.batch_wait).saturating_sub(at.elapsed()).as_millis() as u64,
            }));
        }
        if !self.usable.contains(&KeyKind::Evm) {
            return Some(json!({"state": "waiting for the evm key's test signature"}));
        }
        if let Some(message) = self.in_batch.get(event)
            && let Some(b) = self.batches.get(message)
        {
            let batch = json!({
                "root": word(&b.proposal.root()),
                "mints": b.proposal.leaves.len(),
                "proposer": b.proposer,
                "proposed_ms_ago": b.since.elapsed().as_millis() as u64,
            });
            if b.started_at.is_none() {
                let ready: Vec<usize> =
                    self.batch_ready.get(message).map(|(who, _)| who.iter().copied().collect()).unwrap_or_default();
                return Some(json!({
                    "state": "awaiting signers",
                    "batch": batch,
                    "ready": ready,
                    "needed": self.n * 2 / 3,
                }));
            }
            let mut v = self.evm.as_ref()?.explain(message)?;
            if let Some(o) = v.as_object_mut() {
                o.insert("batch".into(), batch);
            }
            return Some(v);
        }
        let rec = crate::state::get_certified(&self.store, event).ok()??;
        let message = self.mint_message_of(&rec.attestation)?;
        self.evm.as_ref()?.explain(&message)
    }

    /// Whether release `txid` pays an event reorged out past finality: it must not
    /// confirm, so it is no longer signed, broadcast or bumped here.
    fn pays_reorged(&self, txid: &Txid) -> bool {
        self.releases.get(txid).is_some_and(|(r, _)| r.payouts.iter().any(|e| self.reorged.contains(e)))
    }

    /// The live release (being signed, broadcast or replaced) whose withdrawal `p` is,
    /// if it is one: same inputs, and exactly [`release::withdraw`] of it.
    fn withdrawal_base(&self, p: &Proposal) -> Option<&Proposal> {
        if self.reorged.is_empty() {
            return None;
        }
        let inputs = release::Live::of(p).inputs;
        self.releases.iter().find_map(|(t, (r, q))| {
            let live = matches!(r.status, ReleaseStatus::Signing | ReleaseStatus::Broadcast | ReleaseStatus::Replaced);
            (live && self.pays_reorged(t) && release::Live::of(q).inputs == inputs)
                .then_some(q)
                .filter(|q| release::withdraw(q, &self.reorged, &self.policy).is_ok_and(|w| w == *p))
        })
    }

    /// Live releases (being signed or in mempools) that pay a reorged peg-out: each is
    /// replaced by its withdrawal, the same inputs paying the others
    /// ([`release::withdraw`]). Every honest validator that saw the reorg builds the
    /// very same transaction from the same release, so they all sign one. A withdrawal
    /// that does not validate yet (bitcoind behind, say) is tried again every
    /// [`WITHDRAW_RETRY`].
    fn maybe_withdraw(&mut self) -> eyre::Result<()> {
        if self.reorged.is_empty() {
            return Ok(());
        }
        let heads: Vec<(Txid, Proposal)> = self
            .releases
            .iter()
            .filter(|(t, (r, _))| {
                matches!(r.status, ReleaseStatus::Signing | ReleaseStatus::Broadcast) && self.pays_reorged(t)
            })
            .map(|(t, (_, p))| (*t, p.clone()))
            .collect();
        self.withdraw_tried.retain(|t, _| heads.iter().any(|(h, _)| h == t));
        for (txid, p) in heads {
            if self.withdraw_tried.get(&txid).is_some_and(|at| at.elapsed() < WITHDRAW_RETRY) {
                continue;
            }
            self.withdraw_tried.insert(txid, Instant::now());
            match release::withdraw(&p, &self.reorged, &self.policy) {
                Ok(w) if self.releases.contains_key(&w.txid()) => {}
                Ok(w) => match self.validate(&w) {
                    Ok(_) => {
                        info!(target: "release", old = %txid, new = %w.txid(), payouts = w.payouts.len(), "release pays a reorged peg-out: proposing its withdrawal");
                        self.metrics.releases.with_label_values(&["withdrawn"]).inc();
                        self.send_proposal(w)?;
                    }
                    Err(e) => {
                        warn!(target: "release", %txid, error = %e, "release pays a reorged peg-out; its withdrawal does not validate yet");
                    }
                },
                Err(e) => {
                    error!(target: "release", %txid, error = %e, "release pays a reorged peg-out and cannot be withdrawn");
                }
            }
        }
        Ok(())
    }

    /// A release still being signed long after it was accepted, with a competing
    /// release for its peg-outs or inputs (a batch that split: each half of the
    /// validators holds one, neither reaches t): propose one that spends an input of
    /// each and pays all their peg-outs. It is valid beside either, conflicts with both,
    /// so at most one of them all confirms. By turns, like proposals.
    async fn maybe_merge(&mut self) -> eyre::Result<()> {
        let now = now_ms();
        self.competing.retain(|_, (_, at, _)| at.elapsed() < Duration::from_secs(3_600));
        self.merged.retain(|_, at| at.elapsed() < self.merge_after);
        let stalled: Vec<Txid> = self
            .releases
            .iter()
            .filter(|(t, (r, _))| {
                let turn = r.payouts.first().map_or(0, |e| relay::rank(e, self.me, self.n)) as u32;
                let wait = self.merge_after + self.takeover * turn;
                r.status == ReleaseStatus::Signing
                    && now.saturating_sub(r.created_ms) > wait.as_millis() as u64
                    && !self.merged.contains_key(*t)
            })
            .map(|(t, _)| *t)
            .collect();
        for txid in stalled {
            let Some((_, stuck)) = self.releases.get(&txid) else { continue };
            let stuck = stuck.clone();
            let mine = release::Live::of(&stuck);
            let rivals: Vec<release::Live> = self
                .competing
                .values()
                .map(|(c, _, _)| release::Live::of(c))
                .filter(|c| !c.inputs.is_disjoint(&mine.inputs) || !c.payouts.is_disjoint(&mine.payouts))
                .collect();
            if self.bitcoin.is_none() {
                return Ok(());
            }
            let rate = self.honest_rate();
            // One rival at a time: one that does not hold up (it names what this node
            // does not see, or it touches other releases) cannot block the others.
            let mut proposed = None;
            for rival in &rivals {
                let inputs: BTreeSet<OutPoint> = mine.inputs.union(&rival.inputs).copied().collect();
                let payouts: BTreeSet<EventId> = mine.payouts.union(&rival.payouts).copied().collect();
                let required: Option<Vec<(OutPoint, Sats)>> =
                    inputs.iter().map(|op| self.utxos.get(op).map(|a| (*op, *a))).collect();
                let pays: Option<Vec<Payout>> = payouts.iter().map(|e| self.pegouts.get(e).cloned()).collect();
                let (Some(required), Some(pays)) = (required, pays) else { continue };
                let Ok(merge) = release::build_with(&required, &[], &pays, rate, &self.policy) else { continue };
                if self.validate(&merge).is_ok() {
                    info!(target: "release", stalled = %txid, merge = %merge.txid(), payouts = merge.payouts.len(), "release stalled beside a competing one: proposing their merge");
                    self.metrics.releases.with_label_values(&["merged"]).inc();
                    proposed = Some(merge);
                    break;
                }
            }
            // No rival (or none that merges): the signers are slow or some sessions gave
            // up. The same release at a slightly higher fee gets fresh sessions.
            if proposed.is_none() {
                let fee_rate = stuck.fee() / release::signed_vsize(&stuck.tx).max(1);
                if let Some(respin) = release::bump(&stuck, rate.max(fee_rate.saturating_add(1)), &self.policy)
                    && self.validate(&respin).is_ok()
                {
                    info!(target: "release", stalled = %txid, respin = %respin.txid(), "release stalled: proposing it again at a higher fee");
                    self.metrics.releases.with_label_values(&["respun"]).inc();
                    proposed = Some(respin);
                }
            }
            if let Some(p) = proposed {
                self.merged.insert(txid, Instant::now());
                self.propose(p)?;
            }
        }
        Ok(())
    }

    fn retry_waiting(&mut self) -> eyre::Result<()> {
        let waiting = std::mem::take(&mut self.waiting);
        for (from, p, at) in waiting {
            if at.elapsed() > Duration::from_secs(300) || self.releases.contains_key(&p.txid()) {
                continue;
            }
            // As when it arrived: a rival by now (another release took its peg-outs)
            // is kept for a merge or refused out of turn, not refused for competing.
            self.judge(from, p, at, false)?;
        }
        Ok(())
    }

    /// Records a validated proposal (locking its inputs and payouts) and signs it.
    fn accept(&mut self, p: Proposal, proposer: usize) -> eyre::Result<()> {
        let txid = p.txid();
        if self.releases.contains_key(&txid) {
            return Ok(());
        }
        // The live releases it touches: it conflicts with each and pays all they pay.
        let mine = release::Live::of(&p);
        let replaced: Vec<Txid> = self
            .locks()
            .live
            .into_iter()
            .filter(|(t, l)| {
                *t != txid && (!l.inputs.is_disjoint(&mine.inputs) || !l.payouts.is_disjoint(&mine.payouts))
            })
            .map(|(t, _)| t)
            .collect();
        let replaces = replaced.first().copied();
        let vsize = release::signed_vsize(&p.tx);
        let rec = ReleaseRecord {
            txid: txid.to_string(),
            proposal: hex::encode(p.encode()),
            payouts: p.payouts.clone(),
            status: ReleaseStatus::Signing,
            signatures: vec![None; p.tx.input.len()],
            fee_sats: p.fee(),
            fee_rate_sat_per_vb: p.fee() / vsize.max(1),
            peg_out_fee_sats: self.policy.peg_out_fee.0,
            proposer,
            created_ms: now_ms(),
            broadcast_ms: None,
            confirmations: 0,
            replaces: replaces.map(|t| t.to_string()),
        };
        info!(target: "release", %txid, proposer, payouts = p.payouts.len(), inputs = p.tx.input.len(), fee = rec.fee_sats, replaces = ?rec.replaces, "release validated: signing");
        self.releases.insert(txid, (rec, p));
        for old in replaced {
            if let Some((r, _)) = self.releases.get_mut(&old)
                && r.status != ReleaseStatus::Replaced
            {
                let was_signing = r.status == ReleaseStatus::Signing;
                r.status = ReleaseStatus::Replaced;
                self.save_release(&old)?;
                if was_signing {
                    self.abandon_sessions(&old);
                }
            }
        }
        self.save_release(&txid)?;
        self.start_release_sessions(txid)
    }

    fn start_release_sessions(&mut self, txid: Txid) -> eyre::Result<()> {
        if self.pays_reorged(&txid) {
            return Ok(());
        }
        let Some((rec, p)) = self.releases.get(&txid) else { return Ok(()) };
        let hashes = release::sighashes(&p.tx, &p.prevouts)?;
        let todo: Vec<(usize, [u8; 32])> = hashes
            .into_iter()
            .enumerate()
            .filter(|(i, _)| rec.signatures.get(*i).is_some_and(Option::is_none))
            .collect();
        for (i, h) in todo {
            self.start(KeyKind::Btc, h.to_vec(), Purpose::ReleaseInput { txid: txid.to_string(), input: i as u32 })?;
        }
        Ok(())
    }

    fn signed_tx(&self, txid: &Txid) -> eyre::Result<Option<bitcoin::Transaction>> {
        let Some((rec, p)) = self.releases.get(txid) else { return Ok(None) };
        let Some(suite) = self.btc.as_ref() else { return Ok(None) };
        let key = suite.public_key_package().verifying_key();
        let hashes = release::sighashes(&p.tx, &p.prevouts)?;
        let mut sigs = Vec::new();
        for (i, s) in rec.signatures.iter().enumerate() {
            let Some(s) = s else { return Ok(None) };
            let sig = btcfi_signer::frost_secp256k1_tr::Signature::deserialize(&hex::decode(s)?)
                .map_err(|e| eyre::eyre!("stored release signature: {e}"))?;
            let hash = hashes.get(i).ok_or_else(|| eyre::eyre!("release {txid}: more signatures than inputs"))?;
            btcsig::verify_key_path(hash, key, &sig)?;
            sigs.push(btcsig::schnorr_signature(&sig)?);
        }
        Ok(Some(release::finalize(&p.tx, &sigs)))
    }

    fn try_complete(&mut self, txid: Txid) -> eyre::Result<()> {
        match self.signed_tx(&txid) {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(()),
            Err(e) => {
                // A signature that does not verify (never expected: each session
                // verified it): sign again rather than stop the node.
                error!(target: "release", %txid, error = %e, "release signatures do not verify: signing its inputs again");
                if let Some((rec, _)) = self.releases.get_mut(&txid) {
                    forget_signatures(rec);
                }
                self.save_release(&txid)?;
                return Ok(());
            }
        }
        if let Some((rec, _)) = self.releases.get_mut(&txid)
            && rec.status == ReleaseStatus::Signing
        {
            // The async tick broadcasts it (bitcoind does not know it yet).
            rec.status = ReleaseStatus::Broadcast;
            info!(target: "release", %txid, "every input signed: broadcasting");
        }
        self.save_release(&txid)?;
        self.last_release_check = Instant::now().checked_sub(Duration::from_secs(10)).unwrap_or_else(Instant::now);
        Ok(())
    }

    async fn follow_releases(&mut self) -> eyre::Result<()> {
        if self.bitcoin.is_none() {
            return Ok(());
        }
        let watched = self.releases_in(&[ReleaseStatus::Broadcast, ReleaseStatus::Replaced]);
        let mut changed = Vec::new();
        let mut stuck_releases = Vec::new();
        // This runs in the node's main loop: a slow bitcoind must not hold up consensus.
        let budget = Instant::now() + FOLLOW_BUDGET;
        for txid in watched {
            if Instant::now() > budget {
                debug!(target: "release", "following releases: time budget spent, the rest next tick");
                break;
            }
            let Some(btc) = self.bitcoin.as_ref() else { break };
            let confs = match bounded(btc.tx_confirmations(txid)).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(target: "release", %txid, error = %e, "cannot follow the release");
                    continue;
                }
            };
            let Some((rec, _)) = self.releases.get(&txid) else { continue };
            let status = rec.status;
            match confs {
                Some(c) if c >= self.confirmations => {
                    let Some((rec, p)) = self.releases.get_mut(&txid) else { continue };
                    rec.status = ReleaseStatus::Confirmed;
                    rec.confirmations = c;
                    self.metrics.releases.with_label_values(&["confirmed"]).inc();
                    self.metrics.vault_fees_paid.inc_by(p.fee());
                    info!(target: "release", %txid, confirmations = c, payouts = rec.payouts.len(), "release confirmed at depth: peg-outs paid");
                    changed.push(txid);
                }
                Some(c) => {
                    let turn = self.bump_turn(&txid);
                    let Some((rec, _)) = self.releases.get_mut(&txid) else { continue };
                    rec.confirmations = c;
                    if c == 0
                        && status == ReleaseStatus::Broadcast
                        && rec.broadcast_ms.is_some_and(|b| now_ms().saturating_sub(b) > turn)
                    {
                        stuck_releases.push(txid);
                    }
                }
                // Pays a reorged peg-out: never broadcast from here (its withdrawal is).
                None if self.pays_reorged(&txid) => {}
                None if status == ReleaseStatus::Broadcast => {
                    // Not known to bitcoind (first time, or evicted): (re)broadcast.
                    let tx = match self.signed_tx(&txid) {
                        Ok(tx) => tx,
                        Err(e) => {
                            error!(target: "release", %txid, error = %e, "stored release signatures do not verify: signing its inputs again");
                            if let Some((rec, _)) = self.releases.get_mut(&txid) {
                                forget_signatures(rec);
                            }
                            changed.push(txid);
                            None
                        }
                    };
                    let refused_long = self.releases.get(&txid).is_some_and(|(r, _)| {
                        r.broadcast_ms.is_none() && now_ms().saturating_sub(r.created_ms) > self.bump_turn(&txid)
                    });
                    // Asked first. A signed release that bitcoind's policy now refuses
                    // (its policy changed since the release was checked before signing)
                    // stays live: its signatures exist, another node's mempool or a miner
                    // may still confirm it, so its payouts stay promised to it (freeing
                    // them could pay them twice). It is named once, with what it blames.
                    if let Some(t) = &tx
                        && let Ok(Some(reason)) = self.policy_refusal(t.clone()).await
                    {
                        if self.policy_refused.insert(txid) {
                            let blamed = self.blamed_payouts(&txid).await;
                            error!(target: "release", %txid, %reason, blamed = ?blamed, "signed release refused by bitcoind's relay policy: not broadcast from here; its payouts stay promised to it");
                            self.metrics.releases.with_label_values(&["refused_by_policy"]).inc();
                        }
                        continue;
                    }
                    let btc = match self.bitcoin.as_ref() {
                        Some(b) => b,
                        None => continue,
                    };
                    if let Some(tx) = tx {
                        match bounded(btc.broadcast(tx)).await {
                            Ok(_) => {
                                let Some((rec, _)) = self.releases.get_mut(&txid) else { continue };
                                if rec.broadcast_ms.is_none() {
                                    rec.broadcast_ms = Some(now_ms());
                                    self.metrics.releases.with_label_values(&["broadcast"]).inc();
                                    info!(target: "release", %txid, "release broadcast");
                                }
                                changed.push(txid);
                            }
                            Err(e) => {
                                warn!(target: "release", %txid, error = %e, "broadcast refused");
                                // A replacement the mempool refuses (fee too low to replace):
                                // bump it in turn, like a stuck one.
                                if refused_long {
                                    stuck_releases.push(txid);
                                }
                            }
                        }
                    }
                }
                None if status == ReleaseStatus::Replaced && !self.replacement_broadcast(&txid) => {
                    // Fully signed, evicted, and no replacement of it out there yet: it
                    // is still the best way to pay its peg-outs.
                    if let Ok(Some(tx)) = self.signed_tx(&txid)
                        && let Some(btc) = self.bitcoin.as_ref()
                        && let Err(e) = bounded(btc.broadcast(tx)).await
                    {
                        debug!(target: "release", %txid, error = %e, "replaced release not re-broadcast");
                    }
                }
                None => {}
            }
        }
        // What conflicts with a confirmed release can never confirm: stop following it.
        for confirmed in changed.clone() {
            if self.releases.get(&confirmed).is_some_and(|(r, _)| r.status == ReleaseStatus::Confirmed) {
                let spent: BTreeSet<OutPoint> = self
                    .releases
                    .get(&confirmed)
                    .map(|(_, p)| p.tx.input.iter().map(|i| i.previous_output).collect())
                    .unwrap_or_default();
                let dead = self.mark_conflicts(&spent, &confirmed);
                for t in &dead {
                    self.abandon_sessions(t);
                }
                changed.extend(dead);
            }
        }
        for t in changed {
            self.save_release(&t)?;
        }
        self.retire_finished();
        for t in stuck_releases {
            // One paying a reorged peg-out is withdrawn, not bumped.
            if !self.pays_reorged(&t) {
                self.replace(t).await?;
            }
        }
        self.update_pending_gauge();
        Ok(())
    }

    /// Whether a live release sharing an input with `txid` has been broadcast.
    fn replacement_broadcast(&self, txid: &Txid) -> bool {
        let Some((_, p)) = self.releases.get(txid) else { return false };
        let inputs = release::Live::of(p).inputs;
        self.releases.iter().any(|(t, (r, q))| {
            t != txid
                && r.status == ReleaseStatus::Broadcast
                && q.tx.input.iter().any(|i| inputs.contains(&i.previous_output))
        })
    }

    /// How long `txid` may stay unconfirmed before this node bumps it: `rbf_after`, plus
    /// `takeover` per rank after the validator first in turn for its first payout.
    fn bump_turn(&self, txid: &Txid) -> u64 {
        let rank =
            self.releases.get(txid).and_then(|(r, _)| r.payouts.first()).map_or(0, |e| relay::rank(e, self.me, self.n))
                as u64;
        (self.rbf_after.as_millis() as u64).saturating_add(rank.saturating_mul(self.takeover.as_millis() as u64))
    }

    /// Leaves the signing sessions of a release's inputs that are still running.
    fn abandon_sessions(&mut self, txid: &Txid) {
        let Some((_, p)) = self.releases.get(txid) else { return };
        let Ok(hashes) = release::sighashes(&p.tx, &p.prevouts) else { return };
        if let Some(suite) = self.btc.as_mut() {
            for h in hashes {
                suite.abandon(&h);
            }
        }
    }

    /// Marks every release other than the confirmed `txid` that spends one of `spent`
    /// (its inputs) as conflicted; returns them.
    fn mark_conflicts(&mut self, spent: &BTreeSet<OutPoint>, txid: &Txid) -> Vec<Txid> {
        let mut dead = Vec::new();
        for (other, (rec, p)) in self.releases.iter_mut() {
            if other != txid
                && rec.status != ReleaseStatus::Confirmed
                && rec.status != ReleaseStatus::Conflicted
                && p.tx.input.iter().any(|i| spent.contains(&i.previous_output))
            {
                rec.status = ReleaseStatus::Conflicted;
                info!(target: "release", txid = %other, confirmed = %txid, "release superseded by a conflicting confirmed one");
                dead.push(*other);
            }
        }
        dead
    }

    async fn replace(&mut self, txid: Txid) -> eyre::Result<()> {
        let Some((rec, p)) = self.releases.get(&txid) else { return Ok(()) };
        if self.bitcoin.is_none() {
            return Ok(());
        }
        // Twice the old rate, or the estimate, within the band the signers accept.
        let centre = self.fee_estimate.map_or(rec.fee_rate_sat_per_vb, |e| e.max(rec.fee_rate_sat_per_vb));
        let band = self.policy.band_ceiling(Some(centre));
        let rate = (rec.fee_rate_sat_per_vb.saturating_mul(2)).max(self.honest_rate()).min(band);
        let Some(new) = release::bump(p, rate, &self.policy) else {
            warn!(target: "release", %txid, "stuck release cannot be bumped further (no change left or at the fee ceiling)");
            return Ok(());
        };
        info!(target: "release", old = %txid, new = %new.txid(), rate, "release stuck: proposing a replacement (RBF)");
        self.metrics.releases.with_label_values(&["replaced"]).inc();
        self.propose(new)
    }

    /// Sends the releases still being signed to the others again.
    fn resend_proposals(&mut self) {
        if self.last_resend.elapsed() < self.resend_every {
            return;
        }
        self.last_resend = Instant::now();
        // Every release still being signed, not only this node's: a validator that
        // missed one (or holds a competing one) learns of it.
        let mine: Vec<Vec<u8>> = self
            .releases
            .values()
            .filter(|(r, _)| r.status == ReleaseStatus::Signing)
            .map(|(_, p)| {
                let mut payload = vec![TAG_RELEASE];
                payload.extend(p.encode());
                payload
            })
            .collect();
        for payload in mine {
            self.send_to_peers(&payload);
        }
    }

    /// Test fault: `p` to this node and a minority, a twin from other inputs to the rest.
    fn propose_split(
        &mut self,
        p: Proposal,
        available: &[(OutPoint, Sats)],
        payouts: &[Payout],
        rate: u64,
    ) -> eyre::Result<()> {
        let used: BTreeSet<OutPoint> = p.tx.input.iter().map(|i| i.previous_output).collect();
        let rest: Vec<(OutPoint, Sats)> = available.iter().filter(|(op, _)| !used.contains(op)).copied().collect();
        let Ok(twin) = release::build(&rest, payouts, rate, &self.policy) else { return self.propose(p) };
        warn!(target: "release", first = %p.txid(), twin = %twin.txid(), "TEST FAULT: splitting a release proposal between the validators");
        let others: Vec<usize> = (0..self.n).filter(|i| *i != self.me).collect();
        let first_side = (self.n / 2).saturating_sub(1);
        for (k, i) in others.into_iter().enumerate() {
            let mut payload = vec![TAG_RELEASE];
            payload.extend(if k < first_side { p.encode() } else { twin.encode() });
            self.send(i, payload);
        }
        self.last_proposal = Some(Instant::now());
        self.accept(p, self.me)
    }

    /// Test fault: every tick out of this node's turn, a release of the peg-outs not
    /// yet paid (promised to a live release or not), from the smallest free vault UTXO
    /// (never the one the validator in turn spends, so that it is never taken for a
    /// replacement of its release). In its turn it proposes nothing.
    fn propose_out_of_turn(&mut self) -> eyre::Result<()> {
        let locks = self.locks();
        let payouts: Vec<Payout> = self
            .pegout_seen
            .keys()
            .filter(|e| !locks.paid.contains(e))
            .filter_map(|e| self.pegouts.get(e).cloned())
            .collect();
        if payouts.is_empty() {
            return Ok(());
        }
        let inputs = locks.inputs();
        let smallest: Vec<(OutPoint, Sats)> = self
            .utxos
            .iter()
            .filter(|(op, _)| !inputs.contains(op))
            .min_by_key(|(_, a)| **a)
            .map(|(o, a)| (*o, *a))
            .into_iter()
            .collect();
        let rate = self.honest_rate();
        self.send_faulty(release::build(&smallest, &payouts, rate, &self.policy), "out of turn")
    }

    /// Test faults: sends a proposal to the others without validating or accepting it.
    fn send_faulty(&mut self, p: Result<Proposal, ReleaseError>, fault: &str) -> eyre::Result<()> {
        self.last_proposal = Some(Instant::now());
        let Ok(p) = p else { return Ok(()) };
        warn!(target: "release", txid = %p.txid(), fee = p.fee(), fault, "TEST FAULT: sending a release proposal honest signers must refuse");
        self.send_to_peers(&[&[TAG_RELEASE][..], &p.encode()].concat());
        Ok(())
    }

    /// The fee rate this node proposes at: its estimate, or the floor without one.
    fn honest_rate(&self) -> u64 {
        self.fee_estimate.unwrap_or(self.policy.floor_sat_per_vb)
    }

    /// Reads bitcoind's fee estimate again once it is older than ten seconds (bounded,
    /// like every call of the release path). A failed read keeps the last estimate.
    async fn refresh_fee_estimate(&mut self) {
        if self.fee_estimated_at.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
            return;
        }
        let Some(btc) = self.bitcoin.as_ref() else { return };
        match bounded(btc.estimate_fee_rate()).await {
            Ok(f) => {
                self.fee_estimate = Some(f.sat_per_vb);
                self.fee_estimated_at = Some(Instant::now());
            }
            // The last estimate stands until bitcoind answers again.
            Err(e) => debug!(target: "release", error = %e, "fee estimate unavailable"),
        }
    }

    fn propose(&mut self, p: Proposal) -> eyre::Result<()> {
        if self.releases.contains_key(&p.txid()) {
            return Ok(());
        }
        if let Err(e) = self.validate(&p) {
            warn!(target: "release", reason = %e, "own release proposal does not validate: not sent");
            return Ok(());
        }
        self.send_proposal(p)
    }

    /// Sends `p` (validated here already) to the others and signs it.
    fn send_proposal(&mut self, p: Proposal) -> eyre::Result<()> {
        self.send_to_peers(&[&[TAG_RELEASE][..], &p.encode()].concat());
        self.last_proposal = Some(Instant::now());
        self.accept(p, self.me)
    }

    /// After a proposal that could not be made: the next one in five seconds, not one.
    fn back_off_proposals(&mut self) {
        self.proposals_resume = Some(Instant::now() + PROPOSAL_BACK_OFF);
    }

    /// Proposes a release of the peg-outs waiting, oldest first, when this node holds
    /// the turn ([`Threshold::turn_at`]) and a batch is due: [`release::MAX_PAYOUTS`]
    /// wait, or the oldest waited [`BATCH_WAIT`] and no other came for as long, or the
    /// oldest waited [`BATCH_MAX_WAIT`]. So a burst is paid in full releases, one after
    /// another, and a lone peg-out a moment after it was certified.
    async fn maybe_propose(&mut self) -> eyre::Result<()> {
        let faulty_now = self.release_fault == Some(ReleaseFault::GreedyFee);
        if self.policy.vault_script.is_empty()
            || !self.bitcoin_synced
            || self.release_fault == Some(ReleaseFault::OutOfTurn)
            || self.last_proposal.is_some_and(|t| t.elapsed() < Duration::from_secs(1))
            || self.proposals_resume.is_some_and(|t| Instant::now() < t)
            || (!faulty_now && !self.may_propose_now())
        {
            return Ok(());
        }
        let locks = self.locks();
        let (claimed_inputs, claimed_payouts) = self.claimed();
        let (mut locked_inputs, locked_payouts) = (locks.inputs(), locks.payouts());
        locked_inputs.extend(claimed_inputs);
        let mut unpaid: Vec<(&EventId, &Instant)> = self
            .pegout_seen
            .iter()
            .filter(|(e, _)| {
                !locked_payouts.contains(e)
                    && !claimed_payouts.contains(e)
                    && self.bridge_not_ready(e.chain.0).is_none()
            })
            .collect();
        if unpaid.is_empty() {
            return Ok(());
        }
        unpaid.sort_by_key(|(e, at)| (**at, e.to_bytes()));
        // No more payments of a class than the chain leaves room for (oldest first).
        let mut budget = release::payment_budget(&self.pegouts, self.paid_on_chain(), &self.promised(), &self.policy);
        unpaid.retain(|(e, _)| {
            let class = self.pegouts.get(e).and_then(|p| release::class_of(p, &self.policy));
            match class.and_then(|c| budget.get_mut(&c)) {
                Some(b) if *b > 0 => {
                    *b -= 1;
                    true
                }
                _ => false,
            }
        });
        if unpaid.is_empty() {
            return Ok(());
        }
        self.unfunded.retain(|e, _| self.pegout_seen.contains_key(e));
        // Peg-outs the free funds could not cover last time do not set the pace: the
        // others are batched as usual.
        let mut pace: Vec<Instant> =
            unpaid.iter().filter(|(e, _)| !self.unfunded.contains_key(*e)).map(|(_, at)| **at).collect();
        if pace.is_empty() {
            pace = unpaid.iter().map(|(_, at)| **at).collect();
        }
        let (Some(&oldest), Some(&newest)) = (pace.iter().min(), pace.iter().max()) else { return Ok(()) };
        // One left out for DEFER_MAX while the vault as a whole holds enough for it:
        // newer peg-outs wait, so that returning change builds up for it rather than
        // paying them first for ever.
        let starved: Option<Payout> = if self.unfunded.values().any(|t| t.elapsed() >= DEFER_MAX) {
            let vault_total = self.utxos.values().map(|a| a.0).fold(0, u64::saturating_add);
            unpaid
                .iter()
                .filter(|(e, _)| self.unfunded.get(*e).is_some_and(|t| t.elapsed() >= DEFER_MAX))
                .filter_map(|(e, _)| self.pegouts.get(*e))
                .find(|p| p.amount.0 <= vault_total)
                .cloned()
        } else {
            None
        };
        let full = unpaid.len() >= release::MAX_PAYOUTS;
        let due = full
            || (oldest.elapsed() >= BATCH_WAIT && newest.elapsed() >= BATCH_WAIT)
            || oldest.elapsed() >= BATCH_MAX_WAIT;
        // A batch that is not full waits for the last proposal's checks to settle.
        let settled = full || self.last_proposal.is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
        if !(faulty_now || due && settled) {
            return Ok(());
        }
        unpaid.truncate(release::MAX_PAYOUTS);
        let payouts: Vec<Payout> = match &starved {
            Some(p) => vec![p.clone()],
            None => unpaid.iter().filter_map(|(e, _)| self.pegouts.get(e).cloned()).collect(),
        };
        let available: Vec<(OutPoint, Sats)> =
            self.utxos.iter().filter(|(op, _)| !locked_inputs.contains(op)).map(|(op, a)| (*op, *a)).collect();
        if self.bitcoin.is_none() {
            return Ok(());
        }
        let rate = self.honest_rate();
        if self.release_fault == Some(ReleaseFault::GreedyFee) {
            let greedy = rate.saturating_mul(10).min(self.policy.ceiling_sat_per_vb);
            return self.send_faulty(release::build(&available, &payouts, greedy, &self.policy), "greedy fee");
        }
        let built = match &starved {
            Some(big) => {
                info!(target: "release", event = %big.event, amount = big.amount.0, "a peg-out the free funds could not cover waited too long: newer ones wait for it");
                release::build(&available, &payouts, rate, &self.policy)
            }
            None => release::build_fundable(&available, &payouts, rate, &self.policy),
        };
        if let Ok(p) = &built {
            for e in payouts.iter().map(|q| q.event) {
                if p.payouts.contains(&e) {
                    self.unfunded.remove(&e);
                } else {
                    self.unfunded.entry(e).or_insert_with(Instant::now);
                }
            }
        }
        match built {
            Ok(p) if self.release_fault == Some(ReleaseFault::SplitProposals) => {
                self.propose_split(p, &available, &payouts, rate)
            }
            Ok(p) => {
                match self.policy_refusal(p.tx.clone()).await {
                    Ok(None) => {}
                    Ok(Some(reason)) => {
                        let blamed = self.blame(&p, &reason).await?;
                        warn!(target: "release", txid = %p.txid(), %reason, blamed = blamed.len(), "own release refused by bitcoind's relay policy: the next one goes without what it blames");
                        self.back_off_proposals();
                        return Ok(());
                    }
                    Err(e) => {
                        debug!(target: "release", error = %e, "testmempoolaccept unavailable: not proposing yet");
                        self.back_off_proposals();
                        return Ok(());
                    }
                }
                // bitcoind took its time: the turn may have passed on meanwhile.
                if !self.may_propose_now() {
                    debug!(target: "release", txid = %p.txid(), "the turn passed on while bitcoind checked the release: not sent");
                    return Ok(());
                }
                info!(target: "release", txid = %p.txid(), payouts = p.payouts.len(), inputs = p.tx.input.len(), rate, "proposing a release");
                self.propose(p)
            }
            Err(e) => {
                self.back_off_proposals();
                warn!(target: "release", error = %e, "cannot build a release yet");
                Ok(())
            }
        }
    }

    /// This node's record of a release paying `event`, if any (newest first).
    pub fn release_of(store: &Store, event: &EventId) -> eyre::Result<Option<ReleaseRecord>> {
        let mut found: Option<ReleaseRecord> = None;
        let paying: Vec<String> = store.get_json(Cf::Releases, paying_key(event))?.unwrap_or_default();
        for txid in paying {
            let mut key = b"rel/".to_vec();
            key.extend_from_slice(txid.as_bytes());
            let Some(rec) = store.get_json::<ReleaseRecord>(Cf::Releases, key)? else { continue };
            if rec.payouts.contains(event) {
                let better = match &found {
                    None => true,
                    Some(f) => {
                        rec.status == ReleaseStatus::Confirmed
                            || (f.status != ReleaseStatus::Confirmed && rec.created_ms > f.created_ms)
                    }
                };
                if better {
                    found = Some(rec);
                }
            }
        }
        Ok(found)
    }
}
