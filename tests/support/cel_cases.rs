//! Objects the CRDs' rules must admit or refuse, shared by the offline
//! checks (`tests/crd.rs`) and the real API server (`tests/cluster.rs`).
#![allow(dead_code)]

use serde_json::{json, Value};

/// An object to create, and what the rules say of it.
pub struct Case {
    pub kind: &'static str,
    pub object: Value,
    /// `None`: admitted. `Some((field, message))`: refused, the error
    /// naming the field and saying the rule's message.
    pub refused: Option<(&'static str, &'static str)>,
}

/// An amount written as a string that is not one (the schema's pattern).
const NOT_AN_AMOUNT: &str = "should match '^[0-9]{1,18}([.][0-9]{1,9})?$'";
/// A negative amount written as an integer.
const NEGATIVE: &str = "should be greater than or equal to 0";

fn object(kind: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "credits.alchemi.io/v1alpha1", "kind": kind,
           "metadata": {"name": name, "namespace": "team"}, "spec": spec})
}

pub fn account(spec: Value) -> Value {
    object("CreditAccount", "acme", spec)
}

pub fn group(spec: Value) -> Value {
    object("CreditGroup", "ml", spec)
}

pub fn member(id: &str) -> Value {
    object(
        "MemberAllocation",
        "alice",
        json!({"user": {"id": id, "email": "alice@example.com", "name": "Alice"}, "monthlyCredits": 100}),
    )
}

pub fn request(credits: Value, reason: &str) -> Value {
    object(
        "CreditRequest",
        "more",
        json!({"member": "alice", "credits": credits, "reason": reason}),
    )
}

fn ok(kind: &'static str, object: Value) -> Case {
    Case {
        kind,
        object,
        refused: None,
    }
}

fn bad(kind: &'static str, object: Value, field: &'static str, message: &'static str) -> Case {
    Case {
        kind,
        object,
        refused: Some((field, message)),
    }
}

