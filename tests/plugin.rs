//! `kubectl credits` against the in-memory API server: each command's
//! table output, the patches it sends and its confirmations. (Every
//! subcommand also runs against a real kube-apiserver in
//! `tests/cluster.rs`, RBAC refusals included.)

mod support;

use clap::Parser;
use credit_operator::plugin::{run, Cli};
use serde_json::{json, Value};
use support::apiserver::FakeApi;

const NS: &str = "team";

fn seeded() -> FakeApi {
    let api = FakeApi::new();
    api.create_object("creditaccounts", NS, json!({"apiVersion": "credits.alchemi.io/v1alpha1", "kind": "CreditAccount",
        "metadata": {"name": "acme"}, "spec": {"creditsPerCycle": 10000, "cadence": "CalendarMonth", "creditFactor": 1}}));
    api.merge_patch("creditaccounts", NS, "acme", true, json!({"status": {
        "cycle": {"number": 3, "start": "2026-11-01T00:00:00Z", "end": "2099-12-01T00:00:00Z"},
        "creditsPerCycle": "10000", "used": "2500", "balance": "7500", "usagePercent": "25", "allocated": "5500",
        "unallocated": "4500", "trackingEnabled": true,
        "allocationOverview": [{"name": "default", "budget": "1000", "used": "0"}, {"name": "ml", "budget": "4500", "used": "2500"}]}}));
    api.create_object(
        "creditgroups",
        NS,
        json!({"apiVersion": "credits.alchemi.io/v1alpha1", "kind": "CreditGroup",
        "metadata": {"name": "ml"}, "spec": {"monthlyCredits": 4000, "extraCredits": 500, "autoApproveReserve": 300}}),
    );
    api.merge_patch(
        "creditgroups",
        NS,
        "ml",
        true,
        json!({"status": {"members": 2, "distributed": "3000", "available": "1500",
        "autoApproveRemaining": "100", "used": "2500", "budget": "4500", "granted": "200"}}),
    );
    for (name, email, monthly, used) in [
        ("alice", "alice@example.com", "2000", "2000"),
        ("bob", "bob@example.com", "1000", "500"),
    ] {
        api.create_object("memberallocations", NS, json!({"apiVersion": "credits.alchemi.io/v1alpha1", "kind": "MemberAllocation",
            "metadata": {"name": name}, "spec": {"group": "ml", "user": {"id": format!("u-{name}"), "email": email, "name": name.to_uppercase()}, "monthlyCredits": monthly.parse::<u64>().unwrap()}}));
        api.merge_patch(
            "memberallocations",
            NS,
            name,
            true,
            json!({"status": {"group": "ml", "monthlyCredits": monthly, "extraCredits": "0",
            "granted": "0", "used": used, "remaining": "0"}}),
        );
    }
    for (name, phase) in [("waiting", "Pending"), ("done", "AutoApproved")] {
        api.create_object(
            "creditrequests",
            NS,
            json!({"apiVersion": "credits.alchemi.io/v1alpha1", "kind": "CreditRequest",
            "metadata": {"name": name}, "spec": {"member": "bob", "credits": 400, "reason": "eval run"}}),
        );
        api.merge_patch("creditrequests", NS, name, true, json!({"status": {"phase": phase}}));
    }
    api
}

