//! [`NetworkService`]: owns the swarm in a tokio task; [`NetworkHandle`]: what the
//! rest of the node calls.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    sync::Arc,
    time::Instant,
};

use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm, allow_block_list,
    gossipsub::{self, IdentTopic, MessageAcceptance, PublishError, TopicHash},
    identify, request_response,
    swarm::{
        ListenError, SwarmEvent,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use prometheus::Registry;
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use tracing::{Instrument, debug, info, info_span, trace, warn};

use crate::{
    ChainHeights, DropReason, Envelope, Heartbeat, MessageKind, Metrics, NetworkConfig, P2pError,
    behaviour::{Behaviour, BehaviourEvent, build_swarm},
    envelope::{decode_parts, encode_parts},
    metrics::Via,
    rate_limit::PeerRateLimiter,
};

/// Something the node must know about.
#[derive(Debug)]
#[non_exhaustive]
pub enum NetworkEvent {
    /// Gossip authored by validator `from` (the gossipsub signature proves the author;
    /// the payload's own signatures are the consensus/signer crates' business).
    Gossip {
        /// Author of the message.
        from: PeerId,
        /// Its kind (never [`MessageKind::Heartbeat`]: those arrive as
        /// [`NetworkEvent::Heartbeat`]).
        kind: MessageKind,
        /// The payload.
        payload: Vec<u8>,
    },
    /// A request from validator `from`; answer with [`NetworkHandle::respond`], or drop
    /// the channel to refuse.
    Request {
        /// The requester.
        from: PeerId,
        /// Its kind.
        kind: MessageKind,
        /// The payload.
        payload: Vec<u8>,
        /// Where the answer goes.
        channel: ResponseChannel,
    },
    /// A validator connected (first connection).
    PeerConnected {
        /// The validator.
        peer: PeerId,
    },
    /// A validator's last connection closed.
    PeerDisconnected {
        /// The validator.
        peer: PeerId,
    },
    /// A peer outside the validator set tried to connect and was closed.
    PeerRefused {
        /// The stranger.
        peer: PeerId,
    },
    /// A validator's heartbeat.
    Heartbeat {
        /// The validator.
        from: PeerId,
        /// What it reported.
        heartbeat: Heartbeat,
    },
}

/// The pending answer to a [`NetworkEvent::Request`]. Dropping it refuses the request
/// (the requester sees a failure).
pub struct ResponseChannel {
    peer: PeerId,
    inner: request_response::ResponseChannel<Vec<u8>>,
}

impl ResponseChannel {
    /// Who is waiting for the answer.
    pub fn peer(&self) -> PeerId {
        self.peer
    }
}

impl fmt::Debug for ResponseChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseChannel").field("peer", &self.peer).finish_non_exhaustive()
    }
}

/// What the network looks like now. Read with [`NetworkHandle::status`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkStatus {
    /// Validators with at least one open connection.
    pub connected: BTreeSet<PeerId>,
    /// Validators subscribed to this node's gossip topics (they receive what it
    /// publishes). A validator appears here shortly after it connects.
    pub gossip_peers: BTreeSet<PeerId>,
    /// Addresses this node listens on (the real ports when `/tcp/0` was asked).
    pub listen_addrs: Vec<Multiaddr>,
    /// The last heartbeat of each validator.
    pub heartbeats: BTreeMap<PeerId, Heartbeat>,
}

enum Command {
    Publish {
        kind: MessageKind,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<(), P2pError>>,
    },
    Request {
        peer: PeerId,
        kind: MessageKind,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<Envelope, P2pError>>,
    },
    Respond {
        channel: ResponseChannel,
        kind: MessageKind,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<(), P2pError>>,
    },
    AddPeerAddress {
        peer: PeerId,
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), P2pError>>,
    },
    Shutdown,
}

