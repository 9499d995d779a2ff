//! The state machine: [`Consensus::handle`] takes an [`Input`] and the time, and returns
//! the [`Action`]s the node must carry out.

use crate::persist::{CertifiedRecord, Change, NetworkCertificateRecord, OwnVoteRecord, PeerVoteRecord};
use crate::{
    Certificate, CertificateRequest, CertificateResponse, Config, Epoch, Equivocation, Error, MAX_BATCH_BYTES,
    MAX_BATCH_CERTIFICATES, MAX_BATCH_VOTES, MAX_REQUEST_EVENTS, MAX_RESPONSE_CERTIFICATES, Message, Millis,
    PersistedState, StateDelta, ValidatorIndex, ValidatorSignature, Vote, VoteBatch, VoteSigner, VoteVerifier,
    certificate_body_len,
};
use btcfi_types::{Attestation, Digest, EventId};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What the node feeds the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// This node's adapters saw `Attestation` final (and re-checked its inclusion).
    Observed(Attestation),
    /// Many observations at once (a block of deposits): one call, one persist, own
    /// votes broadcast in batches. The same as feeding each as [`Input::Observed`].
    ObservedMany(Vec<Attestation>),
    /// A vote gossiped by a peer (or relayed; the signature names the voter).
    Vote(Vote),
    /// Many votes of one validator, as gossiped together: each counted like an
    /// [`Input::Vote`] of its own, with one combined output.
    Votes(VoteBatch),
    /// A certificate, gossiped or received in answer to a catch-up request. Verified
    /// signature by signature before it is believed.
    Certificate(Certificate),
    /// Peer `from` asks for the certificates of some events. Always answered with exactly
    /// one [`Action::SendTo`] carrying a [`Message::CertificateResponse`] (possibly empty)
    /// unless dropped (unknown peer, other epoch): the node returns it on the request's
    /// response channel.
    CertificateRequest { from: ValidatorIndex, request: CertificateRequest },
    /// A peer's answer to this node's catch-up request: each certificate is handled as
    /// [`Input::Certificate`], with one combined output.
    CertificateResponse(CertificateResponse),
    /// Time passed. The node ticks about once a second; the core decides what is due.
    Tick,
}

impl Input {
    /// The input for a decoded message received from validator `from`.
    pub fn from_message(from: ValidatorIndex, message: Message) -> Self {
        match message {
            Message::Vote(v) => Input::Vote(v),
            Message::Votes(b) => Input::Votes(b),
            Message::Certificate(c) => Input::Certificate(c),
            Message::Certificates(certificates) => Input::CertificateResponse(CertificateResponse { certificates }),
            Message::CertificateRequest(request) => Input::CertificateRequest { from, request },
            Message::CertificateResponse(response) => Input::CertificateResponse(response),
        }
    }
}

/// What the core asks the node to do.
///
/// **Ordering contract:** when an input changed durable state, the returned list holds
/// exactly one [`Action::Persist`], and it is the first element. The node writes it in
/// one atomic batch and executes the remaining actions, in order, only after the write
/// succeeded; if the write fails the node must stop rather than send anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these changes atomically before executing any later action.
    Persist(StateDelta),
    /// Gossip to every validator of the epoch.
    Broadcast(Message),
    /// Send to one validator (the answer to its [`Input::CertificateRequest`]).
    SendTo { to: ValidatorIndex, message: Message },
    /// Ask one or more peers (the node's choice) for these certificates; answers come
    /// back as [`Input::Certificate`].
    RequestCertificates(CertificateRequest),
    /// The attestation is certified here: q+ validators signed its digest and this node
    /// observed the same. Hand it to the signer. The durable truth is the
    /// [`Change::Certified`] record written just before; after a crash the node reads
    /// [`Consensus::certified`] rather than waiting for this action again.
    Certified { attestation: Attestation, certificate: Certificate },
    /// A validator signed two digests for one event; both signed votes are the evidence.
    Equivocation(Equivocation),
    /// Ask the adapters to re-check this event (peers vouched for it, this node has not
    /// seen it). If they find it final, feed it back as [`Input::Observed`].
    Reobserve { event: EventId, reason: ReobserveReason },
    /// Something an operator must look at.
    Alert(Alert),
}

/// Why a re-observation was requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReobserveReason {
    /// `vouchers` validators (at least `reobserve_min_vouchers`) signed `digest` and the
    /// votes are older than `reobserve_after_ms`.
    PeersVouched { digest: Digest, vouchers: usize },
    /// A verified certificate for `digest` arrived: a quorum saw the event.
    NetworkCertified { digest: Digest },
}

