//! Cost tracking: the labels a usage event may carry (`model`, `provider`,
//! `tags`) and the sums the ledger keeps per cycle by model and by
//! provider. Sums by member and by group live in their tallies beside
//! `used`; this module reads all four the same way.
//!
//! The number of distinct models (and providers) summed separately in one
//! cycle is bounded: past [`MAX_KEYS_PER_CYCLE`], new names add to
//! [`OTHER_KEY`], so a gateway sending a fresh model name per event cannot
//! grow memory without bound. Replay applies the same rule in the same
//! order, so the figures are the same after a restart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::LedgerError;
use super::history::ClosedView;
use super::state::Account;
use crate::amount::Amount;
use crate::cycle::CycleWindow;

/// Longest model or provider name.
pub const MAX_LABEL_LEN: usize = 64;
/// Most tags one event carries.
pub const MAX_TAGS: usize = 8;
/// Longest tag key.
pub const MAX_TAG_KEY_LEN: usize = 63;
/// Longest tag value.
pub const MAX_TAG_VALUE_LEN: usize = 256;
/// Distinct models (and, apart, providers) summed by name in one cycle.
pub const MAX_KEYS_PER_CYCLE: usize = 1000;
/// The key of usage that named no model (or no provider).
pub const NONE_KEY: &str = "(none)";
/// The key that sums names past [`MAX_KEYS_PER_CYCLE`].
pub const OTHER_KEY: &str = "(other)";

/// What a usage event says about where its cost came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Labels {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// A model or provider name: starts with a letter or digit, then letters,
/// digits and `-_.:/@+`. Names in parentheses are the ledger's own keys.
fn check_label(field: &str, value: &str) -> Result<(), LedgerError> {
    if value.is_empty() {
        return Err(LedgerError::field(field, "must not be empty (leave it out instead)"));
    }
    if value.len() > MAX_LABEL_LEN {
        return Err(LedgerError::field(
            field,
            format!("must be at most {MAX_LABEL_LEN} characters"),
        ));
    }
    let first_ok = value.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:/@+".contains(c));
    if !first_ok || !rest_ok {
        return Err(LedgerError::field(
            field,
            "must start with a letter or digit and hold only letters, digits and - _ . : / @ +",
        ));
    }
    Ok(())
}

impl Labels {
    pub fn is_empty(&self) -> bool {
        self.model.is_none() && self.provider.is_none() && self.tags.is_empty()
    }

    /// Checks every label; the error names the field (`tags.team`).
    pub fn validate(&self) -> Result<(), LedgerError> {
        if let Some(m) = &self.model {
            check_label("model", m)?;
        }
        if let Some(p) = &self.provider {
            check_label("provider", p)?;
        }
        if self.tags.len() > MAX_TAGS {
            return Err(LedgerError::field("tags", format!("must hold at most {MAX_TAGS} tags")));
        }
        for (key, value) in &self.tags {
            let key_ok = !key.is_empty()
                && key.len() <= MAX_TAG_KEY_LEN
                && key.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && key.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
            if !key_ok {
                let shown: String = key.chars().take(40).collect();
                return Err(LedgerError::field(
                    "tags",
                    format!(
                        "key {shown:?} must be 1 to {MAX_TAG_KEY_LEN} letters, digits and - _ . /, starting with a letter or digit"
                    ),
                ));
            }
            let field = format!("tags.{key}");
            if value.len() > MAX_TAG_VALUE_LEN {
                return Err(LedgerError::field(
                    &field,
                    format!("must be at most {MAX_TAG_VALUE_LEN} characters"),
                ));
            }
            if let Some(c) = value.chars().find(|c| c.is_control()) {
                return Err(LedgerError::field(
                    &field,
                    format!("must not hold control characters (found U+{:04X})", c as u32),
                ));
            }
        }
        Ok(())
    }

    /// A stable 64-bit digest for idempotency (0 when there are no labels,
    /// so keys recorded before labels existed still match a bare retry).
    pub fn digest(&self) -> u64 {
        if self.is_empty() {
            return 0;
        }
        let mut text = String::new();
        for part in [self.model.as_deref(), self.provider.as_deref()] {
            text.push_str(part.unwrap_or("\u{0}"));
            text.push('\u{1}');
        }
        for (k, v) in &self.tags {
            text.push_str(k);
            text.push('\u{2}');
            text.push_str(v);
            text.push('\u{1}');
        }
        super::state::stable_hash(&text) | 1
    }
}

