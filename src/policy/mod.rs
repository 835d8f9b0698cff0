//! The compiled plan: the immutable, validated form of a configuration that shards serve from.
//!
//! `config` parses and validates TOML and compiles it into a [`Plan`]; shards receive an
//! `Arc<Plan>` and never look at raw configuration. A plan is built once on the control thread
//! (at start and on every reload) and is read-only afterwards, so shards share it without locks.
//!
//! What this module does: holds listeners, destinations (with their ready-made rustls
//! `ClientConfig`s), groups, the route table and the SIM table (`identity::SimTable`, shared
//! through an `Arc`), and answers "which SIM is this source address, in which group"
//! ([`Plan::identify`]) and "which destination serves this request". What it does not do: parse
//! files, open sockets, or apply a listener's [`UnknownSource`] rule (the flows do).

pub mod attach;
pub mod cloud;
pub mod envelope;
pub mod signature;
pub mod template;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use crate::identity::{SimRef, SimTable};

pub use template::{Template, TemplateError, TemplateVars, TopicMap, TopicMapError};

/// Index of a listener in [`Plan::listeners`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(pub u16);

/// Index of a destination in [`Plan::destinations`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestinationId(pub u16);

/// Index of a group in [`Plan::groups`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub u16);

/// Gateway-wide settings.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Number of shards (data-plane threads), already resolved from `"auto"`.
    pub shards: usize,
    /// Pin shard N to core N (mod core count).
    pub pin_shards: bool,
    /// Admin/metrics HTTP endpoint; loopback by default.
    pub admin: Option<SocketAddr>,
    /// `gateway.admin_token`: when set, every admin request must carry
    /// `Authorization: Bearer <token>` (required for a non-loopback `admin`). Never printed.
    pub admin_token: Option<crate::policy::Secret>,
    /// Group that devices without a SIM entry belong to.
    pub default_group: GroupId,
    /// io_uring submission queue entries per shard.
    pub ring_entries: u32,
    /// Provided receive buffers per shard (a power of two).
    pub recv_buffers: u16,
    /// Size of each provided receive buffer in bytes.
    pub recv_buffer_size: u32,
    /// Listen backlog for every listener socket.
    pub backlog: i32,
    /// Device connections of all listeners together, across shards; more are closed at
    /// accept. Explicit, or derived from the open-file limit (see [`GatewaySettings::reserved_fds`]).
    pub max_connections: usize,
    /// File descriptors kept back from device connections for upstream connections'
    /// headroom, the admin endpoint, listeners, rings, DNS and files.
    pub reserved_fds: usize,
    /// The process's open-file limit (soft `RLIMIT_NOFILE`) the defaults were derived from,
    /// if known.
    pub open_files_limit: Option<u64>,
}

/// Device-facing protocol of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerProtocol {
    /// HTTP/1.1 (and 1.0) plaintext.
    Http,
    /// MQTT 3.1.1 and 5.0 plaintext.
    Mqtt,
}

/// What a device whose source address is in no SIM entry gets on a listener
/// (`listener.unknown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownSource {
    /// Served as a member of `gateway.default_group` (the default: configs without SIMs keep
    /// working).
    #[default]
    Default,
    /// Refused: HTTP 403, MQTT CONNACK "not authorized"; then closed.
    Reject,
}

/// Limits applied to device MQTT connections.
#[derive(Debug, Clone)]
pub struct MqttListenerLimits {
    /// Largest MQTT packet accepted from a device, fixed header included (default 256 KiB).
    /// Over it: DISCONNECT 0x95 (v5) and close, before the packet is buffered.
    pub max_packet_size: u32,
    /// Time allowed from accept to a complete CONNECT (default 10 s). Over it: close.
    pub connect_timeout: Duration,
    /// QoS 1/2 PUBLISHes a device may have unacknowledged at once (advertised as v5 Receive
    /// Maximum; default 64). Over it: DISCONNECT 0x93 (v5) / close.
    pub receive_maximum: u16,
}

/// How much a device is told when simgate answers a request itself because of an upstream
/// failure (502, 504). The detail is logged and counted either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorDetail {
    /// A short fixed text per status (`upstream unavailable`): no destination name, address,
    /// or TLS detail. The default.
    #[default]
    Generic,
    /// The full reason (destination name and the upstream error), for debugging.
    Full,
}

