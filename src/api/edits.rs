//! Editing desired state through the API (DESIGN.md): a member's, a
//! group's or the account's spec changes where it is kept — the manifest
//! file standalone, the custom resource in a cluster — and the figures
//! follow from there as from any other edit.

use axum::http::StatusCode;
use kube::core::ObjectMeta;

use super::error::ApiError;

/// What kind of value a spec field holds (it decides how a file writes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// A decimal amount, kept exact.
    Amount,
    /// A name or word: a group, a cadence, a time zone.
    Word,
}

/// One value to set under `spec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: &'static str,
    pub value: String,
    pub kind: ValueKind,
}

/// A change to one object's spec.
#[derive(Debug, Clone)]
pub struct SpecEdit {
    /// `CreditAccount`, `CreditGroup` or `MemberAllocation`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub changes: Vec<Change>,
    /// Edit an object a GitOps tool manages anyway.
    pub force: bool,
    /// Who asked (for the log).
    pub caller: String,
}

impl SpecEdit {
    /// The object as `Kind namespace/name`.
    pub fn object(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }

    /// The changes as a JSON merge patch of the spec.
    pub fn merge_patch(&self) -> serde_json::Value {
        let spec: serde_json::Map<String, serde_json::Value> = self
            .changes
            .iter()
            .map(|c| (c.key.to_string(), serde_json::Value::String(c.value.clone())))
            .collect();
        serde_json::json!({ "spec": spec })
    }
}

/// The GitOps tool that manages an object, from its labels and
/// annotations: Argo CD's tracking annotation or instance label, Flux's
/// Kustomization and HelmRelease labels.
pub fn gitops_manager(meta: &ObjectMeta) -> Option<&'static str> {
    let has = |map: &Option<std::collections::BTreeMap<String, String>>, key: &str| {
        map.as_ref().is_some_and(|m| m.contains_key(key))
    };
    if has(&meta.annotations, "argocd.argoproj.io/tracking-id")
        || has(&meta.labels, "argocd.argoproj.io/instance")
        || has(&meta.labels, "app.kubernetes.io/instance")
    {
        return Some("Argo CD");
    }
    if has(&meta.labels, "kustomize.toolkit.fluxcd.io/name") || has(&meta.labels, "helm.toolkit.fluxcd.io/name") {
        return Some("Flux");
    }
    None
}

/// The 409 for an object a GitOps tool manages.
pub fn managed_elsewhere(edit: &SpecEdit, tool: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "managed_by_gitops",
        format!(
            "{} is managed by {tool}: change it in git (or send \"force\": true to edit it here anyway; {tool} may revert it)",
            edit.object()
        ),
    )
}

/// A file or resource problem in the API's words: `spec.monthlyCredits`
/// is the body's `monthlyCredits`.
pub fn field_error(field: &str, message: &str) -> ApiError {
    let field = field.strip_prefix("spec.").unwrap_or(field);
    ApiError::bad_field(field, message)
}
