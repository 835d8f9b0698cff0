//! Integration (issue #12): HTTP/1.1 devices → `simgate run` → an HTTPS sink that speaks HTTP/2
//! (hyper's h2 server behind rustls, ALPN `h2`). Checks that the destination's requests become
//! HTTP/2 streams on one shared connection per shard, that bodies and responses arrive intact
//! both ways (flow control, chunked answers), that a server GOAWAY moves later requests to a new
//! connection without failing any, that timeouts map to 504, and that without `h2` on both
//! sides everything stays HTTP/1.1, that a connection cut under a request retries a GET and answers a
//! POST with 502 (never sent twice), and that a small SETTINGS_MAX_CONCURRENT_STREAMS spreads
//! streams over a few connections. Issue #14: pool waits, round trips and gateway-added time of
//! HTTP/2 requests are counted per destination.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(20);
const H2_ALPN: &str = "alpn = [\"h2\", \"http/1.1\"]";

fn h2_world(f: impl FnOnce(&mut simgate::testkit::SinkConfig)) -> World {
    World::with_sink(|c| {
        c.http2 = true;
        c.response_body = bytes::Bytes::from_static(b"ok");
        f(c);
    })
}

/// The world's config with one shard (one shared upstream connection in all).
fn one_shard(world: &World, destination_extra: &str) -> String {
    world
        .config("", destination_extra)
        .replacen("shards = 2", "shards = 1", 1)
}

fn connection_ids(world: &World) -> BTreeSet<u64> {
    world
        .sink
        .requests()
        .iter()
        .map(|r| r.connection_id)
        .collect()
}

#[test]
fn concurrent_device_requests_are_streams_on_one_shared_connection() {
    let world = h2_world(|_| {});
    let gw = world.simgate(&one_shard(&world, H2_ALPN));
    const DEVICES: usize = 8;
    const EACH: usize = 25;
    std::thread::scope(|s| {
        for d in 0..DEVICES {
            let http = gw.http;
            s.spawn(move || {
                let mut device = Device::connect(http);
                for i in 0..EACH {
                    let body = format!("device-{d}-msg-{i}");
                    let resp = device.request(&post("/h2", body.as_bytes(), "X-Device: d\r\n"));
                    assert_eq!(resp.status, 200, "{}", resp.body_text());
                    assert_eq!(resp.body_text(), "ok");
                    let len = body.len().to_string();
                    assert_eq!(resp.header("x-sink-body-bytes"), Some(len.as_str()));
                }
            });
        }
    });
    let total = DEVICES * EACH;
    assert_eq!(world.sink.wait_for_requests(total, WAIT), total);
    let requests = world.sink.requests();
    assert!(
        requests.iter().all(|r| r.version == "HTTP/2.0"),
        "versions: {:?}",
        requests.iter().map(|r| &r.version).collect::<BTreeSet<_>>()
    );
    let bodies: BTreeSet<Vec<u8>> = requests.iter().map(|r| r.body.to_vec()).collect();
    for d in 0..DEVICES {
        for i in 0..EACH {
            assert!(bodies.contains(format!("device-{d}-msg-{i}").as_bytes()));
        }
    }
    let first = &requests[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/h2");
    assert_eq!(first.header("x-device"), Some(&b"d"[..]));
    assert_eq!(
        first.header("host"),
        None,
        "Host travels as :authority over HTTP/2"
    );
    assert_eq!(connection_ids(&world).len(), 1, "one shared connection");
    let stats = world.sink.stats();
    assert_eq!((stats.tls_handshakes, stats.h2_connections), (1, 1));
}

#[test]
fn large_bodies_cross_the_flow_control_windows_both_ways() {
    let answer: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 241) as u8).collect();
    let world = h2_world(|c| {
        c.response_body = bytes::Bytes::from(answer.clone());
        c.chunked_response = true;
    });
    let gw = world.simgate(&one_shard(&world, H2_ALPN));
    // 900 KiB up (under the listener's 1 MiB body limit): beyond the 64 KiB initial windows hyper's server starts with.
    let body: Vec<u8> = (0..900 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut device = Device::connect(gw.http);
    for _ in 0..2 {
        let resp = device.request(&post("/big", &body, ""));
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
        assert!(resp.body == answer, "answer changed in transit");
    }
    assert_eq!(world.sink.wait_for_requests(2, WAIT), 2);
    for got in world.sink.requests() {
        assert_eq!(got.version, "HTTP/2.0");
        assert!(got.body[..] == body[..], "upload changed in transit");
    }
    assert_eq!(connection_ids(&world).len(), 1);
    // Per-destination bytes over HTTP/2 are the bodies (DATA payloads), exactly.
    assert_eq!(
        metric(
            &gw,
            "simgate_destination_bytes_total{destination=\"sink\",direction=\"sent\"}"
        ),
        2 * body.len() as u64
    );
    assert_eq!(
        metric(
            &gw,
            "simgate_destination_bytes_total{destination=\"sink\",direction=\"received\"}"
        ),
        2 * answer.len() as u64
    );
}