/// Runs `kubectl credits ARGS` with `input` on stdin; (ok, output).
async fn credits(api: &FakeApi, args: &str, input: &str) -> (Result<(), String>, String) {
    let cli = Cli::try_parse_from(std::iter::once("kubectl-credits").chain(args.split_whitespace()))
        .expect("valid arguments");
    let mut out = Vec::new();
    let mut stdin = std::io::Cursor::new(input.as_bytes().to_vec());
    let result = run(cli, api.client(), NS, false, &mut stdin, &mut out)
        .await
        .map_err(|e| e.to_string());
    (result, String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn reads_print_aligned_tables_and_structured_output() {
    let api = seeded();
    let (ok, out) = credits(&api, "overview", "").await;
    ok.unwrap();
    assert!(out.contains("Account:   team/acme  (cadence CalendarMonth)"), "{out}");
    assert!(
        out.contains("Cycle:     3  2026-11-01T00:00:00Z → 2099-12-01T00:00:00Z"),
        "{out}"
    );
    assert!(out.contains("Usage:     25% [#####...............]"), "{out}");
    assert!(
        out.contains("GROUP     BUDGET   USED\ndefault   1000     0\nml        4500     2500\n"),
        "{out}"
    );

    let (_, json_out) = credits(&api, "overview -o json", "").await;
    let v: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(v["status"]["balance"], "7500");

    let (_, out) = credits(&api, "groups", "").await;
    assert_eq!(out, "NAME   MONTHLY   EXTRA   DISTRIBUTED   AVAILABLE   AUTO-APPROVE   USED   MEMBERS\nml     4000      500     3000          1500        100/300        2500   2\n");

    let (_, out) = credits(&api, "members --search ALI", "").await;
    assert!(
        out.contains("alice   alice@example.com   ml      2000      0       0         2000   0"),
        "{out}"
    );
    assert!(!out.contains("bob"), "{out}");
    let (_, out) = credits(&api, "members --page 2 --page-size 1 -o yaml", "").await;
    assert!(out.contains("name: bob") && out.contains("total: 2"), "{out}");

    let (_, out) = credits(&api, "requests --status Pending", "").await;
    assert!(out.contains("waiting") && !out.contains("done"), "{out}");
}

#[tokio::test]
async fn approve_and_deny_patch_the_status_and_refuse_decided_requests() {
    let api = seeded();
    let (ok, out) = credits(&api, "approve waiting --credits 300 --reason half", "").await;
    ok.unwrap();
    assert_eq!(out, "creditrequest/waiting approved\n");
    let approval = &api.object("creditrequests", NS, "waiting").unwrap()["status"]["approval"];
    assert_eq!(
        approval,
        &json!({"decision": "Approve", "credits": "300", "reason": "half"})
    );

    let (err, _) = credits(&api, "deny waiting --reason no", "").await;
    assert!(err.unwrap_err().contains("already has an approval"));
    let (err, _) = credits(&api, "approve done", "").await;
    assert!(err.unwrap_err().contains("already AutoApproved: a decision is final"));

    api.create_object(
        "creditrequests",
        NS,
        json!({"apiVersion": "credits.alchemi.io/v1alpha1", "kind": "CreditRequest",
        "metadata": {"name": "other"}, "spec": {"member": "bob", "credits": 50, "reason": "eval"}}),
    );
    let (err, _) = credits(&api, "approve other --credits 51", "").await;
    assert!(err.unwrap_err().contains("at most the 50 requested"));
}

#[tokio::test]
async fn spec_changes_patch_the_spec_and_ask_before_limit_cadence_and_reset() {
    let api = seeded();
    credits(&api, "set-allocation bob --monthly 1200 --extra 50", "")
        .await
        .0
        .unwrap();
    let bob = api.object("memberallocations", NS, "bob").unwrap();
    assert_eq!(
        (
            bob["spec"]["monthlyCredits"].as_str(),
            bob["spec"]["extraCredits"].as_str()
        ),
        (Some("1200"), Some("50"))
    );

    let (err, out) = credits(&api, "set-limit acme 20000", "n\n").await;
    assert!(out.contains("applies at once") && err.is_err());
    assert_eq!(
        api.object("creditaccounts", NS, "acme").unwrap()["spec"]["creditsPerCycle"],
        json!(10000)
    );
    credits(&api, "set-limit acme 20000", "y\n").await.0.unwrap();
    assert_eq!(
        api.object("creditaccounts", NS, "acme").unwrap()["spec"]["creditsPerCycle"],
        "20000"
    );
    credits(&api, "set-cadence acme 1w --yes", "").await.0.unwrap();
    credits(&api, "set-factor acme 100", "").await.0.unwrap();
    credits(&api, "set-signup acme 25", "").await.0.unwrap();
    let spec = api.object("creditaccounts", NS, "acme").unwrap()["spec"].clone();
    assert_eq!(
        (
            spec["cadence"].as_str(),
            spec["creditFactor"].as_str(),
            spec["signupCredits"].as_str()
        ),
        (Some("1w"), Some("100"), Some("25"))
    );
    let (err, _) = credits(&api, "set-cadence acme fortnight --yes", "").await;
    assert!(err.unwrap_err().contains("CADENCE"));

    let (err, out) = credits(&api, "reset-cycle acme", "acm\n").await;
    assert!(out.contains("cannot be undone") && err.is_err());
    assert!(api.object("creditaccounts", NS, "acme").unwrap()["metadata"]["annotations"].is_null());
    credits(&api, "reset-cycle acme", "acme\n").await.0.unwrap();
    let mark = api.object("creditaccounts", NS, "acme").unwrap()["metadata"]["annotations"]
        ["credits.alchemi.io/reset-requested-at"]
        .clone();
    assert!(mark.as_str().unwrap().parse::<jiff::Timestamp>().is_ok(), "{mark}");
}

#[test]
fn bad_arguments_get_a_usage_message_and_exit_2() {
    for args in [
        vec!["approve"],
        vec!["deny", "x"],
        vec!["groups", "--bogus"],
        vec!["requests", "--status", "Maybe"],
        vec!["nonsense"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-credits"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(err.contains("Usage") || err.contains("--help"), "{args:?}: {err}");
    }
}