/// Conditions for the operator. None of them makes this node sign anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alert {
    /// The adapters produced another digest for an event this validator already vouched
    /// for. Nothing was signed: a validator never vouches for two digests. Check this
    /// node's chain endpoints (a faulty or lying RPC, or a reorg deeper than finality).
    ConflictingObservation { event: EventId, vouched: Digest, observed: Digest },
    /// A verified certificate (q signatures) holds another digest than this node's own
    /// observation: this node's view of the chain differs from a quorum's.
    NetworkCertifiedOtherDigest { event: EventId, own: Digest, network: Digest },
    /// Two verified certificates with different digests for one event: more than f
    /// validators equivocated and the bridge's safety assumption is broken. Halt
    /// signing and investigate the evidence.
    ConflictingCertificates { event: EventId, held: Digest, received: Digest },
    /// A valid vote under this validator's own key contradicts one it holds: another
    /// process is running with this validator's key.
    OwnKeyEquivocated(Equivocation),
}

/// Counters for metrics (`btcfi_consensus_*_total`). Process-local: they restart at
/// zero with the node, as Prometheus counters do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    pub observations: u64,
    pub duplicate_observations: u64,
    pub conflicting_observations: u64,
    pub votes_accepted: u64,
    pub votes_duplicate: u64,
    pub votes_wrong_epoch: u64,
    pub votes_unknown_validator: u64,
    pub votes_bad_signature: u64,
    pub votes_over_peer_cap: u64,
    pub votes_from_equivocator: u64,
    pub equivocations: u64,
    pub certificates_verified: u64,
    pub certificates_duplicate: u64,
    pub certificates_invalid: u64,
    pub conflicting_certificates: u64,
    pub requests_answered: u64,
    pub requests_dropped: u64,
    pub certified: u64,
    pub events_expired: u64,
    pub reobservations_requested: u64,
    pub rebroadcasts: u64,
}

/// Sizes of the in-memory state, for gauges and for tests of the memory bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Events with any state.
    pub events: usize,
    /// Events with votes but neither an own observation nor a verified certificate:
    /// the ones bounded by expiry and the per-peer cap.
    pub pending_events: usize,
    /// Votes held, over all events.
    pub votes: usize,
    /// Equivocation evidence records held.
    pub evidence: usize,
    /// The largest number of pending events holding a vote of a single peer.
    pub max_pending_per_peer: usize,
}

/// Where one event stands at this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    Unknown,
    /// Peers voted; not observed here, no certificate.
    Pending {
        votes: usize,
    },
    /// A verified certificate arrived; this node has not observed the event yet.
    NetworkCertified {
        digest: Digest,
    },
    /// Observed and voted; `matching` validators (this one included, equivocators not)
    /// signed the same digest so far.
    Observed {
        digest: Digest,
        matching: usize,
    },
    Certified {
        digest: Digest,
    },
}

#[derive(Debug, Clone, Copy)]
struct Retry {
    next_at: Millis,
    attempt: u32,
}

impl Retry {
    fn first(now: Millis, config: &Config) -> Self {
        Self { next_at: now.saturating_add(config.rebroadcast_interval_ms), attempt: 0 }
    }
    /// Due at the first tick (after a restore: the vote may never have left the node).
    fn immediate() -> Self {
        Self { next_at: 0, attempt: 0 }
    }
    fn advance(&mut self, now: Millis, config: &Config) {
        self.attempt = self.attempt.saturating_add(1);
        let factor = 1u64 << self.attempt.min(20);
        let delay = config.rebroadcast_interval_ms.saturating_mul(factor).min(config.rebroadcast_max_interval_ms);
        self.next_at = now.saturating_add(delay);
    }
}

#[derive(Debug, Clone)]
enum Phase {
    /// No own observation.
    Unobserved,
    /// Own vote signed and persisted; waiting for a quorum on the same digest.
    Observed { own: OwnVoteRecord, retry: Retry },
    /// Final. The own vote is kept: it is what forbids a second digest.
    Certified { own: OwnVoteRecord, certificate: Certificate },
}

#[derive(Debug, Clone)]
struct EventState {
    first_seen: Millis,
    phase: Phase,
    /// The first valid vote of each validator (this one included).
    votes: BTreeMap<ValidatorIndex, Vote>,
    /// Validators caught signing two digests for this event; their votes count for
    /// nothing new.
    equivocators: BTreeSet<ValidatorIndex>,
    /// The first verified certificate received from peers, if any.
    network: Option<Certificate>,
    reobserve_requested: bool,
    /// Digests already alerted about for this event, so a repeated conflict alerts once.
    alerted: BTreeSet<Digest>,
}

