//! HTTP device → HTTPS destination forwarding.
//!
//! Per device connection: read one whole request (bounded by the listener's limits and phase
//! timeouts), route it by `{listener, path prefix}`, send it upstream on a pooled TLS connection
//! with the head rewritten (Host, X-Forwarded-For, hop-by-hop headers dropped) and the body
//! forwarded verbatim as slices of the receive buffer (minus the trailer fields RFC 9110 §6.5.1
//! keeps out of trailers, counted in `simgate_http_trailer_fields_dropped_total`), then stream
//! the upstream response back (its trailers relayed as received).
//! Keep-alive on both sides. A destination with `envelope = "json"` gets a request body wrapped
//! instead ([`crate::policy::envelope`]): de-chunked, trailers dropped, sent whole with
//! `Content-Type: application/json` and a recomputed `Content-Length` (a request without a body
//! is forwarded as it is).
//!
//! Answers generated here, each with a plain-text reason body:
//! - 400/413/431/501/505 for bad requests (from the codec), then the connection is closed; this
//!   includes paths with dot segments, empty segments or encoded separators, which could
//!   otherwise escape the destination's `base_path` upstream;
//! - 408 when a request head or body does not arrive in time, then closed;
//! - 404 when no route matches (connection kept);
//! - 502 when the upstream cannot be reached, fails TLS, is backing off, closes early or answers
//!   with an invalid response; 504 when its response head does not arrive in time (connection
//!   kept, since the device's request was fully read). Their body is a generic text
//!   (`upstream unavailable`, `upstream did not respond in time`) unless the listener has
//!   `error_detail = "full"`; the full reason (destination, upstream error) is logged at info
//!   level and the cause counted in `simgate_http_errors_total` either way. The 4xx reasons
//!   above are fixed texts about the device's own request and are sent in both modes.
//!
//! Retry rule: a request is re-sent on a fresh connection only when the pooled connection it
//! used turned out dead without a single response byte, and either our write to it failed (the
//! upstream had already closed: nothing was processed) or the method is idempotent
//! (RFC 9110 §9.2.2). A POST that reached a live upstream is never sent twice.
//!
//! What this module does not do: parse HTTP (see `proto::http1`) or manage connections (see
//! `upstream`).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::device_log::{record_destination, record_sim, DeviceFault};
use super::identity::DeviceIdentity;
use super::sessions::RegistryKey;
use super::ShardState;
use crate::policy::envelope::{self, Envelope};
use crate::policy::signature::{SignInput, Signer};
use crate::policy::{DestinationId, ErrorDetail, HttpListenerLimits, ListenerId, Plan};
use crate::proto::http1::{
    self, BodyChunk, BodyDecoder, BodyLength, Limits, Parsed, Request, RequestDecoder, ResponseHead,
};
use crate::reactor::{self, TcpStream};
use crate::reactor::{select2, Either};
use crate::stats::usage::UsageCounts;
use crate::stats::{Direction, ErrorKind, Latency, Protocol};
use crate::tls::{TlsError, TlsIoError};
use crate::upstream::driver::HttpConn;
use crate::upstream::http2::H2Handle;
use crate::upstream::{UpstreamConn, UpstreamError};

use super::http2_exchange::{self, H2Failure};

/// How one HTTP/2 exchange ended.
enum H2Outcome {
    /// Relayed, or failed with this answer for the device.
    Done(Result<Relayed, ForwardError>),
    /// Refused before processing (GOAWAY above it, REFUSED_STREAM, no new streams): safe to
    /// send again, whatever the method.
    Refused(ForwardError),
    /// Reset or cut after it was sent, before any response: safe to send again only for an
    /// idempotent method.
    Broken(ForwardError),
}

/// Times a refused (never processed) HTTP/2 request is sent again before its 502: a new
/// connection's first streams may exceed a stream limit its server has not announced yet.
const H2_REFUSED_RETRIES: u8 = 3;

/// The device's answer for an HTTP/2 stream that produced no response.
fn h2_forward_error(destination: &str, e: H2Failure) -> ForwardError {
    match e {
        H2Failure::Timeout => ForwardError {
            status: 504,
            reason: format!("upstream {destination} did not respond in time"),
            kind: ErrorKind::UpstreamTimeout,
        },
        H2Failure::Refused(why) => ForwardError {
            status: 502,
            reason: format!("upstream {destination} refused the HTTP/2 stream: {why}"),
            kind: ErrorKind::UpstreamClosed,
        },
        H2Failure::Broken(why) => ForwardError {
            status: 502,
            reason: format!("upstream {destination} HTTP/2 stream failed: {why}"),
            kind: ErrorKind::UpstreamClosed,
        },
        H2Failure::Invalid(why) => ForwardError {
            status: 502,
            reason: format!("request for {destination} cannot be sent over HTTP/2: {why}"),
            kind: ErrorKind::UpstreamProtocol,
        },
    }
}

/// Serve one device connection until it closes, fails, or the shard drains.
pub async fn serve(
    state: Rc<ShardState>,
    listener: ListenerId,
    stream: TcpStream,
    peer: SocketAddr,
    session: RegistryKey,
) {
    let mut conn = DeviceConn {
        state,
        listener,
        stream,
        peer,
        session,
        buf: BytesMut::new(),
        served: 0,
        send_timeout: std::time::Duration::from_secs(60),
        error_detail: ErrorDetail::Generic,
        identity: None,
        usage: UsageCounts::default(),
        destination_logged: false,
    };
    conn.run().await;
    conn.flush_usage();
}

struct DeviceConn {
    state: Rc<ShardState>,
    listener: ListenerId,
    stream: TcpStream,
    peer: SocketAddr,
    /// The connection's entry in the shard's session registry.
    session: RegistryKey,
    /// Bytes received from the device and not yet consumed. Released whenever it empties, so
    /// an idle keep-alive connection holds no buffer.
    buf: BytesMut,
    served: u32,
    /// A send to the device that makes no progress for this long fails (a device that stops
    /// reading must not pin the task, its upstream connection and its buffers). The listener's
    /// `idle_timeout`.
    send_timeout: std::time::Duration,
    /// The listener's `error_detail`: what a 502/504 body says.
    error_detail: ErrorDetail,
    /// The device's SIM and group, resolved at its first request and again only after a
    /// reload replaced the plan.
    identity: Option<DeviceIdentity>,
    /// Usage not yet handed to the shard's meter: the wire bytes each way, answers sent and
    /// errors since the last [`DeviceConn::flush_usage`] (at each request's start and at the
    /// connection's end; the request count is added when the request is identified).
    usage: UsageCounts,
    /// The connection's span has its `destination` (recorded at the first routed request).
    destination_logged: bool,
}

/// How reading a request ended.
enum ReadOutcome {
    Request(Request),
    /// The device closed, went idle past `idle_timeout`, or the socket failed: close quietly.
    Closed,
    /// Answer with this status and reason, then close.
    Reject {
        status: u16,
        reason: String,
        kind: ErrorKind,
    },
}

