//! What a device connection writes to the log: the tracing span every connection task runs in
//! ([`connection_span`]: shard, peer, protocol, SIM, destination), and the info lines for
//! faults a device can repeat at will ([`DeviceFaultLog`]: malformed HTTP requests, malformed
//! MQTT packets, unknown sources refused), each kind kept to one line per interval per shard
//! with a count of what it held back; the rest go to debug. At shutdown the counts still held
//! back are logged ([`DeviceFaultLog::flush`]), so every fault is accounted for in the log.
//!
//! The span is created once per connection and the connection's task runs in it ([`in_span`],
//! entered around each poll), so nothing is allocated for it per message. The SIM (IMSI, an
//! identifier, not a secret; `unknown` when the source address is no SIM's) is recorded by the
//! flow when it identifies the device ([`record_sim`]: the connection's one identity lookup, no
//! second one for the log), the destination when the first request or CONNECT is routed
//! ([`record_destination`]).
//!
//! What this module does not do: set up the subscriber or the output format (`main.rs`), count
//! the faults in metrics (the flows do, every time), or log payloads, topics or header values
//! (no line here carries any).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tracing::field::Empty;
use tracing::Dispatch;

use super::throttle::{LogThrottle, LOG_THROTTLE};
use crate::identity::Imsi;

/// The span of one device connection on shard `shard`, accepted from `peer`,
/// speaking `protocol` (`"http"` or `"mqtt"`). Its `sim` and `destination` are recorded later
/// with [`record_sim`] and [`record_destination`].
pub fn connection_span(shard: usize, peer: SocketAddr, protocol: &'static str) -> tracing::Span {
    // No parent: the accept loop runs in no span, and a connection belongs to no other.
    tracing::info_span!(
        parent: None,
        "connection",
        shard,
        %peer,
        protocol,
        sim = Empty,
        destination = Empty,
    )
}

/// Record the SIM the flow identified the current connection's device as (`None`: a source
/// no SIM has, served as the default group: `unknown`). Call it once per connection, where the
/// flow looks the identity up (a field recorded twice shows twice in the text format).
pub fn record_sim(imsi: Option<Imsi>) {
    tracing::Span::current().record("sim", tracing::field::display(SimLabel(imsi)));
}

/// A span's `sim` field: the IMSI, or `unknown`.
struct SimLabel(Option<Imsi>);

impl std::fmt::Display for SimLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(imsi) => imsi.fmt(f),
            None => f.write_str("unknown"),
        }
    }
}

/// `future` running in `span`: the span is entered around every poll, so every line the future
/// logs carries the span's fields.
///
/// Like `tracing::Instrument`, but holding only the span's id (8 bytes) rather than the `Span`
/// with its dispatcher handle (40): the connection task is what an idle device costs in memory
/// (`tests/idle_memory.rs`). The dispatcher is the thread's default (simgate installs one
/// global subscriber at start), looked up per poll.
pub fn in_span<F: Future>(span: tracing::Span, future: F) -> InSpan<F> {
    // One more reference to the span, held by the id; `span` itself is dropped here.
    let id = span.with_subscriber(|(id, dispatch)| dispatch.clone_span(id));
    InSpan { future, id }
}

pin_project_lite::pin_project! {
    /// See [`in_span`].
    pub struct InSpan<F> {
        #[pin]
        future: F,
        id: Option<tracing::span::Id>,
    }

    impl<F> PinnedDrop for InSpan<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(id) = this.project().id.take() {
                tracing::dispatcher::get_default(|dispatch| dispatch.try_close(id.clone()));
            }
        }
    }
}

impl<F: Future> Future for InSpan<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let Some(id) = this.id.as_ref() else {
            return this.future.poll(cx);
        };
        // Not polled inside `get_default`: it hides the dispatcher from nested calls.
        let dispatch = tracing::dispatcher::get_default(Dispatch::clone);
        dispatch.enter(id);
        let polled = this.future.poll(cx);
        dispatch.exit(id);
        polled
    }
}

/// Record the destination `name` on the current connection's span. Call it once per
/// connection (a field recorded twice shows twice in the text format).
pub fn record_destination(name: &str) {
    tracing::Span::current().record("destination", tracing::field::display(name));
}

/// A fault a device can trigger over and over, logged at info at most once per interval per
/// shard and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceFault {
    /// An HTTP request the decoder refused (malformed, too large, too slow).
    BadHttpRequest,
    /// An MQTT packet the decoder refused (malformed or oversized), CONNECT or later.
    BadMqttPacket,
    /// A device whose source address is no SIM's, on a listener that refuses unknown sources.
    UnknownSource,
}

