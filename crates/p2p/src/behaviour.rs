//! The composed libp2p behaviour and the swarm built around it.

use std::time::Duration;

use libp2p::{
    Swarm, SwarmBuilder, allow_block_list, connection_limits, gossipsub, identify, noise, request_response, tcp, yamux,
};

use crate::{
    Metrics, NetworkConfig, P2pError,
    codec::{PROTOCOL, RequestCodec},
    envelope::HEADER_LEN,
};

/// Identify protocol version: peers on another protocol family are visible in logs.
pub(crate) const IDENTIFY_PROTOCOL: &str = "/btcfi/id/1";

/// Everything a validator speaks, in the order the swarm consults them: the allowlist
/// first, so a stranger's connection is denied before any other behaviour sees it.
#[derive(libp2p::swarm::NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// Only the epoch's validators may hold a connection.
    pub(crate) allowlist: allow_block_list::Behaviour<allow_block_list::AllowedPeers>,
    /// Bounds on pending and established connections.
    pub(crate) limits: connection_limits::Behaviour,
    /// Signed gossip, validated by the service before it is forwarded.
    pub(crate) gossipsub: gossipsub::Behaviour,
    /// Directed traffic: catch-up, signing and DKG rounds.
    pub(crate) request_response: request_response::Behaviour<RequestCodec>,
    /// Version and listen addresses of peers, for operators.
    pub(crate) identify: identify::Behaviour,
}

/// Builds the swarm: TCP + noise + yamux, and [`Behaviour`].
pub(crate) fn build_swarm(config: &NetworkConfig, metrics: &Metrics) -> Result<Swarm<Behaviour>, P2pError> {
    let build = |e: &dyn std::fmt::Display| P2pError::Build(e.to_string());
    let limits = &config.limits;

    // Frames up to twice the payload limit reach the service so that oversize messages
    // are counted and rejected (never forwarded); anything larger is dropped by the
    // gossipsub codec itself, uncounted.
    let max_transmit = limits.max_gossip_payload.saturating_mul(2).saturating_add(HEADER_LEN + 4096);
    let gossipsub_config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(max_transmit)
        .heartbeat_interval(Duration::from_millis(700))
        .heartbeat_initial_delay(Duration::from_millis(100))
        .build()
        .map_err(|e| build(&e))?;

    let mut allowlist = allow_block_list::Behaviour::<allow_block_list::AllowedPeers>::default();
    for v in &config.validators {
        allowlist.allow_peer(v.peer_id);
    }
    let n = u32::try_from(config.validators.len()).unwrap_or(u32::MAX);
    let per_peer = limits.max_connections_per_peer;
    let connection_limits = connection_limits::ConnectionLimits::default()
        .with_max_pending_incoming(Some(limits.max_pending_incoming))
        .with_max_established_per_peer(Some(per_peer))
        .with_max_established(Some(n.saturating_mul(per_peer)));

    let codec = RequestCodec::new(limits.max_direct_payload, Some(metrics.clone()));
    let rr_config = request_response::Config::default()
        .with_request_timeout(config.request_timeout)
        .with_max_concurrent_streams(limits.max_concurrent_streams);
    let keypair = config.keypair.clone();
    let version = config.node_version.clone();

    let swarm = SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| build(&e))?
        .with_behaviour(move |key| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
            Ok(Behaviour {
                allowlist,
                limits: connection_limits::Behaviour::new(connection_limits),
                gossipsub: gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Signed(keypair),
                    gossipsub_config,
                )?,
                request_response: request_response::Behaviour::with_codec(
                    codec,
                    [(PROTOCOL, request_response::ProtocolSupport::Full)],
                    rr_config,
                ),
                identify: identify::Behaviour::new(
                    identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public()).with_agent_version(version),
                ),
            })
        })
        .map_err(|e| build(&e))?
        // Validators stay connected; liveness is watched through heartbeats.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    Ok(swarm)
}
