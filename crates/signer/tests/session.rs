//! Signing sessions over an in-memory network of `n` validators, seeded, for both group
//! keys: `evm` (frost-secp256k1) and `btc` (frost-secp256k1-tr). Every message crosses the
//! wire encoding, and every node's outputs are checked for persist-before-send.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use btcfi_signer::session::{
    Action, Attempt, CommitmentIssued, EARLY_WINDOW, Input, MAX_ATTEMPTS, MAX_EARLY_PER_SENDER, Message, Session,
    SessionConfig, SessionError, SessionId, coordinator,
};
use frost_core::{
    Ciphersuite, Identifier, Signature, SigningPackage,
    keys::{IdentifierList, KeyPackage, PublicKeyPackage},
    round1::SigningCommitments,
};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

type Evm = frost_secp256k1::Secp256K1Sha256;
type Btc = frost_secp256k1_tr::Secp256K1Sha256TR;

const TIMEOUT_MS: u64 = 1_000;
const TICK_MS: u64 = 100;
const EPOCH: u64 = 7;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    Honest,
    /// Crashed from the start: receives and sends nothing.
    Silent,
    /// Sends shares that do not verify.
    BadShares,
    /// Sends its commitment, then crashes for good.
    SilentAfterCommit,
}

struct Node<C: Ciphersuite> {
    session: Session<C>,
    config: SessionConfig<C>,
    /// The node's durable log of `CommitmentIssued` records.
    persisted: Vec<CommitmentIssued>,
    fault: Fault,
    committed: bool,
    done: Option<Signature<C>>,
    seed: u64,
    /// Whether its node started the session; until then peers' messages wait for it,
    /// as the daemon parks them.
    started: bool,
    parked: Vec<(Identifier<C>, Message<C>)>,
}

struct Net<C: Ciphersuite> {
    nodes: BTreeMap<Identifier<C>, Node<C>>,
    queue: VecDeque<(Identifier<C>, Identifier<C>, Vec<u8>)>,
    now: u64,
    message: Vec<u8>,
    public: PublicKeyPackage<C>,
    refusals: Vec<(Identifier<C>, Identifier<C>, SessionError)>,
    culprits: Vec<(Identifier<C>, Identifier<C>)>,
    attempts: BTreeMap<Identifier<C>, Attempt>,
    /// Deliver each signing package twice (a replaying network).
    duplicate_packages: bool,
    /// Rewrite signing packages to this message before delivery.
    forge_message: Option<Vec<u8>>,
    /// Lose this many commitments on their way to this node (the first ones sent).
    lose_commitments_to: Option<(Identifier<C>, usize)>,
}

fn keys<C: Ciphersuite>(t: u16, n: u16, seed: u64) -> (BTreeMap<Identifier<C>, KeyPackage<C>>, PublicKeyPackage<C>) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let (shares, public) =
        frost_core::keys::generate_with_dealer::<C, _>(n, t, IdentifierList::Default, &mut rng).expect("dealer");
    let packages = shares.into_iter().map(|(id, s)| (id, KeyPackage::try_from(s).expect("key package"))).collect();
    (packages, public)
}

impl<C: Ciphersuite> Net<C> {
    fn new(t: u16, n: u16, seed: u64) -> Self {
        let (packages, public) = keys::<C>(t, n, seed);
        let mut message = vec![0u8; 32];
        ChaCha20Rng::seed_from_u64(seed ^ 0xabcd).fill_bytes(&mut message);
        let nodes = packages
            .into_iter()
            .enumerate()
            .map(|(i, (id, key_package))| {
                let config = SessionConfig {
                    key_package,
                    public_key_package: public.clone(),
                    timeout_ms: TIMEOUT_MS,
                    max_attempts: MAX_ATTEMPTS,
                };
                let node_seed = seed.wrapping_mul(1000).wrapping_add(i as u64);
                let session = Session::new(config.clone(), Box::new(ChaCha20Rng::seed_from_u64(node_seed)), []);
                let node = Node {
                    session,
                    config,
                    persisted: Vec::new(),
                    fault: Fault::Honest,
                    committed: false,
                    done: None,
                    seed: node_seed,
                    started: false,
                    parked: Vec::new(),
                };
                (id, node)
            })
            .collect();
        Net {
            nodes,
            queue: VecDeque::new(),
            now: 0,
            message,
            public,
            refusals: Vec::new(),
            culprits: Vec::new(),
            attempts: BTreeMap::new(),
            duplicate_packages: false,
            forge_message: None,
            lose_commitments_to: None,
        }
    }

    fn ids(&self) -> BTreeSet<Identifier<C>> {
        self.nodes.keys().copied().collect()
    }

    fn session_id(&self) -> SessionId {
        SessionId::derive(&self.message, EPOCH, &self.ids())
    }

