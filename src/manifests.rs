//! Reading custom resources from a folder of YAML files: every document
//! of every `.yaml`/`.yml` file under the folder, nested folders too.
//!
//! A file is taken whole or not at all: when any document in it does not
//! parse or validate, the file is reported as broken and none of its
//! objects are returned, so a half-written file never reads as deletions.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::crd::convert;
use crate::crd::{check_cel_rules, CreditAccount, CreditGroup, CreditRequest, MemberAllocation, GROUP, VERSION};

/// One custom resource read from a file.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Account(CreditAccount),
    Group(CreditGroup),
    Member(MemberAllocation),
    Request(CreditRequest),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Account(_) => "CreditAccount",
            Object::Group(_) => "CreditGroup",
            Object::Member(_) => "MemberAllocation",
            Object::Request(_) => "CreditRequest",
        }
    }

    pub fn meta(&self) -> &kube::core::ObjectMeta {
        match self {
            Object::Account(o) => &o.metadata,
            Object::Group(o) => &o.metadata,
            Object::Member(o) => &o.metadata,
            Object::Request(o) => &o.metadata,
        }
    }

    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    /// The same object with `spec.<key>` set to each string value, or the
    /// field and why it cannot hold the value.
    pub fn with_spec_changes<'a>(
        &self,
        changes: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Object, (String, String)> {
        fn change<T: Serialize + DeserializeOwned>(o: &T, changes: Vec<(&str, &str)>) -> Result<T, (String, String)> {
            let internal = |e: serde_json::Error| ("spec".to_string(), e.to_string());
            let mut value = serde_json::to_value(o).map_err(internal)?;
            let mut last = "spec".to_string();
            for (key, v) in changes {
                last = format!("spec.{key}");
                value["spec"][key] = serde_json::Value::String(v.to_string());
            }
            serde_json::from_value(value).map_err(|e| (last, e.to_string()))
        }
        let changes: Vec<(&str, &str)> = changes.into_iter().collect();
        Ok(match self {
            Object::Account(o) => Object::Account(change(o, changes)?),
            Object::Group(o) => Object::Group(change(o, changes)?),
            Object::Member(o) => Object::Member(change(o, changes)?),
            Object::Request(o) => Object::Request(change(o, changes)?),
        })
    }

    /// The checks the ledger makes of the spec (each error names its field).
    pub fn check_spec(&self) -> Result<(), crate::ledger::LedgerError> {
        match self {
            Object::Account(o) => convert::account_settings(&o.spec).map(|_| ()),
            Object::Group(o) => convert::group_settings(&o.spec).map(|_| ()),
            Object::Member(o) => convert::member_spec(self.name(), &o.spec).map(|_| ()),
            Object::Request(_) => Ok(()),
        }
    }

    /// The namespace, `default` when the file gives none.
    pub fn namespace(&self) -> &str {
        self.meta().namespace.as_deref().unwrap_or("default")
    }

    pub fn created(&self) -> Option<Timestamp> {
        self.meta().creation_timestamp.as_ref().map(|t| t.0)
    }

    pub fn uid(&self) -> Option<&str> {
        self.meta().uid.as_deref()
    }
}

/// An object and the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Sourced {
    pub file: PathBuf,
    /// Position of the document in the whole scan (file order, then
    /// document order): the tie-breaker for "oldest".
    pub position: usize,
    pub object: Object,
}

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// A problem found in a file, reported as `file: kind/name: field: problem`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    pub file: PathBuf,
    /// `Kind/name`, or the document number when the object has no name yet.
    pub object: String,
    pub field: String,
    pub message: String,
    /// The ledger's error code when the ledger refused the object.
    pub code: &'static str,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}: {}",
            self.file.display(),
            self.object,
            self.field,
            self.message
        )?;
        if self.severity == Severity::Warning {
            f.write_str(" (warning)")?;
        }
        Ok(())
    }
}

