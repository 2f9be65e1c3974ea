//! The real kube-runtime Controller against the in-memory API server, for
//! what needs a clock the test moves or more load than a real server
//! takes quickly: scheduled resets across restarts, bounded status writes
//! under a stream of usage, and the ledger's authority over statuses the
//! chart's admission policy would refuse. (Everything else runs against a
//! real kube-apiserver in `tests/cluster.rs`.)

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use credit_operator::clock::ManualClock;
use credit_operator::ledger::*;
use credit_operator::operator::{self, OperatorOptions};
use serde_json::{json, Value};
use support::apiserver::FakeApi;
use support::{amt, t};

const NS: &str = "team";

struct Running {
    api: FakeApi,
    ledger: Ledger,
    clock: ManualClock,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    url: String,
    _dir: tempfile::TempDir,
}

fn options(staleness_ms: u64, writes_per_second: f64) -> OperatorOptions {
    OperatorOptions {
        staleness: Duration::from_millis(staleness_ms),
        status_writes_per_second: writes_per_second,
    }
}

impl Running {
    fn start(api: FakeApi, opts: OperatorOptions) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("credits.db").display());
        let clock = ManualClock::new(t("2026-11-26T10:00:00Z"));
        let mut r = Running {
            api,
            ledger: Ledger::open(&url, Arc::new(clock.clone())).unwrap(),
            clock,
            stop: None,
            task: None,
            url,
            _dir: dir,
        };
        r.spawn(opts);
        r
    }

    fn spawn(&mut self, opts: OperatorOptions) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (client, ledger) = (self.api.client(), self.ledger.clone());
        self.task = Some(tokio::spawn(operator::run(client, ledger, opts, async move {
            let _ = rx.await;
        })));
        self.stop = Some(tx);
    }

    /// Stops the controller and the ledger, then starts both again on the
    /// same journal: an operator restart.
    async fn restart(&mut self, opts: OperatorOptions) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        let old = std::mem::replace(
            &mut self.ledger,
            Ledger::open(&self.url, Arc::new(self.clock.clone())).unwrap(),
        );
        tokio::task::spawn_blocking(move || old.shutdown()).await.unwrap();
        self.spawn(opts);
    }

    async fn wait_for(&self, what: &str, check: impl Fn(&FakeApi) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check(&self.api) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn status(&self, plural: &str, name: &str) -> Value {
        self.api
            .object(plural, NS, name)
            .map(|o| o["status"].clone())
            .unwrap_or(Value::Null)
    }

    async fn usage(&self, user: &str, credits: &str, key: &str) {
        self.ledger
            .execute(Command::RecordUsage {
                labels: Default::default(),
                account: format!("{NS}/acme"),
                member: user.into(),
                charge: Charge::Credits(amt(credits)),
                key: key.into(),
                occurred_at: None,
            })
            .await
            .unwrap();
    }
}

fn seed(api: &FakeApi, cadence: &str) {
    api.create_object("creditaccounts", NS, json!({"apiVersion": "credits.alchemi.io/v1alpha1", "kind": "CreditAccount",
        "metadata": {"name": "acme"}, "spec": {"creditsPerCycle": 10000, "cadence": cadence, "creditFactor": 1, "signupCredits": 50}}));
    api.create_object(
        "creditgroups",
        NS,
        json!({"apiVersion": "credits.alchemi.io/v1alpha1", "kind": "CreditGroup",
        "metadata": {"name": "default"}, "spec": {"monthlyCredits": 1000}}),
    );
    api.create_object(
        "creditgroups",
        NS,
        json!({"apiVersion": "credits.alchemi.io/v1alpha1", "kind": "CreditGroup",
        "metadata": {"name": "ml"}, "spec": {"monthlyCredits": 4000, "extraCredits": 500, "autoApproveReserve": 300}}),
    );
    for (name, monthly) in [("alice", 2000), ("bob", 1000)] {
        api.create_object("memberallocations", NS, json!({"apiVersion": "credits.alchemi.io/v1alpha1", "kind": "MemberAllocation",
            "metadata": {"name": name}, "spec": {"group": "ml", "user": {"id": format!("u-{name}"), "email": format!("{name}@example.com"), "name": name}, "monthlyCredits": monthly}}));
    }
}

