//! The end-to-end probe's device on an HTTP listener (`[probe.e2e]` with `path`): a plain
//! HTTP/1.1 client (hyper) over TCP to simgate's own listener that sends each numbered
//! message as `POST <path>` with the JSON body `{"seq":N,"sent_ns":T,"from":"<client id>"}`.
//! simgate routes it like any device request (the listener's route for loopback's group) to
//! an HTTPS destination whose server echoes the request body in its response body; the answer
//! is matched here: a 2xx whose body is this message (same `from`, same `seq`) is received,
//! anything else (an error status, another body, another seq) is lost with `last_error`
//! saying why.
//!
//! One request at a time on one keep-alive connection (docs/decisions/
//! 0025-e2e-http-one-request-at-a-time.md): a message whose turn comes after its timeout is
//! not sent (it is already lost), and a request not answered within its timeout is lost and
//! its connection closed (HTTP/1.1 cannot abandon one request and keep the connection); the
//! next message opens a new one. A connection simgate closed while idle is reopened before
//! the next request, so an idle timeout shorter than the interval loses nothing. Only a
//! connection that cannot be opened, or a request that fails on it, ends this device (then
//! `connected` is false until the loop starts a new one at the next interval).
//!
//! What this does not do: number messages, time them out or decide the alarm (that is
//! [`super::driver::run_e2e`] and [`super::e2e`], shared with [`super::e2e_mqtt`]), send
//! requests concurrently or pipelined, retry, follow redirects, put the response body into
//! `last_error` (only its status and why it is not the echo), or read more than
//! [`MAX_ANSWER_BYTES`] of an answer.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};

use super::e2e::{echoed_seq, message};
use super::e2e_device::{unix_ns, DeviceTask};

/// Longest answer body read (a probe message is about 100 bytes).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// One keep-alive connection to the listener; its driver task ends with it.
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn connect(addr: SocketAddr) -> Result<Connection, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Connection { sender, driver })
}

/// One connection of the probe device: send what the loop hands over, one request at a time,
/// and match each answer, until an error or a request not answered in time (returned as
/// text).
pub(super) async fn device(mut task: DeviceTask, path: String) -> String {
    let addr = task.addr;
    let timeout = task.settings.timeout;
    let mut connection = match tokio::time::timeout(timeout, connect(addr)).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => return e,
        Err(_) => {
            return format!(
                "connect {addr}: not accepted within {} ms",
                timeout.as_millis()
            )
        }
    };
    task.connected();
    loop {
        let Some(numbered) = task.messages.recv().await else {
            return "probe stopped".into();
        };
        let deadline = numbered.at + timeout;
        if Instant::now() >= deadline {
            // Its turn came after its timeout: the loop counts it lost.
            continue;
        }
        let body = message(numbered.seq, unix_ns(), &task.client_id);
        let exchange = post(&mut connection, addr, &path, body);
        match tokio::time::timeout_at(deadline.into(), exchange).await {
            Err(_) => {
                let why = format!(
                    "POST {path} (seq {}) not answered within {} ms",
                    numbered.seq,
                    timeout.as_millis()
                );
                task.record(|b| b.lose(numbered.seq, why));
                // The request cannot be abandoned on its own: the next one opens a new
                // connection.
                connection = None;
            }
            Ok(Err(e)) => {
                task.record(|b| b.lose(numbered.seq, e.clone()));
                return e;
            }
            Ok(Ok((status, answer))) => {
                let seq = numbered.seq;
                match verdict(seq, &path, status, &answer, &task.client_id) {
                    Ok(()) => task.record(|b| b.receive(seq, Instant::now())),
                    Err(why) => task.record(|b| b.lose(seq, why)),
                }
            }
        }
    }
}

/// `POST path` with `body` on `connection` (reopened first if simgate closed it); the status
/// and the answer body.
async fn post(
    connection: &mut Option<Connection>,
    addr: SocketAddr,
    path: &str,
    body: String,
) -> Result<(u16, Bytes), String> {
    if connection.as_ref().is_none_or(|c| c.sender.is_closed()) {
        *connection = None;
        *connection = Some(connect(addr).await?);
    }
    let Some(c) = connection.as_mut() else {
        return Err("no connection".into());
    };
    let failed = |e: hyper::Error| format!("POST {path}: {e}");
    c.sender.ready().await.map_err(failed)?;
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("simgate-probe/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("POST {path}: {e}"))?;
    let response = c.sender.send_request(request).await.map_err(failed)?;
    let status = response.status().as_u16();
    let answer = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| format!("POST {path}: reading the answer: {e}"))?
        .to_bytes();
    Ok((status, answer))
}

/// Whether the answer to message `seq` is its echo; if not, why (without the body).
fn verdict(
    seq: u64,
    path: &str,
    status: u16,
    answer: &[u8],
    client_id: &str,
) -> Result<(), String> {
    if !(200..300).contains(&status) {
        return Err(format!(
            "POST {path} answered HTTP {status}, not the echo of seq {seq}"
        ));
    }
    match echoed_seq(answer, client_id) {
        Some(s) if s == seq => Ok(()),
        Some(s) => Err(format!(
            "POST {path} answered HTTP {status} echoing seq {s}, expected seq {seq}"
        )),
        None => Err(format!(
            "POST {path} answered HTTP {status} without the echo of seq {seq} (the route's \
             destination must answer with the request body)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_echo_of_the_same_message_counts() {
        let echo = message(3, 1, "p-e2e");
        assert_eq!(verdict(3, "/p", 200, echo.as_bytes(), "p-e2e"), Ok(()));
        let why = verdict(4, "/p", 200, echo.as_bytes(), "p-e2e").unwrap_err();
        assert!(why.contains("echoing seq 3, expected seq 4"), "{why}");
        let why = verdict(3, "/p", 502, echo.as_bytes(), "p-e2e").unwrap_err();
        assert!(why.contains("HTTP 502"), "{why}");
        let why = verdict(3, "/p", 200, b"{\"note\":\"xyzzy\"}", "p-e2e").unwrap_err();
        assert!(why.contains("without the echo of seq 3"), "{why}");
        assert!(!why.contains("xyzzy"), "the body is not quoted: {why}");
        let why = verdict(3, "/p", 200, echo.as_bytes(), "other-e2e").unwrap_err();
        assert!(why.contains("without the echo"), "{why}");
    }
}
