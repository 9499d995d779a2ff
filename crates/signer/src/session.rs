//! Robust FROST signing sessions as a sans-IO state machine (ROAST-style retries).
//!
//! A [`Session`] is one validator's view of one signing session: one message, one
//! epoch, one signer set, any number of *attempts*. It is fed [`Input`]s (its own
//! node's `Start`, authenticated peer [`Message`]s, clock ticks) together with the
//! current time in milliseconds, and answers with [`Action`]s for the node to execute
//! **in order**. It owns no clock, no socket, no database and no thread, so a test can
//! run many validators in one process under a seeded fault schedule.
//!
//! # Protocol
//!
//! * Session id = `SHA-256(SESSION_TAG, epoch, signer set, message)` ([`SessionId::derive`]);
//!   an attempt is named by `(session id, attempt)` ([`CommitmentIssued`]): together they
//!   are the design's `hash(message set, epoch, attempt)`.
//! * Attempt `a` has a candidate set (the signer set minus everyone excluded so far) and
//!   one coordinator picked deterministically from `(session id, a)` among the candidates
//!   ([`coordinator`]), never the coordinator of attempt `a - 1` (so that no coordinator
//!   keeps itself in charge through its choice of exclusions).
//! * Each candidate draws fresh nonces, emits [`Action::Persist`] of
//!   `CommitmentIssued { session, attempt }` and **then** broadcasts its commitment (the
//!   coordinator uses it; the others count who takes part), again every half timeout
//!   until a package uses it (a peer may have lost it while too busy to answer). The node must make the
//!   record durable before executing any later action of the same batch: this is what
//!   makes "no pre-crash attempt is ever answered" enforceable after a restart (see
//!   [`Session::new`]).
//! * No timer runs until t candidates' commitments to one attempt were seen (the
//!   session's *quorum*); from then on every attempt times out as below (an attempt
//!   short of live candidates must, for its exclusions to be forgiven). Validators start
//!   a session at different times (each drains its own signing queue); before, those
//!   who started first timed attempts out alone and were attempts ahead when the others
//!   arrived, so that their attempts never met. Now the first wait, and whoever arrives
//!   joins the same attempt. A node still waiting when `f + 1` peers commit to the next
//!   attempt (their quorum formed without its view of it) follows them there. A session
//!   that sees no quorum within its patience (`max_attempts × 2 × timeout_ms`, e.g. its
//!   signers are away) fails with [`SessionError::NoQuorum`], having burned nothing;
//!   the node retries it as a new round.
//! * The coordinator waits for every candidate's commitment, or for a short grace
//!   period (`timeout_ms / 5`) once `t` have arrived, and sends the signing package to
//!   all whose commitments it holds (at least `t`: FROST signs with any set of `t` or
//!   more). Waiting for everyone responsive means a signer that returns bad shares is
//!   included, caught and excluded rather than silently skipped; the grace period
//!   bounds what an unresponsive candidate costs. It verifies each share on arrival
//!   (`frost_core::verify_signature_share`), aggregates, verifies the group signature and
//!   broadcasts it.
//! * A signer signs a package only if it comes from the attempt's coordinator, for the
//!   current attempt, over exactly the message its own node started, and only with the
//!   in-memory nonces of that attempt, once. Nonces of an attempt are dropped when the
//!   attempt ends.
//! * Robustness: a share that fails verification makes its sender a culprit
//!   ([`Action::Culprit`], from `Error::culprits()`); the coordinator ends the attempt
//!   once every signer of the package answered (or at the timeout), excluding every
//!   culprit of the attempt at once: ending at the first bad share would exclude one
//!   per attempt, and `f` of them outlast [`MAX_ATTEMPTS`] at large `n`. Signers that did not answer by `timeout_ms` (from the quorum) are excluded
//!   when the coordinator ends the attempt. Both are announced with
//!   [`Message::NewAttempt`]. If the coordinator itself says nothing for `2 * timeout_ms`
//!   after the quorum, every other node excludes it, says so (a `NewAttempt` of its
//!   own, which moves only peers far behind: see below) and moves to the next attempt. Each failed attempt excludes at least one signer, so
//!   with `t` honest responsive signers a signature arrives within `n - t + 1` attempts.
//!   Exclusions for silence are forgiven when they would leave fewer than `t`
//!   candidates (a slow signer is not a malicious one); proven culprits stay excluded.
//! * Messages for a later attempt than the node's own (a peer saw the attempt end
//!   first) are kept, bounded ([`MAX_EARLY_MESSAGES`], [`MAX_EARLY_PER_SENDER`], at most
//!   [`EARLY_WINDOW`] attempts ahead), and replayed when the node gets there. A node
//!   further behind (it started the session late: validators queue sessions under
//!   load) joins its peers once `n - t + 1` of them were seen beyond the window: it
//!   begins the attempt after the latest end announced to it, with that
//!   announcement's exclusions, as they did.
//! * A session fails after [`MAX_ATTEMPTS`] attempts; a `NewAttempt` whose exclusions
//!   would leave fewer than `t` candidates is refused.
//!
//! # Trust notes
//!
//! Exclusions for unresponsiveness are taken on the coordinator's word (as in ROAST, the
//! coordinator decides whom it waits for); invalid-share evidence is carried in
//! [`Action::Culprit`] for the node to record, but receivers of `NewAttempt` do not
//! re-verify it yet. A group signature is accepted from anyone only after it verifies.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use frost_core::{
    Ciphersuite, Identifier, Signature, SigningPackage,
    keys::{KeyPackage, PublicKeyPackage},
    round1::{self, SigningCommitments, SigningNonces},
    round2::{self, SignatureShare},
};
use frost_secp256k1::rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};

/// Domain tag of session ids.
pub const SESSION_TAG: &[u8] = b"BTCFI-SIGN-SESSION-v1";
/// Domain tag of the coordinator choice.
pub const COORDINATOR_TAG: &[u8] = b"BTCFI-SIGN-COORDINATOR-v1";
/// Shortest message a session signs: a digest or sighash is 32 bytes; anything shorter is
/// certainly not something this node derived itself.
pub const MIN_MESSAGE_LEN: usize = 32;
/// Version byte that opens every encoded [`Message`].
pub const WIRE_VERSION: u8 = 1;
/// Largest length-prefixed field a decoder accepts (a signing package of a few hundred
/// signers is far below this).
pub const MAX_FIELD_LEN: usize = 64 * 1024;

/// Identifier of a signing session: SHA-256 over the domain tag, epoch, signer set and
/// message. Equal on every honest node that started the same message in the same epoch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub [u8; 32]);

impl SessionId {
    /// The id of a session signing `message` in `epoch` with `signers` (round 0).
    pub fn derive<C: Ciphersuite>(message: &[u8], epoch: u64, signers: &BTreeSet<Identifier<C>>) -> Self {
        Self::derive_round(message, epoch, signers, 0)
    }

