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

/// Lowers the calling thread's scheduling priority (nice 10): for work
/// that may wait (checkpoints, snapshots) so that it never competes with
/// requests for a core. Raising a thread's niceness needs no privilege;
/// where it fails anyway, the thread simply keeps its priority.
pub(crate) fn background_thread() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority take no pointers; on Linux a thread
    // id names one thread for PRIO_PROCESS.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}
pub use model::*;
pub use numbers::{AccountFigures, Authorization, GroupFigures, MemberFigures, Scope};
pub use state::State;
pub use writer::Ledger;
