//! HTTP API v1: usage, authorize, holds, the figures, enrolment,
//! requests and resets, over one ledger.
//!
//! Handlers translate JSON to ledger commands and figures to JSON; the
//! rules live in the ledger. A 2xx answer to a write means its journal
//! batch is durable.

pub mod auth;
pub mod console;
pub mod dto;
pub mod edits;
pub mod error;
pub mod kube_auth;
pub mod metrics;
mod openapi;
mod origin;
pub mod serve;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{FromRequest, MatchedPath, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Extension, Json, Router};
use jiff::Timestamp;
use serde::de::DeserializeOwned;

use crate::amount::Amount;
use crate::ledger::costs::{breakdown, closed_breakdown, Breakdown, CostDimension};
use crate::ledger::history::ClosedView;
use crate::ledger::state::Account;
use crate::ledger::{numbers, Charge, Command, Labels, Ledger, LedgerError, MemberSpec, Outcome, Phase, Verdict};
use auth::Caller;
use dto::*;
use error::ApiError;
pub use metrics::Metrics;
pub use openapi::openapi_json;

/// Where enrolled members are written: the manifest folder standalone,
/// a MemberAllocation in the cluster.
pub trait Directory: Send + Sync + 'static {
    fn enrol<'a>(
        &'a self,
        account: &'a str,
        member: MemberSpec,
    ) -> Pin<Box<dyn Future<Output = Result<(), ApiError>> + Send + 'a>>;

    /// Mirrors a decision made through the API onto the request's
    /// resource (`status.approval`); nothing to do without a cluster.
    fn record_decision<'a>(
        &'a self,
        _account: &'a str,
        _request: &'a str,
        _approval: serde_json::Value,
    ) -> Pin<Box<dyn Future<Output = Result<(), ApiError>> + Send + 'a>> {
        Box::pin(async { Ok(()) })
    }

    /// Changes one object's spec where desired state is kept (DESIGN.md,
    /// "Editing desired state through the API"); answers once the ledger
    /// holds the change.
    fn edit<'a>(
        &'a self,
        _account: &'a str,
        edit: edits::SpecEdit,
    ) -> Pin<Box<dyn Future<Output = Result<(), ApiError>> + Send + 'a>> {
        Box::pin(async move {
            Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "not_supported",
                format!("{} cannot be edited through this server", edit.object()),
            ))
        })
    }

    /// Mirrors a reset made through the API onto the account's reset
    /// annotation (the same time, so it resets nothing more).
    fn record_reset<'a>(
        &'a self,
        _account: &'a str,
        _mark: Timestamp,
    ) -> Pin<Box<dyn Future<Output = Result<(), ApiError>> + Send + 'a>> {
        Box::pin(async { Ok(()) })
    }
}

/// Everything a handler needs, behind one reference count: each request
/// clones it several times (middleware and handler), and one atomic
/// increment is much cheaper under load than one per part.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

/// What [`AppState`] holds.
pub struct Services {
    pub ledger: Ledger,
    pub auth: Arc<auth::Auth>,
    pub metrics: Metrics,
    pub directory: Arc<dyn Directory>,
}

impl AppState {
    pub fn new(services: Services) -> AppState {
        AppState(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let a = "/v1/namespaces/{ns}/accounts/{account}";
    Router::new()
        .route(&format!("{a}/usage"), post(usage))
        .route(&format!("{a}/authorize"), post(authorize))
        .route(&format!("{a}/holds"), post(open_hold))
        .route(&format!("{a}/holds/{{id}}/settle"), post(settle_hold))
        .route(&format!("{a}/holds/{{id}}"), axum::routing::delete(release_hold))
        .route(&format!("{a}/overview"), get(overview))
        .route(&format!("{a}/groups"), get(groups))
        .route(&format!("{a}/costs"), get(costs))
        .route(&format!("{a}/groups/{{group}}"), patch(patch_group))
        .route(&format!("{a}/groups/{{group}}/members"), get(members))
        .route(&format!("{a}/members"), post(enrol))
        .route(&format!("{a}/members/{{user_id}}"), patch(patch_member))
        .route(&format!("{a}/settings"), patch(patch_settings))
        .route(&format!("{a}/events"), get(events))
        .route("/v1/accounts", get(accounts))
        .route("/v1/whoami", get(whoami))
        .route(&format!("{a}/requests"), get(list_requests).post(create_request))
        .route(&format!("{a}/requests/{{name}}/approve"), post(approve))
        .route(&format!("{a}/requests/{{name}}/deny"), post(deny))
        .route(&format!("{a}/reset"), post(reset))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi_doc))
        .merge(console::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed on this path"),
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .layer(middleware::from_fn(origin::guard))
        .layer(middleware::from_fn(long_uri))
        .with_state(state)
}

/// The longest request target answered; a longer one is a JSON 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;

async fn long_uri(request: Request, next: Next) -> Response {
    let length = request.uri().to_string().len();
    if length > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is {length} bytes; at most {MAX_URI_BYTES}"),
        )
        .into_response();
    }
    next.run(request).await
}

async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let method = request.method().to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let took = started.elapsed().as_secs_f64();
    let labels = metrics::HttpLabels {
        route,
        method,
        status: response.status().as_u16(),
    };
    state.metrics.http_requests.get_or_create(&labels).inc();
    let route = metrics::RouteLabels {
        route: labels.route,
        method: labels.method,
    };
    state.metrics.http_seconds.get_or_create(&route).observe(took);
    response
}

/// The largest request body (axum's default limit).
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// A JSON body; a malformed one is a 400 naming the field.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let timeout = serve::body_timeout();
        let bytes = tokio::time::timeout(timeout, read_body(req)).await.map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the body did not arrive within {} ms", timeout.as_millis()),
            )
        })??;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        let mut de = serde_json::Deserializer::from_slice(text);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "body".to_string() } else { path };
            ApiError::bad_field(&field, e.into_inner())
        })?;
        de.end().map_err(|e| ApiError::bad_field("body", e))?;
        Ok(Body(value))
    }
}

/// How much of an oversized body is read (and dropped) before the 413, so
/// the client, still sending, reads the answer instead of a reset
/// connection; beyond it the connection is closed.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

