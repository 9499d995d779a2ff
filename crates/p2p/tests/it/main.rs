//! Integration tests of the validator network over real libp2p sockets on 127.0.0.1.
//!
//! Every wait has a deadline; conditions are re-checked as events arrive (and on a
//! short poll tick for metrics that change without an event), never assumed after a
//! sleep.

use std::{
    collections::HashMap,
    future::Future,
    time::{Duration, Instant},
};

use btcfi_p2p::{
    ChainHeights, DropReason, Keypair, Limits, MessageKind, Multiaddr, NetworkConfig, NetworkEvent, NetworkHandle,
    NetworkService, P2pError, PeerId, RateLimit, ValidatorPeer,
};
use prometheus::Registry;

const DEADLINE: Duration = Duration::from_secs(30);

struct Node {
    service: NetworkService,
    handle: NetworkHandle,
    peer: PeerId,
    addr: Multiaddr,
}

fn localhost() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().unwrap()
}

fn config(key: Keypair, validators: &[PeerId], tweak: &dyn Fn(&mut NetworkConfig)) -> NetworkConfig {
    let set = validators.iter().map(|p| ValidatorPeer::new(*p, vec![])).collect();
    let mut config = NetworkConfig::new(key, vec![localhost()], set);
    config.topic_prefix = "btcfi/test/epoch-1".into();
    config.node_version = "btcfi-node/test".into();
    config.heartbeat_interval = Duration::from_millis(300);
    config.redial_interval = Duration::from_millis(500);
    tweak(&mut config);
    config
}

async fn start(config: NetworkConfig) -> Node {
    let service = NetworkService::start(config, &Registry::new()).await.unwrap();
    let handle = service.handle();
    let addr = service.listen_addrs().into_iter().next().unwrap();
    Node { peer: service.local_peer_id(), handle, addr, service }
}

/// Starts `n` validators sharing one set, `tweak(i, config)` adjusting node `i`, and
/// connects them all (each dials the ones after it). Returns once every node gossips
/// to every other.
async fn network(n: usize, tweak: impl Fn(usize, &mut NetworkConfig)) -> Vec<Node> {
    let keys: Vec<Keypair> = (0..n).map(|_| Keypair::generate_ed25519()).collect();
    let peers: Vec<PeerId> = keys.iter().map(|k| k.public().to_peer_id()).collect();
    let mut nodes = Vec::new();
    for (i, key) in keys.into_iter().enumerate() {
        nodes.push(start(config(key, &peers, &|c| tweak(i, c))).await);
    }
    for i in 0..n {
        for j in i + 1..n {
            nodes[i].handle.add_peer_address(nodes[j].peer, nodes[j].addr.clone()).await.unwrap();
        }
    }
    for node in &nodes {
        within(node.handle.wait_for_gossip_peers(n - 1)).await.unwrap();
    }
    nodes
}

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future).await.expect("deadline passed")
}

