//! The invariants, checked after every step from what the validators did, never from
//! what they believe: the quorum is computed here from n, an observation is what the
//! world fed a node's adapters, a mint is what the contract executed, a payment is what
//! a vault spend at depth paid.

use crate::bitcoin::{CEILING_SAT_PER_VB, FLOOR_SAT_PER_VB, PEG_OUT_FEE};
use crate::chain::{Deposit, Minted};
use crate::node::{EPOCH, Note};
use bitcoin::{OutPoint, ScriptBuf, Transaction};
use btcfi_consensus::{InsecureTestCrypto, VoteVerifier, vote_signing_bytes};
use btcfi_mint::MintRequest;
use btcfi_release::{DEFAULT_MAX_FEE_MULTIPLE, Policy, signed_vsize};
use btcfi_signer::session::SessionId;
use btcfi_types::{Attestation, AttestationKind, Digest, EventId};
use std::collections::{BTreeMap, BTreeSet};

/// The quorum of a set of `n`: floor(2n/3) + 1, written out here rather than asked of
/// the code under test.
pub fn independent_quorum(n: u16) -> usize {
    usize::from(n) * 2 / 3 + 1
}

#[derive(Debug)]
pub struct Checker {
    n: u16,
    q: usize,
    byzantine: BTreeSet<u16>,
    crypto: InsecureTestCrypto,
    /// The digest certified first by an honest node, per event.
    certified: BTreeMap<EventId, Digest>,
    /// What each honest node certified (content), across its lives.
    certified_at: BTreeMap<(u16, EventId), Attestation>,
    /// What the world fed each node's adapters.
    fed: BTreeMap<u16, BTreeSet<Digest>>,
    /// Every commitment an honest node sent: by (node, bytes), the session, attempt and
    /// life it was drawn in.
    commitments: BTreeMap<(u16, Vec<u8>), (SessionId, u32, u32)>,
    /// The deposits, by event: what may be minted.
    deposits: BTreeMap<EventId, Attestation>,
    minted: BTreeSet<EventId>,
    /// Peg-outs by the script they pay to (each burn names its own): event, amount.
    payees: BTreeMap<ScriptBuf, (EventId, u64)>,
    policy: Policy,
    /// The highest fee rate an honest signer may sign, sat/vB: the band around the
    /// estimate every validator is given, written out here.
    band: u64,
    /// The largest signed size of a release signed over each input set (a withdrawal
    /// keeps its predecessor's fee).
    sizes: BTreeMap<BTreeSet<OutPoint>, u64>,
    /// Peg-outs each node was told were reorged out past finality.
    told_reorged: BTreeMap<u16, BTreeSet<EventId>>,
    /// Peg-outs the vault paid, at depth.
    pub paid: BTreeSet<EventId>,
    pub vault_fees: u64,
    pub violations: Vec<String>,
    pub certifications: u64,
    pub signatures: u64,
    pub culprits: u64,
    pub evidence: u64,
}

impl Checker {
    pub fn new(
        n: u16,
        byzantine: BTreeSet<u16>,
        crypto: InsecureTestCrypto,
        deposits: &[Deposit],
        burns: &[Attestation],
        policy: Policy,
        fee_estimate: u64,
    ) -> Self {
        let payees = burns
            .iter()
            .filter_map(|a| match &a.kind {
                AttestationKind::PegOut { amount, script_pubkey, .. } => {
                    Some((ScriptBuf::from(script_pubkey.clone()), (a.event, amount.0)))
                }
                _ => None,
            })
            .collect();
        let band = fee_estimate.max(FLOOR_SAT_PER_VB).saturating_mul(DEFAULT_MAX_FEE_MULTIPLE).min(CEILING_SAT_PER_VB);
        Self {
            payees,
            policy,
            band,
            sizes: BTreeMap::new(),
            told_reorged: BTreeMap::new(),
            paid: BTreeSet::new(),
            vault_fees: 0,
            n,
            q: independent_quorum(n),
            byzantine,
            crypto,
            certified: BTreeMap::new(),
            certified_at: BTreeMap::new(),
            fed: BTreeMap::new(),
            commitments: BTreeMap::new(),
            deposits: deposits.iter().filter(|d| d.final_at.is_some()).map(|d| (d.att.event, d.att.clone())).collect(),
            minted: BTreeSet::new(),
            violations: Vec::new(),
            certifications: 0,
            signatures: 0,
            culprits: 0,
            evidence: 0,
        }
    }