/// Limits, timeouts and error answers applied to device HTTP connections.
#[derive(Debug, Clone)]
pub struct HttpListenerLimits {
    /// Largest request head (request line + headers), bytes. Over it: 431.
    pub max_head_bytes: usize,
    /// Most header fields in a request head. Over it: 431.
    pub max_headers: usize,
    /// Largest request body (decoded size), bytes. Over it: 413, before it is buffered.
    pub max_body_bytes: u64,
    /// Time allowed to receive a whole request head once a connection (or the next request on a
    /// keep-alive connection) has started sending. Over it: 408.
    pub header_timeout: Duration,
    /// Time allowed for a whole request body after its head. Over it: 408.
    pub body_timeout: Duration,
    /// An idle keep-alive connection (no bytes of a next request) is closed after this.
    pub idle_timeout: Duration,
    /// Requests served on one device connection before it is closed (0 = unlimited).
    pub max_requests_per_connection: u32,
    /// What the body of a 502/504 generated by simgate says.
    pub error_detail: ErrorDetail,
}

/// One configured listener.
#[derive(Debug, Clone)]
pub struct ListenerPlan {
    /// Position in [`Plan::listeners`].
    pub id: ListenerId,
    /// Name from the config (`listener[].name`).
    pub name: String,
    /// Address every shard binds (with SO_REUSEPORT).
    pub bind: SocketAddr,
    /// Device connections open on this listener at most (all shards together); `None`: only
    /// the gateway-wide cap applies.
    pub max_connections: Option<usize>,
    /// What a source address without a SIM entry gets.
    pub unknown: UnknownSource,
    /// The device protocol, with the settings only that protocol has.
    pub kind: ListenerKind,
}

/// A listener's device protocol and its protocol's settings. Later issues add `Udp` and `Tcp`.
#[derive(Debug, Clone)]
pub enum ListenerKind {
    /// HTTP/1.1 and 1.0 (`protocol = "http"`).
    Http(HttpListenerLimits),
    /// MQTT 3.1.1 and 5.0 (`protocol = "mqtt"`).
    Mqtt(MqttListenerLimits),
}

impl ListenerPlan {
    /// The device protocol.
    pub fn protocol(&self) -> ListenerProtocol {
        match self.kind {
            ListenerKind::Http(_) => ListenerProtocol::Http,
            ListenerKind::Mqtt(_) => ListenerProtocol::Mqtt,
        }
    }

    /// The HTTP limits, if this is an HTTP listener.
    pub fn http(&self) -> Option<&HttpListenerLimits> {
        match &self.kind {
            ListenerKind::Http(limits) => Some(limits),
            ListenerKind::Mqtt(_) => None,
        }
    }

    /// The MQTT limits, if this is an MQTT listener.
    pub fn mqtt(&self) -> Option<&MqttListenerLimits> {
        match &self.kind {
            ListenerKind::Mqtt(limits) => Some(limits),
            ListenerKind::Http(_) => None,
        }
    }
}

/// Which adapter a destination uses, without its settings (see [`Adapter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdapterKind {
    /// Any HTTPS server: the device request is forwarded with Host rewritten.
    GenericHttps,
    /// Any MQTT broker over TLS (MQTTS); see [`MqttDestination`].
    Mqtts,
    /// AWS IoT Core's HTTPS publish.
    AwsIotCore,
    /// Azure IoT Hub over HTTPS.
    AzureIotHub,
    /// Azure Event Hubs over HTTPS.
    AzureEventHubs,
    /// Google Cloud Pub/Sub.
    GcpPubsub,
    /// AWS Lambda Invoke.
    AwsLambda,
    /// Things Cloud (Cumulocity) measurements and events.
    ThingsCloud,
}

// The per-adapter counters in `stats` have one row per adapter.
const _: () = assert!(AdapterKind::ALL.len() == crate::stats::CLOUD_ADAPTERS);

impl AdapterKind {
    /// Every adapter, in the order `check` lists them (their declaration order, so that
    /// [`AdapterKind::index`] is the position here).
    pub const ALL: [AdapterKind; 8] = [
        AdapterKind::GenericHttps,
        AdapterKind::Mqtts,
        AdapterKind::AwsIotCore,
        AdapterKind::AzureIotHub,
        AdapterKind::AzureEventHubs,
        AdapterKind::GcpPubsub,
        AdapterKind::AwsLambda,
        AdapterKind::ThingsCloud,
    ];

