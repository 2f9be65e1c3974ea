//! The web console: plain HTML, CSS and JavaScript modules embedded in the
//! binary (no CDN, no build step), served at `/`. The page holds no data
//! and no secret, so it is open; every figure it shows comes from the API
//! with the caller's token.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::AppState;

/// The files, by the path they are served at.
pub const FILES: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../console/index.html"),
    ),
    (
        "/console/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/app.js"),
    ),
    (
        "/console/app.css",
        "text/css; charset=utf-8",
        include_str!("../../console/app.css"),
    ),
    (
        "/console/icon.svg",
        "image/svg+xml",
        include_str!("../../console/icon.svg"),
    ),
];

/// Whether a path is one of the console's files (open without a token).
pub fn is_console(path: &str) -> bool {
    FILES.iter().any(|(p, _, _)| *p == path)
}

/// Scripts from this origin only; no inline script, no frames, no other
/// hosts to talk to.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for (path, content_type, body) in FILES {
        router = router.route(path, get(move || async move { file(content_type, body) }));
    }
    router
}
