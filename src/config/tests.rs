//! Tests for the config module as a whole: real files (rcgen certificates in a temp dir), a
//! fake environment for DNS / system roots / CPU count, and exact field paths.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};

use super::compile::Environment;
use super::{compile_with, load_plan, ConfigError};
use crate::policy::{
    AdapterKind, DestinationId, ErrorDetail, GroupId, ListenerId, ListenerProtocol, Plan, Reresolve,
};

const SECRET_MARKER: &str = "TOPSECRET-KEY-MATERIAL-7f3a";

/// DNS from a table, fixed system roots and CPU count.
struct FakeEnv {
    hosts: HashMap<String, Vec<SocketAddr>>,
    roots: Vec<CertificateDer<'static>>,
    cpus: Option<usize>,
    open_files: Option<u64>,
}

impl Environment for FakeEnv {
    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        self.hosts
            .get(host)
            .map(|addrs| {
                addrs
                    .iter()
                    .map(|a| SocketAddr::new(a.ip(), port))
                    .collect()
            })
            .ok_or_else(|| "Name or service not known".to_owned())
    }
    fn system_roots(&self) -> Vec<CertificateDer<'static>> {
        self.roots.clone()
    }
    fn available_cpus(&self) -> Option<usize> {
        self.cpus
    }
    fn open_files_limit(&self) -> Option<u64> {
        self.open_files
    }
}

/// A temp dir holding `certs/ca.pem`, `certs/client.crt`, `certs/client.key`,
/// `certs/other.key` (a key that matches nothing), a few bad files, and MQTT password files
/// under `secrets/`.
struct Fixture {
    dir: tempfile::TempDir,
    env: FakeEnv,
    client_key_pem: String,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["sink.test".to_owned()]).unwrap();
        let client = rcgen::generate_simple_self_signed(vec!["device-gw".to_owned()]).unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let client_key_pem = client.key_pair.serialize_pem();
        let write = |name: &str, text: &str| std::fs::write(certs.join(name), text).unwrap();
        write("ca.pem", &ca.cert.pem());
        write("client.crt", &client.cert.pem());
        write("client.key", &client_key_pem);
        write("other.key", &other.serialize_pem());
        write("empty.pem", "");
        write("notes.txt", "just some text\n");
        write("secret.key", &format!("password = \"{SECRET_MARKER}\"\n"));
        write(
            "armoured-secret.key",
            &format!("-----BEGIN PRIVATE KEY-----\n{SECRET_MARKER}!!\n-----END PRIVATE KEY-----\n"),
        );
        write(
            "unterminated-secret.key",
            &format!("-----BEGIN PRIVATE KEY-----\n{SECRET_MARKER}\n"),
        );
        std::fs::create_dir(certs.join("a-directory")).unwrap();
        let secrets = dir.path().join("secrets");
        std::fs::create_dir(&secrets).unwrap();
        let secret = |name: &str, text: &str| std::fs::write(secrets.join(name), text).unwrap();
        secret("broker.pass", "s3cret-pass\n");
        secret("crlf.pass", "crlf-pass\r\n");
        secret("bare.pass", "no newline");
        secret("empty.pass", "\n");
        secret("marker.pass", &format!("{SECRET_MARKER}\n"));
        std::fs::write(secrets.join("huge.pass"), vec![b'x'; 65536]).unwrap();
        let mut hosts = HashMap::new();
        hosts.insert(
            "sink.test".to_owned(),
            vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()],
        );
        let env = FakeEnv {
            hosts,
            roots: vec![ca.cert.der().clone()],
            cpus: Some(3),
            open_files: Some(20_000),
        };
        Fixture {
            dir,
            env,
            client_key_pem,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn compile(&self, text: &str) -> Result<Plan, ConfigError> {
        compile_with(text, self.path(), &self.env)
    }

    fn errors(&self, text: &str) -> ConfigError {
        match self.compile(text) {
            Ok(_) => panic!("config unexpectedly valid:\n{text}"),
            Err(e) => e,
        }
    }
}

/// A complete, valid config using every key.
const FULL: &str = r#"
[gateway]
shards = 4
pin_shards = false
admin = "127.0.0.1:9999"
admin_allow_non_loopback = false
default_group = "farm"
ring_entries = 1024
recv_buffers = 512
recv_buffer_size = 8192
backlog = 128
max_connections = 5000
reserved_fds = 512

[[listener]]
name = "http"
protocol = "http"
bind = "0.0.0.0:8080"
max_connections = 1000
max_head_bytes = 4096
max_headers = 50
max_body_bytes = 65536
header_timeout = "5s"
body_timeout = "250ms"
idle_timeout = "2m"
max_requests_per_connection = 1000
error_detail = "full"

[[listener]]
name = "http-alt"
protocol = "http"
bind = "127.0.0.1:0"

[[credential]]
name = "sink-client"
kind = "x509"
cert = "certs/client.crt"
key = "certs/client.key"

[[destination]]
name = "sink"
adapter = "https"
endpoint = "sink.test:8443"
server_name = "sink.test"
ca = "certs/ca.pem"
credential = "sink-client"
host_header = "ingest.sink.test"
base_path = "/ingest/"
alpn = ["http/1.1"]
resolve_interval = "2m"
[destination.pool]
warm = 1
max_idle = 8
idle_timeout = "30s"
max_age = "10m"
max_connecting = 4
connect_timeout = "2s"
response_timeout = "1h"
backoff_initial = "50ms"
backoff_max = "5s"

[[destination]]
name = "backup"
adapter = "https"
endpoint = "[::1]:443"

[[group]]
name = "farm"
attach = ["imsi", "name", "tags"]
routes = [
  { listener = "http", path = "/", destination = "backup" },
  { listener = "http", path = "/telemetry/v1", destination = "sink" },
  { listener = "http", path = "/telemetry", destination = "backup" },
  { listener = "http-alt", path = "/x", destination = "sink" },
]

[[group]]
name = "default"
"#;

/// The smallest valid config; everything else defaults.
const MINIMAL: &str = r#"
[[listener]]
name = "http"
protocol = "http"
bind = "0.0.0.0:8080"

[[destination]]
name = "sink"
adapter = "https"
endpoint = "sink.test:443"

[[group]]
name = "default"
routes = [ { listener = "http", path = "/", destination = "sink" } ]
"#;

/// `text` with `from` replaced; fails if `from` is absent so that no test silently checks the
/// unmodified config.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "test bug: {from:?} not in config");
    text.replacen(from, to, 1)
}

fn paths(error: &ConfigError) -> Vec<&str> {
    error.errors.iter().map(|e| e.path.as_str()).collect()
}

/// Asserts that `error` has exactly one entry, at `path`, whose message contains `needle`.
#[track_caller]
fn assert_single(error: &ConfigError, path: &str, needle: &str) {
    assert_eq!(paths(error), vec![path], "{error}");
    assert!(
        error.errors[0].message.contains(needle),
        "message {:?} lacks {needle:?}",
        error.errors[0].message
    );
}

