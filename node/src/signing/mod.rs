//! The signer driver: robust FROST sessions ([`btcfi_signer::session`]) over the p2p
//! network, one [`Suite`] per group key.
//!
//! A session starts only from this node's own decision ([`Suite::start`]: a digest it
//! certified, a sighash of a release it validated, the test message of a fresh key).
//! Peer messages for a session this node has not started yet are parked (bounded, for
//! two minutes) and replayed when it starts. The suite writes nothing itself: every
//! `CommitmentIssued` record, round and piece of evidence comes as [`Effect::Persist`]
//! ahead of the effects that depend on it, and the driver commits it (synced) before it
//! carries out the next, so no commitment leaves before its record is durable. At start
//! the records are loaded back, so no attempt from before a restart is ever answered. A finished session
//! answers late peers with its signature so they finish too.
//!
//! A session that fails (its attempts ran out while signers were away) is retried by
//! itself, as the next *round*: a new session id (`SessionId::derive_round`), stored
//! before it starts, with fresh attempts, after a backoff (twice the timeout, doubling,
//! at most a minute). A peer still in an earlier round gets a round hint; a node joins a
//! later round once `n − t + 1` peers (so one honest at least) say they reached it, and
//! a failed round is retried at once when a signer comes back.
//!
//! Wire: a `MessageKind::Signing` request whose payload is `tag u8 | body`: tag
//! [`TAG_EVM`] or [`TAG_BTC`] with a session [`Message`]'s encoding; tag [`TAG_ROUND`]
//! a round hint; tag [`crate::release::TAG_RELEASE`] carries a release proposal.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use crate::{keys::KeyKind, metrics::Metrics, validators::identifier};
use btcfi_signer::session::{Action, Attempt, CommitmentIssued, Input, Message, Session, SessionConfig, SessionId};
use btcfi_store::{Batch, Store};
use btcfi_types::EventId;
use frost_core::{Ciphersuite, Identifier, Signature, round2::SignatureShare};
use serde::{Deserialize, Serialize};
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};
use tracing::{debug, info, warn};

/// Payload tag of `evm` session messages.
pub const TAG_EVM: u8 = 1;
/// Payload tag of `btc` session messages.
pub const TAG_BTC: u8 = 2;
/// Payload tag of a round hint: `TAG_ROUND | suite tag | session id (32) | round (u32 BE)`,
/// sent to a peer still in an earlier round of a message this node signs.
pub const TAG_ROUND: u8 = 4;
/// Parked messages of a session not started here are dropped after this long.
const PARK_FOR: Duration = Duration::from_secs(120);
/// At most this many sessions parked, and messages per parked session.
const MAX_PARKED_SESSIONS: usize = 1024;
const MAX_PARKED_PER_SESSION: usize = 64;
/// At most this many parked messages of one session from one sender (one peer cannot
/// crowd out the others).
const MAX_PARKED_PER_SENDER: usize = 8;
/// At most this many bytes of parked messages from one sender, over all sessions.
const MAX_PARKED_BYTES_PER_SENDER: usize = 1 << 20;
/// A failed session is retried (as the next round) after twice the signing timeout,
/// doubling per failure up to this.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// At most one round hint to a peer per message this often.
const HINT_EVERY: Duration = Duration::from_secs(2);

/// Why a session runs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Purpose {
    /// The test signature of a fresh key.
    KeyCheck,
    /// The `mint` of a certified peg-in or EVM-to-EVM attestation (a batch of one).
    Mint { event: EventId },
    /// A batch of `mints` certified mints to the bridge on `chain`, under Merkle root
    /// `root` (hex).
    MintBatch { chain: u64, root: String, mints: usize },
    /// Input `input` of the release transaction `txid`.
    ReleaseInput { txid: String, input: u32 },
}

/// Deliberate misbehaviour, for tests only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningFault {
    /// Send signature shares that do not verify.
    InvalidShares,
    /// Commit, then never send a share (a test SIGKILLs the node meanwhile).
    WithholdShares,
    /// Take no part in signing mints (a signer away while consensus goes on).
    SilentOnMints,
}

