//! Unit and property tests of the state machine.

use super::*;
use crate::persist::Change;
use btcfi_types::{Attestation, AttestationKind, ChainId, Digest, EventId, EvmAddress, Sats, TxHash};
use proptest::prelude::*;

const EPOCH: Epoch = Epoch(7);
type Core = Consensus<InsecureTestSigner, InsecureTestCrypto>;

fn attestation(event_no: u32, amount: u64) -> Attestation {
    Attestation {
        event: EventId::new(ChainId::BITCOIN, TxHash([0x42; 32]), event_no),
        kind: AttestationKind::PegIn {
            dest_chain: ChainId::ETHEREUM,
            recipient: EvmAddress([9; 20]),
            amount: Sats(amount),
        },
    }
}

struct Fixture {
    crypto: InsecureTestCrypto,
    n: u16,
}

impl Fixture {
    fn new(n: u16) -> Self {
        Self { crypto: InsecureTestCrypto::new(1, n), n }
    }
    fn config(&self, own: u16) -> Config {
        Config::new(EPOCH, self.n, ValidatorIndex(own))
    }
    fn node(&self, own: u16) -> Core {
        self.node_with(self.config(own))
    }
    fn node_with(&self, config: Config) -> Core {
        let signer = self.crypto.signer(config.own_index);
        Consensus::new(config, signer, self.crypto.clone()).unwrap()
    }
    fn restore(&self, config: Config, state: &PersistedState) -> Core {
        let signer = self.crypto.signer(config.own_index);
        Consensus::restore(config, signer, self.crypto.clone(), state).unwrap()
    }
    fn vote_for(&self, v: u16, event: EventId, digest: Digest) -> Vote {
        Vote::sign(EPOCH, event, digest, ValidatorIndex(v), &self.crypto.signer(ValidatorIndex(v)))
    }
    fn vote(&self, v: u16, a: &Attestation) -> Vote {
        self.vote_for(v, a.event, a.digest())
    }
    fn certificate(&self, a: &Attestation, signers: impl IntoIterator<Item = u16>) -> Certificate {
        Certificate {
            epoch: EPOCH,
            event: a.event,
            digest: a.digest(),
            signatures: signers
                .into_iter()
                .map(|v| ValidatorSignature { validator: ValidatorIndex(v), signature: self.vote(v, a).signature })
                .collect(),
        }
    }
}

/// Checks the ordering contract and returns the actions.
fn checked(actions: Vec<Action>) -> Vec<Action> {
    let persists: Vec<usize> =
        actions.iter().enumerate().filter(|(_, a)| matches!(a, Action::Persist(_))).map(|(i, _)| i).collect();
    assert!(persists.is_empty() || persists == [0], "Persist must be first and unique: {actions:?}");
    actions
}

fn run(core: &mut Core, input: Input, now: Millis) -> Vec<Action> {
    checked(core.handle(input, now))
}

fn certified(actions: &[Action]) -> Vec<Certificate> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Certified { certificate, .. } => Some(certificate.clone()),
            _ => None,
        })
        .collect()
}

fn changes(actions: &[Action]) -> Vec<Change> {
    match actions.first() {
        Some(Action::Persist(d)) => d.changes.clone(),
        _ => Vec::new(),
    }
}

fn broadcasts_vote(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Broadcast(Message::Vote(_))))
}

// ---- quorum ---------------------------------------------------------------------------

#[test]
fn quorum_exactly_at_q_not_at_q_minus_one() {
    for n in 1..=20u16 {
        let fx = Fixture::new(n);
        let q = quorum(n);
        let a = attestation(1, 1000);

        // Own observation first, then peers one by one: certified with the q-th vote.
        let mut core = fx.node(0);
        let mut acts = run(&mut core, Input::Observed(a.clone()), 0);
        for (count, peer) in (2..=q).zip(1u16..) {
            assert!(certified(&acts).is_empty(), "n={n}: certified with {} votes", count - 1);
            acts = run(&mut core, Input::Vote(fx.vote(peer, &a)), 1);
        }
        let certs = certified(&acts);
        assert_eq!(certs.len(), 1, "n={n}: not certified at q={q}");
        assert_eq!(certs[0].signatures.len(), q);
        assert_eq!(certs[0].verify(EPOCH, n, &fx.crypto).unwrap(), certs[0]);
        assert_eq!(core.status(&a.event), EventStatus::Certified { digest: a.digest() });

        // q-1 peer votes and no observation: pending, not certified. The observation then
        // completes the quorum. With only q-2 peers it does not.
        let mut core = fx.node(0);
        for peer in 1..q as u16 {
            assert!(certified(&run(&mut core, Input::Vote(fx.vote(peer, &a)), 0)).is_empty());
        }
        let mut short = fx.node(0);
        for peer in 1..(q as u16).saturating_sub(1) {
            run(&mut short, Input::Vote(fx.vote(peer, &a)), 0);
        }
        if q >= 2 {
            assert!(certified(&run(&mut short, Input::Observed(a.clone()), 0)).is_empty(), "n={n} at q-1");
        }
        assert_eq!(certified(&run(&mut core, Input::Observed(a.clone()), 0)).len(), 1, "n={n}");

        // q peer votes without own observation never certify.
        if usize::from(n) > q {
            let mut core = fx.node(0);
            for peer in 1..=q as u16 {
                assert!(certified(&run(&mut core, Input::Vote(fx.vote(peer, &a)), 0)).is_empty());
            }
            assert_eq!(core.status(&a.event), EventStatus::Pending { votes: q });
        }
    }
}

