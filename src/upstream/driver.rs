//! The shard-local upstream handle: the plan a shard serves (with its generation, which tells
//! pools apart across reloads), that plan's connection pools, and the driver around them —
//! checkout with its connect policy (`max_connecting`, racing a connect against a returned
//! connection), new connects with backoff bookkeeping, check-in, and the pool keeper task.
//! Flows reach upstream connections only through [`ShardUpstreams`]; the aggregate-mode MQTT
//! links ([`super::link_registry`], kept beside it in the shard's state) connect through it too.
//!
//! Shard-local: `Cell`/`RefCell`, no locks, no atomics; time is the reactor's cached clock.
//!
//! What this module does not do: the pool bookkeeping itself ([`super::Pools`], pure, time
//! passed in), TLS ([`crate::tls`]), or deciding routes ([`crate::policy`]).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::http2::{self, H2Handle};
use super::{connect, ConnectParams, H2Take, Pools, UpstreamConn, UpstreamError};
use crate::policy::{DestinationId, DestinationPlan, Plan};
use crate::reactor::{self, select2, Broadcast, Either, Signal};
pub use crate::stats::UpstreamCounters;
use crate::stats::{DestinationCounters, DestinationLatencies, Latency, Protocol};

/// A connection for one HTTP request: an HTTP/1.1 connection of its own, or a stream on a
/// shared HTTP/2 connection (the destination offers `h2` and its server selected it).
// Returned and destructured at once; boxing the HTTP/1.1 connection would cost an allocation
// per request on the path that has none today.
#[allow(clippy::large_enum_variant)]
pub enum HttpConn {
    /// Exclusive until checked in again.
    Http1(UpstreamConn),
    /// A stream slot on a shared connection; the connection stays in the pool.
    Http2(H2Handle),
}

/// The HTTP/2 connect of one destination (see [`Pools::try_start_h2_connect`]); released and
/// waiters told when dropped, however the connect ended.
struct H2ConnectClaim<'a> {
    state: &'a ShardUpstreams,
    generation: u64,
    dest: DestinationId,
}

impl Drop for H2ConnectClaim<'_> {
    fn drop(&mut self) {
        {
            let mut pools = self.state.pools.borrow_mut();
            if pools.generation() == self.generation {
                pools.h2_connect_done(self.dest);
            }
        }
        self.state.pool_waiters.notify_all();
    }
}

/// The plan a shard serves and its upstream connections. Lives in an `Rc` on the shard thread.
pub struct ShardUpstreams {
    /// Index of the shard (for logs and jitter seeds).
    shard: usize,
    plan: RefCell<Arc<Plan>>,
    generation: Cell<u64>,
    pools: RefCell<Pools>,
    counters: RefCell<UpstreamCounters>,
    /// Connect and handshake times by destination (`simgate_upstream_connect_seconds`).
    latency: Rc<RefCell<DestinationLatencies>>,
    /// Pool checkouts and connects by destination (`simgate_destination_pool_checkouts_total`,
    /// `simgate_destination_connects_total`).
    destinations: RefCell<DestinationCounters>,
    /// A warm connection was taken and left its pool below `warm`: the pool keeper tops it up
    /// now rather than at its next once-a-second round, so a burst of device connects keeps
    /// finding warm ones.
    pool_taken: Signal,
    /// Requests waiting for a connection to come back to a pool, or for a connect to end (so
    /// that they may start one): woken on every check-in and every connect's end.
    pool_waiters: Broadcast,
}

/// A request connect counted against `max_connecting`; released (and the waiters told) when
/// dropped, whether the connect ended or the request was abandoned. Owned, because a connect
/// its request no longer needs finishes in a task of its own.
struct ConnectSlot {
    state: Rc<ShardUpstreams>,
    generation: u64,
    dest: DestinationId,
}

impl Drop for ConnectSlot {
    fn drop(&mut self) {
        {
            let mut pools = self.state.pools.borrow_mut();
            if pools.generation() == self.generation {
                pools.connect_done(self.dest);
            }
        }
        self.state.pool_waiters.notify_all();
    }
}

