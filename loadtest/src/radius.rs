//! `radius`: RADIUS accounting load (issue #11 §2) — a stand-in packet core sending paced
//! Accounting-Requests to simgate's `[radius]` listener and checking every answer.
//!
//! What it does:
//! - Sends `rate` Accounting-Requests per second for `duration`, open loop (due counts are
//!   computed from the clock every millisecond and the backlog is sent at once, so a slow tick
//!   does not lower the offered rate).
//! - Request `k` is for session `k % sessions`; a session alternates Start, Stop, Start, …
//!   (round `k / sessions` even: Start), so every binding is made and removed over and over.
//!   Session `i` is IMSI `00101` + `i` on ten digits (3GPP-IMSI, vendor 10415 type 1) and
//!   Framed-IP-Address `10.0.0.0 + i + 1`; its Acct-Session-Id `"{i:x}-{round / 2}"` is shared
//!   by a Start and its Stop and new for each Start, so no two requests carry the same
//!   authenticator (simgate's duplicate detection never mistakes one for a retransmission).
//! - Requests go round robin over `sockets` UDP sockets (distinct source ports): the RADIUS key
//!   of a request in flight is (client address and port, Identifier), and an Identifier is 8
//!   bits. An Identifier is taken from its socket's free set and returned when the answer
//!   arrives or the request times out, so no two requests in flight share a key; when a
//!   socket has none free the next socket is tried, and when none has, the request waits and the
//!   wait is counted (`id_stalls`) — the client, not the server, was the limit.
//! - Each request is signed with `simgate::proto::radius::sign_accounting_request`; an answer
//!   counts as answered only if it is a 20-octet Accounting-Response from the target whose
//!   Response Authenticator equals `encode_accounting_response(identifier, request
//!   authenticator, secret)` (RFC 2866 §3). Latency (µs, HDR) runs from just before `send_to` to
//!   the receive.
//! - A request unanswered after `timeout` is lost; requests still in flight at the end are
//!   given the same `timeout` before they are counted lost.
//!
//! What it does NOT do: retransmit (a lost request is counted, never re-sent), send
//! Interim-Update, Accounting-On/Off or IPv6 prefixes, verify answers that carry attributes
//! (simgate sends none; such an answer counts as `bad_responses`), or print the secret.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use simgate::proto::radius::{
    attr, encode_accounting_response, sign_accounting_request, ACCOUNTING_RESPONSE_LEN,
    AUTHENTICATOR_LEN, CODE_ACCOUNTING_REQUEST, CODE_ACCOUNTING_RESPONSE, HEADER_LEN,
};
use tokio::net::UdpSocket;

use crate::stats::{new_latency_histogram, LatencySummary};

/// What to send.
#[derive(Clone)]
pub struct RadiusOptions {
    /// simgate's `[radius]` UDP address.
    pub target: SocketAddr,
    /// The shared secret (never printed).
    pub secret: Vec<u8>,
    /// Requests per second.
    pub rate: f64,
    /// How long to send.
    pub duration: Duration,
    /// Distinct sessions (IMSI / IP pairs).
    pub sessions: u32,
    /// UDP sockets (source ports) used round robin.
    pub sockets: usize,
    /// An unanswered request is lost after this long.
    pub timeout: Duration,
}

impl std::fmt::Debug for RadiusOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RadiusOptions")
            .field("target", &self.target)
            .field("secret", &"<redacted>")
            .field("rate", &self.rate)
            .field("duration", &self.duration)
            .field("sessions", &self.sessions)
            .field("sockets", &self.sockets)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RadiusReport {
    /// Target address.
    pub target: SocketAddr,
    /// Offered rate, requests per second.
    pub rate: f64,
    /// Sending time, seconds.
    pub duration_s: f64,
    /// Sessions.
    pub sessions: u32,
    /// Sockets.
    pub sockets: usize,
    /// Requests sent.
    pub sent: u64,
    /// Of them, Start / Stop.
    pub starts: u64,
    /// Stops sent.
    pub stops: u64,
    /// Requests answered with a verified Accounting-Response.
    pub answered: u64,
    /// Requests unanswered within the timeout.
    pub lost: u64,
    /// Datagrams that were not a verified answer to a request in flight (wrong source, not an
    /// Accounting-Response, bad Response Authenticator).
    pub bad_responses: u64,
    /// Verified-looking answers to no request in flight (late after their timeout, or repeated).
    pub unexpected: u64,
    /// `send_to` failures (the request is not counted as sent).
    pub send_errors: u64,
    /// Times the sender found no free Identifier on any socket and waited.
    pub id_stalls: u64,
    /// Largest delay of a send behind its schedule, µs (the load tester's own lag).
    pub max_send_lag_us: u64,
    /// `sent / duration_s`.
    pub achieved_send_rate: f64,
    /// `answered / duration_s`.
    pub achieved_answer_rate: f64,
    /// Request → verified answer, µs.
    pub latency_us: LatencySummary,
}