/// A failed forward: the status, the full reason (logged; shown to the device only with
/// `error_detail = "full"`), and what to count.
struct ForwardError {
    status: u16,
    reason: String,
    kind: ErrorKind,
}

/// How one exchange with the upstream is to be made and relayed.
#[derive(Clone, Copy)]
struct Exchange {
    /// The device's request is a HEAD (the response has no body).
    is_head_request: bool,
    /// The request may be sent twice (RFC 9110 §9.2.2).
    idempotent: bool,
    /// HTTP/1.x minor version of the device.
    device_minor_version: u8,
    /// The device connection may serve another request afterwards.
    keep_device: bool,
    /// When the device's request was fully received.
    received_at: Instant,
}

/// How the relay of an upstream response ended.
enum Relayed {
    /// Response fully sent; `keep_device` says whether the device connection may serve more.
    Done { keep_device: bool, status: u16 },
    /// The response was partly sent and then broke: the device connection must close.
    Aborted,
}

impl DeviceConn {
    /// Hand the pending usage to the shard's meter, under the device's SIM and group (resolved
    /// now if no request identified it yet; dropped for a refused unknown source).
    fn flush_usage(&mut self) {
        if self.usage.is_zero() {
            return;
        }
        {
            let mut sessions = self.state.sessions.borrow_mut();
            sessions.add_in(self.session, self.usage.up_bytes);
            sessions.add_out(self.session, self.usage.down_bytes);
        }
        if !self.state.usage_enabled {
            self.usage = UsageCounts::default();
            return;
        }
        let key = match self.identity {
            Some(identity) => Some(identity.usage()),
            None => self.look_up_identity().map(|i| i.usage()),
        };
        let pending = std::mem::take(&mut self.usage);
        if let Some(key) = key {
            self.state.usage_add(key, &pending);
        }
    }

    async fn run(&mut self) {
        loop {
            self.flush_usage();
            // Only HTTP listeners dispatch to this flow, and reloads keep listeners as they are.
            let Some(limits) = self.state.plan().listener(self.listener).http().cloned() else {
                return;
            };
            self.send_timeout = limits.idle_timeout;
            self.error_detail = limits.error_detail;
            let request = match self.read_request(&limits).await {
                ReadOutcome::Request(r) => r,
                ReadOutcome::Closed => return,
                ReadOutcome::Reject {
                    status,
                    reason,
                    kind,
                } => {
                    {
                        let mut m = self.state.metrics.borrow_mut();
                        m.requests += 1;
                        m.error(Protocol::Http, kind);
                    }
                    self.usage.errors += 1;
                    // The line names the device's SIM even when its first request is the bad
                    // one (the flow identifies it at its first good request): looked up only
                    // for a line that is written, never for one held back.
                    self.state.device_faults.log_with(
                        DeviceFault::BadHttpRequest,
                        &reason,
                        reactor::now(),
                        || {
                            if self.identity.is_none() {
                                record_sim(self.look_up_identity().and_then(|i| i.usage().imsi));
                            }
                        },
                    );
                    // Boxed, as are the other rare sends below: the connection task is allocated at the
                    // size of its largest await, and an idle connection should not pay for them.
                    let _ = Box::pin(self.send_error(status, &reason, false)).await;
                    return;
                }
            };
            // Latency is measured on the precise clock (the reactor's cached one moves once per
            // loop turn); deadlines use the cached one.
            let received_at = Instant::now();
            // Route on the plan current now: a reload while this connection idled applies.
            let (plan, generation) = self.state.current();
            self.served += 1;
            if self.buf.is_empty() {
                self.buf = BytesMut::new();
            }
            self.state.metrics.borrow_mut().requests += 1;

            let keep_device = request.head.keep_alive
                && !self.state.draining()
                && (limits.max_requests_per_connection == 0
                    || self.served < limits.max_requests_per_connection);

            let identity = match self.identity {
                Some(identity) if identity.is_current(generation) => identity,
                _ => {
                    match DeviceIdentity::resolve(
                        &self.state.bindings,
                        &plan,
                        generation,
                        self.listener,
                        self.peer.ip(),
                    ) {
                        Some(identity) => {
                            if self.identity.is_none() {
                                record_sim(identity.usage().imsi);
                            }
                            self.identity = Some(identity);
                            self.state
                                .sessions
                                .borrow_mut()
                                .set_identity(self.session, identity.usage());
                            identity
                        }
                        None => {
                            // An unknown source on a listener that refuses them.
                            self.state
                                .metrics
                                .borrow_mut()
                                .unknown_source_rejected(usize::from(self.listener.0));
                            self.state.device_faults.log_with(
                                DeviceFault::UnknownSource,
                                &"no SIM has this source address (listener refuses unknown)",
                                reactor::now(),
                                || record_sim(None),
                            );
                            let _ = Box::pin(self.send_error(403, "unknown device", false)).await;
                            return;
                        }
                    }
                }
            };
            self.usage.up_msgs += 1;
            let group = identity.group();
            // Routed on the target's path, which the decoder has checked is in normal form (no
            // dot or empty segments, no encoded separators): exactly the path forwarded after the
            // destination's base_path, and one no upstream can resolve outside it.
            let Some(dest) = plan.route_http(group, self.listener, request.head.path()) else {
                self.state
                    .metrics
                    .borrow_mut()
                    .error(Protocol::Http, ErrorKind::NoRoute);
                self.usage.errors += 1;
                let reason = "no route for this path";
                if Box::pin(self.send_error(404, reason, keep_device))
                    .await
                    .is_err()
                    || !keep_device
                {
                    return;
                }
                continue;
            };

            self.state.sessions.borrow_mut().set_destination(
                self.session,
                generation,
                dest,
                &plan.destination(dest).name,
            );
            if !self.destination_logged {
                self.destination_logged = true;
                record_destination(&plan.destination(dest).name);
            }
            // Boxed: the forward state (TLS connect, relay) is large and lives only while a
            // request is in flight, so an idle keep-alive connection does not carry it.
            let forwarded =
                Box::pin(self.forward(&plan, generation, dest, &request, keep_device, received_at))
                    .await;
            match forwarded {
                Ok(Relayed::Done {
                    keep_device,
                    status,
                }) => {
                    self.state.metrics.borrow_mut().response(status);
                    self.usage.down_msgs += 1;
                    if !keep_device {
                        return;
                    }
                }
                Ok(Relayed::Aborted) => return,
                Err(e) => {
                    self.state
                        .metrics
                        .borrow_mut()
                        .error(Protocol::Http, e.kind);
                    if e.kind != ErrorKind::NoRoute {
                        self.state.count_destination(plan.destination(dest), |d| {
                            d.error(Protocol::Http, e.kind)
                        });
                    }
                    self.usage.errors += 1;
                    self.log_gateway_error(e.status, e.kind, &e.reason, false);
                    let sent = if e.kind == ErrorKind::CredentialUnavailable {
                        // The device may retry once the control thread has a token again.
                        Box::pin(self.send_retry_later(keep_device)).await
                    } else if e.kind == ErrorKind::AdapterRejected && e.status < 500 {
                        // About the device's own message: said in both modes.
                        let reason = e.reason.clone();
                        self.send_error(e.status, &reason, keep_device).await
                    } else {
                        let reason = device_reason(self.error_detail, e.status, &e.reason);
                        self.send_error(e.status, reason, keep_device).await
                    };
                    if sent.is_err() || !keep_device {
                        return;
                    }
                }
            }
        }
    }