    /// Position in [`AdapterKind::ALL`] (and in `stats::ShardMetrics::cloud_responses`).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The name in `destination.adapter` (also the `adapter` label of metrics).
    pub fn config_name(self) -> &'static str {
        match self {
            AdapterKind::GenericHttps => "https",
            AdapterKind::Mqtts => "mqtts",
            AdapterKind::AwsIotCore => "aws-iot-core",
            AdapterKind::AzureIotHub => "azure-iot-hub",
            AdapterKind::AzureEventHubs => "azure-event-hubs",
            AdapterKind::GcpPubsub => "gcp-pubsub",
            AdapterKind::AwsLambda => "aws-lambda",
            AdapterKind::ThingsCloud => "things-cloud",
        }
    }

    /// The adapter named `name` in `destination.adapter`.
    pub fn parse(name: &str) -> Option<AdapterKind> {
        AdapterKind::ALL
            .into_iter()
            .find(|k| k.config_name() == name)
    }

    /// Whether the adapter speaks HTTP(S) to its destination (HTTP listeners route to these).
    /// `azure-iot-hub` and `aws-iot-core` speak MQTT instead when their destination has a
    /// `[destination.mqtt]` table: see [`Adapter::is_mqtt`].
    pub fn is_http(self) -> bool {
        self != AdapterKind::Mqtts
    }
}

/// How a destination is spoken to, with the settings only that adapter has.
#[derive(Debug, Clone)]
pub enum Adapter {
    /// Any HTTPS server (`adapter = "https"`).
    Https(HttpsDestination),
    /// Any MQTT broker over TLS (`adapter = "mqtts"`).
    Mqtts(MqttDestination),
    /// `adapter = "aws-iot-core"` (HTTPS publish).
    AwsIotCore(cloud::AwsIotCoreHttps),
    /// `adapter = "aws-iot-core"` with a `[destination.mqtt]` table (MQTT, session or aggregate
    /// mode).
    AwsIotCoreMqtt(cloud::AwsIotCoreMqtt),
    /// `adapter = "azure-iot-hub"` (HTTPS).
    AzureIotHub(cloud::AzureIotHubHttps),
    /// `adapter = "azure-iot-hub"` with a `[destination.mqtt]` table (MQTT, session mode).
    AzureIotHubMqtt(cloud::AzureIotHubMqtt),
    /// `adapter = "azure-event-hubs"`.
    AzureEventHubs(cloud::AzureEventHubs),
    /// `adapter = "gcp-pubsub"`.
    GcpPubsub(cloud::GcpPubsub),
    /// `adapter = "aws-lambda"`.
    AwsLambda(cloud::AwsLambda),
    /// `adapter = "things-cloud"`.
    ThingsCloud(cloud::ThingsCloud),
}

impl Adapter {
    /// The adapter's kind.
    pub fn kind(&self) -> AdapterKind {
        match self {
            Adapter::Https(_) => AdapterKind::GenericHttps,
            Adapter::Mqtts(_) => AdapterKind::Mqtts,
            Adapter::AwsIotCore(_) | Adapter::AwsIotCoreMqtt(_) => AdapterKind::AwsIotCore,
            Adapter::AzureIotHub(_) | Adapter::AzureIotHubMqtt(_) => AdapterKind::AzureIotHub,
            Adapter::AzureEventHubs(_) => AdapterKind::AzureEventHubs,
            Adapter::GcpPubsub(_) => AdapterKind::GcpPubsub,
            Adapter::AwsLambda(_) => AdapterKind::AwsLambda,
            Adapter::ThingsCloud(_) => AdapterKind::ThingsCloud,
        }
    }

    /// Whether the destination speaks MQTT (MQTT listeners route to these).
    pub fn is_mqtt(&self) -> bool {
        matches!(
            self,
            Adapter::Mqtts(_) | Adapter::AzureIotHubMqtt(_) | Adapter::AwsIotCoreMqtt(_)
        )
    }

    /// Batching settings, for the adapters that batch and have it configured.
    pub fn batch(&self) -> Option<cloud::BatchSettings> {
        match self {
            Adapter::AzureEventHubs(e) => e.batch,
            Adapter::GcpPubsub(g) => g.batch,
            _ => None,
        }
    }
}

/// Settings of an HTTPS destination.
#[derive(Debug, Clone)]
pub struct HttpsDestination {
    /// Value of the Host header sent upstream.
    pub host_header: String,
    /// Prefix prepended to the device's request path (may be empty; never ends with '/'): a
    /// template, which may name the device's SIM (`/devices/{imsi}`; values percent-encoded).
    pub base_path: Template,
    /// An `Authorization` value sent with every request (from a `basic` or `bearer`
    /// credential); the device's own is replaced. Redacted in `Debug`.
    pub authorization: Option<Secret>,
}

/// How device MQTT sessions map onto upstream connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttMode {
    /// 1:1 — each device session gets its own upstream MQTTS connection (clouds where each
    /// device is its own identity: AWS IoT things, Azure IoT Hub devices).
    Session,
    /// N:1 — PUBLISHes of many devices are multiplexed over a few upstream connections per
    /// shard; topics carry the identity (`topic` template).
    Aggregate,
}

