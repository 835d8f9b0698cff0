//! `gateway.admin_token`: with a token set, every admin endpoint (`/healthz`, `/metrics`,
//! `POST /-/reload`, and a path that does not exist) answers 401 without
//! `Authorization: Bearer <token>` or with a wrong one, and serves with the right one; a reload
//! that changes the token applies to the next request. The token never appears in an answer or
//! in simgate's log. Real `simgate run`, real curl.

mod common;

use common::{curl, World};

const TOKEN: &str = "first-admin-token-0123456789";
const NEW_TOKEN: &str = "second-admin-token-9876543210";

/// `curl` to the admin endpoint with an optional bearer token: (status, body).
fn admin(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let url = format!("http://{addr}{path}");
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec!["-sS", "-X", method, "-w", "\n%{http_code}", &url];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    let (ok, out) = curl(&args);
    assert!(ok, "curl {path}: {out}");
    let (body, code) = out.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status"), body.to_owned())
}

#[test]
fn every_admin_endpoint_needs_the_bearer_token_and_a_reload_can_change_it() {
    let world = World::new();
    let token_file = world.dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let toml = world.config("", "").replace(
        "[gateway]\n",
        "[gateway]\nadmin_token = { file = \"admin.token\" }\n",
    );
    let gw = world.simgate(&toml);
    let addr = gw.admin.expect("admin address");

    for (method, path) in [
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("GET", "/admin/probes"),
        ("GET", "/histograms/request_duration?destination=sink"),
        ("POST", "/-/reload"),
        ("GET", "/no-such-path"),
    ] {
        for token in [None, Some("wrong-token-0123456789"), Some("")] {
            let (status, body) = admin(addr, method, path, token);
            assert_eq!(status, 401, "{method} {path} with {token:?}: {body}");
            assert!(!body.contains(TOKEN), "{body}");
        }
    }
    let (status, body) = admin(addr, "GET", "/healthz", Some(TOKEN));
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = admin(
        addr,
        "GET",
        "/histograms/request_duration?destination=sink",
        Some(TOKEN),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = admin(addr, "GET", "/metrics", Some(TOKEN));
    assert_eq!(status, 200);
    assert!(body.contains("simgate_"), "{body}");
    let (status, body) = admin(addr, "GET", "/admin/probes", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"destination\":\"sink\""), "{body}");

    // A reload with a new token file: the next request needs the new token.
    std::fs::write(&token_file, format!("{NEW_TOKEN}\n")).expect("token file");
    let (status, body) = admin(addr, "POST", "/-/reload", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(admin(addr, "GET", "/healthz", Some(TOKEN)).0, 401);
    assert_eq!(admin(addr, "GET", "/healthz", Some(NEW_TOKEN)).0, 200);

    let log = gw.stderr();
    assert!(!log.contains(TOKEN) && !log.contains(NEW_TOKEN), "{log}");
}
