//! An in-memory Kubernetes API server for the four custom resources (and
//! Events), so the real kube-runtime `Controller` runs end to end in
//! process, beside a ledger whose clock the test moves.
//!
//! Kept only for what the real API server (`tests/cluster.rs`) cannot test
//! quickly: scheduled cycle boundaries (the operator process runs on the
//! system clock; here the test moves a `ManualClock`), status writes under
//! thousands of usage events a second, statuses of objects the chart's
//! admission policy would refuse (a forged phase, an approval of a decided
//! request), and the plugin's confirmations. Everything else, from the
//! CRDs to RBAC, TokenReview and leader election, is tested against the
//! real server.
//!
//! It serves list, watch from a resourceVersion (a streamed body of JSON
//! lines), get, create, merge and apply patches, the status subresource,
//! delete, and answers 409 to a write that names a stale resourceVersion
//! and 422 to an object its CRD's CEL rules refuse. `kube::Client::new`
//! takes the router as its service.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::broadcast;

type Key = (String, String, String); // (group/version/plural, namespace, name)

#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    resource: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    uid: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<Change>,
    /// Status writes per (resource, namespace, name).
    status_writes: BTreeMap<Key, u64>,
}

/// The fake API server. Clones share one store.
#[derive(Clone)]
pub struct FakeApi {
    store: Arc<Mutex<Store>>,
    changes: broadcast::Sender<Change>,
}

fn kind_of(plural: &str) -> Option<&'static str> {
    Some(match plural {
        "creditaccounts" => "CreditAccount",
        "creditgroups" => "CreditGroup",
        "memberallocations" => "MemberAllocation",
        "creditrequests" => "CreditRequest",
        "events" => "Event",
        "leases" => "Lease",
        "pods" => "Pod",
        _ => return None,
    })
}