#[test]
fn chunked_device_upload_is_sent_dechunked() {
    let world = h2_world(|_| {});
    let gw = world.simgate(&one_shard(&world, H2_ALPN));
    let req = b"POST /c HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n";
    let resp = raw_exchange(gw.http, req);
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    assert_eq!(world.sink.wait_for_requests(1, WAIT), 1);
    let got = world.sink.requests().remove(0);
    assert_eq!(got.version, "HTTP/2.0");
    assert_eq!(&got.body[..], b"hello world");
    assert_eq!(got.header("transfer-encoding"), None);
}

#[test]
fn a_server_goaway_moves_later_requests_to_a_new_connection() {
    let world = h2_world(|c| c.goaway_after = Some(10));
    let gw = world.simgate(&one_shard(&world, H2_ALPN));
    const DEVICES: usize = 4;
    const EACH: usize = 20;
    std::thread::scope(|s| {
        for d in 0..DEVICES {
            let http = gw.http;
            s.spawn(move || {
                let mut device = Device::connect(http);
                for i in 0..EACH {
                    let body = format!("{d}-{i}");
                    let resp = device.request(&post("/g", body.as_bytes(), ""));
                    assert_eq!(resp.status, 200, "{d}-{i}: {}", resp.body_text());
                }
            });
        }
    });
    let total = DEVICES * EACH;
    assert_eq!(world.sink.wait_for_requests(total, WAIT), total);
    let stats = world.sink.stats();
    assert!(stats.goaways >= 2, "{stats:?}");
    let connections = connection_ids(&world).len();
    assert!(connections >= 3, "{connections} connections; {stats:?}");
    // Each connection took about 10 requests, not one per request.
    assert!(connections <= total / 5, "{connections} connections");
}

#[test]
fn a_slow_h2_upstream_is_a_504_and_the_next_request_still_works() {
    let world = h2_world(|c| c.response_delay = Some(Duration::from_millis(1500)));
    let gw = world.simgate(&one_shard(
        &world,
        &format!("{H2_ALPN}\n[destination.pool]\nresponse_timeout = \"300ms\""),
    ));
    let mut device = Device::connect(gw.http);
    let resp = device.request(&post("/slow", b"x", ""));
    assert_eq!(resp.status, 504, "{}", resp.body_text());
    let resp = device.request(&post("/slow", b"y", ""));
    assert_eq!(resp.status, 504, "{}", resp.body_text());
    assert_eq!(world.sink.wait_for_requests(2, WAIT), 2);
    // The timed-out streams were reset, not the connection.
    assert_eq!(connection_ids(&world).len(), 1);
}

