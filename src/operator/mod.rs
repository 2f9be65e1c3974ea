//! `credit-operator run`: the kube-runtime controller that reconciles the
//! four custom resources against the ledger and publishes the numbers in
//! their status.
//!
//! One reconcile per account states its whole namespace (account, groups,
//! members, requests) to the ledger, level-triggered, with the same rules
//! as standalone, then writes each status that changed with server-side
//! apply under one field manager. Every account is requeued at its next
//! cycle boundary and at least every `staleness`, so statuses follow usage
//! recorded over the HTTP API; a token bucket bounds status writes however
//! fast usage arrives.

pub mod lease;
pub mod run;
pub mod status;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use kube::api::{Patch, PatchParams};
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::api::edits::{self, SpecEdit};
use crate::api::error::ApiError;
use crate::crd::{CreditAccount, CreditGroup, CreditRequest, Decision, MemberAllocation, GROUP, VERSION};
use crate::desired;
use crate::desired::cluster::{approver, split, Guarded, Namespace};
use crate::ledger::{Command, Ledger, LedgerError, Phase};
use crate::manifests::{Object, Sourced};

/// The field manager of every status the operator writes.
pub const FIELD_MANAGER: &str = "credit-operator";

/// How the controller treats the API server.
#[derive(Debug, Clone)]
pub struct OperatorOptions {
    /// A status is at most this far behind the ledger.
    pub staleness: Duration,
    /// Status writes per second, in total.
    pub status_writes_per_second: f64,
}

impl Default for OperatorOptions {
    fn default() -> Self {
        OperatorOptions {
            staleness: Duration::from_secs(10),
            status_writes_per_second: 5.0,
        }
    }
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
}

/// A token bucket shared by every status write.
struct Bucket {
    tokens: f64,
    rate: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate.max(1.0));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Ctx {
    client: Client,
    ledger: Ledger,
    accounts: Store<Guarded<CreditAccount>>,
    groups: Store<Guarded<CreditGroup>>,
    members: Store<Guarded<MemberAllocation>>,
    requests: Store<Guarded<CreditRequest>>,
    /// Malformed objects already reported: uid → resourceVersion.
    reported: Mutex<HashMap<String, String>>,
    bucket: Mutex<Bucket>,
    options: OperatorOptions,
    recorder: Recorder,
}

/// Keeps watch events that matter: deletions, and changes whose
/// predicate value moved (so the operator's own status writes, which move
/// nothing, trigger nothing). Watch errors are logged and dropped.
fn changes<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    predicate: fn(&K) -> u64,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + Send + 'static,
{
    let seen: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    events.filter_map(move |event| {
        let seen = seen.clone();
        async move {
            match event {
                // Each watch retries on its own (`WatchBackoff`). Passed on,
                // an error would make the Controller back off all its
                // triggers (to 30 s and more while errors keep coming, as
                // four watches relisting one after another do).
                Err(e) => {
                    tracing::debug!(error = %e, "watch error; the watch retries");
                    None
                }
                Ok(watcher::Event::Delete(o)) => {
                    seen.lock().ok()?.remove(&o.meta().uid.clone().unwrap_or_default());
                    Some(Ok(o))
                }
                Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => {
                    let uid = o.meta().uid.clone().unwrap_or_default();
                    let value = predicate(&o);
                    let previous = seen.lock().ok()?.insert(uid, value);
                    (previous != Some(value)).then_some(Ok(o))
                }
                Ok(_) => None,
            }
        }
    })
}

fn hash_of(value: &impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

fn by_generation<K: Resource>(o: &K) -> u64 {
    hash_of(&(
        o.meta().generation,
        o.meta().annotations.as_ref().map(|a| a.iter().collect::<Vec<_>>()),
    ))
}

fn request_predicate(r: &Guarded<CreditRequest>) -> u64 {
    let approval =
        r.0.as_ref()
            .ok()
            .and_then(|r| r.status.as_ref())
            .and_then(|s| s.approval.as_ref())
            .map(|a| serde_json::to_string(a).unwrap_or_default());
    hash_of(&(r.meta().generation, approval))
}

/// How a watch retries after an error: from 250 ms, doubling, at most
/// 5 s apart (with jitter), and from the start again after any success.
/// kube-runtime's default grows to 30 s and resets only after two quiet
/// minutes, so an API server back from a restart went unnoticed for up to
/// a minute while the write loop republished stale statuses.
struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MOST: Duration = Duration::from_secs(5);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let this = self.next;
        self.next = (self.next * 2).min(Self::MOST);
        // Up to a quarter more, so the four watches do not retry in step.
        let jitter = u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0),
        ) % (this.as_millis() as u64 / 4 + 1);
        Some(this + Duration::from_millis(jitter))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// The watch events of one kind.
