//! Per-shard pools of TLS connections to destinations, with warm-up, idle retirement and
//! jittered reconnect backoff.
//!
//! A shard owns one [`Pools`] (no locks: it lives in the shard's `RefCell`). Each destination of
//! the current plan gets a [`DestPool`] holding idle, already-handshaken connections; a request
//! takes one ([`Pools::take_idle`]), or connects a new one with [`connect`], and gives it back
//! with [`Pools::check_in`] when the exchange left it reusable. Reuse is keyed by the destination
//! of one plan generation: a reload builds fresh pools, and connections of an older generation are
//! closed when checked in (their settings or certificates may have changed). Periodic DNS
//! re-resolution is not a reload: [`Pools::set_addrs`] swaps the addresses new connects try
//! and keeps the pools (and their idle connections to the old addresses) as they are.
//!
//! What this module does not do: HTTP. It knows nothing of requests; `flows` decides whether an
//! exchange left a connection reusable and whether a retry is safe.
//!
//! Concurrency note: all of this runs on one shard thread. Between an `await` in [`connect`] and
//! the caller's next borrow of the pools, other tasks may have changed them — callers re-borrow
//! after every await and never hold a borrow across one.

pub mod driver;
pub mod http2;
pub mod link_registry;
pub mod mqtt_link;
mod transport;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use crate::policy::{DestinationId, DestinationPlan, Plan, PoolSettings};
use crate::reactor::{self, TcpStream};
use crate::tls::{TlsIoError, TlsStream};

/// A TLS connection to a destination over a reactor socket.
pub type UpstreamStream = TlsStream<TcpStream>;

/// Why an upstream connection could not be used. Every variant is the upstream's (or the
/// network's) fault, never the device's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    /// TCP connect failed (refused, unreachable, reset) for every resolved address.
    Connect(std::io::ErrorKind),
    /// TCP connect plus TLS handshake did not finish within `connect_timeout`.
    ConnectTimeout,
    /// The TLS handshake failed (certificate rejected, protocol error). The text names the
    /// reason and never carries key material.
    Tls(String),
    /// The destination failed recently and is inside its backoff window; no connect attempted.
    BackingOff {
        /// Consecutive failed connects so far.
        failures: u32,
        /// Why the last of them failed (the `Display` of its error), for the device's 502 and
        /// the logs: requests that waited on a connect that failed learn why.
        last: Option<String>,
    },
    /// simgate itself is out of a local resource (EMFILE/ENFILE: no file descriptor left;
    /// ENOBUFS/ENOMEM: no socket memory) and could not even open the socket. Nothing about the
    /// destination is known, so this is never recorded as its failure and never backs it off.
    LocalResources(std::io::ErrorKind),
}

impl UpstreamError {
    /// The error of a failed TCP connect: a local resource shortage (see
    /// [`UpstreamError::LocalResources`]) or a failure to reach the destination.
    pub fn from_connect_io(e: &std::io::Error) -> UpstreamError {
        if is_local_resource_error(e) {
            UpstreamError::LocalResources(e.kind())
        } else {
            UpstreamError::Connect(e.kind())
        }
    }

    /// True when the failure says nothing about the destination (a local shortage): it must
    /// not count as the destination's failure or put it into backoff.
    pub fn is_local(&self) -> bool {
        matches!(self, UpstreamError::LocalResources(_))
    }
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM: this process or host ran out of descriptors or socket
/// memory (std files these under "uncategorized" or "out of memory", which would otherwise be
/// blamed on the cloud).
pub fn is_local_resource_error(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(kind) => write!(f, "upstream connect failed: {kind}"),
            UpstreamError::ConnectTimeout => f.write_str("upstream connect timed out"),
            UpstreamError::Tls(why) => write!(f, "upstream TLS handshake failed: {why}"),
            UpstreamError::BackingOff { failures, last } => {
                write!(
                    f,
                    "upstream unreachable: backing off after {failures} failed connect(s)"
                )?;
                match last {
                    Some(last) => write!(f, "; last: {last}"),
                    None => Ok(()),
                }
            }
            UpstreamError::LocalResources(kind) => write!(
                f,
                "no local resources for an upstream connection ({kind}): \
                 simgate is out of file descriptors or socket memory"
            ),
        }
    }
}

impl std::error::Error for UpstreamError {}

