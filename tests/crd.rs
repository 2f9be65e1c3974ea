//! The CRDs: generated output equals crds/, parses as real CRDs, and the
//! CEL rules accept good objects and refuse bad ones, naming the field.

mod support;

use credit_operator::crd::{all_crds, check_cel_rules, crds_yaml};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;
use serde_json::{json, Value};

#[test]
fn crd_command_output_equals_the_committed_crds() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/credits.alchemi.io.yaml"))
        .expect("crds/credits.alchemi.io.yaml exists");
    let generated = crds_yaml().unwrap();
    assert!(
        committed == generated,
        "crds/ is stale: run `cargo run -- crd > crds/credits.alchemi.io.yaml`"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_credit-operator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), committed);
}

#[test]
fn every_committed_crd_parses_as_a_kubernetes_crd() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/credits.alchemi.io.yaml")).unwrap();
    let mut kinds = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&committed) {
        let crd = CustomResourceDefinition::deserialize(doc).expect("a valid CRD");
        assert_eq!(crd.spec.group, "credits.alchemi.io");
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
            "status subresource"
        );
        assert_eq!(crd.spec.names.categories.as_deref(), Some(&["credits".to_string()][..]));
        kinds.push((
            crd.spec.names.kind.clone(),
            crd.spec.names.short_names.clone().unwrap_or_default(),
        ));
    }
    assert_eq!(
        kinds,
        vec![
            ("CreditAccount".to_string(), vec!["cacct".to_string()]),
            ("CreditGroup".to_string(), vec!["cgrp".to_string()]),
            ("MemberAllocation".to_string(), vec!["cmem".to_string()]),
            ("CreditRequest".to_string(), vec!["creq".to_string()]),
        ]
    );
}

#[test]
fn printer_columns_make_kubectl_get_the_dashboard() {
    let columns = |kind: &str| -> Vec<String> {
        let crd = all_crds().into_iter().find(|c| c.spec.names.kind == kind).unwrap();
        crd.spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.name)
            .collect()
    };
    assert_eq!(
        columns("CreditAccount"),
        ["Cadence", "Cycle-End", "Limit", "Used", "Balance", "Usage%"]
    );
    assert_eq!(
        columns("CreditGroup"),
        [
            "Monthly",
            "Extra",
            "Distributed",
            "Available",
            "Auto-Approve",
            "Used",
            "Members"
        ]
    );
    assert_eq!(
        columns("MemberAllocation"),
        ["Group", "Email", "Monthly", "Used", "Remaining"]
    );
    assert_eq!(
        columns("CreditRequest"),
        ["Member", "Credits", "Approved", "Phase", "Age"]
    );
}

#[test]
fn every_create_rule_admits_good_objects_and_refuses_bad_ones_naming_the_field() {
    let cases = support::cel_cases::creates();
    assert!(cases.len() >= 20, "{} cases", cases.len());
    for case in cases {
        let errs = check_cel_rules(case.kind, &case.object, None);
        match case.refused {
            None => assert_eq!(errs, Vec::<String>::new(), "{}", case.object["spec"]),
            Some((field, message)) => {
                assert!(
                    errs.iter().any(|e| e.contains(field) && e.contains(message)),
                    "{}: {errs:?} should name {field} and say {message:?}",
                    case.object["spec"]
                );
            }
        }
    }
}

fn request(credits: Value, status: Option<Value>) -> Value {
    let mut obj = json!({"apiVersion": "credits.alchemi.io/v1alpha1", "kind": "CreditRequest",
        "metadata": {"name": "more", "namespace": "team"},
        "spec": {"member": "alice", "credits": credits, "reason": "training run"}});
    if let Some(s) = status {
        obj["status"] = s;
    }
    obj
}

#[test]
fn a_request_spec_and_a_set_approval_cannot_change() {
    let approved = json!({"approval": {"decision": "Approve", "credits": "500"}});
    let old = request(json!(500), Some(approved.clone()));
    // Same approval, operator fields added: fine.
    let mut same = old.clone();
    same["status"]["phase"] = json!("Approved");
    assert!(check_cel_rules("CreditRequest", &same, Some(&old)).is_empty());
    // Changing the decision is refused.
    let changed = request(
        json!(500),
        Some(json!({"approval": {"decision": "Deny", "reason": "not now"}})),
    );
    let errs = check_cel_rules("CreditRequest", &changed, Some(&old));
    assert!(errs.iter().any(|e| e.contains("approval")), "{errs:?}");
    // Removing it is refused.
    let removed = request(json!(500), Some(json!({"phase": "Pending"})));
    assert!(!check_cel_rules("CreditRequest", &removed, Some(&old)).is_empty());
    // Setting it the first time is allowed.
    let pending = request(json!(500), Some(json!({"phase": "Pending"})));
    assert!(check_cel_rules("CreditRequest", &old, Some(&pending)).is_empty());
    // The spec is immutable.
    let respec = request(json!(900), Some(approved));
    let errs = check_cel_rules("CreditRequest", &respec, Some(&old));
    assert!(errs.iter().any(|e| e.contains("immutable")), "{errs:?}");
}

#[test]
fn a_member_user_id_is_required_and_immutable() {
    let member = |id: &str| {
        json!({"apiVersion": "credits.alchemi.io/v1alpha1", "kind": "MemberAllocation",
               "metadata": {"name": "alice"},
               "spec": {"user": {"id": id, "email": "alice@example.com", "name": "Alice"}, "monthlyCredits": 100}})
    };
    let errs = check_cel_rules("MemberAllocation", &member("u-2"), Some(&member("u-1")));
    assert!(errs.iter().any(|e| e.contains("immutable")), "{errs:?}");
}
