//! Prometheus metrics: HTTP and ledger commit figures recorded as they
//! happen, credit figures read from the ledger at scrape time.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rust_decimal::prelude::ToPrimitive;

use crate::amount::Amount;
use crate::ledger::costs::{breakdown, Breakdown, CostDimension, CostSum};
use crate::ledger::{numbers, Ledger, Phase};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

/// A route and method (the duration histogram leaves the status out).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountLabels {
    account: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    account: String,
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    account: String,
    model: String,
}

/// Models shown by name per account; the rest add to `model="other"`.
pub const TOP_MODELS: usize = 50;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    account: String,
    phase: String,
}

/// Metrics recorded as things happen.
#[derive(Clone)]
pub struct Metrics {
    pub http_requests: Family<HttpLabels, Counter>,
    /// Time from a request's arrival to its answer, by route.
    pub http_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    batch_size: Histogram,
    commit_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            http_requests: Family::default(),
            http_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 16))),
            batch_size: Histogram::new(exponential_buckets(1.0, 4.0, 8)),
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
        }
    }
}

/// Floating point is fine for a gauge; the ledger itself never uses it.
fn gauge_value(a: Amount) -> f64 {
    a.decimal().to_f64().unwrap_or(f64::NAN)
}

impl Metrics {
    /// The callback the ledger writer calls after each commit.
    pub fn commit_observer(&self) -> Arc<dyn Fn(usize, Duration) + Send + Sync> {
        let (sizes, seconds) = (self.batch_size.clone(), self.commit_seconds.clone());
        Arc::new(move |size, took| {
            sizes.observe(size as f64);
            seconds.observe(took.as_secs_f64());
        })
    }

    /// The whole exposition, credit figures read now.
    pub fn render(&self, ledger: &Ledger) -> String {
        let mut registry = Registry::with_prefix("credits");
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            self.http_requests.clone(),
        );
        registry.register(
            "http_request_seconds",
            "Time from a request's arrival to its answer, by route and method",
            self.http_seconds.clone(),
        );
        registry.register(
            "ledger_batch_size",
            "Journal entries per group commit",
            self.batch_size.clone(),
        );
        registry.register(
            "ledger_commit_seconds",
            "Time to make one batch durable",
            self.commit_seconds.clone(),
        );

        let used = Family::<AccountLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let limit = Family::<AccountLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let balance = Family::<AccountLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let cycle = Family::<AccountLabels, Gauge>::default();
        let group_used = Family::<GroupLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let group_remaining = Family::<GroupLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let group_cost = Family::<GroupLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let model_used = Family::<ModelLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let model_cost = Family::<ModelLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let model_events = Family::<ModelLabels, Gauge>::default();
        let requests = Family::<PhaseLabels, Gauge>::default();
        {
            let state = ledger.read();
            // Figures a failed commit left ahead of the journal are not shown.
            let readable = state.readable().is_ok();
            for (id, account) in state.accounts.iter().filter(|(_, a)| a.active && readable) {
                let labels = AccountLabels { account: id.clone() };
                let f = numbers::account(account);
                used.get_or_create(&labels).set(gauge_value(f.used));
                limit.get_or_create(&labels).set(gauge_value(f.credits_per_cycle));
                balance.get_or_create(&labels).set(gauge_value(f.balance));
                cycle.get_or_create(&labels).set(account.cycle.number as i64);
                for g in account.groups.values().filter(|g| g.active) {
                    let f = numbers::group(account, g);
                    let labels = GroupLabels {
                        account: id.clone(),
                        group: g.name.clone(),
                    };
                    group_used.get_or_create(&labels).set(gauge_value(f.used));
                    group_remaining
                        .get_or_create(&labels)
                        .set(gauge_value(f.budget + f.granted - f.used));
                    group_cost
                        .get_or_create(&labels)
                        .set(gauge_value(g.tally.at(account.cycle.number).cost_usd));
                }
                {
                    let Breakdown { items, .. } = breakdown(account, CostDimension::Model);
                    let mut other = CostSum::default();
                    for (rank, item) in items.into_iter().enumerate() {
                        if rank < TOP_MODELS {
                            let labels = ModelLabels {
                                account: id.clone(),
                                model: item.key,
                            };
                            model_used.get_or_create(&labels).set(gauge_value(item.sum.credits));
                            model_cost.get_or_create(&labels).set(gauge_value(item.sum.cost_usd));
                            model_events.get_or_create(&labels).set(item.sum.events as i64);
                        } else {
                            other.merge(item.sum);
                        }
                    }
                    if !other.is_empty() {
                        let labels = ModelLabels {
                            account: id.clone(),
                            model: "other".to_string(),
                        };
                        model_used.get_or_create(&labels).set(gauge_value(other.credits));
                        model_cost.get_or_create(&labels).set(gauge_value(other.cost_usd));
                        model_events.get_or_create(&labels).set(other.events as i64);
                    }
                }
                for phase in [Phase::Pending, Phase::Approved, Phase::Denied, Phase::AutoApproved] {
                    let n = account.requests.values().filter(|r| r.phase == phase).count();
                    requests
                        .get_or_create(&PhaseLabels {
                            account: id.clone(),
                            phase: phase.as_str().into(),
                        })
                        .set(n as i64);
                }
            }
        }
        registry.register("account_used", "Credits used this cycle", used);
        registry.register("account_limit", "Credits per cycle", limit);
        registry.register("account_balance", "Credits per cycle minus used", balance);
        registry.register("account_cycle", "Current cycle number", cycle);
        registry.register(
            "group_used",
            "Credits used this cycle by the group's members",
            group_used,
        );
        registry.register(
            "group_remaining",
            "Group budget plus grants minus used",
            group_remaining,
        );
        registry.register(
            "group_cost_usd",
            "Dollars reported this cycle by the group's members",
            group_cost,
        );
        registry.register(
            "model_used",
            "Credits used this cycle per model (the top 50 per account; the rest as other)",
            model_used,
        );
        registry.register("model_cost_usd", "Dollars reported this cycle per model", model_cost);
        registry.register("model_events", "Usage events this cycle per model", model_events);
        registry.register("requests", "Credit requests by phase", requests);
        let mut out = String::new();
        if encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}
