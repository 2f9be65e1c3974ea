//! Errors as JSON `{error, message, field?}` with a fitting status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::dto::ErrorOut;
use crate::ledger::LedgerError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorOut,
    /// Seconds a client should wait before it tries again (`Retry-After`).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorOut {
                error: error.to_string(),
                message: message.into(),
                field: None,
                limited_by: None,
            },
            retry_after: None,
        }
    }

    pub fn bad_field(field: &str, message: impl std::fmt::Display) -> Self {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", format!("{field}: {message}"));
        e.body.field = Some(field.to_string());
        e
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        use LedgerError::*;
        let status = match &e {
            InvalidField { .. } | InvalidApproval { .. } => StatusCode::BAD_REQUEST,
            UnknownAccount(_) | UnknownMember(_) | UnknownGroup(_) | UnknownRequest(_) | UnknownHold(_) => {
                StatusCode::NOT_FOUND
            }
            IdempotencyConflict(_)
            | DuplicateUserId { .. }
            | AlreadyDecided { .. }
            | MemberNotFound(_)
            | HoldClosed { .. }
            | InsufficientCredits { .. } => StatusCode::CONFLICT,
            Storage(_) | Fenced(_) | ShuttingDown | Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut body = ErrorOut {
            error: e.code().to_string(),
            message: e.to_string(),
            field: None,
            limited_by: None,
        };
        match &e {
            InvalidField { field, .. } => body.field = Some(field.clone()),
            InvalidApproval { .. } => body.field = Some("credits".into()),
            InsufficientCredits { limited_by, .. } => body.limited_by = Some(limited_by.clone()),
            _ => {}
        }
        // Storage comes back by itself (the writer reconnects): worth a
        // retry with the same idempotency key in a second.
        let retry_after = matches!(e, Storage(_) | ShuttingDown | Busy(_)).then_some(1);
        ApiError {
            status,
            body,
            retry_after,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_or_unreachable_ledger_answers_503_with_retry_after() {
        for (error, code) in [
            (LedgerError::Busy(65_536), "busy"),
            (LedgerError::Storage("connection closed".into()), "storage_unavailable"),
        ] {
            let response = ApiError::from(error).into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[axum::http::header::RETRY_AFTER], "1", "{code}");
        }
        let fenced = ApiError::from(LedgerError::Fenced(3));
        assert_eq!((fenced.body.error.as_str(), fenced.retry_after), ("fenced", None));
    }
}
