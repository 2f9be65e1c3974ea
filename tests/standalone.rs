//! End to end: the real binary on a temporary folder and SQLite file,
//! driven over HTTP. Time comes from a clock file the tests rewrite.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const ACCOUNT_YAML: &str = r#"
apiVersion: credits.alchemi.io/v1alpha1
kind: CreditAccount
metadata: {name: acme, namespace: team}
spec: {creditsPerCycle: 10000, cadence: 1d, creditFactor: 100, signupCredits: 50}
"#;

const GROUPS_YAML: &str = r#"
apiVersion: credits.alchemi.io/v1alpha1
kind: CreditGroup
metadata: {name: default, namespace: team}
spec: {monthlyCredits: 1000}
---
apiVersion: credits.alchemi.io/v1alpha1
kind: CreditGroup
metadata: {name: ml, namespace: team}
spec: {monthlyCredits: 4000, extraCredits: 500, autoApproveReserve: 300}
"#;

const MEMBERS_YAML: &str = r#"
apiVersion: credits.alchemi.io/v1alpha1
kind: MemberAllocation
metadata: {name: alice, namespace: team}
spec: {group: ml, user: {id: u-alice, email: alice@example.com, name: Alice}, monthlyCredits: 2000, extraCredits: 100}
---
apiVersion: credits.alchemi.io/v1alpha1
kind: MemberAllocation
metadata: {name: bob, namespace: team}
spec: {group: ml, user: {id: u-bob, email: bob@example.com, name: Bob}, monthlyCredits: 1000}
"#;

