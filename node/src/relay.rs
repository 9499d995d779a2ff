//! Relaying signed mints to their destination bridges.
//!
//! The mint book says when each validator relays a signed batch: the first relayer at
//! once, the others `rank × takeover` later (`btcfi_mint::book`). Each job waits its
//! delay and then submits unless the contract already consumed the event ids, so a
//! silent relayer is replaced and a duplicate is harmless: the contract refuses
//! replays, and the node counts them
//! (`btcfi_relay_submissions_total{outcome="already_consumed"|"reverted"}`). The
//! mints found consumed are reported back, so that the book forgets them.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use crate::metrics::Metrics;
pub use crate::records::{RelayOutcome, RelayRecord};
use btcfi_chain_adapters::evm::{
    BatchMintRequest, EvmChainConfig, EvmDestination, MintRequest, MintSubmission, TxStatus,
};
use btcfi_store::Store;
use btcfi_types::{ChainId, EventId};
use std::{collections::BTreeMap, sync::Arc, time::Duration};
use tokio::{
    sync::{Mutex, mpsc},
    task::JoinSet,
};
use tracing::{error, info, warn};

/// Stores `r` as the relay record of each of `events`, in one write.
fn save_records(store: &Store, events: &[EventId], r: &RelayRecord) {
    if let Err(e) = crate::records::put_relays(store, events, r) {
        warn!(target: "relay", error = %e, "cannot store the relay record");
    }
}

/// Whether `event` is stored as reorged out past finality (read before every
/// submission: the store is the truth).
fn is_reorged(store: &Store, event: &EventId) -> bool {
    matches!(crate::records::get_event(store, event), Ok(Some(r)) if r.reorged.is_some())
}

/// Whether this node's own submission for `event` mined (a record to keep).
fn mined_here(store: &Store, event: &EventId) -> bool {
    matches!(crate::records::get_relay(store, event), Ok(Some(r)) if r.outcome == RelayOutcome::Mined)
}

/// A mint to submit after `delay`.
#[derive(Debug, Clone)]
pub struct MintJob {
    pub dest: ChainId,
    pub request: MintRequest,
    pub delay: Duration,
}

/// A signed batch of mints to submit (one `mintBatch`) after `delay`.
#[derive(Debug, Clone)]
pub struct BatchJob {
    pub dest: ChainId,
    pub request: BatchMintRequest,
    pub delay: Duration,
}

/// What the relayer is handed.
#[derive(Debug, Clone)]
pub enum RelayJob {
    Mint(MintJob),
    Batch(BatchJob),
}

/// Where the relayer reports mints consumed by their bridge (dropped when full: the
/// relay records say so too, and the book is rebuilt from them at the next start).
#[derive(Debug, Clone)]
pub struct Consumed(mpsc::Sender<Vec<EventId>>);

impl Consumed {
    fn report(&self, events: &[EventId]) {
        if !events.is_empty() {
            let _ = self.0.try_send(events.to_vec());
        }
    }
}

/// Starts the relayer: one destination per configured chain, signing with `signer`; its
/// dispatcher is the critical task `relay dispatcher` (each mint's relay is its own
/// short task). Mints found consumed are sent on `consumed`.
pub fn spawn(
    chains: &[EvmChainConfig],
    signer: alloy::signers::local::PrivateKeySigner,
    store: Arc<Store>,
    metrics: Metrics,
    consumed: mpsc::Sender<Vec<EventId>>,
    tasks: &mut crate::tasks::Tasks,
) -> eyre::Result<mpsc::Sender<RelayJob>> {
    let consumed = Consumed(consumed);
    let mut dests: BTreeMap<u64, (String, Arc<Mutex<EvmDestination>>)> = BTreeMap::new();
    for c in chains {
        let d = EvmDestination::new(c.clone(), signer.clone())?;
        dests.insert(c.chain_id.0, (c.name.clone(), Arc::new(Mutex::new(d))));
        // Every outcome is exported from the start at 0, so that a dashboard's rate and
        // an alert on a missing series see this relayer before its first submission.
        for outcome in RelayOutcome::COUNTED {
            metrics.relay_submissions.with_label_values(&[c.name.as_str(), outcome.as_str()]);
        }
    }
    info!(target: "relay", account = %signer.address(), chains = dests.len(), "relayer ready");
    let (tx, mut rx) = mpsc::channel::<RelayJob>(1024);
    tasks.critical("relay dispatcher", async move {
        // Each job runs in its own task (mints to one chain overlap), owned here: one
        // that panics is reported and the others go on (the next relayers in turn
        // submit what it left).
        let mut running: JoinSet<()> = JoinSet::new();
        loop {
            let job = tokio::select! {
                job = rx.recv() => job,
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Err(e) = done
                        && e.is_panic()
                    {
                        error!(target: "relay", error = %e, "a relay job panicked: the next relayers in turn submit its mints");
                    }
                    continue;
                }
            };
            // Every sender is gone: the node is stopping.
            let Some(job) = job else { return Ok(()) };
            let chain = match &job {
                RelayJob::Mint(j) => j.dest.0,
                RelayJob::Batch(j) => j.dest.0,
            };
            let Some((name, dest)) = dests.get(&chain).cloned() else {
                warn!(target: "relay", chain, "destination chain not configured here: not relaying");
                continue;
            };
            let (store, metrics, consumed) = (store.clone(), metrics.clone(), consumed.clone());
            match job {
                RelayJob::Mint(job) => running.spawn(relay_one(job, name, dest, store, metrics, consumed)),
                RelayJob::Batch(job) => running.spawn(relay_batch(job, name, dest, store, metrics, consumed)),
            };
        }
    });
    Ok(tx)
}