/// Drains `service`'s events into `seen` until `done(seen, service)` holds, or fails at
/// the deadline. Re-checks on every event and on a short tick (metrics move without
/// events).
async fn drain_until(
    service: &mut NetworkService,
    seen: &mut Vec<NetworkEvent>,
    mut done: impl FnMut(&[NetworkEvent], &NetworkService) -> bool,
) {
    let deadline = Instant::now() + DEADLINE;
    while !done(seen, service) {
        assert!(Instant::now() < deadline, "deadline passed; events seen: {seen:?}");
        tokio::select! {
            event = service.next_event() => seen.push(event.expect("network stopped")),
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

fn gossip_from(seen: &[NetworkEvent], author: PeerId, kind: MessageKind) -> Vec<&[u8]> {
    seen.iter()
        .filter_map(|e| match e {
            NetworkEvent::Gossip { from, kind: k, payload } if *from == author && *k == kind => {
                Some(payload.as_slice())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_validators_mesh_and_gossip_arrives_exactly_once() {
    let mut nodes = network(4, |_, _| {}).await;
    for node in &nodes {
        assert_eq!(node.handle.connected_validators().len(), 3);
    }
    let author = nodes[0].peer;
    nodes[0].handle.publish(MessageKind::Observation, b"vote-1".to_vec()).await.unwrap();
    // A fence: once it arrived, any duplicate of the first would have arrived too
    // (same author, same connections, and gossipsub deduplicates before delivery).
    nodes[0].handle.publish(MessageKind::Observation, b"fence".to_vec()).await.unwrap();

    for node in nodes.iter_mut().skip(1) {
        let mut seen = Vec::new();
        drain_until(&mut node.service, &mut seen, |seen, _| {
            gossip_from(seen, author, MessageKind::Observation).contains(&&b"fence"[..])
        })
        .await;
        let votes = gossip_from(&seen, author, MessageKind::Observation);
        assert_eq!(votes.iter().filter(|p| **p == b"vote-1").count(), 1, "{seen:?}");
        assert_eq!(node.handle.metrics().received(MessageKind::Observation), 2);
    }
    // The author does not hear its own gossip.
    let mut seen = Vec::new();
    let own = nodes[0].service.metrics().received(MessageKind::Observation);
    assert_eq!(own, 0);
    drain_until(&mut nodes[0].service, &mut seen, |_, s| s.metrics().sent(MessageKind::Observation) == 2).await;
    assert!(gossip_from(&seen, author, MessageKind::Observation).is_empty());

    // Direct-only and service-owned kinds cannot be published.
    assert!(matches!(
        nodes[1].handle.publish(MessageKind::Heartbeat, vec![]).await,
        Err(P2pError::KindNotAllowed { .. })
    ));
    assert!(matches!(
        nodes[1].handle.publish(MessageKind::CatchUpRequest, vec![]).await,
        Err(P2pError::KindNotAllowed { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_response_round_trips() {
    let mut nodes = network(3, |_, _| {}).await;
    let responder = nodes.pop().unwrap();
    let responder_peer = responder.peer;
    let responder_handle = responder.handle.clone();
    let mut responder_service = responder.service;
    // The responder answers every catch-up request by echoing the payload reversed.
    let answering = tokio::spawn(async move {
        let mut answered = 0;
        while let Some(event) = responder_service.next_event().await {
            if let NetworkEvent::Request { from, kind: MessageKind::CatchUpRequest, mut payload, channel } = event {
                assert_eq!(channel.peer(), from);
                payload.reverse();
                responder_handle.respond(channel, MessageKind::CatchUpResponse, payload).await.unwrap();
                answered += 1;
                if answered == 2 {
                    return responder_service;
                }
            }
        }
        panic!("network stopped");
    });

    for node in &nodes {
        let answer =
            within(node.handle.request(responder_peer, MessageKind::CatchUpRequest, b"abc".to_vec())).await.unwrap();
        assert_eq!(answer.kind, MessageKind::CatchUpResponse);
        assert_eq!(answer.payload, b"cba");
        assert_eq!(node.handle.metrics().received(MessageKind::CatchUpResponse), 1);
    }
    let responder_service = within(answering).await.unwrap();
    assert_eq!(responder_service.metrics().received(MessageKind::CatchUpRequest), 2);
    assert_eq!(responder_service.metrics().sent(MessageKind::CatchUpResponse), 2);

    // Requests to strangers and heartbeat requests are refused locally.
    let stranger = Keypair::generate_ed25519().public().to_peer_id();
    assert!(matches!(
        nodes[0].handle.request(stranger, MessageKind::CatchUpRequest, vec![]).await,
        Err(P2pError::NotAValidator(p)) if p == stranger
    ));
    assert!(matches!(
        nodes[0].handle.request(responder_peer, MessageKind::Heartbeat, vec![]).await,
        Err(P2pError::KindNotAllowed { .. })
    ));
    // A dropped response channel is a failure at the requester, not a hang.
    let failing = nodes[1].handle.clone();
    let target = nodes[0].peer;
    let ask = tokio::spawn(async move { failing.request(target, MessageKind::Signing, b"x".to_vec()).await });
    let mut seen = Vec::new();
    drain_until(&mut nodes[0].service, &mut seen, |seen, _| {
        seen.iter().any(|e| matches!(e, NetworkEvent::Request { kind: MessageKind::Signing, .. }))
    })
    .await;
    drop(seen); // drops the ResponseChannel
    assert!(within(ask).await.unwrap().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_is_refused_and_never_heard() {
    let mut nodes = network(4, |_, _| {}).await;
    // The stranger knows the validators and believes itself one of them.
    let key = Keypair::generate_ed25519();
    let mut its_set: Vec<PeerId> = nodes.iter().map(|n| n.peer).collect();
    its_set.push(key.public().to_peer_id());
    let stranger = start(config(key, &its_set, &|_| {})).await;
    for node in &nodes {
        stranger.handle.add_peer_address(node.peer, node.addr.clone()).await.unwrap();
    }

    for node in nodes.iter_mut() {
        let mut seen = Vec::new();
        drain_until(&mut node.service, &mut seen, |seen, _| {
            seen.iter().any(|e| matches!(e, NetworkEvent::PeerRefused { peer } if *peer == stranger.peer))
        })
        .await;
        assert!(node.handle.metrics().peers_refused() >= 1);
        assert!(!node.handle.connected_validators().contains(&stranger.peer));
        assert!(!seen.iter().any(|e| matches!(e, NetworkEvent::PeerConnected { peer } if *peer == stranger.peer)));
    }
    // The stranger has nobody to gossip to.
    assert!(matches!(
        stranger.handle.publish(MessageKind::Observation, b"fake".to_vec()).await,
        Err(P2pError::NoPeers { .. })
    ));
    assert!(stranger.handle.status().gossip_peers.is_empty());
    // And the validators keep talking among themselves.
    let author = nodes[0].peer;
    nodes[0].handle.publish(MessageKind::Observation, b"still-here".to_vec()).await.unwrap();
    let mut seen = Vec::new();
    drain_until(&mut nodes[1].service, &mut seen, |seen, _| {
        !gossip_from(seen, author, MessageKind::Observation).is_empty()
    })
    .await;
    assert!(!seen.iter().any(|e| matches!(e, NetworkEvent::Gossip { from, .. } if *from == stranger.peer)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_authored_by_a_stranger_is_rejected_even_when_a_validator_relays_it() {
    // Validator 1 is misconfigured: it lets the stranger in and relays its gossip.
    // Everyone else must drop that gossip: the author, not the relay, decides.
    let stranger_key = Keypair::generate_ed25519();
    let stranger_peer = stranger_key.public().to_peer_id();
    let mut nodes = network(4, |i, c| {
        if i == 1 {
            c.validators.push(ValidatorPeer::new(stranger_peer, vec![]));
        }
    })
    .await;
    let relay = nodes[1].peer;
    let stranger = start(config(stranger_key, &[stranger_peer, relay], &|_| {})).await;
    stranger.handle.add_peer_address(relay, nodes[1].addr.clone()).await.unwrap();
    within(stranger.handle.wait_for_gossip_peers(1)).await.unwrap();
    // Wait until the relay has the stranger in its mesh before publishing.
    within(nodes[1].handle.wait_for_gossip_peers(4)).await.unwrap();
    stranger.handle.publish(MessageKind::Observation, b"forged".to_vec()).await.unwrap();

    // The misconfigured relay surfaces it (that is its misconfiguration)...
    let mut seen = Vec::new();
    drain_until(&mut nodes[1].service, &mut seen, |seen, _| {
        !gossip_from(seen, stranger_peer, MessageKind::Observation).is_empty()
    })
    .await;
    // ...and everyone else drops it as authored outside the set.
    for i in [0, 2, 3] {
        let mut seen = Vec::new();
        drain_until(&mut nodes[i].service, &mut seen, |_, s| s.metrics().dropped(DropReason::UnknownSource) >= 1).await;
        assert!(gossip_from(&seen, stranger_peer, MessageKind::Observation).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_messages_are_dropped_and_counted() {
    const LIMIT: usize = 16 * 1024;
    // Node 0 has generous limits (as a buggy or hostile validator would); the others
    // accept 16 KiB payloads.
    let mut nodes = network(3, |i, c| {
        let limit = if i == 0 { 4 * LIMIT } else { LIMIT };
        c.limits.max_gossip_payload = limit;
        c.limits.max_direct_payload = limit;
    })
    .await;
    let author = nodes[0].peer;
    let big = vec![7u8; LIMIT + 1000];

    // Refused at the sender when the sender's own limit is exceeded.
    assert!(matches!(
        nodes[1].handle.publish(MessageKind::Observation, big.clone()).await,
        Err(P2pError::Oversize { .. })
    ));

    nodes[0].handle.publish(MessageKind::Observation, big.clone()).await.unwrap();
    nodes[0].handle.publish(MessageKind::Observation, b"fence".to_vec()).await.unwrap();
    for node in nodes.iter_mut().skip(1) {
        let mut seen = Vec::new();
        drain_until(&mut node.service, &mut seen, |seen, s| {
            s.metrics().oversize() >= 1 && gossip_from(seen, author, MessageKind::Observation).contains(&&b"fence"[..])
        })
        .await;
        assert!(gossip_from(&seen, author, MessageKind::Observation).iter().all(|p| p.len() <= LIMIT));
    }

    // An oversize request fails at the requester and is counted by the receiver's codec.
    let target = nodes[1].peer;
    let before = nodes[1].handle.metrics().oversize();
    let result = within(nodes[0].handle.request(target, MessageKind::CatchUpRequest, big)).await;
    assert!(result.is_err(), "{result:?}");
    let mut seen = Vec::new();
    drain_until(&mut nodes[1].service, &mut seen, |_, s| s.metrics().oversize() > before).await;
    assert!(!seen.iter().any(|e| matches!(e, NetworkEvent::Request { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_validator_is_rate_limited() {
    const SENT: usize = 60;
    const BURST: u32 = 5;
    const RATE: f64 = 2.0;
    let mut nodes = network(3, |i, c| {
        if i != 0 {
            c.limits.gossip_rate = RateLimit::new(RATE, BURST);
        }
        // Heartbeats also cost tokens; keep them out of the way.
        c.heartbeat_interval = Duration::from_secs(3600);
    })
    .await;
    let flooder = nodes[0].peer;
    let started = Instant::now();
    for i in 0..SENT {
        nodes[0].handle.publish(MessageKind::Observation, format!("spam-{i}").into_bytes()).await.unwrap();
    }
    for node in nodes.iter_mut().skip(1) {
        let mut seen = Vec::new();
        // Every message is either delivered or dropped by the limiter, exactly once.
        drain_until(&mut node.service, &mut seen, |seen, s| {
            gossip_from(seen, flooder, MessageKind::Observation).len() as u64 + s.metrics().rate_limited()
                == SENT as u64
        })
        .await;
        assert_eq!(
            node.handle.metrics().received(MessageKind::Observation),
            (SENT as u64) - node.handle.metrics().rate_limited()
        );
        let delivered = gossip_from(&seen, flooder, MessageKind::Observation).len() as f64;
        let allowed = f64::from(BURST) + RATE * started.elapsed().as_secs_f64() + 1.0;
        assert!(delivered <= allowed, "delivered {delivered}, allowed {allowed}");
        assert!(delivered >= f64::from(BURST));
        assert!(node.handle.metrics().rate_limited() >= (SENT as u64) - (allowed as u64));
    }
}

/// Few messages, each large: the message rate lets them all through, the byte budget
/// does not. Small gossip of the same validator still passes once the budget refills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_flooding_bytes_is_cut_off_by_its_byte_budget() {
    const SENT: usize = 20;
    const SIZE: usize = 50_000;
    const BURST_BYTES: u32 = 200_000;
    let mut nodes = network(2, |i, c| {
        if i != 0 {
            c.limits.gossip_rate = RateLimit::new(1_000.0, 1_000);
            c.limits.gossip_bytes_rate = RateLimit::new(10_000.0, BURST_BYTES);
        }
        c.heartbeat_interval = Duration::from_secs(3600);
    })
    .await;
    let flooder = nodes[0].peer;
    let started = Instant::now();
    for i in 0..SENT {
        let mut payload = vec![b'x'; SIZE];
        payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
        nodes[0].handle.publish(MessageKind::Observation, payload).await.unwrap();
    }
    let node = &mut nodes[1];
    let mut seen = Vec::new();
    drain_until(&mut node.service, &mut seen, |seen, s| {
        gossip_from(seen, flooder, MessageKind::Observation).len() as u64 + s.metrics().rate_limited() == SENT as u64
    })
    .await;
    let delivered = gossip_from(&seen, flooder, MessageKind::Observation).len();
    let budget = f64::from(BURST_BYTES) + 10_000.0 * started.elapsed().as_secs_f64();
    assert!((delivered * SIZE) as f64 <= budget, "delivered {delivered} × {SIZE} B over a budget of {budget} B");
    assert!(delivered >= 3, "the burst lets some through: {delivered}");
    assert!(node.handle.metrics().rate_limited() >= (SENT - delivered) as u64);
    // A small message passes: the budget is in bytes.
    nodes[0].handle.publish(MessageKind::Observation, b"small".to_vec()).await.unwrap();
    let node = &mut nodes[1];
    drain_until(&mut node.service, &mut seen, |seen, _| {
        gossip_from(seen, flooder, MessageKind::Observation).contains(&&b"small"[..])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_carry_version_and_heights() {
    let mut nodes = network(2, |i, c| {
        c.node_version = format!("btcfi-node/test-{i}");
    })
    .await;
    let heights: Vec<ChainHeights> = vec![(0, 850_000, 849_994).into(), (1, 19_000_000, 18_999_936).into()];
    nodes[0].handle.set_chain_heights(heights.clone());
    let author = nodes[0].peer;

    let mut seen = Vec::new();
    drain_until(&mut nodes[1].service, &mut seen, |seen, _| {
        seen.iter().any(|e| matches!(e, NetworkEvent::Heartbeat { from, heartbeat } if *from == author && heartbeat.chains == heights))
    })
    .await;
    let NetworkEvent::Heartbeat { heartbeat, .. } =
        seen.iter().rev().find(|e| matches!(e, NetworkEvent::Heartbeat { from, .. } if *from == author)).unwrap()
    else {
        unreachable!()
    };
    assert_eq!(heartbeat.version, "btcfi-node/test-0");
    let status = nodes[1].handle.status();
    let stored: HashMap<_, _> = status.heartbeats.into_iter().collect();
    assert_eq!(stored[&author].chains, heights);
    assert!(nodes[1].handle.metrics().received(MessageKind::Heartbeat) >= 1);
    // Heartbeats never surface as plain gossip.
    assert!(gossip_from(&seen, author, MessageKind::Heartbeat).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_validator_is_redialled() {
    let keys = [Keypair::generate_ed25519(), Keypair::generate_ed25519()];
    let peers: Vec<PeerId> = keys.iter().map(|k| k.public().to_peer_id()).collect();
    let mut first = start(config(keys[0].clone(), &peers, &|_| {})).await;
    let second = start(config(keys[1].clone(), &peers, &|_| {})).await;
    let (peer, addr) = (second.peer, second.addr.clone());
    first.handle.add_peer_address(peer, addr.clone()).await.unwrap();
    within(first.handle.wait_for_gossip_peers(1)).await.unwrap();

    second.service.shutdown().await;
    let mut seen = Vec::new();
    drain_until(&mut first.service, &mut seen, |seen, _| {
        seen.iter().any(|e| matches!(e, NetworkEvent::PeerDisconnected { peer: p } if *p == peer))
    })
    .await;
    assert!(first.handle.connected_validators().is_empty());

    // Same identity, same address: the survivor's redial loop brings it back.
    let restarted = start(config(keys[1].clone(), &peers, &|c| c.listen_addrs = vec![addr.clone()])).await;
    assert_eq!(restarted.addr, addr);
    seen.clear();
    drain_until(&mut first.service, &mut seen, |seen, _| {
        seen.iter().any(|e| matches!(e, NetworkEvent::PeerConnected { peer: p } if *p == peer))
    })
    .await;
    within(first.handle.wait_for_gossip_peers(1)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_is_refused_with_the_key_path() {
    let key = Keypair::generate_ed25519();
    let other = Keypair::generate_ed25519().public().to_peer_id();
    let bad = config(key, &[other], &|_| {});
    assert!(matches!(
        NetworkService::start(bad, &Registry::new()).await,
        Err(P2pError::Config { key: "p2p.validators", .. })
    ));
    let key = Keypair::generate_ed25519();
    let me = key.public().to_peer_id();
    let mut bad = config(key, &[me], &|_| {});
    bad.limits = Limits { max_gossip_payload: 0, ..Limits::default() };
    assert!(matches!(
        NetworkService::start(bad, &Registry::new()).await,
        Err(P2pError::Config { key: "p2p.limits.max_gossip_payload", .. })
    ));
    // A port in use is an operator error with a hint.
    let key = Keypair::generate_ed25519();
    let me = key.public().to_peer_id();
    let taken = start(config(key.clone(), &[me], &|_| {})).await;
    let clash = config(key, &[me], &|c| c.listen_addrs = vec![taken.addr.clone()]);
    let err = NetworkService::start(clash, &Registry::new()).await.unwrap_err();
    assert!(matches!(err, P2pError::Listen { .. }), "{err}");
    assert!(err.to_string().contains("choose another port"), "{err}");
}
