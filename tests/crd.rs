//! The CRDs: generated output equals crds/, parses as real CRDs, and the
//! CEL rules accept good objects and refuse bad ones, naming the field.

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

fn account(spec: Value) -> Value {
    json!({"apiVersion": "credits.alchemi.io/v1alpha1", "kind": "CreditAccount",
           "metadata": {"name": "acme", "namespace": "team"}, "spec": spec})
}

fn errors(kind: &str, obj: &Value) -> Vec<String> {
    check_cel_rules(kind, obj, None)
}

#[test]
fn account_rules_accept_valid_specs() {
    for spec in [
        json!({"creditsPerCycle": 1500, "cadence": "CalendarMonth"}),
        json!({"creditsPerCycle": "12.5", "cadence": "15d", "timezone": "Europe/Berlin", "creditFactor": "100"}),
        json!({"creditsPerCycle": 0, "cadence": "30m", "signupCredits": "0.000000001"}),
    ] {
        assert_eq!(
            errors("CreditAccount", &account(spec.clone())),
            Vec::<String>::new(),
            "{spec}"
        );
    }
}

#[test]
fn account_rules_refuse_bad_amounts_cadences_and_timezones_naming_the_field() {
    let cases = [
        (json!({"creditsPerCycle": -1, "cadence": "1d"}), "creditsPerCycle"),
        (json!({"creditsPerCycle": "-1", "cadence": "1d"}), "creditsPerCycle"),
        (json!({"creditsPerCycle": "abc", "cadence": "1d"}), "creditsPerCycle"),
        (
            json!({"creditsPerCycle": "1.0000000001", "cadence": "1d"}),
            "creditsPerCycle",
        ),
        (
            json!({"creditsPerCycle": "12345678901234567890", "cadence": "1d"}),
            "creditsPerCycle",
        ),
        (json!({"creditsPerCycle": 10, "cadence": "1s"}), "cadence"),
        (json!({"creditsPerCycle": 10, "cadence": "0d"}), "cadence"),
        (json!({"creditsPerCycle": 10, "cadence": "monthly"}), "cadence"),
        (
            json!({"creditsPerCycle": 10, "cadence": "1d", "timezone": "X".repeat(65)}),
            "timezone",
        ),
        (
            json!({"creditsPerCycle": 10, "cadence": "1d", "creditFactor": "-0.5"}),
            "creditFactor",
        ),
    ];
    for (spec, field) in cases {
        let errs = errors("CreditAccount", &account(spec.clone()));
        assert_eq!(errs.len(), 1, "{spec}: {errs:?}");
        assert!(errs[0].contains(field), "{spec}: {errs:?} should name {field}");
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
fn request_credits_must_be_more_than_zero() {
    assert!(errors("CreditRequest", &request(json!(500), None)).is_empty());
    assert!(errors("CreditRequest", &request(json!("0.5"), None)).is_empty());
    for bad in [json!(0), json!("0"), json!("0.000"), json!(-5)] {
        let errs = errors("CreditRequest", &request(bad.clone(), None));
        assert!(
            !errs.is_empty() && errs.iter().all(|e| e.contains("credits")),
            "{bad}: {errs:?}"
        );
    }
    let long = json!({"apiVersion": "credits.alchemi.io/v1alpha1", "kind": "CreditRequest",
        "metadata": {"name": "more"}, "spec": {"member": "alice", "credits": 1, "reason": "x".repeat(1025)}});
    let errs = errors("CreditRequest", &long);
    assert!(errs.len() == 1 && errs[0].contains("reason"), "{errs:?}");
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
    let changed = request(json!(500), Some(json!({"approval": {"decision": "Deny"}})));
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
               "spec": {"user": {"id": id, "email": "alice@example.com"}, "monthlyCredits": 100}})
    };
    assert!(errors("MemberAllocation", &member("u-1")).is_empty());
    let errs = errors("MemberAllocation", &member(""));
    assert!(errs.len() == 1 && errs[0].contains("user.id"), "{errs:?}");
    let errs = check_cel_rules("MemberAllocation", &member("u-2"), Some(&member("u-1")));
    assert!(errs.iter().any(|e| e.contains("immutable")), "{errs:?}");
}

#[test]
fn group_amounts_must_not_be_negative() {
    let group = |spec: Value| json!({"apiVersion": "credits.alchemi.io/v1alpha1", "kind": "CreditGroup", "metadata": {"name": "ml"}, "spec": spec});
    assert!(errors(
        "CreditGroup",
        &group(json!({"monthlyCredits": 500, "autoApproveReserve": "50.5"}))
    )
    .is_empty());
    let errs = errors(
        "CreditGroup",
        &group(json!({"monthlyCredits": 500, "extraCredits": -1})),
    );
    assert!(errs.len() == 1 && errs[0].contains("extraCredits"), "{errs:?}");
}