    /// Read until one whole request is buffered, applying the idle, header and body timeouts
    /// and answering `Expect: 100-continue`.
    async fn read_request(&mut self, limits: &HttpListenerLimits) -> ReadOutcome {
        let mut decoder = RequestDecoder::new(Limits {
            max_head_bytes: limits.max_head_bytes,
            max_headers: limits.max_headers,
            max_body_bytes: limits.max_body_bytes,
        });
        let mut head_deadline =
            (!self.buf.is_empty()).then(|| reactor::now() + limits.header_timeout);
        let mut body_deadline = None;
        let mut sent_continue = false;
        loop {
            match decoder.decode(&mut self.buf) {
                Ok(Parsed::Complete(request)) => return ReadOutcome::Request(request),
                Ok(Parsed::Incomplete) => {}
                Err(e) => {
                    return ReadOutcome::Reject {
                        status: e.status(),
                        reason: e.to_string(),
                        kind: ErrorKind::DeviceBadRequest,
                    }
                }
            }
            let (deadline, idle) = match decoder.head() {
                Some(head) => {
                    if head.expect_continue && !sent_continue {
                        sent_continue = true;
                        if Box::pin(self.send_device(vec![Bytes::from_static(http1::CONTINUE_100)]))
                            .await
                            .is_err()
                        {
                            return ReadOutcome::Closed;
                        }
                    }
                    if body_deadline.is_none() {
                        if let BodyLength::Length(n) = head.body {
                            // Room for the declared body at once (no regrowth copies), but only
                            // up to 64 KiB on the device's word alone: a head claiming 1 MiB
                            // must not reserve 1 MiB before any of it arrives.
                            let n = usize::try_from(n).unwrap_or(0).min(64 * 1024);
                            self.buf.reserve(n);
                        }
                    }
                    (
                        *body_deadline.get_or_insert_with(|| reactor::now() + limits.body_timeout),
                        false,
                    )
                }
                None => match head_deadline {
                    Some(d) => (d, false),
                    None => (reactor::now() + limits.idle_timeout, true),
                },
            };
            let received = reactor::timeout_at(deadline, self.stream.recv_append(&mut self.buf));
            let received = if idle {
                // Between requests: also close at once when the shard starts draining (the
                // recv is cancel-safe; nothing of a request has arrived).
                match select2(received, self.state.drain.wait()).await {
                    Either::Left(r) => r,
                    Either::Right(()) => return ReadOutcome::Closed,
                }
            } else {
                received.await
            };
            match received {
                Ok(Ok(0)) | Ok(Err(_)) => return ReadOutcome::Closed,
                Ok(Ok(n)) => {
                    self.state.metrics.borrow_mut().device_bytes_in += n as u64;
                    self.usage.up_bytes += n as u64;
                    if head_deadline.is_none() {
                        head_deadline = Some(reactor::now() + limits.header_timeout);
                    }
                }
                Err(_elapsed) if idle => return ReadOutcome::Closed,
                Err(_elapsed) => {
                    return ReadOutcome::Reject {
                        status: 408,
                        reason: if decoder.head().is_some() {
                            "request body not received in time".into()
                        } else {
                            "request head not received in time".into()
                        },
                        kind: ErrorKind::DeviceTimeout,
                    }
                }
            }
        }
    }

    /// Send to the device, failing if it makes no progress within `send_timeout`.
    async fn send_device(&mut self, mut parts: Vec<Bytes>) -> std::io::Result<()> {
        let timeout = self.send_timeout;
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let stream = &mut self.stream;
        let send = async move {
            if parts.len() == 1 {
                let one = parts.pop().unwrap_or_default();
                stream.send_all(one).await
            } else {
                stream.send_all_vectored(parts).await
            }
        };
        let result = match reactor::timeout(timeout, send).await {
            Ok(result) => result,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        };
        if result.is_ok() {
            self.usage.down_bytes += len;
        }
        result
    }

    /// 503 with `Retry-After`: the destination's cloud token is not available yet.
    async fn send_retry_later(&mut self, keep_alive: bool) -> std::io::Result<()> {
        let mut out = BytesMut::with_capacity(200);
        http1::write_answer(
            &mut out,
            503,
            Some("text/plain; charset=utf-8"),
            b"cloud credential not available yet, retry later\n",
            &[("Retry-After", CREDENTIAL_RETRY_AFTER_S)],
            keep_alive,
        );
        let len = out.len() as u64;
        self.send_device(vec![out.freeze()]).await?;
        self.usage.down_msgs += 1;
        let mut m = self.state.metrics.borrow_mut();
        m.device_bytes_out += len;
        m.response(503);
        Ok(())
    }

    async fn send_error(
        &mut self,
        status: u16,
        reason: &str,
        keep_alive: bool,
    ) -> std::io::Result<()> {
        let mut out = BytesMut::with_capacity(160 + reason.len());
        http1::write_error_response(&mut out, status, reason, keep_alive);
        let len = out.len() as u64;
        self.send_device(vec![out.freeze()]).await?;
        self.usage.down_msgs += 1;
        let mut m = self.state.metrics.borrow_mut();
        m.device_bytes_out += len;
        m.response(status);
        Ok(())
    }