/// A connection taken from (or made for) a pool.
///
/// It remembers the plan generation it was made for; [`Pools::check_in`] closes it if that is
/// not the pools' generation, so a connection built with an old plan's settings (CA, client
/// certificate, destination index) is never pooled under a new plan.
pub struct UpstreamConn {
    /// The TLS stream.
    pub stream: UpstreamStream,
    /// True when the connection served an earlier request (it came from the idle pool).
    pub reused: bool,
    /// Destination the connection belongs to.
    pub destination: DestinationId,
    generation: u64,
    connected_at: Instant,
}

impl UpstreamConn {
    /// A fresh (not reused) connection to `destination`, made for plan `generation`.
    pub fn new(
        stream: UpstreamStream,
        destination: DestinationId,
        generation: u64,
    ) -> UpstreamConn {
        UpstreamConn {
            stream,
            reused: false,
            destination,
            generation,
            connected_at: Instant::now(),
        }
    }
}

struct IdleConn {
    stream: UpstreamStream,
    since: Instant,
    connected_at: Instant,
}

impl IdleConn {
    /// Past `idle_timeout` since its last use, or past `max_age` since it was made.
    fn expired(&self, settings: &PoolSettings, now: Instant) -> bool {
        now.saturating_duration_since(self.since) >= settings.idle_timeout
            || now.saturating_duration_since(self.connected_at) >= settings.max_age
    }
}

/// What [`connect`] needs, copied out of the pool so no borrow is held across the connect.
#[derive(Clone)]
pub struct ConnectParams {
    addrs: Vec<SocketAddr>,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl ConnectParams {
    /// Parameters straight from a destination of a plan (shared TLS config, no per-shard
    /// session store): for connections that will not be pooled.
    pub fn for_destination(dest: &DestinationPlan) -> ConnectParams {
        ConnectParams {
            addrs: dest.addrs.clone(),
            server_name: dest.server_name.clone(),
            tls: dest.tls.clone(),
            timeout: dest.pool.connect_timeout,
        }
    }
}

/// An HTTP/2 connection that must not take new streams: dead (GOAWAY, closed), past
/// `max_age`, or idle past `idle_timeout`.
fn h2_expired(c: &http2::H2Conn, settings: &PoolSettings, now: Instant) -> bool {
    c.state.is_dead()
        || now.saturating_duration_since(c.state.connected_at()) >= settings.max_age
        || (c.state.in_flight() == 0
            && now.saturating_duration_since(c.state.last_used()) >= settings.idle_timeout)
}

impl DestPool {
    /// Connections that count as warm: idle HTTP/1.1 ones, HTTP/2 ones, connects under way.
    fn warm_have(&self) -> usize {
        self.idle.len() + self.h2.len() + self.warming
    }

    /// How many warm connections to keep: `warm`, but at most one while HTTP/2 serves (one
    /// connection carries every request).
    fn warm_target(&self) -> usize {
        if self.h2_mode {
            self.settings.warm.min(1)
        } else {
            self.settings.warm
        }
    }

