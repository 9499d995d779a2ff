//! The HTTP API: `/health`, `/ready`, `/metrics`, `/v1/status`, `/v1/attestations`,
//! `/v1/attestations/{id}`, `/v1/deposits/{txid}:{vout}`, `/v1/openapi.json`.
//! Errors are JSON `{"error": "..."}` with a 4xx/5xx code.

use crate::{config::NodeConfig, metrics::Metrics, state};
use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use btcfi_chain_adapters::{ChainEvent, Rejected};
use btcfi_consensus::{ValidatorIndex, persist::PeerVoteRecord, quorum};
use btcfi_p2p::NetworkHandle;
use btcfi_store::{Cf, Store};
use btcfi_types::{Attestation, AttestationKind, ChainId, EventId, TxHash};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::Duration,
};
use tokio::sync::Semaphore;

#[derive(Debug, Clone, Serialize)]
pub struct ChainStatus {
    pub chain_id: u64,
    pub head: u64,
    pub finalized: u64,
    pub cursor: u64,
    pub last_progress_ms: u64,
    pub last_error: Option<String>,
}

impl ChainStatus {
    pub fn new(chain_id: u64) -> Self {
        Self { chain_id, head: 0, finalized: 0, cursor: 0, last_progress_ms: 0, last_error: None }
    }
}

/// What the loop publishes for the API, refreshed every second.
#[derive(Debug, Clone, Serialize)]
pub struct StatusSnapshot {
    pub name: String,
    pub peer_id: String,
    pub version: &'static str,
    pub epoch: u64,
    pub validators: u16,
    pub quorum: usize,
    pub peers_connected: usize,
    pub own_votes: u64,
    pub certified: u64,
    pub chains: BTreeMap<String, ChainStatus>,
    /// Why the group keys cannot sign yet (missing, or test signature pending).
    pub key_issues: Vec<String>,
    /// Group keys, vault, releases (from the signing side, see `Threshold::summary`).
    pub signing: Value,
    #[serde(skip)]
    expected_chains: usize,
    #[serde(skip)]
    stall_ms: u64,
}

impl StatusSnapshot {
    pub fn new(cfg: &NodeConfig, me: PeerId, n: u16, quorum: usize) -> Self {
        Self {
            name: cfg.node.name.clone(),
            peer_id: me.to_string(),
            version: env!("CARGO_PKG_VERSION"),
            epoch: cfg.node.epoch,
            validators: n,
            quorum,
            peers_connected: 0,
            own_votes: 0,
            certified: 0,
            chains: BTreeMap::new(),
            key_issues: Vec::new(),
            signing: Value::Null,
            expected_chains: 1 + cfg.evm.len(),
            // A chain that has not been polled successfully for this long stalls readiness.
            stall_ms: 10 * cfg.node.bitcoin_poll_ms.max(cfg.evm.iter().map(|c| c.poll_interval_ms).max().unwrap_or(0)),
        }
    }

    /// Why the node is not ready, if it is not.
    fn not_ready(&self, now_ms: u64) -> Vec<String> {
        let mut why = Vec::new();
        if self.chains.len() < self.expected_chains {
            why.push(format!("{} of {} chains polled so far", self.chains.len(), self.expected_chains));
        }
        for (name, c) in &self.chains {
            if now_ms.saturating_sub(c.last_progress_ms) > self.stall_ms {
                why.push(format!(
                    "chain {name} stalled: {}",
                    c.last_error.clone().unwrap_or_else(|| "no progress".into())
                ));
            }
        }
        why.extend(self.key_issues.iter().cloned());
        // q validators including this one.
        if self.peers_connected + 1 < self.quorum {
            why.push(format!("{} validators connected, quorum needs {}", self.peers_connected + 1, self.quorum));
        }
        why
    }
}

#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<Store>,
    pub metrics: Metrics,
    pub status: Arc<RwLock<StatusSnapshot>>,
    pub net: NetworkHandle,
    pub peers: Vec<PeerId>,
    /// What a refund of a rejected deposit keeps (the peg-out fee).
    pub refund_fee: u64,
    /// Asks the daemon loop why an event waits ([`ExplainRequest`]).
    pub explain: tokio::sync::mpsc::Sender<ExplainRequest>,
}

