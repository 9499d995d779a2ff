//! Distributed key generation as a sans-IO state machine, generic over the FROST
//! ciphersuite (`frost-secp256k1` for the `evm` key, `frost-secp256k1-tr` for `btc`).
//!
//! Three message rounds around `frost_core::keys::dkg::part1..3`:
//! 1. every participant broadcasts its round-1 package (commitments + proof of knowledge);
//! 2. **echo**: once it holds all n round-1 packages, each participant broadcasts the
//!    SHA-256 of the whole set; part 2 runs only if every echo matches its own, so a
//!    participant that showed different packages to different peers cannot split the
//!    group into different keys (consistent broadcast);
//! 3. round-2 packages go to their one recipient each (the driver encrypts them to the
//!    recipient and signs them as the sender); part 3 yields the key package.
//!
//! Failures name their culprits (`InvalidProofOfKnowledge`, `InvalidSecretShare`, an
//! equivocated round-1 package); nothing here panics on peer input.

use frost_core::{
    Ciphersuite, Identifier,
    keys::{
        KeyPackage, PublicKeyPackage,
        dkg::{part1, part2, part3, round1, round2},
    },
};
use frost_secp256k1::rand_core::{CryptoRng, RngCore};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};

use crate::session::{Reader, WIRE_VERSION, WireError, put_bytes};

/// Domain tag of the round-1 echo hash.
pub const ECHO_DOMAIN: &[u8] = b"BTCFI-DKG-ECHO-v1";

/// A DKG message between participants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DkgMessage<C: Ciphersuite> {
    /// Broadcast: the sender's round-1 package.
    Round1(Box<round1::Package<C>>),
    /// Broadcast: hash of every round-1 package the sender holds (its own included).
    Echo([u8; 32]),
    /// To one recipient: its round-2 package.
    Round2(Box<round2::Package<C>>),
}

/// What the driver must do.
#[derive(Debug)]
pub enum DkgAction<C: Ciphersuite> {
    Broadcast(DkgMessage<C>),
    SendTo {
        to: Identifier<C>,
        message: DkgMessage<C>,
    },
    /// The key is ready: store the key package (encrypted at rest) and the public key
    /// package; verify it by signing a test message before marking it usable.
    Done {
        key_package: Box<KeyPackage<C>>,
        public_key_package: Box<PublicKeyPackage<C>>,
    },
    /// The DKG cannot complete; the culprits are named where the protocol can tell.
    Failed(DkgFailure<C>),
}

/// Why a DKG failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DkgFailure<C: Ciphersuite> {
    /// FROST rejected a package (e.g. `InvalidProofOfKnowledge` in part 2,
    /// `InvalidSecretShare` in part 3).
    #[error("{reason}; culprits: {culprits:?}")]
    Culprits { culprits: Vec<Identifier<C>>, reason: String },
    /// Peers hold different round-1 sets: someone equivocated. Those whose echo
    /// differs from ours are listed (a liar or its victims: run again without them).
    #[error("inconsistent round-1 broadcast; echoes differing from ours: {disagreeing:?}")]
    InconsistentBroadcast { disagreeing: Vec<Identifier<C>> },
    /// A participant sent two different messages for one step.
    #[error("participant {culprit:?} sent two different {step} messages")]
    Equivocation { culprit: Identifier<C>, step: &'static str },
    /// The local parameters are unusable (threshold, participant set).
    #[error("bad DKG parameters: {0}")]
    Parameters(String),
}

/// The echo of a full round-1 set: SHA-256 over the domain tag and each identifier and
/// serialized package, in identifier order. `None` if a package does not serialize.
pub fn round1_echo<C: Ciphersuite>(all: &BTreeMap<Identifier<C>, round1::Package<C>>) -> Option<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(ECHO_DOMAIN);
    for (id, p) in all {
        h.update(id.serialize());
        let bytes = p.serialize().ok()?;
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    }
    Some(h.finalize().into())
}

