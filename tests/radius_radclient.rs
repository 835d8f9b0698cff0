//! `proto::radius` against a real RADIUS client: FreeRADIUS's `radclient` (Debian
//! `freeradius-utils`, which scripts/test.sh installs) sends Accounting-Requests to a UDP socket
//! this test opens; the codec decodes and verifies them, and answers with its own
//! Accounting-Response, which radclient in turn verifies (it exits non-zero and prints "invalid
//! Response Authenticator" for a response whose Response Authenticator is wrong).
//!
//! Covered: the Request Authenticator of a real NAS-side implementation, the 3GPP
//! Vendor-Specific encoding of 3GPP-IMSI / 3GPP-IMEISV from FreeRADIUS's dictionary.3gpp,
//! Framed-IPv6-Prefix as radclient encodes it (RFC 3162), our Response Authenticator, a wrong
//! secret (refused, never answered), a response under the wrong secret (radclient refuses it),
//! and a real retransmission recognised by the duplicate detector.
//!
//! Nothing here waits on a clock: the socket's read timeout is only a guard so a broken
//! radclient fails the test instead of hanging it; radclient's own retry timer makes the
//! retransmission in the last test.

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use simgate::proto::radius::{
    decode_accounting_request, AcctStatusType, DuplicateDetector, RadiusError, Seen, MAX_PACKET_LEN,
};

const SECRET: &str = "testing123";
/// Only a guard against a hang; the tests never rely on timing.
const GUARD: Duration = Duration::from_secs(60);

fn radclient_path() -> &'static str {
    let found = Command::new("radclient")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "radclient is required for this test: apt-get install freeradius-utils \
         (scripts/test.sh does it)"
    );
    "radclient"
}

fn listener() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    socket.set_read_timeout(Some(GUARD)).expect("timeout");
    let addr = socket.local_addr().expect("local addr");
    (socket, addr)
}

/// Starts radclient sending `attributes` (radclient's `Name = value, ...` syntax) as one
/// Accounting-Request to `server` with `secret`; `timeout` and `retries` are radclient's.
fn radclient(
    server: SocketAddr,
    secret: &str,
    attributes: &str,
    timeout: &str,
    retries: &str,
) -> Child {
    let mut child = Command::new(radclient_path())
        .args(["-x", "-t", timeout, "-r", retries])
        .arg(server.to_string())
        .args(["acct", secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn radclient");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(attributes.as_bytes())
        .expect("write attributes");
    drop(stdin);
    child
}

fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; MAX_PACKET_LEN + 1];
    // A blocking recv can return EINTR (seen once in CI); that is not radclient's silence.
    let (n, peer) = loop {
        match socket.recv_from(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other.expect("no datagram from radclient"),
        }
    };
    buf.truncate(n);
    (buf, peer)
}

