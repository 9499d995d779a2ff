//! A whole bridge network in one process, deterministic from a seed.
//!
//! n validators, each with the real consensus core (`btcfi-consensus`), the real mint
//! book (`btcfi-mint`), the real release book (`btcfi-release`) and real FROST signing
//! sessions (`btcfi-signer`) over trusted-dealer `evm` and `btc` keys, talk over a
//! simulated bus. Below them: Bitcoin deposits that become final at their own times
//! (some orphaned by a reorg shallower than finality, so never final) and fund the
//! vault; peg-outs burned on the EVM chains (some dust, some orphaned, some reorged out
//! past finality after they were certified); one bridge contract per EVM chain that
//! consumes each event id once and verifies the group signature with the contract's
//! equation; and a Bitcoin chain ([`bitcoin::Chain`]) whose mempool checks every
//! key-path signature, standardness and replace-by-fee, and whose blocks not yet at depth
//! are reorged now and then, one or more at once.
//!
//! Faults, all drawn from the seed:
//! - the bus drops, delays (so reorders) and duplicates messages, and partitions the
//!   set into groups, until the faults heal;
//! - honest validators crash at any point (also right after a durable write, before
//!   what follows it) and restart from what they persisted;
//! - up to f Byzantine validators equivocate, vote for orphaned and invented deposits,
//!   propose batches of fake or inflated mints, send bad signature shares (for both
//!   keys), withhold their signing messages or everything, propose releases over the fee
//!   band, spending every UTXO or out of turn, replay what they received and spam
//!   garbage.
//!
//! Checked after every step ([`check::Checker`]): no two certified digests for one
//! event; every certificate holds q valid signatures (q computed by the checker);
//! nothing certified that the node did not observe; no nonce commitment issued twice;
//! nothing signed that the signer did not certify; every mint a real deposit, exactly
//! its recipient and amount, at most once; evidence and culprits name only Byzantine
//! validators; every release an honest validator signs pays peg-outs it certified,
//! exactly their amount less the fee, none it was told was reorged away, at a fee within
//! the band; every vault spend at depth pays each peg-out at most once, exactly its
//! amount less the fee. Liveness: once the faults heal, every final deposit is minted
//! and every final payable peg-out paid within [`SETTLE_MS`].
//!
//! [`run`] returns a [`Report`] with a trace hash over every step: one seed run twice
//! gives the same hash.

mod attack;
pub mod bitcoin;
pub mod chain;
pub mod check;
pub mod node;
pub mod signer;

use ::bitcoin::hashes::Hash as _;
use ::bitcoin::key::TweakedPublicKey;
use ::bitcoin::{OutPoint, ScriptBuf, Txid};
use alloy::primitives::Address;
use btcfi_consensus::{InsecureTestCrypto, max_faulty, quorum};
use btcfi_mint::BatchProposal;
use btcfi_release::book::{Input as RInput, Spend};
use btcfi_signer::evm::{EvmSignature, group_key_xy};
use btcfi_signer::frost_secp256k1::{
    Identifier,
    keys::{IdentifierList, KeyPackage, generate_with_dealer},
};
use btcfi_signer::frost_secp256k1_tr as tr;
use btcfi_types::{Attestation, AttestationKind, ChainId, EventId, EvmAddress, Sats, TxHash};
use chain::{Bridge, Deposit};
use check::Checker;
use node::{Effect, Validator, Wire};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest as _, Sha256};
use signer::Keys;
use std::collections::{BTreeMap, BTreeSet};

pub type Millis = u64;

/// How long after the faults heal every final deposit must be minted.
pub const SETTLE_MS: Millis = 90_000;
const TICK_MS: Millis = 250;
const BLOCK_MS: Millis = 1_000;
const CHAINS: [u64; 2] = [ChainId::ETHEREUM.0, ChainId::POLYGON.0];

/// A planted bug, switched on for one run to show the checks catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canary {
    /// Consensus certifies with q − 1 votes.
    QuorumOneBelow,
    /// A signer signs a batch's mints without having certified them itself.
    NoOwnObservation,
    /// A restarted signer draws the nonces of a session it already committed to again.
    NonceReuseAfterRestart,
    /// A release signer accepts any fee rate (the band around its estimate is off).
    IgnoreFeeBand,
    /// A peg-out whose burn was reorged out past finality stays payable.
    PayReorged,
}