#[derive(Debug)]
enum Phase<C: Ciphersuite> {
    NotStarted,
    Round1 { secret: Box<round1::SecretPackage<C>> },
    Echo { secret: Box<round1::SecretPackage<C>>, own_echo: [u8; 32] },
    Round2 { secret: Box<round2::SecretPackage<C>> },
    Finished,
}

/// One participant's DKG.
#[derive(Debug)]
pub struct Dkg<C: Ciphersuite> {
    me: Identifier<C>,
    participants: BTreeSet<Identifier<C>>,
    threshold: u16,
    phase: Phase<C>,
    own_round1: Option<round1::Package<C>>,
    round1: BTreeMap<Identifier<C>, round1::Package<C>>,
    echoes: BTreeMap<Identifier<C>, [u8; 32]>,
    round2: BTreeMap<Identifier<C>, round2::Package<C>>,
}

impl<C: Ciphersuite> Dkg<C> {
    pub fn new(
        me: Identifier<C>,
        participants: BTreeSet<Identifier<C>>,
        threshold: u16,
    ) -> Result<Self, DkgFailure<C>> {
        if !participants.contains(&me) {
            return Err(DkgFailure::Parameters("this participant is not in the set".into()));
        }
        if threshold < 2 || usize::from(threshold) > participants.len() {
            return Err(DkgFailure::Parameters(format!("threshold {threshold} of {}", participants.len())));
        }
        Ok(Self {
            me,
            participants,
            threshold,
            phase: Phase::NotStarted,
            own_round1: None,
            round1: BTreeMap::new(),
            echoes: BTreeMap::new(),
            round2: BTreeMap::new(),
        })
    }

    fn others(&self) -> usize {
        self.participants.len().saturating_sub(1)
    }

    fn fail(&mut self, f: DkgFailure<C>) -> Vec<DkgAction<C>> {
        self.phase = Phase::Finished;
        vec![DkgAction::Failed(f)]
    }

    fn culprits(&mut self, e: frost_core::Error<C>) -> Vec<DkgAction<C>> {
        let culprits = e.culprits();
        self.fail(DkgFailure::Culprits { culprits, reason: e.to_string() })
    }

    /// Runs part 1 and broadcasts the round-1 package.
    pub fn start<R: RngCore + CryptoRng>(&mut self, rng: R) -> Vec<DkgAction<C>> {
        if !matches!(self.phase, Phase::NotStarted) {
            return vec![];
        }
        let n = u16::try_from(self.participants.len()).unwrap_or(u16::MAX);
        match part1(self.me, n, self.threshold, rng) {
            Ok((secret, package)) => {
                self.own_round1 = Some(package.clone());
                self.phase = Phase::Round1 { secret: Box::new(secret) };
                let mut out = vec![DkgAction::Broadcast(DkgMessage::Round1(Box::new(package)))];
                out.extend(self.progress());
                out
            }
            Err(e) => self.culprits(e),
        }
    }

    /// Handles a message from participant `from` (authenticated by the transport).
    pub fn handle(&mut self, from: Identifier<C>, message: DkgMessage<C>) -> Vec<DkgAction<C>> {
        if from == self.me || !self.participants.contains(&from) || matches!(self.phase, Phase::Finished) {
            return vec![];
        }
        match message {
            DkgMessage::Round1(p) => match self.round1.get(&from) {
                Some(old) if *old != *p => {
                    return self.fail(DkgFailure::Equivocation { culprit: from, step: "round-1" });
                }
                Some(_) => return vec![],
                None => {
                    self.round1.insert(from, *p);
                }
            },
            DkgMessage::Echo(h) => match self.echoes.get(&from) {
                Some(old) if *old != h => return self.fail(DkgFailure::Equivocation { culprit: from, step: "echo" }),
                Some(_) => return vec![],
                None => {
                    self.echoes.insert(from, h);
                }
            },
            DkgMessage::Round2(p) => match self.round2.get(&from) {
                Some(old) if *old != *p => {
                    return self.fail(DkgFailure::Equivocation { culprit: from, step: "round-2" });
                }
                Some(_) => return vec![],
                None => {
                    self.round2.insert(from, *p);
                }
            },
        }
        self.progress()
    }

