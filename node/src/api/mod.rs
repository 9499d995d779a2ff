//! The HTTP API: `/health`, `/ready`, `/metrics`, `/v1/status`, `/v1/attestations`,
//! `/v1/attestations/{id}`, `/v1/deposits/{txid}:{vout}`, `/v1/openapi.json`.
//! Errors are JSON `{"error": "..."}` with a 4xx/5xx code.

use crate::{config::NodeConfig, metrics::Metrics};
use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use btcfi_consensus::quorum;
use btcfi_p2p::NetworkHandle;
use btcfi_store::{Cf, Store};
use btcfi_types::{ChainId, EventId, TxHash};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    sync::{Arc, OnceLock, RwLock},
    time::Duration,
};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

mod views;
mod waiting;
use tokio::sync::Semaphore;
pub use views::*;
pub use waiting::*;

#[derive(Debug, Clone, Serialize, ToSchema)]
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
#[derive(Debug, Clone, Serialize, ToSchema)]
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
    /// Group keys, vault, releases (from the signing side, see `Pipeline::summary`);
    /// null until the loop first reports.
    pub signing: Option<SigningSummary>,
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
            signing: None,
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
pub type ExplainRequest = (EventId, tokio::sync::oneshot::Sender<Option<Waiting>>);

/// Why `id` waits, from the daemon loop; `None` if nothing waits or the loop does not
/// answer within two seconds (it is busy: the rest of the view still stands).
async fn waiting(s: &ApiState, id: EventId) -> Option<Waiting> {
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
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<btcfi_store::StoreError> for ApiError {
    fn from(e: btcfi_store::StoreError) -> Self {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

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

/// Every route with its OpenAPI description: the router and the document come from
/// this one list, so neither can name a route the other lacks.
fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics))
        .routes(routes!(status))
        .routes(routes!(list_attestations))
        .routes(routes!(get_attestation))
        .routes(routes!(get_deposit))
        .routes(routes!(openapi_json))
}

#[derive(OpenApi)]
#[openapi(info(
    title = "btcfi-node API",
    description = "A bridge validator's view: health, readiness, metrics, status, events and deposits."
))]
struct ApiDoc;

/// The OpenAPI document of [`router`]'s routes.
pub fn openapi() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| routes().into_openapi())
}

pub fn router(state: ApiState) -> Router {
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_REQUESTS));
    let (router, _) = routes().split_for_parts();
    router
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such route; see /v1/openapi.json".into()) })
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(permits, limit))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
async fn openapi_json() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(openapi())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn snapshot(s: &ApiState) -> Result<StatusSnapshot, ApiError> {
    s.status.read().map(|g| g.clone()).map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "status lock".into()))
}