impl Canary {
    pub const ALL: [Canary; 5] = [
        Canary::QuorumOneBelow,
        Canary::NoOwnObservation,
        Canary::NonceReuseAfterRestart,
        Canary::IgnoreFeeBand,
        Canary::PayReorged,
    ];
}

/// One run.
#[derive(Debug, Clone)]
pub struct Setup {
    pub seed: u64,
    pub n: u16,
    pub canary: Option<Canary>,
}

/// What one run did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub seed: u64,
    pub n: u16,
    pub trace: String,
    pub steps: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub deposits: usize,
    pub final_deposits: usize,
    pub minted: usize,
    pub crashes: u64,
    pub byzantine: usize,
    pub certifications: u64,
    pub signatures: u64,
    pub culprits: u64,
    pub evidence: u64,
    pub reverts: u64,
    pub undecodable: u64,
    /// Peg-outs burned, those final and payable (not dust, not reorged past finality),
    /// and those the vault paid.
    pub burns: usize,
    pub payable_burns: usize,
    pub paid: usize,
    /// Vault spends that reached depth, and what they paid in fees.
    pub releases: u64,
    pub vault_fees: u64,
    /// Mempool refusals and replacements, reorgs of the blocks not at depth.
    pub btc_refused: u64,
    pub btc_replaced: u64,
    pub btc_reorgs: u64,
    /// Safety violations, first ones first.
    pub violations: Vec<String>,
    /// Why liveness failed, if it did.
    pub liveness: Option<String>,
    /// Virtual time the run covered.
    pub sim_ms: Millis,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty() && self.liveness.is_none()
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Byzantine {
    silent: bool,
    equivocate: bool,
    fake_votes: bool,
    fake_batches: bool,
    bad_shares: bool,
    withhold_signing: bool,
    spam: bool,
    bad_releases: bool,
}

/// A peg-out: wrapped BTC burned on an EVM chain, to be paid by the vault.
#[derive(Debug, Clone)]
struct Burn {
    deposit: Deposit,
    /// Too small to pay (its amount less the fee is dust): never paid, never in the way.
    dust: bool,
    /// Reorged out past finality this long after it is first certified.
    reorg_after: Option<Millis>,
}

/// An event a validator's adapters report.
#[derive(Debug, Clone, Copy)]
enum Item {
    Deposit(usize),
    Burn(usize),
}

#[derive(Debug)]
enum Ev {
    Deliver {
        to: u16,
        from: u16,
        wire: Wire,
    },
    Tick {
        node: u16,
    },
    Observe {
        node: u16,
        item: Item,
    },
    Block,
    Fund {
        deposit: usize,
    },
    BurnReorged {
        burn: usize,
    },
    Crash {
        node: u16,
        at_persist: bool,
    },
    Restart {
        node: u16,
    },
    Relay {
        node: u16,
        proposal: BatchProposal,
        signature: EvmSignature,
    },
    Attack {
        node: u16,
    },
    /// The relay policy's answer to a validator's check of a release.
    Checked {
        node: u16,
        txid: Txid,
        verdict: btcfi_release::book::Verdict,
    },
}

struct World {
    rng: ChaCha8Rng,
    n: u16,
    now: Millis,
    seq: u64,
    queue: BTreeMap<(Millis, u64), Ev>,
    nodes: Vec<Validator>,
    byzantine: BTreeMap<u16, Byzantine>,
    deposits: Vec<Deposit>,
    burns: Vec<Burn>,
    btc: bitcoin::Chain,
    fee_estimate: u64,
    /// Peg-outs reorged out past finality (every validator is told).
    reorged: BTreeSet<EventId>,
    reorg_scheduled: BTreeSet<usize>,
    bridges: BTreeMap<u64, Bridge>,
    checker: Checker,
    crypto: InsecureTestCrypto,
    heal_at: Millis,
    drop_p: f64,
    dup_p: f64,
    groups: Option<Vec<u8>>,
    /// Consumptions each node was told of.
    told: Vec<BTreeSet<EventId>>,
    /// Messages Byzantine validators received (to replay).
    pool: Vec<Wire>,
    trace: Sha256,
    report: Report,
    /// `SIM_DEBUG` set: print what the chains do.
    debug: bool,
    end: Millis,
}

/// Runs one seed to the end and reports.
pub fn run(setup: &Setup) -> Report {
    let mut w = World::new(setup);
    while let Some(((at, _), ev)) = w.queue.pop_first() {
        if at > w.end {
            break;
        }
        w.now = at;
        w.step(ev);
        if !w.checker.violations.is_empty() {
            break;
        }
    }
    w.finish()
}