/// MQTT protocol version spoken upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttUpstreamVersion {
    /// MQTT 3.1.1.
    V311,
    /// MQTT 5.0.
    V5,
    /// Whatever the device spoke (session mode only).
    SameAsDevice,
}

/// A secret value loaded from a file. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub bytes::Bytes);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// MQTT-specific settings of an `mqtts` destination.
#[derive(Debug, Clone)]
pub struct MqttDestination {
    /// Session (1:1) or aggregate (N:1).
    pub mode: MqttMode,
    /// Version spoken upstream.
    pub version: MqttUpstreamVersion,
    /// Upstream client id. Session default `{client_id}`; aggregate default
    /// `simgate-{shard}-{conn}`.
    pub client_id: Template,
    /// Upstream username (None: none sent, unless `pass_through_credentials`).
    pub username: Option<Template>,
    /// Upstream password, from `password_file`.
    pub password: Option<Secret>,
    /// Forward the device's own username/password instead of the configured ones (session
    /// mode only; default false).
    pub pass_through_credentials: bool,
    /// Uplink topic rewrite. Session default `{topic}`; aggregate default
    /// `devices/{client_id}/{topic}`. Downlink subscriptions are mapped through the same
    /// template and messages mapped back.
    pub topic: Arc<Template>,
    /// Keep-alive of simgate's own upstream connections (aggregate mode; default 60 s).
    pub keep_alive: Duration,
    /// Upstream connections per shard (aggregate mode; default 1).
    pub connections_per_shard: usize,
    /// Most unacknowledged QoS 1/2 messages per upstream connection (aggregate; default 256).
    pub max_inflight: u16,
    /// How long an aggregate connection holds queued uplink messages before writing them, so
    /// that several travel in one TLS record and one `send` (aggregate mode; default 0: write
    /// as soon as the connection task runs). At most [`MQTT_LINGER_MAX`].
    pub linger: Duration,
    /// Most PUBLISHes per second per upstream connection, in any one-second window (aggregate
    /// mode, `max_publish_rate`; `None`: unlimited, the `mqtts` default). At most
    /// [`MQTT_MAX_PUBLISH_RATE_MAX`]. See `upstream::mqtt_link::PublishPacer`.
    pub max_publish_rate: Option<NonZeroU32>,
    /// What a new device CONNECT gets while its upstream link cannot connect (aggregate mode:
    /// keys `accept_while_down` and `down_after`; session mode answers from the broker itself).
    pub while_down: WhileDown,
}

/// What aggregate mode answers a new device CONNECT while the upstream link the device would
/// use is down (never connected since it was created, or disconnected and every reconnect
/// attempt since has failed). Devices already connected are not affected either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WhileDown {
    /// CONNACK 0 (`accept_while_down = true`, the default): the device's QoS 1/2 messages wait
    /// unacknowledged until the link is back.
    Accept,
    /// CONNACK "server unavailable" (5.0: 0x88, 3.1.1: return code 3) once the link has been
    /// down for at least this long (`accept_while_down = false`, `down_after`), so that devices
    /// can fail over instead of queueing.
    RefuseAfter(Duration),
}

impl WhileDown {
    /// Whether a new device session is refused, given how long its link has been down at the
    /// moment of the CONNECT (`None`: the link is up). Pure: the caller reads the clock.
    pub fn refuses(self, down_for: Option<Duration>) -> bool {
        match (self, down_for) {
            (WhileDown::Accept, _) | (_, None) => false,
            (WhileDown::RefuseAfter(bound), Some(down)) => down >= bound,
        }
    }
}

/// Default `destination[].mqtt.down_after`.
pub const MQTT_DOWN_AFTER: Duration = Duration::from_secs(30);

/// Shortest `destination[].mqtt.down_after`.
pub const MQTT_DOWN_AFTER_MIN: Duration = Duration::from_secs(1);

/// Longest `destination[].mqtt.linger`.
pub const MQTT_LINGER_MAX: Duration = Duration::from_millis(100);

/// Largest `max_publish_rate` (PUBLISHes per second per upstream connection).
pub const MQTT_MAX_PUBLISH_RATE_MAX: u32 = 1_000_000;

/// AWS IoT Core's per-connection limit on inbound PUBLISH requests per second (documented as
/// not adjustable); over it the cloud throttles (drops, and a QoS 1 PUBLISH gets no PUBACK).
pub const AWS_IOT_CORE_MAX_PUBLISH_RATE: NonZeroU32 = match NonZeroU32::new(100) {
    Some(n) => n,
    None => unreachable!(),
};

