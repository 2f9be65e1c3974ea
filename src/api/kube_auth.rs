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
        _ => return None,
    })
}

/// Asks the API server who a token is and what it may do, with a cache.
pub struct KubeAuth {
    client: Client,
    tokens: Mutex<HashMap<String, (Instant, Option<User>)>>,
    decisions: Mutex<HashMap<(User, Attributes), (Instant, bool)>>,
}

impl KubeAuth {
    pub fn new(client: Client) -> KubeAuth {
        KubeAuth {
            client,
            tokens: Mutex::default(),
            decisions: Mutex::default(),
        }
    }

    /// The user a bearer token belongs to; `None` when it is not valid.
    pub async fn authenticate(&self, token: &str) -> Result<Option<User>, kube::Error> {
        if let Some((at, user)) = self.tokens.lock().ok().and_then(|c| c.get(token).cloned()) {
            if at.elapsed() < CACHE_FOR {
                return Ok(user);
            }
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let user = answer
            .status
            .filter(|s| s.authenticated == Some(true))
            .and_then(|s| s.user)
            .map(|u| User {
                username: u.username.unwrap_or_default(),
                uid: u.uid.unwrap_or_default(),
                groups: u.groups.unwrap_or_default(),
            });
        if let Ok(mut cache) = self.tokens.lock() {
            cache.retain(|_, (at, _)| at.elapsed() < CACHE_FOR);
            cache.insert(token.to_string(), (Instant::now(), user.clone()));
        }
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
        if let Ok(mut cache) = self.decisions.lock() {
            cache.retain(|_, (at, _)| at.elapsed() < CACHE_FOR);
            cache.insert(key, (Instant::now(), allowed));
        }
        Ok(allowed)
    }
}
