//! One key's FROST signing in a simulated validator: a session per message (a mint
//! batch's digest for the `evm` key, an input's BIP341 sighash for the `btc` key), with
//! messages for sessions not started here yet parked (bounded).
//!
//! **Rounds follow the clock.** A message is signed in round `now / ROUND_MS`; a
//! session not signed when the clock enters the next round is begun again there (a new
//! session id, fresh attempts), on every validator at once. Before, each validator
//! moved a message to its next round on its own (a session that failed, a release
//! abandoned here), and followed peers to a later one only once f + 1 were there: one
//! honest validator ahead alone (it restarted, or abandoned once more) was never
//! followed, its peers' sessions were never joined by it, and with exactly t honest
//! signers the message was never signed (sim seed 2640, n = 4). Entering the same round
//! again (after a restart or an abandon) is safe: its session refuses every attempt
//! whose commitment was issued before ([`CommitmentIssued`]).
//!
//! It does no I/O and writes nothing: what it asks for comes back as [`Out`]s, which the
//! validator carries out in order and stops at a crash (so nothing after a durable
//! write it crashed at happens).

use crate::Millis;
use crate::node::{EPOCH, SIGN_TIMEOUT_MS};
use btcfi_signer::session::{
    Action as SAction, CommitmentIssued, Input as SInput, Message as SMessage, Session, SessionConfig, SessionId,
};
use frost_core::{
    Ciphersuite, Identifier, Signature,
    keys::{KeyPackage, PublicKeyPackage},
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};

const MAX_PARKED: usize = 4_096;
const MAX_PARKED_PER_SENDER: usize = 512;
/// Rounds ahead of its own for which a node maps session ids (messages of a peer whose
/// clock entered the next round first are parked until this node's does).
const ROUNDS_AHEAD: u32 = 1;
/// Length of a signing round: a session's patience (`max_attempts` × 2 × timeout).
pub const ROUND_MS: Millis = MAX_ATTEMPTS as Millis * 2 * SIGN_TIMEOUT_MS;
const MAX_ATTEMPTS: u32 = 12;

/// The round a message is signed in at `now`.
pub fn round_at(now: Millis) -> u32 {
    u32::try_from(now / ROUND_MS).unwrap_or(u32::MAX)
}

/// One validator's shares of a group key.
#[derive(Debug)]
pub struct Keys<C: Ciphersuite> {
    pub key_package: KeyPackage<C>,
    pub public: PublicKeyPackage<C>,
}

impl<C: Ciphersuite> Clone for Keys<C> {
    fn clone(&self) -> Self {
        Self { key_package: self.key_package.clone(), public: self.public.clone() }
    }
}

/// What the signer asks of its validator, in order.
#[derive(Debug)]
pub enum Out<C: Ciphersuite> {
    /// Durable before anything after it.
    Persist(CommitmentIssued),
    Send {
        to: u16,
        bytes: Vec<u8>,
    },
    Broadcast(Vec<u8>),
    /// A nonce commitment left this node (for the checker).
    Commitment {
        session: SessionId,
        attempt: u32,
        bytes: Vec<u8>,
    },
    Done {
        message: Vec<u8>,
        signature: Signature<C>,
    },
    Culprit(u16),
    /// This node is about to contribute to `message`'s signature (its share, or the
    /// signature it aggregated with its own share in it): durable before what follows.
    Shared {
        message: Vec<u8>,
    },
}

struct Running<C: Ciphersuite> {
    round: u32,
    session: Session<C>,
    failed: bool,
}

/// A validator's sessions for one key, for one life (made again at each boot).
pub struct Signer<C: Ciphersuite> {
    id: u16,
    /// Separates the nonce streams of the two keys.
    tag: &'static [u8],
    seed: u64,
    life: u32,
    /// The canary: nonces drawn from the session alone, and no record of issued ones.
    reuse_nonces: bool,
    keys: Keys<C>,
    ids: BTreeMap<Identifier<C>, u16>,
    signers: BTreeSet<Identifier<C>>,
    /// Sessions created in this life: part of each session's nonce seed, so that a
    /// session made again for one message (displaced, then taken up again) never draws
    /// the nonces of the one before.
    made: u64,
    running: BTreeMap<Vec<u8>, Running<C>>,
    sids: BTreeMap<SessionId, (Vec<u8>, u32)>,
    parked: BTreeMap<SessionId, Vec<(u16, SMessage<C>)>>,
    parked_len: usize,
    debug: bool,
}

impl<C: Ciphersuite> std::fmt::Debug for Signer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("id", &self.id).field("running", &self.running.len()).finish_non_exhaustive()
    }
}

