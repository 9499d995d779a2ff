//! `btcfi-node dkg`: both group keys of the epoch, generated with the other validators
//! over the p2p network.
//!
//! Two [`Dkg`] state machines run side by side (`evm` on frost-secp256k1, `btc` on
//! frost-secp256k1-tr). Every message travels as a direct request to its recipient over
//! the validators' noise channels (encrypted to the recipient, authenticated as the
//! sender's validator identity) and is re-sent until the recipient acknowledges it, so
//! validators may start the command at different times. Round-1 packages go to
//! everyone and are confirmed by the echo round (consistent broadcast); round-2
//! packages go only to their recipient.
//!
//! When both keys are done, each validator sends every other a *confirmation*: the hash
//! of both public key packages. The command finishes only when all n agree, so a
//! success means every validator holds the same group keys. On failure the culprits are
//! named, the others are told (`abort`), and nothing is stored.
//!
//! Payload: `tag u8 | body`; tag 1 = `evm` DKG message, 2 = `btc` DKG message,
//! 3 = confirmation (32 bytes), 4 = abort (UTF-8 reason).

use crate::{
    config::NodeConfig,
    identity,
    keys::{self, KeyKind, StoredKey},
    run::ValidatorSet,
};
use btcfi_p2p::{MessageKind, NetworkEvent, NetworkHandle, PeerId};
use btcfi_signer::{
    dkg::{Dkg, DkgAction, DkgFailure, DkgMessage},
    frost_secp256k1::Secp256K1Sha256 as Evm,
    frost_secp256k1_tr::Secp256K1Sha256TR as Btc,
};
use btcfi_store::Store;
use eyre::{WrapErr, bail, eyre};
use frost_core::{
    Ciphersuite, Identifier,
    keys::{KeyPackage, PublicKeyPackage},
};
use sha2::{Digest, Sha256};
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::{Duration, Instant},
};
use tokio::task::JoinSet;
use tracing::{info, warn};

const TAG_EVM: u8 = 1;
const TAG_BTC: u8 = 2;
const TAG_CONFIRM: u8 = 3;
const TAG_ABORT: u8 = 4;

/// Deliberate misbehaviour, for tests of culprit detection only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DkgFault {
    /// Send each round-2 recipient the share made for another one.
    SwapRound2Shares,
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

struct Side<C: Ciphersuite> {
    tag: u8,
    dkg: Dkg<C>,
    done: Option<(KeyPackage<C>, PublicKeyPackage<C>)>,
}

struct Driver {
    net: NetworkHandle,
    set: ValidatorSet,
    sends: JoinSet<Result<(), String>>,
    deadline: Instant,
    fault: Option<DkgFault>,
}