impl EventState {
    fn new(now: Millis) -> Self {
        Self {
            first_seen: now,
            phase: Phase::Unobserved,
            votes: BTreeMap::new(),
            equivocators: BTreeSet::new(),
            network: None,
            reobserve_requested: false,
            alerted: BTreeSet::new(),
        }
    }

    fn own(&self) -> Option<&OwnVoteRecord> {
        match &self.phase {
            Phase::Unobserved => None,
            Phase::Observed { own, .. } | Phase::Certified { own, .. } => Some(own),
        }
    }

    /// Subject to expiry and the per-peer cap.
    fn is_pending(&self) -> bool {
        matches!(self.phase, Phase::Unobserved) && self.network.is_none()
    }

    fn certified(&self) -> Option<&Certificate> {
        match &self.phase {
            Phase::Certified { certificate, .. } => Some(certificate),
            _ => None,
        }
    }

    /// The digest of the certificate this node holds (own or network), if any.
    fn held_certificate(&self) -> Option<&Certificate> {
        self.certified().or(self.network.as_ref())
    }

    /// Votes for `digest` that still count.
    fn matching(&self, digest: &Digest) -> impl Iterator<Item = &Vote> + '_ {
        let digest = *digest;
        self.votes.values().filter(move |v| v.digest == digest && !self.equivocators.contains(&v.validator))
    }

    /// The digest with the most counting votes (ties: the smallest digest).
    fn best_digest(&self) -> Option<(Digest, usize)> {
        let mut tally: BTreeMap<Digest, usize> = BTreeMap::new();
        for (v, vote) in &self.votes {
            if !self.equivocators.contains(v) {
                *tally.entry(vote.digest).or_default() += 1;
            }
        }
        tally.into_iter().fold(None, |best, (d, c)| match best {
            Some((_, bc)) if bc >= c => best,
            _ => Some((d, c)),
        })
    }
}

/// Removes one pending event's voters from the per-peer counts.
fn release_pending<'a>(counts: &mut BTreeMap<ValidatorIndex, usize>, voters: impl Iterator<Item = &'a ValidatorIndex>) {
    for v in voters {
        if let Some(c) = counts.get_mut(v) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                counts.remove(v);
            }
        }
    }
}

#[derive(Default)]
struct Out {
    changes: Vec<Change>,
    actions: Vec<Action>,
}

impl Out {
    /// The persist first, then the other actions in order, with votes and certificates
    /// to broadcast packed into batches when there are several (one gossip message per
    /// [`MAX_BATCH_VOTES`] votes or [`MAX_BATCH_CERTIFICATES`] certificates, and
    /// [`MAX_BATCH_BYTES`]), placed where the first of them was.
    fn finish(self) -> Vec<Action> {
        let mut all = Vec::with_capacity(self.actions.len() + 1);
        if !self.changes.is_empty() {
            all.push(Action::Persist(StateDelta { changes: self.changes }));
        }
        let votes = self.actions.iter().filter(|a| matches!(a, Action::Broadcast(Message::Vote(_)))).count();
        let certs = self.actions.iter().filter(|a| matches!(a, Action::Broadcast(Message::Certificate(_)))).count();
        if votes < 2 && certs < 2 {
            all.extend(self.actions);
            return all;
        }
        let (mut vote_list, mut cert_list) = (Vec::new(), Vec::new());
        let (mut vote_at, mut cert_at) = (None, None);
        for a in self.actions {
            match a {
                Action::Broadcast(Message::Vote(v)) if votes >= 2 => {
                    vote_at.get_or_insert(all.len());
                    vote_list.push(v);
                }
                Action::Broadcast(Message::Certificate(c)) if certs >= 2 => {
                    cert_at.get_or_insert(all.len());
                    cert_list.push(c);
                }
                other => all.push(other),
            }
        }
        let mut inserts: Vec<(usize, Vec<Action>)> = Vec::new();
        if let Some(at) = vote_at {
            let batches = VoteBatch::pack(vote_list, MAX_BATCH_VOTES, MAX_BATCH_BYTES);
            inserts.push((at, batches.into_iter().map(|b| Action::Broadcast(Message::Votes(b))).collect()));
        }
        if let Some(at) = cert_at {
            let batches = pack_certificates(cert_list);
            inserts.push((at, batches.into_iter().map(|c| Action::Broadcast(Message::Certificates(c))).collect()));
        }
        // Later positions first, so earlier ones stay valid.
        inserts.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
        for (at, actions) in inserts {
            let at = at.min(all.len());
            all.splice(at..at, actions);
        }
        all
    }
}

