//! `credit-operator standalone`: the whole product on one host, no
//! cluster. Desired state comes from a folder of manifests (re-read
//! while running), the ledger is an SQLite file by default, and the HTTP
//! API serves gateways and admins.

pub mod edit;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::api::edits::{self, SpecEdit};
use crate::api::{self, error::ApiError, AppState, Directory, Metrics};
use crate::clock::Clock;
use crate::desired::folder::{Reconciler, Settle};
use crate::ledger::writer::LedgerOptions;
use crate::ledger::{numbers, Ledger, MemberSpec};
use crate::manifests;

/// Where enrolled members go, under the manifest folder.
pub const ENROLLED_DIR: &str = "enrolled";

/// How to run.
pub struct Options {
    pub manifests: PathBuf,
    pub ledger: String,
    pub listen: SocketAddr,
    pub tokens: Option<api::auth::Tokens>,
    pub poll_interval: Duration,
    /// How long a changed file must stay unchanged before it is read as
    /// intent (see [`Settle`]).
    pub settle: Duration,
    pub clock: Arc<dyn Clock>,
}

/// Why standalone could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("refusing to listen on {0} without --token-file: without tokens the API serves loopback only")]
    NotLoopback(SocketAddr),
    #[error("manifest folder {0}: {1}")]
    Manifests(PathBuf, std::io::Error),
    #[error("ledger: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("server: {0}")]
    Serve(std::io::Error),
}

/// The manifest folder and what reads it, shared by the poll loop and
/// enrolment.
struct Folder {
    dir: PathBuf,
    ledger: Ledger,
    /// Held across a whole scan and reconcile, so a scan that started
    /// before an enrolment never applies after it.
    state: Mutex<FolderState>,
    /// One write to the folder at a time (enrolments and edits): the
    /// checks and the file write happen together.
    writes: Mutex<()>,
}

struct FolderState {
    scanner: manifests::Scanner,
    reconciler: Reconciler,
    settle: Settle,
    /// The objects of the last scan, with their files, and the files that
    /// were broken or settling then (edits find their object here).
    objects: Vec<manifests::Sourced>,
    unusable: std::collections::BTreeSet<PathBuf>,
    /// The contents and the still-settling files of the last reconcile.
    reconciled: Option<(
        std::collections::BTreeMap<PathBuf, String>,
        std::collections::BTreeSet<PathBuf>,
    )>,
}

/// What one look at the folder found.
#[derive(Debug, PartialEq, Eq)]
enum Look {
    /// Everything read is applied.
    Settled,
    /// A file changed too recently to be read as intent: look again soon.
    Settling,
}

impl Folder {
    /// Scans the folder and reconciles when anything changed (or `force`).
    async fn sync(&self, force: bool) -> Result<Look, std::io::Error> {
        let mut guard = self.state.lock().await;
        let dir = self.dir.clone();
        let mut scanner = std::mem::take(&mut guard.scanner);
        let (scanner, scan) = tokio::task::spawn_blocking(move || {
            let scan = scanner.scan(&dir);
            (scanner, scan)
        })
        .await
        .map_err(std::io::Error::other)?;
        guard.scanner = scanner;
        let scan = scan?;
        let st = &mut *guard;
        let unsettled = st.settle.unsettled(&scan.contents, std::time::Instant::now());
        let outcome = if unsettled.is_empty() {
            Look::Settled
        } else {
            Look::Settling
        };
        if !force
            && st
                .reconciled
                .as_ref()
                .is_some_and(|(c, u)| *c == scan.contents && *u == unsettled)
        {
            return Ok(outcome);
        }
        for file in &unsettled {
            tracing::debug!(file = %file.display(), delay = ?st.settle.delay(), "changed just now; waiting for it to settle");
        }
        let report = st.reconciler.reconcile(&self.ledger, &scan, &unsettled).await;
        for p in &report.problems {
            match p.severity {
                manifests::Severity::Error => tracing::error!("{p}"),
                manifests::Severity::Warning => tracing::warn!("{p}"),
            }
        }
        tracing::info!(
            files = scan.contents.len(),
            objects = scan.objects.len(),
            broken = scan.broken.len(),
            settling = unsettled.len(),
            "manifests reconciled"
        );
        st.objects = scan.objects;
        st.unusable = scan.broken.iter().cloned().chain(unsettled.iter().cloned()).collect();
        st.reconciled = Some((scan.contents, unsettled));
        Ok(outcome)
    }

    /// Marks a file this process wrote whole as settled.
    async fn trust(&self, file: PathBuf, content: String) {
        self.state
            .lock()
            .await
            .settle
            .trust(file, content, std::time::Instant::now());
    }
}