#[test]
fn http1_stays_http1_unless_both_sides_offer_h2() {
    // simgate offers only http/1.1 to an h2-capable sink.
    let world = h2_world(|_| {});
    let gw = world.simgate(&one_shard(&world, "alpn = [\"http/1.1\"]"));
    for i in 0..3 {
        let resp = raw_exchange(gw.http, &post("/one", format!("{i}").as_bytes(), ""));
        assert_eq!(resp.status, 200);
    }
    assert_eq!(world.sink.wait_for_requests(3, WAIT), 3);
    assert!(world
        .sink
        .requests()
        .iter()
        .all(|r| r.version == "HTTP/1.1"));
    assert_eq!(world.sink.stats().h2_connections, 0);
    drop(gw);

    // simgate offers h2, the sink selects http/1.1.
    let world = World::new();
    let gw = world.simgate(&one_shard(&world, H2_ALPN));
    let mut device = Device::connect(gw.http);
    for i in 0..5 {
        let resp = device.request(&post("/two", format!("{i}").as_bytes(), ""));
        assert_eq!(resp.status, 200);
    }
    assert_eq!(world.sink.wait_for_requests(5, WAIT), 5);
    assert!(world
        .sink
        .requests()
        .iter()
        .all(|r| r.version == "HTTP/1.1"));
}

#[test]
fn get_and_head_over_h2() {
    let world = h2_world(|c| c.response_body = bytes::Bytes::from_static(b"hello"));
    let gw = world.simgate(&one_shard(&world, H2_ALPN));
    let mut device = Device::connect(gw.http);
    let resp = device.request(b"GET /g?q=1 HTTP/1.1\r\nHost: d\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body_text(), "hello");
    device.send(b"HEAD /g HTTP/1.1\r\nHost: d\r\n\r\n");
    // A HEAD answer has no body: read the head only.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    use std::io::Read;
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(device.stream.read(&mut byte).expect("read head"), 1);
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    let resp = device.request(b"GET /after-head HTTP/1.1\r\nHost: d\r\n\r\n");
    assert_eq!(resp.body_text(), "hello");
    assert_eq!(world.sink.wait_for_requests(3, WAIT), 3);
    let requests = world.sink.requests();
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].path, "/g?q=1");
    assert_eq!(requests[1].method, "HEAD");
    assert!(requests.iter().all(|r| r.version == "HTTP/2.0"));
}

#[test]
fn a_connection_lost_mid_request_is_retried_for_get_and_a_502_for_post() {
    let world = h2_world(|c| c.close_after = Some(3));
    let gw = world.simgate(&one_shard(&world, H2_ALPN));
    let mut device = Device::connect(gw.http);
    // GETs are idempotent: the one whose connection dies under it is sent again.
    for i in 0..9 {
        let resp = device.request(format!("GET /get-{i} HTTP/1.1\r\nHost: d\r\n\r\n").as_bytes());
        assert_eq!(resp.status, 200, "GET {i}: {}", resp.body_text());
    }
    let closes = world.sink.stats().abrupt_closes;
    assert!(closes >= 3, "{:?}", world.sink.stats());
    // A POST on a connection that dies after reading it may have been processed: 502, never
    // sent twice; the next one goes out on a new connection.
    let mut statuses = Vec::new();
    for i in 0..6 {
        let resp = device.request(&post(&format!("/post-{i}"), b"p", ""));
        statuses.push(resp.status);
    }
    // Every third request read on a connection is cut under it.
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        2,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 502),
        "{statuses:?}"
    );
    let posts = world
        .sink
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(posts, 6, "no POST sent twice");
}