    fn coordinator_of_attempt0(&self) -> Identifier<C> {
        coordinator(&self.session_id(), Attempt(0), &self.ids()).expect("coordinator")
    }

    fn start_all(&mut self) {
        let ids = self.ids();
        for id in ids.clone() {
            self.start(id);
        }
    }

    fn start(&mut self, id: Identifier<C>) {
        let input = Input::Start { message: self.message.clone(), epoch: EPOCH, signers: self.ids(), round: 0 };
        let node = self.nodes.get_mut(&id).expect("node");
        node.started = true;
        let parked = std::mem::take(&mut node.parked);
        self.feed(id, input);
        for (from, message) in parked {
            self.feed(id, Input::Message { from, message });
        }
    }

    /// Rebuild `id` from its durable log only (its memory, nonces included, is lost) and
    /// start it again, as a node restarted after SIGKILL would.
    fn restart(&mut self, id: Identifier<C>) {
        let node = self.nodes.get_mut(&id).expect("node");
        let rng = ChaCha20Rng::seed_from_u64(node.seed.wrapping_add(1_000_000));
        node.session = Session::new(node.config.clone(), Box::new(rng), node.persisted.clone());
        self.start(id);
    }

    fn feed(&mut self, id: Identifier<C>, input: Input<C>) {
        let now = self.now;
        let all = self.ids();
        let node = self.nodes.get_mut(&id).expect("node");
        if node.fault == Fault::Silent || (node.fault == Fault::SilentAfterCommit && node.committed) {
            return;
        }
        if let (false, Input::Message { from, message }) = (node.started, &input) {
            node.parked.push((*from, message.clone()));
            return;
        }
        let actions = node.session.handle(input, now);
        let mut sends: Vec<(Identifier<C>, Message<C>)> = Vec::new();
        for action in actions {
            match action {
                Action::Persist(record) => node.persisted.push(record),
                Action::Send { to, message } => {
                    check_persisted(&node.persisted, &message);
                    sends.push((to, message));
                }
                Action::Broadcast(message) => {
                    check_persisted(&node.persisted, &message);
                    for to in all.iter().filter(|to| **to != id) {
                        sends.push((*to, message.clone()));
                    }
                }
                Action::NewAttempt { attempt, coordinator, candidates } => {
                    assert!(candidates.contains(&coordinator));
                    self.attempts.insert(id, attempt);
                }
                Action::Culprit(evidence) => {
                    // The evidence holds: the share really does not verify.
                    let vs = self.public.verifying_shares().get(&evidence.culprit).expect("share");
                    assert!(
                        frost_core::verify_signature_share(
                            evidence.culprit,
                            vs,
                            &evidence.share,
                            &evidence.package,
                            self.public.verifying_key()
                        )
                        .is_err()
                    );
                    self.culprits.push((id, evidence.culprit));
                }
                Action::Done(signature) => {
                    assert!(node.done.is_none(), "done twice");
                    node.done = Some(signature);
                }
                Action::Refused { from, error } => self.refusals.push((id, from, error)),
                Action::Failed(error) => panic!("session failed at {id:?}: {error}"),
            }
        }
        let node = self.nodes.get_mut(&id).expect("node");
        for (to, mut message) in sends {
            if let Message::Commitment { .. } = message {
                node.committed = true;
            }
            if let (Fault::BadShares, Message::Share { share, .. }) = (node.fault, &mut message) {
                let mut bytes = share.serialize();
                let last = bytes.last_mut().expect("non-empty");
                *last ^= 1;
                *share = frost_core::round2::SignatureShare::deserialize(&bytes).expect("still a scalar");
            }
            if let (Some(forged), Message::SigningPackage { package, .. }) = (&self.forge_message, &mut message) {
                *package = SigningPackage::new(package.signing_commitments().clone(), forged);
            }
            if let (Some((victim, left)), Message::Commitment { .. }) = (&mut self.lose_commitments_to, &message)
                && *victim == to
                && *left > 0
            {
                *left -= 1;
                continue;
            }
            let copies =
                if self.duplicate_packages && matches!(message, Message::SigningPackage { .. }) { 2 } else { 1 };
            let bytes = message.encode().expect("encode");
            assert_eq!(Message::<C>::decode(&bytes).expect("decode"), message, "wire round trip");
            for _ in 0..copies {
                self.queue.push_back((id, to, bytes.clone()));
            }
        }
    }

    /// Deliver everything, tick, repeat, until every live node has the signature.
    fn run(&mut self, max_ms: u64) {
        loop {
            while let Some((from, to, bytes)) = self.queue.pop_front() {
                let message = Message::decode(&bytes).expect("decode");
                self.feed(to, Input::Message { from, message });
            }
            if self.nodes.values().filter(|n| n.fault == Fault::Honest).all(|n| n.done.is_some()) {
                return;
            }
            assert!(self.now < max_ms, "no signature after {max_ms} ms; refusals {:?}", self.refusals);
            self.now += TICK_MS;
            for id in self.ids() {
                self.feed(id, Input::Tick);
            }
        }
    }