/// A request's body, at most `BODY_LIMIT` bytes.
async fn read_body(req: Request) -> Result<Vec<u8>, ApiError> {
    use futures::StreamExt;
    let mut stream = req.into_body().into_data_stream();
    let mut body = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_field("body", e))?;
        seen += chunk.len();
        if seen <= BODY_LIMIT {
            body.extend_from_slice(&chunk);
        } else if seen > DRAIN_LIMIT {
            break;
        }
    }
    if seen > BODY_LIMIT {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than the {BODY_LIMIT} bytes a call may send"),
        ));
    }
    Ok(body)
}

/// A request and a denial say why (DESIGN.md): blank is no reason.
fn require_reason(reason: &str) -> Result<(), ApiError> {
    if reason.trim().is_empty() {
        return Err(ApiError::bad_field("reason", "is required: say why"));
    }
    Ok(())
}

fn account_id(ns: &str, account: &str) -> String {
    format!("{ns}/{account}")
}

fn rfc3339(t: Timestamp) -> String {
    t.to_string()
}

/// Exactly one of `credits` and `costUsd`.
fn charge(credits: Option<AmountIn>, cost_usd: Option<AmountIn>) -> Result<Charge, ApiError> {
    match (credits, cost_usd) {
        (Some(c), None) => Ok(Charge::Credits(c.0)),
        (None, Some(c)) => Ok(Charge::CostUsd(c.0)),
        (Some(_), Some(_)) => Err(ApiError::bad_field(
            "credits",
            "give either credits or costUsd, not both",
        )),
        (None, None) => Err(ApiError::bad_field("credits", "give credits or costUsd")),
    }
}

/// The cost labels of a usage or settlement body (checked by the ledger).
fn labels(model: Option<String>, provider: Option<String>, tags: Option<BTreeMap<String, String>>) -> Labels {
    Labels {
        model,
        provider,
        tags: tags.unwrap_or_default(),
    }
}

fn unexpected(outcome: Outcome) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("unexpected ledger answer {outcome:?}"),
    )
}

fn hold_out(h: crate::ledger::HoldView) -> HoldOut {
    HoldOut {
        id: h.id,
        member: h.member,
        credits: h.credits,
        state: h.state.as_str().to_string(),
        expires_at: rfc3339(h.expires_at),
        settled_credits: h.settled_credits,
        duplicate: h.duplicate,
    }
}

fn member_out(f: numbers::MemberFigures) -> MemberOut {
    MemberOut {
        name: f.name,
        user: UserOut {
            id: f.user_id,
            email: f.email,
            name: f.display_name,
        },
        group: f.group,
        monthly_credits: f.monthly,
        extra_credits: f.extra,
        granted: f.granted,
        used: f.used,
        remaining: f.remaining,
    }
}

fn group_out(f: numbers::GroupFigures) -> GroupOut {
    GroupOut {
        name: f.name,
        monthly_credits: f.monthly,
        extra_credits: f.extra,
        budget: f.budget,
        distributed: f.distributed,
        available: f.available,
        granted: f.granted,
        used: f.used,
        auto_approve_reserve: f.auto_approve_reserve,
        auto_approve_remaining: f.auto_approve_remaining,
        members: f.members,
    }
}

fn request_out(account: &Account, r: &crate::ledger::state::Request) -> RequestOut {
    let member = account.member_by_name(&r.member);
    RequestOut {
        name: r.name.clone(),
        member: member
            .map(|m| m.user_id().to_string())
            .unwrap_or_else(|| r.member.clone()),
        user: member.map(|m| UserOut {
            id: m.user_id().to_string(),
            email: m.email().to_string(),
            name: m.display_name().to_string(),
        }),
        credits: r.credits,
        reason: r.reason.clone(),
        phase: r.phase.as_str().to_string(),
        approved_credits: r.approved_credits,
        submitted_at: rfc3339(r.submitted_at),
        decided_at: r.decided_at.map(rfc3339),
        decided_by: r.decided_by.clone(),
    }
}

/// Query parameters, each checked by name.
struct Params(BTreeMap<String, String>);

impl Params {
    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        self.0
            .get(name)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|_| ApiError::bad_field(name, format!("must be a whole number, got {v:?}")))
            })
            .transpose()
    }

    /// `page` (from 1) and `pageSize` (1 to 500, default 50).
    fn paging(&self) -> Result<(u32, u32), ApiError> {
        let page = self.number::<u32>("page")?.unwrap_or(1);
        let size = self.number::<u32>("pageSize")?.unwrap_or(50);
        if page == 0 {
            return Err(ApiError::bad_field("page", "counts from 1"));
        }
        if size == 0 || size > 500 {
            return Err(ApiError::bad_field("pageSize", "must be between 1 and 500"));
        }
        Ok((page, size))
    }
}

fn page<T>(items: Vec<T>, page: u32, size: u32) -> (Vec<T>, u64) {
    let total = items.len() as u64;
    let start = (u64::from(page) - 1) * u64::from(size);
    let items = items
        .into_iter()
        .skip(start.min(total) as usize)
        .take(size as usize)
        .collect();
    (items, total)
}

/// The closed cycle a read asks for with `?cycle=N`, read from the
/// ledger's history; `None` for the current cycle (no `cycle`, or its
/// number).
async fn closed_param(s: &AppState, id: &str, params: &Params) -> Result<Option<ClosedView>, ApiError> {
    let current = s.ledger.read().active_account(id)?.cycle.number;
    let Some(cycle) = params.number::<u64>("cycle")? else {
        return Ok(None);
    };
    if cycle == current {
        return Ok(None);
    }
    let not_found = || ApiError::not_found(format!("cycle {cycle} not found (current is {current})"));
    if cycle == 0 || cycle > current {
        return Err(not_found());
    }
    s.ledger.closed(id, cycle).await?.map(Some).ok_or_else(not_found)
}

