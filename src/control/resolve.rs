//! Periodic re-resolution of destination DNS names, so a long-running gateway follows cloud
//! endpoints whose addresses change (AWS IoT Core, Azure, Google) without a reload.
//!
//! ```text
//!  control thread (tokio)             blocking pool                 shards
//!  run(): every resolve_interval ──► getaddrinfo(name) ──result──► Watches::complete
//!        Changed ──► Control::apply_addrs ──ShardCommand::UpdateAddrs (acked)──► Pools::set_addrs
//! ```
//!
//! [`Watches`] is the pure part (no IO, time passed in): one watch per destination of the
//! current plan that has [`crate::policy::Reresolve`] set (a DNS endpoint with
//! `resolve_interval` on), when each is due, and the *last good* address set. A lookup result
//! becomes an [`Outcome`]: the same set of addresses (order ignored) is `Unchanged`; a different,
//! non-empty set is `Changed`; an error or an empty answer is `Failed` and **keeps the last good
//! addresses** — a lookup never empties a destination.
//!
//! [`run`] is the driver on the control thread: it starts due lookups on tokio's blocking pool
//! (`getaddrinfo` blocks, so it never runs on a shard nor on the control runtime itself), applies
//! changes through [`Control::apply_addrs`], counts changes and failures per destination for
//! `/metrics`, and rebuilds its watches whenever a reload publishes a new plan (a reload
//! resolves every endpoint afresh, so its addresses are the new last good ones). Results of
//! lookups started under an older plan are discarded.
//!
//! What this does not do: honour DNS TTLs (the interval is configured), change the plan (the
//! plan stays immutable; new addresses go to the shards' pools, so warm pools and plan
//! generations are untouched), or close pooled connections to addresses that disappeared (they
//! serve until they close or idle out).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::policy::{DestinationId, Plan};

use super::Control;

/// A name lookup. Blocking; implementations must be callable from any thread.
pub trait Resolver: Send + Sync + 'static {
    /// Addresses of `host` with `port`; the error is a human-readable reason.
    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String>;
}

/// The system resolver (with the test-only hosts-file override of [`crate::config`]).
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        crate::config::resolve_system(host, port)
    }
}

/// What one completed lookup means for its destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Same set of addresses as the last good one (possibly in another order).
    Unchanged,
    /// A different, non-empty set: the new last good addresses.
    Changed {
        /// The last good addresses before this lookup.
        previous: Vec<SocketAddr>,
        /// The new addresses, in the resolver's order.
        addrs: Vec<SocketAddr>,
    },
    /// The lookup failed or returned nothing; the last good addresses stay.
    Failed(String),
}

/// A lookup to run, as handed out by [`Watches::start_due`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// Index of the watch, for [`Watches::complete`].
    pub index: usize,
    /// The destination's name (for logs and metrics).
    pub name: String,
    /// DNS name to look up.
    pub host: String,
    /// Port of the endpoint.
    pub port: u16,
}

#[derive(Debug)]
struct Watch {
    destination: DestinationId,
    name: String,
    host: String,
    port: u16,
    interval: Duration,
    last_good: Vec<SocketAddr>,
    next_due: Instant,
    in_flight: bool,
}

/// The watched destinations of one plan.
#[derive(Debug)]
pub struct Watches {
    plan: Arc<Plan>,
    watches: Vec<Watch>,
}

impl Watches {
    /// Watches for every destination of `plan` with re-resolution on. The plan's addresses were
    /// resolved when it was compiled: they are the last good ones, and the first lookup is due
    /// one interval after `now`.
    pub fn new(plan: Arc<Plan>, now: Instant) -> Watches {
        let watches = plan
            .destinations
            .iter()
            .filter_map(|d| {
                let r = d.resolve.as_ref()?;
                Some(Watch {
                    destination: d.id,
                    name: d.name.clone(),
                    host: r.host.clone(),
                    port: r.port,
                    interval: r.interval,
                    last_good: d.addrs.clone(),
                    next_due: now + r.interval,
                    in_flight: false,
                })
            })
            .collect();
        Watches { plan, watches }
    }