/// `max_publish_rate` defaults of adapters whose cloud limits PUBLISHes per connection; an
/// adapter not listed (`mqtts`) is unlimited by default. `aws-iot-core` in aggregate mode
/// paces every link at AWS's limit unless set lower (higher is refused at load).
pub const PUBLISH_RATE_DEFAULTS: &[(AdapterKind, NonZeroU32)] =
    &[(AdapterKind::AwsIotCore, AWS_IOT_CORE_MAX_PUBLISH_RATE)];

/// The `max_publish_rate` of an aggregate-mode destination that does not set it
/// ([`PUBLISH_RATE_DEFAULTS`]; `None`: unlimited).
pub fn default_max_publish_rate(adapter: Option<AdapterKind>) -> Option<NonZeroU32> {
    let adapter = adapter?;
    PUBLISH_RATE_DEFAULTS
        .iter()
        .find(|(kind, _)| *kind == adapter)
        .map(|(_, rate)| *rate)
}

/// Upstream connection pool settings for one destination (per shard).
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Connections handshaken at start and kept ready, per shard.
    pub warm: usize,
    /// Most idle connections kept per shard; extra ones are closed on check-in.
    pub max_idle: usize,
    /// Idle connections older than this are retired.
    pub idle_timeout: Duration,
    /// Connections made longer ago than this are not reused (closed when next idle), so a
    /// pool follows DNS changes and spreads over a load balancer's hosts.
    pub max_age: Duration,
    /// Connects (warm-up included) under way at once, per shard; a request that finds no idle
    /// connection while this many are under way waits for one to come back or a connect to end.
    /// 0: no limit (every such request connects).
    pub max_connecting: usize,
    /// TCP connect + TLS handshake must finish within this. Over it: 502.
    pub connect_timeout: Duration,
    /// Time from request sent to response head received. Over it: 504.
    pub response_timeout: Duration,
    /// First reconnect backoff after a failed connect; doubles per failure, jittered.
    pub backoff_initial: Duration,
    /// Backoff ceiling.
    pub backoff_max: Duration,
}

/// How a destination's DNS name is looked up again while simgate runs
/// (`destination.resolve_interval`). Absent for IP-literal endpoints and when disabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reresolve {
    /// The DNS name of `endpoint`.
    pub host: String,
    /// The port of `endpoint`.
    pub port: u16,
    /// Time between lookups (at least 1 s).
    pub interval: Duration,
}

/// One upstream (cloud) endpoint.
#[derive(Clone)]
pub struct DestinationPlan {
    /// Position in [`Plan::destinations`].
    pub id: DestinationId,
    /// Name from the config.
    pub name: String,
    /// Adapter, with its own settings.
    pub adapter: Adapter,
    /// `host:port` as configured (for Host header and messages).
    pub endpoint: String,
    /// Resolved socket addresses of `endpoint` (tried in order), as resolved when the plan was
    /// compiled. The plan never changes afterwards: periodic re-resolution ([`Self::resolve`])
    /// hands newer addresses to the shards' pools, not to the plan.
    pub addrs: Vec<SocketAddr>,
    /// Periodic re-resolution of `endpoint`'s DNS name; `None` for an IP literal or when
    /// `resolve_interval` is off.
    pub resolve: Option<Reresolve>,
    /// TLS server name sent as SNI and verified against the certificate.
    pub server_name: rustls::pki_types::ServerName<'static>,
    /// rustls client config (roots, optional client certificate, ALPN). Shards clone it to
    /// install their own session-resumption store.
    pub tls: Arc<rustls::ClientConfig>,
    /// Pool settings.
    pub pool: PoolSettings,
    /// How the device's body (HTTP) / uplink payload (MQTT) is sent (`envelope`).
    pub envelope: envelope::Envelope,
    /// The `Host` header (and SigV4 host) of the HTTP adapters: `host_header`, else the
    /// endpoint's host (with its port unless 443). Empty for `mqtts`.
    pub host_header: String,
    /// The rotating token this destination's requests carry, minted by the control thread.
    pub token: Option<cloud::TokenSpec>,
}

impl DestinationPlan {
    /// The MQTT settings, if this destination speaks MQTT (`mqtts`, or a cloud adapter's MQTT
    /// form, whose settings the adapter derived).
    pub fn mqtt(&self) -> Option<&MqttDestination> {
        match &self.adapter {
            Adapter::Mqtts(m) => Some(m),
            Adapter::AzureIotHubMqtt(a) => Some(&a.session),
            Adapter::AwsIotCoreMqtt(a) => Some(&a.mqtt),
            _ => None,
        }
    }

    /// The AWS IoT Core MQTT settings, if this is `aws-iot-core` over MQTT.
    pub fn aws_iot_core_mqtt(&self) -> Option<&cloud::AwsIotCoreMqtt> {
        match &self.adapter {
            Adapter::AwsIotCoreMqtt(a) => Some(a),
            _ => None,
        }
    }