#[utoipa::path(post, path = "/v1/namespaces/{ns}/accounts/{account}/usage", tag = "spending",
    params(("ns" = String, Path, description = "The namespace of the account", example = "ml-platform"), ("account" = String, Path, description = "The CreditAccount name", example = "acme")), request_body = UsageIn,
    responses((status = 200, body = UsageOut), (status = 400, body = ErrorOut), (status = 401, body = ErrorOut),
        (status = 403, body = ErrorOut), (status = 404, body = ErrorOut), (status = 409, body = ErrorOut)))]
async fn usage(
    State(s): State<AppState>,
    Path((ns, account)): Path<(String, String)>,
    Body(b): Body<UsageIn>,
) -> Result<Json<UsageOut>, ApiError> {
    let charge = charge(b.credits, b.cost_usd)?;
    let occurred_at = b
        .occurred_at
        .map(|t| t.parse::<Timestamp>().map_err(|_| t))
        .transpose()
        .map_err(|t| {
            let shown: String = t.chars().take(40).collect();
            ApiError::bad_field(
                "occurredAt",
                format!("must be an RFC 3339 time from 0001-01-01 to 9999-12-30, such as 2026-12-01T10:00:00Z (got {shown:?})"),
            )
        })?;
    let command = Command::RecordUsage {
        account: account_id(&ns, &account),
        member: b.member,
        charge,
        key: b.idempotency_key,
        occurred_at,
        labels: labels(b.model, b.provider, b.tags),
    };
    match s.ledger.execute(command).await? {
        Outcome::Usage(r) => Ok(Json(UsageOut {
            duplicate: r.duplicate,
            credits: r.credits,
            member: MemberBalance {
                used: r.member_used,
                remaining: r.member_remaining,
            },
        })),
        other => Err(unexpected(other)),
    }
}

#[utoipa::path(post, path = "/v1/namespaces/{ns}/accounts/{account}/authorize", tag = "spending",
    params(("ns" = String, Path, description = "The namespace of the account", example = "ml-platform"), ("account" = String, Path, description = "The CreditAccount name", example = "acme")), request_body = AuthorizeIn,
    responses((status = 200, body = AuthorizeOut), (status = 400, body = ErrorOut), (status = 401, body = ErrorOut),
        (status = 404, body = ErrorOut)))]
async fn authorize(
    State(s): State<AppState>,
    Path((ns, account)): Path<(String, String)>,
    Body(b): Body<AuthorizeIn>,
) -> Result<Json<AuthorizeOut>, ApiError> {
    let charge = charge(b.credits, b.cost_usd)?;
    let id = account_id(&ns, &account);
    s.ledger.catch_up(Some(&id)).await?;
    let a = s.ledger.authorize(&id, &b.member, charge)?;
    Ok(Json(AuthorizeOut {
        allowed: a.allowed,
        remaining: a.remaining,
        limited_by: a.limited_by.map(|l| l.as_str().to_string()),
    }))
}

#[utoipa::path(post, path = "/v1/namespaces/{ns}/accounts/{account}/holds", tag = "spending",
    params(("ns" = String, Path, description = "The namespace of the account", example = "ml-platform"), ("account" = String, Path, description = "The CreditAccount name", example = "acme")), request_body = HoldIn,
    responses((status = 201, body = HoldOut), (status = 200, body = HoldOut, description = "a replayed key"),
        (status = 400, body = ErrorOut), (status = 401, body = ErrorOut), (status = 404, body = ErrorOut),
        (status = 409, body = ErrorOut)))]
async fn open_hold(
    State(s): State<AppState>,
    Path((ns, account)): Path<(String, String)>,
    Body(b): Body<HoldIn>,
) -> Result<(StatusCode, Json<HoldOut>), ApiError> {
    let command = Command::OpenHold {
        account: account_id(&ns, &account),
        member: b.member,
        charge: charge(b.credits, b.cost_usd)?,
        ttl_seconds: b.ttl_seconds,
        key: b.idempotency_key,
    };
    match s.ledger.execute(command).await? {
        Outcome::Hold(h) => {
            let status = if h.duplicate {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((status, Json(hold_out(h))))
        }
        other => Err(unexpected(other)),
    }
}

#[utoipa::path(post, path = "/v1/namespaces/{ns}/accounts/{account}/holds/{id}/settle", tag = "spending",
    params(("ns" = String, Path, description = "The namespace of the account", example = "ml-platform"), ("account" = String, Path, description = "The CreditAccount name", example = "acme"), ("id" = String, Path)), request_body = SettleIn,
    responses((status = 200, body = HoldOut), (status = 400, body = ErrorOut), (status = 401, body = ErrorOut),
        (status = 404, body = ErrorOut), (status = 409, body = ErrorOut)))]
async fn settle_hold(
    State(s): State<AppState>,
    Path((ns, account, id)): Path<(String, String, String)>,
    Body(b): Body<SettleIn>,
) -> Result<Json<HoldOut>, ApiError> {
    let command = Command::SettleHold {
        account: account_id(&ns, &account),
        id,
        charge: charge(b.credits, b.cost_usd)?,
        labels: labels(b.model, b.provider, b.tags),
    };
    match s.ledger.execute(command).await? {
        Outcome::Hold(h) => Ok(Json(hold_out(h))),
        other => Err(unexpected(other)),
    }
}

#[utoipa::path(delete, path = "/v1/namespaces/{ns}/accounts/{account}/holds/{id}", tag = "spending",
    params(("ns" = String, Path, description = "The namespace of the account", example = "ml-platform"), ("account" = String, Path, description = "The CreditAccount name", example = "acme"), ("id" = String, Path)),
    responses((status = 200, body = HoldOut), (status = 401, body = ErrorOut), (status = 404, body = ErrorOut)))]
async fn release_hold(
    State(s): State<AppState>,
    Path((ns, account, id)): Path<(String, String, String)>,
) -> Result<Json<HoldOut>, ApiError> {
    match s
        .ledger
        .execute(Command::ReleaseHold {
            account: account_id(&ns, &account),
            id,
        })
        .await?
    {
        Outcome::Hold(h) => Ok(Json(hold_out(h))),
        other => Err(unexpected(other)),
    }
}