#[test]
fn certification_persists_before_announcing() {
    let fx = Fixture::new(4);
    let a = attestation(1, 5);
    let mut core = fx.node(0);
    let acts = run(&mut core, Input::Observed(a.clone()), 0);
    assert!(matches!(changes(&acts).as_slice(), [Change::OwnVote(r)] if r.attestation == a));
    assert!(broadcasts_vote(&acts));
    run(&mut core, Input::Vote(fx.vote(1, &a)), 0);
    let acts = run(&mut core, Input::Vote(fx.vote(2, &a)), 0);
    let ch = changes(&acts);
    assert!(matches!(ch.as_slice(), [Change::PeerVote(_), Change::Certified(r)] if r.attestation == a));
    assert!(acts.iter().any(|x| matches!(x, Action::Broadcast(Message::Certificate(_)))));
}

// ---- equivocation ---------------------------------------------------------------------

#[test]
fn equivocation_is_recorded_and_stops_counting() {
    let fx = Fixture::new(4);
    let a = attestation(1, 5);
    let b = attestation(1, 6);
    let mut core = fx.node(0);
    run(&mut core, Input::Observed(a.clone()), 0);
    assert!(!changes(&run(&mut core, Input::Vote(fx.vote(1, &a)), 0)).is_empty());
    let acts = run(&mut core, Input::Vote(fx.vote(1, &b)), 0);
    let evidence = Equivocation { first: fx.vote(1, &a), second: fx.vote(1, &b) };
    assert!(acts.contains(&Action::Equivocation(evidence.clone())));
    assert_eq!(changes(&acts), [Change::Evidence(evidence.clone())]);
    assert!(evidence.verify(&fx.crypto));
    assert_eq!(core.evidence().collect::<Vec<_>>(), [&evidence]);
    assert_eq!(core.stats().equivocations, 1);
    // Replays of either vote, or a third digest, change nothing.
    assert!(run(&mut core, Input::Vote(fx.vote(1, &a)), 0).is_empty());
    assert!(run(&mut core, Input::Vote(fx.vote(1, &b)), 0).is_empty());
    assert!(run(&mut core, Input::Vote(fx.vote(1, &attestation(1, 7))), 0).is_empty());
    // Validator 1 no longer counts: own + 2 = 2 < 3.
    assert!(certified(&run(&mut core, Input::Vote(fx.vote(2, &a)), 0)).is_empty());
    assert_eq!(core.status(&a.event), EventStatus::Observed { digest: a.digest(), matching: 2 });
    let certs = certified(&run(&mut core, Input::Vote(fx.vote(3, &a)), 0));
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].signers().collect::<Vec<_>>(), [ValidatorIndex(0), ValidatorIndex(2), ValidatorIndex(3)]);
    // Evidence survives a restore.
    let mut store = PersistedState::default();
    let mut replay = fx.node(0);
    for input in [
        Input::Observed(a.clone()),
        Input::Vote(fx.vote(1, &a)),
        Input::Vote(fx.vote(1, &b)),
        Input::Vote(fx.vote(2, &a)),
    ] {
        if let Some(Action::Persist(d)) = run(&mut replay, input, 0).first() {
            store.apply(d);
        }
    }
    let restored = fx.restore(fx.config(0), &store);
    assert_eq!(restored.evidence().collect::<Vec<_>>(), [&evidence]);
    assert_eq!(restored.status(&a.event), EventStatus::Observed { digest: a.digest(), matching: 2 });
}

#[test]
fn own_key_used_elsewhere_is_never_contradicted() {
    let fx = Fixture::new(4);
    let a = attestation(1, 5);
    let b = attestation(1, 6);
    let mut core = fx.node(0);
    // A vote under our own key for B arrives before we observe anything.
    run(&mut core, Input::Vote(fx.vote(0, &b)), 0);
    let acts = run(&mut core, Input::Observed(a.clone()), 1);
    assert!(!broadcasts_vote(&acts));
    assert!(changes(&acts).is_empty());
    assert!(matches!(acts.as_slice(), [Action::Alert(Alert::ConflictingObservation { .. })]));
    // Observing B adopts that vote instead of signing again.
    let acts = run(&mut core, Input::Observed(b.clone()), 2);
    assert!(broadcasts_vote(&acts));
    assert_eq!(core.own_vote(&b.event), Some(&fx.vote(0, &b)));
    // A second digest under our key raises an alert beside the evidence.
    let acts = run(&mut core, Input::Vote(fx.vote(0, &a)), 3);
    assert!(acts.iter().any(|x| matches!(x, Action::Alert(Alert::OwnKeyEquivocated(_)))));
}

