//! DKG among in-memory participants (the sans-IO core, routed by a test loop).

use btcfi_signer::dkg::{Dkg, DkgAction, DkgFailure, DkgMessage, round1_echo};
use frost_core::{
    Ciphersuite, Identifier,
    keys::{KeyPackage, PublicKeyPackage},
};
use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

type Sent<C> = BTreeMap<(Identifier<C>, Identifier<C>), DkgMessage<C>>;
type Tamper<'a, C> = dyn FnMut(Identifier<C>, Identifier<C>, &mut DkgMessage<C>, &Sent<C>) + 'a;

struct Outcome<C: Ciphersuite> {
    keys: BTreeMap<Identifier<C>, PublicKeyPackage<C>>,
    key_packages: BTreeMap<Identifier<C>, KeyPackage<C>>,
    failures: BTreeMap<Identifier<C>, DkgFailure<C>>,
}

/// Runs a DKG among n participants; `tamper(from, to, msg, sent)` may rewrite any message.
fn run<C: Ciphersuite>(n: u16, t: u16, seed: u64, tamper: &mut Tamper<'_, C>) -> Outcome<C> {
    let ids: BTreeSet<Identifier<C>> = (1..=n).map(|i| Identifier::try_from(i).unwrap()).collect();
    let mut nodes: BTreeMap<_, _> = ids.iter().map(|id| (*id, Dkg::<C>::new(*id, ids.clone(), t).unwrap())).collect();
    let mut queue: VecDeque<(Identifier<C>, Identifier<C>, DkgMessage<C>)> = VecDeque::new();
    let mut sent = BTreeMap::new();
    let mut outcome = Outcome { keys: BTreeMap::new(), key_packages: BTreeMap::new(), failures: BTreeMap::new() };
    let mut route = |from: Identifier<C>,
                     actions: Vec<DkgAction<C>>,
                     queue: &mut VecDeque<_>,
                     outcome: &mut Outcome<C>,
                     sent: &mut BTreeMap<_, _>| {
        for a in actions {
            match a {
                DkgAction::Broadcast(m) => {
                    for to in ids.iter().filter(|i| **i != from) {
                        let mut m = m.clone();
                        tamper(from, *to, &mut m, sent);
                        // Every message crosses the wire encoding, as it does between nodes.
                        let m = DkgMessage::decode(&m.encode().unwrap()).unwrap();
                        sent.insert((from, *to), m.clone());
                        queue.push_back((from, *to, m));
                    }
                }
                DkgAction::SendTo { to, message } => {
                    let mut m = message;
                    tamper(from, to, &mut m, sent);
                    let m = DkgMessage::decode(&m.encode().unwrap()).unwrap();
                    sent.insert((from, to), m.clone());
                    queue.push_back((from, to, m));
                }
                DkgAction::Done { public_key_package, key_package } => {
                    outcome.keys.insert(from, *public_key_package);
                    outcome.key_packages.insert(from, *key_package);
                }
                DkgAction::Failed(f) => {
                    outcome.failures.insert(from, f);
                }
            }
        }
    };
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    for id in ids.iter() {
        let actions = nodes.get_mut(id).unwrap().start(&mut rng);
        route(*id, actions, &mut queue, &mut outcome, &mut sent);
    }
    while let Some((from, to, m)) = queue.pop_front() {
        let actions = nodes.get_mut(&to).unwrap().handle(from, m);
        route(to, actions, &mut queue, &mut outcome, &mut sent);
    }
    outcome
}

fn honest<C: Ciphersuite>(n: u16, t: u16) {
    let out = run::<C>(n, t, 1, &mut |_, _, _, _| {});
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    assert_eq!(out.keys.len(), usize::from(n));
    let first = *out.keys.values().next().unwrap().verifying_key();
    assert!(out.keys.values().all(|k| *k.verifying_key() == first), "every participant has the same group key");
}

#[test]
fn four_and_seven_agree_on_one_group_key() {
    honest::<frost_secp256k1::Secp256K1Sha256>(4, 3);
    honest::<frost_secp256k1::Secp256K1Sha256>(7, 5);
    honest::<frost_secp256k1_tr::Secp256K1Sha256TR>(4, 3);
    honest::<frost_secp256k1_tr::Secp256K1Sha256TR>(7, 5);
}

