//! What Byzantine validators do besides running the honest code: equivocate, vote for
//! orphaned and invented deposits, propose fake or inflated batches and releases no
//! honest signer may sign, corrupt their signature shares, replay and spam.

use crate::node::{self, BtcSuite, Suite, Wire};
use crate::{AttestationKind, CHAINS, World};
use ::bitcoin::{OutPoint, ScriptBuf};
use btcfi_consensus::{Message as CMessage, ValidatorIndex, Vote};
use btcfi_mint::BatchProposal;
use btcfi_release::{DEFAULT_MAX_FEE_MULTIPLE, Payout, build_fundable, build_with};
use btcfi_signer::session::Message as SMessage;
use btcfi_types::{Attestation, ChainId, EventId, EvmAddress, Sats, TxHash};
use frost_core::Ciphersuite;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

impl World {
    pub(crate) fn corrupt_share(&mut self, wire: &Wire) -> Option<Wire> {
        match wire {
            Wire::Signing(bytes) => corrupt::<Suite>(&mut self.rng, bytes).map(Wire::Signing),
            Wire::BtcSigning(bytes) => corrupt::<BtcSuite>(&mut self.rng, bytes).map(Wire::BtcSigning),
            _ => None,
        }
    }

    pub(crate) fn attack(&mut self, node: u16) {
        let Some(b) = self.byzantine.get(&node).copied() else { return };
        if b.silent {
            return;
        }
        let signer = self.crypto.signer(ValidatorIndex(node));
        let others: Vec<u16> = (0..self.n).filter(|v| *v != node).collect();
        if b.equivocate {
            // Another amount for a real deposit, to some of the validators.
            let d = self.deposits[self.rng.gen_range(0..self.deposits.len())].att.clone();
            let mut alt = d.clone();
            if let AttestationKind::PegIn { amount, .. } = &mut alt.kind {
                *amount = Sats(amount.0 + 1);
            }
            let vote = Vote::sign(node::EPOCH, alt.event, alt.digest(), ValidatorIndex(node), &signer);
            let wire = Wire::Consensus(CMessage::Vote(vote).encode());
            for &to in &others {
                if self.rng.gen_bool(0.5) {
                    self.send(node, to, wire.clone());
                }
            }
        }
        if b.fake_votes {
            // Votes for orphaned deposits and for invented ones.
            let orphan = self.deposits.iter().find(|d| d.final_at.is_none()).map(|d| d.att.clone());
            let invented = Attestation {
                event: EventId::new(ChainId::BITCOIN, TxHash(self.rng.r#gen()), 0),
                kind: AttestationKind::PegIn {
                    dest_chain: ChainId(CHAINS[0]),
                    recipient: EvmAddress([0xee; 20]),
                    amount: Sats(21_000_000),
                },
            };
            for att in orphan.into_iter().chain([invented]) {
                let vote = Vote::sign(node::EPOCH, att.event, att.digest(), ValidatorIndex(node), &signer);
                let wire = Wire::Consensus(CMessage::Vote(vote).encode());
                for &to in &others {
                    self.send(node, to, wire.clone());
                }
            }
        }
        if b.fake_batches {
            // A batch with an orphaned deposit, or a real one inflated.
            let pick = self.deposits[self.rng.gen_range(0..self.deposits.len())].clone();
            let Some(mut request) = btcfi_mint::MintRequest::of(&pick.att) else { return };
            if pick.final_at.is_some() {
                request.leaf.amount = Sats(request.leaf.amount.0 * 2);
            }
            let proposal = BatchProposal::new(request.chain, vec![request.leaf]);
            // It claims the first-ranked proposer's name, to displace honest batches.
            let first = (request.chain % u64::from(self.n)) as usize;
            let wire = Wire::Batch(btcfi_mint::wire::encode_batch(first, &proposal));
            for &to in &others {
                self.send(node, to, wire.clone());
            }
        }
        if b.bad_releases {
            self.bad_release(node, &others);
        }
        if b.spam && !others.is_empty() {
            let to = others[self.rng.gen_range(0..others.len())];
            let mut junk = vec![0u8; self.rng.gen_range(0..200)];
            self.rng.fill(junk.as_mut_slice());
            let wire = match self.rng.gen_range(0..5) {
                0 => Wire::Consensus(junk),
                1 => Wire::Signing(junk),
                2 => Wire::BtcSigning(junk),
                3 => Wire::Release(junk),
                _ => Wire::Batch(junk),
            };
            self.send(node, to, wire);
            if !self.pool.is_empty() {
                let replay = self.pool[self.rng.gen_range(0..self.pool.len())].clone();
                self.send(node, to, replay);
            }
        }
    }

    /// A release proposal: over the fee band (no honest signer may sign it), spending
    /// every free UTXO, or an honest-looking one, at any time: mostly out of its turn,
    /// sometimes in it or at its edge, where signers judge it in turn or not depending on
    /// when they process it, so that some hold it live while the others refuse it (the
    /// split a superseding release's merge and the expiry of unshared releases mend).
    fn bad_release(&mut self, node: u16, others: &[u16]) {
        let payouts: Vec<Payout> = self
            .burns
            .iter()
            .filter(|b| !b.dust && b.deposit.final_at.is_some_and(|f| f <= self.now))
            .filter(|b| {
                !self.reorged.contains(&b.deposit.att.event) && !self.checker.paid.contains(&b.deposit.att.event)
            })
            .filter_map(|b| match &b.deposit.att.kind {
                AttestationKind::PegOut { amount, script_pubkey, .. } => Some(Payout {
                    event: b.deposit.att.event,
                    amount: *amount,
                    script: ScriptBuf::from(script_pubkey.clone()),
                }),
                _ => None,
            })
            .collect();
        if payouts.is_empty() {
            return;
        }
        let locked = self.btc.mempool_inputs();
        let free: Vec<(OutPoint, Sats)> =
            self.btc.utxos_at_depth().into_iter().filter(|(op, _)| !locked.contains(op)).collect();
        let policy = self.btc.policy.clone();
        let est = self.fee_estimate;
        let proposal = match self.rng.gen_range(0..3) {
            0 => build_fundable(&free, &payouts, est * DEFAULT_MAX_FEE_MULTIPLE * 3 + 5, &policy),
            1 => build_with(&free, &[], &payouts, est, &policy),
            _ => build_fundable(&free, &payouts, est, &policy),
        };
        let Ok(p) = proposal else { return };
        let wire = Wire::Release(p.encode());
        for &to in others {
            self.send(node, to, wire.clone());
        }
    }
}

/// A signature share message with its share replaced by a random scalar.
fn corrupt<C: Ciphersuite>(rng: &mut ChaCha8Rng, bytes: &[u8]) -> Option<Vec<u8>> {
    let Ok(SMessage::<C>::Share { session, attempt, .. }) = SMessage::<C>::decode(bytes) else {
        return None;
    };
    let mut scalar = [0u8; 32];
    rng.fill(&mut scalar[1..]);
    let share = frost_core::round2::SignatureShare::<C>::deserialize(&scalar).ok()?;
    SMessage::<C>::Share { session, attempt, share }.encode().ok()
}