    fn fail(&mut self, what: String) {
        if self.violations.len() < 16 {
            self.violations.push(what);
        }
    }

    pub fn fed(&mut self, node: u16, att: &Attestation) {
        self.fed.entry(node).or_default().insert(att.digest());
    }

    /// One note of honest node `node`, in its life `life`, at `now`.
    pub fn note(&mut self, node: u16, life: u32, note: &Note, now: u64) {
        match note {
            Note::Certified { attestation, certificate } => {
                self.certifications += 1;
                let digest = attestation.digest();
                if certificate.digest != digest || certificate.event != attestation.event {
                    self.fail(format!("t={now} node {node}: certificate of another attestation"));
                }
                let mut valid = BTreeSet::new();
                let message = vote_signing_bytes(EPOCH, &certificate.event, &certificate.digest);
                for s in &certificate.signatures {
                    if self.crypto.verify(s.validator, &message, &s.signature) && s.validator.0 < self.n {
                        valid.insert(s.validator);
                    }
                }
                if valid.len() < self.q {
                    self.fail(format!(
                        "t={now} node {node}: certified {} with {} valid signatures, the quorum is {}",
                        attestation.event,
                        valid.len(),
                        self.q
                    ));
                }
                if !self.fed.get(&node).is_some_and(|f| f.contains(&digest)) {
                    self.fail(format!("t={now} node {node}: certified {} without observing it", attestation.event));
                }
                match self.certified.get(&attestation.event) {
                    Some(d) if *d != digest => {
                        self.fail(format!("t={now}: two certified digests for {}", attestation.event));
                    }
                    Some(_) => {}
                    None => {
                        self.certified.insert(attestation.event, digest);
                    }
                }
                self.certified_at.insert((node, attestation.event), attestation.clone());
            }
            Note::Signing { proposal } => {
                for leaf in &proposal.leaves {
                    let mine = self
                        .certified_at
                        .get(&(node, leaf.event))
                        .and_then(MintRequest::of)
                        .is_some_and(|r| r.chain == proposal.chain && r.leaf == *leaf);
                    if !mine {
                        self.fail(format!(
                            "t={now} node {node}: signing a mint of {} it did not certify so ({} sat to chain {})",
                            leaf.event, leaf.amount.0, proposal.chain
                        ));
                    }
                }
            }
            Note::Commitment { session, attempt, bytes } => {
                match self.commitments.get(&(node, bytes.clone())) {
                    Some(&(s, a, l)) if (s, a, l) != (*session, *attempt, life) => self.fail(format!(
                        "t={now} node {node}: one nonce commitment issued twice (attempt {a} of life {l}, then attempt {attempt} of life {life})"
                    )),
                    Some(_) => {}
                    None => {
                        self.commitments.insert((node, bytes.clone()), (*session, *attempt, life));
                    }
                }
            }
            Note::ReleaseSigning { proposal } => {
                let told = self.told_reorged.get(&node).cloned().unwrap_or_default();
                for (index, e) in proposal.payouts.iter().enumerate() {
                    if told.contains(e) {
                        self.fail(format!(
                            "t={now} node {node}: signing a release that pays {e}, reorged out past finality"
                        ));
                    }
                    let certified = self.certified_at.get(&(node, *e)).map(|a| a.kind.clone());
                    let out = proposal.tx.output.get(index);
                    let exact = match (certified, out) {
                        (Some(AttestationKind::PegOut { amount, script_pubkey, .. }), Some(o)) => {
                            o.script_pubkey.as_bytes() == script_pubkey.as_slice()
                                && amount.0.checked_sub(PEG_OUT_FEE) == Some(o.value.to_sat())
                        }
                        _ => false,
                    };
                    if !exact {
                        self.fail(format!(
                            "t={now} node {node}: signing a release whose output {index} is not the peg-out {e} it certified, less the fee"
                        ));
                    }
                }
                let inputs: BTreeSet<OutPoint> = proposal.tx.input.iter().map(|i| i.previous_output).collect();
                let vsize = signed_vsize(&proposal.tx).max(1);
                let size = self.sizes.entry(inputs).or_insert(0);
                *size = (*size).max(vsize);
                // Within the band (plus what a release without change leaves to the fee,
                // and a withdrawal's 1 sat/vB over its predecessor).
                let bound = self.band * *size + vsize + self.policy.dust_limit(&self.policy.vault_script) + 43 * self.band;
                if proposal.fee() > bound {
                    self.fail(format!(
                        "t={now} node {node}: signing a release that pays {} sat in fees ({} sat/vB), over the bound of {bound} sat",
                        proposal.fee(),
                        proposal.fee() / vsize
                    ));
                }
            }
            Note::Signed { .. } => self.signatures += 1,
            Note::Culprit { culprit } => {
                self.culprits += 1;
                if !self.byzantine.contains(culprit) {
                    self.fail(format!("t={now} node {node}: honest validator {culprit} named a culprit"));
                }
            }
            Note::Evidence { validator } => {
                self.evidence += 1;
                if !self.byzantine.contains(validator) {
                    self.fail(format!("t={now} node {node}: equivocation evidence against honest {validator}"));
                }
            }
            Note::Crashed => {}
        }
    }

