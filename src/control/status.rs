//! `GET /` and `GET /status`: the live status page, one self-contained HTML file
//! (`status.html`, embedded at build time) whose inline script polls the admin API of the same
//! origin every 2 s (`/metrics`, `/admin/probes`, `/admin/usage`, `/admin/sessions`, `/readyz`)
//! and draws its charts by hand as inline SVG. No external script, style, font or image.
//!
//! The page itself is a constant holding no data, so it is served without the bearer token (a
//! browser cannot add a header to a navigation); every figure it shows comes from its fetches,
//! which carry `Authorization: Bearer <token>` taken from the URL fragment `#token=…` (never
//! sent to the server, kept out of logs and `Referer`). With a token set and no fragment, the
//! page loads and says that its fetches got 401.
//!
//! The Content-Security-Policy allows only the page's own inline script (by its SHA-256, computed
//! once from the embedded file), its inline styles, and fetches to the same origin;
//! `Cache-Control: no-store`, `Referrer-Policy: no-referrer`.

use std::sync::OnceLock;

use base64::Engine as _;

/// The page.
pub const PAGE: &str = include_str!("status.html");

/// Whether `path` is the status page's.
pub fn is_page(path: &str) -> bool {
    matches!(path, "/" | "/status")
}

/// The inline `<script>` body of [`PAGE`] (between the opening tag and `</script>`).
fn script() -> &'static str {
    let start = PAGE.find("<script>").expect("status.html has a <script>") + "<script>".len();
    let end = PAGE[start..]
        .find("</script>")
        .expect("status.html closes its <script>");
    &PAGE[start..start + end]
}

/// The Content-Security-Policy the page is served with.
pub fn content_security_policy() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, script().as_bytes());
        let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
        format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'"
        )
    })
}

/// The headers of the page's answer, beside `Content-Type`.
pub fn headers() -> [(&'static str, &'static str); 4] {
    [
        ("content-security-policy", content_security_policy()),
        ("cache-control", "no-store"),
        ("referrer-policy", "no-referrer"),
        ("x-content-type-options", "nosniff"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_self_contained() {
        // Nothing loaded from elsewhere: no src/href attributes pointing off the page, no
        // absolute URLs fetched.
        for needle in [
            "src=\"http",
            "href=\"http",
            "src=\"//",
            "href=\"//",
            "@import",
        ] {
            assert!(!PAGE.contains(needle), "status.html contains {needle}");
        }
        assert_eq!(PAGE.matches("<script").count(), 1, "one inline script");
        assert!(!script().is_empty());
    }

    #[test]
    fn csp_pins_the_inline_script_and_same_origin_fetches() {
        let csp = content_security_policy();
        assert!(csp.starts_with("default-src 'none'; script-src 'sha256-"));
        assert!(csp.contains("connect-src 'self'"));
        assert!(!csp.contains("script-src 'unsafe-inline'"));
    }

    #[test]
    fn page_paths() {
        assert!(is_page("/") && is_page("/status"));
        assert!(!is_page("/metrics") && !is_page("/status/x"));
    }
}
