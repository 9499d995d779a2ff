//! Releases: the vault's payments of certified peg-outs, decided by the release book.
//!
//! [`btcfi_release::book::ReleaseBook`] decides every release (the turn rule,
//! batching, the signer's checks, RBF, supersede and merge, expiry, withdrawal,
//! resends and vouching) and this module does what it says: it feeds it what the chain
//! adapters ([`chain`]), the peers, the signer and bitcoind report, and carries out its
//! actions in order. Each change the book persists is written (synced) before the next
//! action: to its log (`book/` + sequence, replayed by [`ReleaseBook::restore`] at
//! start) and, in the same batch, to the release records the API serves (`rel/`,
//! `paying/`). bitcoind is only ever asked through the [`driver`] task; signing goes
//! through the node's `btc` [`Suite`]. [`faults`] are a proposer's test faults.

use super::*;
use crate::release::book::{self, Action, Change, Config, Count, Input, Persisted, ReleaseBook, Spend};
use bitcoin::secp256k1::schnorr;
use driver::{Ask, Broadcast, Verdict};

mod chain;
pub(crate) mod driver;
mod faults;
mod ledger;

/// The release book's log is rewritten at start as the changes its state is rebuilt
/// from once it holds at least twice those and this many more.
const COMPACT_SLACK: usize = 256;

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
const BATCH_WAIT: Duration = Duration::from_secs(2);
/// ... or once its oldest peg-out waited this long, however many keep coming.
const BATCH_MAX_WAIT: Duration = Duration::from_secs(30);
/// A proposer sends its releases still being signed again this often (a validator
/// that was restarting, or lagging, gets another chance to validate them).
const RESEND_EVERY: Duration = Duration::from_secs(30);

/// What this node asked the bitcoind driver and has no answer for yet: one fee
/// estimate at a time, and one broadcast of each release, so that a slow bitcoind is
/// not asked ever more.
#[derive(Debug, Default)]
pub(in crate::pipeline) struct Asked {
    pub(in crate::pipeline) fee: bool,
    pub(in crate::pipeline) broadcasts: BTreeSet<Txid>,
}

/// Each input's sighash of a release being signed, and its signature once made.
type Inputs = Vec<([u8; 32], Option<schnorr::Signature>)>;

/// The book of one node, and what its driver keeps beside it.
pub(in crate::pipeline) struct Book {
    book: ReleaseBook,
    /// The sequence number of the next change logged.
    next: u64,
    /// Releases being signed here: each input's sighash, and its signature once made.
    signing: BTreeMap<Txid, Inputs>,
    /// Whether the vault's UTXOs changed since the book was last told them; what else
    /// it was last told, so that it is told only of changes.
    pub(in crate::pipeline) utxos_changed: bool,
    synced: Option<bool>,
    ready: BTreeMap<u64, bool>,
    fee: Option<u64>,
    vault: ScriptBuf,
}

impl Book {
    /// The turn order the book proposes and judges by.
    pub(in crate::pipeline) fn turns(&self) -> release::Turns {
        self.book.turns()
    }

