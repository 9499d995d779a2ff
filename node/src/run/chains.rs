//! The chain side of the run loop: one task per chain polls its adapter and hands
//! the loop what became final with the checkpoint after it ([`chain_task`]); the loop
//! writes both in one batch before consensus sees the events ([`on_chain`]).

use super::{Core, Ctx, now_ms};
use crate::{
    api::{ChainStatus, StatusSnapshot},
    records::{self, StoredEvent},
};
use btcfi_chain_adapters::{ChainEvent, ChainHeads, ChainSource, Checkpoint, Inclusion, VaultSpend};
use btcfi_consensus::Input;
use btcfi_store::Batch;
use btcfi_types::ChainId;
use eyre::WrapErr;
use std::{
    sync::{Arc, RwLock},
    time::Duration,
};
use tokio::sync::mpsc;
use tracing::{error, warn};

/// What a chain task hands the loop after one poll.
#[derive(Debug)]
pub(super) struct ChainUpdate {
    pub(super) chain: ChainId,
    pub(super) name: String,
    pub(super) heads: Option<ChainHeads>,
    pub(super) events: Vec<ChainEvent>,
    pub(super) checkpoint: Option<Checkpoint>,
    pub(super) extra: Extra,
    pub(super) error: Option<String>,
}

/// What a chain task reads off its adapter after each poll, for metrics.
#[derive(Debug, Default)]
pub(super) struct Extra {
    pub(super) vault: Option<(u64, usize)>,
    pub(super) utxos: Option<Vec<btcfi_chain_adapters::bitcoin::VaultUtxo>>,
    pub(super) endpoints: Vec<btcfi_chain_adapters::evm::EndpointHealth>,
}

/// Polls one chain forever, sending each non-empty result (and heads for metrics).
pub(super) async fn chain_task<S: ChainSource>(
    mut src: S,
    name: String,
    interval: Duration,
    tx: mpsc::Sender<ChainUpdate>,
    extra: impl Fn(&S) -> Extra + Send,
) {
    let chain = src.chain();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let heads = src.heads().await.ok();
        let mut update = ChainUpdate {
            chain,
            name: name.clone(),
            heads,
            events: vec![],
            checkpoint: None,
            extra: Extra::default(),
            error: None,
        };
        match src.poll().await {
            Ok(outcome) => {
                // Re-check each observed event against the canonical chain right before
                // it goes to consensus; one that moved is reported later as Reorged.
                // The adapter's cursor is past these events already: a re-check that
                // fails is retried until it answers, never skipped (the events would be
                // lost until a restart).
                for ev in outcome.events {
                    if let ChainEvent::Observed(o) = &ev {
                        let included = loop {
                            match src.recheck(o).await {
                                Ok(Inclusion::Included { .. }) => break true,
                                Ok(Inclusion::NotCanonical) => break false,
                                Err(e) => {
                                    warn!(target: "chain::recheck", chain = %name, event = %o.attestation.event, error = %e, "re-check failed; retrying");
                                    tokio::time::sleep(interval).await;
                                }
                            }
                        };
                        if !included {
                            warn!(target: "chain::recheck", chain = %name, event = %o.attestation.event, "observed event no longer canonical at re-check: not attested");
                            continue;
                        }
                    }
                    update.events.push(ev);
                }
                update.checkpoint = Some(outcome.checkpoint);
            }
            Err(e) => update.error = Some(e.to_string()),
        }
        update.extra = extra(&src);
        if tx.send(update).await.is_err() {
            return;
        }
    }
}