/// Certificates in batches of at most [`MAX_BATCH_CERTIFICATES`] and about
/// [`MAX_BATCH_BYTES`] each, in order.
fn pack_certificates(certificates: Vec<Certificate>) -> Vec<Vec<Certificate>> {
    // Header: type, version, count.
    crate::wire::chunks_within(certificates, certificate_body_len, 4, MAX_BATCH_CERTIFICATES, MAX_BATCH_BYTES)
}

/// The consensus core of one validator for one epoch.
///
/// Generic over the signature scheme: `S` signs this node's votes, `V` checks anyone's.
/// An epoch change is a new `Consensus` with the new set's config.
pub struct Consensus<S, V> {
    config: Config,
    quorum: usize,
    signer: S,
    verifier: V,
    events: BTreeMap<EventId, EventState>,
    /// Per peer: pending events holding one of its votes.
    pending_by_peer: BTreeMap<ValidatorIndex, usize>,
    evidence: BTreeMap<(EventId, ValidatorIndex), Equivocation>,
    evidence_by_validator: BTreeMap<ValidatorIndex, usize>,
    stats: Stats,
}

impl<S, V> fmt::Debug for Consensus<S, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consensus")
            .field("config", &self.config)
            .field("memory", &self.memory())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<S: VoteSigner, V: VoteVerifier> Consensus<S, V> {
    /// A core with empty state. Use [`Consensus::restore`] when the node has a database.
    pub fn new(config: Config, signer: S, verifier: V) -> Result<Self, Error> {
        config.validate()?;
        Ok(Self {
            quorum: config.quorum(),
            config,
            signer,
            verifier,
            events: BTreeMap::new(),
            pending_by_peer: BTreeMap::new(),
            evidence: BTreeMap::new(),
            evidence_by_validator: BTreeMap::new(),
            stats: Stats::default(),
        })
    }

    /// Rebuilds a core from what it persisted. Every own vote is restored, so the core
    /// still refuses to vouch for a second digest; own votes not yet certified are
    /// rebroadcast at the first tick (the crash may have come before they were sent).
    ///
    /// Records are trusted (they are this node's own writes) but must agree with each
    /// other and with `config`; anything else is an error and the node must not start.
    pub fn restore(config: Config, signer: S, verifier: V, state: &PersistedState) -> Result<Self, Error> {
        let mut core = Self::new(config, signer, verifier)?;
        let epoch = core.config.epoch;
        let own_index = core.config.own_index;
        let n = core.config.validators;
        let check_epoch = |found: Epoch| {
            if found == epoch { Ok(()) } else { Err(Error::EpochMismatch { expected: epoch, found }) }
        };
        let corrupt = |event: &EventId, reason| Error::CorruptState { event: *event, reason };

        for (event, r) in &state.own_votes {
            check_epoch(r.vote.epoch)?;
            if r.vote.event != *event || r.attestation.event != *event {
                return Err(corrupt(event, "own vote stored under another event id"));
            }
            if r.vote.validator != own_index {
                return Err(corrupt(event, "own vote signed under another validator index than own_index"));
            }
            if r.vote.digest != r.attestation.digest() {
                return Err(corrupt(event, "own vote digest differs from the stored attestation"));
            }
            let s = core.events.entry(*event).or_insert_with(|| EventState::new(r.voted_at));
            s.first_seen = s.first_seen.min(r.voted_at);
            s.votes.insert(own_index, r.vote.clone());
            s.phase = Phase::Observed { own: r.clone(), retry: Retry::immediate() };
        }
        for ((event, validator), r) in &state.peer_votes {
            check_epoch(r.vote.epoch)?;
            if r.vote.event != *event || r.vote.validator != *validator {
                return Err(corrupt(event, "peer vote stored under another key"));
            }
            if validator.0 >= n {
                return Err(corrupt(event, "vote of a validator outside the configured set"));
            }
            let s = core.events.entry(*event).or_insert_with(|| EventState::new(r.received_at));
            s.first_seen = s.first_seen.min(r.received_at);
            match s.votes.get(validator) {
                Some(existing) if existing.digest != r.vote.digest => {
                    return Err(corrupt(event, "two stored votes of one validator disagree"));
                }
                Some(_) => {}
                None => {
                    s.votes.insert(*validator, r.vote.clone());
                }
            }
        }
        for ((event, validator), e) in &state.evidence {
            check_epoch(e.first.epoch)?;
            check_epoch(e.second.epoch)?;
            if e.event() != *event || e.validator() != *validator || e.second.validator != *validator {
                return Err(corrupt(event, "evidence stored under another key"));
            }
            if let Some(s) = core.events.get_mut(event) {
                s.equivocators.insert(*validator);
            }
            core.evidence.insert((*event, *validator), e.clone());
            *core.evidence_by_validator.entry(*validator).or_default() += 1;
        }
        for (event, r) in &state.network_certificates {
            check_epoch(r.certificate.epoch)?;
            if r.certificate.event != *event {
                return Err(corrupt(event, "certificate stored under another event id"));
            }
            let s = core.events.entry(*event).or_insert_with(|| EventState::new(r.received_at));
            s.first_seen = s.first_seen.min(r.received_at);
            s.network = Some(r.certificate.clone());
        }
        for (event, r) in &state.certified {
            check_epoch(r.certificate.epoch)?;
            let Some(s) = core.events.get_mut(event) else {
                return Err(corrupt(event, "certified attestation without an own vote"));
            };
            let phase = std::mem::replace(&mut s.phase, Phase::Unobserved);
            let Phase::Observed { own, .. } = phase else {
                return Err(corrupt(event, "certified attestation without an own vote"));
            };
            if r.certificate.event != *event
                || r.certificate.digest != own.vote.digest
                || r.attestation != own.attestation
            {
                return Err(corrupt(event, "certified digest differs from the own vote"));
            }
            s.phase = Phase::Certified { own, certificate: r.certificate.clone() };
        }
        for s in core.events.values() {
            if s.is_pending() {
                for v in s.votes.keys() {
                    *core.pending_by_peer.entry(*v).or_default() += 1;
                }
            }
        }
        Ok(core)
    }

    /// Feeds one input at time `now`; returns what the node must do, a
    /// [`Action::Persist`] first if anything durable changed (see [`Action`]).
    ///
    /// Never fails and never panics: invalid input is dropped and counted in
    /// [`Consensus::stats`]. An input that changes nothing (a duplicate, a replay)
    /// returns no action at all; a certificate request is still answered (read-only).
    pub fn handle(&mut self, input: Input, now: Millis) -> Vec<Action> {
        let mut out = Out::default();
        match input {
            Input::Observed(a) => self.on_observed(a, now, &mut out),
            Input::ObservedMany(all) => {
                for a in all {
                    self.on_observed(a, now, &mut out);
                }
            }
            Input::Vote(v) => self.on_vote(v, now, &mut out),
            Input::Votes(batch) => {
                for v in batch.votes().take(MAX_BATCH_VOTES) {
                    self.on_vote(v, now, &mut out);
                }
            }
            Input::Certificate(c) => self.on_certificate(c, now, &mut out),
            Input::CertificateRequest { from, request } => self.on_request(from, &request, &mut out),
            Input::CertificateResponse(response) => {
                for c in response.certificates.into_iter().take(MAX_RESPONSE_CERTIFICATES) {
                    self.on_certificate(c, now, &mut out);
                }
            }
            Input::Tick => self.on_tick(now, &mut out),
        }
        out.finish()
    }

    fn on_observed(&mut self, attestation: Attestation, now: Millis, out: &mut Out) {
        let event = attestation.event;
        let digest = attestation.digest();
        let own_index = self.config.own_index;
        let state = self.events.entry(event).or_insert_with(|| EventState::new(now));
        if let Some(own) = state.own() {
            if own.vote.digest == digest {
                self.stats.duplicate_observations += 1;
            } else {
                self.stats.conflicting_observations += 1;
                let alert = Alert::ConflictingObservation { event, vouched: own.vote.digest, observed: digest };
                if state.alerted.insert(digest) {
                    out.actions.push(Action::Alert(alert));
                }
            }
            return;
        }
        // A valid vote under this validator's own key that it holds no record of (another
        // process with the same key, or a lost database): never contradict it.
        let existing = state.votes.get(&own_index);
        if let Some(v) = existing.filter(|v| v.digest != digest || state.equivocators.contains(&own_index)) {
            self.stats.conflicting_observations += 1;
            let alert = Alert::ConflictingObservation { event, vouched: v.digest, observed: digest };
            if state.alerted.insert(digest) {
                out.actions.push(Action::Alert(alert));
            }
            return;
        }
        let vote = match existing {
            Some(v) => v.clone(),
            None => Vote::sign(self.config.epoch, event, digest, own_index, &self.signer),
        };
        if state.is_pending() {
            release_pending(&mut self.pending_by_peer, state.votes.keys());
        }
        state.votes.insert(own_index, vote.clone());
        let own = OwnVoteRecord { attestation, vote: vote.clone(), voted_at: now };
        out.changes.push(Change::OwnVote(own.clone()));
        out.actions.push(Action::Broadcast(Message::Vote(vote)));
        if let Some(network) = state.network.as_ref().filter(|c| c.digest != digest) {
            let alert = Alert::NetworkCertifiedOtherDigest { event, own: digest, network: network.digest };
            out.actions.push(Action::Alert(alert));
        }
        state.phase = Phase::Observed { own, retry: Retry::first(now, &self.config) };
        self.stats.observations += 1;
        self.try_certify(event, now, out);
    }

    fn on_vote(&mut self, vote: Vote, now: Millis, out: &mut Out) {
        if vote.epoch != self.config.epoch {
            self.stats.votes_wrong_epoch += 1;
            return;
        }
        if vote.validator.0 >= self.config.validators {
            self.stats.votes_unknown_validator += 1;
            return;
        }
        let event = vote.event;
        if self.accept_vote(vote, now, out, false) {
            self.try_certify(event, now, out);
        }
    }

    /// Records a vote of a validator of the set and epoch. `verified`: the signature was
    /// already checked (as part of a certificate). Returns whether it now counts.
    fn accept_vote(&mut self, vote: Vote, now: Millis, out: &mut Out, verified: bool) -> bool {
        let event = vote.event;
        let validator = vote.validator;
        // Cheap duplicate checks first: a replay costs no signature verification.
        if let Some(state) = self.events.get(&event) {
            if state.votes.get(&validator) == Some(&vote) {
                self.stats.votes_duplicate += 1;
                return false;
            }
            if state.equivocators.contains(&validator) {
                if self.evidence.get(&(event, validator)).is_some_and(|e| e.second == vote) {
                    self.stats.votes_duplicate += 1;
                } else {
                    self.stats.votes_from_equivocator += 1;
                }
                return false;
            }
        }
        if !verified && !vote.verify(&self.verifier) {
            self.stats.votes_bad_signature += 1;
            return false;
        }
        let cap = self.config.max_pending_events_per_peer;
        let pending = self.events.get(&event).is_none_or(EventState::is_pending);
        let known_voter = self.events.get(&event).is_some_and(|s| s.votes.contains_key(&validator));
        if pending && !known_voter && self.pending_by_peer.get(&validator).copied().unwrap_or(0) >= cap {
            self.stats.votes_over_peer_cap += 1;
            return false;
        }
        let state = self.events.entry(event).or_insert_with(|| EventState::new(now));
        if let Some(first) = state.votes.get(&validator) {
            if first.digest == vote.digest {
                // The same statement under another signature encoding: nothing new.
                self.stats.votes_duplicate += 1;
                return false;
            }
            let evidence = Equivocation { first: first.clone(), second: vote };
            state.equivocators.insert(validator);
            self.stats.equivocations += 1;
            let held = self.evidence_by_validator.entry(validator).or_default();
            if *held < self.config.max_evidence_per_validator {
                *held += 1;
                self.evidence.insert((event, validator), evidence.clone());
                out.changes.push(Change::Evidence(evidence.clone()));
            }
            if validator == self.config.own_index {
                out.actions.push(Action::Alert(Alert::OwnKeyEquivocated(evidence.clone())));
            }
            out.actions.push(Action::Equivocation(evidence));
            return false;
        }
        if state.is_pending() {
            *self.pending_by_peer.entry(validator).or_default() += 1;
        }
        state.votes.insert(validator, vote.clone());
        out.changes.push(Change::PeerVote(PeerVoteRecord { vote, received_at: now }));
        self.stats.votes_accepted += 1;
        true
    }

    /// Certifies `event` if this node observed it and a quorum signed the same digest
    /// (counted here, or proven by a verified certificate).
    fn try_certify(&mut self, event: EventId, now: Millis, out: &mut Out) {
        let Some(state) = self.events.get_mut(&event) else { return };
        let Phase::Observed { own, .. } = &state.phase else { return };
        let digest = own.vote.digest;
        let signatures: Vec<ValidatorSignature> = state
            .matching(&digest)
            .map(|v| ValidatorSignature { validator: v.validator, signature: v.signature.clone() })
            .collect();
        let certificate = if signatures.len() >= self.quorum {
            Certificate { epoch: self.config.epoch, event, digest, signatures }
        } else {
            match &state.network {
                Some(c) if c.digest == digest => c.clone(),
                _ => return,
            }
        };
        let Phase::Observed { own, .. } = std::mem::replace(&mut state.phase, Phase::Unobserved) else { return };
        let record = CertifiedRecord {
            attestation: own.attestation.clone(),
            certificate: certificate.clone(),
            certified_at: now,
        };
        out.changes.push(Change::Certified(record));
        out.actions.push(Action::Certified { attestation: own.attestation.clone(), certificate: certificate.clone() });
        out.actions.push(Action::Broadcast(Message::Certificate(certificate.clone())));
        state.phase = Phase::Certified { own, certificate };
        self.stats.certified += 1;
    }

    fn on_certificate(&mut self, certificate: Certificate, now: Millis, out: &mut Out) {
        // Structure first: a certificate listing a validator twice is refused before
        // anything else looks at it, and before any signature check.
        if certificate.check_distinct_signers().is_err() {
            self.stats.certificates_invalid += 1;
            return;
        }
        // A certificate this node already holds, every signature already known: a replay.
        if let Some(state) = self.events.get(&certificate.event) {
            let held = state.held_certificate().is_some_and(|c| c.digest == certificate.digest);
            let all_known = certificate.signatures.iter().all(|s| {
                state
                    .votes
                    .get(&s.validator)
                    .is_some_and(|v| v.digest == certificate.digest && v.signature == s.signature)
            });
            if held && all_known {
                self.stats.certificates_duplicate += 1;
                return;
            }
        }
        let certificate = match certificate.verify(self.config.epoch, self.config.validators, &self.verifier) {
            Ok(c) => c,
            Err(_) => {
                self.stats.certificates_invalid += 1;
                return;
            }
        };
        self.stats.certificates_verified += 1;
        let event = certificate.event;
        let digest = certificate.digest;
        let state = self.events.entry(event).or_insert_with(|| EventState::new(now));
        match state.held_certificate().map(|c| c.digest) {
            Some(held) if held != digest => {
                if state.alerted.insert(digest) {
                    self.stats.conflicting_certificates += 1;
                    let alert = Alert::ConflictingCertificates { event, held, received: digest };
                    out.actions.push(Action::Alert(alert));
                }
            }
            Some(_) => {}
            None => {
                if let Some(own) = state.own().filter(|o| o.vote.digest != digest) {
                    let alert = Alert::NetworkCertifiedOtherDigest { event, own: own.vote.digest, network: digest };
                    out.actions.push(Action::Alert(alert));
                }
                if state.is_pending() {
                    release_pending(&mut self.pending_by_peer, state.votes.keys());
                }
                state.network = Some(certificate.clone());
                let record = NetworkCertificateRecord { certificate: certificate.clone(), received_at: now };
                out.changes.push(Change::NetworkCertificate(record));
                if matches!(state.phase, Phase::Unobserved) && !state.reobserve_requested {
                    state.reobserve_requested = true;
                    self.stats.reobservations_requested += 1;
                    let reason = ReobserveReason::NetworkCertified { digest };
                    out.actions.push(Action::Reobserve { event, reason });
                }
            }
        }
        // Its votes are votes like any other: they count, and expose equivocators.
        for vote in certificate.votes() {
            self.accept_vote(vote, now, out, true);
        }
        self.try_certify(event, now, out);
    }

    fn on_request(&mut self, from: ValidatorIndex, request: &CertificateRequest, out: &mut Out) {
        if request.epoch != self.config.epoch || from.0 >= self.config.validators || from == self.config.own_index {
            self.stats.requests_dropped += 1;
            return;
        }
        self.stats.requests_answered += 1;
        let certificates = request
            .events
            .iter()
            .take(MAX_REQUEST_EVENTS)
            .filter_map(|event| self.events.get(event).and_then(EventState::held_certificate))
            .take(MAX_RESPONSE_CERTIFICATES)
            .cloned()
            .collect();
        let message = Message::CertificateResponse(CertificateResponse { certificates });
        out.actions.push(Action::SendTo { to: from, message });
    }

    fn on_tick(&mut self, now: Millis, out: &mut Out) {
        // 1. Forget votes for events this node never observed (bounded memory).
        let expiry = self.config.vote_expiry_ms;
        let expired: Vec<EventId> = self
            .events
            .iter()
            .filter(|(_, s)| s.is_pending() && now.saturating_sub(s.first_seen) >= expiry)
            .map(|(e, _)| *e)
            .collect();
        for event in expired {
            if let Some(s) = self.events.remove(&event) {
                release_pending(&mut self.pending_by_peer, s.votes.keys());
                out.changes.push(Change::ForgetEvent { event });
                self.stats.events_expired += 1;
            }
        }
        // 2. Ask the adapters to re-check events peers vouched for.
        for (event, s) in &mut self.events {
            if !matches!(s.phase, Phase::Unobserved) || s.reobserve_requested {
                continue;
            }
            let reason = if let Some(c) = &s.network {
                Some(ReobserveReason::NetworkCertified { digest: c.digest })
            } else if now.saturating_sub(s.first_seen) >= self.config.reobserve_after_ms {
                s.best_digest()
                    .filter(|(_, vouchers)| *vouchers >= self.config.reobserve_min_vouchers)
                    .map(|(digest, vouchers)| ReobserveReason::PeersVouched { digest, vouchers })
            } else {
                None
            };
            if let Some(reason) = reason {
                s.reobserve_requested = true;
                self.stats.reobservations_requested += 1;
                out.actions.push(Action::Reobserve { event: *event, reason });
            }
        }
        // 3. Rebroadcast own votes still short of a quorum, with backoff; past
        //    catch_up_after_ms, also ask peers for the certificate.
        //    An own vote against a verified certificate of another digest can never
        //    certify (the alert was raised): it is not resent.
        let mut wanted = Vec::new();
        for (event, s) in &mut self.events {
            let Phase::Observed { own, retry } = &mut s.phase else { continue };
            if now < retry.next_at || s.network.is_some() {
                continue;
            }
            out.actions.push(Action::Broadcast(Message::Vote(own.vote.clone())));
            self.stats.rebroadcasts += 1;
            if now.saturating_sub(own.voted_at) >= self.config.catch_up_after_ms {
                wanted.push(*event);
            }
            retry.advance(now, &self.config);
        }
        for chunk in wanted.chunks(MAX_REQUEST_EVENTS) {
            let request = CertificateRequest { epoch: self.config.epoch, events: chunk.to_vec() };
            out.actions.push(Action::RequestCertificates(request));
        }
    }
}

