//! A whole bridge network in one process, deterministic from a seed.
//!
//! n validators, each with the real consensus core (`btcfi-consensus`), the real mint
//! book (`btcfi-mint`) and real FROST signing sessions (`btcfi-signer`) over a
//! trusted-dealer `evm` key, talk over a simulated bus. Below them: Bitcoin deposits
//! that become final at their own times (some orphaned by a reorg shallower than
//! finality, so never final), and one bridge contract per EVM chain that consumes each
//! event id once and verifies the group signature with the contract's equation.
//!
//! Faults, all drawn from the seed:
//! - the bus drops, delays (so reorders) and duplicates messages, and partitions the
//!   set into groups, until the faults heal;
//! - honest validators crash at any point (also right after a durable write, before
//!   what follows it) and restart from what they persisted;
//! - up to f Byzantine validators equivocate, vote for orphaned and invented deposits,
//!   propose batches of fake or inflated mints, send bad signature shares, withhold
//!   their signing messages or everything, replay what they received and spam garbage.
//!
//! Checked after every step ([`check::Checker`]): no two certified digests for one
//! event; every certificate holds q valid signatures (q computed by the checker);
//! nothing certified that the node did not observe; no nonce commitment issued twice;
//! nothing signed that the signer did not certify; every mint a real deposit, exactly
//! its recipient and amount, at most once; evidence and culprits name only Byzantine
//! validators. Liveness: once the faults heal, every final deposit is minted within
//! [`SETTLE_MS`].
//!
//! [`run`] returns a [`Report`] with a trace hash over every step: one seed run twice
//! gives the same hash.

pub mod chain;
pub mod check;
pub mod node;

use alloy::primitives::Address;
use btcfi_consensus::{InsecureTestCrypto, Message as CMessage, ValidatorIndex, Vote, max_faulty, quorum};
use btcfi_mint::BatchProposal;
use btcfi_signer::evm::{EvmSignature, group_key_xy};
use btcfi_signer::frost_secp256k1::{
    Identifier,
    keys::{IdentifierList, KeyPackage, generate_with_dealer},
};
use btcfi_signer::session::Message as SMessage;
use btcfi_types::{Attestation, AttestationKind, ChainId, EventId, EvmAddress, Sats, TxHash};
use chain::{Bridge, Deposit};
use check::Checker;
use node::{Effect, Keys, Suite, Validator, Wire};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};

pub type Millis = u64;

/// How long after the faults heal every final deposit must be minted.
pub const SETTLE_MS: Millis = 90_000;
const TICK_MS: Millis = 250;
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
}

impl Canary {
    pub const ALL: [Canary; 3] = [Canary::QuorumOneBelow, Canary::NoOwnObservation, Canary::NonceReuseAfterRestart];
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
}

