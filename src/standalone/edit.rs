//! Editing one object's spec in a manifest file in place: only the values
//! asked for change; comments, key order, layout, quoting and the other
//! documents of the file stay as they were, so `git diff` shows the lines
//! that changed and nothing else.

use std::str::FromStr;

use yaml_edit::{ScalarStyle, ScalarValue, YamlFile};

use crate::api::edits::{Change, ValueKind as Kind};

/// Sets `spec.<key>` of the document holding `kind` `namespace/name` to
/// each change's value and answers the whole new text.
pub fn set_spec_fields(
    text: &str,
    kind: &str,
    namespace: &str,
    name: &str,
    changes: &[Change],
) -> Result<String, String> {
    let file = YamlFile::from_str(text).map_err(|e| format!("cannot read the file as YAML: {e}"))?;
    let document = file
        .documents()
        .find(|d| {
            let Some(m) = d.as_mapping() else { return false };
            let word = |node: Option<yaml_edit::YamlNode>| node.and_then(|n| n.as_scalar().map(|s| s.as_string()));
            let meta = m.get_mapping("metadata");
            word(m.get("kind")).as_deref() == Some(kind)
                && meta.as_ref().and_then(|md| word(md.get("name"))).as_deref() == Some(name)
                && meta
                    .as_ref()
                    .and_then(|md| word(md.get("namespace")))
                    .unwrap_or_else(|| "default".into())
                    == namespace
        })
        .ok_or_else(|| format!("no {kind} {namespace}/{name} in the file"))?;
    let spec = document
        .as_mapping()
        .and_then(|m| m.get_mapping("spec"))
        .ok_or_else(|| format!("{kind} {namespace}/{name} has no spec mapping to edit"))?;
    for change in changes {
        let before = spec.get(change.key).map(|n| n.to_string());
        let scalar = match style_for(before.as_deref(), change) {
            // A plain whole number is written as a YAML integer.
            ScalarStyle::Plain if change.kind == Kind::Amount => ScalarValue::parse(change.value.clone()),
            style => ScalarValue::with_style(change.value.clone(), style),
        };
        spec.set(change.key, scalar);
    }
    Ok(file.to_string())
}

/// Keeps the quoting the value had; a plain value stays plain only where
/// YAML would read it back as the same thing.
fn style_for(before: Option<&str>, change: &Change) -> ScalarStyle {
    let before = before.map(str::trim_start);
    match before.and_then(|b| b.chars().next()) {
        Some('"') => return ScalarStyle::DoubleQuoted,
        Some('\'') => return ScalarStyle::SingleQuoted,
        _ => {}
    }
    let plain_ok = match change.kind {
        Kind::Amount => !change.value.is_empty() && change.value.bytes().all(|b| b.is_ascii_digit()),
        Kind::Word => is_plain_word(&change.value),
    };
    if plain_ok {
        ScalarStyle::Plain
    } else {
        ScalarStyle::DoubleQuoted
    }
}