    /// Every honest node holds the same signature, valid under the group key.
    fn check_signed(&self) -> Signature<C> {
        let mut signature = None;
        for node in self.nodes.values().filter(|n| n.fault == Fault::Honest) {
            let s = node.done.expect("done");
            self.public.verifying_key().verify(&self.message, &s).expect("valid group signature");
            assert_eq!(node.session.signature(), Some(&s));
            if let Some(prev) = signature {
                assert_eq!(prev, s, "two signatures");
            }
            signature = Some(s);
        }
        signature.expect("a signature")
    }

    fn final_attempt(&self, id: Identifier<C>) -> Attempt {
        self.attempts.get(&id).copied().expect("attempt")
    }
}

/// A commitment may leave only once its `CommitmentIssued` record is in the durable log.
fn check_persisted<C: Ciphersuite>(log: &[CommitmentIssued], message: &Message<C>) {
    if let Message::Commitment { session, attempt, .. } = message {
        assert!(
            log.contains(&CommitmentIssued { session: *session, attempt: *attempt }),
            "commitment for {attempt:?} sent before it was persisted"
        );
    }
}

fn all_honest<C: Ciphersuite>(t: u16, n: u16) {
    let mut net = Net::<C>::new(t, n, 1);
    net.start_all();
    net.run(60_000);
    net.check_signed();
    // Nobody was blamed, one attempt sufficed.
    assert!(net.culprits.is_empty());
    assert!(net.attempts.values().all(|a| *a == Attempt(0)));
}

fn one_silent<C: Ciphersuite>(t: u16, n: u16) {
    let mut net = Net::<C>::new(t, n, 2);
    let coord = net.coordinator_of_attempt0();
    let victim = *net.ids().iter().find(|id| **id != coord).expect("victim");
    net.nodes.get_mut(&victim).expect("victim").fault = Fault::Silent;
    net.start_all();
    net.run(60_000);
    net.check_signed();
    assert!(net.nodes.get(&victim).expect("victim").persisted.is_empty());
}

fn silent_after_commit<C: Ciphersuite>(t: u16, n: u16) {
    let mut net = Net::<C>::new(t, n, 3);
    let coord = net.coordinator_of_attempt0();
    // The first non-coordinator in start order commits first, so it is in the package.
    let victim = *net.ids().iter().find(|id| **id != coord).expect("victim");
    net.nodes.get_mut(&victim).expect("victim").fault = Fault::SilentAfterCommit;
    net.start_all();
    net.run(60_000);
    net.check_signed();
    assert!(net.final_attempt(coord) > Attempt(0), "completed in a later attempt");
}

fn bad_shares<C: Ciphersuite>(t: u16, n: u16) {
    let mut net = Net::<C>::new(t, n, 4);
    let coord = net.coordinator_of_attempt0();
    let cheater = *net.ids().iter().find(|id| **id != coord).expect("cheater");
    net.nodes.get_mut(&cheater).expect("cheater").fault = Fault::BadShares;
    net.start_all();
    net.run(60_000);
    net.check_signed();
    assert!(!net.culprits.is_empty());
    assert!(net.culprits.iter().all(|(_, c)| *c == cheater), "only the cheater is blamed: {:?}", net.culprits);
    assert!(net.final_attempt(coord) > Attempt(0));
}

fn coordinator_silent<C: Ciphersuite>(t: u16, n: u16) {
    let mut net = Net::<C>::new(t, n, 5);
    let coord = net.coordinator_of_attempt0();
    net.nodes.get_mut(&coord).expect("coord").fault = Fault::Silent;
    net.start_all();
    net.run(60_000);
    net.check_signed();
    let other = *net.ids().iter().find(|id| **id != coord).expect("other");
    let last = net.final_attempt(other);
    assert!(last > Attempt(0));
    let candidates: BTreeSet<_> = net.ids().into_iter().filter(|id| *id != coord).collect();
    assert_ne!(coordinator(&net.session_id(), last, &candidates), Some(coord));
}