/// What a scan of the folder found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Objects of files that parsed and validated.
    pub objects: Vec<Sourced>,
    /// Every file read, with its content (for change detection).
    pub contents: BTreeMap<PathBuf, String>,
    /// Files whose objects were refused.
    pub broken: Vec<PathBuf>,
    pub problems: Vec<Problem>,
}

/// The largest manifest file read; a bigger one is an error (a folder of
/// budgets has no business holding one, and reading it on every change
/// would cost the host).
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Reads every manifest under `dir`.
pub fn scan(dir: &Path) -> std::io::Result<Scan> {
    Scanner::default().scan(dir)
}

/// Scans a folder again and again, parsing only the files whose content
/// changed since the last scan (checking an object against its CRD's
/// rules is the costly part of a scan).
#[derive(Default)]
pub struct Scanner {
    parsed: BTreeMap<PathBuf, (String, Parsed)>,
}

/// A file's objects, or why none of them count.
pub type Parsed = Result<Vec<Object>, Vec<Problem>>;

impl Scanner {
    /// Reads every manifest under `dir`.
    pub fn scan(&mut self, dir: &Path) -> std::io::Result<Scan> {
        let scan = scan_with(dir, &mut |file, text| match self.parsed.get(file) {
            Some((seen, result)) if seen == text => result.clone(),
            _ => {
                let result = parse_file(file, text);
                self.parsed
                    .insert(file.to_path_buf(), (text.to_string(), result.clone()));
                result
            }
        })?;
        self.parsed.retain(|file, _| scan.contents.contains_key(file));
        Ok(scan)
    }
}

type Parse<'a> = dyn FnMut(&Path, &str) -> Parsed + 'a;

fn scan_with(dir: &Path, parse: &mut Parse<'_>) -> std::io::Result<Scan> {
    let mut files = Vec::new();
    let mut scan = Scan::default();
    let mut visited = std::collections::BTreeSet::new();
    collect(dir, &mut files, &mut visited, &mut scan.problems)?;
    files.sort();
    let mut parsed: Vec<(PathBuf, Vec<Object>)> = Vec::new();
    for file in files {
        let unreadable = |scan: &mut Scan, message: String| {
            scan.problems.push(Problem {
                severity: Severity::Error,
                file: file.clone(),
                object: "-".into(),
                field: "-".into(),
                message,
                code: "",
            });
            scan.broken.push(file.clone());
        };
        match std::fs::metadata(&file) {
            Ok(m) if m.len() > MAX_FILE_BYTES => {
                let message = format!(
                    "the file is {} bytes; a manifest file may hold at most {MAX_FILE_BYTES} (split it)",
                    m.len()
                );
                unreadable(&mut scan, message);
                scan.contents
                    .insert(file.clone(), format!("\0too large: {} bytes", m.len()));
                continue;
            }
            _ => {}
        }
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                unreadable(&mut scan, format!("cannot read: {e}"));
                continue;
            }
        };
        match parse(&file, &text) {
            Ok(objects) => parsed.push((file.clone(), objects)),
            Err(problems) => {
                scan.problems.extend(problems);
                scan.broken.push(file.clone());
            }
        }
        scan.contents.insert(file, text);
    }
    // One object, one place: the same kind, namespace and name twice is an
    // error in every file that holds it (which copy would win is no rule).
    let mut seen: BTreeMap<(&'static str, String, String), Vec<PathBuf>> = BTreeMap::new();
    for (file, objects) in &parsed {
        for o in objects {
            let key = (o.kind(), o.namespace().to_string(), o.name().to_string());
            seen.entry(key).or_default().push(file.clone());
        }
    }
    for ((kind, ns, name), files) in seen.iter().filter(|(_, f)| f.len() > 1) {
        for (i, file) in files.iter().enumerate() {
            let others: Vec<String> = files
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, f)| f.display().to_string())
                .collect();
            let message = if others.iter().all(|o| *o == file.display().to_string()) {
                format!("{kind} {ns}/{name} is defined more than once in this file")
            } else {
                format!("{kind} {ns}/{name} is also defined in {}", others.join(", "))
            };
            scan.problems.push(Problem {
                severity: Severity::Error,
                file: file.clone(),
                object: format!("{kind}/{name}"),
                field: "metadata.name".into(),
                message,
                code: "",
            });
            if !scan.broken.contains(file) {
                scan.broken.push(file.clone());
            }
        }
    }
    for (file, objects) in parsed {
        if scan.broken.contains(&file) {
            continue;
        }
        for object in objects {
            let position = scan.objects.len();
            scan.objects.push(Sourced {
                file: file.clone(),
                position,
                object,
            });
        }
    }
    scan.problems.dedup();
    Ok(scan)
}

