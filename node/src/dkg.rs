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
//! Round-2 packages are also signed by the sender's validator identity (ed25519, over
//! domain, epoch, DKG, sender, recipient and package), so a complaint about a share is
//! backed by the sender's own signature.
//!
//! Payload: `tag u8 | body`; tag 1 = `evm` DKG message (broadcast), 2 = `btc` DKG
//! message (broadcast), 3 = confirmation (32 bytes), 4 = abort (UTF-8 reason), 5 / 6 =
//! signed `evm` / `btc` round-2 package (`ed25519 signature (64) | message`).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use crate::{
    config::NodeConfig,
    crypto::SetVerifier,
    identity,
    keys::{self, KeyKind, StoredKey},
    validators::{ValidatorSet, identifier, index_of},
};
use btcfi_consensus::VoteVerifier;
use btcfi_p2p::{Keypair, MessageKind, NetworkEvent, NetworkHandle, PeerId};
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
/// Round-2 packages (to one recipient), signed by the sender: `signature (64) | message`.
const TAG_EVM_ROUND2: u8 = 5;
const TAG_BTC_ROUND2: u8 = 6;
/// Domain tag of round-2 signatures.
const ROUND2_DOMAIN: &[u8] = b"BTCFI-DKG-ROUND2-v1";
const SIGNATURE_LEN: usize = 64;

/// What a round-2 signature covers: domain, epoch, which DKG, sender, recipient, message.
fn round2_signed_bytes(epoch: u64, tag: u8, from: usize, to: usize, message: &[u8]) -> Vec<u8> {
    let mut b = ROUND2_DOMAIN.to_vec();
    b.extend_from_slice(&epoch.to_be_bytes());
    b.push(tag);
    b.extend_from_slice(&(from as u64).to_be_bytes());
    b.extend_from_slice(&(to as u64).to_be_bytes());
    b.extend_from_slice(message);
    b
}

/// Deliberate misbehaviour, for tests of culprit detection only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DkgFault {
    /// Send each round-2 recipient the share made for another one.
    SwapRound2Shares,
}

struct Side<C: Ciphersuite> {
    tag: u8,
    /// Tag of this side's signed round-2 packages.
    round2_tag: u8,
    dkg: Dkg<C>,
    done: Option<(KeyPackage<C>, PublicKeyPackage<C>)>,
}

struct Driver {
    net: NetworkHandle,
    set: ValidatorSet,
    sends: JoinSet<Result<(), String>>,
    deadline: Instant,
    fault: Option<DkgFault>,
    epoch: u64,
    /// This validator's identity: signs its round-2 packages.
    identity: Keypair,
    /// The validators' identities: verify theirs.
    verifier: SetVerifier,
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
                    round2.push((i, message.encode().map_err(|e| format!("{kind} DKG: encoding: {e}"))?));
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
                if let Some(other) = payloads.get((k + 1) % payloads.len()) {
                    *p = other.clone();
                }
            }
        }
        for (i, message) in round2 {
            // Signed for exactly this recipient: a complaint about its share can be proven.
            let signed = round2_signed_bytes(self.epoch, side.round2_tag, self.set.own, i, &message);
            let signature = self.identity.sign(&signed).map_err(|e| format!("{kind} DKG: signing: {e}"))?;
            let mut p = vec![side.round2_tag];
            p.extend_from_slice(&signature);
            p.extend(message);
            self.send(i, p);
        }
        Ok(())
    }

    /// The message of a signed round-2 payload from `from`, if its signature holds.
    fn open_round2<'a>(&self, tag: u8, from: usize, body: &'a [u8]) -> Option<&'a [u8]> {
        let (signature, message) = body.split_at_checked(SIGNATURE_LEN)?;
        let signed = round2_signed_bytes(self.epoch, tag, from, self.set.own, message);
        let index = btcfi_consensus::ValidatorIndex(u16::try_from(from).ok()?);
        let ok = self.verifier.verify(index, &signed, &btcfi_consensus::Signature(signature.to_vec()));
        if !ok {
            warn!(target: "dkg", from = %self.set.describe(from), "round-2 package with a bad signature dropped");
        }
        ok.then_some(message)
    }
}