#[utoipa::path(get, path = "/v1/namespaces/{ns}/accounts/{account}/overview", tag = "figures",
    params(("ns" = String, Path, description = "The namespace of the account", example = "ml-platform"), ("account" = String, Path, description = "The CreditAccount name", example = "acme"), ("cycle" = Option<u64>, Query, description = "a closed cycle")),
    responses((status = 200, body = OverviewOut), (status = 400, body = ErrorOut), (status = 401, body = ErrorOut),
        (status = 404, body = ErrorOut)))]
async fn overview(
    State(s): State<AppState>,
    Path((ns, account)): Path<(String, String)>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<OverviewOut>, ApiError> {
    let id = account_id(&ns, &account);
    s.ledger.catch_up(Some(&id)).await?;
    let closed = closed_param(&s, &id, &Params(params)).await?;
    let state = s.ledger.read();
    let acct = state.active_account(&id)?;
    let f = match &closed {
        None => numbers::account(acct),
        Some(view) => numbers::closed_account(view, acct.settings.tracking_enabled()),
    };
    Ok(Json(overview_out(acct, f, s.ledger.clock().now())))
}

fn overview_out(acct: &Account, f: numbers::AccountFigures, now: Timestamp) -> OverviewOut {
    let settings = &acct.settings;
    OverviewOut {
        cycle: CycleOut {
            number: f.cycle.number,
            start: rfc3339(f.cycle.start),
            end: rfc3339(f.cycle.end),
        },
        credits_per_cycle: f.credits_per_cycle,
        used: f.used,
        balance: f.balance,
        usage_percent: f.usage_percent,
        allocated: f.allocated,
        unallocated: f.unallocated,
        tracking_enabled: f.tracking_enabled,
        groups: f
            .groups
            .into_iter()
            .map(|(name, budget, used)| GroupShare { name, budget, used })
            .collect(),
        pending_requests: acct.requests.values().filter(|r| r.phase == Phase::Pending).count() as u64,
        as_of: rfc3339(now),
        settings: SettingsOut {
            credits_per_cycle: settings.credits_per_cycle,
            cadence: settings.cadence.to_string(),
            timezone: settings.timezone.clone(),
            credit_factor: settings.credit_factor,
            signup_credits: settings.signup_credits,
            default_group: settings.default_group.clone(),
        },
    }
}

#[utoipa::path(get, path = "/v1/namespaces/{ns}/accounts/{account}/groups", tag = "figures",
    params(("ns" = String, Path, description = "The namespace of the account", example = "ml-platform"), ("account" = String, Path, description = "The CreditAccount name", example = "acme"), ("cycle" = Option<u64>, Query, description = "a closed cycle")),
    responses((status = 200, body = GroupsOut), (status = 400, body = ErrorOut), (status = 401, body = ErrorOut),
        (status = 404, body = ErrorOut)))]
async fn groups(
    State(s): State<AppState>,
    Path((ns, account)): Path<(String, String)>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<GroupsOut>, ApiError> {
    let id = account_id(&ns, &account);
    s.ledger.catch_up(Some(&id)).await?;
    let items = match closed_param(&s, &id, &Params(params)).await? {
        Some(view) => numbers::closed_groups(&view),
        None => {
            let state = s.ledger.read();
            let acct = state.active_account(&id)?;
            acct.groups
                .values()
                .filter(|g| g.active)
                .map(|g| numbers::group(acct, g))
                .collect()
        }
    };
    Ok(Json(GroupsOut {
        items: items.into_iter().map(group_out).collect(),
    }))
}

#[utoipa::path(get, path = "/v1/namespaces/{ns}/accounts/{account}/costs", tag = "figures",
    params(("ns" = String, Path, description = "The namespace of the account", example = "ml-platform"), ("account" = String, Path, description = "The CreditAccount name", example = "acme"),
        ("groupBy" = Option<String>, Query, description = "model (default), provider, group or member"),
        ("cycle" = Option<u64>, Query, description = "a closed cycle"), ("page" = Option<u32>, Query), ("pageSize" = Option<u32>, Query)),
    responses((status = 200, body = CostsOut), (status = 400, body = ErrorOut), (status = 401, body = ErrorOut),
        (status = 404, body = ErrorOut)))]
async fn costs(
    State(s): State<AppState>,
    Path((ns, account)): Path<(String, String)>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<CostsOut>, ApiError> {
    let id = account_id(&ns, &account);
    let params = Params(params);
    let by_text = params.0.get("groupBy").map(String::as_str).unwrap_or("model");
    let by = CostDimension::parse(by_text).ok_or_else(|| {
        let shown: String = by_text.chars().take(40).collect();
        ApiError::bad_field(
            "groupBy",
            format!("must be model, provider, group or member, got {shown:?}"),
        )
    })?;
    let (page_no, size) = params.paging()?;
    s.ledger.catch_up(Some(&id)).await?;
    let Breakdown { window, items, total } = match closed_param(&s, &id, &params).await? {
        Some(view) => closed_breakdown(&view, by),
        None => breakdown(s.ledger.read().active_account(&id)?, by),
    };
    let (items, count) = page(items, page_no, size);
    Ok(Json(CostsOut {
        group_by: by_text.to_string(),
        cycle: CycleOut {
            number: window.number,
            start: rfc3339(window.start),
            end: rfc3339(window.end),
        },
        items: items
            .into_iter()
            .map(|i| CostItemOut {
                key: i.key,
                label: i.label,
                credits: i.sum.credits,
                cost_usd: i.sum.cost_usd,
                events: i.sum.events,
            })
            .collect(),
        total: CostTotalOut {
            credits: total.credits,
            cost_usd: total.cost_usd,
            events: total.events,
        },
        page: page_no,
        page_size: size,
        count,
    }))
}

#[utoipa::path(get, path = "/v1/namespaces/{ns}/accounts/{account}/groups/{group}/members", tag = "figures",
    params(("ns" = String, Path, description = "The namespace of the account", example = "ml-platform"), ("account" = String, Path, description = "The CreditAccount name", example = "acme"), ("group" = String, Path, example = "research"),
        ("search" = Option<String>, Query, description = "matches name or email, case-insensitive"),
        ("page" = Option<u32>, Query), ("pageSize" = Option<u32>, Query), ("cycle" = Option<u64>, Query)),
    responses((status = 200, body = MembersOut), (status = 400, body = ErrorOut), (status = 401, body = ErrorOut),
        (status = 404, body = ErrorOut)))]
