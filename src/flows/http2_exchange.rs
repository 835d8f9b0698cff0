//! One HTTP request as a stream on a shared HTTP/2 upstream connection
//! ([`crate::upstream::http2`]): the HTTP/1.1 request the forward path built becomes an HTTP/2
//! request, and the HTTP/2 response becomes a [`ResponseHead`] plus body chunks the device
//! relay sends as HTTP/1.1.
//!
//! Request mapping (RFC 9113 §8.3.1, §8.2.2): the request line gives `:method` and `:path`, the
//! `Host` field the HTTP/1.1 path would send gives `:authority`, `:scheme` is `https`; the
//! connection-specific fields (`Connection`, `Keep-Alive`, `Proxy-Connection`,
//! `Transfer-Encoding`, `Upgrade`, `TE` other than `trailers`) and `Host` are dropped; names
//! are lowercased. A chunked body is sent de-chunked (its trailers are dropped); the body goes
//! out as DATA frames within the flow-control window `h2` grants.
//!
//! Failures are classified for the caller's retry rule: a request refused before the server
//! processed it (GOAWAY above its last stream id, `REFUSED_STREAM`, a connection that no longer
//! takes streams) may be sent again; anything else is a 502 (504 on timeout).

use std::future::poll_fn;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use http::{Method, Request, Response, Uri};

use crate::proto::http1::{self, BodyLength, Header, ResponseHead};
use crate::reactor;
use crate::upstream::http2::H2Handle;

/// Why a stream produced no response.
#[derive(Debug)]
pub(crate) enum H2Failure {
    /// The server never processed the request (GOAWAY above it, REFUSED_STREAM, connection
    /// closed to new streams): safe to send again on another connection.
    Refused(String),
    /// The stream or connection failed after the request went out.
    Broken(String),
    /// No response head before the deadline.
    Timeout,
    /// The request could not be mapped to HTTP/2 (simgate built an invalid head).
    Invalid(String),
}

/// Connection-specific fields HTTP/2 forbids (RFC 9113 §8.2.2), and `Host`, which becomes
/// `:authority`.
fn dropped_request_field(name: &[u8], value: &[u8]) -> bool {
    const DROPPED: [&str; 6] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "host",
    ];
    DROPPED
        .iter()
        .any(|d| name.eq_ignore_ascii_case(d.as_bytes()))
        || (name.eq_ignore_ascii_case(b"te")
            && !value.trim_ascii().eq_ignore_ascii_case(b"trailers"))
}

/// The HTTP/2 request for a whole HTTP/1.1 request in `parts` (head first, then the body as
/// it would go on the wire: chunked framing is removed here). Returns the request and its body
/// chunks (empty chunks left out).
pub(crate) fn request_from_http1(parts: &[&[u8]]) -> Result<(Request<()>, Vec<Bytes>), H2Failure> {
    let invalid = |why: &str| H2Failure::Invalid(why.to_string());
    let wire: Vec<u8> = parts.concat();
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(&wire) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(invalid("request head could not be parsed")),
    };
    let method = Method::from_bytes(parsed.method.unwrap_or("").as_bytes())
        .map_err(|_| invalid("bad method"))?;
    let path = parsed.path.unwrap_or("/");
    let mut chunked = false;
    let mut authority = None;
    let mut builder = Request::builder().method(method);
    for h in parsed.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            authority = Some(h.value);
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = h.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
        }
        if dropped_request_field(name, h.value) {
            continue;
        }
        let name = HeaderName::from_bytes(name).map_err(|_| invalid("bad header name"))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| invalid("bad header value"))?;
        builder = builder.header(name, value);
    }
    let authority = std::str::from_utf8(authority.ok_or_else(|| invalid("no Host field"))?)
        .map_err(|_| invalid("bad Host field"))?;
    let uri = Uri::builder()
        .scheme("https")
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| invalid("bad request target"))?;
    let request = builder
        .uri(uri)
        .version(http::Version::HTTP_2)
        .body(())
        .map_err(|_| invalid("bad request"))?;
    let body = Bytes::copy_from_slice(&wire[head_len..]);
    let mut chunks = Vec::new();
    if chunked {
        http1::Dechunker::default().feed(&body, &mut chunks);
    } else {
        chunks.push(body);
    }
    chunks.retain(|c| !c.is_empty());
    Ok((request, chunks))
}

