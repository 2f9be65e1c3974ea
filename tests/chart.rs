//! The Helm chart ships the generated CRDs. (The chart is installed and
//! its admission policy enforced by a real API server in
//! `tests/cluster.rs`.)

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/credit-operator");

#[test]
fn the_chart_ships_exactly_the_generated_crds() {
    let shipped = std::fs::read_to_string(format!("{CHART}/crds/credits.alchemi.io.yaml")).unwrap();
    assert!(
        shipped == credit_operator::crd::crds_yaml().unwrap(),
        "charts/credit-operator/crds is stale: copy crds/ into it"
    );
}