#[test]
fn full_config_compiles_to_the_expected_plan() {
    let fx = Fixture::new();
    let plan = fx.compile(FULL).unwrap_or_else(|e| panic!("{e}"));

    let g = &plan.gateway;
    assert_eq!(g.shards, 4);
    assert!(!g.pin_shards);
    assert_eq!(g.admin, Some("127.0.0.1:9999".parse().unwrap()));
    assert_eq!(g.default_group, GroupId(0));
    assert_eq!(
        (
            g.ring_entries,
            g.recv_buffers,
            g.recv_buffer_size,
            g.backlog
        ),
        (1024, 512, 8192, 128)
    );

    assert_eq!(plan.listeners.len(), 2);
    let l = &plan.listeners[0];
    assert_eq!((l.id, l.name.as_str()), (ListenerId(0), "http"));
    assert_eq!(l.protocol(), ListenerProtocol::Http);
    assert_eq!(l.bind, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(l.http().expect("http listener").max_head_bytes, 4096);
    assert_eq!(l.http().expect("http listener").max_headers, 50);
    assert_eq!(l.http().expect("http listener").max_body_bytes, 65536);
    assert_eq!(
        l.http().expect("http listener").header_timeout,
        Duration::from_secs(5)
    );
    assert_eq!(
        l.http().expect("http listener").body_timeout,
        Duration::from_millis(250)
    );
    assert_eq!(
        l.http().expect("http listener").idle_timeout,
        Duration::from_secs(120)
    );
    assert_eq!(
        l.http().expect("http listener").max_requests_per_connection,
        1000
    );
    assert_eq!(l.max_connections, Some(1000));
    assert_eq!(plan.listeners[1].max_connections, None);
    assert_eq!(plan.gateway.max_connections, 5000);
    assert_eq!(plan.gateway.reserved_fds, 512);
    assert_eq!(plan.gateway.open_files_limit, Some(20_000));
    assert_eq!(
        l.http().expect("http listener").error_detail,
        ErrorDetail::Full
    );
    assert_eq!(plan.listeners[1].id, ListenerId(1));
    assert_eq!(plan.listeners[1].bind, "127.0.0.1:0".parse().unwrap());

    assert_eq!(plan.destinations.len(), 2);
    let d = &plan.destinations[0];
    assert_eq!((d.id, d.name.as_str()), (DestinationId(0), "sink"));
    assert_eq!(d.adapter.kind(), AdapterKind::GenericHttps);
    assert_eq!(d.endpoint, "sink.test:8443");
    assert_eq!(
        d.addrs,
        vec![
            "127.0.0.1:8443".parse().unwrap(),
            "[::1]:8443".parse::<SocketAddr>().unwrap()
        ]
    );
    assert_eq!(d.server_name, ServerName::try_from("sink.test").unwrap());
    assert_eq!(
        d.https().expect("https destination").host_header,
        "ingest.sink.test"
    );
    assert_eq!(
        d.https().expect("https destination").base_path.as_str(),
        "/ingest"
    );
    assert_eq!(d.tls.alpn_protocols, vec![b"http/1.1".to_vec()]);
    assert!(d.tls.client_auth_cert_resolver.has_certs());
    assert_eq!(d.pool.warm, 1);
    assert_eq!(d.pool.max_idle, 8);
    assert_eq!(d.pool.idle_timeout, Duration::from_secs(30));
    assert_eq!(d.pool.max_age, Duration::from_secs(600));
    assert_eq!(d.pool.max_connecting, 4);
    assert_eq!(d.pool.connect_timeout, Duration::from_secs(2));
    assert_eq!(d.pool.response_timeout, Duration::from_secs(3600));
    assert_eq!(d.pool.backoff_initial, Duration::from_millis(50));
    assert_eq!(d.pool.backoff_max, Duration::from_secs(5));
    assert_eq!(
        d.resolve,
        Some(Reresolve {
            host: "sink.test".to_owned(),
            port: 8443,
            interval: Duration::from_secs(120),
        })
    );

    let b = &plan.destinations[1];
    assert_eq!(b.resolve, None, "an IP literal is never looked up again");
    assert_eq!(b.id, DestinationId(1));
    assert_eq!(b.addrs, vec!["[::1]:443".parse().unwrap()]);
    assert_eq!(b.server_name, ServerName::try_from("::1").unwrap());
    assert_eq!(
        b.https().expect("https destination").host_header,
        "[::1]",
        "default Host omits :443"
    );
    assert_eq!(b.https().expect("https destination").base_path.as_str(), "");
    assert!(!b.tls.client_auth_cert_resolver.has_certs());

    assert_eq!(plan.groups.len(), 2);
    let farm = &plan.groups[0];
    assert_eq!((farm.id, farm.name.as_str()), (GroupId(0), "farm"));
    let table: Vec<(u16, &str, u16)> = farm
        .http_routes
        .iter()
        .map(|r| (r.listener.0, r.path_prefix.as_str(), r.destination.0))
        .collect();
    assert_eq!(
        table,
        vec![
            (0, "/telemetry/v1", 0),
            (0, "/telemetry", 1),
            (1, "/x", 0),
            (0, "/", 1)
        ],
        "longest prefix first, config order among equals"
    );
    assert_eq!(plan.groups[1].http_routes.len(), 0);

    let route = |path: &[u8]| plan.route_http(GroupId(0), ListenerId(0), path);
    assert_eq!(route(b"/telemetry/v1/x"), Some(DestinationId(0)));
    assert_eq!(route(b"/telemetry/v2"), Some(DestinationId(1)));
    assert_eq!(route(b"/other"), Some(DestinationId(1)));
}

#[test]
fn omitted_keys_take_their_documented_defaults() {
    let fx = Fixture::new();
    let plan = fx.compile(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
    let g = &plan.gateway;
    assert_eq!(g.shards, 3, "auto = available CPUs");
    assert!(g.pin_shards);
    assert_eq!(g.admin, Some("127.0.0.1:9180".parse().unwrap()));
    assert_eq!(g.default_group, GroupId(0));
    assert_eq!(
        (
            g.ring_entries,
            g.recv_buffers,
            g.recv_buffer_size,
            g.backlog
        ),
        (4096, 4096, 16384, 4096)
    );
    let h = plan.listeners[0].http().expect("http listener");
    assert_eq!(
        (h.max_head_bytes, h.max_headers, h.max_body_bytes),
        (8192, 100, 1 << 20)
    );
    assert_eq!(h.header_timeout, Duration::from_secs(10));
    assert_eq!(h.body_timeout, Duration::from_secs(30));
    assert_eq!(h.idle_timeout, Duration::from_secs(60));
    assert_eq!(h.max_requests_per_connection, 0);
    assert_eq!(h.error_detail, ErrorDetail::Generic);
    let d = &plan.destinations[0];
    assert_eq!(d.server_name, ServerName::try_from("sink.test").unwrap());
    assert_eq!(
        d.https().expect("https destination").host_header,
        "sink.test",
        "default Host omits :443"
    );
    assert_eq!(d.https().expect("https destination").base_path.as_str(), "");
    assert_eq!(d.tls.alpn_protocols, vec![b"http/1.1".to_vec()]);
    let p = &d.pool;
    assert_eq!((p.warm, p.max_idle), (2, 64));
    assert_eq!(p.idle_timeout, Duration::from_secs(60));
    assert_eq!(p.max_age, Duration::from_secs(300));
    assert_eq!(p.max_connecting, 0, "no limit by default");
    assert_eq!(p.connect_timeout, Duration::from_secs(5));
    assert_eq!(p.response_timeout, Duration::from_secs(30));
    assert_eq!(p.backoff_initial, Duration::from_millis(100));
    assert_eq!(p.backoff_max, Duration::from_secs(10));
}

#[test]
fn default_host_header_keeps_a_non_443_port_and_admin_can_be_off() {
    let fx = Fixture::new();
    let text = edit(MINIMAL, "sink.test:443", "sink.test:8443");
    let text = format!("[gateway]\nadmin = \"off\"\nshards = \"auto\"\n{text}");
    let plan = fx.compile(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        plan.destinations[0]
            .https()
            .expect("https destination")
            .host_header,
        "sink.test:8443"
    );
    assert_eq!(plan.gateway.admin, None);
}

#[test]
fn non_loopback_admin_needs_the_explicit_opt_in() {
    let fx = Fixture::new();
    let exposed = format!("[gateway]\nadmin = \"0.0.0.0:9180\"\n{MINIMAL}");
    assert_single(
        &fx.errors(&exposed),
        "gateway.admin",
        "admin_allow_non_loopback",
    );
    let allowed = edit(
        &exposed,
        "[gateway]\n",
        "[gateway]\nadmin_allow_non_loopback = true\n",
    );
    // Exposed, the admin API needs a bearer token.
    assert_single(
        &fx.errors(&allowed),
        "gateway.admin_token",
        "required when gateway.admin (0.0.0.0:9180) is not a loopback address",
    );
    let token_file = fx.path().join("secrets/admin.token");
    let with_token = edit(
        &allowed,
        "[gateway]\n",
        "[gateway]\nadmin_token = { file = \"secrets/admin.token\" }\n",
    );
    std::fs::write(&token_file, "short\n").unwrap();
    assert_single(&fx.errors(&with_token), "gateway.admin_token", "16");
    std::fs::write(&token_file, "0123456789abcdef0123\n").unwrap();
    let plan = fx.compile(&with_token).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.gateway.admin, Some("0.0.0.0:9180".parse().unwrap()));
    assert_eq!(
        plan.gateway.admin_token.as_ref().map(|t| &t.0[..]),
        Some(&b"0123456789abcdef0123"[..])
    );
    assert!(
        !format!("{:?}", plan.gateway).contains("0123456789abcdef"),
        "the token is never printed"
    );
}

#[test]
fn relative_paths_resolve_against_the_config_files_directory() {
    let fx = Fixture::new();
    // The process's working directory is the crate, where certs/ does not exist: only
    // resolution against the config's directory can find the files.
    let text = format!(
        "{MINIMAL}\n[[credential]]\nname = \"c\"\nkind = \"x509\"\ncert = \"certs/client.crt\"\nkey = \"certs/client.key\"\n"
    );
    let text = edit(
        &text,
        "endpoint = \"sink.test:443\"",
        "endpoint = \"127.0.0.1:443\"\nca = \"certs/ca.pem\"\ncredential = \"c\"",
    );
    let config = fx.path().join("simgate.toml");
    std::fs::write(&config, &text).unwrap();
    let plan = load_plan(&config).unwrap_or_else(|e| panic!("{e}"));
    assert!(plan.destinations[0]
        .tls
        .client_auth_cert_resolver
        .has_certs());

    // And a missing file is reported with the resolved (joined) path.
    let text = edit(&text, "certs/ca.pem", "certs/missing-ca.pem");
    std::fs::write(&config, &text).unwrap();
    let error = load_plan(&config).unwrap_err();
    let want = fx.path().join("certs/missing-ca.pem");
    assert_single(
        &error,
        "destination[0].ca",
        &format!("file not found: {}", want.display()),
    );
}

#[test]
fn absolute_paths_are_used_as_is() {
    let fx = Fixture::new();
    let ca: PathBuf = fx.path().join("certs/ca.pem");
    let text = edit(
        MINIMAL,
        "endpoint = \"sink.test:443\"",
        &format!(
            "endpoint = \"sink.test:443\"\nca = {:?}",
            ca.display().to_string()
        ),
    );
    let other_base = tempfile::tempdir().unwrap();
    compile_with(&text, other_base.path(), &fx.env).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn load_plan_reports_an_unreadable_config_file() {
    let fx = Fixture::new();
    let missing = fx.path().join("nope.toml");
    let error = load_plan(&missing).unwrap_err();
    assert_eq!(paths(&error), vec![""]);
    assert!(
        error.to_string().contains("cannot read config file"),
        "{error}"
    );
}

/// (edit from, edit to, expected path, expected message fragment) applied to FULL.
const SINGLE_ERROR_CASES: &[(&str, &str, &str, &str)] = &[
    // Duplicate names, reported with both paths.
    ("[[group]]\nname = \"farm\"", "[[destination]]\nname = \"sink\"\nadapter = \"https\"\nendpoint = \"[::1]:443\"\n[[group]]\nname = \"farm\"", "destination[2].name", "duplicate destination name \"sink\" (first defined at destination[0].name)"),
    ("[[listener]]\nname = \"http-alt\"", "[[credential]]\nname = \"sink-client\"\nkind = \"x509\"\ncert = \"certs/client.crt\"\nkey = \"certs/client.key\"\n[[listener]]\nname = \"http-alt\"", "credential[1].name", "duplicate credential name \"sink-client\" (first defined at credential[0].name)"),
    ("name = \"default\"", "name = \"farm\"", "group[1].name", "duplicate group name \"farm\" (first defined at group[0].name)"),
    ("name = \"default\"", "name = \"Default Group\"", "group[1].name", "invalid name \"Default Group\""),
    // Listeners.
    ("bind = \"127.0.0.1:0\"", "bind = \"127.0.0.1:8080\"", "listener[1].bind", "127.0.0.1:8080 is already used by listener[0].bind (0.0.0.0:8080)"),
    ("bind = \"127.0.0.1:0\"", "bind = \"x\"", "listener[1].bind", "invalid socket address \"x\""),
    ("protocol = \"http\"\nbind = \"127", "protocol = \"coap\"\nbind = \"127", "listener[1].protocol", "unsupported protocol \"coap\"; supported: \"http\", \"mqtt\""),
    ("max_head_bytes = 4096", "max_head_bytes = 100", "listener[0].max_head_bytes", "must be in 256..=1048576, got 100"),
    ("max_body_bytes = 65536", "max_body_bytes = 1073741825", "listener[0].max_body_bytes", "must be in 0..=1073741824"),
    ("max_headers = 50", "max_headers = 0", "listener[0].max_headers", "must be in 1..=1024, got 0"),
    ("max_requests_per_connection = 1000", "max_requests_per_connection = -1", "listener[0].max_requests_per_connection", "must be in 0..=4294967295"),
    ("header_timeout = \"5s\"", "header_timeout = \"5 s\"", "listener[0].header_timeout", "invalid duration \"5 s\""),
    ("error_detail = \"full\"", "error_detail = \"verbose\"", "listener[0].error_detail", "unknown value \"verbose\"; expected \"generic\" or \"full\""),
    ("error_detail = \"full\"", "error_detail = \"Full\"", "listener[0].error_detail", "unknown value \"Full\""),
    ("idle_timeout = \"2m\"", "idle_timeout = \"2d\"", "listener[0].idle_timeout", "unknown unit"),
    ("connect_timeout = \"2s\"", "connect_timeout = \"0s\"", "destination[0].pool.connect_timeout", "must be between 1ms and 24h, got \"0s\""),
    ("max_connecting = 4", "max_connecting = -1", "destination[0].pool.max_connecting", "must be in 0..=65535, got -1"),
    ("max_connecting = 4", "max_connecting = 65536", "destination[0].pool.max_connecting", "must be in 0..=65535"),
    ("max_age = \"10m\"", "max_age = \"0s\"", "destination[0].pool.max_age", "must be between 1ms and 24h, got \"0s\""),
    ("max_age = \"10m\"", "max_age = \"25h\"", "destination[0].pool.max_age", "must be between 1ms and 24h"),
    ("response_timeout = \"1h\"", "response_timeout = \"25h\"", "destination[0].pool.response_timeout", "must be between 1ms and 24h"),
    // Gateway.
    ("shards = 4", "shards = 0", "gateway.shards", "must be in 1..=1024, got 0"),
    ("shards = 4", "shards = 2000", "gateway.shards", "must be in 1..=1024, got 2000"),
    ("shards = 4", "shards = \"many\"", "gateway.shards", "expected \"auto\" or an integer in 1..=1024, got \"many\""),
    ("ring_entries = 1024", "ring_entries = 1000", "gateway.ring_entries", "must be a power of two, got 1000"),
    ("ring_entries = 1024", "ring_entries = 65536", "gateway.ring_entries", "must be in 64..=32768"),
    ("recv_buffers = 512", "recv_buffers = 8", "gateway.recv_buffers", "must be in 16..=32768"),
    ("recv_buffer_size = 8192", "recv_buffer_size = 512", "gateway.recv_buffer_size", "must be in 1024..=1048576"),
    ("backlog = 128", "backlog = 0", "gateway.backlog", "must be in 1..=65535"),
    ("default_group = \"farm\"", "default_group = \"orchard\"", "gateway.default_group", "unknown group \"orchard\""),
    ("admin = \"127.0.0.1:9999\"", "admin = \"localhost:9999\"", "gateway.admin", "invalid socket address \"localhost:9999\""),
    ("admin = \"127.0.0.1:9999\"", "admin = \"0.0.0.0:9999\"", "gateway.admin", "0.0.0.0:9999 is not a loopback address"),
    ("bind = \"127.0.0.1:0\"", "bind = \"127.0.0.1:9999\"", "gateway.admin", "127.0.0.1:9999 is already used by listener[1].bind"),
    // Routes.
    ("{ listener = \"http-alt\", path = \"/x\", destination = \"sink\" }", "{ listener = \"http-alt\", path = \"/x\", destination = \"aws\" }", "group[0].routes[3].destination", "unknown destination \"aws\""),
    ("{ listener = \"http\", path = \"/telemetry/v1\"", "{ listener = \"mqtt\", path = \"/telemetry/v1\"", "group[0].routes[1].listener", "unknown listener \"mqtt\""),
    ("path = \"/telemetry\",", "path = \"telemetry\",", "group[0].routes[2].path", "must start with '/'"),
    ("path = \"/telemetry\",", "path = \"/telemetry/v1/\",", "group[0].routes[2].path", "duplicate route: same listener and path \"/telemetry/v1\" as group[0].routes[1]"),
    // Credentials.
    ("cert = \"certs/client.crt\"", "cert = \"certs/nope.crt\"", "credential[0].cert", "file not found: "),
    ("cert = \"certs/client.crt\"", "cert = \"certs/a-directory\"", "credential[0].cert", "cannot read file"),
    ("cert = \"certs/client.crt\"", "cert = \"certs/notes.txt\"", "credential[0].cert", "no PEM certificate"),
    ("cert = \"certs/client.crt\"", "cert = \"certs/client.key\"", "credential[0].cert", "no PEM certificate"),
    ("key = \"certs/client.key\"", "key = \"certs/nope.key\"", "credential[0].key", "file not found: "),
    ("key = \"certs/client.key\"", "key = \"certs/client.crt\"", "credential[0].key", "no PEM private key"),
    ("key = \"certs/client.key\"", "key = \"certs/empty.pem\"", "credential[0].key", "no PEM private key"),
    ("key = \"certs/client.key\"", "key = \"certs/other.key\"", "credential[0].key", "private key does not match the certificate"),
    ("kind = \"x509\"", "kind = \"sas\"", "credential[0].kind", "unsupported credential kind \"sas\"; supported: \"x509\""),
    // Destinations.
    ("adapter = \"https\"\nendpoint = \"sink", "adapter = \"aws-iot\"\nendpoint = \"sink", "destination[0].adapter", "unsupported adapter \"aws-iot\"; supported: \"https\", \"mqtts\", \"aws-iot-core\""),
    ("adapter = \"https\"\nendpoint = \"sink", "adapter = \"gcp-iot-core\"\nendpoint = \"sink", "destination[0].adapter", "retired on 2023-08-16"),
    ("endpoint = \"sink.test:8443\"", "endpoint = \"sink.test\"", "destination[0].endpoint", "invalid endpoint \"sink.test\": port required"),
    ("endpoint = \"sink.test:8443\"", "endpoint = \"https://sink.test\"", "destination[0].endpoint", "without a scheme or path"),
    ("endpoint = \"[::1]:443\"", "endpoint = \"::1:443\"", "destination[1].endpoint", "brackets"),
    ("endpoint = \"sink.test:8443\"", "endpoint = \"nowhere.test:8443\"", "destination[0].endpoint", "cannot resolve \"nowhere.test\": Name or service not known"),
    ("ca = \"certs/ca.pem\"", "ca = \"certs/empty.pem\"", "destination[0].ca", "no PEM certificate"),
    ("ca = \"certs/ca.pem\"", "ca = \"certs/missing.pem\"", "destination[0].ca", "file not found"),
    ("credential = \"sink-client\"", "credential = \"aws-prod\"", "destination[0].credential", "unknown credential \"aws-prod\""),
    ("server_name = \"sink.test\"", "server_name = \"bad name\"", "destination[0].server_name", "invalid server name \"bad name\""),
    ("host_header = \"ingest.sink.test\"", "host_header = \"a\\r\\nX-Evil: 1\"", "destination[0].host_header", "without line breaks"),
    ("base_path = \"/ingest/\"", "base_path = \"ingest\"", "destination[0].base_path", "must start with '/'"),
    ("base_path = \"/ingest/\"", "base_path = \"/ingest/\"\nenvelope = \"xml\"", "destination[0].envelope", "unsupported envelope \"xml\"; supported: \"none\", \"json\""),
    ("alpn = [\"http/1.1\"]", "alpn = [\"http/1.1\", \"h3\"]", "destination[0].alpn[1]", "unsupported ALPN protocol \"h3\""),
    ("alpn = [\"http/1.1\"]", "alpn = [\"h2\", \"h2\"]", "destination[0].alpn[1]", "duplicate ALPN protocol \"h2\""),
    ("warm = 1", "warm = 9", "destination[0].pool.warm", "9 exceeds pool.max_idle (8)"),
    ("warm = 1", "warm = -1", "destination[0].pool.warm", "must be in 0..=1024"),
    ("backoff_initial = \"50ms\"", "backoff_initial = \"6s\"", "destination[0].pool.backoff_initial", "6s exceeds pool.backoff_max (5s)"),
    // Identity fields attached per group.
    ("attach = [\"imsi\", \"name\", \"tags\"]", "attach = [\"imsi\", \"iccid\"]", "group[0].attach[1]", "unknown field \"iccid\"; known: imsi, imei, msisdn, sim_id, name, tags"),
    ("attach = [\"imsi\", \"name\", \"tags\"]", "attach = [\"name\", \"name\"]", "group[0].attach[1]", "\"name\" given twice"),
    // Connection caps (the fixture's open-file limit is 20,000).
    ("max_connections = 5000", "max_connections = 19489", "gateway.max_connections", "cannot be served under the open-file limit of 20000 with 512 reserved (at most 19488)"),
    ("max_connections = 5000", "max_connections = 0", "gateway.max_connections", "must be in 1..="),
    ("reserved_fds = 512", "reserved_fds = 20000", "gateway.reserved_fds", "leaves no descriptor for devices under the open-file limit of 20000"),
    ("max_connections = 1000", "max_connections = -1", "listener[0].max_connections", "must be in 1..="),
];

#[test]
fn each_semantic_error_is_reported_at_its_path() {
    let fx = Fixture::new();
    let mut failures = Vec::new();
    for (from, to, path, needle) in SINGLE_ERROR_CASES {
        let error = match fx.compile(&edit(FULL, from, to)) {
            Ok(_) => {
                failures.push(format!("editing {from:?} -> {to:?}: accepted"));
                continue;
            }
            Err(error) => error,
        };
        if paths(&error) != vec![*path] || !error.errors[0].message.contains(needle) {
            failures.push(format!(
                "editing {from:?} -> {to:?}: want {path}: ...{needle}..., got:\n{error}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn duplicate_listener_names_report_both_paths_and_the_dangling_route() {
    let fx = Fixture::new();
    let error = fx.errors(&edit(FULL, "name = \"http-alt\"", "name = \"http\""));
    let shown = error.to_string();
    assert_eq!(
        shown,
        "listener[1].name: duplicate listener name \"http\" (first defined at listener[0].name)\n\
         group[0].routes[3].listener: unknown listener \"http-alt\""
    );
}

#[test]
fn a_missing_system_root_store_is_an_error_on_ca() {
    let mut fx = Fixture::new();
    fx.env.roots.clear();
    // destination[1] (backup) has no `ca`; destination[0] has one and is unaffected.
    assert_single(
        &fx.errors(FULL),
        "destination[1].ca",
        "no system root certificates",
    );
}

#[test]
fn auto_shards_without_a_cpu_count_is_an_error() {
    let mut fx = Fixture::new();
    fx.env.cpus = None;
    assert_single(&fx.errors(MINIMAL), "gateway.shards", "set a number");
}

#[test]
fn a_config_without_listeners_or_groups_is_rejected() {
    let fx = Fixture::new();
    let error = fx.errors("");
    assert_eq!(
        paths(&error),
        vec!["listener", "gateway.default_group"],
        "{error}"
    );
}

#[test]
fn bind_port_zero_never_conflicts() {
    let fx = Fixture::new();
    let text = edit(FULL, "bind = \"0.0.0.0:8080\"", "bind = \"127.0.0.1:0\"");
    fx.compile(&text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn all_semantic_errors_are_reported_together_one_per_line() {
    let fx = Fixture::new();
    let mut text = FULL.to_owned();
    for (from, to) in [
        ("shards = 4", "shards = 0"),
        ("bind = \"127.0.0.1:0\"", "bind = \"x\""),
        ("header_timeout = \"5s\"", "header_timeout = \"soon\""),
        ("key = \"certs/client.key\"", "key = \"certs/nope.key\""),
        ("endpoint = \"sink.test:8443\"", "endpoint = \"sink.test\""),
        (
            "destination = \"backup\" },\n  { listener = \"http\", path = \"/telemetry/v1\"",
            "destination = \"aws\" },\n  { listener = \"http\", path = \"/telemetry/v1\"",
        ),
        ("default_group = \"farm\"", "default_group = \"nope\""),
    ] {
        text = edit(&text, from, to);
    }
    let error = fx.errors(&text);
    let mut got = paths(&error);
    got.sort_unstable();
    assert_eq!(
        got,
        vec![
            "credential[0].key",
            "destination[0].endpoint",
            "gateway.default_group",
            "gateway.shards",
            "group[0].routes[0].destination",
            "listener[0].header_timeout",
            "listener[1].bind",
        ],
        "{error}"
    );
    let display = error.to_string();
    assert_eq!(display.lines().count(), 7, "{display}");
    assert!(display.lines().any(|l| l == "listener[1].bind: invalid socket address \"x\" (expected ip:port, IPv6 in brackets)"), "{display}");
    assert!(
        display
            .lines()
            .any(|l| l == "group[0].routes[0].destination: unknown destination \"aws\""),
        "{display}"
    );
}

#[test]
fn unknown_keys_are_errors_at_their_path() {
    let fx = Fixture::new();
    let cases = [
        ("[gateway]\n", "[gateway]\nshard = 2\n", "gateway.shard"),
        (
            "[[listener]]\n",
            "[listeners]\nx = 1\n[[listener]]\n",
            "listeners",
        ),
        (
            "max_headers = 50",
            "max_headers = 50\nbnd = \"x\"",
            "listener[0].bnd",
        ),
        (
            "[destination.pool]\nwarm = 1",
            "[destination.pool]\nwram = 1",
            "destination[0].pool.wram",
        ),
        (
            "endpoint = \"[::1]:443\"",
            "endpoint = \"[::1]:443\"\nmode = \"session\"",
            "destination[1].mode",
        ),
        (
            "path = \"/x\", destination = \"sink\"",
            "path = \"/x\", dest = \"sink\"",
            "group[0].routes[3].dest",
        ),
        (
            "kind = \"x509\"",
            "kind = \"x509\"\npassphrase = \"p\"",
            "credential[0].passphrase",
        ),
    ];
    for (from, to, path) in cases {
        let error = fx.errors(&edit(FULL, from, to));
        assert_eq!(paths(&error), vec![path], "{error}");
        assert!(error.errors[0].message.contains("unknown field"), "{error}");
        assert!(
            error.errors[0].message.contains("line "),
            "no location: {error}"
        );
    }
}

#[test]
fn wrong_types_and_missing_keys_are_errors_at_their_path() {
    let fx = Fixture::new();
    let error = fx.errors(&edit(FULL, "backlog = 128", "backlog = \"lots\""));
    assert_single(&error, "gateway.backlog", "invalid type");
    let error = fx.errors(&edit(
        FULL,
        "body_timeout = \"250ms\"",
        "body_timeout = 250",
    ));
    assert_single(
        &error,
        "listener[0].body_timeout",
        "a duration string such as",
    );
    let error = fx.errors(&edit(FULL, "bind = \"127.0.0.1:0\"\n", ""));
    assert_single(&error, "listener[1]", "missing field `bind`");
}

#[test]
fn toml_syntax_errors_give_line_and_column() {
    let fx = Fixture::new();
    let text = "[gateway]\nshards = 4\nbacklog = = 3\n";
    let error = fx.errors(text);
    assert_eq!(paths(&error), vec![""]);
    assert!(
        error.errors[0].message.starts_with("line 3, column 11: "),
        "{error}"
    );
    assert_eq!(error.to_string().lines().count(), 1, "{error}");
}

#[test]
fn secrets_never_appear_in_errors() {
    let fx = Fixture::new();
    let key_body: Vec<&str> = fx
        .client_key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!key_body.is_empty());
    let mut texts: Vec<String> = [
        "certs/secret.key",
        "certs/armoured-secret.key",
        "certs/unterminated-secret.key",
    ]
    .iter()
    .map(|k| {
        edit(
            FULL,
            "key = \"certs/client.key\"",
            &format!("key = \"{k}\""),
        )
    })
    .collect();
    // The secret as a cert, as a CA bundle, and a real key given where a cert belongs.
    texts.push(edit(
        FULL,
        "cert = \"certs/client.crt\"",
        "cert = \"certs/armoured-secret.key\"",
    ));
    texts.push(edit(
        FULL,
        "ca = \"certs/ca.pem\"",
        "ca = \"certs/secret.key\"",
    ));
    texts.push(edit(
        FULL,
        "cert = \"certs/client.crt\"",
        "cert = \"certs/client.key\"",
    ));
    // A password-like key that does not exist in the schema.
    texts.push(edit(
        FULL,
        "kind = \"x509\"",
        &format!("kind = \"x509\"\npassword = \"{SECRET_MARKER}\""),
    ));
    for text in &texts {
        let shown = fx.errors(text).to_string();
        assert!(!shown.contains(SECRET_MARKER), "secret leaked: {shown}");
        for line in &key_body {
            assert!(!shown.contains(line), "key material leaked: {shown}");
        }
    }
}

#[test]
fn the_shipped_example_compiles() {
    let fx = Fixture::new();
    let example = include_str!("../../examples/simgate.toml");
    let mut env_hosts = fx.env.hosts.clone();
    env_hosts.insert(
        "ingest.example.com".to_owned(),
        vec!["192.0.2.10:0".parse().unwrap()],
    );
    let env = FakeEnv {
        hosts: env_hosts,
        roots: fx.env.roots.clone(),
        cpus: Some(2),
        open_files: Some(20_000),
    };
    // The example's certs/ paths match the fixture's file names.
    let plan = compile_with(example, fx.path(), &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        plan.destinations[0].addrs,
        vec!["192.0.2.10:443".parse().unwrap()]
    );
    assert_eq!(
        plan.destinations[0]
            .https()
            .expect("https destination")
            .base_path
            .as_str(),
        "/v1"
    );
    assert_eq!(plan.groups[0].http_routes[0].path_prefix, "/telemetry");
}

#[test]
fn every_schema_key_is_documented() {
    let docs = include_str!("../../docs/configuration.md");
    let keys = [
        "shards",
        "pin_shards",
        "admin",
        "admin_allow_non_loopback",
        "default_group",
        "ring_entries",
        "recv_buffers",
        "recv_buffer_size",
        "backlog",
        "name",
        "protocol",
        "bind",
        "max_head_bytes",
        "max_headers",
        "max_body_bytes",
        "header_timeout",
        "body_timeout",
        "idle_timeout",
        "max_requests_per_connection",
        "error_detail",
        "\"generic\"",
        "\"full\"",
        "max_age",
        "max_connecting",
        "kind",
        "cert",
        "key",
        "adapter",
        "endpoint",
        "server_name",
        "ca",
        "credential",
        "host_header",
        "base_path",
        "alpn",
        "warm",
        "max_idle",
        "connect_timeout",
        "response_timeout",
        "backoff_initial",
        "backoff_max",
        "resolve_interval",
        "routes",
        "listener",
        "path",
        "destination",
        // MQTT.
        "[destination.mqtt]",
        "max_packet_size",
        "receive_maximum",
        "mode",
        "version",
        "client_id",
        "username",
        "password_file",
        "pass_through_credentials",
        "topic",
        "keep_alive",
        "connections_per_shard",
        "max_inflight",
        "linger",
        "accept_while_down",
        "down_after",
        "mqtts",
        "{client_id}",
        "{topic}",
        "{ip}",
        "{shard}",
        "{conn}",
        // SIMs.
        "sims_file",
        "unknown",
        "\"reject\"",
        "[[sim]]",
        "imsi",
        "ip",
        "imei",
        "msisdn",
        "sim_id",
        "group",
        "tags",
        // Measurement switches.
        "enabled",
        "histograms",
    ];
    for key in keys {
        assert!(
            docs.contains(&format!("`{key}`")),
            "docs/configuration.md lacks `{key}`"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// MQTT: listeners, mqtts destinations, templates, password files, MQTT routes.

/// A valid config with HTTP and MQTT side by side, using every MQTT key.
const MQTT_FULL: &str = r#"
[gateway]
shards = 2

[[listener]]
name = "http"
protocol = "http"
bind = "0.0.0.0:8080"

[[listener]]
name = "mqtt"
protocol = "mqtt"
bind = "0.0.0.0:1883"
max_packet_size = 65536
connect_timeout = "5s"
receive_maximum = 32

[[listener]]
name = "mqtt-fleet"
protocol = "mqtt"
bind = "0.0.0.0:1884"

[[credential]]
name = "gw-cert"
kind = "x509"
cert = "certs/client.crt"
key = "certs/client.key"

[[destination]]
name = "sink"
adapter = "https"
endpoint = "sink.test:443"

[[destination]]
name = "things"
adapter = "mqtts"
endpoint = "sink.test:8883"
ca = "certs/ca.pem"
credential = "gw-cert"
alpn = ["x-amzn-mqtt-ca"]
[destination.pool]
warm = 4
[destination.mqtt]
mode = "session"
version = "5"
client_id = "sim-{client_id}"
username = "gw-{ip}"
password_file = "secrets/broker.pass"
topic = "things/{client_id}/{topic}"
keep_alive = "30s"

[[destination]]
name = "fleet"
adapter = "mqtts"
endpoint = "127.0.0.1:8883"
server_name = "sink.test"
[destination.mqtt]
mode = "aggregate"
version = "3.1.1"
client_id = "gw-{shard}-{conn}"
username = "gateway-{shard}"
password_file = "secrets/crlf.pass"
pass_through_credentials = false
topic = "fleet/{ip}/{client_id}/{topic}"
keep_alive = "2m"
connections_per_shard = 4
max_inflight = 100
linger = "2ms"
accept_while_down = false
down_after = "45s"

[[group]]
name = "default"
routes = [
  { listener = "http", path = "/", destination = "sink" },
  { listener = "mqtt", destination = "things" },
  { listener = "mqtt-fleet", destination = "fleet" },
]

[[group]]
name = "fleet-only"
routes = [ { listener = "mqtt", destination = "fleet" } ]
"#;

/// Smallest MQTT configs: one listener, one destination, only required keys.
const MQTT_MINIMAL_SESSION: &str = r#"
[[listener]]
name = "mqtt"
protocol = "mqtt"
bind = "0.0.0.0:1883"

[[destination]]
name = "broker"
adapter = "mqtts"
endpoint = "sink.test:8883"
[destination.mqtt]
mode = "session"

[[group]]
name = "default"
routes = [ { listener = "mqtt", destination = "broker" } ]
"#;

fn vars_for_test() -> crate::policy::TemplateVars<'static> {
    crate::policy::TemplateVars {
        client_id: b"dev7",
        topic: b"temp",
        ip: "10.0.0.17".parse().unwrap(),
        shard: 1,
        conn: 3,
        sim: None,
    }
}

#[test]
fn mqtt_config_compiles_to_the_expected_plan() {
    use crate::policy::{MqttMode, MqttUpstreamVersion, Secret};
    let fx = Fixture::new();
    let plan = fx.compile(MQTT_FULL).unwrap_or_else(|e| panic!("{e}"));

    let l = &plan.listeners[1];
    assert_eq!(l.protocol(), ListenerProtocol::Mqtt);
    assert_eq!(l.mqtt().expect("mqtt listener").max_packet_size, 65536);
    assert_eq!(
        l.mqtt().expect("mqtt listener").connect_timeout,
        Duration::from_secs(5)
    );
    assert_eq!(l.mqtt().expect("mqtt listener").receive_maximum, 32);
    assert_eq!(plan.listeners[0].protocol(), ListenerProtocol::Http);

    let sink = &plan.destinations[0];
    assert!(sink.mqtt().is_none());
    assert_eq!(sink.tls.alpn_protocols, vec![b"http/1.1".to_vec()]);

    let things = &plan.destinations[1];
    assert_eq!(things.adapter.kind(), AdapterKind::Mqtts);
    assert_eq!(things.addrs[0], "127.0.0.1:8883".parse().unwrap());
    assert!(
        things.https().is_none(),
        "no HTTP settings on an MQTTS destination"
    );
    assert_eq!(things.tls.alpn_protocols, vec![b"x-amzn-mqtt-ca".to_vec()]);
    assert!(things.tls.client_auth_cert_resolver.has_certs());
    assert_eq!(things.pool.warm, 4);
    let m = things.mqtt().expect("mqtts destination has mqtt settings");
    assert_eq!(m.mode, MqttMode::Session);
    assert_eq!(m.version, MqttUpstreamVersion::V5);
    let vars = vars_for_test();
    assert_eq!(m.client_id.render(&vars), b"sim-dev7".to_vec());
    let username = m.username.as_ref().expect("username set");
    assert_eq!(username.render(&vars), b"gw-10.0.0.17".to_vec());
    assert_eq!(
        m.password,
        Some(Secret(bytes::Bytes::from_static(b"s3cret-pass")))
    );
    assert!(!m.pass_through_credentials);
    assert_eq!(m.topic.render(&vars), b"things/dev7/temp".to_vec());
    assert_eq!(m.keep_alive, Duration::from_secs(30));

    let fleet = &plan.destinations[2];
    assert_eq!(
        fleet.server_name,
        ServerName::try_from("sink.test").unwrap()
    );
    assert!(
        fleet.tls.alpn_protocols.is_empty(),
        "mqtts sends no ALPN by default"
    );
    assert_eq!(
        fleet.pool.warm, 0,
        "aggregate mode defaults to no warm connections"
    );
    let m = fleet.mqtt().expect("mqtts destination has mqtt settings");
    assert_eq!(m.mode, MqttMode::Aggregate);
    assert_eq!(m.version, MqttUpstreamVersion::V311);
    assert_eq!(m.client_id.render(&vars), b"gw-1-3".to_vec());
    assert_eq!(
        m.username.as_ref().map(|u| u.render(&vars)),
        Some(b"gateway-1".to_vec())
    );
    assert_eq!(
        m.password,
        Some(Secret(bytes::Bytes::from_static(b"crlf-pass"))),
        "CRLF trimmed"
    );
    assert_eq!(m.topic.render(&vars), b"fleet/10.0.0.17/dev7/temp".to_vec());
    assert_eq!(m.keep_alive, Duration::from_secs(120));
    assert_eq!((m.connections_per_shard, m.max_inflight), (4, 100));
    assert_eq!(m.linger, Duration::from_millis(2));
    assert_eq!(
        m.while_down,
        crate::policy::WhileDown::RefuseAfter(Duration::from_secs(45))
    );

    let default = &plan.groups[0];
    assert_eq!(default.http_routes.len(), 1);
    let mqtt_routes: Vec<(u16, u16)> = default
        .mqtt_routes
        .iter()
        .map(|r| (r.listener.0, r.destination.0))
        .collect();
    assert_eq!(mqtt_routes, vec![(1, 1), (2, 2)]);
    assert_eq!(
        plan.route_mqtt(GroupId(0), ListenerId(1)),
        Some(DestinationId(1))
    );
    assert_eq!(
        plan.route_mqtt(GroupId(0), ListenerId(2)),
        Some(DestinationId(2))
    );
    assert_eq!(plan.route_mqtt(GroupId(0), ListenerId(0)), None);
    assert_eq!(
        plan.route_mqtt(GroupId(1), ListenerId(1)),
        Some(DestinationId(2))
    );
    assert_eq!(plan.route_mqtt(GroupId(1), ListenerId(2)), None);
    assert_eq!(
        plan.route_http(GroupId(0), ListenerId(0), b"/x"),
        Some(DestinationId(0))
    );
}

#[test]
fn mqtt_omitted_keys_take_their_per_mode_defaults() {
    use crate::policy::{MqttMode, MqttUpstreamVersion};
    let fx = Fixture::new();
    let plan = fx
        .compile(MQTT_MINIMAL_SESSION)
        .unwrap_or_else(|e| panic!("{e}"));
    let l = plan.listeners[0].mqtt().expect("mqtt listener");
    assert_eq!(
        (l.max_packet_size, l.connect_timeout, l.receive_maximum),
        (262_144, Duration::from_secs(10), 64)
    );
    let d = &plan.destinations[0];
    assert_eq!(d.pool.warm, 2, "session mode uses the warm pool");
    assert!(d.tls.alpn_protocols.is_empty());
    let m = d.mqtt().expect("mqtt settings");
    assert_eq!(m.mode, MqttMode::Session);
    assert_eq!(m.version, MqttUpstreamVersion::SameAsDevice);
    assert_eq!(m.client_id.as_str(), "{client_id}");
    assert_eq!(m.topic.as_str(), "{topic}");
    assert!(m.username.is_none() && m.password.is_none());
    assert!(!m.pass_through_credentials);
    assert_eq!(m.keep_alive, Duration::from_secs(60));
    assert_eq!((m.connections_per_shard, m.max_inflight), (1, 256));
    assert_eq!(m.linger, Duration::ZERO);
    assert_eq!(m.max_publish_rate, None);
    assert_eq!(m.while_down, crate::policy::WhileDown::Accept);

    let aggregate = edit(
        MQTT_MINIMAL_SESSION,
        "mode = \"session\"",
        "mode = \"aggregate\"",
    );
    let plan = fx.compile(&aggregate).unwrap_or_else(|e| panic!("{e}"));
    let d = &plan.destinations[0];
    assert_eq!(d.pool.warm, 0);
    let m = d.mqtt().expect("mqtt settings");
    assert_eq!(m.mode, MqttMode::Aggregate);
    assert_eq!(m.version, MqttUpstreamVersion::V311);
    assert_eq!(m.client_id.as_str(), "simgate-{shard}-{conn}");
    assert_eq!(m.topic.as_str(), "devices/{client_id}/{topic}");
    assert_eq!(m.keep_alive, Duration::from_secs(60));
    assert_eq!((m.connections_per_shard, m.max_inflight), (1, 256));
    assert_eq!(m.linger, Duration::ZERO);
    assert_eq!(m.max_publish_rate, None, "mqtts: unlimited unless set");
    let limited = edit(
        &aggregate,
        "mode = \"aggregate\"",
        "mode = \"aggregate\"\nmax_publish_rate = 100",
    );
    let limited = fx.compile(&limited).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        limited.destinations[0]
            .mqtt()
            .and_then(|m| m.max_publish_rate)
            .map(std::num::NonZeroU32::get),
        Some(100)
    );
    assert_eq!(
        m.while_down,
        crate::policy::WhileDown::Accept,
        "aggregate devices are accepted while the broker is down unless told otherwise"
    );
    // accept_while_down = false alone: refused after the default 30 s.
    let refusing = edit(
        &aggregate,
        "mode = \"aggregate\"",
        "mode = \"aggregate\"\naccept_while_down = false",
    );
    let plan = fx.compile(&refusing).unwrap_or_else(|e| panic!("{e}"));
    let m = plan.destinations[0].mqtt().expect("mqtt settings");
    assert_eq!(
        m.while_down,
        crate::policy::WhileDown::RefuseAfter(Duration::from_secs(30))
    );

    // An explicit warm pool is kept in aggregate mode too.
    let warm = edit(
        &aggregate,
        "[destination.mqtt]",
        "[destination.pool]\nwarm = 1\n[destination.mqtt]",
    );
    let plan = fx.compile(&warm).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.destinations[0].pool.warm, 1);
}

#[test]
fn mqtt_boundary_values_are_accepted() {
    let fx = Fixture::new();
    let cases = [
        ("max_packet_size = 65536", "max_packet_size = 64"),
        ("max_packet_size = 65536", "max_packet_size = 268435455"),
        ("receive_maximum = 32", "receive_maximum = 1"),
        ("receive_maximum = 32", "receive_maximum = 65535"),
        ("keep_alive = \"2m\"", "keep_alive = \"1s\""),
        ("keep_alive = \"2m\"", "keep_alive = \"65535s\""),
        ("keep_alive = \"2m\"", "keep_alive = \"1000ms\""),
        ("connections_per_shard = 4", "connections_per_shard = 64"),
        ("max_inflight = 100", "max_inflight = 1"),
        ("max_inflight = 100", "max_inflight = 65535"),
        ("linger = \"2ms\"", "linger = \"0ms\""),
        ("linger = \"2ms\"", "linger = \"100ms\""),
        ("linger = \"2ms\"", "linger = \"2ms\"\nmax_publish_rate = 1"),
        (
            "linger = \"2ms\"",
            "linger = \"2ms\"\nmax_publish_rate = 1000000",
        ),
        ("down_after = \"45s\"", "down_after = \"1s\""),
        ("down_after = \"45s\"", "down_after = \"24h\""),
        ("down_after = \"45s\"\n", ""),
        (
            "accept_while_down = false\ndown_after = \"45s\"\n",
            "accept_while_down = true\n",
        ),
        ("version = \"5\"", "version = \"device\""),
        ("version = \"5\"", "version = \"3.1.1\""),
        ("alpn = [\"x-amzn-mqtt-ca\"]", "alpn = []"),
        (
            "alpn = [\"x-amzn-mqtt-ca\"]",
            "alpn = [\"mqtt\", \"x-amzn-mqtt-ca\"]",
        ),
        // Escaped braces are literal text.
        (
            "topic = \"things/{client_id}/{topic}\"",
            "topic = \"{{x}}/{topic}\"",
        ),
        // Session client ids may key on the device's address instead of its client id.
        (
            "client_id = \"sim-{client_id}\"",
            "client_id = \"sim-{ip}\"",
        ),
    ];
    for (from, to) in cases {
        let text = edit(MQTT_FULL, from, to);
        if let Err(e) = fx.compile(&text) {
            panic!("{from:?} -> {to:?} rejected:\n{e}");
        }
    }
}

#[test]
fn aggregate_client_ids_must_be_unique_per_upstream_connection() {
    let fx = Fixture::new();
    let fixed = edit(
        MQTT_FULL,
        "client_id = \"gw-{shard}-{conn}\"",
        "client_id = \"gw\"",
    );
    let error = fx.errors(&fixed);
    assert_eq!(
        paths(&error),
        vec![
            "destination[2].mqtt.client_id",
            "destination[2].mqtt.client_id"
        ],
        "{error}"
    );
    assert!(
        error.errors[0]
            .message
            .contains("must contain {shard}: with 2 shards"),
        "{error}"
    );
    assert!(
        error.errors[1].message.contains("must contain {conn}"),
        "{error}"
    );
    // One shard and one connection per shard: a fixed id is unique.
    let single = edit(&fixed, "shards = 2", "shards = 1");
    let single = edit(
        &single,
        "connections_per_shard = 4",
        "connections_per_shard = 1",
    );
    let plan = fx.compile(&single).unwrap_or_else(|e| panic!("{e}"));
    let m = plan.destinations[2].mqtt().expect("mqtt settings");
    assert_eq!(m.client_id.as_str(), "gw");
}

/// (edit from, edit to, expected path, expected message fragment) applied to MQTT_FULL.
const MQTT_SINGLE_ERROR_CASES: &[(&str, &str, &str, &str)] = &[
    // Listener keys belong to one protocol.
    ("receive_maximum = 32", "receive_maximum = 32\nmax_head_bytes = 4096", "listener[1].max_head_bytes", "only for protocol \"http\""),
    ("receive_maximum = 32", "receive_maximum = 32\nidle_timeout = \"1m\"", "listener[1].idle_timeout", "only for protocol \"http\""),
    ("receive_maximum = 32", "receive_maximum = 32\nmax_requests_per_connection = 5", "listener[1].max_requests_per_connection", "only for protocol \"http\""),
    ("receive_maximum = 32", "receive_maximum = 32\nerror_detail = \"full\"", "listener[1].error_detail", "only for protocol \"http\""),
    ("bind = \"0.0.0.0:8080\"", "bind = \"0.0.0.0:8080\"\nmax_packet_size = 1024", "listener[0].max_packet_size", "only for protocol \"mqtt\""),
    ("bind = \"0.0.0.0:8080\"", "bind = \"0.0.0.0:8080\"\nconnect_timeout = \"1s\"", "listener[0].connect_timeout", "only for protocol \"mqtt\""),
    ("bind = \"0.0.0.0:8080\"", "bind = \"0.0.0.0:8080\"\nreceive_maximum = 8", "listener[0].receive_maximum", "only for protocol \"mqtt\""),
    // MQTT listener ranges.
    ("max_packet_size = 65536", "max_packet_size = 63", "listener[1].max_packet_size", "must be in 64..=268435455, got 63"),
    ("max_packet_size = 65536", "max_packet_size = 268435456", "listener[1].max_packet_size", "must be in 64..=268435455"),
    ("receive_maximum = 32", "receive_maximum = 0", "listener[1].receive_maximum", "must be in 1..=65535, got 0"),
    ("receive_maximum = 32", "receive_maximum = 65536", "listener[1].receive_maximum", "must be in 1..=65535"),
    ("connect_timeout = \"5s\"", "connect_timeout = \"0s\"", "listener[1].connect_timeout", "must be between 1ms and 24h"),
    ("connect_timeout = \"5s\"", "connect_timeout = \"5\"", "listener[1].connect_timeout", "invalid duration \"5\""),
    ("protocol = \"mqtt\"\nbind = \"0.0.0.0:1884\"", "protocol = \"coap\"\nbind = \"0.0.0.0:1884\"", "listener[2].protocol", "unsupported protocol \"coap\"; supported: \"http\", \"mqtt\""),
    // Adapter-specific destination keys.
    ("[[group]]\nname = \"default\"", "[[destination]]\nname = \"bare\"\nadapter = \"mqtts\"\nendpoint = \"sink.test:8883\"\n[[group]]\nname = \"default\"", "destination[3].mqtt", "required for adapter \"mqtts\""),
    ("[[group]]\nname = \"default\"", "[[destination]]\nname = \"web\"\nadapter = \"https\"\nendpoint = \"sink.test:443\"\n[destination.mqtt]\nmode = \"session\"\n[[group]]\nname = \"default\"", "destination[3].mqtt", "only for adapter \"mqtts\""),
    ("alpn = [\"x-amzn-mqtt-ca\"]", "alpn = [\"x-amzn-mqtt-ca\"]\nhost_header = \"things.test\"", "destination[1].host_header", "only for adapter \"https\""),
    ("alpn = [\"x-amzn-mqtt-ca\"]", "alpn = [\"x-amzn-mqtt-ca\"]\nbase_path = \"/v1\"", "destination[1].base_path", "only for adapter \"https\""),
    // ALPN: any non-empty names for mqtts; the https rule is unchanged.
    ("alpn = [\"x-amzn-mqtt-ca\"]", "alpn = [\"\"]", "destination[1].alpn[0]", "must not be empty"),
    ("alpn = [\"x-amzn-mqtt-ca\"]", "alpn = [\"mqtt\", \"mqtt\"]", "destination[1].alpn[1]", "duplicate ALPN protocol \"mqtt\""),
    ("endpoint = \"sink.test:443\"", "endpoint = \"sink.test:443\"\nalpn = [\"mqtt\"]", "destination[0].alpn[0]", "unsupported ALPN protocol \"mqtt\""),
    // Mode and version.
    ("mode = \"session\"", "mode = \"relay\"", "destination[1].mqtt.mode", "unknown mode \"relay\"; expected \"session\" or \"aggregate\""),
    ("version = \"3.1.1\"", "version = \"device\"", "destination[2].mqtt.version", "\"device\" is only for mode \"session\""),
    ("version = \"5\"", "version = \"5.0\"", "destination[1].mqtt.version", "unknown version \"5.0\"; expected \"device\", \"3.1.1\" or \"5\""),
    ("version = \"3.1.1\"", "version = \"3\"", "destination[2].mqtt.version", "unknown version \"3\"; expected \"3.1.1\" or \"5\""),
    // client_id and username templates.
    ("client_id = \"sim-{client_id}\"", "client_id = \"sim-{client_id}-{shard}\"", "destination[1].mqtt.client_id", "placeholder {shard} is not allowed in mode \"session\""),
    ("client_id = \"sim-{client_id}\"", "client_id = \"sim-{client_id}-{conn}\"", "destination[1].mqtt.client_id", "placeholder {conn} is not allowed in mode \"session\""),
    ("client_id = \"gw-{shard}-{conn}\"", "client_id = \"gw-{shard}-{conn}-{client_id}\"", "destination[2].mqtt.client_id", "placeholder {client_id} is not allowed in mode \"aggregate\""),
    ("client_id = \"gw-{shard}-{conn}\"", "client_id = \"gw-{shard}-{conn}-{ip}\"", "destination[2].mqtt.client_id", "no single device {client_id}, {ip} or SIM; allowed: {shard}, {conn}"),
    ("client_id = \"sim-{client_id}\"", "client_id = \"sim-{topic}\"", "destination[1].mqtt.client_id", "placeholder {topic} is not allowed here; allowed: {client_id}, {ip}"),
    ("client_id = \"sim-{client_id}\"", "client_id = \"sim-{iccid}\"", "destination[1].mqtt.client_id", "unknown placeholder {iccid}; known: {client_id}, {ip}, {imsi}"),
    ("client_id = \"sim-{client_id}\"", "client_id = \"sim-{client_id\"", "destination[1].mqtt.client_id", "unbalanced brace"),
    ("client_id = \"sim-{client_id}\"", "client_id = \"gateway\"", "destination[1].mqtt.client_id", "must contain {client_id}, {ip} or {imsi}"),
    ("client_id = \"gw-{shard}-{conn}\"", "client_id = \"gw-{conn}\"", "destination[2].mqtt.client_id", "must contain {shard}"),
    ("client_id = \"gw-{shard}-{conn}\"", "client_id = \"gw-{shard}\"", "destination[2].mqtt.client_id", "must contain {conn}"),
    ("username = \"gw-{ip}\"", "username = \"gw-{shard}\"", "destination[1].mqtt.username", "placeholder {shard} is not allowed in mode \"session\""),
    ("username = \"gateway-{shard}\"", "username = \"{client_id}\"", "destination[2].mqtt.username", "placeholder {client_id} is not allowed in mode \"aggregate\""),
    ("username = \"gw-{ip}\"", "username = \"{sim}\"", "destination[1].mqtt.username", "unknown placeholder {sim}"),
    ("username = \"gw-{ip}\"", "username = \"\"", "destination[1].mqtt.username", "must not be empty"),
    // Topic template.
    ("topic = \"fleet/{ip}/{client_id}/{topic}\"", "topic = \"fleet/{iccid}/{topic}\"", "destination[2].mqtt.topic", "unknown placeholder {iccid}; known: {client_id}, {ip}, {topic}, {imsi}"),
    ("topic = \"fleet/{ip}/{client_id}/{topic}\"", "topic = \"fleet/{shard}/{topic}\"", "destination[2].mqtt.topic", "placeholder {shard} is not allowed here; allowed: {client_id}, {ip}, {topic}"),
    ("topic = \"things/{client_id}/{topic}\"", "topic = \"things/{client_id}\"", "destination[1].mqtt.topic", "must contain {topic}"),
    ("topic = \"things/{client_id}/{topic}\"", "topic = \"{topic}/{topic}\"", "destination[1].mqtt.topic", "{topic} may appear at most once"),
    ("topic = \"things/{client_id}/{topic}\"", "topic = \"things/+/{topic}\"", "destination[1].mqtt.topic", "must not contain the wildcards"),
    ("topic = \"things/{client_id}/{topic}\"", "topic = \"things/{topic}/#\"", "destination[1].mqtt.topic", "must not contain the wildcards"),
    ("topic = \"things/{client_id}/{topic}\"", "topic = \"things}/{topic}\"", "destination[1].mqtt.topic", "unbalanced brace"),
    // Credentials.
    ("password_file = \"secrets/broker.pass\"", "password_file = \"secrets/missing.pass\"", "destination[1].mqtt.password_file", "file not found: "),
    ("password_file = \"secrets/broker.pass\"", "password_file = \"secrets/empty.pass\"", "destination[1].mqtt.password_file", "password file is empty"),
    ("password_file = \"secrets/broker.pass\"", "password_file = \"secrets/huge.pass\"", "destination[1].mqtt.password_file", "longer than 65535 bytes"),
    ("password_file = \"secrets/broker.pass\"", "password_file = \"certs/a-directory\"", "destination[1].mqtt.password_file", "cannot read file"),
    ("username = \"gateway-{shard}\"\n", "", "destination[2].mqtt.password_file", "only together with a username"),
    ("pass_through_credentials = false", "pass_through_credentials = true", "destination[2].mqtt.pass_through_credentials", "only for mode \"session\""),
    ("keep_alive = \"30s\"", "keep_alive = \"30s\"\npass_through_credentials = true", "destination[1].mqtt.pass_through_credentials", "cannot be combined with username or password_file"),
    // Aggregate link settings.
    ("connections_per_shard = 4", "connections_per_shard = 0", "destination[2].mqtt.connections_per_shard", "must be in 1..=64, got 0"),
    ("connections_per_shard = 4", "connections_per_shard = 65", "destination[2].mqtt.connections_per_shard", "must be in 1..=64"),
    ("max_inflight = 100", "max_inflight = 0", "destination[2].mqtt.max_inflight", "must be in 1..=65535, got 0"),
    ("max_inflight = 100", "max_inflight = 65536", "destination[2].mqtt.max_inflight", "must be in 1..=65535"),
    ("linger = \"2ms\"", "linger = \"101ms\"", "destination[2].mqtt.linger", "must be between 0s and 100ms"),
    ("linger = \"2ms\"", "linger = \"1s\"", "destination[2].mqtt.linger", "must be between 0s and 100ms"),
    ("linger = \"2ms\"", "linger = \"fast\"", "destination[2].mqtt.linger", "invalid duration"),
    ("keep_alive = \"30s\"", "keep_alive = \"30s\"\nlinger = \"1ms\"", "destination[1].mqtt.linger", "only for mode \"aggregate\""),
    ("linger = \"2ms\"", "linger = \"2ms\"\nmax_publish_rate = 0", "destination[2].mqtt.max_publish_rate", "must be in 1..=1000000, got 0"),
    ("linger = \"2ms\"", "linger = \"2ms\"\nmax_publish_rate = 1000001", "destination[2].mqtt.max_publish_rate", "must be in 1..=1000000"),
    ("keep_alive = \"30s\"", "keep_alive = \"30s\"\nmax_publish_rate = 100", "destination[1].mqtt.max_publish_rate", "only for mode \"aggregate\": in session mode every device has its own upstream connection"),
    // Upstream down.
    ("down_after = \"45s\"", "down_after = \"999ms\"", "destination[2].mqtt.down_after", "must be between 1s and 24h, got \"999ms\""),
    ("down_after = \"45s\"", "down_after = \"25h\"", "destination[2].mqtt.down_after", "must be between 1s and 24h"),
    ("down_after = \"45s\"", "down_after = \"later\"", "destination[2].mqtt.down_after", "invalid duration \"later\""),
    ("accept_while_down = false\n", "accept_while_down = true\n", "destination[2].mqtt.down_after", "only with accept_while_down = false"),
    ("accept_while_down = false\n", "", "destination[2].mqtt.down_after", "only with accept_while_down = false"),
    ("keep_alive = \"30s\"", "keep_alive = \"30s\"\naccept_while_down = false", "destination[1].mqtt.accept_while_down", "only for mode \"aggregate\""),
    ("keep_alive = \"30s\"", "keep_alive = \"30s\"\naccept_while_down = true", "destination[1].mqtt.accept_while_down", "answered after the broker's"),
    ("keep_alive = \"30s\"", "keep_alive = \"30s\"\ndown_after = \"10s\"", "destination[1].mqtt.down_after", "only for mode \"aggregate\""),
    ("keep_alive = \"2m\"", "keep_alive = \"0s\"", "destination[2].mqtt.keep_alive", "must be between 1s and 65535s"),
    ("keep_alive = \"2m\"", "keep_alive = \"999ms\"", "destination[2].mqtt.keep_alive", "must be between 1s and 65535s"),
    ("keep_alive = \"2m\"", "keep_alive = \"65536s\"", "destination[2].mqtt.keep_alive", "must be between 1s and 65535s"),
    ("keep_alive = \"2m\"", "keep_alive = \"19h\"", "destination[2].mqtt.keep_alive", "must be between 1s and 65535s"),
    ("keep_alive = \"2m\"", "keep_alive = \"1500ms\"", "destination[2].mqtt.keep_alive", "must be a whole number of seconds"),
    ("keep_alive = \"2m\"", "keep_alive = \"soon\"", "destination[2].mqtt.keep_alive", "invalid duration \"soon\""),
    // Routes.
    ("{ listener = \"mqtt\", destination = \"things\" }", "{ listener = \"mqtt\", path = \"/\", destination = \"things\" }", "group[0].routes[1].path", "not allowed: listener \"mqtt\" is MQTT"),
    ("{ listener = \"mqtt\", destination = \"things\" }", "{ listener = \"mqtt\", destination = \"sink\" }", "group[0].routes[1].destination", "listener \"mqtt\" is MQTT; destination \"sink\" is https"),
    ("{ listener = \"http\", path = \"/\", destination = \"sink\" }", "{ listener = \"http\", destination = \"sink\" }", "group[0].routes[0].path", "required: listener \"http\" is HTTP"),
    ("{ listener = \"http\", path = \"/\", destination = \"sink\" }", "{ listener = \"http\", path = \"/\", destination = \"things\" }", "group[0].routes[0].destination", "listener \"http\" is HTTP; destination \"things\" is mqtts"),
    ("{ listener = \"mqtt-fleet\", destination = \"fleet\" },", "{ listener = \"mqtt-fleet\", destination = \"fleet\" },\n  { listener = \"mqtt\", destination = \"fleet\" },", "group[0].routes[3].listener", "duplicate MQTT route for listener \"mqtt\" (first at group[0].routes[1])"),
    ("{ listener = \"mqtt\", destination = \"fleet\" }", "{ listener = \"mqtt\", destination = \"cloud\" }", "group[1].routes[0].destination", "unknown destination \"cloud\""),
];

#[test]
fn each_mqtt_error_is_reported_at_its_path() {
    let fx = Fixture::new();
    let mut failures = Vec::new();
    for (from, to, path, needle) in MQTT_SINGLE_ERROR_CASES {
        let error = match fx.compile(&edit(MQTT_FULL, from, to)) {
            Ok(_) => {
                failures.push(format!("editing {from:?} -> {to:?}: accepted"));
                continue;
            }
            Err(error) => error,
        };
        if paths(&error) != vec![*path] || !error.errors[0].message.contains(needle) {
            failures.push(format!(
                "editing {from:?} -> {to:?}: want {path}: ...{needle}..., got:\n{error}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn an_alpn_name_longer_than_255_bytes_is_rejected_for_mqtts() {
    let fx = Fixture::new();
    let long = "a".repeat(256);
    let text = edit(
        MQTT_FULL,
        "alpn = [\"x-amzn-mqtt-ca\"]",
        &format!("alpn = [\"{long}\"]"),
    );
    assert_single(
        &fx.errors(&text),
        "destination[1].alpn[0]",
        "at most 255 bytes",
    );
    let text = edit(
        MQTT_FULL,
        "alpn = [\"x-amzn-mqtt-ca\"]",
        &format!("alpn = [\"{}\"]", "a".repeat(255)),
    );
    fx.compile(&text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn switching_an_https_destination_to_mqtts_reports_the_table_and_the_route() {
    let fx = Fixture::new();
    let text = edit(
        MQTT_FULL,
        "adapter = \"https\"\nendpoint = \"sink.test:443\"",
        "adapter = \"mqtts\"\nendpoint = \"sink.test:443\"",
    );
    let error = fx.errors(&text);
    assert_eq!(
        error.to_string(),
        "destination[0].mqtt: required for adapter \"mqtts\": add a [destination.mqtt] table \
         with at least `mode` (\"session\" or \"aggregate\")\n\
         group[0].routes[0].destination: listener \"http\" is HTTP; destination \"sink\" is mqtts"
    );
}

#[test]
fn mqtt_structural_errors_name_the_mqtt_table() {
    let fx = Fixture::new();
    let error = fx.errors(&edit(MQTT_FULL, "mode = \"session\"\n", ""));
    assert_single(&error, "destination[1].mqtt", "missing field `mode`");
    let error = fx.errors(&edit(
        MQTT_FULL,
        "keep_alive = \"30s\"",
        "keepalive = \"30s\"",
    ));
    assert_single(&error, "destination[1].mqtt.keepalive", "unknown field");
    let error = fx.errors(&edit(
        MQTT_FULL,
        "pass_through_credentials = false",
        "pass_through_credentials = \"no\"",
    ));
    assert_single(
        &error,
        "destination[2].mqtt.pass_through_credentials",
        "invalid type",
    );
}

#[test]
fn password_files_are_trimmed_and_never_shown() {
    // (Resolution against the config directory: every MQTT_FULL compile reads
    // secrets/*.pass relative to the fixture dir, which is not the working directory.)
    let fx = Fixture::new();
    // A file without a trailing newline is taken as is.
    let text = edit(MQTT_FULL, "secrets/broker.pass", "secrets/bare.pass");
    let plan = fx.compile(&text).unwrap_or_else(|e| panic!("{e}"));
    let m = plan.destinations[1].mqtt().expect("mqtt settings");
    assert_eq!(
        m.password,
        Some(crate::policy::Secret(bytes::Bytes::from_static(
            b"no newline"
        )))
    );

    // The secret appears neither in the plan's Debug output nor in errors about its key.
    let text = edit(MQTT_FULL, "secrets/broker.pass", "secrets/marker.pass");
    let plan = fx.compile(&text).unwrap_or_else(|e| panic!("{e}"));
    let debug = format!("{plan:?}");
    assert!(!debug.contains(SECRET_MARKER), "secret in Debug: {debug}");
    assert!(debug.contains("Secret(<redacted>)"), "{debug}");
    let broken = [
        // 3.1.1 without a username, and pass-through together with a password.
        edit(
            &edit(MQTT_FULL, "secrets/crlf.pass", "secrets/marker.pass"),
            "username = \"gateway-{shard}\"\n",
            "",
        ),
        edit(
            &text,
            "keep_alive = \"30s\"",
            "keep_alive = \"30s\"\npass_through_credentials = true",
        ),
        // The password file where a CA bundle or a key belongs.
        edit(
            MQTT_FULL,
            "ca = \"certs/ca.pem\"",
            "ca = \"secrets/marker.pass\"",
        ),
        edit(
            MQTT_FULL,
            "key = \"certs/client.key\"",
            "key = \"secrets/marker.pass\"",
        ),
    ];
    for text in &broken {
        let shown = fx.errors(text).to_string();
        assert!(!shown.contains(SECRET_MARKER), "secret leaked: {shown}");
    }
}

#[test]
fn the_shipped_mqtt_example_compiles() {
    use crate::policy::MqttMode;
    let fx = Fixture::new();
    let example = include_str!("../../examples/mqtt.toml");
    let mut hosts = fx.env.hosts.clone();
    for host in ["iot.example.com", "broker.example.com"] {
        hosts.insert(host.to_owned(), vec!["192.0.2.10:0".parse().unwrap()]);
    }
    let env = FakeEnv {
        hosts,
        roots: fx.env.roots.clone(),
        cpus: Some(2),
        open_files: Some(20_000),
    };
    // The example's certs/ and secrets/ paths match the fixture's file names.
    let plan = compile_with(example, fx.path(), &env).unwrap_or_else(|e| panic!("{e}"));
    let modes: Vec<Option<MqttMode>> = plan
        .destinations
        .iter()
        .map(|d| d.mqtt().map(|m| m.mode))
        .collect();
    assert_eq!(
        modes,
        vec![Some(MqttMode::Session), Some(MqttMode::Aggregate)]
    );
    assert_eq!(plan.groups[0].mqtt_routes.len(), 2);
}

#[test]
fn resolve_interval_defaults_to_30s_and_can_be_switched_off() {
    let fx = Fixture::new();
    let plan = fx.compile(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
    let r = plan.destinations[0]
        .resolve
        .as_ref()
        .expect("a DNS endpoint is re-resolved");
    assert_eq!((r.host.as_str(), r.port), ("sink.test", 443));
    assert_eq!(r.interval, Duration::from_secs(30));
    for off in ["off", "0", "0s", "0ms"] {
        let text = edit(
            MINIMAL,
            "endpoint = \"sink.test:443\"",
            &format!("endpoint = \"sink.test:443\"\nresolve_interval = \"{off}\""),
        );
        let plan = fx.compile(&text).unwrap_or_else(|e| panic!("{off}: {e}"));
        assert_eq!(plan.destinations[0].resolve, None, "{off}");
    }
}

#[test]
fn bad_resolve_interval_is_reported_with_its_path() {
    let fx = Fixture::new();
    for (value, needle) in [
        ("soon", "invalid duration \"soon\""),
        ("500ms", "must be between 1s and 24h"),
        ("25h", "must be between 1s and 24h"),
        ("1.5s", "invalid duration"),
    ] {
        let text = edit(
            MINIMAL,
            "endpoint = \"sink.test:443\"",
            &format!("endpoint = \"sink.test:443\"\nresolve_interval = \"{value}\""),
        );
        assert_single(&fx.errors(&text), "destination[0].resolve_interval", needle);
    }
    // A number instead of a string is a structural error, located by serde.
    let text = edit(
        MINIMAL,
        "endpoint = \"sink.test:443\"",
        "endpoint = \"sink.test:443\"\nresolve_interval = 30",
    );
    assert_eq!(
        paths(&fx.errors(&text)),
        vec!["destination[0].resolve_interval"]
    );
}

#[test]
fn aggregate_link_fingerprint_ignores_dns_answer_order_and_subset() {
    // A reload (or DNS) that returns the same name's addresses in another order or subset must
    // not retire aggregate-mode links: that would reconnect every device on them.
    let fx = Fixture::new();
    let text = edit(
        MQTT_FULL,
        "endpoint = \"127.0.0.1:8883\"",
        "endpoint = \"sink.test:8883\"",
    );
    let plan = fx.compile(&text).unwrap_or_else(|e| panic!("{e}"));
    let fleet = plan
        .destinations
        .iter()
        .find(|d| d.name == "fleet")
        .expect("fleet destination");
    let before = crate::upstream::mqtt_link::destination_fingerprint(fleet);
    assert!(before.is_some(), "aggregate destination has a fingerprint");
    let mut rotated = fleet.clone();
    rotated.addrs.reverse();
    rotated.addrs.truncate(1);
    assert_ne!(rotated.addrs, fleet.addrs);
    assert_eq!(
        crate::upstream::mqtt_link::destination_fingerprint(&rotated),
        before
    );
    // A setting the links depend on still changes it.
    let mut other = fleet.clone();
    other.server_name = rustls::pki_types::ServerName::try_from("other.test")
        .expect("name")
        .to_owned();
    assert_ne!(
        crate::upstream::mqtt_link::destination_fingerprint(&other),
        before
    );
}

#[test]
fn connection_cap_defaults_derive_from_the_open_file_limit() {
    let mut fx = Fixture::new();
    // (soft limit, reserved, max_connections): a 1/16 reserve within 32..=1024, then half of
    // the rest (a device connection may hold an upstream connection too).
    for (limit, reserved, max) in [
        (Some(20_000), 1024, 9488),
        (Some(256), 32, 112),
        (Some(1024), 64, 480),
        (Some(1_048_576), 1024, 523_776),
        (None, 32, 65_536),
    ] {
        fx.env.open_files = limit;
        let plan = fx.compile(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (plan.gateway.reserved_fds, plan.gateway.max_connections),
            (reserved, max),
            "limit {limit:?}"
        );
        assert_eq!(plan.listeners[0].max_connections, None);
    }
    // A limit too small for the default reserve is reported, not served with no room.
    fx.env.open_files = Some(32);
    let error = fx.errors(MINIMAL);
    assert_single(
        &error,
        "gateway.reserved_fds",
        "leaves no descriptor for devices",
    );
}

// ---------------------------------------------------------------------------------------------
// SIMs: `[[sim]]`, `gateway.sims_file`, `listener.unknown`.
mod cloud;
mod sims;

#[test]
fn groups_attach_the_imsi_unless_told_otherwise() {
    use crate::policy::attach::{Attach, AttachField};
    let fx = Fixture::new();
    let plan = fx.compile(FULL).unwrap_or_else(|e| panic!("{e}"));
    let farm = &plan.groups[0];
    assert_eq!(
        farm.attach,
        Attach::NONE
            .with(AttachField::Imsi)
            .with(AttachField::Name)
            .with(AttachField::Tags)
    );
    let plan = fx.compile(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.groups[0].attach, Attach::default());
    let none = fx
        .compile(&edit(
            MINIMAL,
            "name = \"default\"\n",
            "name = \"default\"\nattach = []\n",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(none.groups[0].attach.is_empty());
}

#[test]
fn the_shipped_sim_example_compiles_with_its_csv() {
    use crate::policy::UnknownSource;
    let fx = Fixture::new();
    let example = include_str!("../../examples/sims.toml");
    std::fs::write(
        fx.path().join("sims.csv"),
        include_str!("../../examples/sims.csv"),
    )
    .expect("write sims.csv");
    std::fs::write(
        fx.path().join("radius.secret"),
        "radius-secret-0123456789\n",
    )
    .expect("write radius.secret");
    std::fs::write(
        fx.path().join("meters.secret"),
        "meters-signing-secret-0123456789abcdef\n",
    )
    .expect("write meters.secret");
    let mut hosts = fx.env.hosts.clone();
    for host in ["meters.example.com", "quarantine.example.com"] {
        hosts.insert(host.to_owned(), vec!["192.0.2.10:0".parse().unwrap()]);
    }
    let env = FakeEnv {
        hosts,
        roots: fx.env.roots.clone(),
        cpus: Some(2),
        open_files: Some(20_000),
    };
    let plan = compile_with(example, fx.path(), &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.sims.len(), 4);
    assert_eq!(plan.listeners[0].unknown, UnknownSource::Reject);
    let (sim, group) = plan
        .identify("10.20.0.17".parse().unwrap())
        .expect("a SIM of the CSV");
    assert_eq!(sim.name(), Some("meter-17"));
    assert_eq!(plan.groups[usize::from(group.0)].name, "meters");
    let headers = plan.groups[usize::from(group.0)].attach.headers(&sim);
    assert!(headers.contains(&("X-Simgate-Msisdn".to_owned(), "+819012345678".to_owned())));
    assert!(
        plan.identify("10.20.9.9".parse().unwrap()).is_some(),
        "the [[sim]] entry"
    );
    assert!(plan.radius.is_some());
    assert!(plan.groups[usize::from(group.0)].signer.is_some());
}

/// A session-mode destination whose topic names SIM fields, reached by group "meters" only
/// (the listener refuses unknown sources), with two SIMs: one complete, one without an IMEI
/// and without the `site` tag.
const SIM_TEMPLATES: &str = r#"
[[listener]]
name = "mqtt"
protocol = "mqtt"
bind = "0.0.0.0:1883"
unknown = "reject"

[[destination]]
name = "broker"
adapter = "mqtts"
endpoint = "sink.test:8883"
[destination.mqtt]
mode = "session"
client_id = "{imsi}"
topic = "sites/{tag.site}/{imei}/{topic}"

[[group]]
name = "default"

[[group]]
name = "meters"
routes = [ { listener = "mqtt", destination = "broker" } ]

[[sim]]
imsi = "001010000000001"
imei = "35345678901234"
group = "meters"
tags = { site = "kyoto" }

[[sim]]
imsi = "001010000000002"
group = "meters"
"#;

#[test]
fn sim_placeholders_must_be_fillable_for_every_sim_and_device_they_can_reach() {
    let fx = Fixture::new();
    let error = fx.errors(SIM_TEMPLATES);
    let messages: Vec<String> = error.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        messages,
        [
            "destination[0].mqtt.topic: uses {tag.site}, which 1 SIM(s) of group \"meters\" lack \
             (the first: IMSI 001010000000002)"
        ],
        "{error}"
    );
    // With the field given, the config compiles and renders per SIM.
    let fixed = edit(
        SIM_TEMPLATES,
        "imsi = \"001010000000002\"\ngroup = \"meters\"",
        "imsi = \"001010000000002\"\nimei = \"35345678901235\"\ngroup = \"meters\"\ntags = { site = \"osaka\" }",
    );
    let plan = fx.compile(&fixed).unwrap_or_else(|e| panic!("{e}"));
    let (sim, _) = plan.identify_imsi_for_tests("001010000000002");
    let mqtt = plan.destinations[0].mqtt().expect("mqtt");
    let vars = crate::policy::TemplateVars {
        sim: Some(sim),
        ..vars_for_test()
    };
    assert_eq!(mqtt.topic.render(&vars), b"sites/osaka/35345678901235/temp");
    assert_eq!(mqtt.client_id.render(&vars), b"001010000000002");
    // A route that devices without a SIM can reach may not use SIM placeholders.
    let open = edit(&fixed, "unknown = \"reject\"\n", "");
    let open = edit(
        &open,
        "name = \"default\"\n",
        "name = \"default\"\nroutes = [ { listener = \"mqtt\", destination = \"broker\" } ]\n",
    );
    let error = fx.errors(&open);
    assert!(
        error
            .errors
            .iter()
            .any(|e| e.path == "destination[0].mqtt.client_id"
                && e.message
                    .contains("devices without a SIM entry reach this destination")),
        "{error}"
    );
}

#[test]
fn signing_secrets_come_from_a_file_the_environment_or_inline_and_are_long_enough() {
    let fx = Fixture::new();
    std::fs::write(
        fx.path().join("group.secret"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .expect("write secret");
    std::fs::write(
        fx.path().join("short.secret"),
        "TOPSECRET-KEY-MATERIAL-7f3a\n",
    )
    .expect("write secret");
    let with = |secret: &str| {
        edit(
            MINIMAL,
            "name = \"default\"\n",
            &format!("name = \"default\"\nsigning_secret = {secret}\n"),
        )
    };
    let plan = fx
        .compile(&with("{ file = \"group.secret\" }"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(plan.groups[0].signer.is_some());
    assert!(fx.compile(MINIMAL).expect("valid").groups[0]
        .signer
        .is_none());
    let inline = fx.compile(&with("\"0123456789abcdef0123456789abcdef\""));
    assert!(inline.is_ok(), "{:?}", inline.err());
    for (secret, needle) in [
        (
            "{ file = \"short.secret\" }",
            "too short: 27 byte(s); at least 32 are needed",
        ),
        ("{ file = \"missing.secret\" }", "file not found"),
        (
            "{ env = \"SIMGATE_TEST_UNSET_SECRET_VAR\" }",
            "environment variable \"SIMGATE_TEST_UNSET_SECRET_VAR\" is not set",
        ),
        ("{ file = \"group.secret\", env = \"X\" }", "exactly one"),
    ] {
        let error = fx.errors(&with(secret));
        assert_single(&error, "group[0].signing_secret", needle);
        assert!(!error.to_string().contains("TOPSECRET"), "{error}");
    }
}

#[test]
fn radius_settings_are_checked_at_their_paths() {
    use crate::policy::UnknownImsi;
    let fx = Fixture::new();
    let with = |table: &str| format!("{MINIMAL}\n[radius]\n{table}\n");
    let plan = fx
        .compile(&with(
            "bind = \"0.0.0.0:1813\"\nsecret = \"0123456789abcdef\"\nunknown_imsi = \"default\"",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    let radius = plan.radius.expect("radius");
    assert_eq!(radius.bind, "0.0.0.0:1813".parse().unwrap());
    assert_eq!(radius.unknown_imsi, UnknownImsi::Default);
    assert!(fx.compile(MINIMAL).expect("valid").radius.is_none());
    for (table, path, needle) in [
        (
            "bind = \"1813\"\nsecret = \"0123456789abcdef\"",
            "radius.bind",
            "invalid socket address",
        ),
        (
            "bind = \"0.0.0.0:1813\"\nsecret = \"short\"",
            "radius.secret",
            "too short: 5 byte(s); at least 16",
        ),
        (
            "bind = \"0.0.0.0:1813\"\nsecret = \"0123456789abcdef\"\nunknown_imsi = \"drop\"",
            "radius.unknown_imsi",
            "expected \"ignore\" or \"default\"",
        ),
    ] {
        assert_single(&fx.errors(&with(table)), path, needle);
    }
}

#[test]
fn a_base_path_naming_the_sim_is_checked_like_mqtt_templates() {
    let fx = Fixture::new();
    let text = edit(
        MINIMAL,
        "endpoint = \"sink.test:443\"",
        "endpoint = \"sink.test:443\"\nbase_path = \"/devices/{imsi}\"",
    );
    // The default group reaches it on a listener that serves unknown sources.
    let error = fx.errors(&text);
    assert_single(
        &error,
        "destination[0].base_path",
        "devices without a SIM entry reach this destination",
    );
    let text = edit(
        &text,
        "bind = \"0.0.0.0:8080\"",
        "bind = \"0.0.0.0:8080\"\nunknown = \"reject\"",
    );
    let plan = fx.compile(&text).unwrap_or_else(|e| panic!("{e}"));
    let base = &plan.destinations[0].https().expect("https").base_path;
    assert!(base.uses_sim() && base.fixed_text().is_none());
    let error = fx.errors(&edit(
        MINIMAL,
        "endpoint = \"sink.test:443\"",
        "endpoint = \"sink.test:443\"\nbase_path = \"/d/{client_id}\"",
    ));
    assert_single(&error, "destination[0].base_path", "not allowed here");
}

#[test]
fn https_destinations_may_offer_h2() {
    let fx = Fixture::new();
    for (alpn, expected) in [
        (
            r#"["h2", "http/1.1"]"#,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        ),
        (r#"["h2"]"#, vec![b"h2".to_vec()]),
    ] {
        let text = edit(
            MINIMAL,
            "endpoint = \"sink.test:443\"",
            &format!("endpoint = \"sink.test:443\"\nalpn = {alpn}"),
        );
        let plan = fx.compile(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.destinations[0].tls.alpn_protocols, expected);
    }
}

#[test]
fn usage_table_defaults_paths_and_ranges() {
    let fx = Fixture::new();
    let plan = fx.compile(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.usage, crate::policy::UsageSettings::default());
    assert_eq!(plan.usage.interval, std::time::Duration::from_secs(60));
    let with = |table: &str| format!("{MINIMAL}\n[usage]\n{table}\n");
    let plan = fx
        .compile(&with(
            "file = \"usage.jsonl\"\ninterval = \"10s\"\nmax_file_bytes = 4096\nmax_file_age = \"1h\"\nkeep_intervals = 6",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.usage.file, Some(fx.dir.path().join("usage.jsonl")));
    assert_eq!(plan.usage.interval, std::time::Duration::from_secs(10));
    assert_eq!(plan.usage.max_file_bytes, 4096);
    assert_eq!(plan.usage.keep_intervals, 6);
    let cases = [
        (
            "interval = \"500ms\"",
            "usage.interval",
            "between 1s and 1h",
        ),
        ("interval = \"2h\"", "usage.interval", "between 1s and 1h"),
        ("max_file_bytes = 100", "usage.max_file_bytes", "4096"),
        ("keep_intervals = 0", "usage.keep_intervals", "1..="),
        (
            "interval = \"10m\"\nmax_file_age = \"1m\"",
            "usage.max_file_age",
            "at least usage.interval",
        ),
    ];
    for (table, path, needle) in cases {
        assert_single(&fx.errors(&with(table)), path, needle);
    }
    assert_eq!(
        paths(&fx.errors(&with("fiel = \"x\""))).len(),
        1,
        "unknown key"
    );
}

#[test]
fn metrics_table_defaults_and_ranges() {
    use std::time::Duration;
    let fx = Fixture::new();
    let plan = fx.compile(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.metrics, crate::policy::MetricsSettings::default());
    assert_eq!(plan.metrics.interval_log_period, Duration::from_secs(10));
    assert_eq!(plan.metrics.interval_log_keep, 360);
    let with = |table: &str| format!("{MINIMAL}\n[metrics]\n{table}\n");
    let plan = fx
        .compile(&with("interval_log_period = \"1s\"\ninterval_log_keep = 5"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.metrics.interval_log_period, Duration::from_secs(1));
    assert_eq!(plan.metrics.interval_log_keep, 5);
    let cases = [
        (
            "interval_log_period = \"500ms\"",
            "metrics.interval_log_period",
            "between 1s and 1h",
        ),
        (
            "interval_log_period = \"2h\"",
            "metrics.interval_log_period",
            "between 1s and 1h",
        ),
        ("interval_log_keep = 0", "metrics.interval_log_keep", "1..="),
    ];
    for (table, path, needle) in cases {
        assert_single(&fx.errors(&with(table)), path, needle);
    }
    assert_eq!(
        paths(&fx.errors(&with("period = \"1s\""))).len(),
        1,
        "unknown key"
    );
}

#[test]
fn measurement_switches_default_on_and_errors_name_their_path() {
    let fx = Fixture::new();
    let plan = fx.compile(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
    assert!(plan.usage.enabled);
    assert!(plan.metrics.histograms);
    let off = format!("{MINIMAL}\n[usage]\nenabled = false\n\n[metrics]\nhistograms = false\n");
    let plan = fx.compile(&off).unwrap_or_else(|e| panic!("{e}"));
    assert!(!plan.usage.enabled);
    assert!(!plan.metrics.histograms);
    // The rest of [usage] keeps its defaults when only the switch is given.
    assert_eq!(plan.usage.interval, std::time::Duration::from_secs(60));
    let on = format!("{MINIMAL}\n[usage]\nenabled = true\n\n[metrics]\nhistograms = true\n");
    let plan = fx.compile(&on).unwrap_or_else(|e| panic!("{e}"));
    assert!(plan.usage.enabled && plan.metrics.histograms);
    let error = fx.errors(&format!("{MINIMAL}\n[metrics]\nhistograms = \"no\"\n"));
    assert_single(&error, "metrics.histograms", "invalid type");
    let error = fx.errors(&format!("{MINIMAL}\n[usage]\nenabled = 0\n"));
    assert_single(&error, "usage.enabled", "invalid type");
    let error = fx.errors(&format!("{MINIMAL}\n[metrics]\nhistogram = false\n"));
    assert_eq!(paths(&error).len(), 1, "unknown key: {error}");
}

#[test]
fn probe_table_defaults_off_and_ranges() {
    use std::time::Duration;
    let fx = Fixture::new();
    let plan = fx.compile(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.probe.interval, Some(Duration::from_secs(30)));
    assert_eq!(plan.probe.timeout, Duration::from_secs(5));
    assert!(plan.probe.client_id.starts_with("simgate-probe-"));
    assert!(!plan.probe.client_id.contains('{'));
    let with = |table: &str| format!("{MINIMAL}\n[probe]\n{table}\n");
    let plan = fx
        .compile(&with(
            "interval = \"200ms\"\ntimeout = \"1s\"\nclient_id = \"probe-{hostname}-a\"",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.probe.interval, Some(Duration::from_millis(200)));
    assert_eq!(plan.probe.timeout, Duration::from_secs(1));
    assert!(plan.probe.client_id.starts_with("probe-") && plan.probe.client_id.ends_with("-a"));
    for off in ["off", "0"] {
        let plan = fx
            .compile(&with(&format!("interval = \"{off}\"")))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.probe.interval, None);
    }
    let cases = [
        ("interval = \"50ms\"", "probe.interval", "between"),
        ("interval = \"2h\"", "probe.interval", "between"),
        ("interval = \"soon\"", "probe.interval", "invalid duration"),
        ("timeout = \"5m\"", "probe.timeout", "between"),
        ("client_id = \"p-{imsi}\"", "probe.client_id", "{hostname}"),
        ("client_id = \"a b\"", "probe.client_id", "letters, digits"),
    ];
    for (table, path, needle) in cases {
        assert_single(&fx.errors(&with(table)), path, needle);
    }
    assert_eq!(
        paths(&fx.errors(&with("intervall = \"1s\""))).len(),
        1,
        "unknown key"
    );
}

#[test]
fn probe_e2e_table_defaults_bounds_and_listener() {
    use std::time::Duration;
    let fx = Fixture::new();
    let plan = fx
        .compile(MQTT_MINIMAL_SESSION)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.probe.e2e, None, "off without the table");
    let with = |table: &str| format!("{MQTT_MINIMAL_SESSION}\n[probe.e2e]\n{table}\n");
    let plan = fx
        .compile(&with("listener = \"mqtt\""))
        .unwrap_or_else(|e| panic!("{e}"));
    let e2e = plan.probe.e2e.expect("configured");
    assert_eq!(e2e.listener, "mqtt");
    assert_eq!(
        e2e.target,
        crate::policy::E2eTarget::MqttTopic("simgate/probe".into())
    );
    assert_eq!(e2e.interval, Duration::from_secs(5));
    assert_eq!(e2e.timeout, Duration::from_secs(5));
    assert_eq!(e2e.window, 100);
    assert_eq!(e2e.loss_alarm, 0.05);
    assert_eq!(e2e.p99_alarm, None);
    assert!(!e2e.alarm_affects_readiness);
    let plan = fx
        .compile(&with(
            "listener = \"mqtt\"\ntopic = \"p/a\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\n\
             window = 10\nloss_alarm = 0.2\np99_alarm = \"250ms\"\nalarm_affects_readiness = true",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    let e2e = plan.probe.e2e.expect("configured");
    assert_eq!(e2e.p99_alarm, Some(Duration::from_millis(250)));
    assert_eq!(e2e.window, 10);
    assert!(e2e.alarm_affects_readiness);
    let cases = [
        (
            "listener = \"nope\"",
            "probe.e2e.listener",
            "no listener named",
        ),
        (
            "listener = \"mqtt\"\ninterval = \"10ms\"",
            "probe.e2e.interval",
            "between",
        ),
        (
            "listener = \"mqtt\"\ntimeout = \"2m\"",
            "probe.e2e.timeout",
            "between",
        ),
        (
            "listener = \"mqtt\"\nwindow = 0",
            "probe.e2e.window",
            "between",
        ),
        (
            "listener = \"mqtt\"\nloss_alarm = 1.5",
            "probe.e2e.loss_alarm",
            "ratio",
        ),
        (
            "listener = \"mqtt\"\ntopic = \"a/#\"",
            "probe.e2e.topic",
            "wildcards",
        ),
    ];
    for (table, path, needle) in cases {
        assert_single(&fx.errors(&with(table)), path, needle);
    }
    assert_single(
        &fx.errors(&with("listener = \"mqtt\"\npath = \"/p\"")),
        "probe.e2e.path",
        "is MQTT (use topic)",
    );
}

#[test]
fn probe_e2e_on_an_http_listener_takes_a_path_not_a_topic() {
    use crate::policy::E2eTarget;
    let fx = Fixture::new();
    let with = |table: &str| format!("{MINIMAL}\n[probe.e2e]\nlistener = \"http\"\n{table}\n");
    let plan = fx.compile(&with("")).unwrap_or_else(|e| panic!("{e}"));
    let e2e = plan.probe.e2e.expect("configured");
    assert_eq!(e2e.target, E2eTarget::HttpPath("/simgate/probe".into()));
    let plan = fx
        .compile(&with("path = \"/echo/node-a\""))
        .unwrap_or_else(|e| panic!("{e}"));
    let e2e = plan.probe.e2e.expect("configured");
    assert_eq!(e2e.target, E2eTarget::HttpPath("/echo/node-a".into()));
    assert_single(
        &fx.errors(&with("topic = \"simgate/probe\"")),
        "probe.e2e.topic",
        "is HTTP (use path)",
    );
    for bad in ["echo", "/a/../b", "/a//b", "/a%2fb", "/a b", "/a?x=1", ""] {
        assert_single(
            &fx.errors(&with(&format!("path = {bad:?}"))),
            "probe.e2e.path",
            "must start with '/'",
        );
    }
}