// ---- conflicting digests ---------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, rng_seed: proptest::test_runner::RngSeed::Fixed(0xB7CF1), ..ProptestConfig::default() })]

    /// Honest validators each observe digest A or B; up to f byzantine validators sign
    /// both. Everything is delivered to everyone in a random order. No honest node
    /// certifies anything but its own digest, and no two certify different digests.
    #[test]
    fn conflicting_digests_never_both_certify(
        n in 1u16..=20,
        honest_sees_b in proptest::collection::vec(any::<bool>(), 20),
        order_seed in any::<u64>(),
    ) {
        let fx = Fixture::new(n);
        let f = max_faulty(n) as u16;
        let a = attestation(3, 100);
        let b = attestation(3, 101);
        let honest: Vec<u16> = (f..n).collect();
        let sees = |v: u16| if honest_sees_b[usize::from(v)] { &b } else { &a };
        let mut messages: Vec<Input> = Vec::new();
        for v in 0..f {
            messages.push(Input::Vote(fx.vote(v, &a)));
            messages.push(Input::Vote(fx.vote(v, &b)));
        }
        for &v in &honest {
            messages.push(Input::Vote(fx.vote(v, sees(v))));
        }
        let mut outcome: Vec<Option<Digest>> = Vec::new();
        for (k, &v) in honest.iter().enumerate() {
            let mut core = fx.node(v);
            let mut inputs = messages.clone();
            inputs.push(Input::Observed(sees(v).clone()));
            // Deterministic shuffle per node.
            let mut state = order_seed ^ (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            for i in (1..inputs.len()).rev() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                inputs.swap(i, (state >> 33) as usize % (i + 1));
            }
            let mut certs = Vec::new();
            for input in inputs {
                certs.extend(certified(&run(&mut core, input, 0)));
            }
            prop_assert!(certs.len() <= 1);
            if let Some(c) = certs.first() {
                prop_assert_eq!(c.digest, sees(v).digest());
                prop_assert!(c.verify(EPOCH, n, &fx.crypto).is_ok());
            }
            outcome.push(certs.first().map(|c| c.digest));
        }
        let digests: std::collections::BTreeSet<_> = outcome.iter().flatten().collect();
        prop_assert!(digests.len() <= 1, "conflicting certifications {:?}", digests);
    }

    /// At one node, whatever arrives, only the own digest can certify, at most once,
    /// exactly when q counting validators signed it.
    #[test]
    fn certifies_iff_quorum_on_own_digest(
        n in 1u16..=20,
        voters in proptest::collection::vec((any::<u16>(), 0u8..3), 0..60),
        observe_at in any::<prop::sample::Index>(),
    ) {
        let fx = Fixture::new(n);
        let atts = [attestation(9, 1), attestation(9, 2), attestation(9, 3)];
        let mut core = fx.node(0);
        let mut inputs: Vec<Input> = voters
            .iter()
            .map(|(v, which)| Input::Vote(fx.vote(v % n, &atts[usize::from(*which)])))
            .collect();
        let at = observe_at.index(inputs.len() + 1);
        inputs.insert(at, Input::Observed(atts[0].clone()));
        let mut first: std::collections::BTreeMap<u16, u8> = Default::default();
        let mut equivocators = std::collections::BTreeSet::new();
        let mut observed = false;
        let mut certified_once = false;
        for input in inputs {
            match &input {
                Input::Observed(_) => observed = true,
                Input::Vote(v) => {
                    let which = atts.iter().position(|a| a.digest() == v.digest).unwrap() as u8;
                    match first.get(&v.validator.0) {
                        None if !(v.validator.0 == 0 && observed) => { first.insert(v.validator.0, which); }
                        Some(&w) if w != which => { equivocators.insert(v.validator.0); }
                        _ => {}
                    }
                }
                _ => {}
            }
            if let Input::Observed(_) = input {
                first.entry(0).or_insert(0);
            }
            let certs = certified(&run(&mut core, input, 0));
            let counting = first.iter().filter(|(v, w)| **w == 0 && !equivocators.contains(*v)).count();
            let own_ok = first.get(&0) == Some(&0) && !equivocators.contains(&0);
            if !certified_once {
                let expect = observed && own_ok && counting >= quorum(n);
                prop_assert_eq!(certs.len(), usize::from(expect));
                certified_once = expect;
            } else {
                prop_assert!(certs.is_empty());
            }
        }
    }
}

// ---- duplicates and replays -----------------------------------------------------------

fn arbitrary_inputs(fx: &Fixture, script: &[(u8, u16, u8)]) -> Vec<Input> {
    let atts: Vec<Attestation> = (0..3).flat_map(|e| [attestation(e, 10), attestation(e, 11)]).collect();
    script
        .iter()
        .map(|&(kind, v, which)| {
            let a = &atts[usize::from(which) % atts.len()];
            let v = v % fx.n;
            match kind % 4 {
                0 => Input::Observed(a.clone()),
                1 => Input::Certificate(fx.certificate(a, (0..fx.n).filter(|x| !(x + v).is_multiple_of(3)))),
                2 => Input::CertificateRequest {
                    from: ValidatorIndex(v),
                    request: CertificateRequest { epoch: EPOCH, events: vec![a.event] },
                },
                _ => Input::Vote(fx.vote(v, a)),
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, rng_seed: proptest::test_runner::RngSeed::Fixed(0xB7CF1), ..ProptestConfig::default() })]

    /// After any sequence of inputs, replaying any of its votes, certificates and
    /// observations changes nothing: no action, no persist, same state.
    #[test]
    fn replays_change_nothing(n in 1u16..=10, script in proptest::collection::vec((any::<u8>(), any::<u16>(), any::<u8>()), 0..40)) {
        let fx = Fixture::new(n);
        let inputs = arbitrary_inputs(&fx, &script);
        let mut core = fx.node(0);
        for input in &inputs {
            run(&mut core, input.clone(), 5);
        }
        let statuses = |c: &Core| (0..3).map(|e| c.status(&attestation(e, 0).event)).collect::<Vec<_>>();
        let before = (statuses(&core), core.memory(), core.evidence().count());
        for input in inputs.iter().rev() {
            let acts = run(&mut core, input.clone(), 6);
            match input {
                // A request is answered again (read-only), nothing else.
                Input::CertificateRequest { .. } => {
                    let one_answer = matches!(acts.as_slice(), [] | [Action::SendTo { .. }]);
                    prop_assert!(one_answer, "{:?}", acts);
                }
                _ => prop_assert!(acts.is_empty(), "replay of {:?} gave {:?}", input, acts),
            }
        }
        prop_assert_eq!(before, (statuses(&core), core.memory(), core.evidence().count()));
    }
}