/// A cheap, cloneable way to use the network from anywhere in the node.
#[derive(Clone)]
pub struct NetworkHandle {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<NetworkStatus>,
    heights: Arc<watch::Sender<Vec<ChainHeights>>>,
    metrics: Metrics,
    local_peer_id: PeerId,
    max_gossip_payload: usize,
    max_direct_payload: usize,
}

impl fmt::Debug for NetworkHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetworkHandle").field("local_peer_id", &self.local_peer_id).finish_non_exhaustive()
    }
}

impl NetworkHandle {
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, P2pError>>) -> Command) -> Result<T, P2pError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(make(reply)).await.map_err(|_| P2pError::ServiceStopped)?;
        answer.await.map_err(|_| P2pError::ServiceStopped)?
    }

    /// Gossips `payload` as `kind` to every validator. Refuses heartbeats (the service
    /// sends those), direct-only kinds and payloads above the gossip limit; fails with
    /// a retryable [`P2pError::NoPeers`] while no validator is subscribed.
    pub async fn publish(&self, kind: MessageKind, payload: Vec<u8>) -> Result<(), P2pError> {
        if kind == MessageKind::Heartbeat || !kind.is_gossip() {
            return Err(P2pError::KindNotAllowed { kind, context: "in publish" });
        }
        if payload.len() > self.max_gossip_payload {
            return Err(P2pError::Oversize {
                what: "gossip payload",
                len: payload.len(),
                max: self.max_gossip_payload,
            });
        }
        self.call(|reply| Command::Publish { kind, payload, reply }).await
    }

    /// Sends a request to validator `peer` (dialling it if needed) and waits for the
    /// answer, at most the configured request timeout.
    pub async fn request(&self, peer: PeerId, kind: MessageKind, payload: Vec<u8>) -> Result<Envelope, P2pError> {
        if !kind.is_direct() {
            return Err(P2pError::KindNotAllowed { kind, context: "in a request" });
        }
        if payload.len() > self.max_direct_payload {
            return Err(P2pError::Oversize {
                what: "request payload",
                len: payload.len(),
                max: self.max_direct_payload,
            });
        }
        self.call(|reply| Command::Request { peer, kind, payload, reply }).await
    }

    /// Answers a [`NetworkEvent::Request`].
    pub async fn respond(&self, channel: ResponseChannel, kind: MessageKind, payload: Vec<u8>) -> Result<(), P2pError> {
        if !kind.is_direct() {
            return Err(P2pError::KindNotAllowed { kind, context: "in a response" });
        }
        if payload.len() > self.max_direct_payload {
            return Err(P2pError::Oversize {
                what: "response payload",
                len: payload.len(),
                max: self.max_direct_payload,
            });
        }
        self.call(|reply| Command::Respond { channel, kind, payload, reply }).await
    }

    /// Records an address of validator `peer` and dials it. Refuses non-validators.
    pub async fn add_peer_address(&self, peer: PeerId, addr: Multiaddr) -> Result<(), P2pError> {
        self.call(|reply| Command::AddPeerAddress { peer, addr, reply }).await
    }

    /// Sets the heights the next heartbeats carry (one entry per chain).
    pub fn set_chain_heights(&self, heights: Vec<ChainHeights>) {
        self.heights.send_replace(heights);
    }

    /// Validators connected now.
    pub fn connected_validators(&self) -> Vec<PeerId> {
        self.status.borrow().connected.iter().copied().collect()
    }

    /// A snapshot of the network's state.
    pub fn status(&self) -> NetworkStatus {
        self.status.borrow().clone()
    }

    /// Waits until at least `n` validators receive this node's gossip (the node's
    /// readiness check; wrap it in a timeout). Fails if the service stops.
    pub async fn wait_for_gossip_peers(&self, n: usize) -> Result<(), P2pError> {
        let mut status = self.status.clone();
        status.wait_for(|s| s.gossip_peers.len() >= n).await.map(|_| ()).map_err(|_| P2pError::ServiceStopped)
    }

    /// The counters of this service.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }
}