/// Enrolment writes a MemberAllocation into `DIR/enrolled/`, so the folder
/// stays the one source of desired state, then reconciles at once.
struct FolderDirectory(Arc<Folder>);

impl Directory for FolderDirectory {
    fn enrol<'a>(
        &'a self,
        account: &'a str,
        member: MemberSpec,
    ) -> Pin<Box<dyn Future<Output = Result<(), ApiError>> + Send + 'a>> {
        Box::pin(async move {
            let _one_at_a_time = self.0.writes.lock().await;
            // Checked again under the lock: of concurrent enrolments of one
            // user id, the first wins and the others are told so.
            {
                let state = self.0.ledger.read();
                let acct = state.active_account(account)?;
                if let Some(existing) = acct.members.get(&member.user_id).filter(|m| m.active) {
                    return Err(crate::ledger::LedgerError::DuplicateUserId {
                        user_id: member.user_id.clone(),
                        owner: existing.name().to_string(),
                    }
                    .into());
                }
            }
            let (ns, _) = account.split_once('/').unwrap_or(("default", account));
            let yaml = enrolled_manifest(ns, &member);
            let dir = self.0.dir.join(ENROLLED_DIR);
            let file = dir.join(format!("{ns}-{}.yaml", member.name));
            let unavailable = |e: std::io::Error| {
                ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    format!("cannot write {}: {e}", file.display()),
                )
            };
            if file.exists() {
                return Err(ApiError::new(
                    axum::http::StatusCode::CONFLICT,
                    "duplicate_member",
                    format!(
                        "{} already exists: the member it declares is not active (is that file broken?)",
                        file.display()
                    ),
                ));
            }
            std::fs::create_dir_all(&dir).map_err(unavailable)?;
            // Write then rename in the same folder, so a scan never sees
            // half a file; the name is this process's own.
            let tmp = dir.join(format!(".{ns}-{}.{}.tmp", member.name, std::process::id()));
            let written = std::fs::write(&tmp, &yaml).and_then(|_| std::fs::rename(&tmp, &file));
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                return Err(unavailable(e));
            }
            self.0.trust(file.clone(), yaml).await;
            self.0.sync(true).await.map_err(unavailable)?;
            Ok(())
        })
    }

    fn edit<'a>(
        &'a self,
        _account: &'a str,
        edit: SpecEdit,
    ) -> Pin<Box<dyn Future<Output = Result<(), ApiError>> + Send + 'a>> {
        Box::pin(self.0.edit(edit))
    }
}