type Events<K> = Result<watcher::Event<Guarded<K>>, watcher::Error>;

fn reflect<K>(client: &Client) -> (Store<Guarded<K>>, impl Stream<Item = Events<K>> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(Api::<Guarded<K>>::all(client.clone()), watcher::Config::default())
        .backoff(WatchBackoff::default())
        .reflect(writer);
    (reader, stream)
}

/// Runs the controller until `shutdown` completes.
pub async fn run(
    client: Client,
    ledger: Ledger,
    options: OperatorOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (groups, group_events) = reflect::<CreditGroup>(&client);
    let (members, member_events) = reflect::<MemberAllocation>(&client);
    let (requests, request_events) = reflect::<CreditRequest>(&client);
    let (accounts, account_events) = reflect::<CreditAccount>(&client);
    let accounts_stream = changes(account_events, by_generation::<Guarded<CreditAccount>>);

    let to_accounts = |store: Store<Guarded<CreditAccount>>| {
        move |o: &dyn ResourceNs| -> Vec<ObjectRef<Guarded<CreditAccount>>> {
            let ns = o.ns();
            store
                .state()
                .iter()
                .filter(|a| a.namespace().as_deref() == Some(ns.as_str()))
                .map(|a| ObjectRef::from_obj(a.as_ref()))
                .collect()
        }
    };
    let (for_groups, for_members, for_requests) = (
        to_accounts(accounts.clone()),
        to_accounts(accounts.clone()),
        to_accounts(accounts.clone()),
    );
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        ledger,
        accounts: accounts.clone(),
        groups,
        members,
        requests,
        reported: Mutex::default(),
        bucket: Mutex::new(Bucket {
            tokens: options.status_writes_per_second.max(1.0),
            rate: options.status_writes_per_second,
            last: Instant::now(),
        }),
        options,
        recorder,
    });
    Controller::for_stream(accounts_stream, accounts)
        .watches_stream(changes(group_events, by_generation::<Guarded<CreditGroup>>), move |g| {
            for_groups(&g)
        })
        .watches_stream(
            changes(member_events, by_generation::<Guarded<MemberAllocation>>),
            move |m| for_members(&m),
        )
        .watches_stream(changes(request_events, request_predicate), move |r| for_requests(&r))
        .graceful_shutdown_on(shutdown)
        .run(reconcile_account, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile did not finish");
            }
        })
        .await;
}

/// The namespace of an object, for mapping children to their account.
trait ResourceNs {
    fn ns(&self) -> String;
}

impl<K: Resource> ResourceNs for K {
    fn ns(&self) -> String {
        self.meta().namespace.clone().unwrap_or_default()
    }
}

