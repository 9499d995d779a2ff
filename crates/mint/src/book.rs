//! One validator's mints, from certification to consumption: `handle(input, now) ->
//! Vec<Action>`, no I/O.
//!
//! # Rules
//!
//! - **Who proposes.** The batches of mints to chain `c` are proposed by validator
//!   `c mod n` first; validator `rank` after it proposes only mints certified here for
//!   `rank × takeover_ms`, so a silent proposer is replaced. A proposer sends a batch of
//!   the oldest waiting mints once `batch_max` wait, or once the oldest waited
//!   `batch_wait_ms` beyond its patience.
//! - **What a signer accepts** ([`MintBook::check`]): every leaf certified here with that
//!   chain, recipient and amount, none reorged, not all signed already, and no leaf in a
//!   batch of a proposer ranked before or with this one (a better-ranked proposal
//!   displaces a worse one, so two proposals race at most once per rank). A proposal
//!   that arrives before this node certified its mints is retried for
//!   `early_for_ms`.
//! - **Sent again.** Every holder of a batch not signed yet sends it again every
//!   `resend_ms`, naming its proposer, so a validator that was away (or restarted and
//!   forgot it) takes it up with the proposer's rank. A restarted validator proposes
//!   nothing for `2 × resend_ms`, so it hears the batches it proposed before its crash
//!   before it batches their mints again. (A resender may name another proposer than
//!   the real one: that buys it no more than a proposer of that rank has, since every
//!   signer still checks every leaf itself.) Of two batches of one rank that share a
//!   mint, the one with the lower message displaces the other everywhere, so holders
//!   that took different ones converge. A Byzantine validator can use that to displace
//!   a batch once per lower message it finds among subsets of the waiting mints: it
//!   costs the honest ones a restarted session each time, never a wrong signature.
//! - **Signed once t hold it.** A validator that takes a batch says so to its peers
//!   ([`Action::Holds`], again with every resend) and starts signing only once it and
//!   t − 1 peers hold it: a session started by fewer waits for signers that are not
//!   there, and the batch that wins is signed without a round wasted on the others.
//! - **Gated.** Nothing is proposed or signed while this node's key did not pass its
//!   check ([`Input::KeyUsable`]), nor to a bridge that holds another key
//!   ([`Input::DestinationReady`]); such proposals are retried like early ones.
//! - **Given up.** A batch not signed `stale_after_ms` after it was taken is abandoned
//!   and its mints batched again.
//! - **Who relays.** Validator `u64(message[..8]) mod n` relays a signature first; rank
//!   `r` after it `r × takeover_ms` later, each only if a leaf is still unconsumed (the
//!   driver asks the chain). The contract consumes each event id once, so overlapping
//!   batches never mint twice.
//!
//! # Durability
//!
//! Every change of durable state comes as an [`Action::Persist`] before the actions that
//! depend on it; [`Persisted::apply`] is the reference semantics and
//! [`MintBook::restore`] rebuilds the book from it.

use crate::batch::{BatchProposal, Leaf, MAX_BATCH_LEAVES};
use alloy::primitives::Address;
use btcfi_signer::evm::EvmSignature;
use btcfi_types::{Attestation, AttestationKind, EventId};
use std::collections::{BTreeMap, BTreeSet};

/// Milliseconds on the driver's clock.
pub type Millis = u64;

/// A certified mint: everything needed to sign and relay it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MintRequest {
    /// The destination chain id.
    pub chain: u64,
    pub leaf: Leaf,
}

impl MintRequest {
    /// The mint an attestation asks for, if it is one (a peg-in or an EVM-to-EVM move).
    pub fn of(att: &Attestation) -> Option<Self> {
        match &att.kind {
            AttestationKind::PegIn { dest_chain, recipient, amount }
            | AttestationKind::EvmToEvm { dest_chain, recipient, amount, .. } => Some(Self {
                chain: dest_chain.0,
                leaf: Leaf { event: att.event, recipient: *recipient, amount: *amount },
            }),
            AttestationKind::PegOut { .. } | AttestationKind::Refund { .. } => None,
        }
    }
}

/// Planted bugs for the simulation's canaries (feature `canary`, off unless set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canary {
    /// A signer accepts leaves it never certified itself.
    NoOwnObservation,
}

/// The policy of one validator's book. Every validator must use the same values.
#[derive(Debug, Clone)]
pub struct Config {
    pub validators: usize,
    pub me: usize,
    /// The bridge contract of each destination chain.
    pub bridges: BTreeMap<u64, Address>,
    pub batch_max: usize,
    pub batch_wait_ms: Millis,
    pub takeover_ms: Millis,
    pub stale_after_ms: Millis,
    /// How long a proposal whose mints are not certified here yet is retried.
    pub early_for_ms: Millis,
    /// Most such proposals kept.
    pub max_early: usize,
    /// How often a batch still being signed is sent again by those who hold it.
    pub resend_ms: Millis,
    /// How many validators must hold a batch before it is signed (t; 1 signs at once).
    pub threshold: usize,
}

impl Config {
    /// Operator defaults: batches of up to 256 after 250 ms, takeover after 4 s, a batch
    /// given up after 120 s, early proposals kept for a minute.
    pub fn new(validators: usize, me: usize, bridges: BTreeMap<u64, Address>) -> Self {
        Self {
            validators,
            me,
            bridges,
            batch_max: 256,
            batch_wait_ms: 250,
            takeover_ms: 4_000,
            stale_after_ms: 120_000,
            early_for_ms: 60_000,
            max_early: 64,
            resend_ms: 5_000,
            threshold: validators.saturating_mul(2) / 3 + 1,
        }
    }
}

/// What the driver feeds the book.
#[derive(Debug, Clone)]
pub enum Input {
    /// Consensus certified this mint here.
    Certified(MintRequest),
    /// Peer `from` sent a batch that validator `proposer` proposed (itself, or a batch
    /// it holds and sends again).
    Proposal { from: usize, proposer: usize, proposal: BatchProposal },
    /// The session this node started for `message` produced a verified signature.
    Signed { message: Vec<u8>, signature: EvmSignature },
    /// The bridge consumed this event id (final on the destination chain).
    Consumed(EventId),
    /// The event was reorged out past finality: never signed or relayed again.
    Reorged(EventId),
    /// An event reorged out past finality was reported final again (the same deposit
    /// or burn in the new chain): it stands again, and is taken up once the driver
    /// hands its mint in as [`Input::Certified`] again.
    Final(EventId),
    /// Validator `from` holds the batch whose message is `message`.
    Holds { from: usize, message: Vec<u8> },
    /// A peer's signature of a batch, verified by the driver under this epoch's key
    /// over the message this node computes for `proposal` (signed while this node was
    /// away): taken if every leaf is a mint certified here with that content.
    Learned { proposal: BatchProposal, signature: EvmSignature },
    /// Whether this node's key passed its check (nothing is signed before).
    KeyUsable(bool),
    /// Whether the bridge on `chain` holds this epoch's key (nothing to it before).
    DestinationReady { chain: u64, ready: bool },
    /// Time passed.
    Tick,
}