    /// The id of round `round` of signing `message`: a session that failed (its
    /// attempts ran out while signers were away) is retried as a new session, with
    /// fresh attempts, under the id of the next round. Round 0 is [`SessionId::derive`].
    pub fn derive_round<C: Ciphersuite>(
        message: &[u8],
        epoch: u64,
        signers: &BTreeSet<Identifier<C>>,
        round: u32,
    ) -> Self {
        let mut h = Sha256::new();
        h.update((SESSION_TAG.len() as u64).to_be_bytes());
        h.update(SESSION_TAG);
        h.update(epoch.to_be_bytes());
        h.update((signers.len() as u64).to_be_bytes());
        for s in signers {
            let bytes = s.serialize();
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(&bytes);
        }
        h.update((message.len() as u64).to_be_bytes());
        h.update(message);
        // Round 0 hashes as before rounds existed.
        if round > 0 {
            h.update(b"round");
            h.update(round.to_be_bytes());
        }
        SessionId(h.finalize().into())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId(")?;
        for b in self.0.iter().take(8) {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..)")
    }
}

/// Number of an attempt within a session, from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attempt(pub u32);

impl Attempt {
    fn next(self) -> Option<Attempt> {
        self.0.checked_add(1).map(Attempt)
    }
}

/// Durable record "this node issued a commitment for (session, attempt)". Written (via
/// [`Action::Persist`]) before the commitment leaves the node; handed back to
/// [`Session::new`] after a restart so that those attempts are never answered again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommitmentIssued {
    /// The session.
    pub session: SessionId,
    /// The attempt whose nonces were drawn.
    pub attempt: Attempt,
}

/// The coordinator of `attempt` of `session` among `candidates`: the candidate at index
/// `SHA-256(COORDINATOR_TAG, session, attempt) mod |candidates|` in identifier order.
/// `None` if there are no candidates.
pub fn coordinator<C: Ciphersuite>(
    session: &SessionId,
    attempt: Attempt,
    candidates: &BTreeSet<Identifier<C>>,
) -> Option<Identifier<C>> {
    let len = u64::try_from(candidates.len()).ok().filter(|l| *l > 0)?;
    let mut h = Sha256::new();
    h.update(COORDINATOR_TAG);
    h.update(session.0);
    h.update(attempt.0.to_be_bytes());
    let digest: [u8; 32] = h.finalize().into();
    let mut first = [0u8; 8];
    first.copy_from_slice(digest.get(..8)?);
    let index = usize::try_from(u64::from_be_bytes(first) % len).ok()?;
    candidates.iter().nth(index).copied()
}

/// Why a session refused an input or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// A peer message arrived before this node's own `Start`: the node did not ask to sign
    /// anything, so nothing is answered.
    #[error("no session started: this node signs only what it started itself")]
    NotStarted,
    /// `Start` was given twice to one session.
    #[error("session already started")]
    AlreadyStarted,
    /// The message to sign is shorter than [`MIN_MESSAGE_LEN`].
    #[error("message is {len} bytes, at least {MIN_MESSAGE_LEN} expected (a digest or sighash)")]
    MessageTooShort {
        /// Its length.
        len: usize,
    },
    /// This node's key identifier is not in the signer set it was started with.
    #[error("this node is not in the session's signer set: check the epoch's validator set")]
    NotInSignerSet,
    /// The signer set is smaller than the threshold, or contains identifiers without a
    /// verifying share in the public key package.
    #[error("signer set of {signers} (all with verifying shares) cannot reach threshold {threshold}")]
    SignerSetTooSmall {
        /// Usable signers.
        signers: usize,
        /// Threshold t.
        threshold: usize,
    },
    /// The message belongs to another session (another message, epoch or signer set).
    #[error("message for a session this node did not start")]
    UnknownSession,
    /// The sender is not a signer (or not a candidate) of the current attempt.
    #[error("sender is not a candidate of this attempt")]
    NotACandidate,
    /// The message is for an attempt other than the current one.
    #[error("message for attempt {attempt:?}, current is {current:?}")]
    StaleAttempt {
        /// The message's attempt.
        attempt: Attempt,
        /// This node's current attempt.
        current: Attempt,
    },
    /// A signing package or attempt change did not come from the attempt's coordinator.
    #[error("sender is not the coordinator of attempt {attempt:?}")]
    WrongCoordinator {
        /// The attempt.
        attempt: Attempt,
    },
    /// A commitment or share was sent to a node that does not coordinate the attempt.
    #[error("this node does not coordinate attempt {attempt:?}")]
    NotCoordinator {
        /// The attempt.
        attempt: Attempt,
    },
    /// A signing package asks to sign a message this node did not start.
    #[error("signing package for a message this node did not start")]
    UnexpectedMessage,
    /// The attempt's commitment was issued before a restart: its nonces are gone and the
    /// attempt is never answered.
    #[error("commitment of attempt {attempt:?} was issued before a restart; never answered")]
    NoncesNotHeld {
        /// The attempt.
        attempt: Attempt,
    },
    /// The attempt's nonces were already used for a share: a second package is refused.
    #[error("nonces of attempt {attempt:?} already consumed")]
    NoncesConsumed {
        /// The attempt.
        attempt: Attempt,
    },
    /// This node holds no nonces for the attempt (it was not a candidate).
    #[error("no commitment issued for attempt {attempt:?}")]
    NotSelected {
        /// The attempt.
        attempt: Attempt,
    },
    /// A signing package is malformed for this attempt (wrong size, non-candidates).
    #[error("invalid signing package for attempt {attempt:?}: {reason}")]
    InvalidPackage {
        /// The attempt.
        attempt: Attempt,
        /// What was wrong.
        reason: &'static str,
    },
    /// The same peer sent the same kind of message twice in one attempt.
    #[error("duplicate message")]
    Duplicate,
    /// A broadcast group signature does not verify.
    #[error("group signature does not verify")]
    InvalidSignature,
    /// FROST refused an operation.
    #[error("FROST: {0}")]
    Frost(String),
    /// Too few signers are left to reach the threshold: the session failed. Start a new
    /// session once validators are back; the culprits are in the evidence.
    #[error("attempt {attempt:?} has {candidates} candidates, threshold is {threshold}: session failed")]
    TooFewSigners {
        /// The attempt that could not start.
        attempt: Attempt,
        /// Candidates left.
        candidates: usize,
        /// Threshold t.
        threshold: usize,
    },
    /// The session is over (signed or failed).
    #[error("session finished")]
    Finished,
    /// Fewer than t signers committed to the attempt within the session's patience
    /// (`max_attempts × 2 × timeout_ms`): the signers are away, or this node's own
    /// commitment for it was issued before a restart. Nothing was burned; the node
    /// retries the message as a new round.
    #[error("only {present} of the {threshold} signers needed committed in {waited_ms} ms: session failed")]
    NoQuorum {
        /// Signers seen committed (this node included).
        present: usize,
        /// Threshold t.
        threshold: usize,
        /// How long the attempt waited.
        waited_ms: u64,
    },
    /// The session ran [`MAX_ATTEMPTS`] attempts without a signature: it failed.
    #[error("no signature after {attempts} attempts: session failed (see the culprits and the peers' health)")]
    TooManyAttempts {
        /// The bound.
        attempts: u32,
    },
}

