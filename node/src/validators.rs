//! The validator set of the epoch: who its members are (peer ids and names in config
//! order; a validator's index is its position), the quorum and FROST threshold, each
//! member's FROST identifier. (The turn orders of release and batch proposers are the
//! release and mint books' own: `pipeline/validators.rs` asks them.)

use crate::config::NodeConfig;
use btcfi_p2p::{NetworkConfig, NetworkService, ValidatorPeer};
use eyre::eyre;
use frost_core::{Ciphersuite, Identifier};
use libp2p::{Multiaddr, PeerId};
use std::time::Duration;

/// The epoch's validator set from the config, and where this node sits in it.
#[derive(Debug, Clone)]
pub struct ValidatorSet {
    /// Peer ids in config order; a validator's index is its position here.
    pub peers: Vec<PeerId>,
    /// Names, in the same order.
    pub names: Vec<String>,
    /// This node's index.
    pub own: usize,
    addrs: Vec<ValidatorPeer>,
}

impl ValidatorSet {
    pub fn from_config(cfg: &NodeConfig, me: PeerId) -> eyre::Result<Self> {
        let mut peers = Vec::new();
        let mut addrs = Vec::new();
        for v in &cfg.validators {
            let p: PeerId = v.peer_id.parse().map_err(|e| eyre!("validators: peer id {}: {e}", v.peer_id))?;
            let a: Multiaddr = v.address.parse().map_err(|e| eyre!("validators: address {}: {e}", v.address))?;
            peers.push(p);
            addrs.push(ValidatorPeer::new(p, vec![a]));
        }
        let own = peers.iter().position(|p| *p == me).ok_or_else(|| {
            eyre!(
                "this node's identity {me} is not in the validators list: add it, or point --home at the right identity.key"
            )
        })?;
        let names = cfg.validators.iter().map(|v| v.name.clone()).collect();
        Ok(Self { peers, names, own, addrs })
    }

    /// Quorum and FROST threshold: floor(2n/3) + 1.
    pub fn threshold(&self) -> u16 {
        u16::try_from(self.peers.len() * 2 / 3 + 1).unwrap_or(u16::MAX)
    }

    /// `name (peer id)` of validator `i`, for messages an operator reads.
    pub fn describe(&self, i: usize) -> String {
        match (self.names.get(i), self.peers.get(i)) {
            (Some(n), Some(p)) => format!("{n} ({p})"),
            _ => format!("validator #{i}"),
        }
    }

    /// Starts the p2p service of this epoch.
    pub async fn start_network(
        &self,
        cfg: &NodeConfig,
        keypair: libp2p::identity::Keypair,
        registry: &prometheus::Registry,
    ) -> eyre::Result<NetworkService> {
        let mut net_cfg = NetworkConfig::new(keypair, vec![cfg.p2p.listen.parse()?], self.addrs.clone());
        net_cfg.topic_prefix = format!("btcfi/epoch-{}", cfg.node.epoch);
        net_cfg.node_version = concat!("btcfi-node/", env!("CARGO_PKG_VERSION")).to_owned();
        net_cfg.heartbeat_interval = Duration::from_secs(5);
        net_cfg.redial_interval = Duration::from_secs(1);
        Ok(NetworkService::start(net_cfg, registry).await?)
    }
}

/// The identifier of validator `index` (0-based config position) in FROST: index + 1.
pub fn identifier<C: Ciphersuite>(index: usize) -> eyre::Result<Identifier<C>> {
    let i = u16::try_from(index + 1)?;
    Identifier::try_from(i).map_err(|e| eyre!("validator index {index}: {e}"))
}

/// The validator index of a FROST identifier, if it is one of the set's.
pub fn index_of<C: Ciphersuite>(id: &Identifier<C>, n: usize) -> Option<usize> {
    (0..n).find(|i| identifier::<C>(*i).ok().as_ref() == Some(id))
}