/// An event id, and where the daemon loop answers why it waits (signing, queue, release).
pub type ExplainRequest = (EventId, tokio::sync::oneshot::Sender<Option<Value>>);

/// Why `id` waits, from the daemon loop; `None` if nothing waits or the loop does not
/// answer within two seconds (it is busy: the rest of the view still stands).
async fn waiting(s: &ApiState, id: EventId) -> Option<Value> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    s.explain.try_send((id, tx)).ok()?;
    tokio::time::timeout(std::time::Duration::from_secs(2), rx).await.ok()?.ok()?
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").field("peers", &self.peers.len()).finish_non_exhaustive()
    }
}

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<btcfi_store::StoreError> for ApiError {
    fn from(e: btcfi_store::StoreError) -> Self {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// Requests served at once; more are answered 503 at once rather than queued.
pub const MAX_CONCURRENT_REQUESTS: usize = 64;
/// Longest a request may take before it is answered 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body accepted (every route is a GET).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Bounds what callers can make the node do: requests at once, time per request.
async fn limit(
    State(permits): State<Arc<Semaphore>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Ok(_permit) = permits.try_acquire() else {
        return ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("more than {MAX_CONCURRENT_REQUESTS} requests at once; retry"),
        )
        .into_response();
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("request took longer than {REQUEST_TIMEOUT:?}"))
            .into_response(),
    }
}

pub fn router(state: ApiState) -> Router {
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_REQUESTS));
    Router::new()
        .route("/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/attestations", get(list_attestations))
        .route("/v1/attestations/{id}", get(get_attestation))
        .route("/v1/deposits/{outpoint}", get(get_deposit))
        .route("/v1/openapi.json", get(|| async { Json(openapi()) }))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such route; see /v1/openapi.json".into()) })
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(permits, limit))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn snapshot(s: &ApiState) -> Result<StatusSnapshot, ApiError> {
    s.status.read().map(|g| g.clone()).map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "status lock".into()))
}