    /// The book of `cfg`'s node `me` of `n`, restored from `store` (a fresh one when
    /// nothing is logged). Returns the actions the restored book owes at once.
    pub(in crate::pipeline) fn open(
        cfg: &NodeConfig,
        store: &Store,
        policy: &Policy,
        me: usize,
        n: usize,
    ) -> eyre::Result<(Self, Vec<Action>)> {
        let respin = cfg.signing.merge_after_ms;
        let config = Config {
            me,
            n,
            takeover_ms: cfg.signing.takeover_ms,
            batch_wait_ms: BATCH_WAIT.as_millis() as u64,
            batch_max_wait_ms: BATCH_MAX_WAIT.as_millis() as u64,
            bump_after_ms: cfg.bitcoin.rbf_after_secs.saturating_mul(1_000),
            respin_after_ms: respin,
            expire_after_ms: respin.saturating_add(respin / 4),
            resend_every_ms: RESEND_EVERY.as_millis().min(u128::from(respin / 4)).max(1_000) as u64,
            policy_checks: true,
            policy: policy.clone(),
        };
        let changes = crate::records::book_changes(store)?;
        // Releases an earlier version's own release path left in flight would be
        // unknown to a fresh book, which would pay their peg-outs again: the upgrade
        // waits until they are done.
        if changes.is_empty() {
            let mut in_flight = Vec::new();
            for rec in crate::records::all_releases(store)? {
                if matches!(rec.status, ReleaseStatus::Signing | ReleaseStatus::Broadcast | ReleaseStatus::Replaced) {
                    in_flight.push(rec.txid);
                }
            }
            if !in_flight.is_empty() {
                eyre::bail!(
                    "the store holds releases of the ledger engine still in flight ({}): run the previous version with release.engine = \"ledger\" until they confirm or conflict, then upgrade",
                    in_flight.join(", ")
                );
            }
        }
        let mut next = changes.last().map_or(0, |(seq, _)| seq.saturating_add(1));
        let (book, owed) = if changes.is_empty() {
            // Nothing is judged before the chain view says it caught up.
            let mut fresh = ReleaseBook::new(config);
            let none = fresh.handle(Input::Synced(false), now_ms());
            (fresh, none)
        } else {
            let mut persisted = Persisted::default();
            for (_, c) in &changes {
                persisted.apply(c);
            }
            info!(target: "release", changes = changes.len(), "release book restored from its log");
            if let Some(n) = compact(store, &changes, &persisted)? {
                next = n;
            }
            ReleaseBook::restore(config, &persisted, now_ms())
        };
        let book = Self {
            book,
            next,
            signing: BTreeMap::new(),
            utxos_changed: true,
            synced: Some(false),
            ready: BTreeMap::new(),
            fee: None,
            vault: policy.vault_script.clone(),
        };
        Ok((book, owed))
    }
}

/// The log grows by every step of every release; what the book is rebuilt from is much
/// less. Once the log (`changes`, which gave `persisted`) is far longer than that, it is
/// rewritten as that; the next sequence to log, if it was.
fn compact(store: &Store, changes: &[(u64, Change)], persisted: &Persisted) -> eyre::Result<Option<u64>> {
    let compacted = persisted.compacted();
    if compacted.is_empty() || changes.len() < 2 * compacted.len() + COMPACT_SLACK {
        return Ok(None);
    }
    let old: Vec<u64> = changes.iter().map(|(seq, _)| *seq).collect();
    let next = crate::records::rewrite_book(store, &old, &compacted)?;
    info!(target: "release", from = changes.len(), to = compacted.len(), "release book log compacted");
    Ok(Some(next))
}

impl Pipeline {
    /// Whether the release book holds release `txid` live.
    pub(in crate::pipeline) fn book_holds(&self, txid: &Txid) -> bool {
        self.book.book.live().any(|(t, _, _)| t == txid)
    }

    /// What the store holds that the book must know before it judges anything (a crash
    /// may have come between the chain's write and the book's): every vault spend at
    /// depth, and the spends the book logged that the chain no longer holds.
    pub(in crate::pipeline) fn book_catch_up(
        &mut self,
        spends: &[btcfi_chain_adapters::VaultSpend],
    ) -> eyre::Result<()> {
        let b = &self.book;
        let stored: BTreeSet<Txid> = spends.iter().map(|s| Txid::from_byte_array(internal_order(&s.txid))).collect();
        let gone: Vec<Txid> = b.book.spends_at_depth().filter(|t| !stored.contains(*t)).copied().collect();
        for spend in spends {
            self.book_spend(spend)?;
        }
        for txid in gone {
            self.book_input(Input::SpendReorged { txid })?;
        }
        Ok(())
    }

    /// The peg-outs the release book holds as reorged and may pay once final again.
    pub(in crate::pipeline) fn book_reorged(&self) -> Vec<EventId> {
        self.book.book.reorged().filter(|e| !self.book.book.is_pinned(e)).copied().collect()
    }

    /// Whether reorged peg-out `event` stays unpaid even once final again.
    pub(in crate::pipeline) fn pegout_pinned(&self, event: &EventId) -> bool {
        self.book.book.is_pinned(event)
    }

