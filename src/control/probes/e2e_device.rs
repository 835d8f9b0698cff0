//! The end-to-end probe's device side, shared by its transports ([`super::e2e_mqtt`],
//! [`super::e2e_http`]) and the loop that numbers the messages ([`super::driver::run_e2e`]):
//! what a device connection task is handed, how it records outcomes and logs alarm changes.
//!
//! What this module does not do: connect or speak a protocol (the transports do), or decide
//! received/lost/alarms (the board in [`super::e2e`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::super::Control;
use super::e2e::AlarmChange;
use crate::policy::E2eSettings;

/// A probe message numbered by the loop and handed to the device connection.
#[derive(Debug, Clone, Copy)]
pub struct Numbered {
    /// Its sequence number.
    pub seq: u64,
    /// When it was numbered (its delay and its timeout count from here).
    pub at: Instant,
}

/// Log one alarm change of the end-to-end probe.
pub fn log_alarm(listener: &str, change: Option<AlarmChange>) {
    match change {
        Some(AlarmChange::Raised(why)) => tracing::warn!(
            listener,
            reason = %why,
            "end-to-end probe alarm: loss or delay through the gateway and the cloud is above its bound"
        ),
        Some(AlarmChange::Cleared(now)) => tracing::info!(
            listener,
            now = %now,
            "end-to-end probe alarm cleared: loss and delay are back within their bounds"
        ),
        None => {}
    }
}

/// What a device connection task gets: where to connect, who it is, and the messages to send.
pub struct DeviceTask {
    /// For the board (received, lost, connected).
    pub control: Arc<Control>,
    /// The listener's address.
    pub addr: SocketAddr,
    /// The `from` of its messages (and its MQTT client id).
    pub client_id: String,
    /// `[probe.e2e]`.
    pub settings: E2eSettings,
    /// The numbered messages, in order.
    pub messages: tokio::sync::mpsc::Receiver<Numbered>,
}

impl DeviceTask {
    /// Record an outcome on the board and log an alarm change.
    pub fn record(&self, outcome: impl FnOnce(&mut super::e2e::E2eBoard) -> Option<AlarmChange>) {
        let change = self.control.probes.lock().e2e_mut().and_then(outcome);
        log_alarm(&self.settings.listener, change);
    }

    /// The device connection is up.
    pub fn connected(&self) {
        if let Some(b) = self.control.probes.lock().e2e_mut() {
            b.set_connection(true, None);
        }
    }
}

/// Nanoseconds since the Unix epoch (0 before it), the `sent_ns` of a probe message.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
