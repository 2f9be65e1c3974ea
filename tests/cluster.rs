//! The operator against a real kube-apiserver and etcd (see
//! `tests/support/kube.rs`): the CRDs and their rules, the chart and its
//! admission policy, `credit-operator run` under the chart's RBAC, leader
//! election, the in-cluster API's TokenReview and SubjectAccessReview,
//! `kubectl credits`, restarts and compaction, and scale.

mod support;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::kube::ControlPlane;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
const NS: &str = "ml-platform";

/// Starts a control plane or returns from the test (skipped).
macro_rules! control_plane {
    () => {
        match ControlPlane::start() {
            Some(plane) => plane,
            None => return,
        }
    };
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls `check` until it returns `Some`, or panics naming `what`.
fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The cells of the row of `kubectl get`'s table whose first cell is `name`.
fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&name))
        .unwrap_or_else(|| panic!("no row {name} in:\n{table}"))
}

fn yaml_to_json_docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|doc| {
            let v: Value = serde::Deserialize::deserialize(doc).ok()?;
            (!v.is_null()).then_some(v)
        })
        .collect()
}

#[test]
fn crds_are_established_documented_and_print_the_examples_figures() {
    let plane = control_plane!();
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/credits.alchemi.io.yaml");
    let out = plane.kubectl(&["apply", "--server-side", "--field-manager=test", "-f", crds]);
    assert!(out.status.success(), "{}", text(&out));
    // The server judges the schemas: no unknown formats, nothing dropped.
    assert!(
        !text(&out).contains("Warning"),
        "applying the CRDs warned:\n{}",
        text(&out)
    );
    plane.install_crds();
    let list: Value = serde_json::from_str(&plane.kubectl_ok(&["get", "crd", "-o", "json"])).unwrap();
    let established: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Established" && c["status"] == "True"))
        })
        .filter_map(|c| c["metadata"]["name"].as_str())
        .collect();
    assert_eq!(
        established,
        [
            "creditaccounts.credits.alchemi.io",
            "creditgroups.credits.alchemi.io",
            "creditrequests.credits.alchemi.io",
            "memberallocations.credits.alchemi.io"
        ]
    );

    // kubectl explain shows the field docs of the Rust types (once the
    // server has published the new schemas in its OpenAPI document).
    for (field, doc) in [
        ("creditaccounts.spec.cadence", "How often the cycle resets"),
        (
            "creditaccounts.spec.creditsPerCycle",
            "The account's credit limit per cycle",
        ),
        (
            "creditgroups.spec.autoApproveReserve",
            "Credits per cycle that requests may be granted without a human",
        ),
        (
            "creditrequests.status.approval",
            "The approver's decision (set by a status patch",
        ),
        (
            "memberallocations.spec.user.id",
            "The user id gateways record usage against",
        ),
    ] {
        let explain = eventually(&format!("kubectl explain {field}"), Duration::from_secs(60), || {
            let out = plane.kubectl(&["explain", field]);
            out.status.success().then(|| text(&out))
        });
        assert!(explain.contains(doc), "{explain}");
    }

    // The examples with the operator's figures: `kubectl get` is the dashboard.
    let cluster = Cluster::with_chart(plane, &[]);
    cluster.plane.namespace(NS);
    cluster.apply_examples();
    let operator = cluster.operator(&OperatorRun::sqlite(&cluster));
    cluster.wait_for_status("creditaccounts", "acme", |s| s["used"] == "0");
    cluster.wait_for_status("creditgroups", "research", |s| s["distributed"] == "41000");
    cluster.wait_for_status("creditrequests", "ada-training-run", |s| s["phase"] == "AutoApproved");
    let accounts = cluster.plane.kubectl_ok(&["get", "creditaccounts", "-n", NS]);
    let acme = row(&accounts, "acme");
    // NAME CADENCE CYCLE-END LIMIT USED BALANCE USAGE%
    assert_eq!(acme[0], "acme", "{accounts}");
    assert_eq!(acme[1], "CalendarMonth", "{accounts}");
    assert!(
        acme[2].ends_with('Z') && acme[2].len() == 20,
        "the cycle end is a time: {accounts}"
    );
    assert_eq!(&acme[3..], ["100000", "0", "100000", "0"], "{accounts}");
    let groups = cluster.plane.kubectl_ok(&["get", "creditgroups", "-n", NS]);
    let research = row(&groups, "research");
    // NAME MONTHLY EXTRA DISTRIBUTED AVAILABLE AUTO-APPROVE USED MEMBERS
    // ada-training-run (1500) came out of the 2000 auto-approve reserve.
    assert_eq!(
        research,
        ["research", "40000", "5000", "41000", "4000", "500", "0", "4"],
        "{groups}"
    );
    let members = cluster.plane.kubectl_ok(&["get", "memberallocations", "-n", NS]);
    let ada = row(&members, "ada");
    // NAME GROUP EMAIL MONTHLY USED REMAINING (12000 + 2000 extra + 1500 granted)
    assert_eq!(
        ada,
        ["ada", "research", "ada@acme.example", "12000", "0", "15500"],
        "{members}"
    );
    let requests = cluster.plane.kubectl_ok(&["get", "creditrequests", "-n", NS]);
    let ada_request = row(&requests, "ada-training-run");
    // NAME MEMBER CREDITS APPROVED PHASE AGE
    assert_eq!(
        &ada_request[..5],
        ["ada-training-run", "ada", "1500", "1500", "AutoApproved"],
        "{requests}"
    );
    operator.assert_no_forbidden();
}

