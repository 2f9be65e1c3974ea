//! The OpenAPI document is generated from the code; docs/openapi.json is
//! a committed copy that must match.

#[test]
fn the_committed_openapi_document_matches_the_code() {
    let generated = credit_operator::api::openapi_json();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json differs from the code: run `UPDATE_OPENAPI=1 cargo test --test openapi` and commit it"
    );
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/namespaces/{ns}/accounts/{account}/usage",
        "/v1/namespaces/{ns}/accounts/{account}/requests/{name}/approve",
        "/metrics",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
}
