//! A minimal MQTT device for integration tests, over a blocking `TcpStream` and simgate's own
//! codec: for what the real command-line clients cannot do (keep a window of QoS 1 messages in
//! flight, read exactly which packets the server sends, e.g. a DISCONNECT reason code).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use simgate::proto::mqtt::{
    self, Connect, DecodeLimits, Decoded, Packet, Properties, ProtocolVersion, Publish, QoS,
    Subscribe, Subscription, SubscriptionOptions,
};

/// A minimal MQTT client over a blocking socket, using simgate's own codec.
pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
    version: ProtocolVersion,
    /// The server's CONNACK (properties such as Server Keep Alive).
    connack: Option<mqtt::ConnAck>,
}

/// Why the test client failed (read through `Debug` in panic messages).
#[derive(Debug)]
#[allow(dead_code)]
pub enum ClientError {
    Closed,
    Io(std::io::ErrorKind),
    Refused(mqtt::ReasonCode),
    Protocol(String),
}

impl Client {
    pub fn connect(
        addr: SocketAddr,
        client_id: &str,
        version: ProtocolVersion,
        clean: bool,
    ) -> Result<Client, ClientError> {
        Self::connect_keep_alive(addr, client_id, version, clean, 60)
    }

    /// [`connect`](Self::connect) announcing `keep_alive` seconds.
    pub fn connect_keep_alive(
        addr: SocketAddr,
        client_id: &str,
        version: ProtocolVersion,
        clean: bool,
        keep_alive: u16,
    ) -> Result<Client, ClientError> {
        Self::connect_with(
            addr,
            client_id,
            version,
            clean,
            keep_alive,
            Properties::default(),
        )
    }

    /// [`connect_keep_alive`](Self::connect_keep_alive) with CONNECT `properties` (5.0).
    pub fn connect_with(
        addr: SocketAddr,
        client_id: &str,
        version: ProtocolVersion,
        clean: bool,
        keep_alive: u16,
        properties: Properties,
    ) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr).map_err(|e| ClientError::Io(e.kind()))?;
        Self::handshake(stream, client_id, version, clean, keep_alive, properties)
    }

    /// [`connect`](Self::connect) from source address `from` (any 127.0.0.0/8 address works
    /// on loopback), as a SIM's bound IP would.
    pub fn connect_from(
        addr: SocketAddr,
        from: std::net::IpAddr,
        client_id: &str,
        version: ProtocolVersion,
    ) -> Result<Client, ClientError> {
        let io = |e: std::io::Error| ClientError::Io(e.kind());
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).map_err(io)?;
        socket.bind(&SocketAddr::new(from, 0).into()).map_err(io)?;
        socket.connect(&addr.into()).map_err(io)?;
        Self::handshake(
            socket.into(),
            client_id,
            version,
            true,
            60,
            Properties::default(),
        )
    }

    fn handshake(
        stream: TcpStream,
        client_id: &str,
        version: ProtocolVersion,
        clean: bool,
        keep_alive: u16,
        properties: Properties,
    ) -> Result<Client, ClientError> {
        let _ = stream.set_nodelay(true);
        let mut client = Client {
            stream,
            buf: BytesMut::new(),
            version,
            connack: None,
        };
        client.send(&Packet::Connect(Box::new(Connect {
            protocol_version: version,
            clean_start: clean,
            keep_alive,
            properties,
            client_id: Bytes::from(client_id.to_string()),
            will: None,
            username: None,
            password: None,
        })))?;
        match client.next(Duration::from_secs(10))? {
            Some(Packet::ConnAck(ack)) if ack.reason_code == mqtt::ReasonCode::SUCCESS => {
                client.connack = Some(ack);
                Ok(client)
            }
            Some(Packet::ConnAck(ack)) => Err(ClientError::Refused(ack.reason_code)),
            other => Err(ClientError::Protocol(format!(
                "expected CONNACK, got {other:?}"
            ))),
        }
    }

    pub fn send(&mut self, packet: &Packet) -> Result<(), ClientError> {
        let mut out = BytesMut::new();
        mqtt::encode(packet, self.version, &mut out)
            .map_err(|e| ClientError::Protocol(format!("{e:?}")))?;
        self.stream
            .write_all(&out)
            .map_err(|e| ClientError::Io(e.kind()))
    }

    /// Write `bytes` as they are (e.g. a malformed packet).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream
            .write_all(bytes)
            .map_err(|e| ClientError::Io(e.kind()))
    }

    /// The next packet, or `None` if none arrived within `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Packet>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let limits = DecodeLimits::default();
            match mqtt::decode_packet(&mut self.buf, self.version, mqtt::Sender::Server, &limits) {
                Ok(Decoded::Complete(p)) => return Ok(Some(p)),
                Ok(Decoded::Incomplete { .. }) => {}
                Err(e) => return Err(ClientError::Protocol(format!("{e:?}"))),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let _ = self.stream.set_read_timeout(Some(left));
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(ClientError::Io(e.kind())),
            }
        }
    }

    /// The CONNACK that accepted this client.
    pub fn connack(&self) -> Option<&mqtt::ConnAck> {
        self.connack.as_ref()
    }

    pub fn publish(
        &mut self,
        topic: &str,
        payload: &str,
        qos: QoS,
        id: u16,
    ) -> Result<(), ClientError> {
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: Bytes::from(topic.to_string()),
            packet_id: if qos == QoS::AtMostOnce {
                None
            } else {
                NonZeroU16::new(id)
            },
            properties: Properties::default(),
            payload: Bytes::from(payload.to_string()),
        }))
    }

    pub fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), ClientError> {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: NonZeroU16::MIN,
            properties: Properties::default(),
            subscriptions: vec![Subscription {
                filter: Bytes::from(filter.to_string()),
                options: SubscriptionOptions::with_qos(qos),
            }],
        }))?;
        loop {
            match self.next(Duration::from_secs(10))? {
                Some(Packet::SubAck(ack)) if ack.reason_codes.iter().all(|c| c.0 < 0x80) => {
                    return Ok(())
                }
                Some(Packet::SubAck(ack)) => {
                    return Err(ClientError::Protocol(format!(
                        "SUBACK {:?}",
                        ack.reason_codes
                    )))
                }
                Some(_) => {}
                None => return Err(ClientError::Protocol("no SUBACK".into())),
            }
        }
    }

    /// Read packets until the server closes the connection; returns them (fails on a protocol
    /// error, or if the connection is still open after `timeout`).
    pub fn until_closed(&mut self, timeout: Duration) -> Vec<Packet> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "still open after {timeout:?}; got {got:?}");
            match self.next(left) {
                Ok(Some(p)) => got.push(p),
                Ok(None) => {}
                Err(ClientError::Closed | ClientError::Io(_)) => return got,
                Err(e) => panic!("after {got:?}: {e:?}"),
            }
        }
    }
}
