//! `connect-time`: how long an MQTT device waits from its first TCP SYN to its CONNACK.
//!
//! Issue #3's promise for session mode is that a device connects through simgate (plaintext TCP,
//! then its CONNECT goes out on an upstream TLS connection simgate handshook in advance) in no
//! more time than a device connecting to the broker directly over TLS (TCP, TLS handshake, then
//! CONNECT). This measures both the same way: one device at a time, `count` connections, each
//! timed from `connect(2)` to the CONNACK's last byte, into an HDR histogram; then DISCONNECT
//! (and TLS close_notify) so the broker forgets the session.
//!
//! Devices connect one at a time, `interval` apart: with simgate's warm pool this models devices
//! arriving at a rate the pool keeps up with; `interval = 0` measures back-to-back connects
//! where the pool runs dry and simgate handshakes on demand (reported as a separate figure, not
//! hidden). Every connection uses a unique client id (`prefix` + index).
//!
//! What it does NOT do: run concurrent connects (see the `connect-storm` scenario for load), or
//! measure anything after the CONNACK.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

/// TLS towards the target (a device connecting to the broker directly).
#[derive(Debug, Clone)]
pub struct TlsTarget {
    /// CA certificate (PEM) the broker's certificate must chain to.
    pub ca: PathBuf,
    /// Server name sent as SNI and verified in the certificate.
    pub server_name: String,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct ConnectTimeOptions {
    /// MQTT listener (simgate's device listener, or the broker).
    pub target: SocketAddr,
    /// Connect with TLS (direct to a broker) instead of plaintext.
    pub tls: Option<TlsTarget>,
    /// Connections to time.
    pub count: usize,
    /// Pause between connections.
    pub interval: Duration,
    /// Client id prefix; the connection index is appended.
    pub client_id_prefix: String,
    /// Per-connection bound (connect to CONNACK).
    pub timeout: Duration,
}

/// Result, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectTimeReport {
    /// Connections that reached CONNACK (success).
    pub connected: u64,
    /// Connections that failed (refused, timed out, CONNACK with an error code).
    pub failed: u64,
    /// First failure, if any.
    pub first_error: Option<String>,
    /// Mean connect time.
    pub mean_us: f64,
    /// Percentiles of the connect time.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Slowest.
    pub max_us: u64,
}

/// Time `opts.count` connections one after another.
///
/// # Errors
/// Only setup errors (a CA file that cannot be read); per-connection failures are counted.
pub fn run(opts: &ConnectTimeOptions) -> Result<ConnectTimeReport> {
    let tls = match &opts.tls {
        Some(t) => Some((client_config(&t.ca)?, server_name(&t.server_name)?)),
        None => None,
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let (mut failed, mut first_error) = (0u64, None);
    for i in 0..opts.count {
        if i > 0 && !opts.interval.is_zero() {
            std::thread::sleep(opts.interval);
        }
        let client_id = format!("{}{i}", opts.client_id_prefix);
        match connect_once(opts, tls.as_ref(), &client_id) {
            Ok(took) => {
                hist.saturating_record(took.as_micros().max(1) as u64);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    Ok(ConnectTimeReport {
        connected: hist.len(),
        failed,
        first_error,
        mean_us: hist.mean(),
        p50_us: hist.value_at_quantile(0.5),
        p90_us: hist.value_at_quantile(0.9),
        p99_us: hist.value_at_quantile(0.99),
        max_us: hist.max(),
    })
}

fn client_config(ca: &PathBuf) -> Result<Arc<rustls::ClientConfig>> {
    let pem = std::fs::read(ca).with_context(|| format!("reading CA {}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.with_context(|| format!("parsing CA {}", ca.display()))?;
        roots.add(cert).context("adding CA certificate")?;
    }
    if roots.is_empty() {
        bail!("{}: no certificate found", ca.display());
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

fn server_name(name: &str) -> Result<rustls_pki_types::ServerName<'static>> {
    rustls_pki_types::ServerName::try_from(name.to_owned())
        .with_context(|| format!("invalid server name {name:?}"))
}

use rustls_pki_types::pem::PemObject;

/// An MQTT 3.1.1 CONNECT: clean session, keep-alive 60 s, no credentials.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let id = client_id.as_bytes();
    let mut body = Vec::with_capacity(12 + id.len());
    body.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60]);
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id);
    let mut out = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(&body);
    out
}

const DISCONNECT: [u8; 2] = [0xE0, 0x00];

fn connect_once(
    opts: &ConnectTimeOptions,
    tls: Option<&(
        Arc<rustls::ClientConfig>,
        rustls_pki_types::ServerName<'static>,
    )>,
    client_id: &str,
) -> Result<Duration> {
    let packet = connect_packet(client_id);
    let start = Instant::now();
    let tcp = TcpStream::connect_timeout(&opts.target, opts.timeout).context("TCP connect")?;
    tcp.set_nodelay(true).ok();
    tcp.set_read_timeout(Some(opts.timeout)).ok();
    tcp.set_write_timeout(Some(opts.timeout)).ok();
    match tls {
        None => {
            let mut s = tcp;
            s.write_all(&packet).context("sending CONNECT")?;
            read_connack(&mut s)?;
            let took = start.elapsed();
            let _ = s.write_all(&DISCONNECT);
            Ok(took)
        }
        Some((config, name)) => {
            let conn = rustls::ClientConnection::new(config.clone(), name.clone())
                .context("TLS client")?;
            let mut s = rustls::StreamOwned::new(conn, tcp);
            // The first write drives the handshake, then sends the CONNECT.
            s.write_all(&packet)
                .context("TLS handshake / sending CONNECT")?;
            s.flush().ok();
            read_connack(&mut s)?;
            let took = start.elapsed();
            let _ = s.write_all(&DISCONNECT);
            s.conn.send_close_notify();
            let _ = s.flush();
            Ok(took)
        }
    }
}

fn read_connack(s: &mut impl Read) -> Result<()> {
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).context("waiting for CONNACK")?;
    if connack[0] != 0x20 || connack[1] != 0x02 {
        bail!("expected CONNACK, got {:02x?}", connack);
    }
    if connack[3] != 0 {
        bail!("CONNACK refused the connection: return code {}", connack[3]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_packet_decodes_with_simgates_codec() {
        let bytes = connect_packet("dev-42");
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        let limits = simgate::proto::mqtt::DecodeLimits {
            max_packet_size: 1024,
        };
        match simgate::proto::mqtt::decode_connect(&mut buf, &limits) {
            Ok(simgate::proto::mqtt::Decoded::Complete(c)) => {
                assert_eq!(&c.client_id[..], b"dev-42");
                assert!(c.clean_start);
                assert_eq!(c.keep_alive, 60);
            }
            other => panic!("CONNECT did not decode: {other:?}"),
        }
    }

    #[test]
    fn refused_connack_is_an_error() {
        let mut ok: &[u8] = &[0x20, 0x02, 0x00, 0x00];
        assert!(read_connack(&mut ok).is_ok());
        let mut refused: &[u8] = &[0x20, 0x02, 0x00, 0x05];
        assert!(read_connack(&mut refused).is_err());
        let mut other: &[u8] = &[0x30, 0x02, 0x00, 0x00];
        assert!(read_connack(&mut other).is_err());
    }
}
