//! A chain's JSON-RPC endpoints, with health tracking and failover.
//!
//! Every call goes to the best endpoint: the first healthy one in configured order.
//! An endpoint that fails at the transport level (refused, reset, timeout, HTTP error,
//! an answer that is not JSON-RPC) or that lags the best head seen by more than the
//! stale threshold is *demoted* and the call moves on to the next. Demoted endpoints
//! are probed again after a backoff that doubles per failure, and return to service
//! (taking precedence again by their position) once they answer and are not stale.
//! A JSON-RPC error object is an *answer*, not an endpoint fault: it goes back to the
//! caller (e.g. a log range refusal, a revert), except for the codes that mean the
//! endpoint itself is unwell (internal error, method not available, rate limiting).
//!
//! An endpoint that serves another chain id is disabled for good.

use super::{EvmError, config::redact_url};
use alloy::{
    providers::{Provider, ProviderBuilder, RootProvider},
    transports::{RpcError, TransportError, TransportErrorKind, http::reqwest},
};
use std::{
    future::Future,
    time::{Duration, Instant},
};
use tracing::{debug, info, warn};
use url::Url;

/// Health of one endpoint, for metrics and the status API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointHealth {
    /// Position in the configured list (0 = preferred).
    pub index: usize,
    /// The URL with any path, query or credentials hidden.
    pub url: String,
    /// Serving calls (false: demoted or disabled).
    pub healthy: bool,
    /// Disabled for good (serves another chain).
    pub disabled: bool,
    pub consecutive_failures: u32,
    pub requests: u64,
    pub errors: u64,
    /// Last head height this endpoint reported.
    pub last_head: Option<u64>,
    /// Latency of its last successful request.
    pub last_latency: Option<Duration>,
    /// Why it was last demoted or failed.
    pub last_error: Option<String>,
    /// Times it answered a range of logs differently from the endpoint that served it.
    pub disagreements: u64,
}

#[derive(Debug, Clone)]
enum State {
    Healthy,
    Demoted { retry_at: Instant },
    Disabled,
}

#[derive(Debug)]
struct Endpoint {
    label: String,
    provider: RootProvider,
    state: State,
    chain_checked: bool,
    consecutive_failures: u32,
    requests: u64,
    errors: u64,
    last_head: Option<u64>,
    last_latency: Option<Duration>,
    last_error: Option<String>,
    disagreements: u64,
}

/// Timing and staleness policy of an [`EndpointSet`].
#[derive(Debug, Clone, Copy)]
pub struct EndpointPolicy {
    pub request_timeout: Duration,
    pub stale_threshold: u64,
    pub probe_interval: Duration,
    pub retry_backoff: Duration,
    pub max_retry_backoff: Duration,
}

/// How one failed call is classified.
enum Failure {
    /// The endpoint is unwell: demote it and try the next.
    Fault(EvmError),
    /// The endpoint answered with an error: hand it to the caller.
    Answer(EvmError),
}

/// The endpoints of one chain.
#[derive(Debug)]
pub struct EndpointSet {
    endpoints: Vec<Endpoint>,
    chain_id: u64,
    policy: EndpointPolicy,
    last_probe: Option<Instant>,
    last_used: Option<usize>,
}

impl EndpointSet {
    /// Builds one HTTP provider per URL (no I/O happens here).
    pub fn new(urls: &[Url], chain_id: u64, policy: EndpointPolicy) -> Result<Self, EvmError> {
        let mut endpoints = Vec::with_capacity(urls.len());
        for (i, url) in urls.iter().enumerate() {
            let client = reqwest::Client::builder()
                .timeout(policy.request_timeout)
                .connect_timeout(policy.request_timeout)
                .build()
                .map_err(|e| EvmError::Config { key: format!("endpoints[{i}]"), reason: e.to_string() })?;
            let provider = ProviderBuilder::new().disable_recommended_fillers().connect_reqwest(client, url.clone());
            endpoints.push(Endpoint {
                label: redact_url(url),
                provider,
                state: State::Healthy,
                chain_checked: false,
                consecutive_failures: 0,
                requests: 0,
                errors: 0,
                last_head: None,
                last_latency: None,
                last_error: None,
                disagreements: 0,
            });
        }
        Ok(Self { endpoints, chain_id, policy, last_probe: None, last_used: None })
    }