/// Readiness: chains advancing, keys verified and a quorum of validators connected.
#[utoipa::path(get, path = "/ready", responses(
    (status = 200, body = Readiness),
    (status = 503, description = "not ready: the reasons", body = Readiness),
))]
async fn ready(State(s): State<ApiState>) -> Response {
    match snapshot(&s) {
        Ok(snap) => {
            let reasons = snap.not_ready(now_ms());
            let code = if reasons.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            (code, Json(Readiness { ready: reasons.is_empty(), reasons })).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// Prometheus metrics (`btcfi_` prefix).
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics(State(s): State<ApiState>) -> Response {
    ([("content-type", "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

/// `/v1/status`: the node's summary, why it is not ready, and who is connected.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusView {
    #[serde(flatten)]
    pub node: StatusSnapshot,
    pub ready: bool,
    pub not_ready: Vec<String>,
    pub connected_peers: Vec<String>,
}

/// Node summary: identity, epoch, quorum, peers, chains, why not ready, group keys,
/// vault and releases.
#[utoipa::path(get, path = "/v1/status", responses((status = 200, body = StatusView), (status = 500, body = ErrorBody)))]
async fn status(State(s): State<ApiState>) -> Result<Json<StatusView>, ApiError> {
    let node = snapshot(&s)?;
    let not_ready = node.not_ready(now_ms());
    Ok(Json(StatusView {
        node,
        ready: not_ready.is_empty(),
        not_ready,
        connected_peers: s.net.connected_validators().iter().map(|p| p.to_string()).collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// One of the event statuses.
    #[param(value_type = Option<EventStatus>)]
    status: Option<String>,
    /// Source chain id.
    source: Option<u64>,
    /// Destination chain id.
    destination: Option<u64>,
    #[serde(default)]
    #[param(minimum = 0)]
    offset: usize,
    /// 1..=1000, 100 if not given.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Events and attestations, filtered and paged.
#[utoipa::path(get, path = "/v1/attestations", params(ListQuery), responses(
    (status = 200, body = EventPage),
    (status = 400, description = "bad parameter", body = ErrorBody),
))]
async fn list_attestations(
    State(s): State<ApiState>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EventPage>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let status = match &q.status {
        Some(st) => Some(EventStatus::parse(st).ok_or_else(|| {
            let all: Vec<&str> = EventStatus::ALL.iter().map(|s| s.as_str()).collect();
            ApiError(StatusCode::BAD_REQUEST, format!("status {st:?}: one of {}", all.join(", ")))
        })?),
        None => None,
    };
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
        if status.is_some_and(|st| v.status != st) {
            continue;
        }
        if q.destination.is_some_and(|d| v.destination_chain != Some(d)) {
            continue;
        }
        if total >= q.offset && items.len() < limit {
            items.push(v);
        }
        total += 1;
    }
    Ok(Json(EventPage { total, offset: q.offset, limit, items }))
}

/// One event: message, digest, certificate, signers, and why it waits.
#[utoipa::path(get, path = "/v1/attestations/{id}",
    params(("id" = String, Path, description = "<chain id>:<tx hash>:<index>")),
    responses(
        (status = 200, body = EventView),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 404, description = "unknown", body = ErrorBody),
    ))]
async fn get_attestation(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Json<EventView>, ApiError> {
    let id: EventId = id.parse().map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("{e}")))?;
    let mut v = event_view(&s, &id, true)?.ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no event {id}")))?;
    v.waiting = waiting(&s, id).await;
    Ok(Json(v))
}

/// Where a deposit stands, which gate holds it, and (`waiting`) why: queued for a
/// signing slot, the session, its attempt, the signers missing, the next retry.
#[utoipa::path(get, path = "/v1/deposits/{outpoint}",
    params(("outpoint" = String, Path, description = "<txid>:<vout>")),
    responses(
        (status = 200, body = DepositResponse),
        (status = 400, description = "bad outpoint", body = ErrorBody),
    ))]
