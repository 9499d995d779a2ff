//! The node's Prometheus metrics (`btcfi_` prefix). One registry, made here and passed
//! to each subsystem (the p2p crate registers its own `btcfi_p2p_*`).

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub chain_head: IntGaugeVec,
    pub chain_finalized: IntGaugeVec,
    pub chain_cursor: IntGaugeVec,
    pub chain_poll_errors: IntCounterVec,
    pub chain_events: IntCounterVec,
    pub observations: IntCounter,
    pub votes: IntCounterVec,
    pub certified: IntCounter,
    pub evidence: IntCounter,
    pub alerts: IntCounterVec,
    pub reobservations: IntCounter,
    pub vault_balance_sats: IntGauge,
    pub vault_utxos: IntGauge,
    pub rpc_healthy: IntGaugeVec,
    pub rpc_requests: IntCounterVec,
    pub rpc_errors: IntCounterVec,
    pub rpc_latency: prometheus::GaugeVec,
    pub rpc_head: IntGaugeVec,
    pub rpc_disagreements: IntCounterVec,
    pub signing_sessions: IntCounterVec,
    pub signing_commitments: IntCounterVec,
    pub signing_attempts: IntCounterVec,
    pub signing_culprits: IntCounterVec,
    pub signing_refused: IntCounterVec,
    pub signing_latency: prometheus::HistogramVec,
    pub finality_to_signature: prometheus::Histogram,
    pub relay_submissions: IntCounterVec,
    pub releases_pending: IntGauge,
    pub releases: IntCounterVec,
    pub release_refusals: IntCounterVec,
    pub vault_fees_paid: IntCounter,
    pub vault_fee_alert: IntGauge,
    pub key_usable: IntGaugeVec,
    pub signing_queue: IntGaugeVec,
    pub signing_in_flight: IntGaugeVec,
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> eyre::Result<IntGaugeVec> {
    let m = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(m.clone()))?;
    Ok(m)
}
fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> eyre::Result<IntCounterVec> {
    let m = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(m.clone()))?;
    Ok(m)
}
fn counter(r: &Registry, name: &str, help: &str) -> eyre::Result<IntCounter> {
    let m = IntCounter::new(name, help)?;
    r.register(Box::new(m.clone()))?;
    Ok(m)
}
fn gauge(r: &Registry, name: &str, help: &str) -> eyre::Result<IntGauge> {
    let m = IntGauge::new(name, help)?;
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

impl Metrics {
    pub fn new() -> eyre::Result<Self> {
        let r = Registry::new();
        let metrics = Self {
            chain_head: gauge_vec(
                &r,
                "btcfi_chain_head_height",
                "Head height reported by the chain's node.",
                &["chain"],
            )?,
            chain_finalized: gauge_vec(&r, "btcfi_chain_finalized_height", "Height considered final.", &["chain"])?,
            chain_cursor: gauge_vec(
                &r,
                "btcfi_chain_cursor_height",
                "Last block whose events were all processed.",
                &["chain"],
            )?,
            chain_poll_errors: counter_vec(
                &r,
                "btcfi_chain_poll_errors_total",
                "Failed polls of a chain.",
                &["chain"],
            )?,
            chain_events: counter_vec(
                &r,
                "btcfi_chain_events_total",
                "Chain events reported, by kind.",
                &["chain", "kind"],
            )?,
            observations: counter(&r, "btcfi_consensus_observations_total", "Own observations fed to consensus.")?,
            votes: counter_vec(&r, "btcfi_consensus_votes_total", "Peer votes received, by outcome.", &["outcome"])?,
            certified: counter(&r, "btcfi_consensus_certified_attestations_total", "Attestations certified here.")?,
            evidence: counter(&r, "btcfi_consensus_evidence_total", "Equivocation evidence recorded.")?,
            alerts: counter_vec(&r, "btcfi_consensus_alerts_total", "Conditions for an operator, by kind.", &["kind"])?,
            reobservations: counter(&r, "btcfi_consensus_reobservations_total", "Re-observation requests.")?,
            vault_balance_sats: gauge(&r, "btcfi_vault_balance_sats", "Sum of the vault's final UTXOs.")?,
            vault_utxos: gauge(&r, "btcfi_vault_utxos", "Number of the vault's final UTXOs.")?,
            rpc_healthy: gauge_vec(
                &r,
                "btcfi_rpc_endpoint_healthy",
                "1 while an RPC endpoint serves calls.",
                &["chain", "endpoint"],
            )?,
            rpc_requests: counter_vec(
                &r,
                "btcfi_rpc_requests_total",
                "Requests sent to an RPC endpoint.",
                &["chain", "endpoint"],
            )?,
            rpc_errors: counter_vec(
                &r,
                "btcfi_rpc_errors_total",
                "Failed requests to an RPC endpoint.",
                &["chain", "endpoint"],
            )?,
            rpc_latency: {
                let m = prometheus::GaugeVec::new(
                    Opts::new("btcfi_rpc_last_latency_seconds", "Latency of the endpoint's last successful request."),
                    &["chain", "endpoint"],
                )?;
                r.register(Box::new(m.clone()))?;
                m
            },
            rpc_head: gauge_vec(
                &r,
                "btcfi_rpc_endpoint_head_height",
                "Head height an RPC endpoint last reported.",
                &["chain", "endpoint"],
            )?,
            rpc_disagreements: counter_vec(
                &r,
                "btcfi_rpc_disagreements_total",
                "Ranges of logs an endpoint answered differently from the endpoint that served them.",
                &["chain", "endpoint"],
            )?,
            signing_sessions: counter_vec(
                &r,
                "btcfi_signing_sessions_total",
                "Signing sessions, by key and outcome (queued, started, set_aside, signed, failed, abandoned).",
                &["key", "outcome"],
            )?,
            signing_commitments: counter_vec(
                &r,
                "btcfi_signing_commitments_total",
                "Nonce commitments issued (each persisted before it left).",
                &["key"],
            )?,
            signing_attempts: counter_vec(
                &r,
                "btcfi_signing_attempts_total",
                "Signing attempts by how they ended: signed, retried (a new attempt began), failed.",
                &["key", "outcome"],
            )?,
            signing_culprits: counter_vec(
                &r,
                "btcfi_signing_culprits_total",
                "Signers excluded for invalid shares (evidence recorded).",
                &["key"],
            )?,
            signing_refused: counter_vec(
                &r,
                "btcfi_signing_refused_total",
                "Session inputs refused, by reason (pre_restart_attempt, stale_attempt, ...).",
                &["key", "reason"],
            )?,
            signing_latency: {
                let m = prometheus::HistogramVec::new(
                    prometheus::HistogramOpts::new(
                        "btcfi_signing_latency_seconds",
                        "Time from a session's start here to its signature.",
                    )
                    .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
                    &["key"],
                )?;
                r.register(Box::new(m.clone()))?;
                m
            },
            finality_to_signature: {
                let m = prometheus::Histogram::with_opts(
                    prometheus::HistogramOpts::new(
                        "btcfi_finality_to_signature_seconds",
                        "Time from an event's finality (seen here) to its mint signature.",
                    )
                    .buckets(vec![0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]),
                )?;
                r.register(Box::new(m.clone()))?;
                m
            },
            relay_submissions: counter_vec(
                &r,
                "btcfi_relay_submissions_total",
                "Mint submissions by this node, by outcome (submitted, already_consumed, reverted, failed).",
                &["chain", "outcome"],
            )?,
            releases_pending: gauge(&r, "btcfi_releases_pending", "Certified peg-outs not yet paid at depth.")?,
            releases: counter_vec(
                &r,
                "btcfi_releases_total",
                "Bitcoin releases, by outcome (broadcast, confirmed, replaced, refused).",
                &["outcome"],
            )?,
            release_refusals: counter_vec(
                &r,
                "btcfi_release_refusals_total",
                "Release proposals this signer refused, by reason (fee_out_of_band, not_in_turn, too_many_inputs, non_standard, other).",
                &["reason"],
            )?,
            vault_fees_paid: counter(
                &r,
                "btcfi_vault_fees_paid_sats_total",
                "Mining fees paid by the vault in releases final on chain (sat).",
            )?,
            vault_fee_alert: gauge(
                &r,
                "btcfi_vault_fee_alert_sats",
                "Vault fees per day above which BtcfiVaultFeesHigh fires (release.daily_fee_alert_sats).",
            )?,
            key_usable: gauge_vec(
                &r,
                "btcfi_key_usable",
                "1 once the epoch's group key passed its test signature.",
                &["key"],
            )?,
            signing_queue: gauge_vec(
                &r,
                "btcfi_signing_queue_depth",
                "Messages waiting for a free signing session slot, per key.",
                &["key"],
            )?,
            signing_in_flight: gauge_vec(
                &r,
                "btcfi_signing_sessions_in_flight",
                "Signing sessions running, per key (at most signing.max_sessions_in_flight).",
                &["key"],
            )?,
            registry: r,
        };
        Ok(metrics.with_zero_series())
    }

    /// Creates the labelled series whose label values are known up front, at zero: a
    /// dashboard's `rate()` works from the first scrape, and a reader can tell "none yet"
    /// (0) from "no such metric" (absent).
    fn with_zero_series(self) -> Self {
        for key in ["evm", "btc"] {
            for outcome in ["queued", "started", "set_aside", "signed", "failed", "abandoned"] {
                self.signing_sessions.with_label_values(&[key, outcome]);
            }
            for outcome in ["signed", "retried", "failed"] {
                self.signing_attempts.with_label_values(&[key, outcome]);
            }
            self.signing_commitments.with_label_values(&[key]);
            self.signing_culprits.with_label_values(&[key]);
            self.signing_in_flight.with_label_values(&[key]);
        }
        for reason in [
            "fee_out_of_band",
            "not_in_turn",
            "too_many_inputs",
            "non_standard",
            "wrong_outputs",
            "malformed",
            "other",
            "mempool_policy",
        ] {
            self.release_refusals.with_label_values(&[reason]);
        }
        for outcome in [
            "broadcast",
            "confirmed",
            "merged",
            "refused",
            "refused_by_policy",
            "replaced",
            "respun",
            "unpayable",
            "withdrawn",
        ] {
            self.releases.with_label_values(&[outcome]);
        }
        self
    }

    /// Publishes an EVM chain's endpoint health. Counters advance by the difference to
    /// the adapter's running totals (which restart at zero with the adapter).
    pub fn observe_endpoints(&self, chain: &str, health: &[btcfi_chain_adapters::evm::EndpointHealth]) {
        for h in health {
            let labels = [chain, h.url.as_str()];
            self.rpc_healthy.with_label_values(&labels).set(i64::from(h.healthy));
            let req = self.rpc_requests.with_label_values(&labels);
            req.inc_by(h.requests.saturating_sub(req.get()));
            let err = self.rpc_errors.with_label_values(&labels);
            err.inc_by(h.errors.saturating_sub(err.get()));
            if let Some(l) = h.last_latency {
                self.rpc_latency.with_label_values(&labels).set(l.as_secs_f64());
            }
            let dis = self.rpc_disagreements.with_label_values(&labels);
            dis.inc_by(h.disagreements.saturating_sub(dis.get()));
            if let Some(head) = h.last_head {
                self.rpc_head.with_label_values(&labels).set(i64::try_from(head).unwrap_or(i64::MAX));
            }
        }
    }

    pub fn render(&self) -> String {
        let enc = prometheus::TextEncoder::new();
        enc.encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use btcfi_p2p::{DropReason, MessageKind};
    use std::collections::BTreeSet;

    /// Every `btcfi_*` series the shipped dashboard and alert rules query is one the node
    /// (or its p2p service, on the same registry) actually exports.
    /// Series whose labels are known up front exist at zero from the start, so a reader
    /// tells "none yet" from "not exported".
    #[test]
    fn known_series_are_exported_at_zero_from_the_start() {
        let text = Metrics::new().unwrap().render();
        for line in [
            "btcfi_signing_commitments_total{key=\"evm\"} 0",
            "btcfi_signing_commitments_total{key=\"btc\"} 0",
            "btcfi_signing_sessions_total{key=\"evm\",outcome=\"failed\"} 0",
            "btcfi_release_refusals_total{reason=\"not_in_turn\"} 0",
            "btcfi_releases_total{outcome=\"replaced\"} 0",
            "btcfi_releases_total{outcome=\"confirmed\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn dashboard_and_alerts_only_query_real_metrics() {
        let m = Metrics::new().unwrap();
        let p2p = btcfi_p2p::Metrics::new(&m.registry).unwrap();
        // Labelled families are gathered once they have a child.
        for v in [&m.chain_head, &m.chain_finalized, &m.chain_cursor] {
            v.with_label_values(&["c"]);
        }
        m.chain_poll_errors.with_label_values(&["c"]);
        m.chain_events.with_label_values(&["c", "k"]);
        m.votes.with_label_values(&["o"]);
        m.alerts.with_label_values(&["k"]);
        for v in [&m.rpc_healthy, &m.rpc_head] {
            v.with_label_values(&["c", "e"]);
        }
        for v in [&m.rpc_requests, &m.rpc_errors, &m.rpc_disagreements] {
            v.with_label_values(&["c", "e"]);
        }
        m.rpc_latency.with_label_values(&["c", "e"]);
        m.signing_sessions.with_label_values(&["k", "o"]);
        m.signing_culprits.with_label_values(&["k"]);
        m.signing_latency.with_label_values(&["k"]);
        m.key_usable.with_label_values(&["k"]);
        m.signing_queue.with_label_values(&["k"]);
        m.signing_in_flight.with_label_values(&["k"]);
        m.releases.with_label_values(&["o"]);
        m.release_refusals.with_label_values(&["r"]);
        m.relay_submissions.with_label_values(&["c", "o"]);
        // Reading a labelled p2p counter creates its child.
        p2p.received(MessageKind::Observation);
        p2p.sent(MessageKind::Observation);
        p2p.dropped(DropReason::Oversize);
        let known: BTreeSet<String> = m.registry.gather().iter().map(|f| f.name().to_owned()).collect();

        let dir = btcfi_testkit::repo_root().join("configs/monitoring");
        for file in ["grafana-dashboard.json", "alerts.yml"] {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            if file.ends_with(".json") {
                serde_json::from_str::<serde_json::Value>(&text).expect("the dashboard is JSON");
            }
            let used: BTreeSet<&str> = text
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("btcfi_"))
                .collect();
            assert!(used.len() > 5, "{file} queries btcfi metrics");
            for name in used {
                // A histogram's series carry a suffix beside its family name.
                let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
                assert!(
                    known.contains(name) || known.contains(family),
                    "{file} queries {name}, which the node does not export"
                );
            }
        }
    }
}