impl<C: Ciphersuite> From<frost_core::Error<C>> for SessionError {
    fn from(e: frost_core::Error<C>) -> Self {
        SessionError::Frost(e.to_string())
    }
}

/// What a node feeds its session.
#[derive(Debug, Clone)]
pub enum Input<C: Ciphersuite> {
    /// The node's own decision to sign `message` (a digest or sighash it derived itself)
    /// in `epoch` with `signers`. Only a started message is ever signed.
    Start {
        /// The bytes to sign (at least [`MIN_MESSAGE_LEN`]).
        message: Vec<u8>,
        /// The epoch of the key.
        epoch: u64,
        /// The epoch's signer set.
        signers: BTreeSet<Identifier<C>>,
        /// The round (0, then one more per retry of a failed session): part of the
        /// session id.
        round: u32,
    },
    /// A message from an authenticated peer (the transport vouches for `from`).
    Message {
        /// The sender.
        from: Identifier<C>,
        /// The message.
        message: Message<C>,
    },
    /// Time passed.
    Tick,
}

/// Session messages between validators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<C: Ciphersuite> {
    /// Round 1: a candidate's commitment, to the coordinator.
    Commitment {
        /// Session.
        session: SessionId,
        /// Attempt.
        attempt: Attempt,
        /// The commitment.
        commitments: SigningCommitments<C>,
    },
    /// The coordinator's signing package, to each chosen signer.
    SigningPackage {
        /// Session.
        session: SessionId,
        /// Attempt.
        attempt: Attempt,
        /// The package.
        package: SigningPackage<C>,
    },
    /// Round 2: a signature share, to the coordinator.
    Share {
        /// Session.
        session: SessionId,
        /// Attempt.
        attempt: Attempt,
        /// The share.
        share: SignatureShare<C>,
    },
    /// The coordinator ended attempt `ended`; the next attempt excludes `excluded`
    /// (cumulative).
    NewAttempt {
        /// Session.
        session: SessionId,
        /// The attempt that ended.
        ended: Attempt,
        /// Every signer excluded from now on.
        excluded: BTreeSet<Identifier<C>>,
    },
    /// The verified group signature.
    Signature {
        /// Session.
        session: SessionId,
        /// Attempt that produced it.
        attempt: Attempt,
        /// The signature.
        signature: Signature<C>,
    },
}

/// Proof that `culprit` sent a signature share that does not verify for `package`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence<C: Ciphersuite> {
    /// Session.
    pub session: SessionId,
    /// Attempt.
    pub attempt: Attempt,
    /// The misbehaving signer.
    pub culprit: Identifier<C>,
    /// The signing package the share was for.
    pub package: SigningPackage<C>,
    /// The invalid share.
    pub share: SignatureShare<C>,
}

/// What the node must do, in the order given.
#[derive(Debug, Clone)]
pub enum Action<C: Ciphersuite> {
    /// Write this record durably **before executing any later action of the batch**
    /// (it always precedes the commitment it covers).
    Persist(CommitmentIssued),
    /// Send `message` to one signer.
    Send {
        /// Recipient.
        to: Identifier<C>,
        /// Message.
        message: Message<C>,
    },
    /// Send `message` to every other signer of the session.
    Broadcast(Message<C>),
    /// A new attempt begins.
    NewAttempt {
        /// Its number.
        attempt: Attempt,
        /// Its coordinator.
        coordinator: Identifier<C>,
        /// Its candidates.
        candidates: BTreeSet<Identifier<C>>,
    },
    /// Record this misbehaviour as evidence.
    Culprit(Evidence<C>),
    /// The session produced this verified group signature.
    Done(Signature<C>),
    /// An input was refused (logged by the node; nothing was signed).
    Refused {
        /// The sender, or this node for its own inputs.
        from: Identifier<C>,
        /// Why.
        error: SessionError,
    },
    /// The session failed for good.
    Failed(SessionError),
}

/// Keys and policy of one node's session.
#[derive(Debug, Clone)]
pub struct SessionConfig<C: Ciphersuite> {
    /// This node's key package (its identifier, secret share and the threshold).
    pub key_package: KeyPackage<C>,
    /// The group's public key package (verifying shares of every signer).
    pub public_key_package: PublicKeyPackage<C>,
    /// How long the coordinator waits for commitments and shares before it ends an
    /// attempt; others wait twice as long for the coordinator.
    pub timeout_ms: u64,
    /// Attempts before the session fails (at most [`MAX_ATTEMPTS`]); the node then
    /// retries the message as a new session round.
    pub max_attempts: u32,
}

/// The coordinator's bookkeeping for the current attempt.
fn run_attempt<C: Ciphersuite>(state: &State<C>) -> Attempt {
    match state {
        State::Running(r) => r.attempt,
        _ => Attempt(0),
    }
}

/// A running session's current attempt, as [`Session::progress`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress<C: Ciphersuite> {
    pub attempt: Attempt,
    pub coordinator: Identifier<C>,
    /// Signers eligible in this attempt.
    pub candidates: BTreeSet<Identifier<C>>,
    /// Signers left out of it (silent or cheating before).
    pub excluded: BTreeSet<Identifier<C>>,
    /// When this node coordinates: whose commitments, and whose shares, it holds.
    pub committed: Option<BTreeSet<Identifier<C>>>,
    pub shared: Option<BTreeSet<Identifier<C>>>,
}

struct Coordinating<C: Ciphersuite> {
    arrived: BTreeMap<Identifier<C>, SigningCommitments<C>>,
    /// When the t-th commitment arrived (the grace period for the rest starts).
    quorum_ms: Option<u64>,
    package: Option<SigningPackage<C>>,
    shares: BTreeMap<Identifier<C>, SignatureShare<C>>,
    /// Senders of shares that failed verification in this attempt.
    bad: BTreeSet<Identifier<C>>,
}

struct Running<C: Ciphersuite> {
    session: SessionId,
    message: Vec<u8>,
    signers: BTreeSet<Identifier<C>>,
    attempt: Attempt,
    /// When the attempt began (or the session was last resumed while it waited).
    started_ms: u64,
    /// Candidates whose commitment for this attempt this node saw (its own included):
    /// commitments are broadcast, so that every node knows who takes part.
    present: BTreeSet<Identifier<C>>,
    /// When `present` reached t: the attempt's timers run from then on only.
    quorum_ms: Option<u64>,
    /// Whether some attempt of this session reached t: from then on every attempt's
    /// timers run from its beginning (the signers are all in; an attempt short of
    /// live candidates must time out for its exclusions to be forgiven).
    met: bool,
    /// When this node started the session (its patience runs from there).
    session_ms: u64,
    /// When this node last sent its commitment to the current attempt. While no package
    /// used it (its nonces are held), it is sent again every half timeout: a peer that
    /// lost it, its loop too busy to answer in time, would otherwise wait in an attempt
    /// that cannot reach t.
    resent_ms: u64,
    excluded: BTreeSet<Identifier<C>>,
    candidates: BTreeSet<Identifier<C>>,
    coordinator: Identifier<C>,
    /// Nonces of the current attempt only; dropped (zeroized) when it ends or is used.
    nonces: Option<(Attempt, SigningNonces<C>)>,
    consumed: BTreeSet<Attempt>,
    coordinating: Option<Coordinating<C>>,
    /// Signers this node proved to have sent invalid shares (never re-included).
    culprits: BTreeSet<Identifier<C>>,
    /// Messages for a later attempt than ours (a peer moved on first): replayed when
    /// this node reaches that attempt. Bounded by [`MAX_EARLY_MESSAGES`].
    early: Vec<(Identifier<C>, Message<C>)>,
    /// Peers seen in attempts beyond [`EARLY_WINDOW`] (the highest each), and the latest
    /// such `NewAttempt` (ended attempt, its sender, the exclusions it announced): a node
    /// that started late joins the attempt `n − t + 1` peers are in (see
    /// [`Session::catch_up`]).
    ahead: BTreeMap<Identifier<C>, Attempt>,
    announced: Option<(Attempt, Identifier<C>, BTreeSet<Identifier<C>>)>,
}

