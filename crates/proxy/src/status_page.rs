//! `GET /status` on the admin listener: one static, self-contained HTML page (no
//! external assets; its Content-Security-Policy allows nothing but itself and
//! `/v1/quotas` on the same origin) that polls the full `/v1/quotas` every second and
//! draws each model and account: each window's fill as a bar and a small time chart,
//! cooldowns, learned limits, the replica's queue and last refusals. The page holds no
//! data itself; off loopback it asks for the admin key and keeps it in the tab's
//! `sessionStorage` only.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The page, compiled in.
const PAGE: &str = include_str!("status.html");

/// Serves the page.
pub(crate) async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
            ),
        ],
        PAGE,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::PAGE;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        // The SVG namespace is a name, never fetched.
        let page = PAGE.replace("\"http://www.w3.org/2000/svg\"", "");
        for needle in ["http://", "https://", "src=", "<link", "@import", "url("] {
            assert!(
                !page.contains(needle),
                "the status page references {needle}"
            );
        }
        assert!(PAGE.contains("/v1/quotas"));
    }
}