/// Owns the libp2p swarm (in a spawned task) and hands events to the node.
///
/// The node calls [`NetworkService::next_event`] in its `select!` loop and uses
/// [`NetworkHandle`]s (from [`NetworkService::handle`]) to send. Dropping the service
/// stops the network.
pub struct NetworkService {
    handle: NetworkHandle,
    events: mpsc::Receiver<NetworkEvent>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for NetworkService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetworkService").field("local_peer_id", &self.handle.local_peer_id).finish_non_exhaustive()
    }
}

impl NetworkService {
    /// Validates `config`, registers metrics in `registry`, builds the swarm, binds the
    /// listen addresses (returning once each is bound) and starts the network task,
    /// which dials the validators. Must run inside a tokio runtime.
    pub async fn start(config: NetworkConfig, registry: &Registry) -> Result<Self, P2pError> {
        config.validate()?;
        let metrics = Metrics::new(registry)?;
        let mut swarm = build_swarm(&config, &metrics)?;
        let local_peer_id = *swarm.local_peer_id();

        let mut topics = BTreeMap::new();
        let mut topic_kinds = HashMap::new();
        for kind in MessageKind::GOSSIP {
            let topic = IdentTopic::new(kind.topic_name(&config.topic_prefix));
            swarm.behaviour_mut().gossipsub.subscribe(&topic).map_err(|e| P2pError::Build(e.to_string()))?;
            topic_kinds.insert(topic.hash(), kind);
            topics.insert(kind, topic);
        }

        let listen_addrs = listen(&mut swarm, &config.listen_addrs).await?;
        info!(target: "p2p::conn", peer_id = %local_peer_id, ?listen_addrs, "p2p listening");

        let validators: BTreeSet<PeerId> = config.validators.iter().map(|v| v.peer_id).collect();
        let mut addresses: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
        for v in config.validators.iter().filter(|v| v.peer_id != local_peer_id) {
            for addr in &v.addrs {
                swarm.add_peer_address(v.peer_id, addr.clone());
            }
            addresses.insert(v.peer_id, v.addrs.clone());
        }

        let (status_tx, status_rx) = watch::channel(NetworkStatus { listen_addrs, ..NetworkStatus::default() });
        let (heights_tx, heights_rx) = watch::channel(Vec::new());
        let (command_tx, command_rx) = mpsc::channel(1024);
        let (event_tx, event_rx) = mpsc::channel(config.limits.event_queue);

        let handle = NetworkHandle {
            commands: command_tx,
            status: status_rx,
            heights: Arc::new(heights_tx),
            metrics: metrics.clone(),
            local_peer_id,
            max_gossip_payload: config.limits.max_gossip_payload,
            max_direct_payload: config.limits.max_direct_payload,
        };
        let driver = Driver {
            swarm,
            local_peer_id,
            validators,
            addresses,
            topics,
            topic_kinds,
            gossip_limiter: PeerRateLimiter::new(config.limits.gossip_rate),
            gossip_bytes_limiter: PeerRateLimiter::new(config.limits.gossip_bytes_rate),
            request_limiter: PeerRateLimiter::new(config.limits.request_rate),
            max_gossip_payload: config.limits.max_gossip_payload,
            max_direct_payload: config.limits.max_direct_payload,
            pending_requests: HashMap::new(),
            status: status_tx,
            heights: heights_rx,
            events: event_tx,
            metrics,
            node_version: config.node_version.clone(),
            heartbeat_interval: config.heartbeat_interval,
            redial_interval: config.redial_interval,
        };
        let span = info_span!("p2p", peer_id = %local_peer_id);
        let task = tokio::spawn(driver.run(command_rx).instrument(span));
        Ok(NetworkService { handle, events: event_rx, task: Some(task) })
    }