    /// The plan these watches belong to.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// Names of the watched destinations.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.watches.iter().map(|w| w.name.as_str())
    }

    /// The destination and last good addresses of watch `index`.
    pub fn current(&self, index: usize) -> Option<(DestinationId, &[SocketAddr])> {
        self.watches
            .get(index)
            .map(|w| (w.destination, w.last_good.as_slice()))
    }

    /// Lookups due at `now` that are not already running; each is marked running until its
    /// [`Watches::complete`].
    pub fn start_due(&mut self, now: Instant) -> Vec<Lookup> {
        let mut out = Vec::new();
        for (index, w) in self.watches.iter_mut().enumerate() {
            if !w.in_flight && w.next_due <= now {
                w.in_flight = true;
                out.push(Lookup {
                    index,
                    name: w.name.clone(),
                    host: w.host.clone(),
                    port: w.port,
                });
            }
        }
        out
    }

    /// When the next lookup that is not running falls due (`None`: nothing to watch, or every
    /// lookup is running).
    pub fn next_due(&self) -> Option<Instant> {
        self.watches
            .iter()
            .filter(|w| !w.in_flight)
            .map(|w| w.next_due)
            .min()
    }

    /// Record the result of the lookup of watch `index`, finished at `now`; the next one is due
    /// one interval later. An error or an empty answer keeps the last good addresses.
    pub fn complete(
        &mut self,
        index: usize,
        result: Result<Vec<SocketAddr>, String>,
        now: Instant,
    ) -> Outcome {
        let Some(w) = self.watches.get_mut(index) else {
            return Outcome::Failed("internal error: unknown lookup".into());
        };
        w.in_flight = false;
        w.next_due = now + w.interval;
        match result {
            Err(why) => Outcome::Failed(why),
            Ok(addrs) if addrs.is_empty() => Outcome::Failed("no addresses".into()),
            Ok(addrs) if same_set(&addrs, &w.last_good) => Outcome::Unchanged,
            Ok(addrs) => {
                let mut unique = Vec::with_capacity(addrs.len());
                for a in addrs {
                    if !unique.contains(&a) {
                        unique.push(a);
                    }
                }
                let previous = std::mem::replace(&mut w.last_good, unique.clone());
                Outcome::Changed {
                    previous,
                    addrs: unique,
                }
            }
        }
    }
}

impl Watches {
    /// Undo a change `complete` reported but the shards did not apply: `previous` becomes the
    /// last good set again, so the next lookup reports the change again.
    pub fn revert(&mut self, index: usize, previous: Vec<SocketAddr>) {
        if let Some(w) = self.watches.get_mut(index) {
            w.last_good = previous;
        }
    }
}

/// Equal as sets: order and duplicates do not matter (round-robin DNS rotates its answers).
fn same_set(a: &[SocketAddr], b: &[SocketAddr]) -> bool {
    a.iter().collect::<BTreeSet<_>>() == b.iter().collect::<BTreeSet<_>>()
}

/// Longest sleep when nothing is due (a reload wakes the loop anyway).
const IDLE_WAIT: Duration = Duration::from_secs(3600);

/// The re-resolution loop; runs on the control thread's runtime until the gateway stops
/// publishing plans.
pub async fn run(control: Arc<Control>, resolver: Arc<dyn Resolver>) {
    let mut plans = control.plan_updates();
    let mut watches = Watches::new(plans.borrow_and_update().clone(), Instant::now());
    control.register_dns_destinations(watches.names());
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(
        Arc<Plan>,
        usize,
        Result<Vec<SocketAddr>, String>,
    )>();
    loop {
        for lookup in watches.start_due(Instant::now()) {
            let resolver = resolver.clone();
            let done = done_tx.clone();
            let plan = watches.plan().clone();
            tokio::task::spawn_blocking(move || {
                let result = resolver.resolve(&lookup.host, lookup.port);
                let _ = done.send((plan, lookup.index, result));
            });
        }
        let wake_at = watches
            .next_due()
            .unwrap_or_else(|| Instant::now() + IDLE_WAIT);
        tokio::select! {
            _ = tokio::time::sleep_until(wake_at.into()) => {}
            changed = plans.changed() => {
                if changed.is_err() {
                    return;
                }
                watches = Watches::new(plans.borrow_and_update().clone(), Instant::now());
                control.register_dns_destinations(watches.names());
            }
            Some((plan, index, result)) = done_rx.recv() => {
                if !Arc::ptr_eq(&plan, watches.plan()) {
                    continue; // Started under a plan that a reload replaced.
                }
                let outcome = watches.complete(index, result, Instant::now());
                let Some((destination, _)) = watches.current(index) else { continue };
                if let Some(previous) = handle_outcome(&control, &plan, destination, outcome).await {
                    // Not applied: forget the change so the next lookup sends it again.
                    watches.revert(index, previous);
                }
            }
        }
    }
}

