//! Shards: one data-plane thread per core, each with its own io_uring reactor, its own
//! SO_REUSEPORT listener socket for every configured listener, its own upstream pools and its own
//! metrics. A connection is accepted, served and closed on one shard and never leaves it.
//!
//! [`Gateway::start`] binds every listener once per shard (the kernel spreads new connections
//! across the sockets of a reuse group), spawns the shard threads, and waits until each has its
//! listeners running. The control thread talks to shards only through bounded crossbeam channels
//! plus an eventfd [`Notifier`] to wake the shard's ring: commands in ([`ShardCommand`]),
//! snapshots out.
//!
//! Usage metering: each shard hands its usage deltas ([`crate::stats::usage::ShardUsage::take`])
//! to the control thread over one channel shared by all shards, when asked
//! ([`ShardCommand::TakeUsage`], see [`Gateway::take_usage`]) and once more when it exits after
//! its drain, so a count leaves the shard exactly once. A reply that arrives after
//! [`Gateway::take_usage`] stopped waiting stays in the channel for the next take: late, never
//! lost.
//!
//! What this module does not do: parse protocols (see `flows`) or decide routes (see `policy`).
//!
//! Race window: a reload swaps the plan between two requests of a keep-alive connection; a request
//! already being forwarded finishes on the plan it started with (it holds its own `Arc<Plan>`).

pub mod caps;

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use socket2::{Domain, Socket, Type};

use crate::flows::client_ids::ClientIds;
use crate::flows::context::LOG_THROTTLE;
use crate::flows::device_log::{connection_span, in_span};
use crate::flows::sessions::{merge_pages, RegistryKey, SessionProtocol};
pub use crate::flows::sessions::{SessionPage, SessionQuery, SessionRow};
use crate::flows::throttle::LogThrottle;
pub use crate::flows::{ShardId, ShardState};
use crate::identity::LiveBindings;
use crate::policy::{DestinationId, ListenerId, ListenerProtocol, Plan};
use crate::reactor::{self, Notifier, NotifyListener, ReactorConfig, TcpListener};
pub use crate::stats::usage::UsageRecord;
pub use crate::stats::{CapReason, ErrorKind, Protocol, ShardMetrics};
use crate::upstream;

/// What a shard sends on the usage channel: its usage since its previous send.
#[derive(Debug)]
pub struct UsageBatch {
    /// The shard.
    pub shard: usize,
    /// The [`ShardCommand::TakeUsage`] request answered; `None` for the final batch at exit.
    pub request: Option<u64>,
    /// The records.
    pub records: Vec<UsageRecord>,
}

/// A command from the control thread to a shard.
pub enum ShardCommand {
    /// Serve this plan from now on (listeners must be unchanged); ack on the sender once the
    /// plan is in place, so a reload reported as done is in effect on every shard.
    Reload(Arc<Plan>, Sender<()>),
    /// New addresses for one destination of `plan` (periodic re-resolution found a different
    /// set): new connects use them; pooled connections stay. Ignored unless `plan` is the
    /// shard's current plan (a reload already resolved afresh). Ack on the sender either way.
    UpdateAddrs {
        /// The plan the addresses were resolved for.
        plan: Arc<Plan>,
        /// Destination of that plan.
        destination: DestinationId,
        /// The new addresses (never empty).
        addrs: Vec<SocketAddr>,
        /// Acknowledgement.
        ack: Sender<()>,
    },
    /// Cloud tokens minted for destinations of `plan` (SAS, OAuth2): requests use them from
    /// now on. Ignored unless `plan` is the shard's current plan. Ack on the sender either way.
    SetTokens {
        /// The plan the tokens were minted for.
        plan: Arc<Plan>,
        /// Destination and token.
        tokens: Vec<(DestinationId, crate::policy::cloud::Token)>,
        /// Acknowledgement.
        ack: Sender<()>,
    },
    /// Reply with a copy of the shard's metrics.
    Snapshot(Sender<ShardMetrics>),
    /// Reply with the shard's live device sessions matching the query: the count of all that
    /// match and a copy of at most `offset + limit` of them.
    Sessions(SessionQuery, Sender<SessionPage>),
    /// Hand the usage counted since the last take to the gateway's usage channel, tagged with
    /// this request number.
    TakeUsage(u64),
    /// Stop accepting, finish in-flight requests (up to the drain timeout), then exit.
    Shutdown,
}

