//! The bitcoind driver: the one task that calls bitcoind for the release path.
//!
//! The pipeline never awaits bitcoind. It sends an [`Ask`] and goes on; the driver
//! makes the calls (each bounded by [`RPC_TIMEOUT`]) and sends back one [`Answer`] per
//! ask, which the run loop hands to [`Pipeline::on_bitcoind`]. So a slow or hung
//! bitcoind delays only the release path's own answers, never consensus or signing.
//! Every answer is judged against the pipeline's state when it arrives, not when the
//! ask left: a proposal checked meanwhile outdated is validated again.

use super::*;
use btcfi_chain_adapters::bitcoin::mempool::blames_an_output;

/// Asks in flight at most; a full queue means "not asked", and the pipeline asks
/// again on a later tick.
const QUEUE: usize = 1024;

/// What the pipeline asks of bitcoind.
#[derive(Debug)]
pub(crate) enum Ask {
    FeeEstimate,
    /// `testmempoolaccept` of an unsigned proposal; if the policy refuses it, each
    /// payout alone (its probe) to tell which one it blames.
    Check {
        proposal: Proposal,
        probes: Vec<(EventId, bitcoin::Transaction)>,
    },
    /// Broadcast a signed release.
    Broadcast {
        txid: Txid,
        tx: bitcoin::Transaction,
    },
}

/// bitcoind's relay policy on a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It passes (or only its missing signatures stop it).
    Passes,
    /// Refused for `reason`; `blamed` are the payouts refused alone, with their reasons.
    Refused { reason: String, blamed: Vec<(EventId, String)> },
}

/// What came of a broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Broadcast {
    Done,
    /// bitcoind refused it, or did not answer.
    Failed(String),
}

/// One answer per [`Ask`]; `Err` is bitcoind's silence or error, never a verdict.
#[derive(Debug)]
pub(crate) enum Answer {
    FeeEstimate(Result<u64, String>),
    Checked(Box<Proposal>, Result<Verdict, String>),
    Broadcast(Txid, Broadcast),
}

/// The pipeline's end of the driver.
#[derive(Debug)]
pub(in crate::pipeline) struct Driver {
    asks: mpsc::Sender<Ask>,
}

impl Driver {
    /// Starts the driver task on `btc` (a critical task: it ends only when the
    /// pipeline is gone). Returns the pipeline's end and the answers for the run loop.
    pub(in crate::pipeline) fn spawn(
        btc: BitcoinSource,
        tasks: &mut crate::tasks::Tasks,
    ) -> (Self, mpsc::Receiver<Answer>) {
        let (asks, mut rx) = mpsc::channel::<Ask>(QUEUE);
        let (answers, out) = mpsc::channel::<Answer>(QUEUE);
        tasks.critical("bitcoind driver", async move {
            while let Some(ask) = rx.recv().await {
                let answer = serve(&btc, ask).await;
                if answers.send(answer).await.is_err() {
                    break;
                }
            }
            Ok(())
        });
        (Self { asks }, out)
    }

    /// Queues `ask`; false if the queue is full (ask again later).
    pub(in crate::pipeline) fn ask(&self, ask: Ask) -> bool {
        self.asks.try_send(ask).is_ok()
    }
}

async fn serve(btc: &BitcoinSource, ask: Ask) -> Answer {
    match ask {
        Ask::FeeEstimate => Answer::FeeEstimate(bounded(btc.estimate_fee_rate()).await.map(|f| f.sat_per_vb)),
        Ask::Check { proposal, probes } => {
            let verdict = verdict(btc, proposal.tx.clone(), &probes).await;
            Answer::Checked(Box::new(proposal), verdict)
        }
        Ask::Broadcast { txid, tx } => match bounded(btc.broadcast(tx)).await {
            Ok(_) => Answer::Broadcast(txid, Broadcast::Done),
            Err(e) => Answer::Broadcast(txid, Broadcast::Failed(e)),
        },
    }
}

