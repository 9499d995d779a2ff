//! The release book: a validator's ledger of the vault's payments, sans-IO.
//!
//! [`ReleaseBook::handle`] takes one [`Input`] (what the chain, a peer or the signer
//! reported) and the time, and returns the [`Action`]s for its driver to carry out
//! (persist, propose, sign, broadcast, count), in order. It owns, in one place:
//!
//! - **the turn rule**: validator `turn_at(now)` proposes, within a slack of a quarter
//!   of `takeover_ms` at either end of its turn ([`ReleaseBook::in_turn`]); a fresh
//!   proposal from anyone else is refused as [`ReleaseError::NotInTurn`];
//! - **batching**: a proposer sends a release when [`MAX_PAYOUTS`] wait, or the oldest
//!   waited `batch_wait_ms` and no other came for as long, or the oldest waited
//!   `batch_max_wait_ms`;
//! - **the signer's checks**: [`validate`] (inputs at depth, exact outputs, the fee band
//!   around this signer's own estimate, inputs needed, standardness), then
//!   [`check_budget`] against the payments the chain already made;
//! - **RBF**: a release broadcast and not confirmed for `bump_after_ms` is replaced by
//!   the proposer in turn (same inputs and payouts, a higher fee within the band);
//! - **supersede and merge**: a release accepted here and not signed for
//!   `respin_after_ms` (too few signers took it) is superseded by the proposer in turn:
//!   every input of it, all its payouts and whatever else waits, so that at most one of
//!   the two confirms and nothing it promised is stranded. Proposals refused here for
//!   paying a peg-out a live release pays are kept as *rivals*; the superseding release
//!   spends an input of each rival it overlaps and pays their peg-outs too, which mends
//!   the split where some honest validators hold one release and the rest another;
//! - **expiry**: a release accepted here, not signed for `expire_after_ms` and to which
//!   this node never contributed a signature share ([`Input::Shared`]) is dropped, its
//!   peg-outs and inputs free again. That is safe: two releases that pay one peg-out and
//!   spend no common input both need t signers on each input, and any two sets of t
//!   share an honest validator, which (having shared for one) holds it live and refuses
//!   the other. It ends the split where some honest validators hold one release and the
//!   rest another paying the same peg-outs, which no superseding release could mend;
//! - **withdrawal**: a live release paying a peg-out that a reorg removed past finality
//!   is replaced by [`withdraw`]'s transaction, which every honest validator builds
//!   identically, so it is accepted from anyone ([`validate_withdrawal`]);
//! - **resends and vouching**: every release held here and not signed yet is sent to
//!   the peers again every `resend_every_ms`. A proposal refused as out of turn is
//!   judged as made in turn once f + 1 validators sent it (one of them honest, which
//!   sends again only what it accepted), so a validator that missed a release in its
//!   turn (away, partitioned, or it kept it for a re-check too briefly) signs it late;
//! - **confirmation**: the chain's vault spend ([`Input::VaultSpend`]) is the only
//!   source of "paid". A spend of a release this book holds marks its peg-outs paid; any
//!   spend counts its payments by class (script, value) for the payment budget, so that
//!   what the book remembers never lets the vault pay a class more often than peg-outs
//!   of it were certified.
//!
//! Persist-first: every change that must survive a restart comes as
//! [`Action::Persist`] before the action that depends on it (a signature request, a
//! broadcast). [`ReleaseBook::restore`] rebuilds the book from what was persisted.

use crate::{
    Live, MAX_PAYOUTS, PaymentClass, Payout, Policy, Proposal, ReleaseError, View, build_fundable, build_with, bump,
    check_budget, class_of, finalize, payment_budget, unpayable, validate, validate_withdrawal, withdraw,
};
use bitcoin::{OutPoint, ScriptBuf, Transaction, Txid, secp256k1::schnorr};
use btcfi_types::{ChainId, EventId, Sats};
use std::collections::{BTreeMap, BTreeSet};

pub type Millis = u64;

/// Proposals kept to check again (a peg-out not certified here yet, a UTXO not at
/// depth yet), and rivals kept to merge: at most this many of each, and at most
/// [`MAX_WAITING_PER_SENDER`] from one validator (see [`evict`]).
pub const MAX_WAITING: usize = 256;
/// At most this many kept proposals (and rivals) from one validator: its own oldest
/// goes first, so that one flooding proposals in its turn displaces only its own.
pub const MAX_WAITING_PER_SENDER: usize = 8;
/// How long a kept proposal is checked again before it is dropped.
pub const WAITING_MS: Millis = 30_000;
/// How long a rival proposal is kept to be merged, and a vote for a proposal out of
/// turn counted.
pub const RIVAL_MS: Millis = 120_000;
/// At most this many proposals one validator's votes count for at a time (its oldest
/// vote goes first): honest validators vote for each release they hold unsigned.
pub const MAX_VOUCHES_PER_SENDER: usize = 4 * MAX_WAITING_PER_SENDER;
/// A peg-out the relay policy refused is put to it again after this long (the policy
/// may have changed; a wrong answer must not strand the user's money for good).
pub const APART_RETRY_MS: Millis = 3_600_000;
/// A relay-policy check ([`Action::Check`]) not answered, or answered with the policy
/// node's silence, is asked again after this long.
pub const CHECK_RETRY_MS: Millis = 5_000;

/// The book's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// This validator's index, and how many there are.
    pub me: usize,
    pub n: usize,
    /// Length of one validator's turn to propose.
    pub takeover_ms: Millis,
    pub batch_wait_ms: Millis,
    pub batch_max_wait_ms: Millis,
    /// How long a broadcast release waits unconfirmed before it is replaced by fee.
    pub bump_after_ms: Millis,
    /// How long a release accepted here waits unsigned before it is superseded.
    pub respin_after_ms: Millis,
    /// How long a release accepted here, and never shared to, waits unsigned before it
    /// is dropped.
    pub expire_after_ms: Millis,
    /// How often the releases held here and not yet signed are sent to the peers again
    /// (a validator that missed one, or kept it too briefly, learns of it: see
    /// [`ReleaseBook`]'s vouching).
    pub resend_every_ms: Millis,
    /// Whether a release is put to the relay policy (bitcoind's `testmempoolaccept`,
    /// [`Action::Check`]) before this node signs a peer's or sends its own fresh one.
    pub policy_checks: bool,
    pub policy: Policy,
}

/// A vault spend as the chain reports it: its txid, the vault UTXOs it spends, and
/// what it pays outside the vault (neither change nor `OP_RETURN` outputs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spend {
    pub txid: Txid,
    pub spent: Vec<OutPoint>,
    pub payments: Vec<(ScriptBuf, Sats)>,
}

impl Spend {
    /// The spend `tx` is, for a vault whose script is `vault`.
    pub fn of(tx: &Transaction, vault: &ScriptBuf) -> Self {
        Self {
            txid: tx.compute_txid(),
            spent: tx.input.iter().map(|i| i.previous_output).collect(),
            payments: tx
                .output
                .iter()
                .filter(|o| o.script_pubkey != *vault && !o.script_pubkey.is_op_return())
                .map(|o| (o.script_pubkey.clone(), Sats(o.value.to_sat())))
                .collect(),
        }
    }

    fn spends(&self, op: &OutPoint) -> bool {
        self.spent.contains(op)
    }
}

/// What the relay policy said of an unsigned release ([`Input::Checked`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It passes (or only its missing signatures stop it).
    Passes,
    /// Refused for `reason`; `blamed` are the peg-outs refused alone (each in a copy of
    /// the release paying only it), with their reasons: they are set apart.
    Refused { reason: String, blamed: Vec<(EventId, String)> },
}

/// What the book is told.
#[derive(Debug, Clone)]
pub enum Input {
    /// The vault's UTXOs at depth, as the chain sees them now (the whole set).
    Utxos(BTreeMap<OutPoint, Sats>),
    /// A peg-out certified by quorum.
    Certified(Payout),
    /// A certified peg-out whose burn left the canonical chain past finality.
    Reorged(EventId),
    /// An event reported final (again): one [`Input::Reorged`] before is payable
    /// once more (the same burn in the new chain). Nothing for any other event.
    Final(EventId),
    /// A proposal from validator `from` (or this node's own, echoed).
    Proposal {
        from: usize,
        proposal: Proposal,
    },
    /// This node is about to contribute to a signature of an input of `txid` (a share
    /// sent, or a signature it aggregated): persisted before it leaves.
    Shared {
        txid: Txid,
    },
    /// Every input of release `txid` signed, in input order.
    Signed {
        txid: Txid,
        signatures: Vec<schnorr::Signature>,
    },
    /// A transaction spending the vault reached depth.
    VaultSpend(Spend),
    /// A vault spend reported before left the chain.
    SpendReorged {
        txid: Txid,
    },
    /// The relay policy's verdict on a release this book asked about
    /// ([`Action::Check`]); `Err` is the policy node's silence or error, never a
    /// verdict (asked again after [`CHECK_RETRY_MS`]).
    Checked {
        txid: Txid,
        verdict: Result<Verdict, String>,
    },
    /// Whether this node's view of the chain has caught up with every final block:
    /// until it has, no release is signed or proposed here ([`ReleaseError::NotSynced`]).
    /// A new book starts synced (a driver whose view catches up at start says so
    /// first); a restored one does not ([`ReleaseBook::restore`]).
    Synced(bool),
    /// Whether the bridge on source chain `chain` holds this epoch's key: while it does
    /// not, nothing burned there is paid ([`ReleaseError::SourceNotReady`]).
    SourceReady {
        chain: ChainId,
        ready: bool,
    },
    /// What the mempool said of a broadcast.
    Mempool {
        txid: Txid,
        accepted: Result<(), String>,
    },
    /// This node's own fee estimate, sat/vB.
    FeeEstimate(u64),
    Tick,
}

/// A durable change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A release this node validated and signs: kept until it confirms or conflicts.
    Live { txid: Txid, proposer: usize, proposal: Proposal, at: Millis },
    /// This node contributed to its signature: it never expires.
    Shared { txid: Txid },
    /// Its signatures (it may be broadcast again after a restart).
    Signed { txid: Txid, signatures: Vec<schnorr::Signature> },
    /// It can no longer confirm (a conflicting spend reached depth), or it did.
    Dropped { txid: Txid },
    /// Never shared to and left unsigned for [`Config::expire_after_ms`]: forgotten
    /// here (nothing this node signed can confirm it), its peg-outs paid by another.
    Expired { txid: Txid },
    /// A vault spend at depth, and the peg-outs it paid; with its signed transaction
    /// when this node holds it (to send it again if a reorg takes it out).
    Spent { spend: Spend, paid: Vec<EventId>, tx: Option<Transaction> },
    /// A vault spend left the chain. It stays a payment in flight: its transaction is
    /// signed and valid, so it may confirm again, and its peg-outs are never paid by
    /// another release until a spend conflicting with it reaches depth.
    Unspent { txid: Txid },
    /// A certified peg-out's burn left the canonical chain past finality: never paid.
    Reorged(EventId),
    /// ... and is final again: payable once more.
    Unreorged(EventId),
    /// A peg-out reorged away while a release paying it that this node gave a share to
    /// (or signed) was live: that release may still confirm (a deeper reorg of what
    /// replaced it), so the peg-out is never payable again here, final again or not.
    Pinned(EventId),
    /// A certified peg-out that the relay policy refuses to pay: left out of every
    /// release until `until`, then put to the policy again.
    SetApart { event: EventId, reason: String, until: Millis },
}

/// What the book counts (its driver maps them to metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Proposed,
    /// An RBF bump of a release stuck unconfirmed.
    Replaced,
    /// A release left unsigned, proposed again alone.
    Respun,
    /// A release left unsigned, superseded by one that also takes in the releases
    /// linked to it (a split's other half, a twin): the node's `merged`.
    Merged,
    Expired,
    Withdrawn,
    Broadcast,
    Confirmed,
    Refused(&'static str),
    RefusedByPolicy,
}

/// What the book asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Persist(Change),
    /// Send this proposal to every peer.
    Propose(Proposal),
    /// Put this unsigned release to the relay policy; the answer comes back as
    /// [`Input::Checked`].
    Check(Proposal),
    /// Sign these BIP341 sighashes, one session per input.
    Sign {
        txid: Txid,
        sighashes: Vec<[u8; 32]>,
    },
    /// Stop signing `txid` (it can no longer confirm).
    Abandon {
        txid: Txid,
    },
    Broadcast(Transaction),
    Count(Count),
    /// A peer's proposal refused for good.
    Refused {
        from: usize,
        txid: Txid,
        error: ReleaseError,
    },
}

#[derive(Debug, Clone)]
struct LiveRelease {
    proposal: Proposal,
    proposer: usize,
    at: Millis,
    signatures: Option<Vec<schnorr::Signature>>,
    shared: bool,
    /// First broadcast (the RBF timer), and last.
    broadcast_at: Option<Millis>,
    sent_at: Millis,
    /// When its proposal was last sent to the peers.
    resent_at: Millis,
}

/// A release put to the relay policy.
#[derive(Debug, Clone)]
struct Checking {
    from: usize,
    proposal: Proposal,
    /// When it arrived (its turn), when it was filed for the check (its retention),
    /// and when the policy was last asked.
    arrived: Millis,
    filed: Millis,
    asked: Millis,
}

/// A live release as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    proposer: usize,
    proposal: Proposal,
    at: Millis,
    signatures: Option<Vec<schnorr::Signature>>,
    shared: bool,
}

/// What [`ReleaseBook::restore`] reads back: the result of applying every persisted
/// [`Change`] in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Persisted {
    live: BTreeMap<Txid, Held>,
    spends: InFlight,
    /// Spends that left the chain and may confirm again.
    unconfirmed: InFlight,
    reorged: BTreeSet<EventId>,
    pinned: BTreeSet<EventId>,
    apart: BTreeMap<EventId, (String, Millis)>,
}

impl Persisted {
    /// The shortest log this state is rebuilt from: applied in order to an empty
    /// [`Persisted`], it gives this one back. The history that led here (releases that
    /// expired, were dropped or confirmed, each step of a live one) is left out; what
    /// stays is every vault spend at depth, each one out of the chain and still in
    /// flight, every live release as it stands, and every reorged and set-apart peg-out.
    pub fn compacted(&self) -> Vec<Change> {
        let mut out = Vec::new();
        for r in self.spends.values() {
            out.push(Change::Spent { spend: r.spend.clone(), paid: r.paid.clone(), tx: r.tx.clone() });
        }
        // One out of the chain conflicts with no spend at depth and with no other one
        // out of the chain (either would have voided it), so each goes back as it went:
        // at depth, then out.
        for r in self.unconfirmed.values() {
            out.push(Change::Spent { spend: r.spend.clone(), paid: r.paid.clone(), tx: r.tx.clone() });
            out.push(Change::Unspent { txid: r.spend.txid });
        }
        for (txid, h) in &self.live {
            out.push(Change::Live { txid: *txid, proposer: h.proposer, proposal: h.proposal.clone(), at: h.at });
            if h.shared {
                out.push(Change::Shared { txid: *txid });
            }
            if let Some(signatures) = &h.signatures {
                out.push(Change::Signed { txid: *txid, signatures: signatures.clone() });
            }
        }
        out.extend(self.reorged.iter().map(|e| Change::Reorged(*e)));
        out.extend(self.pinned.iter().map(|e| Change::Pinned(*e)));
        for (event, (reason, until)) in &self.apart {
            out.push(Change::SetApart { event: *event, reason: reason.clone(), until: *until });
        }
        out
    }

    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Live { txid, proposer, proposal, at } => {
                self.live.insert(
                    *txid,
                    Held { proposer: *proposer, proposal: proposal.clone(), at: *at, signatures: None, shared: false },
                );
            }
            Change::Signed { txid, signatures } => {
                if let Some(l) = self.live.get_mut(txid) {
                    l.signatures = Some(signatures.clone());
                }
            }
            Change::Shared { txid } => {
                if let Some(l) = self.live.get_mut(txid) {
                    l.shared = true;
                }
            }
            Change::Dropped { txid } | Change::Expired { txid } => {
                self.live.remove(txid);
            }
            Change::Spent { spend, paid, tx } => {
                self.unconfirmed.remove(&spend.txid);
                void(&mut self.unconfirmed, spend);
                let record = Recorded { spend: spend.clone(), paid: paid.clone(), tx: tx.clone() };
                self.spends.insert(spend.txid, record);
            }
            Change::Unspent { txid } => {
                unspend(&mut self.spends, &mut self.unconfirmed, txid);
            }
            Change::Reorged(e) => {
                self.reorged.insert(*e);
            }
            Change::Unreorged(e) => {
                self.reorged.remove(e);
            }
            Change::Pinned(e) => {
                self.pinned.insert(*e);
            }
            Change::SetApart { event, reason, until } => {
                self.apart.insert(*event, (reason.clone(), *until));
            }
        }
    }
}

/// Whether `a` and `b` spend an outpoint in common (at most one of them can confirm).
fn conflicts(a: &Spend, b: &Spend) -> bool {
    b.spent.iter().any(|op| a.spends(op))
}

/// A vault spend as recorded: the peg-outs it paid, and its signed transaction if
/// this node holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Recorded {
    spend: Spend,
    paid: Vec<EventId>,
    tx: Option<Transaction>,
}