/// A request counted as waiting for a connection to one destination (see
/// [`Pools::add_waiter`]); uncounted when dropped, unless the pools were replaced meanwhile.
struct PoolWaiter<'a> {
    state: &'a ShardUpstreams,
    generation: u64,
    dest: DestinationId,
}

impl Drop for PoolWaiter<'_> {
    fn drop(&mut self) {
        let mut pools = self.state.pools.borrow_mut();
        if pools.generation() == self.generation {
            pools.remove_waiter(self.dest);
        }
    }
}

impl ShardUpstreams {
    /// The upstream side of shard `shard`, serving `plan` (generation 0).
    pub fn new(shard: usize, plan: Arc<Plan>) -> ShardUpstreams {
        ShardUpstreams {
            shard,
            pools: RefCell::new(Pools::new(&plan, 0, seed_for(shard))),
            latency: Rc::new(RefCell::new(latency_for(&plan))),
            destinations: RefCell::new(counters_for(&plan)),
            plan: RefCell::new(plan),
            generation: Cell::new(0),
            counters: RefCell::default(),
            pool_taken: Signal::default(),
            pool_waiters: Broadcast::default(),
        }
    }

    /// Index of the shard this handle belongs to.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// The plan to serve the next request from.
    pub fn plan(&self) -> Arc<Plan> {
        self.plan.borrow().clone()
    }

    /// The generation of the plan served (no reference count touched: cheap per message).
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// The plan to serve the next request from, with its generation (which tells pools apart
    /// across reloads).
    pub fn current(&self) -> (Arc<Plan>, u64) {
        (self.plan.borrow().clone(), self.generation.get())
    }

    /// Serve `plan` from now on: new (empty) pools under a new generation. Requests waiting on
    /// the old pools go on with the plan they started with.
    pub fn replace_plan(&self, plan: Arc<Plan>) {
        let generation = self.generation.get() + 1;
        self.generation.set(generation);
        *self.pools.borrow_mut() = Pools::new(&plan, generation, seed_for(self.shard));
        self.latency
            .borrow_mut()
            .set_destinations(plan.destinations.iter().map(|d| d.name.as_str()));
        self.destinations
            .borrow_mut()
            .set_destinations(plan.destinations.iter().map(|d| d.name.as_str()));
        *self.plan.borrow_mut() = plan;
        self.pool_waiters.notify_all();
    }

    /// New addresses for `destination` of `plan`: used by new connects if `plan` is still the
    /// one served (a reload resolved afresh otherwise). Pooled connections stay.
    pub fn set_addrs(&self, plan: &Arc<Plan>, destination: DestinationId, addrs: Vec<SocketAddr>) {
        if Arc::ptr_eq(plan, &self.plan.borrow()) {
            self.pools.borrow_mut().set_addrs(destination, addrs);
        }
    }

    /// Idle pooled connections now.
    pub fn idle_count(&self) -> usize {
        self.pools.borrow().idle_count()
    }

    /// Destinations whose pool has not held its `warm` connections yet under the current plan.
    pub fn not_warmed(&self) -> Vec<crate::policy::DestinationId> {
        self.pools.borrow().not_warmed()
    }

    /// This shard's connect counters.
    pub fn counters(&self) -> UpstreamCounters {
        *self.counters.borrow()
    }

    /// This shard's pool checkout and connect counters, by destination.
    pub fn destination_counters(&self) -> DestinationCounters {
        self.destinations.borrow().clone()
    }

    /// This shard's upstream latency histograms (connect and handshake times, pool waits,
    /// aggregate links' round trips and waits), by destination.
    pub fn connect_latency(&self) -> DestinationLatencies {
        self.latency.borrow().clone()
    }

    /// The histograms behind [`Self::connect_latency`], for aggregate links to record into
    /// (borrowed only for one sample at a time).
    pub fn latency_histograms(&self) -> Rc<RefCell<DestinationLatencies>> {
        self.latency.clone()
    }