const START: &str = "2026-11-26T10:00:00Z";

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(env.manifests().join("people")).unwrap();
        env.write("account.yaml", ACCOUNT_YAML);
        env.write("groups.yaml", GROUPS_YAML);
        env.write("people/members.yaml", MEMBERS_YAML);
        env.set_time(START);
        env
    }

    fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.manifests().join(file), text).unwrap();
    }

    fn set_time(&self, t: &str) {
        let tmp = self.dir.path().join(".clock.tmp");
        std::fs::write(&tmp, t).unwrap();
        std::fs::rename(tmp, self.dir.path().join("clock")).unwrap();
    }

    fn ledger(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("credits.db").display())
    }

    fn start(&self) -> Server {
        self.start_with(&[])
    }

    fn start_with(&self, extra: &[&str]) -> Server {
        self.start_with_env(extra, &[])
    }

    fn start_with_env(&self, extra: &[&str], vars: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_credit-operator"))
            .envs(vars.iter().copied())
            .args(["standalone", "--manifests"])
            .arg(self.manifests())
            .args(["--ledger", &self.ledger()])
            // An address of the caller's own replaces the default.
            .args(if extra.contains(&"--listen") {
                &[][..]
            } else {
                &["--listen", "127.0.0.1:0"][..]
            })
            .args(["--poll-interval-ms", "50", "--clock-file"])
            .arg(self.dir.path().join("clock"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(match std::env::var("TEST_STDERR") {
                Ok(f) => Stdio::from(std::fs::File::create(f).unwrap()),
                Err(_) => Stdio::null(),
            })
            .spawn()
            .expect("start credit-operator");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("a first line").unwrap();
        let base = first.rsplit(' ').next().unwrap().to_string();
        assert!(base.starts_with("http://127.0.0.1:"), "{first}");
        let mut banner = String::new();
        for line in lines.by_ref().take(8) {
            banner.push_str(&line.unwrap());
            banner.push('\n');
        }
        std::thread::spawn(move || for _ in lines {});
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        Server {
            child,
            base,
            agent,
            banner,
            token: None,
        }
    }
}

struct Server {
    child: Child,
    base: String,
    agent: ureq::Agent,
    banner: String,
    token: Option<String>,
}

const A: &str = "/v1/namespaces/team/accounts/acme";

impl Server {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{}", self.base, path);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let response = match (method, body) {
            ("GET", _) => {
                let mut r = self.agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                r.call()
            }
            ("DELETE", _) => {
                let mut r = self.agent.delete(&url);
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                r.call()
            }
            ("PATCH", body) => {
                let mut r = self.agent.patch(&url);
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                r.send_json(body.unwrap_or(json!({})))
            }
            (_, body) => {
                let mut r = self.agent.post(&url);
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                r.send_json(body.unwrap_or(json!({})))
            }
        };
        let mut response = response.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    fn get(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(body))
    }

    /// Everything a client can read about the account.
    fn figures(&self) -> Value {
        json!({
            "overview": self.get(&format!("{A}/overview")),
            "groups": self.get(&format!("{A}/groups")),
            "ml": self.get(&format!("{A}/groups/ml/members")),
            "default": self.get(&format!("{A}/groups/default/members")),
            "requests": self.get(&format!("{A}/requests")),
        })
    }

    /// Waits (bounded) until `check` holds; reloads are asynchronous.
    fn wait_for(&self, what: &str, check: impl Fn(&Server) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !check(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn usage(server: &Server, member: &str, body: Value) -> (u16, Value) {
    let mut b = body;
    b["member"] = json!(member);
    server.post(&format!("{A}/usage"), b)
}

#[test]
fn every_call_of_the_api_answers_with_the_documented_shapes() {
    let env = Env::new();
    let s = env.start();
    assert!(s.banner.contains("account team/acme"), "{}", s.banner);

    let (st, u) = usage(
        &s,
        "u-alice",
        json!({"costUsd": "1.5", "idempotencyKey": "e-1", "occurredAt": "2026-11-26T09:59:00Z"}),
    );
    assert_eq!(st, 200, "{u}");
    assert_eq!(
        u,
        json!({"duplicate": false, "credits": "150", "member": {"used": "150", "remaining": "1950"}})
    );
    let (_, again) = usage(&s, "u-alice", json!({"costUsd": 1.50, "idempotencyKey": "e-1"}));
    assert_eq!(again["duplicate"], json!(true));
    assert_eq!(again["member"]["used"], json!("150"));
    let (st, conflict) = usage(&s, "u-alice", json!({"costUsd": "2", "idempotencyKey": "e-1"}));
    assert_eq!((st, conflict["error"].as_str()), (409, Some("idempotency_conflict")));

    let (st, a) = s.post(&format!("{A}/authorize"), json!({"member": "u-alice", "credits": 1950}));
    assert_eq!(
        (st, a),
        (
            200,
            json!({"allowed": true, "remaining": "1950", "limitedBy": "member"})
        )
    );
    let (_, a) = s.post(
        &format!("{A}/authorize"),
        json!({"member": "u-alice", "costUsd": "19.51"}),
    );
    assert_eq!(a["allowed"], json!(false));

    let (st, hold) = s.post(
        &format!("{A}/holds"),
        json!({"member": "u-bob", "credits": "600", "ttlSeconds": 300, "idempotencyKey": "h-1"}),
    );
    assert_eq!(st, 201, "{hold}");
    assert_eq!(
        (hold["state"].as_str(), hold["credits"].as_str()),
        (Some("Open"), Some("600"))
    );
    assert_eq!(hold["expiresAt"], json!("2026-11-26T10:05:00Z"));
    let id = hold["id"].as_str().unwrap().to_string();
    let (st, refused) = s.post(
        &format!("{A}/holds"),
        json!({"member": "u-bob", "credits": "500", "ttlSeconds": 300, "idempotencyKey": "h-2"}),
    );
    assert_eq!(
        (st, refused["error"].as_str(), refused["limitedBy"].as_str()),
        (409, Some("insufficient_credits"), Some("member"))
    );
    let (st, settled) = s.post(&format!("{A}/holds/{id}/settle"), json!({"credits": "650"}));
    assert_eq!(
        (st, settled["state"].as_str(), settled["settledCredits"].as_str()),
        (200, Some("Settled"), Some("650"))
    );
    let (_, h3) = s.post(
        &format!("{A}/holds"),
        json!({"member": "u-bob", "costUsd": 1, "ttlSeconds": 60, "idempotencyKey": "h-3"}),
    );
    let (st, released) = s.call("DELETE", &format!("{A}/holds/{}", h3["id"].as_str().unwrap()), None);
    assert_eq!((st, released["state"].as_str()), (200, Some("Released")));

    let o = s.get(&format!("{A}/overview"));
    assert_eq!(
        o["cycle"],
        json!({"number": 1, "start": "2026-11-26T10:00:00Z", "end": "2026-11-27T10:00:00Z"})
    );
    assert_eq!(
        (o["used"].as_str(), o["balance"].as_str(), o["usagePercent"].as_str()),
        (Some("800"), Some("9200"), Some("8"))
    );
    assert_eq!(
        (o["allocated"].as_str(), o["unallocated"].as_str()),
        (Some("5500"), Some("4500"))
    );
    assert_eq!(
        o["groups"],
        json!([{"name": "default", "budget": "1000", "used": "0"}, {"name": "ml", "budget": "4500", "used": "800"}])
    );

    let g = s.get(&format!("{A}/groups"));
    let ml = &g["items"][1];
    assert_eq!(ml["name"], "ml");
    assert_eq!(
        (
            ml["distributed"].as_str(),
            ml["available"].as_str(),
            ml["members"].as_u64()
        ),
        (Some("3100"), Some("1400"), Some(2))
    );

    let (st, member) = s.post(
        &format!("{A}/members"),
        json!({"user": {"id": "u-carol", "email": "carol@example.com", "name": "Carol"}}),
    );
    assert_eq!(st, 201, "{member}");
    assert_eq!(
        (member["group"].as_str(), member["monthlyCredits"].as_str()),
        (Some("default"), Some("50"))
    );
    assert!(
        env.manifests().join("enrolled").read_dir().unwrap().count() == 1,
        "enrolment is written as a manifest"
    );
    let (st, dup) = s.post(
        &format!("{A}/members"),
        json!({"user": {"id": "u-carol", "email": "carol2@example.com", "name": "Carol"}}),
    );
    assert_eq!((st, dup["error"].as_str()), (409, Some("duplicate_user_id")));

    let page = s.get(&format!("{A}/groups/ml/members?search=ALI&page=1&pageSize=1"));
    assert_eq!(
        (page["total"].as_u64(), page["items"][0]["user"]["id"].as_str()),
        (Some(1), Some("u-alice"))
    );
    let page2 = s.get(&format!("{A}/groups/ml/members?page=2&pageSize=1"));
    assert_eq!(
        (page2["total"].as_u64(), page2["items"][0]["name"].as_str()),
        (Some(2), Some("bob"))
    );

    let (st, auto) = s.post(
        &format!("{A}/requests"),
        json!({"member": "u-alice", "credits": 200, "reason": "eval"}),
    );
    assert_eq!((st, auto["phase"].as_str()), (201, Some("AutoApproved")));
    let (_, pending) = s.post(
        &format!("{A}/requests"),
        json!({"member": "u-bob", "credits": "500", "reason": "big run"}),
    );
    assert_eq!(pending["phase"], "Pending");
    let name = pending["name"].as_str().unwrap();
    let listed = s.get(&format!("{A}/requests?status=Pending"));
    assert_eq!(
        (listed["total"].as_u64(), listed["items"][0]["name"].as_str()),
        (Some(1), Some(name))
    );
    let (st, bad) = s.post(&format!("{A}/requests/{name}/approve"), json!({"credits": "501"}));
    assert_eq!((st, bad["error"].as_str()), (400, Some("invalid_approval")));
    let (st, ok) = s.post(
        &format!("{A}/requests/{name}/approve"),
        json!({"credits": "300", "reason": "start small"}),
    );
    assert_eq!(
        (
            st,
            ok["phase"].as_str(),
            ok["approvedCredits"].as_str(),
            ok["decidedBy"].as_str()
        ),
        (200, Some("Approved"), Some("300"), Some("local"))
    );
    let (st, again) = s.post(
        &format!("{A}/requests/{name}/deny"),
        json!({"reason": "changed my mind"}),
    );
    assert_eq!((st, again["error"].as_str()), (409, Some("already_decided")));
    let (_, third) = s.post(
        &format!("{A}/requests"),
        json!({"member": "u-bob", "credits": "150", "reason": "eval run"}),
    );
    let (st, denied) = s.post(
        &format!("{A}/requests/{}/deny", third["name"].as_str().unwrap()),
        json!({"reason": "no"}),
    );
    assert_eq!((st, denied["phase"].as_str()), (200, Some("Denied")));

    let (st, cycle) = s.post(&format!("{A}/reset"), json!({}));
    assert_eq!((st, cycle["number"].as_u64()), (200, Some(2)));
    let closed = s.get(&format!("{A}/overview?cycle=1"));
    assert_eq!(closed["used"], "800");
    assert_eq!(s.get(&format!("{A}/overview"))["used"], "0");
    let closed_members = s.get(&format!("{A}/groups/ml/members?cycle=1"));
    assert_eq!(closed_members["items"][1]["used"], "650");
    let closed_groups = s.get(&format!("{A}/groups?cycle=1"));
    let ml = closed_groups["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "ml")
        .unwrap();
    assert_eq!(
        (ml["members"].as_u64(), closed_members["total"].as_u64()),
        (Some(2), Some(2)),
        "a closed group counts the members it lists"
    );

    assert_eq!(s.get("/healthz")["status"], "ok");
    assert_eq!(s.get("/readyz")["status"], "ok");
    let (st, metrics) = s.call("GET", "/metrics", None);
    let metrics = metrics.as_str().unwrap().to_string();
    assert_eq!(st, 200);
    for needle in ["credits_account_used{account=\"team/acme\"} 0.0", "credits_requests{", "credits_ledger_commit_seconds_bucket", "credits_http_requests_total{route=\"/v1/namespaces/{ns}/accounts/{account}/usage\",method=\"POST\",status=\"200\"}"] {
        assert!(metrics.contains(needle), "metrics lack {needle}:\n{metrics}");
    }
    let (st, doc) = s.call("GET", "/openapi.json", None);
    assert_eq!(st, 200);
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        doc, committed,
        "docs/openapi.json is stale: run `UPDATE_OPENAPI=1 cargo test --test openapi`"
    );
    s.stop();
}

#[test]
fn bad_input_gets_the_right_status_and_changes_nothing() {
    let env = Env::new();
    let s = env.start();
    usage(&s, "u-alice", json!({"credits": "10", "idempotencyKey": "seen"}));
    let before = s.figures();
    let cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        (
            "POST",
            "/usage",
            json!({"member": "u-alice", "credits": -1, "idempotencyKey": "n1"}),
            400,
            "credits",
        ),
        (
            "POST",
            "/usage",
            json!({"member": "u-alice", "credits": "abc", "idempotencyKey": "n2"}),
            400,
            "credits",
        ),
        (
            "POST",
            "/usage",
            json!({"member": "u-alice", "credits": "NaN", "idempotencyKey": "n3"}),
            400,
            "credits",
        ),
        (
            "POST",
            "/usage",
            json!({"member": "u-alice", "costUsd": "1e400", "idempotencyKey": "n4"}),
            400,
            "costUsd",
        ),
        (
            "POST",
            "/usage",
            json!({"member": "u-alice", "credits": "123456789012345678901234567890", "idempotencyKey": "n5"}),
            400,
            "credits",
        ),
        (
            "POST",
            "/usage",
            json!({"member": "u-alice", "credits": "0.0000000001", "idempotencyKey": "n6"}),
            400,
            "credits",
        ),
        (
            "POST",
            "/usage",
            json!({"member": "u-alice", "idempotencyKey": "n7"}),
            400,
            "credits",
        ),
        (
            "POST",
            "/usage",
            json!({"member": "u-alice", "credits": 1, "costUsd": 1, "idempotencyKey": "n8"}),
            400,
            "credits",
        ),
        (
            "POST",
            "/usage",
            json!({"member": "", "credits": 1, "idempotencyKey": "n9"}),
            400,
            "member",
        ),
        (
            "POST",
            "/usage",
            json!({"member": "u-alice", "credits": 1, "idempotencyKey": ""}),
            400,
            "idempotencyKey",
        ),
        (
            "POST",
            "/usage",
            json!({"member": "u-alice", "credits": 1, "idempotencyKey": "n10", "occurredAt": "yesterday"}),
            400,
            "occurredAt",
        ),
        (
            "POST",
            "/usage",
            json!({"member": "u-alice", "credits": 1, "idempotencyKey": "n11", "surprise": true}),
            400,
            "surprise",
        ),
        (
            "POST",
            "/usage",
            json!({"member": "u-nobody", "credits": 1, "idempotencyKey": "n12"}),
            404,
            "",
        ),
        (
            "POST",
            "/usage",
            json!({"member": "u-alice", "credits": 2, "idempotencyKey": "seen"}),
            409,
            "",
        ),
        (
            "POST",
            "/authorize",
            json!({"member": "u-nobody", "credits": 1}),
            404,
            "",
        ),
        (
            "POST",
            "/authorize",
            json!({"member": "u-alice", "credits": -3}),
            400,
            "credits",
        ),
        (
            "POST",
            "/holds",
            json!({"member": "u-alice", "credits": 1, "ttlSeconds": 0, "idempotencyKey": "h"}),
            400,
            "ttlSeconds",
        ),
        ("POST", "/holds/hold-999/settle", json!({"credits": 1}), 404, ""),
        (
            "POST",
            "/members",
            json!({"user": {"id": "", "email": "x@example.com", "name": "X"}}),
            400,
            "user.id",
        ),
        (
            "POST",
            "/members",
            json!({"user": {"id": "u-x", "email": "x@example.com", "name": "X"}, "group": "nope"}),
            404,
            "",
        ),
        (
            "POST",
            "/requests",
            json!({"member": "u-alice", "credits": 0, "reason": "more"}),
            400,
            "spec.credits",
        ),
        (
            "POST",
            "/requests",
            json!({"member": "u-nobody", "credits": 5, "reason": "more"}),
            404,
            "",
        ),
        ("POST", "/requests/nope/approve", json!({}), 404, ""),
        // A request and a denial say why.
        (
            "POST",
            "/requests",
            json!({"member": "u-alice", "credits": 5, "reason": "  "}),
            400,
            "reason",
        ),
        (
            "POST",
            "/requests",
            json!({"member": "u-alice", "credits": 5}),
            400,
            "body",
        ),
        ("POST", "/requests/nope/deny", json!({"reason": ""}), 400, "reason"),
        // Amounts are digits and nothing else, as the CRD's pattern says.
        (
            "POST",
            "/usage",
            json!({"member": "u-alice", "credits": " 5", "idempotencyKey": "s1"}),
            400,
            "credits",
        ),
        (
            "POST",
            "/usage",
            json!({"member": "u-alice", "credits": "5 ", "idempotencyKey": "s2"}),
            400,
            "credits",
        ),
        (
            "POST",
            "/usage",
            json!({"member": "u-alice", "credits": "+5", "idempotencyKey": "s3"}),
            400,
            "credits",
        ),
        // One event over the ceiling of 10^12 is refused, not recorded.
        (
            "POST",
            "/usage",
            json!({"member": "u-alice", "credits": "999999999999999000", "idempotencyKey": "s4"}),
            400,
            "credits",
        ),
        (
            "POST",
            "/usage",
            json!({"member": "u-alice", "costUsd": "1000000000000000", "idempotencyKey": "s5"}),
            400,
            "costUsd",
        ),
        (
            "POST",
            "/holds",
            json!({"member": "u-alice", "credits": "0", "ttlSeconds": 60, "idempotencyKey": "h0"}),
            400,
            "credits",
        ),
        (
            "POST",
            "/usage",
            json!({"member": "u-alice", "credits": 1, "idempotencyKey": "t1", "occurredAt": "9999-12-31T23:59:59Z"}),
            400,
            "occurredAt",
        ),
        // Who a member is: an email, a name, no control characters.
        (
            "POST",
            "/members",
            json!({"user": {"id": "u-e", "email": "", "name": "E"}}),
            400,
            "user.email",
        ),
        (
            "POST",
            "/members",
            json!({"user": {"id": "u-e", "email": "e@example.com", "name": ""}}),
            400,
            "user.name",
        ),
        (
            "POST",
            "/members",
            json!({"user": {"id": "u-e", "email": "e@example.com", "name": "E\u{85}ve"}}),
            400,
            "spec.user.name",
        ),
        ("GET", "/groups/ml/members?pageSize=501", Value::Null, 400, "pageSize"),
        ("GET", "/groups/ml/members?page=0", Value::Null, 400, "page"),
        ("GET", "/groups/nope/members", Value::Null, 404, ""),
        ("GET", "/requests?status=Maybe", Value::Null, 400, "status"),
        ("GET", "/overview?cycle=7", Value::Null, 404, ""),
    ];
    for (method, path, body, status, field) in cases {
        let (got, answer) = s.call(method, &format!("{A}{path}"), (!body.is_null()).then_some(body.clone()));
        assert_eq!(got, status, "{method} {path} {body}: {answer}");
        assert!(answer["error"].is_string() && answer["message"].is_string(), "{answer}");
        if !field.is_empty() {
            assert_eq!(answer["field"], json!(field), "{method} {path} {body}: {answer}");
        }
    }
    let (st, _) = s.call("GET", "/v1/namespaces/team/accounts/other/overview", None);
    assert_eq!(st, 404);
    assert_eq!(s.figures(), before, "bad input changed state");
}

#[test]
fn file_edits_are_picked_up_and_a_broken_file_keeps_the_last_good_state() {
    let env = Env::new();
    let s = env.start();
    let member = |s: &Server, group: &str, name: &str| -> Value {
        let page = s.get(&format!("{A}/groups/{group}/members"));
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(member(&s, "ml", "alice")["monthlyCredits"], "2000");
    env.write(
        "people/members.yaml",
        &MEMBERS_YAML.replace("monthlyCredits: 2000", "monthlyCredits: 2500"),
    );
    s.wait_for("alice's new allocation", |s| {
        member(s, "ml", "alice")["monthlyCredits"] == "2500"
    });
    assert_eq!(s.get(&format!("{A}/groups"))["items"][1]["distributed"], "3600");

    // A new file adds a group; a broken edit of the members file changes nothing.
    env.write("people/more.yaml", "apiVersion: credits.alchemi.io/v1alpha1\nkind: CreditGroup\nmetadata: {name: infra, namespace: team}\nspec: {monthlyCredits: 700}\n");
    s.wait_for("the infra group", |s| {
        s.get(&format!("{A}/groups"))["items"].as_array().unwrap().len() == 3
    });
    let before = s.figures();
    env.write("people/members.yaml", "apiVersion: credits.alchemi.io/v1alpha1\nkind: MemberAllocation\nmetadata: {name: alice, namespace: team}\nspec: {user: {id: u-alice, email: alice@example.com, name: Alice}, monthlyCredits: -5}\n---\n{{{ not yaml");
    env.write(
        "groups.yaml",
        &GROUPS_YAML.replace("monthlyCredits: 4000", "monthlyCredits: 4100"),
    );
    s.wait_for("the good edit next to the broken file", |s| {
        s.get(&format!("{A}/groups"))["items"][2]["monthlyCredits"] == "4100"
    });
    let after = s.figures();
    assert_eq!(
        after["ml"], before["ml"],
        "members of the broken file keep their last good state"
    );
    assert_eq!(member(&s, "ml", "bob")["monthlyCredits"], "1000", "bob was not removed");

    // Fixed and without bob: bob's allocation stops, his history stays.
    usage(&s, "u-bob", json!({"credits": "30", "idempotencyKey": "b1"}));
    let only_alice = MEMBERS_YAML.split("---").next().unwrap();
    env.write("people/members.yaml", only_alice);
    s.wait_for("bob's removal", |s| member(s, "ml", "bob").is_null());
    assert_eq!(s.get(&format!("{A}/overview"))["used"], "30");
    let (_, auth) = s.post(&format!("{A}/authorize"), json!({"member": "u-bob", "credits": 1}));
    assert_eq!(auth["allowed"], json!(false));
    s.stop();
}

#[test]
fn a_restart_keeps_cycle_usage_and_idempotency_and_resets_a_missed_boundary_once() {
    let env = Env::new();
    let s = env.start();
    usage(&s, "u-alice", json!({"credits": "40", "idempotencyKey": "k1"}));
    s.stop();

    let s = env.start();
    let o = s.get(&format!("{A}/overview"));
    assert_eq!(
        (o["cycle"]["number"].as_u64(), o["used"].as_str()),
        (Some(1), Some("40"))
    );
    let (_, replay) = usage(&s, "u-alice", json!({"credits": "40", "idempotencyKey": "k1"}));
    assert_eq!(
        (replay["duplicate"].as_bool(), replay["member"]["used"].as_str()),
        (Some(true), Some("40"))
    );
    s.stop();

    // Down across three daily boundaries: one reset, to the cycle containing now.
    env.set_time("2026-11-29T11:00:00Z");
    let s = env.start();
    let o = s.get(&format!("{A}/overview"));
    assert_eq!(
        o["cycle"],
        json!({"number": 2, "start": "2026-11-29T10:00:00Z", "end": "2026-11-30T10:00:00Z"})
    );
    assert_eq!(o["used"], "0");
    assert_eq!(s.get(&format!("{A}/overview?cycle=1"))["used"], "40");
    s.stop();
    let s = env.start();
    assert_eq!(
        s.get(&format!("{A}/overview"))["cycle"]["number"],
        2,
        "no second reset on restart"
    );

    // While running, the clock passing a boundary resets by itself.
    env.set_time("2026-11-30T10:00:01Z");
    s.wait_for("the scheduled reset", |s| {
        s.get("/metrics")
            .as_str()
            .is_some_and(|m| m.contains("credits_account_cycle{account=\"team/acme\"} 3"))
    });
    assert_eq!(
        s.get(&format!("{A}/overview"))["cycle"]["start"],
        "2026-11-30T10:00:00Z"
    );
    s.stop();
}

#[test]
fn the_reset_annotation_resets_once() {
    let env = Env::new();
    let s = env.start();
    let annotated = |t: &str| {
        ACCOUNT_YAML.replace("metadata: {name: acme, namespace: team}", &format!("metadata: {{name: acme, namespace: team, annotations: {{credits.alchemi.io/reset-requested-at: \"{t}\"}}}}"))
    };
    env.set_time("2026-11-26T12:00:00Z");
    env.write("account.yaml", &annotated("2026-11-26T11:59:00Z"));
    s.wait_for("the manual reset", |s| {
        s.get(&format!("{A}/overview"))["cycle"]["number"] == 2
    });
    assert_eq!(
        s.get(&format!("{A}/overview"))["cycle"]["start"],
        "2026-11-26T12:00:00Z"
    );
    // An older value (a revert) does nothing; a touch of another file re-reads all.
    env.write("account.yaml", &annotated("2026-11-01T00:00:00Z"));
    env.write(
        "groups.yaml",
        &GROUPS_YAML.replace("monthlyCredits: 1000", "monthlyCredits: 1001"),
    );
    s.wait_for("the group edit", |s| {
        s.get(&format!("{A}/groups"))["items"][0]["monthlyCredits"] == "1001"
    });
    assert_eq!(s.get(&format!("{A}/overview"))["cycle"]["number"], 2);
    s.stop();
}

#[test]
fn a_writer_fenced_by_a_second_one_fails_its_probes_and_commits_nothing() {
    let env = Env::new();
    let s = env.start();
    assert_eq!(
        usage(&s, "u-alice", json!({"credits": 1, "idempotencyKey": "f1"})).0,
        200
    );
    // Another process opens the same ledger: it takes a newer epoch.
    let newer = credit_operator::ledger::journal::open(&env.ledger()).expect("a second writer");
    let (st, e) = usage(&s, "u-alice", json!({"credits": 1, "idempotencyKey": "f2"}));
    assert_eq!((st, e["error"].as_str()), (503, Some("fenced")), "{e}");
    for probe in ["/healthz", "/readyz"] {
        let (st, e) = s.call("GET", probe, None);
        assert_eq!((st, e["error"].as_str()), (503, Some("fenced")), "{probe}: {e}");
    }
    // Reads go on, on what is durable: the refused usage is not there.
    let member = s.get(&format!("{A}/groups/ml/members"))["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"]["id"] == "u-alice")
        .cloned()
        .unwrap();
    assert_eq!(member["used"], "1");
    drop(newer);
}

#[test]
fn tokens_gate_the_api_and_without_them_only_loopback_is_served() {
    let env = Env::new();
    let tokens = env.dir.path().join("tokens");
    std::fs::write(
        &tokens,
        "gateway-token-0123456789 gateway\nadmin-token-0123456789abc admin ops@example.com\n",
    )
    .unwrap();
    let mut s = env.start_with(&["--token-file", tokens.to_str().unwrap()]);
    let (st, e) = s.call("GET", &format!("{A}/overview"), None);
    assert_eq!((st, e["error"].as_str()), (401, Some("unauthorized")));
    assert_eq!(s.call("GET", "/healthz", None).0, 200);
    s.token = Some("gateway-token-0123456789".into());
    assert_eq!(
        usage(&s, "u-alice", json!({"credits": 1, "idempotencyKey": "g1"})).0,
        200
    );
    assert_eq!(s.call("GET", &format!("{A}/overview"), None).0, 200);
    let (st, e) = s.post(&format!("{A}/reset"), json!({}));
    assert_eq!((st, e["error"].as_str()), (403, Some("forbidden")));
    s.token = Some("admin-token-0123456789abc".into());
    // Every account's figures are behind a token too.
    s.token = None;
    assert_eq!(s.call("GET", "/metrics", None).0, 401);
    s.token = Some("gateway-token-0123456789".into());
    let (st, metrics) = s.call("GET", "/metrics", None);
    assert!(st == 200 && metrics.as_str().unwrap().contains("credits_"), "{st}");
    s.token = Some("admin-token-0123456789abc".into());
    let (_, req) = s.post(
        &format!("{A}/requests"),
        json!({"member": "u-bob", "credits": 999, "reason": "load test"}),
    );
    let (st, decided) = s.post(
        &format!("{A}/requests/{}/approve", req["name"].as_str().unwrap()),
        json!({}),
    );
    assert_eq!((st, decided["decidedBy"].as_str()), (200, Some("ops@example.com")));
    s.stop();

    let out = Command::new(env!("CARGO_BIN_EXE_credit-operator"))
        .args(["standalone", "--manifests"])
        .arg(env.manifests())
        .args(["--ledger", &env.ledger(), "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));

    // One token, one role: a token listed twice refuses to start.
    std::fs::write(
        &tokens,
        "shared-token-0123456789 gateway\nadmin-token-0123456789abc admin\nshared-token-0123456789 admin\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_credit-operator"))
        .args(["standalone", "--manifests"])
        .arg(env.manifests())
        .args(["--ledger", &env.ledger(), "--token-file", tokens.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(":3: this token is already on line 1"), "{err}");
}

#[test]
fn validate_reports_file_object_field_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("account.yaml"),
        ACCOUNT_YAML.replace("creditsPerCycle: 10000", "creditsPerCycle: 5000"),
    )
    .unwrap();
    std::fs::write(d.join("groups.yaml"), GROUPS_YAML).unwrap();
    std::fs::write(d.join("members.yaml"), format!("{MEMBERS_YAML}---\napiVersion: credits.alchemi.io/v1alpha1\nkind: MemberAllocation\nmetadata: {{name: eve, namespace: team}}\nspec: {{group: ghosts, user: {{id: u-eve, email: eve@example.com, name: Eve}}}}\n")).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_credit-operator"))
            .arg("validate")
            .args(args)
            .arg(d)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };
    let (code, out) = run(&[]);
    assert_eq!(code, Some(1), "{out}");
    let file = |f: &str| d.join(f).display().to_string();
    assert!(
        out.contains(&format!(
            "{}: MemberAllocation/eve: spec.group: group \"ghosts\" not found",
            file("members.yaml")
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{}: CreditAccount/acme: spec.creditsPerCycle: over-allocated",
            file("account.yaml")
        )),
        "{out}"
    );

    std::fs::write(d.join("members.yaml"), MEMBERS_YAML).unwrap();
    let (code, out) = run(&[]);
    assert_eq!(code, Some(0), "warnings alone pass: {out}");
    let (code, _) = run(&["--strict"]);
    assert_eq!(code, Some(1), "--strict fails on warnings");

    std::fs::write(d.join("bad.yaml"), "apiVersion: credits.alchemi.io/v1alpha1\nkind: CreditGroup\nmetadata: {name: neg, namespace: team}\nspec: {monthlyCredits: \"-3\"}\n").unwrap();
    let (code, out) = run(&[]);
    assert_eq!(code, Some(1));
    assert!(
        out.contains(&format!("{}: CreditGroup/neg: spec.monthlyCredits:", file("bad.yaml"))),
        "{out}"
    );

    std::fs::write(
        d.join("bad.yaml"),
        ACCOUNT_YAML
            .replace("cadence: 1d", "cadence: fortnightly")
            .replace("name: acme", "name: second"),
    )
    .unwrap();
    let (_, out) = run(&[]);
    assert!(
        out.contains(&format!("{}: CreditAccount/second: spec.cadence:", file("bad.yaml"))),
        "{out}"
    );
    std::fs::write(
        d.join("bad.yaml"),
        ACCOUNT_YAML
            .replace("cadence: 1d", "cadence: 1d, timezone: Mars/Olympus")
            .replace("name: acme", "name: second"),
    )
    .unwrap();
    let (_, out) = run(&[]);
    assert!(
        out.contains(&format!(
            "{}: CreditAccount/second: spec.timezone: unknown time zone",
            file("bad.yaml")
        )),
        "{out}"
    );
    std::fs::write(
        d.join("bad.yaml"),
        ACCOUNT_YAML
            .replace("creditsPerCycle: 10000", "creditsPerCycle: 12.5")
            .replace("name: acme", "name: second"),
    )
    .unwrap();
    let (_, out) = run(&[]);
    assert!(
        out.contains(&format!(
            "{}: CreditAccount/second: spec.creditsPerCycle:",
            file("bad.yaml")
        )),
        "{out}"
    );
    std::fs::remove_file(d.join("bad.yaml")).unwrap();

    let examples = Command::new(env!("CARGO_BIN_EXE_credit-operator"))
        .args(["validate", "--strict", concat!(env!("CARGO_MANIFEST_DIR"), "/examples")])
        .output()
        .unwrap();
    assert!(
        examples.status.success(),
        "examples/ must validate: {}",
        String::from_utf8_lossy(&examples.stdout)
    );
}