/// The manifest files under `dir`; a folder reached twice (a symlink loop,
/// or two links to one folder) is read once.
fn collect(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    visited: &mut std::collections::BTreeSet<PathBuf>,
    problems: &mut Vec<Problem>,
) -> std::io::Result<()> {
    let real = std::fs::canonicalize(dir)?;
    if !visited.insert(real.clone()) {
        problems.push(Problem {
            severity: Severity::Warning,
            file: dir.to_path_buf(),
            object: "-".into(),
            field: "-".into(),
            message: format!(
                "skipped: the folder {} is already read (a symlink loop?)",
                real.display()
            ),
            code: "",
        });
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue; // editors' swap files, ..data links of ConfigMap mounts
        }
        if path.is_dir() {
            // A folder that cannot be read fails the scan: its files must not
            // read as deletions.
            collect(&path, out, visited, problems)?;
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(path);
        }
    }
    Ok(())
}

/// Parses every document of one file; all of them or none.
pub fn parse_file(file: &Path, text: &str) -> Result<Vec<Object>, Vec<Problem>> {
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    let error = |object: String, field: &str, message: String| Problem {
        severity: Severity::Error,
        file: file.to_path_buf(),
        object,
        field: field.to_string(),
        message,
        code: "",
    };
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document = format!("document {}", index + 1);
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => continue, // empty, or comments only
            Ok(v) => v,
            Err(e) => {
                problems.push(error(document, "-", format!("not valid YAML: {e}")));
                break;
            }
        };
        if !value.is_mapping() {
            problems.push(error(
                document,
                "-",
                "not a Kubernetes object: a document is a mapping with apiVersion, kind and metadata.name (is the file still being written?)".into(),
            ));
            continue;
        }
        let text_of = |v: Option<&serde_yaml::Value>| v.and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let api_version = text_of(value.get("apiVersion"));
        let kind = text_of(value.get("kind"));
        let name = text_of(value.get("metadata").and_then(|m| m.get("name")));
        let label = match (kind.is_empty(), name.is_empty()) {
            (false, false) => format!("{kind}/{name}"),
            (false, true) => format!("{kind} ({document})"),
            _ => document.clone(),
        };
        if let Err((field, message)) = check_type(&api_version, &kind, &name) {
            problems.push(error(label, field, message));
            continue;
        }
        let unknown = serde_json::to_value(&value)
            .map(|json| crate::crd::unknown_fields(&kind, &json))
            .unwrap_or_else(|e| vec![format!("-: {e}")]);
        if let Some(field) = unknown.first() {
            let message = match unknown.len() {
                1 => format!("unknown field \"{field}\" (is it misspelt?)"),
                n => format!(
                    "unknown field \"{field}\" and {} more: {}",
                    n - 1,
                    unknown[1..].join(", ")
                ),
            };
            problems.push(error(label, field, message));
            continue;
        }
        let parsed = match kind.as_str() {
            "CreditAccount" => typed::<CreditAccount>(value).map(Object::Account),
            "CreditGroup" => typed::<CreditGroup>(value).map(Object::Group),
            "MemberAllocation" => typed::<MemberAllocation>(value).map(Object::Member),
            _ => typed::<CreditRequest>(value).map(Object::Request),
        };
        match parsed.and_then(|o| check_object(&o).map(|_| o)) {
            Ok(o) => objects.push(o),
            Err((field, message)) => problems.push(error(label, &field, message)),
        }
    }
    if problems.is_empty() {
        Ok(objects)
    } else {
        Err(problems)
    }
}

