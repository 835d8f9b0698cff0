//! The end-to-end probe's device on an MQTT listener (`[probe.e2e]` with `topic`): a plain
//! MQTT 3.1.1 client over TCP to simgate's own listener, client id `probe.client_id` + `-e2e`,
//! subscribed (QoS 1) to the probe topic, publishing each numbered message (QoS 1) to it and
//! matching what comes back down the subscription through the upstream broker.
//!
//! What this does not do: number messages, time them out or decide the alarm (that is
//! [`super::driver::run_e2e`] and [`super::e2e`], shared with [`super::e2e_http`]), reconnect
//! (the loop starts a new device at the next interval), or resend a message (QoS 1 between
//! the device and simgate; a message lost upstream stays lost).

use std::num::NonZeroU16;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use super::e2e::{echoed_seq, message};
use super::e2e_device::{unix_ns, DeviceTask};
use super::mqtt_io::{read_packet, send};
use crate::proto::mqtt::{
    self, Connect, DecodeLimits, Decoded, Packet, Properties, ProtocolVersion, PubResponse,
    Publish, QoS, ReasonCode, Sender, Subscribe, Subscription, SubscriptionOptions,
};

/// One connection of the probe device: CONNECT, SUBSCRIBE `topic`, then publish what the loop
/// hands over and match what comes back, until an error (returned as text).
pub(super) async fn device(mut task: DeviceTask, topic: String) -> String {
    let version = ProtocolVersion::V311;
    let addr = task.addr;
    let client_id = task.client_id.clone();
    let setup = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {}", e.kind()))?;
        let _ = stream.set_nodelay(true);
        let connect = Packet::Connect(Box::new(Connect {
            protocol_version: version,
            clean_start: true,
            keep_alive: 0,
            properties: Properties::default(),
            client_id: Bytes::copy_from_slice(client_id.as_bytes()),
            will: None,
            username: None,
            password: None,
        }));
        let mut rbuf = BytesMut::with_capacity(1024);
        send(&mut stream, &connect, version).await?;
        match read_packet(&mut stream, &mut rbuf, version).await? {
            Packet::ConnAck(c) if c.reason_code == ReasonCode::SUCCESS => {}
            Packet::ConnAck(c) => {
                return Err(format!("CONNACK refused: reason code {}", c.reason_code))
            }
            other => return Err(format!("expected CONNACK, got {:?}", other.packet_type())),
        }
        let subscribe = Packet::Subscribe(Subscribe {
            packet_id: NonZeroU16::MIN,
            properties: Properties::default(),
            subscriptions: vec![Subscription {
                filter: Bytes::copy_from_slice(topic.as_bytes()),
                options: SubscriptionOptions::with_qos(QoS::AtLeastOnce),
            }],
        });
        send(&mut stream, &subscribe, version).await?;
        loop {
            match read_packet(&mut stream, &mut rbuf, version).await? {
                Packet::SubAck(_) => break,
                Packet::Disconnect(d) => {
                    return Err(format!("disconnected: reason code {}", d.reason_code))
                }
                _ => {}
            }
        }
        Ok::<_, String>((stream, rbuf))
    };
    let (mut stream, mut rbuf) = match tokio::time::timeout(task.settings.timeout, setup).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return e,
        Err(_) => {
            return format!(
                "CONNECT/SUBSCRIBE not answered within {} ms",
                task.settings.timeout.as_millis()
            )
        }
    };
    task.connected();
    let (mut rd, mut wr) = stream.split();
    let mut packet_id: u16 = 1;
    let limits = DecodeLimits {
        max_packet_size: 64 * 1024,
    };
    loop {
        // Packets already buffered first.
        loop {
            match mqtt::decode_packet(&mut rbuf, version, Sender::Server, &limits) {
                Ok(Decoded::Complete(Packet::Publish(p))) => {
                    if let Some(id) = p.packet_id {
                        if let Err(e) =
                            send(&mut wr, &Packet::PubAck(PubResponse::success(id)), version).await
                        {
                            return e;
                        }
                    }
                    if let Some(seq) = echoed_seq(&p.payload, &client_id) {
                        task.record(|b| b.receive(seq, Instant::now()));
                    }
                }
                Ok(Decoded::Complete(Packet::Disconnect(d))) => {
                    return format!("disconnected: reason code {}", d.reason_code)
                }
                Ok(Decoded::Complete(_)) => {}
                Ok(Decoded::Incomplete { .. }) => break,
                Err(e) => return format!("malformed packet from simgate: {e:?}"),
            }
        }
        tokio::select! {
            numbered = task.messages.recv() => {
                let Some(numbered) = numbered else { return "probe stopped".into() };
                packet_id = packet_id.wrapping_add(1).max(2);
                let publish = Packet::Publish(Publish {
                    dup: false,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    topic: Bytes::copy_from_slice(topic.as_bytes()),
                    packet_id: NonZeroU16::new(packet_id),
                    properties: Properties::default(),
                    payload: Bytes::from(message(numbered.seq, unix_ns(), &client_id)),
                });
                if let Err(e) = send(&mut wr, &publish, version).await {
                    return e;
                }
            }
            n = rd.read_buf(&mut rbuf) => match n {
                Ok(0) => return "connection closed by simgate".into(),
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
    }
}