    /// Validator `node` was told that peg-out `e` was reorged out past finality.
    pub fn told_reorg(&mut self, node: u16, e: EventId) {
        self.told_reorged.entry(node).or_default().insert(e);
    }

    /// A vault spend at depth: every output is the vault's change or pays one peg-out,
    /// once, exactly its amount less the fee.
    pub fn spent(&mut self, tx: &Transaction, fee: u64, now: u64) {
        self.vault_fees += fee;
        let txid = tx.compute_txid();
        for o in &tx.output {
            if o.script_pubkey == self.policy.vault_script {
                continue;
            }
            let Some(&(e, amount)) = self.payees.get(&o.script_pubkey) else {
                self.fail(format!("t={now}: vault spend {txid} pays {} sat to a script no peg-out names", o.value));
                continue;
            };
            if amount.checked_sub(PEG_OUT_FEE) != Some(o.value.to_sat()) {
                self.fail(format!(
                    "t={now}: vault spend {txid} pays {e} {} sat, not its {amount} sat less the {PEG_OUT_FEE} sat fee",
                    o.value.to_sat()
                ));
            }
            if !self.paid.insert(e) {
                self.fail(format!("t={now}: peg-out {e} paid twice (again by {txid})"));
            }
        }
    }

    /// A mint the contract executed: a real deposit, exactly its recipient and amount.
    pub fn minted(&mut self, m: &Minted, chain: u64) {
        let ok = self
            .deposits
            .get(&m.event)
            .and_then(MintRequest::of)
            .is_some_and(|r| r.chain == chain && r.leaf.recipient.0 == m.recipient && r.leaf.amount.0 == m.amount);
        if !self.minted.insert(m.event) {
            self.fail(format!("t={}: {} minted twice", m.at, m.event));
        }
        if !ok {
            self.fail(format!(
                "t={}: chain {chain} minted {} sat to 0x{} for {} that no deposit pays so",
                m.at,
                m.amount,
                hex::encode(m.recipient),
                m.event
            ));
        }
    }
}