    /// When certified peg-out `event` was first seen here (ms), if the book may pay it.
    /// (Not one set apart by the relay policy: it waits for the policy, not a release.)
    pub(in crate::pipeline) fn pegout_certified_at(&self, event: &EventId) -> Option<u64> {
        if self.book.book.is_set_apart(event) {
            return None;
        }
        self.book.book.certified_payout(event).map(|(_, at)| at)
    }

    /// The live release of the book paying `event`, for the API's `explain` (the newest
    /// accepted, if several): its status, and its inputs signed and not.
    pub(in crate::pipeline) fn book_explain(&self, event: &EventId) -> Option<crate::api::Waiting> {
        use crate::api::{Stage, UnsignedInput, Waiting};
        let b = &self.book;
        let (txid, p) = b
            .book
            .live()
            .filter(|(_, _, p)| p.payouts.contains(event))
            .max_by_key(|(t, _, _)| b.book.accepted_at(t))
            .map(|(t, _, p)| (*t, p))?;
        let status = self.book_status(&txid);
        let inputs = p.tx.input.len();
        let (inputs_signed, unsigned_inputs) = match b.signing.get(&txid) {
            Some(s) => (
                s.iter().filter(|(_, sig)| sig.is_some()).count(),
                s.iter()
                    .enumerate()
                    .filter(|(_, (_, sig))| sig.is_none())
                    .map(|(input, (h, _))| UnsignedInput {
                        input,
                        session: self.btc.as_ref().and_then(|x| x.explain(h)),
                    })
                    .collect(),
            ),
            // Not signed here (yet, or ever: it pays a peg-out reorged away).
            None if status == ReleaseStatus::Signing => (0, Vec::new()),
            None => (inputs, Vec::new()),
        };
        Some(Waiting::Stage(Stage::Releasing {
            release: txid.to_string(),
            status,
            inputs,
            inputs_signed,
            unsigned_inputs,
        }))
    }

    /// The status the API's record of release `txid` says (signing without one).
    fn book_status(&self, txid: &Txid) -> ReleaseStatus {
        crate::records::get_release(&self.store, txid).ok().flatten().map_or(ReleaseStatus::Signing, |r| r.status)
    }

    /// The book's releases in flight by status, and the peg-outs it saw paid, for the
    /// status summary.
    pub(in crate::pipeline) fn book_summary(&self) -> (Vec<ReleaseStatus>, usize) {
        let statuses = self.book.book.live().map(|(t, _, _)| self.book_status(t)).collect();
        (statuses, self.book.book.paid_events().len())
    }

    /// Tells the book `input` and carries out what it says.
    pub(in crate::pipeline) fn book_input(&mut self, input: Input) -> eyre::Result<()> {
        let actions = self.book.book.handle(input, now_ms());
        self.book_actions(actions)
    }