/// Most messages for later attempts a session keeps.
pub const MAX_EARLY_MESSAGES: usize = 256;
/// Most messages for later attempts a session keeps from one sender (so that one
/// peer cannot crowd out the others).
pub const MAX_EARLY_PER_SENDER: usize = 8;
/// How far ahead of this node's attempt a kept message may be: a peer is ahead by one
/// attempt when it saw the current one end first; more than a few means it is lying.
pub const EARLY_WINDOW: u32 = 2;
/// Most attempts a session runs before it fails. With `t` honest responsive signers
/// a signature arrives within `n - t + 1` attempts; forgiven silence can add a few
/// rounds; this bound keeps a misbehaving coordinator from restarting attempts (each
/// a durable write and fresh nonces on every signer) forever.
pub const MAX_ATTEMPTS: u32 = 64;

enum State<C: Ciphersuite> {
    Idle,
    Running(Box<Running<C>>),
    Done(Signature<C>),
    Failed,
}

struct Ctx<C: Ciphersuite> {
    me: Identifier<C>,
    threshold: usize,
    config: SessionConfig<C>,
    rng: Box<dyn CryptoRngCore + Send>,
    /// Attempts whose commitments were issued before the last restart: refused forever.
    pre_restart: BTreeSet<CommitmentIssued>,
}

/// One node's state machine for one signing session. See the [module docs](self).
pub struct Session<C: Ciphersuite> {
    ctx: Ctx<C>,
    state: State<C>,
}

impl<C: Ciphersuite> fmt::Debug for Session<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print nonces or the key share.
        let state = match &self.state {
            State::Idle => "idle".to_string(),
            State::Running(r) => format!("running {:?} attempt {:?}", r.session, r.attempt),
            State::Done(_) => "done".to_string(),
            State::Failed => "failed".to_string(),
        };
        f.debug_struct("Session").field("me", &self.ctx.me).field("state", &state).finish_non_exhaustive()
    }
}

type Out<C> = Vec<Action<C>>;

impl<C: Ciphersuite> Session<C> {
    /// A session for the node owning `config.key_package`, drawing nonces from `rng`.
    ///
    /// `issued` are the [`CommitmentIssued`] records this node persisted before (empty on
    /// a fresh start). Their nonces died with the previous process, so those attempts
    /// are never answered and never committed to again.
    pub fn new(
        config: SessionConfig<C>,
        rng: Box<dyn CryptoRngCore + Send>,
        issued: impl IntoIterator<Item = CommitmentIssued>,
    ) -> Self {
        let me = *config.key_package.identifier();
        let threshold = usize::from(*config.key_package.min_signers());
        Session {
            ctx: Ctx { me, threshold, config, rng, pre_restart: issued.into_iter().collect() },
            state: State::Idle,
        }
    }

    /// The session id, once started.
    pub fn session_id(&self) -> Option<SessionId> {
        match &self.state {
            State::Running(r) => Some(r.session),
            _ => None,
        }
    }

    /// The current attempt, while running.
    pub fn attempt(&self) -> Option<Attempt> {
        match &self.state {
            State::Running(r) => Some(r.attempt),
            _ => None,
        }
    }

    /// Where the current attempt stands, while running: for an operator asking why a
    /// signature waits.
    pub fn progress(&self) -> Option<Progress<C>> {
        let State::Running(r) = &self.state else { return None };
        let coordinating = r.coordinating.as_ref();
        Some(Progress {
            attempt: r.attempt,
            coordinator: r.coordinator,
            candidates: r.candidates.clone(),
            excluded: r.excluded.clone(),
            committed: coordinating.map(|c| c.arrived.keys().copied().collect()),
            shared: coordinating.map(|c| c.shares.keys().copied().collect()),
        })
    }

    /// The signature, once done.
    pub fn signature(&self) -> Option<&Signature<C>> {
        match &self.state {
            State::Done(s) => Some(s),
            _ => None,
        }
    }

    /// Feed one input at time `now_ms`; execute the returned actions in order.
    pub fn handle(&mut self, input: Input<C>, now_ms: u64) -> Vec<Action<C>> {
        let mut out = Vec::new();
        let me = self.ctx.me;
        let result = match input {
            Input::Start { message, epoch, signers, round } => {
                self.start(message, epoch, signers, round, now_ms, &mut out)
            }
            Input::Message { from, message } => match self.on_message(from, message, now_ms, &mut out) {
                Ok(()) => Ok(()),
                Err(error) => {
                    out.push(Action::Refused { from, error });
                    Ok(())
                }
            },
            Input::Tick => {
                self.on_tick(now_ms, &mut out);
                Ok(())
            }
        };
        if let Err(error) = result {
            out.push(Action::Refused { from: me, error });
        }
        // Messages that arrived ahead of this node, for the attempt it is now in.
        while let Some((from, message)) = self.take_early() {
            if let Err(error) = self.on_message(from, message, now_ms, &mut out) {
                out.push(Action::Refused { from, error });
            }
        }
        out
    }

    fn take_early(&mut self) -> Option<(Identifier<C>, Message<C>)> {
        let State::Running(run) = &mut self.state else { return None };
        let current = run.attempt;
        let i = run.early.iter().position(|(_, m)| attempt_of(m) <= current)?;
        Some(run.early.remove(i))
    }