    /// A handle for sending; clone it freely.
    pub fn handle(&self) -> NetworkHandle {
        self.handle.clone()
    }

    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.handle.local_peer_id
    }

    /// The bound listen addresses (with the real ports).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.handle.status.borrow().listen_addrs.clone()
    }

    /// The next event. `None` means the network task has stopped: a critical failure
    /// for the node.
    pub async fn next_event(&mut self) -> Option<NetworkEvent> {
        self.events.recv().await
    }

    /// Stops the network task and waits for it to end; connections are closed.
    pub async fn shutdown(mut self) {
        let _ = self.handle.commands.send(Command::Shutdown).await;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Same as [`NetworkHandle::publish`].
    pub async fn publish(&self, kind: MessageKind, payload: Vec<u8>) -> Result<(), P2pError> {
        self.handle.publish(kind, payload).await
    }

    /// Same as [`NetworkHandle::request`].
    pub async fn request(&self, peer: PeerId, kind: MessageKind, payload: Vec<u8>) -> Result<Envelope, P2pError> {
        self.handle.request(peer, kind, payload).await
    }

    /// Same as [`NetworkHandle::respond`].
    pub async fn respond(&self, channel: ResponseChannel, kind: MessageKind, payload: Vec<u8>) -> Result<(), P2pError> {
        self.handle.respond(channel, kind, payload).await
    }

    /// Same as [`NetworkHandle::connected_validators`].
    pub fn connected_validators(&self) -> Vec<PeerId> {
        self.handle.connected_validators()
    }

    /// Same as [`NetworkHandle::metrics`].
    pub fn metrics(&self) -> &Metrics {
        self.handle.metrics()
    }
}

impl Drop for NetworkService {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Binds every address and waits until each listener reports its real address.
async fn listen(swarm: &mut Swarm<Behaviour>, addrs: &[Multiaddr]) -> Result<Vec<Multiaddr>, P2pError> {
    let mut pending = HashMap::new();
    for addr in addrs {
        ensure_port_free(addr)?;
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| P2pError::Listen { addr: addr.clone(), reason: e.to_string() })?;
        pending.insert(id, addr.clone());
    }
    let mut bound = Vec::new();
    let deadline = tokio::time::sleep(std::time::Duration::from_secs(10));
    tokio::pin!(deadline);
    while !pending.is_empty() {
        tokio::select! {
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { listener_id, address } => {
                    pending.remove(&listener_id);
                    bound.push(address);
                }
                SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                    let addr = pending.remove(&listener_id).unwrap_or_else(Multiaddr::empty);
                    let reason = match reason {
                        Ok(()) => "listener closed".to_owned(),
                        Err(e) => e.to_string(),
                    };
                    return Err(P2pError::Listen { addr, reason });
                }
                SwarmEvent::ListenerError { listener_id, error } => {
                    let addr = pending.remove(&listener_id).unwrap_or_else(Multiaddr::empty);
                    return Err(P2pError::Listen { addr, reason: error.to_string() });
                }
                other => trace!(target: "p2p::conn", ?other, "event while binding"),
            },
            () = &mut deadline => {
                let addr = pending.into_values().next().unwrap_or_else(Multiaddr::empty);
                return Err(P2pError::Listen { addr, reason: "no address reported within 10 s".to_owned() });
            }
        }
    }
    Ok(bound)
}

