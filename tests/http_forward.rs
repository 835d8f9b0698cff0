//! Integration: devices (raw sockets and curl) → `simgate run` → a real rustls+hyper HTTPS
//! upstream with certificates minted at test time. Checks that what the device sent arrives
//! intact, that responses are relayed, and that every bad-input case gets its answer while other
//! connections keep working.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

fn header<'a>(req: &'a simgate::testkit::RecordedRequest, name: &str) -> Option<&'a [u8]> {
    req.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

#[test]
fn post_arrives_intact_with_host_rewritten_and_hop_by_hop_dropped() {
    let world = World::new();
    let gw = world.simgate(&world.config("", "base_path = \"/ingest\""));
    let body = br#"{"temp":21.5}"#;
    let resp = raw_exchange(
        gw.http,
        &post(
            "/telemetry?x=1",
            body,
            "X-Device: s17\r\nConnection: keep-alive, X-Private\r\nX-Private: secret-hop\r\nKeep-Alive: timeout=5\r\nX-Forwarded-For: 10.9.9.9\r\n",
        ),
    );
    assert_eq!(resp.status, 200, "body: {}", resp.body_text());
    assert_eq!(resp.header("x-sink-body-bytes"), Some("13"));
    assert_eq!(world.sink.wait_for_requests(1, Duration::from_secs(10)), 1);
    let got = world.sink.requests().remove(0);
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/ingest/telemetry?x=1");
    assert_eq!(&got.body[..], body);
    let host = header(&got, "host").expect("host header");
    assert_eq!(host, world.sink.addr().to_string().as_bytes());
    assert_eq!(header(&got, "x-device"), Some(&b"s17"[..]));
    assert_eq!(
        header(&got, "x-forwarded-for"),
        Some(&b"10.9.9.9, 127.0.0.1"[..])
    );
    assert_eq!(
        header(&got, "x-private"),
        None,
        "header named in Connection must be dropped"
    );
    assert_eq!(header(&got, "keep-alive"), None);
}

#[test]
fn curl_device_gets_upstream_status_headers_and_body() {
    let world = World::with_sink(|c| {
        c.status = 201;
        c.response_body = bytes::Bytes::from_static(b"created-by-sink");
    });
    let gw = world.simgate(&world.config("", ""));
    let url = format!("http://{}/v1/data", gw.http);
    let (ok, out) = curl(&[
        "-sS",
        "-i",
        "--data-binary",
        "hello from curl",
        "-H",
        "Content-Type: text/plain",
        &url,
    ]);
    assert!(ok, "curl failed: {out}");
    assert!(out.starts_with("HTTP/1.1 201"), "{out}");
    assert!(out.to_ascii_lowercase().contains("x-sink-seq:"), "{out}");
    assert!(out.ends_with("created-by-sink"), "{out}");
    let got = world.sink.requests().remove(0);
    assert_eq!(&got.body[..], b"hello from curl");
    assert_eq!(header(&got, "content-type"), Some(&b"text/plain"[..]));
}

#[test]
fn chunked_body_is_forwarded_and_decoded_by_the_upstream() {
    let world = World::new();
    let gw = world.simgate(&world.config("", ""));
    let req = b"POST /c HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n";
    let resp = raw_exchange(gw.http, req);
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    assert_eq!(world.sink.wait_for_requests(1, Duration::from_secs(10)), 1);
    assert_eq!(&world.sink.requests()[0].body[..], b"hello world");
}

#[test]
fn large_body_with_expect_continue_arrives_intact() {
    let world = World::new();
    let gw = world.simgate(&world.config("", ""));
    let body: Vec<u8> = (0..900 * 1024u32).map(|i| (i * 31 % 251) as u8).collect();
    let path = world.dir.path().join("big.bin");
    std::fs::write(&path, &body).expect("write body");
    let url = format!("http://{}/big", gw.http);
    let data = format!("@{}", path.display());
    // curl sends `Expect: 100-continue` for large bodies; simgate answers it itself.
    let (ok, out) = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &data,
        &url,
    ]);
    assert!(ok, "curl failed: {out}");
    assert_eq!(out, "200");
    let got = world.sink.requests().remove(0);
    assert_eq!(got.body.len(), body.len());
    assert!(got.body[..] == body[..], "body changed in transit");
}