/// Submissions of one mint before this node gives up on it (others take over).
const MAX_TRIES: u32 = 5;
/// How long a submitted mint is followed before it is submitted again.
const MINE_TIMEOUT: Duration = Duration::from_secs(120);

/// Submits one mint after its delay, unless the bridge consumed the event already;
/// retries failed submissions with backoff; follows the transaction until mined. The
/// destination is locked only for each RPC exchange, so mints to one chain overlap.
async fn relay_one(
    job: MintJob,
    name: String,
    dest: Arc<Mutex<EvmDestination>>,
    store: Arc<Store>,
    metrics: Metrics,
    consumed: Consumed,
) {
    tokio::time::sleep(job.delay).await;
    let event = job.request.event;
    let record = |outcome: RelayOutcome, tx_hash, detail| RelayRecord::new(job.dest.0, outcome, tx_hash, detail);
    let save = |r: &RelayRecord| save_records(&store, &[event], r);
    let count =
        |outcome: RelayOutcome| metrics.relay_submissions.with_label_values(&[name.as_str(), outcome.as_str()]).inc();
    for attempt in 0..MAX_TRIES {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(5u64 << attempt.min(4))).await;
        }
        // Its event left the canonical chain past finality since it was signed: never
        // relayed (checked before every submission, the store being the truth).
        if is_reorged(&store, &event) {
            warn!(target: "relay", chain = %name, %event, "event reorged out past finality: mint not relayed");
            count(RelayOutcome::Reorged);
            save(&record(RelayOutcome::Reorged, None, None));
            return;
        }
        let submitted = dest.lock().await.submit_mint(&job.request).await;
        let tx_hash = match submitted {
            Ok(MintSubmission::AlreadyConsumed) => {
                count(RelayOutcome::AlreadyConsumed);
                // Keep the record of our own successful submission if we made one.
                if !mined_here(&store, &event) {
                    save(&record(RelayOutcome::AlreadyConsumed, None, None));
                }
                consumed.report(&[event]);
                return;
            }
            Ok(MintSubmission::Submitted { tx_hash, .. }) => {
                count(RelayOutcome::Submitted);
                save(&record(RelayOutcome::Submitted, Some(tx_hash), None));
                tx_hash
            }
            Err(e) => {
                count(RelayOutcome::Failed);
                warn!(target: "relay", chain = %name, %event, error = %e, attempt, "mint submission failed; retrying");
                save(&record(RelayOutcome::Failed, None, Some(e.to_string())));
                continue;
            }
        };
        let started = tokio::time::Instant::now();
        while started.elapsed() < MINE_TIMEOUT {
            let status = dest.lock().await.status(tx_hash).await;
            match status {
                Ok(TxStatus::Confirmed { success: true, .. }) => {
                    info!(target: "relay", chain = %name, %event, tx = %hex::encode(tx_hash), "mint mined");
                    save(&record(RelayOutcome::Mined, Some(tx_hash), None));
                    consumed.report(&[event]);
                    return;
                }
                Ok(TxStatus::Confirmed { revert_reason, .. }) => {
                    // Another validator's mint came first: the contract refused the replay.
                    count(RelayOutcome::Reverted);
                    info!(target: "relay", chain = %name, %event, reason = ?revert_reason, "mint reverted (duplicate)");
                    save(&record(RelayOutcome::Reverted, Some(tx_hash), revert_reason));
                    consumed.report(&[event]);
                    return;
                }
                Ok(TxStatus::Submitted { .. }) => {}
                Err(e) => warn!(target: "relay", chain = %name, %event, error = %e, "cannot read the mint's receipt"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        warn!(target: "relay", chain = %name, %event, tx = %hex::encode(tx_hash), "mint not mined in time; submitting again");
    }
    warn!(target: "relay", chain = %name, %event, tries = MAX_TRIES, "giving up on this mint; other validators take over");
}

/// Submits one batch after its delay: the leaves not minted yet (leaves reorged out
/// past finality are left out), in one `mintBatch`; retried like a mint; followed
/// until mined. Each leaf's relay record says what happened to it.
async fn relay_batch(
    job: BatchJob,
    name: String,
    dest: Arc<Mutex<EvmDestination>>,
    store: Arc<Store>,
    metrics: Metrics,
    consumed: Consumed,
) {
    tokio::time::sleep(job.delay).await;
    let root = hex::encode(job.request.root);
    let record = |outcome: RelayOutcome, tx_hash, detail| RelayRecord::new(job.dest.0, outcome, tx_hash, detail);
    let save = |events: &[EventId], r: &RelayRecord| save_records(&store, events, r);
    let count = |outcome: RelayOutcome, n: usize| {
        metrics.relay_submissions.with_label_values(&[name.as_str(), outcome.as_str()]).inc_by(n as u64);
    };
    for attempt in 0..MAX_TRIES {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(5u64 << attempt.min(4))).await;
        }
        // Checked before every submission, the store being the truth.
        let mut request = job.request.clone();
        let (reorged, live): (Vec<_>, Vec<_>) = request.leaves.into_iter().partition(|l| is_reorged(&store, &l.event));
        if !reorged.is_empty() {
            let events: Vec<EventId> = reorged.iter().map(|l| l.event).collect();
            warn!(target: "relay", chain = %name, %root, reorged = events.len(), "leaves reorged out past finality: not relayed");
            count(RelayOutcome::Reorged, events.len());
            save(&events, &record(RelayOutcome::Reorged, None, None));
        }
        if live.is_empty() {
            return;
        }
        request.leaves = live;
        let events: Vec<EventId> = request.leaves.iter().map(|l| l.event).collect();
        let submitted = dest.lock().await.submit_mint_batch(&request).await;
        let tx_hash = match submitted {
            Ok(MintSubmission::AlreadyConsumed) => {
                count(RelayOutcome::AlreadyConsumed, events.len());
                let theirs: Vec<EventId> = events.iter().copied().filter(|e| !mined_here(&store, e)).collect();
                save(&theirs, &record(RelayOutcome::AlreadyConsumed, None, None));
                consumed.report(&events);
                return;
            }
            Ok(MintSubmission::Submitted { tx_hash, .. }) => {
                count(RelayOutcome::Submitted, events.len());
                save(&events, &record(RelayOutcome::Submitted, Some(tx_hash), None));
                tx_hash
            }
            Err(e) => {
                count(RelayOutcome::Failed, events.len());
                warn!(target: "relay", chain = %name, %root, error = %e, attempt, "batch submission failed; retrying");
                save(&events, &record(RelayOutcome::Failed, None, Some(e.to_string())));
                continue;
            }
        };
        let started = tokio::time::Instant::now();
        while started.elapsed() < MINE_TIMEOUT {
            let status = dest.lock().await.status(tx_hash).await;
            match status {
                Ok(TxStatus::Confirmed { success: true, gas_used, .. }) => {
                    info!(target: "relay", chain = %name, %root, mints = events.len(), gas_used, tx = %hex::encode(tx_hash), "batch mined");
                    save(&events, &record(RelayOutcome::Mined, Some(tx_hash), None));
                    consumed.report(&events);
                    return;
                }
                Ok(TxStatus::Confirmed { revert_reason, .. }) => {
                    count(RelayOutcome::Reverted, events.len());
                    warn!(target: "relay", chain = %name, %root, reason = ?revert_reason, "batch reverted");
                    save(&events, &record(RelayOutcome::Reverted, Some(tx_hash), revert_reason));
                    // Leaves minted by others meanwhile are skipped, never reverted: a
                    // revert is something else. Try again (the leaves are re-read).
                    break;
                }
                Ok(TxStatus::Submitted { .. }) => {}
                Err(e) => warn!(target: "relay", chain = %name, %root, error = %e, "cannot read the batch's receipt"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    warn!(target: "relay", chain = %name, %root, tries = MAX_TRIES, "giving up on this batch; other validators take over");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored and served name of each outcome is its metric label, and the records
    /// written before the enum (plain strings) still read.
    #[test]
    fn outcomes_are_stored_as_their_label() {
        let all = [RelayOutcome::Mined].into_iter().chain(RelayOutcome::COUNTED);
        for o in all {
            assert_eq!(serde_json::to_value(o).unwrap(), serde_json::json!(o.as_str()));
        }
        let old = r#"{"chain_id":1,"outcome":"already_consumed","tx_hash":null,"detail":null,"at_ms":5}"#;
        let r: RelayRecord = serde_json::from_str(old).unwrap();
        assert_eq!(r.outcome, RelayOutcome::AlreadyConsumed);
        assert!(r.outcome.is_final() && !RelayOutcome::Submitted.is_final());
        assert!(serde_json::from_str::<RelayRecord>(&old.replace("already_consumed", "lost")).is_err());
    }
}