#[test]
fn duplicate_vote_with_other_signature_bytes_is_still_a_duplicate() {
    let fx = Fixture::new(4);
    let a = attestation(1, 5);
    let mut core = fx.node(0);
    assert!(!run(&mut core, Input::Vote(fx.vote(1, &a)), 0).is_empty());
    // Same statement, different (invalid) signature bytes: dropped as bad signature.
    let mut other = fx.vote(1, &a);
    other.signature.0[0] ^= 1;
    assert!(run(&mut core, Input::Vote(other), 0).is_empty());
    assert_eq!(core.stats().votes_bad_signature, 1);
    assert!(run(&mut core, Input::Vote(fx.vote(1, &a)), 0).is_empty());
    assert_eq!(core.stats().votes_duplicate, 1);
    // A duplicate observation too.
    assert!(!run(&mut core, Input::Observed(a.clone()), 0).is_empty());
    assert!(run(&mut core, Input::Observed(a), 0).is_empty());
}

// ---- invalid input --------------------------------------------------------------------

#[test]
fn bad_signatures_unknown_validators_and_wrong_epochs_are_dropped() {
    let fx = Fixture::new(4);
    let a = attestation(1, 5);
    let mut core = fx.node(0);
    run(&mut core, Input::Observed(a.clone()), 0);
    let base = core.memory();

    let mut bad_sig = fx.vote(1, &a);
    bad_sig.signature.0.reverse();
    let mut impostor = fx.vote(1, &a);
    impostor.validator = ValidatorIndex(2); // validator 1's signature claimed as 2's
    let mut tampered = fx.vote(1, &a);
    tampered.digest = attestation(1, 6).digest();
    let unknown = Vote::sign(
        EPOCH,
        a.event,
        a.digest(),
        ValidatorIndex(4),
        &InsecureTestCrypto::new(1, 5).signer(ValidatorIndex(4)),
    );
    let other_epoch =
        Vote::sign(Epoch(8), a.event, a.digest(), ValidatorIndex(1), &fx.crypto.signer(ValidatorIndex(1)));
    for v in [bad_sig, impostor, tampered, unknown, other_epoch] {
        assert!(run(&mut core, Input::Vote(v), 0).is_empty());
    }
    let s = core.stats();
    assert_eq!((s.votes_bad_signature, s.votes_unknown_validator, s.votes_wrong_epoch), (3, 1, 1));
    assert_eq!(core.memory(), base);
    assert!(core.evidence().next().is_none(), "a forged vote must not create evidence");

    // Certificates: forged signatures, too few signers, wrong epoch: refused.
    let mut forged = fx.certificate(&a, [1, 2]);
    forged.signatures.push(ValidatorSignature { validator: ValidatorIndex(3), signature: fx.vote(1, &a).signature });
    let repeated = fx.certificate(&a, [1, 1, 1]);
    let mut old = fx.certificate(&a, [1, 2, 3]);
    old.epoch = Epoch(6);
    for c in [forged, repeated, old, fx.certificate(&a, [1, 2])] {
        assert!(run(&mut core, Input::Certificate(c), 0).is_empty());
    }
    assert_eq!(core.stats().certificates_invalid, 4);
    assert_eq!(core.status(&a.event), EventStatus::Observed { digest: a.digest(), matching: 1 });

    // Requests from outside the set or of another epoch are dropped.
    let req = CertificateRequest { epoch: EPOCH, events: vec![a.event] };
    assert!(run(&mut core, Input::CertificateRequest { from: ValidatorIndex(9), request: req }, 0).is_empty());
    assert_eq!(core.stats().requests_dropped, 1);
}

// ---- memory bounds --------------------------------------------------------------------

#[test]
fn certificate_with_a_repeated_signer_is_refused_even_beside_a_quorum() {
    let fx = Fixture::new(4);
    let a = attestation(1, 5);
    let mut core = fx.node(0);
    run(&mut core, Input::Observed(a.clone()), 0);
    // q = 3 valid distinct signatures, plus validator 3 a second time under other bytes.
    let mut padded = fx.certificate(&a, [1, 2, 3]);
    padded.signatures.push(ValidatorSignature { validator: ValidatorIndex(3), signature: Signature(vec![0xee; 32]) });
    let acts = run(&mut core, Input::Certificate(padded.clone()), 0);
    assert!(acts.is_empty(), "a certificate listing a validator twice must be refused: {acts:?}");
    assert_eq!(core.stats().certificates_invalid, 1);
    assert_eq!(core.stats().certificates_verified, 0);
    assert_eq!(core.status(&a.event), EventStatus::Observed { digest: a.digest(), matching: 1 });
    // The same entries once each certify.
    padded.signatures.pop();
    assert_eq!(certified(&run(&mut core, Input::Certificate(padded), 0)).len(), 1);
}