/// The `btc` DKG output is the vault's output key: a plain FROST signature over a sighash
/// verifies as a BIP340 key-path signature under the P2TR address's key.
#[test]
fn the_btc_key_signs_taproot_key_path_spends() {
    use btcfi_signer::btc;
    use frost_secp256k1_tr as tr;
    let out = run::<tr::Secp256K1Sha256TR>(4, 3, 7, &mut |_, _, _, _| {});
    let pubkey = out.keys.values().next().unwrap().clone();
    let address = btc::vault_address(pubkey.verifying_key(), bitcoin::Network::Regtest).unwrap();
    assert!(address.to_string().starts_with("bcrt1p"), "{address}");
    assert_eq!(
        address.script_pubkey().as_bytes()[2..],
        btc::output_key(pubkey.verifying_key()).unwrap().serialize(),
        "the address pays to the group key itself"
    );
    let sighash = [0x5a_u8; 32];
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let signers: Vec<_> = out.key_packages.values().take(3).collect();
    let mut nonces = BTreeMap::new();
    let mut commitments = BTreeMap::new();
    for kp in &signers {
        let (n, c) = tr::round1::commit(kp.signing_share(), &mut rng);
        nonces.insert(*kp.identifier(), n);
        commitments.insert(*kp.identifier(), c);
    }
    let package = tr::SigningPackage::new(commitments, &sighash);
    let mut shares = BTreeMap::new();
    for kp in &signers {
        shares.insert(*kp.identifier(), tr::round2::sign(&package, &nonces[kp.identifier()], kp).unwrap());
    }
    let signature = tr::aggregate(&package, &shares, &pubkey).unwrap();
    btc::verify_key_path(&sighash, pubkey.verifying_key(), &signature).unwrap();
    let mut other = sighash;
    other[0] ^= 1;
    assert!(btc::verify_key_path(&other, pubkey.verifying_key(), &signature).is_err());
}

#[test]
fn a_bad_round2_share_names_its_sender() {
    type C = frost_secp256k1::Secp256K1Sha256;
    let id = |i: u16| Identifier::<C>::try_from(i).unwrap();
    // Participant 2 sends participant 3 the share it made for participant 1.
    let out = run::<C>(4, 3, 2, &mut |from, to, m, sent| {
        if from == id(2) && to == id(3) && matches!(m, DkgMessage::Round2(_)) {
            // Part 2 emits recipients in identifier order: 1's package went out just before.
            if let Some(other @ DkgMessage::Round2(_)) = sent.get(&(id(2), id(1))) {
                *m = other.clone();
            }
        }
    });
    match out.failures.get(&id(3)) {
        Some(DkgFailure::Culprits { culprits, reason }) => {
            assert_eq!(culprits, &vec![id(2)], "{reason}");
            assert!(reason.to_lowercase().contains("share"), "{reason}");
        }
        other => panic!("participant 3 should name 2, got {other:?}"),
    }
    assert!(!out.keys.contains_key(&id(3)));
}

#[test]
fn a_bad_proof_of_knowledge_names_its_sender_everywhere() {
    type C = frost_secp256k1::Secp256K1Sha256;
    let id = |i: u16| Identifier::<C>::try_from(i).unwrap();
    // Participant 1 broadcasts a round-1 package made for identifier 4 as its own, to
    // everyone alike, and echoes the set the others hold (a liar that covers its
    // tracks): the echoes agree, the proof of knowledge does not.
    let mut rng = ChaCha20Rng::seed_from_u64(77);
    let ids: BTreeSet<_> = (1..=4u16).map(id).collect();
    let mut twin = Dkg::<C>::new(id(4), ids, 3).unwrap();
    let forged = match twin.start(&mut rng).into_iter().next() {
        Some(DkgAction::Broadcast(m)) => m,
        _ => unreachable!(),
    };
    let mut round1_of = BTreeMap::new();
    if let DkgMessage::Round1(p) = &forged {
        round1_of.insert(id(1), (**p).clone());
    }
    let out = run::<C>(4, 3, 3, &mut |from, _, m, _| match m {
        DkgMessage::Round1(_) if from == id(1) => *m = forged.clone(),
        DkgMessage::Round1(p) => {
            round1_of.insert(from, (**p).clone());
        }
        DkgMessage::Echo(_) if from == id(1) => {
            *m = DkgMessage::Echo(round1_echo(&round1_of).unwrap());
        }
        _ => {}
    });
    for i in 2..=4u16 {
        match out.failures.get(&id(i)) {
            Some(DkgFailure::Culprits { culprits, reason }) => {
                assert!(culprits.contains(&id(1)), "{i}: {culprits:?} {reason}");
                assert!(reason.to_lowercase().contains("proof of knowledge"), "{reason}");
            }
            other => panic!("participant {i}: {other:?}"),
        }
    }
    assert!(out.keys.is_empty());
}

#[test]
fn an_equivocated_round1_broadcast_is_caught_by_the_echo() {
    type C = frost_secp256k1::Secp256K1Sha256;
    let id = |i: u16| Identifier::<C>::try_from(i).unwrap();
    // Participant 2 shows participant 3 a different (its own second) round-1 package.
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let ids: BTreeSet<_> = (1..=4u16).map(id).collect();
    let mut twin = Dkg::<C>::new(id(2), ids, 3).unwrap();
    let other = match twin.start(&mut rng).into_iter().next() {
        Some(DkgAction::Broadcast(m)) => m,
        _ => unreachable!(),
    };
    let out = run::<C>(4, 3, 4, &mut |from, to, m, _| {
        if from == id(2) && to == id(3) && matches!(m, DkgMessage::Round1(_)) {
            *m = other.clone();
        }
    });
    assert!(out.keys.is_empty(), "no participant may finish with split views");
    assert!(out.failures.values().any(|f| matches!(f, DkgFailure::InconsistentBroadcast { .. })), "{:?}", out.failures);
}
