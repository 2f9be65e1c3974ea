//! A real control plane for tests: etcd and kube-apiserver, built from the
//! Go modules pinned in `tests/kube/go.mod` by `tests/kube/build.sh` and
//! started on free loopback ports, one pair per test.
//!
//! The API server runs with RBAC authorization, static bearer tokens for
//! an admin (`system:masters`) and a few plain users, service-account
//! signing keys (so TokenRequest and TokenReview work), and the default
//! admission chain (ValidatingAdmissionPolicy included). There is no
//! kube-controller-manager: namespaces never finish deleting, no
//! ServiceAccount appears by itself and no Pod runs.
//!
//! Without Go (and no cached build) [`ControlPlane::start`] prints that
//! the test was skipped and returns `None`; with `CREDITS_REQUIRE_KUBE=1`
//! it panics instead.
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const REQUIRE_ENV: &str = "CREDITS_REQUIRE_KUBE";

/// Plain users with static tokens: `(token, username)`. Tests bind roles
/// to them.
pub const USERS: &[(&str, &str)] = &[
    ("token-alice", "alice@example.com"),
    ("token-bob", "bob@example.com"),
    ("token-carol", "carol@example.com"),
];

const ADMIN_TOKEN: &str = "token-admin";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a script of `tests/kube/` once per test process; its last line of
/// output is a path.
fn script_path(script: &str, cell: &'static OnceLock<Result<PathBuf, String>>) -> Result<PathBuf, String> {
    cell.get_or_init(|| {
        let out = Command::new(repo().join("tests/kube").join(script))
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run tests/kube/{script}: {e}"))?;
        if !out.status.success() {
            return Err(format!("tests/kube/{script} failed ({})", out.status));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .last()
            .map(PathBuf::from)
            .ok_or_else(|| format!("tests/kube/{script} printed nothing"))
    })
    .clone()
}

/// The folder with `kube-apiserver`, `etcd` and `kubectl`.
fn binaries() -> Result<PathBuf, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    if let Ok(dir) = std::env::var("CREDITS_KUBE_BIN") {
        return Ok(PathBuf::from(dir));
    }
    if Command::new("go").arg("version").output().is_err() {
        return Err("Go is not installed, so kube-apiserver and etcd cannot be built".into());
    }
    script_path("build.sh", &DIR)
}

