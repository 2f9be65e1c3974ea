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
    let row = accounts
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>();
    // NAME CADENCE CYCLE-END LIMIT USED BALANCE USAGE%
    assert_eq!(row[0], "acme", "{accounts}");
    assert_eq!(row[1], "CalendarMonth", "{accounts}");
    assert!(
        row[2].ends_with('Z') && row[2].len() == 20,
        "the cycle end is a time: {accounts}"
    );
    assert_eq!(&row[3..], ["100000", "0", "100000", "0"], "{accounts}");
    let groups = cluster.plane.kubectl_ok(&["get", "creditgroups", "-n", NS]);
    let research = groups
        .lines()
        .find(|l| l.starts_with("research"))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>();
    // NAME MONTHLY EXTRA DISTRIBUTED AVAILABLE AUTO-APPROVE USED MEMBERS
    // ada-training-run (1500) came out of the 2000 auto-approve reserve.
    assert_eq!(
        research,
        ["research", "40000", "5000", "41000", "4000", "500", "0", "4"],
        "{groups}"
    );
    let members = cluster.plane.kubectl_ok(&["get", "memberallocations", "-n", NS]);
    let ada = members
        .lines()
        .find(|l| l.starts_with("ada "))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>();
    // NAME GROUP EMAIL MONTHLY USED REMAINING (12000 + 2000 extra + 1500 granted)
    assert_eq!(
        ada,
        ["ada", "research", "ada@acme.example", "12000", "0", "15500"],
        "{members}"
    );
    let requests = cluster.plane.kubectl_ok(&["get", "creditrequests", "-n", NS]);
    let ada_request = requests
        .lines()
        .find(|l| l.starts_with("ada-training-run"))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>();
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
    let respec = plane.kubectl(&[
        "patch",
        "creditrequest",
        "more",
        "-n",
        "team",
        "--type=merge",
        "-p",
        r#"{"spec":{"credits":900}}"#,
    ]);
    assert!(!respec.status.success());
    assert!(text(&respec).contains("spec is immutable"), "{}", text(&respec));
    let approve = |decision: &str| {
        plane.kubectl(&[
            "patch",
            "creditrequest",
            "more",
            "-n",
            "team",
            "--subresource=status",
            "--type=merge",
            "-p",
            &format!(r#"{{"status":{{"approval":{{"decision":"{decision}"}}}}}}"#),
        ])
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
    let reid = plane.kubectl(&[
        "patch",
        "memberallocation",
        "alice",
        "-n",
        "team",
        "--type=merge",
        "-p",
        r#"{"spec":{"user":{"id":"u-2"}}}"#,
    ]);
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
    let mut args = vec!["template", release, chart, "--namespace", namespace, "--include-crds"];
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
        Cluster::with_release(plane, "co", "credits", values)
    }

    fn with_release(plane: ControlPlane, release: &str, namespace: &str, values: &[&str]) -> Cluster {
        let rendered = render_chart(release, namespace, values);
        plane.namespace(namespace);
        let out = plane.apply(&rendered);
        assert!(out.status.success(), "the chart was refused: {}", text(&out));
        plane.install_crds();
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
        let mut args: Vec<String> = cluster
            .chart_args()
            .into_iter()
            .filter(|a| !a.starts_with("--listen") && !a.starts_with("--status-staleness-seconds"))
            .collect();
        args.push(format!("--listen=127.0.0.1:{port}"));
        args.extend(run.extra.iter().cloned());
        let log = cluster.plane.dir.path().join(format!("operator-{port}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_credit-operator"));
        cmd.args(&args)
            .env("KUBECONFIG", &cluster.operator_kubeconfig)
            .env("CREDITS_LEDGER", &run.ledger)
            .env("POD_NAMESPACE", &cluster.release_ns)
            .env("POD_NAME", format!("{}-0", cluster.release))
            .env("RUST_LOG", "info,kube=warn")
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
        let log = self.log();
        let forbidden: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("403") || l.contains("Forbidden") || l.contains("forbidden"))
            .collect();
        assert!(
            forbidden.is_empty(),
            "the operator was refused:\n{}",
            forbidden.join("\n")
        );
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