/// Why the gateway could not start or reload.
#[derive(Debug)]
pub enum GatewayError {
    /// A listener socket could not be created or bound.
    Bind {
        /// Listener name.
        listener: String,
        /// Address.
        addr: SocketAddr,
        /// OS error.
        error: std::io::Error,
    },
    /// A shard thread failed to start (io_uring setup, thread spawn).
    ShardStart(String),
    /// A reload changed listeners, which needs a restart.
    ListenersChanged,
    /// A shard did not confirm a reload within 5 s (it may be stuck or gone). The reload is
    /// then partial: shards that confirmed serve the new plan.
    ReloadNotAcknowledged,
    /// A shard did not confirm an address update within 5 s; shards that confirmed use the
    /// new addresses.
    AddrsNotAcknowledged,
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GatewayError::Bind {
                listener,
                addr,
                error,
            } => write!(f, "listener {listener}: cannot bind {addr}: {error}"),
            GatewayError::ShardStart(why) => write!(f, "shard failed to start: {why}"),
            GatewayError::ReloadNotAcknowledged => f.write_str(
                "a shard did not acknowledge the reload within 5 s: the new configuration \
                     is applied only on the shards that answered; check the logs and restart",
            ),
            GatewayError::AddrsNotAcknowledged => f.write_str(
                "a shard did not acknowledge an address update within 5 s: only the shards \
                 that answered use the new addresses; check the logs",
            ),
            GatewayError::ListenersChanged => f.write_str(
                "reload rejected: listeners (names, protocols or bind addresses) changed; \
                 restart simgate to apply listener changes",
            ),
        }
    }
}

impl std::error::Error for GatewayError {}

struct ShardHandle {
    commands: Sender<ShardCommand>,
    notifier: Notifier,
    thread: Option<JoinHandle<()>>,
}

/// The running data plane: every shard thread and the addresses they listen on.
pub struct Gateway {
    shards: Vec<ShardHandle>,
    listeners: Vec<(String, SocketAddr)>,
    plan: Arc<Plan>,
    /// Generation of `plan`: 0 at start, one more per reload handed to the shards.
    generation: u64,
    /// Live IP → SIM bindings every shard reads.
    bindings: Arc<LiveBindings>,
    /// The generation each shard serves, as the shard itself records it when it swaps plans.
    served: Arc<[AtomicU64]>,
    /// Usage deltas from every shard (see the module doc).
    usage_rx: Receiver<UsageBatch>,
    /// Number of the last [`ShardCommand::TakeUsage`] request.
    usage_requests: u64,
}

/// How long a shard waits for open device connections to finish after `Shutdown`.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