fn request(api: &FakeApi, name: &str, member: &str, credits: u64) {
    api.create_object(
        "creditrequests",
        NS,
        json!({"apiVersion": "credits.alchemi.io/v1alpha1", "kind": "CreditRequest",
        "metadata": {"name": name}, "spec": {"member": member, "credits": credits, "reason": "more"}}),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decided_request_ignores_later_patches() {
    let api = FakeApi::new();
    seed(&api, "CalendarMonth");
    request(&api, "small", "alice", 100);
    let run = Running::start(api, options(200, 100.0));
    run.wait_for("auto-approval", |api| {
        api.object("creditrequests", NS, "small")
            .is_some_and(|o| o["status"]["phase"] == "AutoApproved")
    })
    .await;
    assert_eq!(run.status("creditrequests", "small")["decidedBy"], "auto");
    assert_eq!(
        run.api.merge_patch(
            "creditrequests",
            NS,
            "small",
            true,
            json!({"status": {"approval": {"decision": "Deny", "reason": "not now"}}})
        ),
        200
    );
    run.wait_for("DecisionIgnored", |api| {
        api.object("creditrequests", NS, "small").is_some_and(|o| {
            o["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "DecisionIgnored"))
        })
    })
    .await;
    assert_eq!(run.status("creditrequests", "small")["phase"], "AutoApproved");
    assert_eq!(run.status("memberallocations", "alice")["granted"], "100");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_reset_happens_once_also_across_an_operator_restart() {
    let api = FakeApi::new();
    seed(&api, "1h");
    let mut run = Running::start(api, options(100, 100.0));
    run.wait_for("cycle 1", |api| {
        api.object("creditaccounts", NS, "acme")
            .is_some_and(|o| o["status"]["cycle"]["number"] == 1)
    })
    .await;
    run.usage("u-alice", "40", "a").await;
    run.clock.advance(jiff::SignedDuration::from_mins(61));
    run.wait_for("cycle 2", |api| {
        api.object("creditaccounts", NS, "acme")
            .is_some_and(|o| o["status"]["cycle"]["number"] == 2)
    })
    .await;
    let status = run.status("creditaccounts", "acme");
    assert_eq!(
        (status["used"].as_str(), status["lastReset"]["reason"].as_str()),
        (Some("0"), Some("Scheduled"))
    );
    let seq = run.ledger.read().last_seq;
    run.restart(options(100, 100.0)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(run.ledger.read().accounts["team/acme"].cycle.number, 2);
    assert_eq!(run.ledger.read().last_seq, seq, "the restart journaled nothing");
    assert!(run.api.event_reasons(NS).iter().any(|r| r == "CycleReset"));

    // A manual reset by annotation happens once, also across a restart.
    run.api.merge_patch(
        "creditaccounts",
        NS,
        "acme",
        false,
        json!({"metadata": {"annotations": {"credits.alchemi.io/reset-requested-at": "2026-11-26T11:00:00Z"}}}),
    );
    run.wait_for("cycle 3", |api| {
        api.object("creditaccounts", NS, "acme")
            .is_some_and(|o| o["status"]["cycle"]["number"] == 3)
    })
    .await;
    run.restart(options(100, 100.0)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(run.ledger.read().accounts["team/acme"].cycle.number, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_writes_stay_bounded_while_ten_thousand_usage_events_stream_in() {
    let api = FakeApi::new();
    seed(&api, "CalendarMonth");
    let run = Running::start(api, options(200, 5.0));
    run.wait_for("first statuses", |api| {
        api.object("memberallocations", NS, "bob")
            .is_some_and(|o| !o["status"].is_null())
    })
    .await;
    let (writes_before, started) = (run.api.status_writes(), Instant::now());
    let ledger = run.ledger.clone();
    tokio::task::spawn_blocking(move || {
        let mut pending = Vec::new();
        for i in 0..10_000u32 {
            let member = if i % 2 == 0 { "u-alice" } else { "u-bob" };
            pending.push(ledger.submit(Command::RecordUsage {
                labels: Default::default(),
                account: "team/acme".into(),
                member: member.into(),
                charge: Charge::Credits(amt("0.01")),
                key: format!("s{i}"),
                occurred_at: None,
            }));
        }
        for p in pending {
            p.blocking_recv().unwrap().unwrap();
        }
    })
    .await
    .unwrap();
    run.wait_for("the final figures", |api| {
        api.object("memberallocations", NS, "alice")
            .is_some_and(|o| o["status"]["used"] == "50")
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let writes = run.api.status_writes() - writes_before;
    // A bucket of 5 writes per second (burst 5) bounds the writes.
    assert!(
        writes as f64 <= 5.0 * elapsed + 6.0,
        "{writes} status writes in {elapsed:.1}s"
    );
    assert!(writes >= 3, "the statuses were published: {writes}");
    eprintln!("{writes} status writes in {elapsed:.1}s for 10000 usage events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cadence_change_resets_once_and_a_forged_phase_is_repaired() {
    let api = FakeApi::new();
    seed(&api, "CalendarMonth");
    request(&api, "wait", "bob", 900);
    let mut run = Running::start(api, options(100, 100.0));
    run.wait_for("cycle 1", |api| {
        api.object("creditaccounts", NS, "acme")
            .is_some_and(|o| o["status"]["cycle"]["number"] == 1)
    })
    .await;
    run.api
        .merge_patch("creditaccounts", NS, "acme", false, json!({"spec": {"cadence": "1w"}}));
    run.wait_for("the cadence reset", |api| {
        api.object("creditaccounts", NS, "acme")
            .is_some_and(|o| o["status"]["lastReset"]["reason"] == "CadenceChanged")
    })
    .await;
    run.restart(options(100, 100.0)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        run.ledger.read().accounts["team/acme"].cycle.number,
        2,
        "one reset, also across a restart"
    );

    // Someone forges the operator's fields: the ledger is authoritative.
    run.wait_for("a pending request", |api| {
        api.object("creditrequests", NS, "wait")
            .is_some_and(|o| o["status"]["phase"] == "Pending")
    })
    .await;
    run.api.merge_patch(
        "creditrequests",
        NS,
        "wait",
        true,
        json!({"status": {"phase": "Approved", "approvedCredits": "900"}}),
    );
    run.wait_for("the repair", |api| {
        api.object("creditrequests", NS, "wait")
            .is_some_and(|o| o["status"]["phase"] == "Pending" && o["status"].get("approvedCredits").is_none())
    })
    .await;
    assert_eq!(run.status("memberallocations", "bob")["granted"], "0");
}