    /// The IoT Hub MQTT settings, if this is `azure-iot-hub` over MQTT.
    pub fn azure_iot_hub_mqtt(&self) -> Option<&cloud::AzureIotHubMqtt> {
        match &self.adapter {
            Adapter::AzureIotHubMqtt(a) => Some(a),
            _ => None,
        }
    }

    /// The HTTPS settings, if this is a generic HTTPS destination.
    pub fn https(&self) -> Option<&HttpsDestination> {
        match &self.adapter {
            Adapter::Https(h) => Some(h),
            _ => None,
        }
    }
}

impl std::fmt::Debug for DestinationPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationPlan")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("adapter", &self.adapter)
            .field("endpoint", &self.endpoint)
            .field("addrs", &self.addrs)
            .field("resolve", &self.resolve)
            .field("server_name", &self.server_name)
            .field("pool", &self.pool)
            .field("envelope", &self.envelope)
            .field("host_header", &self.host_header)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// One HTTP route: requests on `listener` whose path starts with `path_prefix` go to
/// `destination`.
#[derive(Debug, Clone)]
pub struct HttpRoute {
    /// Listener the route applies to.
    pub listener: ListenerId,
    /// Path prefix, always starting with '/'. Matches on a segment boundary: `/a` matches `/a`,
    /// `/a/b` and `/a?x`, not `/ab`.
    pub path_prefix: String,
    /// Where matching requests go.
    pub destination: DestinationId,
}

/// One MQTT route: device sessions on `listener` are bridged to `destination`. (Per-topic
/// routing within one listener arrives with the policy issue; today a listener has one MQTT
/// route per group.)
#[derive(Debug, Clone)]
pub struct MqttRoute {
    /// Listener the route applies to.
    pub listener: ListenerId,
    /// Where sessions on it go (an `mqtts` destination).
    pub destination: DestinationId,
}

/// A group of SIMs sharing a policy (routes). A device without a SIM entry belongs to the
/// default group when its listener says `unknown = "default"`.
#[derive(Debug, Clone)]
pub struct GroupPlan {
    /// Position in [`Plan::groups`].
    pub id: GroupId,
    /// Name from the config.
    pub name: String,
    /// HTTP routes, sorted longest prefix first so the first match wins.
    pub http_routes: Vec<HttpRoute>,
    /// MQTT routes, at most one per listener.
    pub mqtt_routes: Vec<MqttRoute>,
    /// The SIM identity fields attached upstream for this group's devices.
    pub attach: attach::Attach,
    /// Signs what this group's devices send upstream (`signing_secret`), if set.
    pub signer: Option<Arc<signature::Signer>>,
}

/// `[radius]`: accounting from the packet core binds session addresses to SIMs.
#[derive(Debug, Clone)]
pub struct RadiusSettings {
    /// UDP address the accounting listener binds (port 1813 by convention).
    pub bind: SocketAddr,
    /// The shared secret of the packet core's accounting clients.
    pub secret: Secret,
    /// What a session of an IMSI not in the SIM table gets.
    pub unknown_imsi: UnknownImsi,
}

/// `radius.unknown_imsi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownImsi {
    /// Not bound: the device stays an unknown source (its listener's `unknown` applies).
    #[default]
    Ignore,
    /// Bound: the device is served as the gateway's `default_group`, also on listeners that
    /// refuse unknown sources (the packet core vouches for it), without SIM fields.
    Default,
}

/// `[usage]`: whether usage is metered, and where and how often usage records are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageSettings {
    /// Meter usage per SIM on the shards (`usage.enabled`, read at start). When false nothing
    /// is metered, `/admin/usage` refuses and no usage file is written.
    pub enabled: bool,
    /// The JSON-lines usage file (absolute, or relative to the working directory after the
    /// config's directory was applied); `None`: no file, `/admin/usage` only.
    pub file: Option<std::path::PathBuf>,
    /// How often an interval is closed (and written).
    pub interval: std::time::Duration,
    /// The file is rotated before a write would take it past this size.
    pub max_file_bytes: u64,
    /// The file is rotated before a write once it is this old.
    pub max_file_age: std::time::Duration,
    /// Closed intervals kept in memory for `/admin/usage?since=`.
    pub keep_intervals: usize,
}

impl Default for UsageSettings {
    fn default() -> UsageSettings {
        UsageSettings {
            enabled: true,
            file: None,
            interval: std::time::Duration::from_secs(60),
            max_file_bytes: 64 * 1024 * 1024,
            max_file_age: std::time::Duration::from_secs(24 * 3600),
            keep_intervals: 1440,
        }
    }
}