impl Folder {
    /// Changes one object's spec in its manifest file, in place, then
    /// reconciles at once. Nothing is written unless the new file reads
    /// back as the old one with exactly these values changed and passes
    /// the same checks as `validate`.
    async fn edit(&self, edit: SpecEdit) -> Result<(), ApiError> {
        let _one_at_a_time = self.writes.lock().await;
        let conflict = |code: &str, message: String| ApiError::new(axum::http::StatusCode::CONFLICT, code, message);
        let (file, siblings) = {
            let st = self.state.lock().await;
            let found = st.objects.iter().find(|s| {
                s.object.kind() == edit.kind && s.object.namespace() == edit.namespace && s.object.name() == edit.name
            });
            let Some(found) = found else {
                return Err(conflict(
                    "not_in_a_file",
                    format!(
                        "{} is not declared in any file under {} (the operator made it): declare it in a manifest to edit it",
                        edit.object(),
                        self.dir.display()
                    ),
                ));
            };
            if st.unusable.contains(&found.file) {
                return Err(conflict(
                    "file_unsettled",
                    format!(
                        "{} is being changed or is broken: try again once it reads cleanly",
                        found.file.display()
                    ),
                ));
            }
            if let Some(tool) = edits::gitops_manager(found.object.meta()) {
                if !edit.force {
                    return Err(edits::managed_elsewhere(&edit, tool));
                }
            }
            let siblings: Vec<manifests::Object> = st
                .objects
                .iter()
                .filter(|s| s.file == found.file)
                .map(|s| s.object.clone())
                .collect();
            (found.file.clone(), siblings)
        };
        let unavailable = |e: std::io::Error| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                format!("cannot write {}: {e}", file.display()),
            )
        };
        let before = std::fs::read_to_string(&file).map_err(unavailable)?;
        let after = edit::set_spec_fields(&before, edit.kind, &edit.namespace, &edit.name, &edit.changes)
            .map_err(|e| conflict("cannot_edit_in_place", format!("{}: {e}", file.display())))?;
        // The new file must say what the old one said, but for these values.
        let parsed = manifests::parse_file(&file, &after).map_err(|problems| {
            let p = problems
                .iter()
                .find(|p| p.severity == manifests::Severity::Error)
                .or(problems.first());
            match p {
                Some(p) => edits::field_error(&p.field, &p.message),
                None => conflict(
                    "cannot_edit_in_place",
                    format!("{}: the edited file does not read back", file.display()),
                ),
            }
        })?;
        let mut expected = siblings.clone();
        for o in &mut expected {
            if o.kind() == edit.kind && o.namespace() == edit.namespace && o.name() == edit.name {
                *o = o
                    .with_spec_changes(edit.changes.iter().map(|c| (c.key, c.value.as_str())))
                    .map_err(|(field, message)| edits::field_error(&field, &message))?;
                o.check_spec().map_err(|e| match e {
                    crate::ledger::LedgerError::InvalidField { field, message } => edits::field_error(&field, &message),
                    other => ApiError::bad_field("spec", other),
                })?;
            }
        }
        if before.trim() != std::fs::read_to_string(&file).map_err(unavailable)?.trim() {
            return Err(conflict(
                "changed_on_disk",
                format!("{} changed while it was edited: try again", file.display()),
            ));
        }
        if parsed != expected {
            return Err(conflict(
                "cannot_edit_in_place",
                format!(
                    "{}: the file's layout cannot be edited in place; change it by hand",
                    file.display()
                ),
            ));
        }
        let dir = file.parent().unwrap_or(&self.dir).to_path_buf();
        let tmp = dir.join(format!(
            ".{}.{}.edit.tmp",
            file.file_name().and_then(|n| n.to_str()).unwrap_or("manifest"),
            std::process::id()
        ));
        if let Err(e) = std::fs::write(&tmp, &after).and_then(|_| std::fs::rename(&tmp, &file)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(unavailable(e));
        }
        tracing::info!(object = %edit.object(), file = %file.display(), by = %edit.caller, "edited through the API");
        self.trust(file.clone(), after).await;
        self.sync(true).await.map_err(unavailable)?;
        Ok(())
    }
}

fn enrolled_manifest(ns: &str, m: &MemberSpec) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let mut out = format!(
        "apiVersion: credits.alchemi.io/v1alpha1\nkind: MemberAllocation\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n  user:\n    id: {}\n    email: {}\n    name: {}\n",
        q(&m.name),
        q(ns),
        q(&m.user_id),
        q(&m.email),
        q(&m.display_name)
    );
    if let Some(g) = &m.group {
        out.push_str(&format!("  group: {}\n", q(g)));
    }
    out
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(options: Options) -> Result<(), StartError> {
    if options.tokens.is_none() && !options.listen.ip().is_loopback() {
        return Err(StartError::NotLoopback(options.listen));
    }
    if !options.manifests.is_dir() {
        return Err(StartError::Manifests(
            options.manifests.clone(),
            std::io::Error::new(std::io::ErrorKind::NotFound, "not a folder"),
        ));
    }
    let metrics = Metrics::default();
    let ledger_options = LedgerOptions {
        on_commit: Some(metrics.commit_observer()),
        ..LedgerOptions::default()
    };
    let url = options.ledger.clone();
    let clock = options.clock.clone();
    let ledger = tokio::task::spawn_blocking(move || Ledger::open_with(&url, clock, ledger_options))
        .await
        .map_err(|e| StartError::Serve(std::io::Error::other(e)))??;
    let folder = Arc::new(Folder {
        dir: options.manifests.clone(),
        ledger: ledger.clone(),
        state: Mutex::new(FolderState {
            scanner: manifests::Scanner::default(),
            reconciler: Reconciler::default(),
            settle: Settle::new(options.settle),
            objects: Vec::new(),
            unusable: Default::default(),
            reconciled: None,
        }),
        writes: Mutex::new(()),
    });
    // Watch before the first read, so no change after it goes unseen.
    let changed = Arc::new(tokio::sync::Notify::new());
    let watcher = watch(&options.manifests, changed.clone());
    // At start-up every file is new: read the folder until it holds still
    // (a file being written keeps its last good state, none yet).
    let mut tries = 0;
    while folder
        .sync(false)
        .await
        .map_err(|e| StartError::Manifests(options.manifests.clone(), e))?
        == Look::Settling
        && tries < 20
    {
        tries += 1;
        tokio::time::sleep(options.settle).await;
    }
    ledger.catch_up(None).await?;

    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| StartError::Listen(options.listen, e))?;
    let address = listener
        .local_addr()
        .map_err(|e| StartError::Listen(options.listen, e))?;
    println!("credit-operator standalone: listening on http://{address}");
    println!("  manifests: {}", options.manifests.display());
    println!("  ledger:    {} ({})", redact(&options.ledger), ledger.backend());
    print!("{}", overview_screen(&ledger));
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let poller = {
        let (folder, ledger, every, settle) = (folder.clone(), ledger.clone(), options.poll_interval, options.settle);
        // With a watcher the folder is read when it changes (and, in case an
        // event is lost, every FALLBACK_SCAN); without one, every poll.
        let fallback = if watcher.is_some() {
            FALLBACK_SCAN.max(every)
        } else {
            every
        };
        tokio::spawn(async move {
            let _watcher = watcher;
            let mut settling = false;
            let mut last_scan = tokio::time::Instant::now();
            loop {
                let wait = if settling { settle.min(every) } else { every };
                let notified = tokio::select! {
                    _ = changed.notified() => true,
                    _ = tokio::time::sleep(wait) => false,
                };
                if notified || settling || last_scan.elapsed() >= fallback {
                    last_scan = tokio::time::Instant::now();
                    settling = match folder.sync(false).await {
                        Ok(look) => look == Look::Settling,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot read the manifest folder; keeping the last good state");
                            false
                        }
                    };
                }
                if let Err(e) = ledger.catch_up(None).await {
                    tracing::error!(error = %e, "cannot apply due cycle boundaries");
                }
            }
        })
    };

    let state = AppState::new(api::Services {
        ledger: ledger.clone(),
        auth: Arc::new(options.tokens.map_or(api::auth::Auth::Local, api::auth::Auth::Tokens)),
        metrics,
        directory: Arc::new(FolderDirectory(folder)),
    });
    let served = api::serve::serve(listener, api::router(state), shutdown_signal()).await;
    poller.abort();
    tokio::task::spawn_blocking(move || ledger.shutdown()).await.ok();
    served.map_err(StartError::Serve)
}

