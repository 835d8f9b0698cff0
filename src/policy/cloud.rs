//! The compiled settings of the cloud adapters (`destination.adapter = "aws-iot-core"`, …),
//! the cloud credentials they use, and the tokens minted from those credentials.
//!
//! Plain data, compiled once by `config` and read by the adapters (`crate::adapters`, which
//! turn a device message into the cloud's request) and by the control thread (which mints and
//! renews the tokens of [`TokenSpec`] and pushes [`Token`]s to the shards). What this module does
//! not do: any mapping, signing or IO — the adapters and the control thread do that. Secret
//! values are [`Secret`]s: their `Debug` never shows them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Secret, Template};

/// A cloud credential (`[[credential]]` of a kind other than `x509`, which is baked into the
/// destination's rustls config instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudCredential {
    /// `kind = "aws-keys"`: SigV4 signing keys.
    AwsKeys {
        /// The access key id (not secret: it is sent in every Authorization header).
        access_key_id: String,
        /// The secret access key.
        secret_access_key: Secret,
        /// A session token of temporary credentials.
        session_token: Option<Secret>,
    },
    /// `kind = "azure-sas"`: a shared access key, from which SAS tokens are minted.
    AzureSas {
        /// The policy name (`skn`); `None` for an IoT Hub device key.
        key_name: Option<String>,
        /// The key as written (base64 text for IoT Hub; used as-is by Event Hubs).
        key: Secret,
    },
    /// `kind = "gcp-service-account"`: the service-account JSON Google issues (checked at
    /// load: it parses and its key signs).
    GcpServiceAccount {
        /// The JSON file's bytes.
        json: Secret,
        /// `client_email` (for logs; not secret).
        client_email: String,
        /// `token_uri` of the JSON.
        token_uri: String,
    },
    /// `kind = "basic"`: HTTP Basic authentication.
    Basic {
        /// The user name (Things Cloud: without the tenant, which the adapter adds).
        username: String,
        /// The password.
        password: Secret,
    },
    /// `kind = "bearer"`: a fixed bearer token.
    Bearer {
        /// The token.
        token: Secret,
    },
}

/// How a destination's rotating token is minted: the control thread's job, never a shard's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSpec {
    /// An Azure SAS token for `resource_uri`, valid `ttl`.
    Sas {
        /// The resource the token is scoped to, as the service expects it before URL-encoding
        /// (IoT Hub: `{hub}.azure-devices.net[/devices/{id}]`; Event Hubs:
        /// `https://{namespace}.servicebus.windows.net/{hub}`).
        resource_uri: String,
        /// The key, as written.
        key: Secret,
        /// Whether the key is base64-decoded before the HMAC (IoT Hub yes, Event Hubs no).
        key_is_base64: bool,
        /// `skn`, if a policy key.
        key_name: Option<String>,
        /// Lifetime of each token.
        ttl: Duration,
    },
    /// A Google OAuth2 access token from a service account (JWT bearer grant).
    GoogleOauth2 {
        /// The service-account JSON.
        service_account: Secret,
        /// Where the assertion is posted (the JSON's `token_uri`, or the destination's
        /// `token_uri` override).
        token_uri: String,
        /// The OAuth2 scope asked for.
        scope: String,
        /// Lifetime asked for (at most 1 h, Google's limit).
        ttl: Duration,
    },
}

impl TokenSpec {
    /// The lifetime of each minted token.
    pub fn ttl(&self) -> Duration {
        match self {
            TokenSpec::Sas { ttl, .. } | TokenSpec::GoogleOauth2 { ttl, .. } => *ttl,
        }
    }
}

/// A minted token, as the shards hold it: the whole `Authorization` header value and when it
/// stops being valid. `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The `Authorization` header value (`SharedAccessSignature sr=…`, `Bearer …`).
    pub authorization: Arc<str>,
    /// When the cloud stops accepting it.
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("authorization", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl Token {
    /// Whether the token is still valid at `now`.
    pub fn valid_at(&self, now: SystemTime) -> bool {
        now < self.expires_at
    }
}

/// `destination.batch`: many devices' messages per cloud call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// Most messages per call.
    pub max_messages: usize,
    /// Most bytes of message data per call.
    pub max_bytes: usize,
    /// How long the first message of a batch waits for more.
    pub linger: Duration,
}

/// How AWS IoT Core (HTTPS) requests are authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsIotAuth {
    /// Mutual TLS with the destination's `x509` credential (port 8443, or 443 with ALPN
    /// `x-amzn-http-ca`).
    MutualTls,
    /// SigV4 with an `aws-keys` credential, for `region`.
    SigV4 {
        /// The region signed for.
        region: String,
        /// The keys.
        credential: Arc<CloudCredential>,
    },
}

/// `adapter = "aws-iot-core"` over HTTPS: `POST /topics/{topic}?qos=1`.
#[derive(Debug, Clone)]
pub struct AwsIotCoreHttps {
    /// The topic template (`{topic}` is the device's request path without its leading `/`).
    pub topic: Template,
    /// Authentication.
    pub auth: AwsIotAuth,
}