/// Classify a stream or connection error of `h2`.
fn classify(e: &h2::Error, sent: bool) -> H2Failure {
    let refused = (e.is_go_away() && e.is_remote())
        || e.reason() == Some(h2::Reason::REFUSED_STREAM)
        || !sent;
    let text = e.to_string();
    if refused {
        H2Failure::Refused(text)
    } else {
        H2Failure::Broken(text)
    }
}

/// Send `request` with `body` on the connection of `handle` and wait for the response head,
/// all before `deadline` (the destination's `response_timeout`, which covers sending too).
/// Also answers when the request went out: for a handle that queued for a stream slot
/// ([`H2Handle::waiting_since`]), when its stream opened; otherwise when it was handed to
/// `h2`.
pub(crate) async fn round_trip(
    handle: &H2Handle,
    request: Request<()>,
    body: Vec<Bytes>,
    deadline: Instant,
) -> Result<(Response<h2::RecvStream>, Instant), H2Failure> {
    let exchange = async {
        let mut send = handle.send.clone();
        // `ready` fails when the connection takes no new streams (GOAWAY, closed): nothing of
        // this request was sent.
        send = match send.ready().await {
            Ok(send) => send,
            Err(e) => {
                handle.state.mark_dead();
                return Err(classify(&e, false));
            }
        };
        let (response, mut stream) = match send.send_request(request, body.is_empty()) {
            Ok(pair) => pair,
            Err(e) => {
                handle.state.mark_dead();
                return Err(classify(&e, false));
            }
        };
        if handle.waiting_since.is_some() {
            // Beyond the server's stream limit, h2 keeps the stream pending until a slot
            // frees; `ready` on the handle that sent it resolves when it opens. An error here
            // is the connection's, and the response below reports it.
            let _ = send.ready().await;
        }
        let sent_at = Instant::now();
        let mut body_error = None;
        let count = body.len();
        for (i, mut chunk) in body.into_iter().enumerate() {
            while !chunk.is_empty() {
                stream.reserve_capacity(chunk.len());
                let granted = match poll_fn(|cx| stream.poll_capacity(cx)).await {
                    Some(Ok(n)) if n > 0 => n,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        body_error = Some(e);
                        break;
                    }
                    None => break, // the stream closed: the response tells why
                };
                let piece = chunk.split_to(granted.min(chunk.len()));
                let last = chunk.is_empty() && i + 1 == count;
                if let Err(e) = stream.send_data(piece, last) {
                    body_error = Some(e);
                    break;
                }
            }
            if body_error.is_some() {
                break;
            }
        }
        // A server may answer (and reset the upload) before taking the whole body: its
        // response is still the answer.
        match response.await {
            Ok(response) => Ok((response, sent_at)),
            Err(e) => {
                if e.is_go_away() || e.is_io() {
                    handle.state.mark_dead();
                }
                Err(classify(body_error.as_ref().unwrap_or(&e), true))
            }
        }
    };
    match reactor::timeout_at(deadline, exchange).await {
        Ok(result) => result,
        Err(_) => Err(H2Failure::Timeout),
    }
}