    /// Latch [`DestPool::warmed`] once the ready connections (idle HTTP/1.1, HTTP/2) reach the
    /// warm target.
    fn note_warm(&mut self) {
        if self.idle.len() + self.h2.len() >= self.warm_target() {
            self.warmed = true;
        }
    }
}

/// The pool of one destination on one shard.
pub struct DestPool {
    idle: VecDeque<IdleConn>,
    params: ConnectParams,
    settings: PoolSettings,
    failures: u32,
    retry_at: Option<Instant>,
    /// Connects in progress for warm-up, so the warmer does not start more than needed.
    warming: usize,
    /// Connects in progress for requests that found no idle connection.
    connecting: usize,
    /// Requests waiting for a connection (racing a connect of their own or not).
    waiting: usize,
    /// Why the last failed connect failed, while failures are counted.
    last_failure: Option<String>,
    /// Shared HTTP/2 connections (the server selected `h2`): requests become streams on them.
    h2: Vec<http2::H2Conn>,
    /// The destination offers `h2` and its server has not answered a connect with
    /// `http/1.1`: requests go through the HTTP/2 connections, one connect at a time.
    h2_mode: bool,
    /// A connect for an HTTP/2 connection is under way (others wait for it).
    h2_connecting: bool,
    /// The SETTINGS_MAX_CONCURRENT_STREAMS the destination's server last announced on one of
    /// this shard's connections: what a new connection may open before its own SETTINGS
    /// arrive, and what the pool assumes of it until then.
    h2_announced_streams: Option<usize>,
    /// The pool has held its `warm` target of ready connections at least once since these
    /// pools were made (start or reload): what `/readyz` asks. Not cleared when traffic takes
    /// the idle connections, so readiness does not flap under load.
    warmed: bool,
}

/// At most this many HTTP/2 connections per destination per shard: another is opened only
/// when every one has as many streams in flight as its server's
/// SETTINGS_MAX_CONCURRENT_STREAMS allows; beyond it, streams queue in `h2`.
pub const MAX_H2_CONNS: usize = 4;

/// What [`Pools::take_h2`] found.
pub enum H2Take {
    /// A stream on this connection.
    Use(http2::H2Handle),
    /// None usable (none yet, all dead, or all full below [`MAX_H2_CONNS`]): connect one.
    Connect,
    /// The destination is not (or no longer) served over HTTP/2: use the HTTP/1.1 pool.
    Http1,
}

/// All pools of one shard for one plan generation.
pub struct Pools {
    generation: u64,
    dests: Vec<DestPool>,
    rng: XorShift,
}

impl Pools {
    /// Empty pools for every destination of `plan`. Each gets a per-shard copy of the
    /// destination's TLS config with its own session-resumption store.
    pub fn new(plan: &Plan, generation: u64, seed: u64) -> Pools {
        let dests = plan
            .destinations
            .iter()
            .map(|d| DestPool {
                idle: VecDeque::new(),
                params: ConnectParams {
                    addrs: d.addrs.clone(),
                    server_name: d.server_name.clone(),
                    tls: crate::tls::config::with_session_store(&d.tls, 256),
                    timeout: d.pool.connect_timeout,
                },
                settings: d.pool.clone(),
                failures: 0,
                retry_at: None,
                warming: 0,
                connecting: 0,
                waiting: 0,
                last_failure: None,
                h2: Vec::new(),
                h2_mode: d.tls.alpn_protocols.iter().any(|p| p == http2::ALPN_H2),
                h2_connecting: false,
                h2_announced_streams: None,
                warmed: d.pool.warm == 0,
            })
            .collect();
        Pools {
            generation,
            dests,
            rng: XorShift::new(seed),
        }
    }

    /// Plan generation these pools serve.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of destinations.
    pub fn len(&self) -> usize {
        self.dests.len()
    }

    /// True when there are no destinations.
    pub fn is_empty(&self) -> bool {
        self.dests.is_empty()
    }

    /// Idle connections across all destinations.
    pub fn idle_count(&self) -> usize {
        self.dests.iter().map(|d| d.idle.len()).sum()
    }

    /// The most recently used idle connection that is still alive, if any. Connections idle for
    /// longer than `idle_timeout`, made longer ago than `max_age`, or that the upstream has
    /// closed (EOF or data queued while idle), are dropped on the way.
    pub fn take_idle(&mut self, dest: DestinationId, now: Instant) -> Option<UpstreamConn> {
        let generation = self.generation;
        let pool = self.dests.get_mut(usize::from(dest.0))?;
        while let Some(mut idle) = pool.idle.pop_back() {
            if idle.expired(&pool.settings, now) {
                continue;
            }
            if !idle.stream.idle_check() {
                continue;
            }
            return Some(UpstreamConn {
                stream: idle.stream,
                reused: true,
                destination: dest,
                generation,
                connected_at: idle.connected_at,
            });
        }
        None
    }

    /// True if `dest` has fewer idle plus warming connections than its `warm` setting (the
    /// pool keeper has work to do).
    pub fn below_warm(&self, dest: DestinationId) -> bool {
        self.dests
            .get(usize::from(dest.0))
            .is_some_and(|p| p.warm_have() < p.warm_target())
    }