/// Feeds a peer's DKG message; round-2 packages count only when they came signed
/// (`signed`), broadcast ones only when they did not.
fn feed<C: Ciphersuite>(
    driver: &mut Driver,
    kind: KeyKind,
    side: &mut Side<C>,
    from: usize,
    body: &[u8],
    signed: bool,
) -> Result<(), String> {
    let message = match DkgMessage::<C>::decode(body) {
        Ok(m) => m,
        Err(e) => {
            warn!(target: "dkg", from = %driver.set.describe(from), error = %e, "undecodable DKG message dropped");
            return Ok(());
        }
    };
    if matches!(message, DkgMessage::Round2(_)) != signed {
        warn!(target: "dkg", from = %driver.set.describe(from), signed, "DKG message on the wrong channel dropped (round-2 packages must be signed)");
        return Ok(());
    }
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
        if crate::records::keys::load(&store, kind, epoch)?.is_some() {
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
    let mut evm = Side {
        tag: TAG_EVM,
        round2_tag: TAG_EVM_ROUND2,
        dkg: Dkg::new(identifier(set.own)?, ids_evm, t).map_err(|e| eyre!("{e}"))?,
        done: None,
    };
    let mut btc = Side {
        tag: TAG_BTC,
        round2_tag: TAG_BTC_ROUND2,
        dkg: Dkg::new(identifier(set.own)?, ids_btc, t).map_err(|e| eyre!("{e}"))?,
        done: None,
    };
    let registry = prometheus::Registry::new();
    let verifier = SetVerifier::new(&set.peers)?;
    let mut network = set.start_network(cfg, keypair.clone(), &registry).await?;
    let index_of_peer: BTreeMap<PeerId, usize> = set.peers.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    info!(target: "dkg", epoch, validators = n, threshold = t, "starting the evm and btc DKGs");
    let deadline = Instant::now() + timeout;
    let mut driver = Driver {
        net: network.handle(),
        set: set.clone(),
        sends: JoinSet::new(),
        deadline,
        fault,
        epoch,
        identity: keypair,
        verifier,
    };

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
                        TAG_EVM => feed(&mut driver, KeyKind::Evm, &mut evm, i, body, false)?,
                        TAG_BTC => feed(&mut driver, KeyKind::Btc, &mut btc, i, body, false)?,
                        TAG_EVM_ROUND2 | TAG_BTC_ROUND2 => {
                            let Some(message) = driver.open_round2(tag, i, body) else { continue };
                            let message = message.to_vec();
                            if tag == TAG_EVM_ROUND2 {
                                feed(&mut driver, KeyKind::Evm, &mut evm, i, &message, true)?
                            } else {
                                feed(&mut driver, KeyKind::Btc, &mut btc, i, &message, true)?
                            }
                        }
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
            crate::records::keys::store_all(&store, &records)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A round-2 signature holds for its sender, recipient, epoch and DKG only: a
    /// package re-addressed, replayed into another epoch or DKG, or altered, fails.
    #[test]
    fn round2_signatures_bind_sender_recipient_epoch_and_package() {
        let keys: Vec<Keypair> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
        let peers: Vec<PeerId> = keys.iter().map(|k| k.public().to_peer_id()).collect();
        let verifier = SetVerifier::new(&peers).unwrap();
        let package = b"round-2 package for validator 1".to_vec();
        let signed = round2_signed_bytes(7, TAG_EVM_ROUND2, 0, 1, &package);
        let sig = btcfi_consensus::Signature(keys[0].sign(&signed).unwrap());
        let holds = |epoch, tag, from: usize, to, message: &[u8]| {
            let index = btcfi_consensus::ValidatorIndex(u16::try_from(from).unwrap());
            verifier.verify(index, &round2_signed_bytes(epoch, tag, from, to, message), &sig)
        };
        assert!(holds(7, TAG_EVM_ROUND2, 0, 1, &package));
        assert!(!holds(7, TAG_EVM_ROUND2, 0, 2, &package), "re-addressed");
        assert!(!holds(8, TAG_EVM_ROUND2, 0, 1, &package), "another epoch");
        assert!(!holds(7, TAG_BTC_ROUND2, 0, 1, &package), "the other DKG");
        assert!(!holds(7, TAG_EVM_ROUND2, 2, 1, &package), "claimed by another sender");
        let mut altered = package.clone();
        altered[0] ^= 1;
        assert!(!holds(7, TAG_EVM_ROUND2, 0, 1, &altered), "altered");
    }
}
