//! Deterministic simulation of the consensus core: n = 4, 7 and 16 validators in one
//! process, a simulated network driven by a seed.
//!
//! Each seed builds one run: f = floor((n-1)/3) byzantine validators (equivocating,
//! voting random or "alternative" digests, replaying, forging, flooding, sending garbage
//! bytes and fake certificates), honest validators whose adapters see events at random
//! times (some miss an event until asked to re-observe it, some get a wrong amount from a
//! faulty RPC, some events are split or seen by a minority), and a network with random
//! delays (so reordering), drops, duplicates and a partition that heals. One honest node
//! may crash (sometimes between its atomic write and its sends) and restart from its
//! persisted state. Messages travel as encoded bytes through `Message::decode`.
//!
//! Checked on every run:
//! - SAFETY: no two honest nodes certify different digests for one event id; an honest
//!   node never signs two digests for one event (across its restart); every certificate
//!   verifies; evidence only ever names byzantine validators.
//! - LIVENESS: every digest that at least q honest nodes voted for (observed identically)
//!   is certified, by the end, by every honest node that voted for it.
//! - The ordering contract (one `Persist`, first) and the per-peer memory cap.
//!
//! Seeds 0..600 run n = 4, 600..900 n = 7, 900..1020 n = 16 (the n of any seed is
//! `validators_for(seed)`). A failure prints its seed; replay exactly that run with
//!
//! ```text
//! SIM_SEED=<seed> cargo test -p btcfi-consensus --test sim -- --nocapture
//! ```
//!
//! `SIM_SEEDS=<count>` runs more seeds (a longer soak), split across n the same way.

use btcfi_consensus::persist::Change;
use btcfi_consensus::{
    Action, Alert, Certificate, CertificateRequest, CertificateResponse, Config, Consensus, Epoch, Input,
    InsecureTestCrypto, InsecureTestSigner, Message, PersistedState, Signature, ValidatorIndex, ValidatorSignature,
    Vote, VoteSigner, max_faulty, quorum,
};
use btcfi_types::{Attestation, AttestationKind, ChainId, Digest, EventId, EvmAddress, Sats, TxHash};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Instant;

type Core = Consensus<InsecureTestSigner, InsecureTestCrypto>;
type Millis = u64;

const EPOCH: Epoch = Epoch(3);
const DEFAULT_SEEDS: u64 = 1020;
const PEER_CAP: usize = 32;
const TICK_MS: Millis = 200;
const SETTLE_MS: Millis = 25_000;

fn validators_for(seed: u64) -> u16 {
    match seed % DEFAULT_SEEDS {
        0..600 => 4,
        600..900 => 7,
        _ => 16,
    }
}

