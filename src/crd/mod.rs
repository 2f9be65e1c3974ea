//! The four custom resources of `credits.alchemi.io/v1alpha1`.
//!
//! These are the Kubernetes face of the product. The ledger never sees
//! them: adapters translate specs into ledger commands and ledger figures
//! into statuses.

// Several `printcolumn(...)` entries repeat `type_ = "string"`, which
// clippy mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
mod account;
pub mod convert;
#[allow(clippy::duplicated_attributes)]
mod group;
#[allow(clippy::duplicated_attributes)]
mod member;
#[allow(clippy::duplicated_attributes)]
mod request;
mod schema;

pub use account::{
    AllocationEntry, CreditAccount, CreditAccountSpec, CreditAccountStatus, CycleStatus, LastReset, ResetReason,
};
pub use group::{CreditGroup, CreditGroupSpec, CreditGroupStatus};
pub use member::{MemberAllocation, MemberAllocationSpec, MemberAllocationStatus, UserRef};
pub use request::{Approval, CreditRequest, CreditRequestSpec, CreditRequestStatus, Decision, RequestPhase};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::cel::Validator;
use kube::CustomResourceExt;

/// The API group of every resource here.
pub const GROUP: &str = "credits.alchemi.io";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";
/// Setting this annotation on a CreditAccount to a new, later RFC 3339
/// time starts a new cycle at once.
pub const RESET_ANNOTATION: &str = "credits.alchemi.io/reset-requested-at";

/// All four CRDs, in the order `credit-operator crd` prints them.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![
        CreditAccount::crd(),
        CreditGroup::crd(),
        MemberAllocation::crd(),
        CreditRequest::crd(),
    ]
    .into_iter()
    .map(schema::bounded)
    .collect()
}

/// The CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in all_crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

/// Checks an object (as JSON, the way the API server receives it) against
/// its kind's CRD as the API server does: the schema's value validations
/// (pattern, bounds, lengths), then the CEL rules, with `old` for update
/// rules. Returns one line per broken rule, each naming the field.
pub fn check_cel_rules(kind: &str, object: &serde_json::Value, old: Option<&serde_json::Value>) -> Vec<String> {
    let schema = match schema_of(kind) {
        Ok(s) => s,
        Err(e) => return vec![e],
    };
    let mut problems = schema::check_values(schema, object);
    if let Err(errors) = Validator::new().validate(schema, object, old) {
        problems.extend(
            errors
                .into_vec()
                .into_iter()
                .map(|e| format!("{}: {}", e.field_path, e.message)),
        );
    }
    problems
}

/// The fields of `object` (as written, before any parsing drops them)
/// that its kind's schema does not know, as dotted paths
/// (`spec.autoAprove`): the API server's strict field validation, offline.
pub fn unknown_fields(kind: &str, object: &serde_json::Value) -> Vec<String> {
    match schema_of(kind) {
        Ok(schema) => schema::unknown_fields(schema, object),
        Err(e) => vec![e],
    }
}

/// The OpenAPI schema of a kind's served version, built once.
fn schema_of(kind: &str) -> Result<&'static serde_json::Value, String> {
    static SCHEMAS: std::sync::OnceLock<Vec<(String, Result<serde_json::Value, String>)>> = std::sync::OnceLock::new();
    let schemas = SCHEMAS.get_or_init(|| {
        all_crds()
            .into_iter()
            .map(|crd| {
                let kind = crd.spec.names.kind.clone();
                let schema = crd.spec.versions[0]
                    .schema
                    .as_ref()
                    .and_then(|s| s.open_api_v3_schema.as_ref())
                    .ok_or_else(|| format!("kind: {kind} has no schema"))
                    .and_then(|s| serde_json::to_value(s).map_err(|e| format!("kind: {kind} schema: {e}")));
                (kind, schema)
            })
            .collect()
    });
    match schemas.iter().find(|(k, _)| k == kind) {
        Some((_, Ok(schema))) => Ok(schema),
        Some((_, Err(e))) => Err(e.clone()),
        None => Err(format!("kind: unknown kind {kind:?}")),
    }
}
