//! Bearer tokens from a file: one `TOKEN ROLE [NAME]` per line.
//!
//! `gateway` may record usage, authorize, use holds and read; `admin` may
//! do everything. Without a token file the API serves loopback only.

use std::collections::HashMap;
use std::path::Path;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Gateway,
    Admin,
}

/// The caller, as the handlers see it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// The tokens accepted.
#[derive(Debug, Clone, Default)]
pub struct Tokens(HashMap<String, Caller>);

impl Tokens {
    /// Reads a token file; errors name the line.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut tokens = HashMap::new();
        let mut lines: HashMap<String, usize> = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(token), Some(role)) = (parts.next(), parts.next()) else {
                return Err(format!("{}:{}: expected `TOKEN ROLE [NAME]`", path.display(), n + 1));
            };
            let role = match role {
                "gateway" => Role::Gateway,
                "admin" => Role::Admin,
                other => {
                    return Err(format!(
                        "{}:{}: unknown role {other:?} (gateway or admin)",
                        path.display(),
                        n + 1
                    ))
                }
            };
            if token.len() < 16 {
                return Err(format!(
                    "{}:{}: tokens must be at least 16 characters",
                    path.display(),
                    n + 1
                ));
            }
            let name = parts
                .next()
                .map(str::to_string)
                .unwrap_or_else(|| format!("{role:?}").to_lowercase());
            if let Some(first) = lines.insert(token.to_string(), n + 1) {
                return Err(format!(
                    "{}:{}: this token is already on line {first}: one token, one role",
                    path.display(),
                    n + 1
                ));
            }
            tokens.insert(token.to_string(), Caller { name, role });
        }
        if tokens.is_empty() {
            return Err(format!("{}: no tokens", path.display()));
        }
        Ok(Tokens(tokens))
    }
}

/// Calls a gateway may make: reads, and spending.
fn gateway_may(method: &Method, path: &str) -> bool {
    method == Method::GET || path.ends_with("/usage") || path.ends_with("/authorize") || path.contains("/holds")
}

/// Open to anyone: probes and the API description. `/metrics` (every
/// account's figures) needs a token of either role when tokens are in
/// use; in a cluster it is open to whatever reaches the port (the chart's
/// Service and NetworkPolicy decide).
fn is_public(path: &str, auth: &Auth) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/openapi.json")
        || super::console::is_console(path)
        || (path == "/metrics" && matches!(auth, Auth::Kubernetes(_)))
}

/// How callers are authenticated.
pub enum Auth {
    /// No tokens: loopback only, every caller is a local admin.
    Local,
    /// Bearer tokens from a file, with gateway and admin roles.
    Tokens(Tokens),
    /// Kubernetes bearer tokens, authorised against the custom resources.
    Kubernetes(super::kube_auth::KubeAuth),
}

fn unauthorized() -> Response {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid bearer token is required",
    )
    .into_response()
}

fn bearer(request: &Request) -> Option<String> {
    request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
}

pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let caller = match &*state.auth {
        Auth::Local => Caller {
            name: "local".into(),
            role: Role::Admin,
        },
        auth if is_public(&path, auth) => Caller {
            name: "anonymous".into(),
            role: Role::Gateway,
        },
        Auth::Tokens(tokens) => {
            let Some(caller) = bearer(&request).and_then(|t| tokens.0.get(&t).cloned()) else {
                return unauthorized();
            };
            if caller.role == Role::Gateway && !gateway_may(request.method(), &path) {
                return ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this call needs an admin token")
                    .into_response();
            }
            caller
        }
        Auth::Kubernetes(kube_auth) => {
            let unavailable = |e: kube::Error| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "kubernetes_unavailable",
                    format!("cannot check the caller: {e}"),
                )
                .into_response()
            };
            let Some(token) = bearer(&request) else {
                return unauthorized();
            };
            let user = match kube_auth.authenticate(&token).await {
                Ok(Some(user)) => user,
                Ok(None) => return unauthorized(),
                Err(e) => return unavailable(e),
            };
            if let Some(attributes) = super::kube_auth::attributes(request.method(), &path) {
                match kube_auth.authorize(&user, &attributes).await {
                    Ok(true) => {}
                    Ok(false) => {
                        let what = format!(
                            "{} may not {} {}{} in namespace {}",
                            user.username,
                            attributes.verb,
                            attributes.resource,
                            if attributes.subresource.is_empty() {
                                String::new()
                            } else {
                                format!("/{}", attributes.subresource)
                            },
                            attributes.namespace
                        );
                        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", what).into_response();
                    }
                    Err(e) => return unavailable(e),
                }
            }
            Caller {
                name: user.username,
                role: Role::Admin,
            }
        }
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}