async fn members(
    State(s): State<AppState>,
    Path((ns, account, group)): Path<(String, String, String)>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<MembersOut>, ApiError> {
    let id = account_id(&ns, &account);
    s.ledger.catch_up(Some(&id)).await?;
    let params = Params(params);
    let (page_no, size) = params.paging()?;
    let needle = params.0.get("search").map(|s| s.to_lowercase()).unwrap_or_default();
    let found = |name: &str, email: &str| {
        needle.is_empty() || name.to_lowercase().contains(&needle) || email.to_lowercase().contains(&needle)
    };
    let mut items: Vec<numbers::MemberFigures> = match closed_param(&s, &id, &params).await? {
        Some(view) => {
            if !view.cycle.groups.iter().any(|g| g.name == group) {
                return Err(LedgerError::UnknownGroup(group).into());
            }
            view.members_in(&group)
                .filter(|m| found(&m.display_name, &m.email))
                .map(numbers::closed_member)
                .collect()
        }
        None => {
            let state = s.ledger.read();
            let acct = state.active_account(&id)?;
            if !acct.groups.get(&group).is_some_and(|g| g.active) {
                return Err(LedgerError::UnknownGroup(group).into());
            }
            numbers::members_of(acct, &group)
                .filter(|m| found(m.display_name(), m.email()))
                .map(|m| numbers::member(acct, m))
                .collect()
        }
    };
    items.sort_by(|a, b| (&a.email, &a.user_id).cmp(&(&b.email, &b.user_id)));
    let (items, total) = page(items, page_no, size);
    Ok(Json(MembersOut {
        items: items.into_iter().map(member_out).collect(),
        page: page_no,
        page_size: size,
        total,
    }))
}

/// A MemberAllocation name for a user id.
fn object_name(user_id: &str) -> String {
    let mut name: String = user_id
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    name = name.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string();
    if name.is_empty() {
        name = "member".into();
    }
    name.truncate(200);
    name
}

#[utoipa::path(post, path = "/v1/namespaces/{ns}/accounts/{account}/members", tag = "members",
    params(("ns" = String, Path, description = "The namespace of the account", example = "ml-platform"), ("account" = String, Path, description = "The CreditAccount name", example = "acme")), request_body = EnrolIn,
    responses((status = 201, body = MemberOut), (status = 400, body = ErrorOut), (status = 401, body = ErrorOut),
        (status = 403, body = ErrorOut), (status = 404, body = ErrorOut), (status = 409, body = ErrorOut)))]
async fn enrol(
    State(s): State<AppState>,
    Path((ns, account)): Path<(String, String)>,
    Body(b): Body<EnrolIn>,
) -> Result<(StatusCode, Json<MemberOut>), ApiError> {
    let id = account_id(&ns, &account);
    let spec = {
        let state = s.ledger.read();
        let acct = state.active_account(&id)?;
        if let Some(g) = &b.group {
            crate::ledger::check_name("group", g)?;
            if !acct.groups.get(g).is_some_and(|g| g.active) {
                return Err(LedgerError::UnknownGroup(g.clone()).into());
            }
        }
        crate::ledger::check_name("user.id", &b.user.id)?;
        if !b.user.email.contains('@') || b.user.email.trim() != b.user.email {
            return Err(ApiError::bad_field("user.email", "must be an email address"));
        }
        if b.user.name.trim().is_empty() {
            return Err(ApiError::bad_field("user.name", "is required"));
        }
        if let Some(existing) = acct.members.get(&b.user.id).filter(|m| m.active) {
            return Err(LedgerError::DuplicateUserId {
                user_id: b.user.id.clone(),
                owner: existing.name().to_string(),
            }
            .into());
        }
        let mut name = object_name(&b.user.id);
        if acct
            .members
            .by_name(&name)
            .is_some_and(|owner| owner.user_id() != b.user.id)
        {
            name = format!("{name}-{}", acct.members.len() + 1);
        }
        MemberSpec {
            name,
            user_id: b.user.id.clone(),
            email: b.user.email.clone(),
            display_name: b.user.name.clone(),
            group: b.group.clone(),
            monthly_credits: None,
            extra_credits: Amount::ZERO,
        }
    };
    spec.validate()?;
    let user_id = spec.user_id.clone();
    s.directory.enrol(&id, spec).await?;
    let state = s.ledger.read();
    let acct = state.active_account(&id)?;
    let m = acct
        .members
        .get(&user_id)
        .ok_or_else(|| LedgerError::UnknownMember(user_id.clone()))?;
    Ok((StatusCode::CREATED, Json(member_out(numbers::member(acct, m)))))
}

#[utoipa::path(get, path = "/v1/namespaces/{ns}/accounts/{account}/requests", tag = "requests",
    params(("ns" = String, Path, description = "The namespace of the account", example = "ml-platform"), ("account" = String, Path, description = "The CreditAccount name", example = "acme"),
        ("status" = Option<String>, Query, description = "Pending, Approved, Denied or AutoApproved"),
        ("page" = Option<u32>, Query), ("pageSize" = Option<u32>, Query)),
    responses((status = 200, body = RequestsOut), (status = 400, body = ErrorOut), (status = 401, body = ErrorOut),
        (status = 404, body = ErrorOut)))]
async fn list_requests(
    State(s): State<AppState>,
    Path((ns, account)): Path<(String, String)>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<RequestsOut>, ApiError> {
    let params = Params(params);
    let (page_no, size) = params.paging()?;
    let status = match params.0.get("status").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(Phase::parse(s).ok_or_else(|| {
            ApiError::bad_field(
                "status",
                format!("must be Pending, Approved, Denied or AutoApproved, got {s:?}"),
            )
        })?),
    };
    let id = account_id(&ns, &account);
    let state = s.ledger.read();
    let acct = state.active_account(&id)?;
    let mut items: Vec<&crate::ledger::state::Request> = acct
        .requests
        .values()
        .filter(|r| status.is_none_or(|p| r.phase == p))
        .collect();
    items.sort_by(|a, b| (b.submitted_at, &a.name).cmp(&(a.submitted_at, &b.name)));
    let (items, total) = page(items, page_no, size);
    Ok(Json(RequestsOut {
        items: items.into_iter().map(|r| request_out(acct, r)).collect(),
        page: page_no,
        page_size: size,
        total,
    }))
}

