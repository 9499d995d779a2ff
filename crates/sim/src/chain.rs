//! The chains below the validators: Bitcoin deposits that become final (or are
//! orphaned by a reorg shallower than finality and never do), and one bridge contract
//! per EVM chain that enforces replay protection and checks the group signature with
//! the contract's own math (`btcfi_signer::evm::verify`, the equation of `FROST.sol`).

use crate::Millis;
use alloy::primitives::{Address, U256};
use btcfi_mint::BatchProposal;
use btcfi_signer::evm::{EvmSignature, verify};
use btcfi_types::{Attestation, EventId};
use std::collections::BTreeMap;

/// One deposit to the vault, as the Bitcoin chain has it.
#[derive(Debug, Clone)]
pub struct Deposit {
    pub att: Attestation,
    /// When it reaches finality depth; `None`: its block was reorged out before that
    /// and the transaction never confirmed again (only Byzantine validators vote it).
    pub final_at: Option<Millis>,
}

/// Why the bridge refused a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Revert {
    BadSignature,
    /// Every leaf was consumed already.
    NothingToMint,
}

/// A mint the contract executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Minted {
    pub event: EventId,
    pub recipient: [u8; 20],
    pub amount: u64,
    pub at: Millis,
    pub by: u16,
}

/// One bridge contract on one EVM chain.
#[derive(Debug, Clone)]
pub struct Bridge {
    pub chain: u64,
    pub address: Address,
    px: U256,
    py: U256,
    /// Event id (the contract's `eventId`) → what was minted for it.
    pub consumed: BTreeMap<[u8; 32], Minted>,
    pub reverts: BTreeMap<Revert, u64>,
    /// How long after inclusion a mint is final (what validators wait for).
    pub finality_ms: Millis,
}

impl Bridge {
    pub fn new(chain: u64, address: Address, px: U256, py: U256, finality_ms: Millis) -> Self {
        Self { chain, address, px, py, consumed: BTreeMap::new(), reverts: BTreeMap::new(), finality_ms }
    }

    /// `mint` / `mintBatch`: the signature must verify over the batch's message (the
    /// plain mint message for one leaf, the batch message over the root otherwise);
    /// consumed leaves are skipped, the rest minted once each.
    pub fn submit(
        &mut self,
        proposal: &BatchProposal,
        signature: &EvmSignature,
        by: u16,
        now: Millis,
    ) -> Result<usize, Revert> {
        let message = proposal.message(self.address);
        let message: [u8; 32] = message.as_slice().try_into().map_err(|_| Revert::BadSignature)?;
        if proposal.chain != self.chain || verify(&message, self.px, self.py, signature).is_err() {
            *self.reverts.entry(Revert::BadSignature).or_default() += 1;
            return Err(Revert::BadSignature);
        }
        let mut minted = 0;
        for leaf in &proposal.leaves {
            let id = leaf.event.contract_id();
            if self.consumed.contains_key(&id) {
                continue;
            }
            let record = Minted { event: leaf.event, recipient: leaf.recipient.0, amount: leaf.amount.0, at: now, by };
            self.consumed.insert(id, record);
            minted += 1;
        }
        if minted == 0 {
            *self.reverts.entry(Revert::NothingToMint).or_default() += 1;
            return Err(Revert::NothingToMint);
        }
        Ok(minted)
    }

    /// Whether `event` was consumed at least `finality_ms` before `now`.
    pub fn consumed_final(&self, event: &EventId, now: Millis) -> bool {
        self.consumed.get(&event.contract_id()).is_some_and(|m| m.at.saturating_add(self.finality_ms) <= now)
    }

    pub fn is_consumed(&self, event: &EventId) -> bool {
        self.consumed.contains_key(&event.contract_id())
    }
}