/// The HTTP/1.1 view of an HTTP/2 response head, for the device relay: the body is delimited by
/// its `content-length` when the server sent one, else chunked toward the device (a
/// `Transfer-Encoding: chunked` field is added); none for HEAD, 1xx, 204 and 304.
pub(crate) fn response_head(
    response: &http::response::Parts,
    end_of_stream: bool,
    is_head_request: bool,
) -> ResponseHead {
    let status = response.status.as_u16();
    let mut headers: Vec<Header> = response
        .headers
        .iter()
        .map(|(name, value)| Header {
            name: Bytes::copy_from_slice(name.as_str().as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        })
        .collect();
    let content_length = response
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let no_body = is_head_request || (100..200).contains(&status) || status == 204 || status == 304;
    let body = if no_body {
        BodyLength::None
    } else if let Some(n) = content_length {
        BodyLength::Length(n)
    } else if end_of_stream {
        headers.push(Header {
            name: Bytes::from_static(b"content-length"),
            value: Bytes::from_static(b"0"),
        });
        BodyLength::Length(0)
    } else {
        headers.push(Header {
            name: Bytes::from_static(b"transfer-encoding"),
            value: Bytes::from_static(b"chunked"),
        });
        BodyLength::Chunked
    };
    ResponseHead {
        status,
        reason: Bytes::from_static(response.status.canonical_reason().unwrap_or("").as_bytes()),
        minor_version: 1,
        headers,
        body,
        keep_alive: true,
    }
}

/// The next body chunk of an HTTP/2 response (`None` at its end), its bytes handed back to the
/// connection's flow-control window at once (the relay sends them on before asking for more).
pub(crate) async fn next_chunk(body: &mut h2::RecvStream) -> Option<Result<Bytes, h2::Error>> {
    let chunk = body.data().await?;
    if let Ok(data) = &chunk {
        let _ = body.flow_control().release_capacity(data.len());
    }
    Some(chunk)
}

/// The whole body of an HTTP/2 response (at most `max` bytes), for batched cloud calls.
pub(crate) async fn read_body(
    body: &mut h2::RecvStream,
    max: usize,
    deadline: Instant,
) -> Option<Bytes> {
    let collect = async {
        let mut out = BytesMut::new();
        while let Some(chunk) = next_chunk(body).await {
            out.extend_from_slice(&chunk.ok()?);
            if out.len() > max {
                return None;
            }
        }
        Some(out.freeze())
    };
    reactor::timeout_at(deadline, collect).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_an_http1_request_to_http2() {
        let head = b"POST /v1/x?a=1 HTTP/1.1\r\nHost: sink.test:8443\r\nConnection: keep-alive\r\n\
                     Transfer-Encoding: chunked\r\nTE: gzip\r\nX-Sim: 1\r\n\r\n";
        let body = b"5\r\nhello\r\n3\r\n ok\r\n0\r\n\r\n";
        let (req, chunks) = request_from_http1(&[head, body]).unwrap();
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri().to_string(), "https://sink.test:8443/v1/x?a=1");
        assert_eq!(req.headers().len(), 1, "{:?}", req.headers());
        assert_eq!(req.headers()["x-sim"], "1");
        assert_eq!(chunks.concat(), b"hello ok");
    }

    #[test]
    fn te_trailers_is_kept_and_content_length_body_passes() {
        let head = b"PUT /p HTTP/1.1\r\nHost: h\r\nTE: trailers\r\nContent-Length: 3\r\n\r\n";
        let (req, chunks) = request_from_http1(&[head, b"abc"]).unwrap();
        assert_eq!(req.headers()["te"], "trailers");
        assert_eq!(req.headers()["content-length"], "3");
        assert_eq!(chunks.concat(), b"abc");
    }

    #[test]
    fn response_without_length_is_chunked_toward_the_device() {
        let (parts, ()) = Response::builder()
            .status(200)
            .header("x-a", "b")
            .body(())
            .unwrap()
            .into_parts();
        let head = response_head(&parts, false, false);
        assert_eq!(head.body, BodyLength::Chunked);
        assert!(head.headers.iter().any(|h| h.is("transfer-encoding")));
        let head = response_head(&parts, true, false);
        assert_eq!(head.body, BodyLength::Length(0));
        let head = response_head(&parts, false, true);
        assert_eq!(head.body, BodyLength::None);
    }
}
