//! The IO of the internal probes, on the control thread's tokio runtime: the loop that starts
//! due probes ([`run`]) and one probe ([`probe`]): tokio TCP, tokio-rustls with the
//! destination's own `ClientConfig` (its roots and client certificate), then hyper's HTTP/1.1
//! client for `HEAD /` or the MQTT exchange over [`crate::proto::mqtt`]'s sans-IO codec.
//!
//! The shard's `upstream::connect` is not reused: it runs on a shard's io_uring reactor, and a
//! probe must never take a shard's time, pool slots or counters.
//!
//! [`run_e2e`] is the end-to-end probe's loop: it numbers one message every
//! `probe.e2e.interval`, expires the ones not back in time (bookkeeping in [`super::e2e`]) and
//! keeps one device connection to simgate's own listener (its bound address; a wildcard bind
//! is reached on loopback) running: [`super::e2e_mqtt`] or [`super::e2e_http`].
//!
//! What this does not do: resolve names (it probes the addresses the resolver last applied,
//! else the plan's), mint tokens (it uses the one [`super::super::tokens`] last handed to the
//! shards, or reports no credential), or send device data: the MQTT probe publishes nothing and
//! subscribes to nothing, the HTTP probe sends no body and no `Authorization`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http_body_util::Empty;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;

use crate::policy::cloud::Token;
use crate::policy::E2eTarget;
use crate::policy::{Adapter, DestinationId, DestinationPlan, MqttUpstreamVersion, Plan};
use crate::proto::mqtt::{Connect, Disconnect, Packet, Properties, ProtocolVersion, ReasonCode};

use super::super::Control;
use super::e2e_device::{log_alarm, DeviceTask, Numbered};
use super::mqtt_io::{read_packet, send};
use super::{Due, Outcome, Report, Stage, StateChange};

/// What the probes need beyond the plan: the addresses re-resolution applied and the tokens
/// minted for the served plan (both reset when the plan changes).
#[derive(Debug, Default)]
pub struct Inputs {
    plan: Option<Arc<Plan>>,
    addrs: HashMap<DestinationId, Vec<SocketAddr>>,
    tokens: HashMap<DestinationId, Token>,
}

impl Inputs {
    fn for_plan(&mut self, plan: &Arc<Plan>) {
        if !self.plan.as_ref().is_some_and(|p| Arc::ptr_eq(p, plan)) {
            *self = Inputs {
                plan: Some(plan.clone()),
                ..Inputs::default()
            };
        }
    }

    /// Addresses of `destination` the shards now use (after a re-resolution of `plan`).
    pub fn record_addrs(
        &mut self,
        plan: &Arc<Plan>,
        destination: DestinationId,
        addrs: &[SocketAddr],
    ) {
        self.for_plan(plan);
        self.addrs.insert(destination, addrs.to_vec());
    }

    /// Tokens the shards now use for `plan`'s destinations.
    pub fn record_tokens(&mut self, plan: &Arc<Plan>, tokens: &[(DestinationId, Token)]) {
        self.for_plan(plan);
        for (d, t) in tokens {
            self.tokens.insert(*d, t.clone());
        }
    }

    fn addrs(&self, plan: &Arc<Plan>, dest: &DestinationPlan) -> Vec<SocketAddr> {
        self.plan
            .as_ref()
            .filter(|p| Arc::ptr_eq(p, plan))
            .and_then(|_| self.addrs.get(&dest.id))
            .unwrap_or(&dest.addrs)
            .clone()
    }

    fn token(&self, plan: &Arc<Plan>, dest: DestinationId, now: SystemTime) -> Option<Token> {
        self.plan
            .as_ref()
            .filter(|p| Arc::ptr_eq(p, plan))
            .and_then(|_| self.tokens.get(&dest))
            .filter(|t| t.valid_at(now))
            .cloned()
    }
}

/// The exchange a probe ends with.
#[derive(Debug, Clone)]
pub enum Exchange {
    /// `HEAD /` over HTTP/1.1 with this `Host`.
    Head {
        /// The `Host` header.
        host: String,
    },
    /// MQTT CONNECT, PINGREQ/PINGRESP, DISCONNECT.
    Mqtt(MqttProbe),
    /// The destination needs a token there is none of: probe TCP and TLS only.
    NoCredential,
}