async fn get_deposit(
    State(s): State<ApiState>,
    Path(outpoint): Path<String>,
) -> Result<Json<DepositResponse>, ApiError> {
    let bad = || ApiError(StatusCode::BAD_REQUEST, format!("{outpoint:?}: expected <txid>:<vout>"));
    let (txid, vout) = outpoint.split_once(':').ok_or_else(bad)?;
    let tx: TxHash = txid.parse().map_err(|_| bad())?;
    let vout: u32 = vout.parse().map_err(|_| bad())?;
    let id = EventId::new(ChainId::BITCOIN, tx, vout);
    let snap = snapshot(&s)?;
    let Some(mut event) = event_view(&s, &id, true)? else {
        let btc = snap.chains.get("bitcoin");
        return Ok(Json(DepositResponse::Unseen(UnseenDeposit {
            id: id.to_string(),
            status: "unknown",
            gate: Gate::Depth,
            detail: "not seen at the confirmation depth yet (or not a payment to the vault)",
            bitcoin_cursor_height: btc.map(|c| c.cursor),
            bitcoin_head_height: btc.map(|c| c.head),
        })));
    };
    event.waiting = waiting(&s, id).await;
    let gate = gate_of(&event);
    let mut view = DepositView { event, gate, votes: None, quorum: None, missing_signers: None };
    if view.event.status == EventStatus::Observed {
        let signed = view.event.signers.clone().unwrap_or_default();
        view.votes = Some(signed.len());
        view.quorum = Some(quorum(u16::try_from(s.peers.len()).unwrap_or(u16::MAX)));
        view.missing_signers = Some(s.peers.iter().map(|p| p.to_string()).filter(|p| !signed.contains(p)).collect());
    }
    Ok(Json(DepositResponse::Seen(Box::new(view))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn doc() -> Value {
        serde_json::to_value(openapi()).expect("the document serializes")
    }

    /// Every `$ref` anywhere under `v`.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("$ref", Value::String(r)) => out.push(r.clone()),
                        _ => refs(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn the_document_lists_every_route_with_a_typed_200() {
        let doc = doc();
        let paths: Vec<&str> = doc["paths"].as_object().expect("paths").keys().map(String::as_str).collect();
        let mut expected = vec![
            "/health",
            "/ready",
            "/metrics",
            "/v1/status",
            "/v1/attestations",
            "/v1/attestations/{id}",
            "/v1/deposits/{outpoint}",
            "/v1/openapi.json",
        ];
        expected.sort_unstable();
        let mut got = paths.clone();
        got.sort_unstable();
        assert_eq!(got, expected);
        for p in paths {
            let ok = &doc["paths"][p]["get"]["responses"]["200"];
            assert!(ok["content"].is_object(), "{p}: a 200 with a body: {ok}");
        }
        let params: Vec<&str> = doc["paths"]["/v1/attestations"]["get"]["parameters"]
            .as_array()
            .expect("query parameters")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(params, ["status", "source", "destination", "offset", "limit"]);
    }

    #[test]
    fn every_schema_reference_resolves() {
        let doc = doc();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.len() > 10, "the views are referenced: {found:?}");
        for r in found {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("{r}: a schema reference"));
            assert!(doc["components"]["schemas"][name].is_object(), "{r} resolves");
        }
    }

    /// The document's view of an event names exactly the fields a served view has, and
    /// the statuses the list filter takes.
    #[test]
    fn the_event_schema_matches_what_is_served() {
        let doc = doc();
        let schema = &doc["components"]["schemas"]["EventView"];
        let mut declared: Vec<String> = schema["properties"].as_object().expect("properties").keys().cloned().collect();
        declared.sort();
        let id = EventId::new(ChainId::BITCOIN, TxHash([1; 32]), 0);
        let mut full = EventView::new(&id, EventStatus::Paid);
        full.source_chain = Some(0);
        full.block = Some(BlockView { height: 1, hash: "00".into() });
        full.digest = Some("d".into());
        full.destination_chain = Some(1);
        full.amount_sats = Some(None);
        full.attestation = Some(AttestationView::Refund { amount_sats: 1, script_pubkey: "51".into() });
        full.message = Some("m".into());
        full.contract_event_id = Some("0x".into());
        full.reason = Some("r".into());
        full.certified_at_ms = Some(1);
        full.certificate =
            Some(CertificateView { epoch: 0, digest: "d".into(), signatures: vec![], encoded: "".into() });
        full.signers = Some(vec![]);
        full.signature = Some(None);
        full.mint = None;
        full.unpayable_reason = Some("u".into());
        full.waiting = Some(Waiting::Stage(Stage::WaitingForEvmKey));
        let served = serde_json::to_value(&full).expect("serializes");
        let mut keys: Vec<String> = served.as_object().expect("an object").keys().cloned().collect();
        keys.extend(["mint", "relay", "release", "refund"].map(String::from));
        keys.sort();
        assert_eq!(declared, keys);
        assert_eq!(served["amount_sats"], Value::Null, "null, not absent");
        assert!(served.get("relay").is_none(), "absent, not null");
        let statuses: Vec<&str> = doc["components"]["schemas"]["EventStatus"]["enum"]
            .as_array()
            .expect("an enum")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(statuses, EventStatus::ALL.map(EventStatus::as_str));
    }
}
