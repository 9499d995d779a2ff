//! Prometheus metrics of the validator network.
//!
//! The node makes one [`prometheus::Registry`] and passes it to [`Metrics::new`]; no
//! globals. Every name starts with `btcfi_p2p_`; labels are low-cardinality (message
//! kind, path, drop reason), never peer ids. The getters let the node and tests read
//! the counters without scraping.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::{MessageKind, P2pError};

/// How a message travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// Gossipsub.
    Gossip,
    /// Request-response (a request or a response).
    Direct,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Gossip => "gossip",
            Via::Direct => "direct",
        }
    }
}

/// Why an inbound message was dropped before reaching the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// The sender exceeded its rate limit.
    RateLimited,
    /// The message was larger than the configured limit.
    Oversize,
    /// The bytes did not decode (bad magic, version, kind, heartbeat body).
    Malformed,
    /// Gossip whose author is not a validator of the epoch (or is anonymous).
    UnknownSource,
    /// A kind that may not travel that way (wrong topic, heartbeat by request, ...).
    KindNotAllowed,
    /// The node did not drain events fast enough and the queue was full.
    QueueFull,
}

impl DropReason {
    /// Every reason.
    pub const ALL: [DropReason; 6] = [
        DropReason::RateLimited,
        DropReason::Oversize,
        DropReason::Malformed,
        DropReason::UnknownSource,
        DropReason::KindNotAllowed,
        DropReason::QueueFull,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::RateLimited => "rate_limited",
            DropReason::Oversize => "oversize",
            DropReason::Malformed => "malformed",
            DropReason::UnknownSource => "unknown_source",
            DropReason::KindNotAllowed => "kind_not_allowed",
            DropReason::QueueFull => "queue_full",
        }
    }
}

/// Counters of the p2p layer. Cheap to clone (the counters are shared).
#[derive(Debug, Clone)]
pub struct Metrics {
    received: IntCounterVec,
    sent: IntCounterVec,
    dropped: IntCounterVec,
    peers_refused: IntCounter,
    request_failures: IntCounter,
    connected_validators: IntGauge,
}

impl Metrics {
    /// Creates the counters and registers them in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, P2pError> {
        let metrics = Self::unregistered()?;
        registry.register(Box::new(metrics.received.clone()))?;
        registry.register(Box::new(metrics.sent.clone()))?;
        registry.register(Box::new(metrics.dropped.clone()))?;
        registry.register(Box::new(metrics.peers_refused.clone()))?;
        registry.register(Box::new(metrics.request_failures.clone()))?;
        registry.register(Box::new(metrics.connected_validators.clone()))?;
        Ok(metrics)
    }

    /// Counters registered nowhere (fuzzing, tools).
    pub fn unregistered() -> Result<Self, P2pError> {
        Ok(Metrics {
            received: IntCounterVec::new(
                Opts::new(
                    "btcfi_p2p_messages_received_total",
                    "Messages from validators accepted and handed to the node, by kind and path.",
                ),
                &["kind", "via"],
            )?,
            sent: IntCounterVec::new(
                Opts::new("btcfi_p2p_messages_sent_total", "Messages this node sent, by kind and path."),
                &["kind", "via"],
            )?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "btcfi_p2p_messages_dropped_total",
                    "Inbound messages dropped before reaching the node, by reason.",
                ),
                &["reason"],
            )?,
            peers_refused: IntCounter::with_opts(Opts::new(
                "btcfi_p2p_peers_refused_total",
                "Connections closed because the peer is not a validator of this epoch.",
            ))?,
            request_failures: IntCounter::with_opts(Opts::new(
                "btcfi_p2p_request_failures_total",
                "Outbound requests that failed (dial failure, timeout, closed connection).",
            ))?,
            connected_validators: IntGauge::with_opts(Opts::new(
                "btcfi_p2p_connected_validators",
                "Validators of this epoch currently connected.",
            ))?,
        })
    }

    pub(crate) fn on_received(&self, kind: MessageKind, via: Via) {
        self.received.with_label_values(&[kind.as_str(), via.as_str()]).inc();
    }
    pub(crate) fn on_sent(&self, kind: MessageKind, via: Via) {
        self.sent.with_label_values(&[kind.as_str(), via.as_str()]).inc();
    }
    pub(crate) fn on_dropped(&self, reason: DropReason) {
        self.dropped.with_label_values(&[reason.as_str()]).inc();
    }
    pub(crate) fn on_peer_refused(&self) {
        self.peers_refused.inc();
    }
    pub(crate) fn on_request_failure(&self) {
        self.request_failures.inc();
    }
    pub(crate) fn set_connected_validators(&self, n: usize) {
        self.connected_validators.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Messages of `kind` accepted from peers (gossip and direct).
    pub fn received(&self, kind: MessageKind) -> u64 {
        [Via::Gossip, Via::Direct]
            .iter()
            .map(|via| self.received.with_label_values(&[kind.as_str(), via.as_str()]).get())
            .sum()
    }
    /// Messages of `kind` sent (gossip and direct).
    pub fn sent(&self, kind: MessageKind) -> u64 {
        [Via::Gossip, Via::Direct]
            .iter()
            .map(|via| self.sent.with_label_values(&[kind.as_str(), via.as_str()]).get())
            .sum()
    }
    /// Inbound messages dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped.with_label_values(&[reason.as_str()]).get()
    }
    /// Inbound messages dropped by the rate limiter.
    pub fn rate_limited(&self) -> u64 {
        self.dropped(DropReason::RateLimited)
    }
    /// Inbound messages dropped for being too large.
    pub fn oversize(&self) -> u64 {
        self.dropped(DropReason::Oversize)
    }
    /// Connections refused because the peer is not a validator.
    pub fn peers_refused(&self) -> u64 {
        self.peers_refused.get()
    }
    /// Outbound requests that failed.
    pub fn request_failures(&self) -> u64 {
        self.request_failures.get()
    }
    /// Validators currently connected.
    pub fn connected_validators(&self) -> u64 {
        u64::try_from(self.connected_validators.get()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_once_per_registry_with_the_prefix() {
        let registry = Registry::new();
        let metrics = Metrics::new(&registry).unwrap();
        metrics.on_received(MessageKind::Observation, Via::Gossip);
        metrics.on_received(MessageKind::Observation, Via::Direct);
        metrics.on_dropped(DropReason::Oversize);
        assert_eq!(metrics.received(MessageKind::Observation), 2);
        assert_eq!(metrics.oversize(), 1);
        for family in registry.gather() {
            assert!(family.name().starts_with("btcfi_p2p_"), "{}", family.name());
            assert!(!family.help().is_empty());
        }
        assert!(Metrics::new(&registry).is_err(), "a second service on one registry is refused");
    }
}