/// The CONNECT of an MQTT probe.
#[derive(Clone)]
pub struct MqttProbe {
    /// Protocol version.
    pub version: ProtocolVersion,
    /// Client id (`probe.client_id`).
    pub client_id: String,
    /// User name, if the destination has a fixed one.
    pub username: Option<String>,
    /// Password (a secret: never printed).
    pub password: Option<Bytes>,
}

impl std::fmt::Debug for MqttProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttProbe")
            .field("version", &self.version)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Everything one probe needs.
#[derive(Debug, Clone)]
pub struct Target {
    /// Addresses, tried in order.
    pub addrs: Vec<SocketAddr>,
    /// SNI and the name the certificate is verified against.
    pub server_name: ServerName<'static>,
    /// The destination's TLS config.
    pub tls: Arc<rustls::ClientConfig>,
    /// Budget of the whole probe.
    pub timeout: Duration,
    /// The last stage.
    pub exchange: Exchange,
}

impl Target {
    /// The probe of `dest` (of `plan`), with the addresses and token in `inputs` at `now`.
    pub fn new(
        plan: &Arc<Plan>,
        dest: &DestinationPlan,
        inputs: &Inputs,
        now: SystemTime,
    ) -> Target {
        let settings = &plan.probe;
        let exchange = match dest.mqtt() {
            None => Exchange::Head {
                host: dest.host_header.clone(),
            },
            Some(m) => {
                let version = match m.version {
                    MqttUpstreamVersion::V5 => ProtocolVersion::V5,
                    _ => ProtocolVersion::V311,
                };
                let client_id = settings.client_id.clone();
                match &dest.adapter {
                    Adapter::AzureIotHubMqtt(hub) => match inputs.token(plan, dest.id, now) {
                        None => Exchange::NoCredential,
                        Some(token) => Exchange::Mqtt(MqttProbe {
                            version,
                            username: Some(format!(
                                "{}.azure-devices.net/{client_id}/?api-version={}",
                                hub.hub,
                                crate::adapters::azure_iot_hub_mqtt::API_VERSION
                            )),
                            client_id,
                            password: Some(Bytes::copy_from_slice(token.authorization.as_bytes())),
                        }),
                    },
                    _ => {
                        // A fixed user name (and its password) is sent; one rendered per SIM,
                        // or the device's own (pass-through), has no value for a probe.
                        let username = (!m.pass_through_credentials)
                            .then(|| m.username.as_ref().and_then(|u| u.fixed_text()))
                            .flatten()
                            .map(str::to_owned);
                        let password = username
                            .as_ref()
                            .and(m.password.as_ref())
                            .map(|p| p.0.clone());
                        Exchange::Mqtt(MqttProbe {
                            version,
                            client_id,
                            username,
                            password,
                        })
                    }
                }
            }
        };
        Target {
            addrs: inputs.addrs(plan, dest),
            server_name: dest.server_name.clone(),
            tls: dest.tls.clone(),
            timeout: settings.timeout,
            exchange,
        }
    }
}

/// Longest sleep when nothing is due (a plan update wakes the loop anyway).
const IDLE_WAIT: Duration = Duration::from_secs(3600);

/// The probe loop; runs on the control runtime until the gateway stops publishing plans.
pub async fn run(control: Arc<Control>) {
    let mut plans = control.plan_updates();
    {
        let plan = plans.borrow_and_update().clone();
        control.probes.lock().rebuild(plan, Instant::now());
    }
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(Due, Report)>();
    loop {
        let now = Instant::now();
        let (due, plan) = {
            let mut board = control.probes.lock();
            (board.start_due(now), board.plan().clone())
        };
        for d in due {
            let Some(dest) = plan.destinations.get(usize::from(d.destination.0)) else {
                continue;
            };
            let target = Target::new(&plan, dest, &control.probe_inputs.lock(), SystemTime::now());
            let done = done_tx.clone();
            tokio::spawn(async move {
                let report = probe(target).await;
                let _ = done.send((d, report));
            });
        }
        let wake_at = control
            .probes
            .lock()
            .next_due()
            .unwrap_or_else(|| Instant::now() + IDLE_WAIT);
        tokio::select! {
            _ = tokio::time::sleep_until(wake_at.into()) => {}
            changed = plans.changed() => {
                if changed.is_err() {
                    return;
                }
                let plan = plans.borrow_and_update().clone();
                control.probes.lock().rebuild(plan, Instant::now());
            }
            Some((due, report)) = done_rx.recv() => {
                let change = control.probes.lock().complete(due, report, Instant::now());
                match change {
                    Some(StateChange::Failed { name, error }) => tracing::warn!(
                        destination = %name,
                        %error,
                        "probe failed: the destination's path (TCP, TLS or protocol) is not working"
                    ),
                    Some(StateChange::Ok { name, after_failures }) => tracing::info!(
                        destination = %name,
                        after_failures,
                        "probe ok"
                    ),
                    None => {}
                }
            }
        }
    }
}