fn status(code: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message.into(), "reason": reason, "code": code.as_u16()});
    (code, axum::Json(body)).into_response()
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// The path of a request, taken apart.
struct Target {
    resource: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (gv, rest) = match parts.as_slice() {
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        ["api", v, rest @ ..] => (v.to_string(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    let (plural, name, status) = match rest {
        [p] => (p.to_string(), None, false),
        [p, n] => (p.to_string(), Some(n.to_string()), false),
        [p, n, "status"] => (p.to_string(), Some(n.to_string()), true),
        _ => return None,
    };
    Some(Target {
        resource: format!("{gv}/{plural}"),
        plural,
        namespace,
        name,
        status,
    })
}

fn query(uri: &axum::http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

impl FakeApi {
    pub fn new() -> FakeApi {
        let (changes, _) = broadcast::channel(65_536);
        FakeApi {
            store: Arc::default(),
            changes,
        }
    }

    /// A client that talks to this server.
    pub fn client(&self) -> kube::Client {
        let api = self.clone();
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let api = api.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = http_body_util::BodyExt::collect(body)
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                Ok::<_, Infallible>(api.handle(Request::from_parts(parts, bytes)).await)
            }
        });
        kube::Client::new(service, "default")
    }

    async fn handle(&self, req: Request<Bytes>) -> Response {
        let Some(target) = parse_path(req.uri().path()) else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("no route {}", req.uri().path()),
            );
        };
        let q = query(req.uri());
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let method = req.method().clone();
        let body = req.into_body();
        match (method, &target.name) {
            (Method::GET, None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => self.watch(&target, &q),
            (Method::GET, None) => self.list(&target),
            (Method::GET, Some(name)) => self.get(&target, name),
            (Method::POST, None) => self.create(&target, &body),
            (Method::PATCH, Some(name)) => self.patch(&target, name, &content_type, &body),
            (Method::PUT, Some(name)) => self.patch(&target, name, "application/merge-patch+json", &body),
            (Method::DELETE, Some(name)) => self.delete(&target, name),
            _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "unsupported"),
        }
    }

    fn key(target: &Target, name: &str) -> Key {
        (
            target.resource.clone(),
            target.namespace.clone().unwrap_or_default(),
            name.to_string(),
        )
    }

    fn list(&self, target: &Target) -> Response {
        let store = self.store.lock().unwrap();
        let items: Vec<Value> = store
            .objects
            .iter()
            .filter(|((r, ns, _), _)| *r == target.resource && target.namespace.as_ref().is_none_or(|n| n == ns))
            .map(|(_, v)| v.clone())
            .collect();
        let kind = kind_of(&target.plural).unwrap_or("Unknown");
        axum::Json(json!({"apiVersion": "v1", "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": store.rv.to_string()}, "items": items}))
        .into_response()
    }

    fn get(&self, target: &Target, name: &str) -> Response {
        match self.store.lock().unwrap().objects.get(&Self::key(target, name)) {
            Some(o) => axum::Json(o.clone()).into_response(),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} {name} not found", target.plural),
            ),
        }
    }

    fn watch(&self, target: &Target, q: &BTreeMap<String, String>) -> Response {
        let from: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let (resource, namespace) = (target.resource.clone(), target.namespace.clone());
        let matches = move |c: &Change| c.resource == resource && namespace.as_ref().is_none_or(|n| *n == c.namespace);
        let (backlog, live) = {
            let store = self.store.lock().unwrap();
            let backlog: Vec<Change> = store
                .log
                .iter()
                .filter(|c| c.rv > from && matches(c))
                .cloned()
                .collect();
            (backlog, self.changes.subscribe())
        };
        let last = backlog.last().map(|c| c.rv).unwrap_or(from);
        let line = |c: &Change| {
            Ok::<_, Infallible>(Bytes::from(format!(
                "{}\n",
                json!({"type": c.kind, "object": c.object})
            )))
        };
        let first = futures::stream::iter(backlog.iter().map(line).collect::<Vec<_>>());
        let rest = futures::stream::unfold((live, last), move |(mut live, last)| {
            let matches = matches.clone();
            async move {
                loop {
                    match live.recv().await {
                        Ok(c) if c.rv > last && matches(&c) => {
                            let out = Bytes::from(format!("{}\n", json!({"type": c.kind, "object": c.object})));
                            return Some((Ok::<_, Infallible>(out), (live, c.rv)));
                        }
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        let stream = futures::StreamExt::chain(first, rest);
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .unwrap()
    }

    fn record(&self, store: &mut Store, key: &Key, kind: &'static str, object: Value) {
        let change = Change {
            rv: store.rv,
            resource: key.0.clone(),
            namespace: key.1.clone(),
            kind,
            object,
        };
        store.log.push(change.clone());
        let _ = self.changes.send(change);
    }

    /// `Err` holds the refusal to send back.
    fn validate(target: &Target, object: &Value, old: Option<&Value>) -> Result<(), Box<Response>> {
        let Some(kind) = kind_of(&target.plural) else {
            return Ok(());
        };
        if matches!(kind, "Event" | "Lease" | "Pod") {
            return Ok(());
        }
        let typed = match kind {
            "CreditAccount" => serde_json::from_value::<credit_operator::crd::CreditAccount>(object.clone()).err(),
            "CreditGroup" => serde_json::from_value::<credit_operator::crd::CreditGroup>(object.clone()).err(),
            "MemberAllocation" => {
                serde_json::from_value::<credit_operator::crd::MemberAllocation>(object.clone()).err()
            }
            _ => serde_json::from_value::<credit_operator::crd::CreditRequest>(object.clone()).err(),
        };
        if let Some(e) = typed {
            return Err(Box::new(status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                e.to_string(),
            )));
        }
        let errors = credit_operator::crd::check_cel_rules(kind, object, old);
        if !errors.is_empty() {
            return Err(Box::new(status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                errors.join("; "),
            )));
        }
        Ok(())
    }

    fn create(&self, target: &Target, body: &Bytes) -> Response {
        let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
            return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
        };
        let Some(name) = object["metadata"]["name"].as_str().map(str::to_string) else {
            return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "metadata.name is required");
        };
        let mut store = self.store.lock().unwrap();
        let key = Self::key(target, &name);
        if store.objects.contains_key(&key) {
            return status(StatusCode::CONFLICT, "AlreadyExists", format!("{name} already exists"));
        }
        if !matches!(kind_of(&target.plural), Some("Event" | "Lease")) {
            if let Some(o) = object.as_object_mut() {
                o.remove("status");
            }
        }
        if let Err(r) = Self::validate(target, &object, None) {
            return *r;
        }
        store.rv += 1;
        store.uid += 1;
        let meta = &mut object["metadata"];
        meta["namespace"] = json!(key.1);
        meta["uid"] = json!(format!("uid-{}", store.uid));
        meta["resourceVersion"] = json!(store.rv.to_string());
        meta["generation"] = json!(1);
        if meta["creationTimestamp"].is_null() {
            meta["creationTimestamp"] = json!(format!("2026-11-26T10:00:{:02}Z", store.uid % 60));
        }
        store.objects.insert(key.clone(), object.clone());
        self.record(&mut store, &key, "ADDED", object.clone());
        (StatusCode::CREATED, axum::Json(object)).into_response()
    }

    fn patch(&self, target: &Target, name: &str, content_type: &str, body: &Bytes) -> Response {
        let Ok(patch) = serde_json::from_slice::<Value>(body) else {
            return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
        };
        if content_type.starts_with("application/json-patch") {
            return status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                "JSON patch is not supported here",
            );
        }
        let mut store = self.store.lock().unwrap();
        let key = Self::key(target, name);
        let Some(old) = store.objects.get(&key).cloned() else {
            if kind_of(&target.plural) == Some("Event") {
                drop(store);
                return self.create(target, body);
            }
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} {name} not found", target.plural),
            );
        };
        if let Some(rv) = patch["metadata"]["resourceVersion"].as_str() {
            if rv != old["metadata"]["resourceVersion"].as_str().unwrap_or_default() {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "the object has been modified; please apply your changes to the latest version",
                );
            }
        }
        let mut new = old.clone();
        let mut p = patch.clone();
        if let Some(o) = p.as_object_mut() {
            o.remove("apiVersion");
            o.remove("kind");
            if let Some(m) = o.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                for k in [
                    "resourceVersion",
                    "uid",
                    "generation",
                    "creationTimestamp",
                    "managedFields",
                    "namespace",
                    "name",
                ] {
                    m.remove(k);
                }
            }
        }
        merge(&mut new, &p);
        if target.status {
            // Only the status changes through /status.
            let status_value = new["status"].clone();
            new = old.clone();
            new["status"] = status_value;
            *store.status_writes.entry(key.clone()).or_default() += 1;
        } else if !matches!(kind_of(&target.plural), Some("Event" | "Lease" | "Pod")) {
            new["status"] = old["status"].clone();
            if new["status"].is_null() {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
            if new["spec"] != old["spec"] {
                let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
                new["metadata"]["generation"] = json!(g + 1);
            }
        }
        if new == old {
            return axum::Json(old).into_response();
        }
        if let Err(r) = Self::validate(target, &new, Some(&old)) {
            return *r;
        }
        store.rv += 1;
        new["metadata"]["resourceVersion"] = json!(store.rv.to_string());
        store.objects.insert(key.clone(), new.clone());
        self.record(&mut store, &key, "MODIFIED", new.clone());
        axum::Json(new).into_response()
    }

    fn delete(&self, target: &Target, name: &str) -> Response {
        let mut store = self.store.lock().unwrap();
        let key = Self::key(target, name);
        let Some(mut old) = store.objects.remove(&key) else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} {name} not found", target.plural),
            );
        };
        store.rv += 1;
        old["metadata"]["resourceVersion"] = json!(store.rv.to_string());
        self.record(&mut store, &key, "DELETED", old.clone());
        axum::Json(old).into_response()
    }

    // Helpers for tests, as a user with kubectl would act.

    fn target(plural: &str, ns: &str, status: bool) -> Target {
        Target {
            resource: format!("credits.alchemi.io/v1alpha1/{plural}"),
            plural: plural.to_string(),
            namespace: Some(ns.to_string()),
            name: None,
            status,
        }
    }

    /// `kubectl apply` of a new object; panics when refused.
    pub fn create_object(&self, plural: &str, ns: &str, object: Value) -> Value {
        let r = self.create(&Self::target(plural, ns, false), &Bytes::from(object.to_string()));
        assert!(r.status().is_success(), "create {plural} refused: {}", r.status());
        self.object(plural, ns, object["metadata"]["name"].as_str().unwrap())
            .unwrap()
    }

    /// A merge patch (`/status` when `status`); the answer's status code.
    pub fn merge_patch(&self, plural: &str, ns: &str, name: &str, status: bool, patch: Value) -> StatusCode {
        self.patch(
            &Self::target(plural, ns, status),
            name,
            "application/merge-patch+json",
            &Bytes::from(patch.to_string()),
        )
        .status()
    }

    pub fn delete_object(&self, plural: &str, ns: &str, name: &str) -> StatusCode {
        self.delete(&Self::target(plural, ns, false), name).status()
    }

    pub fn object(&self, plural: &str, ns: &str, name: &str) -> Option<Value> {
        let key = (
            format!("credits.alchemi.io/v1alpha1/{plural}"),
            ns.to_string(),
            name.to_string(),
        );
        self.store.lock().unwrap().objects.get(&key).cloned()
    }

    /// Status writes so far, in total.
    pub fn status_writes(&self) -> u64 {
        self.store.lock().unwrap().status_writes.values().sum()
    }

    /// Events recorded in a namespace (their `reason`s).
    pub fn event_reasons(&self, ns: &str) -> Vec<String> {
        self.store
            .lock()
            .unwrap()
            .objects
            .iter()
            .filter(|((r, n, _), _)| r.ends_with("/events") && n == ns)
            .map(|(_, e)| e["reason"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}