/// The four kinds of `credits.alchemi.io/v1alpha1`.
pub const KINDS: [&str; 4] = ["CreditAccount", "CreditGroup", "MemberAllocation", "CreditRequest"];

/// A document names one of the four kinds of this API version, and a name.
/// Anything else in the folder is an error: a misspelt group or kind would
/// otherwise drop an intent without a word.
fn check_type(api_version: &str, kind: &str, name: &str) -> Result<(), (&'static str, String)> {
    let expected = format!("{GROUP}/{VERSION}");
    if api_version.is_empty() {
        return Err(("apiVersion", format!("is required (want {expected})")));
    }
    if api_version != expected {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let message = if group == GROUP {
            format!("unknown version {version:?} of {GROUP}: want {expected}")
        } else {
            format!("unknown API group {api_version:?}: this folder holds {expected} objects only (is it misspelt?)")
        };
        return Err(("apiVersion", message));
    }
    if kind.is_empty() {
        return Err(("kind", format!("is required (one of {})", KINDS.join(", "))));
    }
    if !KINDS.contains(&kind) {
        return Err((
            "kind",
            format!("unknown kind {kind:?} in {expected} (one of {})", KINDS.join(", ")),
        ));
    }
    if name.is_empty() {
        return Err(("metadata.name", "is required".into()));
    }
    Ok(())
}

/// Parses a document into its type; the error names the field path.
fn typed<T: DeserializeOwned>(value: serde_yaml::Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "-".to_string() } else { path };
        (field, e.into_inner().to_string())
    })
}

/// The checks one object can make on its own (the ones `validate` makes):
/// its CRD's CEL rules, then what the ledger would refuse (unknown time
/// zone, bad annotation); the field and the problem.
pub fn check_object(object: &Object) -> Result<(), (String, String)> {
    let json = match object {
        Object::Account(o) => serde_json::to_value(o),
        Object::Group(o) => serde_json::to_value(o),
        Object::Member(o) => serde_json::to_value(o),
        Object::Request(o) => serde_json::to_value(o),
    }
    .map_err(|e| ("-".to_string(), e.to_string()))?;
    if let Some(first) = check_cel_rules(object.kind(), &json, None).into_iter().next() {
        let (field, message) = first.split_once(": ").unwrap_or(("-", &first));
        return Err((field.to_string(), message.to_string()));
    }
    let ledger_error = |e: crate::ledger::LedgerError| match e {
        crate::ledger::LedgerError::InvalidField { field, message } => (field, message),
        other => ("-".to_string(), other.to_string()),
    };
    match object {
        Object::Account(a) => {
            convert::account_settings(&a.spec).map_err(ledger_error)?;
            convert::reset_mark(a.metadata.annotations.as_ref()).map_err(ledger_error)?;
        }
        Object::Group(g) => {
            convert::group_settings(&g.spec).map_err(ledger_error)?;
        }
        Object::Member(m) => {
            convert::member_spec(object.name(), &m.spec).map_err(ledger_error)?;
        }
        Object::Request(r) => {
            if let Some(approval) = r.status.as_ref().and_then(|s| s.approval.as_ref()) {
                if approval.credits.is_some() {
                    crate::ledger::check_approval(r.spec.credits, approval.credits).map_err(|_| {
                        (
                            "status.approval.credits".to_string(),
                            format!("must be more than 0 and at most the {} requested", r.spec.credits),
                        )
                    })?;
                }
            }
        }
    }
    Ok(())
}