/// One durable change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Certified(MintRequest),
    Signed { message: Vec<u8>, proposal: BatchProposal, signature: EvmSignature },
    Consumed(EventId),
    Reorged(EventId),
    Unreorged(EventId),
}

/// Why a proposal was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("proposer {0} is outside the validator set")]
    OutsideSet(usize),
    #[error("a batch of {0} mints: between 1 and {MAX_BATCH_LEAVES}")]
    Size(usize),
    #[error("no bridge on chain {0} here")]
    UnknownChain(u64),
    #[error("{0} was reorged out past finality")]
    Reorged(EventId),
    #[error("{0} is not certified here (yet)")]
    NotCertified(EventId),
    #[error("{0} is not that mint here")]
    Mismatch(EventId),
    #[error("{0} is in a batch of a proposer ranked before or with this one")]
    RankedBefore(EventId),
    #[error("every mint of the batch is signed here already")]
    AllSigned,
    #[error("this node's key has not passed its check")]
    KeyNotUsable,
    #[error("the bridge on chain {0} does not hold this epoch's key")]
    DestinationNotReady(u64),
}

impl Refusal {
    /// Whether the proposal may be taken later (it is retried like an early one).
    pub fn may_pass_later(&self) -> bool {
        matches!(self, Refusal::NotCertified(_) | Refusal::KeyNotUsable | Refusal::DestinationNotReady(_))
    }
}

/// What the book asks the driver to do, in order.
#[derive(Debug, Clone)]
pub enum Action {
    /// Write this before executing any later action.
    Persist(Change),
    /// Send this batch, proposed by `proposer`, to every peer.
    Propose { proposal: BatchProposal, proposer: usize },
    /// Sign `message` (start its signing session unless it runs).
    Sign { message: Vec<u8>, proposal: BatchProposal },
    /// Stop signing `message`: its batch was displaced, given up or is moot.
    Abandon { message: Vec<u8> },
    /// Tell every peer this node holds the batch of `message`.
    Holds { message: Vec<u8> },
    /// Submit this signed batch `after_ms` from now, if the bridge has not consumed
    /// every leaf by then (only the unconsumed ones).
    Relay { proposal: BatchProposal, signature: EvmSignature, after_ms: Millis },
    /// A proposal was refused (logged; nothing was signed).
    Refused { from: usize, refusal: Refusal },
    /// Peer `to` sent a batch whose every mint is signed here already (it was away
    /// while they were signed): hand it these signatures, each of which it verifies
    /// before it takes it ([`Input::Learned`]).
    TellSigned { to: usize, signed: Vec<(BatchProposal, EvmSignature)> },
}

/// The state [`MintBook::restore`] rebuilds from: what [`Action::Persist`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Persisted {
    pub certified: BTreeMap<EventId, MintRequest>,
    pub signed: BTreeMap<Vec<u8>, (BatchProposal, EvmSignature)>,
    pub consumed: BTreeSet<EventId>,
    pub reorged: BTreeSet<EventId>,
}

impl Persisted {
    /// The reference semantics of one change.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Certified(r) => {
                self.certified.entry(r.leaf.event).or_insert(*r);
            }
            Change::Signed { message, proposal, signature } => {
                self.signed.entry(message.clone()).or_insert_with(|| (proposal.clone(), *signature));
            }
            Change::Consumed(e) => {
                self.consumed.insert(*e);
            }
            Change::Reorged(e) => {
                self.reorged.insert(*e);
            }
            Change::Unreorged(e) => {
                self.reorged.remove(e);
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Active {
    proposal: BatchProposal,
    proposer: usize,
    rank: usize,
    since: Millis,
    resent: Millis,
    /// When its signing was asked for (once t hold it).
    signing: Option<Millis>,
}

/// A batch held here, as [`MintBook::batch_of`] shows it.
#[derive(Debug, Clone, Copy)]
pub struct HeldBatch<'a> {
    pub message: &'a [u8],
    pub proposal: &'a BatchProposal,
    pub proposer: usize,
    /// When it was taken here.
    pub since: Millis,
    /// When its signing was asked for (None: fewer than t hold it yet).
    pub signing_since: Option<Millis>,
}

/// Most notes of peers holding batches kept (of batches held here or to come).
pub const MAX_HOLDS: usize = 1_024;

/// The validators that said they hold each batch, by message, with when the batch was
/// first noted (on the driver's clock: `T`).
pub type HolderNotes<T> = BTreeMap<Vec<u8>, (BTreeSet<usize>, T)>;

/// Records in `notes` that `from` holds the batch of `message`, keeping at most `cap`
/// entries. The notes for a batch held here (`held`) are never dropped; when the table
/// is full, the oldest note of the sender with the most notes for other batches goes.
/// So a validator flooding notes for invented batches drops only its own, never the
/// honest notes for a real batch (dropping the oldest entry, a full table lost the
/// real batch's, and no batch reached t holders).
pub fn note_holder<T: Ord + Copy>(
    notes: &mut HolderNotes<T>,
    held: impl Fn(&[u8]) -> bool,
    cap: usize,
    from: usize,
    message: &[u8],
    at: T,
) {
    if !notes.contains_key(message) && notes.len() >= cap {
        let mut per: BTreeMap<usize, usize> = BTreeMap::new();
        for (m, (who, _)) in notes.iter() {
            if !held(m) {
                for w in who {
                    *per.entry(*w).or_default() += 1;
                }
            }
        }
        let heaviest = per.iter().max_by_key(|(w, c)| (**c, std::cmp::Reverse(**w))).map(|(w, _)| *w);
        if let Some(heavy) = heaviest {
            let oldest = notes
                .iter()
                .filter(|(m, (who, _))| !held(m) && who.contains(&heavy))
                .min_by_key(|(m, (_, first))| (*first, (*m).clone()))
                .map(|(m, _)| m.clone());
            if let Some(m) = oldest
                && let Some((who, _)) = notes.get_mut(&m)
            {
                who.remove(&heavy);
                if who.is_empty() {
                    notes.remove(&m);
                }
            }
        }
    }
    notes.entry(message.to_vec()).or_insert_with(|| (BTreeSet::new(), at)).0.insert(from);
}