    /// A stream on a live HTTP/2 connection to `dest`, or what to do instead (see [`H2Take`]).
    /// Dead connections, and idle ones past `idle_timeout` or `max_age`, are dropped on the
    /// way. The least loaded connection with room under its server's stream limit is chosen.
    pub fn take_h2(&mut self, dest: DestinationId, now: Instant) -> H2Take {
        let Some(pool) = self.dests.get_mut(usize::from(dest.0)) else {
            return H2Take::Http1;
        };
        if !pool.h2_mode {
            return H2Take::Http1;
        }
        let settings = &pool.settings;
        pool.h2.retain(|c| !h2_expired(c, settings, now));
        if let Some(limit) = pool
            .h2
            .iter()
            .find_map(http2::H2Conn::announced_max_streams)
        {
            pool.h2_announced_streams = Some(limit);
        }
        // A connection whose SETTINGS have not arrived yet takes what the server announced
        // before, else the RFC's minimum: `h2` holds the streams beyond what it may open until
        // its SETTINGS arrive, so none is refused.
        let assumed = pool
            .h2_announced_streams
            .unwrap_or(http2::ASSUMED_MAX_STREAMS);
        let best = pool
            .h2
            .iter()
            .filter(|c| c.state.in_flight() < c.announced_max_streams().unwrap_or(assumed))
            .min_by_key(|c| c.state.in_flight());
        if let Some(conn) = best {
            return H2Take::Use(conn.stream_handle());
        }
        if pool.h2.len() < MAX_H2_CONNS {
            return H2Take::Connect;
        }
        // Every connection is at its server's limit: queue on the least loaded one.
        match pool.h2.iter().min_by_key(|c| c.state.in_flight()) {
            Some(conn) => {
                let mut handle = conn.stream_handle();
                handle.waiting_since = Some(now);
                H2Take::Use(handle)
            }
            None => H2Take::Connect,
        }
    }

    /// How many streams a new HTTP/2 connection to `dest` may open before its server's
    /// SETTINGS arrive: the limit the server announced on an earlier connection of this shard,
    /// else [`http2::UNANNOUNCED_OPEN_STREAMS`].
    pub fn h2_initial_streams(&self, dest: DestinationId) -> usize {
        self.dests
            .get(usize::from(dest.0))
            .and_then(|pool| pool.h2_announced_streams)
            .unwrap_or(http2::UNANNOUNCED_OPEN_STREAMS)
    }

    /// Pool a new HTTP/2 connection (of this generation; others are not pooled).
    pub fn add_h2(&mut self, conn: http2::H2Conn) {
        if conn.generation != self.generation {
            return;
        }
        if let Some(pool) = self.dests.get_mut(usize::from(conn.destination.0)) {
            pool.h2.push(conn);
            pool.note_warm();
        }
    }

    /// Destinations whose pool has not yet held its `warm` connections since these pools were
    /// made (see [`DestPool::warmed`]).
    pub fn not_warmed(&self) -> Vec<DestinationId> {
        (0..self.dests.len())
            .filter(|&i| !self.dests[i].warmed)
            .filter_map(|i| u16::try_from(i).ok().map(DestinationId))
            .collect()
    }

    /// The server of `dest` answered with HTTP/1.1: serve it from the HTTP/1.1 pool from now on
    /// (until a reload).
    pub fn set_http1_only(&mut self, dest: DestinationId) {
        if let Some(pool) = self.dests.get_mut(usize::from(dest.0)) {
            pool.h2_mode = false;
        }
    }

    /// Claim the one HTTP/2 connect of `dest`: false if one is already under way (a warm-up
    /// connect counts while no HTTP/2 connection exists yet).
    pub fn try_start_h2_connect(&mut self, dest: DestinationId) -> bool {
        match self.dests.get_mut(usize::from(dest.0)) {
            Some(pool) if pool.h2_connecting || (pool.warming > 0 && pool.h2.is_empty()) => false,
            Some(pool) => {
                pool.h2_connecting = true;
                true
            }
            None => true,
        }
    }

    /// The HTTP/2 connect claimed with [`Pools::try_start_h2_connect`] ended.
    pub fn h2_connect_done(&mut self, dest: DestinationId) {
        if let Some(pool) = self.dests.get_mut(usize::from(dest.0)) {
            pool.h2_connecting = false;
        }
    }

    /// Pooled HTTP/2 connections across all destinations.
    pub fn h2_count(&self) -> usize {
        self.dests.iter().map(|d| d.h2.len()).sum()
    }