#[test]
fn per_peer_cap_and_expiry_bound_memory() {
    let fx = Fixture::new(4);
    let mut config = fx.config(0);
    config.max_pending_events_per_peer = 50;
    config.vote_expiry_ms = 10_000;
    config.reobserve_after_ms = 5_000;
    let mut core = fx.node_with(config);
    // Peer 3 floods votes for 1,000 events nobody else sees.
    for e in 0..1_000 {
        run(&mut core, Input::Vote(fx.vote(3, &attestation(1_000 + e, 1))), e.into());
    }
    let m = core.memory();
    assert_eq!((m.pending_events, m.votes, m.max_pending_per_peer), (50, 50, 50));
    assert_eq!(core.stats().votes_over_peer_cap, 950);
    // The flood does not block another peer's votes for a real event.
    let real = attestation(1, 7);
    assert!(!run(&mut core, Input::Vote(fx.vote(1, &real)), 1_000).is_empty());
    // Observing the real event takes it out of the pending set (votes kept).
    run(&mut core, Input::Observed(real.clone()), 1_001);
    // After the expiry everything pending is gone and the deletion is persisted.
    let acts = run(&mut core, Input::Tick, 10_100);
    let forgotten = changes(&acts).iter().filter(|c| matches!(c, Change::ForgetEvent { .. })).count();
    assert_eq!(forgotten, 50);
    let m = core.memory();
    assert_eq!((m.pending_events, m.max_pending_per_peer), (0, 0));
    assert!(matches!(core.status(&real.event), EventStatus::Observed { .. } | EventStatus::Certified { .. }));
    // The cap is free again.
    assert!(!run(&mut core, Input::Vote(fx.vote(3, &attestation(5_000, 1))), 10_200).is_empty());
}

#[test]
fn evidence_is_capped_per_validator() {
    let fx = Fixture::new(4);
    let mut config = fx.config(0);
    config.max_evidence_per_validator = 3;
    let mut core = fx.node_with(config);
    for e in 0..10 {
        run(&mut core, Input::Vote(fx.vote(2, &attestation(e, 1))), 0);
        let acts = run(&mut core, Input::Vote(fx.vote(2, &attestation(e, 2))), 0);
        assert!(acts.iter().any(|a| matches!(a, Action::Equivocation(_))));
    }
    assert_eq!(core.memory().evidence, 3);
    assert_eq!(core.stats().equivocations, 10);
}

// ---- restore --------------------------------------------------------------------------

#[test]
fn restore_refuses_a_second_digest() {
    let fx = Fixture::new(4);
    let a = attestation(1, 5);
    let a_wrong = attestation(1, 6);
    let mut store = PersistedState::default();
    let mut core = fx.node(0);
    let acts = run(&mut core, Input::Observed(a.clone()), 100);
    let Some(Action::Persist(delta)) = acts.first() else { panic!("no persist") };
    store.apply(delta);
    // Crash right after the write: the broadcast never happened.
    drop(core);

    let mut core = fx.restore(fx.config(0), &store);
    assert_eq!(core.own_vote(&a.event), Some(&fx.vote(0, &a)));
    let acts = run(&mut core, Input::Observed(a_wrong.clone()), 200);
    assert!(!broadcasts_vote(&acts) && changes(&acts).is_empty());
    assert_eq!(
        acts,
        [Action::Alert(Alert::ConflictingObservation {
            event: a.event,
            vouched: a.digest(),
            observed: a_wrong.digest()
        })]
    );
    assert!(run(&mut core, Input::Observed(a.clone()), 200).is_empty());
    // The first tick rebroadcasts the vote that may never have left.
    let acts = run(&mut core, Input::Tick, 201);
    assert!(acts.contains(&Action::Broadcast(Message::Vote(fx.vote(0, &a)))));
    // Then the quorum still forms on the first digest only.
    run(&mut core, Input::Vote(fx.vote(1, &a_wrong)), 300);
    run(&mut core, Input::Vote(fx.vote(2, &a_wrong)), 300);
    assert_eq!(core.certificate(&a.event), None);
    run(&mut core, Input::Vote(fx.vote(3, &a)), 300);
    assert!(core.certificate(&a.event).is_none());
}

#[test]
fn restore_rebuilds_the_same_state() {
    let fx = Fixture::new(7);
    let mut core = fx.node(2);
    let mut store = PersistedState::default();
    let mut inputs = Vec::new();
    for e in 0..6u32 {
        let a = attestation(e, 50);
        if e % 3 != 0 {
            inputs.push(Input::Observed(a.clone()));
        }
        for v in 0..(e as u16 + 1).min(7) {
            inputs.push(Input::Vote(fx.vote(v, &a)));
        }
        if e == 5 {
            inputs.push(Input::Vote(fx.vote(6, &attestation(e, 51))));
        }
    }
    inputs.push(Input::Certificate(fx.certificate(&attestation(3, 50), [0, 1, 3, 4, 5])));
    for input in inputs {
        if let Some(Action::Persist(d)) = run(&mut core, input, 10).first() {
            store.apply(d);
        }
    }
    let restored = fx.restore(fx.config(2), &store);
    for e in 0..6 {
        let id = attestation(e, 0).event;
        assert_eq!(restored.status(&id), core.status(&id), "event {e}");
        assert_eq!(restored.certificate(&id), core.certificate(&id));
    }
    assert_eq!(restored.memory(), core.memory());
    assert_eq!(restored.evidence().collect::<Vec<_>>(), core.evidence().collect::<Vec<_>>());

    // Mismatched config or records are refused.
    let wrong_index = Consensus::restore(fx.config(3), fx.crypto.signer(ValidatorIndex(3)), fx.crypto.clone(), &store);
    assert!(matches!(wrong_index, Err(Error::CorruptState { .. })));
    let mut other_epoch = fx.config(2);
    other_epoch.epoch = Epoch(8);
    let wrong_epoch = Consensus::restore(other_epoch, fx.crypto.signer(ValidatorIndex(2)), fx.crypto.clone(), &store);
    assert!(matches!(wrong_epoch, Err(Error::EpochMismatch { .. })));
}