/// Vault spends by txid (at depth, or out of the chain and in flight).
type InFlight = BTreeMap<Txid, Recorded>;

/// Removes from `unconfirmed` every spend that can no longer confirm now that `spend`
/// is at depth: each that conflicts with it and, transitively, each that spends an
/// output of one removed. The same rule in memory and on replay, so a restart rebuilds
/// the same set.
fn void(unconfirmed: &mut InFlight, spend: &Spend) {
    let own = spend.txid;
    let dead = unconfirmed.iter().filter(|(t, u)| **t != own && conflicts(&u.spend, spend)).map(|(t, _)| *t).collect();
    bury(unconfirmed, dead);
}

/// Removes `dead` from `unconfirmed`, and with them every spend there that spends an
/// output of one removed, transitively (an output that will never exist).
fn bury(unconfirmed: &mut InFlight, mut dead: BTreeSet<Txid>) {
    loop {
        let orphans: Vec<Txid> = unconfirmed
            .iter()
            .filter(|(t, u)| !dead.contains(*t) && u.spend.spent.iter().any(|op| dead.contains(&op.txid)))
            .map(|(t, _)| *t)
            .collect();
        if orphans.is_empty() {
            break;
        }
        dead.extend(orphans);
    }
    unconfirmed.retain(|t, _| !dead.contains(t));
}

/// Moves the spend `txid` out of `spends`, as a reorg took it out of the chain: into
/// `unconfirmed` (it may confirm again), unless a spend still at depth conflicts with
/// it (then it never can, nor can what spends its outputs). `None` if it was not a
/// spend at depth; else the transaction kept in flight, if it is.
fn unspend(spends: &mut InFlight, unconfirmed: &mut InFlight, txid: &Txid) -> Option<Option<Recorded>> {
    let record = spends.remove(txid)?;
    if spends.values().any(|s| conflicts(&s.spend, &record.spend)) {
        bury(unconfirmed, BTreeSet::from([*txid]));
        return Some(None);
    }
    unconfirmed.insert(*txid, record.clone());
    Some(Some(record))
}

/// Whether a proposal refused for `e` competes with a release held here (it pays what
/// that one pays, or spends its inputs): kept as a rival, for a merge or for when that
/// one is gone.
fn is_rival(e: &ReleaseError) -> bool {
    matches!(e, ReleaseError::PayoutLocked(_) | ReleaseError::Strands { .. } | ReleaseError::NoFeeIncrease(_))
}

/// Which kept entry (`(key, sender, kept at)`) goes before one more from `from` is
/// kept: `from`'s own oldest once it has [`MAX_WAITING_PER_SENDER`]; else, when
/// [`MAX_WAITING`] are kept, the oldest of the sender that has the most. A validator
/// flooding proposals in its turn so only ever displaces its own, never an honest
/// proposer's kept proposal or the rival a merge needs.
fn evict<K: Copy>(kept: &[(K, usize, Millis)], from: usize) -> Option<K> {
    let mut per: BTreeMap<usize, usize> = BTreeMap::new();
    for (_, sender, _) in kept {
        *per.entry(*sender).or_default() += 1;
    }
    let oldest_of = |s: usize| kept.iter().filter(|(_, w, _)| *w == s).min_by_key(|(_, _, at)| *at).map(|(k, _, _)| *k);
    if per.get(&from).copied().unwrap_or(0) >= MAX_WAITING_PER_SENDER {
        return oldest_of(from);
    }
    if kept.len() >= MAX_WAITING {
        let (heaviest, _) = per.iter().max_by_key(|(_, count)| **count)?;
        return oldest_of(*heaviest);
    }
    None
}

/// One validator's release ledger.
#[derive(Debug)]
pub struct ReleaseBook {
    config: Config,
    utxos: BTreeMap<OutPoint, Sats>,
    certified: BTreeMap<EventId, Payout>,
    /// When each certified peg-out was first seen here (the batching pace).
    seen_at: BTreeMap<EventId, Millis>,
    reorged: BTreeSet<EventId>,
    /// Reorged peg-outs never payable again ([`Change::Pinned`]).
    pinned: BTreeSet<EventId>,
    live: BTreeMap<Txid, LiveRelease>,
    /// Vault spends at depth: the peg-outs each paid (those of a release held here).
    spends: InFlight,
    /// Vault spends that left the chain (a reorg past finality): still payments in
    /// flight, sent again, their inputs locked and their peg-outs counted paid, until
    /// they confirm again or a conflicting spend does.
    unconfirmed: InFlight,
    /// When each of `unconfirmed` was last sent.
    unconfirmed_sent: BTreeMap<Txid, Millis>,
    waiting: Vec<(usize, Proposal, Millis)>,
    /// Proposals refused because they pay what a live release here pays: what a
    /// superseding release merges.
    rivals: BTreeMap<Txid, (Proposal, Millis, usize)>,
    /// Proposals refused here as out of turn, with the validators that sent them (when
    /// first, and who first): once f + 1 did, one honest validator accepted it and
    /// resends it, so it is judged as made in turn.
    vouchers: BTreeMap<Txid, BTreeMap<usize, Millis>>,
    /// Proposals judged as made in turn because f + 1 validators sent them.
    vouched: BTreeSet<Txid>,
    /// Releases valid here waiting for the relay policy's verdict (this node's own
    /// fresh one among them, from `me`).
    checking: BTreeMap<Txid, Checking>,
    /// Certified peg-outs the relay policy refuses to pay, with the reason and until
    /// when they are left out.
    apart: BTreeMap<EventId, (String, Millis)>,
    /// Whether the chain view caught up ([`Input::Synced`]).
    synced: bool,
    /// Source chains whose bridge does not hold this epoch's key ([`Input::SourceReady`]).
    held: BTreeSet<ChainId>,
    /// Restored, and what it owes not asked for yet ([`Self::resume`]).
    resume: bool,
    fee_estimate: Option<u64>,
    last_proposal: Option<Millis>,
    #[cfg(feature = "canary")]
    canary: Option<Canary>,
}

/// A planted bug (tests only), to show the simulation's checks catch it.
#[cfg(feature = "canary")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canary {
    /// The signer accepts any fee (the band around its own estimate is not applied).
    IgnoreFeeBand,
    /// A peg-out reorged out past finality stays payable.
    PayReorged,
}

