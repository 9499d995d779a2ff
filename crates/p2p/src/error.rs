//! Errors of the validator network.

use libp2p::{Multiaddr, PeerId};

use crate::envelope::MessageKind;

/// Everything that can go wrong in the p2p layer.
///
/// Variants carry what a caller decides on: [`P2pError::is_retryable`] tells the node
/// whether trying again later (after peers connect, after a timeout) can succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum P2pError {
    // ---- decoding peer bytes (never retryable: the bytes are what they are) ----
    /// The bytes are shorter than the field being read.
    #[error("truncated message: needed {needed} more bytes for {field}")]
    Truncated {
        /// Field being read.
        field: &'static str,
        /// Bytes missing.
        needed: usize,
    },
    /// The envelope does not start with the `BTCFI` magic.
    #[error("not a btcfi message (bad magic)")]
    BadMagic,
    /// The envelope carries a version this node does not speak.
    #[error("unsupported wire version {0} (this node speaks version {expected}); upgrade the node", expected = crate::envelope::WIRE_VERSION)]
    UnsupportedVersion(u8),
    /// The envelope's kind byte is unknown.
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),
    /// A message or field is larger than its limit.
    #[error("{what} is {len} bytes, above the limit of {max} bytes")]
    Oversize {
        /// What was too large.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field holds a value the format does not allow.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// Bytes are left after the last field.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The kind may not travel this way (e.g. a heartbeat sent by the node itself, or a
    /// gossip kind on the wrong topic).
    #[error("message kind {kind} is not allowed {context}")]
    KindNotAllowed {
        /// The kind.
        kind: MessageKind,
        /// Where it was refused.
        context: &'static str,
    },

    // ---- configuration (fix the config and restart) ----
    /// The configuration is invalid.
    #[error("invalid p2p config: {key}: {reason}")]
    Config {
        /// Key path of the offending setting, e.g. `p2p.keypair`.
        key: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// A listen address cannot be bound.
    #[error(
        "cannot listen on {addr}: {reason}; if the address is in use, choose another port with --p2p-port or p2p.listen"
    )]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// What the OS said.
        reason: String,
    },
    /// Building the libp2p transport or behaviours failed.
    #[error("cannot build the libp2p swarm: {0}")]
    Build(String),
    /// Registering metrics failed (usually: a second service on the same registry).
    #[error("cannot register p2p metrics: {0}; each NetworkService needs its own registry")]
    Metrics(#[from] prometheus::Error),

    // ---- runtime ----
    /// The peer is not a validator of the current epoch.
    #[error("peer {0} is not a validator of this epoch")]
    NotAValidator(PeerId),
    /// No validator is subscribed to the topic yet; retry once peers are connected.
    #[error("no validator is subscribed to {kind} gossip yet; is the node connected to its peers?")]
    NoPeers {
        /// The kind that could not be published.
        kind: MessageKind,
    },
    /// Gossipsub refused to publish for another reason.
    #[error("cannot publish {kind}: {reason}")]
    Publish {
        /// The kind.
        kind: MessageKind,
        /// What gossipsub said.
        reason: String,
    },
    /// A request failed (dial failure, timeout, connection closed, refused by the peer).
    #[error("request to {peer} failed: {reason}")]
    Request {
        /// The peer.
        peer: PeerId,
        /// What happened.
        reason: String,
        /// Whether retrying later can succeed.
        retryable: bool,
    },
    /// The response channel was closed (the requester went away or timed out).
    #[error("cannot respond: the requester is gone (timeout or disconnect)")]
    ResponseChannelClosed,
    /// The network task has stopped; the node should shut down.
    #[error("the p2p network task has stopped")]
    ServiceStopped,
}

impl P2pError {
    /// Whether trying the same operation again later can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            P2pError::NoPeers { .. } | P2pError::Publish { .. } => true,
            P2pError::Request { retryable, .. } => *retryable,
            _ => false,
        }
    }
}