/// One debit as costs count it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    pub credits: Amount,
    /// Dollars the event reported (0 for an event counted in credits).
    pub cost_usd: Amount,
}

/// Gives figure sets with `used`, `cost_usd` and `events` fields
/// `spent()` (those three as a [`CostSum`]) and `count(spend)` (one
/// debit), so every tally counts spending by the same rule.
macro_rules! spending {
    ($($t:ty),+) => {$(
        impl $t {
            /// What was spent: credits used, dollars reported, events.
            pub fn spent(&self) -> $crate::ledger::costs::CostSum {
                $crate::ledger::costs::CostSum {
                    credits: self.used,
                    cost_usd: self.cost_usd,
                    events: self.events,
                }
            }

            /// Counts one debit.
            #[allow(dead_code)]
            pub(crate) fn count(&mut self, spend: $crate::ledger::costs::Spend) {
                self.used += spend.credits;
                self.cost_usd = self.cost_usd.saturating_add(spend.cost_usd);
                self.events = self.events.saturating_add(1);
            }
        }
    )+};
}
pub(crate) use spending;

/// Credits, dollars and events summed under one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostSum {
    pub credits: Amount,
    #[serde(default)]
    pub cost_usd: Amount,
    #[serde(default)]
    pub events: u64,
}

impl CostSum {
    pub fn add(&mut self, spend: Spend) {
        self.credits = self.credits.saturating_add(spend.credits);
        self.cost_usd = self.cost_usd.saturating_add(spend.cost_usd);
        self.events = self.events.saturating_add(1);
    }

    pub fn merge(&mut self, other: CostSum) {
        self.credits = self.credits.saturating_add(other.credits);
        self.cost_usd = self.cost_usd.saturating_add(other.cost_usd);
        self.events = self.events.saturating_add(other.events);
    }

    pub fn is_empty(&self) -> bool {
        self.events == 0 && self.credits.is_zero() && self.cost_usd.is_zero()
    }
}

/// An account's sums by model and by provider for one cycle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CycleCosts {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, CostSum>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub providers: BTreeMap<String, CostSum>,
}

fn add_under(map: &mut BTreeMap<String, CostSum>, name: Option<&str>, spend: Spend) {
    let key = name.unwrap_or(NONE_KEY);
    if let Some(sum) = map.get_mut(key) {
        sum.add(spend);
        return;
    }
    // The two ledger keys do not count against the bound.
    let named = map.len() - usize::from(map.contains_key(NONE_KEY)) - usize::from(map.contains_key(OTHER_KEY));
    let key = if name.is_some() && named >= MAX_KEYS_PER_CYCLE {
        OTHER_KEY
    } else {
        key
    };
    map.entry(key.to_string()).or_default().add(spend);
}

impl CycleCosts {
    pub fn record(&mut self, labels: &Labels, spend: Spend) {
        add_under(&mut self.models, labels.model.as_deref(), spend);
        add_under(&mut self.providers, labels.provider.as_deref(), spend);
    }
}

/// What `GET …/costs` groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CostDimension {
    Model,
    Provider,
    Group,
    Member,
}

impl CostDimension {
    pub fn parse(text: &str) -> Option<CostDimension> {
        match text {
            "model" => Some(CostDimension::Model),
            "provider" => Some(CostDimension::Provider),
            "group" => Some(CostDimension::Group),
            "member" => Some(CostDimension::Member),
            _ => None,
        }
    }
}

/// One row of a cost breakdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostItem {
    pub key: String,
    /// A member's display name or email; `None` for other dimensions.
    pub label: Option<String>,
    pub sum: CostSum,
}

/// One cycle broken down by one dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breakdown {
    pub window: CycleWindow,
    /// Largest first: credits, then dollars, then key.
    pub items: Vec<CostItem>,
    /// The account's total for the cycle.
    pub total: CostSum,
}

/// The current cycle of an account broken down by `by`.
pub fn breakdown(account: &Account, by: CostDimension) -> Breakdown {
    let cycle = account.cycle.number;
    let items = match by {
        CostDimension::Model => sums(&account.costs.models),
        CostDimension::Provider => sums(&account.costs.providers),
        CostDimension::Group => account
            .groups
            .values()
            .filter(|g| g.active)
            .map(|g| item(&g.name, g.tally.at(cycle).spent()))
            .collect(),
        CostDimension::Member => account
            .members
            .values()
            .map(|m| member_item(m.user_id(), m.display_name(), m.email(), m.tally.at(cycle).spent()))
            .collect(),
    };
    sorted(account.cycle, items, account.spent())
}