impl Driver {
    fn send(&mut self, to: usize, payload: Vec<u8>) {
        let Some(peer) = self.set.peers.get(to).copied() else { return };
        let net = self.net.clone();
        let deadline = self.deadline;
        let who = self.set.describe(to);
        self.sends.spawn(async move {
            loop {
                match net.request(peer, MessageKind::Dkg, payload.clone()).await {
                    Ok(_) => return Ok(()),
                    Err(e) if Instant::now() < deadline => {
                        tracing::debug!(target: "dkg", to = %who, error = %e, "send failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => return Err(format!("could not reach {who}: {e}")),
                }
            }
        });
    }

    fn broadcast(&mut self, payload: Vec<u8>) {
        for i in 0..self.set.peers.len() {
            if i != self.set.own {
                self.send(i, payload.clone());
            }
        }
    }

    fn describe_failure<C: Ciphersuite>(&self, kind: KeyKind, f: &DkgFailure<C>) -> String {
        let n = self.set.peers.len();
        let name =
            |id: &Identifier<C>| index_of(id, n).map(|i| self.set.describe(i)).unwrap_or_else(|| format!("{id:?}"));
        match f {
            DkgFailure::Culprits { culprits, reason } => format!(
                "{kind} DKG failed: {reason}; culprit(s): {}",
                culprits.iter().map(name).collect::<Vec<_>>().join(", ")
            ),
            DkgFailure::InconsistentBroadcast { disagreeing } => format!(
                "{kind} DKG failed: inconsistent round-1 broadcast; echoes differing from ours: {}",
                disagreeing.iter().map(name).collect::<Vec<_>>().join(", ")
            ),
            DkgFailure::Equivocation { culprit, step } => {
                format!("{kind} DKG failed: culprit(s): {} sent two different {step} messages", name(culprit))
            }
            other => format!("{kind} DKG failed: {other}"),
        }
    }

    /// Carries out one side's actions; `Err` is a failure to report.
    fn act<C: Ciphersuite>(
        &mut self,
        kind: KeyKind,
        side: &mut Side<C>,
        actions: Vec<DkgAction<C>>,
    ) -> Result<(), String> {
        let n = self.set.peers.len();
        let mut round2: Vec<(usize, Vec<u8>)> = Vec::new();
        for a in actions {
            match a {
                DkgAction::Broadcast(m) => {
                    let mut p = vec![side.tag];
                    p.extend(m.encode().map_err(|e| format!("{kind} DKG: encoding: {e}"))?);
                    self.broadcast(p);
                }
                DkgAction::SendTo { to, message } => {
                    let Some(i) = index_of(&to, n) else { continue };
                    let mut p = vec![side.tag];
                    p.extend(message.encode().map_err(|e| format!("{kind} DKG: encoding: {e}"))?);
                    round2.push((i, p));
                }
                DkgAction::Done { key_package, public_key_package } => {
                    info!(target: "dkg", %kind, "key generated");
                    side.done = Some((*key_package, *public_key_package));
                }
                DkgAction::Failed(f) => return Err(self.describe_failure(kind, &f)),
            }
        }
        if self.fault == Some(DkgFault::SwapRound2Shares) && round2.len() > 1 {
            warn!(target: "dkg", "TEST FAULT: sending every round-2 recipient another's share");
            let payloads: Vec<Vec<u8>> = round2.iter().map(|(_, p)| p.clone()).collect();
            for (k, (_, p)) in round2.iter_mut().enumerate() {
                *p = payloads[(k + 1) % payloads.len()].clone();
            }
        }
        for (i, p) in round2 {
            self.send(i, p);
        }
        Ok(())
    }
}

fn feed<C: Ciphersuite>(
    driver: &mut Driver,
    kind: KeyKind,
    side: &mut Side<C>,
    from: usize,
    body: &[u8],
) -> Result<(), String> {
    let message = match DkgMessage::<C>::decode(body) {
        Ok(m) => m,
        Err(e) => {
            warn!(target: "dkg", from = %driver.set.describe(from), error = %e, "undecodable DKG message dropped");
            return Ok(());
        }
    };
    let Ok(id) = identifier::<C>(from) else { return Ok(()) };
    let actions = side.dkg.handle(id, message);
    driver.act(kind, side, actions)
}

fn confirmation(evm: &PublicKeyPackage<Evm>, btc: &PublicKeyPackage<Btc>) -> eyre::Result<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(b"BTCFI-DKG-CONFIRM-v1");
    h.update(evm.serialize()?);
    h.update(btc.serialize()?);
    Ok(h.finalize().into())
}

/// Runs both DKGs; on success stores the sealed keys and returns their public records.
pub async fn run(
    cfg: &NodeConfig,
    home: &Path,
    passphrase: &str,
    timeout: Duration,
    fault: Option<DkgFault>,
) -> eyre::Result<Vec<StoredKey>> {
    if passphrase.chars().count() < keys::MIN_PASSPHRASE_LEN {
        return Err(keys::KeyError::WeakPassphrase.into());
    }
    let epoch = cfg.node.epoch;
    let store = Store::open(home.join("data")).wrap_err("opening the database (is `btcfi-node run` running?)")?;
    for kind in [KeyKind::Evm, KeyKind::Btc] {
        if keys::load(&store, kind, epoch)?.is_some() {
            return Err(keys::KeyError::Exists { kind, epoch }.into());
        }
    }
    let keypair = identity::load(&identity::key_path(home))?;
    let me = keypair.public().to_peer_id();
    let set = ValidatorSet::from_config(cfg, me)?;
    let n = set.peers.len();
    if n < 2 {
        bail!("validators: a DKG needs at least 2 validators, the config lists {n}");
    }
    let t = set.threshold();
    let ids_evm: BTreeSet<Identifier<Evm>> = (0..n).map(identifier).collect::<eyre::Result<_>>()?;
    let ids_btc: BTreeSet<Identifier<Btc>> = (0..n).map(identifier).collect::<eyre::Result<_>>()?;
    let mut evm =
        Side { tag: TAG_EVM, dkg: Dkg::new(identifier(set.own)?, ids_evm, t).map_err(|e| eyre!("{e}"))?, done: None };
    let mut btc =
        Side { tag: TAG_BTC, dkg: Dkg::new(identifier(set.own)?, ids_btc, t).map_err(|e| eyre!("{e}"))?, done: None };
    let registry = prometheus::Registry::new();
    let mut network = set.start_network(cfg, keypair, &registry).await?;
    let index_of_peer: BTreeMap<PeerId, usize> = set.peers.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    info!(target: "dkg", epoch, validators = n, threshold = t, "starting the evm and btc DKGs");
    let deadline = Instant::now() + timeout;
    let mut driver = Driver { net: network.handle(), set: set.clone(), sends: JoinSet::new(), deadline, fault };

    let rng = rand::rngs::OsRng;
    let result: Result<[u8; 32], String> = async {
        let a = evm.dkg.start(rng);
        driver.act(KeyKind::Evm, &mut evm, a)?;
        let a = btc.dkg.start(rng);
        driver.act(KeyKind::Btc, &mut btc, a)?;
        let mut own_confirm: Option<[u8; 32]> = None;
        let mut confirms: BTreeMap<usize, [u8; 32]> = BTreeMap::new();
        let sleep = tokio::time::sleep_until(deadline.into());
        tokio::pin!(sleep);
        loop {
            if own_confirm.is_none()
                && let (Some((_, e)), Some((_, b))) = (&evm.done, &btc.done)
            {
                let c = confirmation(e, b).map_err(|e| e.to_string())?;
                own_confirm = Some(c);
                let mut p = vec![TAG_CONFIRM];
                p.extend_from_slice(&c);
                driver.broadcast(p);
            }
            if let Some(own) = own_confirm {
                if let Some((i, _)) = confirms.iter().find(|(_, c)| **c != own) {
                    return Err(format!(
                        "{} holds different group keys than this node: DKG inconsistent, nothing stored",
                        driver.set.describe(*i)
                    ));
                }
                if confirms.len() == n - 1 {
                    return Ok(own);
                }
            }
            tokio::select! {
                _ = &mut sleep => {
                    let missing: Vec<String> = (0..n).filter(|i| *i != driver.set.own && !confirms.contains_key(i)).map(|i| driver.set.describe(i)).collect();
                    return Err(format!("timed out after {timeout:?}; no confirmation from: {}", missing.join(", ")));
                }
                Some(Ok(Err(e))) = driver.sends.join_next() => return Err(e),
                ev = network.next_event() => {
                    let Some(ev) = ev else { return Err("the p2p network stopped".into()) };
                    let NetworkEvent::Request { from, kind: MessageKind::Dkg, payload, channel } = ev else { continue };
                    let Some(&i) = index_of_peer.get(&from) else { continue };
                    let _ = network.respond(channel, MessageKind::Dkg, Vec::new()).await;
                    let Some((&tag, body)) = payload.split_first() else { continue };
                    match tag {
                        TAG_EVM => feed(&mut driver, KeyKind::Evm, &mut evm, i, body)?,
                        TAG_BTC => feed(&mut driver, KeyKind::Btc, &mut btc, i, body)?,
                        TAG_CONFIRM => {
                            if let Ok(c) = <[u8; 32]>::try_from(body) {
                                confirms.insert(i, c);
                            }
                        }
                        TAG_ABORT => {
                            return Err(format!("aborted by {}: {}", driver.set.describe(i), String::from_utf8_lossy(body)));
                        }
                        _ => warn!(target: "dkg", from = %driver.set.describe(i), tag, "unknown DKG payload dropped"),
                    }
                }
            }
        }
    }
    .await;

    match result {
        Ok(_) => {
            // Linger until every recipient acknowledged what we sent (our confirmation
            // above all), still answering peers that re-send to us. A peer that already
            // finished may have exited before its acknowledgement reached us; after the
            // grace period that is only worth a warning.
            let grace = tokio::time::sleep(Duration::from_secs(10));
            tokio::pin!(grace);
            loop {
                tokio::select! {
                    r = driver.sends.join_next() => match r {
                        None => break,
                        Some(Ok(Err(e))) => warn!(target: "dkg", error = %e, "a peer did not acknowledge the last messages"),
                        Some(_) => {}
                    },
                    Some(ev) = network.next_event() => {
                        if let NetworkEvent::Request { kind: MessageKind::Dkg, channel, .. } = ev {
                            let _ = network.respond(channel, MessageKind::Dkg, Vec::new()).await;
                        }
                    }
                    _ = &mut grace => {
                        driver.sends.abort_all();
                        break;
                    }
                }
            }
            network.shutdown().await;
            let (Some((ek, ep)), Some((bk, bp))) = (evm.done, btc.done) else {
                bail!("internal: DKG confirmed without both keys");
            };
            let records = vec![
                keys::evm_record(passphrase, epoch, &ek, &ep)?,
                keys::btc_record(passphrase, epoch, cfg.bitcoin.network, &bk, &bp)?,
            ];
            keys::store_all(&store, &records)?;
            Ok(records)
        }
        Err(reason) => {
            let mut p = vec![TAG_ABORT];
            p.extend_from_slice(reason.as_bytes());
            driver.sends.abort_all();
            driver.deadline = Instant::now() + Duration::from_secs(3);
            driver.broadcast(p);
            let _ = tokio::time::timeout(Duration::from_secs(3), async {
                while driver.sends.join_next().await.is_some() {}
            })
            .await;
            network.shutdown().await;
            Err(eyre!("DKG of epoch {epoch} failed: {reason}"))
        }
    }
}