    fn start(
        &mut self,
        message: Vec<u8>,
        epoch: u64,
        signers: BTreeSet<Identifier<C>>,
        round: u32,
        now_ms: u64,
        out: &mut Out<C>,
    ) -> Result<(), SessionError> {
        if !matches!(self.state, State::Idle) {
            return Err(SessionError::AlreadyStarted);
        }
        if message.len() < MIN_MESSAGE_LEN {
            return Err(SessionError::MessageTooShort { len: message.len() });
        }
        if !signers.contains(&self.ctx.me) {
            return Err(SessionError::NotInSignerSet);
        }
        let shares = self.ctx.config.public_key_package.verifying_shares();
        if signers.len() < self.ctx.threshold || signers.iter().any(|s| !shares.contains_key(s)) {
            return Err(SessionError::SignerSetTooSmall { signers: signers.len(), threshold: self.ctx.threshold });
        }
        let session = SessionId::derive_round(&message, epoch, &signers, round);
        let running = Running {
            session,
            message,
            signers,
            attempt: Attempt(0),
            started_ms: now_ms,
            present: BTreeSet::new(),
            quorum_ms: None,
            met: false,
            session_ms: now_ms,
            resent_ms: now_ms,
            excluded: BTreeSet::new(),
            candidates: BTreeSet::new(),
            coordinator: self.ctx.me,
            nonces: None,
            consumed: BTreeSet::new(),
            coordinating: None,
            culprits: BTreeSet::new(),
            early: Vec::new(),
            ahead: BTreeMap::new(),
            announced: None,
        };
        self.state = State::Running(Box::new(running));
        self.begin_attempt(Attempt(0), BTreeSet::new(), now_ms, out);
        Ok(())
    }

    /// Start `attempt` without `excluded`: pick the coordinator, commit if a candidate.
    fn begin_attempt(&mut self, attempt: Attempt, excluded: BTreeSet<Identifier<C>>, now_ms: u64, out: &mut Out<C>) {
        let Session { ctx, state } = self;
        let State::Running(run) = state else { return };
        let max = ctx.config.max_attempts.clamp(1, MAX_ATTEMPTS);
        if attempt.0 >= max {
            out.push(Action::Failed(SessionError::TooManyAttempts { attempts: max }));
            self.state = State::Failed;
            return;
        }
        run.attempt = attempt;
        run.started_ms = now_ms;
        run.present.clear();
        run.quorum_ms = None;
        run.candidates = run.signers.difference(&excluded).copied().collect();
        run.excluded = excluded;
        run.nonces = None;
        run.coordinating = None;
        // Whoever ended (or stalled) the previous attempt never coordinates the next
        // one: a coordinator cannot keep itself in charge by its choice of exclusions.
        let previous = (attempt.0 > 0).then_some(run.coordinator);
        let eligible: BTreeSet<Identifier<C>> = match previous {
            Some(p) if run.candidates.len() > 1 => run.candidates.iter().filter(|c| **c != p).copied().collect(),
            _ => run.candidates.clone(),
        };
        let picked = coordinator(&run.session, attempt, &eligible);
        let Some(coord) = picked.filter(|_| run.candidates.len() >= ctx.threshold) else {
            out.push(Action::Failed(SessionError::TooFewSigners {
                attempt,
                candidates: run.candidates.len(),
                threshold: ctx.threshold,
            }));
            self.state = State::Failed;
            return;
        };
        run.coordinator = coord;
        out.push(Action::NewAttempt { attempt, coordinator: coord, candidates: run.candidates.clone() });
        if coord == ctx.me {
            run.coordinating = Some(Coordinating {
                arrived: BTreeMap::new(),
                quorum_ms: None,
                package: None,
                shares: BTreeMap::new(),
                bad: BTreeSet::new(),
            });
        }
        let record = CommitmentIssued { session: run.session, attempt };
        if !run.candidates.contains(&ctx.me) || ctx.pre_restart.contains(&record) {
            return;
        }
        let (nonces, commitments) = round1::commit(ctx.config.key_package.signing_share(), &mut ctx.rng);
        run.nonces = Some((attempt, nonces));
        run.resent_ms = now_ms;
        // Durable before the commitment leaves (or, for the coordinator, is used).
        out.push(Action::Persist(record));
        // To everyone: the coordinator uses it, the others count who takes part.
        out.push(Action::Broadcast(Message::Commitment { session: run.session, attempt, commitments }));
        let me = ctx.me;
        self.seen_commitment(me, now_ms);
        if coord == me {
            self.add_commitment(me, commitments, now_ms, out);
        }
    }

    /// `from` committed to the current attempt: once t did, the attempt's timers run.
    fn seen_commitment(&mut self, from: Identifier<C>, now_ms: u64) {
        let threshold = self.ctx.threshold;
        let State::Running(run) = &mut self.state else { return };
        run.present.insert(from);
        if run.present.len() >= threshold && run.quorum_ms.is_none() {
            run.quorum_ms = Some(now_ms);
            run.met = true;
        }
    }

    /// Whether t signers committed to some attempt of this session as seen here (its
    /// timers run), or the session is not waiting at all.
    pub fn quorate(&self) -> bool {
        match &self.state {
            State::Running(r) => r.met,
            _ => true,
        }
    }

    /// How many signers this node saw commit to the current attempt (itself included).
    pub fn present(&self) -> usize {
        match &self.state {
            State::Running(r) => r.present.len(),
            _ => 0,
        }
    }

    /// How long an attempt waits for t commitments before the session fails.
    pub fn patience_ms(&self) -> u64 {
        let attempts = u64::from(self.ctx.config.max_attempts.clamp(1, MAX_ATTEMPTS));
        self.ctx.config.timeout_ms.saturating_mul(2).saturating_mul(attempts)
    }

