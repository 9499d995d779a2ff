//! Releases: the vault's payments of certified peg-outs, from proposal to depth.
//!
//! [`ledger`] is what this node holds and what the chain paid, [`inbound`] judges peers'
//! proposals, [`signing`] signs, broadcasts and follows them, and [`proposer`] makes
//! this node's own.

use super::*;

mod checks;
pub(crate) mod driver;
mod inbound;
mod ledger;
mod proposer;
mod signing;

/// What this node asked the bitcoind driver and has no answer for yet: one of each
/// at a time, so a slow bitcoind is not asked ever more.
#[derive(Debug, Default)]
pub(in crate::pipeline) struct Asked {
    /// A fee estimate.
    pub(in crate::pipeline) fee: bool,
    /// A policy check of this node's own next proposal.
    pub(in crate::pipeline) own: bool,
    /// The confirmations of the releases it follows.
    pub(in crate::pipeline) follow: bool,
    /// Policy checks of peers' proposals, by txid.
    pub(in crate::pipeline) checks: BTreeSet<Txid>,
    /// Broadcasts, by txid.
    pub(in crate::pipeline) broadcasts: BTreeSet<Txid>,
}

/// What the releases this node knows hold: the live ones (that may still confirm) with
/// their inputs and payouts, and the peg-outs paid by confirmed ones.
pub(in crate::pipeline) struct Locks {
    pub(in crate::pipeline) live: BTreeMap<Txid, release::Live>,
    pub(in crate::pipeline) paid: BTreeSet<EventId>,
}

impl Locks {
    /// Inputs a live release spends: not available to a new release.
    pub(in crate::pipeline) fn inputs(&self) -> BTreeSet<OutPoint> {
        self.live.values().flat_map(|l| l.inputs.iter().copied()).collect()
    }

    /// Peg-outs promised to a live release or paid: not to be proposed again.
    pub(in crate::pipeline) fn payouts(&self) -> BTreeSet<EventId> {
        self.live.values().flat_map(|l| l.payouts.iter().copied()).chain(self.paid.iter().copied()).collect()
    }
}

/// Longest one bitcoind call of the release path may take (in the driver's task).
pub(in crate::pipeline) const RPC_TIMEOUT: Duration = Duration::from_secs(2);

/// `call`, or an error once [`RPC_TIMEOUT`] passed (the call is abandoned, not undone:
/// every call here is a read or an idempotent broadcast).
pub(in crate::pipeline) async fn bounded<T>(call: impl Future<Output = Result<T, BtcError>>) -> Result<T, String> {
    match tokio::time::timeout(RPC_TIMEOUT, call).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("bitcoind did not answer within {RPC_TIMEOUT:?}")),
    }
}

/// The validator in turn proposes a release once its oldest peg-out waited this long
/// and no other was certified for as long (peg-outs certified together are batched),
/// or at once when [`release::MAX_PAYOUTS`] wait.
pub(in crate::pipeline) const BATCH_WAIT: Duration = Duration::from_secs(2);
/// ... or once its oldest peg-out waited this long, however many keep coming.
pub(in crate::pipeline) const BATCH_MAX_WAIT: Duration = Duration::from_secs(30);
/// After a proposal that could not be made (no funds, bitcoind's policy), the next
/// is tried this long after.
pub(in crate::pipeline) const PROPOSAL_BACK_OFF: Duration = Duration::from_secs(5);
/// A peg-out left out of releases this long for want of free funds (while the vault as
/// a whole holds enough) is paid before any newer one.
pub(in crate::pipeline) const DEFER_MAX: Duration = Duration::from_secs(600);
/// A withdrawal that does not validate yet is tried again after this long.
pub(in crate::pipeline) const WITHDRAW_RETRY: Duration = Duration::from_secs(10);

/// Proposals kept for a re-check (they name UTXOs or peg-outs this node does not see
/// at depth yet), in all and per proposer.
pub(in crate::pipeline) const MAX_WAITING: usize = 64;
pub(in crate::pipeline) const MAX_WAITING_PER_SENDER: usize = 8;
/// A proposer sends its releases still being signed again this often (a validator
/// that was restarting, or lagging, gets another chance to validate them).
pub(in crate::pipeline) const RESEND_EVERY: Duration = Duration::from_secs(30);