#[test]
fn many_keepalive_requests_share_one_device_connection_and_few_upstream_connections() {
    let world = World::new();
    let gw = world.simgate(&world.config("", "[destination.pool]\nwarm = 1"));
    let mut device = Device::connect(gw.http);
    for i in 0..200 {
        let body = format!("msg-{i}");
        let resp = device.request(&post("/k", body.as_bytes(), ""));
        assert_eq!(resp.status, 200, "request {i}: {}", resp.body_text());
    }
    assert_eq!(
        world.sink.wait_for_requests(200, Duration::from_secs(10)),
        200
    );
    let reqs = world.sink.requests();
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(
            r.body,
            format!("msg-{i}").as_bytes(),
            "order or content changed"
        );
    }
    let mut conns: Vec<u64> = reqs.iter().map(|r| r.connection_id).collect();
    conns.sort_unstable();
    conns.dedup();
    // One device connection lives on one shard: its requests reuse that shard's pool.
    assert!(
        conns.len() <= 2,
        "expected pooled upstream reuse, saw {} upstream connections",
        conns.len()
    );
}

#[test]
fn pooled_connections_are_reused_until_max_age_then_replaced() {
    let world = World::new();
    let gw = world.simgate(&world.config("", "[destination.pool]\nwarm = 0\nmax_age = \"500ms\""));
    let mut device = Device::connect(gw.http);
    let mut send = |i: usize| {
        let resp = device.request(&post("/age", format!("{i}").as_bytes(), ""));
        assert_eq!(resp.status, 200, "request {i}: {}", resp.body_text());
    };
    send(0);
    send(1);
    // Time passing is what is under test: the connection outlives max_age while idle.
    std::thread::sleep(Duration::from_millis(700));
    send(2);
    assert_eq!(world.sink.wait_for_requests(3, Duration::from_secs(10)), 3);
    let conns: Vec<u64> = world
        .sink
        .requests()
        .iter()
        .map(|r| r.connection_id)
        .collect();
    assert_eq!(conns[0], conns[1], "reused while young: {conns:?}");
    assert_ne!(conns[1], conns[2], "replaced once past max_age: {conns:?}");
}

/// Requests at an upstream that accepts TCP but never answers the TLS handshake: with
/// `max_connecting = 1` the three concurrent requests open one connection between them (the
/// others wait, then meet the backoff its failure started); with no limit each opens its own,
/// except where warm-up connects already under way cover them. Every device gets 502.
#[test]
fn max_connecting_bounds_the_connects_a_burst_of_requests_opens() {
    fn burst(max_connecting: Option<usize>, warm: usize) -> usize {
        let world = World::new();
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let silent_addr = silent.local_addr().expect("addr");
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for stream in silent.incoming().map_while(Result::ok) {
                held.lock().unwrap().push(stream); // held open, never answered
            }
        });
        let limit = max_connecting.map_or(String::new(), |n| format!("max_connecting = {n}\n"));
        let toml = world
            .config(
                "",
                &format!(
                    "[destination.pool]\nwarm = {warm}\n{limit}connect_timeout = \"3s\"\n\
                     backoff_initial = \"10s\"\nbackoff_max = \"10s\""
                ),
            )
            .replace(&world.sink.addr().to_string(), &silent_addr.to_string())
            .replace("shards = 2", "shards = 1");
        let gw = world.simgate(&toml);
        let addr = gw.http;
        // The warm-up connects must be under way before the burst: wait for their accepts.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while accepted.lock().unwrap().len() < warm {
            assert!(
                std::time::Instant::now() < deadline,
                "warm-up connects never arrived"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let devices: Vec<_> = (0..3)
            .map(|i| {
                std::thread::spawn(move || {
                    raw_exchange(addr, &post("/burst", format!("{i}").as_bytes(), "")).status
                })
            })
            .collect();
        for d in devices {
            assert_eq!(d.join().expect("device"), 502, "{}", gw.stderr());
        }
        let n = accepted.lock().unwrap().len();
        n
    }
    assert_eq!(
        burst(Some(1), 0),
        1,
        "max_connecting = 1: one connect for the burst"
    );
    assert_eq!(
        burst(None, 0),
        3,
        "no limit: one connect per waiting request"
    );
    // Two warm-up connects are under way (hanging like the rest) when the burst arrives: they
    // cover two of the three waiting requests, so the burst adds one connect, not three.
    assert_eq!(
        burst(None, 2),
        3,
        "warm = 2: two warm-up connects plus one for the request they do not cover"
    );
}

