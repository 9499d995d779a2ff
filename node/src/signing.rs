//! The signer driver: robust FROST sessions ([`btcfi_signer::session`]) over the p2p
//! network, one [`Suite`] per group key.
//!
//! A session starts only from this node's own decision ([`Suite::start`]: a digest it
//! certified, a sighash of a release it validated, the test message of a fresh key).
//! Peer messages for a session this node has not started yet are parked (bounded, for
//! two minutes) and replayed when it starts. Every `CommitmentIssued` record is written
//! to the store (synced) before the commitment leaves; at start the records are loaded
//! back, so no attempt from before a restart is ever answered. A finished session
//! answers late peers with its signature so they finish too.
//!
//! Wire: a `MessageKind::Signing` request whose payload is `tag u8 | body`: tag
//! [`TAG_EVM`] or [`TAG_BTC`] with a session [`Message`]'s encoding; tag
//! [`crate::release::TAG_RELEASE`] carries a release proposal.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use crate::{dkg::identifier, keys::KeyKind, metrics::Metrics};
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
/// Parked messages of a session not started here are dropped after this long.
const PARK_FOR: Duration = Duration::from_secs(120);
/// At most this many sessions parked, and messages per parked session.
const MAX_PARKED_SESSIONS: usize = 1024;
const MAX_PARKED_PER_SESSION: usize = 64;
/// At most this many parked messages of one session from one sender (one peer cannot
/// crowd out the others).
const MAX_PARKED_PER_SENDER: usize = 8;

/// Why a session runs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Purpose {
    /// The test signature of a fresh key.
    KeyCheck,
    /// The `mint` of a certified peg-in or EVM-to-EVM attestation.
    Mint { event: EventId },
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
}