/// A word YAML reads back as the same string when written unquoted: safe
/// characters only, not a boolean or null, and not a number (a letter
/// other than an exponent's `e` is in it, so `15d` and `Europe/Berlin`
/// stay plain while `1e5` would not).
fn is_plain_word(value: &str) -> bool {
    let starts_ok = value.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let chars_ok = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '+'));
    let wordy = value
        .chars()
        .any(|c| c.is_ascii_alphabetic() && !matches!(c, 'e' | 'E'));
    let lower = value.to_ascii_lowercase();
    let special = matches!(
        lower.as_str(),
        "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n" | "null" | "nan" | "inf" | ".nan" | ".inf"
    ) || lower.starts_with("0x")
        || lower.starts_with("0o");
    starts_ok && chars_ok && wordy && !special
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# Groups of the ml-platform account.\napiVersion: credits.alchemi.io/v1alpha1\nkind: CreditGroup\nmetadata:\n  name: research   # the research team\n  namespace: ml-platform\nspec:\n  monthlyCredits: \"40000\"  # per cycle\n  autoApproveReserve: 2000\n---\n# Product.\napiVersion: credits.alchemi.io/v1alpha1\nkind: CreditGroup\nmetadata: {name: product, namespace: ml-platform}\nspec:\n  monthlyCredits: 25000\n\n# trailing comment\n";

    fn amount(key: &'static str, value: &str) -> Change {
        Change {
            key,
            value: value.into(),
            kind: Kind::Amount,
        }
    }

    fn changed_lines(before: &str, after: &str) -> Vec<(String, String)> {
        before
            .lines()
            .zip(after.lines())
            .filter(|(a, b)| a != b)
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn a_quoted_value_changes_in_its_line_only_keeping_quotes_and_comment() {
        let after = set_spec_fields(
            FILE,
            "CreditGroup",
            "ml-platform",
            "research",
            &[amount("monthlyCredits", "45000.5")],
        )
        .unwrap();
        assert_eq!(after.lines().count(), FILE.lines().count());
        assert_eq!(
            changed_lines(FILE, &after),
            vec![(
                "  monthlyCredits: \"40000\"  # per cycle".to_string(),
                "  monthlyCredits: \"45000.5\"  # per cycle".to_string()
            )]
        );
    }

    #[test]
    fn a_plain_whole_number_stays_plain_and_a_fraction_is_quoted() {
        let whole = set_spec_fields(
            FILE,
            "CreditGroup",
            "ml-platform",
            "product",
            &[amount("monthlyCredits", "26000")],
        )
        .unwrap();
        assert_eq!(
            changed_lines(FILE, &whole),
            vec![(
                "  monthlyCredits: 25000".to_string(),
                "  monthlyCredits: 26000".to_string()
            )]
        );
        let fraction = set_spec_fields(
            FILE,
            "CreditGroup",
            "ml-platform",
            "product",
            &[amount("monthlyCredits", "0.25")],
        )
        .unwrap();
        assert_eq!(
            changed_lines(FILE, &fraction),
            vec![(
                "  monthlyCredits: 25000".to_string(),
                "  monthlyCredits: \"0.25\"".to_string()
            )]
        );
    }

    #[test]
    fn a_missing_key_is_added_to_the_right_document() {
        let after = set_spec_fields(
            FILE,
            "CreditGroup",
            "ml-platform",
            "research",
            &[amount("extraCredits", "750")],
        )
        .unwrap();
        let lines: Vec<&str> = after.lines().collect();
        let at = lines.iter().position(|l| *l == "  extraCredits: 750").expect("added");
        assert!(at < lines.iter().position(|l| *l == "---").unwrap(), "{after}");
        assert_eq!(lines.len(), FILE.lines().count() + 1);
        assert!(after.contains("# trailing comment"));
    }

    #[test]
    fn words_keep_plain_style_unless_yaml_would_read_them_otherwise() {
        let word = |v: &str| Change {
            key: "group",
            value: v.into(),
            kind: Kind::Word,
        };
        let after = set_spec_fields(FILE, "CreditGroup", "ml-platform", "product", &[word("data")]).unwrap();
        assert!(after.contains("\n  group: data\n"), "{after}");
        let after = set_spec_fields(FILE, "CreditGroup", "ml-platform", "product", &[word("true")]).unwrap();
        assert!(after.contains("\n  group: \"true\"\n"), "{after}");
        let after = set_spec_fields(FILE, "CreditGroup", "ml-platform", "product", &[word("15d")]).unwrap();
        assert!(after.contains("\n  group: 15d\n"), "{after}");
        let after = set_spec_fields(FILE, "CreditGroup", "ml-platform", "product", &[word("1e5")]).unwrap();
        assert!(after.contains("\n  group: \"1e5\"\n"), "{after}");
    }

    #[test]
    fn an_object_not_in_the_file_is_an_error_naming_it() {
        let e = set_spec_fields(
            FILE,
            "CreditGroup",
            "other",
            "research",
            &[amount("monthlyCredits", "1")],
        )
        .unwrap_err();
        assert_eq!(e, "no CreditGroup other/research in the file");
    }
}