/// One validator's mints. See the [module docs](self).
#[derive(Debug)]
pub struct MintBook {
    config: Config,
    certified: BTreeMap<EventId, (MintRequest, Millis)>,
    unbatched: BTreeMap<u64, BTreeMap<EventId, Millis>>,
    in_batch: BTreeMap<EventId, Vec<u8>>,
    batches: BTreeMap<Vec<u8>, Active>,
    /// Each mint signed, and the message of the batch it was signed in.
    signed: BTreeMap<EventId, Vec<u8>>,
    signatures: BTreeMap<Vec<u8>, (BatchProposal, EvmSignature)>,
    consumed: BTreeSet<EventId>,
    reorged: BTreeSet<EventId>,
    early: Vec<(usize, BatchProposal, Millis)>,
    /// Peers that said they hold a batch, by message (with when first heard).
    holders: HolderNotes<Millis>,
    key_usable: bool,
    not_ready: BTreeSet<u64>,
    /// No proposal of this node's own before this (just restarted).
    quiet_until: Millis,
    /// When each peer was last told signatures ([`Action::TellSigned`]): at most once
    /// per `resend_ms`, so that a peer sending signed proposals in a loop gets one
    /// answer per period, not one per proposal (each answer is up to
    /// `MAX_SIGNED_PER_NOTE` batches).
    told: BTreeMap<usize, Millis>,
    #[cfg(feature = "canary")]
    canary: Option<Canary>,
}

type Out = Vec<Action>;

