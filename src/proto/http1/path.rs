//! Request-path policy: only paths already in normal form are accepted, so that the path the
//! gateway routes on is exactly the path a normalising upstream resolves after `base_path`.
//!
//! A server that removes dot segments (RFC 3986 §5.2.4) or decodes percent-encoded unreserved
//! characters (§6.2.2.2) would serve `/tenant-a/../tenant-b/secret` from `/tenant-b`: the
//! prefix the gateway put in front of the device's path would not hold. Rather than normalise
//! (and forward something other than what the device sent), the gateway refuses, with 400, any
//! path whose segments are not final. Refused, in the path component (the query is not
//! looked at):
//!
//! - dot segments `.` and `..`, also with path parameters (`..;x`, which some servers treat as
//!   `..`);
//! - encoded dots `%2e` / `%2E` anywhere (they decode to a dot segment, or hide one);
//! - encoded slashes `%2f` / `%2F` and backslashes (`\`, `%5c`, `%5C`), which some servers
//!   decode or treat as segment separators, turning `a%2f..` into `a/..`;
//! - empty segments (`//`), which some servers merge; a trailing `/` (an empty *last* segment)
//!   is fine.
//!
//! What this does not do: decode or rewrite the path, check the query, or look for double
//! encodings (`%252e`), which only a server that decodes twice would turn into a dot.

use super::HttpError;

/// Checks the path component of a request target (without its query), as returned by
/// [`RequestHead::path`](super::RequestHead::path). `*` (asterisk-form) and the empty path
/// pass.
///
/// # Errors
/// [`HttpError::UnsafeRequestPath`] when the path is not in the normal form described in the
/// module documentation.
pub fn check_request_path(path: &[u8]) -> Result<(), HttpError> {
    if path.contains(&b'\\') || has_forbidden_escape(path) {
        return Err(HttpError::UnsafeRequestPath);
    }
    let Some(rest) = path.strip_prefix(b"/") else {
        return Ok(());
    };
    let mut segments = rest.split(|&b| b == b'/').peekable();
    while let Some(segment) = segments.next() {
        let is_last = segments.peek().is_none();
        let name = segment.split(|&b| b == b';').next().unwrap_or_default();
        let empty_inside = segment.is_empty() && !is_last;
        if empty_inside || name == b"." || name == b".." {
            return Err(HttpError::UnsafeRequestPath);
        }
    }
    Ok(())
}

/// True when `path` holds `%2e`, `%2f` or `%5c` in either case.
fn has_forbidden_escape(path: &[u8]) -> bool {
    path.windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_lowercase()),
                (b'2', b'e') | (b'2', b'f') | (b'5', b'c')
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_pass() {
        for path in [
            &b""[..],
            b"*",
            b"/",
            b"/a",
            b"/a/",
            b"/a/b.json",
            b"/.well-known/x",
            b"/a/...",
            b"/a/..b",
            b"/a/b;v=1",
            b"/a%20b",
            b"/%41",
            b"/a%2",
        ] {
            assert_eq!(
                check_request_path(path),
                Ok(()),
                "{:?}",
                String::from_utf8_lossy(path)
            );
        }
    }

    #[test]
    fn paths_that_normalise_elsewhere_are_refused() {
        for path in [
            &b"/.."[..],
            b"/../b",
            b"/a/..",
            b"/a/../b",
            b"/.",
            b"/./a",
            b"/a/./b",
            b"/a/..;/b",
            b"/a/.;x/b",
            b"/%2e%2e/b",
            b"/%2E%2E/b",
            b"/.%2e/b",
            b"/%2e./b",
            b"/a%2eb",
            b"/a%2fb",
            b"/a/..%2Fb",
            b"/a%5c..",
            b"/a%5C..",
            b"/a\\..\\b",
            b"//",
            b"//b",
            b"/a//b",
            b"/a///",
        ] {
            assert_eq!(
                check_request_path(path),
                Err(HttpError::UnsafeRequestPath),
                "{:?}",
                String::from_utf8_lossy(path)
            );
        }
    }
}