/// Sends `body` as a browser would: the given method, content type and
/// extra headers, no JSON helper.
fn browser(
    s: &Server,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value, ureq::http::HeaderMap) {
    let mut request = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{}{}", s.base, path));
    if let Some(t) = content_type {
        request = request.header("content-type", t);
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    // A connection of its own: the server may close one after an answer
    // that left the body unread, and a pooled reuse would race that close.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_connections(0)
        .build()
        .into();
    let mut response = agent.run(request.body(body.to_string()).unwrap()).unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        headers,
    )
}

#[test]
fn requests_a_browser_sends_for_another_site_change_nothing() {
    let env = Env::new();
    let s = env.start();
    let before = s.figures();
    let evil = [
        ("origin", "http://evil.example"),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-mode", "no-cors"),
    ];
    let other_port = format!(
        "http://127.0.0.1:{}",
        s.base.rsplit(':').next().unwrap().parse::<u16>().unwrap() + 1
    );
    let same_site = [("origin", other_port.as_str()), ("sec-fetch-site", "same-site")];
    type Case<'a> = (
        &'a str,
        String,
        Option<&'a str>,
        &'a [(&'a str, &'a str)],
        &'a str,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        // A form on another site posting to the reset.
        (
            "POST",
            format!("{A}/reset"),
            Some("application/x-www-form-urlencoded"),
            &evil,
            "x=1",
            403,
            "cross_site_request",
        ),
        // fetch(…, {mode: "no-cors", body: JSON.stringify(…)}) sends text/plain.
        (
            "POST",
            format!("{A}/usage"),
            Some("text/plain;charset=UTF-8"),
            &evil,
            r#"{"member":"u-alice","credits":"5000","idempotencyKey":"csrf-1"}"#,
            403,
            "cross_site_request",
        ),
        (
            "POST",
            format!("{A}/members"),
            Some("multipart/form-data; boundary=x"),
            &evil,
            "--x--",
            403,
            "cross_site_request",
        ),
        // Another port on the same host is another origin.
        (
            "POST",
            format!("{A}/reset"),
            Some("text/plain"),
            &same_site,
            "{}",
            403,
            "cross_site_request",
        ),
        (
            "POST",
            format!("{A}/reset"),
            Some("text/plain"),
            &[("origin", "null")],
            "{}",
            403,
            "cross_site_request",
        ),
        // An old browser that sends neither header still cannot post a
        // simple body: JSON only.
        (
            "POST",
            format!("{A}/reset"),
            Some("text/plain"),
            &[],
            "{}",
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            format!("{A}/usage"),
            Some("application/x-www-form-urlencoded"),
            &[],
            "member=u-alice&credits=5&idempotencyKey=csrf-2",
            415,
            "unsupported_media_type",
        ),
        // A preflight gets no CORS grant.
        (
            "OPTIONS",
            format!("{A}/reset"),
            None,
            &[
                ("origin", "http://evil.example"),
                ("access-control-request-method", "POST"),
            ],
            "",
            405,
            "method_not_allowed",
        ),
    ];
    for (method, path, content_type, headers, body, status, code) in cases {
        let (got, answer, response_headers) = browser(&s, method, &path, content_type, headers, body);
        assert_eq!(
            (got, answer["error"].as_str()),
            (status, Some(code)),
            "{method} {path} {headers:?}: {answer}"
        );
        assert!(answer["message"].is_string(), "{answer}");
        assert!(
            !response_headers.contains_key("access-control-allow-origin"),
            "{method} {path} granted CORS"
        );
    }
    assert_eq!(s.figures(), before, "a cross-site request changed state");

    // The API's own origin (the console) and plain clients are served.
    let own = s.base.clone();
    let (st, cycle, _) = browser(
        &s,
        "POST",
        &format!("{A}/reset"),
        Some("application/json"),
        &[("origin", own.as_str()), ("sec-fetch-site", "same-origin")],
        "{}",
    );
    assert_eq!((st, cycle["number"].as_u64()), (200, Some(2)), "{cycle}");
    let (st, _, _) = browser(
        &s,
        "POST",
        &format!("{A}/usage"),
        Some("application/json"),
        &[("sec-fetch-site", "none")],
        r#"{"member":"u-alice","credits":"5","idempotencyKey":"own-1"}"#,
    );
    assert_eq!(st, 200);
    // Reads stay open to anything that can reach the port.
    let (st, _, _) = browser(&s, "GET", &format!("{A}/overview"), None, &evil, "");
    assert_eq!(st, 200);
}