    /// Per-endpoint health, in configured order.
    pub fn health(&self) -> Vec<EndpointHealth> {
        self.endpoints
            .iter()
            .enumerate()
            .map(|(index, e)| EndpointHealth {
                index,
                url: e.label.clone(),
                healthy: matches!(e.state, State::Healthy),
                disabled: matches!(e.state, State::Disabled),
                consecutive_failures: e.consecutive_failures,
                requests: e.requests,
                errors: e.errors,
                last_head: e.last_head,
                last_latency: e.last_latency,
                last_error: e.last_error.clone(),
                disagreements: e.disagreements,
            })
            .collect()
    }

    /// Endpoints configured.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Runs `f` against endpoint `i` alone (no failover): to ask a second endpoint
    /// what the first one said. A fault demotes it, as in [`EndpointSet::call`].
    pub async fn call_at<T, F, Fut>(&mut self, i: usize, method: &'static str, f: F) -> Result<T, EvmError>
    where
        F: Fn(RootProvider) -> Fut,
        Fut: Future<Output = Result<T, TransportError>>,
    {
        if self.endpoints.get(i).is_none_or(|e| matches!(e.state, State::Disabled)) {
            return Err(EvmError::Config { key: format!("endpoints[{i}]"), reason: "disabled or missing".into() });
        }
        match self.attempt(i, method, &f).await {
            Ok(v) => {
                self.restore(i);
                Ok(v)
            }
            Err(Failure::Answer(err)) => Err(err),
            Err(Failure::Fault(err)) => {
                self.demote(i, err.to_string());
                Err(err)
            }
        }
    }

    /// Endpoint `i` answered differently from the one that served the call.
    pub fn record_disagreement(&mut self, i: usize, reason: String) {
        if let Some(e) = self.endpoints.get_mut(i) {
            e.disagreements = e.disagreements.saturating_add(1);
            e.last_error = Some(reason);
        }
    }

    /// Index of the endpoint that answered the last successful call.
    pub fn last_used(&self) -> Option<usize> {
        self.last_used
    }

    /// Highest head a healthy endpoint reported (a demoted endpoint's last word may
    /// be old, or from before the chain got shorter).
    pub fn best_head(&self) -> Option<u64> {
        self.endpoints.iter().filter(|e| matches!(e.state, State::Healthy)).filter_map(|e| e.last_head).max()
    }

    /// The order in which to try endpoints for one call: healthy ones by preference,
    /// then demoted ones whose backoff expired, then the other demoted ones (a call
    /// is better served late than not at all).
    fn order(&self, now: Instant) -> Vec<usize> {
        let mut healthy = Vec::new();
        let mut due = Vec::new();
        let mut waiting = Vec::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            match e.state {
                State::Healthy => healthy.push(i),
                State::Demoted { retry_at } if retry_at <= now => due.push(i),
                State::Demoted { retry_at } => waiting.push((retry_at, i)),
                State::Disabled => {}
            }
        }
        waiting.sort();
        healthy.extend(due);
        healthy.extend(waiting.into_iter().map(|(_, i)| i));
        healthy
    }

    fn demote(&mut self, i: usize, reason: String) {
        let policy = self.policy;
        let Some(e) = self.endpoints.get_mut(i) else { return };
        if matches!(e.state, State::Disabled) {
            return;
        }
        e.consecutive_failures = e.consecutive_failures.saturating_add(1);
        let shift = e.consecutive_failures.saturating_sub(1).min(16);
        let backoff = policy.retry_backoff.saturating_mul(1u32 << shift).min(policy.max_retry_backoff);
        if matches!(e.state, State::Healthy) {
            warn!(target: "chain::evm", endpoint = %e.label, %reason, ?backoff, "endpoint demoted");
        } else {
            debug!(target: "chain::evm", endpoint = %e.label, %reason, ?backoff, "endpoint still failing");
        }
        e.state = State::Demoted { retry_at: Instant::now() + backoff };
        e.last_error = Some(reason);
    }

    /// Marks the endpoint that served the last call as demoted (e.g. it returned
    /// logs it was not asked for).
    pub fn demote_last(&mut self, reason: String) {
        if let Some(i) = self.last_used {
            if let Some(e) = self.endpoints.get_mut(i) {
                e.errors = e.errors.saturating_add(1);
            }
            self.demote(i, reason);
        }
    }