    /// Carries out the book's actions in order; each persisted change is durable before
    /// the next action.
    pub(in crate::pipeline) fn book_actions(&mut self, actions: Vec<Action>) -> eyre::Result<()> {
        let mut actions = actions.into_iter().peekable();
        while let Some(action) = actions.next() {
            match action {
                Action::Persist(change) => self.book_persist(&change)?,
                Action::Propose(p) => {
                    // A fresh proposal comes with its count; a resend alone.
                    let (txid, payouts, inputs, fee) = (p.txid(), p.payouts.len(), p.tx.input.len(), p.fee());
                    match actions.peek() {
                        Some(Action::Count(Count::Proposed)) => {
                            info!(target: "release", %txid, payouts, inputs, fee, "proposing a release")
                        }
                        Some(Action::Count(Count::Replaced)) => {
                            info!(target: "release", %txid, payouts, inputs, fee, "release stuck: proposing a replacement (RBF)")
                        }
                        Some(Action::Count(Count::Respun | Count::Merged)) => {
                            info!(target: "release", %txid, payouts, inputs, fee, "release stalled: proposing one that supersedes it")
                        }
                        Some(Action::Count(Count::Withdrawn)) => {
                            info!(target: "release", %txid, payouts, inputs, fee, "release pays a reorged peg-out: proposing its withdrawal")
                        }
                        _ => debug!(target: "release", %txid, "release held unsigned: sent to the peers again"),
                    }
                    let fresh = matches!(actions.peek(), Some(Action::Count(Count::Proposed)));
                    if fresh && self.book_faulty_send(&p).is_some() {
                        continue;
                    }
                    self.send_to_peers(&[&[TAG_RELEASE][..], &p.encode()].concat());
                }
                Action::Check(p) => {
                    let probes = self.probes(&p);
                    // A full queue: the book asks again after `CHECK_RETRY_MS`.
                    self.ask(Ask::Check { proposal: p, probes });
                }
                Action::Sign { txid, sighashes } => self.book_sign(txid, sighashes)?,
                Action::Abandon { txid } => {
                    let inputs = self.book.signing.remove(&txid).unwrap_or_default();
                    if let Some(suite) = self.btc.as_mut() {
                        for (h, _) in inputs {
                            suite.abandon(&h);
                        }
                    }
                }
                Action::Broadcast(tx) => {
                    let txid = tx.compute_txid();
                    if !self.asked.broadcasts.contains(&txid) && self.ask(Ask::Broadcast { txid, tx }) {
                        self.asked.broadcasts.insert(txid);
                    }
                }
                Action::Count(c) => self.book_count(c),
                Action::Refused { from, txid, error } => {
                    warn!(target: "release", %txid, from, reason = %error, "release proposal refused");
                }
            }
        }
        Ok(())
    }

    fn book_count(&self, c: Count) {
        let label = match c {
            Count::Proposed => "proposed",
            Count::Replaced => "replaced",
            Count::Respun => "respun",
            Count::Merged => "merged",
            Count::Expired => "expired",
            Count::Withdrawn => "withdrawn",
            Count::Broadcast => "signed",
            Count::Confirmed => "confirmed",
            Count::Refused(reason) => {
                self.metrics.release_refusals.with_label_values(&[reason]).inc();
                "refused"
            }
            Count::RefusedByPolicy => {
                self.metrics.release_refusals.with_label_values(&["mempool_policy"]).inc();
                "refused_by_policy"
            }
        };
        self.metrics.releases.with_label_values(&[label]).inc();
    }

    /// Signs release `txid`: one session per input. "Shared" is logged when the first
    /// share of one is about to leave ([`crate::signing::Effect::Shared`]) or a
    /// signature of one is made here.
    fn book_sign(&mut self, txid: Txid, sighashes: Vec<[u8; 32]>) -> eyre::Result<()> {
        if self.book.signing.contains_key(&txid) {
            return Ok(());
        }
        self.book.signing.insert(txid, sighashes.iter().map(|h| (*h, None)).collect());
        info!(target: "release", %txid, inputs = sighashes.len(), "release validated: signing");
        for (i, h) in sighashes.into_iter().enumerate() {
            self.start(KeyKind::Btc, h.to_vec(), Purpose::ReleaseInput { txid: txid.to_string(), input: i as u32 })?;
        }
        Ok(())
    }

    /// The group signature of input `input` of release `txid` (FROST serialization):
    /// kept once it verifies; the book is told when every input is signed.
    pub(in crate::pipeline) fn book_signed_input(
        &mut self,
        txid: Txid,
        input: u32,
        signature: &[u8],
    ) -> eyre::Result<()> {
        let Some(suite) = self.btc.as_ref() else { return Ok(()) };
        let key = *suite.public_key_package().verifying_key();
        let Some(slot) = self.book.signing.get_mut(&txid).and_then(|s| s.get_mut(input as usize)) else {
            return Ok(());
        };
        let sig = btcfi_signer::frost_secp256k1_tr::Signature::deserialize(signature)
            .map_err(|e| eyre::eyre!("release input signature: {e}"))?;
        if let Err(e) = btcsig::verify_key_path(&slot.0, &key, &sig) {
            error!(target: "release", %txid, input, error = %e, "release input signature does not verify: not used");
            return Ok(());
        }
        slot.1 = Some(btcsig::schnorr_signature(&sig)?);
        self.book_input(Input::Shared { txid })?;
        let done: Option<Vec<schnorr::Signature>> =
            self.book.signing.get(&txid).and_then(|s| s.iter().map(|(_, s)| *s).collect());
        if let Some(signatures) = done {
            self.book.signing.remove(&txid);
            info!(target: "release", %txid, "every input signed: broadcasting");
            self.book_input(Input::Signed { txid, signatures })?;
        }
        Ok(())
    }