/// A unique name for a request made over the API.
fn request_name(now: Timestamp) -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("req-{}-{n}", now.as_millisecond())
}

#[utoipa::path(post, path = "/v1/namespaces/{ns}/accounts/{account}/requests", tag = "requests",
    params(("ns" = String, Path, description = "The namespace of the account", example = "ml-platform"), ("account" = String, Path, description = "The CreditAccount name", example = "acme")), request_body = RequestIn,
    responses((status = 201, body = RequestOut), (status = 400, body = ErrorOut), (status = 401, body = ErrorOut),
        (status = 403, body = ErrorOut), (status = 404, body = ErrorOut)))]
async fn create_request(
    State(s): State<AppState>,
    Path((ns, account)): Path<(String, String)>,
    Body(b): Body<RequestIn>,
) -> Result<(StatusCode, Json<RequestOut>), ApiError> {
    require_reason(&b.reason)?;
    let id = account_id(&ns, &account);
    let member_name = {
        let state = s.ledger.read();
        let acct = state.active_account(&id)?;
        acct.members
            .get(&b.member)
            .filter(|m| m.active)
            .map(|m| m.name().to_string())
            .ok_or_else(|| LedgerError::UnknownMember(b.member.clone()))?
    };
    let name = request_name(s.ledger.clock().now());
    let command = Command::SubmitRequest {
        account: id.clone(),
        uid: format!("api/{id}/{name}"),
        name,
        member: member_name,
        credits: b.credits.0,
        reason: b.reason,
    };
    let Outcome::Request(view) = s.ledger.execute(command).await? else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "unexpected ledger answer",
        ));
    };
    let state = s.ledger.read();
    let acct = state.active_account(&id)?;
    Ok((StatusCode::CREATED, Json(request_out(acct, &acct.requests[&view.uid]))))
}

async fn decide(
    s: &AppState,
    ns: &str,
    account: &str,
    name: &str,
    verdict: Verdict,
    reason: String,
    by: String,
) -> Result<Json<RequestOut>, ApiError> {
    let id = account_id(ns, account);
    let uid = {
        let state = s.ledger.read();
        let acct = state.active_account(&id)?;
        acct.requests
            .values()
            .find(|r| r.name == name)
            .map(|r| r.uid.clone())
            .ok_or_else(|| LedgerError::UnknownRequest(name.to_string()))?
    };
    s.ledger
        .execute(Command::DecideRequest {
            account: id.clone(),
            uid: uid.clone(),
            verdict,
            reason: reason.clone(),
            by,
        })
        .await?;
    let answer = {
        let state = s.ledger.read();
        let acct = state.active_account(&id)?;
        request_out(acct, &acct.requests[&uid])
    };
    let mut approval = serde_json::json!({"decision": if answer.phase == "Denied" { "Deny" } else { "Approve" }});
    if let Some(c) = answer.approved_credits {
        approval["credits"] = serde_json::json!(c.to_string());
    }
    if !reason.is_empty() {
        approval["reason"] = serde_json::json!(reason);
    }
    if let Some(by) = &answer.decided_by {
        approval["by"] = serde_json::json!(by);
    }
    // The ledger decided; the resource only mirrors it.
    if let Err(e) = s.directory.record_decision(&id, name, approval).await {
        tracing::warn!(request = name, error = %e.body.message, "decided, but cannot mirror the decision onto the resource");
    }
    Ok(Json(answer))
}

#[utoipa::path(post, path = "/v1/namespaces/{ns}/accounts/{account}/requests/{name}/approve", tag = "requests",
    params(("ns" = String, Path, description = "The namespace of the account", example = "ml-platform"), ("account" = String, Path, description = "The CreditAccount name", example = "acme"), ("name" = String, Path)), request_body = ApproveIn,
    responses((status = 200, body = RequestOut), (status = 400, body = ErrorOut), (status = 401, body = ErrorOut),
        (status = 403, body = ErrorOut), (status = 404, body = ErrorOut), (status = 409, body = ErrorOut)))]
async fn approve(
    State(s): State<AppState>,
    Path((ns, account, name)): Path<(String, String, String)>,
    Extension(caller): Extension<Caller>,
    Body(b): Body<ApproveIn>,
) -> Result<Json<RequestOut>, ApiError> {
    let verdict = Verdict::Approve {
        credits: b.credits.map(|c| c.0),
    };
    decide(
        &s,
        &ns,
        &account,
        &name,
        verdict,
        b.reason.unwrap_or_default(),
        caller.name,
    )
    .await
}

#[utoipa::path(post, path = "/v1/namespaces/{ns}/accounts/{account}/requests/{name}/deny", tag = "requests",
    params(("ns" = String, Path, description = "The namespace of the account", example = "ml-platform"), ("account" = String, Path, description = "The CreditAccount name", example = "acme"), ("name" = String, Path)), request_body = DenyIn,
    responses((status = 200, body = RequestOut), (status = 400, body = ErrorOut), (status = 401, body = ErrorOut),
        (status = 403, body = ErrorOut), (status = 404, body = ErrorOut), (status = 409, body = ErrorOut)))]
async fn deny(
    State(s): State<AppState>,
    Path((ns, account, name)): Path<(String, String, String)>,
    Extension(caller): Extension<Caller>,
    Body(b): Body<DenyIn>,
) -> Result<Json<RequestOut>, ApiError> {
    require_reason(&b.reason)?;
    decide(&s, &ns, &account, &name, Verdict::Deny, b.reason, caller.name).await
}

#[utoipa::path(post, path = "/v1/namespaces/{ns}/accounts/{account}/reset", tag = "cycles",
    params(("ns" = String, Path, description = "The namespace of the account", example = "ml-platform"), ("account" = String, Path, description = "The CreditAccount name", example = "acme")), request_body = ResetIn,
    responses((status = 200, body = CycleOut), (status = 400, body = ErrorOut), (status = 401, body = ErrorOut),
        (status = 403, body = ErrorOut), (status = 404, body = ErrorOut)))]