/// Probe `target` once: connect, handshake, exchange, each timed, all within its timeout.
pub async fn probe(target: Target) -> Report {
    let started_at = SystemTime::now();
    let deadline = tokio::time::Instant::now() + target.timeout;
    let mut times = [None; 3];
    let outcome = run_stages(&target, deadline, &mut times).await;
    Report {
        stage_times: times,
        outcome,
        started_at,
    }
}

async fn run_stages(
    target: &Target,
    deadline: tokio::time::Instant,
    times: &mut [Option<Duration>; 3],
) -> Outcome {
    let failed = |stage: Stage, error: String| Outcome::Failed { stage, error };
    let timed_out = |stage: Stage| Outcome::Failed {
        stage,
        error: format!(
            "timed out (probe.timeout {} ms)",
            target.timeout.as_millis()
        ),
    };

    let t = Instant::now();
    let tcp = match tokio::time::timeout_at(deadline, connect_any(&target.addrs)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return failed(Stage::Connect, e),
        Err(_) => return timed_out(Stage::Connect),
    };
    times[0] = Some(t.elapsed());
    let _ = tcp.set_nodelay(true);

    let t = Instant::now();
    let tls = match &target.exchange {
        Exchange::Head { .. } => {
            let mut config = (*target.tls).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        }
        _ => target.tls.clone(),
    };
    let handshake = tokio_rustls::TlsConnector::from(tls).connect(target.server_name.clone(), tcp);
    let mut stream = match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return failed(Stage::Tls, e.to_string()),
        Err(_) => return timed_out(Stage::Tls),
    };
    times[1] = Some(t.elapsed());

    let t = Instant::now();
    let result = match &target.exchange {
        Exchange::NoCredential => {
            let _ = stream.shutdown().await;
            return Outcome::NoCredential;
        }
        Exchange::Head { host } => tokio::time::timeout_at(deadline, head(stream, host)).await,
        Exchange::Mqtt(m) => tokio::time::timeout_at(deadline, mqtt_exchange(&mut stream, m)).await,
    };
    match result {
        Ok(Ok((detail, http_status))) => {
            times[2] = Some(t.elapsed());
            Outcome::Ok {
                detail,
                http_status,
            }
        }
        Ok(Err(e)) => failed(Stage::Exchange, e),
        Err(_) => timed_out(Stage::Exchange),
    }
}

/// A TCP connection to the first address that accepts one.
async fn connect_any(addrs: &[SocketAddr]) -> Result<tokio::net::TcpStream, String> {
    let mut last = String::from("no addresses");
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("{addr}: {}", e.kind()),
        }
    }
    Err(last)
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// `HEAD /`: any status proves the path; the detail names it.
async fn head(stream: Tls, host: &str) -> Result<(String, Option<u16>), String> {
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let result = async {
        let request = hyper::Request::head("/")
            .header(hyper::header::HOST, host)
            .header(
                hyper::header::USER_AGENT,
                concat!("simgate-probe/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        Ok((format!("HTTP {status}"), Some(status)))
    }
    .await;
    driver.abort();
    result
}

/// CONNECT (refused CONNACK: an error naming the reason code), PINGREQ/PINGRESP, DISCONNECT.
async fn mqtt_exchange(stream: &mut Tls, m: &MqttProbe) -> Result<(String, Option<u16>), String> {
    let connect = Packet::Connect(Box::new(Connect {
        protocol_version: m.version,
        clean_start: true,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: Bytes::copy_from_slice(m.client_id.as_bytes()),
        will: None,
        username: m
            .username
            .as_ref()
            .map(|u| Bytes::copy_from_slice(u.as_bytes())),
        password: m.password.clone(),
    }));
    let mut rbuf = BytesMut::with_capacity(256);
    let t = Instant::now();
    send(stream, &connect, m.version).await?;
    match read_packet(stream, &mut rbuf, m.version).await? {
        Packet::ConnAck(c) if c.reason_code == ReasonCode::SUCCESS => {}
        Packet::ConnAck(c) => {
            return Err(format!("CONNACK refused: reason code {}", c.reason_code));
        }
        other => return Err(format!("expected CONNACK, got {:?}", other.packet_type())),
    }
    let connack = t.elapsed();
    let t = Instant::now();
    send(stream, &Packet::PingReq, m.version).await?;
    loop {
        match read_packet(stream, &mut rbuf, m.version).await? {
            Packet::PingResp => break,
            Packet::Disconnect(d) => {
                return Err(format!(
                    "broker disconnected: reason code {}",
                    d.reason_code
                ))
            }
            // Nothing else is expected on a clean session that subscribed to nothing.
            _ => {}
        }
    }
    let pingresp = t.elapsed();
    let disconnect = Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::SUCCESS,
        properties: Properties::default(),
    });
    send(stream, &disconnect, m.version).await?;
    let _ = stream.shutdown().await;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok((
        format!(
            "CONNACK accepted in {:.1} ms, PINGRESP in {:.1} ms",
            ms(connack),
            ms(pingresp)
        ),
        None,
    ))
}