/// A request that finds no idle connection connects, and keeps watching the pool meanwhile: here
/// its handshake is held up (a relay delays every upstream connection but the first by 3 s)
/// while the only pooled connection, made by a first request, is busy with a slow answer
/// (300 ms). When that connection comes back, the waiting request takes it, counted in
/// `simgate_upstream_connects_overtaken_total` (without the race it would wait out its own
/// 3 s handshake and the counter would stay 0); its connect goes on and joins the pool.
#[test]
fn a_waiting_request_takes_a_returned_connection_before_its_own_handshake_ends() {
    let world = World::with_sink(|c| c.response_delay = Some(Duration::from_millis(300)));
    let relay = std::net::TcpListener::bind("127.0.0.1:0").expect("bind relay");
    let relay_addr = relay.local_addr().expect("addr");
    let sink_addr = world.sink.addr();
    let relayed = Arc::new(Mutex::new(0usize));
    let count = Arc::clone(&relayed);
    std::thread::spawn(move || {
        for (n, inbound) in relay.incoming().map_while(Result::ok).enumerate() {
            *count.lock().unwrap() += 1;
            std::thread::spawn(move || {
                if n > 0 {
                    std::thread::sleep(Duration::from_secs(3)); // the held-up handshake
                }
                let Ok(outbound) = std::net::TcpStream::connect(sink_addr) else {
                    return;
                };
                let (mut a_in, mut a_out) = (inbound.try_clone().unwrap(), inbound);
                let (mut b_in, mut b_out) = (outbound.try_clone().unwrap(), outbound);
                std::thread::spawn(move || std::io::copy(&mut a_in, &mut b_out));
                let _ = std::io::copy(&mut b_in, &mut a_out);
            });
        }
    });
    // No warm-up: a warming connect would cover the waiting request, which would then wait
    // without connecting. A first request makes the pool's one connection.
    let toml = world
        .config(
            "",
            "[destination.pool]\nwarm = 0\nconnect_timeout = \"10s\"",
        )
        .replace(&sink_addr.to_string(), &relay_addr.to_string())
        .replace("shards = 2", "shards = 1");
    let gw = world.simgate(&toml);
    assert_eq!(raw_exchange(gw.http, &post("/prime", b"p", "")).status, 200);
    let addr = gw.http;
    let first = std::thread::spawn(move || raw_exchange(addr, &post("/a", b"a", "")).status);
    // The first request holds the pooled connection for 300 ms; wait until it has it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, metrics) = gw.admin_get("/metrics");
        if metrics.contains("simgate_upstream_idle_connections 0\n") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "first request never took the connection"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let second = raw_exchange(addr, &post("/b", b"b", "")).status;
    assert_eq!(first.join().expect("first device"), 200);
    assert_eq!(second, 200, "{}", gw.stderr());
    let (_, metrics) = gw.admin_get("/metrics");
    assert!(
        metrics.contains("simgate_upstream_connects_overtaken_total 1\n"),
        "{metrics}"
    );
    assert_eq!(
        *relayed.lock().unwrap(),
        2,
        "the warm connection and the abandoned one"
    );
}

