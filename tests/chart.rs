//! The Helm chart: its CRDs are the generated ones, and its admission
//! policy lets approvers change only status.approval, only while Pending.

use kube::core::cel::{VapEvaluator, VapExpression};
use serde_json::{json, Value};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/credit-operator");

#[test]
fn the_chart_ships_exactly_the_generated_crds() {
    let shipped = std::fs::read_to_string(format!("{CHART}/crds/credits.alchemi.io.yaml")).unwrap();
    assert!(
        shipped == credit_operator::crd::crds_yaml().unwrap(),
        "charts/credit-operator/crds is stale: copy crds/ into it"
    );
}

/// The policy's validations, read from the template (its few template
/// lines removed).
fn validations() -> Vec<VapExpression> {
    let text = std::fs::read_to_string(format!("{CHART}/templates/admissionpolicy.yaml")).unwrap();
    let plain: String = text
        .lines()
        .filter(|l| !l.contains("{{"))
        .map(|l| format!("{l}\n"))
        .collect();
    let doc = serde_yaml::Deserializer::from_str(&plain).next().unwrap();
    let policy: Value = serde::Deserialize::deserialize(doc).unwrap();
    policy["spec"]["validations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| VapExpression {
            expression: v["expression"].as_str().unwrap().to_string(),
            message: v["message"].as_str().map(str::to_string),
            message_expression: None,
        })
        .collect()
}

fn request(status: Value) -> Value {
    let mut r = json!({"apiVersion": "credits.alchemi.io/v1alpha1", "kind": "CreditRequest",
        "metadata": {"name": "r", "namespace": "team"}, "spec": {"member": "alice", "credits": "500"}});
    if !status.is_null() {
        r["status"] = status;
    }
    r
}

fn allowed(old: Value, new: Value) -> bool {
    let evaluator = VapEvaluator::builder().object(new).old_object(old).build();
    let results = evaluator.evaluate(&validations());
    assert_eq!(results.len(), 3);
    results.iter().all(|r| r.passed)
}

#[test]
fn approvers_may_set_only_the_approval_and_only_while_pending() {
    let approval = json!({"decision": "Approve", "credits": "300"});
    // First decision on a fresh request, or on one the operator marked Pending.
    assert!(allowed(request(Value::Null), request(json!({"approval": approval}))));
    let pending = json!({"phase": "Pending", "conditions": [{"type": "Ready"}]});
    let mut decided = pending.clone();
    decided["approval"] = approval.clone();
    assert!(allowed(request(pending.clone()), request(decided.clone())));

    // Forging the operator's fields is refused.
    let mut forged = pending.clone();
    forged["phase"] = json!("Approved");
    assert!(!allowed(request(pending.clone()), request(forged)));
    let mut forged = pending.clone();
    forged["approvedCredits"] = json!("500");
    assert!(!allowed(request(pending.clone()), request(forged)));
    let mut dropped = pending.clone();
    dropped.as_object_mut().unwrap().remove("conditions");
    assert!(!allowed(request(pending), request(dropped)));

    // Once decided, nothing more.
    let approved = json!({"phase": "Approved", "approvedCredits": "300", "approval": approval});
    let mut again = approved.clone();
    again["approval"] = json!({"decision": "Deny"});
    assert!(!allowed(request(approved.clone()), request(again)));
    assert!(!allowed(
        request(json!({"phase": "AutoApproved"})),
        request(json!({"phase": "AutoApproved", "approval": {"decision": "Deny"}}))
    ));
}
