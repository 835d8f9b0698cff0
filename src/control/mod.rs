//! The control thread: admin HTTP endpoint (health, Prometheus metrics, reload), signal handling
//! (SIGHUP reloads, SIGINT/SIGTERM drain and stop), and config reloads.
//!
//! It is ordinary async Rust on one tokio current-thread runtime, with hyper for the admin
//! endpoint. It talks to shards only through [`Gateway`] (bounded channels plus an eventfd wake),
//! never by touching shard state. Blocking calls (config compilation with file reads and DNS,
//! waiting for shard snapshots) run on tokio's blocking pool so the admin endpoint stays
//! responsive.
//!
//! It also runs the periodic re-resolution of destination DNS names ([`resolve`]): lookups on
//! the blocking pool, changed addresses handed to shards with [`Control::apply_addrs`], and the
//! minting and renewal of the destinations' cloud tokens ([`tokens`]), handed to shards with
//! [`Control::apply_tokens`].
//!
//! Admin requests carry `Authorization: Bearer <gateway.admin_token>` when the config sets a
//! token (it must for a non-loopback address); the comparison is constant-time and a missing or
//! wrong token gets 401 for every path.
//!
//! It also keeps usage per SIM and group ([`usage`]): every `usage.interval` it takes the
//! shards' usage deltas, closes an interval and appends it to the usage file
//! ([`usage_file`]); `GET /admin/usage` answers the totals; on SIGTERM the partial interval is
//! closed after the shards drained.
//!
//! It probes every destination every `probe.interval` ([`probes`]): TCP connect, TLS handshake
//! and the cheapest protocol exchange, on this thread, never through a shard; `/metrics` and
//! `GET /admin/probes` show the results.
//!
//! Every `metrics.interval_log_period` it closes an interval of the per-destination latency
//! histograms' interval logs ([`interval_log`]), answered by `GET /histograms/{name}/log`.
//!
//! `GET /admin/sessions` pages through the shards' registries of live device connections
//! ([`sessions`], via [`Gateway::sessions`]); `GET /admin/config` renders the served plan with
//! every secret redacted ([`effective_config`]).
//!
//! What it does not do: serve device traffic, or accept non-loopback admin binds unless the
//! config says so explicitly (`gateway.admin_allow_non_loopback` and `gateway.admin_token`).

pub mod effective_config;
pub mod histograms;
pub mod interval_log;
pub mod metrics;
pub mod probes;
pub mod radius;
pub mod resolve;
pub mod sessions;
pub mod status;
pub mod tokens;
pub mod usage;
pub mod usage_file;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use parking_lot::Mutex;

use crate::config;
use crate::policy::{DestinationId, Plan};
use crate::shard::{Gateway, GatewayError};
pub use metrics::{CredentialCounters, DnsCounters, ReloadCounters};