#[test]
fn concurrent_devices_across_shards() {
    let world = World::new();
    let gw = world.simgate(&world.config("", ""));
    let addr = gw.http;
    let threads: Vec<_> = (0..32)
        .map(|t| {
            std::thread::spawn(move || {
                let mut d = Device::connect(addr);
                for i in 0..25 {
                    let resp = d.request(&post("/m", format!("{t}-{i}").as_bytes(), ""));
                    assert_eq!(resp.status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("device thread");
    }
    assert_eq!(
        world.sink.wait_for_requests(800, Duration::from_secs(20)),
        800
    );
    let (status, metrics) = gw.admin_get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("simgate_http_responses_total{class=\"2xx\"} 800"),
        "{metrics}"
    );
    assert!(metrics.contains("simgate_shards 2"), "{metrics}");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let world = World::new();
    let gw = world.simgate(&world.config("", ""));
    let mut d = Device::connect(gw.http);
    let mut both = post("/p", b"first", "");
    both.extend_from_slice(&post("/p", b"second", ""));
    d.send(&both);
    assert_eq!(d.read_response().status, 200);
    assert_eq!(d.read_response().status, 200);
    let reqs = world.sink.requests();
    assert_eq!(&reqs[0].body[..], b"first");
    assert_eq!(&reqs[1].body[..], b"second");
}

#[test]
fn upstream_with_untrusted_certificate_is_refused() {
    let world = World::new();
    // Trust a different CA than the one that signed the sink's certificate.
    let other = simgate::testkit::TestPki::new(&world.dir.path().join("other")).expect("pki");
    // `error_detail = "full"`: the device sees why (the default is a generic text).
    let toml = world.config("error_detail = \"full\"", "").replace(
        &world.pki.ca_pem.display().to_string(),
        &other.ca_pem.display().to_string(),
    );
    let gw = world.simgate(&toml);
    let resp = raw_exchange(gw.http, &post("/x", b"data", ""));
    assert_eq!(resp.status, 502, "{}", resp.body_text());
    assert!(
        resp.body_text().to_lowercase().contains("tls"),
        "{}",
        resp.body_text()
    );
    assert_eq!(
        world.sink.requests().len(),
        0,
        "nothing may reach an untrusted upstream"
    );
}

#[test]
fn mtls_client_certificate_from_named_credential() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = simgate::testkit::TestPki::new(dir.path()).expect("pki");
    let server = pki
        .server_cert("sink", &["localhost", "127.0.0.1"])
        .expect("cert");
    let client = pki.client_cert("sim-gateway-1").expect("client cert");
    let mut cfg = sink_config(server);
    cfg.client_ca = Some(pki.ca_pem.clone());
    let sink = simgate::testkit::HttpsSink::start(cfg).expect("sink");
    let world_toml = |with_cred: bool| {
        format!(
            r#"
[gateway]
shards = 1
admin = "off"
[[listener]]
name = "http"
protocol = "http"
bind = "127.0.0.1:0"
[[credential]]
name = "gw-cert"
kind = "x509"
cert = "{cert}"
key = "{key}"
[[destination]]
name = "sink"
adapter = "https"
endpoint = "{addr}"
server_name = "localhost"
ca = "{ca}"
{cred}
[[group]]
name = "default"
routes = [ {{ listener = "http", path = "/", destination = "sink" }} ]
"#,
            cert = client.cert.display(),
            key = client.key.display(),
            addr = sink.addr(),
            ca = pki.ca_pem.display(),
            cred = if with_cred {
                "credential = \"gw-cert\""
            } else {
                ""
            },
        )
    };
    {
        let gw = Simgate::start(dir.path(), &world_toml(true));
        let resp = raw_exchange(gw.http, &post("/m", b"mtls", ""));
        assert_eq!(resp.status, 200, "{}", resp.body_text());
        let got = sink.requests().remove(0);
        assert_eq!(got.client_cert_cn.as_deref(), Some("sim-gateway-1"));
    }
    let gw = Simgate::start(dir.path(), &world_toml(false));
    let resp = raw_exchange(gw.http, &post("/m", b"no-cert", ""));
    assert_eq!(resp.status, 502, "{}", resp.body_text());
    assert_eq!(
        sink.requests().len(),
        1,
        "the request without a client cert must not arrive"
    );
}

/// A `bearer` credential on an `https` destination: simgate sends its token as the request's
/// `Authorization`, replacing whatever the device sent; a `basic` credential likewise.
#[test]
fn https_destination_with_a_bearer_or_basic_credential_authorizes_every_request() {
    let world = World::new();
    std::fs::write(
        world.dir.path().join("token.txt"),
        "SECRET-bearer-token-0042\n",
    )
    .expect("write");
    let with = |credential: &str| world.config(credential, "credential = \"cred\"");
    {
        let gw = world.simgate(&with(
            "[[credential]]\nname = \"cred\"\nkind = \"bearer\"\ntoken = { file = \"token.txt\" }\n",
        ));
        let resp = raw_exchange(
            gw.http,
            &post("/m", b"1", "Authorization: Basic ZGV2aWNlOnB3\r\n"),
        );
        assert_eq!(resp.status, 200, "{}", resp.body_text());
        assert_eq!(world.sink.wait_for_requests(1, Duration::from_secs(10)), 1);
        let got = world.sink.requests().remove(0);
        let values: Vec<&[u8]> = got
            .headers
            .iter()
            .filter(|(n, _)| n == "authorization")
            .map(|(_, v)| v.as_slice())
            .collect();
        assert_eq!(
            values,
            vec![&b"Bearer SECRET-bearer-token-0042"[..]],
            "exactly simgate's, not the device's"
        );
    }
    std::fs::write(world.dir.path().join("pw.txt"), "open sesame").expect("write");
    let gw = world.simgate(&with(
        "[[credential]]\nname = \"cred\"\nkind = \"basic\"\nusername = \"Aladdin\"\npassword = { file = \"pw.txt\" }\n",
    ));
    let resp = raw_exchange(gw.http, &post("/m", b"2", ""));
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    assert_eq!(world.sink.wait_for_requests(2, Duration::from_secs(10)), 2);
    let got = world.sink.requests().remove(1);
    // RFC 7617's example credentials.
    assert_eq!(
        header(&got, "authorization"),
        Some(&b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="[..])
    );
}

/// Each bad request gets its status and a closed connection, while a keep-alive device that
/// connected before keeps working.
#[test]
fn bad_input_gets_its_answer_and_other_connections_keep_working() {
    let world = World::new();
    let gw = world.simgate(&world.config("header_timeout = \"500ms\"\nmax_body_bytes = 4096", ""));
    let mut bystander = Device::connect(gw.http);
    assert_eq!(bystander.request(&post("/ok", b"before", "")).status, 200);

    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: d\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("malformed request line", b"GARBAGE\r\n\r\n".to_vec(), 400),
        ("header section over 8 KiB", big_header.into_bytes(), 431),
        (
            "content-length with transfer-encoding",
            b"POST / HTTP/1.1\r\nHost: d\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        (
            "duplicate content-length",
            b"POST / HTTP/1.1\r\nHost: d\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
            400,
        ),
        (
            "malformed content-length",
            b"POST / HTTP/1.1\r\nHost: d\r\nContent-Length: 3x\r\n\r\nabc".to_vec(),
            400,
        ),
        (
            "unknown transfer coding",
            b"POST / HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            400,
        ),
    ];
    for (what, bytes, status) in cases {
        let mut d = Device::connect(gw.http);
        let resp = d.request(&bytes);
        let expected_status = if what == "unknown transfer coding" && resp.status == 501 {
            501 // RFC 9112 §6.1 allows 501 for an unrecognized transfer coding.
        } else {
            status
        };
        assert_eq!(resp.status, expected_status, "{what}: {}", resp.body_text());
        assert!(!resp.body.is_empty(), "{what}: a reason body is expected");
        assert!(d.is_closed(), "{what}: connection must be closed");
    }

    // Body over the limit is refused from its declared length, before it is sent.
    let mut d = Device::connect(gw.http);
    let resp = d.request(b"POST /up HTTP/1.1\r\nHost: d\r\nContent-Length: 100000\r\n\r\n");
    assert_eq!(resp.status, 413, "{}", resp.body_text());

    // A device that sends half a head and goes silent gets 408.
    let mut slow = Device::connect(gw.http);
    let resp = slow.request(b"POST /slow HTTP/1.1\r\nHost: d\r\n");
    assert_eq!(resp.status, 408, "{}", resp.body_text());
    assert!(slow.is_closed());

    // The bystander is unaffected, and nothing bad reached the upstream.
    assert_eq!(bystander.request(&post("/ok", b"after", "")).status, 200);
    let bodies: Vec<Vec<u8>> = world
        .sink
        .requests()
        .iter()
        .map(|r| r.body.to_vec())
        .collect();
    assert_eq!(bodies, vec![b"before".to_vec(), b"after".to_vec()]);
}

#[test]
fn no_route_is_404_and_keeps_the_connection() {
    let world = World::new();
    let toml = world
        .config("", "")
        .replace("path = \"/\"", "path = \"/telemetry\"");
    let gw = world.simgate(&toml);
    let mut d = Device::connect(gw.http);
    let resp = d.request(&post("/other", b"x", ""));
    assert_eq!(resp.status, 404);
    let resp = d.request(&post("/telemetry/1", b"y", ""));
    assert_eq!(resp.status, 200);
    assert_eq!(world.sink.requests().len(), 1);
}

#[test]
fn unreachable_upstream_is_502_and_slow_upstream_is_504() {
    // Unreachable: a port with nothing listening.
    let world = World::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_addr = closed.local_addr().expect("addr");
    drop(closed);
    let toml = world
        .config("", "")
        .replace(&world.sink.addr().to_string(), &closed_addr.to_string());
    let gw = world.simgate(&toml);
    let resp = raw_exchange(gw.http, &post("/x", b"d", ""));
    assert_eq!(resp.status, 502, "{}", resp.body_text());
    drop(gw);

    // Slow: the sink holds its answer longer than the response timeout.
    let slow = World::with_sink(|c| c.response_delay = Some(Duration::from_secs(3)));
    let gw = slow.simgate(&slow.config("", "[destination.pool]\nresponse_timeout = \"300ms\""));
    let mut d = Device::connect(gw.http);
    let resp = d.request(&post("/x", b"d", ""));
    assert_eq!(resp.status, 504, "{}", resp.body_text());
    // The device connection survives a 504 (its request was fully read).
    let resp = d.request(&post("/x", b"again", ""));
    assert_eq!(resp.status, 504);
}

#[test]
fn check_names_the_bad_field_and_exits_nonzero() {
    let world = World::new();
    let toml = world.config("", "").replace(
        &world.pki.ca_pem.display().to_string(),
        "/nonexistent/ca.pem",
    );
    let path = world.dir.path().join("bad.toml");
    std::fs::write(&path, toml).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_simgate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run simgate check");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("destination[0].ca"), "{stderr}");
    assert!(stderr.contains("/nonexistent/ca.pem"), "{stderr}");
}

#[test]
fn bad_reload_is_rejected_and_the_running_config_keeps_serving() {
    let world = World::new();
    let toml = world.config("", "");
    let gw = world.simgate(&toml);
    let mut d = Device::connect(gw.http);
    assert_eq!(d.request(&post("/a", b"1", "")).status, 200);

    std::fs::write(
        &gw.config_path,
        toml.replace("adapter = \"https\"", "adapter = \"nope\""),
    )
    .expect("write bad config");
    let (status, body) = gw.reload();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("destination[0].adapter"), "{body}");
    assert_eq!(d.request(&post("/a", b"2", "")).status, 200);

    // A good reload that narrows the routes takes effect on the same live connection.
    std::fs::write(
        &gw.config_path,
        toml.replace("path = \"/\"", "path = \"/only\""),
    )
    .expect("write good config");
    let (status, body) = gw.reload();
    assert_eq!(status, 200, "{body}");
    assert_eq!(d.request(&post("/a", b"3", "")).status, 404);
    assert_eq!(d.request(&post("/only/x", b"4", "")).status, 200);
    let (_, metrics) = gw.admin_get("/metrics");
    assert!(
        metrics.contains("simgate_config_reloads_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("simgate_config_reload_failures_total 1"),
        "{metrics}"
    );
}

#[test]
fn new_upstream_connections_resume_tls_sessions_per_shard() {
    let world = World::new();
    // No pooling: every request needs a new upstream connection, so resumption shows.
    let mut toml = world.config("", "[destination.pool]\nwarm = 0\nmax_idle = 0");
    toml = toml.replace("shards = 2", "shards = 1");
    let gw = world.simgate(&toml);
    for i in 0..3 {
        let resp = raw_exchange(gw.http, &post("/r", format!("{i}").as_bytes(), ""));
        assert_eq!(resp.status, 200, "{}", resp.body_text());
    }
    let stats = world.sink.stats();
    assert_eq!(stats.tls_handshakes, 3, "{stats:?}");
    assert!(
        stats.resumed_handshakes >= 2,
        "later handshakes must resume: {stats:?}"
    );
    let (_, metrics) = gw.admin_get("/metrics");
    assert!(
        metrics.contains("simgate_upstream_connects_total 3"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("simgate_upstream_tls_resumed_total 0\n"),
        "{metrics}"
    );
}

#[test]
fn chunked_upstream_response_is_relayed_chunked_or_dechunked_for_http10_devices() {
    let world = World::with_sink(|c| {
        c.chunked_response = true;
        c.response_body = bytes::Bytes::from_static(b"chunked answer from the cloud");
    });
    let gw = world.simgate(&world.config("", ""));

    // HTTP/1.1 device: chunked framing passes through, connection stays open.
    let mut d = Device::connect(gw.http);
    let resp = d.request(&post("/c", b"x", ""));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert_eq!(resp.body_text(), "chunked answer from the cloud");
    assert_eq!(d.request(&post("/c", b"y", "")).status, 200);

    // HTTP/1.0 device: no chunked framing (it could not parse it); the body ends at close.
    let mut d10 = Device::connect(gw.http);
    d10.send(
        b"POST /c HTTP/1.0\r\nHost: d\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\nz",
    );
    let resp = d10.read_response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("transfer-encoding"), None);
    assert_eq!(resp.header("connection"), Some("close"));
    assert_eq!(resp.body_text(), "chunked answer from the cloud");
}

#[test]
fn sigterm_drains_in_flight_requests_and_closes_idle_connections() {
    let slow = World::with_sink(|c| c.response_delay = Some(Duration::from_millis(500)));
    let gw = slow.simgate(&slow.config("", ""));
    let mut idle = Device::connect(gw.http);
    assert_eq!(idle.request(&post("/i", b"warm", "")).status, 200);

    // A request in flight when SIGTERM arrives still gets its answer.
    let mut busy = Device::connect(gw.http);
    busy.send(&post("/b", b"in-flight", ""));
    assert_eq!(slow.sink.wait_for_requests(2, Duration::from_secs(10)), 2);
    gw.terminate();
    let resp = busy.read_response();
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(busy.is_closed());
    // The idle keep-alive connection is closed by the drain, and simgate exits cleanly.
    assert!(idle.is_closed());
    assert_eq!(gw.wait_exit(), Some(0));
}

/// Issue #10 (A): with `base_path = "/tenant-a"`, no request path may reach the upstream that a
/// normalising server (RFC 3986 §5.2.4) would resolve outside `/tenant-a`. Dot segments, encoded
/// dots and slashes, `..;` path parameters and empty segments are refused with 400 (and the
/// connection closed); a clean path still goes through, prefixed.
#[test]
fn dot_segments_cannot_escape_the_base_path() {
    let world = World::new();
    let gw = world.simgate(&world.config("", "base_path = \"/tenant-a\""));
    let targets = [
        "/../tenant-b/secret",
        "/%2e%2e/tenant-b/secret",
        "/%2E%2E/tenant-b/secret",
        "/.%2e/tenant-b/secret",
        "/./../tenant-b/secret",
        "/x/./y",
        "/x/..",
        "/x/..;/tenant-b/secret",
        "//tenant-b/secret",
        "/x//y",
        "/x/..%2ftenant-b",
        "/x%2F..%2F..%2Ftenant-b",
        "/x/..%5ctenant-b",
        "http://gw/../tenant-b/secret",
    ];
    for target in targets {
        let mut d = Device::connect(gw.http);
        let resp = d.request(format!("GET {target} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes());
        assert_eq!(resp.status, 400, "{target}: {}", resp.body_text());
        assert!(d.is_closed(), "{target}: connection must be closed");
    }
    // curl keeps the dot segments only with --path-as-is.
    let url = format!("http://{}/../tenant-b/secret", gw.http);
    let (ok, out) = curl(&[
        "-sS",
        "--path-as-is",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url,
    ]);
    assert!(ok, "curl failed: {out}");
    assert_eq!(out, "400");

    // Clean paths (a trailing slash and dots inside a segment included) are forwarded, prefixed.
    for target in ["/ok/path/", "/v1/file.json?x=/../y", "http://gw/abs"] {
        let resp = raw_exchange(
            gw.http,
            format!("GET {target} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes(),
        );
        assert_eq!(resp.status, 200, "{target}: {}", resp.body_text());
    }
    let paths: Vec<String> = world.sink.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/tenant-a/ok/path/",
            "/tenant-a/v1/file.json?x=/../y",
            "/tenant-a/abs"
        ]
    );
}

/// Issue #10 (B): trailer fields that must not appear in a trailer section (RFC 9110 §6.5.1:
/// framing, routing, authentication, request modifiers, content format, hop-by-hop) never reach
/// the upstream; the others do, and the dropped ones are counted in
/// `simgate_http_trailer_fields_dropped_total`.
#[test]
fn forbidden_trailer_fields_are_dropped_before_the_upstream() {
    let world = World::new();
    let gw = world.simgate(&world.config("", ""));
    let req = b"POST /t HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n\
        5\r\nhello\r\n0\r\nContent-Length: 5\r\nX-Checksum: abc\r\nHost: evil.example\r\n\
        Transfer-Encoding: chunked\r\nConnection: close\r\nAuthorization: Bearer x\r\n\
        X-Forwarded-For: 1.2.3.4\r\nServer-Timing: t;dur=1\r\n\r\n";
    let resp = raw_exchange(gw.http, req);
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    assert_eq!(world.sink.wait_for_requests(1, Duration::from_secs(10)), 1);
    let got = world.sink.requests().remove(0);
    assert_eq!(&got.body[..], b"hello");
    let names: Vec<&str> = got.trailers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["x-checksum", "server-timing"], "{:?}", got.trailers);
    let host = header(&got, "host").expect("host header");
    assert_eq!(host, world.sink.addr().to_string().as_bytes());
    let (_, metrics) = gw.admin_get("/metrics");
    assert!(
        metrics.contains("simgate_http_trailer_fields_dropped_total 6\n"),
        "{metrics}"
    );
}

/// Issue #10 (C): by default a device answered by simgate itself for an upstream failure gets a
/// short generic body: no destination name, no address, no TLS or certificate detail. The
/// detail stays in the log and the error counters; `error_detail = "full"` on the listener
/// brings it back in the body.
#[test]
fn upstream_errors_give_devices_a_generic_body_unless_full_detail_is_configured() {
    let world = World::new();
    let other = simgate::testkit::TestPki::new(&world.dir.path().join("other")).expect("pki");
    let untrusted = |listener_extra: &str| {
        world.config(listener_extra, "").replace(
            &world.pki.ca_pem.display().to_string(),
            &other.ca_pem.display().to_string(),
        )
    };
    let gw = world.simgate(&untrusted(""));
    let resp = raw_exchange(gw.http, &post("/x", b"data", ""));
    assert_eq!(resp.status, 502, "{}", resp.body_text());
    assert_eq!(resp.body_text(), "upstream unavailable\n");
    // Counted by cause: a TLS failure, or the backoff that failed warm-up handshakes started.
    let (_, metrics) = gw.admin_get("/metrics");
    let upstream_errors: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("simgate_http_errors_total{kind=\"upstream_tls\"}")
                || l.starts_with("simgate_http_errors_total{kind=\"upstream_backoff\"}")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(upstream_errors, 1, "{metrics}");
    let stderr = gw.stderr();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("gateway error") && l.contains("certificate rejected")),
        "the detail must be logged: {stderr}"
    );
    drop(gw);

    let gw = world.simgate(&untrusted("error_detail = \"full\""));
    let resp = raw_exchange(gw.http, &post("/x", b"data", ""));
    assert_eq!(resp.status, 502, "{}", resp.body_text());
    let body = resp.body_text();
    assert!(body.contains("destination sink"), "{body}");
    assert!(body.contains("certificate"), "{body}");
    drop(gw);

    // 504: the same rule.
    let slow = World::with_sink(|c| c.response_delay = Some(Duration::from_secs(3)));
    let gw = slow.simgate(&slow.config("", "[destination.pool]\nresponse_timeout = \"300ms\""));
    let resp = raw_exchange(gw.http, &post("/x", b"d", ""));
    assert_eq!(resp.status, 504, "{}", resp.body_text());
    assert_eq!(resp.body_text(), "upstream did not respond in time\n");
    assert_eq!(world.sink.requests().len(), 0);
}