impl Gateway {
    /// Bind listeners, start one shard per `plan.gateway.shards`, and return once every shard is
    /// accepting.
    pub fn start(plan: Arc<Plan>) -> Result<Gateway, GatewayError> {
        let shard_count = plan.gateway.shards.max(1);
        // sockets[shard][listener]
        let mut sockets: Vec<Vec<StdTcpListener>> = (0..shard_count).map(|_| Vec::new()).collect();
        let mut listeners = Vec::new();
        for l in &plan.listeners {
            let mut addr = l.bind;
            for shard_sockets in sockets.iter_mut() {
                let sock = bind_reuseport(addr, plan.gateway.backlog).map_err(|error| {
                    GatewayError::Bind {
                        listener: l.name.clone(),
                        addr,
                        error,
                    }
                })?;
                // Port 0: the first socket picks the port, the others join its reuse group.
                if addr.port() == 0 {
                    addr = sock.local_addr().map_err(|error| GatewayError::Bind {
                        listener: l.name.clone(),
                        addr,
                        error,
                    })?;
                }
                shard_sockets.push(sock);
            }
            listeners.push((l.name.clone(), addr));
        }

        let counts = Arc::new(caps::ConnectionCounts::new(plan.listeners.len()));
        let client_ids = Arc::new(ClientIds::new(shard_count));
        let served: Arc<[AtomicU64]> = (0..shard_count).map(|_| AtomicU64::new(0)).collect();
        let bindings = Arc::new(LiveBindings::default());
        // Unbounded: a shard never blocks on it; each shard has at most one batch per take
        // in it, and takes are paced by the control thread.
        let (usage_tx, usage_rx) = crossbeam_channel::unbounded::<UsageBatch>();
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<(), String>>(shard_count);
        let mut shards = Vec::with_capacity(shard_count);
        for (index, shard_sockets) in sockets.into_iter().enumerate() {
            let (tx, rx) = crossbeam_channel::bounded(64);
            // The listening half of the wake-up pair must be created on the shard thread (it is
            // tied to that thread's reactor); the shard sends the notifying half back.
            let (notifier_tx, notifier_rx) = crossbeam_channel::bounded::<Notifier>(1);
            let shard_plan = plan.clone();
            let shared = SharedByShards {
                connections: counts.clone(),
                client_ids: client_ids.clone(),
                served: served.clone(),
                bindings: bindings.clone(),
                usage: usage_tx.clone(),
            };
            let core = if plan.gateway.pin_shards && !cores.is_empty() {
                Some(cores[index % cores.len()])
            } else {
                None
            };
            let ready = ready_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("simgate-shard-{index}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    let (notifier, notify_listener) = match reactor::notifier() {
                        Ok(pair) => pair,
                        Err(e) => {
                            let _ = ready.send(Err(format!("shard {index}: eventfd: {e}")));
                            return;
                        }
                    };
                    if notifier_tx.send(notifier).is_err() {
                        return;
                    }
                    shard_main(
                        ShardId(index),
                        shard_plan,
                        shared,
                        shard_sockets,
                        rx,
                        notify_listener,
                        ready,
                    );
                })
                .map_err(|e| GatewayError::ShardStart(e.to_string()))?;
            let notifier = match notifier_rx.recv() {
                Ok(n) => n,
                Err(_) => {
                    let why = match ready_rx.try_recv() {
                        Ok(Err(why)) => why,
                        _ => format!("shard {index} exited during start"),
                    };
                    let _ = thread.join();
                    let mut partial = Gateway {
                        shards,
                        listeners,
                        plan: plan.clone(),
                        generation: 0,
                        served: served.clone(),
                        bindings: bindings.clone(),
                        usage_rx: usage_rx.clone(),
                        usage_requests: 0,
                    };
                    partial.stop();
                    return Err(GatewayError::ShardStart(why));
                }
            };
            client_ids.set_notifier(index, notifier.clone());
            shards.push(ShardHandle {
                commands: tx,
                notifier,
                thread: Some(thread),
            });
        }
        drop(ready_tx);
        let mut gateway = Gateway {
            shards,
            listeners,
            plan,
            generation: 0,
            served,
            bindings,
            usage_rx,
            usage_requests: 0,
        };
        for _ in 0..shard_count {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(why)) => {
                    gateway.stop();
                    return Err(GatewayError::ShardStart(why));
                }
                Err(_) => {
                    gateway.stop();
                    return Err(GatewayError::ShardStart("shard thread exited".into()));
                }
            }
        }
        Ok(gateway)
    }

    /// `(listener name, bound address)` for every listener, with port 0 resolved.
    pub fn listener_addrs(&self) -> &[(String, SocketAddr)] {
        &self.listeners
    }

    /// Shards whose thread has exited while the gateway is running (a shard only exits on
    /// shutdown, so any here died — e.g. a panic). Health checks report them.
    pub fn dead_shards(&self) -> Vec<usize> {
        self.shards
            .iter()
            .enumerate()
            .filter(|(_, s)| s.thread.as_ref().is_some_and(|t| t.is_finished()))
            .map(|(i, _)| i)
            .collect()
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The plan currently served.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// The live IP → SIM bindings the shards read (the RADIUS listener writes them).
    pub fn bindings(&self) -> &Arc<LiveBindings> {
        &self.bindings
    }

    /// The generation of [`Gateway::plan`] (0 at start, one more per reload).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The plan generation each shard serves, in shard order. A shard behind
    /// [`Gateway::generation`] did not apply a reload (it may be stuck): health checks report it.
    pub fn served_generations(&self) -> Vec<u64> {
        self.served
            .iter()
            .map(|g| g.load(Ordering::Relaxed))
            .collect()
    }

    /// Shards serving an older plan than the gateway's, as `(shard, generation served)`.
    pub fn stale_shards(&self) -> Vec<(usize, u64)> {
        self.served_generations()
            .into_iter()
            .enumerate()
            .filter(|(_, g)| *g != self.generation)
            .collect()
    }

    /// Hand a new plan to every shard. Rejected (and nothing changes) if the listeners differ.
    pub fn reload(&mut self, plan: Arc<Plan>) -> Result<(), GatewayError> {
        let same = self.plan.listeners.len() == plan.listeners.len()
            && self
                .plan
                .listeners
                .iter()
                .zip(&plan.listeners)
                .all(|(a, b)| a.name == b.name && a.protocol() == b.protocol() && a.bind == b.bind);
        if !same {
            return Err(GatewayError::ListenersChanged);
        }
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(self.shards.len());
        for shard in &self.shards {
            let _ = shard
                .commands
                .send(ShardCommand::Reload(plan.clone(), ack_tx.clone()));
            let _ = shard.notifier.notify();
        }
        drop(ack_tx);
        self.plan = plan;
        self.generation += 1;
        // Each shard swaps its plan between two tasks' turns: this returns within a loop turn
        // unless a shard has died (then its channel drops and recv fails fast).
        for _ in 0..self.shards.len() {
            if ack_rx.recv_timeout(Duration::from_secs(5)).is_err() {
                return Err(GatewayError::ReloadNotAcknowledged);
            }
        }
        Ok(())
    }

    /// Hand new addresses of `destination` to every shard and wait for each to confirm.
    /// `Ok(false)` without sending anything when `plan` is no longer the served plan (a reload
    /// resolved every endpoint afresh). Neither the plan nor its generation changes, so warm
    /// pools of every destination stay.
    pub fn update_addrs(
        &mut self,
        plan: &Arc<Plan>,
        destination: DestinationId,
        addrs: Vec<SocketAddr>,
    ) -> Result<bool, GatewayError> {
        if !Arc::ptr_eq(&self.plan, plan) || addrs.is_empty() {
            return Ok(false);
        }
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(self.shards.len());
        for shard in &self.shards {
            let _ = shard.commands.send(ShardCommand::UpdateAddrs {
                plan: plan.clone(),
                destination,
                addrs: addrs.clone(),
                ack: ack_tx.clone(),
            });
            let _ = shard.notifier.notify();
        }
        drop(ack_tx);
        for _ in 0..self.shards.len() {
            if ack_rx.recv_timeout(Duration::from_secs(5)).is_err() {
                return Err(GatewayError::AddrsNotAcknowledged);
            }
        }
        Ok(true)
    }

    /// Hand cloud tokens minted for `plan` to every shard and wait for each to confirm.
    /// `Ok(false)` without sending anything when `plan` is no longer the served plan.
    pub fn set_tokens(
        &mut self,
        plan: &Arc<Plan>,
        tokens: Vec<(DestinationId, crate::policy::cloud::Token)>,
    ) -> Result<bool, GatewayError> {
        if !Arc::ptr_eq(&self.plan, plan) || tokens.is_empty() {
            return Ok(false);
        }
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(self.shards.len());
        for shard in &self.shards {
            let _ = shard.commands.send(ShardCommand::SetTokens {
                plan: plan.clone(),
                tokens: tokens.clone(),
                ack: ack_tx.clone(),
            });
            let _ = shard.notifier.notify();
        }
        drop(ack_tx);
        for _ in 0..self.shards.len() {
            if ack_rx.recv_timeout(Duration::from_secs(5)).is_err() {
                return Err(GatewayError::AddrsNotAcknowledged);
            }
        }
        Ok(true)
    }

    /// Metrics of every shard, merged.
    pub fn metrics(&self) -> ShardMetrics {
        let mut total = ShardMetrics::default();
        for shard in self.per_shard_metrics() {
            total.merge(&shard);
        }
        total
    }

    /// Metrics of each shard, in shard order (shards that do not answer within a second are
    /// skipped).
    pub fn per_shard_metrics(&self) -> Vec<ShardMetrics> {
        let mut replies = Vec::with_capacity(self.shards.len());
        for shard in &self.shards {
            let (tx, rx) = crossbeam_channel::bounded(1);
            if shard.commands.send(ShardCommand::Snapshot(tx)).is_ok() {
                let _ = shard.notifier.notify();
                replies.push(rx);
            }
        }
        replies
            .into_iter()
            .filter_map(|rx| rx.recv_timeout(Duration::from_secs(1)).ok())
            .collect()
    }

    /// The page `query` asks for of the live device sessions of every shard (or of shard
    /// `shard` only), with the total that match. Each shard copies at most `offset + limit`
    /// entries; shards that do not answer within a second are skipped (the second value is
    /// the number of shards that answered).
    pub fn sessions(&self, shard: Option<usize>, query: SessionQuery) -> (SessionPage, usize) {
        let mut replies = Vec::with_capacity(self.shards.len());
        for (index, handle) in self.shards.iter().enumerate() {
            if shard.is_some_and(|s| s != index) {
                continue;
            }
            let (tx, rx) = crossbeam_channel::bounded(1);
            if handle
                .commands
                .send(ShardCommand::Sessions(query.clone(), tx))
                .is_ok()
            {
                let _ = handle.notifier.notify();
                replies.push(rx);
            }
        }
        let pages: Vec<SessionPage> = replies
            .into_iter()
            .filter_map(|rx| rx.recv_timeout(Duration::from_secs(1)).ok())
            .collect();
        let answered = pages.len();
        (merge_pages(pages, query.offset, query.limit), answered)
    }

    /// Usage every shard counted since the previous take. Waits up to a second for each
    /// shard's answer; an answer that comes later is returned by the next take (or by
    /// [`Gateway::shutdown`]), so nothing is counted twice or lost.
    pub fn take_usage(&mut self) -> Vec<UsageRecord> {
        self.usage_requests += 1;
        let request = self.usage_requests;
        let mut waiting = 0;
        for shard in &self.shards {
            if shard
                .commands
                .send(ShardCommand::TakeUsage(request))
                .is_ok()
            {
                let _ = shard.notifier.notify();
                waiting += 1;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut records = Vec::new();
        while waiting > 0 {
            match self.usage_rx.recv_deadline(deadline) {
                Ok(batch) => {
                    if batch.request == Some(request) {
                        waiting -= 1;
                    }
                    records.extend(batch.records);
                }
                Err(_) => break,
            }
        }
        records
    }

    /// Stop accepting, drain, and join every shard thread; returns the usage the shards had
    /// not handed over yet (counted up to the end of their drain).
    pub fn shutdown(mut self) -> Vec<UsageRecord> {
        self.stop();
        self.usage_rx
            .try_iter()
            .flat_map(|batch| batch.records)
            .collect()
    }

    fn stop(&mut self) {
        for shard in &self.shards {
            let _ = shard.commands.send(ShardCommand::Shutdown);
            let _ = shard.notifier.notify();
        }
        for shard in &mut self.shards {
            if let Some(t) = shard.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

fn bind_reuseport(addr: SocketAddr, backlog: i32) -> std::io::Result<StdTcpListener> {
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        // An IPv6 listener serves IPv6 only; config validation relies on this to let an IPv4
        // and an IPv6 listener share a port.
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_tcp_nodelay(true)?;
    sock.bind(&addr.into())?;
    sock.listen(backlog)?;
    Ok(sock.into())
}

/// The accept side of a shard: its flows' state plus the connection caps and the throttles of
/// accept-path log lines. Lives in an `Rc` on the shard thread; each open connection's gauge
/// holds it.
struct Acceptor {
    state: Rc<ShardState>,
    /// Open device connections of every shard, checked against the connection caps.
    connections: Arc<caps::ConnectionCounts>,
    /// Keeps "connection refused at accept" to one log line per interval.
    cap_log: LogThrottle,
    /// Keeps "accept failed" to one log line per interval.
    accept_error_log: LogThrottle,
}

fn reactor_config(plan: &Plan) -> ReactorConfig {
    ReactorConfig {
        ring_entries: plan.gateway.ring_entries,
        recv_buffers: plan.gateway.recv_buffers,
        recv_buffer_size: plan.gateway.recv_buffer_size,
    }
}

/// What every shard shares with the others (touched per connection, never per message).
struct SharedByShards {
    connections: Arc<caps::ConnectionCounts>,
    client_ids: Arc<ClientIds>,
    /// Where each shard records the plan generation it serves (written at each reload only).
    served: Arc<[AtomicU64]>,
    /// Live IP → SIM bindings (written by the control thread's RADIUS listener).
    bindings: Arc<LiveBindings>,
    /// Where the shard sends its usage deltas.
    usage: Sender<UsageBatch>,
}

fn shard_main(
    id: ShardId,
    plan: Arc<Plan>,
    shared: SharedByShards,
    sockets: Vec<StdTcpListener>,
    commands: Receiver<ShardCommand>,
    notify: NotifyListener,
    ready: Sender<Result<(), String>>,
) {
    let cfg = reactor_config(&plan);
    let ready_on_error = ready.clone();
    let result = reactor::block_on(&cfg, async move {
        let served = shared.served;
        let usage = shared.usage;
        let state = Rc::new(ShardState::new(
            id,
            plan,
            shared.client_ids,
            shared.bindings,
        ));
        let acceptor = Rc::new(Acceptor {
            state: state.clone(),
            connections: shared.connections,
            cap_log: LogThrottle::new(LOG_THROTTLE),
            accept_error_log: LogThrottle::new(LOG_THROTTLE),
        });
        let mut accept_tasks = Vec::new();
        for (index, sock) in sockets.into_iter().enumerate() {
            let listener = match TcpListener::from_std(sock) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready.send(Err(format!("shard {}: listener: {e}", id.0)));
                    return;
                }
            };
            let lid = ListenerId(index as u16);
            accept_tasks.push(reactor::spawn(accept_loop(acceptor.clone(), lid, listener)));
        }
        let maintenance = reactor::spawn(upstream::driver::keep_pools(state.upstreams.clone()));
        let _ = ready.send(Ok(()));
        command_loop(&state, &served, &usage, commands, notify).await;
        // Shutdown: stop accepting (dropping the tasks drops the listeners), stop warming,
        // let open connections finish their current request.
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        state.drain.fire_until(deadline);
        drop(accept_tasks);
        drop(maintenance);
        // MQTT aggregate links still carrying messages (e.g. the Wills of sessions closed by
        // the drain) are waited for too.
        while (state.metrics.borrow().connections_open > 0 || state.links.links_busy())
            && Instant::now() < deadline
        {
            reactor::sleep(Duration::from_millis(20)).await;
        }
        state.device_faults.flush(id.0);
        // What was counted up to the end of the drain (the last batch this shard sends).
        let records = take_usage(&state);
        let _ = usage.send(UsageBatch {
            shard: id.0,
            request: None,
            records,
        });
    });
    if let Err(e) = result {
        let _ = ready_on_error.send(Err(format!("shard {}: io_uring: {e}", id.0)));
    }
}

fn take_usage(state: &ShardState) -> Vec<UsageRecord> {
    let now = Instant::now();
    let wall = std::time::SystemTime::now();
    state.usage.borrow_mut().take(now, wall)
}

async fn command_loop(
    state: &Rc<ShardState>,
    served: &[AtomicU64],
    usage: &Sender<UsageBatch>,
    commands: Receiver<ShardCommand>,
    mut notify: NotifyListener,
) {
    loop {
        while let Ok(cmd) = commands.try_recv() {
            match cmd {
                ShardCommand::Reload(plan, ack) => {
                    state.name_usage_groups(&plan);
                    state.name_destinations(&plan);
                    state.carry_tokens(&state.plan(), &plan);
                    state.upstreams.replace_plan(plan);
                    state.mqtt_aggregate.plan_changed();
                    state.plan_changed.notify_all();
                    let (_, generation) = state.upstreams.current();
                    if let Some(slot) = served.get(state.id.0) {
                        slot.store(generation, Ordering::Relaxed);
                    }
                    let _ = ack.send(());
                }
                ShardCommand::UpdateAddrs {
                    plan,
                    destination,
                    addrs,
                    ack,
                } => {
                    state.upstreams.set_addrs(&plan, destination, addrs);
                    let _ = ack.send(());
                }
                ShardCommand::SetTokens { plan, tokens, ack } => {
                    state.set_tokens(&plan, tokens);
                    let _ = ack.send(());
                }
                ShardCommand::Snapshot(reply) => {
                    let mut snapshot = state.metrics.borrow().clone();
                    snapshot.upstream_idle = state.upstreams.idle_count() as u64;
                    snapshot.cold_destinations = state
                        .upstreams
                        .not_warmed()
                        .into_iter()
                        .map(|d| d.0)
                        .collect();
                    snapshot.upstream = state.upstreams.counters();
                    snapshot.latency.merge(&state.upstreams.connect_latency());
                    snapshot
                        .destinations
                        .merge(&state.upstreams.destination_counters());
                    let agg = &state.mqtt_aggregate;
                    let c = state.links.counters();
                    snapshot.mqtt_aggregate = crate::stats::AggregateTotals {
                        sessions_open: agg.sessions_open(),
                        uplink_publishes: c.uplink_publishes.get(),
                        upstream_acks: c.upstream_acks.get(),
                        qos0_dropped: c.qos0_dropped.get(),
                        resent_after_reconnect: c.resent_after_reconnect.get(),
                        link_connects: c.link_connects.get(),
                        link_failures: c.link_failures.get(),
                        downlink_messages: c.downlink_messages.get(),
                        topics_refused: c.topics_refused.get(),
                        sessions_taken_over: agg.sessions_taken_over(),
                        connects_refused_down: c.connects_refused_down.get(),
                        links_running: c.links_running.get(),
                        links_up: c.links_up.get(),
                    };
                    snapshot.mqtt_rate_limited = c
                        .publish_rate
                        .borrow()
                        .iter()
                        .map(|(name, o)| {
                            let totals = crate::stats::RateLimitedTotals {
                                waited: o.waited.get(),
                                spilled: o.spilled.get(),
                                refused: o.refused.get(),
                            };
                            (name.clone(), totals)
                        })
                        .collect();
                    snapshot.reactor = vec![reactor_counters(state.id.0, reactor::stats())];
                    let _ = reply.send(snapshot);
                }
                ShardCommand::Sessions(query, reply) => {
                    let usage = state.usage.borrow();
                    let page =
                        state
                            .sessions
                            .borrow()
                            .page(state.id.0, &query, reactor::now(), |key| {
                                usage.group_name(key).map(str::to_owned)
                            });
                    drop(usage);
                    let _ = reply.send(page);
                }
                ShardCommand::TakeUsage(request) => {
                    let _ = usage.send(UsageBatch {
                        shard: state.id.0,
                        request: Some(request),
                        records: take_usage(state),
                    });
                }
                ShardCommand::Shutdown => return,
            }
        }
        // Sessions of this shard whose client id a newer connection took over (on any shard).
        for token in state.client_ids.take_evicted(state.id.0) {
            state
                .mqtt_aggregate
                .evict(token, crate::proto::mqtt::ReasonCode::SESSION_TAKEN_OVER);
        }
        if notify.wait().await.is_err() {
            // The eventfd broke: fall back to a slow poll of the channel rather than stalling.
            reactor::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn accept_loop(acceptor: Rc<Acceptor>, listener_id: ListenerId, mut listener: TcpListener) {
    let state = &acceptor.state;
    loop {
        // Near the gateway's cap every new connection is closed at once: accept them one at a
        // time, so a burst cannot make the kernel open more descriptors than the reserve holds
        // before they are closed.
        let plan = state.plan();
        let margin = (plan.gateway.reserved_fds / 4).clamp(1, 64);
        listener.set_one_at_a_time(
            acceptor.connections.total() + margin >= plan.gateway.max_connections,
        );
        drop(plan);
        match listener.accept().await {
            Ok((stream, peer)) => {
                let plan = state.plan();
                let listener_plan = plan.listener(listener_id);
                let protocol = listener_plan.protocol();
                if let Err(reason) = acceptor.connections.admit(
                    listener_id,
                    plan.gateway.max_connections,
                    listener_plan.max_connections,
                ) {
                    // Closed at once (the stream drops here): the device sees the connection
                    // end before any byte, and may retry later.
                    state.metrics.borrow_mut().connections_rejected[reason.index()] += 1;
                    if let Some(held_back) = acceptor.cap_log.allow(reactor::now()) {
                        let cap = match reason {
                            CapReason::Gateway => plan.gateway.max_connections,
                            CapReason::Listener => listener_plan.max_connections.unwrap_or(0),
                        };
                        tracing::warn!(
                            shard = state.id.0,
                            listener = %listener_plan.name,
                            %peer,
                            cap,
                            reason = reason.label(),
                            refused_since_last_line = held_back,
                            "connection cap reached: closing new device connections at accept"
                        );
                    }
                    continue;
                }
                {
                    let mut m = state.metrics.borrow_mut();
                    m.connections_accepted += 1;
                    m.connections_open += 1;
                }
                let session = state.sessions.borrow_mut().open(
                    peer,
                    match protocol {
                        ListenerProtocol::Http => SessionProtocol::Http,
                        ListenerProtocol::Mqtt => SessionProtocol::Mqtt,
                    },
                    reactor::now(),
                );
                let gauge = OpenConnection {
                    acceptor: acceptor.clone(),
                    listener: listener_id,
                    session,
                };
                let state = state.clone();
                // One spawn per protocol, so each task is allocated at the size of its own
                // flow's future rather than the largest of them, and no `async` wrapper (which
                // would store the flow's future twice): the task is what an idle connection
                // costs in memory.
                match protocol {
                    ListenerProtocol::Http => {
                        let span = connection_span(state.id.0, peer, "http");
                        let f = crate::flows::http_forward::serve(
                            state,
                            listener_id,
                            stream,
                            peer,
                            session,
                        );
                        reactor::spawn(reactor::Guarded::new(in_span(span, f), gauge)).detach();
                    }
                    ListenerProtocol::Mqtt => {
                        let span = connection_span(state.id.0, peer, "mqtt");
                        let f = crate::flows::mqtt_bridge::serve(
                            state,
                            listener_id,
                            stream,
                            peer,
                            session,
                        );
                        reactor::spawn(reactor::Guarded::new(in_span(span, f), gauge)).detach();
                    }
                }
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off briefly instead of spinning; the kernel keeps
                // queueing in the backlog meanwhile, and accepting resumes by itself once
                // descriptors free up. Counted every time, logged once per interval.
                state.metrics.borrow_mut().accept_errors += 1;
                if let Some(held_back) = acceptor.accept_error_log.allow(reactor::now()) {
                    tracing::warn!(
                        shard = state.id.0,
                        error = %e,
                        failed_since_last_line = held_back,
                        "accept failed; retrying in 50 ms (raise the open-file limit or lower \
                         max_connections if this repeats)"
                    );
                }
                reactor::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Decrements the open-connection gauge and the connection caps' counts, and removes the
/// connection's session entry, however a connection task ends (including being dropped at
/// shutdown).
struct OpenConnection {
    acceptor: Rc<Acceptor>,
    listener: ListenerId,
    session: RegistryKey,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.acceptor.connections.release(self.listener);
        self.acceptor
            .state
            .sessions
            .borrow_mut()
            .close(self.session);
        let mut m = self.acceptor.state.metrics.borrow_mut();
        m.connections_open = m.connections_open.saturating_sub(1);
    }
}

/// The reactor's counters of shard `shard` as plain metrics data (read on the shard's thread).
fn reactor_counters(shard: usize, r: reactor::ReactorStats) -> crate::stats::ReactorCounters {
    crate::stats::ReactorCounters {
        shard,
        submissions: r.submissions,
        sqes: r.ops_submitted,
        completions: r.completions,
        loop_turns: r.loop_turns,
        enobufs_rearms: r.enobufs_rearms,
        recv_pauses: r.recv_pauses,
        recv_buffers_in_use: u64::from(r.recv_buffers_in_use),
        recv_buffers_total: u64::from(r.recv_buffers_total),
        ops_in_flight: u64::from(r.ops_in_flight),
        tasks: u64::from(r.tasks_alive),
        timers_armed: u64::from(r.timers_armed),
        timers_fired: r.timers_fired,
    }
}