    fn restore(&mut self, i: usize) {
        if let Some(e) = self.endpoints.get_mut(i)
            && matches!(e.state, State::Demoted { .. })
        {
            info!(target: "chain::evm", endpoint = %e.label, "endpoint back in service");
            e.state = State::Healthy;
        }
    }

    /// One request to one endpoint, with the deadline and the bookkeeping.
    async fn attempt<T, F, Fut>(&mut self, i: usize, method: &'static str, f: &F) -> Result<T, Failure>
    where
        F: Fn(RootProvider) -> Fut,
        Fut: Future<Output = Result<T, TransportError>>,
    {
        let timeout = self.policy.request_timeout;
        let Some(e) = self.endpoints.get_mut(i) else {
            return Err(Failure::Fault(EvmError::Config {
                key: "endpoints".into(),
                reason: "no such endpoint".into(),
            }));
        };
        let label = e.label.clone();
        let provider = e.provider.clone();
        if !e.chain_checked {
            e.requests = e.requests.saturating_add(1);
            let got = match tokio::time::timeout(timeout, provider.get_chain_id()).await {
                Err(_) => {
                    Err(Failure::Fault(EvmError::Timeout { endpoint: label.clone(), method: "eth_chainId", timeout }))
                }
                Ok(Err(err)) => Err(classify(&label, "eth_chainId", err)),
                Ok(Ok(id)) => Ok(id),
            };
            match got {
                Ok(id) if id == self.chain_id => e.chain_checked = true,
                Ok(id) => {
                    let err = EvmError::WrongChain { endpoint: label, expected: self.chain_id, got: id };
                    warn!(target: "chain::evm", error = %err, "endpoint disabled");
                    e.errors = e.errors.saturating_add(1);
                    e.state = State::Disabled;
                    e.last_error = Some(err.to_string());
                    return Err(Failure::Fault(err));
                }
                Err(failure) => {
                    e.errors = e.errors.saturating_add(1);
                    return Err(failure);
                }
            }
        }
        e.requests = e.requests.saturating_add(1);
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, f(provider)).await {
            Err(_) => Err(Failure::Fault(EvmError::Timeout { endpoint: label.clone(), method, timeout })),
            Ok(Err(err)) => Err(classify(&label, method, err)),
            Ok(Ok(v)) => Ok(v),
        };
        match &result {
            Ok(_) => {
                e.last_latency = Some(started.elapsed());
                e.consecutive_failures = 0;
            }
            Err(Failure::Answer(err)) => {
                // The endpoint is up and answering; the error is about the request.
                e.last_latency = Some(started.elapsed());
                e.errors = e.errors.saturating_add(1);
                e.last_error = Some(err.to_string());
            }
            Err(Failure::Fault(_)) => e.errors = e.errors.saturating_add(1),
        }
        result
    }