    /// A connection to `dest` of the plan of `generation`: a live idle one from the pool if
    /// that plan is still current, else a new one. A request that finds none connects only if
    /// the connects under way (warm-ups included) do not already cover every waiting request
    /// and fewer than `max_connecting` (if set) are under way; otherwise it waits (up to
    /// `connect_timeout`) for a connection to come back or a connect to end. One that connects
    /// also takes a returned connection if that comes first.
    ///
    /// A checkout that found no idle connection at once is timed, from that miss to a
    /// connection in hand (its own connect, or a returned one), as `pool_wait`, and counted
    /// as a miss of `dest`'s pool; one served at once, as a hit.
    pub async fn checkout(
        self: &Rc<Self>,
        generation: u64,
        dest: &DestinationPlan,
    ) -> Result<UpstreamConn, UpstreamError> {
        let started = reactor::now();
        let mut waited = false;
        let result = self.checkout_inner(generation, dest, &mut waited).await;
        if waited || result.is_ok() {
            let mut counters = self.destinations.borrow_mut();
            if let Some(d) = counters.slot(usize::from(dest.id.0), &dest.name) {
                if waited {
                    d.pool_misses += 1;
                } else {
                    d.pool_hits += 1;
                }
            }
        }
        if waited && result.is_ok() {
            self.record_pool_wait(dest, started);
        }
        result
    }

    /// [`Self::checkout`]; sets `waited` when the pool had no idle connection at first.
    async fn checkout_inner(
        self: &Rc<Self>,
        generation: u64,
        dest: &DestinationPlan,
        waited: &mut bool,
    ) -> Result<UpstreamConn, UpstreamError> {
        let give_up = reactor::now() + dest.pool.connect_timeout;
        // Registered as waiting on the first miss, until this returns (see try_reserve_connect).
        let mut waiter: Option<PoolWaiter<'_>> = None;
        loop {
            if generation != self.generation.get() {
                return self.connect_new(generation, dest).await;
            }
            let (idle, refill, slot) = {
                let mut pools = self.pools.borrow_mut();
                let idle = pools.take_idle(dest.id, reactor::now());
                // Wake the pool keeper only when there is warming to do, not on every request
                // served from a pool with no `warm` setting.
                let refill = idle.is_some() && pools.below_warm(dest.id);
                if idle.is_none() && waiter.is_none() {
                    pools.add_waiter(dest.id);
                    waiter = Some(PoolWaiter {
                        state: self,
                        generation,
                        dest: dest.id,
                    });
                }
                let slot = idle.is_none() && pools.try_reserve_connect(dest.id);
                (idle, refill, slot)
            };
            if refill {
                self.pool_taken.notify();
            }
            if let Some(conn) = idle {
                return Ok(conn);
            }
            *waited = true;
            if slot {
                let slot = ConnectSlot {
                    state: Rc::clone(self),
                    generation,
                    dest: dest.id,
                };
                // The generation is current (checked above, no await since): so is this plan.
                let plan = self.plan();
                let index = usize::from(dest.id.0);
                let state = Rc::clone(self);
                let mut connect = Box::pin(async move {
                    let _slot = slot;
                    state
                        .connect_new(generation, &plan.destinations[index])
                        .await
                });
                // Whichever comes first: this request's own connect, or a connection another
                // request returns (or the pool keeper warms) meanwhile. An overtaken connect is
                // not abandoned: it finishes in a task of its own and its connection joins the
                // pool, so a burst is served by returned connections as far as they reach
                // while the pool still grows by the connects it started.
                return match select2(connect.as_mut(), self.next_idle(generation, dest.id)).await {
                    Either::Left(result) => result,
                    Either::Right(conn) => {
                        self.counters.borrow_mut().connects_overtaken += 1;
                        let state = Rc::clone(self);
                        reactor::spawn(async move {
                            if let Ok(conn) = connect.await {
                                state.pool_fresh(conn).await;
                            }
                        })
                        .detach();
                        Ok(conn)
                    }
                };
            }
            if reactor::timeout_at(give_up, self.pool_waiters.changed())
                .await
                .is_err()
            {
                return Err(UpstreamError::ConnectTimeout);
            }
        }
    }