/// What the run loop must do.
#[derive(Debug)]
pub enum Effect {
    /// Commit this batch (synced) before carrying out the effects after it.
    Persist(Batch),
    /// Send `payload` (a `MessageKind::Signing` request) to validator `to`.
    Send { to: usize, payload: Vec<u8> },
    /// A session produced a verified group signature.
    Signed {
        kind: KeyKind,
        purpose: Purpose,
        message: Vec<u8>,
        /// FROST serialization of the signature.
        signature: Vec<u8>,
        /// Validators eligible in the attempt that produced it.
        signers: Vec<usize>,
        attempt: u32,
        elapsed: Duration,
    },
    /// A session gave up (fewer than t responsive honest signers).
    Failed { kind: KeyKind, purpose: Purpose, error: String },
    /// This node's signature share for `purpose` leaves with the next effect: whatever
    /// must be durable before it does is written on this one.
    Shared { kind: KeyKind, purpose: Purpose },
}

mod parking;
mod queue;
mod sessions;
#[cfg(test)]
mod tests;

pub use parking::{ParkRefusal, Parking};
pub use queue::StartQueue;
use queue::priority;

/// What a suite is doing, for readiness and the status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    pub in_flight: usize,
    pub max_in_flight: usize,
    pub queued: usize,
    pub backlog: Duration,
}

/// A message this node wants signed, across the rounds of its signing (a round is one
/// session; a failed one is retried as the next round, with a fresh session id).
struct Wanted {
    purpose: Purpose,
    round: u32,
    /// The session id of every round so far (index = round).
    sids: Vec<SessionId>,
    failures: u32,
    /// When the next round starts, after a failed one.
    retry_at: Option<Instant>,
    /// The round that starts then (the next one unless peers said a later one).
    next_round: Option<u32>,
    /// The highest round each peer said it is in.
    hints: BTreeMap<usize, u32>,
    hinted: BTreeMap<usize, Instant>,
}

/// The round that at least `f + 1` peers (so at least one honest one) say they reached:
/// the `(f+1)`-th highest of their hints. A Byzantine peer alone cannot move a node on.
pub fn agreed_round(hints: &BTreeMap<usize, u32>, f: usize) -> Option<u32> {
    let mut rounds: Vec<u32> = hints.values().copied().collect();
    rounds.sort_unstable_by(|a, b| b.cmp(a));
    rounds.get(f).copied()
}

/// The delay before retrying after the `failures`-th failure.
fn retry_delay(timeout_ms: u64, failures: u32) -> Duration {
    let base = Duration::from_millis(timeout_ms.saturating_mul(2));
    base.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(MAX_RETRY_DELAY)
}

struct Slot<C: Ciphersuite> {
    session: Session<C>,
    purpose: Purpose,
    message: Vec<u8>,
    started: Instant,
    attempt: Attempt,
    candidates: BTreeSet<Identifier<C>>,
    /// Set aside: it waited for peers (fewer than t committed) while a session peers do
    /// sign waited for its slot. It is back in the queue; its peers' messages are held
    /// for it ([`MAX_PARKED_PER_SESSION`] at most) until it takes a slot again, nonces
    /// and attempt unchanged (its attempt had no timer running, so nothing is lost).
    suspended: bool,
    held: Vec<(usize, Message<C>)>,
    /// Since when it holds its slot.
    active_since: Instant,
}

/// One group key's sessions.
pub struct Suite<C: Ciphersuite> {
    kind: KeyKind,
    tag: u8,
    epoch: u64,
    n: usize,
    me: usize,
    config: SessionConfig<C>,
    signers: BTreeSet<Identifier<C>>,
    sessions: BTreeMap<SessionId, Slot<C>>,
    finished: BTreeMap<SessionId, (Attempt, Signature<C>)>,
    parked: Parking<Message<C>>,
    /// Messages being signed, by message, and every round's session id of each.
    wanted: BTreeMap<Vec<u8>, Wanted>,
    by_sid: BTreeMap<SessionId, Vec<u8>>,
    issued: BTreeSet<CommitmentIssued>,
    fault: Option<SigningFault>,
    metrics: Metrics,
    /// Sessions run at once at most; the rest wait in `queue`.
    max_in_flight: usize,
    queue: StartQueue,
    /// The session id each queued message will start under.
    queued_sids: BTreeMap<SessionId, Vec<u8>>,
    /// Sessions abandoned in this process (never started again: see [`Suite::start`]).
    spent: BTreeSet<SessionId>,
}

