//! The credit ledger: the source of truth for money.
//!
//! - [`model`]: the vocabulary — settings, commands, journal events, answers.
//! - [`state`]: the deterministic state machine; commands in, events out.
//! - [`numbers`]: every figure users see, computed in one place.
//! - [`history`]: closed cycles, kept in the database, not in memory.
//! - [`costs`]: usage labels (model, provider, tags) and cost breakdowns.
//! - [`keys`]: idempotency keys, the recent ones whole in memory, older
//!   ones as Bloom filter bits in front of the journal's unique index.
//! - [`journal`]: the durable, append-only journal and its snapshots, on
//!   [`sqlite`] or [`postgres`].
//! - [`writer`]: the single writer that applies commands in order and
//!   group-commits their events before anyone gets an answer.

pub mod costs;
pub mod error;
pub mod history;
pub mod journal;
pub mod keys;
pub mod members;
pub mod model;
pub mod numbers;
pub mod postgres;
pub mod sqlite;
pub mod state;
pub mod writer;

pub use error::LedgerError;
pub use model::*;
pub use numbers::{AccountFigures, Authorization, GroupFigures, MemberFigures, Scope};
pub use state::State;
pub use writer::Ledger;
