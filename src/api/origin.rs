//! Requests a browser may send on behalf of another site change nothing.
//!
//! Without a token file every caller on loopback is an admin, so any web
//! page open in a browser on the host could otherwise reset a cycle with a
//! form post. A state-changing request (anything but GET, HEAD and
//! OPTIONS) is refused with 403 `cross_site_request` when the browser says
//! it comes from another site (`Sec-Fetch-Site` other than `same-origin`
//! or `none`) or names an `Origin` other than the API's own (scheme and
//! `Host`); a body that is not `application/json` is refused with 415
//! (a browser sends `text/plain` and form bodies to any site without
//! asking first; JSON needs a preflight this API never grants).

use axum::extract::Request;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Why a request must be refused, if it must.
fn cross_site(headers: &HeaderMap) -> Option<String> {
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("?");
        if !matches!(site, "same-origin" | "none") {
            return Some(format!(
                "the browser says this request comes from another site (Sec-Fetch-Site: {site})"
            ));
        }
    }
    let origin = headers.get(header::ORIGIN)?;
    let origin = origin.to_str().unwrap_or("?");
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let own = ["http://", "https://"]
        .iter()
        .any(|scheme| !host.is_empty() && origin.eq_ignore_ascii_case(&format!("{scheme}{host}")));
    (!own).then(|| format!("Origin {origin} is not this API's origin ({host})"))
}

/// The content type is JSON (`application/json`, `application/*+json`).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| v == "application/json" || (v.starts_with("application/") && v.ends_with("+json")))
}

fn has_body(headers: &HeaderMap) -> bool {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match length {
        Some(n) => n > 0,
        None => headers.contains_key(header::TRANSFER_ENCODING) || headers.contains_key(header::CONTENT_TYPE),
    }
}

pub async fn guard(request: Request, next: Next) -> Response {
    if changes_state(request.method()) {
        if let Some(why) = cross_site(request.headers()) {
            tracing::warn!(method = %request.method(), path = %request.uri().path(), "refused a cross-site request: {why}");
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_site_request",
                format!("{why}: state-changing calls are accepted from this API's own origin only"),
            )
            .into_response();
        }
        if has_body(request.headers()) && !is_json(request.headers()) {
            let given = request
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_string();
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "the body must be JSON with Content-Type: application/json (got {given}); with curl use --json"
                ),
            )
            .into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn own_origin_passes_and_others_do_not() {
        let own = headers(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080")]);
        assert_eq!(cross_site(&own), None);
        let other_port = headers(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:9999")]);
        assert!(cross_site(&other_port).unwrap().contains("http://127.0.0.1:9999"));
        let null = headers(&[("host", "127.0.0.1:8080"), ("origin", "null")]);
        assert!(cross_site(&null).is_some());
        let same_site = headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "same-site")]);
        assert!(cross_site(&same_site).unwrap().contains("same-site"));
        let typed = headers(&[("sec-fetch-site", "none")]);
        assert_eq!(cross_site(&typed), None, "a URL typed by the user, or curl");
    }

    #[test]
    fn json_is_json_and_forms_are_not() {
        assert!(is_json(&headers(&[(
            "content-type",
            "application/json; charset=utf-8"
        )])));
        assert!(is_json(&headers(&[("content-type", "application/merge-patch+json")])));
        assert!(!is_json(&headers(&[("content-type", "text/plain;charset=UTF-8")])));
        assert!(!is_json(&headers(&[(
            "content-type",
            "application/x-www-form-urlencoded"
        )])));
        assert!(!has_body(&headers(&[("content-length", "0")])));
        assert!(has_body(&headers(&[("content-length", "2")])));
    }
}