/// Why `simgate run` stopped with an error.
#[derive(Debug)]
pub enum RunError {
    /// The config file is invalid (already formatted with field paths).
    Config(config::ConfigError),
    /// The data plane could not start.
    Gateway(GatewayError),
    /// The control runtime or admin listener could not start.
    Control(std::io::Error),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Config(e) => write!(f, "invalid configuration:\n{e}"),
            RunError::Gateway(e) => write!(f, "{e}"),
            RunError::Control(e) => write!(f, "control thread: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

/// State shared by the control thread's tasks.
pub struct Control {
    gateway: Mutex<Option<Gateway>>,
    /// Serialises reloads end to end (read file, compile, apply), so two reloads racing (SIGHUP
    /// and POST) cannot apply an older file last.
    reload_lock: Mutex<()>,
    config_path: Option<PathBuf>,
    reloads: Mutex<ReloadCounters>,
    /// The plan the gateway serves, published after every reload for the re-resolution loop
    /// (which must not block the runtime on the gateway lock to learn it).
    plan_tx: tokio::sync::watch::Sender<Arc<Plan>>,
    /// Re-resolution counters by destination name; kept across reloads (counters never go
    /// back).
    dns: Mutex<BTreeMap<String, DnsCounters>>,
    /// Token refresh counters and current token expiry by destination name; counters kept
    /// across reloads.
    credentials: Mutex<BTreeMap<String, CredentialCounters>>,
    /// What the RADIUS accounting listener did (shared with its task).
    radius: Arc<Mutex<radius::RadiusStats>>,
    /// Usage intervals and totals, and the usage file. Locked after `gateway` when both are
    /// held (never the other way round).
    usage: Mutex<UsageState>,
    /// The internal probes' schedule and results (locked briefly, never across an await).
    probes: Mutex<probes::Board>,
    /// Addresses and tokens the shards were last handed, for the probes.
    probe_inputs: Mutex<probes::driver::Inputs>,
    /// The latency histograms' interval logs (locked briefly; the snapshot is taken before).
    interval_log: Mutex<interval_log::IntervalLog>,
    /// `metrics.interval_log_period` in force (fixed at start).
    interval_log_period: std::time::Duration,
    /// `metrics.histograms` in force (fixed at start, as on the shards).
    histograms_on: bool,
}

/// The control thread's usage state.
struct UsageState {
    /// `usage.enabled` (fixed at start): false means no metering, no intervals, no file.
    enabled: bool,
    ledger: usage::Ledger,
    file: Option<usage_file::UsageFile>,
    /// `usage.interval` in force (fixed at start).
    interval: std::time::Duration,
    /// Failed writes to the usage file.
    write_errors: u64,
}

impl Control {
    /// `/readyz`: ready (true) when every shard is alive and serves the current plan and every
    /// destination's warm pool has been filled on every shard since the plan was applied; the
    /// text says what is missing. A raised end-to-end probe alarm adds a line; it makes the
    /// answer 503 only with `probe.e2e.alarm_affects_readiness`. Blocks while asking the shards
    /// (call from a blocking task).
    pub fn readiness(&self) -> (bool, String) {
        let guard = self.gateway.lock();
        let Some(gateway) = guard.as_ref() else {
            return (false, "stopping\n".into());
        };
        let mut problems = String::new();
        let dead = gateway.dead_shards();
        if !dead.is_empty() {
            problems.push_str(&format!("shard(s) {dead:?} stopped\n"));
        }
        for (shard, served) in gateway.stale_shards() {
            problems.push_str(&format!(
                "shard {shard} serves configuration generation {served}, not {}\n",
                gateway.generation()
            ));
        }
        let plan = gateway.plan().clone();
        let snapshots = gateway.per_shard_metrics();
        if snapshots.len() < gateway.shard_count() {
            problems.push_str(&format!(
                "{} of {} shards answered\n",
                snapshots.len(),
                gateway.shard_count()
            ));
        }
        for (shard, snapshot) in snapshots.iter().enumerate() {
            for d in &snapshot.cold_destinations {
                let name = plan
                    .destinations
                    .get(usize::from(*d))
                    .map_or("?", |d| d.name.as_str());
                problems.push_str(&format!(
                    "destination {name}: warm pool not filled yet on shard {shard}\n"
                ));
            }
        }
        drop(guard);
        // The end-to-end probe's alarm: a detail line; a 503 only with
        // probe.e2e.alarm_affects_readiness.
        let mut details = String::new();
        if let Some(e2e) = self.probes.lock().e2e() {
            if let Some(why) = e2e.alarm() {
                let line = format!(
                    "end-to-end probe alarm ({}): {why}\n",
                    e2e.settings().listener
                );
                if e2e.affects_readiness() {
                    problems.push_str(&line);
                } else {
                    details.push_str(&line);
                }
            }
        }
        if problems.is_empty() {
            (true, format!("ready\n{details}"))
        } else {
            problems.push_str(&details);
            (false, problems)
        }
    }

    /// Wrap a running gateway. `config_path` is what reloads re-read (None: reload disabled).
    pub fn new(gateway: Gateway, config_path: Option<PathBuf>) -> Arc<Control> {
        let (plan_tx, _) = tokio::sync::watch::channel(gateway.plan().clone());
        let settings = gateway.plan().usage.clone();
        let gateway_plan = gateway.plan().clone();
        let metrics_settings = gateway_plan.metrics;
        let usage = UsageState {
            enabled: settings.enabled,
            ledger: usage::Ledger::new(SystemTime::now(), settings.keep_intervals),
            // No usage file when metering is off: there would be nothing to write.
            file: settings.file.filter(|_| settings.enabled).map(|path| {
                usage_file::UsageFile::new(path, settings.max_file_bytes, settings.max_file_age)
            }),
            interval: settings.interval,
            write_errors: 0,
        };
        Arc::new(Control {
            usage: Mutex::new(usage),
            gateway: Mutex::new(Some(gateway)),
            reload_lock: Mutex::new(()),
            config_path,
            reloads: Mutex::new(ReloadCounters::default()),
            plan_tx,
            dns: Mutex::new(BTreeMap::new()),
            credentials: Mutex::new(BTreeMap::new()),
            radius: Arc::new(Mutex::new(radius::RadiusStats::default())),
            probes: Mutex::new(probes::Board::new(gateway_plan, std::time::Instant::now())),
            probe_inputs: Mutex::new(probes::driver::Inputs::default()),
            interval_log: Mutex::new(interval_log::IntervalLog::new(
                SystemTime::now(),
                metrics_settings.interval_log_keep,
            )),
            interval_log_period: metrics_settings.interval_log_period,
            histograms_on: metrics_settings.histograms,
        })
    }

    /// The served plan, updated after every reload that changed it.
    pub fn plan_updates(&self) -> tokio::sync::watch::Receiver<Arc<Plan>> {
        self.plan_tx.subscribe()
    }

    /// Make sure every re-resolved destination has counters (so `/metrics` shows them at 0).
    pub fn register_dns_destinations<'a>(&self, names: impl Iterator<Item = &'a str>) {
        let mut dns = self.dns.lock();
        for name in names {
            dns.entry(name.to_owned()).or_default();
        }
    }

    /// Count a re-resolution of destination `name`: `changed` (applied on every shard) or a
    /// failure.
    pub fn count_dns(&self, name: &str, changed: bool) {
        let mut dns = self.dns.lock();
        let c = dns.entry(name.to_owned()).or_default();
        if changed {
            c.changes += 1;
        } else {
            c.failures += 1;
        }
    }

    /// Record the token-carrying destinations of the served plan and their tokens' expiries
    /// (`None`: no token yet). Destinations no longer listed keep their counters but lose their
    /// expiry (their gauge reads 0).
    pub fn record_credentials<'a>(
        &self,
        current: impl Iterator<Item = (&'a str, Option<SystemTime>)>,
    ) {
        let mut credentials = self.credentials.lock();
        let mut seen = Vec::new();
        for (name, expires_at) in current {
            credentials.entry(name.to_owned()).or_default().expires_at = expires_at;
            seen.push(name);
        }
        for (name, c) in credentials.iter_mut() {
            if !seen.contains(&name.as_str()) {
                c.expires_at = None;
            }
        }
    }

    /// Count a token refresh of destination `name`: `ok` (a token was obtained) or an error.
    pub fn count_credential(&self, name: &str, ok: bool) {
        let mut credentials = self.credentials.lock();
        let c = credentials.entry(name.to_owned()).or_default();
        if ok {
            c.ok += 1;
        } else {
            c.errors += 1;
        }
    }

    /// Hand new addresses of `destination` to every shard, if `plan` is still the one served.
    /// `Ok(false)`: a reload replaced `plan` (its own resolution stands) or the gateway is
    /// stopping. Blocking: waits for every shard's acknowledgement.
    pub fn apply_addrs(
        &self,
        plan: &Arc<Plan>,
        destination: DestinationId,
        addrs: Vec<SocketAddr>,
    ) -> Result<bool, String> {
        let mut guard = self.gateway.lock();
        let Some(gateway) = guard.as_mut() else {
            return Ok(false);
        };
        let recorded = addrs.clone();
        let applied = gateway
            .update_addrs(plan, destination, addrs)
            .map_err(|e| e.to_string())?;
        if applied {
            self.probe_inputs
                .lock()
                .record_addrs(plan, destination, &recorded);
        }
        Ok(applied)
    }

    /// Hand cloud tokens minted for `plan` to every shard, if `plan` is still the one served.
    /// `Ok(false)`: a reload replaced `plan` or the gateway is stopping. Blocking: waits for
    /// every shard's acknowledgement.
    pub fn apply_tokens(
        &self,
        plan: &Arc<Plan>,
        tokens: Vec<(DestinationId, crate::policy::cloud::Token)>,
    ) -> Result<bool, String> {
        let mut guard = self.gateway.lock();
        let Some(gateway) = guard.as_mut() else {
            return Ok(false);
        };
        let recorded = tokens.clone();
        let applied = gateway
            .set_tokens(plan, tokens)
            .map_err(|e| e.to_string())?;
        if applied {
            self.probe_inputs.lock().record_tokens(plan, &recorded);
        }
        Ok(applied)
    }

    /// Prometheus exposition of the merged shard metrics. Blocks up to a second per shard.
    pub fn render_metrics(&self) -> String {
        let guard = self.gateway.lock();
        match guard.as_ref() {
            Some(g) => {
                let shards = g.metrics();
                let dns = self.dns.lock().clone();
                let plan = g.plan();
                let listeners: Vec<&str> = plan.listeners.iter().map(|l| l.name.as_str()).collect();
                let plans = metrics::PlanGenerations {
                    expected: g.generation(),
                    served: g.served_generations(),
                };
                let radius = self.radius.lock().clone();
                let mut text = metrics::render(
                    &shards,
                    &listeners,
                    &plans,
                    *self.reloads.lock(),
                    &dns,
                    plan.radius.as_ref().map(|_| &radius),
                );
                let credentials = self.credentials.lock().clone();
                metrics::render_credentials(&mut text, &credentials, SystemTime::now());
                let usage = self.usage.lock();
                metrics::render_usage(
                    &mut text,
                    &metrics::UsageCounters {
                        intervals: usage.ledger.intervals_closed(),
                        file_write_errors: usage.write_errors,
                        file_rotations: usage.file.as_ref().map_or(0, |f| f.rotations()),
                        sims: usage.ledger.sims(),
                    },
                );
                drop(usage);
                self.probes.lock().render_metrics(&mut text);
                text
            }
            None => String::new(),
        }
    }

    /// `GET /admin/sessions`: the page `query` asks for, as JSON. Blocks up to a second per
    /// shard (call from a blocking task).
    pub fn sessions_json(&self, query: &sessions::Query) -> Result<String, String> {
        let guard = self.gateway.lock();
        let Some(gateway) = guard.as_ref() else {
            return Err("stopping".into());
        };
        if let Some(shard) = query.shard {
            if shard >= gateway.shard_count() {
                return Err(format!(
                    "shard: {shard}; this gateway has shards 0..{}",
                    gateway.shard_count()
                ));
            }
        }
        let (page, answered) = gateway.sessions(query.shard, query.page.clone());
        drop(guard);
        Ok(sessions::answer_json(query, &page, answered))
    }

    /// Merged metrics, if the gateway is running.
    pub fn metrics(&self) -> Option<crate::shard::ShardMetrics> {
        self.gateway.lock().as_ref().map(Gateway::metrics)
    }

    /// Re-read the config file and hand the new plan to every shard. On any error the running
    /// plan keeps serving and the error (with field paths) is returned.
    pub fn reload(&self) -> Result<(), String> {
        let _serial = self.reload_lock.lock();
        let result = self.try_reload();
        let mut counters = self.reloads.lock();
        match &result {
            Ok(()) => {
                counters.ok += 1;
                tracing::info!("configuration reloaded");
            }
            Err(e) => {
                counters.failed += 1;
                tracing::error!("reload failed:\n{e}");
            }
        }
        result
    }

    fn try_reload(&self) -> Result<(), String> {
        let path = self
            .config_path
            .as_deref()
            .ok_or_else(|| "reload needs a config file (simgate run --config FILE)".to_string())?;
        let plan = config::load_plan(path).map_err(|e| e.to_string())?;
        log_plan_warnings(&plan);
        if self
            .gateway
            .lock()
            .as_ref()
            .is_some_and(|g| g.plan().usage != plan.usage)
        {
            tracing::warn!("usage: changes to [usage] apply at the next restart");
        }
        if self
            .gateway
            .lock()
            .as_ref()
            .is_some_and(|g| g.plan().metrics != plan.metrics)
        {
            tracing::warn!("metrics: changes to [metrics] apply at the next restart");
        }
        let mut guard = self.gateway.lock();
        let gateway = guard
            .as_mut()
            .ok_or_else(|| "gateway is stopping".to_string())?;
        if plan.gateway.shards != gateway.shard_count() {
            return Err(format!(
                "gateway.shards: changing the shard count ({} -> {}) needs a restart",
                gateway.shard_count(),
                plan.gateway.shards
            ));
        }
        let old_bind = gateway.plan().radius.as_ref().map(|r| r.bind);
        let new_bind = plan.radius.as_ref().map(|r| r.bind);
        if old_bind != new_bind {
            return Err(format!(
                "radius.bind: starting, stopping or moving the RADIUS listener ({} -> {}) \
                 needs a restart",
                old_bind.map_or("none".to_owned(), |a| a.to_string()),
                new_bind.map_or("none".to_owned(), |a| a.to_string()),
            ));
        }
        let result = gateway.reload(Arc::new(plan)).map_err(|e| e.to_string());
        // Even a partly acknowledged reload changed the served plan.
        let served = gateway.plan().clone();
        self.plan_tx.send_if_modified(|current| {
            let changed = !Arc::ptr_eq(current, &served);
            *current = served;
            changed
        });
        result
    }

    /// Stop the data plane: stop accepting, drain, join shards; then close the partial usage
    /// interval (with everything the shards counted up to the end of their drain) and write
    /// it. Idempotent.
    pub fn shutdown(&self) {
        let gateway = self.gateway.lock().take();
        if let Some(g) = gateway {
            let records = g.shutdown();
            let mut usage = self.usage.lock();
            usage.ledger.absorb(&records);
            close_interval(&mut usage);
        }
    }

    /// Take the shards' usage deltas, close the open usage interval now and append it to the
    /// usage file. Blocking (waits for the shards). Does nothing once the gateway stopped
    /// (shutdown closed the last interval).
    pub fn close_usage_interval(&self) {
        let mut guard = self.gateway.lock();
        let Some(gateway) = guard.as_mut() else {
            return;
        };
        let records = gateway.take_usage();
        let mut usage = self.usage.lock();
        usage.ledger.absorb(&records);
        close_interval(&mut usage);
    }

    /// `/admin/usage`: totals per SIM and group of `group` (all if `None`) since `since`
    /// (since start if `None`), current to this call. Blocking (takes the shards' deltas).
    pub fn usage_report(
        &self,
        group: Option<&str>,
        since: Option<SystemTime>,
    ) -> Result<usage::UsageAnswer, String> {
        let mut guard = self.gateway.lock();
        let records = guard.as_mut().map(Gateway::take_usage).unwrap_or_default();
        let mut usage = self.usage.lock();
        drop(guard);
        usage.ledger.absorb(&records);
        usage.ledger.query(group, since, SystemTime::now())
    }

    /// `usage.interval` in force.
    pub fn usage_interval(&self) -> std::time::Duration {
        self.usage.lock().interval
    }
}

/// What `/admin/usage` answers (409) when usage metering is off.
const USAGE_OFF: &str = "usage metering is off (usage.enabled = false)";

/// Close the open usage interval now and append its lines to the usage file (if any).
fn close_interval(usage: &mut UsageState) {
    let now = SystemTime::now();
    let lines = usage::interval_lines(usage.ledger.close(now));
    if let Some(file) = usage.file.as_mut() {
        if let Err(e) = file.append(lines.as_bytes(), now) {
            usage.write_errors += 1;
            tracing::error!(
                file = %file.path().display(),
                error = %e,
                "usage: cannot write the usage file; the interval is kept and written with the next"
            );
        }
    }
}

/// Every `usage.interval`: close an interval (on the blocking pool: it waits for shards).
async fn usage_loop(control: Arc<Control>) {
    if !control.usage.lock().enabled {
        return;
    }
    let period = control.usage_interval();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let c = control.clone();
        let _ = tokio::task::spawn_blocking(move || c.close_usage_interval()).await;
    }
}