// ---- catch-up -------------------------------------------------------------------------

#[test]
fn network_certificate_waits_for_own_observation() {
    let fx = Fixture::new(4);
    let a = attestation(1, 5);
    let mut core = fx.node(0);
    let acts = run(&mut core, Input::Certificate(fx.certificate(&a, [1, 2, 3])), 0);
    assert!(certified(&acts).is_empty());
    assert!(acts.contains(&Action::Reobserve {
        event: a.event,
        reason: ReobserveReason::NetworkCertified { digest: a.digest() }
    }));
    assert_eq!(core.status(&a.event), EventStatus::NetworkCertified { digest: a.digest() });
    // A different observation: voted (it is what this node saw) but never certified.
    let mut other = fx.node(0);
    run(&mut other, Input::Certificate(fx.certificate(&a, [1, 2, 3])), 0);
    let acts = run(&mut other, Input::Observed(attestation(1, 6)), 1);
    assert!(acts.iter().any(|x| matches!(x, Action::Alert(Alert::NetworkCertifiedOtherDigest { .. }))));
    assert!(certified(&acts).is_empty());
    assert!(run(&mut other, Input::Tick, 1_000_000).is_empty(), "a vote that cannot certify is not resent");
    // The same observation certifies at once.
    let certs = certified(&run(&mut core, Input::Observed(a.clone()), 1));
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].digest, a.digest());
}

#[test]
fn catch_up_requests_and_answers() {
    let fx = Fixture::new(4);
    let a = attestation(1, 5);
    let mut config = fx.config(0);
    config.rebroadcast_interval_ms = 100;
    config.rebroadcast_max_interval_ms = 400;
    config.catch_up_after_ms = 250;
    let mut lagging = fx.node_with(config);
    run(&mut lagging, Input::Observed(a.clone()), 0);
    let mut times = Vec::new();
    let mut requests = 0;
    for t in (0..=1_000).step_by(10) {
        let acts = run(&mut lagging, Input::Tick, t);
        if broadcasts_vote(&acts) {
            times.push(t);
        }
        requests +=
            acts.iter().filter(|x| matches!(x, Action::RequestCertificates(r) if r.events == [a.event])).count();
    }
    assert_eq!(times, [100, 300, 700], "exponential backoff 100, 200, 400 (capped)");
    assert_eq!(requests, 2);

    // A peer that certified answers; the answer certifies the lagging node.
    let mut peer = fx.node(1);
    run(&mut peer, Input::Observed(a.clone()), 0);
    run(&mut peer, Input::Vote(fx.vote(2, &a)), 0);
    run(&mut peer, Input::Vote(fx.vote(3, &a)), 0);
    let req = CertificateRequest { epoch: EPOCH, events: vec![a.event, attestation(9, 9).event] };
    let answers = run(&mut peer, Input::CertificateRequest { from: ValidatorIndex(0), request: req }, 5);
    let [Action::SendTo { to: ValidatorIndex(0), message: Message::CertificateResponse(response) }] =
        answers.as_slice()
    else {
        panic!("{answers:?}")
    };
    assert_eq!(response.certificates.len(), 1, "only the event it holds");
    let input = Input::from_message(ValidatorIndex(1), Message::CertificateResponse(response.clone()));
    assert_eq!(certified(&run(&mut lagging, input, 1_001)).len(), 1);
    // A node that holds nothing still answers, with an empty response.
    let req = CertificateRequest { epoch: EPOCH, events: vec![attestation(9, 9).event] };
    let empty = run(&mut peer, Input::CertificateRequest { from: ValidatorIndex(2), request: req }, 5);
    assert_eq!(
        empty,
        [Action::SendTo {
            to: ValidatorIndex(2),
            message: Message::CertificateResponse(CertificateResponse::default())
        }]
    );
    // Certified: no more rebroadcasts.
    assert!(run(&mut lagging, Input::Tick, 100_000).is_empty());
}

#[test]
fn reobservation_after_peers_vouch() {
    let fx = Fixture::new(4);
    let a = attestation(1, 5);
    let mut config = fx.config(0);
    config.reobserve_after_ms = 1_000;
    let mut core = fx.node_with(config);
    run(&mut core, Input::Vote(fx.vote(1, &a)), 0);
    // One voucher is not f + 1 = 2.
    assert!(run(&mut core, Input::Tick, 2_000).is_empty());
    run(&mut core, Input::Vote(fx.vote(2, &a)), 2_000);
    let acts = run(&mut core, Input::Tick, 2_001);
    assert_eq!(
        acts,
        [Action::Reobserve {
            event: a.event,
            reason: ReobserveReason::PeersVouched { digest: a.digest(), vouchers: 2 }
        }]
    );
    assert!(run(&mut core, Input::Tick, 3_000).is_empty(), "requested once");
}

