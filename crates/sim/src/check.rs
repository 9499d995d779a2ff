//! The invariants, checked after every step from what the validators did, never from
//! what they believe: the quorum is computed here from n, an observation is what the
//! world fed a node's adapters, a mint is what the contract executed.

use crate::chain::{Deposit, Minted};
use crate::node::{EPOCH, Note};
use btcfi_consensus::{InsecureTestCrypto, VoteVerifier, vote_signing_bytes};
use btcfi_mint::MintRequest;
use btcfi_signer::session::SessionId;
use btcfi_types::{Attestation, Digest, EventId};
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
    pub violations: Vec<String>,
    pub certifications: u64,
    pub signatures: u64,
    pub culprits: u64,
    pub evidence: u64,
}

impl Checker {
    pub fn new(n: u16, byzantine: BTreeSet<u16>, crypto: InsecureTestCrypto, deposits: &[Deposit]) -> Self {
        Self {
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