/// A helm binary (fetched once into the cache).
pub fn helm() -> PathBuf {
    static HELM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    script_path("helm.sh", &HELM).unwrap_or_else(|e| panic!("no helm: {e}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Spawns a child that dies with the test thread that started it, so a
/// test killed mid-way leaves no server behind.
fn spawn(mut command: Command, log: &Path) -> Child {
    let file = std::fs::File::create(log).expect("log file");
    command
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", command.get_program()))
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits until `ok` holds, or panics naming `what` with the log's tail.
fn wait_until(what: &str, timeout: Duration, log: &Path, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() > deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            panic!(
                "{what} not ready after {timeout:?}; last lines of {}:\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Plain HTTP to etcd on loopback.
fn http_agent() -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build();
    ureq::Agent::new_with_config(config)
}

/// etcd and kube-apiserver, stopped on drop.
pub struct ControlPlane {
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    etcd: Child,
    apiserver: Option<Child>,
    etcd_port: u16,
    /// The API server's port on 127.0.0.1.
    pub port: u16,
    /// `vX.Y.Z` as the server reports it.
    pub version: String,
    /// A kubeconfig for the admin (`system:masters`).
    pub admin_kubeconfig: PathBuf,
}

impl ControlPlane {
    /// Starts a fresh control plane, or `None` (printed as skipped) where
    /// none can be built and `CREDITS_REQUIRE_KUBE` is not `1`.
    pub fn start() -> Option<ControlPlane> {
        let bin = match binaries() {
            Ok(bin) => bin,
            Err(why) => {
                if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
                    panic!("{REQUIRE_ENV}=1 but no kube-apiserver: {why}");
                }
                eprintln!("SKIPPED: no real kube-apiserver for this test: {why}");
                return None;
            }
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&["genrsa", "-out", "sa.key", "2048"]);
        openssl(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
        let mut tokens = std::fs::File::create(d.join("tokens.csv")).expect("tokens.csv");
        writeln!(tokens, "{ADMIN_TOKEN},admin,uid-admin,\"system:masters\"").unwrap();
        for (token, user) in USERS {
            writeln!(tokens, "{token},{user},uid-{user}").unwrap();
        }

        let etcd_port = free_port();
        let peer = free_port();
        let mut etcd = Command::new(bin.join("etcd"));
        etcd.args([
            "--name=t".to_string(),
            format!("--data-dir={}", d.join("etcd").display()),
            "--unsafe-no-fsync".into(),
            format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-cluster=t=http://127.0.0.1:{peer}"),
        ]);
        let etcd_log = d.join("etcd.log");
        let etcd = spawn(etcd, &etcd_log);
        let agent = http_agent();
        wait_until("etcd", Duration::from_secs(30), &etcd_log, || {
            agent
                .get(format!("http://127.0.0.1:{etcd_port}/health"))
                .call()
                .is_ok_and(|r| r.status() == 200)
        });

        let mut plane = ControlPlane {
            admin_kubeconfig: d.join("admin.kubeconfig"),
            dir,
            bin,
            etcd,
            apiserver: None,
            etcd_port,
            port: free_port(),
            version: String::new(),
        };
        let kubeconfig = plane.kubeconfig("admin", ADMIN_TOKEN);
        std::fs::rename(kubeconfig, &plane.admin_kubeconfig).expect("admin kubeconfig");
        plane.start_apiserver();
        let version: Value = serde_json::from_str(&plane.get_raw("/version")).expect("/version");
        plane.version = version["gitVersion"].as_str().unwrap_or("unknown").to_string();
        eprintln!(
            "kube-apiserver {} ready on https://127.0.0.1:{}",
            plane.version, plane.port
        );
        Some(plane)
    }

    fn start_apiserver(&mut self) {
        let d = self.dir.path();
        let mut cmd = Command::new(self.bin.join("kube-apiserver"));
        cmd.args([
            format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", self.port),
            "--advertise-address=127.0.0.1".into(),
            "--endpoint-reconciler-type=none".into(),
            format!("--cert-dir={}", d.join("pki").display()),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", d.join("sa.pub").display()),
            format!("--service-account-signing-key-file={}", d.join("sa.key").display()),
            format!("--token-auth-file={}", d.join("tokens.csv").display()),
            "--authorization-mode=RBAC".into(),
            "--disable-admission-plugins=ServiceAccount".into(),
            "--allow-privileged=true".into(),
        ]);
        let log = self.apiserver_log();
        // Keep earlier logs of this control plane (a restart appends).
        let previous = std::fs::read_to_string(&log).unwrap_or_default();
        let child = spawn(cmd, &log);
        if !previous.is_empty() {
            let _ = std::fs::write(d.join("kube-apiserver.previous.log"), previous);
        }
        self.apiserver = Some(child);
        wait_until("kube-apiserver", Duration::from_secs(90), &log, || {
            self.kubectl(&["get", "--raw", "/readyz"]).status.success()
        });
    }

    pub fn apiserver_log(&self) -> PathBuf {
        self.dir.path().join("kube-apiserver.log")
    }

    /// Stops kube-apiserver (etcd keeps its data) and starts it again on
    /// the same port.
    pub fn restart_apiserver(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            stop(&mut child);
        }
        self.start_apiserver();
    }

    /// Stops kube-apiserver; [`ControlPlane::start_again`] brings it back.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            stop(&mut child);
        }
    }

    pub fn start_again(&mut self) {
        assert!(self.apiserver.is_none(), "kube-apiserver is running");
        self.start_apiserver();
    }

    /// Compacts etcd's history up to its current revision, so watches from
    /// an older resourceVersion answer 410 Gone.
    pub fn compact_etcd(&self) -> i64 {
        let agent = http_agent();
        let base = format!("http://127.0.0.1:{}", self.etcd_port);
        let mut answer = agent
            .post(format!("{base}/v3/kv/range"))
            .send_json(serde_json::json!({"key": "AA=="}))
            .expect("etcd range");
        let body: Value = answer.body_mut().read_json().expect("etcd range answer");
        let revision: i64 = body["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .expect("etcd revision");
        let compacted = agent
            .post(format!("{base}/v3/kv/compaction"))
            .send_json(serde_json::json!({"revision": revision.to_string(), "physical": true}))
            .expect("etcd compaction");
        assert_eq!(compacted.status(), 200, "etcd compaction");
        revision
    }

    /// Deletes a key straight from etcd, behind the API server's back.
    pub fn etcd_delete(&self, key: &str) {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        let answer = http_agent()
            .post(format!("http://127.0.0.1:{}/v3/kv/deleterange", self.etcd_port))
            .send_json(serde_json::json!({ "key": key }))
            .expect("etcd deleterange");
        assert_eq!(answer.status(), 200, "etcd deleterange");
    }

    /// The CA of the API server's serving certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("pki/apiserver.crt")
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Writes a kubeconfig that presents `token`; returns its path.
    pub fn kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        self.kubeconfig_in(name, token, "default")
    }

    /// A kubeconfig for `token` whose context defaults to `namespace`.
    pub fn kubeconfig_in(&self, name: &str, token: &str, namespace: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: {name}\n    namespace: {namespace}\ncurrent-context: test\n",
            self.url(),
            self.ca().display()
        );
        std::fs::write(&path, text).expect("kubeconfig");
        path
    }

    /// The kubeconfig of the static user `username` (see [`USERS`]).
    pub fn user_kubeconfig(&self, username: &str) -> PathBuf {
        let (token, _) = USERS
            .iter()
            .find(|(_, u)| *u == username)
            .unwrap_or_else(|| panic!("no static user {username}"));
        self.kubeconfig(username.split('@').next().unwrap_or(username), token)
    }

    pub fn token_of(username: &str) -> &'static str {
        USERS
            .iter()
            .find(|(_, u)| *u == username)
            .map(|(t, _)| *t)
            .unwrap_or_else(|| panic!("no static user {username}"))
    }

    /// The kubectl built with the API server.
    pub fn kubectl_bin(&self) -> PathBuf {
        self.bin.join("kubectl")
    }

    /// Runs kubectl as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(&self.admin_kubeconfig, args, None)
    }

    /// Runs kubectl with a kubeconfig and, optionally, YAML on stdin.
    pub fn kubectl_with(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(self.kubectl_bin());
        cmd.env("KUBECONFIG", kubeconfig)
            .env("KUBECACHEDIR", self.dir.path().join("kubectl-cache"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl");
        // Fed from another thread: kubectl writes as it reads, and a full
        // stdout pipe would otherwise stop it reading.
        let feeder = stdin.map(|text| {
            let mut pipe = child.stdin.take().expect("stdin");
            let text = text.to_string();
            std::thread::spawn(move || pipe.write_all(text.as_bytes()))
        });
        let out = child.wait_with_output().expect("kubectl");
        if let Some(feeder) = feeder {
            let _ = feeder.join();
        }
        out
    }

    /// kubectl as the admin that must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply --server-side -f -` as the admin.
    pub fn apply(&self, yaml: &str) -> Output {
        self.kubectl_with(
            &self.admin_kubeconfig,
            &["apply", "--server-side", "--field-manager=test", "-f", "-"],
            Some(yaml),
        )
    }

    pub fn apply_ok(&self, yaml: &str) {
        let out = self.apply(yaml);
        assert!(
            out.status.success(),
            "kubectl apply: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Applies `crds/` and waits until every CRD is Established.
    pub fn install_crds(&self) {
        let crds = repo().join("crds/credits.alchemi.io.yaml");
        self.kubectl_ok(&[
            "apply",
            "--server-side",
            "--field-manager=test",
            "-f",
            crds.to_str().unwrap(),
        ]);
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/creditaccounts.credits.alchemi.io",
            "crd/creditgroups.credits.alchemi.io",
            "crd/memberallocations.credits.alchemi.io",
            "crd/creditrequests.credits.alchemi.io",
        ]);
        // Established comes a moment before the server writes the kinds.
        let probe = r#"{"apiVersion": "credits.alchemi.io/v1alpha1", "kind": "CreditGroup",
            "metadata": {"name": "probe", "namespace": "default"}, "spec": {"monthlyCredits": 0}}"#;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.kubectl_with(
                &self.admin_kubeconfig,
                &["create", "--dry-run=server", "-f", "-"],
                Some(probe),
            );
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the CRDs never became writable: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn namespace(&self, name: &str) {
        self.kubectl_ok(&["create", "namespace", name]);
    }

    /// Creates a ServiceAccount (nothing creates them here by itself).
    pub fn service_account(&self, namespace: &str, name: &str) {
        self.kubectl_ok(&["create", "serviceaccount", name, "-n", namespace]);
    }

    /// A token for a ServiceAccount by TokenRequest, for `audience` when
    /// given.
    pub fn token(&self, namespace: &str, service_account: &str, audience: Option<&str>) -> String {
        let mut args = vec!["create", "token", service_account, "-n", namespace, "--duration=2h"];
        let audience_arg;
        if let Some(a) = audience {
            audience_arg = format!("--audience={a}");
            args.push(&audience_arg);
        }
        self.kubectl_ok(&args).trim().to_string()
    }

    /// `kubectl patch KIND NAME --type=merge -p PATCH` (of the status
    /// subresource when `status`) with a kubeconfig.
    pub fn patch(
        &self,
        kubeconfig: &Path,
        kind: &str,
        namespace: &str,
        name: &str,
        status: bool,
        patch: &str,
    ) -> Output {
        let mut args = vec!["patch", kind, name, "-n", namespace, "--type=merge", "-p", patch];
        if status {
            args.push("--subresource=status");
        }
        self.kubectl_with(kubeconfig, &args, None)
    }

    /// [`ControlPlane::patch`] of a spec as the admin, which must succeed.
    pub fn merge_patch(&self, kind: &str, namespace: &str, name: &str, patch: &str) {
        let out = self.patch(&self.admin_kubeconfig, kind, namespace, name, false, patch);
        assert!(
            out.status.success(),
            "kubectl patch {kind} {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Sets an account's reset annotation to `mark`, as an admin would.
    pub fn request_reset(&self, namespace: &str, account: &str, mark: &str) {
        self.kubectl_ok(&[
            "annotate",
            "--overwrite",
            "creditaccount",
            account,
            "-n",
            namespace,
            &format!("credits.alchemi.io/reset-requested-at={mark}"),
        ]);
    }

    /// A GET as the admin; the body.
    pub fn get_raw(&self, path: &str) -> String {
        self.kubectl_ok(&["get", "--raw", path])
    }

    /// An object as JSON, or `None` when it does not exist.
    pub fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let out = self.kubectl(&["get", kind, name, "-n", namespace, "-o", "json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("kubectl get -o json"))
    }

    /// A kube client for the admin.
    pub async fn client(&self) -> kube::Client {
        client_for(&self.admin_kubeconfig).await
    }
}

/// A kube client from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> kube::Client {
    let config = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default())
        .await
        .expect("client config");
    kube::Client::try_from(config).expect("client")
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            stop(&mut child);
        }
        stop(&mut self.etcd);
        if std::thread::panicking() || std::env::var("CREDITS_KEEP_KUBE").is_ok() {
            let kept = self.dir.path().to_path_buf();
            let _ = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir")).keep();
            eprintln!("control plane files kept in {}", kept.display());
        }
    }
}
