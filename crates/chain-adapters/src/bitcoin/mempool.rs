//! Bitcoin Core's own relay policy, asked (`testmempoolaccept`) before a release is
//! signed and again before it is broadcast, so that a transaction bitcoind would not
//! relay is never signed, and the payout it blames is set apart.

use super::{BitcoinSource, BtcError};
use bitcoin::Transaction;
use bitcoincore_rpc::RpcApi;

/// What `testmempoolaccept` said of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MempoolVerdict {
    /// It would enter the mempool.
    Accepted,
    /// Refused by its scripts only (an unsigned release: every policy check before the
    /// script checks passed).
    ScriptOnly(String),
    /// Refused by standardness policy (`dust`, `scriptpubkey`, `tx-size`, ...): it can
    /// never be relayed as it is.
    Policy(String),
    /// Refused for another reason (inputs spent or unknown, fees, a conflict).
    Other(String),
}

/// The reasons of Bitcoin Core's `IsStandardTx` (and the package size rules): what a
/// transaction's own shape (not its inputs, fees or scripts) causes.
const POLICY_REASONS: &[&str] = &[
    "version",
    "tx-size",
    "tx-size-small",
    "scriptsig-size",
    "scriptsig-not-pushonly",
    "scriptpubkey",
    "bare-multisig",
    "dust",
    "multi-op-return",
    "bad-txns-nonstandard-inputs",
];

/// Classifies a `reject-reason`.
pub fn classify(reason: &str) -> MempoolVerdict {
    let r = reason.trim();
    if r.contains("script-verify-flag") {
        MempoolVerdict::ScriptOnly(r.to_owned())
    } else if POLICY_REASONS.iter().any(|p| {
        // The reason itself, or a refinement of it (`dust-nonanchor`, `tx-size: …`).
        r.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', ':', '-', ',']))
    }) {
        MempoolVerdict::Policy(r.to_owned())
    } else {
        MempoolVerdict::Other(r.to_owned())
    }
}

/// The policy reasons that name an output (its value or its script), and so can blame
/// the payout a release pays with it; the others (`version`, `tx-size`, inputs, ...)
/// concern the whole transaction.
const OUTPUT_REASONS: &[&str] = &["dust", "scriptpubkey", "bare-multisig", "multi-op-return"];

/// Whether a policy `reason` is about one of the transaction's outputs.
pub fn blames_an_output(reason: &str) -> bool {
    let r = reason.trim();
    OUTPUT_REASONS
        .iter()
        .any(|p| r.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', ':', '-', ','])))
}

impl BitcoinSource {
    /// `testmempoolaccept` of one transaction (nothing is broadcast).
    pub async fn test_mempool_accept(&self, tx: Transaction) -> Result<MempoolVerdict, BtcError> {
        let results = self.rpc().call("testmempoolaccept", move |c| c.test_mempool_accept(&[&tx])).await?;
        Ok(match results.into_iter().next() {
            Some(r) if r.allowed => MempoolVerdict::Accepted,
            Some(r) => classify(r.reject_reason.as_deref().unwrap_or("")),
            None => MempoolVerdict::Other("testmempoolaccept returned no result".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_told_apart() {
        assert_eq!(classify("dust"), MempoolVerdict::Policy("dust".into()));
        assert_eq!(classify("scriptpubkey"), MempoolVerdict::Policy("scriptpubkey".into()));
        // Knots and newer Core name dust outside an anchor so.
        assert_eq!(classify("dust-nonanchor"), MempoolVerdict::Policy("dust-nonanchor".into()));
        assert!(matches!(classify("tx-size"), MempoolVerdict::Policy(_)));
        assert!(matches!(
            classify("mandatory-script-verify-flag-failed (Witness program was passed an empty witness)"),
            MempoolVerdict::ScriptOnly(_)
        ));
        assert!(matches!(classify("mempool-script-verify-flag-failed (x)"), MempoolVerdict::ScriptOnly(_)));
        assert!(matches!(classify("missing-inputs"), MempoolVerdict::Other(_)));
        assert!(matches!(classify("min relay fee not met, 100 < 141"), MempoolVerdict::Other(_)));
        assert!(matches!(classify("txn-mempool-conflict"), MempoolVerdict::Other(_)));
        assert!(matches!(classify("dustx"), MempoolVerdict::Other(_)));
        assert!(blames_an_output("dust") && blames_an_output("dust-nonanchor") && blames_an_output("scriptpubkey"));
        assert!(
            !blames_an_output("tx-size")
                && !blames_an_output("version")
                && !blames_an_output("bad-txns-nonstandard-inputs")
        );
    }
}