    /// Logs `change` and updates the API's release records, in one synced write.
    fn book_persist(&mut self, change: &Change) -> eyre::Result<()> {
        let seq = self.book.next;
        self.book.next = seq.saturating_add(1);
        let mut batch = Batch::new();
        crate::records::put_book_change(&mut batch, seq, change)?;
        let conflicting: Vec<Txid> = match change {
            Change::Live { txid, proposal, .. } => {
                // The live releases it conflicts with may still confirm instead.
                let inputs = release::Live::of(proposal).inputs;
                self.book
                    .book
                    .live()
                    .filter(|(t, _, p)| *t != txid && !release::Live::of(p).inputs.is_disjoint(&inputs))
                    .map(|(t, _, _)| *t)
                    .collect()
            }
            _ => Vec::new(),
        };
        let load = |txid: &Txid| -> eyre::Result<Option<ReleaseRecord>> {
            Ok(crate::records::get_release(&self.store, txid)?)
        };
        let ledger::Update { records, fees_paid, confirmed, dropped, payable_again } =
            ledger::update(change, load, &conflicting, self.confirmations, self.policy.peg_out_fee)?;
        if let Some((txid, payouts)) = confirmed {
            info!(target: "release", %txid, payouts, "release final on chain: peg-outs paid");
        }
        // (A withdrawal may still pay one the policy set apart: its mark stays.)
        for event in payable_again.iter().filter(|e| !self.book.book.is_set_apart(e)) {
            crate::records::clear_unpayable(&mut batch, event);
        }
        for r in &records {
            put_release(&self.store, &mut batch, r)?;
        }
        if let Change::SetApart { event, reason, .. } = change {
            // Shown by the API as unpayable, with the reason.
            warn!(target: "release", %event, %reason, "peg-out set apart: left out of every release until it is put to the policy again");
            crate::records::put_unpayable(&mut batch, event, reason)?;
        }
        self.store.commit(batch)?;
        self.metrics.vault_fees_paid.inc_by(fees_paid);
        // Over (on chain, or it never can be): its sessions here are left.
        if let Some(txid) = dropped {
            self.book_actions(vec![Action::Abandon { txid }])?;
        }
        Ok(())
    }

    /// What the bitcoind driver answered to a check the book asked for.
    pub(in crate::pipeline) fn book_checked(
        &mut self,
        p: &Proposal,
        verdict: Result<Verdict, String>,
    ) -> eyre::Result<()> {
        let verdict = verdict.map(|v| match v {
            Verdict::Passes => book::Verdict::Passes,
            Verdict::Refused { reason, blamed } => book::Verdict::Refused { reason, blamed },
        });
        self.book_input(Input::Checked { txid: p.txid(), verdict })
    }

    /// What came of a broadcast the book asked for.
    pub(in crate::pipeline) fn book_broadcast(&mut self, txid: Txid, sent: Broadcast) -> eyre::Result<()> {
        self.asked.broadcasts.remove(&txid);
        let accepted = match sent {
            Broadcast::Done => {
                if let Some(mut r) = crate::records::get_release(&self.store, &txid)?
                    && r.broadcast_ms.is_none()
                {
                    r.broadcast_ms = Some(now_ms());
                    let mut b = Batch::new();
                    put_release(&self.store, &mut b, &r)?;
                    self.store.commit(b)?;
                    self.metrics.releases.with_label_values(&["broadcast"]).inc();
                    info!(target: "release", %txid, "release broadcast");
                }
                Ok(())
            }
            // A replaced release sent again, one mined already: bitcoind refuses them
            // every time, and none is a policy verdict (the book counts those from its
            // checks).
            Broadcast::Failed(e) => {
                debug!(target: "release", %txid, error = %e, "broadcast refused");
                return Ok(());
            }
        };
        self.book_input(Input::Mempool { txid, accepted })
    }