fn restart_between_commitment_and_share<C: Ciphersuite>(t: u16, n: u16) {
    let mut net = Net::<C>::new(t, n, 6);
    let coord = net.coordinator_of_attempt0();
    let victim = *net.ids().iter().find(|id| **id != coord).expect("victim");
    net.start_all();
    // The victim's commitment for attempt 0 is persisted and queued; it now dies and is
    // rebuilt from its durable log before the signing package reaches it.
    let session = net.session_id();
    let record = CommitmentIssued { session, attempt: Attempt(0) };
    assert_eq!(net.nodes.get(&victim).expect("victim").persisted, vec![record]);
    net.restart(victim);
    net.run(60_000);
    net.check_signed();
    let refused: Vec<_> = net
        .refusals
        .iter()
        .filter(|(at, from, e)| {
            *at == victim && *from == coord && *e == SessionError::NoncesNotHeld { attempt: Attempt(0) }
        })
        .collect();
    assert_eq!(refused.len(), 1, "the restarted signer refused the old attempt: {:?}", net.refusals);
    // It never committed to attempt 0 again.
    let log = &net.nodes.get(&victim).expect("victim").persisted;
    assert_eq!(log.iter().filter(|r| **r == record).count(), 1);
    assert!(net.final_attempt(coord) > Attempt(0));
}

fn second_package_refused<C: Ciphersuite>(t: u16, n: u16) {
    let mut net = Net::<C>::new(t, n, 8);
    net.duplicate_packages = true;
    net.start_all();
    net.run(60_000);
    net.check_signed();
    let consumed = net.refusals.iter().filter(|(_, _, e)| matches!(e, SessionError::NoncesConsumed { .. })).count();
    // The package goes to every candidate that committed (t..=n of them, the coordinator
    // included); each one refuses the replayed copy.
    assert!(
        (usize::from(t) - 1..=usize::from(n) - 1).contains(&consumed),
        "every replayed package refused: {consumed} {:?}",
        net.refusals
    );
}

fn forged_message_refused<C: Ciphersuite>(t: u16, n: u16) {
    let mut net = Net::<C>::new(t, n, 9);
    net.forge_message = Some(vec![0x42; 32]);
    net.start_all();
    // Deliver attempt 0 only: every signer refuses the package for a message it never started.
    while let Some((from, to, bytes)) = net.queue.pop_front() {
        let message = Message::decode(&bytes).expect("decode");
        net.feed(to, Input::Message { from, message });
    }
    let unexpected = net.refusals.iter().filter(|(_, _, e)| *e == SessionError::UnexpectedMessage).count();
    // Every candidate committed at once, so the package went to all of them.
    assert_eq!(unexpected, usize::from(n) - 1, "{:?}", net.refusals);
    assert!(net.nodes.values().all(|n| n.done.is_none()));
}

macro_rules! for_both_keys {
    ($name:ident, $t:expr, $n:expr) => {
        mod $name {
            #[test]
            fn evm() {
                super::$name::<super::Evm>($t, $n);
            }
            #[test]
            fn btc() {
                super::$name::<super::Btc>($t, $n);
            }
        }
    };
    ($name:ident) => {
        mod $name {
            #[test]
            fn evm_3_of_4() {
                super::$name::<super::Evm>(3, 4);
            }
            #[test]
            fn btc_3_of_4() {
                super::$name::<super::Btc>(3, 4);
            }
            #[test]
            fn evm_5_of_7() {
                super::$name::<super::Evm>(5, 7);
            }
            #[test]
            fn btc_5_of_7() {
                super::$name::<super::Btc>(5, 7);
            }
        }
    };
}

for_both_keys!(all_honest);
for_both_keys!(one_silent);
for_both_keys!(silent_after_commit);
for_both_keys!(bad_shares);
for_both_keys!(coordinator_silent);
for_both_keys!(restart_between_commitment_and_share);
for_both_keys!(second_package_refused, 3, 4);
for_both_keys!(forged_message_refused, 3, 4);

/// Two faults at once in (5,7): n - t = 2 exclusions still leave t honest signers.
#[test]
fn two_faults_5_of_7() {
    let mut net = Net::<Btc>::new(5, 7, 10);
    let coord = net.coordinator_of_attempt0();
    let mut others = net.ids().into_iter().filter(|id| *id != coord);
    let a = others.next().expect("a");
    let b = others.next().expect("b");
    net.nodes.get_mut(&a).expect("a").fault = Fault::BadShares;
    net.nodes.get_mut(&b).expect("b").fault = Fault::SilentAfterCommit;
    net.start_all();
    net.run(60_000);
    net.check_signed();
    assert!(net.final_attempt(coord).0 <= 7 - 5, "within n - t + 1 attempts");
}