fn bridge_address(chain: u64) -> Address {
    let mut a = [0u8; 20];
    a[..8].copy_from_slice(&chain.to_be_bytes());
    a[19] = 0xb1;
    Address::from(a)
}

impl World {
    fn new(setup: &Setup) -> Self {
        let n = setup.n;
        let f = max_faulty(n);
        let t = quorum(n);
        let mut rng = ChaCha8Rng::seed_from_u64(setup.seed);

        // Keys: the evm group key (trusted dealer; production keys come from the DKG).
        let (shares, public) = loop {
            let (shares, public) =
                generate_with_dealer(n, t as u16, IdentifierList::Default, &mut rng).expect("keygen");
            if group_key_xy(public.verifying_key()).is_ok() {
                break (shares, public);
            }
        };
        let (px, py) = group_key_xy(public.verifying_key()).expect("checked above");
        // The btc group key (frost-secp256k1-tr: the dealer's output is BIP341-tweaked,
        // so the group key is the vault's output key).
        let (btc_shares, btc_public) =
            tr::keys::generate_with_dealer(n, t as u16, tr::keys::IdentifierList::Default, &mut rng).expect("keygen");
        let output_key = btcfi_signer::btc::output_key(btc_public.verifying_key()).expect("an x-only output key");
        let vault = ScriptBuf::new_p2tr_tweaked(TweakedPublicKey::dangerous_assume_tweaked(output_key));
        let crypto = InsecureTestCrypto::new(setup.seed, n);
        let bridges: BTreeMap<u64, Address> = CHAINS.iter().map(|c| (*c, bridge_address(*c))).collect();

        // Who is Byzantine, and how.
        let mut order: Vec<u16> = (0..n).collect();
        order.shuffle(&mut rng);
        let byz_count = if rng.gen_bool(0.85) { f } else { rng.gen_range(0..=f) };
        let mut byzantine = BTreeMap::new();
        for &b in order.iter().take(byz_count) {
            let s = Byzantine {
                silent: rng.gen_bool(0.15),
                equivocate: rng.gen_bool(0.5),
                fake_votes: rng.gen_bool(0.5),
                fake_batches: rng.gen_bool(0.6),
                bad_shares: rng.gen_bool(0.5),
                withhold_signing: rng.gen_bool(0.2),
                spam: rng.gen_bool(0.4),
                bad_releases: rng.gen_bool(0.6),
            };
            byzantine.insert(b, s);
        }
        let honest: Vec<u16> = (0..n).filter(|v| !byzantine.contains_key(v)).collect();

        // Deposits.
        let count = match n {
            0..=4 => rng.gen_range(3..=10),
            5..=7 => rng.gen_range(3..=8),
            8..=16 => rng.gen_range(2..=6),
            _ => 2,
        };
        let mut deposits = Vec::new();
        for i in 0..count {
            let event = EventId::new(ChainId::BITCOIN, TxHash(rng.r#gen()), rng.gen_range(0..3));
            let att = Attestation {
                event,
                kind: AttestationKind::PegIn {
                    dest_chain: ChainId(CHAINS[rng.gen_range(0..CHAINS.len())]),
                    recipient: EvmAddress(rng.r#gen()),
                    amount: Sats(rng.gen_range(10_000..5_000_000)),
                },
            };
            let mined = rng.gen_range(0..10_000);
            let orphaned = i > 0 && rng.gen_bool(0.15);
            let final_at = (!orphaned).then(|| mined + rng.gen_range(1_000..3_000));
            deposits.push(Deposit { att, final_at });
        }

        // Peg-outs, each to its own script; some dust, some orphaned (never final), some
        // reorged out past finality after they were certified.
        let count = match n {
            0..=7 => rng.gen_range(1..=5),
            8..=16 => rng.gen_range(1..=3),
            _ => 2,
        };
        let mut burns = Vec::new();
        for i in 0..count {
            let chain = CHAINS[rng.gen_range(0..CHAINS.len())];
            let dust = rng.gen_bool(0.1);
            let amount = if dust { rng.gen_range(500..2_200) } else { rng.gen_range(20_000..3_000_000) };
            let mut script = vec![0x00, 0x14];
            script.extend(rng.r#gen::<[u8; 20]>());
            let att = Attestation {
                event: EventId::new(ChainId(chain), TxHash(rng.r#gen()), rng.gen_range(0..4)),
                kind: AttestationKind::PegOut { nonce: i, amount: Sats(amount), script_pubkey: script },
            };
            let mined = rng.gen_range(0..10_000);
            let orphaned = rng.gen_bool(0.1);
            let final_at = (!orphaned).then(|| mined + rng.gen_range(1_000..3_000));
            let reorg_after = (!dust && rng.gen_bool(0.15)).then(|| rng.gen_range(50..900));
            burns.push(Burn { deposit: Deposit { att, final_at }, dust, reorg_after });
        }
        // The vault: funds from before, and every final deposit once final.
        let mut btc = bitcoin::Chain::new(bitcoin::policy(vault.clone()), output_key);
        for _ in 0..rng.gen_range(1..=3) {
            let outpoint = OutPoint { txid: Txid::from_byte_array(rng.r#gen()), vout: rng.gen_range(0..3) };
            btc.fund(outpoint, rng.gen_range(3_000_000..20_000_000));
        }
        let fee_estimate = rng.gen_range(1..=12);

        // The bus.
        let faulty = rng.gen_bool(0.8);
        let heal_at = if faulty { rng.gen_range(4_000..20_000) } else { 0 };
        let drop_p = if faulty { rng.gen_range(0.0..0.25) } else { 0.0 };
        let dup_p = if faulty { rng.gen_range(0.0..0.1) } else { 0.0 };
        let groups = (faulty && rng.gen_bool(0.4)).then(|| (0..n).map(|_| rng.gen_range(0..2u8)).collect::<Vec<_>>());

        let nodes = (0..n)
            .map(|i| {
                let share = shares.get(&Identifier::try_from(i + 1).expect("nonzero")).expect("a share each").clone();
                let keys =
                    Keys { key_package: KeyPackage::try_from(share).expect("key package"), public: public.clone() };
                let id = tr::Identifier::try_from(i + 1).expect("nonzero");
                let btc_share = btc_shares.get(&id).expect("a share each").clone();
                let btc_keys = Keys {
                    key_package: tr::keys::KeyPackage::try_from(btc_share).expect("key package"),
                    public: btc_public.clone(),
                };
                Validator::new(
                    i,
                    n,
                    setup.seed,
                    setup.canary,
                    keys,
                    btc_keys,
                    crypto.clone(),
                    bridges.clone(),
                    vault.clone(),
                )
            })
            .collect();
        let chains = CHAINS.iter().map(|c| (*c, Bridge::new(*c, bridge_address(*c), px, py, 1_500))).collect();
        let payees: Vec<Attestation> = burns.iter().map(|b| b.deposit.att.clone()).collect();
        let checker = Checker::new(
            n,
            byzantine.keys().copied().collect(),
            crypto.clone(),
            &deposits,
            &payees,
            btc.policy.clone(),
            fee_estimate,
        );
        let last_final = deposits.iter().chain(burns.iter().map(|b| &b.deposit)).filter_map(|d| d.final_at).max();
        let last_final = last_final.unwrap_or(0);
        let mut w = World {
            rng,
            n,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            byzantine,
            deposits,
            burns,
            btc,
            fee_estimate,
            reorged: BTreeSet::new(),
            reorg_scheduled: BTreeSet::new(),
            bridges: chains,
            checker,
            crypto,
            heal_at,
            drop_p,
            dup_p,
            groups,
            told: vec![BTreeSet::new(); usize::from(n)],
            pool: Vec::new(),
            trace: Sha256::new(),
            debug: std::env::var_os("SIM_DEBUG").is_some(),
            report: Report { seed: setup.seed, n, byzantine: byz_count, ..Report::default() },
            end: 0,
        };
        for v in 0..n {
            w.nodes[usize::from(v)].boot(0);
            w.tell_bitcoin(v, 0);
            let phase = w.rng.gen_range(0..TICK_MS);
            w.at(phase, Ev::Tick { node: v });
        }
        w.at(BLOCK_MS, Ev::Block);
        // Observations: each validator's adapters report a final deposit at their own
        // time; an honest one sometimes misses it (its RPC is down) until asked to look
        // again or until the faults heal.
        let items: Vec<(Item, Option<Millis>)> = (w.deposits.iter().enumerate())
            .map(|(i, d)| (Item::Deposit(i), d.final_at))
            .chain(w.burns.iter().enumerate().map(|(i, b)| (Item::Burn(i), b.deposit.final_at)))
            .collect();
        for (item, final_at) in items {
            let Some(final_at) = final_at else { continue };
            if let Item::Deposit(deposit) = item {
                w.at(final_at, Ev::Fund { deposit });
            }
            for v in 0..n {
                let at = if !w.byzantine.contains_key(&v) && w.rng.gen_bool(0.1) {
                    final_at.max(heal_at) + w.rng.gen_range(5_000..15_000)
                } else {
                    final_at + w.rng.gen_range(0..1_500)
                };
                w.at(at, Ev::Observe { node: v, item });
            }
        }
        // Crashes of honest validators.
        let mut last_fault = heal_at;
        for _ in 0..w.rng.gen_range(0..=2) {
            let node = honest[w.rng.gen_range(0..honest.len())];
            let at = w.rng.gen_range(0..15_000);
            let back = at + w.rng.gen_range(300..8_000);
            let at_persist = w.rng.gen_bool(0.5);
            w.at(at, Ev::Crash { node, at_persist });
            w.at(back, Ev::Restart { node });
            last_fault = last_fault.max(back);
        }
        for &b in w.byzantine.clone().keys() {
            let at = w.rng.gen_range(0..1_000);
            w.at(at, Ev::Attack { node: b });
        }
        w.end = last_fault.max(last_final.max(heal_at) + 15_000) + SETTLE_MS;
        w
    }

    fn at(&mut self, at: Millis, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    fn trace(&mut self, tag: u8, a: u64, b: &[u8]) {
        self.trace.update([tag]);
        self.trace.update(self.now.to_be_bytes());
        self.trace.update(a.to_be_bytes());
        self.trace.update((b.len() as u64).to_be_bytes());
        self.trace.update(b);
    }

    fn step(&mut self, ev: Ev) {
        self.report.steps += 1;
        let now = self.now;
        let touched: Vec<u16> = match ev {
            Ev::Deliver { to, from, wire } => {
                self.trace(1, u64::from(to) << 16 | u64::from(from), wire.bytes());
                self.report.delivered += 1;
                if self.byzantine.contains_key(&to) && self.pool.len() < 512 {
                    self.pool.push(wire.clone());
                }
                if self.nodes[usize::from(to)].receive(from, wire, now).is_err() {
                    self.report.undecodable += 1;
                }
                vec![to]
            }
            Ev::Tick { node } => {
                self.trace(2, u64::from(node), &[]);
                self.at(now + TICK_MS, Ev::Tick { node });
                if self.nodes[usize::from(node)].is_up() {
                    self.tell_consumed(node);
                    self.nodes[usize::from(node)].tick(now);
                }
                vec![node]
            }
            Ev::Observe { node, item } => {
                let (att, tag) = match item {
                    Item::Deposit(i) => (self.deposits[i].att.clone(), i as u64),
                    Item::Burn(i) => (self.burns[i].deposit.att.clone(), 1 << 32 | i as u64),
                };
                self.trace(3, u64::from(node), &tag.to_be_bytes());
                if self.nodes[usize::from(node)].is_up() {
                    self.checker.fed(node, &att);
                    self.nodes[usize::from(node)].observe(vec![att], now);
                }
                vec![node]
            }
            Ev::Crash { node, at_persist } => {
                self.trace(4, u64::from(node), &[u8::from(at_persist)]);
                let v = &mut self.nodes[usize::from(node)];
                if v.is_up() {
                    if at_persist {
                        v.crash_at_persist = true;
                    } else {
                        v.crash();
                    }
                    self.report.crashes += 1;
                }
                vec![node]
            }
            Ev::Restart { node } => {
                self.trace(5, u64::from(node), &[]);
                let v = &mut self.nodes[usize::from(node)];
                v.crash_at_persist = false;
                if !v.is_up() {
                    v.boot(now);
                    // The adapters rescan from their checkpoint: every deposit and burn
                    // final by now is reported again, and the vault's state at depth.
                    let finals: Vec<Attestation> = self
                        .deposits
                        .iter()
                        .chain(self.burns.iter().map(|b| &b.deposit))
                        .filter(|d| d.final_at.is_some_and(|f| f <= now))
                        .map(|d| d.att.clone())
                        .collect();
                    for a in &finals {
                        self.checker.fed(node, a);
                    }
                    if !finals.is_empty() {
                        self.nodes[usize::from(node)].observe(finals, now);
                    }
                    self.tell_bitcoin(node, now);
                }
                vec![node]
            }
            Ev::Relay { node, proposal, signature } => {
                self.trace(6, u64::from(node), &proposal.encode());
                let silent = self.byzantine.get(&node).is_some_and(|b| b.silent);
                if self.nodes[usize::from(node)].is_up() && !silent {
                    self.relay(node, &proposal, &signature);
                }
                vec![node]
            }
            Ev::Checked { node, txid, verdict } => {
                self.trace(11, u64::from(node), txid.as_byte_array());
                if self.nodes[usize::from(node)].is_up() {
                    self.nodes[usize::from(node)].bitcoin(RInput::Checked { txid, verdict: Ok(verdict) }, now);
                }
                vec![node]
            }
            Ev::Attack { node } => {
                self.trace(7, u64::from(node), &[]);
                self.attack(node);
                let next = now + self.rng.gen_range(300..1_500);
                self.at(next, Ev::Attack { node });
                vec![node]
            }
            Ev::Block => {
                self.at(now + BLOCK_MS, Ev::Block);
                // While the faults last, the blocks not yet at depth are now and then
                // reorged out, one or more at once (their transactions back to the
                // mempool, or forgotten by it).
                if now < self.heal_at && self.rng.gen_bool(0.15) {
                    let lose = self.rng.gen_bool(0.5);
                    let blocks = self.rng.gen_range(1..crate::bitcoin::DEPTH);
                    let taken = self.btc.reorg(blocks, lose);
                    if taken > 0 {
                        self.trace(9, 0, &[u8::from(lose), taken as u8]);
                        self.report.btc_reorgs += 1;
                        return;
                    }
                }
                let deep = self.btc.mine();
                self.trace(9, 1, &(deep.len() as u64).to_be_bytes());
                for tx in &deep {
                    self.trace(10, 0, tx.compute_txid().as_byte_array());
                    let fee = self.btc.fees.get(&tx.compute_txid()).copied().unwrap_or(0);
                    self.checker.spent(tx, fee, now);
                    if self.checker.violations.is_empty() {
                        self.report.releases += 1;
                    }
                }
                let utxos = self.btc.utxos_at_depth();
                let vault = self.btc.policy.vault_script.clone();
                let up: Vec<u16> = (0..self.n).filter(|v| self.nodes[usize::from(*v)].is_up()).collect();
                for &v in &up {
                    let node = &mut self.nodes[usize::from(v)];
                    node.bitcoin(RInput::Utxos(utxos.clone()), now);
                    for tx in &deep {
                        node.bitcoin(RInput::VaultSpend(Spend::of(tx, &vault)), now);
                    }
                }
                up
            }
            Ev::Fund { deposit } => {
                let e = self.deposits[deposit].att.event;
                let amount = match &self.deposits[deposit].att.kind {
                    AttestationKind::PegIn { amount, .. } => amount.0,
                    _ => 0,
                };
                self.trace(11, deposit as u64, &[]);
                self.btc.fund(OutPoint { txid: Txid::from_byte_array(e.tx.0), vout: e.index }, amount);
                Vec::new()
            }
            Ev::BurnReorged { burn } => {
                let e = self.burns[burn].deposit.att.event;
                self.trace(12, burn as u64, &[]);
                self.reorged.insert(e);
                let up: Vec<u16> = (0..self.n).filter(|v| self.nodes[usize::from(*v)].is_up()).collect();
                for &v in &up {
                    self.checker.told_reorg(v, e);
                    self.nodes[usize::from(v)].bitcoin(RInput::Reorged(e), now);
                }
                up
            }
        };
        for node in touched {
            self.drain(node);
        }
    }

    /// What a validator's Bitcoin adapter reports when it starts: the fee estimate, the
    /// vault's UTXOs and spends at depth, and the peg-outs reorged past finality.
    fn tell_bitcoin(&mut self, node: u16, now: Millis) {
        let utxos = self.btc.utxos_at_depth();
        let spends = self.btc.spends_at_depth();
        let vault = self.btc.policy.vault_script.clone();
        let reorged: Vec<EventId> = self.reorged.iter().copied().collect();
        for e in &reorged {
            self.checker.told_reorg(node, *e);
        }
        let v = &mut self.nodes[usize::from(node)];
        if !v.is_up() {
            return;
        }
        v.bitcoin(RInput::FeeEstimate(self.fee_estimate), now);
        v.bitcoin(RInput::Utxos(utxos), now);
        for tx in spends {
            v.bitcoin(RInput::VaultSpend(Spend::of(&tx, &vault)), now);
        }
        for e in reorged {
            v.bitcoin(RInput::Reorged(e), now);
        }
        v.bitcoin(RInput::Synced(true), now);
    }

    /// Carries out what a validator asked for and hands its notes to the checker.
    fn drain(&mut self, node: u16) {
        let v = &mut self.nodes[usize::from(node)];
        let notes = std::mem::take(&mut v.notes);
        let effects = std::mem::take(&mut v.effects);
        if !self.byzantine.contains_key(&node) {
            for (life, note) in &notes {
                self.checker.note(node, *life, note, self.now);
                // A burn to be reorged out past finality goes soon after it is first
                // certified (before the batch wait ends, so that a release could pay it).
                if let node::Note::Certified { attestation, .. } = note
                    && let Some(burn) = self.burns.iter().position(|b| b.deposit.att.event == attestation.event)
                    && let Some(after) = self.burns[burn].reorg_after
                    && self.reorg_scheduled.insert(burn)
                {
                    self.at(self.now + after, Ev::BurnReorged { burn });
                }
            }
        }
        for effect in effects {
            match effect {
                Effect::Send { to, wire } => self.send(node, to, wire),
                Effect::Broadcast(wire) => {
                    for to in 0..self.n {
                        if to != node {
                            self.send(node, to, wire.clone());
                        }
                    }
                }
                Effect::Relay { at, proposal, signature } => self.at(at, Ev::Relay { node, proposal, signature }),
                Effect::Reobserve(event) => {
                    let deposit = self.deposits.iter().position(|d| d.att.event == event && d.final_at.is_some());
                    let burn =
                        self.burns.iter().position(|b| b.deposit.att.event == event && b.deposit.final_at.is_some());
                    let due = match (deposit, burn) {
                        (Some(i), _) => Some((Item::Deposit(i), self.deposits[i].final_at)),
                        (None, Some(i)) => Some((Item::Burn(i), self.burns[i].deposit.final_at)),
                        (None, None) => None,
                    };
                    if let Some((item, final_at)) = due {
                        let at = self.now.max(final_at.unwrap_or(0)) + 200;
                        self.at(at, Ev::Observe { node, item });
                    }
                }
                Effect::BtcCheck(p) => {
                    // As the node's driver: the release, then each payout alone to
                    // tell which one the policy blames.
                    let verdict = match self.btc.test_accept(&p.tx) {
                        Ok(()) => btcfi_release::book::Verdict::Passes,
                        Err(why) => {
                            let blamed = (0..p.payouts.len())
                                .filter_map(|i| {
                                    let probe = btcfi_release::payout_probe(&p, i, &self.btc.policy)?;
                                    let why = self.btc.test_accept(&probe).err()?;
                                    Some((*p.payouts.get(i)?, format!("{why:?}")))
                                })
                                .collect();
                            btcfi_release::book::Verdict::Refused { reason: format!("{why:?}"), blamed }
                        }
                    };
                    let at = self.now + 30;
                    self.at(at, Ev::Checked { node, txid: p.txid(), verdict });
                }
                Effect::BtcBroadcast(tx) => {
                    if !self.byzantine.get(&node).is_some_and(|b| b.silent) {
                        let result = self.btc.submit(&tx);
                        if self.debug {
                            eprintln!("t={} v{node} broadcasts {}: {result:?}", self.now, tx.compute_txid());
                        }
                    }
                }
            }
        }
    }

    fn send(&mut self, from: u16, to: u16, wire: Wire) {
        let mut wire = wire;
        if let Some(b) = self.byzantine.get(&from).copied() {
            if b.silent || (b.withhold_signing && matches!(wire, Wire::Signing(_) | Wire::BtcSigning(_))) {
                return;
            }
            if b.bad_shares
                && let Some(bad) = self.corrupt_share(&wire)
            {
                wire = bad;
            }
        }
        let faulty = self.now < self.heal_at;
        if faulty {
            let split = self.groups.as_ref().is_some_and(|g| g[usize::from(from)] != g[usize::from(to)]);
            if split || self.rng.gen_bool(self.drop_p) {
                self.report.dropped += 1;
                return;
            }
        }
        let delay =
            if faulty && self.rng.gen_bool(0.05) { self.rng.gen_range(500..3_000) } else { self.rng.gen_range(1..120) };
        if faulty && self.rng.gen_bool(self.dup_p) {
            let again = self.now + delay + self.rng.gen_range(1..2_000);
            self.at(again, Ev::Deliver { to, from, wire: wire.clone() });
        }
        self.at(self.now + delay, Ev::Deliver { to, from, wire });
    }

    /// Tells `node` of the mints that are final on their bridges.
    fn tell_consumed(&mut self, node: u16) {
        let now = self.now;
        let mut fresh = Vec::new();
        for b in self.bridges.values() {
            for m in b.consumed.values() {
                if b.consumed_final(&m.event, now) && !self.told[usize::from(node)].contains(&m.event) {
                    fresh.push(m.event);
                }
            }
        }
        for e in fresh {
            self.told[usize::from(node)].insert(e);
            self.nodes[usize::from(node)].consumed(e, now);
        }
    }

    fn relay(&mut self, node: u16, proposal: &BatchProposal, signature: &EvmSignature) {
        let Some(bridge) = self.bridges.get_mut(&proposal.chain) else { return };
        if proposal.leaves.iter().all(|l| bridge.is_consumed(&l.event)) {
            return;
        }
        let before: BTreeSet<[u8; 32]> = bridge.consumed.keys().copied().collect();
        let result = bridge.submit(proposal, signature, node, self.now);
        let chain = proposal.chain;
        match result {
            Ok(_) => {
                let fresh: Vec<chain::Minted> =
                    bridge.consumed.iter().filter(|(k, _)| !before.contains(*k)).map(|(_, m)| *m).collect();
                for m in fresh {
                    self.trace(8, chain, &m.event.to_bytes());
                    self.report.minted += 1;
                    self.checker.minted(&m, chain);
                }
            }
            Err(_) => self.report.reverts += 1,
        }
    }

    fn finish(mut self) -> Report {
        let finals: Vec<&Deposit> = self.deposits.iter().filter(|d| d.final_at.is_some()).collect();
        self.report.deposits = self.deposits.len();
        self.report.final_deposits = finals.len();
        self.report.sim_ms = self.now;
        let missing_events: Vec<EventId> = finals
            .iter()
            .filter(|d| {
                let r = btcfi_mint::MintRequest::of(&d.att);
                !r.is_some_and(|r| self.bridges.get(&r.chain).is_some_and(|b| b.is_consumed(&d.att.event)))
            })
            .map(|d| d.att.event)
            .collect();
        let missing: Vec<String> = missing_events.iter().map(ToString::to_string).collect();
        let deposited: u64 =
            finals.iter().filter_map(|d| btcfi_mint::MintRequest::of(&d.att)).map(|r| r.leaf.amount.0).sum();
        let minted: u64 = self.bridges.values().flat_map(|b| b.consumed.values()).map(|m| m.amount).sum();
        if minted > deposited {
            self.checker.violations.push(format!("minted {minted} sat, more than the {deposited} deposited"));
        }
        // Every final, payable peg-out not reorged away is paid.
        let payable: Vec<EventId> = self
            .burns
            .iter()
            .filter(|b| !b.dust && b.deposit.final_at.is_some() && !self.reorged.contains(&b.deposit.att.event))
            .map(|b| b.deposit.att.event)
            .collect();
        let unpaid: Vec<EventId> = payable.iter().filter(|e| !self.checker.paid.contains(e)).copied().collect();
        self.report.burns = self.burns.len();
        self.report.payable_burns = payable.len();
        self.report.paid = self.checker.paid.len();
        self.report.vault_fees = self.checker.vault_fees;
        self.report.btc_refused = self.btc.refused;
        self.report.btc_replaced = self.btc.replaced;
        let mut missing = missing;
        let mut missing_events = missing_events;
        missing.extend(unpaid.iter().map(|e| format!("peg-out {e}")));
        missing_events.extend(unpaid.iter().copied());
        if self.checker.violations.is_empty() && !missing.is_empty() {
            let nodes: Vec<String> = self
                .nodes
                .iter()
                .map(|v| {
                    let role = if self.byzantine.contains_key(&v.id) { " (byzantine)" } else { "" };
                    format!("{}{role}", v.describe(&missing_events))
                })
                .collect();
            self.report.liveness = Some(format!(
                "{} of {} final deposits and payable peg-outs not minted or paid {} ms after the faults healed: {}\n{}",
                missing.len(),
                finals.len() + payable.len(),
                SETTLE_MS,
                missing.join(", "),
                nodes.join("\n")
            ));
        }
        self.report.violations = std::mem::take(&mut self.checker.violations);
        self.report.certifications = self.checker.certifications;
        self.report.signatures = self.checker.signatures;
        self.report.culprits = self.checker.culprits;
        self.report.evidence = self.checker.evidence;
        self.trace.update(self.report.minted.to_be_bytes());
        self.trace.update((self.report.paid as u64).to_be_bytes());
        self.report.trace = hex::encode(self.trace.finalize());
        self.report
    }
}
