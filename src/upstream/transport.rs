//! Glue: the reactor's TCP stream as the byte transport under [`crate::tls::TlsStream`].

use bytes::{Bytes, BytesMut};

use crate::reactor::TcpStream;
use crate::tls::Transport;

impl Transport for TcpStream {
    async fn recv_append(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        TcpStream::recv_append(self, buf).await
    }

    async fn send_all(&mut self, data: Bytes) -> std::io::Result<()> {
        TcpStream::send_all(self, data).await
    }
}