/// libp2p's TCP listeners set `SO_REUSEPORT`, so a second node on the same port would
/// bind silently and share inbound connections with the first. A plain bind (no
/// `SO_REUSEPORT`) of the same address fails in that case; do it first.
fn ensure_port_free(addr: &Multiaddr) -> Result<(), P2pError> {
    use libp2p::multiaddr::Protocol;
    use std::net::{IpAddr, SocketAddr};
    let mut ip = None;
    let mut port = None;
    for protocol in addr.iter() {
        match protocol {
            Protocol::Ip4(a) => ip = Some(IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(IpAddr::V6(a)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    match (ip, port) {
        (Some(ip), Some(port)) if port != 0 => std::net::TcpListener::bind(SocketAddr::new(ip, port))
            .map(drop)
            .map_err(|e| P2pError::Listen { addr: addr.clone(), reason: e.to_string() }),
        _ => Ok(()),
    }
}

/// The task that owns the swarm. It never blocks on the node: events are handed over
/// with `try_send` (a full queue drops and counts), commands are answered at once.
struct Driver {
    swarm: Swarm<Behaviour>,
    local_peer_id: PeerId,
    validators: BTreeSet<PeerId>,
    addresses: HashMap<PeerId, Vec<Multiaddr>>,
    topics: BTreeMap<MessageKind, IdentTopic>,
    topic_kinds: HashMap<TopicHash, MessageKind>,
    gossip_limiter: PeerRateLimiter,
    gossip_bytes_limiter: PeerRateLimiter,
    request_limiter: PeerRateLimiter,
    max_gossip_payload: usize,
    max_direct_payload: usize,
    pending_requests:
        HashMap<request_response::OutboundRequestId, (PeerId, oneshot::Sender<Result<Envelope, P2pError>>)>,
    status: watch::Sender<NetworkStatus>,
    heights: watch::Receiver<Vec<ChainHeights>>,
    events: mpsc::Sender<NetworkEvent>,
    metrics: Metrics,
    node_version: String,
    heartbeat_interval: std::time::Duration,
    redial_interval: std::time::Duration,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        self.dial_validators();
        let mut heartbeat = tokio::time::interval(self.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut redial = tokio::time::interval(self.redial_interval);
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = commands.recv() => match command {
                    Some(Command::Shutdown) | None => break,
                    Some(command) => self.on_command(command),
                },
                _ = heartbeat.tick() => self.send_heartbeat(),
                _ = redial.tick() => self.dial_validators(),
            }
        }
        info!(target: "p2p::conn", "p2p network stopped");
    }

    fn is_validator(&self, peer: &PeerId) -> bool {
        self.validators.contains(peer)
    }

    fn emit(&self, event: NetworkEvent) {
        if let Err(mpsc::error::TrySendError::Full(event)) = self.events.try_send(event) {
            self.metrics.on_dropped(DropReason::QueueFull);
            warn!(target: "p2p::conn", ?event, "event queue full, event dropped; the node is not keeping up");
        }
    }

    fn dial_validators(&mut self) {
        for (peer, addrs) in &self.addresses {
            if addrs.is_empty() || self.swarm.is_connected(peer) {
                continue;
            }
            let opts = DialOpts::peer_id(*peer)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .addresses(addrs.clone())
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                debug!(target: "p2p::conn", %peer, error = %e, "dial not started");
            }
        }
    }

    fn update_status(&mut self, f: impl FnOnce(&mut NetworkStatus)) {
        self.status.send_modify(f);
    }

    fn refresh_gossip_peers(&mut self) {
        let Some(topic) = self.topics.get(&MessageKind::Observation).map(|t| t.hash()) else {
            return;
        };
        let peers: BTreeSet<PeerId> = self
            .swarm
            .behaviour()
            .gossipsub
            .all_peers()
            .filter(|(peer, topics)| self.validators.contains(*peer) && topics.contains(&&topic))
            .map(|(peer, _)| *peer)
            .collect();
        self.update_status(|s| s.gossip_peers = peers);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Publish { kind, payload, reply } => {
                let _ = reply.send(self.publish(kind, &payload));
            }
            Command::Request { peer, kind, payload, reply } => {
                if !self.is_validator(&peer) || peer == self.local_peer_id {
                    let _ = reply.send(Err(P2pError::NotAValidator(peer)));
                    return;
                }
                let id = self.swarm.behaviour_mut().request_response.send_request(&peer, encode_parts(kind, &payload));
                self.metrics.on_sent(kind, Via::Direct);
                self.pending_requests.insert(id, (peer, reply));
            }
            Command::Respond { channel, kind, payload, reply } => {
                let result = self
                    .swarm
                    .behaviour_mut()
                    .request_response
                    .send_response(channel.inner, encode_parts(kind, &payload))
                    .map_err(|_| P2pError::ResponseChannelClosed);
                if result.is_ok() {
                    self.metrics.on_sent(kind, Via::Direct);
                }
                let _ = reply.send(result);
            }
            Command::AddPeerAddress { peer, addr, reply } => {
                if !self.is_validator(&peer) {
                    let _ = reply.send(Err(P2pError::NotAValidator(peer)));
                    return;
                }
                if peer != self.local_peer_id {
                    self.swarm.add_peer_address(peer, addr.clone());
                    let known = self.addresses.entry(peer).or_default();
                    if !known.contains(&addr) {
                        known.push(addr);
                    }
                    self.dial_validators();
                }
                let _ = reply.send(Ok(()));
            }
            Command::Shutdown => {}
        }
    }

    fn publish(&mut self, kind: MessageKind, payload: &[u8]) -> Result<(), P2pError> {
        let topic = self.topics.get(&kind).ok_or(P2pError::KindNotAllowed { kind, context: "on gossip" })?.clone();
        match self.swarm.behaviour_mut().gossipsub.publish(topic, encode_parts(kind, payload)) {
            Ok(_) => {
                self.metrics.on_sent(kind, Via::Gossip);
                trace!(target: "p2p::gossip", %kind, len = payload.len(), "published");
                Ok(())
            }
            Err(PublishError::NoPeersSubscribedToTopic | PublishError::AllQueuesFull(_)) => {
                Err(P2pError::NoPeers { kind })
            }
            Err(e) => Err(P2pError::Publish { kind, reason: e.to_string() }),
        }
    }

    fn send_heartbeat(&mut self) {
        let heartbeat = Heartbeat { version: self.node_version.clone(), chains: self.heights.borrow().clone() };
        match self.publish(MessageKind::Heartbeat, &heartbeat.encode()) {
            Ok(()) => {}
            Err(e) => debug!(target: "p2p::heartbeat", error = %e, "heartbeat not sent"),
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(event)) => self.on_gossipsub(event),
            SwarmEvent::Behaviour(BehaviourEvent::RequestResponse(event)) => self.on_request_response(event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                debug!(target: "p2p::conn", peer = %peer_id, agent = %info.agent_version, "identified");
            }
            SwarmEvent::Behaviour(_) => {}
            SwarmEvent::ConnectionEstablished { peer_id, num_established, endpoint, .. } => {
                if !self.is_validator(&peer_id) {
                    // The allowlist denies strangers before this point; this is the
                    // second lock on the door.
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    self.refused(peer_id, "connection established");
                    return;
                }
                if num_established.get() == 1 {
                    info!(target: "p2p::conn", peer = %peer_id, addr = %endpoint.get_remote_address(), "validator connected");
                    self.update_status(|s| {
                        s.connected.insert(peer_id);
                    });
                    self.metrics.set_connected_validators(self.status.borrow().connected.len());
                    self.emit(NetworkEvent::PeerConnected { peer: peer_id });
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established, cause, .. } => {
                if num_established == 0 && self.is_validator(&peer_id) {
                    info!(target: "p2p::conn", peer = %peer_id, cause = ?cause, "validator disconnected");
                    self.update_status(|s| {
                        s.connected.remove(&peer_id);
                        s.gossip_peers.remove(&peer_id);
                    });
                    self.metrics.set_connected_validators(self.status.borrow().connected.len());
                    self.emit(NetworkEvent::PeerDisconnected { peer: peer_id });
                }
            }
            SwarmEvent::IncomingConnectionError { peer_id, error, send_back_addr, .. } => match (peer_id, &error) {
                (Some(peer), ListenError::Denied { cause })
                    if cause.downcast_ref::<allow_block_list::NotAllowed>().is_some() =>
                {
                    self.refused(peer, "inbound connection");
                    debug!(target: "p2p::conn", %peer, from = %send_back_addr, "stranger refused");
                }
                _ => {
                    debug!(target: "p2p::conn", ?peer_id, from = %send_back_addr, error = %error, "inbound connection failed")
                }
            },
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(target: "p2p::conn", ?peer_id, error = %error, "dial failed");
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                self.update_status(|s| {
                    if !s.listen_addrs.contains(&address) {
                        s.listen_addrs.push(address);
                    }
                });
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.update_status(|s| s.listen_addrs.retain(|a| a != &address));
            }
            SwarmEvent::ListenerClosed { addresses, reason, .. } => {
                warn!(target: "p2p::conn", ?addresses, ?reason, "listener closed");
            }
            SwarmEvent::ListenerError { error, .. } => {
                warn!(target: "p2p::conn", error = %error, "listener error");
            }
            other => trace!(target: "p2p::conn", ?other, "swarm event"),
        }
    }

    fn refused(&mut self, peer: PeerId, context: &'static str) {
        self.metrics.on_peer_refused();
        info!(target: "p2p::conn", %peer, context, "refused a peer outside the validator set");
        self.emit(NetworkEvent::PeerRefused { peer });
    }

    fn on_gossipsub(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message { propagation_source, message_id, message } => {
                let acceptance = self.validate_gossip(propagation_source, message);
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    acceptance,
                );
            }
            gossipsub::Event::Subscribed { .. } | gossipsub::Event::Unsubscribed { .. } => self.refresh_gossip_peers(),
            gossipsub::Event::GossipsubNotSupported { peer_id } => {
                warn!(target: "p2p::gossip", peer = %peer_id, "validator does not speak gossipsub");
            }
            gossipsub::Event::SlowPeer { peer_id, failed_messages } => {
                warn!(target: "p2p::gossip", peer = %peer_id, ?failed_messages, "validator too slow to take gossip");
            }
        }
    }

    /// Decides the fate of one gossip message, and hands accepted ones to the node.
    /// `Reject` (invalid) and `Ignore` (valid but unwanted now) both stop propagation;
    /// `Reject` also counts against the forwarder once peer scoring is enabled.
    fn validate_gossip(&mut self, via: PeerId, message: gossipsub::Message) -> MessageAcceptance {
        let refuse = |metrics: &Metrics, reason: DropReason, acceptance: MessageAcceptance| {
            metrics.on_dropped(reason);
            acceptance
        };
        // Strict validation guarantees a verified author; a non-validator author is
        // refused even when a (misconfigured) validator relays it.
        let Some(author) = message.source.filter(|a| self.is_validator(a) && self.is_validator(&via)) else {
            debug!(target: "p2p::gossip", source = ?message.source, %via, "gossip from outside the validator set");
            return refuse(&self.metrics, DropReason::UnknownSource, MessageAcceptance::Reject);
        };
        if author == self.local_peer_id {
            return MessageAcceptance::Ignore;
        }
        let Some(&topic_kind) = self.topic_kinds.get(&message.topic) else {
            return refuse(&self.metrics, DropReason::KindNotAllowed, MessageAcceptance::Reject);
        };
        let max = self.max_gossip_payload;
        if message.data.len() > max.saturating_add(crate::envelope::HEADER_LEN) {
            debug!(target: "p2p::gossip", %author, len = message.data.len(), "oversize gossip");
            return refuse(&self.metrics, DropReason::Oversize, MessageAcceptance::Reject);
        }
        let now = Instant::now();
        if !self.gossip_limiter.allow(author, now)
            || !self.gossip_bytes_limiter.allow_n(author, message.data.len() as u64, now)
        {
            trace!(target: "p2p::gossip", %author, "rate limited");
            return refuse(&self.metrics, DropReason::RateLimited, MessageAcceptance::Ignore);
        }
        let (kind, payload) = match decode_parts(&message.data, max) {
            Ok(parts) => parts,
            Err(e) => {
                debug!(target: "p2p::gossip", %author, error = %e, "malformed gossip");
                return refuse(&self.metrics, drop_reason(&e), MessageAcceptance::Reject);
            }
        };
        if kind != topic_kind {
            return refuse(&self.metrics, DropReason::KindNotAllowed, MessageAcceptance::Reject);
        }
        if kind == MessageKind::Heartbeat {
            let heartbeat = match Heartbeat::decode(payload) {
                Ok(hb) => hb,
                Err(e) => {
                    debug!(target: "p2p::heartbeat", %author, error = %e, "malformed heartbeat");
                    return refuse(&self.metrics, drop_reason(&e), MessageAcceptance::Reject);
                }
            };
            trace!(target: "p2p::heartbeat", %author, version = %heartbeat.version, "heartbeat");
            self.metrics.on_received(kind, Via::Gossip);
            let stored = heartbeat.clone();
            self.update_status(|s| {
                s.heartbeats.insert(author, stored);
            });
            self.emit(NetworkEvent::Heartbeat { from: author, heartbeat });
            return MessageAcceptance::Accept;
        }
        self.metrics.on_received(kind, Via::Gossip);
        trace!(target: "p2p::gossip", %author, %kind, len = payload.len(), "gossip accepted");
        self.emit(NetworkEvent::Gossip { from: author, kind, payload: payload.to_vec() });
        MessageAcceptance::Accept
    }

    fn on_request_response(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => self.on_request(peer, request, channel),
                request_response::Message::Response { request_id, response } => {
                    let Some((peer, reply)) = self.pending_requests.remove(&request_id) else {
                        return;
                    };
                    let result = match Envelope::decode(&response, self.max_direct_payload) {
                        Ok(envelope) if envelope.kind.is_direct() => {
                            self.metrics.on_received(envelope.kind, Via::Direct);
                            Ok(envelope)
                        }
                        Ok(envelope) => {
                            self.metrics.on_dropped(DropReason::KindNotAllowed);
                            Err(P2pError::KindNotAllowed { kind: envelope.kind, context: "in a response" })
                        }
                        Err(e) => {
                            self.metrics.on_dropped(drop_reason(&e));
                            Err(P2pError::Request {
                                peer,
                                reason: format!("malformed response: {e}"),
                                retryable: false,
                            })
                        }
                    };
                    let _ = reply.send(result);
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                self.metrics.on_request_failure();
                debug!(target: "p2p::request", %peer, error = %error, "request failed");
                if let Some((_, reply)) = self.pending_requests.remove(&request_id) {
                    let retryable = !matches!(error, request_response::OutboundFailure::UnsupportedProtocols);
                    let _ = reply.send(Err(P2pError::Request { peer, reason: error.to_string(), retryable }));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(target: "p2p::request", %peer, error = %error, "inbound request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_request(&mut self, peer: PeerId, request: Vec<u8>, channel: request_response::ResponseChannel<Vec<u8>>) {
        // Dropping `channel` refuses the request.
        if !self.is_validator(&peer) {
            self.metrics.on_dropped(DropReason::UnknownSource);
            return;
        }
        if !self.request_limiter.allow(peer, Instant::now()) {
            self.metrics.on_dropped(DropReason::RateLimited);
            trace!(target: "p2p::request", %peer, "request rate limited");
            return;
        }
        let (kind, payload) = match decode_parts(&request, self.max_direct_payload) {
            Ok(parts) => parts,
            Err(e) => {
                debug!(target: "p2p::request", %peer, error = %e, "malformed request");
                self.metrics.on_dropped(drop_reason(&e));
                return;
            }
        };
        if !kind.is_direct() {
            self.metrics.on_dropped(DropReason::KindNotAllowed);
            return;
        }
        self.metrics.on_received(kind, Via::Direct);
        self.emit(NetworkEvent::Request {
            from: peer,
            kind,
            payload: payload.to_vec(),
            channel: ResponseChannel { peer, inner: channel },
        });
    }
}

fn drop_reason(error: &P2pError) -> DropReason {
    match error {
        P2pError::Oversize { .. } => DropReason::Oversize,
        P2pError::KindNotAllowed { .. } => DropReason::KindNotAllowed,
        _ => DropReason::Malformed,
    }
}