    /// Hash of every round-1 package, our own included.
    fn echo_hash(&self) -> Option<[u8; 32]> {
        let mut all = self.round1.clone();
        all.insert(self.me, self.own_round1.clone()?);
        round1_echo(&all)
    }

    /// Moves to the next phase when what it needs has arrived.
    fn progress(&mut self) -> Vec<DkgAction<C>> {
        let mut out = Vec::new();
        loop {
            match std::mem::replace(&mut self.phase, Phase::Finished) {
                Phase::Round1 { secret } if self.round1.len() == self.others() => {
                    let Some(own_echo) = self.echo_hash() else {
                        out.extend(self.fail(DkgFailure::Parameters("round-1 package does not serialize".into())));
                        return out;
                    };
                    self.phase = Phase::Echo { secret, own_echo };
                    out.push(DkgAction::Broadcast(DkgMessage::Echo(own_echo)));
                }
                Phase::Echo { secret, own_echo } if self.echoes.len() == self.others() => {
                    let disagreeing: Vec<_> =
                        self.echoes.iter().filter(|(_, h)| **h != own_echo).map(|(id, _)| *id).collect();
                    if !disagreeing.is_empty() {
                        out.extend(self.fail(DkgFailure::InconsistentBroadcast { disagreeing }));
                        return out;
                    }
                    match part2(*secret, &self.round1) {
                        Ok((secret2, packages)) => {
                            for (to, p) in packages {
                                out.push(DkgAction::SendTo { to, message: DkgMessage::Round2(Box::new(p)) });
                            }
                            self.phase = Phase::Round2 { secret: Box::new(secret2) };
                        }
                        Err(e) => {
                            out.extend(self.culprits(e));
                            return out;
                        }
                    }
                }
                Phase::Round2 { secret } if self.round2.len() == self.others() => {
                    match part3(&secret, &self.round1, &self.round2) {
                        Ok((key_package, public_key_package)) => {
                            self.phase = Phase::Finished;
                            out.push(DkgAction::Done {
                                key_package: Box::new(key_package),
                                public_key_package: Box::new(public_key_package),
                            });
                        }
                        Err(e) => out.extend(self.culprits(e)),
                    }
                    return out;
                }
                other => {
                    self.phase = other;
                    return out;
                }
            }
        }
    }
}

const DKG_ROUND1: u8 = 1;
const DKG_ECHO: u8 = 2;
const DKG_ROUND2: u8 = 3;

impl<C: Ciphersuite> DkgMessage<C> {
    /// `version | kind | body`: a round-1 or round-2 package in FROST's serialization,
    /// prefixed by its u32 BE length, or the 32-byte echo hash.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = vec![WIRE_VERSION];
        match self {
            DkgMessage::Round1(p) => {
                out.push(DKG_ROUND1);
                put_bytes(&mut out, &p.serialize()?)?;
            }
            DkgMessage::Echo(h) => {
                out.push(DKG_ECHO);
                out.extend_from_slice(h);
            }
            DkgMessage::Round2(p) => {
                out.push(DKG_ROUND2);
                put_bytes(&mut out, &p.serialize()?)?;
            }
        }
        Ok(out)
    }

    /// Decode [`DkgMessage::encode`]'s output. Never panics; refuses trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader(bytes);
        let [version, kind] = r.array::<2>()?;
        if version != WIRE_VERSION {
            return Err(WireError::UnsupportedVersion(version));
        }
        let m = match kind {
            DKG_ROUND1 => DkgMessage::Round1(Box::new(round1::Package::deserialize(r.bytes()?)?)),
            DKG_ECHO => DkgMessage::Echo(r.array()?),
            DKG_ROUND2 => DkgMessage::Round2(Box::new(round2::Package::deserialize(r.bytes()?)?)),
            other => return Err(WireError::UnknownKind(other)),
        };
        if !r.0.is_empty() {
            return Err(WireError::TrailingBytes(r.0.len()));
        }
        Ok(m)
    }
}
