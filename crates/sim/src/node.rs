//! One simulated validator: the consensus core, the mint book and one FROST signing
//! session per message, driven the way the node drives them. What it must keep across a
//! crash lives in [`Disk`], written by the `Persist` actions before anything after them
//! runs; everything else is lost when it crashes.

use crate::{Canary, Millis};
use alloy::primitives::Address;
use btcfi_consensus::{
    Action as CAction, Certificate, Config as CConfig, Consensus, Epoch, Input as CInput, InsecureTestCrypto,
    InsecureTestSigner, Message as CMessage, PersistedState, ValidatorIndex,
};
use btcfi_mint::{
    Action as MAction, BatchProposal, Config as MConfig, Input as MInput, MintBook, MintRequest, Persisted,
};
use btcfi_signer::evm::EvmSignature;
use btcfi_signer::frost_secp256k1::{
    Identifier, Secp256K1Sha256,
    keys::{KeyPackage, PublicKeyPackage},
};
use btcfi_signer::session::{
    Action as SAction, CommitmentIssued, Input as SInput, Message as SMessage, Session, SessionConfig, SessionId,
};
use btcfi_types::{Attestation, EventId};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};

pub type Suite = Secp256K1Sha256;
type Core = Consensus<InsecureTestSigner, InsecureTestCrypto>;

/// The epoch every simulated validator counts votes and signs in.
pub const EPOCH: Epoch = Epoch(1);
/// The signing sessions' attempt timeout.
pub const SIGN_TIMEOUT_MS: Millis = 2_000;
const MAX_PARKED: usize = 4_096;
const MAX_PARKED_PER_SENDER: usize = 512;
/// Rounds ahead of its own for which a node maps session ids (to follow its peers).
const ROUNDS_AHEAD: u32 = 3;

/// Bytes on the simulated wire, by channel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Wire {
    Consensus(Vec<u8>),
    Signing(Vec<u8>),
    Batch(Vec<u8>),
}

impl Wire {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Wire::Consensus(b) | Wire::Signing(b) | Wire::Batch(b) => b,
        }
    }
}

/// What a validator asks of the world.
#[derive(Debug, Clone)]
pub enum Effect {
    Send {
        to: u16,
        wire: Wire,
    },
    Broadcast(Wire),
    /// Submit this signed batch at `at` if a leaf is still unconsumed then.
    Relay {
        at: Millis,
        proposal: BatchProposal,
        signature: EvmSignature,
    },
    /// Ask the adapters to look for this event again.
    Reobserve(EventId),
}

/// What the checker is told.
#[derive(Debug, Clone)]
pub enum Note {
    Certified {
        attestation: Attestation,
        certificate: Certificate,
    },
    /// A signing session started for this batch.
    Signing {
        proposal: BatchProposal,
    },
    /// A commitment left this node.
    Commitment {
        session: SessionId,
        attempt: u32,
        bytes: Vec<u8>,
    },
    Signed {
        message: Vec<u8>,
    },
    Culprit {
        culprit: u16,
    },
    Evidence {
        validator: u16,
    },
    Crashed,
}

/// What survives a crash.
#[derive(Debug, Default, Clone)]
pub struct Disk {
    pub consensus: PersistedState,
    pub mints: Persisted,
    pub issued: BTreeSet<CommitmentIssued>,
    pub rounds: BTreeMap<Vec<u8>, u32>,
}

/// This validator's shares of the `evm` group key.
#[derive(Debug, Clone)]
pub struct Keys {
    pub key_package: KeyPackage,
    pub public: PublicKeyPackage,
}

struct Signing {
    round: u32,
    session: Session<Suite>,
    failed_at: Option<Millis>,
    proposal: BatchProposal,
}

/// One simulated validator.
pub struct Validator {
    pub id: u16,
    n: u16,
    f: usize,
    seed: u64,
    canary: Option<Canary>,
    keys: Keys,
    crypto: InsecureTestCrypto,
    bridges: BTreeMap<u64, Address>,
    ids: BTreeMap<Identifier, u16>,
    signers: BTreeSet<Identifier>,
    pub life: u32,
    /// Sessions created in this life: part of each session's nonce seed, so that a
    /// session made again for one message (a batch displaced, then taken up again)
    /// never draws the nonces of the one before.
    sessions_made: u64,
    core: Option<Core>,
    book: Option<MintBook>,
    signing: BTreeMap<Vec<u8>, Signing>,
    sids: BTreeMap<SessionId, (Vec<u8>, u32)>,
    parked: BTreeMap<SessionId, Vec<(u16, SMessage<Suite>)>>,
    parked_len: usize,
    ahead: BTreeMap<(Vec<u8>, u32), BTreeSet<u16>>,
    pub disk: Disk,
    /// Crash right after the next durable write, before anything after it runs.
    pub crash_at_persist: bool,
    /// What happened, with the life it happened in.
    pub notes: Vec<(u32, Note)>,
    /// `SIM_DEBUG` set: print signing and batch events to stderr (read once).
    debug: bool,
    pub effects: Vec<Effect>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator").field("id", &self.id).field("life", &self.life).finish_non_exhaustive()
    }
}