    /// Send `request` to `dest` and relay the response. Errors returned here happened before
    /// any response byte reached the device, so the caller can still answer with a status.
    async fn forward(
        &mut self,
        plan: &Plan,
        generation: u64,
        dest_id: DestinationId,
        request: &Request,
        keep_device: bool,
        received_at: Instant,
    ) -> Result<Relayed, ForwardError> {
        let dest = plan.destination(dest_id);
        if dest.adapter.kind() != crate::policy::AdapterKind::GenericHttps
            && dest.adapter.kind().is_http()
        {
            return self
                .forward_cloud(plan, generation, dest, request, keep_device, received_at)
                .await;
        }
        // Config only routes HTTP listeners to HTTPS destinations; kept as an answer, not a panic.
        let Some(https) = dest.https() else {
            return Err(ForwardError {
                status: 404,
                reason: format!("destination {} is not an HTTPS destination", dest.name),
                kind: ErrorKind::NoRoute,
            });
        };
        let mut head = BytesMut::with_capacity(512);
        // The SIM's identity, as the device's group attaches it; `self.identity` was resolved
        // under `plan` by the caller just before.
        let group = self
            .identity
            .filter(|i| i.is_current(generation))
            .and_then(|i| plan.groups.get(usize::from(i.group().0)).map(|g| (i, g)));
        let (attached, fields) = match group.and_then(|(i, g)| Some((i.sim(plan)?, g))) {
            Some((sim, g)) => (g.attach.headers(&sim), g.attach.user_properties(&sim)),
            None => (Vec::new(), Vec::new()),
        };
        let mut extra: Vec<(&str, &[u8])> = attached
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect();
        // A `basic`/`bearer` credential: its Authorization replaces the device's own.
        if let Some(authorization) = &https.authorization {
            extra.push(("Authorization", &authorization.0));
        }
        // `envelope = "json"`: a request with a body gets it wrapped (de-chunked, trailers
        // dropped) and sent whole with `Content-Length`; a request without one goes as it is.
        // The base path, rendered for the device's SIM if it names one (the config made sure
        // only devices with a SIM reach such a destination).
        let base_path: std::borrow::Cow<'_, str> = match https.base_path.fixed_text() {
            Some(text) => text.into(),
            None => {
                let sim = self
                    .identity
                    .filter(|i| i.is_current(generation))
                    .and_then(|i| i.sim(plan));
                let vars = crate::policy::TemplateVars {
                    client_id: b"",
                    topic: b"",
                    ip: self.peer.ip(),
                    shard: self.state.id.0,
                    conn: 0,
                    sim,
                };
                let mut out = String::new();
                https.base_path.render_path_into(&vars, &mut out);
                out.into()
            }
        };
        let enveloped = (dest.envelope == Envelope::Json
            && request.head.body != http1::BodyLength::None)
            .then(|| envelope::wrap(&fields, envelope::now_ms(), &device_body(request)));
        let dropped = match &enveloped {
            Some(body) => http1::write_upstream_request_head_replacing_body(
                &mut head,
                &request.head,
                &https.host_header,
                &base_path,
                self.peer.ip(),
                &extra,
                http1::ReplacedBody {
                    content_type: "application/json",
                    length: body.len() as u64,
                },
            ),
            None => http1::write_upstream_request_head(
                &mut head,
                &request.head,
                &https.host_header,
                &base_path,
                self.peer.ip(),
                &extra,
            ),
        };
        if dropped > 0 {
            self.state
                .metrics
                .borrow_mut()
                .http_identity_headers_dropped += dropped as u64;
        }
        if let Some(signer) = group.and_then(|(_, g)| g.signer.as_deref()) {
            // Over the body as sent: the envelope when there is one.
            match &enveloped {
                Some(body) => sign_request_head(&mut head, signer, &fields, body),
                None => sign_request_head(&mut head, signer, &fields, &device_body(request)),
            }
        }
        let head = head.freeze();
        // The head, then the body: the envelope, or the device's verbatim, minus trailer fields
        // that must not be forwarded.
        let mut parts: Vec<&[u8]> = Vec::with_capacity(4);
        parts.push(&head);
        let dropped = match &enveloped {
            Some(body) => {
                parts.push(body);
                0
            }
            None => request.forward_body(&[], &mut parts),
        };
        if dropped > 0 {
            self.state.metrics.borrow_mut().http_trailer_fields_dropped += dropped as u64;
            tracing::debug!(peer = %self.peer, dropped, "trailer fields dropped");
        }
        let is_head_request = request.head.method.as_ref() == b"HEAD";
        let idempotent = matches!(
            request.head.method.as_ref(),
            b"GET" | b"HEAD" | b"PUT" | b"DELETE" | b"OPTIONS" | b"TRACE"
        );
        self.exchange(
            generation,
            dest,
            &parts,
            Exchange {
                is_head_request,
                idempotent,
                device_minor_version: request.head.minor_version,
                keep_device,
                received_at,
            },
        )
        .await
    }

    /// Forward `request` through a cloud adapter: the adapter maps it (with the SIM's identity
    /// and the destination's token) to the cloud's request; the cloud's answer is relayed. A
    /// batching destination hands it to the shard's batcher instead.
    async fn forward_cloud(
        &mut self,
        plan: &Plan,
        generation: u64,
        dest: &crate::policy::DestinationPlan,
        request: &Request,
        keep_device: bool,
        received_at: Instant,
    ) -> Result<Relayed, ForwardError> {
        if !matches!(request.head.method.as_ref(), b"POST" | b"PUT") {
            // A cloud call carries a message: there is nothing to GET or DELETE.
            self.state
                .metrics
                .borrow_mut()
                .error(Protocol::Http, ErrorKind::AdapterRejected);
            let mut out = BytesMut::new();
            http1::write_answer(
                &mut out,
                405,
                Some("text/plain; charset=utf-8"),
                b"cloud destinations take POST or PUT\n",
                &[("Allow", "POST, PUT")],
                keep_device,
            );
            if self.send_device(vec![out.freeze()]).await.is_err() {
                return Ok(Relayed::Aborted);
            }
            return Ok(Relayed::Done {
                keep_device,
                status: 405,
            });
        }
        let identity = self.identity.filter(|i| i.is_current(generation));
        let sim = identity.and_then(|i| i.sim(plan));
        let group = identity.and_then(|i| plan.groups.get(usize::from(i.group().0)));
        let fields = match (sim, group) {
            (Some(sim), Some(g)) => g.attach.user_properties(&sim),
            _ => Vec::new(),
        };
        let body = device_body(request);
        let body = if dest.envelope == Envelope::Json {
            std::borrow::Cow::Owned(envelope::wrap(&fields, envelope::now_ms(), &body).to_vec())
        } else {
            body
        };
        let path = request.head.path();
        let path = path.split(|&b| b == b'?').next().unwrap_or_default();
        let path = std::str::from_utf8(path.strip_prefix(b"/").unwrap_or(path)).unwrap_or("");
        let content_type = request
            .head
            .headers
            .iter()
            .find(|h| h.is("content-type"))
            .and_then(|h| std::str::from_utf8(&h.value).ok())
            .filter(|v| crate::proto::http1::is_valid_header_value(v.as_bytes()));
        let msg = crate::adapters::DeviceMessage {
            path,
            content_type,
            body: &body,
        };
        let token = self.state.token(dest.id);
        let ctx = crate::adapters::Context {
            sim,
            fields: &fields,
            ip: self.peer.ip(),
            shard: self.state.id.0,
            host: &dest.host_header,
            token: token.as_ref(),
            now: std::time::SystemTime::now(),
        };
        if dest.adapter.batch().is_some() {
            let item = match crate::adapters::batch_item(&dest.adapter, &msg, &ctx) {
                Some(Ok(item)) => item,
                Some(Err(e)) => return Err(adapter_error(&dest.name, &e)),
                None => Vec::new(),
            };
            let (answer, cloud_time) = self
                .state
                .batcher
                .submit(&self.state, generation, dest, item)
                .await
                .map_err(|e| ForwardError {
                    status: e.status,
                    reason: format!("destination {}: {}", dest.name, e.reason),
                    kind: e.kind,
                })?;
            self.state
                .count_destination(dest, |d| d.message(Protocol::Http, Direction::Uplink, 1));
            return Ok(self
                .send_batch_answer(dest, answer, cloud_time, keep_device, received_at)
                .await);
        }
        let cloud = match crate::adapters::request(&dest.adapter, &msg, &ctx) {
            Some(Ok(cloud)) => cloud,
            Some(Err(e)) => return Err(adapter_error(&dest.name, &e)),
            None => {
                return Err(ForwardError {
                    status: 404,
                    reason: format!("destination {} is not an HTTP destination", dest.name),
                    kind: ErrorKind::NoRoute,
                })
            }
        };
        let mut head = BytesMut::new();
        cloud.write_head(&dest.host_header, &mut head);
        let parts: [&[u8]; 2] = [&head, &cloud.body];
        self.exchange(
            generation,
            dest,
            &parts,
            Exchange {
                is_head_request: false,
                // Cloud calls are POSTs: sent twice only when the first write failed.
                idempotent: false,
                device_minor_version: request.head.minor_version,
                keep_device,
                received_at,
            },
        )
        .await
    }

    /// Send a batched message's answer to its device.
    async fn send_batch_answer(
        &mut self,
        dest: &crate::policy::DestinationPlan,
        answer: crate::adapters::ItemAnswer,
        cloud_time: std::time::Duration,
        keep_device: bool,
        received_at: Instant,
    ) -> Relayed {
        let keep_device = keep_device && !self.state.draining();
        let retry_after = answer.retry_after.map(|s| s.to_string());
        let extra: Vec<(&str, &str)> = retry_after
            .iter()
            .map(|v| ("Retry-After", v.as_str()))
            .collect();
        let mut out = BytesMut::new();
        http1::write_answer(
            &mut out,
            answer.status,
            answer.content_type,
            &answer.body,
            &extra,
            keep_device,
        );
        let len = out.len() as u64;
        if self.send_device(vec![out.freeze()]).await.is_err() {
            return Relayed::Aborted;
        }
        // Added by simgate: everything but the cloud's answer time (the batch's linger is
        // simgate's, and counted).
        let total = received_at.elapsed();
        {
            let mut m = self.state.metrics.borrow_mut();
            m.device_bytes_out += len;
            m.record_latency(
                total.as_micros() as u64,
                total.saturating_sub(cloud_time).as_micros() as u64,
            );
        }
        // The batch's round trip, shared by the messages it carried.
        self.record_exchange(dest, total, cloud_time);
        self.state
            .count_destination(dest, |d| d.message(Protocol::Http, Direction::Downlink, 1));
        Relayed::Done {
            keep_device,
            status: answer.status,
        }
    }

    /// Send `parts` (a whole request) to `dest` on a pooled connection and relay the response,
    /// retrying once on a fresh connection where that is safe (see the module doc).
    async fn exchange(
        &mut self,
        generation: u64,
        dest: &crate::policy::DestinationPlan,
        parts: &[&[u8]],
        x: Exchange,
    ) -> Result<Relayed, ForwardError> {
        let Exchange {
            is_head_request,
            idempotent,
            device_minor_version,
            keep_device,
            received_at,
        } = x;
        let mut retried = false;
        let mut refusals = 0u8;
        // An HTTP/1.1 retry takes a fresh connection, never another pooled one; an HTTP/2 retry
        // takes another stream from the pool, which no longer offers the refusing connection.
        let mut fresh = false;
        // Counted as forwarded once, however many times it is written.
        let mut forwarded = false;
        loop {
            let conn = if fresh {
                self.state
                    .upstreams
                    .connect_new_http(generation, dest)
                    .await
            } else {
                self.state.upstreams.checkout_http(generation, dest).await
            };
            let mut conn = match conn.map_err(|e| upstream_error(&dest.name, &e))? {
                HttpConn::Http1(conn) => conn,
                HttpConn::Http2(handle) => {
                    if handle.reused {
                        self.state.metrics.borrow_mut().upstream_reused += 1;
                    }
                    match Box::pin(self.exchange_h2(handle, dest, parts, x)).await {
                        H2Outcome::Done(result) => return result,
                        H2Outcome::Refused(_) if refusals < H2_REFUSED_RETRIES => {
                            refusals += 1;
                        }
                        H2Outcome::Broken(_) if idempotent && !retried => {
                            retried = true;
                        }
                        H2Outcome::Refused(e) | H2Outcome::Broken(e) => return Err(e),
                    }
                    self.state.metrics.borrow_mut().upstream_retries += 1;
                    continue;
                }
            };
            if conn.reused {
                self.state.metrics.borrow_mut().upstream_reused += 1;
            }
            // `response_timeout` covers sending the request and receiving the response head:
            // an upstream that stops reading is as slow as one that stops answering.
            let started = Instant::now();
            let deadline = started + dest.pool.response_timeout;
            let write = reactor::timeout_at(deadline, conn.stream.write_all(parts)).await;
            let sent_at = Instant::now();
            let mut head_bytes = 0u64;
            if let Ok(Ok(())) = write {
                let len: usize = parts.iter().map(|p| p.len()).sum();
                let first = !std::mem::replace(&mut forwarded, true);
                self.state.count_destination(dest, |d| {
                    d.bytes_sent += len as u64;
                    if first {
                        d.message(Protocol::Http, Direction::Uplink, 1);
                    }
                });
            }
            let (write_failed, response) = match write {
                Ok(Ok(())) => (
                    false,
                    read_response_head(&mut conn, is_head_request, deadline, &mut head_bytes).await,
                ),
                Ok(Err(_)) => (true, Err(ResponseError::Closed)),
                Err(_) => (true, Err(ResponseError::Timeout)),
            };
            if head_bytes > 0 {
                self.state
                    .count_destination(dest, |d| d.bytes_received += head_bytes);
            }
            match response {
                Ok(response_head) => {
                    let head_at = Instant::now();
                    self.count_cloud_response(dest, response_head.status);
                    let outcome = self
                        .relay(
                            conn,
                            response_head,
                            is_head_request,
                            device_minor_version,
                            keep_device,
                            dest,
                        )
                        .await;
                    if let Relayed::Done { .. } = outcome {
                        self.state.count_destination(dest, |d| {
                            d.message(Protocol::Http, Direction::Downlink, 1)
                        });
                        let done = Instant::now();
                        let total = done.saturating_duration_since(received_at);
                        let upstream = head_at.saturating_duration_since(sent_at);
                        self.state.metrics.borrow_mut().record_latency(
                            total.as_micros() as u64,
                            total.saturating_sub(upstream).as_micros() as u64,
                        );
                        self.record_exchange(dest, total, upstream);
                    }
                    return Ok(outcome);
                }
                Err(ResponseError::Closed)
                    if conn.reused && !retried && (write_failed || idempotent) =>
                {
                    retried = true;
                    fresh = true;
                    self.state.metrics.borrow_mut().upstream_retries += 1;
                    continue;
                }
                Err(e) => return Err(e.into_forward_error(&dest.name)),
            }
        }
    }

    /// [`Self::exchange`] as one stream on a shared HTTP/2 connection: send, wait for the head
    /// (within `response_timeout`), relay. A stream the server refused unprocessed, or one
    /// that broke before any response, is handed back for the caller's retry rule.
    async fn exchange_h2(
        &mut self,
        handle: H2Handle,
        dest: &crate::policy::DestinationPlan,
        parts: &[&[u8]],
        x: Exchange,
    ) -> H2Outcome {
        let started = Instant::now();
        let deadline = started + dest.pool.response_timeout;
        let (request, body) = match http2_exchange::request_from_http1(parts) {
            Ok(mapped) => mapped,
            Err(e) => {
                return H2Outcome::Done(Err(h2_forward_error(&dest.name, e)));
            }
        };
        // HTTP/2 bytes counted per destination: DATA payloads (the bodies) each way; HEADERS
        // are HPACK-compressed against the connection's table, so not attributable per request.
        let body_bytes: u64 = body.iter().map(|b| b.len() as u64).sum();
        let (response, sent_at) =
            match http2_exchange::round_trip(&handle, request, body, deadline).await {
                Ok(answer) => answer,
                Err(e @ H2Failure::Refused(_)) => {
                    return H2Outcome::Refused(h2_forward_error(&dest.name, e))
                }
                Err(e @ H2Failure::Broken(_)) => {
                    return H2Outcome::Broken(h2_forward_error(&dest.name, e))
                }
                Err(e) => return H2Outcome::Done(Err(h2_forward_error(&dest.name, e))),
            };
        self.state.count_destination(dest, |d| {
            d.message(Protocol::Http, Direction::Uplink, 1);
            d.bytes_sent += body_bytes;
        });
        let head_at = Instant::now();
        if let Some(since) = handle.waiting_since {
            // It queued for a stream slot: the pool wait ends as its stream opens.
            self.state.record_latency(
                dest,
                Latency::PoolWait,
                Protocol::Http,
                sent_at.saturating_duration_since(since),
            );
        }
        let (head, body) = response.into_parts();
        let response_head =
            http2_exchange::response_head(&head, body.is_end_stream(), x.is_head_request);
        self.count_cloud_response(dest, response_head.status);
        let outcome = self.relay_h2(response_head, body, x, dest).await;
        // The stream is done: the connection takes the next request.
        drop(handle);
        if let Relayed::Done { .. } = outcome {
            self.state
                .count_destination(dest, |d| d.message(Protocol::Http, Direction::Downlink, 1));
            let total = Instant::now().saturating_duration_since(x.received_at);
            let upstream = head_at.saturating_duration_since(sent_at);
            self.state.metrics.borrow_mut().record_latency(
                total.as_micros() as u64,
                total.saturating_sub(upstream).as_micros() as u64,
            );
            self.record_exchange(dest, total, upstream);
        }
        H2Outcome::Done(Ok(outcome))
    }

    /// Record a relayed exchange with `dest` in its latency histograms: `total` from the
    /// request fully received to the response fully sent, `upstream` from the request
    /// written upstream to the response head received, and their difference (what simgate
    /// added).
    fn record_exchange(
        &self,
        dest: &crate::policy::DestinationPlan,
        total: std::time::Duration,
        upstream: std::time::Duration,
    ) {
        self.state
            .record_latency(dest, Latency::RequestDuration, Protocol::Http, total);
        self.state
            .record_latency(dest, Latency::UpstreamRtt, Protocol::Http, upstream);
        self.state.record_latency(
            dest,
            Latency::GatewayAdded,
            Protocol::Http,
            total.saturating_sub(upstream),
        );
    }

    /// The device's identity under the plan the shard serves now, looked up from its source
    /// address (for a connection that has not identified its device yet).
    fn look_up_identity(&self) -> Option<DeviceIdentity> {
        let (plan, generation) = self.state.current();
        DeviceIdentity::resolve(
            &self.state.bindings,
            &plan,
            generation,
            self.listener,
            self.peer.ip(),
        )
    }

    /// Count a cloud adapter's answer status (not for generic `https`).
    fn count_cloud_response(&self, dest: &crate::policy::DestinationPlan, status: u16) {
        let adapter = dest.adapter.kind();
        if adapter != crate::policy::AdapterKind::GenericHttps {
            self.state
                .metrics
                .borrow_mut()
                .cloud_response(adapter.index(), status);
        }
    }

    /// Relay an HTTP/2 response (head mapped to HTTP/1.1) to the device: the body as it
    /// arrives in DATA frames, chunk-framed when the server sent no length (raw and delimited
    /// by closing for an HTTP/1.0 device). Trailers are not relayed.
    async fn relay_h2(
        &mut self,
        head: ResponseHead,
        mut body: h2::RecvStream,
        x: Exchange,
        dest: &crate::policy::DestinationPlan,
    ) -> Relayed {
        let pool = &dest.pool;
        let chunked = head.body == BodyLength::Chunked;
        let device_chunked = chunked && x.device_minor_version >= 1;
        let keep_device =
            x.keep_device && !(chunked && x.device_minor_version == 0) && !self.state.draining();
        let status = head.status;
        let mut out = BytesMut::with_capacity(256);
        http1::write_device_response_head(&mut out, &head, x.device_minor_version, keep_device);
        let mut pending_head = Some(out.freeze());
        let mut done = head.body == BodyLength::None || body.is_end_stream();
        loop {
            let mut parts = Vec::with_capacity(4);
            if let Some(h) = pending_head.take() {
                parts.push(h);
            }
            if done {
                if device_chunked {
                    parts.push(Bytes::from_static(b"0\r\n\r\n"));
                }
            } else {
                match reactor::timeout(pool.response_timeout, http2_exchange::next_chunk(&mut body))
                    .await
                {
                    Ok(Some(Ok(data))) => {
                        let len = data.len() as u64;
                        self.state
                            .count_destination(dest, |d| d.bytes_received += len);
                        if device_chunked && !data.is_empty() {
                            parts.push(Bytes::from(format!("{:x}\r\n", data.len())));
                            parts.push(data);
                            parts.push(Bytes::from_static(b"\r\n"));
                        } else if !data.is_empty() {
                            parts.push(data);
                        }
                    }
                    Ok(None) => {
                        done = true;
                        if device_chunked {
                            parts.push(Bytes::from_static(b"0\r\n\r\n"));
                        }
                    }
                    Ok(Some(Err(_))) | Err(_) => {
                        // A head still in `parts` never reached the device: it gets a 502.
                        let head_unsent = !parts.is_empty();
                        return self
                            .abort_relay(dest, head_unsent, "upstream HTTP/2 stream broke off")
                            .await;
                    }
                }
            }
            if !parts.is_empty() {
                let len: usize = parts.iter().map(Bytes::len).sum();
                if self.send_device(parts).await.is_err() {
                    return Relayed::Aborted;
                }
                self.state.metrics.borrow_mut().device_bytes_out += len as u64;
            }
            if done {
                return Relayed::Done {
                    keep_device,
                    status,
                };
            }
        }
    }

    /// Stream the response (head already parsed) to the device.
    async fn relay(
        &mut self,
        mut conn: UpstreamConn,
        head: ResponseHead,
        is_head_request: bool,
        device_minor_version: u8,
        keep_device: bool,
        dest: &crate::policy::DestinationPlan,
    ) -> Relayed {
        let pool = &dest.pool;
        let until_close = matches!(head.body, BodyLength::UntilClose);
        // An HTTP/1.0 device cannot parse chunked framing: strip it and delimit by closing.
        let dechunk =
            device_minor_version == 0 && !is_head_request && head.body == BodyLength::Chunked;
        if dechunk && !only_chunked_coding(&head) {
            // e.g. `gzip, chunked`: removing the header would hand the device compressed bytes
            // as plain data, and an HTTP/1.0 device cannot be told otherwise.
            return self
                .abort_relay(
                    dest,
                    true,
                    "upstream used a transfer coding an HTTP/1.0 device cannot receive",
                )
                .await;
        }
        let mut dechunker = dechunk.then(http1::Dechunker::default);
        // A close-delimited response can only be delimited for the device by closing too.
        // Re-checked here, not only when the request arrived: a drain that started while the
        // upstream worked is announced with `Connection: close` on this response.
        let keep_device =
            keep_device && !until_close && dechunker.is_none() && !self.state.draining();
        let status = head.status;
        let mut out = BytesMut::with_capacity(256);
        http1::write_device_response_head(&mut out, &head, device_minor_version, keep_device);
        let mut pending_head = Some(out.freeze());
        let body_len = if is_head_request {
            BodyLength::None
        } else {
            head.body
        };
        let mut body = BodyDecoder::new(body_len);
        let upstream_reusable = head.keep_alive && !until_close;
        loop {
            let step = body.decode(conn.stream.plaintext());
            let (data, done) = match step {
                Ok(BodyChunk::Data(b)) => (b, false),
                Ok(BodyChunk::Done(b)) => (b, true),
                Ok(BodyChunk::Incomplete) => (Bytes::new(), false),
                Err(_) => {
                    return self
                        .abort_relay(dest, pending_head.is_some(), "upstream response broke off")
                        .await
                }
            };
            // Coalesce the head with the first body bytes; send the head alone only when the
            // body is not here yet, so the device is not kept waiting on a slow body.
            let mut parts = Vec::with_capacity(2);
            if let Some(h) = pending_head.take() {
                parts.push(h);
            }
            let received = data.len() as u64;
            match dechunker.as_mut() {
                Some(d) => d.feed(&data, &mut parts),
                None if !data.is_empty() => parts.push(data),
                None => {}
            }
            if !parts.is_empty() {
                let len: usize = parts.iter().map(Bytes::len).sum();
                if self.send_device(parts).await.is_err() {
                    return Relayed::Aborted;
                }
                self.state.metrics.borrow_mut().device_bytes_out += len as u64;
            }
            if received > 0 {
                self.state
                    .count_destination(dest, |d| d.bytes_received += received);
            }
            if done {
                if upstream_reusable && conn.stream.plaintext().is_empty() {
                    self.state.upstreams.check_in(conn);
                }
                return Relayed::Done {
                    keep_device,
                    status,
                };
            }
            match reactor::timeout(pool.response_timeout, conn.stream.fill()).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    // Clean EOF: fine for a close-delimited body, an abort otherwise.
                    if body.eof().is_ok() {
                        return Relayed::Done {
                            keep_device: false,
                            status,
                        };
                    }
                    return self
                        .abort_relay(dest, pending_head.is_some(), "upstream response broke off")
                        .await;
                }
                Ok(Err(_)) | Err(_) => {
                    return self
                        .abort_relay(dest, pending_head.is_some(), "upstream response broke off")
                        .await
                }
            }
        }
    }

    /// Log a gateway-generated error answer with its full detail (the device may see only a
    /// generic text): at info once per 10 s per shard with a count of the lines held back
    /// meanwhile (an outage fails every request), every one at debug.
    fn log_gateway_error(&self, status: u16, kind: ErrorKind, detail: &str, head_sent: bool) {
        if let Some(held_back) = self.state.gateway_error_log.allow(reactor::now()) {
            tracing::info!(
                peer = %self.peer,
                status,
                kind = kind.label(),
                detail,
                head_sent,
                similar_since_last_line = held_back,
                "request answered with a gateway error"
            );
        } else {
            tracing::debug!(
                peer = %self.peer,
                status,
                kind = kind.label(),
                detail,
                head_sent,
                "request answered with a gateway error"
            );
        }
    }

    /// The upstream of `dest` broke mid-body. If the response head has not reached the device
    /// yet it gets a 502; either way the device connection closes, because its response cannot
    /// be completed. Counted in the global and the destination's error families.
    async fn abort_relay(
        &mut self,
        dest: &crate::policy::DestinationPlan,
        head_unsent: bool,
        reason: &str,
    ) -> Relayed {
        self.state.metrics.borrow_mut().destination_error(
            usize::from(dest.id.0),
            &dest.name,
            Protocol::Http,
            ErrorKind::UpstreamClosed,
        );
        self.usage.errors += 1;
        self.log_gateway_error(502, ErrorKind::UpstreamClosed, reason, !head_unsent);
        if head_unsent {
            let reason = device_reason(self.error_detail, 502, reason);
            let _ = Box::pin(self.send_error(502, reason, false)).await;
        }
        Relayed::Aborted
    }
}

