//! What can go wrong, in words a caller can act on.

/// A refused command or a failed commit. Refusals never change state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// Bad input; `field` names the offending field (`credits`, `spec.cadence`).
    #[error("{field}: {message}")]
    InvalidField { field: String, message: String },
    #[error("account {0:?} not found")]
    UnknownAccount(String),
    #[error("member {0:?} not found")]
    UnknownMember(String),
    #[error("group {0:?} not found")]
    UnknownGroup(String),
    #[error("credit request {0:?} not found")]
    UnknownRequest(String),
    #[error("hold {0:?} not found")]
    UnknownHold(String),
    #[error("idempotency key {0:?} was already used with a different body")]
    IdempotencyConflict(String),
    #[error("user id {user_id:?} already belongs to member {owner:?}")]
    DuplicateUserId { user_id: String, owner: String },
    #[error("credit request {name:?} is already {phase}: a decision is final")]
    AlreadyDecided { name: String, phase: String },
    #[error("approval credits must be more than 0 and at most the {requested} requested, got {given}")]
    InvalidApproval { requested: String, given: String },
    #[error("member {0:?} does not exist: the request can be denied but not approved")]
    MemberNotFound(String),
    #[error("hold {id:?} is {state}: it cannot be settled")]
    HoldClosed { id: String, state: String },
    #[error("not enough credits: {remaining} left at {limited_by} scope")]
    InsufficientCredits { remaining: String, limited_by: String },
    /// The journal could not commit; nothing in the batch happened.
    #[error("ledger storage failed: {0}")]
    Storage(String),
    /// Another writer holds a newer epoch; this one no longer writes.
    #[error("this ledger writer was fenced off by a newer writer (epoch {0})")]
    Fenced(i64),
    #[error("the ledger is shutting down")]
    ShuttingDown,
    /// The writer's queue is full; nothing was queued.
    #[error("the ledger is busy: {0} commands are waiting for the writer; retry in a moment")]
    Busy(usize),
}

impl LedgerError {
    pub fn field(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        LedgerError::InvalidField {
            field: field.into(),
            message: message.to_string(),
        }
    }

    /// A short machine-readable code (`bad_request`, `not_found`, ...).
    pub fn code(&self) -> &'static str {
        use LedgerError::*;
        match self {
            InvalidField { .. } => "invalid_field",
            InvalidApproval { .. } => "invalid_approval",
            UnknownAccount(_) | UnknownMember(_) | UnknownGroup(_) | UnknownRequest(_) | UnknownHold(_) => "not_found",
            IdempotencyConflict(_) => "idempotency_conflict",
            DuplicateUserId { .. } => "duplicate_user_id",
            AlreadyDecided { .. } => "already_decided",
            MemberNotFound(_) => "member_not_found",
            HoldClosed { .. } => "hold_closed",
            InsufficientCredits { .. } => "insufficient_credits",
            Storage(_) => "storage_unavailable",
            Fenced(_) => "fenced",
            ShuttingDown => "shutting_down",
            Busy(_) => "busy",
        }
    }
}