    /// The vault's UTXOs at depth, when they changed.
    pub(in crate::pipeline) fn book_utxos(&mut self) -> eyre::Result<()> {
        if !std::mem::take(&mut self.book.utxos_changed) {
            return Ok(());
        }
        self.book_input(Input::Utxos(self.utxos.clone()))
    }

    /// Whether this node's Bitcoin view has caught up, when that changed. Falling
    /// behind is told at once; caught up, on the next tick, so that the events of the
    /// poll that caught up (a vault spend) reach the book first.
    pub(in crate::pipeline) fn book_synced(&mut self) -> eyre::Result<()> {
        let synced = self.bitcoin_synced;
        if self.book.synced == Some(synced) {
            return Ok(());
        }
        self.book.synced = Some(synced);
        self.book_input(Input::Synced(synced))
    }

    /// A vault spend at depth, as the book takes it.
    pub(in crate::pipeline) fn book_spend(&mut self, spend: &btcfi_chain_adapters::VaultSpend) -> eyre::Result<()> {
        let vault = self.book.vault.clone();
        // Test fault: the chain's payments not counted (the payment bound off).
        let bound = self.release_fault != Some(ReleaseFault::NoPaymentBound);
        let spend = Spend {
            txid: Txid::from_byte_array(internal_order(&spend.txid)),
            spent: spend.spent.clone(),
            payments: spend
                .payouts
                .iter()
                .map(|o| (ScriptBuf::from(o.script_pubkey.clone()), o.amount))
                .filter(|(s, _)| bound && *s != vault && !s.is_op_return())
                .collect(),
        };
        self.book_input(Input::VaultSpend(spend))
    }

    /// Once a tick: the fee estimate and each source bridge's readiness when they
    /// changed, then the book's own tick.
    pub(in crate::pipeline) fn book_tick(&mut self) -> eyre::Result<()> {
        self.refresh_fee_estimate();
        if let Some(fee) = self.fee_estimate
            && self.book.fee != Some(fee)
        {
            self.book.fee = Some(fee);
            self.book_input(Input::FeeEstimate(fee))?;
        }
        let chains: Vec<u64> = self.bridges.keys().copied().collect();
        for chain in chains {
            let ready = self.bridge_not_ready(chain).is_none();
            if self.book.ready.get(&chain) != Some(&ready) {
                self.book.ready.insert(chain, ready);
                self.book_input(Input::SourceReady { chain: ChainId(chain), ready })?;
            }
        }
        // Last: a restored book owes its signatures and broadcasts once told it is
        // synced, and judges them with the estimate and readiness above.
        self.book_synced()?;
        self.book_input(Input::Tick)?;
        self.book_faults()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use btcfi_types::TxHash;

    /// A long log is rewritten as its compacted form, which rebuilds the same state; a
    /// short one is left as it is.
    #[test]
    fn a_long_book_log_is_compacted_and_restores_the_same_state() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("store");
        let event = |i: u8| EventId::new(ChainId(31337), TxHash([i; 32]), 0);
        // A peg-out reorged away and final again, over and over: a long log, a short state.
        let mut log = Vec::new();
        for i in 0..200u8 {
            log.push(Change::Reorged(event(i)));
            log.push(Change::Unreorged(event(i)));
        }
        log.push(Change::Reorged(event(7)));
        let mut b = Batch::new();
        for (seq, c) in (0u64..).zip(&log) {
            crate::records::put_book_change(&mut b, seq, c).expect("put");
        }
        store.commit(b).expect("commit");
        let changes = crate::records::book_changes(&store).expect("read");
        let mut persisted = Persisted::default();
        for (_, c) in &changes {
            persisted.apply(c);
        }
        assert_eq!(compact(&store, &changes, &persisted).expect("compact"), Some(1));
        let back = crate::records::book_changes(&store).expect("read back");
        assert_eq!(back, vec![(0, Change::Reorged(event(7)))]);
        let mut again = Persisted::default();
        for (_, c) in &back {
            again.apply(c);
        }
        assert_eq!(again, persisted);
        assert_eq!(compact(&store, &back, &again).expect("compact"), None, "short: left as it is");
    }
}
