//! credit-operator: declarative credit allocation for AI platforms.
//!
//! The crate is layered the way its data flows:
//!
//! - [`amount`], [`cycle`], [`clock`]: exact money, cycle boundaries, and
//!   the injected clock. Pure, no I/O.
//! - [`ledger`]: the credit rules and the durable ledger. [`ledger::state`]
//!   is the deterministic state machine, [`ledger::numbers`] computes every
//!   figure users see, [`ledger::writer`] group-commits journal entries to a
//!   [`ledger::journal::Journal`] (SQLite or PostgreSQL).
//! - [`crd`]: the Kubernetes custom resource types (an adapter: the ledger
//!   never sees them).
//! - [`desired`]: objects to ledger commands, by the rules both modes
//!   share; its sources are a manifest folder ([`standalone`]) and the
//!   Kubernetes API's reflectors ([`operator`]).
//!
//! See `docs/ARCHITECTURE.md` for the map.

pub mod amount;
pub mod api;
pub mod bench;
pub mod clock;
pub mod crd;
pub mod cycle;
pub mod desired;
pub mod ledger;
pub mod manifests;
pub mod operator;
pub mod plugin;
pub mod standalone;
pub mod validate;