#[test]
fn package_before_start_is_refused() {
    let (packages, public) = keys::<Evm>(3, 4, 11);
    let mut iter = packages.into_iter();
    let (id, key_package) = iter.next().expect("one");
    let (other, _) = iter.next().expect("two");
    let config =
        SessionConfig { key_package, public_key_package: public, timeout_ms: TIMEOUT_MS, max_attempts: MAX_ATTEMPTS };
    let mut session = Session::new(config, Box::new(ChaCha20Rng::seed_from_u64(1)), []);
    let package = SigningPackage::new(BTreeMap::new(), &[1; 32]);
    let actions = session.handle(
        Input::Message {
            from: other,
            message: Message::SigningPackage { session: SessionId([0; 32]), attempt: Attempt(0), package },
        },
        0,
    );
    assert!(matches!(actions.as_slice(), [Action::Refused { error: SessionError::NotStarted, .. }]));
    // Too short a message is refused at start.
    let signers: BTreeSet<_> = [id, other].into_iter().collect();
    let actions = session.handle(Input::Start { message: vec![1; 31], epoch: 0, signers, round: 0 }, 0);
    assert!(matches!(actions.as_slice(), [Action::Refused { error: SessionError::MessageTooShort { len: 31 }, .. }]));
}

fn sample_messages<C: Ciphersuite>() -> Vec<Vec<u8>> {
    let mut net = Net::<C>::new(3, 4, 12);
    net.start_all();
    let mut seen: Vec<Vec<u8>> = net.queue.iter().map(|(_, _, b)| b.clone()).collect();
    net.run(60_000);
    let sig = net.check_signed();
    let session = net.session_id();
    let excluded: BTreeSet<_> = net.ids().into_iter().take(2).collect();
    seen.push(Message::NewAttempt { session, ended: Attempt(3), excluded }.encode().expect("encode"));
    seen.push(Message::Signature { session, attempt: Attempt(0), signature: sig }.encode().expect("encode"));
    seen
}

fn decode_never_panics<C: Ciphersuite>() {
    let samples = sample_messages::<C>();
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    for sample in &samples {
        assert!(Message::<C>::decode(sample).is_ok());
        // Every truncation fails cleanly, as does any trailing byte.
        for cut in 0..sample.len() {
            assert!(Message::<C>::decode(sample.get(..cut).expect("prefix")).is_err());
        }
        let mut longer = sample.clone();
        longer.push(0);
        assert!(Message::<C>::decode(&longer).is_err());
        // Random byte flips: any result, never a panic.
        for _ in 0..200 {
            let mut m = sample.clone();
            let i = (rng.next_u32() as usize) % m.len();
            m[i] ^= (rng.next_u32() as u8) | 1;
            let _ = Message::<C>::decode(&m);
        }
    }
    // Random bytes, with a valid header half of the time.
    for round in 0..5_000 {
        let len = (rng.next_u32() % 400) as usize;
        let mut m = vec![0u8; len];
        rng.fill_bytes(&mut m);
        if round % 2 == 0 && m.len() >= 2 {
            m[0] = 1;
            m[1] = (rng.next_u32() % 6) as u8;
        }
        let _ = Message::<C>::decode(&m);
    }
    // A huge declared length is refused without allocating.
    let mut m = vec![1u8, 1];
    m.extend_from_slice(&[0; 36]);
    m.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(Message::<C>::decode(&m).is_err());
}

#[test]
fn decode_never_panics_evm() {
    decode_never_panics::<Evm>();
}

#[test]
fn decode_never_panics_btc() {
    decode_never_panics::<Btc>();
}

#[test]
fn session_id_binds_message_epoch_and_signers() {
    let ids: BTreeSet<Identifier<Evm>> = (1..=4u16).map(|i| Identifier::try_from(i).expect("id")).collect();
    let fewer: BTreeSet<_> = ids.iter().copied().take(3).collect();
    let a = SessionId::derive(&[1; 32], 1, &ids);
    assert_eq!(a, SessionId::derive(&[1; 32], 1, &ids));
    assert_ne!(a, SessionId::derive(&[2; 32], 1, &ids));
    assert_ne!(a, SessionId::derive(&[1; 32], 2, &ids));
    assert_ne!(a, SessionId::derive(&[1; 32], 1, &fewer));
    // Each retry round of the same message is another session; round 0 is the original.
    assert_eq!(a, SessionId::derive_round(&[1; 32], 1, &ids, 0));
    let rounds: BTreeSet<_> = (0..16).map(|r| SessionId::derive_round(&[1; 32], 1, &ids, r)).collect();
    assert_eq!(rounds.len(), 16);
    // The coordinator rotates across attempts.
    let coords: BTreeSet<_> = (0..32).map(|i| coordinator(&a, Attempt(i), &ids).expect("some")).collect();
    assert!(coords.len() > 1);
    assert_eq!(coordinator::<Evm>(&a, Attempt(0), &BTreeSet::new()), None);
}