    fn on_message(
        &mut self,
        from: Identifier<C>,
        message: Message<C>,
        now_ms: u64,
        out: &mut Out<C>,
    ) -> Result<(), SessionError> {
        let run = match &mut self.state {
            State::Idle => return Err(SessionError::NotStarted),
            State::Done(_) | State::Failed => return Err(SessionError::Finished),
            State::Running(run) => run,
        };
        let (session, attempt) = match &message {
            Message::Commitment { session, attempt, .. }
            | Message::SigningPackage { session, attempt, .. }
            | Message::Share { session, attempt, .. }
            | Message::Signature { session, attempt, .. } => (*session, *attempt),
            Message::NewAttempt { session, ended, .. } => (*session, *ended),
        };
        if session != run.session {
            return Err(SessionError::UnknownSession);
        }
        if !run.signers.contains(&from) {
            return Err(SessionError::NotACandidate);
        }
        if attempt > run.attempt && !matches!(message, Message::Signature { .. }) {
            // A peer is ahead of us (we have not seen the attempt end yet): keep it,
            // bounded per sender and in how far ahead it may be.
            let from_sender = run.early.iter().filter(|(f, _)| *f == from).count();
            if attempt.0 > run.attempt.0.saturating_add(EARLY_WINDOW) {
                let seen = run.ahead.entry(from).or_insert(attempt);
                *seen = (*seen).max(attempt);
                if let Message::NewAttempt { excluded, .. } = &message
                    && run.announced.as_ref().is_none_or(|(a, _, _)| attempt > *a)
                {
                    run.announced = Some((attempt, from, excluded.clone()));
                }
                if self.catch_up(now_ms, out) {
                    return Ok(());
                }
                return Err(SessionError::StaleAttempt { attempt, current: run_attempt(&self.state) });
            }
            if run.early.len() >= MAX_EARLY_MESSAGES || from_sender >= MAX_EARLY_PER_SENDER {
                return Err(SessionError::StaleAttempt { attempt, current: run.attempt });
            }
            run.early.push((from, message));
            // This node never saw t commit (so its timers never ran), while f + 1 peers,
            // one honest at least, commit to the next attempt already: the attempt ended
            // for them (its coordinator stalled). It moves on as they did.
            if !run.met && run.attempt.next() == Some(attempt) {
                let f = run.signers.len().saturating_sub(self.ctx.threshold);
                let moved: BTreeSet<Identifier<C>> = run
                    .early
                    .iter()
                    .filter(|(_, m)| matches!(m, Message::Commitment { attempt: a, .. } if *a == attempt))
                    .map(|(sender, _)| *sender)
                    .collect();
                if moved.len() > f {
                    let mut excluded = run.excluded.clone();
                    excluded.insert(run.coordinator);
                    let excluded = forgive_silence(excluded, run, self.ctx.threshold);
                    self.begin_attempt(attempt, excluded, now_ms, out);
                }
            }
            return Ok(());
        }
        match message {
            Message::Signature { signature, .. } => {
                self.ctx
                    .config
                    .public_key_package
                    .verifying_key()
                    .verify(&run.message, &signature)
                    .map_err(|_| SessionError::InvalidSignature)?;
                out.push(Action::Done(signature));
                self.state = State::Done(signature);
                Ok(())
            }
            Message::SigningPackage { package, .. } => self.on_package(from, attempt, package, now_ms, out),
            Message::Commitment { commitments, .. } => {
                if attempt != run.attempt {
                    return Err(SessionError::StaleAttempt { attempt, current: run.attempt });
                }
                if !run.candidates.contains(&from) {
                    return Err(SessionError::NotACandidate);
                }
                if run.present.contains(&from) {
                    return Err(SessionError::Duplicate);
                }
                self.seen_commitment(from, now_ms);
                let State::Running(run) = &self.state else { return Ok(()) };
                let Some(coord) = run.coordinating.as_ref() else {
                    // Not ours to use: it tells who takes part.
                    return Ok(());
                };
                if coord.package.is_some() {
                    // Late but honest: the package went out already.
                    return Ok(());
                }
                self.add_commitment(from, commitments, now_ms, out);
                Ok(())
            }
            Message::Share { share, .. } => {
                if attempt != run.attempt {
                    return Err(SessionError::StaleAttempt { attempt, current: run.attempt });
                }
                if run.coordinating.is_none() {
                    return Err(SessionError::NotCoordinator { attempt });
                }
                self.add_share(from, share, now_ms, out)
            }
            Message::NewAttempt { excluded, .. } => {
                if attempt != run.attempt {
                    return Err(SessionError::StaleAttempt { attempt, current: run.attempt });
                }
                if from != run.coordinator || from == self.ctx.me {
                    return Err(SessionError::WrongCoordinator { attempt });
                }
                if !excluded.is_subset(&run.signers) {
                    return Err(SessionError::InvalidPackage { attempt, reason: "exclusion of a non-signer" });
                }
                if run.signers.difference(&excluded).count() < self.ctx.threshold {
                    return Err(SessionError::InvalidPackage { attempt, reason: "exclusions leave fewer than t" });
                }
                let next = attempt.next().ok_or(SessionError::Finished)?;
                self.begin_attempt(next, excluded, now_ms, out);
                Ok(())
            }
        }
    }

    /// A node far behind its peers (it started late, or its timeouts ran slower) joins
    /// them: once `n − t + 1` peers (so one honest at least) were seen in attempts beyond
    /// the window, and one announced the end of attempt `a` at or below what they reached,
    /// with its exclusions, this node begins attempt `a + 1` as they did (that sender as
    /// the previous coordinator, those exclusions). One Byzantine peer alone moves
    /// nobody. Returns whether it jumped.
    fn catch_up(&mut self, now_ms: u64, out: &mut Out<C>) -> bool {
        let threshold = self.ctx.threshold;
        let State::Running(run) = &mut self.state else { return false };
        let f = run.signers.len().saturating_sub(threshold);
        let mut seen: Vec<Attempt> = run.ahead.values().copied().collect();
        seen.sort_unstable_by(|a, b| b.cmp(a));
        let Some(reached) = seen.get(f).copied() else { return false };
        let Some((ended, sender, excluded)) = run.announced.clone() else { return false };
        if ended > reached
            || ended.0 < run.attempt.0.saturating_add(EARLY_WINDOW)
            || !excluded.is_subset(&run.signers)
            || run.signers.difference(&excluded).count() < threshold
        {
            return false;
        }
        let Some(next) = ended.next() else { return false };
        run.coordinator = sender;
        run.early.clear();
        run.ahead.clear();
        run.announced = None;
        self.begin_attempt(next, excluded, now_ms, out);
        true
    }

    /// Signer side: answer the coordinator's package with a share, at most once.
    fn on_package(
        &mut self,
        from: Identifier<C>,
        attempt: Attempt,
        package: SigningPackage<C>,
        now_ms: u64,
        out: &mut Out<C>,
    ) -> Result<(), SessionError> {
        let Session { ctx, state } = self;
        let State::Running(run) = state else { return Err(SessionError::NotStarted) };
        if ctx.pre_restart.contains(&CommitmentIssued { session: run.session, attempt }) {
            return Err(SessionError::NoncesNotHeld { attempt });
        }
        if attempt != run.attempt {
            return Err(SessionError::StaleAttempt { attempt, current: run.attempt });
        }
        if from != run.coordinator {
            return Err(SessionError::WrongCoordinator { attempt });
        }
        if run.consumed.contains(&attempt) {
            return Err(SessionError::NoncesConsumed { attempt });
        }
        if package.message().as_slice() != run.message.as_slice() {
            return Err(SessionError::UnexpectedMessage);
        }
        let chosen = package.signing_commitments();
        if chosen.len() < ctx.threshold {
            return Err(SessionError::InvalidPackage { attempt, reason: "fewer than t commitments" });
        }
        if chosen.keys().any(|id| !run.candidates.contains(id)) {
            return Err(SessionError::InvalidPackage { attempt, reason: "commitment of a non-candidate" });
        }
        if !chosen.contains_key(&ctx.me) {
            return Err(SessionError::NotSelected { attempt });
        }
        let nonces = match run.nonces.take() {
            Some((a, n)) if a == attempt => n,
            _ => return Err(SessionError::NotSelected { attempt }),
        };
        // The nonces are gone from memory now, whatever happens below.
        run.consumed.insert(attempt);
        let share = round2::sign(&package, &nonces, &ctx.config.key_package)?;
        drop(nonces);
        if from == ctx.me {
            let me = ctx.me;
            return self.add_share(me, share, now_ms, out);
        }
        out.push(Action::Send { to: from, message: Message::Share { session: run.session, attempt, share } });
        Ok(())
    }