    /// Parameters for a new connection to `dest`, or `BackingOff` while the destination is
    /// inside its backoff window. A destination these pools do not know (it belongs to another
    /// plan) gets its own parameters without backoff or session store.
    pub fn connect_params(
        &self,
        dest: &DestinationPlan,
        now: Instant,
    ) -> Result<ConnectParams, UpstreamError> {
        let Some(pool) = self.dests.get(usize::from(dest.id.0)) else {
            return Ok(ConnectParams::for_destination(dest));
        };
        match pool.retry_at {
            Some(at) if now < at => Err(UpstreamError::BackingOff {
                failures: pool.failures,
                last: pool.last_failure.clone(),
            }),
            _ => Ok(pool.params.clone()),
        }
    }

    /// New addresses for `dest` (periodic re-resolution): new connects try them in order.
    /// Idle connections to the old addresses stay and serve until they close or idle out. The
    /// backoff is cleared only if none of the old addresses remains (the failures it counts
    /// were against other hosts); a rotating subset of the same hosts, as load-balanced names
    /// answer, keeps it, so an outage is not retried by every shard at each resolution.
    /// Empty lists are ignored: a destination never loses its last good addresses.
    pub fn set_addrs(&mut self, dest: DestinationId, addrs: Vec<SocketAddr>) {
        let Some(pool) = self.dests.get_mut(usize::from(dest.0)) else {
            return;
        };
        if addrs.is_empty() {
            return;
        }
        let all_new = !addrs.iter().any(|a| pool.params.addrs.contains(a));
        pool.params.addrs = addrs;
        if all_new {
            pool.failures = 0;
            pool.retry_at = None;
        }
    }

    /// The addresses new connects to `dest` try, in order.
    pub fn addrs(&self, dest: DestinationId) -> Option<&[SocketAddr]> {
        self.dests
            .get(usize::from(dest.0))
            .map(|p| p.params.addrs.as_slice())
    }

    /// Record the outcome of a connect (`failure`: None when it succeeded): success clears the
    /// backoff; failure doubles it (full jitter between half and all of
    /// `min(backoff_max, backoff_initial * 2^(failures-1))`) and is remembered as the reason
    /// given while backing off.
    pub fn record_connect(
        &mut self,
        dest: DestinationId,
        failure: Option<&UpstreamError>,
        now: Instant,
    ) {
        let Some(pool) = self.dests.get_mut(usize::from(dest.0)) else {
            return;
        };
        let Some(failure) = failure else {
            pool.failures = 0;
            pool.retry_at = None;
            pool.last_failure = None;
            return;
        };
        pool.last_failure = Some(failure.to_string());
        pool.failures = pool.failures.saturating_add(1);
        let exp = pool.failures.saturating_sub(1).min(20);
        let base = pool
            .settings
            .backoff_initial
            .saturating_mul(1u32 << exp)
            .min(pool.settings.backoff_max);
        let jittered = base.mul_f64(0.5 + 0.5 * self.rng.next_unit());
        pool.retry_at = Some(now + jittered);
    }

    /// Give a connection back after an exchange that left it reusable. Connections of an older
    /// plan generation, older than `max_age`, or beyond `max_idle`, are closed instead.
    pub fn check_in(&mut self, conn: UpstreamConn, now: Instant) {
        // An HTTP/2 connection is shared, not checked out (see `ShardUpstreams::adopt`).
        if conn.generation != self.generation || http2::negotiated_h2(&conn) {
            return;
        }
        let Some(pool) = self.dests.get_mut(usize::from(conn.destination.0)) else {
            return;
        };
        if pool.idle.len() >= pool.settings.max_idle
            || now.saturating_duration_since(conn.connected_at) >= pool.settings.max_age
        {
            return;
        }
        pool.idle.push_back(IdleConn {
            stream: conn.stream,
            since: now,
            connected_at: conn.connected_at,
        });
        pool.note_warm();
    }

    /// Close idle connections past their destination's `idle_timeout` or `max_age`. An HTTP/2
    /// connection past `max_age` leaves the pool even with streams in flight: they finish, and
    /// the connection closes when the last handle to it drops.
    pub fn retire_idle(&mut self, now: Instant) {
        for pool in &mut self.dests {
            let settings = &pool.settings;
            pool.idle.retain(|c| !c.expired(settings, now));
            pool.h2.retain(|c| !h2_expired(c, settings, now));
        }
    }