impl Validator {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u16,
        n: u16,
        seed: u64,
        canary: Option<Canary>,
        keys: Keys,
        crypto: InsecureTestCrypto,
        bridges: BTreeMap<u64, Address>,
        ids: BTreeMap<Identifier, u16>,
    ) -> Self {
        let signers = ids.keys().copied().collect();
        Self {
            id,
            n,
            f: btcfi_consensus::max_faulty(n),
            seed,
            canary,
            keys,
            crypto,
            bridges,
            ids,
            signers,
            life: 0,
            sessions_made: 0,
            core: None,
            book: None,
            signing: BTreeMap::new(),
            sids: BTreeMap::new(),
            parked: BTreeMap::new(),
            parked_len: 0,
            ahead: BTreeMap::new(),
            disk: Disk::default(),
            crash_at_persist: false,
            notes: Vec::new(),
            debug: std::env::var_os("SIM_DEBUG").is_some(),
            effects: Vec::new(),
        }
    }

    /// Where this validator's mints stand (for a liveness failure's report).
    pub fn describe(&self, events: &[EventId]) -> String {
        let status: Vec<String> =
            events.iter().map(|e| format!("{:?}", self.core.as_ref().map(|c| c.status(e)))).collect();
        let sessions: Vec<String> = self
            .signing
            .iter()
            .map(|(m, s)| {
                let state = if s.session.signature().is_some() {
                    "signed".to_string()
                } else if s.failed_at.is_some() {
                    "failed".to_string()
                } else {
                    format!("{:?}", s.session.progress().map(|p| (p.attempt.0, p.candidates.len(), p.excluded.len())))
                };
                format!("{}:{} leaves r{} {state}", hex::encode(&m[..4]), s.proposal.leaves.len(), s.round)
            })
            .collect();
        format!(
            "v{} up={} life={} consensus={:?} unbatched={} parked={} sessions=[{}]",
            self.id,
            self.is_up(),
            self.life,
            status,
            self.book.as_ref().map_or(0, MintBook::unbatched),
            self.parked_len,
            sessions.join(", ")
        )
    }

    pub fn is_up(&self) -> bool {
        self.core.is_some()
    }

    fn consensus_config(&self) -> CConfig {
        let mut c = CConfig::new(EPOCH, self.n, ValidatorIndex(self.id));
        c.vote_expiry_ms = 120_000;
        c.reobserve_after_ms = 3_000;
        c.rebroadcast_interval_ms = 1_000;
        c.rebroadcast_max_interval_ms = 8_000;
        c.catch_up_after_ms = 4_000;
        c
    }

    fn mint_config(&self) -> MConfig {
        let mut c = MConfig::new(usize::from(self.n), usize::from(self.id), self.bridges.clone());
        c.batch_max = 16;
        c.batch_wait_ms = 500;
        c.takeover_ms = 4_000;
        c.stale_after_ms = 90_000;
        c
    }

    /// Starts (or restarts) from what is on disk: nothing the first time.
    pub fn boot(&mut self, now: Millis) {
        let mut core = match Consensus::restore(
            self.consensus_config(),
            self.crypto.signer(ValidatorIndex(self.id)),
            self.crypto.clone(),
            &self.disk.consensus,
        ) {
            Ok(c) => c,
            // The sim's own records always agree: a refusal is a defect the checker
            // reports through liveness (the node stays down).
            Err(_) => return,
        };
        if self.canary == Some(Canary::QuorumOneBelow) {
            core.plant_canary_quorum_one_below();
        }
        let (mut book, owed) = MintBook::restore(self.mint_config(), &self.disk.mints, now);
        if self.canary == Some(Canary::NoOwnObservation) {
            book.set_canary(Some(btcfi_mint::Canary::NoOwnObservation));
        }
        // What consensus certified is durable; the mint book may not have heard of it
        // (a crash right after the write): it is fed again, as the node does at start.
        let certified: Vec<(Attestation, Certificate)> =
            core.certified().map(|(a, c)| (a.clone(), c.clone())).collect();
        self.core = Some(core);
        self.book = Some(book);
        self.mint_actions(owed, now);
        for (attestation, certificate) in certified {
            self.certified(attestation, certificate, now);
        }
    }

    /// Loses everything not on disk.
    pub fn crash(&mut self) {
        self.core = None;
        self.book = None;
        self.signing.clear();
        self.sids.clear();
        self.parked.clear();
        self.parked_len = 0;
        self.ahead.clear();
        self.crash_at_persist = false;
        self.sessions_made = 0;
        self.note(Note::Crashed);
        self.life += 1;
    }

    pub fn observe(&mut self, atts: Vec<Attestation>, now: Millis) {
        self.consensus(CInput::ObservedMany(atts), now);
    }

    pub fn consumed(&mut self, event: EventId, now: Millis) {
        self.mint(MInput::Consumed(event), now);
    }

    pub fn tick(&mut self, now: Millis) {
        self.consensus(CInput::Tick, now);
        self.mint(MInput::Tick, now);
        let messages: Vec<Vec<u8>> = self.signing.keys().cloned().collect();
        for message in messages {
            let Some(s) = self.signing.get_mut(&message) else { continue };
            if let Some(at) = s.failed_at {
                if now >= at + 2 * SIGN_TIMEOUT_MS {
                    // The next round, or the latest a peer was seen in: after a failure
                    // every signer lands in the highest round, so rounds converge.
                    let seen = self.ahead.keys().filter(|(m, _)| *m == message).map(|(_, r)| *r).max();
                    let round = seen.unwrap_or(0).max(s.round + 1);
                    let proposal = s.proposal.clone();
                    self.begin_round(message, proposal, round, now);
                }
                continue;
            }
            let actions = s.session.handle(SInput::Tick, now);
            self.session_actions(&message, actions, now);
            if !self.is_up() {
                return;
            }
        }
    }

    pub fn receive(&mut self, from: u16, wire: Wire, now: Millis) -> Result<(), &'static str> {
        if !self.is_up() {
            return Ok(());
        }
        match wire {
            Wire::Consensus(bytes) => {
                let message = CMessage::decode(&bytes).map_err(|_| "consensus message undecodable")?;
                self.consensus(CInput::from_message(ValidatorIndex(from), message), now);
            }
            Wire::Batch(bytes) => {
                let (proposer, body) = bytes.split_first_chunk::<2>().ok_or("batch proposal truncated")?;
                let proposal = BatchProposal::decode(body).map_err(|_| "batch proposal undecodable")?;
                let proposer = usize::from(u16::from_be_bytes(*proposer));
                self.mint(MInput::Proposal { from: usize::from(from), proposer, proposal }, now);
            }
            Wire::Signing(bytes) => {
                let message = SMessage::<Suite>::decode(&bytes).map_err(|_| "signing message undecodable")?;
                self.on_signing(from, message, now);
            }
        }
        Ok(())
    }

    fn note(&mut self, note: Note) {
        self.notes.push((self.life, note));
    }

    fn persisted(&mut self) -> bool {
        if self.crash_at_persist {
            self.crash();
            return true;
        }
        false
    }

    fn consensus(&mut self, input: CInput, now: Millis) {
        let Some(core) = self.core.as_mut() else { return };
        let actions = core.handle(input, now);
        for action in actions {
            if !self.is_up() {
                return;
            }
            match action {
                CAction::Persist(delta) => {
                    self.disk.consensus.apply(&delta);
                    if self.persisted() {
                        return;
                    }
                }
                CAction::Broadcast(m) => self.effects.push(Effect::Broadcast(Wire::Consensus(m.encode()))),
                CAction::SendTo { to, message } => {
                    self.effects.push(Effect::Send { to: to.0, wire: Wire::Consensus(message.encode()) })
                }
                CAction::RequestCertificates(request) => self
                    .effects
                    .push(Effect::Broadcast(Wire::Consensus(CMessage::CertificateRequest(request).encode()))),
                CAction::Certified { attestation, certificate } => self.certified(attestation, certificate, now),
                CAction::Equivocation(e) => self.note(Note::Evidence { validator: e.validator().0 }),
                CAction::Reobserve { event, .. } => self.effects.push(Effect::Reobserve(event)),
                CAction::Alert(_) => {}
            }
        }
    }

    /// Tells the checker, and hands a mint to the book.
    fn certified(&mut self, attestation: Attestation, certificate: Certificate, now: Millis) {
        let request = MintRequest::of(&attestation);
        self.note(Note::Certified { attestation, certificate });
        if let Some(r) = request {
            self.mint(MInput::Certified(r), now);
        }
    }

    fn mint(&mut self, input: MInput, now: Millis) {
        let Some(book) = self.book.as_mut() else { return };
        let actions = book.handle(input, now);
        self.mint_actions(actions, now);
    }

    fn mint_actions(&mut self, actions: Vec<MAction>, now: Millis) {
        for action in actions {
            if !self.is_up() {
                return;
            }
            match action {
                MAction::Persist(change) => {
                    self.disk.mints.apply(&change);
                    if self.persisted() {
                        return;
                    }
                }
                MAction::Propose { proposal, proposer } => {
                    let bytes = [&(proposer as u16).to_be_bytes()[..], &proposal.encode()].concat();
                    self.effects.push(Effect::Broadcast(Wire::Batch(bytes)));
                }
                MAction::Sign { message, proposal } => {
                    if !self.signing.contains_key(&message) {
                        self.note(Note::Signing { proposal: proposal.clone() });
                        let round = self.disk.rounds.get(&message).copied().unwrap_or(0);
                        self.begin_round(message, proposal, round, now);
                    }
                }
                MAction::Abandon { message } => {
                    if self.debug {
                        eprintln!("t={now} v{} abandons {}", self.id, hex::encode(&message[..4]));
                    }
                    if self.signing.get(&message).is_some_and(|s| s.session.signature().is_none()) {
                        self.signing.remove(&message);
                    }
                }
                MAction::Relay { proposal, signature, after_ms } => {
                    self.effects.push(Effect::Relay { at: now + after_ms, proposal, signature })
                }
                MAction::Refused { from, refusal } => {
                    if self.debug {
                        eprintln!("t={now} v{} refused a batch of v{from}: {refusal}", self.id);
                    }
                }
            }
        }
    }

    fn sid(&self, message: &[u8], round: u32) -> SessionId {
        SessionId::derive_round::<Suite>(message, EPOCH.0, &self.signers, round)
    }

    fn session_rng(&self, sid: &SessionId) -> ChaCha8Rng {
        let mut h = Sha256::new();
        h.update(b"BTCFI-SIM-NONCES");
        h.update(self.seed.to_be_bytes());
        h.update(self.id.to_be_bytes());
        // The canary draws a session's nonces from the session alone: after a restart the
        // same nonces come back.
        if self.canary != Some(Canary::NonceReuseAfterRestart) {
            h.update(self.life.to_be_bytes());
            h.update(self.sessions_made.to_be_bytes());
        }
        h.update(sid.0);
        ChaCha8Rng::from_seed(h.finalize().into())
    }

    fn begin_round(&mut self, message: Vec<u8>, proposal: BatchProposal, round: u32, now: Millis) {
        if self.debug {
            eprintln!("t={now} v{} life {} begins {} round {round}", self.id, self.life, hex::encode(&message[..4]));
        }
        if round > 0 {
            self.disk.rounds.insert(message.clone(), round);
        }
        for r in 0..=round + ROUNDS_AHEAD {
            let sid = self.sid(&message, r);
            self.sids.insert(sid, (message.clone(), r));
        }
        let sid = self.sid(&message, round);
        let issued: Vec<CommitmentIssued> = if self.canary == Some(Canary::NonceReuseAfterRestart) {
            Vec::new()
        } else {
            self.disk.issued.iter().filter(|c| c.session == sid).copied().collect()
        };
        let config = SessionConfig {
            key_package: self.keys.key_package.clone(),
            public_key_package: self.keys.public.clone(),
            timeout_ms: SIGN_TIMEOUT_MS,
            max_attempts: 12,
        };
        self.sessions_made += 1;
        let mut session = Session::new(config, Box::new(self.session_rng(&sid)), issued);
        let start = SInput::Start { message: message.clone(), epoch: EPOCH.0, signers: self.signers.clone(), round };
        let actions = session.handle(start, now);
        self.signing.insert(message.clone(), Signing { round, session, failed_at: None, proposal });
        self.session_actions(&message, actions, now);
        for (from, m) in self.parked.remove(&sid).unwrap_or_default() {
            self.parked_len = self.parked_len.saturating_sub(1);
            if !self.is_up() {
                return;
            }
            self.deliver_signing(&message, from, m, now);
        }
    }

    fn on_signing(&mut self, from: u16, m: SMessage<Suite>, now: Millis) {
        let sid = session_of(&m);
        match self.sids.get(&sid).cloned() {
            Some((message, round)) => {
                let Some(current) = self.signing.get(&message).map(|s| s.round) else { return };
                if round == current {
                    self.deliver_signing(&message, from, m, now);
                } else if round > current {
                    // Peers in a later round: follow once f + 1 (one honest) are there.
                    let seen = self.ahead.entry((message.clone(), round)).or_default();
                    seen.insert(from);
                    if seen.len() > self.f {
                        let proposal = self.signing.get(&message).map(|s| s.proposal.clone());
                        if let Some(proposal) = proposal {
                            self.begin_round(message.clone(), proposal, round, now);
                            self.deliver_signing(&message, from, m, now);
                        }
                    } else {
                        self.park(sid, from, m);
                    }
                }
            }
            None => self.park(sid, from, m),
        }
    }

    fn park(&mut self, sid: SessionId, from: u16, m: SMessage<Suite>) {
        let from_sender: usize =
            self.parked.values().map(|v| v.iter().filter(|(f, _)| *f == from).count()).sum::<usize>();
        if self.parked_len >= MAX_PARKED || from_sender >= MAX_PARKED_PER_SENDER {
            return;
        }
        self.parked.entry(sid).or_default().push((from, m));
        self.parked_len += 1;
    }

    fn deliver_signing(&mut self, message: &[u8], from: u16, m: SMessage<Suite>, now: Millis) {
        let Some(from_id) = self.ids.iter().find(|(_, v)| **v == from).map(|(k, _)| *k) else { return };
        let Some(s) = self.signing.get_mut(message) else { return };
        let actions = s.session.handle(SInput::Message { from: from_id, message: m }, now);
        self.session_actions(message, actions, now);
    }

    fn session_actions(&mut self, message: &[u8], actions: Vec<SAction<Suite>>, now: Millis) {
        for action in actions {
            if !self.is_up() {
                return;
            }
            match action {
                SAction::Persist(issued) => {
                    self.disk.issued.insert(issued);
                    if self.persisted() {
                        return;
                    }
                }
                SAction::Send { to, message: m } => {
                    let Some(&to) = self.ids.get(&to) else { continue };
                    if let Ok(bytes) = m.encode() {
                        self.note_commitment(&m);
                        self.effects.push(Effect::Send { to, wire: Wire::Signing(bytes) });
                    }
                }
                SAction::Broadcast(m) => {
                    if let Ok(bytes) = m.encode() {
                        self.note_commitment(&m);
                        self.effects.push(Effect::Broadcast(Wire::Signing(bytes)));
                    }
                }
                SAction::Done(signature) => {
                    self.note(Note::Signed { message: message.to_vec() });
                    if let Ok(signature) = EvmSignature::from_frost(&signature) {
                        self.mint(MInput::Signed { message: message.to_vec(), signature }, now);
                    }
                }
                SAction::Failed(e) => {
                    if self.debug {
                        eprintln!("t={now} v{} {} failed: {e}", self.id, hex::encode(&message[..4]));
                    }
                    if let Some(s) = self.signing.get_mut(message) {
                        s.failed_at = Some(now);
                    }
                }
                SAction::Culprit(e) => {
                    if let Some(&culprit) = self.ids.get(&e.culprit) {
                        self.note(Note::Culprit { culprit });
                    }
                }
                SAction::NewAttempt { .. } | SAction::Refused { .. } => {}
            }
        }
    }

    fn note_commitment(&mut self, m: &SMessage<Suite>) {
        if let SMessage::Commitment { session, attempt, commitments } = m
            && let Ok(bytes) = commitments.serialize()
        {
            self.note(Note::Commitment { session: *session, attempt: attempt.0, bytes });
        }
    }
}

/// The session a signing message belongs to.
pub fn session_of(m: &SMessage<Suite>) -> SessionId {
    match m {
        SMessage::Commitment { session, .. }
        | SMessage::SigningPackage { session, .. }
        | SMessage::Share { session, .. }
        | SMessage::NewAttempt { session, .. }
        | SMessage::Signature { session, .. } => *session,
    }
}