    /// Coordinator side: take a commitment; with every candidate's, send the package
    /// (with t of them, the grace period starts; [`Session::on_tick`] ends it).
    fn add_commitment(
        &mut self,
        from: Identifier<C>,
        commitments: SigningCommitments<C>,
        now_ms: u64,
        out: &mut Out<C>,
    ) {
        let Session { ctx, state } = self;
        let State::Running(run) = state else { return };
        let Some(coord) = run.coordinating.as_mut() else { return };
        coord.arrived.insert(from, commitments);
        if coord.arrived.len() < ctx.threshold || coord.package.is_some() {
            return;
        }
        coord.quorum_ms.get_or_insert(now_ms);
        if coord.arrived.len() == run.candidates.len() {
            self.send_package(now_ms, out);
        }
    }

    /// Coordinator side: the signing package over every commitment held, to each signer.
    fn send_package(&mut self, now_ms: u64, out: &mut Out<C>) {
        let Session { ctx, state } = self;
        let State::Running(run) = state else { return };
        let Some(coord) = run.coordinating.as_mut() else { return };
        if coord.package.is_some() || coord.arrived.len() < ctx.threshold {
            return;
        }
        let package = SigningPackage::new(coord.arrived.clone(), &run.message);
        coord.package = Some(package.clone());
        let (session, attempt, me) = (run.session, run.attempt, ctx.me);
        let chosen: Vec<Identifier<C>> = coord.arrived.keys().copied().collect();
        for id in chosen {
            if id == me {
                if let Err(error) = self.on_package(me, attempt, package.clone(), now_ms, out) {
                    out.push(Action::Refused { from: me, error });
                }
            } else {
                out.push(Action::Send {
                    to: id,
                    message: Message::SigningPackage { session, attempt, package: package.clone() },
                });
            }
        }
    }

    /// Coordinator side: verify a share on arrival; aggregate when all t are in.
    fn add_share(
        &mut self,
        from: Identifier<C>,
        share: SignatureShare<C>,
        now_ms: u64,
        out: &mut Out<C>,
    ) -> Result<(), SessionError> {
        let Session { ctx, state } = self;
        let State::Running(run) = state else { return Err(SessionError::NotStarted) };
        let attempt = run.attempt;
        let Some(coord) = run.coordinating.as_mut() else { return Err(SessionError::NotCoordinator { attempt }) };
        let Some(package) = coord.package.as_ref() else {
            return Err(SessionError::InvalidPackage { attempt, reason: "share before any signing package" });
        };
        if !package.signing_commitments().contains_key(&from) {
            return Err(SessionError::NotACandidate);
        }
        if coord.shares.contains_key(&from) || coord.bad.contains(&from) {
            return Err(SessionError::Duplicate);
        }
        let public = &ctx.config.public_key_package;
        let Some(verifying_share) = public.verifying_shares().get(&from) else {
            return Err(SessionError::NotACandidate);
        };
        if let Err(e) =
            frost_core::verify_signature_share(from, verifying_share, &share, package, public.verifying_key())
        {
            let mut culprits = e.culprits();
            if culprits.is_empty() {
                culprits.push(from);
            }
            for culprit in &culprits {
                out.push(Action::Culprit(Evidence {
                    session: run.session,
                    attempt,
                    culprit: *culprit,
                    package: package.clone(),
                    share,
                }));
            }
            run.culprits.extend(culprits.iter().copied());
            coord.bad.insert(from);
            coord.bad.extend(culprits);
        } else {
            coord.shares.insert(from, share);
        }
        // The attempt ends once every signer of the package answered, so that one
        // attempt catches every bad share in it: ending at the first would exclude one
        // culprit per attempt, and f of them would outlast the session's attempts.
        let expected = package.signing_commitments().len();
        let answered = package
            .signing_commitments()
            .keys()
            .filter(|id| coord.shares.contains_key(id) || coord.bad.contains(id))
            .count();
        if answered < expected {
            return Ok(());
        }
        if !coord.bad.is_empty() {
            let mut excluded = run.excluded.clone();
            excluded.extend(coord.bad.iter().copied());
            self.end_attempt(excluded, now_ms, out);
            return Ok(());
        }
        let signature = frost_core::aggregate(package, &coord.shares, public)?;
        // Canonical wire form (BIP340 keeps only R's x coordinate): every node then holds
        // byte-for-byte what goes on chain, and it is that form that is verified.
        let signature = Signature::deserialize(&signature.serialize()?)?;
        public.verifying_key().verify(&run.message, &signature).map_err(|_| SessionError::InvalidSignature)?;
        out.push(Action::Broadcast(Message::Signature { session: run.session, attempt, signature }));
        out.push(Action::Done(signature));
        self.state = State::Done(signature);
        Ok(())
    }

    /// Coordinator side: announce the exclusions and move to the next attempt.
    fn end_attempt(&mut self, excluded: BTreeSet<Identifier<C>>, now_ms: u64, out: &mut Out<C>) {
        let State::Running(run) = &self.state else { return };
        let excluded = forgive_silence(excluded, run, self.ctx.threshold);
        let (session, ended) = (run.session, run.attempt);
        out.push(Action::Broadcast(Message::NewAttempt { session, ended, excluded: excluded.clone() }));
        match ended.next() {
            Some(next) => self.begin_attempt(next, excluded, now_ms, out),
            None => {
                out.push(Action::Failed(SessionError::Finished));
                self.state = State::Failed;
            }
        }
    }

    fn on_tick(&mut self, now_ms: u64, out: &mut Out<C>) {
        let patience = self.patience_ms();
        let timeout = self.ctx.config.timeout_ms;
        if let State::Running(run) = &mut self.state
            && let Some(commitments) =
                run.nonces.as_ref().filter(|(a, _)| *a == run.attempt).map(|(_, n)| *n.commitments())
            && now_ms.saturating_sub(run.resent_ms) >= (timeout / 2).max(1)
        {
            run.resent_ms = now_ms;
            out.push(Action::Broadcast(Message::Commitment {
                session: run.session,
                attempt: run.attempt,
                commitments,
            }));
        }
        let State::Running(run) = &self.state else { return };
        let from_ms = match (run.quorum_ms, run.met) {
            (Some(q), _) => q,
            (None, true) => run.started_ms,
            (None, false) => {
                // Fewer than t take part yet (the others have not started: their queues
                // are longer): nobody's timer runs, so that nobody moves on without them.
                let waited = now_ms.saturating_sub(run.session_ms);
                if waited >= patience {
                    out.push(Action::Failed(SessionError::NoQuorum {
                        present: run.present.len(),
                        threshold: self.ctx.threshold,
                        waited_ms: waited,
                    }));
                    self.state = State::Failed;
                }
                return;
            }
        };
        let waited = now_ms.saturating_sub(from_ms);
        if let Some(coord) = run.coordinating.as_ref() {
            let grace = timeout / 5;
            if coord.package.is_none() && coord.quorum_ms.is_some_and(|q| now_ms.saturating_sub(q) >= grace) {
                self.send_package(now_ms, out);
                return;
            }
            if waited < timeout {
                return;
            }
            // Whoever we still wait for is unresponsive.
            let silent: Vec<Identifier<C>> = match coord.package.as_ref() {
                None => run.candidates.iter().filter(|id| !coord.arrived.contains_key(id)).copied().collect(),
                Some(p) => p
                    .signing_commitments()
                    .keys()
                    .filter(|id| !coord.shares.contains_key(id) && !coord.bad.contains(id))
                    .copied()
                    .collect(),
            };
            let mut excluded = run.excluded.clone();
            excluded.extend(silent);
            excluded.extend(coord.bad.iter().copied());
            self.end_attempt(excluded, now_ms, out);
        } else if waited >= timeout.saturating_mul(2) {
            // The coordinator stalled: replace it, and say so (a peer far behind joins
            // the attempt after the latest end it was told of, once enough are ahead).
            let mut excluded = run.excluded.clone();
            excluded.insert(run.coordinator);
            let excluded = forgive_silence(excluded, run, self.ctx.threshold);
            out.push(Action::Broadcast(Message::NewAttempt {
                session: run.session,
                ended: run.attempt,
                excluded: excluded.clone(),
            }));
            match run.attempt.next() {
                Some(next) => self.begin_attempt(next, excluded, now_ms, out),
                None => {
                    out.push(Action::Failed(SessionError::Finished));
                    self.state = State::Failed;
                }
            }
        }
    }
}