// ---- randomized signatures --------------------------------------------------------------

/// A scheme with many valid signatures per statement (like ECDSA or randomized
/// Schnorr): the test MAC plus a trailing nonce byte.
#[derive(Debug, Clone)]
struct Randomized(InsecureTestCrypto);

#[derive(Debug)]
struct RandomizedSigner(InsecureTestSigner, std::cell::Cell<u8>);

impl VoteSigner for RandomizedSigner {
    fn sign(&self, message: &[u8]) -> Signature {
        let mut s = self.0.sign(message);
        s.0.push(self.1.get());
        self.1.set(self.1.get().wrapping_add(1));
        s
    }
}

impl VoteVerifier for Randomized {
    fn verify(&self, validator: ValidatorIndex, message: &[u8], signature: &Signature) -> bool {
        signature.0.split_last().is_some_and(|(_, mac)| self.0.verify(validator, message, &Signature(mac.to_vec())))
    }
}

#[test]
fn a_statement_signed_again_is_a_duplicate() {
    let fx = Fixture::new(4);
    let signer = |v: u16| RandomizedSigner(fx.crypto.signer(ValidatorIndex(v)), std::cell::Cell::new(0));
    let mut core = Consensus::new(fx.config(0), signer(0), Randomized(fx.crypto.clone())).unwrap();
    let a = attestation(1, 5);
    let peer = signer(1);
    let vote = |s: &RandomizedSigner, v: u16| Vote::sign(EPOCH, a.event, a.digest(), ValidatorIndex(v), s);
    assert!(!core.handle(Input::Vote(vote(&peer, 1)), 0).is_empty());
    let again = vote(&peer, 1);
    assert!(core.handle(Input::Vote(again), 0).is_empty());
    assert_eq!((core.stats().votes_duplicate, core.stats().equivocations), (1, 0));
    core.handle(Input::Observed(a.clone()), 0);
    let p2 = signer(2);
    assert_eq!(certified(&core.handle(Input::Vote(vote(&p2, 2)), 0)).len(), 1);
    // A certificate made of fresh signatures over the same statements changes nothing.
    let fresh = Certificate {
        epoch: EPOCH,
        event: a.event,
        digest: a.digest(),
        signatures: [(1, &peer), (2, &p2)]
            .into_iter()
            .map(|(v, s)| ValidatorSignature { validator: ValidatorIndex(v), signature: vote(s, v).signature })
            .chain(std::iter::once(ValidatorSignature {
                validator: ValidatorIndex(3),
                signature: vote(&signer(3), 3).signature,
            }))
            .collect(),
    };
    let acts = core.handle(Input::Certificate(fresh), 0);
    // Only validator 3's vote is new.
    assert!(matches!(changes(&acts).as_slice(), [Change::PeerVote(r)] if r.vote.validator == ValidatorIndex(3)));
    assert_eq!(acts.len(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, rng_seed: proptest::test_runner::RngSeed::Fixed(0xB7CF1), ..ProptestConfig::default() })]

    /// Under any mix of votes, observations, certificates and ticks, the per-peer
    /// counters match a recount, never exceed the cap, and everything pending is gone
    /// once the expiry has passed.
    #[test]
    fn caps_and_expiry_bound_memory(
        n in 2u16..=10,
        cap in 1usize..6,
        script in proptest::collection::vec((any::<u8>(), any::<u16>(), 0u32..24, 0u64..3_000), 1..120),
    ) {
        let fx = Fixture::new(n);
        let mut config = fx.config(0);
        config.max_pending_events_per_peer = cap;
        config.vote_expiry_ms = 5_000;
        config.reobserve_after_ms = 1_000;
        let mut core = fx.node_with(config);
        let mut now = 0;
        for (kind, v, event, dt) in script {
            now += dt;
            let a = attestation(event, u64::from(kind % 2));
            let v = v % n;
            let input = match kind % 8 {
                0 => Input::Observed(a),
                1 => Input::Tick,
                2 => Input::Certificate(fx.certificate(&a, 0..n)),
                _ => Input::Vote(fx.vote(v, &a)),
            };
            run(&mut core, input, now);
            prop_assert_eq!(core.pending_counters(), &core.recount_pending());
            prop_assert!(core.memory().max_pending_per_peer <= cap);
            prop_assert!(core.memory().pending_events <= cap * usize::from(n));
        }
        run(&mut core, Input::Tick, now + 5_000);
        prop_assert_eq!(core.memory().pending_events, 0);
        prop_assert!(core.pending_counters().is_empty());
    }
}

// ---- batches --------------------------------------------------------------------------

fn vote_batches(actions: &[Action]) -> Vec<VoteBatch> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Broadcast(Message::Votes(b)) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