/// `adapter = "aws-iot-core"` with a `[destination.mqtt]` table: AWS IoT Core over MQTT,
/// session mode (every SIM its own thing) or aggregate mode (SIMs share the gateway's links),
/// mutual TLS with the destination's x509 credential.
#[derive(Debug, Clone)]
pub struct AwsIotCoreMqtt {
    /// The thing name template (`mqtt.thing_name`, default: the client id template): the
    /// `{thing}` of `$aws/things/{thing}/shadow/...` and `.../jobs/...`. Used only with
    /// `thing_topics`.
    pub thing_name: Template,
    /// `mqtt.thing_topics` (session mode: default true; aggregate mode: always false): device
    /// topics `shadow/...` and `jobs/...` are the thing's Device Shadow and Jobs topics, both
    /// ways.
    pub thing_topics: bool,
    /// The MQTT settings (session mode: client id `{imsi}` and topic `{topic}` by default;
    /// aggregate mode: as `mqtts`, with `max_publish_rate` at most AWS's limit; no user name or
    /// password: the certificate authenticates).
    pub mqtt: super::MqttDestination,
}

/// `adapter = "azure-iot-hub"` over HTTPS: `POST /devices/{id}/messages/events`.
#[derive(Debug, Clone)]
pub struct AzureIotHubHttps {
    /// The hub's name (`{hub}.azure-devices.net`).
    pub hub: String,
    /// The device id template.
    pub device_id: Template,
}

/// `adapter = "azure-iot-hub"` over MQTT (a `[destination.mqtt]` table, session mode): each
/// device session is its own IoT Hub device connection.
#[derive(Debug, Clone)]
pub struct AzureIotHubMqtt {
    /// The hub's name (`{hub}.azure-devices.net`).
    pub hub: String,
    /// The device id template (the upstream client id, and the `{device_id}` of the topics).
    pub device_id: Template,
    /// The device topic cloud-to-device messages are delivered on (`mqtt.c2d_topic`).
    pub c2d_topic: bytes::Bytes,
    /// The device-side prefix of IoT Hub's twin topics (`mqtt.twin_topic`).
    pub twin_topic: bytes::Bytes,
    /// The device-side prefix of IoT Hub's direct-method topics (`mqtt.methods_topic`).
    pub methods_topic: bytes::Bytes,
    /// The session-mode settings the adapter derives (client id = device id, username, MQTT
    /// 3.1.1, topic `{topic}`); the password is the destination's SAS token at connect time.
    pub session: super::MqttDestination,
}

/// `adapter = "azure-event-hubs"`: `POST /{hub}/messages`.
#[derive(Debug, Clone)]
pub struct AzureEventHubs {
    /// The namespace (`{namespace}.servicebus.windows.net`).
    pub namespace: String,
    /// The event hub's name.
    pub hub: String,
    /// The partition key template (default `{imsi}`); `None` when set to `""`.
    pub partition_key: Option<Template>,
    /// Batching, if configured.
    pub batch: Option<BatchSettings>,
}

/// `adapter = "gcp-pubsub"`: `POST /v1/projects/{project}/topics/{topic}:publish`.
#[derive(Debug, Clone)]
pub struct GcpPubsub {
    /// The project id.
    pub project: String,
    /// The topic name.
    pub topic: String,
    /// The ordering key template (none by default).
    pub ordering_key: Option<Template>,
    /// Batching, if configured.
    pub batch: Option<BatchSettings>,
}

/// `invocation` of `aws-lambda`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LambdaInvocation {
    /// `Event`: asynchronous; the device gets the 202.
    Event,
    /// `RequestResponse`: the device gets the function's answer.
    RequestResponse,
}

/// `adapter = "aws-lambda"`: Invoke, SigV4-signed.
#[derive(Debug, Clone)]
pub struct AwsLambda {
    /// The region.
    pub region: String,
    /// The function name (or ARN).
    pub function: String,
    /// The version or alias, if any.
    pub qualifier: Option<String>,
    /// Event or RequestResponse.
    pub invocation: LambdaInvocation,
    /// The `aws-keys` credential.
    pub credential: Arc<CloudCredential>,
}

/// `kind` of `things-cloud`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThingsCloudKind {
    /// `POST /measurement/measurements`.
    Measurement,
    /// `POST /event/events`.
    Event,
}

/// `adapter = "things-cloud"` (Cumulocity): measurements or events, Basic auth.
#[derive(Debug, Clone)]
pub struct ThingsCloud {
    /// The tenant id (`{tenant}/{user}` in Basic auth).
    pub tenant: String,
    /// Measurements or events.
    pub kind: ThingsCloudKind,
    /// The managed object's id template (e.g. `{tag.c8y_id}`).
    pub source_id: Template,
    /// `Basic base64({tenant}/{user}:{password})`, from the `basic` credential.
    pub authorization: Secret,
}