enum ResponseError {
    /// The upstream closed (or reset) before sending a single response byte.
    Closed,
    /// The upstream closed after part of a response head.
    Truncated,
    /// No response head within `response_timeout`.
    Timeout,
    /// The response head was invalid.
    Invalid(http1::HttpError),
    /// TLS failed mid-exchange.
    Tls(String),
}

impl ResponseError {
    fn into_forward_error(self, destination: &str) -> ForwardError {
        match self {
            ResponseError::Closed => ForwardError {
                status: 502,
                reason: format!("upstream {destination} closed the connection before responding"),
                kind: ErrorKind::UpstreamClosed,
            },
            ResponseError::Truncated => ForwardError {
                status: 502,
                reason: format!("upstream {destination} closed the connection mid-response"),
                kind: ErrorKind::UpstreamClosed,
            },
            ResponseError::Timeout => ForwardError {
                status: 504,
                reason: format!("upstream {destination} did not respond in time"),
                kind: ErrorKind::UpstreamTimeout,
            },
            ResponseError::Invalid(e) => ForwardError {
                status: 502,
                reason: format!("upstream {destination} sent an invalid response: {e}"),
                kind: ErrorKind::UpstreamProtocol,
            },
            ResponseError::Tls(e) => ForwardError {
                status: 502,
                reason: format!("upstream {destination} TLS error: {e}"),
                kind: ErrorKind::UpstreamTls,
            },
        }
    }
}

