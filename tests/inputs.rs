//! Inputs that cannot hurt, in process: files cut at every byte, typos,
//! duplicates, a symlink loop, old reset marks and edited requests, read
//! by the real folder scan and reconciled into a real SQLite ledger.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use credit_operator::clock::ManualClock;
use credit_operator::desired::folder::{Reconciler, Settle};
use credit_operator::ledger::{numbers, Ledger};
use credit_operator::manifests::{self, Severity};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
const SETTLE: Duration = Duration::from_secs(1);

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn example_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// Everything a user sees of the ledger: settings, groups, members and
/// their figures, requests. Equal pictures, equal intent.
fn picture(ledger: &Ledger) -> String {
    let state = ledger.read();
    let mut out = String::new();
    for (id, a) in state.accounts.iter().filter(|(_, a)| a.active) {
        out.push_str(&format!("{id} {:?}\n{:?}\n", a.settings, numbers::account(a)));
        for g in a.groups.values().filter(|g| g.active) {
            out.push_str(&format!("  {:?}\n", numbers::group(a, g)));
        }
        for m in a.members.values().filter(|m| m.active) {
            out.push_str(&format!("  {:?}\n", numbers::member(a, m)));
        }
        for r in a.requests.values() {
            out.push_str(&format!("  {:?}\n", r.view()));
        }
    }
    out
}

/// The journal's entries that remove something or switch tracking off.
fn harmful_entries(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn.prepare("SELECT body FROM journal ORDER BY seq").unwrap();
    let bodies: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    bodies
        .into_iter()
        .filter(|b| {
            b.contains("Removed") || b.contains("\"credit_factor\":\"0\"") || b.contains("creditFactor\":\"0\"")
        })
        .collect()
}

struct Folder {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    db: PathBuf,
    ledger: Ledger,
    scanner: manifests::Scanner,
    reconciler: Reconciler,
    settle: Settle,
    now: Instant,
}

impl Folder {
    fn new() -> Folder {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("manifests");
        copy_dir(Path::new(EXAMPLES), &dir);
        let db = tmp.path().join("credits.db");
        let clock = Arc::new(ManualClock::new("2026-12-02T10:00:00Z".parse().unwrap()));
        let ledger = Ledger::open(&format!("sqlite://{}", db.display()), clock).unwrap();
        Folder {
            _tmp: tmp,
            dir,
            db,
            ledger,
            scanner: manifests::Scanner::default(),
            reconciler: Reconciler::default(),
            settle: Settle::new(SETTLE),
            now: Instant::now(),
        }
    }

    /// One look at the folder `after` the previous one, as the poll loop
    /// takes it: scan, judge what has settled, reconcile.
    async fn look(&mut self, after: Duration) -> BTreeSet<PathBuf> {
        self.now += after;
        let scan = self.scanner.scan(&self.dir).unwrap();
        let unsettled = self.settle.unsettled(&scan.contents, self.now);
        self.reconciler.reconcile(&self.ledger, &scan, &unsettled).await;
        unsettled
    }

