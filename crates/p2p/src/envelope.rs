//! The wire envelope around every message between validators.
//!
//! ```text
//! envelope = magic "BTCFI" (5) | version u8 (= 1) | kind u8 | payload
//! ```
//!
//! The payload is the rest of the transport frame (a gossipsub message's data, or a
//! request/response body); its meaning is the kind's business. Payloads of consensus
//! and signer kinds are opaque here: those crates own their formats and their decoders.
//! The magic and the kind byte separate domains: bytes made for one purpose (a FROST
//! package, a vote) are never read as another, and bytes that are not ours at all are
//! refused at the first five bytes.
//!
//! [`Envelope::decode`] never panics and never allocates more than the payload limit
//! it is given.

use std::fmt;

use crate::P2pError;

/// Domain tag opening every envelope.
pub const MAGIC: &[u8; 5] = b"BTCFI";
/// Current envelope version. A node refuses every other version.
pub const WIRE_VERSION: u8 = 1;
/// Bytes before the payload: magic, version, kind.
pub const HEADER_LEN: usize = MAGIC.len() + 2;

/// What a message is, fixed by the envelope's kind byte.
///
/// Gossip kinds travel on their own gossipsub topic ([`MessageKind::topic_name`]); the
/// envelope's kind must match the topic it arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum MessageKind {
    /// A signed observation (a consensus vote). Gossip. Payload: consensus wire bytes.
    Observation,
    /// A quorum certificate. Gossip, or direct. Payload: consensus wire bytes.
    Certificate,
    /// Liveness and chain heights of a validator. Gossip, produced by the service
    /// itself. Payload: [`Heartbeat`](crate::Heartbeat) encoding.
    Heartbeat,
    /// A catch-up request (certificates this node missed). Direct only.
    CatchUpRequest,
    /// The answer to a [`MessageKind::CatchUpRequest`]. Direct only.
    CatchUpResponse,
    /// A threshold-signing round message (commitments, signing package, shares,
    /// result). Gossip or direct. Payload: signer wire bytes.
    Signing,
    /// A DKG round message (round 1 broadcast and its echo, encrypted round 2
    /// packages). Gossip or direct. Payload: signer wire bytes.
    Dkg,
}

impl MessageKind {
    /// Every kind, in kind-byte order.
    pub const ALL: [MessageKind; 7] = [
        MessageKind::Observation,
        MessageKind::Certificate,
        MessageKind::Heartbeat,
        MessageKind::CatchUpRequest,
        MessageKind::CatchUpResponse,
        MessageKind::Signing,
        MessageKind::Dkg,
    ];

    /// Kinds that travel by gossip, each on its own topic.
    pub const GOSSIP: [MessageKind; 5] = [
        MessageKind::Observation,
        MessageKind::Certificate,
        MessageKind::Heartbeat,
        MessageKind::Signing,
        MessageKind::Dkg,
    ];

    /// The kind byte.
    pub const fn to_byte(self) -> u8 {
        match self {
            MessageKind::Observation => 0x01,
            MessageKind::Certificate => 0x02,
            MessageKind::Heartbeat => 0x03,
            MessageKind::CatchUpRequest => 0x04,
            MessageKind::CatchUpResponse => 0x05,
            MessageKind::Signing => 0x06,
            MessageKind::Dkg => 0x07,
        }
    }

    /// The kind with this byte, if any.
    pub const fn from_byte(byte: u8) -> Option<MessageKind> {
        Some(match byte {
            0x01 => MessageKind::Observation,
            0x02 => MessageKind::Certificate,
            0x03 => MessageKind::Heartbeat,
            0x04 => MessageKind::CatchUpRequest,
            0x05 => MessageKind::CatchUpResponse,
            0x06 => MessageKind::Signing,
            0x07 => MessageKind::Dkg,
            _ => return None,
        })
    }

    /// A stable lowercase name, used in topics, metric labels and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            MessageKind::Observation => "observation",
            MessageKind::Certificate => "certificate",
            MessageKind::Heartbeat => "heartbeat",
            MessageKind::CatchUpRequest => "catch_up_request",
            MessageKind::CatchUpResponse => "catch_up_response",
            MessageKind::Signing => "signing",
            MessageKind::Dkg => "dkg",
        }
    }

    /// Whether this kind may be gossiped.
    pub const fn is_gossip(self) -> bool {
        !matches!(self, MessageKind::CatchUpRequest | MessageKind::CatchUpResponse)
    }

    /// Whether this kind may travel as a request or a response. Heartbeats may not:
    /// they are gossip made by the service itself.
    pub const fn is_direct(self) -> bool {
        !matches!(self, MessageKind::Heartbeat)
    }

    /// The gossipsub topic of a gossip kind under `prefix` (e.g.
    /// `btcfi/mainnet/epoch-3` gives `btcfi/mainnet/epoch-3/observation/1`). The
    /// trailing `/1` is the envelope version, so nodes of two versions never share a
    /// mesh by accident.
    pub fn topic_name(self, prefix: &str) -> String {
        format!("{prefix}/{}/{WIRE_VERSION}", self.as_str())
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed message: what it is, and its bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Envelope {
    /// What the payload is.
    pub kind: MessageKind,
    /// The payload, opaque to the p2p layer except for heartbeats.
    pub payload: Vec<u8>,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope").field("kind", &self.kind).field("payload_len", &self.payload.len()).finish()
    }
}

impl Envelope {
    /// A new envelope.
    pub fn new(kind: MessageKind, payload: Vec<u8>) -> Self {
        Envelope { kind, payload }
    }