impl<C: Ciphersuite> std::fmt::Debug for Suite<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Suite")
            .field("kind", &self.kind)
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

fn session_of<C: Ciphersuite>(m: &Message<C>) -> SessionId {
    match m {
        Message::Commitment { session, .. }
        | Message::SigningPackage { session, .. }
        | Message::Share { session, .. }
        | Message::NewAttempt { session, .. }
        | Message::Signature { session, .. } => *session,
    }
}

fn refusal_reason(e: &btcfi_signer::session::SessionError) -> &'static str {
    use btcfi_signer::session::SessionError as E;
    match e {
        E::NoncesNotHeld { .. } => "pre_restart_attempt",
        E::StaleAttempt { .. } => "stale_attempt",
        E::Duplicate => "duplicate",
        E::UnexpectedMessage => "unexpected_message",
        E::WrongCoordinator { .. } | E::NotCoordinator { .. } | E::NotACandidate => "wrong_role",
        E::InvalidPackage { .. } | E::InvalidSignature | E::Frost(_) => "invalid",
        _ => "other",
    }
}

impl<C: Ciphersuite> Suite<C> {
    /// The suite of validator `me` of `n`, with the commitments it issued before (from
    /// the store) refused forever.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: KeyKind,
        epoch: u64,
        n: usize,
        me: usize,
        config: SessionConfig<C>,
        store: &Store,
        fault: Option<SigningFault>,
        metrics: Metrics,
        max_in_flight: usize,
    ) -> eyre::Result<Self> {
        let issued = crate::records::signing::issued(store, kind)?;
        let signers = (0..n).map(identifier::<C>).collect::<eyre::Result<_>>()?;
        let tag = match kind {
            KeyKind::Evm => TAG_EVM,
            KeyKind::Btc => TAG_BTC,
        };
        if !issued.is_empty() {
            info!(target: "signing", key = %kind, records = issued.len(), "commitments issued before the last restart: those attempts are never answered");
        }
        Ok(Self {
            kind,
            tag,
            epoch,
            n,
            me,
            config,
            signers,
            sessions: BTreeMap::new(),
            finished: BTreeMap::new(),
            parked: Parking::new(n),
            wanted: BTreeMap::new(),
            by_sid: BTreeMap::new(),
            issued,
            fault,
            metrics,
            max_in_flight: max_in_flight.max(1),
            queue: StartQueue::default(),
            queued_sids: BTreeMap::new(),
            spent: BTreeSet::new(),
        })
    }

    /// Sessions holding a slot (running, not set aside).
    fn active(&self) -> usize {
        self.sessions.values().filter(|s| !s.suspended).count()
    }

    /// Sessions running, the limit, messages queued behind them and for how long.
    pub fn load(&self) -> Load {
        Load {
            in_flight: self.active(),
            max_in_flight: self.max_in_flight,
            queued: self.queue.len(),
            backlog: self.queue.backlog_for(Instant::now()),
        }
    }

    /// Why `message` is not signed yet, for the API: queued (and where), failed and
    /// waiting for its next round (and when), or signing (session, round, attempt, its
    /// coordinator, the signers eligible and left out, and, when this node coordinates,
    /// those whose commitment or share it still waits for). Validators by index.
    pub fn explain(&self, message: &[u8]) -> Option<crate::api::SessionWait> {
        use crate::api::{SessionWait, SetAside};
        let w = self.wanted.get(message)?;
        let index = |id: &Identifier<C>| self.index(id);
        let list = |set: &BTreeSet<Identifier<C>>| set.iter().filter_map(index).collect::<Vec<usize>>();
        let sid = w.sids.last().copied();
        let set_aside = sid.and_then(|s| self.sessions.get(&s)).filter(|s| s.suspended);
        if w.sids.is_empty() || set_aside.is_some() {
            return Some(SessionWait::Queued {
                position: self.queue.position(message),
                queued: self.queue.len(),
                sessions_in_flight: self.active(),
                max_sessions_in_flight: self.max_in_flight,
                set_aside: set_aside.map(|s| SetAside {
                    attempt: s.attempt.0,
                    committed: s.session.present(),
                    held_messages: s.held.len(),
                }),
            });
        }
        let sid = sid?;
        if let Some(at) = w.retry_at {
            return Some(SessionWait::Retrying {
                session: hex::encode(sid.0),
                round: w.round,
                failed_rounds: w.failures,
                next_round_in_ms: at.saturating_duration_since(Instant::now()).as_millis() as u64,
            });
        }
        let slot = self.sessions.get(&sid)?;
        let p = slot.session.progress();
        let waiting_for = |have: &Option<BTreeSet<Identifier<C>>>, p: &btcfi_signer::session::Progress<C>| {
            have.as_ref().map(|h| list(&p.candidates.difference(h).copied().collect()))
        };
        Some(SessionWait::Signing {
            session: hex::encode(sid.0),
            round: w.round,
            attempt: p.as_ref().map(|p| p.attempt.0),
            coordinator: p.as_ref().and_then(|p| index(&p.coordinator)),
            candidates: p.as_ref().map(|p| list(&p.candidates)),
            excluded: p.as_ref().map(|p| list(&p.excluded)),
            missing_commitments: p.as_ref().and_then(|p| waiting_for(&p.committed, p)),
            missing_shares: p.as_ref().and_then(|p| waiting_for(&p.shared, p)),
            running_for_ms: slot.started.elapsed().as_millis() as u64,
        })
    }

    fn has_slot(&self) -> bool {
        self.active() < self.max_in_flight
    }

    /// Whether a session of `message` holds a slot here.
    fn holds_slot(&self, message: &[u8]) -> bool {
        let Some(w) = self.wanted.get(message) else { return false };
        w.sids.last().and_then(|sid| self.sessions.get(sid)).is_some_and(|s| !s.suspended)
    }

    /// Peers known to sign `message` already: those whose messages wait for it here
    /// (parked before it started, or held while it is set aside) or who committed to it.
    fn peers_on(&self, message: &[u8]) -> usize {
        let Some(w) = self.wanted.get(message) else { return 0 };
        match w.sids.last().and_then(|sid| self.sessions.get(sid)) {
            Some(slot) => {
                let held: BTreeSet<usize> = slot.held.iter().map(|(f, _)| *f).collect();
                held.len().max(slot.session.present().saturating_sub(1))
            }
            None => self.parked.senders(&self.sid_of(message, w.round)),
        }
    }

    /// Every slot is taken, and the next queued message is one peers already sign: the
    /// running session that waits for peers the longest (fewer than t committed, for at
    /// least twice the timeout, with no more peers on it than on that message, ordered
    /// after it by session id) is set aside for it. Validators drain their queues in different orders, so the sessions
    /// holding their slots differ; without this, sessions each waiting for peers whose
    /// slots hold others could wait for each other until their patience ran out.
    fn yield_slot(&mut self, now: Instant) {
        if self.has_slot() {
            return;
        }
        let Some((head, true)) = self.queue.peek() else { return };
        let head_peers = self.peers_on(head);
        let Some(w) = self.wanted.get(head) else { return };
        let head_priority = priority(&w.purpose);
        let head_sid = w.sids.last().copied().unwrap_or_else(|| self.sid_of(head, w.round));
        // Bounded: as many set aside as may run.
        if self.sessions.values().filter(|s| s.suspended).count() >= self.max_in_flight {
            return;
        }
        let waited = Duration::from_millis(self.config.timeout_ms.saturating_mul(2));
        let pick = self.waiting_after(head_sid, |s| {
            priority(&s.purpose) >= head_priority
                && now.saturating_duration_since(s.active_since) >= waited
                && s.session.present() <= head_peers
        });
        if let Some(sid) = pick {
            self.set_aside(sid, now);
        }
    }

    /// The running session still short of t, ordered after `sid` by session id (the
    /// same order on every validator: two validators never swap two sessions against
    /// each other), that also passes `also`, with the fewest signers committed and
    /// holding its slot the longest.
    fn waiting_after(&self, sid: SessionId, also: impl Fn(&Slot<C>) -> bool) -> Option<SessionId> {
        self.sessions
            .iter()
            .filter(|(s_id, s)| **s_id > sid && !s.suspended && !s.session.quorate() && also(s))
            .min_by_key(|(_, s)| (s.session.present(), s.active_since))
            .map(|(s_id, _)| *s_id)
    }

    /// `except` must run again: the running session ordered after it with the fewest
    /// signers committed among those still short of t gives its slot up for it, if any.
    fn set_aside_one(&mut self, except: SessionId, now: Instant) -> bool {
        match self.waiting_after(except, |_| true) {
            Some(sid) => {
                self.set_aside(sid, now);
                true
            }
            None => false,
        }
    }

    fn set_aside(&mut self, sid: SessionId, now: Instant) {
        let Some(slot) = self.sessions.get_mut(&sid) else { return };
        slot.suspended = true;
        let (message, purpose, present) = (slot.message.clone(), slot.purpose.clone(), slot.session.present());
        self.queue.push(message.clone(), &purpose, now);
        if present > 1 {
            self.queue.promote(&message);
        }
        self.metrics.signing_sessions.with_label_values(&[self.kind.as_str(), "set_aside"]).inc();
        info!(target: "signing", key = %self.kind, session = ?sid, ?purpose, committed = present, "session waiting for peers set aside for one they sign");
    }

    /// Takes a set-aside session up again: its held messages are delivered.
    fn resume(&mut self, sid: SessionId, now_ms: u64) -> eyre::Result<Vec<Effect>> {
        let Some(slot) = self.sessions.get_mut(&sid) else { return Ok(vec![]) };
        slot.suspended = false;
        slot.active_since = Instant::now();
        let held = std::mem::take(&mut slot.held);
        debug!(target: "signing", key = %self.kind, session = ?sid, held = held.len(), "set-aside session resumed");
        let mut out = Vec::new();
        for (from, m) in held {
            out.extend(self.deliver(sid, from, m, now_ms)?);
        }
        Ok(out)
    }

    /// The group's public key package.
    pub fn public_key_package(&self) -> &frost_core::keys::PublicKeyPackage<C> {
        &self.config.public_key_package
    }

    fn index(&self, id: &Identifier<C>) -> Option<usize> {
        crate::validators::index_of(id, self.n)
    }

    fn encode(&self, m: &Message<C>) -> Option<Vec<u8>> {
        match m.encode() {
            Ok(b) => {
                let mut p = vec![self.tag];
                p.extend(b);
                Some(p)
            }
            Err(e) => {
                warn!(target: "signing", key = %self.kind, error = %e, "cannot encode a session message");
                None
            }
        }
    }

    /// Whether `message` is being signed or was signed here.
    pub fn knows(&self, message: &[u8]) -> bool {
        self.wanted.contains_key(message)
            || self.finished.contains_key(&SessionId::derive(message, self.epoch, &self.signers))
    }

    /// Stops taking part in signing `message`, if it runs (what it would sign is no
    /// longer wanted: its release was superseded). Its nonces die with it.
    pub fn abandon(&mut self, message: &[u8]) {
        let Some(w) = self.wanted.remove(message) else { return };
        // Queued, or set aside (then back in the queue).
        self.queue.remove(message);
        if w.sids.is_empty() {
            self.queued_sids.remove(&self.sid_of(message, w.round));
        }
        for sid in &w.sids {
            self.by_sid.remove(sid);
            if let Some(slot) = self.sessions.remove(sid) {
                self.spent.insert(*sid);
                self.metrics.signing_sessions.with_label_values(&[self.kind.as_str(), "abandoned"]).inc();
                info!(target: "signing", key = %self.kind, session = ?sid, purpose = ?slot.purpose, "signing session abandoned");
            }
        }
    }

    fn sid_of(&self, message: &[u8], round: u32) -> SessionId {
        SessionId::derive_round(message, self.epoch, &self.signers, round)
    }

    /// Byzantine signers tolerated: n − t.
    fn faulty(&self) -> usize {
        self.n.saturating_sub(usize::from(*self.config.key_package.min_signers()))
    }
}