/// A block of 3,000 deposits observed at once: one persist, its votes in three signed
/// gossip messages (not 3,000), each vote inside valid on its own; fed to the other
/// validators as batches, every event certifies everywhere, and the certificates go
/// out in batches too.
#[test]
fn a_burst_is_voted_and_certified_in_batches() {
    let fx = Fixture::new(4);
    let burst: Vec<Attestation> = (0..3_000).map(|i| attestation(i, 1_000 + u64::from(i))).collect();
    let mut nodes: Vec<Core> = (0..4).map(|v| fx.node(v)).collect();
    let mut outbox: Vec<(u16, Vec<Action>)> = Vec::new();
    for (v, node) in nodes.iter_mut().enumerate() {
        let acts = run(node, Input::ObservedMany(burst.clone()), 0);
        let own = changes(&acts).iter().filter(|c| matches!(c, Change::OwnVote(_))).count();
        assert_eq!(own, 3_000, "one persist holds every own vote");
        assert!(!broadcasts_vote(&acts), "no vote goes alone in a burst");
        let batches = vote_batches(&acts);
        assert_eq!(batches.len(), 3, "3,000 votes in batches of {MAX_BATCH_VOTES}");
        for b in &batches {
            assert!(b.votes.len() <= MAX_BATCH_VOTES);
            assert!(Message::Votes(b.clone()).encode().len() <= MAX_BATCH_BYTES);
            assert_eq!(b.validator, ValidatorIndex(v as u16));
            assert!(b.votes().all(|vote| vote.verify(&fx.crypto)), "each vote is signed on its own");
            let decoded = Message::decode(&Message::Votes(b.clone()).encode()).unwrap();
            assert_eq!(decoded, Message::Votes(b.clone()));
        }
        outbox.push((v as u16, acts));
    }
    let mut certificate_batches = 0;
    for (from, acts) in outbox {
        for b in vote_batches(&acts) {
            for (to, node) in nodes.iter_mut().enumerate() {
                if to as u16 == from {
                    continue;
                }
                let acts = run(node, Input::from_message(ValidatorIndex(from), Message::Votes(b.clone())), 1);
                certificate_batches += acts
                    .iter()
                    .filter(|a| matches!(a, Action::Broadcast(Message::Certificates(c)) if c.len() > 1))
                    .count();
                assert!(!acts.iter().any(|a| matches!(a, Action::Broadcast(Message::Certificate(_)))));
            }
        }
    }
    for node in &nodes {
        assert_eq!(node.stats().certified, 3_000);
        assert_eq!(node.stats().votes_accepted, 9_000, "each vote counted once per validator");
    }
    assert!(certificate_batches >= 4, "certificates gossiped in batches: {certificate_batches}");
}

/// Inside a batch each vote stands alone: a forged entry is dropped and the others
/// count; two digests for one event in one batch are equivocation, whose evidence is
/// two single signed votes that verify without the batch.
#[test]
fn a_batch_is_judged_vote_by_vote() {
    let fx = Fixture::new(4);
    let a = attestation(1, 10);
    let b = attestation(2, 20);
    let c = attestation(3, 30);
    let c_other = attestation(3, 31);
    let mut core = fx.node(0);
    run(&mut core, Input::ObservedMany(vec![a.clone(), b.clone(), c.clone()]), 0);
    let mut forged = fx.vote(1, &b);
    forged.signature = fx.vote(2, &b).signature;
    let votes = vec![fx.vote(1, &a), forged, fx.vote(1, &c), fx.vote(1, &c_other)];
    let batch = VoteBatch::pack(votes, MAX_BATCH_VOTES, MAX_BATCH_BYTES);
    assert_eq!(batch.len(), 1);
    let acts = run(&mut core, Input::Votes(batch[0].clone()), 1);
    assert_eq!(core.stats().votes_bad_signature, 1, "the forged entry, alone");
    assert_eq!(core.stats().votes_accepted, 2);
    assert_eq!(core.stats().equivocations, 1);
    let evidence: Vec<&Equivocation> = acts
        .iter()
        .filter_map(|x| match x {
            Action::Equivocation(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(evidence.len(), 1);
    assert!(evidence[0].verify(&fx.crypto), "evidence holds single signed votes");
    assert_eq!((evidence[0].first.digest, evidence[0].second.digest), (c.digest(), c_other.digest()));
    // Peer 1's vote on `a` counts: with peer 2's, `a` certifies; `b` still waits.
    let acts = run(&mut core, Input::Vote(fx.vote(2, &a)), 2);
    assert_eq!(certified(&acts).len(), 1);
    assert!(matches!(core.status(&b.event), EventStatus::Observed { matching: 1, .. }));
}

/// Packing splits by validator and epoch, by count and by bytes, and keeps order.
#[test]
fn vote_batches_are_packed_by_voter_count_and_size() {
    let fx = Fixture::new(4);
    let mut votes = Vec::new();
    for i in 0..2_500u32 {
        votes.push(fx.vote((i % 2) as u16, &attestation(i, 1)));
    }
    let batches = VoteBatch::pack(votes.clone(), 1_000, usize::MAX);
    let sizes: Vec<(u16, usize)> = batches.iter().map(|b| (b.validator.0, b.votes.len())).collect();
    assert_eq!(sizes, [(0, 1_000), (0, 250), (1, 1_000), (1, 250)]);
    let back: Vec<Vote> = batches.iter().flat_map(|b| b.votes().collect::<Vec<_>>()).collect();
    let mut want = votes.clone();
    want.sort_by_key(|v| v.validator);
    assert_eq!(back, want, "every vote once, in order per voter");
    let small = VoteBatch::pack(votes, usize::MAX, 10_000);
    assert!(
        small.iter().all(|b| b.encoded_len() <= 10_000 && Message::Votes(b.clone()).encode().len() == b.encoded_len())
    );
}