    /// The wire encoding: header, then the payload.
    pub fn encode(&self) -> Vec<u8> {
        encode_parts(self.kind, &self.payload)
    }

    /// Decodes [`Envelope::encode`]'s output, refusing payloads above `max_payload`
    /// bytes. Never panics.
    pub fn decode(bytes: &[u8], max_payload: usize) -> Result<Self, P2pError> {
        let (kind, payload) = decode_parts(bytes, max_payload)?;
        Ok(Envelope { kind, payload: payload.to_vec() })
    }
}

/// Encodes an envelope without building an [`Envelope`] first.
pub fn encode_parts(kind: MessageKind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN.saturating_add(payload.len()));
    out.extend_from_slice(MAGIC);
    out.push(WIRE_VERSION);
    out.push(kind.to_byte());
    out.extend_from_slice(payload);
    out
}

/// Decodes an envelope and borrows its payload. Never panics.
pub fn decode_parts(bytes: &[u8], max_payload: usize) -> Result<(MessageKind, &[u8]), P2pError> {
    let Some((magic, rest)) = bytes.split_first_chunk::<5>() else {
        // Anything shorter than the magic is not ours at all.
        return if MAGIC.starts_with(bytes) {
            Err(P2pError::Truncated { field: "magic", needed: MAGIC.len().saturating_sub(bytes.len()) })
        } else {
            Err(P2pError::BadMagic)
        };
    };
    if magic != MAGIC {
        return Err(P2pError::BadMagic);
    }
    let Some((&version, rest)) = rest.split_first() else {
        return Err(P2pError::Truncated { field: "version", needed: 1 });
    };
    if version != WIRE_VERSION {
        return Err(P2pError::UnsupportedVersion(version));
    }
    let Some((&kind, payload)) = rest.split_first() else {
        return Err(P2pError::Truncated { field: "kind", needed: 1 });
    };
    let kind = MessageKind::from_byte(kind).ok_or(P2pError::UnknownKind(kind))?;
    if payload.len() > max_payload {
        return Err(P2pError::Oversize { what: "payload", len: payload.len(), max: max_payload });
    }
    Ok((kind, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn snapshot_of_the_format() {
        let bytes = Envelope::new(MessageKind::Observation, vec![0xaa, 0xbb]).encode();
        assert_eq!(bytes, b"BTCFI\x01\x01\xaa\xbb");
        assert_eq!(Envelope::new(MessageKind::Dkg, vec![]).encode(), b"BTCFI\x01\x07");
    }

    #[test]
    fn kind_bytes_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for kind in MessageKind::ALL {
            assert_eq!(MessageKind::from_byte(kind.to_byte()), Some(kind));
            assert!(seen.insert(kind.to_byte()));
        }
        assert_eq!(MessageKind::from_byte(0), None);
        assert_eq!(MessageKind::from_byte(0x08), None);
        for kind in MessageKind::GOSSIP {
            assert!(kind.is_gossip());
        }
    }

    #[test]
    fn refusals() {
        assert!(matches!(Envelope::decode(b"", 10), Err(P2pError::Truncated { field: "magic", .. })));
        assert!(matches!(Envelope::decode(b"BTC", 10), Err(P2pError::Truncated { field: "magic", .. })));
        assert!(matches!(Envelope::decode(b"XYZ", 10), Err(P2pError::BadMagic)));
        assert!(matches!(Envelope::decode(b"BTCFX\x01\x01", 10), Err(P2pError::BadMagic)));
        assert!(matches!(Envelope::decode(b"BTCFI", 10), Err(P2pError::Truncated { field: "version", .. })));
        assert!(matches!(Envelope::decode(b"BTCFI\x02\x01", 10), Err(P2pError::UnsupportedVersion(2))));
        assert!(matches!(Envelope::decode(b"BTCFI\x01", 10), Err(P2pError::Truncated { field: "kind", .. })));
        assert!(matches!(Envelope::decode(b"BTCFI\x01\x09", 10), Err(P2pError::UnknownKind(9))));
        assert!(matches!(Envelope::decode(b"BTCFI\x01\x01abc", 2), Err(P2pError::Oversize { len: 3, max: 2, .. })));
        assert!(Envelope::decode(b"BTCFI\x01\x01ab", 2).is_ok());
    }

    fn kind() -> impl Strategy<Value = MessageKind> {
        proptest::sample::select(MessageKind::ALL.to_vec())
    }

    proptest! {
        // Seeded: a failure replays on every machine (and is committed to proptest-regressions/).
        #![proptest_config(proptest::test_runner::Config { rng_seed: proptest::test_runner::RngSeed::Fixed(0xB7CF1), ..proptest::test_runner::Config::default() })]
        #[test]
        fn round_trip(kind in kind(), payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let envelope = Envelope::new(kind, payload);
            let bytes = envelope.encode();
            prop_assert_eq!(bytes.len(), HEADER_LEN + envelope.payload.len());
            prop_assert_eq!(Envelope::decode(&bytes, 512)?, envelope);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), max in 0usize..64) {
            if let Ok(envelope) = Envelope::decode(&bytes, max) {
                // Canonical: what decodes re-encodes to the same bytes.
                prop_assert_eq!(envelope.encode(), bytes);
            }
        }

        #[test]
        fn decode_never_panics_with_a_valid_header(kind in any::<u8>(), version in 0u8..3,
                                                   tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = MAGIC.to_vec();
            bytes.push(version);
            bytes.push(kind);
            bytes.extend(tail);
            let _ = Envelope::decode(&bytes, 32);
        }
    }
}
