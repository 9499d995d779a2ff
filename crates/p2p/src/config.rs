//! Typed settings of the validator network.
//!
//! The node parses its TOML/env configuration into a [`NetworkConfig`]; this crate
//! does not read files. [`NetworkConfig::validate`] reports the first bad setting with
//! its key path.

use std::{fmt, time::Duration};

use libp2p::{Multiaddr, PeerId, identity::Keypair};

use crate::{P2pError, RateLimit};

/// A validator of the epoch: its libp2p identity and where to dial it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatorPeer {
    /// Peer id (from its ed25519 public key).
    pub peer_id: PeerId,
    /// Addresses to dial, e.g. `/ip4/10.0.0.2/tcp/9000`. May be empty for a validator
    /// that only dials in, or when addresses are supplied later with
    /// [`NetworkHandle::add_peer_address`](crate::NetworkHandle::add_peer_address).
    pub addrs: Vec<Multiaddr>,
}

impl ValidatorPeer {
    /// A validator with dial addresses.
    pub fn new(peer_id: PeerId, addrs: Vec<Multiaddr>) -> Self {
        ValidatorPeer { peer_id, addrs }
    }
}

/// Size and rate limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest gossip payload (after the envelope header). Larger messages are refused
    /// at publish and dropped (and counted) on receipt.
    pub max_gossip_payload: usize,
    /// Largest request or response payload (catch-up answers can be large).
    pub max_direct_payload: usize,
    /// Gossip messages each validator may author, per second with bursts, as seen by
    /// this node. Votes and certificates are batched (up to 1,024 votes in a message),
    /// so a block of thousands of deposits is a few dozen messages; a flood of small
    /// messages is cut off at the rate.
    pub gossip_rate: RateLimit,
    /// Gossip bytes each validator may author, per second with bursts: votes and
    /// certificates travel in batches, so the budget is in bytes as well as messages
    /// (a 10,000-deposit burst is a few MiB; a flood of large messages is cut off).
    pub gossip_bytes_rate: RateLimit,
    /// Requests each validator may send this node. Signing runs on requests (a few
    /// per session and peer, sessions in flight in the tens): at 50 a second a burst of
    /// mints was throttled here, its attempts timed out and were retried.
    pub request_rate: RateLimit,
    /// Request streams open at once per connection (libp2p request-response drops
    /// inbound streams beyond it; its default of 100 was reached by a signing burst).
    pub max_concurrent_streams: usize,
    /// Connections kept per peer (2 lets simultaneous dials both succeed).
    pub max_connections_per_peer: u32,
    /// Inbound connections still in the handshake. Refusal of non-validators happens
    /// after the noise handshake, so this bounds the work strangers can cause.
    pub max_pending_incoming: u32,
    /// Events buffered for the node before new ones are dropped (and counted).
    pub event_queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_gossip_payload: 256 * 1024,
            max_direct_payload: 4 * 1024 * 1024,
            gossip_rate: RateLimit::new(200.0, 2_000),
            gossip_bytes_rate: RateLimit::new(8.0 * 1024.0 * 1024.0, 64 * 1024 * 1024),
            request_rate: RateLimit::new(2_000.0, 8_000),
            max_concurrent_streams: 512,
            max_connections_per_peer: 2,
            max_pending_incoming: 32,
            event_queue: 16_384,
        }
    }
}