/// On its own, a node's first outputs are: the attempt, the durable record, and only then
/// the commitment (the coordinator keeps its own commitment local, after the record).
#[test]
fn start_persists_before_the_commitment_leaves() {
    let (packages, public) = keys::<Evm>(3, 4, 13);
    let signers: BTreeSet<_> = packages.keys().copied().collect();
    let message = vec![9u8; 32];
    let session = SessionId::derive(&message, EPOCH, &signers);
    let coord = coordinator(&session, Attempt(0), &signers).expect("coordinator");
    for (id, key_package) in packages {
        let config = SessionConfig {
            key_package,
            public_key_package: public.clone(),
            timeout_ms: TIMEOUT_MS,
            max_attempts: MAX_ATTEMPTS,
        };
        let mut node = Session::new(config, Box::new(ChaCha20Rng::seed_from_u64(5)), []);
        let actions =
            node.handle(Input::Start { message: message.clone(), epoch: EPOCH, signers: signers.clone(), round: 0 }, 0);
        let record = CommitmentIssued { session, attempt: Attempt(0) };
        let persist = actions.iter().position(|a| matches!(a, Action::Persist(r) if *r == record));
        let send = actions.iter().position(|a| matches!(a, Action::Broadcast(Message::Commitment { .. })));
        assert!(matches!(actions.first(), Some(Action::NewAttempt { coordinator, .. }) if *coordinator == coord));
        // Every candidate (the coordinator too) tells everyone, once it is durable.
        assert_eq!((persist, send), (Some(1), Some(2)), "{id:?}");
        assert_eq!(node.session_id(), Some(session));
        assert_eq!(node.attempt(), Some(Attempt(0)));
    }
}

/// The `NewAttempt` of the attempt-0 coordinator, as `other` receives it, with `excluded`.
fn new_attempt_at(excluded: &BTreeSet<Identifier<Evm>>) -> (Identifier<Evm>, Vec<Action<Evm>>) {
    let mut net = Net::<Evm>::new(3, 4, 13);
    net.start_all();
    let coord = net.coordinator_of_attempt0();
    let other = *net.ids().iter().find(|id| **id != coord).expect("other");
    let message = Message::NewAttempt { session: net.session_id(), ended: Attempt(0), excluded: excluded.clone() };
    let node = net.nodes.get_mut(&other).expect("other");
    (coord, node.session.handle(Input::Message { from: coord, message }, 10))
}

#[test]
fn a_coordinator_never_keeps_itself_in_charge_and_never_leaves_fewer_than_t() {
    let ids: Vec<Identifier<Evm>> = Net::<Evm>::new(3, 4, 13).ids().into_iter().collect();
    // Every exclusion set a coordinator may announce: none makes it coordinate again.
    let mut tried = 0;
    for mask in 0u32..16 {
        let excluded: BTreeSet<_> =
            ids.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, id)| *id).collect();
        let (coord, actions) = new_attempt_at(&excluded);
        if ids.len() - excluded.len() < 3 {
            assert!(
                actions.iter().any(|a| matches!(a, Action::Refused { error: SessionError::InvalidPackage { .. }, .. })),
                "exclusions {excluded:?} leave fewer than t: {actions:?}"
            );
            assert!(!actions.iter().any(|a| matches!(a, Action::NewAttempt { .. })));
            continue;
        }
        let next = actions.iter().find_map(|a| match a {
            Action::NewAttempt { attempt, coordinator, .. } => Some((*attempt, *coordinator)),
            _ => None,
        });
        let (attempt, next_coord) = next.unwrap_or_else(|| panic!("no new attempt for {excluded:?}: {actions:?}"));
        assert_eq!(attempt, Attempt(1));
        assert_ne!(next_coord, coord, "the coordinator of attempt 0 chose {excluded:?} and stays in charge");
        tried += 1;
    }
    assert_eq!(tried, 5, "the full set and each single exclusion");
}

#[test]
fn messages_far_ahead_or_a_flood_from_one_peer_are_not_kept() {
    let mut net = Net::<Evm>::new(3, 4, 14);
    net.start_all();
    let session = net.session_id();
    // A real commitment (from the queue), re-labelled for later attempts.
    let (sender, commitments) = net
        .queue
        .iter()
        .find_map(|(from, _, b)| match Message::<Evm>::decode(b).expect("decode") {
            Message::Commitment { commitments, .. } => Some((*from, commitments)),
            _ => None,
        })
        .expect("a commitment");
    let receiver = *net.ids().iter().find(|id| **id != sender).expect("receiver");
    let commit = |attempt: u32| Message::Commitment { session, attempt: Attempt(attempt), commitments };
    let node = net.nodes.get_mut(&receiver).expect("receiver");
    let refused = |actions: &[Action<Evm>]| {
        actions.iter().any(|a| matches!(a, Action::Refused { error: SessionError::StaleAttempt { .. }, .. }))
    };
    let far = node.session.handle(Input::Message { from: sender, message: commit(1 + EARLY_WINDOW) }, 10);
    assert!(refused(&far), "an attempt beyond the window is not kept: {far:?}");
    for i in 0..MAX_EARLY_PER_SENDER {
        let kept = node.session.handle(Input::Message { from: sender, message: commit(1) }, 10);
        assert!(!refused(&kept), "message {i} within the per-sender bound: {kept:?}");
    }
    let flood = node.session.handle(Input::Message { from: sender, message: commit(1) }, 10);
    assert!(refused(&flood), "one sender cannot fill the buffer: {flood:?}");
    // One peer announcing attempts far ahead moves nobody (n − t + 1 = 2 must be seen).
    let far_end = Message::NewAttempt { session, ended: Attempt(20), excluded: BTreeSet::new() };
    let moved = node.session.handle(Input::Message { from: sender, message: far_end }, 10);
    assert!(refused(&moved), "{moved:?}");
    assert_eq!(node.session.attempt(), Some(Attempt(0)), "a lone peer cannot push a session on");
}