    /// The next idle connection to `dest` that appears in the pool (returned by a request or
    /// warmed by the pool keeper), while the plan of `generation` is current.
    async fn next_idle(&self, generation: u64, dest: DestinationId) -> UpstreamConn {
        loop {
            self.pool_waiters.changed().await;
            if generation != self.generation.get() {
                // The pools were replaced: only the connect of the caller can still serve it.
                std::future::pending::<()>().await;
            }
            if let Some(conn) = self.pools.borrow_mut().take_idle(dest, reactor::now()) {
                return conn;
            }
        }
    }

    /// A new connection to `dest` (never an idle one) of the plan of `generation`, honouring
    /// the destination's backoff while that plan is current. If a reload happens during the
    /// connect, the connection still serves its request but is never pooled.
    pub async fn connect_new(
        &self,
        generation: u64,
        dest: &DestinationPlan,
    ) -> Result<UpstreamConn, UpstreamError> {
        let params = if generation == self.generation.get() {
            self.pools.borrow().connect_params(dest, reactor::now())?
        } else {
            ConnectParams::for_destination(dest)
        };
        let result = connect(params).await;
        let mut pools = self.pools.borrow_mut();
        let mut counters = self.counters.borrow_mut();
        let still_current = pools.generation() == generation;
        match result {
            Ok((stream, times)) => {
                counters.connects += 1;
                self.count_connect(dest, true);
                let tls = if stream.was_resumed() {
                    counters.tls_resumed += 1;
                    Latency::ConnectTlsResumed
                } else {
                    Latency::ConnectTlsFull
                };
                let index = usize::from(dest.id.0);
                let mut latency = self.latency.borrow_mut();
                // Counted under the HTTP protocol slot: a connection's protocol is the
                // destination's, and /metrics shows connects without a protocol label.
                let us = |d: Duration| d.as_micros() as u64;
                latency.record(
                    index,
                    &dest.name,
                    Latency::ConnectTcp,
                    Protocol::Http,
                    us(times.tcp),
                );
                latency.record(index, &dest.name, tls, Protocol::Http, us(times.tls));
                if still_current {
                    pools.record_connect(dest.id, None, reactor::now());
                }
                Ok(UpstreamConn::new(stream, dest.id, generation))
            }
            // Out of descriptors here says nothing about the destination: no backoff, not its
            // failure.
            Err(e) if e.is_local() => {
                counters.connects_local_failures += 1;
                Err(e)
            }
            Err(e) => {
                counters.connect_failures += 1;
                self.count_connect(dest, false);
                if still_current {
                    pools.record_connect(dest.id, Some(&e), reactor::now());
                }
                Err(e)
            }
        }
    }

    /// Count a reconnect of `dest`'s aggregate-mode link (an upstream session established
    /// again after one was lost).
    pub fn count_reconnect(&self, dest: &DestinationPlan) {
        let mut counters = self.destinations.borrow_mut();
        if let Some(d) = counters.slot(usize::from(dest.id.0), &dest.name) {
            d.reconnects += 1;
        }
    }

    /// Count a connect to `dest` that succeeded (`ok`) or failed.
    fn count_connect(&self, dest: &DestinationPlan, ok: bool) {
        let mut counters = self.destinations.borrow_mut();
        if let Some(d) = counters.slot(usize::from(dest.id.0), &dest.name) {
            if ok {
                d.connects_ok += 1;
            } else {
                d.connects_failed += 1;
            }
        }
    }

