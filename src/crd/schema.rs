//! What the API server demands of a CRD schema beyond what schemars
//! generates, and the value validations it then applies.
//!
//! Every string gets a `maxLength` and every list a `maxItems` (the API
//! server bounds CEL's cost by them, and an unbounded status is a
//! liability on a shared etcd); unsigned integers become `int64`/`int32`
//! with `minimum: 0` (the server knows no `uint64` format); conditions
//! merge by `type` under server-side apply.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{json, Value};

/// The longest string a field may hold, by its name.
fn max_length(field: &str) -> u64 {
    match field {
        // metav1.Condition's own bounds.
        "message" => 32768,
        "type" => 316,
        // Names of Kubernetes objects.
        "name" | "group" | "member" | "defaultGroup" => 253,
        _ => 1024,
    }
}

/// The most items a list may hold, by its name.
fn max_items(field: &str) -> u64 {
    match field {
        "conditions" => 32,
        _ => 10_000,
    }
}

fn bound(schema: &mut Value, field: &str) {
    let Some(o) = schema.as_object_mut() else { return };
    match o.get("format").and_then(Value::as_str) {
        Some("uint64") => {
            o.insert("format".into(), json!("int64"));
            o.entry("minimum").or_insert(json!(0));
        }
        Some("uint32" | "uint16" | "uint8") => {
            o.insert("format".into(), json!("int32"));
            o.entry("minimum").or_insert(json!(0));
        }
        _ => {}
    }
    let is_date = o.get("format").and_then(Value::as_str) == Some("date-time");
    match o.get("type").and_then(Value::as_str) {
        Some("string") if !is_date && !o.contains_key("enum") => {
            o.entry("maxLength").or_insert(json!(max_length(field)));
        }
        Some("array") => {
            o.entry("maxItems").or_insert(json!(max_items(field)));
            if field == "conditions" {
                o.insert("x-kubernetes-list-type".into(), json!("map"));
                o.insert("x-kubernetes-list-map-keys".into(), json!(["type"]));
            }
        }
        _ => {}
    }
    if let Some(props) = o.get_mut("properties").and_then(Value::as_object_mut) {
        for (name, child) in props.iter_mut() {
            bound(child, name);
        }
    }
    if let Some(items) = o.get_mut("items") {
        bound(items, field);
    }
    if let Some(extra) = o.get_mut("additionalProperties").filter(|v| v.is_object()) {
        bound(extra, field);
    }
}

/// A CRD with every string and list bounded (see the module docs).
pub fn bounded(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) else {
            continue;
        };
        let Ok(mut value) = serde_json::to_value(&*schema) else {
            continue;
        };
        bound(&mut value, "");
        if let Ok(hardened) = serde_json::from_value(value) {
            *schema = hardened;
        }
    }
    crd
}

/// The API server's value validations of `value` under `schema`: required
/// fields, pattern, minimum and maximum, maxLength and maxItems, in its words
/// (`spec.x in body should match '…'`).
pub fn check_values(schema: &Value, value: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    walk(schema, value, "", &mut problems);
    problems
}

fn walk(schema: &Value, value: &Value, path: &str, problems: &mut Vec<String>) {
    let say = |problems: &mut Vec<String>, what: String| problems.push(format!("{path}: {path} in body {what}"));
    match value {
        Value::String(s) => {
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                if !regex::Regex::new(pattern).is_ok_and(|re| re.is_match(s)) {
                    say(problems, format!("should match '{pattern}'"));
                }
            }
            let length = s.chars().count() as u64;
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64).filter(|m| length > *m) {
                problems.push(format!("{path}: Too long: may not be more than {max} characters"));
            }
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64).filter(|m| length < *m) {
                say(problems, format!("should be at least {min} chars long"));
            }
        }
        Value::Number(n) => {
            // Compared as decimals: an amount may be a 19-digit integer.
            let number = |v: &Value| v.to_string().parse::<rust_decimal::Decimal>().ok();
            let here = number(&Value::Number(n.clone()));
            if let (Some(min), Some(x)) = (schema.get("minimum").and_then(number), here) {
                if x < min {
                    say(problems, format!("should be greater than or equal to {min}"));
                }
            }
            if let (Some(max), Some(x)) = (schema.get("maximum").and_then(number), here) {
                if x > max {
                    say(problems, format!("should be less than or equal to {max}"));
                }
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                if items.len() as u64 > max {
                    say(problems, format!("must have at most {max} items"));
                }
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(item_schema, item, &format!("{path}[{i}]"), problems);
                }
            }
        }
        Value::Object(fields) => {
            let props = schema.get("properties").and_then(Value::as_object);
            for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                let Some(name) = required.as_str() else { continue };
                if !fields.contains_key(name) {
                    let at = if path.is_empty() {
                        name.to_string()
                    } else {
                        format!("{path}.{name}")
                    };
                    problems.push(format!("{at}: Required value"));
                }
            }
            for (name, child) in fields {
                let child_path = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                if let Some(child_schema) = props.and_then(|p| p.get(name)) {
                    walk(child_schema, child, &child_path, problems);
                }
            }
        }
        _ => {}
    }
}

/// The fields of `metav1.ObjectMeta` (the CRD's schema says only `object`).
const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// Every field of `value` that `schema` does not know, as a dotted path
/// (`spec.autoAprove`), the way the API server's strict field validation
/// names it. `metadata` is checked against `ObjectMeta`'s fields.
pub fn unknown_fields(schema: &Value, value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    unknown(schema, value, "", &mut out);
    out
}

fn unknown(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
                return;
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|v| v.is_object());
            for (name, child) in fields {
                let child_path = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                if path.is_empty() && matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
                    if name == "metadata" {
                        unknown(&Value::Null, child, "metadata", out);
                    }
                    continue;
                }
                if path == "metadata" {
                    if !OBJECT_META_FIELDS.contains(&name.as_str()) {
                        out.push(child_path);
                    }
                    continue;
                }
                match (props.and_then(|p| p.get(name)), extra) {
                    (Some(child_schema), _) | (None, Some(child_schema)) => {
                        unknown(child_schema, child, &child_path, out)
                    }
                    (None, None) if props.is_some() => out.push(child_path),
                    (None, None) => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    unknown(item_schema, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}