/// A node that never saw t commit (its commitments were lost, or it came late) while
/// f + 1 peers, one honest at least, already commit to the next attempt: it follows them
/// there. One peer alone moves it nowhere.
#[test]
fn a_node_that_never_saw_t_commit_follows_f_plus_one_peers_into_the_next_attempt() {
    let mut net = Net::<Evm>::new(3, 4, 16);
    net.start_all();
    let session = net.session_id();
    let mut commitments: Vec<(Identifier<Evm>, SigningCommitments<Evm>)> = Vec::new();
    for (from, _, b) in &net.queue {
        if let Message::Commitment { commitments: c, .. } = Message::<Evm>::decode(b).expect("decode")
            && !commitments.iter().any(|(f, _)| f == from)
        {
            commitments.push((*from, c));
        }
    }
    let receiver = *net.ids().iter().find(|id| commitments.iter().filter(|(f, _)| f != *id).count() >= 2).expect("r");
    let peers: Vec<_> = commitments.into_iter().filter(|(f, _)| *f != receiver).take(2).collect();
    let node = net.nodes.get_mut(&receiver).expect("receiver");
    let next = |c: SigningCommitments<Evm>| Message::Commitment { session, attempt: Attempt(1), commitments: c };
    node.session.handle(Input::Message { from: peers[0].0, message: next(peers[0].1) }, 10);
    assert_eq!(node.session.attempt(), Some(Attempt(0)), "one peer alone moves nobody");
    let moved = node.session.handle(Input::Message { from: peers[1].0, message: next(peers[1].1) }, 20);
    assert_eq!(node.session.attempt(), Some(Attempt(1)), "f + 1 = 2 peers in the next attempt: {moved:?}");
    assert!(moved.iter().any(|a| matches!(a, Action::NewAttempt { attempt: Attempt(1), .. })));
    // Their commitments count there.
    assert!(node.session.present() >= 2, "{}", node.session.present());
}

/// The coordinator loses two of the commitments sent to it (its loop too busy to take
/// them in time), so that it sees fewer than t while the others see everyone. Each
/// signer sends its commitment again every half timeout until a package uses it: the
/// coordinator reaches t and the session signs in its first attempt. Before, the
/// coordinator waited alone until the others replaced it.
#[test]
fn a_coordinator_that_lost_commitments_gets_them_again_and_signs_in_the_first_attempt() {
    let mut net = Net::<Evm>::new(3, 4, 18);
    let coord = net.coordinator_of_attempt0();
    net.lose_commitments_to = Some((coord, 2));
    net.start_all();
    net.run(60_000);
    net.check_signed();
    assert!(net.attempts.values().all(|a| *a == Attempt(0)), "{:?}", net.attempts);
}

/// A signer restarts between its commitment and its share while another is away for
/// good: the restarted one is excluded, which leaves only two live candidates of the
/// three needed in the next attempt. That attempt must time out (the session met its
/// quorum before, so its timers run) for the silence to be forgiven; the restarted
/// signer then commits afresh and the session signs. With timers waiting for t in
/// every attempt, it waited for its whole patience and failed instead.
#[test]
fn a_restarted_signer_with_another_away_is_forgiven_in_a_later_attempt_and_signs() {
    let mut net = Net::<Evm>::new(3, 4, 17);
    let coord = net.coordinator_of_attempt0();
    let mut others = net.ids().into_iter().filter(|id| *id != coord);
    let (victim, away) = (others.next().expect("victim"), others.next().expect("away"));
    net.nodes.get_mut(&away).expect("away").fault = Fault::Silent;
    net.start_all();
    net.restart(victim);
    net.run(60_000);
    net.check_signed();
    assert!(net.final_attempt(coord) >= Attempt(2), "signed after the forgiving attempt: {:?}", net.attempts);
}