/// Queries, for the node's API, metrics and tests.
impl<S, V> Consensus<S, V> {
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// q for this epoch.
    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// Canary (tests only): certify with one vote fewer than the quorum.
    #[cfg(feature = "canary")]
    pub fn plant_canary_quorum_one_below(&mut self) {
        self.quorum = self.quorum.saturating_sub(1).max(1);
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn memory(&self) -> MemoryUsage {
        MemoryUsage {
            events: self.events.len(),
            pending_events: self.events.values().filter(|s| s.is_pending()).count(),
            votes: self.events.values().map(|s| s.votes.len()).sum(),
            evidence: self.evidence.len(),
            max_pending_per_peer: self.pending_by_peer.values().copied().max().unwrap_or(0),
        }
    }

    pub fn status(&self, event: &EventId) -> EventStatus {
        let Some(s) = self.events.get(event) else { return EventStatus::Unknown };
        match &s.phase {
            Phase::Certified { certificate, .. } => EventStatus::Certified { digest: certificate.digest },
            Phase::Observed { own, .. } => {
                EventStatus::Observed { digest: own.vote.digest, matching: s.matching(&own.vote.digest).count() }
            }
            Phase::Unobserved => match &s.network {
                Some(c) => EventStatus::NetworkCertified { digest: c.digest },
                None => EventStatus::Pending { votes: s.votes.len() },
            },
        }
    }

    /// Recounts the per-peer pending counters from the events (tests only).
    #[cfg(test)]
    pub(crate) fn recount_pending(&self) -> BTreeMap<ValidatorIndex, usize> {
        let mut counts = BTreeMap::new();
        for s in self.events.values().filter(|s| s.is_pending()) {
            for v in s.votes.keys() {
                *counts.entry(*v).or_default() += 1;
            }
        }
        counts
    }

    #[cfg(test)]
    pub(crate) fn pending_counters(&self) -> &BTreeMap<ValidatorIndex, usize> {
        &self.pending_by_peer
    }

    /// The certificate of an attestation certified here.
    pub fn certificate(&self, event: &EventId) -> Option<&Certificate> {
        self.events.get(event).and_then(EventState::certified)
    }

    /// A verified certificate received from peers for an event not certified here.
    pub fn network_certificate(&self, event: &EventId) -> Option<&Certificate> {
        self.events.get(event).and_then(|s| s.network.as_ref())
    }

    /// This validator's vote for an event, if it vouched for one.
    pub fn own_vote(&self, event: &EventId) -> Option<&Vote> {
        self.events.get(event).and_then(EventState::own).map(|o| &o.vote)
    }

    /// Every attestation certified here, by event id.
    pub fn certified(&self) -> impl Iterator<Item = (&Attestation, &Certificate)> + '_ {
        self.events.values().filter_map(|s| match &s.phase {
            Phase::Certified { own, certificate } => Some((&own.attestation, certificate)),
            _ => None,
        })
    }

    /// Equivocation evidence held (at most `max_evidence_per_validator` per validator).
    pub fn evidence(&self) -> impl Iterator<Item = &Equivocation> + '_ {
        self.evidence.values()
    }
}