/// Every create-time rule of the four kinds, each broken once, and
/// objects that keep all of them.
pub fn creates() -> Vec<Case> {
    let a = "CreditAccount";
    let cadence = "must be CalendarMonth or a duration";
    vec![
        ok(
            a,
            account(json!({"creditsPerCycle": 1500, "cadence": "CalendarMonth", "creditFactor": 1})),
        ),
        ok(
            a,
            account(
                json!({"creditsPerCycle": "12.5", "cadence": "15d", "timezone": "Europe/Berlin", "creditFactor": "100"}),
            ),
        ),
        ok(
            a,
            account(json!({"creditsPerCycle": 0, "cadence": "30m", "creditFactor": 0, "signupCredits": "0.000000001"})),
        ),
        bad(
            a,
            account(json!({"creditsPerCycle": -1, "cadence": "1d", "creditFactor": 1})),
            "spec.creditsPerCycle",
            NEGATIVE,
        ),
        bad(
            a,
            account(json!({"creditsPerCycle": "-1", "cadence": "1d", "creditFactor": 1})),
            "spec.creditsPerCycle",
            NOT_AN_AMOUNT,
        ),
        bad(
            a,
            account(json!({"creditsPerCycle": "abc", "cadence": "1d", "creditFactor": 1})),
            "spec.creditsPerCycle",
            NOT_AN_AMOUNT,
        ),
        bad(
            a,
            account(json!({"creditsPerCycle": "1.0000000001", "cadence": "1d", "creditFactor": 1})),
            "spec.creditsPerCycle",
            NOT_AN_AMOUNT,
        ),
        bad(
            a,
            account(json!({"creditsPerCycle": "12345678901234567890", "cadence": "1d", "creditFactor": 1})),
            "spec.creditsPerCycle",
            NOT_AN_AMOUNT,
        ),
        bad(
            a,
            account(json!({"creditsPerCycle": 1_000_000_000_000_000_000_u64, "cadence": "1d", "creditFactor": 1})),
            "spec.creditsPerCycle",
            "must have at most 18 digits before the point",
        ),
        bad(
            a,
            account(json!({"creditsPerCycle": 10, "cadence": "1s", "creditFactor": 1})),
            "spec.cadence",
            cadence,
        ),
        bad(
            a,
            account(json!({"creditsPerCycle": 10, "cadence": "0d", "creditFactor": 1})),
            "spec.cadence",
            cadence,
        ),
        bad(
            a,
            account(json!({"creditsPerCycle": 10, "cadence": "monthly", "creditFactor": 1})),
            "spec.cadence",
            cadence,
        ),
        bad(
            a,
            account(json!({"creditsPerCycle": 10, "cadence": "1d", "timezone": "X".repeat(65), "creditFactor": 1})),
            "spec.timezone",
            "may not be more than 64",
        ),
        bad(
            a,
            account(json!({"creditsPerCycle": 10, "cadence": "1d", "creditFactor": "-0.5"})),
            "spec.creditFactor",
            NOT_AN_AMOUNT,
        ),
        bad(
            a,
            account(json!({"creditsPerCycle": 10, "cadence": "1d", "defaultGroup": "Not A Name", "creditFactor": 1})),
            "spec.defaultGroup",
            "must be a Kubernetes object name",
        ),
        ok(
            "CreditGroup",
            group(json!({"monthlyCredits": 500, "autoApproveReserve": "50.5"})),
        ),
        bad(
            "CreditGroup",
            group(json!({"monthlyCredits": 500, "extraCredits": -1})),
            "spec.extraCredits",
            NEGATIVE,
        ),
        // Tracking is switched off by writing 0, never by an omission.
        bad(
            a,
            account(json!({"creditsPerCycle": 10, "cadence": "1d"})),
            "spec.creditFactor",
            "Required value",
        ),
        ok("MemberAllocation", member("u-1")),
        bad(
            "MemberAllocation",
            object(
                "MemberAllocation",
                "ann",
                json!({"user": {"id": "u-ann", "name": "Ann"}}),
            ),
            "spec.user.email",
            "Required value",
        ),
        bad(
            "MemberAllocation",
            object(
                "MemberAllocation",
                "ann",
                json!({"user": {"id": "u-ann", "email": "ann at example", "name": "Ann"}}),
            ),
            "spec.user.email",
            "must be an email address",
        ),
        bad(
            "MemberAllocation",
            object(
                "MemberAllocation",
                "ann",
                json!({"user": {"id": "u-ann", "email": "ann@example.com", "name": ""}}),
            ),
            "spec.user.name",
            "should be at least 1 chars long",
        ),
        bad(
            "CreditRequest",
            object("CreditRequest", "more", json!({"member": "ann", "credits": 5})),
            "spec.reason",
            "Required value",
        ),
        bad(
            "CreditRequest",
            request(json!(5), ""),
            "spec.reason",
            "should be at least 1 chars long",
        ),
        bad(
            "MemberAllocation",
            member(""),
            "spec.user.id",
            "should be at least 1 chars long",
        ),
        ok("CreditRequest", request(json!(500), "training run")),
        ok("CreditRequest", request(json!("0.5"), "training run")),
        bad(
            "CreditRequest",
            request(json!(0), "x"),
            "spec.credits",
            "must be greater than zero",
        ),
        bad(
            "CreditRequest",
            request(json!("0"), "x"),
            "spec.credits",
            "must be greater than zero",
        ),
        bad(
            "CreditRequest",
            request(json!("0.000"), "x"),
            "spec.credits",
            "must be greater than zero",
        ),
        bad("CreditRequest", request(json!(-5), "x"), "spec.credits", NEGATIVE),
        bad(
            "CreditRequest",
            request(json!(1), &"x".repeat(1025)),
            "spec.reason",
            "may not be more than 1024",
        ),
    ]
}