/// `[metrics]`: what the shards measure for `/metrics` beyond counters, and how the control
/// thread keeps it (read at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Keep the per-destination latency histograms (`simgate_request_duration_seconds`,
    /// `simgate_upstream_rtt_seconds`, `simgate_upstream_connect_seconds`,
    /// `simgate_upstream_pool_wait_seconds`, ..., `/histograms`).
    pub histograms: bool,
    /// How often the control thread closes an interval of the latency histograms' interval
    /// logs (`/histograms/{name}/log`).
    pub interval_log_period: std::time::Duration,
    /// Closed intervals the interval logs keep (older ones are dropped).
    pub interval_log_keep: usize,
}

impl Default for MetricsSettings {
    fn default() -> MetricsSettings {
        MetricsSettings {
            histograms: true,
            interval_log_period: std::time::Duration::from_secs(10),
            interval_log_keep: 360,
        }
    }
}

/// `[probe]`: the control thread's internal probe of every destination (TCP connect, TLS
/// handshake, cheapest protocol exchange).
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSettings {
    /// How often each destination is probed; `None`: probes are off.
    pub interval: Option<std::time::Duration>,
    /// Longest one probe may take, TCP connect to the last answer.
    pub timeout: std::time::Duration,
    /// The client id of the probe's MQTT CONNECT (`{hostname}` already replaced).
    pub client_id: String,
    /// The end-to-end probe (`[probe.e2e]`); `None`: off.
    pub e2e: Option<E2eSettings>,
}

/// `[probe.e2e]`: a synthetic device on the control thread sending numbered messages through
/// one of simgate's own listeners and reading them back: through the cloud broker (MQTT) or
/// from an HTTPS server that echoes the request body (HTTP).
#[derive(Debug, Clone, PartialEq)]
pub struct E2eSettings {
    /// The listener the probe connects to (by name); its protocol is the target's.
    pub listener: String,
    /// Where the probe messages go: a topic (MQTT listener) or a path (HTTP listener).
    pub target: E2eTarget,
    /// Time between two probe messages.
    pub interval: std::time::Duration,
    /// A message not back within this long counts as lost.
    pub timeout: std::time::Duration,
    /// How many of the latest probe messages the loss ratio and p99 cover.
    pub window: usize,
    /// Loss ratio over the window above which the alarm is raised.
    pub loss_alarm: f64,
    /// p99 delay over the window above which the alarm is raised (`None`: no delay bound).
    pub p99_alarm: Option<std::time::Duration>,
    /// Whether a raised alarm makes `/readyz` answer 503 (default: only a detail line).
    pub alarm_affects_readiness: bool,
}

/// Where the end-to-end probe sends its messages, by the listener's protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum E2eTarget {
    /// MQTT: the device topic published to (QoS 1) and subscribed to.
    MqttTopic(String),
    /// HTTP: the path of the `POST` whose response must echo the body.
    HttpPath(String),
}

impl E2eTarget {
    /// The MQTT topic (`None` on an HTTP listener).
    pub fn topic(&self) -> Option<&str> {
        match self {
            E2eTarget::MqttTopic(t) => Some(t),
            E2eTarget::HttpPath(_) => None,
        }
    }

    /// The HTTP path (`None` on an MQTT listener).
    pub fn path(&self) -> Option<&str> {
        match self {
            E2eTarget::HttpPath(p) => Some(p),
            E2eTarget::MqttTopic(_) => None,
        }
    }
}

impl Default for ProbeSettings {
    fn default() -> ProbeSettings {
        ProbeSettings {
            interval: Some(std::time::Duration::from_secs(30)),
            timeout: std::time::Duration::from_secs(5),
            client_id: "simgate-probe".into(),
            e2e: None,
        }
    }
}

/// The whole compiled configuration.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Gateway-wide settings.
    pub gateway: GatewaySettings,
    /// Listeners, indexed by [`ListenerId`].
    pub listeners: Vec<ListenerPlan>,
    /// Destinations, indexed by [`DestinationId`].
    pub destinations: Vec<DestinationPlan>,
    /// Groups, indexed by [`GroupId`].
    pub groups: Vec<GroupPlan>,
    /// Every configured SIM (`[[sim]]` and `gateway.sims_file`). Behind an `Arc` so that all
    /// shards share one copy (and a reload that does not change SIMs could keep it).
    pub sims: Arc<SimTable>,
    /// The RADIUS accounting listener, if configured.
    pub radius: Option<RadiusSettings>,
    /// `[usage]`.
    pub usage: UsageSettings,
    /// `[metrics]`.
    pub metrics: MetricsSettings,
    /// `[probe]`.
    pub probe: ProbeSettings,
    /// What `check` and a start or reload warn about without refusing the config
    /// (`path: message`, e.g. an inline secret). Never contains a secret.
    pub warnings: Vec<String>,
}