impl ReleaseBook {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            utxos: BTreeMap::new(),
            certified: BTreeMap::new(),
            seen_at: BTreeMap::new(),
            reorged: BTreeSet::new(),
            pinned: BTreeSet::new(),
            live: BTreeMap::new(),
            spends: BTreeMap::new(),
            unconfirmed: BTreeMap::new(),
            unconfirmed_sent: BTreeMap::new(),
            waiting: Vec::new(),
            rivals: BTreeMap::new(),
            vouchers: BTreeMap::new(),
            vouched: BTreeSet::new(),
            checking: BTreeMap::new(),
            apart: BTreeMap::new(),
            synced: true,
            held: BTreeSet::new(),
            resume: false,
            fee_estimate: None,
            last_proposal: None,
            #[cfg(feature = "canary")]
            canary: None,
        }
    }

    /// The book of a restarted node, and the drops it owes (releases a spend recorded
    /// before the crash ended). What it still owes the network, the signatures of the
    /// releases it had not finished signing and the broadcast of those it had, it asks
    /// for once its chain view is back ([`Input::Synced`]): a restored book starts
    /// catching up, since a peg-out may have been reorged away while the node was down
    /// and, not told yet, it would sign the release paying it. (Certified peg-outs and
    /// UTXOs come again from consensus and the chain.)
    pub fn restore(config: Config, persisted: &Persisted, now: Millis) -> (Self, Vec<Action>) {
        let mut book = Self::new(config);
        book.synced = false;
        book.resume = true;
        let mut out = Vec::new();
        book.spends = persisted.spends.clone();
        book.reorged = persisted.reorged.clone();
        book.pinned = persisted.pinned.clone();
        book.apart = persisted.apart.clone();
        book.unconfirmed = persisted.unconfirmed.clone();
        let spent: BTreeSet<OutPoint> = persisted.spends.values().flat_map(|s| s.spend.spent.iter().copied()).collect();
        for (txid, Held { proposer, proposal, at, signatures, shared }) in &persisted.live {
            // On chain, or in conflict with what is, already (a crash came between the
            // spend's record and the release's drop): it is dropped now.
            if persisted.spends.contains_key(txid)
                || proposal.tx.input.iter().any(|i| spent.contains(&i.previous_output))
            {
                out.push(Action::Persist(Change::Dropped { txid: *txid }));
                continue;
            }
            book.live.insert(
                *txid,
                LiveRelease {
                    proposal: proposal.clone(),
                    proposer: *proposer,
                    at: *at,
                    signatures: signatures.clone(),
                    shared: *shared,
                    broadcast_at: signatures.as_ref().map(|_| now),
                    sent_at: now,
                    resent_at: now,
                },
            );
        }
        (book, out)
    }

    /// What a restored book owes once its chain view is back: the broadcast of the
    /// spends in flight and of the releases it signed, and the signatures of those it
    /// had not finished signing (but those paying a peg-out reorged away: their
    /// withdrawals supersede them).
    fn resume(&mut self, now: Millis, out: &mut Vec<Action>) {
        for (txid, r) in &self.unconfirmed {
            if let Some(tx) = &r.tx {
                self.unconfirmed_sent.insert(*txid, now);
                out.push(Action::Broadcast(tx.clone()));
            }
        }
        for (txid, l) in self.live.iter_mut() {
            match &l.signatures {
                // Signed before a peg-out it pays was reorged away: left to its
                // withdrawal, never sent again from here.
                Some(_) if l.proposal.payouts.iter().any(|p| self.reorged.contains(p)) => {}
                Some(s) => {
                    l.broadcast_at = Some(now);
                    l.sent_at = now;
                    out.push(Action::Broadcast(finalize(&l.proposal.tx, s)));
                }
                None if l.proposal.payouts.iter().any(|p| self.reorged.contains(p)) => {}
                None => {
                    if let Ok(sighashes) = crate::sighashes(&l.proposal.tx, &l.proposal.prevouts) {
                        out.push(Action::Sign { txid: *txid, sighashes });
                    }
                }
            }
        }
    }

    #[cfg(feature = "canary")]
    pub fn set_canary(&mut self, canary: Option<Canary>) {
        self.canary = canary;
    }

    fn canary_is(&self, _c: &str) -> bool {
        #[cfg(feature = "canary")]
        {
            match self.canary {
                Some(Canary::IgnoreFeeBand) => _c == "fee",
                Some(Canary::PayReorged) => _c == "reorg",
                None => false,
            }
        }
        #[cfg(not(feature = "canary"))]
        false
    }

    pub fn handle(&mut self, input: Input, now: Millis) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Utxos(utxos) => {
                self.utxos = utxos;
                self.recheck(now, &mut out);
            }
            Input::Certified(p) => {
                // Kept even when set apart: it is payable again once put to the policy
                // anew (`APART_RETRY_MS`).
                let known = self.certified.contains_key(&p.event);
                if !self.reorged.contains(&p.event) && !known {
                    self.seen_at.entry(p.event).or_insert(now);
                    self.certified.insert(p.event, p);
                    self.recheck(now, &mut out);
                }
            }
            Input::Reorged(e) => self.on_reorged(e, now, &mut out),
            Input::Final(e) => {
                // A release paying it was shared to here before the reorg: it may yet
                // confirm, so another never pays it (quorum intersection: any t signers
                // of a second payment include an honest one that pinned it).
                if !self.pinned.contains(&e) && self.reorged.remove(&e) {
                    out.push(Action::Persist(Change::Unreorged(e)));
                    // Paid by a release once more, unless one paying it still may
                    // confirm (the lock on what live and in-flight releases pay holds).
                    self.seen_at.insert(e, now);
                    self.recheck(now, &mut out);
                }
            }
            Input::Proposal { from, proposal } => self.on_proposal(from, proposal, now, &mut out),
            Input::Shared { txid } => {
                if let Some(l) = self.live.get_mut(&txid)
                    && !l.shared
                {
                    l.shared = true;
                    out.push(Action::Persist(Change::Shared { txid }));
                }
            }
            Input::Signed { txid, signatures } => {
                let Some(l) = self.live.get_mut(&txid) else { return out };
                if l.signatures.is_some() || signatures.len() != l.proposal.tx.input.len() {
                    return out;
                }
                l.signatures = Some(signatures.clone());
                l.broadcast_at = Some(now);
                l.sent_at = now;
                let tx = finalize(&l.proposal.tx, &signatures);
                out.push(Action::Persist(Change::Signed { txid, signatures }));
                out.push(Action::Broadcast(tx));
                out.push(Action::Count(Count::Broadcast));
            }
            Input::VaultSpend(spend) => self.on_spend(spend, &mut out),
            Input::SpendReorged { txid } => {
                // Signed and valid still: sent again, and what it pays is not paid by
                // another release unless a conflicting spend reaches depth (a second
                // payment that could confirm beside it would pay those peg-outs twice).
                if let Some(kept) = unspend(&mut self.spends, &mut self.unconfirmed, &txid) {
                    out.push(Action::Persist(Change::Unspent { txid }));
                    if let Some(tx) = kept.and_then(|r| r.tx) {
                        self.unconfirmed_sent.insert(txid, now);
                        out.push(Action::Broadcast(tx));
                    }
                }
            }
            Input::Mempool { txid, accepted } => {
                if accepted.is_err() && self.live.contains_key(&txid) {
                    out.push(Action::Count(Count::RefusedByPolicy));
                }
            }
            Input::Checked { txid, verdict } => self.on_checked(txid, verdict, now, &mut out),
            Input::Synced(synced) => {
                self.synced = synced;
                if synced {
                    if std::mem::take(&mut self.resume) {
                        self.resume(now, &mut out);
                    }
                    self.recheck(now, &mut out);
                }
            }
            Input::SourceReady { chain, ready } => {
                if ready {
                    if self.held.remove(&chain) {
                        self.recheck(now, &mut out);
                    }
                } else {
                    self.held.insert(chain);
                }
            }
            Input::FeeEstimate(rate) => self.fee_estimate = Some(rate),
            Input::Tick => {
                // Kept as long as the supersede gate may hold one back, and more.
                let keep = WAITING_MS + self.config.respin_after_ms.max(self.config.bump_after_ms);
                self.waiting.retain(|(_, _, at)| now.saturating_sub(*at) < keep);
                self.rivals.retain(|_, (_, at, _)| now.saturating_sub(*at) < RIVAL_MS);
                for votes in self.vouchers.values_mut() {
                    votes.retain(|_, at| now.saturating_sub(*at) < RIVAL_MS);
                }
                self.vouchers.retain(|_, votes| !votes.is_empty());
                let kept: BTreeSet<Txid> = self
                    .waiting
                    .iter()
                    .map(|(_, p, _)| p.txid())
                    .chain(self.rivals.keys().copied())
                    .chain(self.vouchers.keys().copied())
                    .chain(self.checking.keys().copied())
                    .collect();
                self.vouched.retain(|t| kept.contains(t));
                self.checking.retain(|_, c| now.saturating_sub(c.filed) < WAITING_MS);
                self.ask_again(now, &mut out);
                self.apart.retain(|_, (_, until)| now < *until);
                self.expire(now, &mut out);
                if self.synced {
                    self.resend(now, &mut out);
                }
                self.withdraw_reorged(now, &mut out);
                self.recheck(now, &mut out);
                self.maybe_bump(now, &mut out);
                self.maybe_respin(now, &mut out);
                self.maybe_propose(now, &mut out);
                if self.synced {
                    self.rebroadcast(now, &mut out);
                }
            }
        }
        out
    }

    /// The turn order this book proposes and judges by.
    pub fn turns(&self) -> crate::Turns {
        crate::Turns { n: self.config.n, me: self.config.me, takeover_ms: self.config.takeover_ms }
    }

    /// The validator whose turn it is at `at_ms`.
    pub fn turn_at(&self, at_ms: Millis) -> usize {
        self.turns().turn_at(at_ms)
    }

    /// Whether this node's proposing window is open at `now` ([`crate::Turns::may_propose`]).
    pub fn may_propose(&self, now: Millis) -> bool {
        self.turns().may_propose(now)
    }

    /// Whether `from` held the turn at `at` (within the slack at either end).
    pub fn in_turn(&self, from: usize, at: Millis) -> Result<(), ReleaseError> {
        self.turns().in_turn(from, at)
    }

    /// Peg-outs certified here and payable: not reorged (unless the canary says so),
    /// not set apart by the relay policy.
    fn payable(&self) -> BTreeMap<EventId, Payout> {
        let pay_reorged = self.canary_is("reorg");
        self.certified
            .iter()
            .filter(|(e, _)| pay_reorged || !self.reorged.contains(e))
            .filter(|(e, _)| !self.apart.contains_key(e))
            .map(|(e, p)| (*e, p.clone()))
            .collect()
    }

    /// Peg-outs paid by a spend at depth, or by one that left the chain and may
    /// confirm again.
    fn paid(&self) -> BTreeSet<EventId> {
        self.spends.values().chain(self.unconfirmed.values()).flat_map(|r| r.paid.iter().copied()).collect()
    }

    /// Final payments on chain by class (every vault spend's non-vault outputs).
    fn on_chain(&self) -> BTreeMap<PaymentClass, usize> {
        let mut m = BTreeMap::new();
        for r in self.spends.values().chain(self.unconfirmed.values()) {
            for (script, value) in &r.spend.payments {
                *m.entry((script.clone(), value.0)).or_default() += 1;
            }
        }
        m
    }

    fn live_view(&self) -> BTreeMap<Txid, Live> {
        self.live.iter().map(|(t, l)| (*t, Live::of(&l.proposal))).collect()
    }

    /// Validates `p` from `from` against this node's view: the sighashes to sign.
    /// Validates `p` from `from`, which arrived at `arrived` (its turn), at `now`.
    fn check(&self, from: usize, p: &Proposal, arrived: Millis, now: Millis) -> Result<Vec<[u8; 32]>, ReleaseError> {
        if !self.synced {
            return Err(ReleaseError::NotSynced);
        }
        let certified = self.payable();
        let paid = self.paid();
        let live = self.live_view();
        let rival: BTreeSet<OutPoint> =
            self.rivals.values().flat_map(|(r, _, _)| r.tx.input.iter().map(|i| i.previous_output)).collect();
        let inputs: BTreeSet<OutPoint> = p.tx.input.iter().map(|i| i.previous_output).collect();
        // The band is around this node's own estimate alone, replacements included:
        // centred on the rate of what it replaces (as the node's pipeline does), a
        // validator in turn could raise the fee up to `max_fee_multiple` times with
        // each bump, to the configured ceiling. A release stuck below the market is
        // bumped within the band of an estimate that has risen with the market.
        let estimate = self.fee_estimate;
        let view = View {
            utxos: &self.utxos,
            live: &live,
            paid: &paid,
            certified: &certified,
            fee_estimate: estimate,
            rival_inputs: &rival,
        };
        // A withdrawal of a live release, identical on every honest node: from anyone.
        // It is checked against each live release with its inputs (a release and its
        // RBF bump both may be live here, and other validators may hold only one of
        // them): the withdrawal of any is accepted, as they all conflict.
        let mut refused = None;
        for l in self.live.values() {
            let same_inputs = Live::of(&l.proposal).inputs == inputs;
            let withdrawn: BTreeSet<EventId> =
                l.proposal.payouts.iter().copied().filter(|e| !p.payouts.contains(e)).collect();
            if same_inputs && !withdrawn.is_empty() && withdrawn.iter().all(|e| self.reorged.contains(e)) {
                match validate_withdrawal(p, &l.proposal, &withdrawn, &view, &self.config.policy) {
                    Ok(sighashes) => return Ok(sighashes),
                    Err(e) => refused = refused.or(Some(e)),
                }
            }
        }
        if let Some(e) = refused {
            return Err(e);
        }
        if !self.vouched.contains(&p.txid()) {
            self.in_turn(from, arrived)?;
        }
        // Nothing burned on a bridge that holds another key is paid (a withdrawal, above,
        // pays only what its release paid).
        if let Some(e) = p.payouts.iter().find(|e| self.held.contains(&e.chain)) {
            return Err(ReleaseError::SourceNotReady(*e));
        }
        let mut policy = self.config.policy.clone();
        if self.canary_is("fee") {
            policy.ceiling_sat_per_vb = u64::MAX / 1_000_000;
            policy.max_fee_multiple = u64::MAX / 1_000_000;
        }
        let view = View { fee_estimate: if self.canary_is("fee") { None } else { estimate }, ..view };
        let sighashes = validate(p, &view, &policy)?;
        // Promised elsewhere: the payouts of live releases that do not conflict with it.
        let promised: BTreeSet<EventId> = self
            .live
            .values()
            .filter(|l| l.proposal.tx.input.iter().all(|i| !inputs.contains(&i.previous_output)))
            .flat_map(|l| l.proposal.payouts.iter().copied())
            .collect();
        check_budget(p, &certified, &self.on_chain(), &promised, &policy)?;
        // This node's own supersedes are chosen by `maybe_respin` and `maybe_bump` from
        // releases that had their time here; those they merge may be young, and the
        // others keep the merge until their own wait is over.
        if from != self.config.me {
            self.supersede_gate(p, &inputs, &live, now)?;
        }
        Ok(sighashes)
    }

    /// A release that spends an input of a live one held here supersedes it only once
    /// that one had its chance: signing under way here (a share given) for
    /// `respin_after_ms` since it was accepted, or broadcast and unconfirmed for
    /// `bump_after_ms`; and, spending the very same inputs as a broadcast one, only at
    /// a higher fee (else mempools would refuse the replacement). Otherwise a
    /// validator in turn could replace every release while it is being signed, over
    /// and over. One this node never gave a share to is not gated: its signing is not
    /// under way here (it waits for t signers, as the halves of a split do), and the
    /// merge that mends a split must be signed at once, before the halves expire and
    /// propose again. The node's own gate (`pipeline/releases/ledger.rs`) also refuses
    /// a cheaper twin of a release still being signed; here that twin is signed beside
    /// it after the wait (at most one of two conflicting releases confirms), as the
    /// simulation found a validator splitting twins otherwise splits the signers.
    /// (A withdrawal is checked before this: it must replace its release at once.)
    /// `inputs` are `p`'s, `live` the view of the releases held here ([`Self::live_view`]).
    fn supersede_gate(
        &self,
        p: &Proposal,
        inputs: &BTreeSet<OutPoint>,
        live: &BTreeMap<Txid, Live>,
        now: Millis,
    ) -> Result<(), ReleaseError> {
        let txid = p.txid();
        // Those it supersedes whose signing is under way here (or done), with when
        // their wait started and how long it is.
        let gated: Vec<(Txid, &LiveRelease, Millis, Millis)> = self
            .live
            .iter()
            .filter(|(t, _)| **t != txid && live.get(*t).is_some_and(|v| !v.inputs.is_disjoint(inputs)))
            .filter_map(|(t, l)| match l.broadcast_at {
                Some(b) => Some((*t, l, b, self.config.bump_after_ms)),
                None if l.shared => Some((*t, l, l.at, self.config.respin_after_ms)),
                None => None,
            })
            .collect();
        // Never at no higher fee for the same inputs as one broadcast (mempools keep
        // the first; checked first: it is for good, and such a proposal is a rival
        // to merge, not one to keep for later). A cheaper twin of one still being
        // signed is signed beside it once its wait is over: at most one confirms.
        for (t, l, _, _) in &gated {
            let same_inputs = live.get(t).is_some_and(|v| v.inputs == *inputs);
            if l.broadcast_at.is_some() && same_inputs && p.fee() <= l.proposal.fee() {
                return Err(ReleaseError::NoFeeIncrease(*t));
            }
        }
        for (t, _, since, wait) in &gated {
            if now.saturating_sub(*since) < *wait {
                return Err(ReleaseError::TooEarly(*t));
            }
        }
        Ok(())
    }

    fn on_proposal(&mut self, from: usize, p: Proposal, now: Millis, out: &mut Vec<Action>) {
        let txid = p.txid();
        if self.live.contains_key(&txid) {
            return;
        }
        // Kept here already (sent again): it stays as it was kept, checked again each
        // tick as from whoever sent it first and when, and the sender vouches for it.
        // Only the very proposal: a copy with the txid but other prevouts or payouts (a
        // Byzantine validator's) is judged on its own and never displaces it.
        let waiting = self.waiting.iter().any(|(_, q, _)| *q == p);
        let rival = self.rivals.get(&txid).is_some_and(|(q, _, _)| *q == p);
        let checking = self.checking.get(&txid).is_some_and(|c| c.proposal == p);
        if waiting || rival || checking {
            if from != self.config.me {
                self.vouch(from, txid, now);
            }
            return;
        }
        match self.check(from, &p, now, now) {
            Ok(sighashes) => self.admit(from, p, sighashes, now, now, out),
            Err(e) if e.may_pass_later() => self.keep_waiting(from, p, now),
            Err(ReleaseError::NotInTurn { .. })
                if from != self.config.me && !self.vouched.contains(&txid) && self.vouch(from, txid, now) =>
            {
                // f + 1 validators sent it: judged again, as made in turn.
                self.on_proposal(from, p, now, out);
            }
            Err(error) => {
                if is_rival(&error) {
                    self.keep_rival(from, p, now);
                }
                out.push(Action::Count(Count::Refused(error.reason())));
                out.push(Action::Refused { from, txid, error });
            }
        }
    }

    /// A peer's proposal valid here (it arrived at `arrived`): signed, or first put to
    /// the relay policy when the book is configured so.
    fn admit(
        &mut self,
        from: usize,
        p: Proposal,
        sighashes: Vec<[u8; 32]>,
        arrived: Millis,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        if !self.config.policy_checks {
            return self.accept(from, p, sighashes, now, out);
        }
        self.ask(from, p, arrived, now, out);
    }

    /// Files `p` for the relay policy's verdict and asks (bounded as kept proposals).
    fn ask(&mut self, from: usize, p: Proposal, arrived: Millis, now: Millis, out: &mut Vec<Action>) {
        let txid = p.txid();
        if self.checking.contains_key(&txid) {
            return;
        }
        let kept: Vec<(Txid, usize, Millis)> = self.checking.iter().map(|(t, c)| (*t, c.from, c.filed)).collect();
        if let Some(t) = evict(&kept, from) {
            self.checking.remove(&t);
        }
        out.push(Action::Check(p.clone()));
        self.checking.insert(txid, Checking { from, proposal: p, arrived, filed: now, asked: now });
    }

    /// Checks not answered for [`CHECK_RETRY_MS`] (or answered with silence) are asked
    /// again.
    fn ask_again(&mut self, now: Millis, out: &mut Vec<Action>) {
        // This node's own, once its turn passed: never sent (the next proposer's turn).
        let (me, in_turn) = (self.config.me, self.may_propose(now));
        self.checking.retain(|_, c| in_turn || c.from != me);
        for c in self.checking.values_mut() {
            if now.saturating_sub(c.asked) >= CHECK_RETRY_MS {
                c.asked = now;
                out.push(Action::Check(c.proposal.clone()));
            }
        }
    }

    /// The relay policy's verdict on `txid`. Passing, it is checked again (the view
    /// may have moved while the policy was asked) and signed, or, this node's own,
    /// sent if its turn lasts. Refused, the peg-outs the policy blames are set apart
    /// and it is not signed (this node's next proposal goes without them).
    fn on_checked(&mut self, txid: Txid, verdict: Result<Verdict, String>, now: Millis, out: &mut Vec<Action>) {
        // The policy node's silence: asked again later, never taken as a verdict.
        let Ok(verdict) = verdict else { return };
        let Some(c) = self.checking.remove(&txid) else { return };
        let (from, arrived) = (c.from, c.arrived);
        match verdict {
            Verdict::Passes => {
                if self.live.contains_key(&txid) {
                    return;
                }
                match self.check(from, &c.proposal, arrived, now) {
                    Ok(sighashes) if from == self.config.me => {
                        // The turn may have passed on while the policy was asked.
                        if self.may_propose(now) {
                            out.push(Action::Propose(c.proposal.clone()));
                            out.push(Action::Count(Count::Proposed));
                            self.accept(from, c.proposal, sighashes, now, out);
                        }
                    }
                    Ok(sighashes) => self.accept(from, c.proposal, sighashes, now, out),
                    Err(e) if e.may_pass_later() && from != self.config.me => {
                        self.keep_waiting(from, c.proposal, arrived);
                    }
                    Err(error) if from != self.config.me => {
                        // The other half of a split, passed just after this one: kept
                        // for the merge.
                        if is_rival(&error) {
                            self.keep_rival(from, c.proposal, arrived);
                        }
                        out.push(Action::Count(Count::Refused(error.reason())));
                        out.push(Action::Refused { from, txid, error });
                    }
                    Err(_) => {}
                }
            }
            Verdict::Refused { reason, blamed } => {
                // Only what the release pays can be blamed; each is put to the policy
                // again after `APART_RETRY_MS`.
                for (event, why) in blamed {
                    let pays = c.proposal.payouts.contains(&event);
                    if pays && self.certified.contains_key(&event) && !self.apart.contains_key(&event) {
                        let reason = format!("the relay policy refuses its output: {why}");
                        let until = now.saturating_add(APART_RETRY_MS);
                        out.push(Action::Persist(Change::SetApart { event, reason: reason.clone(), until }));
                        self.apart.insert(event, (reason, until));
                    }
                }
                out.push(Action::Count(Count::RefusedByPolicy));
                if from != self.config.me {
                    out.push(Action::Refused { from, txid, error: ReleaseError::RefusedByPolicy(reason) });
                }
            }
        }
    }

    /// Records that `from` sent `txid`; whether f + 1 validators have now, so that it
    /// is judged as made in turn from now on. Honest validators send again only what
    /// they accepted, so of f + 1 senders one honest validator accepted it: in turn, a
    /// withdrawal, or vouched for in turn. Each sender's votes are bounded
    /// ([`MAX_VOUCHES_PER_SENDER`], its own oldest vote dropped first), and so are the
    /// proposals voted for ([`MAX_WAITING`], the one with the fewest votes dropped
    /// first): a validator flooding votes drops only its own, never an honest one's.
    fn vouch(&mut self, from: usize, txid: Txid, now: Millis) -> bool {
        let voted = self.vouchers.get(&txid).is_some_and(|v| v.contains_key(&from));
        if !voted {
            let mine: Vec<(Txid, Millis)> =
                self.vouchers.iter().filter_map(|(t, v)| v.get(&from).map(|at| (*t, *at))).collect();
            if mine.len() >= MAX_VOUCHES_PER_SENDER
                && let Some((t, _)) = mine.iter().min_by_key(|(t, at)| (*at, *t))
                && let Some(votes) = self.vouchers.get_mut(t)
            {
                votes.remove(&from);
                if votes.is_empty() {
                    self.vouchers.remove(t);
                }
            }
            if !self.vouchers.contains_key(&txid) && self.vouchers.len() >= MAX_WAITING {
                let fewest = self
                    .vouchers
                    .iter()
                    .min_by_key(|(t, v)| (v.len(), v.values().min().copied().unwrap_or(0), **t))
                    .map(|(t, _)| *t);
                if let Some(t) = fewest {
                    self.vouchers.remove(&t);
                }
            }
        }
        let votes = self.vouchers.entry(txid).or_default();
        votes.entry(from).or_insert(now);
        let f = self.config.n.saturating_sub(1) / 3;
        if votes.len() > f {
            self.vouched.insert(txid);
        }
        self.vouched.contains(&txid)
    }

    /// The releases held here and not signed yet are sent to the peers again every
    /// `resend_every_ms`: a validator that missed one, or kept it for a re-check too
    /// briefly, learns of it from f + 1 of those that accepted it (see [`Self::vouch`]).
    fn resend(&mut self, now: Millis, out: &mut Vec<Action>) {
        for l in self.live.values_mut() {
            if l.signatures.is_none() && now.saturating_sub(l.resent_at) >= self.config.resend_every_ms {
                l.resent_at = now;
                out.push(Action::Propose(l.proposal.clone()));
            }
        }
    }

    fn accept(&mut self, from: usize, p: Proposal, sighashes: Vec<[u8; 32]>, now: Millis, out: &mut Vec<Action>) {
        let txid = p.txid();
        out.push(Action::Persist(Change::Live { txid, proposer: from, proposal: p.clone(), at: now }));
        self.live.insert(
            txid,
            LiveRelease {
                proposal: p,
                proposer: from,
                at: now,
                signatures: None,
                shared: false,
                broadcast_at: None,
                sent_at: now,
                resent_at: now,
            },
        );
        self.vouchers.remove(&txid);
        self.vouched.remove(&txid);
        out.push(Action::Sign { txid, sighashes });
    }

    /// Kept proposals checked again (the turn is checked at arrival, so it is not
    /// checked again here: a proposal kept in turn stays in turn).
    fn recheck(&mut self, now: Millis, out: &mut Vec<Action>) {
        let waiting = std::mem::take(&mut self.waiting);
        for (from, p, at) in waiting {
            if self.live.contains_key(&p.txid()) {
                continue;
            }
            match self.check(from, &p, at, now) {
                Ok(sighashes) => self.admit(from, p, sighashes, at, now, out),
                Err(e) if e.may_pass_later() => self.waiting.push((from, p, at)),
                Err(error) => {
                    // A rival by now (another release took its peg-outs): kept for a
                    // merge, as when it arrived.
                    if is_rival(&error) {
                        self.keep_rival(from, p.clone(), at);
                    }
                    out.push(Action::Count(Count::Refused(error.reason())));
                    out.push(Action::Refused { from, txid: p.txid(), error });
                }
            }
        }
        // Rivals whose live release here is gone (it expired, never shared to, or
        // conflicts with a spend): signed now, as made in turn when they arrived. That
        // is how the side of a split that let its release expire joins the other.
        let ready: Vec<Txid> = self
            .rivals
            .iter()
            .filter(|(t, (p, at, from))| !self.live.contains_key(*t) && self.check(*from, p, *at, now).is_ok())
            .map(|(t, _)| *t)
            .collect();
        for t in ready {
            let Some((p, at, from)) = self.rivals.remove(&t) else { continue };
            // Checked again: one accepted before it may conflict with it.
            match self.check(from, &p, at, now) {
                Ok(sighashes) => self.admit(from, p, sighashes, at, now, out),
                Err(_) => {
                    self.rivals.insert(t, (p, at, from));
                }
            }
        }
    }

    /// Keeps `p` (from `from`, arrived at `at`) to check again (bounded per sender,
    /// [`evict`]; once).
    fn keep_waiting(&mut self, from: usize, p: Proposal, at: Millis) {
        if self.waiting.iter().any(|(_, q, _)| *q == p) {
            return;
        }
        let kept: Vec<(usize, usize, Millis)> =
            self.waiting.iter().enumerate().map(|(i, (f, _, at))| (i, *f, *at)).collect();
        if let Some(i) = evict(&kept, from) {
            self.waiting.remove(i);
        }
        self.waiting.push((from, p, at));
    }

    /// Keeps `p` as a rival to merge (bounded per sender, [`evict`]).
    fn keep_rival(&mut self, from: usize, p: Proposal, at: Millis) {
        let txid = p.txid();
        if self.rivals.contains_key(&txid) {
            return;
        }
        let kept: Vec<(Txid, usize, Millis)> = self.rivals.iter().map(|(t, (_, at, f))| (*t, *f, *at)).collect();
        if let Some(t) = evict(&kept, from) {
            self.rivals.remove(&t);
        }
        self.rivals.insert(txid, (p, at, from));
    }

    fn on_reorged(&mut self, e: EventId, now: Millis, out: &mut Vec<Action>) {
        if self.canary_is("reorg") || !self.reorged.insert(e) {
            return;
        }
        // Durable, so that a restart does not sign again what pays it.
        out.push(Action::Persist(Change::Reorged(e)));
        if self.live.values().any(|l| l.proposal.payouts.contains(&e) && (l.shared || l.signatures.is_some()))
            && self.pinned.insert(e)
        {
            out.push(Action::Persist(Change::Pinned(e)));
        }
        // Each live release not yet on chain that pays it is withdrawn: the same
        // transaction on every honest validator. One still unsigned is no longer signed
        // here (it stays held: its inputs are the withdrawal's).
        for (txid, l) in &self.live {
            if l.proposal.payouts.contains(&e) && l.signatures.is_none() {
                out.push(Action::Abandon { txid: *txid });
            }
        }
        self.withdraw_reorged(now, out);
    }

    /// Proposes the withdrawal of each live release that pays a reorged peg-out and has
    /// none live yet. Called on every reorg and every tick: a withdrawal this node's own
    /// checks refused for the moment (its view of the vault UTXOs behind, say) is tried
    /// again, so a release paying what no longer exists never keeps its inputs and its
    /// other peg-outs held for good.
    fn withdraw_reorged(&mut self, now: Millis, out: &mut Vec<Action>) {
        if self.reorged.is_empty() {
            return;
        }
        let mut withdrawals = Vec::new();
        for l in self.live.values() {
            let withdrawn: BTreeSet<EventId> =
                l.proposal.payouts.iter().copied().filter(|p| self.reorged.contains(p)).collect();
            if withdrawn.is_empty() {
                continue;
            }
            if let Ok(w) = withdraw(&l.proposal, &withdrawn, &self.config.policy) {
                withdrawals.push(w);
            }
        }
        for w in withdrawals {
            if self.live.contains_key(&w.txid()) {
                continue;
            }
            self.propose_own(w, Count::Withdrawn, now, out);
        }
    }

    fn on_spend(&mut self, spend: Spend, out: &mut Vec<Action>) {
        let txid = spend.txid;
        // Known already (reported again after a restart): its record stands, and what it
        // ends is ended again below, in case a crash came between the two writes.
        let known = self.spends.get(&txid).cloned();
        // Back on the chain after a reorg took it out: what it paid it pays again.
        let returned = self.unconfirmed.remove(&txid);
        // Spends out of the chain that conflict with this one can never confirm: their
        // peg-outs are unpaid again (the records dropped with `Spent`, see `Persisted`).
        void(&mut self.unconfirmed, &spend);
        let was_returned = returned.is_some();
        let record = match known.clone().or(returned) {
            Some(r) => r,
            None => {
                let held = self.live.get(&txid);
                let paid = held.map(|l| l.proposal.payouts.clone()).unwrap_or_default();
                let tx = held.and_then(|l| l.signatures.as_ref().map(|s| finalize(&l.proposal.tx, s)));
                Recorded { spend: spend.clone(), paid, tx }
            }
        };
        if known.is_none() {
            if !record.paid.is_empty() && !was_returned {
                out.push(Action::Count(Count::Confirmed));
            }
            out.push(Action::Persist(Change::Spent {
                spend: record.spend.clone(),
                paid: record.paid.clone(),
                tx: record.tx.clone(),
            }));
        }
        // This release and every live one sharing an input can no longer confirm.
        let spent: BTreeSet<OutPoint> = spend.spent.iter().copied().collect();
        let done: Vec<Txid> = self
            .live
            .iter()
            .filter(|(t, l)| **t == txid || l.proposal.tx.input.iter().any(|i| spent.contains(&i.previous_output)))
            .map(|(t, _)| *t)
            .collect();
        for t in done {
            self.live.remove(&t);
            out.push(Action::Persist(Change::Dropped { txid: t }));
            if t != txid {
                out.push(Action::Abandon { txid: t });
            }
        }
        for op in &spent {
            self.utxos.remove(op);
        }
        self.spends.insert(txid, record);
    }

    /// Peg-outs certified here, payable, not paid and in no live release.
    fn unpaid(&self) -> Vec<Payout> {
        let paid = self.paid();
        let promised: BTreeSet<EventId> = self.live.values().flat_map(|l| l.proposal.payouts.iter().copied()).collect();
        let mut budget = payment_budget(&self.payable(), &self.on_chain(), &promised, &self.config.policy);
        let mut unpaid: Vec<(Millis, Payout)> = self
            .payable()
            .into_values()
            .filter(|p| !paid.contains(&p.event) && !promised.contains(&p.event))
            .filter(|p| !self.held.contains(&p.event.chain))
            .filter(|p| unpayable(p, &self.config.policy).is_none())
            .map(|p| (self.seen_at.get(&p.event).copied().unwrap_or(0), p))
            .collect();
        unpaid.sort_by_key(|(at, p)| (*at, p.event.to_bytes()));
        unpaid
            .into_iter()
            .filter(|(_, p)| match class_of(p, &self.config.policy).and_then(|c| budget.get_mut(&c)) {
                Some(b) if *b > 0 => {
                    *b -= 1;
                    true
                }
                _ => false,
            })
            .map(|(_, p)| p)
            .collect()
    }

    /// Vault UTXOs at depth that no live release spends.
    fn free_utxos(&self) -> Vec<(OutPoint, Sats)> {
        let in_flight = self.unconfirmed.values().flat_map(|r| r.spend.spent.iter().copied());
        let locked: BTreeSet<OutPoint> = self
            .live
            .values()
            .flat_map(|l| l.proposal.tx.input.iter().map(|i| i.previous_output))
            .chain(in_flight)
            .collect();
        self.utxos.iter().filter(|(op, _)| !locked.contains(op)).map(|(op, a)| (*op, *a)).collect()
    }

    /// This node's own proposal, checked as a peer's would be: sent, counted, accepted.
    fn propose_own(&mut self, p: Proposal, count: Count, now: Millis, out: &mut Vec<Action>) {
        if let Ok(sighashes) = self.check(self.config.me, &p, now, now) {
            out.push(Action::Propose(p.clone()));
            out.push(Action::Count(count));
            self.accept(self.config.me, p, sighashes, now, out);
        }
    }

    /// The rate this proposer pays: its estimate, within the band.
    fn rate(&self) -> u64 {
        let policy = &self.config.policy;
        self.fee_estimate
            .unwrap_or(policy.floor_sat_per_vb)
            .clamp(policy.floor_sat_per_vb, policy.band_ceiling(self.fee_estimate))
    }

    fn maybe_propose(&mut self, now: Millis, out: &mut Vec<Action>) {
        let me = self.config.me;
        let own_check = self.checking.values().any(|c| c.from == me);
        if !self.synced
            || own_check
            || !self.may_propose(now)
            || self.last_proposal.is_some_and(|t| now.saturating_sub(t) < 1_000)
        {
            return;
        }
        let unpaid = self.unpaid();
        let times: Vec<Millis> = unpaid.iter().filter_map(|p| self.seen_at.get(&p.event).copied()).collect();
        let (Some(&oldest), Some(&newest)) = (times.iter().min(), times.iter().max()) else { return };
        let c = &self.config;
        let full = unpaid.len() >= MAX_PAYOUTS;
        let due = full
            || (now.saturating_sub(oldest) >= c.batch_wait_ms && now.saturating_sub(newest) >= c.batch_wait_ms)
            || now.saturating_sub(oldest) >= c.batch_max_wait_ms;
        if !due {
            return;
        }
        let free = self.free_utxos();
        let Ok(p) = build_fundable(&free, &unpaid, self.rate(), &self.config.policy) else { return };
        self.last_proposal = Some(now);
        match self.check(self.config.me, &p, now, now) {
            Ok(_) if self.config.policy_checks => self.ask(me, p, now, now, out),
            Ok(sighashes) => {
                out.push(Action::Propose(p.clone()));
                out.push(Action::Count(Count::Proposed));
                self.accept(self.config.me, p, sighashes, now, out);
            }
            Err(error) => out.push(Action::Count(Count::Refused(error.reason()))),
        }
    }

    /// The proposer in turn replaces a release that waited too long unconfirmed.
    fn maybe_bump(&mut self, now: Millis, out: &mut Vec<Action>) {
        if !self.may_propose(now) {
            return;
        }
        let stuck: Vec<Proposal> = self
            .live
            .values()
            .filter(|l| l.broadcast_at.is_some_and(|b| now.saturating_sub(b) >= self.config.bump_after_ms))
            .map(|l| l.proposal.clone())
            .collect();
        for old in stuck {
            // Replaced already by one this node holds (same inputs, higher fee)?
            let inputs = Live::of(&old).inputs;
            if self.live.values().any(|l| Live::of(&l.proposal).inputs == inputs && l.proposal.fee() > old.fee()) {
                continue;
            }
            let old_rate = old.fee_rate();
            let rate = self.rate().max(old_rate.saturating_add(old_rate / 4).saturating_add(1));
            let Some(p) = bump(&old, rate, &self.config.policy) else { continue };
            self.propose_own(p, Count::Replaced, now, out);
        }
    }

    /// Releases never shared to and unsigned for `expire_after_ms` are dropped.
    fn expire(&mut self, now: Millis, out: &mut Vec<Action>) {
        let expired: Vec<Txid> = self
            .live
            .iter()
            .filter(|(_, l)| {
                !l.shared && l.signatures.is_none() && now.saturating_sub(l.at) >= self.config.expire_after_ms
            })
            .map(|(t, _)| *t)
            .collect();
        for txid in expired {
            self.live.remove(&txid);
            out.push(Action::Persist(Change::Expired { txid }));
            out.push(Action::Abandon { txid });
            out.push(Action::Count(Count::Expired));
        }
    }

    /// The proposer in turn supersedes a release left unsigned too long, unless a later
    /// one held here supersedes it already.
    fn maybe_respin(&mut self, now: Millis, out: &mut Vec<Action>) {
        if !self.may_propose(now) {
            return;
        }
        let stuck: Vec<(Proposal, Millis)> = self
            .live
            .values()
            .filter(|l| l.signatures.is_none() && now.saturating_sub(l.at) >= self.config.respin_after_ms)
            .map(|l| (l.proposal.clone(), l.at))
            .collect();
        for (old, at) in stuck {
            let inputs = Live::of(&old).inputs;
            let superseded = self
                .live
                .values()
                .any(|l| l.at > at && l.proposal.tx.input.iter().any(|i| inputs.contains(&i.previous_output)));
            if superseded {
                continue;
            }
            let Some(mut payouts) =
                old.payouts.iter().map(|e| self.certified.get(e).cloned()).collect::<Option<Vec<Payout>>>()
            else {
                continue;
            };
            let mut required: Vec<(OutPoint, Sats)> = old
                .tx
                .input
                .iter()
                .zip(&old.prevouts)
                .map(|(i, o)| (i.previous_output, Sats(o.value.to_sat())))
                .collect();
            // Every release linked to it, through any chain of shared inputs or
            // peg-outs, among those held here and the rivals refused here: an input of
            // each, and all their peg-outs. Linked directly only, a crossed split (one
            // side holds `a -> 1` and `b -> 2`, the other `a -> 2` and `b -> 1`) is
            // never mended: the merge of two would strand the third's peg-out.
            let linked = self.linked(&old);
            for r in &linked {
                let theirs: Option<Vec<Payout>> = r.payouts.iter().map(|e| self.certified.get(e).cloned()).collect();
                let Some(theirs) = theirs else { continue };
                let covered = r.tx.input.iter().any(|i| required.iter().any(|(op, _)| *op == i.previous_output));
                if !covered {
                    let input =
                        r.tx.input.iter().zip(&r.prevouts).find(|(i, _)| self.utxos.contains_key(&i.previous_output));
                    let Some((i, o)) = input else { continue };
                    required.push((i.previous_output, Sats(o.value.to_sat())));
                }
                let fresh: Vec<Payout> =
                    theirs.into_iter().filter(|p| !payouts.iter().any(|q| q.event == p.event)).collect();
                payouts.extend(fresh);
            }
            let more: Vec<Payout> =
                self.unpaid().into_iter().filter(|p| !payouts.iter().any(|q| q.event == p.event)).collect();
            payouts.extend(more);
            payouts.truncate(MAX_PAYOUTS);
            let free = self.free_utxos();
            // With a twin of it about (the same inputs, another fee: a validator split
            // its proposal), above the rate of both: a twin is replaced only at a
            // higher fee, and built at the estimate the respin may be the very
            // release held. (Without one, the estimate: a respin identical to the
            // release is not proposed, and signing goes on undisturbed.)
            let twins: Vec<&Proposal> = linked.iter().filter(|r| Live::of(r).inputs == inputs).collect();
            let replaced = std::iter::once(&old).chain(twins.iter().copied()).map(|r| r.fee_rate());
            let rate = if twins.is_empty() {
                self.rate()
            } else {
                self.rate().max(replaced.max().unwrap_or(0).saturating_add(1))
            };
            let Ok(p) = build_with(&required, &free, &payouts, rate, &self.config.policy) else { continue };
            if self.live.contains_key(&p.txid()) {
                continue;
            }
            let count = if linked.is_empty() { Count::Respun } else { Count::Merged };
            self.propose_own(p, count, now, out);
        }
    }

    /// The releases held here or refused here as rivals that `start` reaches through
    /// a chain of shared inputs or peg-outs, `start` itself left out.
    fn linked(&self, start: &Proposal) -> Vec<Proposal> {
        let mut pool: Vec<&Proposal> = self
            .live
            .values()
            .map(|l| &l.proposal)
            .chain(self.rivals.values().map(|(r, _, _)| r))
            .filter(|p| p.txid() != start.txid())
            .collect();
        let mut inputs: BTreeSet<OutPoint> = start.tx.input.iter().map(|i| i.previous_output).collect();
        let mut pays: BTreeSet<EventId> = start.payouts.iter().copied().collect();
        let mut found = Vec::new();
        loop {
            let (touching, rest): (Vec<&Proposal>, Vec<&Proposal>) = pool.into_iter().partition(|p| {
                p.tx.input.iter().any(|i| inputs.contains(&i.previous_output))
                    || p.payouts.iter().any(|e| pays.contains(e))
            });
            pool = rest;
            if touching.is_empty() {
                return found;
            }
            for p in touching {
                inputs.extend(p.tx.input.iter().map(|i| i.previous_output));
                pays.extend(p.payouts.iter().copied());
                found.push(p.clone());
            }
        }
    }

    /// Signed releases not confirmed are broadcast again now and then (a mempool may
    /// have dropped them; broadcasting is idempotent).
    fn rebroadcast(&mut self, now: Millis, out: &mut Vec<Action>) {
        let reorged = &self.reorged;
        for l in self.live.values_mut() {
            // One paying a peg-out reorged away is left to its withdrawal.
            if let Some(s) = &l.signatures
                && now.saturating_sub(l.sent_at) >= 10_000
                && !l.proposal.payouts.iter().any(|p| reorged.contains(p))
            {
                l.sent_at = now;
                out.push(Action::Broadcast(finalize(&l.proposal.tx, s)));
            }
        }
        self.unconfirmed_sent.retain(|t, _| self.unconfirmed.contains_key(t));
        for (txid, r) in &self.unconfirmed {
            let Some(tx) = &r.tx else { continue };
            let sent_at = self.unconfirmed_sent.entry(*txid).or_insert(0);
            if now.saturating_sub(*sent_at) >= 10_000 {
                *sent_at = now;
                out.push(Action::Broadcast(tx.clone()));
            }
        }
    }

    /// The certified peg-outs this book may still pay (not reorged away; those set
    /// apart by the relay policy included), each with when it was first seen here.
    /// Paid ones stay: [`Self::paid_events`] says which.
    pub fn certified(&self) -> impl Iterator<Item = (&Payout, Millis)> {
        self.certified.keys().filter_map(|e| self.certified_payout(e))
    }

    /// Whether reorged peg-out `event` stays unpaid even once final again
    /// ([`Change::Pinned`]).
    pub fn is_pinned(&self, event: &EventId) -> bool {
        self.pinned.contains(event)
    }

    /// Whether `event` is set apart by the relay policy for now ([`Change::SetApart`]).
    pub fn is_set_apart(&self, event: &EventId) -> bool {
        self.apart.contains_key(event)
    }

    /// Reorged peg-outs this book holds (final again ones are told by [`Input::Final`]).
    pub fn reorged(&self) -> impl Iterator<Item = &EventId> {
        self.reorged.iter()
    }

    /// Certified peg-out `event`, and when it was first seen here, if this book may pay
    /// it (one of [`Self::certified`]).
    pub fn certified_payout(&self, event: &EventId) -> Option<(&Payout, Millis)> {
        if self.reorged.contains(event) {
            return None;
        }
        let p = self.certified.get(event)?;
        Some((p, self.seen_at.get(event).copied().unwrap_or(0)))
    }

    /// Releases this node holds that may still confirm, by txid, with their proposer.
    pub fn live(&self) -> impl Iterator<Item = (&Txid, usize, &Proposal)> {
        self.live.iter().map(|(t, l)| (t, l.proposer, &l.proposal))
    }

    /// The vault spends this book holds at depth, by txid.
    pub fn spends_at_depth(&self) -> impl Iterator<Item = &Txid> {
        self.spends.keys()
    }

    /// Peg-outs the chain has shown paid by a release this node held.
    pub fn paid_events(&self) -> BTreeSet<EventId> {
        self.paid()
    }

    /// When a live release was accepted here.
    pub fn accepted_at(&self, txid: &Txid) -> Option<Millis> {
        self.live.get(txid).map(|l| l.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build;
    use bitcoin::hashes::Hash;
    use bitcoin::{ScriptBuf, TxOut};
    use btcfi_types::{ChainId, TxHash};

    const TURN: Millis = 4_000;

    fn vault() -> ScriptBuf {
        let mut s = vec![0x51, 0x20];
        s.extend([7u8; 32]);
        ScriptBuf::from(s)
    }

    fn payee(b: u8) -> ScriptBuf {
        let mut s = vec![0x00, 0x14];
        s.extend([b; 20]);
        ScriptBuf::from(s)
    }

    fn config(me: usize) -> Config {
        Config {
            me,
            n: 4,
            takeover_ms: TURN,
            batch_wait_ms: 2_000,
            batch_max_wait_ms: 20_000,
            bump_after_ms: 30_000,
            respin_after_ms: 20_000,
            expire_after_ms: 15_000,
            resend_every_ms: 10_000,
            policy_checks: false,
            policy: Policy::new(vault(), Sats(2_000), 1, 100),
        }
    }

    fn payout(i: u8) -> Payout {
        Payout {
            event: EventId::new(ChainId(31337), TxHash([i; 32]), 0),
            amount: Sats(100_000 + u64::from(i)),
            script: payee(i),
        }
    }

    fn utxos() -> BTreeMap<OutPoint, Sats> {
        [(OutPoint { txid: Txid::from_byte_array([9; 32]), vout: 0 }, Sats(5_000_000))].into_iter().collect()
    }

    /// A book with `config`, told the UTXOs, an estimate and peg-outs 1 to `certified`.
    fn told(config: Config, certified: u8) -> ReleaseBook {
        let mut b = ReleaseBook::new(config);
        b.handle(Input::Utxos(utxos()), 0);
        b.handle(Input::FeeEstimate(5), 0);
        for i in 1..=certified {
            b.handle(Input::Certified(payout(i)), 0);
        }
        b
    }

    /// Four books told the same: UTXOs, an estimate, three certified peg-outs.
    fn books() -> Vec<ReleaseBook> {
        (0..4).map(|me| told(config(me), 3)).collect()
    }

    fn proposals(actions: &[Action]) -> Vec<Proposal> {
        actions.iter().filter_map(|a| if let Action::Propose(p) = a { Some(p.clone()) } else { None }).collect()
    }

    fn signs(actions: &[Action]) -> bool {
        actions.iter().any(|a| matches!(a, Action::Sign { .. }))
    }

    /// Applies what `acts` persist to `disk`, as a driver writes them.
    fn persist(disk: &mut Persisted, acts: &[Action]) {
        for a in acts {
            if let Action::Persist(c) = a {
                disk.apply(c);
            }
        }
    }

    /// The middle of validator `v`'s turn, after `from`.
    fn turn_of(v: usize, from: Millis) -> Millis {
        let cycle = TURN * 4;
        let base = from - from % cycle + v as u64 * TURN + TURN / 2;
        if base >= from { base } else { base + cycle }
    }

    #[test]
    fn the_validator_in_turn_proposes_and_the_others_sign_after_the_batch_wait() {
        let mut books = books();
        let at = turn_of(2, 10_000);
        for (i, b) in books.iter_mut().enumerate() {
            let acts = b.handle(Input::Tick, at);
            assert_eq!(proposals(&acts).is_empty(), i != 2, "only validator 2 proposes in its turn");
        }
        let p = proposals(&books[2].handle(Input::Tick, at + 1)).pop();
        assert!(p.is_none(), "one proposal, not one a tick");
        let p = books[2].live().next().map(|(_, _, p)| p.clone()).expect("held");
        assert_eq!(p.payouts.len(), 3);
        for b in books.iter_mut().filter(|b| b.config.me != 2) {
            let acts = b.handle(Input::Proposal { from: 2, proposal: p.clone() }, at + 50);
            assert!(matches!(acts.first(), Some(Action::Persist(Change::Live { .. }))), "persist first: {acts:?}");
            assert!(signs(&acts));
        }
        // Nothing before the batch wait: a fresh book in turn at once proposes nothing.
        let mut fresh = ReleaseBook::new(config(0));
        fresh.handle(Input::Utxos(utxos()), 0);
        fresh.handle(Input::Certified(payout(1)), 1_000);
        assert!(proposals(&fresh.handle(Input::Tick, 2_000)).is_empty());
    }

    #[test]
    fn a_proposal_out_of_turn_is_refused() {
        let mut books = books();
        let at = turn_of(1, 10_000);
        let p = proposals(&books[1].handle(Input::Tick, at)).pop().expect("validator 1 proposes");
        // Validator 3 sends the same release outside its turn.
        let acts = books[0].handle(Input::Proposal { from: 3, proposal: p }, at);
        assert!(
            acts.iter().any(|a| matches!(a, Action::Refused { error: ReleaseError::NotInTurn { .. }, .. })),
            "{acts:?}"
        );
        assert!(!signs(&acts));
    }

    /// An over-fee release from the proposer in turn is refused by the band; with the
    /// band ignored (the canary), it is signed.
    /// A validator that missed a release in its proposer's turn (it was away) gets it
    /// from the resends of those that accepted it, and signs it once f + 1 validators
    /// sent it; f alone (one Byzantine validator at n = 4), however often, never move it.
    /// Before resends, a validator that missed the turn never signed the release.
    #[test]
    fn a_release_missed_in_its_turn_is_signed_once_f_plus_one_validators_resent_it() {
        let mut books = books();
        let at = turn_of(1, 10_000);
        let p = proposals(&books[1].handle(Input::Tick, at)).pop().expect("validator 1 proposes");
        for v in [0, 2] {
            assert!(signs(&books[v].handle(Input::Proposal { from: 1, proposal: p.clone() }, at + 50)));
        }
        // Each holder sends it again once `resend_every_ms` passed, unsigned; not before.
        let early = at + 50 + config(0).resend_every_ms / 2;
        assert!(proposals(&books[0].handle(Input::Tick, early)).is_empty(), "not resent before its time");
        let later = at + 50 + config(0).resend_every_ms;
        let resent = |b: &mut ReleaseBook| proposals(&b.handle(Input::Tick, later));
        assert_eq!(resent(&mut books[0]), vec![p.clone()], "validator 0 sends it again");
        assert_eq!(resent(&mut books[2]), vec![p.clone()], "validator 2 sends it again");
        // Validator 3 was away in validator 1's turn: the proposal now comes out of turn.
        let late = turn_of(3, later);
        let first = books[3].handle(Input::Proposal { from: 0, proposal: p.clone() }, late);
        assert!(
            first.iter().any(|a| matches!(a, Action::Refused { error: ReleaseError::NotInTurn { .. }, .. })),
            "one sender is not enough: {first:?}"
        );
        for _ in 0..3 {
            assert!(!signs(&books[3].handle(Input::Proposal { from: 0, proposal: p.clone() }, late + 1)));
        }
        let second = books[3].handle(Input::Proposal { from: 2, proposal: p.clone() }, late + 2);
        assert!(signs(&second), "f + 1 validators sent it: signed as made in turn: {second:?}");
        // Vouching skips the turn only: a bogus release sent by f + 1 is still refused.
        let mut bogus = p.clone();
        bogus.payouts.pop();
        let mut b = told(config(3), 3);
        b.handle(Input::Proposal { from: 0, proposal: bogus.clone() }, late);
        assert!(!signs(&b.handle(Input::Proposal { from: 2, proposal: bogus }, late + 1)));
        // Once signed it is not sent again.
        let sigs = vec![schnorr::Signature::from_slice(&[1; 64]).expect("sig"); p.tx.input.len()];
        books[0].handle(Input::Signed { txid: p.txid(), signatures: sigs }, later + 1);
        let again = books[0].handle(Input::Tick, later + 2 * config(0).resend_every_ms);
        assert!(proposals(&again).is_empty(), "a signed release is broadcast, not proposed: {again:?}");
    }

    fn checks(actions: &[Action]) -> Vec<Proposal> {
        actions.iter().filter_map(|a| if let Action::Check(p) = a { Some(p.clone()) } else { None }).collect()
    }

    /// With policy checks, nothing is signed or sent before the relay policy passed
    /// it: the policy node's silence is asked again, never taken as a verdict; a
    /// refusal sets apart the peg-outs it blames (for good, across a restart), and the
    /// next release goes without them. A node whose chain view is catching up signs
    /// nothing until it caught up.
    #[test]
    fn a_release_is_signed_only_once_the_relay_policy_passes_it_and_what_it_blames_is_set_apart() {
        let mut books: Vec<ReleaseBook> = books()
            .into_iter()
            .map(|mut b| {
                b.config.policy_checks = true;
                b
            })
            .collect();
        let at = turn_of(1, 10_000);
        let acts = books[1].handle(Input::Tick, at);
        assert!(proposals(&acts).is_empty() && !signs(&acts), "not sent before the policy passed it: {acts:?}");
        let p = checks(&acts).pop().expect("its own release put to the policy");
        assert!(checks(&books[1].handle(Input::Tick, at + 100)).is_empty(), "one own check at a time");
        let acts = books[1].handle(Input::Checked { txid: p.txid(), verdict: Ok(Verdict::Passes) }, at + 130);
        assert_eq!(proposals(&acts), vec![p.clone()], "sent once passed");
        assert!(signs(&acts));
        // Validator 0: asked, the policy node silent, asked again later; then signed.
        let acts = books[0].handle(Input::Proposal { from: 1, proposal: p.clone() }, at + 200);
        assert_eq!(checks(&acts), vec![p.clone()]);
        assert!(!signs(&acts), "not signed before the verdict");
        let silent = Input::Checked { txid: p.txid(), verdict: Err("bitcoind did not answer".into()) };
        assert!(!signs(&books[0].handle(silent, at + 250)));
        assert!(checks(&books[0].handle(Input::Tick, at + 300)).is_empty(), "not asked again at once");
        let again = books[0].handle(Input::Tick, at + 200 + CHECK_RETRY_MS);
        assert_eq!(checks(&again), vec![p.clone()], "asked again");
        let acts = books[0].handle(Input::Checked { txid: p.txid(), verdict: Ok(Verdict::Passes) }, at + 5_300);
        assert!(signs(&acts), "signed once passed: {acts:?}");
        // Validator 2: refused, peg-out 2 blamed.
        let mut disk = Persisted::default();
        let acts = step(&mut books[2], &mut disk, Input::Proposal { from: 1, proposal: p.clone() }, at + 200);
        assert_eq!(checks(&acts), vec![p.clone()]);
        let blamed = vec![(payout(2).event, "dust".to_string())];
        let verdict = Ok(Verdict::Refused { reason: "dust".into(), blamed });
        let acts = step(&mut books[2], &mut disk, Input::Checked { txid: p.txid(), verdict }, at + 230);
        assert!(!signs(&acts), "refused by the policy: not signed");
        assert!(
            acts.iter()
                .any(|a| matches!(a, Action::Persist(Change::SetApart { event, .. }) if *event == payout(2).event))
        );
        assert!(acts.iter().any(|a| matches!(a, Action::Refused { error: ReleaseError::RefusedByPolicy(_), .. })));
        // Restarted, told the peg-outs again, in its turn: its release leaves out peg-out 2.
        let (mut b, _) = ReleaseBook::restore(books[2].config.clone(), &disk, at + 300);
        b.handle(Input::Utxos(utxos()), at + 300);
        b.handle(Input::FeeEstimate(5), at + 300);
        for i in 1..=3 {
            b.handle(Input::Certified(payout(i)), at + 300);
        }
        b.handle(Input::Synced(true), at + 300);
        let own = checks(&b.handle(Input::Tick, turn_of(2, at + 30_000))).pop().expect("validator 2's release");
        assert!(!own.payouts.contains(&payout(2).event), "the blamed peg-out is set apart: {:?}", own.payouts);
        assert_eq!(own.payouts.len(), 2);
        // Catching up: nothing is signed until the view caught up.
        let mut c = told(config(3), 3);
        c.handle(Input::Synced(false), 0);
        assert!(!signs(&c.handle(Input::Proposal { from: 1, proposal: p.clone() }, at + 200)), "not synced");
        let own_turn = turn_of(3, at);
        assert!(proposals(&c.handle(Input::Tick, own_turn)).is_empty(), "nor proposes");
        assert!(signs(&c.handle(Input::Synced(true), own_turn + 100)), "signed once caught up");
    }

    /// A book of `n` validators told the same as [`books`].
    fn book_of(me: usize, n: usize) -> ReleaseBook {
        told(Config { n, ..config(me) }, 3)
    }

    /// A Byzantine validator sends an honest release first, then floods votes for
    /// junk: only its own votes are dropped, and the release is signed once f + 1
    /// honest validators sent it (n = 7, f = 2). Before, the votes for a proposal
    /// belonged to its first sender's quota and went with it: the honest votes were
    /// lost each time, and the release was never signed ("not signed").
    #[test]
    fn a_flood_of_votes_drops_only_the_flooders_own() {
        let n = 7;
        let at = 4 * TURN * n as u64 + TURN + TURN / 2; // validator 1's turn
        let p = proposals(&book_of(1, n).handle(Input::Tick, at)).pop().expect("validator 1 proposes");
        let mut b = book_of(6, n);
        let late = at + 3 * TURN; // validator 4's turn: out of validator 1's
        let (byzantine, honest) = (5, [0, 2, 3]);
        assert!(!signs(&b.handle(Input::Proposal { from: byzantine, proposal: p.clone() }, late)));
        assert!(!signs(&b.handle(Input::Proposal { from: honest[0], proposal: p.clone() }, late + 1)));
        let free: Vec<(OutPoint, Sats)> = utxos().into_iter().collect();
        let payouts: Vec<Payout> = (1..=3).map(payout).collect();
        for rate in 6..(6 + 4 * MAX_VOUCHES_PER_SENDER as u64) {
            let junk = build_fundable(&free, &payouts, rate, &config(5).policy).expect("junk");
            b.handle(Input::Proposal { from: byzantine, proposal: junk }, late + 2);
        }
        assert!(!signs(&b.handle(Input::Proposal { from: honest[1], proposal: p.clone() }, late + 3)), "two honest");
        let acts = b.handle(Input::Proposal { from: honest[2], proposal: p.clone() }, late + 4);
        assert!(signs(&acts), "not signed: {acts:?}");
    }

    /// With policy checks, a proposal kept a while (a peg-out not certified here yet)
    /// and then put to the policy is not dropped before the answer comes. Before, its
    /// check was kept only until `WAITING_MS` after it *arrived*, so the next tick
    /// dropped it and the verdict found nothing ("signed once passed").
    #[test]
    fn a_proposal_kept_a_while_is_still_signed_once_the_policy_passes_it() {
        let mut b = told(Config { policy_checks: true, ..config(0) }, 2);
        let at = turn_of(1, 10_000);
        let p = proposals(&books()[1].handle(Input::Tick, at)).pop().expect("validator 1 proposes");
        assert!(
            checks(&b.handle(Input::Proposal { from: 1, proposal: p.clone() }, at)).is_empty(),
            "peg-out 3 unknown"
        );
        let later = at + WAITING_MS - 1_000;
        let acts = b.handle(Input::Certified(payout(3)), later);
        assert_eq!(checks(&acts), vec![p.clone()], "put to the policy once valid");
        b.handle(Input::Tick, later + 2_000);
        let acts = b.handle(Input::Checked { txid: p.txid(), verdict: Ok(Verdict::Passes) }, later + 2_100);
        assert!(signs(&acts), "signed once passed: {acts:?}");
    }

    /// Only a peg-out the release pays can be blamed, and one set apart is put to the
    /// policy again after `APART_RETRY_MS`: a wrong or passing refusal does not leave the
    /// user's money out of every release for good.
    #[test]
    fn a_peg_out_set_apart_is_tried_again_and_only_what_a_release_pays_is_blamed() {
        let mut b = told(Config { policy_checks: true, ..config(2) }, 2);
        let at = turn_of(2, 10_000);
        let own = checks(&b.handle(Input::Tick, at)).pop().expect("its own release");
        assert_eq!(own.payouts.len(), 2);
        let blamed = vec![(payout(2).event, "dust".to_string()), (payout(3).event, "dust".to_string())];
        let verdict = Ok(Verdict::Refused { reason: "dust".into(), blamed });
        // Peg-out 3 is certified meanwhile: certified, but not paid by this release.
        b.handle(Input::Certified(payout(3)), at + 10);
        let acts = b.handle(Input::Checked { txid: own.txid(), verdict }, at + 30);
        let apart: Vec<EventId> = acts
            .iter()
            .filter_map(|a| if let Action::Persist(Change::SetApart { event, .. }) = a { Some(*event) } else { None })
            .collect();
        assert_eq!(apart, vec![payout(2).event], "only what the release pays");
        let next = checks(&b.handle(Input::Tick, turn_of(2, at + 4 * TURN))).pop().expect("the next release");
        assert!(!next.payouts.contains(&payout(2).event), "set apart: {:?}", next.payouts);
        b.handle(Input::Checked { txid: next.txid(), verdict: Ok(Verdict::Passes) }, turn_of(2, at + 4 * TURN) + 30);
        let retry = turn_of(2, at + APART_RETRY_MS + 4 * TURN);
        let again = checks(&b.handle(Input::Tick, retry)).pop().expect("tried again");
        assert!(again.payouts.contains(&payout(2).event), "put to the policy again: {:?}", again.payouts);
    }

    /// While the bridge on a source chain holds another key, nothing burned there is
    /// paid: a peer's release paying it waits, this node's own leaves it out; once the
    /// bridge holds the key, the waiting release is signed.
    #[test]
    fn nothing_burned_on_a_bridge_without_the_key_is_paid_until_it_holds_it() {
        let chain = payout(1).event.chain;
        let at = turn_of(1, 10_000);
        let p = proposals(&books()[1].handle(Input::Tick, at)).pop().expect("validator 1 proposes");
        let mut b = books().remove(0);
        b.handle(Input::SourceReady { chain, ready: false }, 0);
        assert!(!signs(&b.handle(Input::Proposal { from: 1, proposal: p.clone() }, at)), "held: not signed");
        assert!(proposals(&b.handle(Input::Tick, turn_of(0, at))).is_empty(), "nor proposed");
        let acts = b.handle(Input::SourceReady { chain, ready: true }, turn_of(0, at) + 10);
        assert!(signs(&acts), "signed once the bridge holds the key: {acts:?}");
    }

    #[test]
    fn an_over_fee_release_is_refused_by_the_band() {
        let mut books = books();
        let at = turn_of(1, 10_000);
        let payouts: Vec<Payout> = (1..=3).map(payout).collect();
        let free: Vec<(OutPoint, Sats)> = utxos().into_iter().collect();
        let greedy = build_fundable(&free, &payouts, 90, &config(1).policy).expect("built");
        let acts = books[0].handle(Input::Proposal { from: 1, proposal: greedy.clone() }, at);
        assert!(
            acts.iter().any(|a| matches!(a, Action::Refused { error: ReleaseError::FeeOutOfBounds { .. }, .. })),
            "{acts:?}"
        );
        #[cfg(feature = "canary")]
        {
            books[3].set_canary(Some(Canary::IgnoreFeeBand));
            assert!(signs(&books[3].handle(Input::Proposal { from: 1, proposal: greedy }, at)));
        }
    }

    /// A validator in turn may not replace a release whose signing is under way before
    /// that one had its time to be signed, nor replace it at no higher fee: the
    /// replacement is kept, not signed, and signed once the release waited
    /// `respin_after_ms` here (a Byzantine proposer otherwise starts a rival signing
    /// beside every release in each of its turns). Where no share was given yet, the
    /// replacement is signed at once (the merge of a split must be).
    #[test]
    fn a_release_is_superseded_only_once_it_had_its_time_and_only_at_a_higher_fee() {
        let mut books = books();
        let at = turn_of(1, 10_000);
        let p = proposals(&books[1].handle(Input::Tick, at)).pop().expect("validator 1 proposes");
        assert!(signs(&books[0].handle(Input::Proposal { from: 1, proposal: p.clone() }, at)));
        assert!(signs(&books[3].handle(Input::Proposal { from: 1, proposal: p.clone() }, at)));
        // Validator 0 gave a share (its signing is under way); validator 3 did not.
        books[0].handle(Input::Shared { txid: p.txid() }, at + 10);
        let policy = config(2).policy;
        // Validator 2, in its next turn (well within `respin_after_ms`): a higher fee.
        let early_at = turn_of(2, at);
        assert!(early_at - at < config(0).respin_after_ms);
        let early = bump(&p, 10, &policy).expect("bumped");
        let acts = books[0].handle(Input::Proposal { from: 2, proposal: early.clone() }, early_at);
        assert!(!signs(&acts), "superseded before it had its time: {acts:?}");
        assert!(!acts.iter().any(|a| matches!(a, Action::Refused { .. })), "kept, not refused: {acts:?}");
        assert!(
            matches!(books[0].check(2, &early, early_at, early_at), Err(ReleaseError::TooEarly(t)) if t == p.txid())
        );
        // Where its signing is not under way, nothing to wait for.
        assert!(signs(&books[3].handle(Input::Proposal { from: 2, proposal: early.clone() }, early_at)));
        // The kept replacement, judged in the turn it arrived in, is signed once the
        // release waited long enough.
        let late = at + config(0).respin_after_ms;
        let acts = books[0].handle(Input::Tick, late);
        assert!(
            acts.iter().any(|a| matches!(a, Action::Sign { txid, .. } if *txid == early.txid())),
            "signed once the release had its time: {acts:?}"
        );
        // Once a release is broadcast: nothing spending its inputs at no higher fee,
        // ever (mempools keep the first).
        let sig = schnorr::Signature::from_slice(&[1; 64]).expect("sig");
        books[3].handle(Input::Signed { txid: p.txid(), signatures: vec![sig; p.tx.input.len()] }, early_at);
        let mut cheaper = p.clone();
        let change = cheaper.tx.output.last_mut().expect("change");
        change.value += bitcoin::Amount::from_sat(100);
        assert!(cheaper.fee() < p.fee());
        let much_later = turn_of(2, early_at + 10 * config(0).bump_after_ms);
        assert!(
            matches!(books[3].check(2, &cheaper, much_later, much_later), Err(ReleaseError::NoFeeIncrease(t)) if t == p.txid())
        );
    }

    #[test]
    fn only_the_chain_marks_a_release_paid_and_a_reorged_payout_is_withdrawn() {
        let mut books = books();
        let at = turn_of(0, 10_000);
        let p = proposals(&books[0].handle(Input::Tick, at)).pop().expect("proposed");
        // Signed and broadcast: still not paid.
        let sig = schnorr::Signature::from_slice(&[1; 64]).expect("sig");
        let acts = books[0].handle(Input::Signed { txid: p.txid(), signatures: vec![sig; p.tx.input.len()] }, at + 10);
        assert!(matches!(acts.first(), Some(Action::Persist(Change::Signed { .. }))));
        assert!(acts.iter().any(|a| matches!(a, Action::Broadcast(_))));
        assert!(books[0].paid_events().is_empty(), "a broadcast is not a payment");
        // A reorg of one burn, before the release confirms: a withdrawal replaces it,
        // the same on every validator.
        let gone = p.payouts[0];
        let w0 = proposals(&books[0].handle(Input::Reorged(gone), at + 20)).pop().expect("withdrawal");
        assert!(!w0.payouts.contains(&gone));
        for b in books.iter_mut().skip(1) {
            b.handle(Input::Proposal { from: 0, proposal: p.clone() }, at + 15);
            let w = proposals(&b.handle(Input::Reorged(gone), at + 20)).pop().expect("withdrawal");
            assert_eq!(w, w0, "every honest validator builds the same withdrawal");
        }
        // The withdrawal confirms: its payouts are paid, the original is dropped.
        let acts = books[1].handle(Input::VaultSpend(Spend::of(&w0.tx, &vault())), at + 30_000);
        assert!(acts.iter().any(|a| matches!(a, Action::Count(Count::Confirmed))));
        assert!(acts.iter().any(|a| matches!(a, Action::Abandon { txid } if *txid == p.txid())));
        assert_eq!(books[1].paid_events(), w0.payouts.iter().copied().collect());
        assert_eq!(books[1].live().count(), 0);
        // Nothing left to propose: the reorged peg-out is not payable, the rest is paid.
        for t in 0..8 {
            assert!(proposals(&books[1].handle(Input::Tick, turn_of(1, at + 40_000 + t * 1_000))).is_empty());
        }
    }

    /// A log compacted gives back the state the whole log gave: through live releases
    /// shared to and signed, expiries, a spend at depth, one reorged out and another
    /// confirmed in its place, a spend out of the chain still in flight, reorged,
    /// un-reorged and set-apart peg-outs; and the book restored from it owes the same.
    #[test]
    fn a_compacted_log_restores_the_same_book() {
        let mut b = books().remove(0);
        let at = turn_of(0, 10_000);
        let mut log: Vec<Change> = Vec::new();
        let take = |acts: Vec<Action>, log: &mut Vec<Change>| {
            log.extend(acts.into_iter().filter_map(|a| if let Action::Persist(c) = a { Some(c) } else { None }));
        };
        take(b.handle(Input::Tick, at), &mut log);
        let p = b.live().map(|(_, _, p)| p.clone()).next().expect("proposed");
        take(b.handle(Input::Shared { txid: p.txid() }, at + 5), &mut log);
        let sig = schnorr::Signature::from_slice(&[1; 64]).expect("sig");
        take(b.handle(Input::Signed { txid: p.txid(), signatures: vec![sig; p.tx.input.len()] }, at + 10), &mut log);
        take(b.handle(Input::VaultSpend(Spend::of(&p.tx, &vault())), at + 20), &mut log);
        take(b.handle(Input::SpendReorged { txid: p.txid() }, at + 30), &mut log);
        // Another spend, unrelated, at depth; a peg-out reorged away, one set apart.
        let mut other = p.tx.clone();
        other.input[0].previous_output.vout = 7;
        take(b.handle(Input::VaultSpend(Spend::of(&other, &vault())), at + 40), &mut log);
        take(b.handle(Input::Reorged(payout(3).event), at + 50), &mut log);
        log.push(Change::SetApart { event: payout(2).event, reason: "dust".into(), until: at + 99 });
        log.push(Change::Reorged(payout(9).event));
        log.push(Change::Unreorged(payout(9).event));
        // And a release that came and expired.
        let mut gone = p.clone();
        gone.tx.lock_time = bitcoin::absolute::LockTime::from_consensus(1);
        log.push(Change::Live { txid: gone.txid(), proposer: 2, proposal: gone.clone(), at: at + 60 });
        log.push(Change::Expired { txid: gone.txid() });
        // And one live still: shared to, then signed.
        let mut kept = p.clone();
        kept.tx.lock_time = bitcoin::absolute::LockTime::from_consensus(2);
        log.push(Change::Live { txid: kept.txid(), proposer: 1, proposal: kept.clone(), at: at + 70 });
        log.push(Change::Shared { txid: kept.txid() });
        log.push(Change::Signed { txid: kept.txid(), signatures: vec![sig; kept.tx.input.len()] });
        let mut whole = Persisted::default();
        for c in &log {
            whole.apply(c);
        }
        let compacted = whole.compacted();
        assert!(compacted.len() < log.len(), "{} changes, compacted to {}", log.len(), compacted.len());
        assert!(!whole.live.is_empty() && !whole.unconfirmed.is_empty() && !whole.spends.is_empty(), "{whole:?}");
        let mut back = Persisted::default();
        for c in &compacted {
            back.apply(c);
        }
        assert_eq!(back, whole, "the compacted log gives back the same state");
        assert_eq!(back.compacted(), compacted, "compacting is idempotent");
        let later = at + 100_000;
        let (_, owed_whole) = ReleaseBook::restore(config(0), &whole, later);
        let (_, owed_back) = ReleaseBook::restore(config(0), &back, later);
        assert_eq!(owed_back, owed_whole);
    }

    /// A burn reorged away past finality and final again (the same burn in the new
    /// chain) is paid once more, after its withdrawal confirmed; the un-reorg survives
    /// a restart, and "final" for an event never reorged changes nothing.
    #[test]
    fn a_peg_out_reorged_away_and_final_again_is_paid() {
        let mut b = books().remove(1);
        let at = turn_of(1, 10_000);
        let p = proposals(&b.handle(Input::Tick, at)).pop().expect("proposed");
        let gone = p.payouts[0];
        let mut persisted = Persisted::default();
        persist(&mut persisted, &b.handle(Input::Reorged(gone), at + 20));
        let w = b.live().map(|(_, _, l)| l.clone()).find(|l| !l.payouts.contains(&gone)).expect("withdrawal");
        let acts = b.handle(Input::VaultSpend(Spend::of(&w.tx, &vault())), at + 30_000);
        persist(&mut persisted, &acts);
        // The withdrawal's change is the vault's UTXO now.
        let change: BTreeMap<OutPoint, Sats> =
            w.tx.output
                .iter()
                .enumerate()
                .filter(|(_, o)| o.script_pubkey == vault())
                .map(|(i, o)| (OutPoint { txid: w.txid(), vout: i as u32 }, Sats(o.value.to_sat())))
                .collect();
        b.handle(Input::Utxos(change.clone()), at + 30_001);
        let never: Vec<Proposal> =
            (0..8).flat_map(|t| proposals(&b.handle(Input::Tick, turn_of(1, at + 40_000 + t * 1_000)))).collect();
        assert!(never.is_empty(), "a reorged peg-out proposed: {never:?}");
        assert!(b.handle(Input::Final(payout(3).event), at + 50_000).is_empty(), "never reorged: nothing");
        let acts = b.handle(Input::Final(gone), at + 50_000);
        assert_eq!(acts.first(), Some(&Action::Persist(Change::Unreorged(gone))), "{acts:?}");
        persist(&mut persisted, &acts);
        let again: Vec<Proposal> =
            (0..8).flat_map(|t| proposals(&b.handle(Input::Tick, turn_of(1, at + 60_000 + t * 1_000)))).collect();
        assert!(again.iter().any(|p| p.payouts == vec![gone]), "final again, paid: {again:?}");
        // Restarted from what it persisted: payable still, reorged no more.
        let (mut restored, _) = ReleaseBook::restore(config(1), &persisted, at + 70_000);
        restored.handle(Input::Synced(true), at + 70_000);
        restored.handle(Input::Utxos(change), at + 70_000);
        restored.handle(Input::FeeEstimate(5), at + 70_000);
        for i in 1..=3 {
            restored.handle(Input::Certified(payout(i)), at + 70_000);
        }
        let after: Vec<Proposal> = (0..8)
            .flat_map(|t| proposals(&restored.handle(Input::Tick, turn_of(1, at + 80_000 + t * 1_000))))
            .collect();
        assert!(after.iter().any(|p| p.payouts == vec![gone]), "the un-reorg is durable: {after:?}");
    }

    /// A peg-out reorged away while a release paying it was shared to here is never
    /// paid again, even once final again: that release may yet confirm (a deeper reorg
    /// of its withdrawal). Durably.
    #[test]
    fn a_peg_out_reorged_away_after_a_share_is_never_paid_again() {
        let mut b = books().remove(1);
        let at = turn_of(1, 10_000);
        let p = proposals(&b.handle(Input::Tick, at)).pop().expect("proposed");
        let gone = p.payouts[0];
        let mut persisted = Persisted::default();
        let mut acts = b.handle(Input::Shared { txid: p.txid() }, at + 10);
        acts.extend(b.handle(Input::Reorged(gone), at + 20));
        assert!(acts.contains(&Action::Persist(Change::Pinned(gone))), "{acts:?}");
        persist(&mut persisted, &acts);
        assert!(b.handle(Input::Final(gone), at + 30).is_empty(), "stays reorged");
        assert!(b.is_pinned(&gone) && b.certified_payout(&gone).is_none());
        let (mut restored, _) = ReleaseBook::restore(config(1), &persisted, at + 40);
        assert!(restored.handle(Input::Final(gone), at + 50).is_empty(), "after a restart too");
        assert!(restored.is_pinned(&gone));
    }

    #[test]
    fn the_budget_bounds_payments_by_what_the_chain_shows() {
        // A vault spend at depth that paid peg-out 1's class (a release this book never
        // held, e.g. its database was restored from an old backup): peg-out 1 is not
        // paid again.
        let mut b = books().remove(0);
        let p1 = payout(1);
        let value = p1.amount.0 - 2_000;
        let spend = Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![],
            output: vec![TxOut { value: bitcoin::Amount::from_sat(value), script_pubkey: p1.script.clone() }],
        };
        b.handle(Input::VaultSpend(Spend::of(&spend, &vault())), 1);
        let at = turn_of(0, 10_000);
        let p = proposals(&b.handle(Input::Tick, at)).pop().expect("proposed");
        assert_eq!(p.payouts.len(), 2, "peg-out 1's class is paid already: {:?}", p.payouts);
        assert!(!p.payouts.contains(&p1.event));
    }

    /// A release never shared to expires (its peg-outs free again); one this node
    /// contributed a share to is kept however long it waits.
    #[test]
    fn only_a_release_never_shared_to_expires() {
        let mut books = books();
        let at = turn_of(1, 10_000);
        let p = proposals(&books[1].handle(Input::Tick, at)).pop().expect("validator 1 proposes");
        let (kept, dropped) = books.split_at_mut(2);
        for b in [&mut kept[0], &mut dropped[0]] {
            assert!(signs(&b.handle(Input::Proposal { from: 1, proposal: p.clone() }, at + 10)));
        }
        let acts = kept[0].handle(Input::Shared { txid: p.txid() }, at + 20);
        assert_eq!(acts, vec![Action::Persist(Change::Shared { txid: p.txid() })], "persisted before the share");
        let later = at + 10 + config(0).expire_after_ms;
        let acts = dropped[0].handle(Input::Tick, later);
        assert!(acts.contains(&Action::Abandon { txid: p.txid() }), "{acts:?}");
        assert!(acts.contains(&Action::Persist(Change::Expired { txid: p.txid() })), "told apart from a conflict");
        assert!(!acts.contains(&Action::Persist(Change::Dropped { txid: p.txid() })));
        assert_eq!(dropped[0].live().count(), 0);
        kept[0].handle(Input::Tick, later);
        assert_eq!(kept[0].live().count(), 1, "a release shared to stays live");
        // Restored, the shared flag holds.
        let mut persisted = Persisted::default();
        persisted.apply(&Change::Live { txid: p.txid(), proposer: 1, proposal: p.clone(), at });
        persisted.apply(&Change::Shared { txid: p.txid() });
        let (mut restored, _) = ReleaseBook::restore(config(0), &persisted, later);
        restored.handle(Input::Tick, later + config(0).expire_after_ms);
        assert_eq!(restored.live().count(), 1);
    }

    /// Two honest validators hold different releases paying one peg-out: the one in
    /// turn supersedes its stuck release with one that spends an input of each and pays
    /// the peg-outs of both, which the other validator accepts too.
    #[test]
    fn a_superseding_release_merges_the_rival_it_was_refused_for() {
        let two: BTreeMap<OutPoint, Sats> = [
            (OutPoint { txid: Txid::from_byte_array([9; 32]), vout: 0 }, Sats(5_000_000)),
            (OutPoint { txid: Txid::from_byte_array([8; 32]), vout: 1 }, Sats(4_000_000)),
        ]
        .into_iter()
        .collect();
        let mut books = books();
        for b in books.iter_mut() {
            b.handle(Input::Utxos(two.clone()), 0);
        }
        let policy = config(0).policy;
        let coins: Vec<(OutPoint, Sats)> = two.iter().map(|(o, a)| (*o, *a)).collect();
        let mine = build(&coins[..1], &[payout(1)], 5, &policy).expect("one");
        let theirs = build(&coins[1..], &[payout(1), payout(2)], 5, &policy).expect("other");
        // Validator 0 holds `mine` (from 1, in turn); validator 3 holds `theirs` (from 2).
        let t1 = turn_of(1, 10_000);
        assert!(signs(&books[0].handle(Input::Proposal { from: 1, proposal: mine.clone() }, t1)));
        let t2 = turn_of(2, t1);
        assert!(signs(&books[3].handle(Input::Proposal { from: 2, proposal: theirs.clone() }, t2)));
        let acts = books[0].handle(Input::Proposal { from: 2, proposal: theirs.clone() }, t2);
        assert!(acts.iter().any(|a| matches!(a, Action::Refused { error: ReleaseError::PayoutLocked(_), .. })));
        books[0].handle(Input::Shared { txid: mine.txid() }, t2);
        books[3].handle(Input::Shared { txid: theirs.txid() }, t2);
        // Validator 0's turn, the respin wait over.
        let t0 = turn_of(0, t1 + config(0).respin_after_ms);
        let acts = books[0].handle(Input::Tick, t0);
        assert!(acts.contains(&Action::Count(Count::Merged)), "counted as a merge: {acts:?}");
        let merged = proposals(&acts).pop().expect("a superseding release");
        let inputs: BTreeSet<OutPoint> = merged.tx.input.iter().map(|i| i.previous_output).collect();
        assert_eq!(inputs, two.keys().copied().collect(), "an input of each");
        assert!(merged.payouts.contains(&payout(1).event) && merged.payouts.contains(&payout(2).event));
        assert!(
            signs(&books[3].handle(Input::Proposal { from: 0, proposal: merged }, t0 + 10)),
            "the other side signs it"
        );
    }

    /// A validator splits its proposal into twins (the same inputs and peg-outs, its
    /// own release at a lower fee), and each half starts signing its own. The half
    /// holding the dearer one signs the cheaper only once the dearer had its time. The
    /// proposer in turn then respins the stuck twin above the rate of both, which
    /// either half signs. Before, the respin was built at the estimate rate, came out
    /// as the dearer twin itself, and was never proposed (sim seeds 2068 and 2258, n=7).
    #[test]
    fn a_respin_pays_more_than_the_twins_it_supersedes() {
        let mut books = books();
        let t1 = turn_of(1, 10_000);
        let p = proposals(&books[1].handle(Input::Tick, t1)).pop().expect("validator 1 proposes");
        let coins: Vec<(OutPoint, Sats)> = utxos().into_iter().collect();
        let pays: Vec<Payout> = (1..=3).map(payout).collect();
        let twin = build(&coins, &pays, 4, &config(1).policy).expect("cheaper twin");
        assert!(twin.payouts == p.payouts && twin.fee() < p.fee());
        assert!(signs(&books[0].handle(Input::Proposal { from: 1, proposal: p.clone() }, t1)), "p signed at 0");
        assert!(signs(&books[3].handle(Input::Proposal { from: 1, proposal: twin.clone() }, t1)), "twin signed at 3");
        books[0].handle(Input::Shared { txid: p.txid() }, t1 + 10);
        books[3].handle(Input::Shared { txid: twin.txid() }, t1 + 10);
        let acts = books[0].handle(Input::Proposal { from: 1, proposal: twin.clone() }, t1 + 20);
        assert!(!signs(&acts), "the cheaper twin, before the dearer had its time: {acts:?}");
        let t0 = turn_of(0, t1 + config(0).respin_after_ms);
        let acts = books[0].handle(Input::Tick, t0);
        assert!(acts.iter().any(|a| matches!(a, Action::Sign { txid, .. } if *txid == twin.txid())), "{acts:?}");
        books[0].handle(Input::Shared { txid: twin.txid() }, t0 + 10);
        // Validator 0's next turn, the twin's own respin wait over.
        let t0 = turn_of(0, t0 + config(0).respin_after_ms);
        let respin = proposals(&books[0].handle(Input::Tick, t0)).pop().expect("a respin");
        let inputs = |r: &Proposal| r.tx.input.iter().map(|i| i.previous_output).collect::<BTreeSet<_>>();
        assert_eq!(inputs(&respin), inputs(&p));
        assert!(respin.fee() > p.fee(), "{} > {}", respin.fee(), p.fee());
        assert!(
            signs(&books[3].handle(Input::Proposal { from: 0, proposal: respin }, t0 + 10)),
            "the twin's half signs the respin"
        );
    }

    /// A crossed split: validator 0 holds `a -> 1` and `b -> 2`, validator 3 holds
    /// `a -> 2` and `b -> 1`, so no release of either shares only with one of the
    /// other's. The superseding release takes every release linked to the stuck one by
    /// an input or a peg-out (here all four): it spends `a` and `b` and pays 1 and 2,
    /// which both sides accept (sim seed 23, n=7).
    #[test]
    fn a_superseding_release_mends_a_crossed_split() {
        let two: BTreeMap<OutPoint, Sats> = [
            (OutPoint { txid: Txid::from_byte_array([9; 32]), vout: 0 }, Sats(5_000_000)),
            (OutPoint { txid: Txid::from_byte_array([8; 32]), vout: 1 }, Sats(4_000_000)),
        ]
        .into_iter()
        .collect();
        let mut books = books();
        for b in books.iter_mut() {
            b.handle(Input::Utxos(two.clone()), 0);
        }
        let policy = config(0).policy;
        let coins: Vec<(OutPoint, Sats)> = two.iter().map(|(o, a)| (*o, *a)).collect();
        let (a, b) = (&coins[..1], &coins[1..]);
        let a1 = build(a, &[payout(1)], 5, &policy).expect("a -> 1");
        let b2 = build(b, &[payout(2)], 5, &policy).expect("b -> 2");
        let a2 = build(a, &[payout(2)], 5, &policy).expect("a -> 2");
        let b1 = build(b, &[payout(1)], 5, &policy).expect("b -> 1");
        let t1 = turn_of(1, 10_000);
        for p in [&a1, &b2] {
            assert!(signs(&books[0].handle(Input::Proposal { from: 1, proposal: p.clone() }, t1)));
            books[0].handle(Input::Shared { txid: p.txid() }, t1);
        }
        let t2 = turn_of(2, t1);
        for p in [&a2, &b1] {
            assert!(signs(&books[3].handle(Input::Proposal { from: 2, proposal: p.clone() }, t2)));
            books[3].handle(Input::Shared { txid: p.txid() }, t2);
            let refused = books[0].handle(Input::Proposal { from: 2, proposal: p.clone() }, t2);
            assert!(refused.iter().any(|a| matches!(a, Action::Refused { .. })), "validator 0 holds a rival");
        }
        let t0 = turn_of(0, t1 + config(0).respin_after_ms);
        let merged = proposals(&books[0].handle(Input::Tick, t0)).pop().expect("a superseding release");
        let inputs: BTreeSet<OutPoint> = merged.tx.input.iter().map(|i| i.previous_output).collect();
        assert_eq!(inputs, two.keys().copied().collect(), "an input of each");
        assert!(merged.payouts.contains(&payout(1).event) && merged.payouts.contains(&payout(2).event));
        assert!(
            signs(&books[3].handle(Input::Proposal { from: 0, proposal: merged }, t0 + 10)),
            "the other side signs it"
        );
    }

    /// Told a peg-out was reorged away, a book stops signing the unsigned release that
    /// pays it and, restarted, does not sign it again.
    #[test]
    fn a_restarted_book_never_signs_again_a_release_paying_a_peg_out_reorged_away() {
        let mut b = books().remove(1);
        let at = turn_of(0, 10_000);
        let p = proposals(&books()[0].handle(Input::Tick, at)).pop().expect("proposed");
        let mut persisted = Persisted::default();
        let keep = |acts: Vec<Action>, persisted: &mut Persisted| {
            persist(persisted, &acts);
            acts
        };
        assert!(signs(&keep(b.handle(Input::Proposal { from: 0, proposal: p.clone() }, at + 10), &mut persisted)));
        let gone = p.payouts[0];
        let acts = keep(b.handle(Input::Reorged(gone), at + 20), &mut persisted);
        assert!(acts.contains(&Action::Abandon { txid: p.txid() }), "{acts:?}");
        let (_, owed) = ReleaseBook::restore(config(1), &persisted, at + 30);
        let again = owed.iter().any(|a| matches!(a, Action::Sign { txid, .. } if *txid == p.txid()));
        assert!(!again, "a restart signs what pays a reorged peg-out: {owed:?}");
        // What it still signs is the withdrawal, which does not pay it.
        let (restored, _) = ReleaseBook::restore(config(1), &persisted, at + 30);
        assert!(restored.live().all(|(t, _, l)| *t == p.txid() || !l.payouts.contains(&gone)));
    }

    /// A crash between a vault spend's record and the drop of the releases it ends
    /// leaves them on disk: the restored book drops them instead of signing them, and
    /// the spend reported again ends them too.
    #[test]
    fn a_crash_between_a_spend_and_its_drops_leaves_nothing_live() {
        let mut b = books().remove(0);
        let at = turn_of(0, 10_000);
        let mut persisted = Persisted::default();
        let acts = b.handle(Input::Tick, at);
        let p = proposals(&acts).pop().expect("proposed");
        persist(&mut persisted, &acts);
        // A conflicting spend of the same input confirms; only its first write lands.
        let mut other = p.tx.clone();
        other.output.truncate(1);
        let acts = b.handle(Input::VaultSpend(Spend::of(&other, &vault())), at + 100);
        let first = acts.iter().find_map(|a| if let Action::Persist(c) = a { Some(c.clone()) } else { None });
        assert!(matches!(first, Some(Change::Spent { .. })), "{acts:?}");
        persisted.apply(&first.expect("spent"));
        let (mut restored, owed) = ReleaseBook::restore(config(0), &persisted, at + 200);
        assert!(!signs(&owed), "a dead release signed after the restart: {owed:?}");
        assert!(owed.contains(&Action::Persist(Change::Dropped { txid: p.txid() })), "{owed:?}");
        assert_eq!(restored.live().count(), 0);
        // Reported again by the chain: no second record, nothing live.
        let again = restored.handle(Input::VaultSpend(Spend::of(&other, &vault())), at + 300);
        assert!(!again.iter().any(|a| matches!(a, Action::Persist(Change::Spent { .. }))), "{again:?}");
    }

    #[test]
    fn a_restored_book_signs_or_broadcasts_what_it_held() {
        let mut b = books().remove(0);
        let at = turn_of(0, 10_000);
        let mut persisted = Persisted::default();
        persist(&mut persisted, &b.handle(Input::Tick, at));
        let (mut restored, owed) = ReleaseBook::restore(config(0), &persisted, at + 5);
        assert_eq!(restored.live().count(), 1);
        assert!(owed.is_empty(), "nothing before the chain view is back: {owed:?}");
        let owed = restored.handle(Input::Synced(true), at + 6);
        assert!(matches!(owed.as_slice(), [Action::Sign { .. }]), "{owed:?}");
        assert!(!signs(&restored.handle(Input::Synced(true), at + 7)), "owed once");
    }

    /// A validator down while a peg-out was reorged away past finality restarts with a
    /// release paying it held live and unsigned. Told of the reorg as its chain view
    /// comes back, it never signs that release. Before, the restored book asked for
    /// its signatures at once, before the chain view was back (sim seed 3229, n = 16:
    /// "signing a release that pays ..., reorged out past finality").
    #[test]
    fn a_restarted_book_signs_nothing_before_its_chain_view_is_back() {
        let mut b = books().remove(1);
        let at = turn_of(0, 10_000);
        let p = proposals(&books()[0].handle(Input::Tick, at)).pop().expect("proposed");
        let mut disk = Persisted::default();
        assert!(signs(&step(&mut b, &mut disk, Input::Proposal { from: 0, proposal: p.clone() }, at + 10)));
        // Down; meanwhile peg-out 1's burn is reorged away. Restarted:
        let (mut restored, owed) = ReleaseBook::restore(config(1), &disk, at + 5_000);
        assert!(!signs(&owed), "signed before the chain view is back: {owed:?}");
        restored.handle(Input::Utxos(utxos()), at + 5_001);
        restored.handle(Input::FeeEstimate(5), at + 5_001);
        let gone = p.payouts[0];
        let told = restored.handle(Input::Reorged(gone), at + 5_002);
        assert!(!told.iter().any(|a| matches!(a, Action::Sign { txid, .. } if *txid == p.txid())), "{told:?}");
        let owed = restored.handle(Input::Synced(true), at + 5_003);
        let again = owed.iter().any(|a| matches!(a, Action::Sign { txid, .. } if *txid == p.txid()));
        assert!(!again, "signs a release paying a peg-out reorged away: {owed:?}");
    }

    /// A signed release whose peg-out is reorged away is left to its withdrawal: neither
    /// its periodic rebroadcast nor a restart sends it again (it would compete with the
    /// withdrawal for the same inputs, and pay a burn that no longer exists).
    #[test]
    fn a_signed_release_paying_a_peg_out_reorged_away_is_never_sent_again() {
        let mut b = books().remove(0);
        let at = turn_of(0, 10_000);
        let p = proposals(&b.handle(Input::Tick, at)).pop().expect("proposed");
        let sig = schnorr::Signature::from_slice(&[1; 64]).expect("sig");
        let mut disk = Persisted::default();
        let signed = Input::Signed { txid: p.txid(), signatures: vec![sig; p.tx.input.len()] };
        assert!(step(&mut b, &mut disk, signed, at + 10).iter().any(|a| matches!(a, Action::Broadcast(_))));
        step(&mut b, &mut disk, Input::Reorged(p.payouts[0]), at + 20);
        let sent_again =
            |acts: &[Action]| acts.iter().any(|a| matches!(a, Action::Broadcast(tx) if tx.compute_txid() == p.txid()));
        let later = b.handle(Input::Tick, at + 60_000);
        assert!(!sent_again(&later), "rebroadcast after its peg-out was reorged away: {later:?}");
        let (mut restored, owed) = ReleaseBook::restore(config(0), &disk, at + 70_000);
        assert!(!sent_again(&owed), "{owed:?}");
        restored.handle(Input::Utxos(utxos()), at + 70_001);
        restored.handle(Input::FeeEstimate(5), at + 70_001);
        let owed = restored.handle(Input::Synced(true), at + 70_002);
        assert!(!sent_again(&owed), "sent again after a restart: {owed:?}");
    }

    /// A confirmed release whose spend a reorg past finality takes out of the chain is
    /// still a payment in flight: it is sent again, and no other release pays its
    /// peg-outs (one that could confirm beside it would pay them twice), here or after
    /// a restart. Only a conflicting spend at depth frees them, and they are paid once.
    #[test]
    fn a_spend_reorged_out_is_sent_again_and_its_peg_outs_are_never_paid_twice() {
        let mut b = books().remove(0);
        let at = turn_of(0, 10_000);
        let p = proposals(&b.handle(Input::Tick, at)).pop().expect("proposed");
        let sig = schnorr::Signature::from_slice(&[1; 64]).expect("sig");
        b.handle(Input::Signed { txid: p.txid(), signatures: vec![sig; p.tx.input.len()] }, at + 10);
        let mut disk = Persisted::default();
        let spent = b.handle(Input::VaultSpend(Spend::of(&p.tx, &vault())), at + 20_000);
        persist(&mut disk, &spent);
        assert_eq!(b.paid_events().len(), 3);

        let acts = b.handle(Input::SpendReorged { txid: p.txid() }, at + 30_000);
        persist(&mut disk, &acts);
        assert!(acts.iter().any(|a| matches!(a, Action::Broadcast(tx) if tx.compute_txid() == p.txid())), "{acts:?}");
        assert_eq!(b.paid_events().len(), 3, "its peg-outs are still paid: {:?}", b.paid_events());
        // Its inputs come back to the UTXO set: no turn of anyone's pays its peg-outs again.
        b.handle(Input::Utxos(utxos()), at + 30_001);
        let (mut restored, _) = ReleaseBook::restore(config(0), &disk, at + 30_002);
        restored.handle(Input::Utxos(utxos()), at + 30_003);
        restored.handle(Input::FeeEstimate(5), at + 30_003);
        for i in 1..=3 {
            restored.handle(Input::Certified(payout(i)), 0);
        }
        let owed = restored.handle(Input::Synced(true), at + 30_003);
        assert!(owed.iter().any(|a| matches!(a, Action::Broadcast(tx) if tx.compute_txid() == p.txid())), "{owed:?}");
        for book in [&mut b, &mut restored] {
            let mut sent = 0usize;
            for t in 0..40u64 {
                let acts = book.handle(Input::Tick, turn_of(0, at + 40_000 + t * 4 * TURN));
                assert!(proposals(&acts).is_empty(), "a second payment proposed: {acts:?}");
                sent += acts.iter().filter(|a| matches!(a, Action::Broadcast(_))).count();
            }
            assert!(sent >= 1, "the reorged spend is sent again");
            // A peer's release paying them again is refused.
            let fresh = (OutPoint { txid: Txid::from_byte_array([8; 32]), vout: 0 }, Sats(5_000_000));
            let mut other = utxos();
            other.insert(fresh.0, fresh.1);
            let again = build(&[fresh], &(1..=3).map(payout).collect::<Vec<_>>(), 5, &config(1).policy).expect("built");
            book.handle(Input::Utxos(other), at + 800_000);
            let acts = book.handle(Input::Proposal { from: 1, proposal: again }, turn_of(1, at + 800_000));
            assert!(!signs(&acts), "signed a second payment of paid peg-outs: {acts:?}");
            assert!(
                acts.iter().any(|a| matches!(a, Action::Refused { error: ReleaseError::PayoutLocked(_), .. })),
                "refused as paid: {acts:?}"
            );
        }

        // A new peg-out is paid, from a UTXO no payment in flight spends.
        let fresh = OutPoint { txid: Txid::from_byte_array([8; 32]), vout: 0 };
        let mut both = utxos();
        both.insert(fresh, Sats(5_000_000));
        b.handle(Input::Utxos(both), at + 900_000);
        b.handle(Input::Certified(payout(4)), at + 900_000);
        let fourth = (0..8)
            .find_map(|t| proposals(&b.handle(Input::Tick, turn_of(0, at + 910_000 + t * 4 * TURN))).pop())
            .expect("the fourth peg-out proposed");
        assert_eq!(fourth.payouts, vec![payout(4).event]);
        assert_eq!(fourth.tx.input.iter().map(|i| i.previous_output).collect::<Vec<_>>(), vec![fresh]);

        // A spend at depth that conflicts with it (here: spends its input, pays nothing)
        // means it can never confirm: its peg-outs are payable again, once.
        let conflicting = Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: p.tx.input.clone(),
            output: vec![TxOut { value: bitcoin::Amount::from_sat(4_000_000), script_pubkey: vault() }],
        };
        let mut other = utxos();
        other.clear();
        let change = OutPoint { txid: conflicting.compute_txid(), vout: 0 };
        other.insert(change, Sats(4_000_000));
        let acts = restored.handle(Input::VaultSpend(Spend::of(&conflicting, &vault())), at + 900_000);
        persist(&mut disk, &acts);
        restored.handle(Input::Utxos(other), at + 900_001);
        assert!(restored.paid_events().is_empty(), "{:?}", restored.paid_events());
        let mut repaid = Vec::new();
        for t in 0..8u64 {
            repaid.extend(proposals(&restored.handle(Input::Tick, turn_of(0, at + 1_000_000 + t * 4 * TURN))));
        }
        // One release (sent again while it waits for signatures), paying all three.
        let txids: BTreeSet<Txid> = repaid.iter().map(Proposal::txid).collect();
        assert_eq!(txids.len(), 1, "{repaid:?}");
        assert_eq!(repaid.first().map(|p| p.payouts.len()), Some(3));
        let (again, _) = ReleaseBook::restore(config(0), &disk, at + 1_100_000);
        assert!(again.paid_events().is_empty(), "the voided spend is gone from the records too");
    }

    /// A withdrawal this node's own checks refuse when the reorg is reported (here its
    /// view of the vault UTXOs is behind: the release's input is missing from it) is
    /// proposed once they pass, instead of never: the release paying what no longer
    /// exists would otherwise hold its input and its other peg-outs for good.
    #[test]
    fn a_withdrawal_refused_for_the_moment_is_proposed_once_the_checks_pass() {
        let mut b = books().remove(0);
        let at = turn_of(0, 10_000);
        let p = proposals(&b.handle(Input::Tick, at)).pop().expect("proposed");
        let sig = schnorr::Signature::from_slice(&[1; 64]).expect("sig");
        b.handle(Input::Signed { txid: p.txid(), signatures: vec![sig; p.tx.input.len()] }, at + 10);
        b.handle(Input::Utxos(BTreeMap::new()), at + 20);
        let gone = p.payouts[0];
        let acts = b.handle(Input::Reorged(gone), at + 30);
        assert!(proposals(&acts).is_empty(), "its input is unknown here: no withdrawal yet: {acts:?}");
        b.handle(Input::Utxos(utxos()), at + 1_000);
        let w = proposals(&b.handle(Input::Tick, at + 1_010)).pop().expect("the withdrawal, once the input is known");
        assert!(!w.payouts.contains(&gone) && w.payouts.len() == 2, "{:?}", w.payouts);
        assert_eq!(w, withdraw(&p, &[gone].into_iter().collect(), &config(0).policy).expect("withdrawal"));
        assert!(proposals(&b.handle(Input::Tick, at + 2_000)).is_empty(), "one withdrawal, not one a tick");
    }

    /// A peg-out certified on one validator only, not the others (yet).
    fn uncertified(k: u32) -> Payout {
        Payout {
            event: EventId::new(ChainId(31337), TxHash([200; 32]), k),
            amount: Sats(100_000 + u64::from(k)),
            script: payee(200),
        }
    }

    /// A validator flooding proposals in its turn (each waiting on a peg-out this node
    /// does not know) keeps at most its own quota and never displaces an honest
    /// proposer's kept proposal. Before, the shared list dropped its oldest entry, the
    /// honest one, after 256 from the flooder, and that release was never signed here.
    #[test]
    fn a_flood_of_waiting_proposals_displaces_only_the_flooders_own() {
        let mut books = books();
        let policy = config(0).policy;
        let coins: Vec<(OutPoint, Sats)> = utxos().into_iter().collect();
        let honest = build(&coins, &[uncertified(0)], 5, &policy).expect("honest");
        let t1 = turn_of(1, 10_000);
        let acts = books[0].handle(Input::Proposal { from: 1, proposal: honest.clone() }, t1);
        assert!(!signs(&acts) && !acts.iter().any(|a| matches!(a, Action::Refused { .. })), "kept: {acts:?}");
        let t2 = turn_of(2, t1);
        for k in 1..=(MAX_WAITING as u32 + 44) {
            let spam = build(&coins, &[uncertified(k)], 5, &policy).expect("spam");
            books[0].handle(Input::Proposal { from: 2, proposal: spam }, t2 + u64::from(k % 100));
        }
        let from_flooder = books[0].waiting.iter().filter(|(f, _, _)| *f == 2).count();
        let acts = books[0].handle(Input::Certified(uncertified(0)), t2 + 1_000);
        assert!(
            acts.iter().any(|a| matches!(a, Action::Sign { txid, .. } if *txid == honest.txid())),
            "the honest proposal is signed once its peg-out is certified here: {acts:?}"
        );
        assert!(from_flooder <= MAX_WAITING_PER_SENDER, "{from_flooder} kept from one sender");
    }

    #[test]
    fn eviction_takes_the_senders_own_oldest_then_the_heaviest_senders() {
        // Under its quota and room left: nothing goes.
        let kept: Vec<(u32, usize, Millis)> = (0..3).map(|k| (k, 1, Millis::from(k))).collect();
        assert_eq!(evict(&kept, 1), None);
        // At its quota: its own oldest, never another's older entry.
        let mut kept: Vec<(u32, usize, Millis)> = vec![(100, 0, 0)];
        kept.extend((0..MAX_WAITING_PER_SENDER as u32).map(|k| (k, 3, 10 + Millis::from(k))));
        assert_eq!(evict(&kept, 3), Some(0));
        assert_eq!(evict(&kept, 0), None);
        // Full, everyone under quota: the oldest of the sender with the most, though
        // the others' entries are older still.
        let quota = MAX_WAITING_PER_SENDER as u32 - 1;
        let kept: Vec<(u32, usize, Millis)> = (0..MAX_WAITING as u32)
            .map(|k| if k < quota { (k, 5, 1_000 + Millis::from(k)) } else { (k, 1_000 + k as usize, Millis::from(k)) })
            .collect();
        assert_eq!(evict(&kept, 7), Some(0));
    }

    fn step(b: &mut ReleaseBook, disk: &mut Persisted, input: Input, now: Millis) -> Vec<Action> {
        let acts = b.handle(input, now);
        persist(disk, &acts);
        acts
    }

    /// A release that spent the change of another, both taken out of the chain by a
    /// deep reorg: when a spend conflicting with the parent reaches depth (before or
    /// after the reorg is reported), the parent can never confirm, nor can the child
    /// (it spends an output that will never exist). Both are dropped, their peg-outs
    /// payable again, in memory and after a restart alike.
    #[test]
    fn spends_out_of_the_chain_that_can_never_confirm_are_dropped_with_what_spends_them() {
        for conflict_first in [false, true] {
            let mut b = books().remove(0);
            let mut disk = Persisted::default();
            let sig = schnorr::Signature::from_slice(&[1; 64]).expect("sig");
            let at = turn_of(0, 10_000);
            let parent = proposals(&step(&mut b, &mut disk, Input::Tick, at)).pop().expect("proposed");
            let n = parent.tx.input.len();
            step(&mut b, &mut disk, Input::Signed { txid: parent.txid(), signatures: vec![sig; n] }, at + 10);
            step(&mut b, &mut disk, Input::VaultSpend(Spend::of(&parent.tx, &vault())), at + 20);
            let (vout, change) =
                parent.tx.output.iter().enumerate().find(|(_, o)| o.script_pubkey == vault()).expect("change");
            let change_op = OutPoint { txid: parent.txid(), vout: u32::try_from(vout).expect("vout") };
            let utxos = BTreeMap::from([(change_op, Sats(change.value.to_sat()))]);
            step(&mut b, &mut disk, Input::Utxos(utxos), at + 30);
            step(&mut b, &mut disk, Input::Certified(payout(4)), at + 30);
            let child = (0..8)
                .find_map(|t| {
                    proposals(&step(&mut b, &mut disk, Input::Tick, turn_of(0, at + 20_000 + t * 16_000))).pop()
                })
                .expect("the child proposed");
            assert_eq!(child.tx.input.iter().map(|i| i.previous_output).collect::<Vec<_>>(), vec![change_op]);
            let n = child.tx.input.len();
            step(&mut b, &mut disk, Input::Signed { txid: child.txid(), signatures: vec![sig; n] }, at + 200_000);
            step(&mut b, &mut disk, Input::VaultSpend(Spend::of(&child.tx, &vault())), at + 200_010);
            assert_eq!(b.paid_events().len(), 4);

            // The parent's input spent by another transaction at depth, paying nothing.
            let rival = Transaction {
                version: bitcoin::transaction::Version::TWO,
                lock_time: bitcoin::absolute::LockTime::ZERO,
                input: parent.tx.input.clone(),
                output: vec![TxOut { value: bitcoin::Amount::from_sat(4_000_000), script_pubkey: vault() }],
            };
            if conflict_first {
                step(&mut b, &mut disk, Input::VaultSpend(Spend::of(&rival, &vault())), at + 300_000);
            }
            step(&mut b, &mut disk, Input::SpendReorged { txid: child.txid() }, at + 300_010);
            step(&mut b, &mut disk, Input::SpendReorged { txid: parent.txid() }, at + 300_020);
            if !conflict_first {
                assert_eq!(b.paid_events().len(), 4, "both in flight: still paid");
                step(&mut b, &mut disk, Input::VaultSpend(Spend::of(&rival, &vault())), at + 300_030);
            }
            assert!(b.paid_events().is_empty(), "conflict first: {conflict_first}: {:?}", b.paid_events());
            let later = b.handle(Input::Tick, at + 400_000);
            assert!(!later.iter().any(|a| matches!(a, Action::Broadcast(_))), "a dead spend sent again: {later:?}");
            let (restored, owed) = ReleaseBook::restore(config(0), &disk, at + 400_010);
            assert!(
                restored.paid_events().is_empty(),
                "conflict first: {conflict_first}: {:?}",
                restored.paid_events()
            );
            assert!(owed.is_empty(), "{owed:?}");
        }
    }

    /// A validator holding a release and its RBF bump (both live: same inputs) accepts
    /// the withdrawal of either: validators holding only one of them build that one's,
    /// and each must find enough signers.
    #[test]
    fn the_withdrawal_of_a_release_or_of_its_bump_is_accepted_by_a_validator_holding_both() {
        let mut books = books();
        let at = turn_of(0, 10_000);
        let r = proposals(&books[0].handle(Input::Tick, at)).pop().expect("proposed");
        assert!(signs(&books[1].handle(Input::Proposal { from: 0, proposal: r.clone() }, at + 50)));
        let sig = schnorr::Signature::from_slice(&[1; 64]).expect("sig");
        let n = r.tx.input.len();
        books[0].handle(Input::Signed { txid: r.txid(), signatures: vec![sig; n] }, at + 100);
        let bumped = (1..8u64)
            .find_map(|k| {
                let now = turn_of(0, at + 30_000 + k * 4 * TURN);
                proposals(&books[0].handle(Input::Tick, now)).pop().map(|p| (p, now))
            })
            .expect("the stuck release bumped by its proposer in turn");
        let (r_b, when) = bumped;
        assert_eq!(Live::of(&r_b).inputs, Live::of(&r).inputs, "an RBF bump spends the same inputs");
        assert_ne!(r_b.txid(), r.txid());
        assert!(signs(&books[1].handle(Input::Proposal { from: 0, proposal: r_b.clone() }, when + 50)));
        assert_eq!(books[1].live().count(), 2, "the release and its bump");

        let gone = r.payouts[0];
        let withdrawn: BTreeSet<EventId> = [gone].into_iter().collect();
        let w = withdraw(&r, &withdrawn, &config(1).policy).expect("withdrawal of the release");
        let w_b = withdraw(&r_b, &withdrawn, &config(1).policy).expect("withdrawal of the bump");
        assert_ne!(w.txid(), w_b.txid());
        books[1].handle(Input::Reorged(gone), when + 100);
        for (name, proposal) in [("the release's", w), ("the bump's", w_b)] {
            let txid = proposal.txid();
            let held = books[1].live().any(|(t, _, _)| *t == txid);
            let acts = books[1].handle(Input::Proposal { from: 2, proposal }, when + 200);
            assert!(held || signs(&acts), "{name} withdrawal refused: {acts:?}");
        }
    }
}