impl<C: Ciphersuite> Signer<C> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u16,
        n: u16,
        tag: &'static [u8],
        seed: u64,
        life: u32,
        reuse_nonces: bool,
        keys: Keys<C>,
        debug: bool,
    ) -> Self {
        let ids: BTreeMap<Identifier<C>, u16> =
            (0..n).filter_map(|i| Identifier::try_from(i + 1).ok().map(|k| (k, i))).collect();
        let signers = ids.keys().copied().collect();
        Self {
            id,
            tag,
            seed,
            life,
            reuse_nonces,
            keys,
            ids,
            signers,
            made: 0,
            running: BTreeMap::new(),
            sids: BTreeMap::new(),
            parked: BTreeMap::new(),
            parked_len: 0,
            debug,
        }
    }

    pub fn is_running(&self, message: &[u8]) -> bool {
        self.running.contains_key(message)
    }

    pub fn parked(&self) -> usize {
        self.parked_len
    }

    /// Stops signing `message` unless it is signed already.
    pub fn abandon(&mut self, message: &[u8]) {
        if self.running.get(message).is_some_and(|s| s.session.signature().is_none()) {
            self.running.remove(message);
        }
    }

    /// Where each session stands (for a liveness failure's report).
    pub fn describe(&self) -> Vec<String> {
        self.running
            .iter()
            .map(|(m, s)| {
                let state = if s.session.signature().is_some() {
                    "signed".to_string()
                } else if s.failed {
                    "failed".to_string()
                } else {
                    format!("{:?}", s.session.progress().map(|p| (p.attempt.0, p.candidates.len(), p.excluded.len())))
                };
                format!("{}:r{} {state}", hex::encode(&m[..4.min(m.len())]), s.round)
            })
            .collect()
    }

    /// Starts signing `message` in the round of the clock (unless it is signed here
    /// already).
    pub fn start(&mut self, message: Vec<u8>, issued: &BTreeSet<CommitmentIssued>, now: Millis) -> Vec<Out<C>> {
        let mut out = Vec::new();
        if !self.running.contains_key(&message) {
            self.begin_round(message, round_at(now), issued, now, &mut out);
        }
        out
    }

    pub fn tick(&mut self, issued: &BTreeSet<CommitmentIssued>, now: Millis) -> Vec<Out<C>> {
        let mut out = Vec::new();
        let messages: Vec<Vec<u8>> = self.running.keys().cloned().collect();
        for message in messages {
            let Some(s) = self.running.get_mut(&message) else { continue };
            if s.session.signature().is_some() {
                continue;
            }
            // The clock entered the next round: begun again there, as on every peer.
            let round = round_at(now);
            if round > s.round {
                self.begin_round(message, round, issued, now, &mut out);
                continue;
            }
            if s.failed {
                continue;
            }
            let actions = s.session.handle(SInput::Tick, now);
            self.actions(&message, actions, now, &mut out);
        }
        out
    }

    pub fn receive(&mut self, from: u16, m: SMessage<C>, now: Millis) -> Vec<Out<C>> {
        let mut out = Vec::new();
        let sid = session_of(&m);
        match self.sids.get(&sid).cloned() {
            Some((message, round)) => {
                // Not running here (abandoned, to be taken up again): kept for then.
                let Some(current) = self.running.get(&message).map(|s| s.round) else {
                    self.park(sid, from, m);
                    return out;
                };
                if round == current {
                    self.deliver(&message, from, m, now, &mut out);
                } else if round > current {
                    // A peer whose clock entered the next round first: kept for then.
                    self.park(sid, from, m);
                }
            }
            None => self.park(sid, from, m),
        }
        out
    }

    fn sid(&self, message: &[u8], round: u32) -> SessionId {
        SessionId::derive_round::<C>(message, EPOCH.0, &self.signers, round)
    }

    fn session_rng(&self, sid: &SessionId) -> ChaCha8Rng {
        let mut h = Sha256::new();
        h.update(b"BTCFI-SIM-NONCES");
        h.update(self.tag);
        h.update(self.seed.to_be_bytes());
        h.update(self.id.to_be_bytes());
        // The canary draws a session's nonces from the session alone: after a restart the
        // same nonces come back.
        if !self.reuse_nonces {
            h.update(self.life.to_be_bytes());
            h.update(self.made.to_be_bytes());
        }
        h.update(sid.0);
        ChaCha8Rng::from_seed(h.finalize().into())
    }

    fn begin_round(
        &mut self,
        message: Vec<u8>,
        round: u32,
        issued: &BTreeSet<CommitmentIssued>,
        now: Millis,
        out: &mut Vec<Out<C>>,
    ) {
        if self.debug {
            eprintln!(
                "t={now} v{} life {} begins {} {} round {round}",
                self.id,
                self.life,
                String::from_utf8_lossy(self.tag),
                hex::encode(&message[..4.min(message.len())])
            );
        }
        for r in round..=round.saturating_add(ROUNDS_AHEAD) {
            let sid = self.sid(&message, r);
            self.sids.insert(sid, (message.clone(), r));
        }
        let sid = self.sid(&message, round);
        let issued: Vec<CommitmentIssued> =
            if self.reuse_nonces { Vec::new() } else { issued.iter().filter(|c| c.session == sid).copied().collect() };
        let config = SessionConfig {
            key_package: self.keys.key_package.clone(),
            public_key_package: self.keys.public.clone(),
            timeout_ms: SIGN_TIMEOUT_MS,
            max_attempts: MAX_ATTEMPTS,
        };
        self.made += 1;
        let mut session = Session::new(config, Box::new(self.session_rng(&sid)), issued);
        let start = SInput::Start { message: message.clone(), epoch: EPOCH.0, signers: self.signers.clone(), round };
        let actions = session.handle(start, now);
        self.running.insert(message.clone(), Running { round, session, failed: false });
        self.actions(&message, actions, now, out);
        for (from, m) in self.parked.remove(&sid).unwrap_or_default() {
            self.parked_len = self.parked_len.saturating_sub(1);
            self.deliver(&message, from, m, now, out);
        }
    }

    fn park(&mut self, sid: SessionId, from: u16, m: SMessage<C>) {
        let from_sender: usize =
            self.parked.values().map(|v| v.iter().filter(|(f, _)| *f == from).count()).sum::<usize>();
        if self.parked_len >= MAX_PARKED || from_sender >= MAX_PARKED_PER_SENDER {
            return;
        }
        self.parked.entry(sid).or_default().push((from, m));
        self.parked_len += 1;
    }

    fn deliver(&mut self, message: &[u8], from: u16, m: SMessage<C>, now: Millis, out: &mut Vec<Out<C>>) {
        let Some(from_id) = self.ids.iter().find(|(_, v)| **v == from).map(|(k, _)| *k) else { return };
        let Some(s) = self.running.get_mut(message) else { return };
        let actions = s.session.handle(SInput::Message { from: from_id, message: m }, now);
        self.actions(message, actions, now, out);
    }

    fn actions(&mut self, message: &[u8], actions: Vec<SAction<C>>, now: Millis, out: &mut Vec<Out<C>>) {
        for action in actions {
            match action {
                SAction::Persist(issued) => out.push(Out::Persist(issued)),
                SAction::Send { to, message: m } => {
                    let Some(&to) = self.ids.get(&to) else { continue };
                    if matches!(m, SMessage::Share { .. }) {
                        out.push(Out::Shared { message: message.to_vec() });
                    }
                    if let Ok(bytes) = m.encode() {
                        commitment(&m, out);
                        out.push(Out::Send { to, bytes });
                    }
                }
                SAction::Broadcast(m) => {
                    if matches!(m, SMessage::Signature { .. }) {
                        out.push(Out::Shared { message: message.to_vec() });
                    }
                    if let Ok(bytes) = m.encode() {
                        commitment(&m, out);
                        out.push(Out::Broadcast(bytes));
                    }
                }
                SAction::Done(signature) => out.push(Out::Done { message: message.to_vec(), signature }),
                SAction::Failed(e) => {
                    if self.debug {
                        eprintln!("t={now} v{} {} failed: {e}", self.id, hex::encode(&message[..4.min(message.len())]));
                    }
                    if let Some(s) = self.running.get_mut(message) {
                        s.failed = true;
                    }
                }
                SAction::Culprit(e) => {
                    if let Some(&culprit) = self.ids.get(&e.culprit) {
                        out.push(Out::Culprit(culprit));
                    }
                }
                SAction::NewAttempt { .. } | SAction::Refused { .. } => {}
            }
        }
    }
}

fn commitment<C: Ciphersuite>(m: &SMessage<C>, out: &mut Vec<Out<C>>) {
    if let SMessage::Commitment { session, attempt, commitments } = m
        && let Ok(bytes) = commitments.serialize()
    {
        out.push(Out::Commitment { session: *session, attempt: attempt.0, bytes });
    }
}

/// The session a signing message belongs to.
pub fn session_of<C: Ciphersuite>(m: &SMessage<C>) -> SessionId {
    match m {
        SMessage::Commitment { session, .. }
        | SMessage::SigningPackage { session, .. }
        | SMessage::Share { session, .. }
        | SMessage::NewAttempt { session, .. }
        | SMessage::Signature { session, .. } => *session,
    }
}