#[test]
fn a_small_max_concurrent_streams_spreads_requests_over_a_few_connections() {
    let world = h2_world(|c| {
        c.max_concurrent_streams = Some(2);
        c.response_delay = Some(Duration::from_millis(100));
    });
    let gw = world.simgate(&one_shard(&world, H2_ALPN));
    std::thread::scope(|s| {
        for d in 0..8 {
            let http = gw.http;
            s.spawn(move || {
                let mut device = Device::connect(http);
                for i in 0..4 {
                    let resp = device.request(&post("/m", format!("{d}-{i}").as_bytes(), ""));
                    assert_eq!(resp.status, 200, "{}", resp.body_text());
                }
            });
        }
    });
    assert_eq!(world.sink.wait_for_requests(32, WAIT), 32);
    let connections = connection_ids(&world).len();
    // Two streams per connection, eight devices: more than one connection, at most the pool's
    // cap of four (beyond it, streams queue in h2).
    assert!((2..=4).contains(&connections), "{connections} connections");
    // Issue #14: which requests waited for a connection (or a stream slot) depends on arrival
    // order, so `pool_wait` is bounded: at least one sample per connection a request opened
    // (all but the warm one: its opener waited for it), at most one per checkout (a request,
    // or a retry of a stream the server refused). Every request has one gateway-added sample.
    let connections = world.sink.stats().h2_connections;
    let waits = metric(&gw, POOL_WAIT);
    let retries = metric(&gw, "simgate_upstream_retries_total");
    assert!(
        (connections - 1..=32 + retries).contains(&waits),
        "{waits} pool waits, {connections} connections, {retries} retries"
    );
    assert_eq!(
        metric(
            &gw,
            "simgate_gateway_added_seconds_count{destination=\"sink\",protocol=\"http\"}"
        ),
        32
    );
}

#[test]
fn a_cold_pool_never_opens_more_streams_than_the_server_allows() {
    // A server allowing 2 streams per connection, and no warm connection that could have
    // learned it: 16 devices at once. Before the server's SETTINGS arrive, a new connection
    // opens one stream and holds the rest (h2's default, and simgate's before, was to send up
    // to 100 and have the excess refused with REFUSED_STREAM and retried, three times at most).
    let world = h2_world(|c| {
        c.max_concurrent_streams = Some(2);
        c.response_delay = Some(Duration::from_millis(100));
    });
    let toml = one_shard(
        &world,
        &format!("{H2_ALPN}\n[destination.pool]\nwarm = 0\n"),
    );
    let gw = world.simgate(&toml);
    std::thread::scope(|s| {
        for d in 0..16 {
            let http = gw.http;
            s.spawn(move || {
                let mut device = Device::connect(http);
                for i in 0..2 {
                    let resp = device.request(&post("/m", format!("{d}-{i}").as_bytes(), ""));
                    assert_eq!(resp.status, 200, "{}", resp.body_text());
                }
            });
        }
    });
    assert_eq!(world.sink.wait_for_requests(32, WAIT), 32);
    assert_eq!(
        metric(&gw, "simgate_upstream_retries_total"),
        0,
        "no stream was refused and sent again"
    );
    let connections = connection_ids(&world).len();
    assert!((1..=4).contains(&connections), "{connections} connections");
}

/// The value of `series` (name and labels exactly as exposed) on simgate's /metrics, 0 if absent.
fn metric(gw: &Simgate, series: &str) -> u64 {
    let (status, text) = gw.admin_get("/metrics");
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

const POOL_WAIT: &str = "simgate_upstream_pool_wait_seconds_count{destination=\"sink\"}";

/// Issue #14: a cold HTTP/2 pool makes its first request wait for the connection (one
/// `pool_wait` sample); the requests after it find a stream slot at once (none). Every request
/// has one round trip and one gateway-added sample.
#[test]
fn a_cold_h2_pool_counts_one_pool_wait_and_every_request_once() {
    let world = h2_world(|_| {});
    let toml = one_shard(&world, &format!("{H2_ALPN}\n[destination.pool]\nwarm = 0"));
    let gw = world.simgate(&toml);
    const N: u64 = 12;
    let mut device = Device::connect(gw.http);
    for i in 0..N {
        let resp = device.request(&post("/cold", format!("{i}").as_bytes(), ""));
        assert_eq!(resp.status, 200, "{}", resp.body_text());
    }
    assert_eq!(world.sink.stats().h2_connections, 1);
    assert_eq!(metric(&gw, POOL_WAIT), 1);
    let http = "destination=\"sink\",protocol=\"http\"";
    for family in [
        "simgate_request_duration_seconds",
        "simgate_upstream_rtt_seconds",
        "simgate_gateway_added_seconds",
    ] {
        assert_eq!(
            metric(&gw, &format!("{family}_count{{{http}}}")),
            N,
            "{family}"
        );
    }
}
