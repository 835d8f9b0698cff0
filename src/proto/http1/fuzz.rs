//! The fuzzing entry point, shared by the cargo-fuzz target and the corpus-replay test.
//!
//! Beyond "never panic", it checks properties, and panics (so the fuzzer reports it) when one
//! fails: decoding split at arbitrary boundaries gives the same result as decoding all at once;
//! a rewritten upstream request (head plus `forward_body`) re-decodes to the same framing and
//! chunks with no forbidden trailer field left, with the path
//! that was routed on behind the base path (and still in normal form); response bodies
//! are delimited without losing or inventing bytes; a rewritten device response head keeps the
//! response's framing.

use std::net::{IpAddr, Ipv4Addr};

use bytes::BytesMut;

use super::{
    decode_response_head, write_device_response_head, write_upstream_request_head, BodyChunk,
    BodyDecoder, HttpError, Limits, Parsed, Request, RequestDecoder,
};

/// Small limits so the fuzzer reaches every limit with short inputs.
const FUZZ_LIMITS: Limits = Limits {
    max_head_bytes: 1024,
    max_headers: 16,
    max_body_bytes: 4096,
};

/// Limits loose enough that anything the gateway writes fits.
const LOOSE_LIMITS: Limits = Limits {
    max_head_bytes: 1 << 20,
    max_headers: 1024,
    max_body_bytes: u64::MAX,
};

/// Runs the request decoder over `data[1..]` fed in pieces whose size comes from `data[0]`, and
/// the response decoders over the same bytes; checks the properties listed in the module doc.
///
/// # Panics
/// Only when one of those properties fails, which is a codec bug.
pub fn fuzz_decode(data: &[u8]) {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(control % 64) + 1;
    let whole = decode_requests(input, input.len().max(1));
    let pieces = decode_requests(input, step);
    assert_eq!(
        whole, pieces,
        "decoding in pieces of {step} bytes differs from all at once"
    );
    for request in &whole.0 {
        check_upstream_rewrite(request);
    }
    check_response(input, step, control & 0x80 != 0);
}

/// Every request decoded, then how decoding stopped (`None`: incomplete input).
type Outcome = (Vec<Request>, Option<HttpError>);

fn decode_requests(input: &[u8], step: usize) -> Outcome {
    let mut decoder = RequestDecoder::new(FUZZ_LIMITS);
    let mut buf = BytesMut::new();
    let mut requests = Vec::new();
    for piece in input.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Parsed::Complete(request)) => requests.push(request),
                Ok(Parsed::Incomplete) => break,
                Err(error) => return (requests, Some(error)),
            }
        }
    }
    (requests, None)
}

fn check_upstream_rewrite(request: &Request) {
    let mut out = BytesMut::new();
    let client = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 17));
    write_upstream_request_head(
        &mut out,
        &request.head,
        "upstream.example:443",
        "/base",
        client,
        &[("X-Sim-Imsi", b"440103123456789")],
    );
    let mut parts = Vec::new();
    let dropped = request.forward_body(&["X-Sim-Imsi"], &mut parts);
    let forwarded_body = parts.concat();
    for part in parts {
        out.extend_from_slice(part);
    }
    let mut decoder = RequestDecoder::new(LOOSE_LIMITS);
    match decoder.decode(&mut out) {
        Ok(Parsed::Complete(again)) => {
            assert_eq!(
                again.head.body, request.head.body,
                "rewrite changed the framing"
            );
            assert_eq!(again.body, forwarded_body, "rewrite changed the body");
            // Only trailer fields were dropped, and every forbidden one was.
            let before = request.body.len() - request.trailer_section().len();
            assert_eq!(
                again.body[..again.body.len() - again.trailer_section().len()],
                request.body[..before],
                "trailer filtering touched the chunks"
            );
            let (kept, sent) = (
                again.trailer_section().len(),
                request.trailer_section().len(),
            );
            assert!(
                kept < sent || (kept == sent && dropped == 0),
                "trailer filtering added bytes or miscounted"
            );
            let mut again_parts = Vec::new();
            assert_eq!(
                again.forward_body(&["X-Sim-Imsi"], &mut again_parts),
                0,
                "a forbidden trailer field was forwarded"
            );
            // The path routed on is the path forwarded after the base path.
            let routed = request.head.path();
            let forwarded = again.head.path();
            if routed != b"*" {
                let suffix = forwarded.strip_prefix(b"/base");
                assert_eq!(
                    suffix,
                    Some(routed),
                    "forwarded path is not base + routed path"
                );
            }
            assert!(out.is_empty(), "rewrite left bytes after the request");
        }
        other => panic!("rewritten request does not decode: {other:?}"),
    }
}

fn check_response(input: &[u8], step: usize, is_head: bool) {
    let mut buf = BytesMut::from(input);
    let head = match decode_response_head(&mut buf, &FUZZ_LIMITS, is_head) {
        Ok(Parsed::Complete(head)) => head,
        Ok(Parsed::Incomplete) | Err(_) => return,
    };
    let mut rewritten = BytesMut::new();
    write_device_response_head(&mut rewritten, &head, 1, head.keep_alive);
    match decode_response_head(&mut rewritten, &LOOSE_LIMITS, is_head) {
        Ok(Parsed::Complete(again)) => {
            assert_eq!(
                again.body, head.body,
                "response rewrite changed the framing"
            );
        }
        other => panic!("rewritten response head does not decode: {other:?}"),
    }

    let rest = buf.split();
    let mut decoder = BodyDecoder::new(head.body);
    let mut forwarded = Vec::new();
    let mut pending = BytesMut::new();
    for piece in rest.chunks(step) {
        pending.extend_from_slice(piece);
        match decoder.decode(&mut pending) {
            Ok(BodyChunk::Data(bytes) | BodyChunk::Done(bytes)) => {
                forwarded.extend_from_slice(&bytes)
            }
            Ok(BodyChunk::Incomplete) => {}
            Err(_) => return,
        }
        if decoder.is_done() {
            break;
        }
    }
    let closed = decoder.eof();
    forwarded.extend_from_slice(&pending);
    assert!(
        rest.starts_with(&forwarded),
        "body bytes were altered or invented"
    );
    if closed.is_ok() {
        assert!(decoder.is_done(), "eof accepted but the body is not done");
    }
}

#[cfg(test)]
mod tests {
    use super::fuzz_decode;

    #[test]
    fn properties_hold_on_representative_inputs() {
        let inputs: [&[u8]; 7] = [
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: content-length, x-drop\r\nX-Drop: 1\r\n\r\n",
            b"POST /p HTTP/1.0\r\nContent-Length: 3\r\nX-Forwarded-For: 1.2.3.4\r\n\r\nabcGET",
            b"POST * HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nT: v\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\n\r\nuntil close",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nHost: b\r\nX-Ok: 1\r\nContent-Length: 1\r\nX-Sim-Imsi: 1\r\n\r\n",
            b"",
        ];
        for input in inputs {
            for control in [0u8, 1, 7, 63, 128, 255] {
                let mut data = vec![control];
                data.extend_from_slice(input);
                fuzz_decode(&data);
            }
        }
    }
}
