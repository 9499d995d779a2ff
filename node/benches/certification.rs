//! Certification throughput of one validator under a burst, against the pure cost of
//! the signature checks it must make.
//!
//! For n = 4, 7 and 16 validators with real ed25519 identity keys (the node's
//! `IdentitySigner` and `SetVerifier`), every validator observes the same burst of
//! deposits at once (`Input::ObservedMany`, votes packed into `Message::Votes`). The
//! batches of the n − 1 peers are encoded, decoded and fed to validator 0's core, as
//! the daemon loop does with gossip, until it certifies every event. The bench prints
//! certifications per second and the time of verifying the same (n − 1) × events vote
//! signatures one after another: the floor of any design that checks every vote.
//!
//! `cargo bench -p btcfi-node --bench certification` (`BENCH_EVENTS`, default 10,000).

use btcfi_consensus::{Action, Config, Consensus, Epoch, Input, Message, ValidatorIndex, VoteVerifier};
use btcfi_node::crypto::{IdentitySigner, SetVerifier};
use btcfi_types::{Attestation, AttestationKind, ChainId, EventId, EvmAddress, Sats, TxHash};
use libp2p::identity::Keypair;
use std::time::Instant;

fn burst(events: u32) -> Vec<Attestation> {
    (0..events)
        .map(|i| Attestation {
            event: EventId::new(ChainId::BITCOIN, TxHash([(i % 251) as u8; 32]), i),
            kind: AttestationKind::PegIn {
                dest_chain: ChainId::ETHEREUM,
                recipient: EvmAddress([7; 20]),
                amount: Sats(20_000 + u64::from(i)),
            },
        })
        .collect()
}

fn run(n: u16, events: u32) {
    let keys: Vec<Keypair> = (0..n).map(|_| Keypair::generate_ed25519()).collect();
    let peers: Vec<_> = keys.iter().map(|k| k.public().to_peer_id()).collect();
    let verifier = SetVerifier::new(&peers).expect("ed25519 peer ids");
    let core = |i: u16| {
        let config = Config::new(Epoch(1), n, ValidatorIndex(i));
        Consensus::new(config, IdentitySigner(keys[usize::from(i)].clone()), verifier.clone()).expect("config")
    };
    let attestations = burst(events);
    // What the peers gossip: their own votes, in batches, as bytes.
    let started = Instant::now();
    let mut gossip: Vec<(ValidatorIndex, Vec<u8>)> = Vec::new();
    for i in 1..n {
        let mut peer = core(i);
        for a in peer.handle(Input::ObservedMany(attestations.clone()), 0) {
            if let Action::Broadcast(m @ Message::Votes(_)) = a {
                gossip.push((ValidatorIndex(i), m.encode()));
            }
        }
    }
    let signing = started.elapsed();
    let mut me = core(0);
    let started = Instant::now();
    me.handle(Input::ObservedMany(attestations.clone()), 0);
    for (from, bytes) in &gossip {
        let message = Message::decode(bytes).expect("decodes");
        me.handle(Input::from_message(*from, message), 1);
    }
    let certifying = started.elapsed();
    assert_eq!(me.stats().certified, u64::from(events), "every event certified");
    // The floor: the same peer votes' signatures, checked one by one.
    let votes: Vec<_> = gossip
        .iter()
        .flat_map(|(_, b)| match Message::decode(b) {
            Ok(Message::Votes(batch)) => batch.votes().collect::<Vec<_>>(),
            _ => Vec::new(),
        })
        .collect();
    let started = Instant::now();
    let valid = votes.iter().filter(|v| verifier.verify(v.validator, &v.signing_bytes(), &v.signature)).count();
    let verifying = started.elapsed();
    assert_eq!(valid, votes.len());
    let per_s = f64::from(events) / certifying.as_secs_f64();
    println!(
        "n={n:>2}: {events} events, {} peer votes in {} messages ({} KiB); certified in {:.3} s = {per_s:.0} certifications/s; \
         verifying the same votes alone {:.3} s ({:.0}% of the time); the peers' signing {:.3} s",
        votes.len(),
        gossip.len(),
        gossip.iter().map(|(_, b)| b.len()).sum::<usize>() / 1024,
        certifying.as_secs_f64(),
        verifying.as_secs_f64(),
        100.0 * verifying.as_secs_f64() / certifying.as_secs_f64(),
        signing.as_secs_f64(),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: then a quick run.
    let bench = std::env::args().any(|a| a == "--bench");
    let events =
        std::env::var("BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(if bench { 10_000 } else { 200 });
    for n in [4, 7, 16] {
        run(n, events);
    }
}