    /// A connection for one HTTP request to `dest` of the plan of `generation`. For a
    /// destination that offers `h2`: a stream on a pooled HTTP/2 connection, else one connect
    /// for the whole shard while other requests wait for it (up to `connect_timeout`); once the
    /// server answers a connect with `http/1.1`, and for every other destination, exactly
    /// [`ShardUpstreams::checkout`].
    ///
    /// `pool_wait` for HTTP/2: a request that found no usable connection is timed from that
    /// miss to a stream handle in hand (recorded here); one that got a handle only by queueing
    /// on a connection at its stream limit carries [`H2Handle::waiting_since`] (from its first
    /// miss), and whoever opens the stream records the wait.
    pub async fn checkout_http(
        self: &Rc<Self>,
        generation: u64,
        dest: &DestinationPlan,
    ) -> Result<HttpConn, UpstreamError> {
        let started = reactor::now();
        let mut waited = false;
        let result = self
            .checkout_http_inner(generation, dest, &mut waited)
            .await;
        match result {
            Ok(HttpConn::Http2(mut handle)) if waited => {
                if handle.waiting_since.is_some() {
                    handle.waiting_since = Some(started);
                } else {
                    self.record_pool_wait(dest, started);
                }
                Ok(HttpConn::Http2(handle))
            }
            other => other,
        }
    }

    /// [`Self::checkout_http`]; sets `waited` when there was no HTTP/2 connection to take a
    /// stream on at first (the HTTP/1.1 pool's misses are [`Self::checkout`]'s).
    async fn checkout_http_inner(
        self: &Rc<Self>,
        generation: u64,
        dest: &DestinationPlan,
        waited: &mut bool,
    ) -> Result<HttpConn, UpstreamError> {
        let give_up = reactor::now() + dest.pool.connect_timeout;
        loop {
            if generation != self.generation.get() {
                // An older plan: a connection of its own, never pooled.
                let conn = self.connect_new(generation, dest).await?;
                return self.adopt(conn).await;
            }
            let (take, claimed) = {
                let mut pools = self.pools.borrow_mut();
                let take = pools.take_h2(dest.id, reactor::now());
                let claimed =
                    matches!(take, H2Take::Connect) && pools.try_start_h2_connect(dest.id);
                (take, claimed)
            };
            match take {
                H2Take::Use(handle) => return Ok(HttpConn::Http2(handle)),
                H2Take::Http1 => return self.checkout(generation, dest).await.map(HttpConn::Http1),
                H2Take::Connect if claimed => {
                    *waited = true;
                    let _claim = H2ConnectClaim {
                        state: self,
                        generation,
                        dest: dest.id,
                    };
                    let conn = self.connect_new(generation, dest).await?;
                    return self.adopt(conn).await;
                }
                H2Take::Connect => {
                    *waited = true;
                    if reactor::timeout_at(give_up, self.pool_waiters.changed())
                        .await
                        .is_err()
                    {
                        return Err(UpstreamError::ConnectTimeout);
                    }
                }
            }
        }
    }

    /// A new connection to `dest` for a retry ([`ShardUpstreams::connect_new`]), as an
    /// [`HttpConn`]: an HTTP/2 one joins the pool and serves the request as a stream.
    pub async fn connect_new_http(
        self: &Rc<Self>,
        generation: u64,
        dest: &DestinationPlan,
    ) -> Result<HttpConn, UpstreamError> {
        let conn = self.connect_new(generation, dest).await?;
        self.adopt(conn).await
    }

    /// A fresh connection as an [`HttpConn`]: if its server selected `h2`, start HTTP/2 on it,
    /// pool it (when its plan is current) and take a stream; otherwise note that the server
    /// speaks HTTP/1.1 and hand the connection back.
    async fn adopt(self: &Rc<Self>, conn: UpstreamConn) -> Result<HttpConn, UpstreamError> {
        let dest = conn.destination;
        let generation = conn.generation;
        if !http2::negotiated_h2(&conn) {
            if generation == self.generation.get() {
                self.pools.borrow_mut().set_http1_only(dest);
            }
            return Ok(HttpConn::Http1(conn));
        }
        let waiters = Rc::clone(self);
        let initial_streams = if generation == self.generation.get() {
            self.pools.borrow().h2_initial_streams(dest)
        } else {
            http2::UNANNOUNCED_OPEN_STREAMS
        };
        let h2 = http2::start(conn, initial_streams, move || {
            waiters.pool_waiters.notify_all()
        })
        .await?;
        self.counters.borrow_mut().h2_connections += 1;
        let handle = h2.stream_handle();
        self.pools.borrow_mut().add_h2(h2);
        self.pool_waiters.notify_all();
        Ok(HttpConn::Http2(handle))
    }