/// The address the probe device connects to: the listener's bound address, loopback for a
/// wildcard bind.
fn device_addr(control: &Control, listener: &str) -> Option<SocketAddr> {
    let guard = control.gateway.lock();
    let mut addr = guard
        .as_ref()?
        .listener_addrs()
        .iter()
        .find(|(name, _)| name == listener)?
        .1;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Some(addr)
}

/// The end-to-end probe loop (`[probe.e2e]`); returns at once when it is not configured.
/// Every interval one message is numbered and handed to the device connection (when there is
/// none, it is still numbered, and will be lost); a connection that ends is retried at the
/// next interval. The device is [`super::e2e_mqtt::device`] or [`super::e2e_http::device`],
/// by the listener's protocol; the numbering, expiry and alarm logic here and in
/// [`super::e2e`] is the same for both.
pub async fn run_e2e(control: Arc<Control>) {
    let Some(settings) = control.probes.lock().e2e().map(|b| b.settings().clone()) else {
        return;
    };
    let client_id = format!("{}-e2e", control.plan_updates().borrow().probe.client_id);
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut device: Option<(
        tokio::sync::mpsc::Sender<Numbered>,
        tokio::task::JoinHandle<String>,
    )> = None;
    loop {
        let next_expiry = control
            .probes
            .lock()
            .e2e()
            .and_then(|b| b.next_expiry())
            .unwrap_or_else(|| Instant::now() + IDLE_WAIT);
        tokio::select! {
            _ = ticker.tick() => {
                if device.is_none() {
                    if let Some(addr) = device_addr(&control, &settings.listener) {
                        let (tx, rx) = tokio::sync::mpsc::channel(1024);
                        let device_task = DeviceTask {
                            control: control.clone(),
                            addr,
                            client_id: client_id.clone(),
                            settings: settings.clone(),
                            messages: rx,
                        };
                        let task = match &settings.target {
                            E2eTarget::MqttTopic(topic) => {
                                tokio::spawn(super::e2e_mqtt::device(device_task, topic.clone()))
                            }
                            E2eTarget::HttpPath(path) => {
                                tokio::spawn(super::e2e_http::device(device_task, path.clone()))
                            }
                        };
                        device = Some((tx, task));
                    }
                }
                let now = Instant::now();
                let seq = control.probes.lock().e2e_mut().map(|b| b.send(now));
                if let (Some(seq), Some((tx, _))) = (seq, &device) {
                    let _ = tx.try_send(Numbered { seq, at: now });
                }
            }
            _ = tokio::time::sleep_until(next_expiry.into()) => {
                let change = control
                    .probes
                    .lock()
                    .e2e_mut()
                    .and_then(|b| b.expire(Instant::now()));
                log_alarm(&settings.listener, change);
            }
            ended = async { (&mut device.as_mut().expect("checked").1).await }, if device.is_some() => {
                let error = ended.unwrap_or_else(|e| format!("probe device task failed: {e}"));
                tracing::debug!(listener = %settings.listener, %error, "end-to-end probe device disconnected");
                if let Some(b) = control.probes.lock().e2e_mut() {
                    b.set_connection(false, Some(error));
                }
                device = None;
            }
        }
    }
}