impl MintBook {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            certified: BTreeMap::new(),
            unbatched: BTreeMap::new(),
            in_batch: BTreeMap::new(),
            batches: BTreeMap::new(),
            signed: BTreeMap::new(),
            signatures: BTreeMap::new(),
            consumed: BTreeSet::new(),
            reorged: BTreeSet::new(),
            early: Vec::new(),
            holders: BTreeMap::new(),
            key_usable: true,
            not_ready: BTreeSet::new(),
            quiet_until: 0,
            told: BTreeMap::new(),
            #[cfg(feature = "canary")]
            canary: None,
        }
    }

    /// Plants `canary` (tests only).
    #[cfg(feature = "canary")]
    pub fn set_canary(&mut self, canary: Option<Canary>) {
        self.canary = canary;
    }

    /// The book after a restart, and the relays still owed: every signed batch with a
    /// leaf not consumed yet is relayed again (by rank, as the first time).
    pub fn restore(config: Config, state: &Persisted, now: Millis) -> (Self, Vec<Action>) {
        let mut book = Self::new(config);
        book.quiet_until = now.saturating_add(book.config.resend_ms.saturating_mul(2));
        book.consumed = state.consumed.clone();
        book.reorged = state.reorged.clone();
        for (message, (proposal, signature)) in &state.signed {
            book.signed.extend(proposal.leaves.iter().map(|l| (l.event, message.clone())));
            book.signatures.insert(message.clone(), (proposal.clone(), *signature));
        }
        for (event, r) in &state.certified {
            book.certified.insert(*event, (*r, now));
            if book.waits(event) {
                book.unbatched.entry(r.chain).or_default().insert(*event, now);
            }
        }
        let mut out = Vec::new();
        for (message, (proposal, signature)) in &book.signatures {
            if proposal.leaves.iter().any(|l| !book.consumed.contains(&l.event) && !book.reorged.contains(&l.event)) {
                let after_ms = book.relay_delay(message);
                out.push(Action::Relay { proposal: proposal.clone(), signature: *signature, after_ms });
            }
        }
        (book, out)
    }

    /// Feed one input at time `now`; execute the returned actions in order.
    pub fn handle(&mut self, input: Input, now: Millis) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Certified(r) => {
                if !self.certified.contains_key(&r.leaf.event) && !self.reorged.contains(&r.leaf.event) {
                    out.push(Action::Persist(Change::Certified(r)));
                    self.certified.insert(r.leaf.event, (r, now));
                    if self.waits(&r.leaf.event) {
                        self.unbatched.entry(r.chain).or_default().insert(r.leaf.event, now);
                    }
                    self.retry_early(now, &mut out);
                    self.propose_due(now, &mut out);
                }
            }
            Input::Proposal { from, proposer, proposal } => {
                if proposer >= self.config.validators {
                    out.push(Action::Refused { from, refusal: Refusal::OutsideSet(proposer) });
                } else if self.check(proposer, &proposal) == Err(Refusal::AllSigned) {
                    // The sender is behind: it gets the signatures instead.
                    let due = self.told.get(&from).is_none_or(|at| now.saturating_sub(*at) >= self.config.resend_ms);
                    if from != self.config.me && from < self.config.validators && due {
                        let signed = self.signatures_covering(&proposal);
                        if !signed.is_empty() {
                            self.told.insert(from, now);
                            out.push(Action::TellSigned { to: from, signed });
                        }
                    }
                } else {
                    self.on_proposal(proposer, proposal, now, &mut out);
                }
            }
            Input::Signed { message, signature } => self.on_signed(message, signature, now, &mut out),
            Input::Consumed(event) => {
                if self.consumed.insert(event) {
                    out.push(Action::Persist(Change::Consumed(event)));
                    self.leave_waiting(&event);
                    let moot: Vec<Vec<u8>> = self
                        .batches
                        .iter()
                        .filter(|(_, b)| b.proposal.leaves.iter().all(|l| self.consumed.contains(&l.event)))
                        .map(|(m, _)| m.clone())
                        .collect();
                    for message in moot {
                        self.drop_batch(&message, false, &mut out);
                    }
                }
            }
            Input::Reorged(event) => {
                if self.reorged.insert(event) {
                    out.push(Action::Persist(Change::Reorged(event)));
                    self.leave_waiting(&event);
                    if let Some(message) = self.in_batch.get(&event).cloned() {
                        self.drop_batch(&message, true, &mut out);
                    }
                    // Kept out of every batch from now on, early ones included.
                    self.early.retain(|(_, p, _)| p.leaves.iter().all(|l| l.event != event));
                }
            }
            Input::Final(event) => {
                if self.reorged.remove(&event) {
                    out.push(Action::Persist(Change::Unreorged(event)));
                    if self.waits(&event)
                        && let Some((r, at)) = self.certified.get(&event)
                    {
                        self.unbatched.entry(r.chain).or_default().insert(event, *at);
                    }
                }
            }
            Input::Holds { from, message } => {
                if message.len() == 32 && from < self.config.validators && from != self.config.me {
                    let batches = &self.batches;
                    note_holder(&mut self.holders, |m| batches.contains_key(m), MAX_HOLDS, from, &message, now);
                    self.maybe_sign(&message, now, &mut out);
                }
            }
            Input::Learned { proposal, signature } => self.on_learned(proposal, signature, now, &mut out),
            Input::KeyUsable(usable) => {
                self.key_usable = usable;
                if usable {
                    self.gate_opened(now, &mut out);
                }
            }
            Input::DestinationReady { chain, ready } => {
                if ready {
                    if self.not_ready.remove(&chain) {
                        self.gate_opened(now, &mut out);
                    }
                } else {
                    self.not_ready.insert(chain);
                }
            }
            Input::Tick => {
                let stale: Vec<Vec<u8>> = self
                    .batches
                    .iter()
                    .filter(|(_, b)| now.saturating_sub(b.signing.unwrap_or(b.since)) >= self.config.stale_after_ms)
                    .map(|(m, _)| m.clone())
                    .collect();
                for message in stale {
                    self.drop_batch(&message, true, &mut out);
                }
                // Every holder sends its unsigned batches again: a peer that was away
                // (or restarted and forgot them) takes them up.
                for (message, b) in self.batches.iter_mut() {
                    if now.saturating_sub(b.resent) >= self.config.resend_ms {
                        b.resent = now;
                        out.push(Action::Propose { proposal: b.proposal.clone(), proposer: b.proposer });
                        out.push(Action::Holds { message: message.clone() });
                    }
                }
                let stale_for = self.config.stale_after_ms;
                self.holders.retain(|m, (_, at)| self.batches.contains_key(m) || now.saturating_sub(*at) < stale_for);
                self.retry_early(now, &mut out);
                self.propose_due(now, &mut out);
            }
        }
        out
    }

    /// Mints certified here and waiting for a batch.
    pub fn unbatched(&self) -> usize {
        self.unbatched.values().map(BTreeMap::len).sum()
    }

    /// Whether this node holds a signature for `event`.
    pub fn is_signed(&self, event: &EventId) -> bool {
        self.signed.contains_key(event)
    }

    /// The policy this book runs.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The events this book holds as reorged past finality.
    pub fn reorged(&self) -> impl Iterator<Item = &EventId> {
        self.reorged.iter()
    }

    /// Whether the event was reorged out past finality.
    pub fn is_reorged(&self, event: &EventId) -> bool {
        self.reorged.contains(event)
    }

    /// The destination chain of a mint certified here and waiting for a batch, and when
    /// it started waiting.
    pub fn waiting(&self, event: &EventId) -> Option<(u64, Millis)> {
        self.unbatched.iter().find_map(|(chain, w)| w.get(event).map(|at| (*chain, *at)))
    }

    /// The batch held here (not signed yet) that `event` is in.
    pub fn batch_of(&self, event: &EventId) -> Option<HeldBatch<'_>> {
        let message = self.in_batch.get(event)?;
        let b = self.batches.get(message)?;
        Some(HeldBatch {
            message,
            proposal: &b.proposal,
            proposer: b.proposer,
            since: b.since,
            signing_since: b.signing,
        })
    }

    /// The peers that said they hold the batch of `message`.
    pub fn holders(&self, message: &[u8]) -> Vec<usize> {
        self.holders.get(message).map(|(who, _)| who.iter().copied().collect()).unwrap_or_default()
    }

    /// Every batch signature held here that covers a mint of `p`, once each.
    pub fn signatures_covering(&self, p: &BatchProposal) -> Vec<(BatchProposal, EvmSignature)> {
        let messages: BTreeSet<&Vec<u8>> = p.leaves.iter().filter_map(|l| self.signed.get(&l.event)).collect();
        messages.into_iter().filter_map(|m| self.signatures.get(m)).map(|(q, s)| (q.clone(), *s)).collect()
    }

    /// The validator that proposes the batches of mints to `chain` first (each chain's
    /// batches start from another validator, so one silent validator stalls one
    /// chain's at most for a takeover).
    pub fn first_proposer(&self, chain: u64) -> usize {
        usize::try_from(chain % self.config.validators.max(1) as u64).unwrap_or(0)
    }

    /// The rank of `who` among the proposers of chain `chain` (0 proposes first).
    pub fn rank_of(&self, chain: u64, who: usize) -> usize {
        let n = self.config.validators.max(1);
        (who % n + n - self.first_proposer(chain)) % n
    }

    /// Whether `proposal` from `from` may be signed here, and which batches held here it
    /// displaces.
    pub fn check(&self, from: usize, p: &BatchProposal) -> Result<Vec<Vec<u8>>, Refusal> {
        if from >= self.config.validators {
            return Err(Refusal::OutsideSet(from));
        }
        if p.leaves.is_empty() || p.leaves.len() > MAX_BATCH_LEAVES {
            return Err(Refusal::Size(p.leaves.len()));
        }
        if !self.config.bridges.contains_key(&p.chain) {
            return Err(Refusal::UnknownChain(p.chain));
        }
        if !self.key_usable {
            return Err(Refusal::KeyNotUsable);
        }
        if self.not_ready.contains(&p.chain) {
            return Err(Refusal::DestinationNotReady(p.chain));
        }
        let rank = self.rank_of(p.chain, from);
        let mine = self.message_of(p).unwrap_or_default();
        let mut signed = 0;
        let mut displaced = BTreeSet::new();
        for leaf in &p.leaves {
            if self.reorged.contains(&leaf.event) {
                return Err(Refusal::Reorged(leaf.event));
            }
            if !self.trusts_proposer() {
                match self.certified.get(&leaf.event) {
                    None => return Err(Refusal::NotCertified(leaf.event)),
                    Some((r, _)) if r.chain != p.chain || r.leaf != *leaf => {
                        return Err(Refusal::Mismatch(leaf.event));
                    }
                    Some(_) => {}
                }
            }
            if self.signed.contains_key(&leaf.event) {
                signed += 1;
            }
            if let Some(message) = self.in_batch.get(&leaf.event) {
                match self.batches.get(message) {
                    // Of two batches of one rank that share a mint (a proposer that
                    // batched again after its batch was displaced, a restart, a copy of
                    // an old batch sent again by a validator that missed what replaced
                    // it), the one with the lower message wins everywhere, so the holders
                    // converge on one.
                    Some(b) if b.rank < rank || (b.rank == rank && message.as_slice() <= mine.as_slice()) => {
                        return Err(Refusal::RankedBefore(leaf.event));
                    }
                    Some(_) => {
                        displaced.insert(message.clone());
                    }
                    None => {}
                }
            }
        }
        if signed == p.leaves.len() {
            return Err(Refusal::AllSigned);
        }
        Ok(displaced.into_iter().collect())
    }

    #[cfg(feature = "canary")]
    fn trusts_proposer(&self) -> bool {
        self.canary == Some(Canary::NoOwnObservation)
    }

    #[cfg(not(feature = "canary"))]
    fn trusts_proposer(&self) -> bool {
        false
    }

    fn waits(&self, event: &EventId) -> bool {
        !self.signed.contains_key(event)
            && !self.consumed.contains(event)
            && !self.reorged.contains(event)
            && !self.in_batch.contains_key(event)
    }

    fn leave_waiting(&mut self, event: &EventId) {
        for waiting in self.unbatched.values_mut() {
            waiting.remove(event);
        }
    }

    fn message_of(&self, p: &BatchProposal) -> Option<Vec<u8>> {
        self.config.bridges.get(&p.chain).map(|bridge| p.message(*bridge))
    }

    fn relay_delay(&self, message: &[u8]) -> Millis {
        let n = self.config.validators.max(1);
        let mut first = [0u8; 8];
        for (d, s) in first.iter_mut().zip(message) {
            *d = *s;
        }
        let first = usize::try_from(u64::from_be_bytes(first) % n as u64).unwrap_or(0);
        let rank = (self.config.me + n - first) % n;
        self.config.takeover_ms.saturating_mul(rank as u64)
    }

    fn on_proposal(&mut self, from: usize, p: BatchProposal, now: Millis, out: &mut Out) {
        let Some(message) = self.message_of(&p) else {
            out.push(Action::Refused { from, refusal: Refusal::UnknownChain(p.chain) });
            return;
        };
        if self.batches.contains_key(&message) || self.signatures.contains_key(&message) {
            return; // held already: a resend
        }
        match self.take(from, p.clone(), message, now, out) {
            Ok(()) => {}
            Err(refusal) if refusal.may_pass_later() => {
                self.early.retain(|(f, q, _)| !(*f == from && *q == p));
                if self.early.len() >= self.config.max_early {
                    self.early.remove(0);
                }
                self.early.push((from, p, now));
            }
            Err(refusal) => out.push(Action::Refused { from, refusal }),
        }
    }

    fn retry_early(&mut self, now: Millis, out: &mut Out) {
        let early_for = self.config.early_for_ms;
        let early = std::mem::take(&mut self.early);
        for (from, p, at) in early {
            if now.saturating_sub(at) > early_for {
                continue;
            }
            let Some(message) = self.message_of(&p) else { continue };
            if self.batches.contains_key(&message) || self.signatures.contains_key(&message) {
                continue;
            }
            match self.take(from, p.clone(), message, now, out) {
                Ok(()) => {}
                Err(refusal) if refusal.may_pass_later() => self.early.push((from, p, at)),
                Err(refusal) => out.push(Action::Refused { from, refusal }),
            }
        }
    }

    /// Takes `p` if [`MintBook::check`] passes, displacing the batches it outranks.
    fn take(
        &mut self,
        from: usize,
        p: BatchProposal,
        message: Vec<u8>,
        now: Millis,
        out: &mut Out,
    ) -> Result<(), Refusal> {
        for m in self.check(from, &p)? {
            self.drop_batch(&m, true, out);
        }
        self.accept(p, from, message, now, out);
        Ok(())
    }

    fn accept(&mut self, p: BatchProposal, proposer: usize, message: Vec<u8>, now: Millis, out: &mut Out) {
        for leaf in &p.leaves {
            self.leave_waiting(&leaf.event);
            self.in_batch.insert(leaf.event, message.clone());
        }
        let rank = self.rank_of(p.chain, proposer);
        out.push(Action::Holds { message: message.clone() });
        let active = Active { proposal: p, proposer, rank, since: now, resent: now, signing: None };
        self.batches.insert(message.clone(), active);
        self.maybe_sign(&message, now, out);
    }

    /// A gate opened: proposals kept for it are taken, batches held are signed once t
    /// hold them, and this node proposes what is due.
    fn gate_opened(&mut self, now: Millis, out: &mut Out) {
        self.retry_early(now, out);
        let held: Vec<Vec<u8>> = self.batches.keys().cloned().collect();
        for message in held {
            self.maybe_sign(&message, now, out);
        }
        self.propose_due(now, out);
    }

    /// Asks for the signature of the batch of `message` once this node and t − 1 peers
    /// hold it, and its key and destination bridge are ready.
    fn maybe_sign(&mut self, message: &[u8], now: Millis, out: &mut Out) {
        let peers = self.holders.get(message).map_or(0, |(who, _)| who.len());
        let t = self.config.threshold;
        let (key_usable, not_ready) = (self.key_usable, &self.not_ready);
        let Some(b) = self.batches.get_mut(message) else { return };
        if b.signing.is_some() || peers + 1 < t || !key_usable || not_ready.contains(&b.proposal.chain) {
            return;
        }
        b.signing = Some(now);
        out.push(Action::Sign { message: message.to_vec(), proposal: b.proposal.clone() });
    }

    fn drop_batch(&mut self, message: &[u8], requeue: bool, out: &mut Out) {
        let Some(b) = self.batches.remove(message) else { return };
        out.push(Action::Abandon { message: message.to_vec() });
        for leaf in &b.proposal.leaves {
            if self.in_batch.get(&leaf.event).is_some_and(|m| m.as_slice() == message) {
                self.in_batch.remove(&leaf.event);
            }
            if requeue
                && self.waits(&leaf.event)
                && let Some((r, at)) = self.certified.get(&leaf.event)
            {
                self.unbatched.entry(r.chain).or_default().insert(leaf.event, *at);
            }
        }
    }

    /// A batch signed by peers: taken as if signed here when none of its leaves is
    /// reorged here or certified here with another content, and at least one is
    /// certified here (the signature itself the driver verified under the group key:
    /// t validators, so at least one honest, checked every leaf), so that a validator
    /// back from away relays it and never batches those mints again, not even the ones
    /// it certifies only later.
    fn on_learned(&mut self, proposal: BatchProposal, signature: EvmSignature, now: Millis, out: &mut Out) {
        let Some(message) = self.message_of(&proposal) else { return };
        if self.signatures.contains_key(&message) || proposal.leaves.is_empty() {
            return;
        }
        let contradicted = proposal.leaves.iter().any(|l| {
            self.reorged.contains(&l.event)
                || self.certified.get(&l.event).is_some_and(|(r, _)| r.chain != proposal.chain || r.leaf != *l)
        });
        let known = proposal.leaves.iter().any(|l| self.certified.contains_key(&l.event));
        if contradicted || !known {
            return;
        }
        // Held here too (being signed): that signing is moot.
        if self.batches.contains_key(&message) {
            out.push(Action::Abandon { message: message.clone() });
        } else {
            let rank = 0;
            let active =
                Active { proposal, proposer: self.config.me, rank, since: now, resent: now, signing: Some(now) };
            self.batches.insert(message.clone(), active);
        }
        let leaves: BTreeSet<EventId> =
            self.batches.get(&message).map(|b| b.proposal.leaves.iter().map(|l| l.event).collect()).unwrap_or_default();
        self.on_signed(message, signature, now, out);
        // Other batches held here with one of its mints: dropped, their other mints
        // batched again (as the node's pipeline does).
        let overlapping: Vec<Vec<u8>> = self
            .batches
            .iter()
            .filter(|(_, b)| b.proposal.leaves.iter().any(|l| leaves.contains(&l.event)))
            .map(|(m, _)| m.clone())
            .collect();
        for m in overlapping {
            self.drop_batch(&m, true, out);
        }
    }

    fn on_signed(&mut self, message: Vec<u8>, signature: EvmSignature, _now: Millis, out: &mut Out) {
        if self.signatures.contains_key(&message) {
            return;
        }
        let Some(b) = self.batches.remove(&message) else { return };
        let proposal = b.proposal;
        out.push(Action::Persist(Change::Signed { message: message.clone(), proposal: proposal.clone(), signature }));
        for leaf in &proposal.leaves {
            self.signed.insert(leaf.event, message.clone());
            if self.in_batch.get(&leaf.event) == Some(&message) {
                self.in_batch.remove(&leaf.event);
            }
            self.leave_waiting(&leaf.event);
        }
        let after_ms = self.relay_delay(&message);
        self.holders.remove(&message);
        self.signatures.insert(message, (proposal.clone(), signature));
        out.push(Action::Relay { proposal, signature, after_ms });
    }

    fn propose_due(&mut self, now: Millis, out: &mut Out) {
        if now < self.quiet_until || !self.key_usable {
            return;
        }
        let chains: Vec<u64> = self.unbatched.keys().copied().collect();
        for chain in chains {
            if !self.config.bridges.contains_key(&chain) || self.not_ready.contains(&chain) {
                continue;
            }
            let patience = self.config.takeover_ms.saturating_mul(self.rank_of(chain, self.config.me) as u64);
            while let Some(waiting) = self.unbatched.get(&chain) {
                let mut due: Vec<(Millis, EventId)> = waiting
                    .iter()
                    .filter(|(_, at)| now.saturating_sub(**at) >= patience)
                    .map(|(e, at)| (*at, *e))
                    .collect();
                let Some(oldest) = due.iter().map(|(at, _)| *at).min() else { break };
                if due.len() < self.config.batch_max
                    && now.saturating_sub(oldest) < patience.saturating_add(self.config.batch_wait_ms)
                {
                    break;
                }
                due.sort_unstable();
                due.truncate(self.config.batch_max.max(1));
                let leaves: Vec<Leaf> =
                    due.iter().filter_map(|(_, e)| self.certified.get(e).map(|(r, _)| r.leaf)).collect();
                let proposal = BatchProposal::new(chain, leaves);
                let Some(message) = self.message_of(&proposal) else { break };
                if self.batches.contains_key(&message) || self.signatures.contains_key(&message) {
                    // The same batch is held already (proposed by a peer): nothing new.
                    for (_, e) in &due {
                        self.leave_waiting(e);
                    }
                    continue;
                }
                let me = self.config.me;
                out.push(Action::Propose { proposal: proposal.clone(), proposer: me });
                self.accept(proposal, me, message, now, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use btcfi_types::{ChainId, EvmAddress, Sats, TxHash};

    fn request(i: u8, amount: u64) -> MintRequest {
        MintRequest {
            chain: 1,
            leaf: Leaf {
                event: EventId::new(ChainId::BITCOIN, TxHash([i; 32]), 0),
                recipient: EvmAddress([i; 20]),
                amount: Sats(amount),
            },
        }
    }

    fn book(me: usize) -> MintBook {
        let mut c = Config::new(4, me, BTreeMap::from([(1, Address::repeat_byte(9))]));
        c.batch_max = 2;
        // Signed at once (the readiness gate has its own test).
        c.threshold = 1;
        MintBook::new(c)
    }

    fn signs(out: &[Action]) -> bool {
        out.iter().any(|a| matches!(a, Action::Sign { .. }))
    }

    /// A batch is signed only once this node and t - 1 peers said they hold it; the
    /// note is sent with the batch and again with each resend, and notes from outside
    /// the set or from this node itself count for nothing.
    #[test]
    fn a_batch_is_signed_once_t_validators_hold_it() {
        let mut signer = book(2);
        signer.config.threshold = 3;
        let proposal = BatchProposal::new(1, vec![request(1, 100).leaf, request(2, 200).leaf]);
        signer.handle(Input::Certified(request(1, 100)), 0);
        signer.handle(Input::Certified(request(2, 200)), 0);
        let out = signer.handle(Input::Proposal { from: 1, proposer: 1, proposal: proposal.clone() }, 10);
        let message = out
            .iter()
            .find_map(|a| if let Action::Holds { message } = a { Some(message.clone()) } else { None })
            .expect("says it holds it");
        assert!(!signs(&out), "alone: not signed");
        for from in [2, 7] {
            assert!(!signs(&signer.handle(Input::Holds { from, message: message.clone() }, 20)), "{from}");
        }
        assert!(!signs(&signer.handle(Input::Holds { from: 1, message: message.clone() }, 30)), "two hold it");
        assert!(!signs(&signer.handle(Input::Holds { from: 1, message: message.clone() }, 31)), "a repeat");
        let out = signer.handle(Input::Holds { from: 3, message: message.clone() }, 40);
        assert!(signs(&out), "three hold it: signed");
        assert!(!signs(&signer.handle(Input::Holds { from: 0, message: message.clone() }, 50)), "once");
        let resent = signer.handle(Input::Tick, 10 + signer.config.resend_ms);
        assert!(resent.iter().any(|a| matches!(a, Action::Holds { message: m } if *m == message)), "said again");
    }

    /// A validator back from away takes a batch its peers signed meanwhile (the
    /// driver verified the signature): persisted, relayed in its rank, its mints never
    /// batched again; but not if a leaf contradicts a mint it certified (another
    /// amount).
    #[test]
    fn a_batch_signed_by_peers_is_taken_only_if_each_mint_is_certified_here_as_signed() {
        let signature = EvmSignature { rx: Default::default(), ry: Default::default(), z: Default::default() };
        let mut b = book(3);
        b.handle(Input::Certified(request(1, 100)), 0);
        b.handle(Input::Certified(request(2, 200)), 0);
        let other = BatchProposal::new(1, vec![request(1, 100).leaf, request(2, 201).leaf]);
        let out = b.handle(Input::Learned { proposal: other, signature }, 10);
        assert!(out.is_empty(), "another amount than certified: {out:?}");
        let proposal = BatchProposal::new(1, vec![request(1, 100).leaf, request(2, 200).leaf]);
        let out = b.handle(Input::Learned { proposal: proposal.clone(), signature }, 20);
        assert!(matches!(out.first(), Some(Action::Persist(Change::Signed { .. }))), "{out:?}");
        assert!(out.iter().any(|a| matches!(a, Action::Relay { .. })), "{out:?}");
        assert_eq!(b.unbatched(), 0, "its mints are not batched again");
        assert!(b.handle(Input::Learned { proposal, signature }, 30).is_empty(), "once");
    }

    /// A peer that proposes mints all signed here already (it was away) is handed the
    /// signatures, and takes them (after verifying them) even for a mint it certifies
    /// only later, which it then never batches again; a batch contradicting what it
    /// certified, or with no mint certified there at all, is not taken.
    #[test]
    fn a_lagging_proposer_is_told_the_signatures_and_takes_them() {
        let signature = EvmSignature { rx: Default::default(), ry: Default::default(), z: Default::default() };
        let mut b = book(2);
        b.handle(Input::Certified(request(1, 100)), 0);
        b.handle(Input::Certified(request(2, 200)), 0);
        let signed = BatchProposal::new(1, vec![request(1, 100).leaf, request(2, 200).leaf]);
        b.handle(Input::Proposal { from: 1, proposer: 1, proposal: signed.clone() }, 10);
        b.handle(Input::Signed { message: signed.message(Address::repeat_byte(9)), signature }, 20);
        // The lagging proposer certified only the first mint so far.
        let late = BatchProposal::new(1, vec![request(1, 100).leaf]);
        let out = b.handle(Input::Proposal { from: 3, proposer: 1, proposal: late.clone() }, 30);
        let told = out.iter().find_map(|a| match a {
            Action::TellSigned { to, signed } => Some((*to, signed.clone())),
            _ => None,
        });
        assert_eq!(told, Some((3, vec![(signed.clone(), signature)])), "{out:?}");
        // Sent again at once (a loop, or a flood): answered once per resend period.
        let again = Input::Proposal { from: 3, proposer: 1, proposal: late.clone() };
        let tells = |out: &[Action]| out.iter().filter(|a| matches!(a, Action::TellSigned { .. })).count();
        assert_eq!(tells(&b.handle(again.clone(), 31)), 0, "told once per period");
        assert_eq!(tells(&b.handle(again.clone(), 30 + b.config.resend_ms)), 1, "and again after it");
        let mut lagging = book(1);
        assert!(lagging.handle(Input::Learned { proposal: signed.clone(), signature }, 0).is_empty(), "nothing known");
        lagging.handle(Input::Certified(request(1, 100)), 0);
        let out = lagging.handle(Input::Learned { proposal: signed.clone(), signature }, 40);
        assert!(matches!(out.first(), Some(Action::Persist(Change::Signed { .. }))), "{out:?}");
        assert!(lagging.is_signed(&request(2, 0).leaf.event), "the mint it certifies later is signed too");
        lagging.handle(Input::Certified(request(2, 200)), 50);
        assert_eq!(lagging.unbatched(), 0, "and is never batched again");
        let mut other = book(1);
        other.handle(Input::Certified(request(2, 999)), 0);
        assert!(other.handle(Input::Learned { proposal: signed, signature }, 0).is_empty(), "contradicted");
    }

    /// An event reorged out past finality and then reported final again is batched
    /// again; while reorged, a batch with it is refused and the one held is given up.
    #[test]
    fn a_reorged_mint_final_again_is_batched_again() {
        let mut b = book(1);
        b.handle(Input::Certified(request(1, 100)), 0);
        let out = b.handle(Input::Reorged(request(1, 0).leaf.event), 10);
        assert!(matches!(out.first(), Some(Action::Persist(Change::Reorged(_)))), "{out:?}");
        assert_eq!(b.unbatched(), 0);
        let proposal = BatchProposal::new(1, vec![request(1, 100).leaf]);
        assert_eq!(b.check(1, &proposal), Err(Refusal::Reorged(request(1, 0).leaf.event)));
        let out = b.handle(Input::Final(request(1, 0).leaf.event), 20);
        assert!(matches!(out.first(), Some(Action::Persist(Change::Unreorged(_)))), "{out:?}");
        assert_eq!(b.unbatched(), 1, "waits again");
        assert!(b.handle(Input::Final(request(1, 0).leaf.event), 30).is_empty(), "once");
        let mut state = Persisted::default();
        state.apply(&Change::Certified(request(1, 100)));
        state.apply(&Change::Reorged(request(1, 0).leaf.event));
        state.apply(&Change::Unreorged(request(1, 0).leaf.event));
        assert!(state.reorged.is_empty());
    }

    /// A batch being signed goes stale counted from when its signing started, not from
    /// when it was taken (under a burst, t validators may hold it long after one did).
    #[test]
    fn staleness_counts_from_the_start_of_signing() {
        let mut b = book(2);
        b.config.threshold = 2;
        b.handle(Input::Certified(request(1, 100)), 0);
        b.handle(Input::Certified(request(2, 200)), 0);
        let proposal = BatchProposal::new(1, vec![request(1, 100).leaf, request(2, 200).leaf]);
        b.handle(Input::Proposal { from: 1, proposer: 1, proposal: proposal.clone() }, 0);
        let message = proposal.message(Address::repeat_byte(9));
        let late = b.config.stale_after_ms - 1;
        assert!(signs(&b.handle(Input::Holds { from: 1, message: message.clone() }, late)));
        let out = b.handle(Input::Tick, late + 10);
        assert!(!out.iter().any(|a| matches!(a, Action::Abandon { .. })), "not stale yet: {out:?}");
        assert!(b.batch_of(&request(1, 0).leaf.event).is_some_and(|h| h.signing_since == Some(late)));
        let out = b.handle(Input::Tick, late + b.config.stale_after_ms);
        assert!(out.iter().any(|a| matches!(a, Action::Abandon { .. })), "stale: {out:?}");
    }

    /// A validator flooding notes for invented batches drops only its own notes: the
    /// notes for a batch held here stay, and it is signed once t hold it. Before, a
    /// full table dropped its oldest entry, the real batch's, with every honest note
    /// in it ("not signed").
    #[test]
    fn a_flood_of_notes_for_invented_batches_never_displaces_a_real_one() {
        let mut signer = book(2);
        signer.config.threshold = 3;
        let proposal = BatchProposal::new(1, vec![request(1, 100).leaf, request(2, 200).leaf]);
        signer.handle(Input::Certified(request(1, 100)), 0);
        signer.handle(Input::Certified(request(2, 200)), 0);
        signer.handle(Input::Proposal { from: 1, proposer: 1, proposal: proposal.clone() }, 10);
        let message = proposal.message(Address::repeat_byte(9));
        assert!(!signs(&signer.handle(Input::Holds { from: 1, message: message.clone() }, 20)));
        for i in 0..(2 * MAX_HOLDS as u32) {
            let mut fake = [0u8; 32];
            fake[..4].copy_from_slice(&i.to_be_bytes());
            signer.handle(Input::Holds { from: 3, message: fake.to_vec() }, 30);
        }
        assert!(signer.holders.len() <= MAX_HOLDS + 1, "bounded: {}", signer.holders.len());
        let out = signer.handle(Input::Holds { from: 0, message: message.clone() }, 40);
        assert!(signs(&out), "not signed: {out:?}");
        // A held batch is not signed while the key is not usable, and is once it is.
        let mut b = book(2);
        b.config.threshold = 2;
        b.handle(Input::Certified(request(1, 100)), 0);
        b.handle(Input::Certified(request(2, 200)), 0);
        b.handle(Input::Proposal { from: 1, proposer: 1, proposal }, 10);
        b.handle(Input::KeyUsable(false), 15);
        assert!(!signs(&b.handle(Input::Holds { from: 1, message }, 20)), "key not usable: not signed");
        assert!(signs(&b.handle(Input::KeyUsable(true), 30)), "signed once it is");
    }

    /// Nothing is signed or proposed while this node's key has not passed its check,
    /// nor to a bridge that holds another key; what was refused for it is taken once
    /// the gate opens.
    #[test]
    fn nothing_is_signed_or_proposed_before_the_key_and_the_bridge_are_ready() {
        let proposal = BatchProposal::new(1, vec![request(1, 100).leaf, request(2, 200).leaf]);
        for gate in [Input::KeyUsable(false), Input::DestinationReady { chain: 1, ready: false }] {
            let mut b = book(2);
            b.handle(gate.clone(), 0);
            b.handle(Input::Certified(request(1, 100)), 0);
            b.handle(Input::Certified(request(2, 200)), 0);
            assert!(!signs(&b.handle(Input::Proposal { from: 1, proposer: 1, proposal: proposal.clone() }, 10)));
            let mut proposer = book(1);
            proposer.handle(gate.clone(), 0);
            proposer.handle(Input::Certified(request(1, 100)), 0);
            let out = proposer.handle(Input::Certified(request(2, 200)), 10);
            assert!(!out.iter().any(|a| matches!(a, Action::Propose { .. })), "proposed while gated: {out:?}");
            let open = match gate {
                Input::KeyUsable(_) => Input::KeyUsable(true),
                _ => Input::DestinationReady { chain: 1, ready: true },
            };
            assert!(signs(&b.handle(open.clone(), 20)), "taken once the gate opens");
            assert!(proposer.handle(open, 20).iter().any(|a| matches!(a, Action::Propose { .. })));
        }
    }

    #[test]
    fn the_first_ranked_proposer_batches_and_a_signer_takes_only_what_it_certified() {
        // Chain 1: validator 1 proposes first.
        let mut proposer = book(1);
        let mut signer = book(2);
        let out = proposer.handle(Input::Certified(request(1, 100)), 0);
        assert!(out.iter().all(|a| !matches!(a, Action::Propose { .. })), "one mint waits for the batch wait");
        let out = proposer.handle(Input::Certified(request(2, 200)), 10);
        let proposal = out
            .iter()
            .find_map(|a| if let Action::Propose { proposal, .. } = a { Some(proposal.clone()) } else { None })
            .expect("two mints fill a batch");
        assert_eq!(proposal.leaves.len(), 2);
        // Not certified at the signer: kept, then taken once certified.
        let out = signer.handle(Input::Proposal { from: 1, proposer: 1, proposal: proposal.clone() }, 20);
        assert!(out.is_empty());
        signer.handle(Input::Certified(request(1, 100)), 30);
        let out = signer.handle(Input::Certified(request(2, 200)), 40);
        assert!(out.iter().any(|a| matches!(a, Action::Sign { .. })), "{out:?}");
        // Another amount than certified is refused.
        let mut other = book(3);
        other.handle(Input::Certified(request(1, 100)), 0);
        other.handle(Input::Certified(request(2, 201)), 0);
        assert_eq!(other.check(1, &proposal), Err(Refusal::Mismatch(request(2, 0).leaf.event)));
    }

    #[test]
    fn a_signed_batch_is_persisted_then_relayed_and_restored_relays_again() {
        let mut b = book(1);
        b.handle(Input::Certified(request(1, 100)), 0);
        let out = b.handle(Input::Tick, 1_000);
        let Some(Action::Sign { message, .. }) = out.iter().find(|a| matches!(a, Action::Sign { .. })).cloned() else {
            panic!("a batch of one after the wait: {out:?}");
        };
        let signature = EvmSignature { rx: Default::default(), ry: Default::default(), z: Default::default() };
        let out = b.handle(Input::Signed { message: message.clone(), signature }, 1_100);
        assert!(matches!(out.first(), Some(Action::Persist(Change::Signed { .. }))));
        assert!(matches!(out.get(1), Some(Action::Relay { .. })));
        let mut state = Persisted::default();
        state.apply(&Change::Certified(request(1, 100)));
        state.apply(&Change::Signed {
            message,
            proposal: BatchProposal::new(1, vec![request(1, 100).leaf]),
            signature,
        });
        let (restored, owed) = MintBook::restore(b.config.clone(), &state, 5_000);
        assert_eq!(owed.len(), 1);
        assert_eq!(restored.unbatched(), 0, "a signed mint is not batched again");
    }
}