    /// Record a pool wait of `dest` that began at `started` and ends now (`pool_wait`).
    fn record_pool_wait(&self, dest: &DestinationPlan, started: Instant) {
        let us = reactor::now()
            .saturating_duration_since(started)
            .as_micros() as u64;
        self.latency.borrow_mut().record(
            usize::from(dest.id.0),
            &dest.name,
            Latency::PoolWait,
            Protocol::Http,
            us,
        );
    }

    /// HTTP/2 connections pooled now.
    pub fn h2_count(&self) -> usize {
        self.pools.borrow().h2_count()
    }

    /// Pool a connection nobody waits for (a warm-up, an overtaken connect): HTTP/1.1 ones
    /// are checked in, HTTP/2 ones started and added to the shared connections.
    async fn pool_fresh(self: &Rc<Self>, conn: UpstreamConn) {
        if http2::negotiated_h2(&conn) {
            // The stream handle taken by `adopt` drops at once: the connection stays pooled.
            if let Err(e) = self.adopt(conn).await {
                tracing::debug!(shard = self.shard, error = %e, "HTTP/2 start failed");
            }
        } else {
            self.check_in(conn);
        }
    }

    /// Return a connection whose exchange completed cleanly (and tell waiting requests).
    pub fn check_in(&self, conn: UpstreamConn) {
        self.pools.borrow_mut().check_in(conn, reactor::now());
        self.pool_waiters.notify_all();
    }
}

/// The pool keeper of a shard: keep each destination's warm connections topped up and retire
/// idle ones, once a second and as soon as a warm connection is taken. Runs until dropped.
pub async fn keep_pools(state: Rc<ShardUpstreams>) {
    loop {
        let now = reactor::now();
        let (plan, generation) = state.current();
        let wanted: Vec<(usize, usize)> = {
            let mut pools = state.pools.borrow_mut();
            pools.retire_idle(now);
            plan.destinations
                .iter()
                .enumerate()
                .map(|(i, d)| (i, pools.reserve_warm(d.id, now)))
                .filter(|(_, n)| *n > 0)
                .collect()
        };
        for (index, n) in wanted {
            for _ in 0..n {
                let state = state.clone();
                let plan = plan.clone();
                reactor::spawn(async move {
                    let dest = &plan.destinations[index];
                    match state.connect_new(generation, dest).await {
                        // Pooled before the warm-up is counted done, so requests waiting for
                        // it find the connection (an HTTP/2 one in particular) rather than
                        // starting another.
                        Ok(conn) => state.pool_fresh(conn).await,
                        Err(e) => {
                            tracing::debug!(shard = state.shard, error = %e, "warm-up connect failed")
                        }
                    }
                    if state.generation.get() == generation {
                        state.pools.borrow_mut().warm_done(dest.id);
                    }
                    // A connect slot is free.
                    state.pool_waiters.notify_all();
                })
                .detach();
            }
        }
        reactor::select2(
            reactor::sleep(Duration::from_secs(1)),
            state.pool_taken.wait(),
        )
        .await;
    }
}

fn seed_for(shard: usize) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9E37_79B9);
    t ^ ((shard as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn counters_for(plan: &Plan) -> DestinationCounters {
    let mut c = DestinationCounters::default();
    c.set_destinations(plan.destinations.iter().map(|d| d.name.as_str()));
    c
}

/// The connect-latency histograms for the shard's first plan; switched off for good if that
/// plan says `metrics.histograms = false` (read at start, reloads do not switch it).
fn latency_for(plan: &Plan) -> DestinationLatencies {
    let mut l = DestinationLatencies::default();
    if !plan.metrics.histograms {
        l.switch_off();
    }
    l.set_destinations(plan.destinations.iter().map(|d| d.name.as_str()));
    l
}