/// A closed cycle broken down by `by`.
pub fn closed_breakdown(view: &ClosedView, by: CostDimension) -> Breakdown {
    let closed = &view.cycle;
    let items = match by {
        CostDimension::Model => sums(&closed.costs.models),
        CostDimension::Provider => sums(&closed.costs.providers),
        CostDimension::Group => closed.groups.iter().map(|g| item(&g.name, g.spent())).collect(),
        CostDimension::Member => view
            .members
            .iter()
            .map(|m| member_item(&m.user_id, &m.display_name, &m.email, m.record.spent()))
            .collect(),
    };
    sorted(closed.window, items, closed.spent())
}

fn item(key: &str, sum: CostSum) -> CostItem {
    CostItem {
        key: key.to_string(),
        label: None,
        sum,
    }
}

fn sums(map: &BTreeMap<String, CostSum>) -> Vec<CostItem> {
    map.iter().map(|(k, s)| item(k, *s)).collect()
}

/// A member's row: keyed by user id, labelled by display name or email.
fn member_item(user_id: &str, display_name: &str, email: &str, sum: CostSum) -> CostItem {
    let label = if display_name.is_empty() { email } else { display_name };
    CostItem {
        key: user_id.to_string(),
        label: Some(label.to_string()),
        sum,
    }
}

/// Rows with something in them, largest first: credits, then dollars,
/// then key.
fn sorted(window: CycleWindow, mut items: Vec<CostItem>, total: CostSum) -> Breakdown {
    items.retain(|i| !i.sum.is_empty());
    items.sort_by(|a, b| {
        (b.sum.credits, b.sum.cost_usd)
            .cmp(&(a.sum.credits, a.sum.cost_usd))
            .then_with(|| a.key.cmp(&b.key))
    });
    Breakdown { window, items, total }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spend(credits: i64) -> Spend {
        Spend {
            credits: Amount::from_int(credits),
            cost_usd: Amount::ZERO,
        }
    }

    #[test]
    fn names_past_the_bound_sum_under_other_and_known_names_keep_their_row() {
        let mut costs = CycleCosts::default();
        for i in 0..MAX_KEYS_PER_CYCLE + 5 {
            let labels = Labels {
                model: Some(format!("m-{i}")),
                ..Labels::default()
            };
            costs.record(&labels, spend(2));
        }
        costs.record(&Labels::default(), spend(7));
        costs.record(
            &Labels {
                model: Some("m-0".into()),
                ..Labels::default()
            },
            spend(3),
        );
        assert_eq!(costs.models.len(), MAX_KEYS_PER_CYCLE + 2);
        assert_eq!(costs.models[OTHER_KEY].credits, Amount::from_int(10));
        assert_eq!(costs.models[OTHER_KEY].events, 5);
        assert_eq!(costs.models[NONE_KEY].credits, Amount::from_int(7));
        assert_eq!(costs.models["m-0"].credits, Amount::from_int(5));
        assert_eq!(costs.models["m-0"].events, 2);
        // Every event was counted once under providers: all unnamed.
        assert_eq!(costs.providers[NONE_KEY].events, MAX_KEYS_PER_CYCLE as u64 + 7);
    }

    #[test]
    fn labels_are_checked_by_field() {
        let bad = |labels: Labels| labels.validate().unwrap_err().to_string();
        let model = |m: &str| Labels {
            model: Some(m.into()),
            ..Labels::default()
        };
        assert!(bad(model("(other)")).contains("model"));
        assert!(bad(model(&"a".repeat(65))).contains("at most 64"));
        assert!(bad(model("")).contains("must not be empty"));
        assert!(model("anthropic/claude-3.5-sonnet@20240620").validate().is_ok());
        let tags = |pairs: &[(&str, &str)]| Labels {
            tags: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Labels::default()
        };
        assert!(bad(tags(&[("team", "a\nb")])).contains("tags.team"));
        assert!(bad(tags(&[("bad key", "x")])).contains("bad key"));
        let nine: Vec<(String, String)> = (0..9).map(|i| (format!("k{i}"), "v".to_string())).collect();
        let nine: Vec<(&str, &str)> = nine.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert!(bad(tags(&nine)).contains("at most 8"));
        assert_eq!(Labels::default().digest(), 0);
        assert_ne!(model("a").digest(), model("b").digest());
        assert_ne!(model("a").digest(), 0);
    }
}