    /// How many warm connections `dest` is short of (counting connects already under way), and
    /// reserve that many. The caller reports each reserved connect's end with
    /// [`Pools::warm_done`].
    pub fn reserve_warm(&mut self, dest: DestinationId, now: Instant) -> usize {
        let Some(pool) = self.dests.get_mut(usize::from(dest.0)) else {
            return 0;
        };
        if pool.retry_at.is_some_and(|at| now < at) {
            return 0;
        }
        let short = pool.warm_target().saturating_sub(pool.warm_have());
        pool.warming += short;
        short
    }

    /// Reserve a connect to `dest` for a waiting request (registered with
    /// [`Pools::add_waiter`]) if the connects under way (warm-up included) do not already cover
    /// every waiting request, and `max_connecting` (0: no limit) allows one more; false if the
    /// request should wait for a connection to come back or a connect to end instead.
    /// Release with [`Pools::connect_done`]. Destinations these pools do not know always get
    /// one.
    ///
    /// This is what keeps a burst from becoming a handshake storm: while returned connections
    /// serve the waiting requests, connects in flight already outnumber them and no new one
    /// starts; a burst that outruns the returns still gets a connect per uncovered request.
    pub fn try_reserve_connect(&mut self, dest: DestinationId) -> bool {
        let Some(pool) = self.dests.get_mut(usize::from(dest.0)) else {
            return true;
        };
        let under_way = pool.connecting + pool.warming;
        if under_way >= pool.waiting {
            return false;
        }
        let limit = pool.settings.max_connecting;
        if limit != 0 && under_way >= limit {
            return false;
        }
        pool.connecting += 1;
        true
    }

    /// A request found no idle connection to `dest` and waits for one; undo with
    /// [`Pools::remove_waiter`] however the wait ends.
    pub fn add_waiter(&mut self, dest: DestinationId) {
        if let Some(pool) = self.dests.get_mut(usize::from(dest.0)) {
            pool.waiting += 1;
        }
    }

    /// A request registered with [`Pools::add_waiter`] stopped waiting.
    pub fn remove_waiter(&mut self, dest: DestinationId) {
        if let Some(pool) = self.dests.get_mut(usize::from(dest.0)) {
            pool.waiting = pool.waiting.saturating_sub(1);
        }
    }

    /// A connect reserved with [`Pools::try_reserve_connect`] ended.
    pub fn connect_done(&mut self, dest: DestinationId) {
        if let Some(pool) = self.dests.get_mut(usize::from(dest.0)) {
            pool.connecting = pool.connecting.saturating_sub(1);
        }
    }

    /// A reserved warm-up connect ended.
    pub fn warm_done(&mut self, dest: DestinationId) {
        if let Some(pool) = self.dests.get_mut(usize::from(dest.0)) {
            pool.warming = pool.warming.saturating_sub(1);
        }
    }
}

/// How long the stages of a successful connect took (of the address that answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectTimes {
    /// TCP connect submitted → connected.
    pub tcp: Duration,
    /// TCP connected → TLS handshake done.
    pub tls: Duration,
}

/// Connect to the first reachable address and complete the TLS handshake, all within the
/// destination's connect timeout. Nothing of any request is sent.
pub async fn connect(
    params: ConnectParams,
) -> Result<(UpstreamStream, ConnectTimes), UpstreamError> {
    let deadline = reactor::now() + params.timeout;
    let mut last = UpstreamError::Connect(std::io::ErrorKind::NotFound);
    for (i, addr) in params.addrs.iter().enumerate() {
        // Each remaining address gets an equal share of the time left, so one address that
        // silently drops packets cannot use up the whole budget.
        let left = deadline.saturating_duration_since(reactor::now());
        let remaining = (params.addrs.len() - i) as u32;
        let attempt = async {
            let started = reactor::now();
            let tcp = TcpStream::connect(*addr)
                .await
                .map_err(|e| UpstreamError::from_connect_io(&e))?;
            let connected = reactor::now();
            let tls = TlsStream::connect(tcp, params.tls.clone(), params.server_name.clone())
                .await
                .map_err(|e| match e {
                    TlsIoError::Io { kind, .. } => UpstreamError::Connect(kind),
                    other => UpstreamError::Tls(other.to_string()),
                })?;
            let times = ConnectTimes {
                tcp: connected.saturating_duration_since(started),
                tls: reactor::now().saturating_duration_since(connected),
            };
            Ok((tls, times))
        };
        match reactor::timeout(left / remaining.max(1), attempt).await {
            Ok(Ok(stream)) => return Ok(stream),
            // A certificate problem will not differ on the next address of the same name.
            Ok(Err(e @ UpstreamError::Tls(_))) => return Err(e),
            // Out of descriptors here: the next address would fail the same way.
            Ok(Err(e @ UpstreamError::LocalResources(_))) => return Err(e),
            Ok(Err(e)) => last = e,
            Err(_) => last = UpstreamError::ConnectTimeout,
        }
    }
    Err(last)
}

