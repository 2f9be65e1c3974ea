//! Crash safety: SIGKILL the binary while usage streams in, many times.
//! Every acknowledged event must be in the ledger exactly once, and
//! nothing unacknowledged may be half-applied.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

const MANIFESTS: &str = r#"
apiVersion: credits.alchemi.io/v1alpha1
kind: CreditAccount
metadata: {name: acme, namespace: team}
spec: {creditsPerCycle: 100000000, cadence: CalendarMonth, creditFactor: 1}
---
apiVersion: credits.alchemi.io/v1alpha1
kind: CreditGroup
metadata: {name: default, namespace: team}
spec: {monthlyCredits: 100000000}
---
apiVersion: credits.alchemi.io/v1alpha1
kind: MemberAllocation
metadata: {name: alice, namespace: team}
spec: {user: {id: u-alice, email: alice@example.com, name: Alice}, monthlyCredits: 100000000}
"#;

const USAGE: &str = "/v1/namespaces/team/accounts/acme/usage";

struct Event {
    key: String,
    credits: u64,
    acked: bool,
}

fn start(dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_credit-operator"))
        .args(["standalone", "--manifests"])
        .arg(dir.join("manifests"))
        .args([
            "--ledger",
            &format!("sqlite://{}", dir.join("credits.db").display()),
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    std::thread::spawn(move || for _ in lines {});
    (child, first.rsplit(' ').next().unwrap().to_string())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into()
}

fn post(agent: &ureq::Agent, url: &str, body: &Value) -> Option<Value> {
    let mut response = agent.post(url).send_json(body).ok()?;
    if response.status() != 200 {
        return None;
    }
    response.body_mut().read_json().ok()
}

#[test]
fn acknowledged_usage_survives_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
    std::fs::write(dir.path().join("manifests/all.yaml"), MANIFESTS).unwrap();
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();

    for round in 0..8u64 {
        let (mut child, base) = start(dir.path());
        let stop = Arc::new(AtomicBool::new(false));
        let mut streams = Vec::new();
        for t in 0..4u64 {
            let (events, stop, url) = (events.clone(), stop.clone(), format!("{base}{USAGE}"));
            streams.push(std::thread::spawn(move || {
                let agent = agent();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("r{round}-t{t}-e{i}");
                    let credits = (i * 7 + t) % 13 + 1;
                    let body = json!({"member": "u-alice", "credits": credits, "idempotencyKey": key});
                    let acked = post(&agent, &url, &body).is_some_and(|r| r["duplicate"] == json!(false));
                    events.lock().unwrap().push(Event { key, credits, acked });
                    if !acked {
                        break; // the server is gone
                    }
                    i += 1;
                }
            }));
        }
        // Let the stream run, then kill without warning.
        std::thread::sleep(Duration::from_millis(150 + round * 40));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for s in streams {
            s.join().unwrap();
        }
    }

    let (mut child, base) = start(dir.path());
    let agent = agent();
    let events = events.lock().unwrap();
    let acked = events.iter().filter(|e| e.acked).count();
    assert!(acked > 200, "the stream ran: {acked} acknowledged events");
    let mut total = 0u64;
    let mut unacked_committed = 0;
    for e in events.iter() {
        let body = json!({"member": "u-alice", "credits": e.credits, "idempotencyKey": e.key});
        let answer = post(&agent, &format!("{base}{USAGE}"), &body).expect("the retry is answered");
        let duplicate = answer["duplicate"].as_bool().unwrap();
        if e.acked {
            assert!(duplicate, "acknowledged event {} was lost", e.key);
        } else if duplicate {
            unacked_committed += 1;
        }
        assert_eq!(
            answer["credits"],
            json!(e.credits.to_string()),
            "{} answered another amount",
            e.key
        );
        total += e.credits;
    }
    // Now every event is in exactly once: the totals must match to the credit.
    let overview: Value = agent
        .get(&format!("{base}/v1/namespaces/team/accounts/acme/overview"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert_eq!(overview["used"], json!(total.to_string()));
    eprintln!(
        "{} events, {acked} acknowledged, {unacked_committed} committed without an answer",
        events.len()
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