fn sim_config(n: u16, own: u16) -> Config {
    let mut c = Config::new(EPOCH, n, ValidatorIndex(own));
    c.vote_expiry_ms = 15_000;
    c.max_pending_events_per_peer = PEER_CAP;
    c.reobserve_after_ms = 1_500;
    c.rebroadcast_interval_ms = 500;
    c.rebroadcast_max_interval_ms = 4_000;
    c.catch_up_after_ms = 2_000;
    c
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Deliver { to: u16, from: u16, bytes: Vec<u8> },
    Tick { node: u16 },
    Observe { node: u16, event: usize },
    ByzantineVote { node: u16, event: usize },
    Crash { node: u16 },
    Restart { node: u16 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Clean,
    Faulty,
    Split,
    Minority,
}

#[derive(Debug, Clone)]
enum View {
    /// The adapters report `att` at `at`.
    At {
        at: Millis,
        att: Attestation,
    },
    /// The adapters miss it until asked to re-observe.
    Missed {
        att: Attestation,
    },
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    Silent,
    Canonical,
    Random,
    Alt,
    Equivocate,
}

#[derive(Debug)]
struct Plan {
    kind: Kind,
    canonical: Attestation,
    alt: Attestation,
    views: BTreeMap<u16, View>,
    /// What a node's adapters report after its restart (a faulty RPC may be fixed).
    after_restart: BTreeMap<u16, Attestation>,
    strategies: BTreeMap<u16, Strategy>,
}

#[derive(Debug, Default)]
struct HonestNode {
    core: Option<Core>,
    store: PersistedState,
    /// Events the adapters reported (re-reported after a restart).
    seen: BTreeSet<usize>,
    /// Events whose report fell while the node was down.
    backlog: BTreeSet<usize>,
    restarted: bool,
    crash_armed: bool,
    certified: BTreeMap<EventId, Digest>,
    signed: BTreeMap<EventId, Digest>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Summary {
    seeds: u64,
    events: u64,
    live_events: u64,
    /// Events whose observation >= q honest adapters reported identically (the plan).
    planned_live: u64,
    certifications: u64,
    delivered: u64,
    dropped: u64,
    undecodable: u64,
    equivocations: u64,
    reobserved: u64,
    restarts: u64,
    refused_second_digest: u64,
    network_disagreed: u64,
}

impl Summary {
    fn add(&mut self, o: &Summary) {
        self.seeds += o.seeds;
        self.events += o.events;
        self.live_events += o.live_events;
        self.planned_live += o.planned_live;
        self.certifications += o.certifications;
        self.delivered += o.delivered;
        self.dropped += o.dropped;
        self.undecodable += o.undecodable;
        self.equivocations += o.equivocations;
        self.reobserved += o.reobserved;
        self.restarts += o.restarts;
        self.refused_second_digest += o.refused_second_digest;
        self.network_disagreed += o.network_disagreed;
    }
}

struct Sim {
    seed: u64,
    n: u16,
    q: usize,
    rng: ChaCha8Rng,
    crypto: InsecureTestCrypto,
    now: Millis,
    seq: u64,
    queue: BinaryHeap<Reverse<(Millis, u64, Ev)>>,
    byzantine: BTreeSet<u16>,
    honest: BTreeMap<u16, HonestNode>,
    plans: Vec<Plan>,
    /// Messages byzantine nodes have seen (to replay and to assemble certificates).
    pool: Vec<Vec<u8>>,
    pool_votes: BTreeMap<(EventId, Digest), BTreeMap<ValidatorIndex, Signature>>,
    partition: Option<(Millis, Millis, BTreeMap<u16, u8>)>,
    heal_at: Millis,
    drop_before: f64,
    drop_after: f64,
    end: Millis,
    stats: Summary,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let n = validators_for(seed);
        let f = max_faulty(n);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut ids: Vec<u16> = (0..n).collect();
        ids.shuffle(&mut rng);
        let byzantine: BTreeSet<u16> = ids.iter().take(f).copied().collect();
        let honest_ids: Vec<u16> = ids.iter().skip(f).copied().collect();
        let crypto = InsecureTestCrypto::new(seed, n);

        // Network faults.
        let partition = rng.gen_bool(0.6).then(|| {
            let start = rng.gen_range(0..2_000);
            let end = rng.gen_range(start + 1_000..9_000);
            let groups = rng.gen_range(2..=3u8);
            let assign = (0..n).map(|v| (v, rng.gen_range(0..groups))).collect();
            (start, end, assign)
        });
        let heal_at = partition.as_ref().map_or(0, |p| p.1);
        let drop_before = rng.gen_range(0.0..0.3);
        let drop_after = drop_before / 3.0;

        // Events.
        let mut plans = Vec::new();
        for _ in 0..rng.gen_range(3..=8) {
            plans.push(Self::plan(&mut rng, &honest_ids, &byzantine, f));
        }

        let mut sim = Sim {
            seed,
            n,
            q: quorum(n),
            rng,
            crypto,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            byzantine,
            honest: BTreeMap::new(),
            plans,
            pool: Vec::new(),
            pool_votes: BTreeMap::new(),
            partition,
            heal_at,
            drop_before,
            drop_after,
            end: 0,
            stats: Summary { seeds: 1, ..Summary::default() },
        };
        let mut last = heal_at.max(4_000);
        for &h in &honest_ids {
            let core = Consensus::new(sim_config(n, h), sim.crypto.signer(ValidatorIndex(h)), sim.crypto.clone())
                .expect("valid config");
            sim.honest.insert(h, HonestNode { core: Some(core), ..HonestNode::default() });
        }
        // Maybe one honest crash and restart.
        if sim.rng.gen_bool(0.3) {
            let node = honest_ids[sim.rng.gen_range(0..honest_ids.len())];
            let at = sim.rng.gen_range(0..8_000);
            let back = at + sim.rng.gen_range(200..6_000);
            sim.schedule(at, Ev::Crash { node });
            sim.schedule(back, Ev::Restart { node });
            last = last.max(back);
        }
        sim.end = last + SETTLE_MS;
        for v in 0..n {
            let phase = sim.rng.gen_range(0..TICK_MS);
            sim.schedule(phase, Ev::Tick { node: v });
        }
        for (i, plan) in sim.plans.iter().enumerate() {
            for (&node, view) in &plan.views {
                if let View::At { at, .. } = view {
                    sim.queue.push(Reverse((*at, sim.seq, Ev::Observe { node, event: i })));
                    sim.seq += 1;
                }
            }
        }
        for i in 0..sim.plans.len() {
            for b in sim.byzantine.clone() {
                let at = sim.rng.gen_range(0..4_500);
                sim.schedule(at, Ev::ByzantineVote { node: b, event: i });
            }
        }
        sim
    }

    fn plan(rng: &mut ChaCha8Rng, honest: &[u16], byzantine: &BTreeSet<u16>, f: usize) -> Plan {
        let chains = [ChainId::BITCOIN, ChainId::ETHEREUM, ChainId::POLYGON, ChainId::ARBITRUM];
        let event = EventId::new(chains[rng.gen_range(0..chains.len())], TxHash(rng.r#gen()), rng.gen_range(0..4));
        let amount = rng.gen_range(10_000..1_000_000u64);
        let att = |amount| Attestation {
            event,
            kind: AttestationKind::PegIn {
                dest_chain: ChainId::ETHEREUM,
                recipient: EvmAddress([7; 20]),
                amount: Sats(amount),
            },
        };
        let canonical = att(amount);
        let alt = att(amount + 1);
        let kind = match rng.gen_range(0..100) {
            0..55 => Kind::Clean,
            55..80 => Kind::Faulty,
            80..92 => Kind::Split,
            _ => Kind::Minority,
        };
        let mut order = honest.to_vec();
        order.shuffle(rng);
        let faulty: BTreeSet<u16> = match kind {
            Kind::Faulty => order.iter().take(rng.gen_range(1..=f.max(1))).copied().collect(),
            _ => BTreeSet::new(),
        };
        let minority: BTreeSet<u16> = order.iter().take(rng.gen_range(1..=f.max(1))).copied().collect();
        let mut views = BTreeMap::new();
        let mut after_restart = BTreeMap::new();
        for &h in honest {
            let at = rng.gen_range(0..4_000);
            let view = match kind {
                Kind::Clean | Kind::Faulty if faulty.contains(&h) => View::At { at, att: alt.clone() },
                Kind::Clean | Kind::Faulty if rng.gen_bool(0.1) => View::Missed { att: canonical.clone() },
                Kind::Clean | Kind::Faulty => View::At { at, att: canonical.clone() },
                Kind::Split => View::At { at, att: if rng.gen_bool(0.5) { alt.clone() } else { canonical.clone() } },
                Kind::Minority if minority.contains(&h) => View::At { at, att: canonical.clone() },
                Kind::Minority => View::Never,
            };
            let fixed = faulty.contains(&h) && rng.gen_bool(0.5);
            let later = match &view {
                View::At { att, .. } | View::Missed { att } if !fixed => att.clone(),
                _ => canonical.clone(),
            };
            after_restart.insert(h, later);
            views.insert(h, view);
        }
        let strategies = byzantine
            .iter()
            .map(|&b| {
                let s = match rng.gen_range(0..100) {
                    0..20 => Strategy::Silent,
                    20..45 => Strategy::Canonical,
                    45..60 => Strategy::Random,
                    60..70 => Strategy::Alt,
                    _ => Strategy::Equivocate,
                };
                (b, s)
            })
            .collect();
        Plan { kind, canonical, alt, views, after_restart, strategies }
    }

    fn schedule(&mut self, at: Millis, ev: Ev) {
        self.queue.push(Reverse((at, self.seq, ev)));
        self.seq += 1;
    }

    fn partitioned(&self, a: u16, b: u16) -> bool {
        match &self.partition {
            Some((start, end, groups)) if self.now >= *start && self.now < *end => groups.get(&a) != groups.get(&b),
            _ => false,
        }
    }

    fn send(&mut self, from: u16, to: u16, bytes: Vec<u8>) {
        if from == to {
            return;
        }
        let p = if self.now < self.heal_at { self.drop_before } else { self.drop_after };
        if self.partitioned(from, to) || self.rng.gen_bool(p) {
            self.stats.dropped += 1;
            return;
        }
        let delay = self.rng.gen_range(5..400);
        if self.rng.gen_bool(0.03) {
            let again = self.rng.gen_range(5..3_000);
            self.schedule(self.now + again, Ev::Deliver { to, from, bytes: bytes.clone() });
        }
        self.schedule(self.now + delay, Ev::Deliver { to, from, bytes });
    }

    fn broadcast(&mut self, from: u16, bytes: &[u8]) {
        for to in 0..self.n {
            self.send(from, to, bytes.to_vec());
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!("seed {} (n = {}): {what}", self.seed, self.n)
    }

    // ---- honest nodes --------------------------------------------------------------

    fn step(&mut self, node: u16, input: Input) {
        let now = self.now;
        let Some(core) = self.honest.get_mut(&node).and_then(|h| h.core.as_mut()) else { return };
        let actions = core.handle(input, now);
        let persists = actions.iter().filter(|a| matches!(a, Action::Persist(_))).count();
        if persists > 1 || (persists == 1 && !matches!(actions.first(), Some(Action::Persist(_)))) {
            self.fail(format!("node {node}: Persist not first and unique: {actions:?}"));
        }
        if let Some(Action::Persist(delta)) = actions.first() {
            for change in &delta.changes {
                if let Change::OwnVote(r) = change {
                    self.record_signed(node, &r.vote);
                }
            }
            let h = self.honest.get_mut(&node).expect("honest");
            h.store.apply(delta);
            if h.crash_armed {
                // Killed right after the atomic write: nothing else leaves the node.
                h.crash_armed = false;
                h.core = None;
                return;
            }
        }
        for action in actions {
            self.execute(node, action);
        }
    }

    /// An honest node never signs two digests for one event, across restarts.
    fn record_signed(&mut self, node: u16, vote: &Vote) {
        if vote.validator != ValidatorIndex(node) {
            self.fail(format!("node {node} sent a vote of {}", vote.validator));
        }
        let h = self.honest.get_mut(&node).expect("honest");
        if let Some(prev) = h.signed.insert(vote.event, vote.digest)
            && prev != vote.digest
        {
            self.fail(format!("node {node} signed two digests for {}", vote.event));
        }
    }

    fn execute(&mut self, node: u16, action: Action) {
        match action {
            Action::Persist(_) => {}
            Action::Broadcast(message) => {
                if let Message::Vote(v) = &message {
                    self.record_signed(node, v);
                }
                self.broadcast(node, &message.encode());
            }
            Action::SendTo { to, message } => self.send(node, to.0, message.encode()),
            Action::RequestCertificates(request) => {
                let bytes = Message::CertificateRequest(request).encode();
                let mut peers: Vec<u16> = (0..self.n).filter(|&p| p != node).collect();
                peers.shuffle(&mut self.rng);
                for p in peers.into_iter().take(3) {
                    self.send(node, p, bytes.clone());
                }
            }
            Action::Certified { attestation, certificate } => {
                if certificate.verify(EPOCH, self.n, &self.crypto).is_err()
                    || certificate.digest != attestation.digest()
                {
                    self.fail(format!("node {node} certified with an invalid certificate"));
                }
                if self.honest[&node].signed.get(&attestation.event) != Some(&certificate.digest) {
                    self.fail(format!("node {node} certified a digest it did not vote for"));
                }
                let h = self.honest.get_mut(&node).expect("honest");
                if h.certified.insert(attestation.event, certificate.digest).is_some() {
                    self.fail(format!("node {node} certified {} twice", attestation.event));
                }
                self.stats.certifications += 1;
            }
            Action::Equivocation(e) => {
                if !e.verify(&self.crypto) || !self.byzantine.contains(&e.validator().0) {
                    self.fail(format!("node {node} reported bogus evidence {e:?}"));
                }
                self.stats.equivocations += 1;
            }
            Action::Reobserve { event, .. } => {
                let idx = self.plans.iter().position(|p| p.canonical.event == event);
                if let Some(i) = idx
                    && matches!(self.plans[i].views.get(&node), Some(View::Missed { .. }))
                {
                    let delay = self.rng.gen_range(50..500);
                    self.schedule(self.now + delay, Ev::Observe { node, event: i });
                    self.stats.reobserved += 1;
                }
            }
            Action::Alert(alert) => match alert {
                Alert::ConflictingObservation { .. } => {
                    let h = &self.honest[&node];
                    if !h.restarted {
                        self.fail(format!("node {node}: unexpected {alert:?}"));
                    }
                    self.stats.refused_second_digest += 1;
                }
                Alert::NetworkCertifiedOtherDigest { .. } => self.stats.network_disagreed += 1,
                other => self.fail(format!("node {node}: {other:?}")),
            },
        }
    }

    fn observe(&mut self, node: u16, event: usize) {
        let Some(h) = self.honest.get_mut(&node) else { return };
        if h.core.is_none() {
            h.backlog.insert(event);
            return;
        }
        h.seen.insert(event);
        let plan = &self.plans[event];
        let att = if h.restarted {
            plan.after_restart[&node].clone()
        } else {
            match &plan.views[&node] {
                View::At { att, .. } | View::Missed { att } => att.clone(),
                View::Never => return,
            }
        };
        self.step(node, Input::Observed(att));
    }

    fn crash(&mut self, node: u16) {
        let h = self.honest.get_mut(&node).expect("honest");
        if h.core.is_none() {
            return;
        }
        if self.rng.gen_bool(0.5) {
            h.crash_armed = true; // dies right after its next write
        } else {
            h.core = None;
        }
    }

    fn restart(&mut self, node: u16) {
        let n = self.n;
        let crypto = self.crypto.clone();
        let h = self.honest.get_mut(&node).expect("honest");
        h.crash_armed = false;
        let core = Consensus::restore(sim_config(n, node), crypto.signer(ValidatorIndex(node)), crypto, &h.store)
            .unwrap_or_else(|e| panic!("restore failed: {e}"));
        h.core = Some(core);
        h.restarted = true;
        self.stats.restarts += 1;
        // Adapters backfill from their cursor: every event reported before, and those
        // that fell while the node was down.
        let mut again: Vec<usize> = h.seen.iter().chain(h.backlog.iter()).copied().collect();
        again.sort_unstable();
        again.dedup();
        h.backlog.clear();
        for event in again {
            self.observe(node, event);
        }
    }

    // ---- byzantine nodes ------------------------------------------------------------

    fn byz_sign(&self, b: u16, event: EventId, digest: Digest) -> Vote {
        Vote::sign(EPOCH, event, digest, ValidatorIndex(b), &self.crypto.signer(ValidatorIndex(b)))
    }

    fn honest_ids(&self) -> Vec<u16> {
        self.honest.keys().copied().collect()
    }

    fn byzantine_vote(&mut self, b: u16, i: usize) {
        let strategy = self.plans[i].strategies[&b];
        let (event, canonical, alt) =
            (self.plans[i].canonical.event, self.plans[i].canonical.digest(), self.plans[i].alt.digest());
        for to in self.honest_ids() {
            let digest = match strategy {
                Strategy::Silent => return,
                Strategy::Canonical => canonical,
                Strategy::Alt => alt,
                Strategy::Random => Digest(self.rng.r#gen()),
                Strategy::Equivocate => {
                    if self.rng.gen_bool(0.5) {
                        canonical
                    } else {
                        alt
                    }
                }
            };
            let vote = self.byz_sign(b, event, digest);
            self.send(b, to, vote.encode());
        }
        // Byzantine nodes "rebroadcast" too, choosing again.
        if self.now < self.end - SETTLE_MS / 2 {
            let again = self.rng.gen_range(1_000..4_000);
            self.schedule(self.now + again, Ev::ByzantineVote { node: b, event: i });
        }
    }

    fn byzantine_receive(&mut self, b: u16, from: u16, bytes: Vec<u8>) {
        let Ok(message) = Message::decode(&bytes) else { return };
        match &message {
            Message::Vote(v) => {
                self.pool_votes.entry((v.event, v.digest)).or_default().insert(v.validator, v.signature.clone());
            }
            Message::Votes(batch) => {
                for v in batch.votes() {
                    self.pool_votes.entry((v.event, v.digest)).or_default().insert(v.validator, v.signature.clone());
                }
            }
            Message::Certificate(c) => self.pool_certificate(c),
            Message::Certificates(all) => {
                for c in all {
                    self.pool_certificate(c);
                }
            }
            Message::CertificateResponse(r) => {
                for c in &r.certificates {
                    self.pool_certificate(c);
                }
            }
            Message::CertificateRequest(r) => {
                // Answer with fake certificates for random or alternative digests.
                if self.rng.gen_bool(0.5) {
                    let mut certificates = Vec::new();
                    for event in r.events.clone() {
                        let plan = self.plans.iter().find(|p| p.canonical.event == event);
                        let digest = match plan {
                            Some(p) if self.rng.gen_bool(0.5) => p.alt.digest(),
                            _ => Digest(self.rng.r#gen()),
                        };
                        certificates.push(self.fake_certificate(event, digest));
                    }
                    let response = Message::CertificateResponse(CertificateResponse { certificates });
                    self.send(b, from, response.encode());
                }
            }
        }
        if self.pool.len() < 2_000 {
            self.pool.push(bytes);
        }
    }

    fn pool_certificate(&mut self, c: &Certificate) {
        for s in &c.signatures {
            self.pool_votes.entry((c.event, c.digest)).or_default().insert(s.validator, s.signature.clone());
        }
    }

    /// All byzantine signatures and every pooled real signature for the digest, one per
    /// validator, plus forged entries; half the time also repeated entries (which every
    /// honest node must refuse whole, before any signature check).
    fn fake_certificate(&mut self, event: EventId, digest: Digest) -> Certificate {
        let mut entries: BTreeMap<ValidatorIndex, Signature> = BTreeMap::new();
        if let Some(real) = self.pool_votes.get(&(event, digest)) {
            for (v, s) in real {
                entries.insert(*v, s.clone());
            }
        }
        for &b in &self.byzantine {
            entries.insert(ValidatorIndex(b), self.byz_sign(b, event, digest).signature);
        }
        let mut signatures: Vec<ValidatorSignature> =
            entries.into_iter().map(|(validator, signature)| ValidatorSignature { validator, signature }).collect();
        if let Some(first) = signatures.first().cloned() {
            // Another validator's signature under honest indices that are not listed yet:
            // invalid, must not count.
            let listed: BTreeSet<ValidatorIndex> = signatures.iter().map(|s| s.validator).collect();
            for h in self.honest_ids().into_iter().map(ValidatorIndex).filter(|h| !listed.contains(h)).take(2) {
                signatures.push(ValidatorSignature { validator: h, signature: first.signature.clone() });
            }
            if self.rng.gen_bool(0.5) {
                // The same entry repeated up to q times, once with other bytes.
                for _ in 0..self.q {
                    signatures.push(first.clone());
                }
                let mut other = first.signature.clone();
                other.0.reverse();
                signatures.push(ValidatorSignature { validator: first.validator, signature: other });
            }
        }
        signatures.shuffle(&mut self.rng);
        Certificate { epoch: EPOCH, event, digest, signatures }
    }

    fn byzantine_tick(&mut self, b: u16) {
        if !self.rng.gen_bool(0.3) {
            return;
        }
        let honest = self.honest_ids();
        let to = honest[self.rng.gen_range(0..honest.len())];
        let i = self.rng.gen_range(0..self.plans.len());
        let (event, alt) = (self.plans[i].canonical.event, self.plans[i].alt.digest());
        match self.rng.gen_range(0..7) {
            0 if !self.pool.is_empty() => {
                let bytes = self.pool[self.rng.gen_range(0..self.pool.len())].clone();
                self.send(b, to, bytes);
            }
            1 => {
                let len = self.rng.gen_range(0..200);
                let mut bytes: Vec<u8> = (0..len).map(|_| self.rng.r#gen()).collect();
                if self.rng.gen_bool(0.5) {
                    // Plausible header, garbage body.
                    bytes.splice(0..0, [self.rng.gen_range(1..=3u8), 1]);
                }
                self.send(b, to, bytes);
            }
            2 => {
                // A vote claiming an honest validator's index.
                let victim = honest[self.rng.gen_range(0..honest.len())];
                let mut vote = self.byz_sign(b, event, alt);
                vote.validator = ValidatorIndex(victim);
                self.send(b, to, vote.encode());
            }
            3 => {
                let mut vote = self.byz_sign(b, event, alt);
                vote.epoch = Epoch(EPOCH.0 + 1);
                vote.signature = self.crypto.signer(ValidatorIndex(b)).sign(&vote.signing_bytes());
                self.send(b, to, vote.encode());
            }
            4 => {
                let digest = if self.rng.gen_bool(0.5) { alt } else { self.plans[i].canonical.digest() };
                let cert = self.fake_certificate(event, digest);
                self.send(b, to, Message::Certificate(cert).encode());
            }
            5 => {
                // Flood votes for invented events (bounded by the per-peer cap).
                for _ in 0..8 {
                    let fake = EventId::new(ChainId::ETHEREUM, TxHash(self.rng.r#gen()), 0);
                    let digest = Digest(self.rng.r#gen());
                    let vote = self.byz_sign(b, fake, digest);
                    self.send(b, to, vote.encode());
                }
            }
            _ => {
                let request = CertificateRequest { epoch: EPOCH, events: vec![event] };
                self.send(b, to, Message::CertificateRequest(request).encode());
            }
        }
    }

    // ---- the run ----------------------------------------------------------------------

    fn run(mut self) -> Summary {
        while let Some(Reverse((at, _, ev))) = self.queue.pop() {
            if at > self.end {
                break;
            }
            self.now = at;
            match ev {
                Ev::Deliver { to, from, bytes } => {
                    if self.byzantine.contains(&to) {
                        self.byzantine_receive(to, from, bytes);
                        continue;
                    }
                    if self.honest.get(&to).is_none_or(|h| h.core.is_none()) {
                        self.stats.dropped += 1;
                        continue;
                    }
                    self.stats.delivered += 1;
                    match Message::decode(&bytes) {
                        Ok(message) => self.step(to, Input::from_message(ValidatorIndex(from), message)),
                        Err(_) => self.stats.undecodable += 1,
                    }
                }
                Ev::Tick { node } => {
                    if self.byzantine.contains(&node) {
                        self.byzantine_tick(node);
                    } else {
                        self.step(node, Input::Tick);
                        if let Some(core) = self.honest.get(&node).and_then(|h| h.core.as_ref()) {
                            let m = core.memory();
                            if m.max_pending_per_peer > PEER_CAP {
                                self.fail(format!("node {node}: pending per peer {m:?} over the cap"));
                            }
                        }
                    }
                    self.schedule(self.now + TICK_MS, Ev::Tick { node });
                }
                Ev::Observe { node, event } => self.observe(node, event),
                Ev::ByzantineVote { node, event } => self.byzantine_vote(node, event),
                Ev::Crash { node } => self.crash(node),
                Ev::Restart { node } => self.restart(node),
            }
        }
        self.check_end();
        self.stats
    }

    fn check_end(&mut self) {
        // SAFETY across honest nodes, from every certification ever announced and from
        // the final (possibly restored) state.
        for plan in &self.plans {
            let event = plan.canonical.event;
            let mut digests = BTreeSet::new();
            for (node, h) in &self.honest {
                let core = h.core.as_ref().unwrap_or_else(|| self.fail(format!("node {node} still down at the end")));
                digests.extend(h.certified.get(&event));
                digests.extend(core.certificate(&event).map(|c| c.digest));
            }
            if digests.len() > 1 {
                self.fail(format!(
                    "SAFETY: honest nodes certified {} digests for {event} ({:?})",
                    digests.len(),
                    plan.kind
                ));
            }
        }
        // LIVENESS from the plan, not from the cores: every observation that at least q
        // honest nodes' adapters report identically (and still report after a restart)
        // is certified by each of them, whether or not their cores voted.
        for plan in &self.plans {
            let event = plan.canonical.event;
            let mut reporting: BTreeMap<Digest, (usize, Vec<u16>)> = BTreeMap::new();
            for (node, h) in &self.honest {
                let (att, prompt) = match &plan.views[node] {
                    View::At { att, .. } => (att, true),
                    View::Missed { att } => (att, false),
                    View::Never => continue,
                };
                if h.restarted && plan.after_restart[node] != *att {
                    continue;
                }
                let e = reporting.entry(att.digest()).or_default();
                e.0 += usize::from(prompt);
                e.1.push(*node);
            }
            for (digest, (prompt, nodes)) in reporting {
                if prompt < self.q {
                    continue;
                }
                self.stats.planned_live += 1;
                self.expect_certified(event, digest, &nodes, |node| {
                    format!(
                        "node {node}'s adapters reported {digest} for {event} ({:?}), as did >= q honest nodes'",
                        plan.kind
                    )
                });
            }
        }
        // And a digest voted by >= q honest nodes is certified by each of them.
        for plan in &self.plans {
            let event = plan.canonical.event;
            self.stats.events += 1;
            let mut voters: BTreeMap<Digest, Vec<u16>> = BTreeMap::new();
            for (node, h) in &self.honest {
                if let Some(v) = h.core.as_ref().and_then(|c| c.own_vote(&event)) {
                    voters.entry(v.digest).or_default().push(*node);
                }
            }
            for (digest, nodes) in voters {
                if nodes.len() < self.q {
                    continue;
                }
                self.stats.live_events += 1;
                self.expect_certified(event, digest, &nodes, |node| {
                    format!("node {node} voted {digest} for {event} ({:?}) with >= q honest voters", plan.kind)
                });
            }
        }
    }
}

impl Sim {
    /// Each of `nodes` ended with `event` certified as `digest` (`why` says why it must).
    fn expect_certified(&self, event: EventId, digest: Digest, nodes: &[u16], why: impl Fn(u16) -> String) {
        for &node in nodes {
            let core = self.honest[&node].core.as_ref().expect("up");
            if core.certificate(&event).map(|c| c.digest) != Some(digest) {
                self.fail(format!("LIVENESS: {}, but it ended {:?}", why(node), core.status(&event)));
            }
        }
    }
}

fn run_seed(seed: u64) -> Summary {
    Sim::new(seed).run()
}

fn run_range(n: u16) {
    let started = Instant::now();
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(s) => {
            let seed: u64 = s.trim().parse().expect("SIM_SEED=<u64>");
            if validators_for(seed) == n { vec![seed] } else { Vec::new() }
        }
        Err(_) => {
            let count = std::env::var("SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SEEDS);
            (0..count).filter(|&s| validators_for(s) == n).collect()
        }
    };
    let mut total = Summary::default();
    let seeds_run = seeds.clone();
    for seed in seeds {
        let result = std::panic::catch_unwind(|| run_seed(seed));
        match result {
            Ok(s) => total.add(&s),
            Err(_) => panic!(
                "simulation failed at seed {seed} (n = {n}); replay with: SIM_SEED={seed} cargo test -p btcfi-consensus \
                 --test sim -- --nocapture"
            ),
        }
    }
    // The run exercised what it claims: live events, certifications, and every fault.
    if !seeds_run.is_empty() {
        assert_eq!(total.seeds, seeds_run.len() as u64);
        assert!(total.planned_live > 0 && total.certifications >= total.planned_live, "n={n}: {total:?}");
        if seeds_run.len() >= 50 {
            let faults =
                [total.dropped, total.equivocations, total.reobserved, total.restarts, total.refused_second_digest];
            assert!(
                faults.iter().all(|f| *f > 0),
                "n={n}: a fault never happened in {} seeds: {total:?}",
                seeds_run.len()
            );
        }
    }
    println!(
        "sim n={n}: {} seeds, {} events ({} with >= q identical honest observations, {} planned so), {} certifications, {} messages \
         delivered ({} dropped, {} undecodable), {} equivocations caught, {} re-observations, {} restarts, {} second \
         digests refused, {} network disagreements, {:.1} s",
        total.seeds,
        total.events,
        total.live_events,
        total.planned_live,
        total.certifications,
        total.delivered,
        total.dropped,
        total.undecodable,
        total.equivocations,
        total.reobserved,
        total.restarts,
        total.refused_second_digest,
        total.network_disagreed,
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn sim_n4() {
    run_range(4);
}

#[test]
fn sim_n7() {
    run_range(7);
}

#[test]
fn sim_n16() {
    run_range(16);
}

#[test]
fn sim_is_deterministic() {
    for seed in [1, 650, 950] {
        assert_eq!(run_seed(seed), run_seed(seed), "seed {seed}");
    }
}