impl Plan {
    /// The SIM whose entry binds source address `peer`, with its group; `None` for an unknown
    /// source (the listener's [`UnknownSource`] decides what it gets).
    pub fn identify(&self, peer: IpAddr) -> Option<(SimRef<'_>, GroupId)> {
        let sim = self.sims.by_ip(peer)?;
        Some((sim, GroupId(sim.group_index())))
    }

    /// The SIM with IMSI `imsi` and its group (tests; panics if absent or invalid).
    #[cfg(test)]
    pub(crate) fn identify_imsi_for_tests(&self, imsi: &str) -> (SimRef<'_>, GroupId) {
        let imsi = crate::identity::Imsi::parse(imsi).expect("an IMSI");
        let sim = self.sims.by_imsi(imsi).expect("a SIM of the table");
        (sim, GroupId(sim.group_index()))
    }

    /// The destination for an HTTP request on `listener` with request-target `path`, for a device
    /// of `group`. Longest matching prefix wins; `None` means no route (404).
    pub fn route_http(
        &self,
        group: GroupId,
        listener: ListenerId,
        path: &[u8],
    ) -> Option<DestinationId> {
        let group = self.groups.get(usize::from(group.0))?;
        group
            .http_routes
            .iter()
            .find(|r| r.listener == listener && prefix_matches(r.path_prefix.as_bytes(), path))
            .map(|r| r.destination)
    }

    /// The destination for an MQTT session on `listener` of a device in `group`.
    pub fn route_mqtt(&self, group: GroupId, listener: ListenerId) -> Option<DestinationId> {
        let group = self.groups.get(usize::from(group.0))?;
        group
            .mqtt_routes
            .iter()
            .find(|r| r.listener == listener)
            .map(|r| r.destination)
    }

    /// The destination with this id.
    ///
    /// # Panics
    /// If `id` did not come from this plan (ids are only minted by plan compilation).
    pub fn destination(&self, id: DestinationId) -> &DestinationPlan {
        &self.destinations[usize::from(id.0)]
    }

    /// The listener with this id.
    ///
    /// # Panics
    /// If `id` did not come from this plan.
    pub fn listener(&self, id: ListenerId) -> &ListenerPlan {
        &self.listeners[usize::from(id.0)]
    }
}

/// Segment-boundary prefix match: `prefix` matches `path` if equal, or `path` continues with
/// '/', '?' or '#' right after it. The prefix `/` matches everything.
pub fn prefix_matches(prefix: &[u8], path: &[u8]) -> bool {
    if prefix == b"/" {
        return path.first() == Some(&b'/');
    }
    let prefix = prefix.strip_suffix(b"/").unwrap_or(prefix);
    match path.strip_prefix(prefix) {
        Some(rest) => matches!(rest.first(), None | Some(b'/' | b'?' | b'#')),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{prefix_matches, WhileDown};
    use std::time::Duration;

    #[test]
    fn while_down_refuses_only_after_the_bound_and_only_when_asked_to() {
        let secs = Duration::from_secs;
        let refuse = WhileDown::RefuseAfter(secs(10));
        assert!(!refuse.refuses(None), "a link that is up admits");
        assert!(!refuse.refuses(Some(Duration::ZERO)), "just went down");
        assert!(!refuse.refuses(Some(secs(10) - Duration::from_nanos(1))));
        assert!(refuse.refuses(Some(secs(10))), "down for the whole bound");
        assert!(refuse.refuses(Some(secs(3600))));
        assert!(
            !WhileDown::Accept.refuses(Some(secs(3600))),
            "today's behaviour"
        );
        assert!(!WhileDown::Accept.refuses(None));
    }

    #[test]
    fn adapter_index_is_its_position_in_all() {
        for (i, kind) in super::AdapterKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i, "{kind:?}");
        }
    }

    #[test]
    fn prefix_matches_on_segment_boundaries() {
        assert!(prefix_matches(b"/", b"/anything"));
        assert!(prefix_matches(b"/a", b"/a"));
        assert!(prefix_matches(b"/a", b"/a/b"));
        assert!(prefix_matches(b"/a/", b"/a/b"));
        assert!(prefix_matches(b"/a", b"/a?x=1"));
        assert!(!prefix_matches(b"/a", b"/ab"));
        assert!(!prefix_matches(b"/a/b", b"/a"));
        assert!(!prefix_matches(b"/", b"*"));
    }
}