impl std::fmt::Display for RadiusReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "radius {}: offered {:.0}/s for {:.1} s, {} sessions, {} sockets",
            self.target, self.rate, self.duration_s, self.sessions, self.sockets
        )?;
        writeln!(
            f,
            "sent      {} ({} Start, {} Stop)  {:.0}/s achieved",
            self.sent, self.starts, self.stops, self.achieved_send_rate
        )?;
        writeln!(
            f,
            "answered  {} ({:.0}/s)  lost {}  bad {}  unexpected {}  send errors {}  id stalls {}",
            self.answered,
            self.achieved_answer_rate,
            self.lost,
            self.bad_responses,
            self.unexpected,
            self.send_errors,
            self.id_stalls
        )?;
        let l = &self.latency_us;
        writeln!(
            f,
            "latency   p50 {} µs  p90 {} µs  p99 {} µs  p99.9 {} µs  max {} µs  (mean {:.0} µs)",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        )?;
        writeln!(f, "send lag  max {} µs", self.max_send_lag_us)
    }
}

/// A request in flight.
#[derive(Clone, Copy)]
struct Pending {
    authenticator: [u8; AUTHENTICATOR_LEN],
    sent: Instant,
}

/// The requests in flight of one socket, by Identifier, and its free Identifiers.
struct Slots {
    pending: Vec<Option<Pending>>,
    free: Vec<u8>,
}

impl Slots {
    fn new() -> Self {
        Self {
            pending: vec![None; 256],
            // Popped from the end: 0 first.
            free: (0..=255u8).rev().collect(),
        }
    }
}

/// Shared between the sender, the receivers and the timeout sweep.
struct State {
    slots: Vec<Slots>,
    latency: Histogram<u64>,
    answered: u64,
    lost: u64,
    bad_responses: u64,
    unexpected: u64,
}

impl State {
    fn in_flight(&self) -> usize {
        self.slots.iter().map(|s| 256 - s.free.len()).sum()
    }

    /// Counts as lost (and frees) every request older than `timeout` at `now`.
    fn expire(&mut self, now: Instant, timeout: Duration) {
        for socket in &mut self.slots {
            for (id, slot) in socket.pending.iter_mut().enumerate() {
                if slot.is_some_and(|p| now.duration_since(p.sent) >= timeout) {
                    *slot = None;
                    socket.free.push(id as u8);
                    self.lost += 1;
                }
            }
        }
    }
}

/// IMSI of session `i`: MCC 001, MNC 01 (the test network), then `i` on ten digits.
pub fn session_imsi(i: u32) -> String {
    format!("00101{i:010}")
}

/// Framed-IP-Address of session `i`: `10.0.0.0 + i + 1`.
pub fn session_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + i + 1)
}

/// Bindings simgate holds after the first `sent` requests of a run with `sessions` sessions
/// (each session bound after an odd number of its requests), all answered.
pub fn expected_bindings(sent: u64, sessions: u32) -> u64 {
    let n = u64::from(sessions);
    if (sent / n).is_multiple_of(2) {
        sent % n
    } else {
        n - sent % n
    }
}

/// Request `k`'s Accounting-Request (unsigned Identifier `id`), signed with `secret`; and
/// whether it is a Start.
fn request(k: u64, sessions: u32, id: u8, secret: &[u8]) -> Result<(Vec<u8>, bool)> {
    let session = (k % u64::from(sessions)) as u32;
    let round = k / u64::from(sessions);
    let start = round.is_multiple_of(2);
    let imsi = session_imsi(session);
    let session_id = format!("{session:x}-{}", round / 2);
    let mut p = Vec::with_capacity(80);
    p.extend_from_slice(&[CODE_ACCOUNTING_REQUEST, id, 0, 0]);
    p.extend_from_slice(&[0; AUTHENTICATOR_LEN]);
    p.extend_from_slice(&[
        attr::ACCT_STATUS_TYPE,
        6,
        0,
        0,
        0,
        if start { 1 } else { 2 },
    ]);
    p.extend_from_slice(&[attr::FRAMED_IP_ADDRESS, 6]);
    p.extend_from_slice(&session_ip(session).octets());
    p.extend_from_slice(&[attr::ACCT_SESSION_ID, 2 + session_id.len() as u8]);
    p.extend_from_slice(session_id.as_bytes());
    // Vendor-Specific: type, length, vendor id, sub-type, sub-length, value.
    p.extend_from_slice(&[attr::VENDOR_SPECIFIC, (8 + imsi.len()) as u8]);
    p.extend_from_slice(&attr::VENDOR_3GPP.to_be_bytes());
    p.extend_from_slice(&[attr::VSA_3GPP_IMSI, 2 + imsi.len() as u8]);
    p.extend_from_slice(imsi.as_bytes());
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    sign_accounting_request(&mut p, secret).context("sign the Accounting-Request")?;
    Ok((p, start))
}