/// Alone (nobody else ever starts), a session does not burn attempts: it waits in its
/// first attempt, one commitment issued, and fails once its patience is spent, so that
/// the node retries it as a new round. Before, it timed out attempt after attempt alone.
#[test]
fn a_session_whose_signers_never_come_fails_after_its_patience_without_burning_attempts() {
    let (packages, public) = keys::<Evm>(3, 4, 15);
    let signers: BTreeSet<_> = packages.keys().copied().collect();
    let (_, key_package) = packages.into_iter().next().expect("one");
    let config =
        SessionConfig { key_package, public_key_package: public, timeout_ms: TIMEOUT_MS, max_attempts: MAX_ATTEMPTS };
    let mut session = Session::new(config, Box::new(ChaCha20Rng::seed_from_u64(2)), []);
    let patience = session.patience_ms();
    assert_eq!(patience, u64::from(MAX_ATTEMPTS) * 2 * TIMEOUT_MS);
    let mut actions = session.handle(Input::Start { message: vec![9; 32], epoch: EPOCH, signers, round: 0 }, 0);
    let mut now = 0;
    let (mut attempts, mut persisted) = (0u32, 0u32);
    loop {
        for a in &actions {
            match a {
                Action::NewAttempt { .. } => attempts += 1,
                Action::Persist(_) => persisted += 1,
                Action::Failed(e) => {
                    assert!(
                        matches!(e, SessionError::NoQuorum { present: 1, threshold: 3, waited_ms } if *waited_ms >= patience),
                        "{e}"
                    );
                    assert!(now >= patience, "failed before its patience: {now} ms");
                    assert_eq!((attempts, persisted), (1, 1), "one attempt, one commitment");
                    return;
                }
                _ => {}
            }
        }
        assert!(!session.quorate());
        now += TICK_MS;
        assert!(now < 2 * patience, "still running after {now} ms");
        actions = session.handle(Input::Tick, now);
    }
}

/// Signers start one session far apart (their queues drained at different speeds): one
/// at once, another ten timeouts later, a third twenty, and the fourth never. Those who
/// came first wait in the first attempt rather than time it out alone, and the session
/// signs in that attempt once the third arrives (or the next, if the absent one was to
/// coordinate it). Before, the first had moved many attempts
/// on by then, the second could not follow one peer alone (n − t + 1 must be seen ahead),
/// their attempts never met and the session ran out of attempts.
#[test]
fn signers_that_start_far_apart_meet_in_the_first_attempt() {
    let mut net = Net::<Evm>::new(3, 4, 21);
    let ids: Vec<Identifier<Evm>> = net.ids().into_iter().collect();
    net.nodes.get_mut(&ids[3]).expect("absent").fault = Fault::Silent;
    net.start(ids[0]);
    let late = [(ids[1], 10 * TIMEOUT_MS), (ids[2], 20 * TIMEOUT_MS)];
    loop {
        while let Some((from, to, bytes)) = net.queue.pop_front() {
            let message = Message::decode(&bytes).expect("decode");
            net.feed(to, Input::Message { from, message });
        }
        if ids[..3].iter().all(|id| net.nodes[id].done.is_some()) {
            break;
        }
        assert!(net.now < 60 * TIMEOUT_MS, "no signature; attempts {:?}", net.attempts);
        net.now += TICK_MS;
        for (id, at) in late {
            if net.now == at {
                net.start(id);
            }
        }
        for id in net.ids() {
            if net.nodes[&id].session.session_id().is_some() {
                net.feed(id, Input::Tick);
            }
        }
    }
    net.check_signed();
    // The first attempt, or the second if the absent one was to coordinate the first.
    let want = if net.coordinator_of_attempt0() == ids[3] { Attempt(1) } else { Attempt(0) };
    for id in &ids[..3] {
        assert_eq!(net.final_attempt(*id), want, "nobody moved on alone: {:?}", net.attempts);
    }
}

/// Every bad share of an attempt is caught in that attempt: f = 3 signers of (7,10)
/// sending bad shares are all excluded when attempt 0 ends, and attempt 1 signs. (Ending
/// at the first bad share excluded one culprit per attempt: at n = 100 the 33 culprits
/// outlasted the session's attempts, and no round ever signed.)
#[test]
fn one_attempt_excludes_every_bad_share_in_it() {
    let mut net = Net::<Evm>::new(7, 10, 21);
    let coord = net.coordinator_of_attempt0();
    let bad: Vec<_> = net.ids().into_iter().filter(|id| *id != coord).take(3).collect();
    for id in &bad {
        net.nodes.get_mut(id).expect("bad").fault = Fault::BadShares;
    }
    net.start_all();
    net.run(60_000);
    net.check_signed();
    assert_eq!(net.final_attempt(coord).0, 1, "attempt 0 caught all three, attempt 1 signed");
}