async fn reset(
    State(s): State<AppState>,
    Path((ns, account)): Path<(String, String)>,
    Body(_): Body<ResetIn>,
) -> Result<Json<CycleOut>, ApiError> {
    let id = account_id(&ns, &account);
    // A reset through the API carries a mark, like the annotation, so
    // mirroring it onto the annotation resets nothing more.
    let mark = s.ledger.clock().now();
    let outcome = s
        .ledger
        .execute(Command::Reset {
            account: id.clone(),
            mark: Some(mark),
        })
        .await?;
    if let Err(e) = s.directory.record_reset(&id, mark).await {
        tracing::warn!(account = %id, error = %e.body.message, "reset, but cannot mirror it onto the annotation");
    }
    match outcome {
        Outcome::Cycle(c) => Ok(Json(CycleOut {
            number: c.number,
            start: rfc3339(c.start),
            end: rfc3339(c.end),
        })),
        other => Err(unexpected(other)),
    }
}

/// An amount to write into a spec: never negative (credits per cycle,
/// allocations, reserves and factors all count up from 0).
fn amount_change(key: &'static str, value: Option<AmountIn>) -> Result<Option<edits::Change>, ApiError> {
    match value {
        Some(v) if v.0.is_negative() => Err(ApiError::bad_field(key, format!("must be 0 or more, got {}", v.0))),
        v => Ok(v.map(|v| edits::Change {
            key,
            value: v.0.to_string(),
            kind: edits::ValueKind::Amount,
        })),
    }
}

fn word_change(key: &'static str, value: Option<String>) -> Option<edits::Change> {
    value.map(|value| edits::Change {
        key,
        value,
        kind: edits::ValueKind::Word,
    })
}

fn require_changes(changes: &[edits::Change], fields: &str) -> Result<(), ApiError> {
    if changes.is_empty() {
        return Err(ApiError::bad_field("body", format!("give at least one of {fields}")));
    }
    Ok(())
}

#[utoipa::path(patch, path = "/v1/namespaces/{ns}/accounts/{account}/members/{userId}", tag = "members",
    params(("ns" = String, Path, description = "The namespace of the account", example = "ml-platform"), ("account" = String, Path, description = "The CreditAccount name", example = "acme"), ("userId" = String, Path, description = "The member's user id", example = "u-1001")), request_body = MemberPatchIn,
    responses((status = 200, body = MemberOut), (status = 400, body = ErrorOut), (status = 401, body = ErrorOut),
        (status = 403, body = ErrorOut), (status = 404, body = ErrorOut), (status = 409, body = ErrorOut)))]
async fn patch_member(
    State(s): State<AppState>,
    Path((ns, account, user_id)): Path<(String, String, String)>,
    Extension(caller): Extension<Caller>,
    Body(b): Body<MemberPatchIn>,
) -> Result<Json<MemberOut>, ApiError> {
    let id = account_id(&ns, &account);
    let changes: Vec<edits::Change> = [
        amount_change("monthlyCredits", b.monthly_credits)?,
        amount_change("extraCredits", b.extra_credits)?,
        word_change("group", b.group),
    ]
    .into_iter()
    .flatten()
    .collect();
    let name = {
        let state = s.ledger.read();
        let acct = state.active_account(&id)?;
        let member = acct
            .members
            .get(&user_id)
            .filter(|m| m.active)
            .ok_or_else(|| LedgerError::UnknownMember(user_id.clone()))?;
        if let Some(g) = changes.iter().find(|c| c.key == "group") {
            if !acct.groups.get(&g.value).is_some_and(|g| g.active) {
                return Err(ApiError::bad_field(
                    "group",
                    format!("no group {:?} in this account", g.value),
                ));
            }
        }
        member.name().to_string()
    };
    require_changes(&changes, "monthlyCredits, extraCredits, group")?;
    let edit = edits::SpecEdit {
        kind: "MemberAllocation",
        namespace: ns,
        name,
        changes,
        force: b.force,
        caller: caller.name,
    };
    s.directory.edit(&id, edit).await?;
    let state = s.ledger.read();
    let acct = state.active_account(&id)?;
    let m = acct
        .members
        .get(&user_id)
        .ok_or_else(|| LedgerError::UnknownMember(user_id.clone()))?;
    Ok(Json(member_out(numbers::member(acct, m))))
}

#[utoipa::path(patch, path = "/v1/namespaces/{ns}/accounts/{account}/groups/{group}", tag = "figures",
    params(("ns" = String, Path, description = "The namespace of the account", example = "ml-platform"), ("account" = String, Path, description = "The CreditAccount name", example = "acme"), ("group" = String, Path, example = "research")), request_body = GroupPatchIn,
    responses((status = 200, body = GroupOut), (status = 400, body = ErrorOut), (status = 401, body = ErrorOut),
        (status = 403, body = ErrorOut), (status = 404, body = ErrorOut), (status = 409, body = ErrorOut)))]
async fn patch_group(
    State(s): State<AppState>,
    Path((ns, account, group)): Path<(String, String, String)>,
    Extension(caller): Extension<Caller>,
    Body(b): Body<GroupPatchIn>,
) -> Result<Json<GroupOut>, ApiError> {
    let id = account_id(&ns, &account);
    {
        let state = s.ledger.read();
        let acct = state.active_account(&id)?;
        if !acct.groups.get(&group).is_some_and(|g| g.active) {
            return Err(LedgerError::UnknownGroup(group).into());
        }
    }
    let changes: Vec<edits::Change> = [
        amount_change("monthlyCredits", b.monthly_credits)?,
        amount_change("extraCredits", b.extra_credits)?,
        amount_change("autoApproveReserve", b.auto_approve_reserve)?,
    ]
    .into_iter()
    .flatten()
    .collect();
    require_changes(&changes, "monthlyCredits, extraCredits, autoApproveReserve")?;
    let edit = edits::SpecEdit {
        kind: "CreditGroup",
        namespace: ns,
        name: group.clone(),
        changes,
        force: b.force,
        caller: caller.name,
    };
    s.directory.edit(&id, edit).await?;
    let state = s.ledger.read();
    let acct = state.active_account(&id)?;
    let g = acct
        .groups
        .get(&group)
        .filter(|g| g.active)
        .ok_or_else(|| LedgerError::UnknownGroup(group.clone()))?;
    Ok(Json(group_out(numbers::group(acct, g))))
}