fn attempt_of<C: Ciphersuite>(m: &Message<C>) -> Attempt {
    match m {
        Message::Commitment { attempt, .. }
        | Message::SigningPackage { attempt, .. }
        | Message::Share { attempt, .. }
        | Message::Signature { attempt, .. } => *attempt,
        Message::NewAttempt { ended, .. } => *ended,
    }
}

/// Exclusions for silence are forgiven once they would leave fewer than `t`
/// candidates (a signer may have been slow, not absent); proven culprits stay out.
fn forgive_silence<C: Ciphersuite>(
    excluded: BTreeSet<Identifier<C>>,
    run: &Running<C>,
    threshold: usize,
) -> BTreeSet<Identifier<C>> {
    if run.signers.difference(&excluded).count() >= threshold { excluded } else { run.culprits.clone() }
}

/// Why bytes did not decode to a [`Message`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The version byte is not [`WIRE_VERSION`]: the peer runs another release.
    #[error("wire version {0} unsupported (this node speaks {WIRE_VERSION}): upgrade the older node")]
    UnsupportedVersion(u8),
    /// Unknown message kind.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// The bytes end early.
    #[error("message truncated")]
    Truncated,
    /// Bytes after the end of the message.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
    /// A field is longer than [`MAX_FIELD_LEN`].
    #[error("field of {0} bytes exceeds the limit")]
    TooLong(usize),
    /// An identifier list is not strictly increasing.
    #[error("identifiers not strictly increasing")]
    Unsorted,
    /// FROST refused to (de)serialize a field.
    #[error("FROST encoding: {0}")]
    Frost(String),
}

impl<C: Ciphersuite> From<frost_core::Error<C>> for WireError {
    fn from(e: frost_core::Error<C>) -> Self {
        WireError::Frost(e.to_string())
    }
}

const KIND_COMMITMENT: u8 = 1;
const KIND_PACKAGE: u8 = 2;
const KIND_SHARE: u8 = 3;
const KIND_NEW_ATTEMPT: u8 = 4;
const KIND_SIGNATURE: u8 = 5;

pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), WireError> {
    if bytes.len() > MAX_FIELD_LEN {
        return Err(WireError::TooLong(bytes.len()));
    }
    let len = u32::try_from(bytes.len()).map_err(|_| WireError::TooLong(bytes.len()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(WireError::Truncated)?;
        self.0 = rest;
        Ok(head)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let len = usize::try_from(u32::from_be_bytes(self.array()?)).map_err(|_| WireError::Truncated)?;
        if len > MAX_FIELD_LEN {
            return Err(WireError::TooLong(len));
        }
        self.take(len)
    }
}

impl<C: Ciphersuite> Message<C> {
    /// `version | kind | session (32) | attempt (u32 BE) | body`, where FROST types are
    /// in FROST's own serialization, each prefixed by its u32 BE length, and an identifier
    /// set is a u16 BE count of length-prefixed, strictly increasing identifiers.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = vec![WIRE_VERSION];
        let (kind, session, attempt) = match self {
            Message::Commitment { session, attempt, .. } => (KIND_COMMITMENT, session, attempt),
            Message::SigningPackage { session, attempt, .. } => (KIND_PACKAGE, session, attempt),
            Message::Share { session, attempt, .. } => (KIND_SHARE, session, attempt),
            Message::NewAttempt { session, ended, .. } => (KIND_NEW_ATTEMPT, session, ended),
            Message::Signature { session, attempt, .. } => (KIND_SIGNATURE, session, attempt),
        };
        out.push(kind);
        out.extend_from_slice(&session.0);
        out.extend_from_slice(&attempt.0.to_be_bytes());
        match self {
            Message::Commitment { commitments, .. } => put_bytes(&mut out, &commitments.serialize()?)?,
            Message::SigningPackage { package, .. } => put_bytes(&mut out, &package.serialize()?)?,
            Message::Share { share, .. } => put_bytes(&mut out, &share.serialize())?,
            Message::Signature { signature, .. } => put_bytes(&mut out, &signature.serialize()?)?,
            Message::NewAttempt { excluded, .. } => {
                let count = u16::try_from(excluded.len()).map_err(|_| WireError::TooLong(excluded.len()))?;
                out.extend_from_slice(&count.to_be_bytes());
                for id in excluded {
                    put_bytes(&mut out, &id.serialize())?;
                }
            }
        }
        Ok(out)
    }

    /// Decode [`Message::encode`]'s output. Never panics; refuses trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader(bytes);
        let [version, kind] = r.array::<2>()?;
        if version != WIRE_VERSION {
            return Err(WireError::UnsupportedVersion(version));
        }
        let session = SessionId(r.array()?);
        let attempt = Attempt(u32::from_be_bytes(r.array()?));
        let message = match kind {
            KIND_COMMITMENT => {
                Message::Commitment { session, attempt, commitments: SigningCommitments::deserialize(r.bytes()?)? }
            }
            KIND_PACKAGE => {
                Message::SigningPackage { session, attempt, package: SigningPackage::deserialize(r.bytes()?)? }
            }
            KIND_SHARE => Message::Share { session, attempt, share: SignatureShare::deserialize(r.bytes()?)? },
            KIND_SIGNATURE => Message::Signature { session, attempt, signature: Signature::deserialize(r.bytes()?)? },
            KIND_NEW_ATTEMPT => {
                let count = u16::from_be_bytes(r.array()?);
                let mut excluded = BTreeSet::new();
                let mut last: Option<Identifier<C>> = None;
                for _ in 0..count {
                    let id = Identifier::deserialize(r.bytes()?)?;
                    if last.is_some_and(|l| l >= id) {
                        return Err(WireError::Unsorted);
                    }
                    last = Some(id);
                    excluded.insert(id);
                }
                Message::NewAttempt { session, ended: attempt, excluded }
            }
            other => return Err(WireError::UnknownKind(other)),
        };
        if !r.0.is_empty() {
            return Err(WireError::TrailingBytes(r.0.len()));
        }
        Ok(message)
    }
}