fn upstream_error(destination: &str, e: &UpstreamError) -> ForwardError {
    let kind = match e {
        UpstreamError::Connect(_) | UpstreamError::ConnectTimeout => ErrorKind::UpstreamConnect,
        UpstreamError::Tls(_) => ErrorKind::UpstreamTls,
        UpstreamError::BackingOff { .. } => ErrorKind::UpstreamBackoff,
        UpstreamError::LocalResources(_) => ErrorKind::LocalResources,
    };
    // Out of descriptors is simgate's own fault, not a bad gateway: 503, and the device may
    // retry later.
    let status = if e.is_local() { 503 } else { 502 };
    ForwardError {
        status,
        reason: format!("destination {destination}: {e}"),
        kind,
    }
}

/// `Retry-After` (seconds) of the 503 a device gets while its destination has no valid cloud
/// token: the control thread retries minting within a few seconds.
const CREDENTIAL_RETRY_AFTER_S: &str = "5";

/// A cloud adapter's refusal as the device's answer. A refusal of the device's own message
/// (400, 413) is told as it is (no destination detail in it); the others name the destination
/// for the log.
fn adapter_error(destination: &str, e: &crate::adapters::AdapterError) -> ForwardError {
    let kind = match e {
        crate::adapters::AdapterError::CredentialUnavailable => ErrorKind::CredentialUnavailable,
        _ => ErrorKind::AdapterRejected,
    };
    let reason = if e.status() < 500 {
        e.to_string()
    } else {
        format!("destination {destination}: {e}")
    };
    ForwardError {
        status: e.status(),
        reason,
        kind,
    }
}

