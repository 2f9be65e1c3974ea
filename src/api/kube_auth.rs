//! In the cluster: callers authenticate with Kubernetes bearer tokens
//! (TokenReview) and are authorised with SubjectAccessReview against the
//! custom resources, so RBAC on the CRDs governs the API too.
//!
//! | call | needs |
//! |---|---|
//! | reads of an account's figures | `get` on `creditaccounts` (the account) |
//! | `GET …/requests` | `list` on `creditrequests` |
//! | usage, authorize, holds | `use` on `creditaccounts` (the account) |
//! | `POST …/members` | `create` on `memberallocations` |
//! | `POST …/requests` | `create` on `creditrequests` |
//! | approve, deny | `patch` on `creditrequests/status` (the request) |
//! | reset | `patch` on `creditaccounts` (the account) |
//!
//! Tokens must be issued for the API's own audience (`--token-audience`,
//! default `credit-operator`: a projected ServiceAccount token, or
//! `kubectl create token SA --audience credit-operator`), so a token meant
//! for the Kubernetes API server itself is refused. A token that is not a
//! JWT naming that audience, or that has expired, is refused without
//! asking the API server, so unauthenticated traffic is not passed on to
//! it; the API server's answers are cached for 30 seconds (a revoked
//! token keeps working that long), at most 10,000 of them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::Method;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};

/// How long an answer of the API server is reused.
const CACHE_FOR: Duration = Duration::from_secs(30);
/// Answers kept at most, per cache.
const MAX_CACHED: usize = 10_000;
/// The audience tokens must carry unless configured otherwise.
pub const DEFAULT_AUDIENCE: &str = "credit-operator";

/// Whether `token` is a JWT whose unverified claims name `audience` and
/// have not expired at `now` (seconds since the epoch). Only such tokens
/// are worth a TokenReview; the API server checks the signature.
pub fn may_be_for(token: &str, audience: &str, now: i64) -> bool {
    use base64::Engine;
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')) else {
        return false;
    };
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return false;
    };
    let names_audience = match &claims["aud"] {
        serde_json::Value::String(a) => a == audience,
        serde_json::Value::Array(all) => all.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    };
    let unexpired = claims["exp"].as_i64().is_none_or(|exp| exp > now);
    names_audience && unexpired
}

/// Inserts into a bounded cache of answers, dropping expired ones first
/// and, when still full, all of them.
fn remember<K: std::hash::Hash + Eq, V>(cache: &Mutex<HashMap<K, (Instant, V)>>, key: K, value: V) {
    if let Ok(mut cache) = cache.lock() {
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (at, _)| at.elapsed() < CACHE_FOR);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(key, (Instant::now(), value));
    }
}

/// An authenticated Kubernetes user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
}

/// What a call asks to do, in RBAC terms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attributes {
    pub verb: &'static str,
    pub resource: &'static str,
    pub subresource: &'static str,
    pub namespace: String,
    pub name: String,
}

/// The RBAC question a call of the API asks; `None` for routes that are
/// not an account's.
pub fn attributes(method: &Method, path: &str) -> Option<Attributes> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ["v1", "namespaces", ns, "accounts", account, rest @ ..] = parts.as_slice() else {
        return None;
    };
    let at = |verb, resource, subresource, name: &str| Attributes {
        verb,
        resource,
        subresource,
        namespace: ns.to_string(),
        name: name.to_string(),
    };
    Some(match (method, rest) {
        (&Method::GET, ["requests"]) => at("list", "creditrequests", "", ""),
        (&Method::GET, _) => at("get", "creditaccounts", "", account),
        (_, ["usage"] | ["authorize"] | ["holds", ..]) => at("use", "creditaccounts", "", account),
        (&Method::POST, ["members"]) => at("create", "memberallocations", "", ""),
        (&Method::POST, ["requests"]) => at("create", "creditrequests", "", ""),
        (&Method::POST, ["requests", name, "approve" | "deny"]) => at("patch", "creditrequests", "status", name),
        (&Method::POST, ["reset"]) => at("patch", "creditaccounts", "", account),
        (&Method::PATCH, ["settings"]) => at("patch", "creditaccounts", "", account),
        (&Method::PATCH, ["groups", group]) => at("patch", "creditgroups", "", group),
        // The object's name is not the user id: patch on every member.
        (&Method::PATCH, ["members", _]) => at("patch", "memberallocations", "", ""),
        _ => return None,
    })
}