fn finish(child: Child) -> (bool, String) {
    let out = child.wait_with_output().expect("radclient output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn radclient_start_verifies_and_accepts_our_response() {
    let (socket, addr) = listener();
    let child = radclient(
        addr,
        SECRET,
        "Acct-Status-Type = Start, Framed-IP-Address = 10.45.0.7, \
         Framed-IPv6-Prefix = 2001:db8:1:2::/64, Calling-Station-Id = \"819012345678\", \
         Acct-Session-Id = \"5f3a-0001\", 3GPP-IMSI = \"440101234567890\", \
         3GPP-IMEISV = \"3534900812345601\"\n",
        "10",
        "1",
    );
    let (datagram, peer) = recv(&socket);
    let request = decode_accounting_request(&datagram, SECRET.as_bytes())
        .unwrap_or_else(|e| panic!("radclient's request refused: {e}"));
    assert_eq!(request.status_type, AcctStatusType::Start);
    assert_eq!(request.framed_ip, Some("10.45.0.7".parse().unwrap()));
    let prefix = request.framed_ipv6_prefix.expect("Framed-IPv6-Prefix");
    assert_eq!(
        (prefix.addr, prefix.len),
        ("2001:db8:1:2::".parse().unwrap(), 64)
    );
    assert_eq!(request.calling_station_id, Some(&b"819012345678"[..]));
    assert_eq!(request.session_id, Some(&b"5f3a-0001"[..]));
    assert_eq!(request.imsi.map(|i| i.as_str()), Some("440101234567890"));
    assert_eq!(
        request.imeisv.and_then(|i| i.digits()),
        Some("3534900812345601")
    );

    socket
        .send_to(&request.response(SECRET.as_bytes()), peer)
        .expect("send response");
    let (ok, output) = finish(child);
    assert!(
        ok && output.contains("Received Accounting-Response Id")
            && !output.contains("invalid Response Authenticator"),
        "radclient did not accept our Accounting-Response:\n{output}"
    );
}

#[test]
fn radclient_stop_and_interim() {
    for (status, expected) in [
        ("Stop", AcctStatusType::Stop),
        ("Interim-Update", AcctStatusType::InterimUpdate),
        ("Accounting-On", AcctStatusType::AccountingOn),
    ] {
        let (socket, addr) = listener();
        let child = radclient(
            addr,
            SECRET,
            &format!("Acct-Status-Type = {status}, 3GPP-IMSI = \"001010000000001\"\n"),
            "10",
            "1",
        );
        let (datagram, peer) = recv(&socket);
        let request = decode_accounting_request(&datagram, SECRET.as_bytes())
            .unwrap_or_else(|e| panic!("{status}: refused: {e}"));
        assert_eq!(request.status_type, expected);
        assert_eq!(request.imsi.map(|i| i.as_str()), Some("001010000000001"));
        socket
            .send_to(&request.response(SECRET.as_bytes()), peer)
            .expect("send");
        let (ok, output) = finish(child);
        assert!(ok, "{status}: radclient failed:\n{output}");
    }
}

#[test]
fn wrong_secrets_are_refused_both_ways() {
    // radclient signs with another secret: we refuse (and so never answer).
    let (socket, addr) = listener();
    let mut child = radclient(
        addr,
        "not-the-secret",
        "Acct-Status-Type = Start, Framed-IP-Address = 10.0.0.1\n",
        "10",
        "1",
    );
    let (datagram, _) = recv(&socket);
    assert_eq!(
        decode_accounting_request(&datagram, SECRET.as_bytes()).err(),
        Some(RadiusError::BadAuthenticator)
    );
    let _ = child.kill();
    let _ = child.wait();

    // We answer under another secret: radclient must not accept it (so its acceptance in the
    // test above is a real check of our Response Authenticator).
    let (socket, addr) = listener();
    let child = radclient(
        addr,
        SECRET,
        "Acct-Status-Type = Start, Framed-IP-Address = 10.0.0.1\n",
        "1",
        "1",
    );
    let (datagram, peer) = recv(&socket);
    let request = decode_accounting_request(&datagram, SECRET.as_bytes()).expect("decode");
    socket
        .send_to(&request.response(b"not-the-secret"), peer)
        .expect("send");
    let (ok, output) = finish(child);
    assert!(
        !ok && output.contains("invalid Response Authenticator"),
        "radclient accepted a response signed with the wrong secret:\n{output}"
    );
}

#[test]
fn radclient_retransmission_is_a_duplicate() {
    // We do not answer the first copy; radclient retransmits after its 1 s timer.
    let (socket, addr) = listener();
    let child = radclient(
        addr,
        SECRET,
        "Acct-Status-Type = Start, Framed-IP-Address = 10.0.0.9, \
         3GPP-IMSI = \"440101234567899\"\n",
        "1",
        "3",
    );
    // A fixed instant: the test is about the key, not the window.
    let now = Instant::now();
    let mut detector = DuplicateDetector::default();

    let (first, peer) = recv(&socket);
    let request = decode_accounting_request(&first, SECRET.as_bytes()).expect("first copy");
    assert_eq!(
        detector.observe(peer, request.identifier, &request.authenticator, now),
        Seen::New
    );

    let (second, peer2) = recv(&socket);
    let again = decode_accounting_request(&second, SECRET.as_bytes()).expect("second copy");
    assert_eq!(
        detector.observe(peer2, again.identifier, &again.authenticator, now),
        Seen::Duplicate,
        "radclient's retransmission was not recognised (first {first:02x?}, second {second:02x?})"
    );
    socket
        .send_to(&again.response(SECRET.as_bytes()), peer2)
        .expect("send");
    let (ok, output) = finish(child);
    assert!(ok, "radclient failed:\n{output}");
}
