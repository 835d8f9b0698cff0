//! `/readyz` (readiness) against `/healthz` (liveness): a destination whose warm pool cannot be
//! filled (nothing listens at its endpoint) keeps `/readyz` at 503 naming it on every shard,
//! while `/healthz` stays 200; a reload that drops it makes simgate ready once the remaining
//! destination's warm connections are up. Real `simgate run` with 2 shards, a real TLS sink.

mod common;

use std::time::{Duration, Instant};

use common::{Simgate, World};

/// Poll `/readyz` (the signal itself) until its answer satisfies `pred`, or fail with its last
/// answer.
fn wait_readyz(gw: &Simgate, what: &str, pred: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = gw.admin_get("/readyz");
        if pred(status, &body) {
            return (status, body);
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never showed {what}; last {status}: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unreachable_port() -> u16 {
    // Bound then closed: nothing listens there (connects are refused).
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

#[test]
fn readyz_waits_for_every_warm_pool_and_healthz_does_not() {
    let world = World::new();
    let good = world.config("", "[destination.pool]\nwarm = 2");
    let with_dead = format!(
        "{good}\n[[destination]]\nname = \"dead\"\nadapter = \"https\"\nendpoint = \"127.0.0.1:{}\"\n\
         server_name = \"localhost\"\nca = \"{}\"\n[destination.pool]\nwarm = 1\n\
         connect_timeout = \"200ms\"\n",
        unreachable_port(),
        world.pki.ca_pem.display()
    );
    let gw = world.simgate(&with_dead);
    // The sink's pools fill; the dead destination's never do.
    let (_, body) = wait_readyz(&gw, "only the dead destination cold", |status, body| {
        status == 503 && !body.contains("destination sink")
    });
    for shard in 0..2 {
        assert!(
            body.contains(&format!(
                "destination dead: warm pool not filled yet on shard {shard}"
            )),
            "{body}"
        );
    }
    assert_eq!(gw.admin_get("/healthz"), (200, "ok\n".to_owned()));

    // Without the dead destination: ready once the sink's warm connections are up.
    std::fs::write(&gw.config_path, &good).expect("rewrite config");
    let (status, body) = gw.reload();
    assert_eq!(status, 200, "{body}");
    let (_, body) = wait_readyz(&gw, "200", |status, _| status == 200);
    assert_eq!(body, "ready\n");
    let accepted = world.sink.stats().tls_handshakes;
    assert!(
        accepted >= 4,
        "2 warm connections on each of 2 shards: {accepted}"
    );
}