#[derive(Debug)]
enum Ev {
    Deliver { to: u16, from: u16, wire: Wire },
    Tick { node: u16 },
    Observe { node: u16, deposit: usize },
    Crash { node: u16, at_persist: bool },
    Restart { node: u16 },
    Relay { node: u16, proposal: BatchProposal, signature: EvmSignature },
    Attack { node: u16 },
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
        let ids: BTreeMap<Identifier, u16> =
            (0..n).map(|i| (Identifier::try_from(i + 1).expect("nonzero"), i)).collect();
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
                Validator::new(i, n, setup.seed, setup.canary, keys, crypto.clone(), bridges.clone(), ids.clone())
            })
            .collect();
        let chains = CHAINS.iter().map(|c| (*c, Bridge::new(*c, bridge_address(*c), px, py, 1_500))).collect();
        let checker = Checker::new(n, byzantine.keys().copied().collect(), crypto.clone(), &deposits);
        let last_final = deposits.iter().filter_map(|d| d.final_at).max().unwrap_or(0);
        let mut w = World {
            rng,
            n,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            byzantine,
            deposits,
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
            report: Report { seed: setup.seed, n, byzantine: byz_count, ..Report::default() },
            end: 0,
        };
        for v in 0..n {
            w.nodes[usize::from(v)].boot(0);
            let phase = w.rng.gen_range(0..TICK_MS);
            w.at(phase, Ev::Tick { node: v });
        }
        // Observations: each validator's adapters report a final deposit at their own
        // time; an honest one sometimes misses it (its RPC is down) until asked to look
        // again or until the faults heal.
        for (i, d) in w.deposits.clone().iter().enumerate() {
            let Some(final_at) = d.final_at else { continue };
            for v in 0..n {
                let at = if !w.byzantine.contains_key(&v) && w.rng.gen_bool(0.1) {
                    final_at.max(heal_at) + w.rng.gen_range(5_000..15_000)
                } else {
                    final_at + w.rng.gen_range(0..1_500)
                };
                w.at(at, Ev::Observe { node: v, deposit: i });
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
        let touched = match ev {
            Ev::Deliver { to, from, wire } => {
                self.trace(1, u64::from(to) << 16 | u64::from(from), wire.bytes());
                self.report.delivered += 1;
                if self.byzantine.contains_key(&to) && self.pool.len() < 512 {
                    self.pool.push(wire.clone());
                }
                if self.nodes[usize::from(to)].receive(from, wire, now).is_err() {
                    self.report.undecodable += 1;
                }
                to
            }
            Ev::Tick { node } => {
                self.trace(2, u64::from(node), &[]);
                self.at(now + TICK_MS, Ev::Tick { node });
                if self.nodes[usize::from(node)].is_up() {
                    self.tell_consumed(node);
                    self.nodes[usize::from(node)].tick(now);
                }
                node
            }
            Ev::Observe { node, deposit } => {
                self.trace(3, u64::from(node), &(deposit as u64).to_be_bytes());
                let att = self.deposits[deposit].att.clone();
                if self.nodes[usize::from(node)].is_up() {
                    self.checker.fed(node, &att);
                    self.nodes[usize::from(node)].observe(vec![att], now);
                }
                node
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
                node
            }
            Ev::Restart { node } => {
                self.trace(5, u64::from(node), &[]);
                let v = &mut self.nodes[usize::from(node)];
                v.crash_at_persist = false;
                if !v.is_up() {
                    v.boot(now);
                    // The adapters rescan from their checkpoint: every deposit final by
                    // now is reported again.
                    let finals: Vec<Attestation> = self
                        .deposits
                        .iter()
                        .filter(|d| d.final_at.is_some_and(|f| f <= now))
                        .map(|d| d.att.clone())
                        .collect();
                    for a in &finals {
                        self.checker.fed(node, a);
                    }
                    if !finals.is_empty() {
                        self.nodes[usize::from(node)].observe(finals, now);
                    }
                }
                node
            }
            Ev::Relay { node, proposal, signature } => {
                self.trace(6, u64::from(node), &proposal.encode());
                let silent = self.byzantine.get(&node).is_some_and(|b| b.silent);
                if self.nodes[usize::from(node)].is_up() && !silent {
                    self.relay(node, &proposal, &signature);
                }
                node
            }
            Ev::Attack { node } => {
                self.trace(7, u64::from(node), &[]);
                self.attack(node);
                let next = now + self.rng.gen_range(300..1_500);
                self.at(next, Ev::Attack { node });
                node
            }
        };
        self.drain(touched);
    }

    /// Carries out what a validator asked for and hands its notes to the checker.
    fn drain(&mut self, node: u16) {
        let v = &mut self.nodes[usize::from(node)];
        let notes = std::mem::take(&mut v.notes);
        let effects = std::mem::take(&mut v.effects);
        if !self.byzantine.contains_key(&node) {
            for (life, note) in &notes {
                self.checker.note(node, *life, note, self.now);
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
                    let due = self.deposits.iter().position(|d| d.att.event == event && d.final_at.is_some());
                    if let Some(deposit) = due {
                        let at = self.now.max(self.deposits[deposit].final_at.unwrap_or(0)) + 200;
                        self.at(at, Ev::Observe { node, deposit });
                    }
                }
            }
        }
    }

    fn send(&mut self, from: u16, to: u16, wire: Wire) {
        let mut wire = wire;
        if let Some(b) = self.byzantine.get(&from).copied() {
            if b.silent || (b.withhold_signing && matches!(wire, Wire::Signing(_))) {
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

    fn corrupt_share(&mut self, wire: &Wire) -> Option<Wire> {
        let Wire::Signing(bytes) = wire else { return None };
        let Ok(SMessage::<Suite>::Share { session, attempt, .. }) = SMessage::<Suite>::decode(bytes) else {
            return None;
        };
        let mut scalar = [0u8; 32];
        self.rng.fill(&mut scalar[1..]);
        let share = frost_core::round2::SignatureShare::<Suite>::deserialize(&scalar).ok()?;
        SMessage::<Suite>::Share { session, attempt, share }.encode().ok().map(Wire::Signing)
    }

    fn attack(&mut self, node: u16) {
        let Some(b) = self.byzantine.get(&node).copied() else { return };
        if b.silent {
            return;
        }
        let signer = self.crypto.signer(ValidatorIndex(node));
        let others: Vec<u16> = (0..self.n).filter(|v| *v != node).collect();
        if b.equivocate {
            // Another amount for a real deposit, to some of the validators.
            let d = self.deposits[self.rng.gen_range(0..self.deposits.len())].att.clone();
            let mut alt = d.clone();
            if let AttestationKind::PegIn { amount, .. } = &mut alt.kind {
                *amount = Sats(amount.0 + 1);
            }
            let vote = Vote::sign(node::EPOCH, alt.event, alt.digest(), ValidatorIndex(node), &signer);
            let wire = Wire::Consensus(CMessage::Vote(vote).encode());
            for &to in &others {
                if self.rng.gen_bool(0.5) {
                    self.send(node, to, wire.clone());
                }
            }
        }
        if b.fake_votes {
            // Votes for orphaned deposits and for invented ones.
            let orphan = self.deposits.iter().find(|d| d.final_at.is_none()).map(|d| d.att.clone());
            let invented = Attestation {
                event: EventId::new(ChainId::BITCOIN, TxHash(self.rng.r#gen()), 0),
                kind: AttestationKind::PegIn {
                    dest_chain: ChainId(CHAINS[0]),
                    recipient: EvmAddress([0xee; 20]),
                    amount: Sats(21_000_000),
                },
            };
            for att in orphan.into_iter().chain([invented]) {
                let vote = Vote::sign(node::EPOCH, att.event, att.digest(), ValidatorIndex(node), &signer);
                let wire = Wire::Consensus(CMessage::Vote(vote).encode());
                for &to in &others {
                    self.send(node, to, wire.clone());
                }
            }
        }
        if b.fake_batches {
            // A batch with an orphaned deposit, or a real one inflated.
            let pick = self.deposits[self.rng.gen_range(0..self.deposits.len())].clone();
            let Some(mut request) = btcfi_mint::MintRequest::of(&pick.att) else { return };
            if pick.final_at.is_some() {
                request.leaf.amount = Sats(request.leaf.amount.0 * 2);
            }
            let proposal = BatchProposal::new(request.chain, vec![request.leaf]);
            // It claims the first-ranked proposer's name, to displace honest batches.
            let first = (request.chain % u64::from(self.n)) as u16;
            let wire = Wire::Batch([&first.to_be_bytes()[..], &proposal.encode()].concat());
            for &to in &others {
                self.send(node, to, wire.clone());
            }
        }
        if b.spam && !others.is_empty() {
            let to = others[self.rng.gen_range(0..others.len())];
            let mut junk = vec![0u8; self.rng.gen_range(0..200)];
            self.rng.fill(junk.as_mut_slice());
            let wire = match self.rng.gen_range(0..3) {
                0 => Wire::Consensus(junk),
                1 => Wire::Signing(junk),
                _ => Wire::Batch(junk),
            };
            self.send(node, to, wire);
            if !self.pool.is_empty() {
                let replay = self.pool[self.rng.gen_range(0..self.pool.len())].clone();
                self.send(node, to, replay);
            }
        }
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
                "{} of {} final deposits not minted {} ms after the faults healed: {}\n{}",
                missing.len(),
                finals.len(),
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
        self.report.trace = hex::encode(self.trace.finalize());
        self.report
    }
}