#[test]
fn answers_are_json_for_wrong_methods_long_targets_and_large_bodies() {
    let env = Env::new();
    let s = env.start();
    let (st, e, _) = browser(&s, "PUT", &format!("{A}/usage"), Some("application/json"), &[], "{}");
    assert_eq!((st, e["error"].as_str()), (405, Some("method_not_allowed")), "{e}");
    let long = format!("{A}/overview?x={}", "a".repeat(9000));
    let (st, e, _) = browser(&s, "GET", &long, None, &[], "");
    assert_eq!((st, e["error"].as_str()), (414, Some("uri_too_long")), "{e}");
    let big = format!(
        r#"{{"member":"u-alice","credits":"1","idempotencyKey":"{}"}}"#,
        "k".repeat(3 * 1024 * 1024)
    );
    let (st, e, _) = browser(&s, "POST", &format!("{A}/usage"), Some("application/json"), &[], &big);
    assert_eq!((st, e["error"].as_str()), (413, Some("payload_too_large")), "{e}");
    let (st, e) = usage(
        &s,
        "u-alice",
        json!({"credits": 1, "idempotencyKey": "t9", "occurredAt": "9999-12-31T23:59:59Z"}),
    );
    assert_eq!(st, 400);
    assert!(
        e["message"].as_str().unwrap().contains("from 0001-01-01 to 9999-12-30"),
        "{e}"
    );
}