/// Runs the load and returns its report.
///
/// # Errors
/// Bad options, or sockets that cannot be bound; lost requests are counted, not errors.
pub fn run(opts: &RadiusOptions) -> Result<RadiusReport> {
    if !(opts.rate.is_finite() && opts.rate > 0.0) {
        bail!("--rate must be a positive number of requests per second");
    }
    if opts.sessions == 0 || opts.sessions > (1 << 24) - 2 {
        bail!("--sessions must be in 1..=16777214 (addresses of 10.0.0.0/8)");
    }
    if opts.sockets == 0 || opts.sockets > 4096 {
        bail!("--sockets must be in 1..=4096");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(opts))
}

async fn run_async(opts: &RadiusOptions) -> Result<RadiusReport> {
    let local: SocketAddr = if opts.target.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let mut sockets = Vec::with_capacity(opts.sockets);
    for _ in 0..opts.sockets {
        sockets.push(Arc::new(
            UdpSocket::bind(local).await.context("bind a UDP socket")?,
        ));
    }
    let state = Arc::new(Mutex::new(State {
        slots: (0..opts.sockets).map(|_| Slots::new()).collect(),
        latency: new_latency_histogram()?,
        answered: 0,
        lost: 0,
        bad_responses: 0,
        unexpected: 0,
    }));
    let mut receivers = Vec::with_capacity(sockets.len());
    for (index, socket) in sockets.iter().enumerate() {
        receivers.push(tokio::spawn(receive(
            index,
            Arc::clone(socket),
            opts.target,
            opts.secret.clone(),
            Arc::clone(&state),
        )));
    }

    let total = (opts.rate * opts.duration.as_secs_f64()).round() as u64;
    let per_request = Duration::from_secs_f64(1.0 / opts.rate);
    let (mut sent, mut starts, mut send_errors, mut id_stalls, mut max_lag) = (0u64, 0, 0, 0, 0);
    let mut next_socket = 0usize;
    let mut last_sweep = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let begin = Instant::now();
    let mut k = 0u64;
    while k < total {
        tick.tick().await;
        let now = Instant::now();
        if now.duration_since(last_sweep) >= Duration::from_millis(20) {
            state.lock().expire(now, opts.timeout);
            last_sweep = now;
        }
        let due = ((now.duration_since(begin).as_secs_f64() * opts.rate) as u64 + 1).min(total);
        while k < due {
            // An Identifier free on this socket or one of the next ones.
            let taken = {
                let mut s = state.lock();
                (0..sockets.len()).find_map(|step| {
                    let index = (next_socket + step) % sockets.len();
                    s.slots[index].free.pop().map(|id| (index, id))
                })
            };
            let Some((index, id)) = taken else {
                id_stalls += 1;
                break; // every Identifier is in flight: wait for answers or timeouts
            };
            next_socket = (index + 1) % sockets.len();
            let (packet, start) = request(k, opts.sessions, id, &opts.secret)?;
            let mut authenticator = [0u8; AUTHENTICATOR_LEN];
            authenticator.copy_from_slice(&packet[4..HEADER_LEN]);
            let at = Instant::now();
            let intended = begin + per_request.mul_f64(k as f64);
            max_lag = max_lag.max(at.saturating_duration_since(intended).as_micros() as u64);
            state.lock().slots[index].pending[usize::from(id)] = Some(Pending {
                authenticator,
                sent: at,
            });
            match sockets[index].send_to(&packet, opts.target).await {
                Ok(_) => {
                    sent += 1;
                    starts += u64::from(start);
                    k += 1;
                }
                Err(_) => {
                    send_errors += 1;
                    let mut s = state.lock();
                    s.slots[index].pending[usize::from(id)] = None;
                    s.slots[index].free.push(id);
                    // Counted and skipped: the schedule goes on.
                    k += 1;
                }
            }
        }
    }
    let sending = begin.elapsed();
    // The last requests get their full timeout.
    let deadline = Instant::now() + opts.timeout;
    while Instant::now() < deadline && state.lock().in_flight() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for r in &receivers {
        r.abort();
    }
    let mut s = state.lock();
    s.expire(Instant::now() + opts.timeout, opts.timeout);
    let secs = sending.as_secs_f64();
    Ok(RadiusReport {
        target: opts.target,
        rate: opts.rate,
        duration_s: secs,
        sessions: opts.sessions,
        sockets: opts.sockets,
        sent,
        starts,
        stops: sent - starts,
        answered: s.answered,
        lost: s.lost,
        bad_responses: s.bad_responses,
        unexpected: s.unexpected,
        send_errors,
        id_stalls,
        max_send_lag_us: max_lag,
        achieved_send_rate: sent as f64 / secs,
        achieved_answer_rate: s.answered as f64 / secs,
        latency_us: LatencySummary::of(&s.latency),
    })
}