/// The body text of a 502/504 that simgate generates for an upstream failure: `full` as is
/// with `error_detail = "full"`, else a fixed text that names no destination, address or TLS
/// detail.
fn device_reason(detail: ErrorDetail, status: u16, full: &str) -> &str {
    match detail {
        ErrorDetail::Full => full,
        ErrorDetail::Generic if status == 504 => "upstream did not respond in time",
        // simgate's own shortage (out of descriptors): the device should retry later.
        ErrorDetail::Generic if status == 503 => "gateway busy, retry later",
        ErrorDetail::Generic => "upstream unavailable",
    }
}

/// Add `X-Simgate-Timestamp` and `X-Simgate-Signature` to an upstream request `head` that
/// `write_upstream_request_head` just wrote (it ends with the blank line): HMAC over the
/// method and target as written, the time, the attached `fields` and the body as the upstream
/// will read it (de-chunked). See docs/signature.md.
/// The device's body content: de-chunked (extensions and trailers dropped) when it was sent
/// chunked, else the body as received.
fn device_body(request: &Request) -> std::borrow::Cow<'_, [u8]> {
    if request.head.body == http1::BodyLength::Chunked {
        let mut data = Vec::new();
        http1::Dechunker::default().feed(&request.body, &mut data);
        std::borrow::Cow::Owned(data.concat())
    } else {
        std::borrow::Cow::Borrowed(&request.body)
    }
}