impl DeviceFault {
    const ALL: [DeviceFault; 3] = [
        DeviceFault::BadHttpRequest,
        DeviceFault::BadMqttPacket,
        DeviceFault::UnknownSource,
    ];

    /// The `fault` field of its log line.
    pub fn label(self) -> &'static str {
        match self {
            DeviceFault::BadHttpRequest => "bad_http_request",
            DeviceFault::BadMqttPacket => "bad_mqtt_packet",
            DeviceFault::UnknownSource => "unknown_source",
        }
    }
}

/// One [`LogThrottle`] per [`DeviceFault`] kind, shard-local.
#[derive(Debug)]
pub struct DeviceFaultLog {
    throttles: [LogThrottle; DeviceFault::ALL.len()],
}

impl Default for DeviceFaultLog {
    fn default() -> DeviceFaultLog {
        DeviceFaultLog {
            throttles: [const { LogThrottle::new(LOG_THROTTLE) }; DeviceFault::ALL.len()],
        }
    }
}

impl DeviceFaultLog {
    /// Log `fault` (with `detail`, a fixed description such as the decoder's reason, never
    /// device data) at info if its kind has not logged within the interval, at debug otherwise.
    /// The info line carries `similar_since_last_line`: the occurrences held back since the
    /// previous info line of that kind on this shard.
    pub fn log(&self, fault: DeviceFault, detail: &dyn std::fmt::Display, now: Instant) {
        self.log_with(fault, detail, now, || {});
    }

    /// [`DeviceFaultLog::log`], calling `before_line` first when the fault gets an info line
    /// (not when it is held back): e.g. to look the device's SIM up and [`record_sim`] it on
    /// the connection's span for that line only when the flow has not identified it yet.
    pub fn log_with(
        &self,
        fault: DeviceFault,
        detail: &dyn std::fmt::Display,
        now: Instant,
        before_line: impl FnOnce(),
    ) {
        let throttle = &self.throttles[fault as usize];
        match throttle.allow(now) {
            Some(held_back) => {
                before_line();
                tracing::info!(
                    fault = fault.label(),
                    %detail,
                    similar_since_last_line = held_back,
                    "device fault"
                )
            }
            None => tracing::debug!(fault = fault.label(), %detail, "device fault"),
        }
    }

    /// Log, for each kind with occurrences held back since its last line, one info line
    /// saying how many (`similar_since_last_line`), so a count is not lost when the shard
    /// stops. Called once, at shutdown of shard `shard` (outside any connection's span).
    pub fn flush(&self, shard: usize) {
        for fault in DeviceFault::ALL {
            let held_back = self.throttles[fault as usize].take_held_back();
            if held_back > 0 {
                tracing::info!(
                    shard,
                    fault = fault.label(),
                    similar_since_last_line = held_back,
                    "device faults held back since the last line"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captures what a text subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_logged_by_the_future_carry_its_span_and_lines_after_it_do_not() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                parent: None,
                "connection",
                shard = 3,
                sim = Empty,
                destination = Empty
            );
            span.record("sim", tracing::field::display("001010000000042"));
            let task = in_span(span, async {
                tracing::info!("inside the connection");
                std::future::ready(()).await;
                record_destination("sink");
                tracing::info!("after routing");
            });
            crate::reactor::block_on(&crate::reactor::ReactorConfig::default(), task)
                .expect("reactor");
            tracing::info!("outside");
        });
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf-8");
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no {needle:?} in {text}"))
                .to_owned()
        };
        assert!(
            line("inside the connection").contains("connection{shard=3 sim=001010000000042}"),
            "{text}"
        );
        assert!(line("after routing").contains("destination=sink"), "{text}");
        assert!(!line("outside").contains("connection{"), "{text}");
    }

    #[test]
    fn each_fault_kind_has_its_own_throttle_slot() {
        for (index, fault) in DeviceFault::ALL.into_iter().enumerate() {
            assert_eq!(fault as usize, index, "{fault:?}");
        }
        let log = DeviceFaultLog::default();
        let now = Instant::now();
        // The first of each kind goes through even right after another kind's line.
        for fault in DeviceFault::ALL {
            assert_eq!(log.throttles[fault as usize].allow(now), Some(0));
        }
    }
}
