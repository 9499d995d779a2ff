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
use btcfi_store::{Batch, Cf, Store};
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
}

/// Messages for sessions not started here yet, bounded in all, per session, and per
/// sender in sessions opened and in bytes (so that one peer cannot fill the slots that
/// honest peers' early messages need).
#[derive(Debug)]
pub struct Parking<M> {
    sessions: BTreeMap<SessionId, ParkedSession<M>>,
    /// Per sender: sessions it opened here, bytes of its messages parked.
    load: BTreeMap<usize, (usize, usize)>,
    max_sessions_per_sender: usize,
}

#[derive(Debug)]
struct ParkedSession<M> {
    since: Instant,
    opened_by: usize,
    messages: Vec<(usize, M, usize)>,
}

/// Why a message was not parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkRefusal {
    /// Every session slot is taken.
    Full,
    /// The sender opened its share of the session slots.
    SenderSessions,
    /// The sender's parked messages reached their byte budget.
    SenderBytes,
    /// The session holds all the messages it may (in all, or from this sender).
    SessionFull,
}

impl ParkRefusal {
    pub fn as_str(&self) -> &'static str {
        match self {
            ParkRefusal::Full => "park_full",
            ParkRefusal::SenderSessions => "park_sender_sessions",
            ParkRefusal::SenderBytes => "park_sender_bytes",
            ParkRefusal::SessionFull => "park_session_full",
        }
    }
}

impl<M> Parking<M> {
    /// Parking for `n` validators: each may open an equal share of the session slots.
    pub fn new(n: usize) -> Self {
        Self {
            sessions: BTreeMap::new(),
            load: BTreeMap::new(),
            max_sessions_per_sender: (MAX_PARKED_SESSIONS / n.max(1)).max(1),
        }
    }

    /// Parks `m` (`bytes` long on the wire) from `from` for session `sid`.
    pub fn park(&mut self, sid: SessionId, from: usize, m: M, bytes: usize, now: Instant) -> Result<(), ParkRefusal> {
        let (opened, held) = self.load.get(&from).copied().unwrap_or((0, 0));
        if held.saturating_add(bytes) > MAX_PARKED_BYTES_PER_SENDER {
            return Err(ParkRefusal::SenderBytes);
        }
        if !self.sessions.contains_key(&sid) {
            if self.sessions.len() >= MAX_PARKED_SESSIONS {
                return Err(ParkRefusal::Full);
            }
            if opened >= self.max_sessions_per_sender {
                return Err(ParkRefusal::SenderSessions);
            }
            self.sessions.insert(sid, ParkedSession { since: now, opened_by: from, messages: Vec::new() });
            self.load.entry(from).or_default().0 = opened.saturating_add(1);
        }
        let Some(entry) = self.sessions.get_mut(&sid) else { return Err(ParkRefusal::Full) };
        let from_sender = entry.messages.iter().filter(|(f, _, _)| *f == from).count();
        if entry.messages.len() >= MAX_PARKED_PER_SESSION || from_sender >= MAX_PARKED_PER_SENDER {
            return Err(ParkRefusal::SessionFull);
        }
        entry.messages.push((from, m, bytes));
        self.load.entry(from).or_default().1 = held.saturating_add(bytes);
        Ok(())
    }

    /// The messages parked for `sid`, in arrival order, released.
    pub fn take(&mut self, sid: &SessionId) -> Vec<(usize, M)> {
        match self.sessions.remove(sid) {
            Some(p) => self.release(p),
            None => Vec::new(),
        }
    }