    async fn settled(&mut self) {
        self.look(Duration::ZERO).await;
        let left = self.look(SETTLE).await;
        assert!(left.is_empty(), "still settling: {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_in_place_is_never_read_half_written_at_any_byte() {
    let mut f = Folder::new();
    f.settled().await;
    let baseline = picture(&f.ledger);
    assert!(baseline.contains("u-1004"), "the examples are served:\n{baseline}");
    let mut cuts = 0;
    for file in example_files(&f.dir) {
        let full = std::fs::read(&file).unwrap();
        for at in 0..full.len() {
            // An editor truncates the file and writes it again; the poll
            // looks in the middle, then again soon after it is whole.
            std::fs::write(&file, &full[..at]).unwrap();
            f.look(Duration::from_millis(300)).await;
            assert_eq!(picture(&f.ledger), baseline, "{} cut at byte {at}", file.display());
            std::fs::write(&file, &full).unwrap();
            f.look(Duration::from_millis(300)).await;
            assert_eq!(
                picture(&f.ledger),
                baseline,
                "{} rewritten after byte {at}",
                file.display()
            );
            cuts += 1;
        }
        f.look(SETTLE).await;
    }
    assert!(cuts > 3000, "every byte of every example file: {cuts}");
    assert_eq!(harmful_entries(&f.db), Vec::<String>::new());
    assert_eq!(picture(&f.ledger), baseline);
}

#[test]
fn a_cut_that_stays_cut_is_refused_unless_it_ends_between_whole_documents() {
    // Without the settle delay (a writer that died mid-write), the parser
    // alone must refuse every cut inside a document's head and every cut
    // that would change a figure's digits, and no cut may switch tracking
    // off.
    let account = std::fs::read_to_string(Path::new(EXAMPLES).join("account.yaml")).unwrap();
    for at in 0..account.len() {
        let cut = &account[..at];
        if let Ok(objects) = manifests::parse_file(Path::new("account.yaml"), cut) {
            for o in objects {
                let manifests::Object::Account(a) = o else { continue };
                assert!(
                    !a.spec.credit_factor.is_zero(),
                    "a cut at {at} switched tracking off:\n{cut}"
                );
            }
        }
    }
    let members = std::fs::read_to_string(Path::new(EXAMPLES).join("members/research.yaml")).unwrap();
    let whole = manifests::parse_file(Path::new("research.yaml"), &members).unwrap();
    let mut accepted = Vec::new();
    for at in 0..members.len() {
        let cut = &members[..at];
        let Ok(objects) = manifests::parse_file(Path::new("research.yaml"), cut) else {
            continue;
        };
        accepted.push(at);
        // What a cut file declares is whole documents of the original; the
        // last may lose its trailing lines, never its name, user id or
        // email (a cut inside them, or before the required name, fails).
        for (i, o) in objects.iter().enumerate() {
            let manifests::Object::Member(m) = o else {
                panic!("{o:?}")
            };
            let manifests::Object::Member(orig) = &whole[i] else {
                panic!()
            };
            if i + 1 < objects.len() {
                assert_eq!(m, orig, "cut at {at}: an earlier document changed");
            }
            assert_eq!(
                (&m.metadata.name, &m.spec.user.id, &m.spec.user.email),
                (&orig.metadata.name, &orig.spec.user.id, &orig.spec.user.email),
                "cut at {at}"
            );
        }
    }
    // Without the settle delay only cuts after a document's user block
    // pass: fewer than a third of all cut points.
    assert!(
        accepted.len() * 3 < members.len(),
        "{} of {} cuts pass",
        accepted.len(),
        members.len()
    );

    for (cut, field) in [
        (format!("{members}---\nap"), "-"),
        (format!("{members}---\napiVersion: credits.alc"), "apiVersion"),
        (
            format!("{members}---\napiVersion: credits.alchemi.io/v1alpha1\nkind: MemberAlloc"),
            "kind",
        ),
        (
            format!("{members}---\napiVersion: credits.alchemi.io/v1alpha1\nkind: MemberAllocation\n"),
            "metadata.name",
        ),
    ] {
        let problems = manifests::parse_file(Path::new("research.yaml"), &cut).unwrap_err();
        assert_eq!(problems[0].field, field, "{:?}", problems);
    }
}

fn write(dir: &Path, file: &str, text: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const ACCOUNT: &str = "apiVersion: credits.alchemi.io/v1alpha1\nkind: CreditAccount\nmetadata: {name: acme, namespace: team}\nspec: {creditsPerCycle: 1000, cadence: 1d, creditFactor: 1}\n";

#[test]
fn typos_and_duplicates_are_errors_naming_file_object_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(d, "account.yaml", ACCOUNT);
    write(
        d,
        "groups.yaml",
        "apiVersion: credits.alchemi.io/v1alpha1\nkind: CreditGroup\nmetadata: {name: ml, namespace: team}\nspec: {monthlyCredits: 100, autoAprove: 10}\n",
    );
    write(
        d,
        "misspelt.yaml",
        "apiVersion: credit.alchemi.io/v1alpha1\nkind: CreditGroup\nmetadata: {name: data, namespace: team}\nspec: {monthlyCredits: 100}\n",
    );
    write(
        d,
        "a/ml.yaml",
        "apiVersion: credits.alchemi.io/v1alpha1\nkind: CreditGroup\nmetadata: {name: web, namespace: team}\nspec: {monthlyCredits: 100}\n",
    );
    write(
        d,
        "b/ml.yaml",
        "apiVersion: credits.alchemi.io/v1alpha1\nkind: CreditGroup\nmetadata: {name: web, namespace: team}\nspec: {monthlyCredits: 900}\n",
    );
    write(
        d,
        "meta.yaml",
        "apiVersion: credits.alchemi.io/v1alpha1\nkind: CreditGroup\nmetadata: {name: ops, namespace: team, labels: {a: b}, annotatons: {x: y}}\nspec: {monthlyCredits: 1}\n",
    );
    let scan = manifests::scan(d).unwrap();
    let lines: Vec<String> = scan.problems.iter().map(|p| p.to_string()).collect();
    let has = |needle: String| {
        assert!(lines.iter().any(|l| l.contains(&needle)), "no {needle:?} in {lines:#?}");
    };
    has(format!(
        "{}: CreditGroup/ml: spec.autoAprove: unknown field \"spec.autoAprove\"",
        d.join("groups.yaml").display()
    ));
    has(format!(
        "{}: CreditGroup/data: apiVersion: unknown API group \"credit.alchemi.io/v1alpha1\"",
        d.join("misspelt.yaml").display()
    ));
    has(format!(
        "{}: CreditGroup/web: metadata.name: CreditGroup team/web is also defined in {}",
        d.join("a/ml.yaml").display(),
        d.join("b/ml.yaml").display()
    ));
    has(format!(
        "{}: CreditGroup/web: metadata.name: CreditGroup team/web is also defined in {}",
        d.join("b/ml.yaml").display(),
        d.join("a/ml.yaml").display()
    ));
    has(format!(
        "{}: CreditGroup/ops: metadata.annotatons: unknown field",
        d.join("meta.yaml").display()
    ));
    assert!(scan.problems.iter().all(|p| p.severity == Severity::Error));
    let broken: BTreeSet<_> = scan
        .broken
        .iter()
        .map(|p| p.strip_prefix(d).unwrap().display().to_string())
        .collect();
    assert_eq!(
        broken,
        ["a/ml.yaml", "b/ml.yaml", "groups.yaml", "meta.yaml", "misspelt.yaml"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    assert_eq!(scan.objects.len(), 1, "only the account is good");

    // validate says the same and exits 1.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_credit-operator"))
        .arg("validate")
        .arg(d)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for needle in [
        "spec.autoAprove",
        "credit.alchemi.io",
        "is also defined in",
        "metadata.annotatons",
    ] {
        assert!(text.contains(needle), "validate lacks {needle}: {text}");
    }
}

#[test]
fn a_missing_credit_factor_is_an_error_not_tracking_off() {
    let problems = manifests::parse_file(
        Path::new("account.yaml"),
        "apiVersion: credits.alchemi.io/v1alpha1\nkind: CreditAccount\nmetadata: {name: acme}\nspec: {creditsPerCycle: 1000, cadence: 1d}\n",
    )
    .unwrap_err();
    assert_eq!(problems[0].field, "spec", "{problems:?}");
    assert!(problems[0].message.contains("creditFactor"), "{problems:?}");
    // Written out, 0 is accepted: tracking off on purpose.
    let objects = manifests::parse_file(
        Path::new("account.yaml"),
        "apiVersion: credits.alchemi.io/v1alpha1\nkind: CreditAccount\nmetadata: {name: acme}\nspec: {creditsPerCycle: 1000, cadence: 1d, creditFactor: 0}\n",
    )
    .unwrap();
    assert_eq!(objects.len(), 1);
}

#[cfg(unix)]
#[test]
fn a_symlink_loop_is_read_once() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(d, "account.yaml", ACCOUNT);
    write(
        d,
        "people/m.yaml",
        "apiVersion: credits.alchemi.io/v1alpha1\nkind: MemberAllocation\nmetadata: {name: ann, namespace: team}\nspec: {user: {id: u-ann, email: ann@example.com, name: Ann}}\n",
    );
    std::os::unix::fs::symlink(d, d.join("people/loop")).unwrap();
    std::os::unix::fs::symlink(d.join("people"), d.join("again")).unwrap();
    let started = Instant::now();
    let scan = manifests::scan(d).unwrap();
    assert_eq!(scan.objects.len(), 2, "{:?}", scan.objects);
    assert_eq!(scan.contents.len(), 2, "{:?}", scan.contents.keys());
    assert!(scan.broken.is_empty(), "{:?}", scan.problems);
    assert!(
        scan.problems.iter().any(|p| p.message.contains("symlink loop")),
        "{:?}",
        scan.problems
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn an_oversized_file_is_an_error_and_not_read() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(d, "account.yaml", ACCOUNT);
    let big = format!("# {}\n", "x".repeat(manifests::MAX_FILE_BYTES as usize));
    write(d, "big.yaml", &big);
    let scan = manifests::scan(d).unwrap();
    assert_eq!(scan.broken, vec![d.join("big.yaml")]);
    assert!(
        scan.problems[0].message.contains("at most 4194304"),
        "{:?}",
        scan.problems
    );
    assert_eq!(scan.objects.len(), 1);
}

fn ledger_at(dir: &Path, now: &str) -> (Ledger, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(now.parse().unwrap()));
    let ledger = Ledger::open(&format!("sqlite://{}", dir.join("credits.db").display()), clock.clone()).unwrap();
    (ledger, clock)
}

async fn reconcile_once(ledger: &Ledger, dir: &Path) -> Vec<String> {
    let scan = manifests::scan(dir).unwrap();
    let mut r = Reconciler::default();
    r.reconcile(ledger, &scan, &BTreeSet::new())
        .await
        .problems
        .iter()
        .map(|p| p.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_reset_mark_resets_nothing_and_a_calendar_anchor_never_moves() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("m");
    let account = |mark: &str| {
        format!("apiVersion: credits.alchemi.io/v1alpha1\nkind: CreditAccount\nmetadata:\n  name: acme\n  namespace: team\n  annotations: {{credits.alchemi.io/reset-requested-at: \"{mark}\"}}\nspec: {{creditsPerCycle: 1000, cadence: CalendarMonth, creditFactor: 1}}\n")
    };
    // A fresh ledger meets an annotation written last month.
    write(&d, "account.yaml", &account("2026-11-20T08:00:00Z"));
    let (ledger, clock) = ledger_at(tmp.path(), "2026-12-02T10:00:00Z");
    reconcile_once(&ledger, &d).await;
    let cycle = |l: &Ledger| l.read().account("team/acme").unwrap().cycle;
    let first = cycle(&ledger);
    assert_eq!(first.number, 1, "an old mark reset a fresh ledger");
    assert_eq!(first.end.to_string(), "2027-01-01T00:00:00Z");

    // A new mark resets once; the month keeps its day and time.
    clock.set("2026-12-10T15:30:00Z".parse().unwrap());
    write(&d, "account.yaml", &account("2026-12-10T15:30:00Z"));
    reconcile_once(&ledger, &d).await;
    let second = cycle(&ledger);
    assert_eq!(second.number, 2);
    assert_eq!(second.start.to_string(), "2026-12-10T15:30:00Z");
    assert_eq!(
        second.end.to_string(),
        "2027-01-01T00:00:00Z",
        "the calendar anchor moved"
    );
    clock.set("2027-01-01T00:00:00Z".parse().unwrap());
    ledger.catch_up(None).await.unwrap();
    let third = cycle(&ledger);
    assert_eq!(
        (third.number, third.end.to_string()),
        (3, "2027-02-01T00:00:00Z".to_string())
    );
    // The same mark again, and an older one, reset nothing.
    reconcile_once(&ledger, &d).await;
    write(&d, "account.yaml", &account("2026-12-31T00:00:00Z"));
    reconcile_once(&ledger, &d).await;
    assert_eq!(cycle(&ledger).number, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_request_is_reported_and_keeps_what_was_submitted() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("m");
    write(&d, "account.yaml", ACCOUNT);
    write(
        &d,
        "m.yaml",
        "apiVersion: credits.alchemi.io/v1alpha1\nkind: MemberAllocation\nmetadata: {name: ann, namespace: team}\nspec: {user: {id: u-ann, email: ann@example.com, name: Ann}, monthlyCredits: 10}\n",
    );
    let request = |credits: u32| {
        format!("apiVersion: credits.alchemi.io/v1alpha1\nkind: CreditRequest\nmetadata: {{name: more, namespace: team}}\nspec: {{member: ann, credits: {credits}, reason: demo}}\n")
    };
    write(&d, "r.yaml", &request(300));
    let (ledger, _) = ledger_at(tmp.path(), "2026-12-02T10:00:00Z");
    assert_eq!(reconcile_once(&ledger, &d).await, Vec::<String>::new());
    write(&d, "r.yaml", &request(900));
    let problems = reconcile_once(&ledger, &d).await;
    assert!(
        problems.iter().any(
            |p| p.contains("CreditRequest/more: spec: a request is immutable once submitted")
                && p.contains("credits 300 → 900")
        ),
        "{problems:?}"
    );
    let state = ledger.read();
    let r = state.account("team/acme").unwrap().requests.values().next().unwrap();
    assert_eq!(r.credits.to_string(), "300");
}

#[test]
fn a_file_without_its_last_line_break_waits_ten_settle_delays() {
    let mut settle = Settle::new(SETTLE);
    let t0 = Instant::now();
    let file = PathBuf::from("m.yaml");
    let contents = |text: &str| std::collections::BTreeMap::from([(file.clone(), text.to_string())]);
    // Whole: settled one delay after it was first seen.
    let whole = contents("a: 1\n");
    assert!(!settle.unsettled(&whole, t0).is_empty());
    assert!(settle.unsettled(&whole, t0 + SETTLE).is_empty());
    // Cut mid-line and left so (the writer died): ten delays.
    let cut = contents("a: 1\nb: 10");
    let t1 = t0 + SETTLE * 2;
    assert!(!settle.unsettled(&cut, t1).is_empty());
    assert!(!settle.unsettled(&cut, t1 + SETTLE * 9).is_empty());
    assert!(settle.unsettled(&cut, t1 + SETTLE * 10).is_empty());
    // Gone: settled one delay later.
    let none = std::collections::BTreeMap::new();
    let t2 = t1 + SETTLE * 11;
    assert_eq!(settle.unsettled(&none, t2), BTreeSet::from([file.clone()]));
    assert!(settle.unsettled(&none, t2 + SETTLE).is_empty());
}