/// Log, count and apply one lookup's outcome. Returns the previous addresses when a change
/// could not be applied (a shard did not acknowledge it), so the caller can forget the change.
async fn handle_outcome(
    control: &Arc<Control>,
    plan: &Arc<Plan>,
    destination: DestinationId,
    outcome: Outcome,
) -> Option<Vec<SocketAddr>> {
    // Name and `host:port` only: a destination holds no secret in either.
    let dest = plan.destination(destination);
    let (name, endpoint) = (dest.name.as_str(), dest.endpoint.as_str());
    match outcome {
        Outcome::Unchanged => None,
        Outcome::Failed(error) => {
            control.count_dns(name, false);
            tracing::warn!(
                destination = %name,
                %endpoint,
                %error,
                "re-resolving the endpoint failed; keeping the last good addresses"
            );
            None
        }
        Outcome::Changed { previous, addrs } => {
            tracing::info!(
                destination = %name,
                %endpoint,
                ?previous,
                new = ?addrs,
                "endpoint addresses changed; new connections use the new addresses"
            );
            let c = control.clone();
            let p = plan.clone();
            let applied =
                tokio::task::spawn_blocking(move || c.apply_addrs(&p, destination, addrs)).await;
            match applied {
                Ok(Ok(true)) => {
                    control.count_dns(name, true);
                    None
                }
                // A reload replaced the plan meanwhile; it resolved the name itself.
                Ok(Ok(false)) => None,
                Ok(Err(e)) => {
                    control.count_dns(name, false);
                    tracing::error!(destination = %name, error = %e, "address update not applied; retrying at the next lookup");
                    Some(previous)
                }
                Err(_) => {
                    control.count_dns(name, false);
                    tracing::error!(destination = %name, "address update task failed; retrying at the next lookup");
                    Some(previous)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use parking_lot::Mutex;

    /// A resolver answering from a table the test edits; a missing name is an error.
    #[derive(Default)]
    struct FakeResolver {
        answers: Mutex<HashMap<String, Result<Vec<SocketAddr>, String>>>,
    }

    impl FakeResolver {
        fn set(&self, host: &str, answer: Result<Vec<&str>, &str>) {
            let answer = answer
                .map(|v| v.iter().map(|a| a.parse().unwrap()).collect())
                .map_err(str::to_owned);
            self.answers.lock().insert(host.to_owned(), answer);
        }
    }

    impl Resolver for FakeResolver {
        fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
            match self.answers.lock().get(host) {
                Some(Ok(addrs)) => Ok(addrs
                    .iter()
                    .map(|a| SocketAddr::new(a.ip(), port))
                    .collect()),
                Some(Err(e)) => Err(e.clone()),
                None => Err("Name or service not known".into()),
            }
        }
    }

    /// Two DNS destinations (intervals 10 s and 60 s), one IP literal, one with re-resolution
    /// off; compiled through the real config code with a fake environment.
    fn plan() -> Arc<Plan> {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).unwrap();
        let text = r#"
[[listener]]
name = "http"
protocol = "http"
bind = "127.0.0.1:0"

[[destination]]
name = "a"
adapter = "https"
endpoint = "a.test:443"
ca = "ca.pem"
resolve_interval = "10s"

[[destination]]
name = "b"
adapter = "https"
endpoint = "b.test:8443"
ca = "ca.pem"
resolve_interval = "1m"

[[destination]]
name = "ip"
adapter = "https"
endpoint = "192.0.2.1:443"
ca = "ca.pem"

[[destination]]
name = "off"
adapter = "https"
endpoint = "a.test:443"
ca = "ca.pem"
resolve_interval = "off"

[[group]]
name = "default"
routes = [ { listener = "http", path = "/", destination = "a" } ]
"#;
        let dns = FakeResolver::default();
        dns.set("a.test", Ok(vec!["192.0.2.10:0"]));
        dns.set("b.test", Ok(vec!["192.0.2.20:0", "192.0.2.21:0"]));
        let plan = crate::config::compile_for_tests(text, dir.path(), &dns);
        Arc::new(plan.unwrap_or_else(|e| panic!("{e}")))
    }

    /// The fake resolver also serves as the config's environment at compile time.
    impl crate::config::TestEnvironment for FakeResolver {
        fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
            Resolver::resolve(self, host, port)
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

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    /// Start and complete every due lookup against `resolver`.
    fn round(w: &mut Watches, r: &FakeResolver, now: Instant) -> Vec<(String, Outcome)> {
        w.start_due(now)
            .into_iter()
            .map(|l| {
                let result = Resolver::resolve(r, &l.host, l.port);
                (l.name.clone(), w.complete(l.index, result, now))
            })
            .collect()
    }

    #[test]
    fn only_dns_destinations_with_an_interval_are_watched() {
        let t0 = Instant::now();
        let w = Watches::new(plan(), t0);
        assert_eq!(w.names().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(w.next_due(), Some(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn lookups_fall_due_per_interval_and_are_not_started_twice() {
        let t0 = Instant::now();
        let mut w = Watches::new(plan(), t0);
        assert!(w.start_due(t0).is_empty(), "the plan's addresses are fresh");
        let at = t0 + Duration::from_secs(10);
        let due = w.start_due(at);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].host.as_str(), due[0].port), ("a.test", 443));
        assert!(
            w.start_due(at).is_empty(),
            "a running lookup is not started again"
        );
        assert_eq!(
            w.next_due(),
            Some(t0 + Duration::from_secs(60)),
            "only b is idle"
        );
        let done = at + Duration::from_secs(3);
        w.complete(due[0].index, Ok(addrs(&["192.0.2.10:443"])), done);
        assert_eq!(w.next_due(), Some(done + Duration::from_secs(10)));
    }

    #[test]
    fn same_set_in_another_order_is_unchanged_and_a_new_set_is_a_change() {
        let r = FakeResolver::default();
        let t0 = Instant::now();
        let mut w = Watches::new(plan(), t0);
        let t = t0 + Duration::from_secs(60);
        r.set("a.test", Ok(vec!["192.0.2.10:0"]));
        r.set(
            "b.test",
            Ok(vec!["192.0.2.21:0", "192.0.2.20:0", "192.0.2.21:0"]),
        );
        let out = round(&mut w, &r, t);
        assert_eq!(
            out,
            [
                ("a".to_owned(), Outcome::Unchanged),
                ("b".to_owned(), Outcome::Unchanged)
            ]
        );

        r.set(
            "a.test",
            Ok(vec!["192.0.2.11:0", "192.0.2.11:0", "192.0.2.12:0"]),
        );
        let t = t + Duration::from_secs(10);
        let out = round(&mut w, &r, t);
        assert_eq!(
            out,
            [(
                "a".to_owned(),
                Outcome::Changed {
                    previous: addrs(&["192.0.2.10:443"]),
                    addrs: addrs(&["192.0.2.11:443", "192.0.2.12:443"]),
                }
            )]
        );
        assert_eq!(
            w.current(0),
            Some((
                DestinationId(0),
                &addrs(&["192.0.2.11:443", "192.0.2.12:443"])[..]
            ))
        );
    }

    #[test]
    fn a_change_the_shards_did_not_apply_is_reported_again_at_the_next_lookup() {
        let r = FakeResolver::default();
        let t0 = Instant::now();
        let mut w = Watches::new(plan(), t0);
        r.set("a.test", Ok(vec!["192.0.2.11:0"]));
        r.set("b.test", Ok(vec!["192.0.2.20:0", "192.0.2.21:0"]));
        let t = t0 + Duration::from_secs(60);
        let out = round(&mut w, &r, t);
        let Some((_, Outcome::Changed { previous, .. })) = out.into_iter().next() else {
            panic!("a.test changed");
        };
        w.revert(0, previous);
        let out = round(&mut w, &r, t + Duration::from_secs(10));
        assert_eq!(
            out,
            [(
                "a".to_owned(),
                Outcome::Changed {
                    previous: addrs(&["192.0.2.10:443"]),
                    addrs: addrs(&["192.0.2.11:443"]),
                }
            )]
        );
    }

    #[test]
    fn failures_and_empty_answers_keep_the_last_good_addresses() {
        let r = FakeResolver::default();
        let t0 = Instant::now();
        let mut w = Watches::new(plan(), t0);
        let original = addrs(&["192.0.2.10:443"]);

        // Unknown name: an error.
        let t = t0 + Duration::from_secs(10);
        let out = round(&mut w, &r, t);
        assert_eq!(
            out,
            [(
                "a".to_owned(),
                Outcome::Failed("Name or service not known".into())
            )]
        );
        assert_eq!(w.current(0), Some((DestinationId(0), &original[..])));

        // An empty answer is a failure too, never an empty destination.
        r.set("a.test", Ok(vec![]));
        let t = t + Duration::from_secs(10);
        let out = round(&mut w, &r, t);
        assert_eq!(
            out,
            [("a".to_owned(), Outcome::Failed("no addresses".into()))]
        );
        assert_eq!(w.current(0), Some((DestinationId(0), &original[..])));

        // The name comes back with the same address: no change to report.
        r.set("a.test", Ok(vec!["192.0.2.10:0"]));
        let t = t + Duration::from_secs(10);
        assert_eq!(round(&mut w, &r, t), [("a".to_owned(), Outcome::Unchanged)]);
    }
}