    /// Runs `f` against the best endpoint, failing over to the next on a fault.
    ///
    /// A JSON-RPC error answer is returned as is (wrapped in nothing); when every
    /// endpoint failed, the error is [`EvmError::AllEndpointsFailed`] with the last
    /// failure inside.
    pub async fn call<T, F, Fut>(&mut self, method: &'static str, f: F) -> Result<T, EvmError>
    where
        F: Fn(RootProvider) -> Fut,
        Fut: Future<Output = Result<T, TransportError>>,
    {
        let order = self.order(Instant::now());
        let mut last = None;
        let mut attempts = 0usize;
        for i in order {
            attempts += 1;
            match self.attempt(i, method, &f).await {
                Ok(v) => {
                    self.restore(i);
                    self.last_used = Some(i);
                    return Ok(v);
                }
                Err(Failure::Answer(err)) => {
                    self.restore(i);
                    self.last_used = Some(i);
                    return Err(err);
                }
                Err(Failure::Fault(err)) => {
                    self.demote(i, err.to_string());
                    last = Some(err);
                }
            }
        }
        let last = last.unwrap_or(EvmError::Config {
            key: "endpoints".into(),
            reason: "every endpoint is disabled (wrong chain id)".into(),
        });
        Err(EvmError::AllEndpointsFailed { attempts, last: Box::new(last) })
    }

    /// The head height from the best endpoint that is not stale.
    ///
    /// An endpoint whose head lags the best head seen by more than the threshold is
    /// demoted and the next one asked; when all lag, the best answer is used.
    pub async fn head(&mut self) -> Result<u64, EvmError> {
        self.probe_if_due().await;
        let mut fallback: Option<(u64, usize)> = None;
        for _ in 0..self.endpoints.len().max(1) {
            let head = self.call("eth_blockNumber", |p| async move { p.get_block_number().await }).await?;
            let Some(i) = self.last_used else { return Ok(head) };
            if let Some(e) = self.endpoints.get_mut(i) {
                e.last_head = Some(head);
            }
            let best = self.best_head().unwrap_or(head);
            if best.saturating_sub(head) <= self.policy.stale_threshold {
                return Ok(head);
            }
            if fallback.is_none_or(|(h, _)| head > h) {
                fallback = Some((head, i));
            }
            self.demote(i, format!("stale: head {head} lags the best head {best} seen"));
            if self.order(Instant::now()).into_iter().all(|j| j == i || !self.is_healthy(j)) {
                break;
            }
        }
        match fallback {
            Some((head, i)) => {
                self.last_used = Some(i);
                Ok(head)
            }
            None => Err(EvmError::AllEndpointsFailed {
                attempts: self.endpoints.len(),
                last: Box::new(EvmError::Config {
                    key: "endpoints".into(),
                    reason: "no endpoint reported a head".into(),
                }),
            }),
        }
    }

    fn is_healthy(&self, i: usize) -> bool {
        self.endpoints.get(i).is_some_and(|e| matches!(e.state, State::Healthy))
    }

    /// Asks every endpoint other than the best for its head, at most once per probe
    /// interval: learns the best head (for staleness) and brings demoted endpoints
    /// back once they answer and keep up.
    pub async fn probe_if_due(&mut self) {
        let now = Instant::now();
        if self.last_probe.is_some_and(|t| now.duration_since(t) < self.policy.probe_interval) {
            return;
        }
        self.last_probe = Some(now);
        let preferred = self.order(now).first().copied();
        let mut results = Vec::new();
        for i in 0..self.endpoints.len() {
            let due = match self.endpoints.get(i).map(|e| &e.state) {
                Some(State::Healthy) => Some(i) != preferred,
                Some(State::Demoted { retry_at }) => *retry_at <= now,
                _ => false,
            };
            if !due {
                continue;
            }
            let r =
                self.attempt(i, "eth_blockNumber", &|p: RootProvider| async move { p.get_block_number().await }).await;
            results.push((i, r));
        }
        for (i, r) in &results {
            if let (Ok(head), Some(e)) = (r, self.endpoints.get_mut(*i)) {
                e.last_head = Some(*head);
            }
        }
        let best = self.best_head();
        for (i, r) in results {
            match r {
                Ok(head) => {
                    let lag = best.unwrap_or(head).saturating_sub(head);
                    if lag > self.policy.stale_threshold {
                        self.demote(i, format!("stale: head {head} lags the best head by {lag}"));
                    } else {
                        self.restore(i);
                    }
                }
                Err(Failure::Fault(err)) => self.demote(i, err.to_string()),
                Err(Failure::Answer(err)) => self.demote(i, err.to_string()),
            }
        }
    }
}

/// Sorts an alloy error into endpoint fault or answer, as a typed [`EvmError`].
fn classify(endpoint: &str, method: &'static str, err: TransportError) -> Failure {
    let endpoint = endpoint.to_owned();
    match err {
        RpcError::ErrorResp(payload) => {
            if let Some(data) = payload.as_revert_data() {
                return Failure::Answer(EvmError::Reverted { reason: super::decode::decode_revert(&data) });
            }
            let message = payload.message.to_string();
            let lower = message.to_ascii_lowercase();
            let unwell = matches!(payload.code, -32603 | -32601 | 429)
                || lower.contains("rate limit")
                || lower.contains("too many requests")
                || lower.contains("capacity");
            let err = EvmError::Rpc { endpoint, method, code: payload.code, message };
            if unwell { Failure::Fault(err) } else { Failure::Answer(err) }
        }
        RpcError::DeserError { err, text } => {
            let mut shown: String = text.chars().take(200).collect();
            if shown.len() < text.len() {
                shown.push('…');
            }
            Failure::Fault(EvmError::BadResponse { endpoint, method, reason: format!("{err} in {shown:?}") })
        }
        RpcError::NullResp => {
            Failure::Fault(EvmError::BadResponse { endpoint, method, reason: "null where a value was required".into() })
        }
        RpcError::Transport(TransportErrorKind::HttpError(h)) if h.status == 413 => {
            Failure::Answer(EvmError::Transport { endpoint, method, reason: h.to_string() })
        }
        RpcError::Transport(kind) => {
            Failure::Fault(EvmError::Transport { endpoint, method, reason: transport_reason(&kind) })
        }
        RpcError::SerError(e) => {
            Failure::Answer(EvmError::BadResponse { endpoint, method, reason: format!("request serialization: {e}") })
        }
        other => Failure::Fault(EvmError::Transport { endpoint, method, reason: other.to_string() }),
    }
}

/// Transport errors chain their causes ("error sending request" → "connection
/// refused"); the operator needs the innermost one.
fn transport_reason(kind: &TransportErrorKind) -> String {
    let mut reason = kind.to_string();
    let mut source = std::error::Error::source(kind);
    while let Some(s) = source {
        let text = s.to_string();
        if !reason.contains(&text) {
            reason = format!("{reason}: {text}");
        }
        source = s.source();
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize) -> EndpointSet {
        let urls: Vec<Url> = (0..n).map(|i| Url::parse(&format!("http://127.0.0.1:{}", 1 + i)).unwrap()).collect();
        EndpointSet::new(
            &urls,
            1,
            EndpointPolicy {
                request_timeout: Duration::from_millis(200),
                stale_threshold: 5,
                probe_interval: Duration::from_secs(60),
                retry_backoff: Duration::from_secs(1),
                max_retry_backoff: Duration::from_secs(4),
            },
        )
        .unwrap()
    }

    #[test]
    fn order_prefers_healthy_then_due_then_waiting() {
        let mut s = set(3);
        let now = Instant::now();
        assert_eq!(s.order(now), vec![0, 1, 2]);
        s.demote(0, "x".into());
        assert_eq!(s.order(now), vec![1, 2, 0]);
        assert_eq!(s.order(now + Duration::from_secs(2)), vec![1, 2, 0]);
        s.demote(1, "y".into());
        // Both demoted: the one whose backoff ends first comes first.
        assert_eq!(s.order(now), vec![2, 0, 1]);
        let h = s.health();
        assert!(!h[0].healthy && !h[1].healthy && h[2].healthy);
        assert_eq!(h[0].consecutive_failures, 1);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let mut s = set(1);
        for _ in 0..5 {
            s.demote(0, "down".into());
        }
        let State::Demoted { retry_at } = s.endpoints[0].state else { panic!("not demoted") };
        let wait = retry_at.duration_since(Instant::now());
        assert!(wait <= Duration::from_secs(4) && wait > Duration::from_secs(3), "{wait:?}");
        assert_eq!(s.endpoints[0].consecutive_failures, 5);
    }

    #[test]
    fn classification() {
        let resp = |code: i64, msg: &str| {
            RpcError::err_resp(serde_json::from_value(serde_json::json!({"code": code, "message": msg})).unwrap())
        };
        assert!(matches!(classify("e", "m", resp(-32000, "block range too large")), Failure::Answer(_)));
        assert!(matches!(classify("e", "m", resp(-32603, "internal")), Failure::Fault(_)));
        assert!(matches!(classify("e", "m", resp(-32000, "rate limit exceeded")), Failure::Fault(_)));
        let deser = serde_json::from_str::<u64>("{").unwrap_err();
        let f = classify("e", "m", RpcError::DeserError { err: deser, text: "{".into() });
        assert!(matches!(f, Failure::Fault(EvmError::BadResponse { .. })));
        let f = classify("e", "m", TransportErrorKind::http_error(413, "too big".into()));
        let Failure::Answer(err) = f else { panic!("413 is an answer") };
        assert!(err.is_range_refusal());
        assert!(matches!(
            classify("e", "m", TransportErrorKind::http_error(502, String::new())),
            Failure::Fault(EvmError::Transport { .. })
        ));
    }
}