fn sign_request_head(
    head: &mut BytesMut,
    signer: &Signer,
    fields: &[(String, String)],
    body: &[u8],
) {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    let line = &head[..line_end];
    let mut parts = line.splitn(3, |&b| b == b' ');
    let method = parts.next().unwrap_or_default().to_vec();
    let target = parts.next().unwrap_or_default().to_vec();
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let signature = signer.sign(&SignInput {
        method: &method,
        target: &target,
        timestamp,
        fields,
        body,
    });
    // Replace the blank line that ends the head by the two fields and a new blank line.
    head.truncate(head.len().saturating_sub(2));
    for (name, value) in signature.headers() {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
}

/// True if the response's Transfer-Encoding is exactly `chunked` (no other coding).
fn only_chunked_coding(head: &ResponseHead) -> bool {
    head.headers
        .iter()
        .filter(|h| h.is("transfer-encoding"))
        .all(|h| h.value.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// [`read_response_head`] for a batched cloud call: the head, or the device's status for the
/// failure (504 when `deadline` passed, else 502).
pub(super) async fn read_response_head_for_batch(
    conn: &mut UpstreamConn,
    deadline: Instant,
) -> Result<ResponseHead, u16> {
    read_response_head(conn, false, deadline, &mut 0)
        .await
        .map_err(|e| match e {
            ResponseError::Timeout => 504,
            _ => 502,
        })
}

/// Read until a final (non-1xx) response head is parsed or `deadline` passes; the bytes of the
/// heads parsed (interim 1xx ones included) are added to `head_bytes`.
async fn read_response_head(
    conn: &mut UpstreamConn,
    is_head_request: bool,
    deadline: Instant,
    head_bytes: &mut u64,
) -> Result<ResponseHead, ResponseError> {
    let limits = Limits {
        max_head_bytes: 64 * 1024,
        max_headers: 256,
        max_body_bytes: u64::MAX,
    };
    let mut received_any = false;
    loop {
        let buffered = conn.stream.plaintext().len();
        let decoded =
            http1::decode_response_head(conn.stream.plaintext(), &limits, is_head_request);
        *head_bytes += buffered.saturating_sub(conn.stream.plaintext().len()) as u64;
        match decoded {
            Ok(Parsed::Complete(head)) if (100..200).contains(&head.status) => {
                received_any = true;
                continue;
            }
            Ok(Parsed::Complete(head)) => return Ok(head),
            Ok(Parsed::Incomplete) => {}
            Err(e) => return Err(ResponseError::Invalid(e)),
        }
        match reactor::timeout_at(deadline, conn.stream.fill()).await {
            Ok(Ok(true)) => received_any = true,
            Ok(result) => {
                // The upstream went away. Without a single response byte that is the
                // keep-alive race (it closed an idle connection as we used it) — with or
                // without close_notify, as load balancers often skip it — and the caller may
                // retry; after some bytes it is a broken response.
                let closed_cleanly = matches!(
                    result,
                    Ok(false)
                        | Err(TlsIoError::Eof)
                        | Err(TlsIoError::Tls(TlsError::ClosedWithoutCloseNotify))
                        | Err(TlsIoError::Io { .. })
                );
                return Err(match result {
                    _ if closed_cleanly && !received_any => ResponseError::Closed,
                    _ if closed_cleanly => ResponseError::Truncated,
                    Err(TlsIoError::Tls(t)) => ResponseError::Tls(t.to_string()),
                    _ => ResponseError::Truncated,
                });
            }
            Err(_) => return Err(ResponseError::Timeout),
        }
    }
}