impl Control {
    /// Close an interval of the latency histograms' interval logs with the shards' merged
    /// histograms now (blocks while asking the shards).
    pub fn close_latency_interval(&self) {
        let Some(m) = self.metrics() else {
            return;
        };
        self.interval_log.lock().tick(SystemTime::now(), m.latency);
    }
}

/// Every `metrics.interval_log_period`: close an interval of the interval logs (on the
/// blocking pool: it waits for shards).
async fn interval_log_loop(control: Arc<Control>) {
    if !control.histograms_on {
        // `metrics.histograms = false` (read at start): nothing to log.
        return;
    }
    let period = control.interval_log_period;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let c = control.clone();
        let _ = tokio::task::spawn_blocking(move || c.close_latency_interval()).await;
    }
}

/// Log each of the plan's warnings (`path: message`, e.g. an inline secret) at warn.
fn log_plan_warnings(plan: &Plan) {
    for warning in &plan.warnings {
        tracing::warn!("configuration: {warning}");
    }
}

/// `simgate run`: load the config, start shards, announce listeners on stdout, then serve the
/// admin endpoint and signals until SIGINT/SIGTERM.
pub fn run(config_path: &Path) -> Result<(), RunError> {
    // Before the plan is compiled: its connection caps derive from the raised limit.
    match config::fd_limit::raise_soft_to_hard() {
        Ok(Some((before, after))) => {
            tracing::info!(
                before,
                after,
                "raised the open-file soft limit to the hard limit"
            )
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file soft limit"),
    }
    let plan = config::load_plan(config_path).map_err(RunError::Config)?;
    log_plan_warnings(&plan);
    tracing::info!(
        max_connections = plan.gateway.max_connections,
        reserved_fds = plan.gateway.reserved_fds,
        open_files_limit = ?plan.gateway.open_files_limit,
        "device connection cap"
    );
    let admin = plan.gateway.admin;
    let radius_settings = plan.radius.clone();
    let gateway = Gateway::start(Arc::new(plan)).map_err(RunError::Gateway)?;
    let bindings = gateway.bindings().clone();
    for (name, addr) in gateway.listener_addrs() {
        println!("listening {name} {addr}");
    }
    let control = Control::new(gateway, Some(config_path.to_path_buf()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("simgate-control")
        .build()
        .map_err(RunError::Control)?;
    if let Some(file) = config::test_hosts_override() {
        tracing::warn!(
            file = %file.display(),
            "{} is set: endpoint names resolve from this file, not DNS (test-only)",
            config::TEST_HOSTS_FILE_ENV
        );
    }
    let result = runtime.block_on(async {
        tokio::spawn(resolve::run(
            control.clone(),
            Arc::new(resolve::SystemResolver),
        ));
        tokio::spawn(tokens::run(control.clone()));
        tokio::spawn(usage_loop(control.clone()));
        tokio::spawn(interval_log_loop(control.clone()));
        tokio::spawn(probes::driver::run(control.clone()));
        tokio::spawn(probes::driver::run_e2e(control.clone()));
        if let Some(settings) = radius_settings {
            let socket = radius::bind(settings.bind).map_err(RunError::Control)?;
            let bound = socket.local_addr().map_err(RunError::Control)?;
            println!("radius {bound}");
            tokio::spawn(radius::serve(
                socket,
                control.plan_updates(),
                bindings,
                control.radius.clone(),
            ));
        }
        if let Some(addr) = admin {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(RunError::Control)?;
            let bound = listener.local_addr().map_err(RunError::Control)?;
            println!("admin {bound}");
            tokio::spawn(serve_admin(listener, control.clone()));
        }
        println!("ready");
        wait_for_signals(&control).await.map_err(RunError::Control)
    });
    let c = control.clone();
    // Draining joins shard threads: do it off the runtime.
    let _ = std::thread::spawn(move || c.shutdown()).join();
    // A DNS lookup stuck in getaddrinfo on the blocking pool must not hold up the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn wait_for_signals(control: &Arc<Control>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let c = control.clone();
                let _ = tokio::task::spawn_blocking(move || c.reload()).await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down: draining connections");
    Ok(())
}

/// Serve the admin endpoint: `GET /healthz` (liveness), `GET /readyz` (readiness), `GET
/// /metrics`, `GET /admin/usage`, `GET /admin/probes`, `GET /admin/sessions`, `GET
/// /admin/config`, `POST /-/reload`.
pub async fn serve_admin(listener: tokio::net::TcpListener, control: Arc<Control>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: pause instead of spinning the control thread.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let control = control.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(move |req| admin(req, control.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

/// Whether `headers` carry `Authorization: Bearer <token>`. Both sides are hashed first and
/// the digests compared in constant time, so neither the token's bytes nor its length leak
/// through timing.
fn bearer_matches(headers: &hyper::HeaderMap, token: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    let given = headers
        .get(hyper::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .and_then(|v| {
            let (scheme, rest) = v.split_at(v.iter().position(|b| *b == b' ')?);
            scheme
                .eq_ignore_ascii_case(b"bearer")
                .then(|| rest.trim_ascii())
        })
        .unwrap_or_default();
    let digest = |bytes: &[u8]| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let (a, b) = (digest(given), digest(token));
    bool::from(a.as_ref().ct_eq(b.as_ref())) && !given.is_empty()
}

async fn admin(
    req: Request<Incoming>,
    control: Arc<Control>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
        Ok(r)
    };
    const TEXT: &str = "text/plain; charset=utf-8";
    // The status page: a constant without data, served without the token (a browser cannot send
    // one on navigation); its fetches carry the token from the URL fragment (see [`status`]).
    if req.method() == Method::GET && status::is_page(req.uri().path()) {
        let mut r = Response::new(Full::new(Bytes::from_static(status::PAGE.as_bytes())));
        let h = r.headers_mut();
        h.insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
        );
        for (name, value) in status::headers() {
            h.insert(name, hyper::header::HeaderValue::from_static(value));
        }
        return Ok(r);
    }
    // The token of the plan being served: a reload that changes it applies to the next request.
    let token = control.plan_tx.borrow().gateway.admin_token.clone();
    if let Some(token) = token {
        if !bearer_matches(req.headers(), &token.0) {
            let mut r = Response::new(Full::new(Bytes::from_static(
                b"admin token required: Authorization: Bearer <gateway.admin_token>\n",
            )));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer realm=\"simgate-admin\""),
            );
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(TEXT),
            );
            return Ok(r);
        }
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => {
            let (dead, stale, expected) = control
                .gateway
                .lock()
                .as_ref()
                .map(|g| (g.dead_shards(), g.stale_shards(), g.generation()))
                .unwrap_or_default();
            let mut problems = String::new();
            if !dead.is_empty() {
                problems.push_str(&format!(
                    "shard(s) {dead:?} stopped unexpectedly; restart simgate\n"
                ));
            }
            for (shard, served) in stale {
                problems.push_str(&format!(
                    "shard {shard} serves configuration generation {served}, not {expected}: \
                     it did not apply a reload; restart simgate\n"
                ));
            }
            if problems.is_empty() {
                reply(StatusCode::OK, TEXT, "ok\n".into())
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, problems)
            }
        }
        (&Method::GET, "/readyz") => {
            let (status, body) = tokio::task::spawn_blocking(move || control.readiness())
                .await
                .unwrap_or((false, "readiness check failed\n".into()));
            let code = if status {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(code, TEXT, body)
        }
        (&Method::GET, "/metrics") => {
            let body = tokio::task::spawn_blocking(move || control.render_metrics())
                .await
                .unwrap_or_default();
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                body,
            )
        }
        (&Method::POST, "/-/reload") => {
            match tokio::task::spawn_blocking(move || control.reload()).await {
                Ok(Ok(())) => reply(StatusCode::OK, TEXT, "reloaded\n".into()),
                Ok(Err(e)) => reply(StatusCode::UNPROCESSABLE_ENTITY, TEXT, format!("{e}\n")),
                Err(_) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    "reload failed\n".into(),
                ),
            }
        }
        (&Method::GET, "/admin/usage") if !control.usage.lock().enabled => {
            reply(StatusCode::CONFLICT, TEXT, format!("{USAGE_OFF}\n"))
        }
        (&Method::GET, "/admin/usage") => {
            let csv = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("text/csv"));
            let query = match UsageQuery::parse(req.uri().query().unwrap_or(""), csv) {
                Ok(q) => q,
                Err(e) => return reply(StatusCode::BAD_REQUEST, TEXT, format!("{e}\n")),
            };
            let answer = tokio::task::spawn_blocking(move || {
                control
                    .usage_report(query.group.as_deref(), query.since)
                    .map(|a| (a, query.csv))
            })
            .await;
            match answer {
                Ok(Ok((a, true))) => reply(
                    StatusCode::OK,
                    "text/csv; charset=utf-8",
                    usage::answer_csv(&a),
                ),
                Ok(Ok((a, false))) => {
                    reply(StatusCode::OK, "application/json", usage::answer_json(&a))
                }
                Ok(Err(e)) => reply(StatusCode::UNPROCESSABLE_ENTITY, TEXT, format!("{e}\n")),
                Err(_) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    "usage failed\n".into(),
                ),
            }
        }
        (&Method::GET, "/admin/config") => {
            let plan = control.plan_tx.borrow().clone();
            let body = effective_config::render(&plan).to_string();
            reply(StatusCode::OK, "application/json", body)
        }
        (&Method::GET, "/admin/sessions") => {
            let query =
                match sessions::Query::parse(req.uri().query().unwrap_or(""), percent_decode) {
                    Ok(q) => q,
                    Err(e) => return reply(StatusCode::BAD_REQUEST, TEXT, format!("{e}\n")),
                };
            let body = tokio::task::spawn_blocking(move || control.sessions_json(&query)).await;
            match body {
                Ok(Ok(body)) => reply(StatusCode::OK, "application/json", body),
                Ok(Err(e)) => reply(StatusCode::BAD_REQUEST, TEXT, format!("{e}\n")),
                Err(_) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    "sessions failed\n".into(),
                ),
            }
        }
        (&Method::GET, path) if path.starts_with(histograms::PREFIX) => {
            let name = path[histograms::PREFIX.len()..].to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            let answer = tokio::task::spawn_blocking(move || {
                match name.strip_suffix(histograms::LOG_SUFFIX) {
                    // The interval log is kept here: checked against the served plan, no
                    // snapshot of the shards.
                    Some(name) => {
                        let plan = control.plan_tx.borrow().clone();
                        let (latency, destination, protocol) = histograms::parse(
                            !control.histograms_on,
                            &|d| plan.destinations.iter().any(|p| p.name == d),
                            name,
                            &query,
                        )?;
                        control
                            .interval_log
                            .lock()
                            .render(latency, &destination, protocol)
                            .map_err(histograms::HistogramError::Internal)
                    }
                    None => {
                        let m = control.metrics().unwrap_or_default();
                        histograms::answer(&m, &name, &query)
                    }
                }
            })
            .await;
            match answer {
                Ok(Ok(text)) => reply(StatusCode::OK, TEXT, text),
                Ok(Err(histograms::HistogramError::NotFound(e))) => {
                    reply(StatusCode::NOT_FOUND, TEXT, format!("{e}\n"))
                }
                Ok(Err(histograms::HistogramError::BadQuery(e))) => {
                    reply(StatusCode::BAD_REQUEST, TEXT, format!("{e}\n"))
                }
                Ok(Err(histograms::HistogramError::Internal(e))) => {
                    tracing::error!(error = %e, "interval log could not be rendered");
                    reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("{e}\n"))
                }
                Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, "failed\n".into()),
            }
        }
        (&Method::GET, "/admin/probes") => {
            let body = control.probes.lock().json().to_string();
            reply(StatusCode::OK, "application/json", body)
        }
        (
            _,
            "/healthz" | "/readyz" | "/metrics" | "/-/reload" | "/admin/usage" | "/admin/probes"
            | "/admin/sessions" | "/admin/config",
        ) => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "method not allowed\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found; try / (status page), /healthz, /readyz, /metrics, \
             /histograms/{name}?destination=, /histograms/{name}/log?destination=, \
             /admin/usage, /admin/probes, /admin/sessions, /admin/config, POST /-/reload\n"
                .into(),
        ),
    }
}