/// Asks the API server who a token is and what it may do, with a cache.
pub struct KubeAuth {
    client: Client,
    audience: String,
    tokens: Mutex<HashMap<String, (Instant, Option<User>)>>,
    decisions: Mutex<HashMap<(User, Attributes), (Instant, bool)>>,
}

impl KubeAuth {
    /// Accepts tokens issued for `audience`.
    pub fn new(client: Client, audience: &str) -> KubeAuth {
        KubeAuth {
            client,
            audience: audience.to_string(),
            tokens: Mutex::default(),
            decisions: Mutex::default(),
        }
    }

    /// The user a bearer token belongs to; `None` when it is not valid
    /// for this API's audience.
    pub async fn authenticate(&self, token: &str) -> Result<Option<User>, kube::Error> {
        if !may_be_for(token, &self.audience, jiff::Timestamp::now().as_second()) {
            return Ok(None);
        }
        if let Some((at, user)) = self.tokens.lock().ok().and_then(|c| c.get(token).cloned()) {
            if at.elapsed() < CACHE_FOR {
                return Ok(user);
            }
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let audience_ok = |s: &k8s_openapi::api::authentication::v1::TokenReviewStatus| {
            s.audiences.as_ref().is_none_or(|a| a.contains(&self.audience))
        };
        let user = answer
            .status
            .filter(|s| s.authenticated == Some(true) && audience_ok(s))
            .and_then(|s| s.user)
            .map(|u| User {
                username: u.username.unwrap_or_default(),
                uid: u.uid.unwrap_or_default(),
                groups: u.groups.unwrap_or_default(),
            });
        remember(&self.tokens, token.to_string(), user.clone());
        Ok(user)
    }

    /// Whether `user` may do what `attributes` describe.
    pub async fn authorize(&self, user: &User, attributes: &Attributes) -> Result<bool, kube::Error> {
        let key = (user.clone(), attributes.clone());
        if let Some((at, allowed)) = self.decisions.lock().ok().and_then(|c| c.get(&key).copied()) {
            if at.elapsed() < CACHE_FOR {
                return Ok(allowed);
            }
        }
        let none_if_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.username.clone()),
                uid: none_if_empty(&user.uid),
                groups: Some(user.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(crate::crd::GROUP.to_string()),
                    version: Some(crate::crd::VERSION.to_string()),
                    resource: Some(attributes.resource.to_string()),
                    subresource: none_if_empty(attributes.subresource),
                    verb: Some(attributes.verb.to_string()),
                    namespace: Some(attributes.namespace.clone()),
                    name: none_if_empty(&attributes.name),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        remember(&self.decisions, key, allowed);
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn jwt(claims: serde_json::Value) -> String {
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.sig",
            b64(br#"{"alg":"RS256"}"#),
            b64(claims.to_string().as_bytes())
        )
    }

    #[test]
    fn only_unexpired_jwts_for_the_audience_are_worth_a_review() {
        let now = 1_800_000_000;
        let ours = jwt(serde_json::json!({"aud": ["credit-operator"], "exp": now + 60}));
        assert!(may_be_for(&ours, "credit-operator", now));
        let single = jwt(serde_json::json!({"aud": "credit-operator"}));
        assert!(may_be_for(&single, "credit-operator", now));
        let kube = jwt(serde_json::json!({"aud": ["https://kubernetes.default.svc.cluster.local"], "exp": now + 60}));
        assert!(!may_be_for(&kube, "credit-operator", now));
        let expired = jwt(serde_json::json!({"aud": ["credit-operator"], "exp": now - 1}));
        assert!(!may_be_for(&expired, "credit-operator", now));
        for garbage in ["", "token", "a.b.c", "a.b", "a.b.c.d", "x.!!!.y"] {
            assert!(!may_be_for(garbage, "credit-operator", now), "{garbage}");
        }
    }
}
