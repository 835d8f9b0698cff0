//! MQTT packets over a tokio stream for the control thread's probes: encode and write one
//! packet, read and decode the next one the server sends. Used by the internal probe's MQTT
//! exchange ([`super::driver`]) and the end-to-end probe's MQTT device ([`super::e2e_mqtt`]).
//!
//! What this module does not do: connect, time out (callers wrap it), or keep state.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::proto::mqtt::{self, DecodeLimits, Decoded, Packet, ProtocolVersion, Sender};

/// Encode `packet` for `version` and write it to `stream`.
pub async fn send<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    packet: &Packet,
    version: ProtocolVersion,
) -> Result<(), String> {
    let mut out = BytesMut::new();
    mqtt::encode(packet, version, &mut out).map_err(|e| format!("encode: {e:?}"))?;
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())
}

/// Read from `stream` into `buf` until one whole packet from the server decodes.
pub async fn read_packet<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    version: ProtocolVersion,
) -> Result<Packet, String> {
    let limits = DecodeLimits {
        max_packet_size: 64 * 1024,
    };
    loop {
        match mqtt::decode_packet(buf, version, Sender::Server, &limits) {
            Ok(Decoded::Complete(p)) => return Ok(p),
            Ok(Decoded::Incomplete { .. }) => {}
            Err(e) => return Err(format!("malformed answer: {e:?}")),
        }
        let n = stream.read_buf(buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed by the broker".into());
        }
    }
}