pub(super) async fn on_chain(
    ctx: &mut Ctx,
    core: &mut Core,
    snapshot: &Arc<RwLock<StatusSnapshot>>,
    u: ChainUpdate,
) -> eyre::Result<()> {
    let label = [u.name.as_str()];
    if let Some(h) = u.heads {
        ctx.metrics.chain_head.with_label_values(&label).set(h.head as i64);
        ctx.metrics.chain_finalized.with_label_values(&label).set(h.finalized as i64);
    }
    if let Some(e) = &u.error {
        ctx.metrics.chain_poll_errors.with_label_values(&label).inc();
        warn!(target: "chain::poll", chain = %u.name, error = %e, "poll failed; retrying");
    }
    if let Some(utxos) = &u.extra.utxos {
        ctx.pipeline.set_utxos(utxos);
    }
    if let Some((bal, n)) = u.extra.vault {
        ctx.metrics.vault_balance_sats.set(bal as i64);
        ctx.metrics.vault_utxos.set(n as i64);
    }
    ctx.metrics.observe_endpoints(&u.name, &u.extra.endpoints);
    if let Ok(mut s) = snapshot.write() {
        let entry = s.chains.entry(u.name.clone()).or_insert_with(|| ChainStatus::new(u.chain.0));
        if let Some(h) = u.heads {
            entry.head = h.head;
            entry.finalized = h.finalized;
        }
        if let Some(cp) = &u.checkpoint {
            entry.cursor = cp.cursor.height;
        }
        if u.error.is_none() {
            entry.last_progress_ms = now_ms();
        }
        entry.last_error = u.error.clone();
    }
    let Some(cp) = u.checkpoint else { return Ok(()) };
    ctx.metrics.chain_cursor.with_label_values(&label).set(cp.cursor.height as i64);
    if u.chain == ChainId::BITCOIN
        && let Some(h) = u.heads
    {
        ctx.pipeline.set_bitcoin_progress(cp.cursor.height, h.finalized)?;
    }
    // A rejected deposit worth refunding gets its refund attestation (stored with it).
    let events: Vec<ChainEvent> = u
        .events
        .into_iter()
        .map(|ev| match ev {
            ChainEvent::Rejected(mut r) => {
                r.refund = ctx.pipeline.refund_for(&r);
                ChainEvent::Rejected(r)
            }
            other => other,
        })
        .collect();
    // Events and the checkpoint after them: one atomic write.
    let mut batch = Batch::new();
    for ev in &events {
        let kind = match ev {
            ChainEvent::Observed(_) => "observed",
            ChainEvent::Rejected(_) => "rejected",
            ChainEvent::Reorged { .. } => "reorged",
            ChainEvent::VaultSpend(_) => "vault_spend",
        };
        ctx.metrics.chain_events.with_label_values(&[u.name.as_str(), kind]).inc();
        let rec = match ev {
            // The vault's own spends: the payments ledger, not events to attest.
            ChainEvent::VaultSpend(spend) => {
                records::put_vault_spend(&mut batch, spend)?;
                continue;
            }
            ChainEvent::Reorged { id, .. } if id.chain == ChainId::BITCOIN && id.index == VaultSpend::EVENT_INDEX => {
                error!(target: "chain::reorg", chain = %u.name, txid = %id.tx, "a final vault spend left the canonical chain");
                records::delete_vault_spend(&mut batch, &id.tx);
                continue;
            }
            ChainEvent::Reorged { id, block } => {
                error!(target: "chain::reorg", chain = %u.name, event = %id, height = block.height, "an event reported final left the canonical chain");
                match records::get_event(&ctx.store, id)? {
                    Some(mut r) => {
                        r.reorged = Some(*block);
                        r
                    }
                    None => continue,
                }
            }
            other => StoredEvent { event: other.clone(), reorged: None },
        };
        records::put_event(&mut batch, &rec)?;
    }
    records::put_checkpoint(&mut batch, u.chain, &cp)?;
    ctx.store.commit(batch).wrap_err("persisting chain events")?;
    // Observations of one poll: fed together (one persist, votes gossiped in batches).
    let mut observed = Vec::new();
    for ev in events {
        if let Some(att) = ev.attestation() {
            ctx.metrics.observations.inc();
            ctx.pipeline.on_final(att.event);
            observed.push(att.clone());
            continue;
        }
        match ev {
            ChainEvent::VaultSpend(spend) => ctx.pipeline.on_vault_spend(spend)?,
            ChainEvent::Reorged { id, .. } if id.chain == ChainId::BITCOIN && id.index == VaultSpend::EVENT_INDEX => {
                ctx.pipeline.on_vault_spend_reorged(&id.tx)?;
            }
            ChainEvent::Reorged { id, .. } => ctx.pipeline.on_reorged(id)?,
            _ => {}
        }
    }
    if !observed.is_empty() {
        ctx.feed(core, Input::ObservedMany(observed)).await?;
    }
    Ok(())
}
