//! One FROST signing session among n validators over real libp2p on loopback, for
//! (t, n) = (3, 4), (5, 7), (11, 16): the wall time until every validator holds the
//! signature, beside the pure FROST compute of a session done sequentially in one
//! thread (commitments, shares, share verifications, aggregation, final verification).
//! The coordinator signs with every responsive candidate (all n here), so the compute
//! is measured both for t signers (the least FROST needs) and for all n (what the
//! session does); after each size the bench prints wall / compute for both.
//!
//! `cargo bench -p btcfi-node --bench signing_session`

use btcfi_p2p::{Keypair, Limits, MessageKind, NetworkConfig, NetworkEvent, NetworkService, RateLimit, ValidatorPeer};
use btcfi_signer::{
    frost_secp256k1::{
        self as frost, Identifier,
        keys::{IdentifierList, KeyPackage, PublicKeyPackage},
    },
    session::{Action, Input, Message, Session, SessionConfig, SessionId},
};
use criterion::{Criterion, criterion_group, criterion_main};
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::mpsc;

type Keys = (BTreeMap<Identifier, KeyPackage>, PublicKeyPackage);

fn keys(t: u16, n: u16) -> Keys {
    let rng = rand::rngs::OsRng;
    let (shares, public) = frost::keys::generate_with_dealer(n, t, IdentifierList::Default, rng).expect("dealer keys");
    let packages = shares.into_iter().map(|(id, s)| (id, KeyPackage::try_from(s).expect("key package"))).collect();
    (packages, public)
}

/// The FROST work of one session with `signers` signers, sequentially.
fn compute_once(keys: &Keys, signers: usize, message: &[u8]) {
    let mut rng = rand::rngs::OsRng;
    let signers: Vec<&KeyPackage> = keys.0.values().take(signers).collect();
    let mut nonces = BTreeMap::new();
    let mut commitments = BTreeMap::new();
    for kp in &signers {
        let (n, c) = frost::round1::commit(kp.signing_share(), &mut rng);
        nonces.insert(*kp.identifier(), n);
        commitments.insert(*kp.identifier(), c);
    }
    let package = frost::SigningPackage::new(commitments, message);
    let mut shares = BTreeMap::new();
    for kp in &signers {
        let share = frost::round2::sign(&package, &nonces[kp.identifier()], kp).expect("share");
        let vs = keys.1.verifying_shares()[kp.identifier()];
        frost_core::verify_signature_share(*kp.identifier(), &vs, &share, &package, keys.1.verifying_key())
            .expect("valid");
        shares.insert(*kp.identifier(), share);
    }
    let sig = frost::aggregate(&package, &shares, &keys.1).expect("aggregate");
    keys.1.verifying_key().verify(message, &sig).expect("verifies");
}

