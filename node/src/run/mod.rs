//! The daemon: adapters → consensus ↔ p2p, with every transition in the store first.
//!
//! One `select!` loop owns the consensus core. Chain adapters run as their own tasks and
//! send what became final together with their checkpoint; the loop writes both in one
//! batch before the core sees the events, so a crash never loses an event (a restart
//! re-feeds stored observations; the core ignores what it already voted on).

use crate::{
    api::{self, ApiState, StatusSnapshot},
    config::NodeConfig,
    crypto::{IdentitySigner, SetVerifier},
    identity,
    keys::{self, KeyKind},
    metrics::Metrics,
    pipeline::{Faults, Pipeline},
    records,
    tasks::Tasks,
    validators::ValidatorSet,
};
use btcfi_chain_adapters::{bitcoin::BitcoinSource, evm::EvmSource};
use btcfi_consensus::{Action, Alert, Config as CoreConfig, Consensus, Epoch, Input, Message, ValidatorIndex};
use btcfi_p2p::{ChainHeights, MessageKind, NetworkEvent, NetworkHandle};
use btcfi_store::{Batch, Store};
use btcfi_types::ChainId;
use eyre::{WrapErr, eyre};
use libp2p::PeerId;
use std::{
    collections::BTreeMap,
    future::Future,
    path::Path,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

mod chains;

use chains::{ChainUpdate, Extra, chain_task, on_chain};
use records::load_checkpoint;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn kind_of(m: &Message) -> MessageKind {
    match m {
        Message::Vote(_) | Message::Votes(_) => MessageKind::Observation,
        Message::Certificate(_) | Message::Certificates(_) => MessageKind::Certificate,
        Message::CertificateRequest(_) => MessageKind::CatchUpRequest,
        Message::CertificateResponse(_) => MessageKind::CatchUpResponse,
    }
}

struct Ctx {
    store: Arc<Store>,
    metrics: Metrics,
    net: NetworkHandle,
    index_of: BTreeMap<PeerId, ValidatorIndex>,
    pending_responses: BTreeMap<ValidatorIndex, btcfi_p2p::ResponseChannel>,
    catch_up_tx: mpsc::Sender<Input>,
    next_peer: usize,
    pipeline: Pipeline,
    /// Votes each validator may send, per second with bursts, on top of the p2p
    /// layer's message and byte budgets: a vote costs a signature check here.
    vote_budget: BTreeMap<ValidatorIndex, btcfi_p2p::TokenBucket>,
}

/// Votes a validator may author per second here, and at once: a burst of 10,000
/// deposits is 10,000 votes per validator, a flood is cut off at the rate.
const VOTE_RATE: btcfi_p2p::RateLimit = btcfi_p2p::RateLimit::new(5_000.0, 50_000);

type Core = Consensus<IdentitySigner, SetVerifier>;

impl Ctx {
    /// Runs the core on `input` and carries out its actions, persist first.
    async fn feed(&mut self, core: &mut Core, input: Input) -> eyre::Result<()> {
        let actions = core.handle(input, now_ms());
        for action in actions {
            match action {
                Action::Persist(delta) => {
                    let mut batch = Batch::new();
                    records::add_delta(&self.store, &mut batch, &delta)?;
                    // A failed write stops the node: nothing may leave before it is durable.
                    self.store.commit(batch).wrap_err("persisting a consensus transition")?;
                }
                Action::Broadcast(m) => {
                    if let Err(e) = self.net.publish(kind_of(&m), m.encode()).await {
                        warn!(target: "p2p::gossip", error = %e, "publish failed (peers will get it on rebroadcast)");
                    }
                }
                Action::SendTo { to, message } => {
                    if let Some(ch) = self.pending_responses.remove(&to) {
                        let _ = self.net.respond(ch, kind_of(&message), message.encode()).await;
                    }
                }
                Action::RequestCertificates(req) => {
                    let connected = self.net.connected_validators();
                    if connected.is_empty() {
                        continue;
                    }
                    let peer = connected[self.next_peer % connected.len()];
                    self.next_peer = self.next_peer.wrapping_add(1);
                    let net = self.net.clone();
                    let tx = self.catch_up_tx.clone();
                    let bytes = Message::CertificateRequest(req).encode();
                    tokio::spawn(async move {
                        match net.request(peer, MessageKind::CatchUpRequest, bytes).await {
                            Ok(env) => match Message::decode(&env.payload) {
                                Ok(Message::CertificateResponse(r)) => {
                                    let _ = tx.send(Input::CertificateResponse(r)).await;
                                }
                                Ok(_) | Err(_) => warn!(target: "p2p::catchup", %peer, "malformed catch-up response"),
                            },
                            Err(e) => warn!(target: "p2p::catchup", %peer, error = %e, "catch-up request failed"),
                        }
                    });
                }
                Action::Certified { attestation, certificate } => {
                    self.metrics.certified.inc();
                    info!(target: "consensus::quorum", event = %attestation.event, digest = %certificate.digest, signers = certificate.signatures.len(), "attestation certified");
                    self.pipeline.on_certified(&attestation)?;
                }
                Action::Equivocation(e) => {
                    self.metrics.evidence.inc();
                    warn!(target: "consensus::evidence", event = %e.event(), validator = %e.validator(), "equivocation recorded");
                }
                Action::Reobserve { event, reason } => {
                    self.metrics.reobservations.inc();
                    info!(target: "consensus::reobserve", %event, ?reason, "peers vouched for an event this node has not observed; its adapters re-scan from their checkpoints");
                }
                Action::Alert(a) => {
                    let kind = match &a {
                        Alert::ConflictingObservation { .. } => "conflicting_observation",
                        Alert::NetworkCertifiedOtherDigest { .. } => "network_certified_other_digest",
                        Alert::ConflictingCertificates { .. } => "conflicting_certificates",
                        Alert::OwnKeyEquivocated { .. } => "own_key_equivocated",
                    };
                    self.metrics.alerts.with_label_values(&[kind]).inc();
                    error!(target: "consensus::alert", alert = ?a, "operator attention needed");
                }
            }
        }
        Ok(())
    }

    async fn on_network(&mut self, core: &mut Core, ev: NetworkEvent) -> eyre::Result<()> {
        match ev {
            NetworkEvent::Gossip { from, payload, .. } => {
                let Some(&idx) = self.index_of.get(&from) else { return Ok(()) };
                match Message::decode(&payload) {
                    Ok(m) => {
                        let votes = match &m {
                            Message::Vote(_) => 1,
                            Message::Votes(b) => b.votes.len() as u64,
                            _ => 0,
                        };
                        let now = std::time::Instant::now();
                        let budget =
                            self.vote_budget.entry(idx).or_insert_with(|| btcfi_p2p::TokenBucket::new(VOTE_RATE, now));
                        if votes > 0 && !budget.try_take_n(votes, now) {
                            self.metrics.votes.with_label_values(&["rate_limited"]).inc_by(votes);
                            warn!(target: "p2p::gossip", %from, votes, "votes over the validator's budget dropped (it rebroadcasts)");
                            return Ok(());
                        }
                        self.feed(core, Input::from_message(idx, m)).await?
                    }
                    Err(e) => warn!(target: "p2p::gossip", %from, error = %e, "undecodable consensus message dropped"),
                }
            }
            NetworkEvent::Request { from, kind: MessageKind::Signing, payload, channel } => {
                let Some(&idx) = self.index_of.get(&from) else { return Ok(()) };
                let _ = self.net.respond(channel, MessageKind::Signing, Vec::new()).await;
                self.pipeline.on_request(usize::from(idx.0), &payload)?;
            }
            NetworkEvent::Request { from, payload, channel, .. } => {
                let Some(&idx) = self.index_of.get(&from) else { return Ok(()) };
                match Message::decode(&payload) {
                    Ok(m @ Message::CertificateRequest(_)) => {
                        self.pending_responses.insert(idx, channel);
                        self.feed(core, Input::from_message(idx, m)).await?;
                        self.pending_responses.remove(&idx);
                    }
                    _ => warn!(target: "p2p::catchup", %from, "unexpected request dropped"),
                }
            }
            NetworkEvent::PeerRefused { peer } => {
                warn!(target: "p2p::conn", %peer, "refused a peer outside the validator set");
            }
            _ => {}
        }
        Ok(())
    }
}

/// Runs the validator until `shutdown` resolves or a critical task fails.
pub async fn run(cfg: NodeConfig, home: &Path, shutdown: impl Future<Output = ()>) -> eyre::Result<()> {
    run_with(cfg, home, shutdown, Faults::default()).await
}

/// The vault address of the epoch's `btc` key, checked against (or filling) the config.
fn vault_from_key(cfg: &mut NodeConfig, store: &Store) -> eyre::Result<()> {
    let key = crate::records::keys::load(store, KeyKind::Btc, cfg.node.epoch)?;
    match (key.and_then(|k| k.vault_address), cfg.bitcoin.vault_address.is_empty()) {
        (Some(a), true) => cfg.bitcoin.vault_address = a,
        (Some(a), false) if a != cfg.bitcoin.vault_address => {
            return Err(eyre!(
                "bitcoin.vault_address {} is not the vault of this epoch's btc key ({a}): set it to {a}, or leave it empty",
                cfg.bitcoin.vault_address
            ));
        }
        (None, true) => {
            return Err(eyre!(
                "bitcoin.vault_address is empty and there is no btc key for epoch {}: run `btcfi-node dkg` first (or set the address)",
                cfg.node.epoch
            ));
        }
        _ => {}
    }
    Ok(())
}

/// [`run`], with deliberate misbehaviour for tests.
pub async fn run_with(
    mut cfg: NodeConfig,
    home: &Path,
    shutdown: impl Future<Output = ()>,
    faults: Faults,
) -> eyre::Result<()> {
    let metrics = Metrics::new()?;
    let store = Arc::new(Store::open(home.join("data"))?);
    vault_from_key(&mut cfg, &store)?;
    let keypair = identity::load(&identity::key_path(home))?;
    let me = keypair.public().to_peer_id();

    let set = ValidatorSet::from_config(&cfg, me)?;
    let (peers, own) = (set.peers.clone(), set.own);
    let own_index = ValidatorIndex(u16::try_from(own)?);
    let n = u16::try_from(peers.len())?;
    let index_of: BTreeMap<PeerId, ValidatorIndex> =
        peers.iter().enumerate().filter_map(|(i, p)| u16::try_from(i).ok().map(|i| (*p, ValidatorIndex(i)))).collect();

    let mut core_cfg = CoreConfig::new(Epoch(cfg.node.epoch), n, own_index);
    cfg.consensus.apply(&mut core_cfg);
    let persisted = records::load_consensus(&store)?;
    let mut core =
        Consensus::restore(core_cfg, IdentitySigner(keypair.clone()), SetVerifier::new(&peers)?, &persisted)?;
    info!(target: "node", peer_id = %me, index = own_index.0, validators = n, quorum = core.quorum(), "consensus restored");

    let mut network = set.start_network(&cfg, keypair.clone(), &metrics.registry).await?;
    let net = network.handle();

    // Chains.
    let (chain_tx, mut chain_rx) = mpsc::channel::<ChainUpdate>(64);
    let btc_cp = load_checkpoint(&store, ChainId::BITCOIN)?;
    // A deposit memo naming a chain without a bridge here is a rejection (refunded).
    let mut btc_cfg = cfg.bitcoin.clone();
    btc_cfg.destination_chains = cfg.evm.iter().map(|c| c.chain_id.0).collect();
    let btc = BitcoinSource::new(btc_cfg, btc_cp).await.wrap_err("starting the Bitcoin adapter")?;
    match btc.has_txindex().await {
        Ok(true) => {}
        Ok(false) => {
            return Err(eyre!(
                "bitcoind at {} runs without a transaction index: releases could not be followed to depth; restart it with -txindex=1",
                cfg.bitcoin.rpc_url
            ));
        }
        Err(e) => {
            warn!(target: "chain::btc", error = %e, "cannot ask bitcoind for its indexes (is it up?); it must run with -txindex=1")
        }
    }
    let mut tasks = Tasks::new();
    let btc_task =
        chain_task(btc, "bitcoin".into(), Duration::from_millis(cfg.bitcoin_poll_ms()), chain_tx.clone(), |s| Extra {
            vault: Some((s.vault_balance().0, s.vault_utxos().len())),
            utxos: Some(s.vault_utxos()),
            endpoints: vec![],
        });
    tasks.critical("chain bitcoin", async move {
        btc_task.await;
        Ok(())
    });
    for c in &cfg.evm {
        let cp = load_checkpoint(&store, c.chain_id)?;
        let src = EvmSource::new(c.clone(), cp, 0).wrap_err_with(|| format!("starting the {} adapter", c.name))?;
        let task = chain_task(src, c.name.clone(), c.poll_interval(), chain_tx.clone(), |s| Extra {
            vault: None,
            utxos: None,
            endpoints: s.endpoint_health(),
        });
        tasks.critical(format!("chain {}", c.name), async move {
            task.await;
            Ok(())
        });
    }
    drop(chain_tx);

    let (catch_up_tx, mut catch_up_rx) = mpsc::channel::<Input>(64);
    let (explain_tx, mut explain_rx) = mpsc::channel::<api::ExplainRequest>(64);
    let snapshot = Arc::new(RwLock::new(StatusSnapshot::new(&cfg, me, n, core.quorum())));
    let api_state = ApiState {
        store: store.clone(),
        metrics: metrics.clone(),
        status: snapshot.clone(),
        net: net.clone(),
        peers,
        refund_fee: cfg.bitcoin.peg_out_fee.0,
        explain: explain_tx,
    };
    let listener = tokio::net::TcpListener::bind(cfg.api.listen)
        .await
        .wrap_err_with(|| format!("api.listen {}: address in use or not allowed; choose another", cfg.api.listen))?;
    info!(target: "node", api = %listener.local_addr()?, "HTTP API listening");
    tasks.critical("http api", async move { Ok(axum::serve(listener, api::router(api_state)).await?) });

    let passphrase = match keys::passphrase(cfg.keys.passphrase_file.as_deref()) {
        Ok(p) => Some(p),
        Err(keys::KeyError::NoPassphrase) => None,
        // A passphrase file that is exposed or unreadable: refuse to start, loudly.
        Err(e) => return Err(e.into()),
    };
    let pipeline = Pipeline::new(
        &cfg,
        store.clone(),
        metrics.clone(),
        net.clone(),
        set.peers.clone(),
        own,
        passphrase.as_deref(),
        faults,
        &mut tasks,
    )?;
    let mut ctx = Ctx {
        store: store.clone(),
        metrics: metrics.clone(),
        net,
        index_of,
        pending_responses: BTreeMap::new(),
        catch_up_tx,
        next_peer: 0,
        pipeline,
        vote_budget: BTreeMap::new(),
    };
    let events = records::load_events(&store)?;
    // Events reorged out past finality are never acted on, whatever else is stored.
    let reorged = events.iter().filter(|r| r.reorged.is_some()).map(|r| r.event.id()).collect();
    ctx.pipeline.resume(reorged)?;

    // Re-feed stored observations: after a crash between storing an event and voting.
    let stored: Vec<_> =
        events.into_iter().filter(|r| r.reorged.is_none()).filter_map(|r| r.event.attestation().cloned()).collect();
    if !stored.is_empty() {
        ctx.feed(&mut core, Input::ObservedMany(stored)).await?;
    }

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // The release path's bitcoind answers (the driver task makes the calls).
    let mut bitcoind = ctx.pipeline.take_bitcoind_answers();
    // The relayer's reports of mints their bridges consumed.
    let mut consumed = ctx.pipeline.take_relay_consumed();
    tokio::pin!(shutdown);
    let result: eyre::Result<()> = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = tick.tick() => {
                if let Err(e) = ctx.feed(&mut core, Input::Tick).await { break Err(e) }
                if let Err(e) = ctx.pipeline.tick() { break Err(e) }
                let (key_issues, signing) = (ctx.pipeline.not_ready(), ctx.pipeline.summary());
                let connected = ctx.net.connected_validators().len();
                if let Ok(mut s) = snapshot.write() {
                    s.key_issues = key_issues;
                    s.signing = Some(signing);
                    s.peers_connected = connected;
                    s.certified = core.stats().certified;
                    s.own_votes = core.stats().observations;
                }
                let heights: Vec<ChainHeights> = snapshot.read().map(|s| s.chains.values().map(|c| ChainHeights { chain_id: c.chain_id, head: c.head, finalized: c.finalized }).collect()).unwrap_or_default();
                ctx.net.set_chain_heights(heights);
            }
            Some(answer) = next_answer(&mut bitcoind) => {
                if let Err(e) = ctx.pipeline.on_bitcoind(answer) { break Err(e) }
            }
            Some(events) = next_answer(&mut consumed) => {
                if let Err(e) = ctx.pipeline.on_consumed(events) { break Err(e) }
            }
            Some(update) = chain_rx.recv() => {
                if let Err(e) = on_chain(&mut ctx, &mut core, &snapshot, update).await { break Err(e) }
            }
            Some((id, reply)) = explain_rx.recv() => {
                let _ = reply.send(ctx.pipeline.explain(&id));
            }
            Some(input) = catch_up_rx.recv() => {
                if let Err(e) = ctx.feed(&mut core, input).await { break Err(e) }
            }
            ev = network.next_event() => match ev {
                Some(ev) => if let Err(e) = ctx.on_network(&mut core, ev).await { break Err(e) },
                None => break Err(eyre!("the p2p network task stopped")),
            },
            exit = tasks.exited() => {
                error!(target: "node", reason = %exit, "stopping: a critical task ended");
                break Err(exit.into());
            }
        }
    };
    tasks.abort_all();
    network.shutdown().await;
    result
}

/// The next message of a task's channel (the bitcoind driver's answers, the relayer's
/// reports); never, without one.
async fn next_answer<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