    /// Drops sessions parked since before `now - PARK_FOR`.
    pub fn expire(&mut self, now: Instant) {
        let old: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.since) >= PARK_FOR)
            .map(|(sid, _)| *sid)
            .collect();
        for sid in old {
            self.take(&sid);
        }
    }

    fn release(&mut self, p: ParkedSession<M>) -> Vec<(usize, M)> {
        if let Some(l) = self.load.get_mut(&p.opened_by) {
            l.0 = l.0.saturating_sub(1);
        }
        p.messages
            .into_iter()
            .map(|(from, m, bytes)| {
                if let Some(l) = self.load.get_mut(&from) {
                    l.1 = l.1.saturating_sub(bytes);
                }
                (from, m)
            })
            .collect()
    }

    /// Sessions parked.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// How many peers sent something for `sid` (peers already sign it).
    pub fn senders(&self, sid: &SessionId) -> usize {
        self.sessions.get(sid).map_or(0, |p| p.messages.iter().map(|(f, _, _)| *f).collect::<BTreeSet<_>>().len())
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

/// Messages waiting for a free session slot (at most `signing.max_sessions_in_flight`
/// sessions per key run at once): key checks first, then release inputs, then mints,
/// oldest first within each. A queued message has no session yet, so nothing of it
/// can time out; peers' early messages for it are parked until it starts.
#[derive(Debug, Default)]
pub struct StartQueue {
    /// By (priority, 0 if peers already sign it else 1, arrival).
    order: BTreeMap<(u8, u8, u64), Vec<u8>>,
    keys: BTreeMap<Vec<u8>, (u8, u8, u64)>,
    seq: u64,
    /// Since when the queue has not been empty.
    since: Option<Instant>,
}

fn priority(p: &Purpose) -> u8 {
    match p {
        Purpose::KeyCheck => 0,
        Purpose::ReleaseInput { .. } => 1,
        Purpose::Mint { .. } | Purpose::MintBatch { .. } => 2,
    }
}

impl StartQueue {
    pub fn push(&mut self, message: Vec<u8>, purpose: &Purpose, now: Instant) {
        if self.keys.contains_key(&message) {
            return;
        }
        self.seq = self.seq.wrapping_add(1);
        let key = (priority(purpose), 1, self.seq);
        self.order.insert(key, message.clone());
        self.keys.insert(message, key);
        self.since.get_or_insert(now);
    }

    /// Peers already sign `message`: it goes before the others of its priority (so
    /// that validators whose queues drain at different speeds do not start one session
    /// minutes apart, their attempts drifting out of each other's reach).
    pub fn promote(&mut self, message: &[u8]) {
        let Some(key) = self.keys.get_mut(message) else { return };
        if key.1 == 0 {
            return;
        }
        if let Some(m) = self.order.remove(key) {
            key.1 = 0;
            self.order.insert(*key, m);
        }
    }

    /// The next message to start, and whether peers already sign it.
    pub fn peek(&self) -> Option<(&[u8], bool)> {
        self.order.first_key_value().map(|(k, m)| (m.as_slice(), k.1 == 0))
    }

    /// The next message to start.
    pub fn pop(&mut self) -> Option<Vec<u8>> {
        let first = self.order.pop_first().map(|(_, m)| m);
        if let Some(m) = &first {
            self.keys.remove(m);
        }
        if self.order.is_empty() {
            self.since = None;
        }
        first
    }

    /// Drops `message` (no longer wanted).
    pub fn remove(&mut self, message: &[u8]) {
        if let Some(key) = self.keys.remove(message) {
            self.order.remove(&key);
        }
        if self.order.is_empty() {
            self.since = None;
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Where `message` stands in the queue (0 = next), if it is queued.
    pub fn position(&self, message: &[u8]) -> Option<usize> {
        let key = self.keys.get(message)?;
        Some(self.order.range(..*key).count())
    }

    /// How long the queue has not been empty.
    pub fn backlog_for(&self, now: Instant) -> Duration {
        self.since.map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }
}

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

fn issued_key(kind: KeyKind, r: &CommitmentIssued) -> Vec<u8> {
    let mut k = vec![kind.byte()];
    k.extend_from_slice(&r.session.0);
    k.extend_from_slice(&r.attempt.0.to_be_bytes());
    k
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
        let mut issued = BTreeSet::new();
        for (k, _) in store.scan_prefix(Cf::SigningAttempts, &[kind.byte()])? {
            // `kind | session (32) | attempt (4, BE)`, as `issued_key` writes it.
            let session = k.get(1..33).and_then(|b| <[u8; 32]>::try_from(b).ok());
            let attempt = k.get(33..37).and_then(|b| <[u8; 4]>::try_from(b).ok());
            if let (37, Some(s), Some(a)) = (k.len(), session, attempt) {
                issued.insert(CommitmentIssued { session: SessionId(s), attempt: Attempt(u32::from_be_bytes(a)) });
            }
        }
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

    fn round_key(&self, message: &[u8]) -> Vec<u8> {
        let mut k = b"round/".to_vec();
        k.push(self.kind.byte());
        k.extend_from_slice(message);
        k
    }

    fn sid_of(&self, message: &[u8], round: u32) -> SessionId {
        SessionId::derive_round(message, self.epoch, &self.signers, round)
    }

    /// Byzantine signers tolerated: n − t.
    fn faulty(&self) -> usize {
        self.n.saturating_sub(usize::from(*self.config.key_package.min_signers()))
    }

    /// Starts signing `message` (derived by this node itself) for `purpose`, in the last
    /// round this node reached for it (stored: a restart never goes back to a round it
    /// left).
    pub fn start(
        &mut self,
        store: &Store,
        message: Vec<u8>,
        purpose: Purpose,
        now_ms: u64,
    ) -> eyre::Result<Vec<Effect>> {
        if self.knows(&message) {
            return Ok(vec![]);
        }
        if self.fault == Some(SigningFault::SilentOnMints)
            && matches!(purpose, Purpose::Mint { .. } | Purpose::MintBatch { .. })
        {
            warn!(target: "signing", ?purpose, "TEST FAULT: taking no part in signing a mint");
            return Ok(vec![]);
        }
        let mut round = match store.get(Cf::SigningAttempts, self.round_key(&message))? {
            Some(b) => <[u8; 4]>::try_from(b.as_slice()).map(u32::from_be_bytes).unwrap_or(0),
            None => 0,
        };
        // A message abandoned here (a batch given up, then proposed again with the same
        // mints) never restarts a session it ran: its commitments are spent, and peers
        // that gave it up too would wait in its first attempt for commitments nobody
        // can give any more. It starts in the next round (peers that did the same meet
        // it there; the others follow by round hints). After a restart the session
        // restarts as it was: its pre-restart attempts are refused, the next ones run.
        while self.spent.contains(&self.sid_of(&message, round)) {
            round = round.saturating_add(1);
        }
        let w = Wanted {
            purpose,
            round,
            sids: Vec::new(),
            failures: 0,
            retry_at: None,
            next_round: None,
            hints: BTreeMap::new(),
            hinted: BTreeMap::new(),
        };
        if !self.has_slot() {
            // Every slot is taken: it waits its turn (nothing of it runs, or times out).
            self.queue.push(message.clone(), &w.purpose, Instant::now());
            self.queued_sids.insert(self.sid_of(&message, round), message.clone());
            self.metrics.signing_sessions.with_label_values(&[self.kind.as_str(), "queued"]).inc();
            self.wanted.insert(message, w);
            debug!(target: "signing", key = %self.kind, queued = self.queue.len(), "every session slot taken: signing queued");
            return Ok(vec![]);
        }
        self.wanted.insert(message.clone(), w);
        self.start_round(&message, round, now_ms)
    }

    /// Starts round `round` of signing `message` (leaving the round before, if it still
    /// runs): the round is stored (synced) first, then a new session begins under that
    /// round's id, with the messages parked for it.
    fn start_round(&mut self, message: &[u8], round: u32, now_ms: u64) -> eyre::Result<Vec<Effect>> {
        let sids: Vec<SessionId> = (0..=round).map(|r| self.sid_of(message, r)).collect();
        let key = self.round_key(message);
        let Some(w) = self.wanted.get_mut(message) else { return Ok(vec![]) };
        let mut persisted = Vec::new();
        if round > 0 {
            let mut b = Batch::new();
            b.put(Cf::SigningAttempts, key, round.to_be_bytes());
            persisted.push(Effect::Persist(b));
        }
        let left: Vec<SessionId> = w.sids.clone();
        w.round = round;
        w.retry_at = None;
        w.next_round = None;
        w.sids = sids.clone();
        let purpose = w.purpose.clone();
        for sid in left {
            self.sessions.remove(&sid);
        }
        for sid in &sids {
            self.by_sid.insert(*sid, message.to_vec());
        }
        let Some(&sid) = sids.last() else { return Ok(vec![]) };
        let mut session = Session::new(self.config.clone(), Box::new(rand::rngs::OsRng), self.issued.iter().copied());
        let actions = session.handle(
            Input::Start { message: message.to_vec(), epoch: self.epoch, signers: self.signers.clone(), round },
            now_ms,
        );
        self.metrics.signing_sessions.with_label_values(&[self.kind.as_str(), "started"]).inc();
        info!(target: "signing", key = %self.kind, session = ?sid, ?purpose, round, "signing session started");
        let before_restart: Vec<u32> = self.issued.iter().filter(|c| c.session == sid).map(|c| c.attempt.0).collect();
        if !before_restart.is_empty() {
            info!(target: "signing", key = %self.kind, session = ?sid, attempts = ?before_restart, "this session committed to these attempts before the last restart: they are never answered");
        }
        self.sessions.insert(
            sid,
            Slot {
                session,
                purpose,
                message: message.to_vec(),
                started: Instant::now(),
                attempt: Attempt(0),
                candidates: BTreeSet::new(),
                suspended: false,
                held: Vec::new(),
                active_since: Instant::now(),
            },
        );
        let mut out = persisted;
        out.extend(self.process(sid, actions, now_ms)?);
        for (from, m) in self.parked.take(&sid) {
            out.extend(self.deliver(sid, from, m, now_ms)?);
        }
        Ok(out)
    }

    /// A session message from validator `from`.
    pub fn on_message(&mut self, from: usize, body: &[u8], now_ms: u64) -> eyre::Result<Vec<Effect>> {
        let m = match Message::<C>::decode(body) {
            Ok(m) => m,
            Err(e) => {
                warn!(target: "signing", key = %self.kind, from, error = %e, "undecodable session message dropped");
                self.metrics.signing_refused.with_label_values(&[self.kind.as_str(), "undecodable"]).inc();
                return Ok(vec![]);
            }
        };
        let sid = session_of(&m);
        if let Some((attempt, signature)) = self.finished.get(&sid) {
            // Help a late peer finish: it gets the verified signature.
            if !matches!(m, Message::Signature { .. }) {
                let reply = Message::Signature { session: sid, attempt: *attempt, signature: *signature };
                return Ok(self.encode(&reply).map(|payload| Effect::Send { to: from, payload }).into_iter().collect());
            }
            return Ok(vec![]);
        }
        if self.sessions.contains_key(&sid) {
            return self.deliver(sid, from, m, now_ms);
        }
        if let Some(message) = self.by_sid.get(&sid).cloned() {
            // An earlier round of a message this node signs (or the current one, failed
            // here): the peer is behind, or back from away. Tell it where this node is.
            return self.behind(from, &message, sid, m, now_ms);
        }
        if let Err(why) = self.parked.park(sid, from, m, body.len(), Instant::now()) {
            self.metrics.signing_refused.with_label_values(&[self.kind.as_str(), why.as_str()]).inc();
        }
        // Queued here, but a peer signs it already: it starts next.
        if let Some(message) = self.queued_sids.get(&sid).cloned() {
            self.queue.promote(&message);
        }
        Ok(vec![])
    }

    /// `from` sent `m`, of round `sid` of `message`, which is not running here: a round
    /// before this node's, or its own round that failed here.
    ///
    /// - A signature (of any round) finishes the signing here, once it verifies.
    /// - If this node's round failed and waits for its retry, the peer's message means a
    ///   signer is back: the next round starts at once (the failed one's attempts are
    ///   spent), rather than after the backoff.
    /// - A peer in an earlier round than this node's gets a hint of it; it joins once
    ///   `f + 1` peers say the same ([`Suite::on_round_hint`]).
    fn behind(
        &mut self,
        from: usize,
        message: &[u8],
        sid: SessionId,
        m: Message<C>,
        now_ms: u64,
    ) -> eyre::Result<Vec<Effect>> {
        if let Message::Signature { signature, attempt, .. } = &m {
            return self.adopt(message, *signature, *attempt);
        }
        let now = Instant::now();
        let Some(w) = self.wanted.get(message) else { return Ok(vec![]) };
        let (mut round, failed) = (w.round, w.retry_at.is_some());
        let peer_round = w.sids.iter().position(|s| *s == sid).unwrap_or(0) as u32;
        let hint_due = w.hinted.get(&from).is_none_or(|at| now.saturating_duration_since(*at) >= HINT_EVERY);
        let mut out = Vec::new();
        if failed {
            round = round.saturating_add(1);
            if self.has_slot() {
                info!(target: "signing", key = %self.kind, from, round, "a signer is back: the next round starts now");
                out.extend(self.start_round(message, round, now_ms)?);
            } else if let Some(w) = self.wanted.get_mut(message) {
                // Due now: it starts as soon as a slot frees.
                w.retry_at = Some(now);
            }
        }
        if peer_round < round && hint_due {
            if let Some(w) = self.wanted.get_mut(message) {
                w.hinted.insert(from, now);
            }
            let mut payload = vec![TAG_ROUND, self.tag];
            payload.extend_from_slice(&sid.0);
            payload.extend_from_slice(&round.to_be_bytes());
            out.push(Effect::Send { to: from, payload });
        }
        Ok(out)
    }

    /// A peer's signature over `message`, from a round other than the one running here:
    /// if it verifies under the group key, the signing is done (as if this node's own
    /// session had produced it).
    fn adopt(&mut self, message: &[u8], signature: Signature<C>, attempt: Attempt) -> eyre::Result<Vec<Effect>> {
        if self.config.public_key_package.verifying_key().verify(message, &signature).is_err() {
            self.metrics.signing_refused.with_label_values(&[self.kind.as_str(), "invalid"]).inc();
            return Ok(vec![]);
        }
        let Some(w) = self.wanted.get(message) else { return Ok(vec![]) };
        let current = w.sids.last().copied();
        let purpose = w.purpose.clone();
        let slot = current.and_then(|sid| self.sessions.remove(&sid));
        let (started, candidates) =
            slot.map(|s| (s.started, s.candidates)).unwrap_or((Instant::now(), BTreeSet::new()));
        let Some(sid) = current else { return Ok(vec![]) };
        info!(target: "signing", key = %self.kind, ?purpose, "signature from another round adopted");
        Ok(vec![self.finish(sid, message.to_vec(), purpose, signature, attempt, started, candidates)?])
    }

    /// The signing of `message` is done: every round's id answers late peers with the
    /// signature, and the node is told.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        sid: SessionId,
        message: Vec<u8>,
        purpose: Purpose,
        signature: Signature<C>,
        attempt: Attempt,
        started: Instant,
        candidates: BTreeSet<Identifier<C>>,
    ) -> eyre::Result<Effect> {
        let kind = self.kind;
        let bytes = signature.serialize().map_err(|e| eyre::eyre!("serializing a signature: {e}"))?;
        // It may have been set aside (then queued again) when a peer's signature came.
        self.queue.remove(&message);
        let rounds = self.wanted.remove(&message).map(|w| w.sids).unwrap_or_default();
        for r in rounds {
            self.by_sid.remove(&r);
            self.sessions.remove(&r);
            self.finished.insert(r, (attempt, signature));
        }
        self.finished.insert(sid, (attempt, signature));
        self.metrics.signing_sessions.with_label_values(&[kind.as_str(), "signed"]).inc();
        self.metrics.signing_attempts.with_label_values(&[kind.as_str(), "signed"]).inc();
        self.metrics.signing_latency.with_label_values(&[kind.as_str()]).observe(started.elapsed().as_secs_f64());
        info!(target: "signing", key = %kind, session = ?sid, ?purpose, elapsed_ms = started.elapsed().as_millis() as u64, "signed");
        let signers = candidates.iter().filter_map(|c| self.index(c)).collect();
        Ok(Effect::Signed {
            kind,
            purpose,
            message,
            signature: bytes,
            signers,
            attempt: attempt.0,
            elapsed: started.elapsed(),
        })
    }

    /// A round hint from `from` (`session id | round`): it is in `round` of the message
    /// whose earlier round `session id` is. Once `f + 1` peers are past this node's round,
    /// it joins the highest round that many of them reached.
    pub fn on_round_hint(&mut self, from: usize, body: &[u8], now_ms: u64) -> eyre::Result<Vec<Effect>> {
        let (Some(sid), Some(round)) = (
            body.get(..32).and_then(|b| <[u8; 32]>::try_from(b).ok()),
            body.get(32..36).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_be_bytes),
        ) else {
            self.metrics.signing_refused.with_label_values(&[self.kind.as_str(), "undecodable"]).inc();
            return Ok(vec![]);
        };
        if body.len() != 36 || from >= self.n || from == self.me {
            return Ok(vec![]);
        }
        let f = self.faulty();
        let Some(message) = self.by_sid.get(&SessionId(sid)).cloned() else { return Ok(vec![]) };
        let Some(w) = self.wanted.get_mut(&message) else { return Ok(vec![]) };
        let h = w.hints.entry(from).or_default();
        *h = (*h).max(round);
        match agreed_round(&w.hints, f) {
            Some(target) if target > w.round => {
                let here = w.round;
                if self.holds_slot(&message) || self.has_slot() {
                    info!(target: "signing", key = %self.kind, from = here, to = target, "peers are in a later round of this signing: joining it");
                    return self.start_round(&message, target, now_ms);
                }
                // Every slot is taken: it joins them as soon as one frees.
                if let Some(w) = self.wanted.get_mut(&message) {
                    w.next_round = Some(target);
                    w.retry_at = Some(Instant::now());
                }
                Ok(vec![])
            }
            _ => Ok(vec![]),
        }
    }
    fn deliver(&mut self, sid: SessionId, from: usize, m: Message<C>, now_ms: u64) -> eyre::Result<Vec<Effect>> {
        let Ok(from_id) = identifier::<C>(from) else { return Ok(vec![]) };
        let Some(slot) = self.sessions.get_mut(&sid) else { return Ok(vec![]) };
        if slot.suspended && !matches!(m, Message::Signature { .. }) {
            // Held until it takes a slot again; peers sign it, so it goes first.
            if slot.held.len() < MAX_PARKED_PER_SESSION
                && slot.held.iter().filter(|(f, _)| *f == from).count() < MAX_PARKED_PER_SENDER
            {
                slot.held.push((from, m));
            } else {
                self.metrics.signing_refused.with_label_values(&[self.kind.as_str(), "held_full"]).inc();
            }
            let message = slot.message.clone();
            self.queue.promote(&message);
            // Its peers would go on without it now (t committed, or its coordinator's
            // package came): it runs again at once, in exchange for one that waits.
            let t = usize::from(*self.config.key_package.min_signers());
            let attempt = slot.session.attempt();
            let committed: BTreeSet<usize> = slot
                .held
                .iter()
                .filter(|(_, m)| matches!(m, Message::Commitment { attempt: a, .. } if Some(*a) == attempt))
                .map(|(f, _)| *f)
                .collect();
            let packaged = slot
                .held
                .iter()
                .any(|(_, m)| matches!(m, Message::SigningPackage { attempt: a, .. } if Some(*a) == attempt));
            if (packaged || slot.session.present() + committed.len() >= t)
                && (self.has_slot() || self.set_aside_one(sid, Instant::now()))
            {
                self.queue.remove(&message);
                return self.resume(sid, now_ms);
            }
            // Otherwise it goes first when a slot frees (the limit holds).
            return Ok(vec![]);
        }
        let actions = slot.session.handle(Input::Message { from: from_id, message: m }, now_ms);
        self.process(sid, actions, now_ms)
    }

    /// Time passed: attempts time out, parked messages expire, failed sessions are
    /// retried as their next round.
    pub fn tick(&mut self, now_ms: u64) -> eyre::Result<Vec<Effect>> {
        let now = Instant::now();
        self.parked.expire(now);
        let mut out = Vec::new();
        let due: Vec<(Vec<u8>, u32)> = self
            .wanted
            .iter()
            .filter(|(_, w)| w.retry_at.is_some_and(|at| at <= now))
            .map(|(m, w)| (m.clone(), w.next_round.unwrap_or(w.round.saturating_add(1))))
            .collect();
        // Retries first (they are older), then the queue, as slots allow; a retry that
        // finds no slot stays due.
        for (message, round) in due {
            if !self.has_slot() {
                break;
            }
            info!(target: "signing", key = %self.kind, round, "retrying a failed signing session as a new round");
            out.extend(self.start_round(&message, round, now_ms)?);
        }
        self.yield_slot(now);
        while self.has_slot() {
            let Some(message) = self.queue.pop() else { break };
            let Some((round, last)) = self.wanted.get(&message).map(|w| (w.round, w.sids.last().copied())) else {
                continue;
            };
            if let Some(sid) = last {
                // Set aside before, or already running in another round.
                if self.sessions.get(&sid).is_some_and(|s| s.suspended) {
                    out.extend(self.resume(sid, now_ms)?);
                }
                continue;
            }
            self.queued_sids.remove(&self.sid_of(&message, round));
            out.extend(self.start_round(&message, round, now_ms)?);
        }
        let kind = self.kind.as_str();
        self.metrics.signing_queue.with_label_values(&[kind]).set(self.queue.len() as i64);
        self.metrics.signing_in_flight.with_label_values(&[kind]).set(self.active() as i64);
        let ids: Vec<SessionId> = self.sessions.iter().filter(|(_, s)| !s.suspended).map(|(sid, _)| *sid).collect();
        for sid in ids {
            if let Some(slot) = self.sessions.get_mut(&sid) {
                let actions = slot.session.handle(Input::Tick, now_ms);
                out.extend(self.process(sid, actions, now_ms)?);
            }
        }
        Ok(out)
    }

    fn corrupt(&self, share: &SignatureShare<C>) -> SignatureShare<C> {
        let mut bytes = share.serialize();
        if let Some(last) = bytes.last_mut() {
            *last ^= 1;
        }
        SignatureShare::deserialize(&bytes).unwrap_or(*share)
    }

    fn process(&mut self, sid: SessionId, actions: Vec<Action<C>>, _now_ms: u64) -> eyre::Result<Vec<Effect>> {
        let mut out = Vec::new();
        let kind = self.kind;
        for a in actions {
            match a {
                Action::Persist(rec) => {
                    let mut b = Batch::new();
                    b.put(Cf::SigningAttempts, issued_key(kind, &rec), []);
                    // Durable before the commitment leaves (the effects are carried out
                    // in order); a failed write stops the node.
                    out.push(Effect::Persist(b));
                    self.issued.insert(rec);
                    self.metrics.signing_commitments.with_label_values(&[kind.as_str()]).inc();
                    debug!(target: "signing", key = %kind, session = ?sid, attempt = rec.attempt.0, "commitment issued (persisted)");
                }
                Action::Send { to, mut message } => {
                    if let Message::Share { share, .. } = &mut message {
                        match self.fault {
                            Some(SigningFault::InvalidShares) => {
                                warn!(target: "signing", "TEST FAULT: sending an invalid signature share");
                                *share = self.corrupt(share);
                            }
                            Some(SigningFault::WithholdShares) => {
                                warn!(target: "signing", session = ?sid, "TEST FAULT: withholding a signature share");
                                continue;
                            }
                            Some(SigningFault::SilentOnMints) | None => {}
                        }
                    }
                    if let (Some(i), Some(payload)) = (self.index(&to), self.encode(&message)) {
                        out.push(Effect::Send { to: i, payload });
                    }
                }
                Action::Broadcast(m) => {
                    if let Some(payload) = self.encode(&m) {
                        for i in (0..self.n).filter(|i| *i != self.me) {
                            out.push(Effect::Send { to: i, payload: payload.clone() });
                        }
                    }
                }
                Action::NewAttempt { attempt, coordinator, candidates } => {
                    if attempt.0 > 0 {
                        self.metrics.signing_attempts.with_label_values(&[kind.as_str(), "retried"]).inc();
                    }
                    let coord = self.index(&coordinator);
                    if let Some(slot) = self.sessions.get_mut(&sid) {
                        slot.candidates = candidates;
                        slot.attempt = attempt;
                        info!(target: "signing", key = %kind, session = ?sid, attempt = attempt.0, coordinator = ?coord, candidates = slot.candidates.len(), "attempt begins");
                    }
                }
                Action::Culprit(ev) => {
                    let culprit = self.index(&ev.culprit);
                    self.metrics.signing_culprits.with_label_values(&[kind.as_str()]).inc();
                    warn!(target: "signing::evidence", key = %kind, session = ?sid, attempt = ev.attempt.0, culprit = ?culprit, "invalid signature share: signer excluded, evidence recorded");
                    let mut key = format!("sign/{kind}/").into_bytes();
                    key.extend_from_slice(&sid.0);
                    key.extend_from_slice(&ev.attempt.0.to_be_bytes());
                    key.extend_from_slice(&(culprit.unwrap_or(usize::MAX) as u64).to_be_bytes());
                    let record = serde_json::json!({
                        "kind": "invalid_signature_share",
                        "key": kind.as_str(),
                        "session": hex::encode(sid.0),
                        "attempt": ev.attempt.0,
                        "culprit": culprit,
                        "share": hex::encode(ev.share.serialize()),
                        "signing_package": ev.package.serialize().ok().map(hex::encode),
                    });
                    let mut b = Batch::new();
                    b.put_json(Cf::Evidence, key, &record)?;
                    out.push(Effect::Persist(b));
                }
                Action::Done(signature) => {
                    let Some(slot) = self.sessions.remove(&sid) else { continue };
                    out.push(self.finish(
                        sid,
                        slot.message,
                        slot.purpose,
                        signature,
                        slot.attempt,
                        slot.started,
                        slot.candidates,
                    )?);
                }
                Action::Refused { from, error } => {
                    let reason = refusal_reason(&error);
                    self.metrics.signing_refused.with_label_values(&[kind.as_str(), reason]).inc();
                    if reason == "pre_restart_attempt" {
                        warn!(target: "signing", key = %kind, session = ?sid, from = ?self.index(&from), %error, "refused to answer an attempt committed before a restart");
                    } else {
                        debug!(target: "signing", key = %kind, session = ?sid, from = ?self.index(&from), %error, "session input refused");
                    }
                }
                Action::Failed(e) => {
                    if let Some(slot) = self.sessions.remove(&sid) {
                        self.metrics.signing_sessions.with_label_values(&[kind.as_str(), "failed"]).inc();
                        self.metrics.signing_attempts.with_label_values(&[kind.as_str(), "failed"]).inc();
                        let timeout_ms = self.config.timeout_ms;
                        let retry = self.wanted.get_mut(&slot.message).map(|w| {
                            w.failures = w.failures.saturating_add(1);
                            let delay = retry_delay(timeout_ms, w.failures);
                            w.retry_at = Some(Instant::now() + delay);
                            (w.round, delay)
                        });
                        let (round, delay) = retry.unwrap_or_default();
                        warn!(target: "signing", key = %kind, session = ?sid, round, retry_in_ms = delay.as_millis() as u64, error = %e, "signing session failed: it is retried as a new round");
                        out.push(Effect::Failed { kind, purpose: slot.purpose, error: e.to_string() });
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(i: u32) -> SessionId {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&i.to_be_bytes());
        SessionId(b)
    }

    /// Key checks before release inputs before mints, oldest first within each; an
    /// abandoned message leaves the queue; the backlog clock runs only while it is not
    /// empty.
    #[test]
    fn the_start_queue_serves_key_checks_then_releases_then_mints_oldest_first() {
        let now = Instant::now();
        let mut q = StartQueue::default();
        assert_eq!(q.backlog_for(now), Duration::ZERO);
        let mint =
            |i: u8| Purpose::Mint { event: EventId::new(btcfi_types::ChainId(1), btcfi_types::TxHash([i; 32]), 0) };
        let input = |i: u32| Purpose::ReleaseInput { txid: "t".into(), input: i };
        q.push(vec![1], &mint(1), now);
        q.push(vec![2], &input(0), now);
        q.push(vec![3], &mint(3), now);
        q.push(vec![4], &Purpose::KeyCheck, now);
        q.push(vec![5], &input(1), now);
        q.push(vec![6], &mint(6), now);
        assert_eq!(q.backlog_for(now + Duration::from_secs(5)), Duration::from_secs(5));
        q.remove(&[3]);
        // Peers sign mint 6 already: it goes before the other mints, not before releases.
        q.promote(&[6]);
        let order: Vec<Vec<u8>> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, vec![vec![4], vec![2], vec![5], vec![6], vec![1]]);
        assert!(q.is_empty());
        assert_eq!(q.backlog_for(now + Duration::from_secs(9)), Duration::ZERO, "empty: no backlog");
    }

    /// One peer opening session after session (random ids) used to take every parked
    /// slot, so that honest peers' early messages were dropped (`park_full`). Each
    /// sender now opens at most its share of the slots, and parks at most 1 MiB.
    #[test]
    fn one_sender_cannot_take_the_parking_of_the_others() {
        let now = Instant::now();
        let mut p: Parking<()> = Parking::new(4);
        let mut parked = 0;
        for i in 0..MAX_PARKED_SESSIONS as u32 {
            if p.park(sid(i), 1, (), 100, now).is_ok() {
                parked += 1;
            }
        }
        assert_eq!(parked, MAX_PARKED_SESSIONS / 4, "a quarter of the slots for one of four");
        assert_eq!(p.park(sid(u32::MAX), 1, (), 100, now), Err(ParkRefusal::SenderSessions));
        // The others still park, in their own sessions and in the attacker's.
        assert_eq!(p.park(sid(u32::MAX), 2, (), 100, now), Ok(()));
        assert_eq!(p.park(sid(0), 3, (), 100, now), Ok(()));
        // Bytes: a sender's big messages stop at its budget.
        let mut q: Parking<()> = Parking::new(4);
        let big = MAX_PARKED_BYTES_PER_SENDER / 4 + 1;
        for i in 0..3 {
            assert_eq!(q.park(sid(i), 1, (), big, now), Ok(()));
        }
        assert_eq!(q.park(sid(9), 1, (), big, now), Err(ParkRefusal::SenderBytes));
        assert_eq!(q.park(sid(9), 2, (), big, now), Ok(()));
        // Released when the session starts: the budget is given back.
        let taken = q.take(&sid(0));
        assert_eq!(taken.len(), 1);
        assert_eq!(q.park(sid(10), 1, (), big, now), Ok(()));
        // And when parked sessions expire.
        q.expire(now + PARK_FOR);
        assert!(q.is_empty());
        assert_eq!(q.load.values().map(|l| l.0 + l.1).sum::<usize>(), 0, "nothing left accounted");
    }

    #[test]
    fn a_session_holds_a_bounded_number_of_messages_per_sender() {
        let now = Instant::now();
        let mut p: Parking<u32> = Parking::new(4);
        for k in 0..MAX_PARKED_PER_SENDER as u32 {
            assert_eq!(p.park(sid(1), 1, k, 10, now), Ok(()));
        }
        assert_eq!(p.park(sid(1), 1, 99, 10, now), Err(ParkRefusal::SessionFull));
        assert_eq!(p.park(sid(1), 2, 7, 10, now), Ok(()));
        let got: Vec<u32> = p.take(&sid(1)).into_iter().map(|(_, m)| m).collect();
        assert_eq!(got.len(), MAX_PARKED_PER_SENDER + 1);
        assert_eq!(got.last(), Some(&7), "in arrival order");
    }

    /// A node moves to a later round only when f + 1 peers say they reached it: one
    /// Byzantine peer's claim of round 1,000 alone moves nobody.
    #[test]
    fn the_agreed_round_needs_f_plus_one_peers() {
        let hints: BTreeMap<usize, u32> = [(1, 1_000)].into_iter().collect();
        assert_eq!(agreed_round(&hints, 1), None);
        let hints: BTreeMap<usize, u32> = [(1, 1_000), (2, 3)].into_iter().collect();
        assert_eq!(agreed_round(&hints, 1), Some(3));
        let hints: BTreeMap<usize, u32> = [(1, 4), (2, 3), (3, 5)].into_iter().collect();
        assert_eq!(agreed_round(&hints, 1), Some(4));
        assert_eq!(agreed_round(&hints, 0), Some(5));
    }

    #[test]
    fn retries_back_off_up_to_a_minute() {
        assert_eq!(retry_delay(3_000, 1), Duration::from_secs(6));
        assert_eq!(retry_delay(3_000, 2), Duration::from_secs(12));
        assert_eq!(retry_delay(3_000, 3), Duration::from_secs(24));
        assert_eq!(retry_delay(3_000, 30), MAX_RETRY_DELAY);
    }

    /// Four validators' suites in one process, each with its own RocksDB store, their
    /// effects delivered to each other as the run loop would.
    struct Four {
        suites: Vec<Suite<btcfi_signer::frost_secp256k1::Secp256K1Sha256>>,
        stores: Vec<Store>,
        _dirs: Vec<tempfile::TempDir>,
        signed: Vec<BTreeSet<Vec<u8>>>,
        /// Sessions that failed (waited their whole patience, or ran out of attempts).
        failed: usize,
        /// (from, to, payload) not delivered yet.
        wire: Vec<(usize, usize, Vec<u8>)>,
        start: Instant,
    }

    impl Four {
        fn new(max_in_flight: usize) -> Self {
            use btcfi_signer::frost_secp256k1::{self as frost, keys::IdentifierList};
            let (shares, public) =
                frost::keys::generate_with_dealer(4, 3, IdentifierList::Default, rand::rngs::OsRng).expect("keys");
            let (mut suites, mut stores, mut dirs) = (Vec::new(), Vec::new(), Vec::new());
            for me in 0..4 {
                let id = identifier::<frost::Secp256K1Sha256>(me).expect("id");
                let key_package = frost::keys::KeyPackage::try_from(shares[&id].clone()).expect("package");
                let config = SessionConfig {
                    key_package,
                    public_key_package: public.clone(),
                    timeout_ms: 100,
                    max_attempts: 16,
                };
                let dir = tempfile::tempdir().expect("dir");
                let store = Store::open(dir.path()).expect("store");
                let metrics = Metrics::new().expect("metrics");
                let suite =
                    Suite::new(KeyKind::Evm, 1, 4, me, config, &store, None, metrics, max_in_flight).expect("suite");
                suites.push(suite);
                stores.push(store);
                dirs.push(dir);
            }
            Four {
                suites,
                stores,
                _dirs: dirs,
                signed: vec![BTreeSet::new(); 4],
                failed: 0,
                wire: Vec::new(),
                start: Instant::now(),
            }
        }

        fn now_ms(&self) -> u64 {
            self.start.elapsed().as_millis() as u64
        }

        fn take(&mut self, from: usize, effects: Vec<Effect>) {
            for e in effects {
                match e {
                    Effect::Persist(b) => self.stores[from].commit(b).expect("commit"),
                    Effect::Send { to, payload } => self.wire.push((from, to, payload)),
                    Effect::Signed { message, .. } => {
                        self.signed[from].insert(message);
                    }
                    Effect::Failed { .. } => self.failed += 1,
                }
            }
        }

        fn start(&mut self, v: usize, message: &[u8]) {
            let now = self.now_ms();
            let purpose =
                Purpose::Mint { event: EventId::new(btcfi_types::ChainId(1), btcfi_types::TxHash([7; 32]), 0) };
            let effects = self.suites[v].start(&self.stores[v], message.to_vec(), purpose, now).expect("start");
            self.take(v, effects);
        }

        /// Delivers everything on the wire, and ticks everyone, until `done` or `for_ms`.
        fn run(&mut self, for_ms: u64, mut done: impl FnMut(&Four) -> bool) -> bool {
            let deadline = Instant::now() + Duration::from_millis(for_ms);
            while Instant::now() < deadline {
                if done(self) {
                    return true;
                }
                for (from, to, payload) in std::mem::take(&mut self.wire) {
                    let now = self.now_ms();
                    let (tag, body) = payload.split_first().expect("tagged");
                    let effects = if *tag == TAG_ROUND {
                        self.suites[to].on_round_hint(from, &body[1..], now)
                    } else {
                        self.suites[to].on_message(from, body, now)
                    };
                    self.take(to, effects.expect("delivered"));
                }
                for v in 0..4 {
                    let now = self.now_ms();
                    let effects = self.suites[v].tick(now).expect("tick");
                    self.take(v, effects);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            done(self)
        }
    }

    /// Every validator gives a session up before anyone answered (a batch of mints not
    /// signed in time), then starts the same message again (the same mints proposed
    /// again give the same root). Before, each restarted the very session it had
    /// committed in: its first attempt was spent on every validator, so that nobody
    /// could commit to it, and the session waited its whole patience for a quorum that
    /// could never form, then failed. Now the message starts in its next round, and is
    /// signed with no session failing.
    #[test]
    fn a_message_given_up_everywhere_and_started_again_is_signed_in_its_next_round() {
        let mut four = Four::new(64);
        let message = vec![0x42; 32];
        for v in 0..4 {
            four.start(v, &message);
            four.suites[v].abandon(&message);
        }
        four.wire.clear();
        for v in 0..4 {
            four.start(v, &message);
        }
        let all = |f: &Four| f.signed.iter().all(|s| s.contains(&message));
        assert!(four.run(20_000, all), "not signed: {:?}", four.signed);
        assert_eq!(four.failed, 0, "signed without waiting out a session's patience");
    }

    /// One slot each; two validators start A then B, the two others B then A, so that
    /// every validator runs the message only one peer runs too (two of the three
    /// needed). A session waiting for peers gives its slot up to the queued message
    /// peers sign, and both are signed, with never more than one session holding a
    /// slot on any validator, and no session failing. Without setting aside, each waited
    /// for peers whose only slot held the other message for its whole patience, and
    /// failed.
    #[test]
    fn sessions_waiting_for_each_other_give_way_and_both_are_signed() {
        let mut four = Four::new(1);
        let (a, b) = (vec![0xaa; 32], vec![0xbb; 32]);
        for v in 0..4 {
            let (first, second) = if v < 2 { (&a, &b) } else { (&b, &a) };
            four.start(v, first);
            four.start(v, second);
        }
        let mut peak = 0;
        let both = |f: &Four| f.signed.iter().all(|s| s.contains(&a) && s.contains(&b));
        let done = four.run(20_000, |f| {
            peak = peak.max(f.suites.iter().map(|s| s.load().in_flight).max().unwrap_or(0));
            both(f)
        });
        assert!(done, "not both signed: {:?}", four.signed);
        assert!(peak <= 1, "one slot each, {peak} held");
        assert_eq!(four.failed, 0, "signed without waiting out a session's patience");
    }
}