struct Cluster {
    starts: Vec<mpsc::Sender<Vec<u8>>>,
    done: mpsc::Receiver<usize>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

async fn cluster(keys: &Keys, n: usize) -> Cluster {
    let keypairs: Vec<Keypair> = (0..n).map(|_| Keypair::generate_ed25519()).collect();
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let peers: Vec<_> = keypairs.iter().map(|k| k.public().to_peer_id()).collect();
    let set: Vec<ValidatorPeer> = peers
        .iter()
        .zip(&ports)
        .map(|(p, port)| ValidatorPeer::new(*p, vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("addr")]))
        .collect();
    let ids: Vec<Identifier> = keys.0.keys().copied().collect();
    let (done_tx, done) = mpsc::channel(1024);
    let mut starts = Vec::new();
    let mut handles = Vec::new();
    for i in 0..n {
        let mut cfg = NetworkConfig::new(
            keypairs[i].clone(),
            vec![format!("/ip4/127.0.0.1/tcp/{}", ports[i]).parse().expect("addr")],
            set.clone(),
        );
        cfg.redial_interval = Duration::from_millis(200);
        cfg.limits = Limits { request_rate: RateLimit::new(100_000.0, 100_000), ..Limits::default() };
        let service = NetworkService::start(cfg, &prometheus::Registry::new()).await.expect("p2p");
        handles.push(service.handle());
        let (start_tx, start_rx) = mpsc::channel(16);
        starts.push(start_tx);
        let config = SessionConfig {
            key_package: keys.0[&ids[i]].clone(),
            public_key_package: keys.1.clone(),
            timeout_ms: 10_000,
            max_attempts: btcfi_signer::session::MAX_ATTEMPTS,
        };
        tokio::spawn(node(i, service, config, ids.clone(), peers.clone(), start_rx, done_tx.clone()));
    }
    // Everyone connected to everyone before measuring.
    let deadline = Instant::now() + Duration::from_secs(60);
    while handles.iter().any(|h| h.connected_validators().len() < n - 1) {
        assert!(Instant::now() < deadline, "validators did not connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Cluster { starts, done }
}

async fn node(
    me: usize,
    mut service: NetworkService,
    config: SessionConfig<frost::Secp256K1Sha256>,
    ids: Vec<Identifier>,
    peers: Vec<btcfi_p2p::PeerId>,
    mut starts: mpsc::Receiver<Vec<u8>>,
    done: mpsc::Sender<usize>,
) {
    let net = service.handle();
    let signers: BTreeSet<Identifier> = ids.iter().copied().collect();
    let mut session: Option<(SessionId, Session<frost::Secp256K1Sha256>)> = None;
    let mut early: Vec<(Identifier, Message<frost::Secp256K1Sha256>)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
    let route = |actions: Vec<Action<frost::Secp256K1Sha256>>| {
        for a in actions {
            let (targets, m): (Vec<usize>, _) = match a {
                Action::Send { to, message } => (ids.iter().position(|i| *i == to).into_iter().collect(), message),
                Action::Broadcast(m) => ((0..ids.len()).filter(|i| *i != me).collect(), m),
                Action::Done(_) => {
                    let _ = done.try_send(me);
                    continue;
                }
                _ => continue,
            };
            let bytes = m.encode().expect("encode");
            for t in targets {
                let net = net.clone();
                let peer = peers[t];
                let bytes = bytes.clone();
                tokio::spawn(async move {
                    let _ = net.request(peer, MessageKind::Signing, bytes).await;
                });
            }
        }
    };
    loop {
        tokio::select! {
            Some(message) = starts.recv() => {
                let sid = SessionId::derive::<frost::Secp256K1Sha256>(&message, 1, &signers);
                let mut s = Session::new(config.clone(), Box::new(rand::rngs::OsRng), []);
                route(s.handle(Input::Start { message, epoch: 1, signers: signers.clone(), round: 0 }, now()));
                for (from, m) in std::mem::take(&mut early) {
                    route(s.handle(Input::Message { from, message: m }, now()));
                }
                session = Some((sid, s));
            }
            ev = service.next_event() => {
                let Some(NetworkEvent::Request { from, payload, channel, .. }) = ev else { continue };
                let _ = service.respond(channel, MessageKind::Signing, Vec::new()).await;
                let Some(idx) = peers.iter().position(|p| *p == from) else { continue };
                let Ok(m) = Message::decode(&payload) else { continue };
                let sid = match &m {
                    Message::Commitment { session, .. } | Message::SigningPackage { session, .. }
                    | Message::Share { session, .. } | Message::NewAttempt { session, .. }
                    | Message::Signature { session, .. } => *session,
                };
                match session.as_mut() {
                    Some((cur, s)) if *cur == sid => route(s.handle(Input::Message { from: ids[idx], message: m }, now())),
                    _ => early.push((ids[idx], m)),
                }
            }
            _ = tick.tick() => {
                if let Some((_, s)) = session.as_mut() {
                    route(s.handle(Input::Tick, now()));
                }
            }
        }
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let mut group = c.benchmark_group("signing_session");
    group.sample_size(20).measurement_time(Duration::from_secs(15));
    for (t, n) in [(3u16, 4u16), (5, 7), (11, 16)] {
        let keys = keys(t, n);
        let mut cluster = rt.block_on(cluster(&keys, usize::from(n)));
        let wall = Arc::new(Mutex::new((Duration::ZERO, 0u32)));
        group.bench_function(format!("p2p_loopback_t{t}_n{n}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let message: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
                    let started = Instant::now();
                    rt.block_on(async {
                        for s in &cluster.starts {
                            s.send(message.clone()).await.expect("node");
                        }
                        for _ in 0..n {
                            cluster.done.recv().await.expect("done");
                        }
                    });
                    total += started.elapsed();
                }
                let mut w = wall.lock().expect("lock");
                w.0 += total;
                w.1 += iters as u32;
                total
            })
        });
        let mut computes = Vec::new();
        for signers in [usize::from(t), usize::from(n)] {
            let compute = Arc::new(Mutex::new((Duration::ZERO, 0u32)));
            group.bench_function(format!("frost_compute_t{t}_n{n}_{signers}_signers"), |b| {
                b.iter_custom(|iters| {
                    let started = Instant::now();
                    for _ in 0..iters {
                        compute_once(&keys, signers, &[7u8; 32]);
                    }
                    let total = started.elapsed();
                    let mut c = compute.lock().expect("lock");
                    c.0 += total;
                    c.1 += iters as u32;
                    total
                })
            });
            let (c, cn) = *compute.lock().expect("lock");
            computes.push((signers, c / cn.max(1)));
        }
        let (w, wn) = *wall.lock().expect("lock");
        let w = w / wn.max(1);
        for (signers, c) in computes {
            println!(
                "(t,n)=({t},{n}): session over loopback {:.2} ms; pure FROST compute with {signers} signers {:.2} ms; ratio wall/compute {:.1}",
                w.as_secs_f64() * 1e3,
                c.as_secs_f64() * 1e3,
                w.as_secs_f64() / c.as_secs_f64().max(1e-9)
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
