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
use serde::Deserialize;

use crate::crd::convert;
use crate::crd::{check_cel_rules, CreditAccount, CreditGroup, CreditRequest, MemberAllocation, GROUP};

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

    fn meta(&self) -> &kube::core::ObjectMeta {
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

/// Reads every manifest under `dir`.
pub fn scan(dir: &Path) -> std::io::Result<Scan> {
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    files.sort();
    let mut scan = Scan::default();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                scan.problems.push(Problem {
                    severity: Severity::Error,
                    file: file.clone(),
                    object: "-".into(),
                    field: "-".into(),
                    message: format!("cannot read: {e}"),
                    code: "",
                });
                scan.broken.push(file);
                continue;
            }
        };
        match parse_file(&file, &text) {
            Ok(objects) => {
                for object in objects {
                    let position = scan.objects.len();
                    scan.objects.push(Sourced {
                        file: file.clone(),
                        position,
                        object,
                    });
                }
            }
            Err(problems) => {
                scan.problems.extend(problems);
                scan.broken.push(file.clone());
            }
        }
        scan.contents.insert(file, text);
    }
    Ok(scan)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue; // editors' swap files, ..data links of ConfigMap mounts
        }
        if path.is_dir() {
            collect(&path, out)?;
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
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                problems.push(error(
                    format!("document {}", index + 1),
                    "-",
                    format!("not valid YAML: {e}"),
                ));
                break;
            }
        };
        let api_version = value.get("apiVersion").and_then(|v| v.as_str()).unwrap_or_default();
        let kind = value
            .get("kind")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or_default();
        let label = if name.is_empty() {
            format!("{kind} (document {})", index + 1)
        } else {
            format!("{kind}/{name}")
        };
        if api_version.split('/').next() != Some(GROUP) {
            continue; // other resources may share the folder
        }
        if name.is_empty() {
            problems.push(error(label, "metadata.name", "is required".into()));
            continue;
        }
        let parsed = match kind.as_str() {
            "CreditAccount" => typed::<CreditAccount>(value).map(Object::Account),
            "CreditGroup" => typed::<CreditGroup>(value).map(Object::Group),
            "MemberAllocation" => typed::<MemberAllocation>(value).map(Object::Member),
            "CreditRequest" => typed::<CreditRequest>(value).map(Object::Request),
            other => Err(("kind".to_string(), format!("unknown kind {other:?} in {GROUP}"))),
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

/// Parses a document into its type; the error names the field path.
fn typed<T: DeserializeOwned>(value: serde_yaml::Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "-".to_string() } else { path };
        (field, e.into_inner().to_string())
    })
}

/// The checks one object can make on its own: its CRD's CEL rules, then
/// what the ledger would refuse (unknown time zone, bad annotation).
fn check_object(object: &Object) -> Result<(), (String, String)> {
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
                if let Some(c) = approval.credits {
                    if c.decimal() <= rust_decimal::Decimal::ZERO || c > r.spec.credits {
                        return Err((
                            "status.approval.credits".into(),
                            format!("must be more than 0 and at most the {} requested", r.spec.credits),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}