#[utoipa::path(patch, path = "/v1/namespaces/{ns}/accounts/{account}/settings", tag = "cycles",
    params(("ns" = String, Path, description = "The namespace of the account", example = "ml-platform"), ("account" = String, Path, description = "The CreditAccount name", example = "acme")), request_body = SettingsPatchIn,
    responses((status = 200, body = OverviewOut), (status = 400, body = ErrorOut), (status = 401, body = ErrorOut),
        (status = 403, body = ErrorOut), (status = 404, body = ErrorOut), (status = 409, body = ErrorOut)))]
async fn patch_settings(
    State(s): State<AppState>,
    Path((ns, account)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
    Body(b): Body<SettingsPatchIn>,
) -> Result<Json<OverviewOut>, ApiError> {
    let id = account_id(&ns, &account);
    s.ledger.read().active_account(&id)?;
    let changes: Vec<edits::Change> = [
        amount_change("creditsPerCycle", b.credits_per_cycle)?,
        word_change("cadence", b.cadence),
        word_change("timezone", b.timezone),
        amount_change("creditFactor", b.credit_factor)?,
        amount_change("signupCredits", b.signup_credits)?,
    ]
    .into_iter()
    .flatten()
    .collect();
    require_changes(
        &changes,
        "creditsPerCycle, cadence, timezone, creditFactor, signupCredits",
    )?;
    let edit = edits::SpecEdit {
        kind: "CreditAccount",
        namespace: ns,
        name: account.clone(),
        changes,
        force: b.force,
        caller: caller.name,
    };
    s.directory.edit(&id, edit).await?;
    s.ledger.catch_up(Some(&id)).await?;
    let state = s.ledger.read();
    let acct = state.active_account(&id)?;
    Ok(Json(overview_out(acct, numbers::account(acct), s.ledger.clock().now())))
}

/// The shortest time between two `changed` events of one stream.
pub const EVENTS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

#[utoipa::path(get, path = "/v1/namespaces/{ns}/accounts/{account}/events", tag = "figures",
    params(("ns" = String, Path, description = "The namespace of the account", example = "ml-platform"), ("account" = String, Path, description = "The CreditAccount name", example = "acme")),
    responses((status = 200, content_type = "text/event-stream", body = String,
        description = "Server-Sent Events: `changed` (data: the account's change count) whenever its figures move, at most 4 a second"),
        (status = 401, body = ErrorOut), (status = 404, body = ErrorOut)))]
async fn events(State(s): State<AppState>, Path((ns, account)): Path<(String, String)>) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let id = account_id(&ns, &account);
    s.ledger.read().active_account(&id)?;
    let changes = s.ledger.subscribe();
    let first = s.ledger.account_version(&id);
    let stream = futures::stream::unfold(
        (changes, s.ledger.clone(), id, None::<u64>, first),
        |(mut changes, ledger, id, sent, mut version)| async move {
            loop {
                if sent != Some(version) {
                    if sent.is_some() {
                        // Coalesce: whatever moves in the next moment rides on this event.
                        tokio::time::sleep(EVENTS_EVERY).await;
                        version = ledger.account_version(&id);
                    }
                    let event = Event::default().event("changed").data(version.to_string());
                    return Some((
                        Ok::<_, std::convert::Infallible>(event),
                        (changes, ledger, id, Some(version), version),
                    ));
                }
                changes.changed().await.ok()?;
                version = ledger.account_version(&id);
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response())
}

#[utoipa::path(get, path = "/v1/accounts", tag = "figures",
    responses((status = 200, body = AccountsOut), (status = 401, body = ErrorOut)))]
async fn accounts(State(s): State<AppState>) -> Json<AccountsOut> {
    let state = s.ledger.read();
    let items = state
        .accounts
        .iter()
        .filter(|(_, a)| a.active)
        .filter_map(|(id, _)| id.split_once('/'))
        .map(|(namespace, name)| AccountRef {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
        .collect();
    Json(AccountsOut { items })
}

#[utoipa::path(get, path = "/v1/whoami", tag = "operations",
    responses((status = 200, body = WhoamiOut), (status = 401, body = ErrorOut)))]
async fn whoami(Extension(caller): Extension<Caller>) -> Json<WhoamiOut> {
    Json(WhoamiOut {
        name: caller.name,
        role: match caller.role {
            auth::Role::Admin => "admin",
            auth::Role::Gateway => "gateway",
        }
        .to_string(),
    })
}

/// Liveness: 503 once this process's writer was fenced off by a newer one
/// (it will never write again: restart it, or let a standby lead).
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = HealthOut), (status = 503, body = ErrorOut)))]
async fn healthz(State(s): State<AppState>) -> Result<Json<HealthOut>, ApiError> {
    match s.ledger.fenced() {
        None => Ok(Json(HealthOut { status: "ok".into() })),
        Some(epoch) => Err(LedgerError::Fenced(epoch).into()),
    }
}

/// Readiness: 503 while fenced, and while the journal is out of reach
/// (the writer reconnects by itself).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = HealthOut), (status = 503, body = ErrorOut)))]
async fn readyz(State(s): State<AppState>) -> Result<Json<HealthOut>, ApiError> {
    if let Some(epoch) = s.ledger.fenced() {
        return Err(LedgerError::Fenced(epoch).into());
    }
    match s.ledger.outage() {
        None => Ok(Json(HealthOut { status: "ok".into() })),
        Some(why) => Err(LedgerError::Storage(format!("the journal is out of reach, reconnecting: {why}")).into()),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "application/openmetrics-text", body = String)))]
async fn metrics_text(State(s): State<AppState>) -> Response {
    let body = s.metrics.render(&s.ledger);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn openapi_doc() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}