/// The query of `GET /admin/usage`: `group=`, `since=` (RFC 3339), `format=json|csv`.
struct UsageQuery {
    group: Option<String>,
    since: Option<SystemTime>,
    csv: bool,
}

impl UsageQuery {
    /// Parse `query`; `csv` is the default format (from the Accept header).
    fn parse(query: &str, csv: bool) -> Result<UsageQuery, String> {
        let mut q = UsageQuery {
            group: None,
            since: None,
            csv,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value =
                percent_decode(value).ok_or_else(|| format!("{key}: bad percent-encoding"))?;
            match key {
                "group" => q.group = Some(value),
                "since" => {
                    q.since = Some(usage::parse_rfc3339(&value).ok_or_else(|| {
                        format!("since: {value:?} is not an RFC 3339 time (2026-12-05T09:00:00Z)")
                    })?)
                }
                "format" => {
                    q.csv = match value.as_str() {
                        "csv" => true,
                        "json" => false,
                        other => return Err(format!("format: {other:?}; expected json or csv")),
                    }
                }
                other => {
                    return Err(format!(
                        "unknown parameter {other:?}; expected group, since, format"
                    ))
                }
            }
        }
        Ok(q)
    }
}

/// Decode the `%XX` escapes of a query value (a `+` stays a `+`, as RFC 3339 offsets need); `None` for a bad escape or non-UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}
