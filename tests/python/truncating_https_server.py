#!/usr/bin/env python3
"""A TLS HTTP/1.1 server whose every answer breaks off mid-body: it reads one request head,
answers `200` with `Content-Length: 100` and only 10 body bytes, then closes the connection.

Used by tests/destination_counters.rs to make simgate's relay of a response break off
(`upstream_closed` after the head). Prints `listening <port>` once ready.
Usage: truncating_https_server.py CERT KEY
"""
import socket
import ssl
import sys
import threading


def serve(conn: ssl.SSLSocket) -> None:
    try:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
    finally:
        conn.close()


def main() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[1], sys.argv[2])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(socket.SOMAXCONN)
    print(f"listening {listener.getsockname()[1]}", flush=True)
    while True:
        raw, _ = listener.accept()
        try:
            conn = ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            continue
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
