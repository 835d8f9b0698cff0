//! One upstream MQTT link of aggregate mode: a long-lived MQTTS client connection that carries the
//! PUBLISHes of many device sessions of one shard to one broker, and brings their downlink
//! messages back.
//!
//! Two layers, as in the codecs:
//!
//! - [`LinkCore`] is the link's state machine with no IO and no clock: device sessions hand it
//!   PUBLISHes, SUBSCRIBE and UNSUBSCRIBE requests ([`LinkCore::publish`],
//!   [`LinkCore::subscribe`], [`LinkCore::unsubscribe`]); the link driver feeds it the broker's
//!   packets ([`LinkCore::handle`]) and connection changes ([`LinkCore::on_connected`],
//!   [`LinkCore::on_disconnected`]), and writes what [`LinkCore::take_outbox`] returns. Answers
//!   for a device session go to that session's [`SessionMailbox`].
//! - [`run_link`] drives one core over a TLS connection from the shard's pool: connect (with the
//!   pool's jittered backoff plus its own for MQTT-level refusals), CONNECT/CONNACK, one TLS write
//!   per event-loop turn for everything queued in that turn (or, with `linger`, for everything
//!   queued within that time or until one TLS record's worth is queued), PINGREQ every half
//!   keep-alive, and a link declared dead when a PINGRESP does not come back within the other
//!   half. It keeps the link's [`LinkStatus`] (up, or down since when, on the reactor's clock),
//!   which aggregate mode reads to refuse new devices during a long outage (`accept_while_down`).
//!
//! ```text
//!  device tasks ──publish/subscribe──► LinkCore ──outbox (one buffer per turn)──► TLS write
//!       ▲                                 ▲   │
//!       └──── SessionMailbox events ◄─────┘   └── PUBACK / SUBACK / PUBLISH ◄── TLS read
//! ```
//!
//! Delivery rules (QoS 1 end to end):
//! - A QoS 1 or 2 device PUBLISH goes upstream as QoS 1 with a packet id allocated per link; the
//!   link remembers upstream id -> (session, device packet id) and tells the session
//!   [`LinkEvent::Acked`] only when the broker's PUBACK arrives. QoS 0 goes upstream as QoS 0.
//! - At most `min(max_inflight, broker Receive Maximum)` QoS 1 PUBLISHes are unacknowledged at
//!   once; the rest wait in FIFO order (QoS 0 ones queued behind them too, so per-link order —
//!   hence per-device order — holds).
//! - When the connection drops, unacknowledged PUBLISHes stay; on the next connection they are
//!   sent again first, in their original order, with DUP set ([MQTT-4.4.0-1]). QoS 0 PUBLISHes not
//!   yet written are dropped and counted, and so is QoS 0 arriving while the link is down (before
//!   the very first connection QoS 0 queues instead, bounded, so start-up loses nothing).
//! - With `max_publish_rate` N, every PUBLISH the link writes (first sends, resends, QoS 0,
//!   Wills) is spaced so that no one-second window holds more than N ([`PublishPacer`]); what
//!   must wait stays in the FIFO queue, and the driver wakes at [`LinkCore::pace_deadline`].
//!   Whether a device's message may wait at all is the device side's decision.
//! - Upstream sessions are clean (Clean Session / Clean Start = 1): the link re-subscribes every
//!   upstream filter still wanted after each reconnect.
//!
//! Latency (issue #14): each queued PUBLISH carries one timestamp on the caller's clock; the core
//! records `link_wait` (handed over → first written, QoS 0 and 1) and `upstream_rtt` (last
//! written → PUBACK) into the shard's histograms given with
//! [`LinkCore::set_latency_histograms`], and passes the round trip on in [`LinkEvent::Acked`].
//!
//! What this module does not do: device-side protocol (see `flows::mqtt_aggregate`), topic
//! rewriting (the session does it before calling in), QoS 2 upstream, Topic Aliases, AUTH
//! exchanges, or persisting anything across a simgate restart.
//!
//! Files, one job each:
//!
//! - `events.rs` — what the link and its device sessions exchange ([`LinkEvent`],
//!   [`SessionMailbox`], [`PublishOwner`], [`Enqueued`]) and the [`AggregateCounters`];
//! - `core.rs` — [`LinkCore`], the sans-IO state machine, and [`topic_matches`];
//! - `rate.rs` — [`PublishPacer`], the `max_publish_rate` spacing (time passed in);
//! - `status.rs` — [`LinkStatus`] (up, or down since when; time passed in);
//! - `settings.rs` — [`LinkSettings`] and [`destination_fingerprint`], pure mappings from the plan;
//! - `driver.rs` — [`Link`] and [`run_link`]: sockets, TLS, timers, backoff.

mod core;
mod driver;
mod events;
mod rate;
mod settings;
mod status;

pub use self::core::{topic_matches, LinkCore};
pub use self::driver::{run_link, Link};
pub use self::events::{
    AggregateCounters, Enqueued, LinkEvent, LinkProtocolError, PublishOwner, RateOutcomes,
    SessionKey, SessionMailbox,
};
pub use self::rate::PublishPacer;
pub use self::settings::{destination_fingerprint, LinkSettings};
pub use self::status::LinkStatus;