/// Tiny xorshift64* generator for backoff jitter: not for anything secret.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed | 1)
    }

    /// Uniform in [0, 1).
    fn next_unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OneName;

    impl crate::config::TestEnvironment for OneName {
        fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
            match host {
                "cloud.test" => Ok(vec![SocketAddr::from(([192, 0, 2, 1], port))]),
                _ => Err("Name or service not known".into()),
            }
        }
        fn system_roots(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
            Vec::new()
        }
        fn available_cpus(&self) -> Option<usize> {
            Some(1)
        }
        fn open_files_limit(&self) -> Option<u64> {
            Some(1024)
        }
    }

    fn plan() -> Plan {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["cloud.test".to_owned()]).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).unwrap();
        let text = r#"
[[listener]]
name = "http"
protocol = "http"
bind = "127.0.0.1:0"
[[destination]]
name = "cloud"
adapter = "https"
endpoint = "cloud.test:443"
ca = "ca.pem"
[[group]]
name = "default"
routes = [ { listener = "http", path = "/", destination = "cloud" } ]
"#;
        crate::config::compile_for_tests(text, dir.path(), &OneName)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn new_addresses_replace_the_connect_list_clear_backoff_if_all_new_and_never_empty_it() {
        let plan = plan();
        let dest = &plan.destinations[0];
        let mut pools = Pools::new(&plan, 0, 7);
        let now = Instant::now();
        assert_eq!(pools.addrs(dest.id), Some(&dest.addrs[..]));
        pools.record_connect(dest.id, Some(&UpstreamError::ConnectTimeout), now);
        assert!(matches!(
            pools.connect_params(dest, now),
            Err(UpstreamError::BackingOff { failures: 1, .. })
        ));

        let new: Vec<SocketAddr> = vec!["192.0.2.7:443".parse().unwrap()];
        pools.set_addrs(dest.id, new.clone());
        assert_eq!(pools.addrs(dest.id), Some(&new[..]));
        let params = pools
            .connect_params(dest, now)
            .expect("the backoff against the old addresses is cleared");
        assert_eq!(params.addrs, new);
        assert_eq!(pools.generation(), 0, "no new generation: pools stay warm");

        // A new answer that still contains a failing address keeps the backoff.
        pools.record_connect(dest.id, Some(&UpstreamError::ConnectTimeout), now);
        let rotated: Vec<SocketAddr> = vec![
            "192.0.2.8:443".parse().unwrap(),
            "192.0.2.7:443".parse().unwrap(),
        ];
        pools.set_addrs(dest.id, rotated.clone());
        assert_eq!(pools.addrs(dest.id), Some(&rotated[..]));
        assert_eq!(
            pools.connect_params(dest, now).err(),
            Some(UpstreamError::BackingOff {
                failures: 1,
                last: Some("upstream connect timed out".into()),
            }),
            "backing off, with the reason of the failure that started it"
        );
        let new = vec!["192.0.2.9:443".parse().unwrap()];
        pools.set_addrs(dest.id, new.clone());
        assert!(
            pools.connect_params(dest, now).is_ok(),
            "all-new hosts: cleared"
        );

        pools.set_addrs(dest.id, Vec::new());
        assert_eq!(
            pools.addrs(dest.id),
            Some(&new[..]),
            "empty lists are ignored"
        );
        assert_eq!(
            dest.addrs,
            vec!["192.0.2.1:443".parse().unwrap()],
            "the plan is untouched"
        );
    }

    #[test]
    fn jitter_source_stays_in_unit_interval() {
        let mut r = XorShift::new(42);
        for _ in 0..10_000 {
            let v = r.next_unit();
            assert!((0.0..1.0).contains(&v));
        }
    }
}