/// The policy's verdict on `tx`, and if it refuses, on each probe: only reasons about
/// an output blame a payout; a probe bitcoind cannot answer blames none.
async fn verdict(
    btc: &BitcoinSource,
    tx: bitcoin::Transaction,
    probes: &[(EventId, bitcoin::Transaction)],
) -> Result<Verdict, String> {
    let MempoolVerdict::Policy(reason) = bounded(btc.test_mempool_accept(tx)).await? else {
        return Ok(Verdict::Passes);
    };
    let mut blamed = Vec::new();
    for (e, probe) in probes {
        if let Ok(MempoolVerdict::Policy(why)) = bounded(btc.test_mempool_accept(probe.clone())).await
            && blames_an_output(&why)
        {
            blamed.push((*e, why));
        }
    }
    Ok(Verdict::Refused { reason, blamed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::{
        Address, KnownHrp,
        key::{TweakedPublicKey, XOnlyPublicKey},
    };
    use btcfi_chain_adapters::bitcoin::{BitcoinConfig, FeeBounds};

    fn cfg(rpc_url: String) -> BitcoinConfig {
        // The generator's x coordinate: any valid key serves as the vault here.
        let x = hex::decode("79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798").expect("hex");
        let key = TweakedPublicKey::dangerous_assume_tweaked(XOnlyPublicKey::from_slice(&x).expect("key"));
        BitcoinConfig {
            rpc_url,
            rpc_user: Some("u".into()),
            rpc_password: Some("p".into()),
            rpc_cookie_file: None,
            network: bitcoin::Network::Regtest,
            vault_address: Address::p2tr_tweaked(key, KnownHrp::Regtest).to_string(),
            confirmations: 1,
            tiers: vec![],
            min_deposit: Sats(1_000),
            fees: FeeBounds::default(),
            peg_out_fee: Sats(2_000),
            rbf_after_secs: 600,
            start_height: 0,
            max_blocks_per_poll: 10,
            reorg_window: 20,
            destination_chains: vec![],
        }
    }

    /// A bitcoind that hangs gets every ask answered with an error within the
    /// driver's bound, in order; asking (a plain `fn`) never waits on it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_bitcoind_gets_each_ask_answered_with_an_error_within_the_bound() {
        let hung = btcfi_testkit::rpc::FakeRpc::start(|_| btcfi_testkit::rpc::Reply::Hang).expect("endpoint");
        let btc = BitcoinSource::for_submission(cfg(hung.url())).expect("source");
        let mut tasks = crate::tasks::Tasks::new();
        let (driver, mut answers) = Driver::spawn(btc, &mut tasks);
        assert!(driver.ask(Ask::FeeEstimate));
        let tx = bitcoin::Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![],
            output: vec![],
        };
        let txid = tx.compute_txid();
        assert!(driver.ask(Ask::Broadcast { txid, tx }));
        let deadline = RPC_TIMEOUT * 2 + Duration::from_secs(3);
        let first = tokio::time::timeout(deadline, answers.recv()).await.expect("first answer in time");
        match first {
            Some(Answer::FeeEstimate(Err(e))) => assert!(e.contains("did not answer"), "{e}"),
            other => panic!("expected a failed fee estimate, got {other:?}"),
        }
        let second = tokio::time::timeout(deadline, answers.recv()).await.expect("second answer in time");
        match second {
            Some(Answer::Broadcast(t, Broadcast::Failed(e))) => {
                assert_eq!(t, txid);
                assert!(e.contains("did not answer"), "{e}");
            }
            other => panic!("expected a failed broadcast, got {other:?}"),
        }
        tasks.abort_all();
    }

    /// A full queue refuses the ask instead of waiting: the pipeline asks again later.
    #[tokio::test]
    async fn a_full_queue_refuses_an_ask_instead_of_waiting() {
        let (asks, _rx) = mpsc::channel::<Ask>(1);
        let driver = Driver { asks };
        assert!(driver.ask(Ask::FeeEstimate));
        assert!(!driver.ask(Ask::FeeEstimate));
    }
}