fn error_policy(_: Arc<Guarded<CreditAccount>>, error: &Error, _: Arc<Ctx>) -> Action {
    tracing::warn!(%error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile_account(guarded: Arc<Guarded<CreditAccount>>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    // The Controller waits for the accounts' store only. A namespace stated
    // from a store that has not listed yet would read as "no groups, no
    // members": wait for all four (immediate once they have listed; a
    // relist swaps a store's contents at once, never through empty).
    let ready = futures::future::join4(
        ctx.groups.wait_until_ready(),
        ctx.members.wait_until_ready(),
        ctx.requests.wait_until_ready(),
        ctx.accounts.wait_until_ready(),
    )
    .await;
    if ready.0.is_err() || ready.1.is_err() || ready.2.is_err() || ready.3.is_err() {
        return Ok(Action::await_change());
    }
    let account = match &guarded.0 {
        Ok(a) => Arc::new(a.clone()),
        Err(invalid) => {
            report_invalid::<CreditAccount>(&ctx, invalid).await;
            return Ok(Action::await_change());
        }
    };
    let ns = account.namespace().unwrap_or_default();
    let name = account.name_any();
    // One active account per namespace: the oldest.
    let oldest = split(&ctx.accounts, &ns).0.into_iter().min_by(|a, b| {
        (a.metadata.creation_timestamp.as_ref().map(|t| t.0), a.name_any())
            .cmp(&(b.metadata.creation_timestamp.as_ref().map(|t| t.0), b.name_any()))
    });
    if oldest.is_some_and(|o| o.name_any() != name) {
        let now = ctx.ledger.clock().now();
        let current = account
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let conditions = status::conditions(
            vec![(
                "Ready",
                false,
                "DuplicateAccount".into(),
                format!("namespace {ns} already has an older account"),
            )],
            &current,
            account.metadata.generation,
            now,
        );
        let desired = json!({"observedGeneration": account.metadata.generation, "conditions": conditions});
        write_status::<CreditAccount>(&ctx, &ns, &name, account.status.as_ref(), desired).await?;
        // Looked at again: it takes over once the older account is gone
        // (whose deletion triggers no reconcile of this one).
        return Ok(Action::requeue(ctx.options.staleness));
    }

    // State the namespace to the ledger.
    let namespace = Namespace::read(&account, &ctx.groups, &ctx.members, &ctx.requests);
    // A malformed object keeps its last good state in the ledger: while
    // one exists, nothing in its namespace is removed (the standalone rule
    // for a broken file).
    for invalid in &namespace.bad_groups {
        report_invalid::<CreditGroup>(&ctx, invalid).await;
    }
    for invalid in &namespace.bad_members {
        report_invalid::<MemberAllocation>(&ctx, invalid).await;
    }
    for invalid in &namespace.bad_requests {
        report_invalid::<CreditRequest>(&ctx, invalid).await;
    }
    let malformed = namespace.malformed();
    let (groups, members, requests) = (&namespace.groups, &namespace.members, &namespace.requests);
    if malformed > 0 {
        tracing::debug!(namespace = %ns, malformed, "malformed objects: removals in this namespace wait until they are fixed");
    }
    let refs: Vec<&Sourced> = namespace.objects.iter().collect();
    let report = desired::apply(&ctx.ledger, &refs, malformed == 0, Some(&ns), approver).await;
    for p in &report.problems {
        tracing::warn!("{p}");
    }
    let id = format!("{ns}/{name}");
    ctx.ledger.catch_up(Some(&id)).await?;
    ensure_default_group(&ctx, &ns, &id, &account.spec.default_group).await?;

    let mut deferred = false;
    let now = ctx.ledger.clock().now();
    let (account_status, group_statuses, member_statuses, request_statuses, next_boundary) = {
        let state = ctx.ledger.read();
        let Some(acct) = state.readable().ok().and(state.account(&id)).filter(|a| a.active) else {
            return Ok(Action::requeue(ctx.options.staleness));
        };
        let conds =
            |s: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>| s.cloned().unwrap_or_default();
        let account_status = status::account(
            acct,
            account.metadata.generation,
            &conds(account.status.as_ref().map(|s| &s.conditions)),
            now,
        );
        let groups: Vec<(String, Option<crate::crd::CreditGroupStatus>, Value)> = groups
            .iter()
            .filter_map(|g| {
                let current = g.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
                let desired = status::group(acct, &g.name_any(), g.metadata.generation, &current, now)?;
                Some((g.name_any(), g.status.clone(), serde_json::to_value(desired).ok()?))
            })
            .collect();
        let members: Vec<(String, Option<crate::crd::MemberAllocationStatus>, Value)> = members
            .iter()
            .filter_map(|m| {
                let current = m.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
                let desired = status::member(
                    acct,
                    &m.name_any(),
                    &m.spec.user.id,
                    m.metadata.generation,
                    &current,
                    now,
                );
                Some((m.name_any(), m.status.clone(), serde_json::to_value(desired).ok()?))
            })
            .collect();
        let problems: HashMap<String, (&'static str, String)> = report
            .problems
            .iter()
            .filter_map(|p| {
                p.object
                    .strip_prefix("CreditRequest/")
                    .map(|n| (n.to_string(), (p.code, p.message.clone())))
            })
            .collect();
        let mut reqs = Vec::new();
        for r in requests.iter() {
            let uid = r
                .metadata
                .uid
                .clone()
                .unwrap_or_else(|| format!("{ns}/{}", r.name_any()));
            let Some(ledger_req) = acct.requests.get(&uid) else {
                continue;
            };
            let approval = r.status.as_ref().and_then(|s| s.approval.as_ref());
            let problem: Option<status::Cond> = match (problems.get(&r.name_any()), approval) {
                (Some(("invalid_approval", m)), _) => {
                    Some(("InvalidApproval", true, "InvalidApproval".into(), m.clone()))
                }
                (Some(("member_not_found", m)), _) => {
                    Some(("MemberNotFound", true, "MemberNotFound".into(), m.clone()))
                }
                (_, Some(a)) if ledger_req.phase != Phase::Pending => {
                    let consistent = match a.decision {
                        Decision::Deny => ledger_req.phase == Phase::Denied,
                        Decision::Approve => {
                            ledger_req.phase == Phase::Approved
                                && ledger_req.approved_credits == Some(a.credits.unwrap_or(ledger_req.credits))
                        }
                    };
                    (!consistent).then(|| {
                        (
                            "DecisionIgnored",
                            true,
                            "AlreadyDecided".into(),
                            format!(
                                "the request was already {}; a decision is final",
                                ledger_req.phase.as_str()
                            ),
                        )
                    })
                }
                _ => None,
            };
            let current = r.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
            if let Some(desired) = status::request(acct, &uid, r.metadata.generation, problem, &current, now) {
                reqs.push((r.clone(), desired));
            }
        }
        (account_status, groups, members, reqs, acct.cycle.end)
    };

    // Events for what changed since the last published status.
    let previous_cycle = account.status.as_ref().and_then(|s| s.cycle.as_ref()).map(|c| c.number);
    if let (Some(before), Some(cycle)) = (previous_cycle, account_status.cycle.as_ref()) {
        if cycle.number != before {
            let why = account_status
                .last_reset
                .as_ref()
                .map(|r| format!("{:?}", r.reason))
                .unwrap_or_default();
            publish(
                &ctx,
                &*account,
                "CycleReset",
                format!("cycle {} started ({why})", cycle.number),
            )
            .await;
        }
    }
    let account_value = serde_json::to_value(&account_status).unwrap_or(Value::Null);
    deferred |= !write_status::<CreditAccount>(&ctx, &ns, &name, account.status.as_ref(), account_value).await?;
    for (g, current, desired) in group_statuses {
        deferred |= !write_status::<CreditGroup>(&ctx, &ns, &g, current.as_ref(), desired).await?;
    }
    for (m, current, desired) in member_statuses {
        deferred |= !write_status::<MemberAllocation>(&ctx, &ns, &m, current.as_ref(), desired).await?;
    }
    for (r, desired) in request_statuses {
        let before = r.status.as_ref().and_then(|s| s.phase);
        let written =
            write_status::<CreditRequest>(&ctx, &ns, &r.name_any(), r.status.as_ref(), desired.clone()).await?;
        deferred |= !written;
        let after = desired["phase"].as_str().unwrap_or_default();
        let was = before.map(|p| format!("{p:?}")).unwrap_or_else(|| "Pending".into());
        if written && after != "Pending" && was != after {
            let by = desired["decidedBy"].as_str().unwrap_or_default().to_string();
            publish(
                &ctx,
                &r,
                after,
                format!(
                    "{after} by {by}: {} credits",
                    desired["approvedCredits"].as_str().unwrap_or("0")
                ),
            )
            .await;
        }
    }

    let until_boundary = (next_boundary.as_second() - now.as_second()).max(0) as u64 + 1;
    let wait = if deferred {
        Duration::from_secs(1)
    } else {
        ctx.options.staleness.min(Duration::from_secs(until_boundary))
    };
    Ok(Action::requeue(wait))
}

/// Reports an object that does not deserialize (written, say, before a
/// CRD tightened): a Warning Event `InvalidObject` regarding it (what
/// `kubectl describe` shows), and a `Ready=False` condition where the API
/// server still accepts a status write for it (not where the stored spec
/// breaks a rule of the current CRD); once per version of the object.
async fn report_invalid<K>(ctx: &Ctx, invalid: &InvalidObject)
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let meta = &invalid.metadata;
    let (Some(ns), Some(name), Some(uid)) = (&meta.namespace, &meta.name, &meta.uid) else {
        return;
    };
    let version = meta.resource_version.clone().unwrap_or_default();
    if ctx
        .reported
        .lock()
        .map(|r| r.get(uid) == Some(&version))
        .unwrap_or(false)
    {
        return;
    }
    let kind = K::kind(&());
    tracing::warn!(kind = %kind, namespace = %ns, name = %name, error = %invalid.error, "malformed object: ignored until it is fixed");
    let message = format!(
        "{kind} {name} cannot be read: {}; it keeps its last good state until it is fixed",
        invalid.error
    );
    let now = status::api_time(ctx.ledger.clock().now());
    let patch = json!({"status": {"conditions": [{
        "type": "Ready", "status": "False", "reason": "InvalidObject", "message": message,
        "observedGeneration": meta.generation, "lastTransitionTime": now,
    }]}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    // The answer is the same malformed object: read it guarded too.
    let written = Api::<Guarded<K>>::namespaced(ctx.client.clone(), ns)
        .patch_status(name, &params, &Patch::Merge(&patch))
        .await;
    if let Err(e) = &written {
        tracing::info!(error = %e, "the malformed object's status cannot be written; its Event reports it");
    }
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(format!("{GROUP}/{VERSION}")),
        kind: Some(kind.to_string()),
        name: Some(name.clone()),
        namespace: Some(ns.clone()),
        uid: Some(uid.clone()),
        ..Default::default()
    };
    let event = KubeEvent {
        type_: EventType::Warning,
        reason: "InvalidObject".into(),
        note: Some(message.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        tracing::warn!(error = %e, "cannot publish an event");
    }
    // Reported for this version (the status write makes a new version,
    // which is remembered too).
    if let Ok(mut reported) = ctx.reported.lock() {
        let version = written
            .ok()
            .and_then(|o| o.meta().resource_version.clone())
            .unwrap_or(version);
        reported.insert(uid.clone(), version);
    }
}

/// Applies `desired` as the object's status when it differs from `current`
/// (condition timestamps and `approval` aside). False when the write was
/// held back by the rate limit.
async fn write_status<K>(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    current: Option<&impl serde::Serialize>,
    desired: Value,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let comparable = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("approval");
            o.retain(|_, x| !x.is_null());
            if let Some(conds) = o.get_mut("conditions").and_then(|c| c.as_array_mut()) {
                for c in conds {
                    if let Some(c) = c.as_object_mut() {
                        c.remove("lastTransitionTime");
                    }
                }
            }
        }
        v
    };
    let current = current
        .and_then(|c| serde_json::to_value(c).ok())
        .unwrap_or(Value::Null);
    if comparable(&current) == comparable(&desired) {
        return Ok(true);
    }
    if !ctx.bucket.lock().map(|mut b| b.take()).unwrap_or(false) {
        return Ok(false);
    }
    let mut status = desired;
    if let Some(o) = status.as_object_mut() {
        o.retain(|_, x| !x.is_null());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    // Fields someone else wrote (a forged phase or approvedCredits) are
    // not the operator's to drop by server-side apply: remove them with a
    // merge patch. `approval` always stays.
    let foreign: Vec<String> = current
        .as_object()
        .map(|c| {
            c.keys()
                .filter(|k| *k != "approval" && status.get(k.as_str()).is_none())
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if !foreign.is_empty() {
        let mut repair = status.clone();
        for k in foreign {
            repair[k] = Value::Null;
        }
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        return match api
            .patch_status(name, &params, &Patch::Merge(&json!({ "status": repair })))
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(true),
            Err(e) => Err(e.into()),
        };
    }
    let patch = json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": K::kind(&()),
        "status": status,
    });
    match api
        .patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
    {
        Ok(_) => Ok(true),
        // Deleted meanwhile: nothing to publish.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(true),
        Err(e) => Err(e.into()),
    }
}

async fn publish<K: Resource<DynamicType = ()>>(ctx: &Ctx, object: &K, reason: &str, note: String) {
    let event = KubeEvent {
        type_: EventType::Normal,
        reason: reason.to_string(),
        note: Some(note),
        action: reason.to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "cannot publish an event");
    }
}

/// Creates the account's default CreditGroup when the cluster has none,
/// with the settings the ledger gave it (the credits unallocated at that
/// moment). The operator never touches its spec afterwards.
async fn ensure_default_group(ctx: &Ctx, ns: &str, account: &str, name: &str) -> Result<(), Error> {
    let exists = ctx
        .groups
        .state()
        .iter()
        .any(|g| g.namespace().as_deref() == Some(ns) && g.name_any() == name);
    if exists {
        return Ok(());
    }
    let settings = ctx
        .ledger
        .read()
        .account(account)
        .and_then(|a| a.groups.get(name))
        .map(|g| g.settings.clone());
    let Some(settings) = settings else { return Ok(()) };
    let group = CreditGroup::new(
        name,
        crate::crd::CreditGroupSpec {
            monthly_credits: settings.monthly_credits,
            extra_credits: settings.extra_credits,
            auto_approve_reserve: settings.auto_approve_reserve,
        },
    );
    match Api::<CreditGroup>::namespaced(ctx.client.clone(), ns)
        .create(&Default::default(), &group)
        .await
    {
        Ok(_) => {
            tracing::info!(namespace = ns, group = name, "created the default group");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Applies the removal of accounts deleted from the cluster: a deleted
/// account is never reconciled again, so a sweep compares the two.
pub async fn sweep_deleted_accounts(client: &Client, ledger: &Ledger) -> Result<(), Error> {
    // Metadata only: a malformed account must not hide the others.
    let listed = Api::<CreditAccount>::all(client.clone())
        .list_metadata(&Default::default())
        .await?;
    let present: std::collections::BTreeSet<String> = listed
        .items
        .iter()
        .map(|a| format!("{}/{}", a.namespace().unwrap_or_default(), a.name_any()))
        .collect();
    let stale: Vec<String> = ledger
        .read()
        .accounts
        .iter()
        .filter(|(id, a)| a.active && !present.contains(*id))
        .map(|(id, _)| id.clone())
        .collect();
    for account in stale {
        ledger.execute(Command::RemoveAccount { account }).await?;
    }
    Ok(())
}

/// Enrolment in the cluster creates a MemberAllocation (and applies it to
/// the ledger at once, which the next reconcile repeats harmlessly).
pub struct ClusterDirectory {
    pub client: Client,
    pub ledger: Ledger,
}

impl crate::api::Directory for ClusterDirectory {
    fn enrol<'a>(
        &'a self,
        account: &'a str,
        member: crate::ledger::MemberSpec,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), crate::api::error::ApiError>> + Send + 'a>> {
        Box::pin(async move {
            let ns = account.split('/').next().unwrap_or("default");
            let object = MemberAllocation::new(
                &member.name,
                crate::crd::MemberAllocationSpec {
                    group: member.group.clone(),
                    user: crate::crd::UserRef {
                        id: member.user_id.clone(),
                        email: member.email.clone(),
                        name: member.display_name.clone(),
                    },
                    monthly_credits: None,
                    extra_credits: crate::amount::Amount::ZERO,
                },
            );
            Api::<MemberAllocation>::namespaced(self.client.clone(), ns)
                .create(&Default::default(), &object)
                .await
                .map_err(|e| kubernetes_unavailable(&format!("create MemberAllocation {}", member.name), e))?;
            self.ledger
                .execute(Command::ApplyMember {
                    account: account.to_string(),
                    member,
                })
                .await?;
            Ok(())
        })
    }

    /// Writes the decision into the request's `status.approval` (with the
    /// caller in `by`), as the approver's own status patch would.
    fn record_decision<'a>(
        &'a self,
        account: &'a str,
        request: &'a str,
        approval: Value,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), crate::api::error::ApiError>> + Send + 'a>> {
        Box::pin(async move {
            let ns = account.split('/').next().unwrap_or("default");
            let patch = json!({"status": {"approval": approval}});
            Api::<CreditRequest>::namespaced(self.client.clone(), ns)
                .patch_status(request, &mirror_params(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
                .map_err(|e| kubernetes_unavailable(&format!("update CreditRequest {request}"), e))
        })
    }

    /// Patches the resource's spec (the caller's RBAC was checked by a
    /// SubjectAccessReview for `patch` on it), then states the change to the
    /// ledger at once, as the next reconcile will again.
    fn edit<'a>(
        &'a self,
        account: &'a str,
        edit: SpecEdit,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ApiError>> + Send + 'a>> {
        Box::pin(async move {
            let changed = match edit.kind {
                "MemberAllocation" => self.patch_spec::<MemberAllocation>(&edit, Object::Member).await?,
                "CreditGroup" => self.patch_spec::<CreditGroup>(&edit, Object::Group).await?,
                _ => self.patch_spec::<CreditAccount>(&edit, Object::Account).await?,
            };
            let invalid = |e: LedgerError| ApiError::from(e);
            let command = match &changed {
                Object::Member(m) => Command::ApplyMember {
                    account: account.to_string(),
                    member: crate::crd::convert::member_spec(changed.name(), &m.spec).map_err(invalid)?,
                },
                Object::Group(g) => Command::ApplyGroup {
                    account: account.to_string(),
                    name: changed.name().to_string(),
                    settings: crate::crd::convert::group_settings(&g.spec).map_err(invalid)?,
                },
                Object::Account(a) => Command::ApplyAccount {
                    account: account.to_string(),
                    settings: crate::crd::convert::account_settings(&a.spec).map_err(invalid)?,
                },
                Object::Request(_) => return Ok(()),
            };
            self.ledger.execute(command).await?;
            Ok(())
        })
    }

    /// Sets the account's reset annotation to the reset's own mark, so the
    /// cluster shows it and a later reconcile resets nothing more.
    fn record_reset<'a>(
        &'a self,
        account: &'a str,
        mark: jiff::Timestamp,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), crate::api::error::ApiError>> + Send + 'a>> {
        Box::pin(async move {
            let (ns, name) = account.split_once('/').unwrap_or(("default", account));
            let patch = json!({"metadata": {"annotations": {crate::crd::RESET_ANNOTATION: mark.to_string()}}});
            Api::<CreditAccount>::namespaced(self.client.clone(), ns)
                .patch(name, &mirror_params(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
                .map_err(|e| kubernetes_unavailable(&format!("update CreditAccount {name}"), e))
        })
    }
}

impl ClusterDirectory {
    /// Reads the object, refuses it when a GitOps tool manages it (unless
    /// forced), checks the changed spec as `validate` does and patches it,
    /// conditional on the version read. Answers the object as changed.
    async fn patch_spec<K>(&self, edit: &SpecEdit, wrap: fn(K) -> Object) -> Result<Object, ApiError>
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let api = Api::<K>::namespaced(self.client.clone(), &edit.namespace);
        // Status writes move the resourceVersion too: read, check and patch
        // again on a conflict (each try sees the object as it then is).
        let mut tries = 0;
        let changed = loop {
            tries += 1;
            let current = match api.get(&edit.name).await {
                Ok(o) => o,
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    return Err(ApiError::not_found(format!("{} not found", edit.object())))
                }
                Err(e) => return Err(kubernetes_unavailable(&format!("read {}", edit.object()), e)),
            };
            if let Some(tool) = edits::gitops_manager(current.meta()) {
                if !edit.force {
                    return Err(edits::managed_elsewhere(edit, tool));
                }
            }
            let version = current.meta().resource_version.clone();
            let changed = wrap(current)
                .with_spec_changes(edit.changes.iter().map(|c| (c.key, c.value.as_str())))
                .map_err(|(field, message)| edits::field_error(&field, &message))?;
            crate::manifests::check_object(&changed)
                .map_err(|(field, message)| edits::field_error(&field, &message))?;
            let mut patch = edit.merge_patch();
            patch["metadata"] = json!({ "resourceVersion": version });
            match api.patch(&edit.name, &mirror_params(), &Patch::Merge(&patch)).await {
                Ok(_) => break changed,
                Err(kube::Error::Api(e)) if e.code == 409 && tries < 5 => continue,
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    return Err(ApiError::new(
                        axum::http::StatusCode::CONFLICT,
                        "changed_meanwhile",
                        format!("{} kept changing while it was edited: try again", edit.object()),
                    ))
                }
                Err(kube::Error::Api(e)) if e.code == 422 => {
                    return Err(ApiError::bad_field(
                        "spec",
                        format!("the API server refused the change: {}", e.message),
                    ))
                }
                Err(e) => return Err(kubernetes_unavailable(&format!("patch {}", edit.object()), e)),
            }
        };
        tracing::info!(object = %edit.object(), by = %edit.caller, "edited through the API");
        Ok(changed)
    }
}

/// The field manager of what the API writes onto resources for a caller.
pub const API_FIELD_MANAGER: &str = "credit-operator-api";

fn mirror_params() -> PatchParams {
    PatchParams {
        field_manager: Some(API_FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

/// A write the API makes for a caller failed on the Kubernetes side.
fn kubernetes_unavailable(what: &str, e: kube::Error) -> crate::api::error::ApiError {
    crate::api::error::ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "kubernetes_unavailable",
        format!("cannot {what}: {e}"),
    )
}