/// What the run loop must do.
#[derive(Debug)]
pub enum Effect {
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

/// Messages for a session not started here yet: since when, and from whom.
type Parked<C> = (Instant, Vec<(usize, Message<C>)>);

struct Slot<C: Ciphersuite> {
    session: Session<C>,
    purpose: Purpose,
    message: Vec<u8>,
    started: Instant,
    attempt: Attempt,
    candidates: BTreeSet<Identifier<C>>,
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
    parked: BTreeMap<SessionId, Parked<C>>,
    issued: BTreeSet<CommitmentIssued>,
    fault: Option<SigningFault>,
    metrics: Metrics,
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
            parked: BTreeMap::new(),
            issued,
            fault,
            metrics,
        })
    }

    /// The group's public key package.
    pub fn public_key_package(&self) -> &frost_core::keys::PublicKeyPackage<C> {
        &self.config.public_key_package
    }

    fn index(&self, id: &Identifier<C>) -> Option<usize> {
        crate::dkg::index_of(id, self.n)
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

    /// Whether a session over `message` is running or done here.
    pub fn knows(&self, message: &[u8]) -> bool {
        let sid = SessionId::derive(message, self.epoch, &self.signers);
        self.sessions.contains_key(&sid) || self.finished.contains_key(&sid)
    }

    /// Stops taking part in the session over `message`, if it runs (what it would sign
    /// is no longer wanted: its release was superseded). Its nonces die with it.
    pub fn abandon(&mut self, message: &[u8]) {
        let sid = SessionId::derive(message, self.epoch, &self.signers);
        if let Some(slot) = self.sessions.remove(&sid) {
            self.metrics.signing_sessions.with_label_values(&[self.kind.as_str(), "abandoned"]).inc();
            info!(target: "signing", key = %self.kind, session = ?sid, purpose = ?slot.purpose, "signing session abandoned");
        }
    }

    /// Starts signing `message` (derived by this node itself) for `purpose`.
    pub fn start(
        &mut self,
        store: &Store,
        message: Vec<u8>,
        purpose: Purpose,
        now_ms: u64,
    ) -> eyre::Result<Vec<Effect>> {
        let sid = SessionId::derive(&message, self.epoch, &self.signers);
        if self.sessions.contains_key(&sid) || self.finished.contains_key(&sid) {
            return Ok(vec![]);
        }
        let mut session = Session::new(self.config.clone(), Box::new(rand::rngs::OsRng), self.issued.iter().copied());
        let actions = session.handle(
            Input::Start { message: message.clone(), epoch: self.epoch, signers: self.signers.clone() },
            now_ms,
        );
        self.metrics.signing_sessions.with_label_values(&[self.kind.as_str(), "started"]).inc();
        info!(target: "signing", key = %self.kind, session = ?sid, ?purpose, "signing session started");
        self.sessions.insert(
            sid,
            Slot {
                session,
                purpose,
                message,
                started: Instant::now(),
                attempt: Attempt(0),
                candidates: BTreeSet::new(),
            },
        );
        let mut out = self.process(store, sid, actions, now_ms)?;
        if let Some((_, parked)) = self.parked.remove(&sid) {
            for (from, m) in parked {
                out.extend(self.deliver(store, sid, from, m, now_ms)?);
            }
        }
        Ok(out)
    }

    /// A session message from validator `from`.
    pub fn on_message(&mut self, store: &Store, from: usize, body: &[u8], now_ms: u64) -> eyre::Result<Vec<Effect>> {
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
            return self.deliver(store, sid, from, m, now_ms);
        }
        if self.parked.len() >= MAX_PARKED_SESSIONS && !self.parked.contains_key(&sid) {
            self.metrics.signing_refused.with_label_values(&[self.kind.as_str(), "park_full"]).inc();
            return Ok(vec![]);
        }
        let entry = self.parked.entry(sid).or_insert_with(|| (Instant::now(), Vec::new()));
        let from_sender = entry.1.iter().filter(|(f, _)| *f == from).count();
        if entry.1.len() < MAX_PARKED_PER_SESSION && from_sender < MAX_PARKED_PER_SENDER {
            entry.1.push((from, m));
        }
        Ok(vec![])
    }

    fn deliver(
        &mut self,
        store: &Store,
        sid: SessionId,
        from: usize,
        m: Message<C>,
        now_ms: u64,
    ) -> eyre::Result<Vec<Effect>> {
        let Ok(from_id) = identifier::<C>(from) else { return Ok(vec![]) };
        let Some(slot) = self.sessions.get_mut(&sid) else { return Ok(vec![]) };
        let actions = slot.session.handle(Input::Message { from: from_id, message: m }, now_ms);
        self.process(store, sid, actions, now_ms)
    }

    /// Time passed: attempts time out, parked messages expire.
    pub fn tick(&mut self, store: &Store, now_ms: u64) -> eyre::Result<Vec<Effect>> {
        self.parked.retain(|_, (at, _)| at.elapsed() < PARK_FOR);
        let mut out = Vec::new();
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for sid in ids {
            if let Some(slot) = self.sessions.get_mut(&sid) {
                let actions = slot.session.handle(Input::Tick, now_ms);
                out.extend(self.process(store, sid, actions, now_ms)?);
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

    fn process(
        &mut self,
        store: &Store,
        sid: SessionId,
        actions: Vec<Action<C>>,
        _now_ms: u64,
    ) -> eyre::Result<Vec<Effect>> {
        let mut out = Vec::new();
        let kind = self.kind;
        for a in actions {
            match a {
                Action::Persist(rec) => {
                    let mut b = Batch::new();
                    b.put(Cf::SigningAttempts, issued_key(kind, &rec), []);
                    // Durable before the commitment leaves; a failed write stops the node.
                    store.commit(b)?;
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
                            None => {}
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
                    store.commit(b)?;
                }
                Action::Done(signature) => {
                    let Some(slot) = self.sessions.remove(&sid) else { continue };
                    let attempt = slot.attempt;
                    let bytes = signature.serialize().map_err(|e| eyre::eyre!("serializing a signature: {e}"))?;
                    self.finished.insert(sid, (attempt, signature));
                    self.metrics.signing_sessions.with_label_values(&[kind.as_str(), "signed"]).inc();
                    self.metrics.signing_attempts.with_label_values(&[kind.as_str(), "signed"]).inc();
                    self.metrics
                        .signing_latency
                        .with_label_values(&[kind.as_str()])
                        .observe(slot.started.elapsed().as_secs_f64());
                    info!(target: "signing", key = %kind, session = ?sid, purpose = ?slot.purpose, elapsed_ms = slot.started.elapsed().as_millis() as u64, "signed");
                    let signers = slot.candidates.iter().filter_map(|c| self.index(c)).collect();
                    out.push(Effect::Signed {
                        kind,
                        purpose: slot.purpose,
                        message: slot.message,
                        signature: bytes,
                        signers,
                        attempt: attempt.0,
                        elapsed: slot.started.elapsed(),
                    });
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
                        warn!(target: "signing", key = %kind, session = ?sid, error = %e, "signing session failed");
                        out.push(Effect::Failed { kind, purpose: slot.purpose, error: e.to_string() });
                    }
                }
            }
        }
        Ok(out)
    }
}
