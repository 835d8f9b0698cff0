//! The RADIUS accounting listener (RFC 2866) on the control thread: the packet core (GGSN / PGW
//! / SMF) reports sessions, and simgate binds each session's address to its SIM, live
//! (`identity::LiveBindings`): Start and Interim-Update bind Framed-IP-Address to the session's
//! 3GPP-IMSI (moving it from whatever held it), Stop removes the binding. Every request that
//! verifies gets its Accounting-Response; a retransmission (same client, Identifier and
//! Request Authenticator) is answered again and applied once; a request that does not verify
//! (bad authenticator, malformed) is dropped and counted, never answered.
//!
//! The secret and `unknown_imsi` come from the plan in force (a reload applies to the next
//! datagram); the socket is bound once at start.
//!
//! Both of a session's addresses are bound: Framed-IP-Address, and Framed-IPv6-Prefix (every
//! address inside the prefix is the session's — the device picks its own there).
//!
//! Accounting-On and Accounting-Off from a client (a packet-core node restarting or stopping)
//! remove every binding that client reported: its sessions are gone, and an address they held
//! must not keep naming their SIMs.
//!
//! What this module does not do: decode or sign (`proto::radius`), or persist bindings across a
//! restart.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::identity::{BindingKey, BindingsWriter, Bound, Imsi, LiveBindings};
use crate::policy::{Plan, UnknownImsi};
use crate::proto::radius::{self, AcctStatusType, DuplicateDetector, Seen};

/// Largest RADIUS packet (RFC 2865 §3); one more byte tells an oversized datagram apart.
const MAX_DATAGRAM: usize = 4096;

/// What the listener did, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RadiusStats {
    /// Verified requests by Acct-Status-Type (`start`, `stop`, `interim_update`,
    /// `accounting_on`, `accounting_off`, `other`).
    pub requests: BTreeMap<&'static str, u64>,
    /// Datagrams dropped without an answer, by reason (`bad_authenticator`, `too_short`, …).
    pub dropped: BTreeMap<&'static str, u64>,
    /// Retransmissions answered and not applied again.
    pub duplicates: u64,
    /// Verified requests whose binding was not applied, by reason (`no_framed_ip`, `no_imsi`,
    /// `imsi_unusable`, `unknown_imsi_ignored`).
    pub not_bound: BTreeMap<&'static str, u64>,
    /// Addresses bound now.
    pub bindings: u64,
}

fn status_label(status: AcctStatusType) -> &'static str {
    match status {
        AcctStatusType::Start => "start",
        AcctStatusType::Stop => "stop",
        AcctStatusType::InterimUpdate => "interim_update",
        AcctStatusType::AccountingOn => "accounting_on",
        AcctStatusType::AccountingOff => "accounting_off",
        AcctStatusType::Other(_) => "other",
    }
}

/// Receive buffer asked for the accounting socket: a packet core's burst (or a moment the
/// control thread is not scheduled) must not overflow the kernel's default ~200 KB — at 10,000
/// requests/s a 30 ms stall did (docs/benchmarks.md). The kernel caps it at `net.core.rmem_max`.
const RECV_BUFFER: usize = 4 << 20;

/// The accounting socket on `addr`, with a large receive buffer, for the running tokio runtime.
///
/// # Errors
/// Creating or binding the socket.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if let Err(e) = socket.set_recv_buffer_size(RECV_BUFFER) {
        tracing::warn!(error = %e, "radius: could not enlarge the receive buffer");
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// Serve accounting on `socket` until the runtime stops, with the secret of the plan `plan_rx`
/// holds at each datagram, writing `bindings`.
pub async fn serve(
    socket: tokio::net::UdpSocket,
    plan_rx: tokio::sync::watch::Receiver<Arc<Plan>>,
    bindings: Arc<LiveBindings>,
    stats: Arc<Mutex<RadiusStats>>,
) {
    let mut writer = BindingsWriter::new(bindings.clone());
    let mut dedup = DuplicateDetector::new(Duration::from_secs(30), 65_536);
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                tracing::warn!(error = %e, "radius receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let plan = plan_rx.borrow().clone();
        let Some(settings) = plan.radius.as_ref() else {
            continue; // removed by a reload: nothing is answered any more
        };
        if n > MAX_DATAGRAM {
            *stats.lock().dropped.entry("too_long").or_default() += 1;
            continue;
        }
        let request = match radius::decode_accounting_request(&buf[..n], &settings.secret.0) {
            Ok(request) => request,
            Err(e) => {
                // Never answered (RFC 2866 §3: a request that does not verify is silently
                // discarded); the sender is logged at debug, the count is in /metrics.
                tracing::debug!(%from, reason = e.label(), "radius request dropped");
                *stats.lock().dropped.entry(e.label()).or_default() += 1;
                continue;
            }
        };
        let seen = dedup.observe(
            from,
            request.identifier,
            &request.authenticator,
            Instant::now(),
        );
        {
            let mut s = stats.lock();
            *s.requests
                .entry(status_label(request.status_type))
                .or_default() += 1;
            match seen {
                Seen::Duplicate => s.duplicates += 1,
                Seen::New => {
                    if let Err(reason) = apply(
                        &mut writer,
                        &request,
                        &plan,
                        settings.unknown_imsi,
                        from.ip(),
                    ) {
                        *s.not_bound.entry(reason).or_default() += 1;
                    }
                }
            }
            s.bindings = bindings.len() as u64;
        }
        let response = request.response(&settings.secret.0);
        if let Err(e) = socket.send_to(&response, from).await {
            tracing::debug!(%from, error = %e, "radius response not sent");
        }
    }
}

/// Apply one new, verified request to the bindings; `Err` says why nothing was bound.
fn apply(
    writer: &mut BindingsWriter,
    request: &radius::AccountingRequest<'_>,
    plan: &Plan,
    unknown_imsi: UnknownImsi,
    client: IpAddr,
) -> Result<(), &'static str> {
    let binds = match request.status_type {
        AcctStatusType::Start | AcctStatusType::InterimUpdate => true,
        AcctStatusType::Stop => false,
        AcctStatusType::AccountingOn | AcctStatusType::AccountingOff => {
            let forgotten = writer.forget_client(client);
            tracing::info!(%client, forgotten, "radius client (re)started or stopped accounting: its sessions' bindings removed");
            return Ok(());
        }
        AcctStatusType::Other(_) => return Ok(()),
    };
    // The session's addresses: its IPv4 address and/or IPv6 prefix.
    let mut keys = Vec::with_capacity(2);
    if let Some(v4) = request.framed_ip {
        keys.push(BindingKey::Addr(IpAddr::V4(v4)));
    }
    if let Some(prefix) = request.framed_ipv6_prefix {
        keys.push(BindingKey::v6_prefix(prefix.addr, prefix.len));
    }
    if keys.is_empty() {
        return Err("no_framed_ip");
    }
    let imsi = request
        .imsi
        .map(|i| Imsi::parse(i.as_str()).ok_or("imsi_unusable"))
        .transpose()?;
    if !binds {
        writer.unbind(&keys, imsi);
        return Ok(());
    }
    let imsi = imsi.ok_or("no_imsi")?;
    let known = plan.sims.by_imsi(imsi).is_some();
    if !known && unknown_imsi == UnknownImsi::Ignore {
        return Err("unknown_imsi_ignored");
    }
    writer.bind(
        &keys,
        Bound {
            imsi,
            default_if_unknown: !known,
        },
        client,
    );
    Ok(())
}