#[test]
fn a_settled_hold_is_neither_settled_again_for_another_amount_nor_released() {
    let env = Env::new();
    let s = env.start();
    let (st, hold) = s.post(
        &format!("{A}/holds"),
        json!({"member": "u-alice", "credits": "100", "ttlSeconds": 60, "idempotencyKey": "h1"}),
    );
    assert_eq!(st, 201, "{hold}");
    let id = hold["id"].as_str().unwrap().to_string();
    let settle = |credits: &str| s.post(&format!("{A}/holds/{id}/settle"), json!({"credits": credits}));
    assert_eq!(settle("80").0, 200);
    let used = s.get(&format!("{A}/overview"))["used"].clone();
    let (st, replay) = settle("80");
    assert_eq!((st, replay["duplicate"].as_bool()), (200, Some(true)), "{replay}");
    let (st, e) = settle("90");
    assert_eq!((st, e["error"].as_str()), (409, Some("hold_closed")), "{e}");
    let (st, e) = s.call("DELETE", &format!("{A}/holds/{id}"), None);
    assert_eq!((st, e["error"].as_str()), (409, Some("hold_closed")), "{e}");
    assert_eq!(s.get(&format!("{A}/overview"))["used"], used, "settled once, for 80");
    assert_eq!(used, json!("80"));
}