/// Matches answers on socket `index` to its requests in flight.
async fn receive(
    index: usize,
    socket: Arc<UdpSocket>,
    target: SocketAddr,
    secret: Vec<u8>,
    state: Arc<Mutex<State>>,
) {
    let mut buf = [0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let at = Instant::now();
        let datagram = &buf[..n];
        let mut s = state.lock();
        if from != target
            || n != ACCOUNTING_RESPONSE_LEN
            || datagram[0] != CODE_ACCOUNTING_RESPONSE
            || datagram[2..4] != (ACCOUNTING_RESPONSE_LEN as u16).to_be_bytes()
        {
            s.bad_responses += 1;
            continue;
        }
        let id = datagram[1];
        let Some(pending) = s.slots[index].pending[usize::from(id)] else {
            s.unexpected += 1;
            continue;
        };
        if encode_accounting_response(id, &pending.authenticator, &secret)[..] != datagram[..] {
            // Not an answer to this request (forged, or signed with another secret): the
            // request stays in flight.
            s.bad_responses += 1;
            continue;
        }
        s.slots[index].pending[usize::from(id)] = None;
        s.slots[index].free.push(id);
        s.answered += 1;
        let micros = at.duration_since(pending.sent).as_micros() as u64;
        let _ = s.latency.record(micros.max(1));
    }
}

/// Reads a secret as simgate does (`{ file = … }`: one trailing newline removed).
///
/// # Errors
/// The file cannot be read (the message names the file, not the contents).
pub fn read_secret_file(path: &std::path::Path) -> Result<Vec<u8>> {
    let mut bytes =
        std::fs::read(path).with_context(|| format!("read secret file {}", path.display()))?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use simgate::proto::radius::{decode_accounting_request, AcctStatusType};

    #[test]
    fn requests_decode_and_verify_with_simgates_codec() {
        let secret = b"0123456789abcdef";
        let (p, start) = request(3, 10, 7, secret).expect("request");
        assert!(start);
        let r = decode_accounting_request(&p, secret).expect("verifies");
        assert_eq!(r.identifier, 7);
        assert_eq!(r.status_type, AcctStatusType::Start);
        assert_eq!(r.framed_ip, Some(Ipv4Addr::new(10, 0, 0, 4)));
        assert_eq!(r.imsi.map(|i| i.as_str()), Some("001010000000003"));
        assert_eq!(r.session_id, Some(&b"3-0"[..]));
        // Its Stop shares the session id; the next Start has a new one.
        let (stop, start) = request(13, 10, 7, secret).expect("request");
        assert!(!start);
        let stop = decode_accounting_request(&stop, secret).expect("verifies");
        assert_eq!(stop.status_type, AcctStatusType::Stop);
        assert_eq!(stop.session_id, Some(&b"3-0"[..]));
        let (again, _) = request(23, 10, 7, secret).expect("request");
        let again = decode_accounting_request(&again, secret).expect("verifies");
        assert_eq!(again.session_id, Some(&b"3-1"[..]));
        assert_ne!(again.authenticator, r.authenticator);
    }

    #[test]
    fn expected_bindings_follow_the_start_stop_alternation() {
        assert_eq!(expected_bindings(0, 10), 0);
        assert_eq!(expected_bindings(7, 10), 7);
        assert_eq!(expected_bindings(10, 10), 10);
        assert_eq!(expected_bindings(13, 10), 7);
        assert_eq!(expected_bindings(20, 10), 0);
        assert_eq!(expected_bindings(25, 10), 5);
    }

    #[test]
    fn the_secret_is_not_in_debug_output() {
        let opts = RadiusOptions {
            target: "127.0.0.1:1813".parse().expect("addr"),
            secret: b"very-secret-value-1".to_vec(),
            rate: 1.0,
            duration: Duration::from_secs(1),
            sessions: 1,
            sockets: 1,
            timeout: Duration::from_secs(1),
        };
        assert!(!format!("{opts:?}").contains("very-secret"));
    }
}