/// Everything the validator network needs.
#[derive(Clone)]
pub struct NetworkConfig {
    /// This validator's libp2p identity. Must be ed25519.
    pub keypair: Keypair,
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/9000` (`/tcp/0` picks a port).
    pub listen_addrs: Vec<Multiaddr>,
    /// The epoch's validator set, this node included. Nobody else is let in.
    pub validators: Vec<ValidatorPeer>,
    /// Prefix of the gossip topics; put the network and epoch in it
    /// (e.g. `btcfi/mainnet/epoch-3`) so epochs and networks never share a mesh.
    pub topic_prefix: String,
    /// Version string sent in heartbeats and identify (e.g. `btcfi-node/0.1.0`).
    pub node_version: String,
    /// Period of this node's heartbeat gossip.
    pub heartbeat_interval: Duration,
    /// How long a request waits for its response.
    pub request_timeout: Duration,
    /// How often disconnected validators are dialled again.
    pub redial_interval: Duration,
    /// Size and rate limits.
    pub limits: Limits,
}

impl fmt::Debug for NetworkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The keypair is a secret: show only the identity it proves.
        f.debug_struct("NetworkConfig")
            .field("peer_id", &self.keypair.public().to_peer_id())
            .field("listen_addrs", &self.listen_addrs)
            .field("validators", &self.validators)
            .field("topic_prefix", &self.topic_prefix)
            .field("node_version", &self.node_version)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("request_timeout", &self.request_timeout)
            .field("redial_interval", &self.redial_interval)
            .field("limits", &self.limits)
            .finish()
    }
}

impl NetworkConfig {
    /// A configuration with default topics, intervals and limits.
    pub fn new(keypair: Keypair, listen_addrs: Vec<Multiaddr>, validators: Vec<ValidatorPeer>) -> Self {
        NetworkConfig {
            keypair,
            listen_addrs,
            validators,
            topic_prefix: "btcfi".to_owned(),
            node_version: concat!("btcfi-p2p/", env!("CARGO_PKG_VERSION")).to_owned(),
            heartbeat_interval: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            redial_interval: Duration::from_secs(5),
            limits: Limits::default(),
        }
    }

    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    /// Checks the settings; the error names the key path.
    pub fn validate(&self) -> Result<(), P2pError> {
        let bad = |key, reason: &str| Err(P2pError::Config { key, reason: reason.to_owned() });
        if self.keypair.clone().try_into_ed25519().is_err() {
            return bad("p2p.keypair", "must be an ed25519 key");
        }
        if self.listen_addrs.is_empty() {
            return bad("p2p.listen", "at least one listen address is needed");
        }
        if !self.validators.iter().any(|v| v.peer_id == self.local_peer_id()) {
            return Err(P2pError::Config {
                key: "p2p.validators",
                reason: format!(
                    "this node's peer id {} is not in the validator set; is the key file the right one?",
                    self.local_peer_id()
                ),
            });
        }
        let mut ids: Vec<_> = self.validators.iter().map(|v| v.peer_id).collect();
        ids.sort();
        if ids.windows(2).any(|w| w.first() == w.get(1)) {
            return bad("p2p.validators", "a peer id appears twice");
        }
        if self.topic_prefix.is_empty() {
            return bad("p2p.topic_prefix", "must not be empty");
        }
        if self.heartbeat_interval.is_zero() {
            return bad("p2p.heartbeat_interval", "must be positive");
        }
        if self.request_timeout.is_zero() {
            return bad("p2p.request_timeout", "must be positive");
        }
        if self.redial_interval.is_zero() {
            return bad("p2p.redial_interval", "must be positive");
        }
        let l = &self.limits;
        if l.max_gossip_payload == 0 || l.max_gossip_payload > 64 * 1024 * 1024 {
            return bad("p2p.limits.max_gossip_payload", "must be between 1 byte and 64 MiB");
        }
        if l.max_direct_payload == 0 || l.max_direct_payload > 256 * 1024 * 1024 {
            return bad("p2p.limits.max_direct_payload", "must be between 1 byte and 256 MiB");
        }
        for (key, rate) in [
            ("p2p.limits.gossip_rate", l.gossip_rate),
            ("p2p.limits.gossip_bytes_rate", l.gossip_bytes_rate),
            ("p2p.limits.request_rate", l.request_rate),
        ] {
            if !rate.per_second.is_finite() || rate.per_second < 0.0 || rate.burst == 0 {
                return bad(key, "per_second must be a finite non-negative number and burst at least 1");
            }
        }
        if l.max_concurrent_streams == 0 {
            return bad("p2p.limits.max_concurrent_streams", "must be at least 1");
        }
        if l.max_connections_per_peer == 0 {
            return bad("p2p.limits.max_connections_per_peer", "must be at least 1");
        }
        if l.event_queue == 0 {
            return bad("p2p.limits.event_queue", "must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NetworkConfig {
        let key = Keypair::generate_ed25519();
        let me = ValidatorPeer::new(key.public().to_peer_id(), vec![]);
        NetworkConfig::new(key, vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()], vec![me])
    }

    #[test]
    fn defaults_validate_and_debug_hides_the_key() {
        let c = config();
        c.validate().unwrap();
        let shown = format!("{c:?}");
        assert!(shown.contains(&c.local_peer_id().to_string()));
        assert!(!shown.contains("Keypair"));
    }

    #[test]
    fn errors_name_the_key() {
        let mut c = config();
        c.validators.clear();
        assert!(matches!(c.validate(), Err(P2pError::Config { key: "p2p.validators", .. })));
        let mut c = config();
        c.validators.push(c.validators[0].clone());
        assert!(matches!(c.validate(), Err(P2pError::Config { key: "p2p.validators", .. })));
        let mut c = config();
        c.limits.gossip_rate.burst = 0;
        assert!(matches!(c.validate(), Err(P2pError::Config { key: "p2p.limits.gossip_rate", .. })));
        let mut c = config();
        c.listen_addrs.clear();
        assert!(matches!(c.validate(), Err(P2pError::Config { key: "p2p.listen", .. })));
    }
}
