use btcfi_types::Sats;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// More confirmations for larger deposits: a deposit whose **transaction** pays the
/// vault at least `min_amount` in total waits for `confirmations` blocks (the largest
/// matching tier wins).
///
/// Tiers apply per transaction, not per output: the amount compared is the sum of all
/// of the transaction's vault outputs (valid deposits and rejected ones alike; never the
/// vault's own change), and every deposit of that transaction waits for the depth of the
/// sum, as does every rejected one that could be refunded (a refund pays out of the
/// vault). Ten outputs of 4.9 BTC in one transaction wait like one output of 49 BTC.
/// Payments split over several transactions are each judged alone; a future governor
/// will add per-window inflow/outflow limits (in sats, over windows of Bitcoin blocks)
/// on top of the tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmationTier {
    pub min_amount: Sats,
    pub confirmations: u32,
}

/// Highest fee-rate ceiling accepted, in sat/vB: bitcoind's default `-maxfeerate`.
pub const MAX_FEE_RATE: u64 = 10_000;

/// Bounds on the fee rate used for releases, in sat/vB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeeBounds {
    pub floor_sat_per_vb: u64,
    pub ceiling_sat_per_vb: u64,
    /// `estimatesmartfee` confirmation target, in blocks.
    pub conf_target: u16,
}

impl Default for FeeBounds {
    fn default() -> Self {
        Self { floor_sat_per_vb: 2, ceiling_sat_per_vb: 500, conf_target: 6 }
    }
}

/// Settings of the Bitcoin adapter (the `[bitcoin]` table of the node's config). An
/// unknown key is an error: a misspelt `confirmations` must not fall back to a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BitcoinConfig {
    pub rpc_url: String,
    #[serde(default)]
    pub rpc_user: Option<String>,
    #[serde(default)]
    pub rpc_password: Option<String>,
    /// Cookie file instead of user/password (bitcoind's `.cookie`).
    #[serde(default)]
    pub rpc_cookie_file: Option<PathBuf>,
    /// `bitcoin`, `testnet`, `testnet4`, `signet` or `regtest`.
    pub network: bitcoin::Network,
    /// The vault's P2TR address (from the `btc` group key). Empty: the node takes it
    /// from its own DKG key; set, it must equal that key's address.
    #[serde(default)]
    pub vault_address: String,
    /// Depth at which a deposit is final: a block at height h counts as final once
    /// the tip is at h + confirmations - 1.
    pub confirmations: u32,
    /// Deeper depths for larger deposits, judged on each transaction's total to the
    /// vault (see [`ConfirmationTier`]).
    #[serde(default)]
    pub tiers: Vec<ConfirmationTier>,
    /// Vault outputs below this are rejected deposits (dust, fee griefing).
    pub min_deposit: Sats,
    #[serde(default)]
    pub fees: FeeBounds,
    /// The flat fee kept from each peg-out: the user receives the burned amount minus
    /// this; the vault pays the network fee of a release from its change.
    #[serde(default = "default_peg_out_fee")]
    pub peg_out_fee: Sats,
    /// A release unconfirmed for this long is replaced (RBF) at a higher fee rate.
    #[serde(default = "default_rbf_after_secs")]
    pub rbf_after_secs: u64,
    /// Height to start scanning from when there is no checkpoint (the vault's birth).
    #[serde(default)]
    pub start_height: u64,
    /// Blocks processed per poll, to bound the work of one call.
    #[serde(default = "default_max_blocks")]
    pub max_blocks_per_poll: u64,
    /// Processed blocks remembered for reorg handling; must exceed the deepest tier.
    #[serde(default = "default_window")]
    pub reorg_window: usize,
    /// Chains a deposit memo may name (those with a bridge): a memo naming another is a
    /// rejected, refundable deposit. Not read from the file: the node fills it from its
    /// `[[evm]]` chains. Empty: any chain.
    #[serde(skip)]
    pub destination_chains: Vec<u64>,
}

fn default_peg_out_fee() -> Sats {
    Sats(2_000)
}
fn default_rbf_after_secs() -> u64 {
    1_800
}
fn default_max_blocks() -> u64 {
    100
}
fn default_window() -> usize {
    144
}

impl BitcoinConfig {
    /// Confirmations the deposits of a transaction paying the vault `amount` in total
    /// need. Pass the transaction's total to the vault ([`scan::paid_per_tx`]), never
    /// one output's amount: see [`ConfirmationTier`].
    ///
    /// [`scan::paid_per_tx`]: super::scan::paid_per_tx
    pub fn confirmations_for(&self, amount: Sats) -> u32 {
        self.tiers.iter().filter(|t| amount >= t.min_amount).map(|t| t.confirmations).fold(self.confirmations, u32::max)
    }

    /// Checks what serde cannot: each problem named by its key.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        if self.confirmations == 0 {
            errs.push("bitcoin.confirmations: must be at least 1".to_owned());
        }
        let deepest = self.tiers.iter().map(|t| t.confirmations).max().unwrap_or(0).max(self.confirmations);
        if (self.reorg_window as u64) <= u64::from(deepest) {
            errs.push(format!(
                "bitcoin.reorg_window: {} must exceed the deepest confirmation tier {deepest}",
                self.reorg_window
            ));
        }
        if self.fees.floor_sat_per_vb == 0 || self.fees.floor_sat_per_vb > self.fees.ceiling_sat_per_vb {
            errs.push("bitcoin.fees: need 0 < floor_sat_per_vb <= ceiling_sat_per_vb".to_owned());
        }
        if self.fees.ceiling_sat_per_vb > MAX_FEE_RATE {
            errs.push(format!(
                "bitcoin.fees.ceiling_sat_per_vb: at most {MAX_FEE_RATE} (bitcoind refuses to relay above that by default)"
            ));
        }
        if self.rbf_after_secs == 0 {
            errs.push("bitcoin.rbf_after_secs: must be at least 1".to_owned());
        }
        if self.max_blocks_per_poll == 0 {
            errs.push("bitcoin.max_blocks_per_poll: must be at least 1".to_owned());
        }
        match self.vault_address.parse::<bitcoin::Address<bitcoin::address::NetworkUnchecked>>() {
            _ if self.vault_address.is_empty() => {}
            Ok(a) => match a.require_network(self.network) {
                Ok(a) if a.address_type() == Some(bitcoin::AddressType::P2tr) => {}
                Ok(_) => errs.push("bitcoin.vault_address: must be a P2TR (bc1p…) address".to_owned()),
                Err(_) => errs.push(format!("bitcoin.vault_address: not an address of network {}", self.network)),
            },
            Err(e) => errs.push(format!("bitcoin.vault_address: {e}")),
        }
        if self.rpc_cookie_file.is_none() && (self.rpc_user.is_none() || self.rpc_password.is_none()) {
            errs.push("bitcoin.rpc_user/rpc_password: set both, or bitcoin.rpc_cookie_file".to_owned());
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }
}