async fn ready(State(s): State<ApiState>) -> Response {
    match snapshot(&s) {
        Ok(snap) => {
            let why = snap.not_ready(now_ms());
            let code = if why.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            (code, Json(json!({ "ready": why.is_empty(), "reasons": why }))).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn metrics(State(s): State<ApiState>) -> Response {
    ([("content-type", "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

async fn status(State(s): State<ApiState>) -> ApiResult {
    let snap = snapshot(&s)?;
    let mut v = serde_json::to_value(&snap).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let why = snap.not_ready(now_ms());
    v["ready"] = json!(why.is_empty());
    v["not_ready"] = json!(why);
    v["connected_peers"] = json!(s.net.connected_validators().iter().map(|p| p.to_string()).collect::<Vec<_>>());
    Ok(Json(v))
}

fn kind_json(a: &Attestation) -> Value {
    match &a.kind {
        AttestationKind::PegIn { dest_chain, recipient, amount } => {
            json!({"type": "peg_in", "destination_chain": dest_chain.0, "recipient": recipient.to_string(), "amount_sats": amount.0})
        }
        AttestationKind::PegOut { nonce, amount, script_pubkey } => {
            json!({"type": "peg_out", "nonce": nonce, "amount_sats": amount.0, "script_pubkey": hex::encode(script_pubkey)})
        }
        AttestationKind::EvmToEvm { nonce, dest_chain, recipient, amount } => {
            json!({"type": "evm_to_evm", "nonce": nonce, "destination_chain": dest_chain.0, "recipient": recipient.to_string(), "amount_sats": amount.0})
        }
        AttestationKind::Refund { amount, script_pubkey } => {
            json!({"type": "refund", "amount_sats": amount.0, "script_pubkey": hex::encode(script_pubkey)})
        }
    }
}

/// Everything known about one event, as the API shows it.
fn event_view(s: &ApiState, id: &EventId, detail: bool) -> Result<Option<Value>, ApiError> {
    let stored = state::get_event(&s.store, id)?;
    let certified = state::get_certified(&s.store, id)?;
    let Some(stored) = stored else {
        return Ok(certified.map(
            |c| json!({"id": id.to_string(), "status": "certified", "digest": c.certificate.digest.to_string()}),
        ));
    };
    let mut v = json!({
        "id": id.to_string(),
        "source_chain": id.chain.0,
    });
    match &stored.event {
        ChainEvent::Observed(o) => {
            v["block"] = json!({"height": o.block.height, "hash": hex::encode(o.block.hash)});
            v["digest"] = json!(o.attestation.digest().to_string());
            v["destination_chain"] = json!(o.attestation.destination().0);
            v["amount_sats"] = json!(o.attestation.amount().0);
            v["attestation"] = kind_json(&o.attestation);
            v["message"] = json!(hex::encode(o.attestation.encode()));
            v["contract_event_id"] = json!(format!("0x{}", hex::encode(id.contract_id())));
        }
        ChainEvent::Rejected(r) => {
            v["block"] = json!({"height": r.block.height, "hash": hex::encode(r.block.hash)});
            v["amount_sats"] = json!(r.amount.map(|a| a.0));
            v["reason"] = json!(r.reason);
        }
        // Vault spends are kept apart (`onchain/` in the releases family), never here.
        ChainEvent::Reorged { .. } | ChainEvent::VaultSpend(_) => {}
    }
    let status = if stored.reorged.is_some() {
        "reorged"
    } else if matches!(stored.event, ChainEvent::Rejected(_)) {
        "rejected"
    } else if certified.is_some() {
        "certified"
    } else {
        "observed"
    };
    v["status"] = json!(status);
    // Voters: own vote plus peer votes of the same digest.
    let mut voters: Vec<u16> = Vec::new();
    if let Some(own) = s.store.get_json::<btcfi_consensus::persist::OwnVoteRecord>(Cf::Observations, id.to_bytes())? {
        voters.push(own.vote.validator.0);
        for (_, raw) in s.store.scan_prefix(Cf::Votes, &id.to_bytes())? {
            if let Ok(r) = serde_json::from_slice::<PeerVoteRecord>(&raw)
                && r.vote.digest == own.vote.digest
            {
                voters.push(r.vote.validator.0);
            }
        }
    }
    if let Some(c) = &certified {
        voters = c.certificate.signers().map(|i: ValidatorIndex| i.0).collect();
        v["certified_at_ms"] = json!(c.certified_at);
        if detail {
            v["certificate"] = json!({
                "epoch": c.certificate.epoch.0,
                "digest": c.certificate.digest.to_string(),
                "signatures": c.certificate.signatures.iter().map(|sig| json!({
                    "validator": sig.validator.0,
                    "peer_id": s.peers.get(usize::from(sig.validator.0)).map(|p| p.to_string()),
                    "signature": hex::encode(&sig.signature.0),
                })).collect::<Vec<_>>(),
                "encoded": hex::encode(c.certificate.encode()),
            });
        }
    }
    voters.sort_unstable();
    voters.dedup();
    v["signers"] =
        json!(voters.iter().filter_map(|i| s.peers.get(usize::from(*i)).map(|p| p.to_string())).collect::<Vec<_>>());
    // The threshold signature (mints) and what this node did with it.
    v["signature"] = Value::Null;
    if let Some(sig) =
        s.store.get_json::<crate::records::SignedRecord>(Cf::SigningAttempts, crate::records::signed_key(id))?
    {
        v["status"] = json!("signed");
        v["signature"] = json!({"rx": sig.rx, "ry": sig.ry, "z": sig.z});
        v["mint"] = json!({
            "chain_id": sig.chain_id,
            "bridge": sig.bridge,
            "event_id": sig.contract_event_id,
            "recipient": sig.recipient,
            "amount_sats": sig.amount_sats,
            "message": sig.message,
            "signers": sig.signers,
            "attempt": sig.attempt,
            "signed_at_ms": sig.signed_at_ms,
        });
        if let Some(r) =
            s.store.get_json::<crate::relay::RelayRecord>(Cf::SigningAttempts, crate::relay::relay_key(id))?
        {
            v["relay"] = json!(r);
        }
    }
    if let Some(u) = s.store.get_json::<Value>(Cf::Releases, crate::records::unpayable_key(id))? {
        v["status"] = json!("unpayable");
        v["unpayable_reason"] = u["reason"].clone();
    }
    if let Ok(Some(r)) = crate::records::release_of(&s.store, id) {
        if r.status == crate::records::ReleaseStatus::Confirmed {
            v["status"] = json!("paid");
        } else {
            v["status"] = json!("releasing");
        }
        let amount = v["amount_sats"].as_u64().unwrap_or(0);
        v["release"] = json!({
            "txid": r.txid,
            "status": r.status,
            "peg_out_fee_sats": r.peg_out_fee_sats,
            "paid_sats": amount.saturating_sub(r.peg_out_fee_sats),
            "network_fee_sats": r.fee_sats,
            "fee_rate_sat_per_vb": r.fee_rate_sat_per_vb,
            "confirmations": r.confirmations,
            "replaces": r.replaces,
        });
    }
    // A rejected deposit paid back: where, how much, and how far.
    if let ChainEvent::Rejected(Rejected { refund: Some(att), .. }) = &stored.event
        && let AttestationKind::Refund { amount, script_pubkey } = &att.kind
    {
        let fee = v["release"]["peg_out_fee_sats"].as_u64().unwrap_or(s.refund_fee);
        let status = match v["status"].as_str() {
            Some("paid") => "refunded",
            Some("unpayable") => "unpayable",
            _ => "refunding",
        };
        v["refund"] = json!({
            "status": status,
            "script_pubkey": hex::encode(script_pubkey),
            "deposit_sats": amount.0,
            "refund_fee_sats": fee,
            "refund_sats": amount.0.saturating_sub(fee),
            "digest": att.digest().to_string(),
            "certified": certified.is_some(),
            "txid": v["release"]["txid"].clone(),
        });
        if status != "unpayable" {
            v["status"] = json!(status);
        }
    }
    // Reorged out past finality: whatever was done with it, it is never acted on again.
    if stored.reorged.is_some() {
        v["status"] = json!("reorged");
    }
    Ok(Some(v))
}

/// Where an event stands: seen, voted, signed (mints), being paid or paid (peg-outs),
/// rejected and being paid back or paid back (refunds), or reorged out past finality.
const STATUSES: [&str; 10] = [
    "observed",
    "certified",
    "signed",
    "releasing",
    "paid",
    "unpayable",
    "rejected",
    "refunding",
    "refunded",
    "reorged",
];

#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<String>,
    source: Option<u64>,
    destination: Option<u64>,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

async fn list_attestations(
    State(s): State<ApiState>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = q.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    if let Some(st) = &q.status
        && !STATUSES.contains(&st.as_str())
    {
        return Err(ApiError(StatusCode::BAD_REQUEST, format!("status {st:?}: one of {}", STATUSES.join(", "))));
    }
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError(StatusCode::BAD_REQUEST, "limit: 1..=1000".into()));
    }
    let mut items = Vec::new();
    let mut total = 0usize;
    for (k, _) in s.store.scan_prefix(Cf::Events, b"")? {
        let Ok(id) = EventId::from_bytes(&k) else { continue };
        if q.source.is_some_and(|c| c != id.chain.0) {
            continue;
        }
        let Some(v) = event_view(&s, &id, false)? else { continue };
        if q.status.as_deref().is_some_and(|st| v["status"] != st) {
            continue;
        }
        if q.destination.is_some_and(|d| v["destination_chain"] != d) {
            continue;
        }
        if total >= q.offset && items.len() < limit {
            items.push(v);
        }
        total += 1;
    }
    Ok(Json(json!({ "total": total, "offset": q.offset, "limit": limit, "items": items })))
}

async fn get_attestation(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    let id: EventId = id.parse().map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("{e}")))?;
    let mut v = event_view(&s, &id, true)?.ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no event {id}")))?;
    if let Some(w) = waiting(&s, id).await {
        v["waiting"] = w;
    }
    Ok(Json(v))
}

async fn get_deposit(State(s): State<ApiState>, Path(outpoint): Path<String>) -> ApiResult {
    let bad = || ApiError(StatusCode::BAD_REQUEST, format!("{outpoint:?}: expected <txid>:<vout>"));
    let (txid, vout) = outpoint.split_once(':').ok_or_else(bad)?;
    let tx: TxHash = txid.parse().map_err(|_| bad())?;
    let vout: u32 = vout.parse().map_err(|_| bad())?;
    let id = EventId::new(ChainId::BITCOIN, tx, vout);
    let snap = snapshot(&s)?;
    let Some(mut v) = event_view(&s, &id, true)? else {
        let btc = snap.chains.get("bitcoin");
        return Ok(Json(json!({
            "id": id.to_string(),
            "status": "unknown",
            "gate": "depth",
            "detail": "not seen at the confirmation depth yet (or not a payment to the vault)",
            "bitcoin_cursor_height": btc.map(|c| c.cursor),
            "bitcoin_head_height": btc.map(|c| c.head),
        })));
    };
    if let Some(w) = waiting(&s, id).await {
        v["waiting"] = w;
    }
    let gate = match v["status"].as_str() {
        Some("observed") => {
            let signed: Vec<String> = v["signers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect();
            let missing: Vec<String> = s.peers.iter().map(|p| p.to_string()).filter(|p| !signed.contains(p)).collect();
            v["votes"] = json!(signed.len());
            v["quorum"] = json!(quorum(u16::try_from(s.peers.len()).unwrap_or(u16::MAX)));
            v["missing_signers"] = json!(missing);
            "quorum"
        }
        Some("certified") => "signing",
        Some("signed") => match v["relay"]["outcome"].as_str() {
            Some("mined" | "already_consumed" | "reverted") => "done",
            _ => "submission",
        },
        Some("rejected") => "rejected",
        Some("refunding") => "refund",
        Some("refunded") => "done",
        Some("reorged") => "reorged",
        _ => "depth",
    };
    v["gate"] = json!(gate);
    Ok(Json(v))
}

fn openapi() -> Value {
    let get = |summary: &str| json!({"get": {"summary": summary, "responses": {"200": {"description": "OK"}, "400": {"description": "bad parameter"}, "404": {"description": "not found"}}}});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "btcfi-node API", "version": env!("CARGO_PKG_VERSION")},
        "paths": {
            "/health": get("Liveness: the process answers."),
            "/ready": get("Readiness: chains advancing and a quorum of validators connected (503 with reasons otherwise)."),
            "/metrics": get("Prometheus metrics (btcfi_ prefix)."),
            "/v1/status": get("Node summary: identity, epoch, quorum, peers, chains, why not ready, group keys, vault and releases."),
            "/v1/attestations": {"get": {"summary": "Events and attestations, filtered and paged.", "parameters": [
                {"name": "status", "in": "query", "schema": {"type": "string", "enum": STATUSES}},
                {"name": "source", "in": "query", "schema": {"type": "integer"}},
                {"name": "destination", "in": "query", "schema": {"type": "integer"}},
                {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}
            ], "responses": {"200": {"description": "OK"}, "400": {"description": "bad parameter"}}}},
            "/v1/attestations/{id}": {"get": {"summary": "One event: message, digest, certificate, signers.", "parameters": [
                {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}, "description": "<chain id>:<tx hash>:<index>"}
            ], "responses": {"200": {"description": "OK"}, "400": {"description": "bad id"}, "404": {"description": "unknown"}}}},
            "/v1/deposits/{outpoint}": {"get": {"summary": "Where a deposit stands, which gate holds it, and (`waiting`) why: queued for a signing slot, the session, its attempt, the signers missing, the next retry.", "parameters": [
                {"name": "outpoint", "in": "path", "required": true, "schema": {"type": "string"}, "description": "<txid>:<vout>"}
            ], "responses": {"200": {"description": "OK"}, "400": {"description": "bad outpoint"}}}},
            "/v1/openapi.json": get("This document.")
        }
    })
}