#[test]
fn concurrent_enrolments_of_one_user_id_have_one_winner_and_the_rest_are_told() {
    let env = Env::new();
    let s = std::sync::Arc::new(env.start());
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let s = s.clone();
                scope.spawn(move || {
                    s.post(&format!("{A}/members"), json!({"user": {"id": "u-new", "email": format!("new{i}@example.com"), "name": format!("New {i}")}}))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won: Vec<&Value> = answers.iter().filter(|(st, _)| *st == 201).map(|(_, b)| b).collect();
    let lost = answers
        .iter()
        .filter(|(st, b)| *st == 409 && b["error"] == "duplicate_user_id")
        .count();
    assert_eq!((won.len(), lost), (1, 19), "{answers:?}");
    let members = s.get(&format!("{A}/groups/default/members"));
    let listed: Vec<&Value> = members["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["user"]["id"] == "u-new")
        .collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0]["user"]["email"], won[0]["user"]["email"],
        "the winner's details are kept"
    );

    // Twenty different people at once, while the folder is scanned: all
    // enrolled, none removed on the way.
    let answers: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let s = s.clone();
                scope.spawn(move || {
                    s.post(&format!("{A}/members"), json!({"user": {"id": format!("u-{i}"), "email": format!("p{i}@example.com"), "name": format!("P {i}")}})).0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|st| *st == 201), "{answers:?}");
    assert_eq!(s.get(&format!("{A}/groups/default/members"))["total"], json!(21));
    let conn = rusqlite::Connection::open(env.dir.path().join("credits.db")).unwrap();
    let removed: i64 = conn
        .query_row(
            "SELECT count(*) FROM journal WHERE body LIKE '%MemberRemoved%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(removed, 0, "a scan removed a member that was just enrolled");
    let leftovers: Vec<_> = std::fs::read_dir(env.manifests().join("enrolled"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn idle_and_half_sent_connections_are_closed() {
    use std::io::{Read, Write};
    let env = Env::new();
    let s = env.start_with_env(
        &[],
        &[
            ("CREDITS_HTTP_HEADER_TIMEOUT_MS", "300"),
            ("CREDITS_HTTP_BODY_TIMEOUT_MS", "300"),
        ],
    );
    let addr = s.base.trim_start_matches("http://").to_string();
    let closed_within = |stream: &mut std::net::TcpStream| -> (Duration, String) {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let started = Instant::now();
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        (started.elapsed(), String::from_utf8_lossy(&seen).to_string())
    };
    // Connected, silent.
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    let (after, _) = closed_within(&mut idle);
    assert!(
        after < Duration::from_secs(5),
        "an idle connection stayed open {after:?}"
    );
    // Half the headers.
    let mut half = std::net::TcpStream::connect(&addr).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    let (after, _) = closed_within(&mut half);
    assert!(
        after < Duration::from_secs(5),
        "half-sent headers held the connection {after:?}"
    );
    // Headers, and a tenth of the body.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(format!("POST {A}/usage HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"member\"").as_bytes()).unwrap();
    let (after, answer) = closed_within(&mut slow);
    assert!(
        after < Duration::from_secs(5),
        "a stalled body held the connection {after:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    // The server still serves.
    assert_eq!(s.call("GET", "/healthz", None).0, 200);
}

#[test]
fn listen_takes_a_host_name() {
    let env = Env::new();
    // `start_with` checks that the server announces a loopback address.
    let s = env.start_with(&["--listen", "localhost:0"]);
    assert!(s.base.starts_with("http://127.0.0.1:"), "{}", s.base);
    assert_eq!(s.call("GET", "/healthz", None).0, 200);
}

#[cfg(target_os = "linux")]
#[test]
fn an_idle_process_does_not_read_the_folder_again_and_again() {
    let env = Env::new();
    let s = env.start();
    let ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", s.child.id())).unwrap();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    std::thread::sleep(Duration::from_secs(2));
    let before = ticks();
    std::thread::sleep(Duration::from_secs(3));
    let used = ticks() - before;
    // 300 ticks would be a whole core; a process that reads the folder
    // on its own reads (inotify access events) used about 200.
    assert!(used < 15, "{used} ticks of CPU in 3 s idle");
    // And a change is still seen without a poll of the folder.
    env.write(
        "groups.yaml",
        &GROUPS_YAML.replace("monthlyCredits: 4000", "monthlyCredits: 4100"),
    );
    s.wait_for("the edit", |s| {
        s.get(&format!("{A}/groups"))["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "ml" && g["monthlyCredits"] == "4100")
    });
}

/// Lines that differ between two versions of a file (same line count).
fn changed_lines(before: &str, after: &str) -> Vec<(String, String)> {
    assert_eq!(before.lines().count(), after.lines().count(), "{after}");
    before
        .lines()
        .zip(after.lines())
        .filter(|(a, b)| a != b)
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

const COMMENTED_GROUPS_YAML: &str = "# Budgets of the team account.\napiVersion: credits.alchemi.io/v1alpha1\nkind: CreditGroup\nmetadata:\n  name: default\n  namespace: team\nspec:\n  monthlyCredits: 1000 # everyone else\n---\n# The ML team.\napiVersion: credits.alchemi.io/v1alpha1\nkind: CreditGroup\nmetadata:\n  name: ml\n  namespace: team\nspec:\n  monthlyCredits: \"4000\"   # agreed in the budget review\n  extraCredits: 500\n  autoApproveReserve: 300\n";

#[test]
fn edits_through_the_api_change_one_value_in_its_file_and_the_figures_follow() {
    let env = Env::new();
    env.write("groups.yaml", COMMENTED_GROUPS_YAML);
    let server = env.start();
    let members_file = env.manifests().join("people/members.yaml");
    let groups_file = env.manifests().join("groups.yaml");
    let ml = |s: &Server| {
        s.get(&format!("{A}/groups"))["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == "ml")
            .cloned()
            .unwrap()
    };
    let before = ml(&server);
    assert_eq!(
        (before["distributed"].as_str(), before["available"].as_str()),
        (Some("3100"), Some("1400"))
    );

    // A member in a flow-style file: the one value changes, in its line.
    let text = std::fs::read_to_string(&members_file).unwrap();
    let (status, m) = server.call(
        "PATCH",
        &format!("{A}/members/u-alice"),
        Some(json!({"monthlyCredits": "2500.25"})),
    );
    assert_eq!(status, 200, "{m}");
    assert_eq!(
        (m["monthlyCredits"].as_str(), m["remaining"].as_str()),
        (Some("2500.25"), Some("2600.25"))
    );
    let after = std::fs::read_to_string(&members_file).unwrap();
    let changed = changed_lines(&text, &after);
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(
        changed[0].1,
        changed[0]
            .0
            .replace("monthlyCredits: 2000", "monthlyCredits: \"2500.25\""),
        "{changed:?}"
    );
    let now = ml(&server);
    assert_eq!(
        (now["distributed"].as_str(), now["available"].as_str()),
        (Some("3600.25"), Some("899.75"))
    );

    // A group in a commented block file: quotes and comments stay.
    let text = std::fs::read_to_string(&groups_file).unwrap();
    let (status, g) = server.call(
        "PATCH",
        &format!("{A}/groups/ml"),
        Some(json!({"monthlyCredits": 4200, "autoApproveReserve": "250"})),
    );
    assert_eq!(status, 200, "{g}");
    assert_eq!(
        (
            g["budget"].as_str(),
            g["available"].as_str(),
            g["autoApproveReserve"].as_str()
        ),
        (Some("4700"), Some("1099.75"), Some("250"))
    );
    assert_eq!(
        changed_lines(&text, &std::fs::read_to_string(&groups_file).unwrap()),
        vec![
            (
                "  monthlyCredits: \"4000\"   # agreed in the budget review".into(),
                "  monthlyCredits: \"4200\"   # agreed in the budget review".into()
            ),
            ("  autoApproveReserve: 300".into(), "  autoApproveReserve: 250".into()),
        ]
    );

    // Moving a member to another group moves its figures with it.
    let (status, m) = server.call(
        "PATCH",
        &format!("{A}/members/u-bob"),
        Some(json!({"group": "default"})),
    );
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["group"], "default");
    let default = server.get(&format!("{A}/groups/default/members"));
    assert_eq!(default["items"][0]["user"]["id"], "u-bob");
    assert_eq!(ml(&server)["distributed"], "2600.25");

    // The account: a new limit at once, the same cycle.
    let cycle = server.get(&format!("{A}/overview"))["cycle"]["number"]
        .as_u64()
        .unwrap();
    let (status, o) = server.call(
        "PATCH",
        &format!("{A}/settings"),
        Some(json!({"creditsPerCycle": "12000", "signupCredits": "75"})),
    );
    assert_eq!(status, 200, "{o}");
    assert_eq!(
        (
            o["creditsPerCycle"].as_str(),
            o["balance"].as_str(),
            o["settings"]["signupCredits"].as_str()
        ),
        (Some("12000"), Some("12000"), Some("75"))
    );
    assert_eq!(o["cycle"]["number"].as_u64(), Some(cycle));
    // A restart reads the files as edited.
    server.stop();
    let server = env.start();
    assert_eq!(server.get(&format!("{A}/overview"))["creditsPerCycle"], "12000");
    assert_eq!(ml(&server)["monthlyCredits"], "4200");
}

#[test]
fn costs_break_a_cycle_down_by_model_provider_group_and_member() {
    let env = Env::new();
    let s = env.start();
    let spend = |member: &str, body: Value| {
        let (st, u) = usage(&s, member, body);
        assert_eq!(st, 200, "{u}");
    };
    // Factor 100: a dollar is 100 credits.
    spend(
        "u-alice",
        json!({"costUsd": "0.5", "idempotencyKey": "c1", "model": "gpt-4o", "provider": "openai", "tags": {"team": "search"}}),
    );
    spend(
        "u-bob",
        json!({"costUsd": "0.25", "idempotencyKey": "c2", "model": "gpt-4o", "provider": "openai"}),
    );
    spend(
        "u-bob",
        json!({"costUsd": "1", "idempotencyKey": "c3", "model": "claude-3.5-sonnet", "provider": "anthropic"}),
    );
    spend("u-alice", json!({"credits": "3", "idempotencyKey": "c4"}));
    // A retry counts once; other labels under the same key are a conflict.
    spend(
        "u-alice",
        json!({"costUsd": 0.50, "idempotencyKey": "c1", "model": "gpt-4o", "provider": "openai", "tags": {"team": "search"}}),
    );
    let (st, e) = usage(
        &s,
        "u-alice",
        json!({"costUsd": "0.5", "idempotencyKey": "c1", "model": "gpt-4o-mini", "provider": "openai", "tags": {"team": "search"}}),
    );
    assert_eq!((st, e["error"].as_str()), (409, Some("idempotency_conflict")), "{e}");

    let costs = |query: &str| {
        let (st, c) = s.call("GET", &format!("{A}/costs{query}"), None);
        assert_eq!(st, 200, "{query}: {c}");
        c
    };
    let rows = |c: &Value| -> Vec<(String, String, String, u64)> {
        c["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["key"].as_str().unwrap().to_string(),
                    i["credits"].as_str().unwrap().to_string(),
                    i["costUsd"].as_str().unwrap().to_string(),
                    i["events"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let row = |k: &str, c: &str, usd: &str, n: u64| (k.to_string(), c.to_string(), usd.to_string(), n);
    let by_model = costs("");
    assert_eq!(by_model["groupBy"], "model");
    assert_eq!(by_model["cycle"]["number"], 1);
    assert_eq!(
        rows(&by_model),
        vec![
            row("claude-3.5-sonnet", "100", "1", 1),
            row("gpt-4o", "75", "0.75", 2),
            row("(none)", "3", "0", 1)
        ]
    );
    assert_eq!(
        by_model["total"],
        json!({"credits": "178", "costUsd": "1.75", "events": 4})
    );
    assert_eq!(
        (by_model["count"].as_u64(), by_model["page"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(
        rows(&costs("?groupBy=provider")),
        vec![
            row("anthropic", "100", "1", 1),
            row("openai", "75", "0.75", 2),
            row("(none)", "3", "0", 1)
        ]
    );
    assert_eq!(rows(&costs("?groupBy=group")), vec![row("ml", "178", "1.75", 4)]);
    let members = costs("?groupBy=member");
    assert_eq!(
        rows(&members),
        vec![row("u-bob", "125", "1.25", 2), row("u-alice", "53", "0.5", 2)]
    );
    assert_eq!(members["items"][0]["label"], "Bob");
    let second = costs("?groupBy=member&pageSize=1&page=2");
    assert_eq!(
        (rows(&second), second["count"].as_u64()),
        (vec![row("u-alice", "53", "0.5", 2)], Some(2))
    );
    // The overview agrees with the breakdown's total.
    assert_eq!(s.get(&format!("{A}/overview"))["used"], "178");

    // Bad input names the field and records nothing.
    for (body, field) in [
        (
            json!({"credits": "1", "idempotencyKey": "b1", "model": "(other)"}),
            "model",
        ),
        (
            json!({"credits": "1", "idempotencyKey": "b2", "provider": "a".repeat(65)}),
            "provider",
        ),
        (
            json!({"credits": "1", "idempotencyKey": "b3", "tags": {"team": "a\u{7}b"}}),
            "tags.team",
        ),
        (
            json!({"credits": "1", "idempotencyKey": "b4", "tags": {"a": "1", "b": "2", "c": "3", "d": "4", "e": "5", "f": "6", "g": "7", "h": "8", "i": "9"}}),
            "tags",
        ),
        (
            json!({"credits": "1", "idempotencyKey": "b5", "tags": {"team": 5}}),
            "tags",
        ),
    ] {
        let (st, e) = usage(&s, "u-alice", body.clone());
        assert_eq!(st, 400, "{body}: {e}");
        assert!(
            e["message"].as_str().unwrap_or_default().contains(field) || e["field"] == field,
            "{body}: {e}"
        );
    }
    for query in ["?groupBy=team", "?pageSize=501", "?cycle=x"] {
        let (st, e) = s.call("GET", &format!("{A}/costs{query}"), None);
        assert_eq!(st, 400, "{query}: {e}");
    }
    assert_eq!(s.call("GET", &format!("{A}/costs?cycle=9"), None).0, 404);
    assert_eq!(costs("")["total"]["events"], 4);

    // A reset closes the cycle with its breakdown; a restart keeps both.
    let (st, _) = s.post(&format!("{A}/reset"), json!({}));
    assert_eq!(st, 200);
    spend(
        "u-alice",
        json!({"costUsd": "0.01", "idempotencyKey": "c5", "model": "gpt-4o"}),
    );
    drop(s);
    let s = env.start();
    let (_, closed) = s.call("GET", &format!("{A}/costs?cycle=1"), None);
    assert_eq!(rows(&closed), rows(&by_model));
    assert_eq!(closed["total"], by_model["total"]);
    let (_, now) = s.call("GET", &format!("{A}/costs"), None);
    assert_eq!(
        (now["cycle"]["number"].as_u64(), rows(&now)),
        (Some(2), vec![row("gpt-4o", "1", "0.01", 1)])
    );

    // Metrics name the top 50 models per account and sum the rest as other:
    // 53 models of 1 credit each, ties in key order.
    for i in 0..52 {
        let (st, _) = usage(
            &s,
            "u-bob",
            json!({"credits": "1", "idempotencyKey": format!("m{i}"), "model": format!("m-{i:02}")}),
        );
        assert_eq!(st, 200);
    }
    let (_, metrics) = s.call("GET", "/metrics", None);
    let metrics = metrics.as_str().unwrap().to_string();
    let lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("credits_model_used{"))
        .collect();
    assert_eq!(lines.len(), 51, "{lines:#?}");
    assert!(
        lines.contains(&r#"credits_model_used{account="team/acme",model="gpt-4o"} 1.0"#),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&r#"credits_model_used{account="team/acme",model="m-48"} 1.0"#),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&r#"credits_model_used{account="team/acme",model="other"} 3.0"#),
        "{lines:#?}"
    );
    assert!(
        metrics.contains(r#"credits_group_cost_usd{account="team/acme",group="ml"} 0.01"#),
        "{metrics}"
    );
}

#[test]
fn a_cadence_change_through_the_api_starts_the_next_cycle() {
    let env = Env::new();
    let server = env.start();
    usage(&server, "u-alice", json!({"credits": "40", "idempotencyKey": "k1"}));
    let before = server.get(&format!("{A}/overview"));
    let n = before["cycle"]["number"].as_u64().unwrap();
    let (status, o) = server.call("PATCH", &format!("{A}/settings"), Some(json!({"cadence": "1w"})));
    assert_eq!(status, 200, "{o}");
    assert_eq!(o["cycle"]["number"].as_u64(), Some(n + 1));
    assert_eq!(
        (o["used"].as_str(), o["settings"]["cadence"].as_str()),
        (Some("0"), Some("1w"))
    );
    assert_eq!(o["cycle"]["start"], "2026-11-26T10:00:00Z");
    assert_eq!(o["cycle"]["end"], "2026-12-03T10:00:00Z");
    let text = std::fs::read_to_string(env.manifests().join("account.yaml")).unwrap();
    assert!(text.contains("cadence: 1w,"), "{text}");
    // The closed cycle keeps its usage.
    assert_eq!(server.get(&format!("{A}/overview?cycle={n}"))["used"], "40");
}

#[test]
fn bad_edits_are_refused_with_the_field_and_change_nothing() {
    let env = Env::new();
    // No file declares the default group: the operator makes it.
    env.write("groups.yaml", "apiVersion: credits.alchemi.io/v1alpha1\nkind: CreditGroup\nmetadata: {name: ml, namespace: team}\nspec: {monthlyCredits: 4000, extraCredits: 500, autoApproveReserve: 300}\n");
    let server = env.start();
    let files = || {
        ["account.yaml", "groups.yaml", "people/members.yaml"]
            .map(|f| std::fs::read_to_string(env.manifests().join(f)).unwrap())
    };
    let (files_before, figures_before) = (files(), server.figures());
    let m = format!("{A}/members/u-alice");
    let cases: Vec<(String, Value, u16, &str, Option<&str>)> = vec![
        (
            m.clone(),
            json!({"monthlyCredits": "-5"}),
            400,
            "invalid_field",
            Some("monthlyCredits"),
        ),
        (
            m.clone(),
            json!({"monthlyCredits": "1.0000000001"}),
            400,
            "invalid_field",
            Some("monthlyCredits"),
        ),
        (
            m.clone(),
            json!({"extraCredits": "lots"}),
            400,
            "invalid_field",
            Some("extraCredits"),
        ),
        (
            m.clone(),
            json!({"monthlyCredits": "1e30"}),
            400,
            "invalid_field",
            Some("monthlyCredits"),
        ),
        (
            m.clone(),
            json!({"monthlyCredits": "9999999999999999999"}),
            400,
            "invalid_field",
            Some("monthlyCredits"),
        ),
        (m.clone(), json!({"group": "nope"}), 400, "invalid_field", Some("group")),
        (
            m.clone(),
            json!({"colour": "red"}),
            400,
            "invalid_field",
            Some("colour"),
        ),
        (m.clone(), json!({}), 400, "invalid_field", Some("body")),
        (
            format!("{A}/members/u-nobody"),
            json!({"monthlyCredits": "1"}),
            404,
            "not_found",
            None,
        ),
        (
            format!("{A}/groups/nope"),
            json!({"monthlyCredits": "1"}),
            404,
            "not_found",
            None,
        ),
        (
            format!("{A}/groups/default"),
            json!({"monthlyCredits": "1"}),
            409,
            "not_in_a_file",
            None,
        ),
        (
            format!("{A}/settings"),
            json!({"cadence": "fortnight"}),
            400,
            "invalid_field",
            Some("cadence"),
        ),
        (
            format!("{A}/settings"),
            json!({"timezone": "Mars/Base"}),
            400,
            "invalid_field",
            Some("timezone"),
        ),
        (
            format!("{A}/settings"),
            json!({"creditFactor": "-1"}),
            400,
            "invalid_field",
            Some("creditFactor"),
        ),
        (
            "/v1/namespaces/team/accounts/other/settings".into(),
            json!({"creditsPerCycle": "1"}),
            404,
            "not_found",
            None,
        ),
    ];
    for (path, body, status, code, field) in cases {
        let (got, answer) = server.call("PATCH", &path, Some(body.clone()));
        assert_eq!(got, status, "PATCH {path} {body}: {answer}");
        assert_eq!(answer["error"], code, "PATCH {path} {body}: {answer}");
        if let Some(field) = field {
            assert_eq!(answer["field"], field, "PATCH {path} {body}: {answer}");
            assert!(
                answer["message"].as_str().unwrap().starts_with(&format!("{field}: ")),
                "{answer}"
            );
        }
    }
    assert_eq!(files(), files_before);
    assert_eq!(server.figures(), figures_before);
}

#[test]
fn an_object_a_gitops_tool_manages_is_edited_in_git_unless_forced() {
    let env = Env::new();
    env.write(
        "people/carol.yaml",
        "apiVersion: credits.alchemi.io/v1alpha1\nkind: MemberAllocation\nmetadata:\n  name: carol\n  namespace: team\n  labels:\n    kustomize.toolkit.fluxcd.io/name: budgets\nspec:\n  group: ml\n  user: {id: u-carol, email: carol@example.com, name: Carol}\n  monthlyCredits: 300\n",
    );
    env.write(
        "groups.yaml",
        &GROUPS_YAML.replace("metadata: {name: ml, namespace: team}", "metadata: {name: ml, namespace: team, annotations: {argocd.argoproj.io/tracking-id: 'budgets:credits.alchemi.io/CreditGroup:team/ml'}}"),
    );
    let server = env.start();
    let before = std::fs::read_to_string(env.manifests().join("people/carol.yaml")).unwrap();
    let (status, e) = server.call(
        "PATCH",
        &format!("{A}/members/u-carol"),
        Some(json!({"monthlyCredits": "400"})),
    );
    assert_eq!(status, 409, "{e}");
    assert_eq!(e["error"], "managed_by_gitops");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("managed by Flux: change it in git"),
        "{e}"
    );
    let (status, e) = server.call("PATCH", &format!("{A}/groups/ml"), Some(json!({"monthlyCredits": "1"})));
    assert_eq!((status, e["error"].as_str()), (409, Some("managed_by_gitops")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("Argo CD"), "{e}");
    assert_eq!(
        std::fs::read_to_string(env.manifests().join("people/carol.yaml")).unwrap(),
        before
    );
    let (status, m) = server.call(
        "PATCH",
        &format!("{A}/members/u-carol"),
        Some(json!({"monthlyCredits": "400", "force": true})),
    );
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["monthlyCredits"], "400");
    assert_eq!(
        changed_lines(
            &before,
            &std::fs::read_to_string(env.manifests().join("people/carol.yaml")).unwrap()
        ),
        vec![("  monthlyCredits: 300".into(), "  monthlyCredits: 400".into())]
    );
}

/// Reads `changed` events from `…/events` for `window`, posting usage
/// meanwhile; answers the data of each event.
fn follow_events(server: &Server, window: Duration, during: impl FnOnce()) -> Vec<u64> {
    use std::io::{Read, Write};
    let address = server.base.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    write!(
        stream,
        "GET {A}/events HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let reader = std::thread::spawn(move || {
        let deadline = Instant::now() + window;
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        String::from_utf8_lossy(&text).to_string()
    });
    std::thread::sleep(Duration::from_millis(200));
    during();
    let text = reader.join().unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_lowercase().contains("content-type: text/event-stream"),
        "{text}"
    );
    text.split("event: changed\ndata: ")
        .skip(1)
        .map(|rest| rest.lines().next().unwrap().trim().parse().unwrap())
        .collect()
}

#[test]
fn events_announce_changes_at_most_four_a_second() {
    let env = Env::new();
    let server = env.start();
    let started = Instant::now();
    let mut elapsed = Duration::ZERO;
    let events = follow_events(&server, Duration::from_millis(2500), || {
        for i in 0..60 {
            usage(
                &server,
                "u-alice",
                json!({"credits": "1", "idempotencyKey": format!("e{i}")}),
            );
            std::thread::sleep(Duration::from_millis(15));
        }
        elapsed = started.elapsed();
    });
    // One on connecting, then changes coalesced to one per 250 ms.
    assert!(events.len() >= 3, "{events:?}");
    let most = 2 + (2.5f64 / 0.25) as usize;
    assert!(
        events.len() <= most,
        "{} events in 2.5 s (60 usages over {elapsed:?}): {events:?}",
        events.len()
    );
    assert!(events.windows(2).all(|w| w[0] < w[1]), "{events:?}");
    // A read answers the figures the last event announced.
    assert_eq!(server.get(&format!("{A}/groups/ml/members"))["items"][0]["used"], "60");
    // Nothing moves: nothing is announced but the first.
    let quiet = follow_events(&server, Duration::from_millis(800), || {});
    assert_eq!(quiet.len(), 1, "{quiet:?}");
    let (status, _) = server.call("GET", "/v1/namespaces/team/accounts/other/events", None);
    assert_eq!(status, 404);
}

#[test]
fn the_console_is_served_to_anyone_and_its_data_needs_a_token() {
    let env = Env::new();
    let tokens = env.dir.path().join("tokens");
    std::fs::write(
        &tokens,
        "admin-token-0123456789 admin alice\ngateway-token-0123456789 gateway gw\n",
    )
    .unwrap();
    let mut server = env.start_with(&["--token-file", tokens.to_str().unwrap()]);
    let page = server.agent.get(format!("{}/", server.base)).call().unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("connect-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    let html = page.into_body().read_to_string().unwrap();
    assert!(
        html.contains("<script type=\"module\" src=\"/console/app.js\">"),
        "{html}"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing from another host"
    );
    for file in ["/console/app.js", "/console/app.css", "/console/icon.svg"] {
        let (status, _) = server.call("GET", file, None);
        assert_eq!(status, 200, "{file}");
    }
    let (status, _) = server.call("GET", "/v1/whoami", None);
    assert_eq!(status, 401);
    let (status, _) = server.call("GET", "/v1/accounts", None);
    assert_eq!(status, 401);
    server.token = Some("gateway-token-0123456789".into());
    assert_eq!(server.get("/v1/whoami"), json!({"name": "gw", "role": "gateway"}));
    assert_eq!(
        server.get("/v1/accounts"),
        json!({"items": [{"namespace": "team", "name": "acme"}]})
    );
    let (status, e) = server.call("PATCH", &format!("{A}/settings"), Some(json!({"creditsPerCycle": "1"})));
    assert_eq!((status, e["error"].as_str()), (403, Some("forbidden")));
    server.token = Some("admin-token-0123456789".into());
    assert_eq!(server.get("/v1/whoami"), json!({"name": "alice", "role": "admin"}));
}