#[test]
fn the_real_server_enforces_every_rule_of_the_crds() {
    let plane = control_plane!();
    plane.install_crds();
    plane.namespace("team");
    let mut checked = 0;
    for case in support::cel_cases::creates() {
        let yaml = serde_json::to_string(&case.object).unwrap();
        // A fresh name per case: valid ones are admitted and stay.
        let out = plane.kubectl_with(
            &plane.admin_kubeconfig,
            &["create", "-f", "-", "--dry-run=server", "--validate=strict"],
            Some(&yaml),
        );
        match case.refused {
            None => assert!(out.status.success(), "{yaml} was refused: {}", text(&out)),
            Some((field, message)) => {
                let said = text(&out);
                assert!(!out.status.success(), "{yaml} was admitted");
                assert!(
                    said.contains(field) && said.contains(message),
                    "{yaml}: the refusal should name {field} and say {message:?}:\n{said}"
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 20, "{checked} cases");

    // An unknown field is refused by strict field validation, naming it.
    let typo = r#"{"apiVersion": "credits.alchemi.io/v1alpha1", "kind": "CreditGroup",
        "metadata": {"name": "typo", "namespace": "team"},
        "spec": {"monthlyCredits": 10, "autoAprove": 5}}"#;
    let out = plane.kubectl_with(&plane.admin_kubeconfig, &["create", "-f", "-"], Some(typo));
    assert!(!out.status.success(), "an unknown field was admitted");
    assert!(text(&out).contains("autoAprove"), "{}", text(&out));

    // Update rules: a request's spec and a set approval are immutable, and
    // so is a member's user id.
    plane.apply_ok(&serde_json::to_string(&support::cel_cases::request(json!(500), "training run")).unwrap());
    let admin = &plane.admin_kubeconfig;
    let respec = plane.patch(
        admin,
        "creditrequest",
        "team",
        "more",
        false,
        r#"{"spec":{"credits":900}}"#,
    );
    assert!(!respec.status.success());
    assert!(text(&respec).contains("spec is immutable"), "{}", text(&respec));
    let approve = |decision: &str| {
        let patch = json!({"status": {"approval": {"decision": decision}}}).to_string();
        plane.patch(admin, "creditrequest", "team", "more", true, &patch)
    };
    let first = approve("Approve");
    assert!(first.status.success(), "{}", text(&first));
    let second = approve("Deny");
    assert!(!second.status.success(), "a set approval changed");
    assert!(
        text(&second).contains("status.approval cannot change once set"),
        "{}",
        text(&second)
    );
    plane.apply_ok(&serde_json::to_string(&support::cel_cases::member("u-1")).unwrap());
    let reid = plane.patch(
        admin,
        "memberallocation",
        "team",
        "alice",
        false,
        r#"{"spec":{"user":{"id":"u-2"}}}"#,
    );
    assert!(!reid.status.success());
    assert!(text(&reid).contains("user.id is immutable"), "{}", text(&reid));
}

/// A control plane with the chart's objects installed (its CRDs, RBAC,
/// admission policy) and a ServiceAccount token for the operator.
struct Cluster {
    plane: ControlPlane,
    /// The chart's release namespace and name.
    release_ns: String,
    release: String,
    /// The rendered chart, as applied.
    rendered: Vec<Value>,
    /// A kubeconfig that authenticates as the chart's ServiceAccount.
    operator_kubeconfig: PathBuf,
}

fn render_chart(release: &str, namespace: &str, values: &[&str]) -> String {
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/credit-operator");
    // As `helm install` would against this cluster, which serves
    // MutatingAdmissionPolicy.
    let mut args = vec![
        "template",
        release,
        chart,
        "--namespace",
        namespace,
        "--include-crds",
        "--api-versions",
        "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy",
    ];
    for v in values {
        args.push("--set");
        args.push(v);
    }
    let out = Command::new(support::kube::helm()).args(&args).output().expect("helm");
    assert!(out.status.success(), "helm template: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

impl Cluster {
    fn with_chart(plane: ControlPlane, values: &[&str]) -> Cluster {
        Cluster::with_release(plane, "credit", "credits", values)
    }

    fn with_release(plane: ControlPlane, release: &str, namespace: &str, values: &[&str]) -> Cluster {
        let rendered = render_chart(release, namespace, values);
        plane.namespace(namespace);
        let out = plane.apply(&rendered);
        assert!(out.status.success(), "the chart was refused: {}", text(&out));
        plane.install_crds();
        // RBAC takes effect when the server's caches have the new
        // bindings: wait for that, or the operator's first calls race it.
        let operator = format!("--as=system:serviceaccount:{namespace}:{release}");
        for (verb, resource) in [
            ("patch", "creditaccounts.credits.alchemi.io/status"),
            ("watch", "creditrequests.credits.alchemi.io"),
            ("create", "events.events.k8s.io"),
        ] {
            eventually(&format!("RBAC: {verb} {resource}"), Duration::from_secs(30), || {
                let out = plane.kubectl(&["auth", "can-i", verb, resource, "-A", &operator]);
                out.status.success().then_some(())
            });
        }
        // The admission policies learn the new kinds a moment after the
        // CRDs are served (until then a matching write answers 503).
        plane.apply_ok(
            &json!({"apiVersion": "credits.alchemi.io/v1alpha1", "kind": "CreditRequest",
                    "metadata": {"name": "probe", "namespace": namespace},
                    "spec": {"member": "probe", "credits": 1, "reason": "probe"}})
            .to_string(),
        );
        eventually(
            "the admission policies to know CreditRequest",
            Duration::from_secs(60),
            || {
                let out = plane.kubectl(&[
                    "patch",
                    "creditrequest",
                    "probe",
                    "-n",
                    namespace,
                    "--subresource=status",
                    "--type=merge",
                    "--dry-run=server",
                    "-p",
                    r#"{"status":{"approval":{"decision":"Deny","by":"admin"}}}"#,
                ]);
                (!text(&out).contains("ServiceUnavailable")).then_some(())
            },
        );
        plane.kubectl_ok(&["delete", "creditrequest", "probe", "-n", namespace]);
        let token = plane.token(namespace, release, None);
        let operator_kubeconfig = plane.kubeconfig("operator", &token);
        Cluster {
            plane,
            release_ns: namespace.into(),
            release: release.into(),
            rendered: yaml_to_json_docs(&rendered),
            operator_kubeconfig,
        }
    }

    /// The container args of the chart's Deployment.
    fn chart_args(&self) -> Vec<String> {
        self.rendered
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .and_then(|d| d["spec"]["template"]["spec"]["containers"][0]["args"].as_array())
            .expect("the chart's Deployment has args")
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect()
    }

    /// The chart (SQLite, Kubernetes auth) and `examples/` applied.
    fn with_examples(plane: ControlPlane) -> Cluster {
        let cluster = Cluster::with_chart(plane, &[]);
        cluster.plane.namespace(NS);
        cluster.apply_examples();
        cluster
    }

    fn apply_examples(&self) {
        let out = self
            .plane
            .kubectl(&["apply", "--server-side", "--field-manager=test", "-R", "-f", EXAMPLES]);
        assert!(out.status.success(), "{}", text(&out));
    }

    fn operator(&self, run: &OperatorRun) -> Operator {
        Operator::start(self, run)
    }

    fn status(&self, plural: &str, name: &str) -> Value {
        self.plane
            .object(plural, NS, name)
            .map(|o| o["status"].clone())
            .unwrap_or(Value::Null)
    }

    fn wait_for_status(&self, plural: &str, name: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let last = self.status(plural, name);
            if ok(&last) {
                return last;
            }
            assert!(
                Instant::now() < deadline,
                "{plural}/{name} status never matched; last:\n{last:#}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// How to start `credit-operator run`.
struct OperatorRun {
    ledger: String,
    /// Extra arguments after the chart's.
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl OperatorRun {
    fn sqlite(cluster: &Cluster) -> OperatorRun {
        OperatorRun {
            ledger: format!("sqlite://{}", cluster.plane.dir.path().join("credits.db").display()),
            extra: vec!["--status-staleness-seconds=1".into()],
            env: Vec::new(),
        }
    }
}

/// `credit-operator run` as a real process, out of cluster, with the
/// chart's args and its ServiceAccount's token. Killed on drop.
struct Operator {
    child: Option<Child>,
    log: PathBuf,
    port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

impl Operator {
    fn start(cluster: &Cluster, run: &OperatorRun) -> Operator {
        let port = free_port();
        // The chart's args, where `run.extra` names a flag its value wins.
        let mut extra = run.extra.clone();
        extra.push(format!("--listen=127.0.0.1:{port}"));
        let flag = |a: &str| a.split('=').next().unwrap_or(a).to_string();
        let overridden: Vec<String> = extra.iter().map(|a| flag(a)).collect();
        let mut args: Vec<String> = cluster
            .chart_args()
            .into_iter()
            .filter(|a| !overridden.contains(&flag(a)))
            .collect();
        args.extend(extra);
        let log = cluster.plane.dir.path().join(format!("operator-{port}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_credit-operator"));
        cmd.args(&args)
            .env("KUBECONFIG", &cluster.operator_kubeconfig)
            .env("CREDITS_LEDGER", &run.ledger)
            .env("POD_NAMESPACE", &cluster.release_ns)
            .env("POD_NAME", format!("{}-0", cluster.release))
            .env("RUST_LOG", "info,kube=warn,kube_runtime::watcher=debug")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null());
        for (k, v) in &run.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("credit-operator run");
        let op = Operator {
            child: Some(child),
            log,
            port,
        };
        op.wait_healthy();
        op
    }

    fn wait_healthy(&self) {
        let url = format!("{}/healthz", self.base());
        eventually("the operator's /healthz", Duration::from_secs(60), || {
            ureq::get(&url).call().ok().filter(|r| r.status() == 200)
        });
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Any 403 means the chart's RBAC lacks something the operator does.
    fn assert_no_forbidden(&self) {
        self.assert_no_forbidden_since(0);
    }

    /// [`Operator::assert_no_forbidden`] for the log after its first
    /// `from` bytes.
    fn assert_no_forbidden_since(&self, from: usize) {
        let log = self.log();
        let forbidden: Vec<&str> = log
            .get(from..)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("code: 403") || l.contains("Forbidden") || l.contains("forbidden"))
            .collect();
        assert!(
            forbidden.is_empty(),
            "the operator was refused:\n{}",
            forbidden.join("\n")
        );
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// Whether the process has ended by itself.
    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }

    /// SIGKILL: no graceful shutdown, no lease handed back.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "last lines of {}:\n{}",
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// An HTTP client for the operator's API that returns every status.
fn http() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build(),
    )
}

/// `(status, body)` of a call to the operator's API with a bearer token.
fn call(operator: &Operator, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    try_call(operator, method, path, token, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// [`call`], or the transport error (a process that has exited).
fn try_call(
    operator: &Operator,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Result<(u16, Value), ureq::Error> {
    let url = format!("{}{path}", operator.base());
    let auth = format!("Bearer {token}");
    let agent = http();
    let answer = match (method, body) {
        ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
        ("PATCH", b) => agent
            .patch(&url)
            .header("Authorization", &auth)
            .send_json(b.unwrap_or(json!({}))),
        (_, Some(b)) => agent.post(&url).header("Authorization", &auth).send_json(b),
        (_, None) => agent.post(&url).header("Authorization", &auth).send_empty(),
    };
    let mut answer = answer?;
    let status = answer.status().as_u16();
    let text = answer.body_mut().read_to_string().unwrap_or_default();
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

fn account_path(path: &str) -> String {
    format!("/v1/namespaces/{NS}/accounts/acme{path}")
}

/// The audience the in-cluster API accepts tokens for.
const API_AUDIENCE: &str = "credit-operator";

impl Cluster {
    /// A ServiceAccount in the account's namespace bound to `roles` there,
    /// and a token of it for the operator's API.
    fn api_client(&self, name: &str, roles: &[&str]) -> String {
        self.plane.service_account(NS, name);
        for role in roles {
            self.plane.kubectl_ok(&[
                "create",
                "rolebinding",
                &format!("{name}-{role}"),
                &format!("--clusterrole={role}"),
                &format!("--serviceaccount={NS}:{name}"),
                "-n",
                NS,
            ]);
        }
        self.plane.token(NS, name, Some(API_AUDIENCE))
    }

    /// Binds a ClusterRole to a static user in the account's namespace.
    fn bind_user(&self, user: &str, role: &str) {
        let name = format!("{}-{role}", user.split('@').next().unwrap_or(user));
        self.plane.kubectl_ok(&[
            "create",
            "rolebinding",
            &name,
            &format!("--clusterrole={role}"),
            &format!("--user={user}"),
            "-n",
            NS,
        ]);
    }

    /// `kubectl patch … --subresource=status` of a request's approval as `user`.
    fn decide_as(&self, user: &str, request: &str, approval: Value) -> std::process::Output {
        let kubeconfig = self.plane.user_kubeconfig(user);
        let patch = json!({"status": {"approval": approval}}).to_string();
        self.plane
            .patch(&kubeconfig, "creditrequest", NS, request, true, &patch)
    }
}

/// Journal entries of one kind in a SQLite ledger file.
fn journal_count(db: &std::path::Path, kind: &str) -> usize {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut stmt = conn.prepare("SELECT body FROM journal").unwrap();
    let bodies = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
    bodies
        .filter_map(Result::ok)
        .filter(|b| b.starts_with(&format!("{{\"type\":\"{kind}\"")))
        .count()
}

/// Every figure the resources publish equals the ledger's (the API's).
fn assert_statuses_equal_the_ledger(cluster: &Cluster, operator: &Operator, token: &str) {
    let (code, overview) = call(operator, "GET", &account_path("/overview"), token, None);
    assert_eq!(code, 200, "{overview}");
    let account = cluster.status("creditaccounts", "acme");
    for field in [
        "creditsPerCycle",
        "used",
        "balance",
        "usagePercent",
        "allocated",
        "unallocated",
    ] {
        assert_eq!(account[field], overview[field], "account {field}");
    }
    assert_eq!(account["cycle"]["number"], overview["cycle"]["number"]);
    let (_, groups) = call(operator, "GET", &account_path("/groups"), token, None);
    let groups = groups["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(groups.len(), 4, "{groups:?}");
    for g in &groups {
        let name = g["name"].as_str().unwrap();
        let status = cluster.status("creditgroups", name);
        for field in [
            "budget",
            "distributed",
            "available",
            "granted",
            "used",
            "autoApproveRemaining",
        ] {
            assert_eq!(status[field], g[field], "group {name} {field}");
        }
        assert_eq!(status["members"], g["members"], "group {name} members");
        let (_, members) = call(
            operator,
            "GET",
            &account_path(&format!("/groups/{name}/members?pageSize=500")),
            token,
            None,
        );
        for m in members["items"].as_array().cloned().unwrap_or_default() {
            let member = m["name"].as_str().unwrap();
            let status = cluster.status("memberallocations", member);
            for field in ["monthlyCredits", "extraCredits", "granted", "used", "remaining"] {
                assert_eq!(status[field], m[field], "member {member} {field}");
            }
            assert_eq!(status["group"].as_str(), Some(name), "member {member} group");
        }
    }
}

#[test]
fn the_operator_converges_under_the_charts_rbac_and_follows_edits_approvals_and_resets() {
    let cluster = Cluster::with_examples(control_plane!());
    let run = OperatorRun::sqlite(&cluster);
    let operator = cluster.operator(&run);
    let reader = cluster.api_client("dashboard", &["credit-viewer", "credit-gateway"]);

    // Converged: every published figure is the ledger's.
    cluster.wait_for_status("creditgroups", "research", |s| s["distributed"] == "41000");
    cluster.wait_for_status("creditrequests", "ada-training-run", |s| s["phase"] == "AutoApproved");
    cluster.wait_for_status("memberallocations", "katherine", |s| s["monthlyCredits"] == "500");
    assert_statuses_equal_the_ledger(&cluster, &operator, &reader);

    // Usage over the API moves the member, its group and the account.
    let (code, answer) = call(
        &operator,
        "POST",
        &account_path("/usage"),
        &reader,
        Some(json!({"member": "u-1001", "credits": "250", "idempotencyKey": "evt-1"})),
    );
    assert_eq!(code, 200, "{answer}");
    cluster.wait_for_status("memberallocations", "ada", |s| {
        s["used"] == "250" && s["remaining"] == "15250"
    });
    cluster.wait_for_status("creditgroups", "research", |s| s["used"] == "250");
    cluster.wait_for_status("creditaccounts", "acme", |s| {
        s["used"] == "250" && s["balance"] == "99750"
    });

    // A member edit by kubectl apply moves the group's figures.
    let ada = r#"{"apiVersion": "credits.alchemi.io/v1alpha1", "kind": "MemberAllocation",
        "metadata": {"name": "ada", "namespace": "ml-platform"},
        "spec": {"user": {"id": "u-1001", "email": "ada@acme.example", "name": "Ada Lovelace"},
                 "group": "research", "monthlyCredits": 14000, "extraCredits": 2000}}"#;
    cluster.plane.apply_ok(ada);
    cluster.wait_for_status("creditgroups", "research", |s| {
        s["distributed"] == "43000" && s["available"] == "2000"
    });
    cluster.wait_for_status("memberallocations", "ada", |s| s["remaining"] == "17250");

    // An approval by a status patch of an approver, honoured once.
    cluster.bind_user("alice@example.com", "credit-approver");
    let out = cluster.decide_as(
        "alice@example.com",
        "linus-load-test",
        json!({"decision": "Approve", "credits": "2500", "reason": "half now"}),
    );
    assert!(out.status.success(), "{}", text(&out));
    let decided = cluster.wait_for_status("creditrequests", "linus-load-test", |s| s["phase"] == "Approved");
    assert_eq!(decided["approvedCredits"], "2500");
    assert_eq!(decided["decidedBy"], "alice@example.com", "the approver's username");
    // The operator's status write did not take the approval away.
    assert_eq!(decided["approval"]["decision"], "Approve");
    assert_eq!(decided["approval"]["credits"], "2500");
    cluster.wait_for_status("memberallocations", "linus", |s| s["granted"] == "2500");
    // A second decision is refused by the server; the grant stays 2500.
    let again = cluster.decide_as(
        "alice@example.com",
        "linus-load-test",
        json!({"decision": "Deny", "reason": "not now"}),
    );
    assert!(!again.status.success(), "a second decision was admitted");
    std::thread::sleep(Duration::from_secs(3));
    let product = cluster.status("creditgroups", "product");
    assert_eq!(product["granted"], "2500", "{product:#}");
    let request = cluster.plane.object("creditrequests", NS, "linus-load-test").unwrap();
    assert_eq!(request["status"]["approval"]["credits"], "2500");
    assert_statuses_equal_the_ledger(&cluster, &operator, &reader);

    // The reset annotation resets once.
    let cycle = |c: &Cluster| c.status("creditaccounts", "acme")["cycle"]["number"].as_u64();
    assert_eq!(cycle(&cluster), Some(1));
    let mark = jiff::Timestamp::now().to_string();
    cluster.plane.request_reset(NS, "acme", &mark);
    let reset = cluster.wait_for_status("creditaccounts", "acme", |s| s["cycle"]["number"] == 2);
    assert_eq!(reset["lastReset"]["reason"], "Manual");
    assert_eq!(reset["used"], "0");
    // Re-stating the same mark resets nothing more.
    cluster.plane.request_reset(NS, "acme", &mark);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(cycle(&cluster), Some(2));

    // A cadence change starts a new cycle, once.
    cluster
        .plane
        .merge_patch("creditaccount", NS, "acme", r#"{"spec":{"cadence":"1w"}}"#);
    let changed = cluster.wait_for_status("creditaccounts", "acme", |s| s["cycle"]["number"] == 3);
    assert_eq!(changed["lastReset"]["reason"], "CadenceChanged");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(cycle(&cluster), Some(3));
    assert_statuses_equal_the_ledger(&cluster, &operator, &reader);

    // Nothing was removed along the way, each group was stated once (no
    // reconcile saw a store that had not listed yet), each member once
    // plus ada's edit, and nothing was refused.
    let db = cluster.plane.dir.path().join("credits.db");
    assert_eq!(journal_count(&db, "MemberRemoved"), 0);
    assert_eq!(journal_count(&db, "GroupRemoved"), 0);
    assert_eq!(journal_count(&db, "GroupConfigured"), 4);
    assert_eq!(journal_count(&db, "MemberConfigured"), 13);
    operator.assert_no_forbidden();
}

/// Requests the API server has served whose `apiserver_request_total`
/// labels satisfy `matching`, from its own metrics.
fn served_requests(plane: &ControlPlane, matching: impl Fn(&str) -> bool) -> u64 {
    plane
        .get_raw("/metrics")
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{") && matching(l))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Status writes (PATCH or APPLY of `…/status` of the four kinds).
fn status_writes(plane: &ControlPlane) -> u64 {
    served_requests(plane, |l| {
        l.contains("group=\"credits.alchemi.io\"")
            && l.contains("subresource=\"status\"")
            && (l.contains("verb=\"PATCH\"") || l.contains("verb=\"APPLY\""))
    })
}

#[test]
fn a_converged_namespace_costs_the_api_server_no_status_writes() {
    let cluster = Cluster::with_examples(control_plane!());
    cluster.bind_user("bob@example.com", "credit-approver");
    let operator = cluster.operator(&OperatorRun::sqlite(&cluster));
    cluster.wait_for_status("creditrequests", "ada-training-run", |s| s["phase"] == "AutoApproved");
    let out = cluster.decide_as(
        "bob@example.com",
        "jim-backfill",
        json!({"decision": "Deny", "reason": "no"}),
    );
    assert!(out.status.success(), "{}", text(&out));
    let denied = cluster.wait_for_status("creditrequests", "jim-backfill", |s| s["phase"] == "Denied");
    assert_eq!(denied["decidedBy"], "bob@example.com");
    // A manual reset: the new cycle starts at a time with nanoseconds.
    cluster
        .plane
        .request_reset(NS, "acme", &jiff::Timestamp::now().to_string());
    cluster.wait_for_status("creditaccounts", "acme", |s| s["cycle"]["number"] == 2);
    // Let every status settle, then watch several staleness intervals
    // (1 s here) of reconciles: decided requests with their second-precision
    // decidedAt included.
    std::thread::sleep(Duration::from_secs(3));
    let before = status_writes(&cluster.plane);
    assert!(before >= 20, "the statuses were written at all: {before}");
    std::thread::sleep(Duration::from_secs(6));
    let after = status_writes(&cluster.plane);
    assert_eq!(
        after - before,
        0,
        "status writes while nothing changed ({before} before)"
    );
    operator.assert_no_forbidden();
}

#[test]
fn objects_deleted_while_the_operator_is_down_are_noticed_and_nothing_else_is_removed() {
    let cluster = Cluster::with_examples(control_plane!());
    let run = OperatorRun::sqlite(&cluster);
    let mut operator = cluster.operator(&run);
    let gateway = cluster.api_client("gateway", &["credit-gateway"]);
    cluster.wait_for_status("memberallocations", "katherine", |s| s["monthlyCredits"] == "500");
    let (code, _) = call(
        &operator,
        "POST",
        &account_path("/usage"),
        &gateway,
        Some(json!({"member": "u-4001", "credits": "120", "idempotencyKey": "k-1"})),
    );
    assert_eq!(code, 200);
    cluster.wait_for_status("creditgroups", "default", |s| s["used"] == "120");
    operator.kill();

    // While it is down: katherine and the whole data group's request go.
    cluster
        .plane
        .kubectl_ok(&["delete", "memberallocation", "katherine", "-n", NS]);
    cluster
        .plane
        .kubectl_ok(&["delete", "creditrequest", "jim-backfill", "-n", NS]);
    let operator = cluster.operator(&run);
    cluster.wait_for_status("creditgroups", "default", |s| s["members"] == 1);
    // Katherine's usage stays in the account's total; she may not spend.
    let account = cluster.wait_for_status("creditaccounts", "acme", |s| s["used"] == "120");
    assert_eq!(account["balance"], "99880");
    let (code, answer) = call(
        &operator,
        "POST",
        &account_path("/authorize"),
        &gateway,
        Some(json!({"member": "u-4001", "credits": "1"})),
    );
    assert!(code == 404 || answer["allowed"] == false, "{code} {answer}");
    let (code, answer) = call(
        &operator,
        "POST",
        &account_path("/authorize"),
        &gateway,
        Some(json!({"member": "u-4002", "credits": "1"})),
    );
    assert_eq!(
        (code, answer["allowed"].clone()),
        (200, json!(true)),
        "dennis may spend"
    );
    std::thread::sleep(Duration::from_secs(3));
    // Exactly the one member removed: the restarted operator did not state
    // the namespace before its stores had listed.
    let db = cluster.plane.dir.path().join("credits.db");
    assert_eq!(journal_count(&db, "MemberRemoved"), 1);
    assert_eq!(journal_count(&db, "GroupRemoved"), 0);
    assert_eq!(journal_count(&db, "GroupConfigured"), 4);
    assert_eq!(journal_count(&db, "MemberConfigured"), 12);
    operator.assert_no_forbidden();
}

#[test]
fn the_chart_installs_side_by_side_in_every_mode_and_every_object_is_admitted() {
    let plane = control_plane!();
    let variants: [(&str, &str, &[&str]); 3] = [
        ("credit", "credits", &[]),
        (
            "pg",
            "credits-pg",
            &[
                "api.auth=tokens",
                "ledger.type=postgres",
                "ledger.postgres.secretName=credits-ledger",
            ],
        ),
        (
            "ha",
            "credits-ha",
            &[
                "ledger.type=postgres",
                "ledger.postgres.secretName=credits-ledger",
                "leaderElection.enabled=true",
                "replicaCount=3",
            ],
        ),
    ];
    let mut cluster_scoped = std::collections::BTreeSet::new();
    for (release, namespace, values) in variants {
        let rendered = render_chart(release, namespace, values);
        let docs = yaml_to_json_docs(&rendered);
        plane.namespace(namespace);
        let out = plane.apply(&rendered);
        assert!(out.status.success(), "{release}: {}", text(&out));
        // Every object of the chart is there, as rendered.
        for doc in &docs {
            let kind = doc["kind"].as_str().unwrap();
            let name = doc["metadata"]["name"].as_str().unwrap();
            let namespaced = !matches!(
                kind,
                "ClusterRole"
                    | "ClusterRoleBinding"
                    | "CustomResourceDefinition"
                    | "ValidatingAdmissionPolicy"
                    | "ValidatingAdmissionPolicyBinding"
                    | "MutatingAdmissionPolicy"
                    | "MutatingAdmissionPolicyBinding"
            );
            let mut args = vec!["get", kind, name, "-o", "name"];
            if namespaced {
                args.extend(["-n", namespace]);
            } else if kind != "CustomResourceDefinition" {
                // Two releases never share a cluster-scoped object.
                assert!(
                    cluster_scoped.insert(format!("{kind}/{name}")),
                    "{release} renders {kind}/{name}, which another release owns"
                );
            }
            let out = plane.kubectl(&args);
            assert!(out.status.success(), "{release}: {kind}/{name} missing: {}", text(&out));
        }
        let kinds: std::collections::BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        for kind in [
            "Deployment",
            "ServiceAccount",
            "ClusterRole",
            "ValidatingAdmissionPolicy",
            "MutatingAdmissionPolicy",
        ] {
            assert!(kinds.contains(kind), "{release} renders no {kind}");
        }
        let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert!(container["startupProbe"].is_object(), "{release}: no startupProbe");
        if release == "ha" {
            assert!(kinds.contains("Role"), "the lease Role");
            assert_eq!(deployment["spec"]["replicas"], 3);
        }
    }
    // 3 releases × (operator role and binding, four user roles, two policies
    // and two bindings).
    assert_eq!(cluster_scoped.len(), 3 * 10, "{cluster_scoped:#?}");
}

#[test]
fn the_admission_policy_lets_an_approver_decide_a_pending_request_once() {
    let plane = control_plane!();
    let cluster = Cluster::with_chart(plane, &[]);
    cluster.plane.namespace(NS);
    cluster.bind_user("alice@example.com", "credit-approver");
    let request = |name: &str| {
        json!({"apiVersion": "credits.alchemi.io/v1alpha1", "kind": "CreditRequest",
               "metadata": {"name": name, "namespace": NS},
               "spec": {"member": "ada", "credits": 500, "reason": "training"}})
        .to_string()
    };
    cluster.plane.apply_ok(&request("first"));
    cluster.plane.apply_ok(&request("second"));
    let status_patch = |kubeconfig: &std::path::Path, name: &str, status: Value| {
        let patch = json!({ "status": status }).to_string();
        cluster.plane.patch(kubeconfig, "creditrequest", NS, name, true, &patch)
    };
    let alice = cluster.plane.user_kubeconfig("alice@example.com");

    // An approver may not set the operator's fields.
    let forged = status_patch(&alice, "first", json!({"phase": "Approved", "approvedCredits": "500"}));
    assert!(!forged.status.success(), "a forged phase was admitted");
    assert!(
        text(&forged).contains("only status.approval may be changed"),
        "{}",
        text(&forged)
    );

    // An approval is admitted, stamped with the approver's own username
    // even where the patch names someone else.
    let approved = status_patch(
        &alice,
        "first",
        json!({"approval": {"decision": "Approve", "credits": "300", "by": "bob@example.com"}}),
    );
    assert!(approved.status.success(), "{}", text(&approved));
    let first = cluster.plane.object("creditrequests", NS, "first").unwrap();
    assert_eq!(first["status"]["approval"]["by"], "alice@example.com");
    assert_eq!(first["status"]["approval"]["credits"], "300");

    // A second decision is refused.
    let again = status_patch(
        &alice,
        "first",
        json!({"approval": {"decision": "Deny", "reason": "not now"}}),
    );
    assert!(!again.status.success(), "a second decision was admitted");
    assert!(
        text(&again).contains("status.approval cannot change once set"),
        "{}",
        text(&again)
    );

    // Once the operator has decided (here: auto-approved), no approval.
    let operator = status_patch(
        &cluster.operator_kubeconfig,
        "second",
        json!({"phase": "AutoApproved", "approvedCredits": "500", "decidedBy": "auto"}),
    );
    assert!(
        operator.status.success(),
        "the operator's own write: {}",
        text(&operator)
    );
    let late = status_patch(
        &alice,
        "second",
        json!({"approval": {"decision": "Deny", "reason": "not now"}}),
    );
    assert!(!late.status.success(), "an approval of a decided request was admitted");
    assert!(
        text(&late).contains("the request is already decided"),
        "{}",
        text(&late)
    );

    // Someone without the approver role may not even try.
    let carol = cluster.plane.user_kubeconfig("carol@example.com");
    let stranger = status_patch(&carol, "second", json!({"approval": {"decision": "Approve"}}));
    assert!(!stranger.status.success());
    assert!(text(&stranger).contains("forbidden"), "{}", text(&stranger));
}

/// TokenReviews the API server has answered.
fn token_reviews(plane: &ControlPlane) -> u64 {
    served_requests(plane, |l| {
        l.contains("resource=\"tokenreviews\"") && l.contains("verb=\"POST\"")
    })
}

#[test]
fn the_in_cluster_api_authenticates_by_tokenreview_and_authorises_by_rbac() {
    let cluster = Cluster::with_examples(control_plane!());
    let operator = cluster.operator(&OperatorRun::sqlite(&cluster));
    cluster.wait_for_status("creditrequests", "linus-load-test", |s| s["phase"] == "Pending");
    let gateway = cluster.api_client("router", &["credit-gateway"]);
    let viewer = cluster.api_client("dashboard", &["credit-viewer"]);
    let approver = cluster.api_client("lead", &["credit-viewer", "credit-approver"]);
    let editor = cluster.api_client("platform", &["credit-viewer", "credit-editor"]);

    // A gateway records usage and authorizes; it may not approve.
    let (code, used) = call(
        &operator,
        "POST",
        &account_path("/usage"),
        &gateway,
        Some(json!({"member": "u-2002", "costUsd": "1.25", "idempotencyKey": "g-1"})),
    );
    assert_eq!((code, used["credits"].as_str()), (200, Some("125")), "{used}");
    let (code, allowed) = call(
        &operator,
        "POST",
        &account_path("/authorize"),
        &gateway,
        Some(json!({"member": "u-2002", "credits": "100"})),
    );
    assert_eq!((code, allowed["allowed"].clone()), (200, json!(true)), "{allowed}");
    let (code, _) = call(
        &operator,
        "POST",
        &account_path("/requests/linus-load-test/approve"),
        &gateway,
        Some(json!({})),
    );
    assert_eq!(code, 403);

    // A viewer reads, but may neither spend nor approve.
    let (code, overview) = call(&operator, "GET", &account_path("/overview"), &viewer, None);
    assert_eq!((code, overview["used"].as_str()), (200, Some("125")), "{overview}");
    let (code, requests) = call(&operator, "GET", &account_path("/requests"), &viewer, None);
    assert_eq!((code, requests["total"].as_u64()), (200, Some(3)), "{requests}");
    let (code, refused) = call(
        &operator,
        "POST",
        &account_path("/requests/linus-load-test/approve"),
        &viewer,
        Some(json!({"credits": "1000"})),
    );
    assert_eq!(code, 403, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap_or_default()
            .contains("may not patch creditrequests/status"),
        "{refused}"
    );
    let (code, _) = call(
        &operator,
        "POST",
        &account_path("/usage"),
        &viewer,
        Some(json!({"member": "u-2002", "credits": "1", "idempotencyKey": "v-1"})),
    );
    assert_eq!(code, 403);

    // An approver approves: decidedBy is its username, and the decision
    // is mirrored onto the resource.
    let (code, decided) = call(
        &operator,
        "POST",
        &account_path("/requests/linus-load-test/approve"),
        &approver,
        Some(json!({"credits": "1000", "reason": "a quarter"})),
    );
    let lead = format!("system:serviceaccount:{NS}:lead");
    assert_eq!(code, 200, "{decided}");
    assert_eq!(decided["decidedBy"], lead.as_str());
    assert_eq!(decided["approvedCredits"], "1000");
    let status = cluster.wait_for_status("creditrequests", "linus-load-test", |s| s["phase"] == "Approved");
    assert_eq!(status["decidedBy"], lead.as_str());
    assert_eq!(status["approval"]["decision"], "Approve");
    assert_eq!(status["approval"]["credits"], "1000");
    assert_eq!(status["approval"]["by"], lead.as_str());
    let (code, denied) = call(
        &operator,
        "POST",
        &account_path("/requests/jim-backfill/deny"),
        &approver,
        Some(json!({"reason": "next cycle"})),
    );
    assert_eq!((code, denied["phase"].as_str()), (200, Some("Denied")), "{denied}");
    let status = cluster.wait_for_status("creditrequests", "jim-backfill", |s| s["phase"] == "Denied");
    assert_eq!(status["approval"]["decision"], "Deny");
    cluster.wait_for_status("memberallocations", "linus", |s| s["granted"] == "1000");

    // An editor resets the cycle; the reset shows on the annotation and
    // happens once.
    let (code, _) = call(&operator, "POST", &account_path("/reset"), &approver, Some(json!({})));
    assert_eq!(code, 403, "an approver may not reset");
    let (code, cycle) = call(&operator, "POST", &account_path("/reset"), &editor, Some(json!({})));
    assert_eq!((code, cycle["number"].as_u64()), (200, Some(2)), "{cycle}");
    let account = cluster.plane.object("creditaccounts", NS, "acme").unwrap();
    assert!(
        account["metadata"]["annotations"]["credits.alchemi.io/reset-requested-at"].is_string(),
        "{account:#}"
    );
    cluster.wait_for_status("creditaccounts", "acme", |s| {
        s["cycle"]["number"] == 2 && s["used"] == "0"
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(cluster.status("creditaccounts", "acme")["cycle"]["number"], 2);

    // Tokens for the API server itself, garbage and no token at all are
    // refused, and only the first costs a TokenReview (then cached).
    let kube_token = cluster.plane.token(NS, "router", None);
    let reviews = token_reviews(&cluster.plane);
    for token in [kube_token.as_str(), "not-a-token", "a.b.c", ""] {
        for _ in 0..20 {
            let (code, _) = call(&operator, "GET", &account_path("/overview"), token, None);
            assert_eq!(code, 401, "token {token:.20}");
        }
    }
    assert_eq!(token_reviews(&cluster.plane) - reviews, 0, "refused without asking");
    operator.assert_no_forbidden();
}

#[test]
fn edits_through_the_api_patch_the_resource_when_the_callers_rbac_allows() {
    let cluster = Cluster::with_examples(control_plane!());
    let operator = cluster.operator(&OperatorRun::sqlite(&cluster));
    cluster.wait_for_status("creditgroups", "research", |s| s["budget"] == "45000");
    let viewer = cluster.api_client("dashboard", &["credit-viewer"]);
    let editor = cluster.api_client("platform", &["credit-viewer", "credit-editor"]);
    let spec = |plural: &str, name: &str| cluster.plane.object(plural, NS, name).unwrap()["spec"].clone();

    // RBAC decides: a viewer is told which permission it lacks.
    let (code, refused) = call(
        &operator,
        "PATCH",
        &account_path("/groups/research"),
        &viewer,
        Some(json!({"monthlyCredits": "41000"})),
    );
    assert_eq!(code, 403, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap_or_default()
            .contains("may not patch creditgroups in namespace"),
        "{refused}"
    );
    assert_eq!(spec("creditgroups", "research")["monthlyCredits"], json!(40000));

    // An editor's change lands on the resource and in the figures at once.
    let (code, group) = call(
        &operator,
        "PATCH",
        &account_path("/groups/research"),
        &editor,
        Some(json!({"monthlyCredits": "41000"})),
    );
    assert_eq!((code, group["budget"].as_str()), (200, Some("46000")), "{group}");
    assert_eq!(spec("creditgroups", "research")["monthlyCredits"], "41000");
    let object: Value = serde_json::from_str(&cluster.plane.kubectl_ok(&[
        "get",
        "creditgroup",
        "research",
        "-n",
        NS,
        "-o",
        "json",
        "--show-managed-fields",
    ]))
    .unwrap();
    let managers: Vec<&str> = object["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(managers.contains(&"credit-operator-api"), "{managers:?}");
    cluster.wait_for_status("creditgroups", "research", |s| s["budget"] == "46000");

    let (code, member) = call(
        &operator,
        "PATCH",
        &account_path("/members/u-1001"),
        &editor,
        Some(json!({"extraCredits": "2500.5"})),
    );
    assert_eq!(
        (code, member["extraCredits"].as_str()),
        (200, Some("2500.5")),
        "{member}"
    );
    assert_eq!(spec("memberallocations", "ada")["extraCredits"], "2500.5");

    // Bad values are refused with the field, before the API server sees them.
    for (body, field) in [
        (json!({"monthlyCredits": "-1"}), "monthlyCredits"),
        (json!({"monthlyCredits": "1.0000000001"}), "monthlyCredits"),
        (json!({"group": "nope"}), "group"),
    ] {
        let (code, e) = call(
            &operator,
            "PATCH",
            &account_path("/members/u-1001"),
            &editor,
            Some(body.clone()),
        );
        assert_eq!((code, e["field"].as_str()), (400, Some(field)), "{body}: {e}");
    }
    let (code, e) = call(
        &operator,
        "PATCH",
        &account_path("/settings"),
        &editor,
        Some(json!({"timezone": "Mars/Base"})),
    );
    assert_eq!((code, e["field"].as_str()), (400, Some("timezone")), "{e}");
    assert_eq!(spec("memberallocations", "ada")["monthlyCredits"], json!(12000));

    // An object Flux manages is changed in git, unless forced.
    cluster.plane.kubectl_ok(&[
        "label",
        "creditgroup",
        "data",
        "-n",
        NS,
        "kustomize.toolkit.fluxcd.io/name=budgets",
    ]);
    let (code, e) = call(
        &operator,
        "PATCH",
        &account_path("/groups/data"),
        &editor,
        Some(json!({"monthlyCredits": "16000"})),
    );
    assert_eq!((code, e["error"].as_str()), (409, Some("managed_by_gitops")), "{e}");
    assert!(e["message"].as_str().unwrap_or_default().contains("Flux"), "{e}");
    assert_eq!(spec("creditgroups", "data")["monthlyCredits"], json!(15000));
    let (code, g) = call(
        &operator,
        "PATCH",
        &account_path("/groups/data"),
        &editor,
        Some(json!({"monthlyCredits": "16000", "force": true})),
    );
    assert_eq!((code, g["monthlyCredits"].as_str()), (200, Some("16000")), "{g}");

    // A cadence change starts the next cycle, in the ledger and the status.
    let (code, o) = call(
        &operator,
        "PATCH",
        &account_path("/settings"),
        &editor,
        Some(json!({"cadence": "1w"})),
    );
    assert_eq!((code, o["cycle"]["number"].as_u64()), (200, Some(2)), "{o}");
    assert_eq!(spec("creditaccounts", "acme")["cadence"], "1w");
    cluster.wait_for_status("creditaccounts", "acme", |s| s["cycle"]["number"] == 2);
    operator.assert_no_forbidden();
}

fn leader_label(cluster: &Cluster, pod: &str) -> Option<String> {
    let pod = cluster.plane.object("pods", &cluster.release_ns, pod)?;
    pod["metadata"]["labels"]["credits.alchemi.io/leader"]
        .as_str()
        .map(str::to_string)
}

fn lease_holder(cluster: &Cluster) -> Option<String> {
    let lease = cluster
        .plane
        .object("leases", &cluster.release_ns, "credit-operator-leader")?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_string)
}

#[test]
fn two_replicas_on_postgres_elect_one_writer_and_a_standby_takes_over() {
    let Some(db) = support::postgres_db() else { return };
    let plane = control_plane!();
    let cluster = Cluster::with_chart(
        plane,
        &[
            "ledger.type=postgres",
            "ledger.postgres.secretName=credits-ledger",
            "leaderElection.enabled=true",
            "leaderElection.leaseSeconds=4",
            "replicaCount=2",
        ],
    );
    cluster.plane.namespace(NS);
    cluster.apply_examples();
    // No kubelet runs here: the Pod objects exist only to carry the label.
    for pod in ["credit-0", "credit-1"] {
        cluster.plane.apply_ok(
            &json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod, "namespace": "credits"},
                    "spec": {"containers": [{"name": "operator", "image": "credit-operator"}]}})
            .to_string(),
        );
    }
    let gateway = cluster.api_client("router", &["credit-viewer", "credit-gateway"]);
    let replica = |pod: &str| OperatorRun {
        ledger: db.url.clone(),
        extra: vec!["--status-staleness-seconds=1".into()],
        env: vec![("POD_NAME".into(), pod.into())],
    };
    let usage = |op: &Operator, key: &str| {
        call(
            op,
            "POST",
            &account_path("/usage"),
            &gateway,
            Some(json!({"member": "u-1001", "credits": "10", "idempotencyKey": key})),
        )
    };
    let mut a = cluster.operator(&replica("credit-0"));
    let mut b = cluster.operator(&replica("credit-1"));

    // Exactly one holds the Lease, labels its pod and serves; the other
    // answers 503 naming the leader.
    let first = eventually("a leader", Duration::from_secs(30), || {
        lease_holder(&cluster).filter(|h| leader_label(&cluster, h).as_deref() == Some("true"))
    });
    let (leader, standby, standby_pod) = if first == "credit-0" {
        (&mut a, &mut b, "credit-1")
    } else {
        (&mut b, &mut a, "credit-0")
    };
    assert_eq!(leader_label(&cluster, standby_pod), None);
    let (code, refused) = usage(standby, "k-standby");
    assert_eq!((code, refused["error"].as_str()), (503, Some("standby")), "{refused}");
    assert!(refused["message"].as_str().unwrap().contains(&first), "{refused}");
    cluster.wait_for_status("creditgroups", "research", |s| s["distributed"] == "41000");
    assert_eq!(usage(leader, "k-1").0, 200);
    cluster.wait_for_status("memberallocations", "ada", |s| s["used"] == "10");

    // SIGKILL the leader: the standby takes over within the lease
    // duration (plus its retry period) and converges.
    leader.kill();
    let killed = Instant::now();
    eventually("a new leader", Duration::from_secs(30), || {
        lease_holder(&cluster).filter(|h| *h == standby_pod && leader_label(&cluster, h).as_deref() == Some("true"))
    });
    let took = killed.elapsed();
    eprintln!("takeover after SIGKILL: {took:?} (lease 4 s)");
    assert!(took < Duration::from_secs(4 + 3), "took over after {took:?}");
    assert_eq!(usage(standby, "k-2").0, 200);
    let (code, replay) = usage(standby, "k-1");
    assert_eq!(
        (code, replay["duplicate"].as_bool()),
        (200, Some(true)),
        "nothing acknowledged is lost"
    );
    cluster.wait_for_status("memberallocations", "ada", |s| s["used"] == "20");

    // The killed replica comes back as a standby; then the leader stops
    // (SIGSTOP: alive, but silent) and the first one takes over again.
    drop(std::mem::replace(leader, cluster.operator(&replica(&first))));
    let (new_leader, old_leader) = (standby, leader);
    eventually(
        "the restarted replica unlabels its pod",
        Duration::from_secs(10),
        || leader_label(&cluster, &first).is_none().then_some(()),
    );
    let paused = new_leader.pid();
    signal(paused, "STOP");
    let back = eventually("the first replica leads again", Duration::from_secs(30), || {
        lease_holder(&cluster).filter(|h| *h == first && leader_label(&cluster, h).as_deref() == Some("true"))
    });
    assert_eq!(back, first);
    assert_eq!(usage(old_leader, "k-3").0, 200);

    // The deposed writer wakes up: its epoch cannot commit, it gives up
    // the lead and its label, and exits.
    signal(paused, "CONT");
    // It answers an error, or has already stopped listening.
    let deposed = try_call(
        new_leader,
        "POST",
        &account_path("/usage"),
        &gateway,
        Some(json!({"member": "u-1001", "credits": "10", "idempotencyKey": "k-deposed"})),
    );
    if let Ok((code, answer)) = &deposed {
        assert_ne!(*code, 200, "a deposed writer committed: {answer}");
    }
    eventually("the deposed replica to stop", Duration::from_secs(30), || {
        new_leader.exited().then_some(())
    });
    assert!(new_leader.log().contains("lost the lease"), "{}", new_leader.log());
    assert_eq!(leader_label(&cluster, standby_pod), None);
    let (code, late) = usage(old_leader, "k-deposed");
    assert_eq!(
        (code, late["duplicate"].as_bool()),
        (200, Some(false)),
        "the refused write left nothing"
    );
    cluster.wait_for_status("memberallocations", "ada", |s| s["used"] == "40");
    old_leader.assert_no_forbidden();

    // Fenced for real while it holds the lease: another process opens the
    // journal and takes a newer epoch. The leader's next write is refused,
    // its liveness fails, it hands the lease back and exits, and the
    // standby leads without waiting for the lease to expire.
    drop(std::mem::replace(new_leader, cluster.operator(&replica(standby_pod))));
    eventually("the restarted replica to stand by", Duration::from_secs(10), || {
        let probe = json!({"member": "u-1001", "credits": "10", "idempotencyKey": "k-probe"});
        let answer = try_call(new_leader, "POST", &account_path("/usage"), &gateway, Some(probe));
        answer
            .is_ok_and(|(code, answer)| code == 503 && answer["error"] == "standby")
            .then_some(())
    });
    let intruder = credit_operator::ledger::journal::open(&db.url).expect("a newer epoch");
    let (code, fenced) = usage(old_leader, "k-fenced");
    assert_eq!((code, fenced["error"].as_str()), (503, Some("fenced")), "{fenced}");
    if let Ok((code, health)) = try_call(old_leader, "GET", "/healthz", &gateway, None) {
        assert_eq!(code, 503, "a fenced writer is not live: {health}");
    }
    let fenced_at = Instant::now();
    eventually("the fenced replica to stop", Duration::from_secs(30), || {
        old_leader.exited().then_some(())
    });
    assert!(
        old_leader.log().contains("fenced off by a newer writer"),
        "{}",
        old_leader.log()
    );
    eventually("the standby to lead", Duration::from_secs(30), || {
        lease_holder(&cluster).filter(|h| h == standby_pod && leader_label(&cluster, h).as_deref() == Some("true"))
    });
    let took = fenced_at.elapsed();
    eprintln!("takeover after a fence: {took:?} (lease 4 s)");
    assert!(took < Duration::from_secs(4), "the lease was not handed back: {took:?}");
    drop(intruder);
    let (code, after) = usage(new_leader, "k-fenced");
    assert_eq!((code, after["duplicate"].as_bool()), (200, Some(false)), "{after}");
    cluster.wait_for_status("memberallocations", "ada", |s| s["used"] == "50");
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

#[test]
fn kubectl_credits_runs_every_subcommand_with_a_real_kubeconfig() {
    let cluster = Cluster::with_examples(control_plane!());
    for role in ["credit-viewer", "credit-editor", "credit-approver"] {
        cluster.bind_user("alice@example.com", role);
    }
    let _operator = cluster.operator(&OperatorRun::sqlite(&cluster));
    cluster.wait_for_status("creditgroups", "research", |s| s["distributed"] == "41000");
    cluster.wait_for_status("creditrequests", "linus-load-test", |s| s["phase"] == "Pending");
    let kubeconfig = cluster.plane.user_kubeconfig("alice@example.com");
    let plugin = |args: &[&str]| -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_kubectl-credits"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["-n", NS])
            .args(args)
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl credits {}: {}",
            args.join(" "),
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // Found by the real kubectl as a plugin, reading KUBECONFIG.
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_kubectl-credits"))
        .parent()
        .unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let via_kubectl = Command::new(cluster.plane.kubectl_bin())
        .args(["credits", "overview", "-n", NS])
        .env("KUBECONFIG", &kubeconfig)
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(via_kubectl.status.success(), "{}", text(&via_kubectl));
    let overview = String::from_utf8_lossy(&via_kubectl.stdout).into_owned();
    assert!(overview.contains("Limit:     100000"), "{overview}");
    assert!(
        overview.contains("Allocated: 90000 of 100000 (10000 unallocated)"),
        "{overview}"
    );

    let groups = plugin(&["groups"]);
    let research = row(&groups, "research");
    assert_eq!(
        research,
        ["research", "40000", "5000", "41000", "4000", "500/2000", "0", "4"],
        "{groups}"
    );
    let members = plugin(&["members", "--group", "research", "--search", "ada", "-o", "json"]);
    let members: Value = serde_json::from_str(&members).unwrap();
    assert_eq!(members["total"], 1);
    assert_eq!(members["items"][0]["remaining"], "15500");
    let pending = plugin(&["requests", "--status", "Pending", "-o", "json"]);
    let pending: Value = serde_json::from_str(&pending).unwrap();
    let names: Vec<&str> = pending
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["jim-backfill", "linus-load-test"], "{pending}");

    assert!(plugin(&[
        "approve",
        "linus-load-test",
        "--credits",
        "2500",
        "--reason",
        "half now"
    ])
    .contains("approved"));
    assert!(plugin(&["deny", "jim-backfill", "--reason", "not this cycle"]).contains("denied"));
    let approved = cluster.wait_for_status("creditrequests", "linus-load-test", |s| s["phase"] == "Approved");
    assert_eq!(
        (approved["approvedCredits"].as_str(), approved["decidedBy"].as_str()),
        (Some("2500"), Some("alice@example.com"))
    );
    cluster.wait_for_status("creditrequests", "jim-backfill", |s| s["phase"] == "Denied");

    plugin(&["set-allocation", "ada", "--monthly", "14000", "--extra", "1000"]);
    cluster.wait_for_status("creditgroups", "research", |s| s["distributed"] == "42000");
    plugin(&["set-limit", "acme", "120000", "--yes"]);
    cluster.wait_for_status("creditaccounts", "acme", |s| s["balance"] == "120000");
    plugin(&["set-factor", "acme", "50"]);
    plugin(&["set-signup", "acme", "600"]);
    let spec = cluster.plane.object("creditaccounts", NS, "acme").unwrap()["spec"].clone();
    assert_eq!(
        (spec["creditFactor"].as_str(), spec["signupCredits"].as_str()),
        (Some("50"), Some("600"))
    );
    plugin(&["set-cadence", "acme", "15d", "--yes"]);
    let changed = cluster.wait_for_status("creditaccounts", "acme", |s| s["cycle"]["number"] == 2);
    assert_eq!(changed["lastReset"]["reason"], "CadenceChanged");
    plugin(&["reset-cycle", "acme", "--yes"]);
    let reset = cluster.wait_for_status("creditaccounts", "acme", |s| s["cycle"]["number"] == 3);
    assert_eq!(reset["lastReset"]["reason"], "Manual");

    // Without the role, a clear refusal naming what is missing.
    let carol = cluster.plane.user_kubeconfig("carol@example.com");
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-credits"))
        .arg("--kubeconfig")
        .arg(&carol)
        .args(["-n", NS, "groups"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("you may not list creditgroups in namespace ml-platform"),
        "{}",
        text(&out)
    );
}

fn etcd_key(plural: &str, name: &str) -> String {
    format!("/registry/credits.alchemi.io/{plural}/{NS}/{name}")
}

#[test]
fn the_operator_rides_out_an_apiserver_restart_and_a_compaction_without_restarting() {
    let cluster = Cluster::with_examples(control_plane!());
    let mut operator = cluster.operator(&OperatorRun::sqlite(&cluster));
    let gateway = cluster.api_client("router", &["credit-gateway"]);
    cluster.wait_for_status("memberallocations", "katherine", |s| s["monthlyCredits"] == "500");
    cluster.wait_for_status("creditrequests", "ada-training-run", |s| s["phase"] == "AutoApproved");
    let db = cluster.plane.dir.path().join("credits.db");
    let configured = (
        journal_count(&db, "GroupConfigured"),
        journal_count(&db, "MemberConfigured"),
        journal_count(&db, "RequestSubmitted"),
    );
    let pid = operator.pid();
    // The gateway's token is known (cached) before the outage.
    let (code, _) = call(
        &operator,
        "POST",
        &account_path("/authorize"),
        &gateway,
        Some(json!({"member": "u-1001", "credits": "1"})),
    );
    assert_eq!(code, 200);

    // The API server goes away. Usage keeps being recorded (the caller's
    // token is cached), and katherine is deleted behind every watch's
    // back, straight from etcd.
    let mut cluster = cluster;
    cluster.plane.stop_apiserver();
    let (code, _) = call(
        &operator,
        "POST",
        &account_path("/usage"),
        &gateway,
        Some(json!({"member": "u-1001", "credits": "75", "idempotencyKey": "during-outage"})),
    );
    assert_eq!(code, 200, "usage while the API server is down");
    cluster.plane.etcd_delete(&etcd_key("memberallocations", "katherine"));
    // Compacted past every revision the operator's watches know: they
    // resume with 410 Gone and must list again.
    cluster.plane.compact_etcd();
    cluster.plane.start_again();
    // A starting API server refuses requests (403) until its RBAC caches
    // have synced; from ready on, nothing may be refused.
    let ready = operator.log().len();

    cluster.wait_for_status("memberallocations", "ada", |s| s["used"] == "75");
    cluster.wait_for_status("creditgroups", "default", |s| s["members"] == 1);
    assert!(!operator.exited(), "the operator restarted");
    assert_eq!(operator.pid(), pid);
    assert!(
        operator.log().contains("code: 410"),
        "the watches resumed without 410 Gone: the scenario did not happen"
    );
    // Relisting did no work twice: nothing configured again, katherine
    // removed once.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        (
            journal_count(&db, "GroupConfigured"),
            journal_count(&db, "MemberConfigured"),
            journal_count(&db, "RequestSubmitted"),
        ),
        configured
    );
    assert_eq!(journal_count(&db, "MemberRemoved"), 1);
    // And the operator follows new edits as before.
    cluster
        .plane
        .merge_patch("creditgroup", NS, "data", r#"{"spec":{"monthlyCredits":16000}}"#);
    cluster.wait_for_status("creditgroups", "data", |s| s["available"] == "2000");
    operator.assert_no_forbidden_since(ready);
    operator.kill();
}

#[test]
fn a_malformed_object_is_reported_on_itself_and_stalls_nothing() {
    let cluster = Cluster::with_examples(control_plane!());
    // An older, looser MemberAllocation CRD admitted an object the
    // current one would refuse; it stays stored as it was.
    let crds = credit_operator::crd::all_crds();
    let mut loose =
        serde_json::to_value(crds.iter().find(|c| c.spec.names.kind == "MemberAllocation").unwrap()).unwrap();
    let schema = &mut loose["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    schema["properties"]["spec"] = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    schema["required"] = json!([]);
    cluster.plane.apply_ok(&loose.to_string());
    let broken = json!({"apiVersion": "credits.alchemi.io/v1alpha1", "kind": "MemberAllocation",
        "metadata": {"name": "broken", "namespace": NS},
        "spec": {"user": "u-9999", "monthlyCredits": "lots"}});
    eventually("the loose CRD to admit the object", Duration::from_secs(30), || {
        cluster.plane.apply(&broken.to_string()).status.success().then_some(())
    });
    cluster.plane.install_crds();

    let operator = cluster.operator(&OperatorRun::sqlite(&cluster));
    // The others converge and follow edits.
    cluster.wait_for_status("creditgroups", "research", |s| s["distributed"] == "41000");
    cluster
        .plane
        .merge_patch("creditgroup", NS, "research", r#"{"spec":{"extraCredits":6000}}"#);
    cluster.wait_for_status("creditgroups", "research", |s| s["available"] == "5000");
    // The broken one says what is wrong with it in an Event regarding it
    // (its status cannot be written: its stored spec breaks the CRD).
    let note = eventually("an InvalidObject event", Duration::from_secs(30), || {
        let events: Value =
            serde_json::from_str(
                &cluster
                    .plane
                    .kubectl_ok(&["get", "events.events.k8s.io", "-n", NS, "-o", "json"]),
            )
            .ok()?;
        events["items"]
            .as_array()?
            .iter()
            .find(|e| e["reason"] == "InvalidObject" && e["regarding"]["name"] == "broken")
            .and_then(|e| e["note"].as_str().map(str::to_string))
    });
    assert!(note.contains("MemberAllocation broken cannot be read"), "{note}");
    assert!(note.contains("lots") || note.contains("user"), "{note}");
    // Nothing was removed on its account.
    let db = cluster.plane.dir.path().join("credits.db");
    assert_eq!(journal_count(&db, "MemberRemoved"), 0);
    operator.assert_no_forbidden();
}

#[test]
fn a_duplicate_account_takes_over_when_the_older_one_is_deleted() {
    let cluster = Cluster::with_examples(control_plane!());
    let operator = cluster.operator(&OperatorRun::sqlite(&cluster));
    cluster.wait_for_status("creditaccounts", "acme", |s| s["used"] == "0");
    cluster.plane.apply_ok(
        &json!({"apiVersion": "credits.alchemi.io/v1alpha1", "kind": "CreditAccount",
                "metadata": {"name": "newco", "namespace": NS},
                "spec": {"creditsPerCycle": 5000, "cadence": "1w", "creditFactor": 1}})
        .to_string(),
    );
    let duplicate = cluster.wait_for_status("creditaccounts", "newco", |s| {
        s["conditions"][0]["reason"] == "DuplicateAccount"
    });
    assert!(duplicate["cycle"].is_null());
    cluster.plane.kubectl_ok(&["delete", "creditaccount", "acme", "-n", NS]);
    let promoted = cluster.wait_for_status("creditaccounts", "newco", |s| {
        s["conditions"][0]["reason"] == "Reconciled"
    });
    assert_eq!(promoted["creditsPerCycle"], "5000");
    assert_eq!(promoted["cycle"]["number"], 1);
    operator.assert_no_forbidden();
}

#[test]
fn ten_thousand_members_converge_from_a_cold_start() {
    let members: usize = std::env::var("CREDITS_SCALE_MEMBERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let writes_per_second = 500;
    let plane = control_plane!();
    let cluster = Cluster::with_chart(plane, &[]);
    cluster.plane.namespace(NS);
    let mut yaml = String::new();
    yaml.push_str(&format!(
        "apiVersion: credits.alchemi.io/v1alpha1\nkind: CreditAccount\nmetadata: {{name: acme, namespace: {NS}}}\nspec: {{creditsPerCycle: 100000000, cadence: CalendarMonth, creditFactor: 100, defaultGroup: team-0}}\n"
    ));
    for g in 0..10 {
        yaml.push_str(&format!(
            "---\napiVersion: credits.alchemi.io/v1alpha1\nkind: CreditGroup\nmetadata: {{name: team-{g}, namespace: {NS}}}\nspec: {{monthlyCredits: 1000000}}\n"
        ));
    }
    for m in 0..members {
        yaml.push_str(&format!(
            "---\napiVersion: credits.alchemi.io/v1alpha1\nkind: MemberAllocation\nmetadata: {{name: m-{m}, namespace: {NS}}}\nspec: {{group: team-{}, user: {{id: u-{m}, email: m-{m}@example.com, name: M {m}}}, monthlyCredits: {}}}\n",
            m % 10,
            100 + m % 7
        ));
    }
    let created = Instant::now();
    let out = cluster.plane.kubectl_with(
        &cluster.plane.admin_kubeconfig,
        &["create", "-f", "-", "-o", "name"],
        Some(&yaml),
    );
    assert!(out.status.success(), "{}", text(&out));
    let create_seconds = created.elapsed().as_secs_f64();

    let writes_before = status_writes(&cluster.plane);
    let mut run = OperatorRun::sqlite(&cluster);
    run.extra
        .push(format!("--status-writes-per-second={writes_per_second}"));
    let started = Instant::now();
    let operator = cluster.operator(&run);
    let published = |plane: &ControlPlane| -> usize {
        let out = plane.kubectl(&["get", "memberallocations", "-n", NS, "-o", "json"]);
        let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        list["items"]
            .as_array()
            .map(|items| items.iter().filter(|m| m["status"]["remaining"].is_string()).count())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(900);
    while published(&cluster.plane) < members {
        assert!(Instant::now() < deadline, "not converged after 15 minutes");
        std::thread::sleep(Duration::from_secs(2));
    }
    let converged = started.elapsed();
    cluster.wait_for_status("creditgroups", "team-3", |s| s["members"] == members / 10);
    let account = cluster.wait_for_status("creditaccounts", "acme", |s| s["groups"] == 10);
    assert_eq!(account["allocated"], "10000000");
    let writes = status_writes(&cluster.plane) - writes_before;
    // Baselines from the same run: the rate limit's floor, and how long
    // kubectl took to create the objects one request each.
    eprintln!(
        "SCALE members={members} converged_seconds={:.1} status_writes={writes} writes_per_second_limit={writes_per_second} \
         rate_limit_floor_seconds={:.1} kubectl_create_seconds={create_seconds:.1}",
        converged.as_secs_f64(),
        writes as f64 / f64::from(writes_per_second)
    );
    // One write per object (members, groups, the account), give or take
    // a group or account written again while the members were arriving.
    assert!(writes >= members as u64 + 11, "{writes} writes");
    assert!(
        writes <= members as u64 + 11 + 50,
        "{writes} writes for {} objects",
        members + 11
    );
    operator.assert_no_forbidden();
}

/// Node, playwright-core (`npm ci` in tests/ui) and Chromium, or why not.
fn browser_tools() -> Result<PathBuf, String> {
    let ui = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    if !ui.join("node_modules/playwright-core").exists() {
        return Err("tests/ui/node_modules is missing (run `npm ci` in tests/ui)".into());
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !std::path::Path::new(&chromium).exists() {
        return Err(format!("no Chromium at {chromium}"));
    }
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(ui),
        _ => Err("node is not installed".into()),
    }
}

#[test]
fn the_console_signs_in_with_kubernetes_tokens_and_rbac_decides_its_edits() {
    let ui = match browser_tools() {
        Ok(ui) => ui,
        Err(why) if std::env::var("CREDITS_REQUIRE_BROWSER").as_deref() == Ok("1") => {
            panic!("CREDITS_REQUIRE_BROWSER=1 but {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: no browser for this test: {why}");
            return;
        }
    };
    let cluster = Cluster::with_examples(control_plane!());
    let operator = cluster.operator(&OperatorRun::sqlite(&cluster));
    cluster.wait_for_status("creditgroups", "research", |s| s["budget"] == "45000");
    let viewer = cluster.api_client("dashboard", &["credit-viewer"]);
    let editor = cluster.api_client("platform", &["credit-viewer", "credit-editor"]);
    let spec = |plural: &str, name: &str| cluster.plane.object(plural, NS, name).unwrap()["spec"].clone();

    let out = Command::new("node")
        .arg(ui.join("cluster.mjs"))
        .env("CONSOLE_URL", operator.base())
        .env("VIEWER_TOKEN", &viewer)
        .env("EDITOR_TOKEN", &editor)
        .output()
        .expect("run node");
    let printed = text(&out);
    eprintln!("{printed}");
    assert!(out.status.success(), "the console steps failed:\n{printed}");
    assert!(printed.trim_end().ends_with("5 passed"), "{printed}");
    // The viewer's refused edit changed nothing; the editor's landed on the
    // resource, and the operator's status follows.
    assert_eq!(spec("creditgroups", "research")["monthlyCredits"], "41000");
    cluster.wait_for_status("creditgroups", "research", |s| s["budget"] == "46000");
    let log = operator.log();
    assert!(
        !log.contains(&viewer) && !log.contains(&editor),
        "a token in the operator's log"
    );
}