/// How often the folder is read in full when a watcher reports changes.
pub const FALLBACK_SCAN: Duration = Duration::from_secs(30);

/// Watches the folder (recursively) and wakes `changed` on any event;
/// `None` when the platform's watcher cannot start (the poll then scans).
fn watch(dir: &std::path::Path, changed: Arc<tokio::sync::Notify>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let handler = move |event: notify::Result<notify::Event>| match event {
        // Our own reads of the folder are access events: never a change.
        Ok(e) if matches!(e.kind, notify::EventKind::Access(_)) => {}
        _ => changed.notify_one(),
    };
    let started = notify::recommended_watcher(handler)
        .and_then(|mut w| w.watch(dir, notify::RecursiveMode::Recursive).map(|_| w));
    match started {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the manifest folder; scanning it every poll instead");
            None
        }
    }
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_string(),
    }
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

/// One screen per account: cycle, limit, used, balance and groups.
pub fn overview_screen(ledger: &Ledger) -> String {
    let state = ledger.read();
    let mut out = String::new();
    for (id, account) in state.accounts.iter().filter(|(_, a)| a.active) {
        let f = numbers::account(account);
        out.push_str(&format!(
            "\naccount {id}  cadence {}  cycle {} ({} → {})\n",
            account.settings.cadence, f.cycle.number, f.cycle.start, f.cycle.end
        ));
        if f.tracking_enabled {
            out.push_str(&format!(
                "  limit {}  used {}  balance {}  usage {}%  allocated {}  unallocated {}\n",
                f.credits_per_cycle, f.used, f.balance, f.usage_percent, f.allocated, f.unallocated
            ));
        } else {
            out.push_str(&format!(
                "  limit {}  used {}  (credit tracking disabled: creditFactor is 0)\n",
                f.credits_per_cycle, f.used
            ));
        }
        for g in account.groups.values().filter(|g| g.active) {
            let gf = numbers::group(account, g);
            out.push_str(&format!(
                "  group {:<16} budget {:>10}  distributed {:>10}  used {:>10}  members {}\n",
                gf.name, gf.budget, gf.distributed, gf.used, gf.members
            ));
        }
        let pending = account
            .requests
            .values()
            .filter(|r| r.phase == crate::ledger::Phase::Pending)
            .count();
        out.push_str(&format!("  requests pending: {pending}\n"));
    }
    if out.is_empty() {
        out.push_str("\nno CreditAccount in the manifests yet\n");
    }
    out
}
