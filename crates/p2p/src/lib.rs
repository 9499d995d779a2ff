//! The validator network of btcfi-node: libp2p gossip and request-response, restricted
//! to the epoch's validator set.
//!
//! # Bird's-eye view
//!
//! ```text
//!   node select! loop ──publish/request/respond──▶ NetworkHandle ──commands──▶ ┐
//!        ▲                                                                       │
//!        └──────── NetworkService::next_event() ◀── events ── Driver task (owns the Swarm)
//!                                                                  │
//!                          Behaviour = allowlist → connection limits → gossipsub
//!                                      → request-response → identify
//!                          Transport = TCP + noise (ed25519 identity) + yamux
//! ```
//!
//! - **Who may talk.** The epoch's validators, by libp2p peer id, and nobody else. A
//!   connection from any other peer id is denied by the allowlist right after the noise
//!   handshake (and, as a second lock, closed on establishment), counted, and reported
//!   as [`NetworkEvent::PeerRefused`]. Gossip whose verified author is not a validator
//!   is `Reject`ed even when a validator relays it, so it never reaches the node.
//! - **What travels.** Every message is an [`Envelope`]:
//!   `"BTCFI" | version u8 | kind u8 | payload`. Kinds are domain-separated
//!   ([`MessageKind`]); each gossip kind has its own topic and the kind byte must match
//!   it. Payloads of consensus and signer messages are opaque bytes owned by those
//!   crates; this crate only decodes envelopes and [`Heartbeat`]s, and its decoders
//!   never panic (fuzzed in `fuzz/`).
//! - **Gossip** is gossipsub with signed messages (`MessageAuthenticity::Signed`),
//!   `ValidationMode::Strict`, and application validation: nothing is forwarded before
//!   the service checked author, size, rate and format.
//! - **Directed traffic** (catch-up, signing and DKG rounds) is request-response with
//!   a length-prefixed, bounded frame ([`RequestCodec`]).
//! - **Limits.** Payload sizes (gossip and direct separately), a token bucket per
//!   validator for gossip it authors and for requests it sends, connection limits.
//!   Everything dropped is counted by reason ([`Metrics`], `btcfi_p2p_*`).
//! - **Heartbeat.** Every `heartbeat_interval` the service gossips the node's version
//!   and each chain's head/finalized heights (set with
//!   [`NetworkHandle::set_chain_heights`]); peers' heartbeats surface as
//!   [`NetworkEvent::Heartbeat`] and in [`NetworkStatus::heartbeats`].
//!
//! # Using it
//!
//! ```no_run
//! # async fn demo(config: btcfi_p2p::NetworkConfig) -> Result<(), btcfi_p2p::P2pError> {
//! use btcfi_p2p::{MessageKind, NetworkEvent, NetworkService};
//! let registry = prometheus::Registry::new();
//! let mut network = NetworkService::start(config, &registry).await?;
//! let handle = network.handle();
//! handle.set_chain_heights(vec![(1, 19_000_000, 18_999_936).into()]);
//! while let Some(event) = network.next_event().await {
//!     match event {
//!         NetworkEvent::Gossip { from, kind: MessageKind::Observation, payload } => { /* to consensus */ }
//!         NetworkEvent::Request { from, kind, payload, channel } => {
//!             handle.respond(channel, MessageKind::CatchUpResponse, b"...".to_vec()).await?;
//!         }
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Invariants
//!
//! - No event about a non-validator's message ever reaches the node.
//! - The network task never blocks on the node: a full event queue drops (and counts)
//!   instead of stalling connections.
//! - No key material is logged; [`NetworkConfig`]'s `Debug` shows only the peer id.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

mod behaviour;
pub mod codec;
mod config;
pub mod envelope;
mod error;
pub mod heartbeat;
mod metrics;
mod rate_limit;
mod service;

pub use codec::RequestCodec;
pub use config::{Limits, NetworkConfig, ValidatorPeer};
pub use envelope::{Envelope, MessageKind};
pub use error::P2pError;
pub use heartbeat::{ChainHeights, Heartbeat};
pub use metrics::{DropReason, Metrics, Via};
pub use rate_limit::{RateLimit, TokenBucket};
pub use service::{NetworkEvent, NetworkHandle, NetworkService, NetworkStatus, ResponseChannel};

/// Re-exported libp2p types that appear in this crate's API.
pub use libp2p::{Multiaddr, PeerId, identity::Keypair};
