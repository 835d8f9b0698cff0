#!/usr/bin/env python3
"""A local "contract front" for simgate's MQTT cloud adapters (issue #13): a TLS MQTT server that
checks each device connection the way AWS IoT Core or Azure IoT Hub does, enforces that cloud's
limits, and relays what it accepts to a real (plaintext) mosquitto, so that uplink, downlink,
shadow/C2D topics and token renewal run end to end with real MQTT clients.

    python3 tests/python/mqtt_cloud_front.py --config front.json
    # prints "LISTENING <port>" (the device-facing TLS port) then "CONTROL <port>" (plain HTTP)

front.json:
    {"cert": "chain.pem", "key": "key.pem", "port": 0, "upstream": "127.0.0.1:1883",
     "cloud": "aws" | "azure",
     "aws": {"require_client_cert": true, "client_ca": "ca.pem", "alpn": null | "x-amzn-mqtt-ca",
             "max_publishes_per_second_per_connection": 100, "max_payload": 131072,
             "max_topic_slashes": 7, "max_topic_bytes": 256, "max_client_id_bytes": 128,
             "keep_alive_range": [30, 1200]},
     "azure": {"hub": "myhub", "key": "<base64>", "key_name": "iothubowner" | null,
               "max_payload": 262144}}
Absent keys take the defaults shown. mosquitto must accept any client (allow_anonymous true): the
CONNECT is forwarded as received (only AWS's keep-alive clamp rewrites it).

MQTT: 3.1.1 (level 4) and 5 (level 5) on the device side. A small hand-written parser reads the
fixed header and remaining length of every device->cloud packet, the CONNECT fields, and the
PUBLISH / SUBSCRIBE headers (v5 properties are skipped by their length); every packet is relayed
as the bytes received (except where noted). cloud->device bytes are piped untouched.

Checks, AWS IoT Core ("cloud": "aws"):
  - TLS 1.2+; client certificate verified against client_ca when require_client_cert (no or bad
    certificate -> the TLS handshake fails, refusal "tls_handshake"). With "alpn" set, the
    handshake must negotiate it (else the connection is closed, refusal "alpn").
  - CONNECT: client id 1..max_client_id_bytes bytes (else CONNACK 2 / v5 0x85). Keep-alive
    outside keep_alive_range is clamped, as AWS documents it (0 or > 1200 -> 1200, < 30 -> 30):
    the forwarded CONNECT carries the clamped value (a v5 CONNACK does not get a Server Keep Alive
    property -- not done here).
  - PUBLISH: QoS 2 -> disconnect ("qos2"); topic > max_topic_bytes ("topic_bytes") or more than
    max_topic_slashes slashes ("topic_slashes"; a leading "$aws/rules/<rule>/" Basic Ingest prefix
    is not counted) -> disconnect; payload > max_payload -> disconnect ("payload_too_large");
    "$aws/..." topics other than $aws/things/{clientId}/shadow/..., $aws/things/{clientId}/jobs/...
    and $aws/rules/<rule>/... -> disconnect ("reserved_topic"), as an IoT policy denial does.
    Retained messages are relayed (AWS IoT Core supports them since 2021; older pages said
    "disconnected").
  - Rate: more than max_publishes_per_second_per_connection PUBLISHes in a sliding second on one
    connection are throttled, not disconnected: the PUBLISH is dropped (not relayed); a v5 QoS 1
    publish gets PUBACK 0x97 (Quota exceeded), a 3.1.1 QoS 1 publish gets no PUBACK (the device
    retries), QoS 0 is lost. Counted as "throttled" (events rule "rate").
  On a rule disconnect a v5 device first gets DISCONNECT with a reason code (0x9B QoS not
  supported, 0x90 topic name invalid, 0x95 packet too large, 0x87 not authorized); a 3.1.1
  device's socket is just closed. The upstream connection is closed without DISCONNECT (so
  mosquitto publishes a will, as the cloud does when it drops a client).

Checks, Azure IoT Hub ("cloud": "azure"):
  - CONNECT: username "{hub}.azure-devices.net/{clientId}/?api-version=2021-04-12" (host part
    case-insensitive; extra "&k=v" query parameters after api-version, as the Azure SDKs add
    DeviceClientType, are accepted); password a SharedAccessSignature parsed with azure-iot-device's
    own sastoken.get_sastoken_info_from_string and its sig recomputed with its
    SymmetricKeySigningMechanism over "{sr as sent}\\n{se}" (the string the SDK signs, as
    cloud_sink.py does): with a key_name, skn == key_name and sr the hub or this device; without,
    no skn and sr == {hub}.azure-devices.net/devices/{clientId}; se in the future. Any failure ->
    CONNACK 5 (3.1.1 "not authorized") / 0x87 (v5), refusal by reason.
  - While connected: when the token's se passes, the connection is closed (v5: DISCONNECT 0x87
    first), rule "sas_expired" -- how tests force renewal.
  - PUBLISH topics: devices/{id}/messages/events/[property bag], $iothub/twin/... and
    $iothub/methods/res/...; anything else -> disconnect ("topic_not_allowed"). QoS 2 ->
    disconnect ("qos2"). RETAIN is not an error at IoT Hub (it adds an "mqtt-retain" application
    property and stores nothing): here the retain bit is cleared before relaying, counted
    "retain_ignored". Payload > max_payload (256 KiB, the D2C limit) -> disconnect.
  - SUBSCRIBE filters: devices/{id}/messages/devicebound/#, $iothub/methods/POST/#,
    $iothub/twin/res/#, $iothub/twin/PATCH/properties/desired/#; others -> disconnect
    ("subscribe_not_allowed").

NOT checked / not like the cloud: no IoT policies beyond the reserved-topic rule; no SNI; no
per-account quotas, subscription counts, in-flight limits or byte-rate throttles; no v5 topic
aliases (a PUBLISH with an empty topic is a "topic_invalid" disconnect); no CONNACK properties
(Maximum QoS, Retain Available...) added for v5; no duplicate-client-id takeover logic beyond
mosquitto's own (which matches AWS's: the older connection is dropped); Azure X.509 auth, twin
and method semantics (mosquitto only routes the topics) are not emulated; AWS SUBSCRIBE is not
inspected.

Verified (search over vendor pages, 2026-12-05):
  - docs.aws.amazon.com/iot/latest/developerguide/mqtt.html (and the docs.amazonaws.cn copy):
    QoS 0 and 1 only, "does not support publishing or subscribing with QoS level 2 ... does not send
    a PUBACK or SUBACK"; the current topic list has "MQTT retained messages" (older versions:
    retain -> disconnected); same client id -> older connection dropped.
  - docs.aws.amazon.com/general/latest/gr/iot-core.html#message-broker-limits (via re:Post
    answers citing it): "Publish requests per second per connection" 100, not adjustable.
  - AWS IoT Device SDK v2 (mqtt5 ClientExtendedValidationAndFlowControl.AwsIotCoreDefaults):
    topics <= 7 slashes not counting the rules prefix, topics <= 256 bytes, client id <= 128
    bytes, 100 publish TPS. Payload 128 KB: CLOUD-CONTRACTS.md and the quotas page.
  - Throttling keeps the connection (dev.classmethod.jp, "behavior of MQTT messages when
    throttling occurs in AWS IoT Core": connection not cut, QoS 0 lost, QoS 1 no PUBACK -> resend).
    The v5 PUBACK 0x97 (Quota exceeded) for a throttled publish is from AWS's "MQTT reason
    codes" table as remembered -- NOT re-read in this session (the search found no copy).
  - Keep-alive: an AWS answer on re:Post ("IoT Core will treat any value less than 30 as 30",
    citing the message-broker-limits quota) and awslabs/aws-c-mqtt v0.4.27 ("AWS IoT maxes out at
    (and defaults to) 1200 seconds"); the quotas page itself was not read directly.
  - learn.microsoft.com iot-mqtt-connect-to-iot-hub / iot-hub-mqtt-support: MQTT 3.1.1 on 8883,
    username/password/client id format, QoS 2 -> the hub closes the connection, RETAIN -> the
    mqtt-retain application property (github vjrantal/azure-iot-mqtt-features confirms it
    appears as "mqtt-retain"); iot-mqtt-5-preview: RETAIN unsupported, Maximum QoS 1, 256 KiB.
  - azure-iot-device 2.14 sources (sastoken.py, signing_mechanism.py), as cloud_sink.py.
Secrets are never printed: passwords and tokens are neither logged nor returned by /events.

Test control (plain HTTP on 127.0.0.1): GET /stats, GET /events, POST /reset.
"""

import argparse
import asyncio
import collections
import hmac
import json
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from azure.iot.device.common.auth import sastoken as iot_sastoken
from azure.iot.device.common.auth.signing_mechanism import SymmetricKeySigningMechanism

AWS_DEFAULTS = {"require_client_cert": True, "client_ca": None, "alpn": None,
                "max_publishes_per_second_per_connection": 100, "max_payload": 131072,
                "max_topic_slashes": 7, "max_topic_bytes": 256, "max_client_id_bytes": 128,
                "keep_alive_range": [30, 1200]}
AZURE_DEFAULTS = {"hub": None, "key": None, "key_name": None, "max_payload": 262144}
IOT_HUB_API_VERSION = "2021-04-12"
HANDSHAKE_TIMEOUT_S = 10
MAX_EVENTS = 1000

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, DISCONNECT = 1, 2, 3, 4, 8, 14

# v5 reason codes used here.
RC_NOT_AUTHORIZED = 0x87
RC_CLIENT_ID_INVALID = 0x85
RC_TOPIC_INVALID = 0x90
RC_PACKET_TOO_LARGE = 0x95
RC_QUOTA_EXCEEDED = 0x97
RC_QOS_NOT_SUPPORTED = 0x9B
# 3.1.1 CONNACK return codes.
V3_IDENTIFIER_REJECTED = 2
V3_NOT_AUTHORIZED = 5


def log(msg):
    print(f"mqtt_cloud_front: {msg}", file=sys.stderr, flush=True)


class ProtocolError(Exception):
    """The device sent bytes that are not valid MQTT: the connection is closed."""


class Refuse(Exception):
    """CONNECT refused: CONNACK with `v3` (3.1.1) or `v5` return code, then close."""

    def __init__(self, reason, v3, v5, detail=""):
        super().__init__(detail or reason)
        self.reason, self.v3, self.v5, self.detail = reason, v3, v5, detail


class RuleDisconnect(Exception):
    """A rule broken while connected: v5 gets DISCONNECT `v5`, then the connection closes."""

    def __init__(self, rule, v5, detail=""):
        super().__init__(detail or rule)
        self.rule, self.v5, self.detail = rule, v5, detail


# ---------------------------------------------------------------------------------------------
# MQTT framing: just enough to check and relay.

def decode_varint(buf, pos):
    """-> (value, new_pos) of the variable byte integer at buf[pos]."""
    value, mult = 0, 1
    for i in range(4):
        if pos >= len(buf):
            raise ProtocolError("truncated variable byte integer")
        b = buf[pos]
        pos += 1
        value += (b & 0x7F) * mult
        if not b & 0x80:
            return value, pos
        mult *= 128
    raise ProtocolError("variable byte integer longer than 4 bytes")


async def read_packet(reader, max_remaining):
    """-> (first byte, remaining bytes, raw packet bytes), or None at a clean EOF.
    RuleDisconnect("packet_too_large") when the remaining length exceeds max_remaining (the body
    is not read)."""
    first = await reader.read(1)
    if not first:
        return None
    header = bytearray(first)
    length, mult = 0, 1
    for i in range(4):
        b = await reader.readexactly(1)
        header += b
        length += (b[0] & 0x7F) * mult
        if not b[0] & 0x80:
            break
        mult *= 128
    else:
        raise ProtocolError("remaining length longer than 4 bytes")
    if length > max_remaining:
        raise RuleDisconnect("payload_too_large", RC_PACKET_TOO_LARGE,
                             f"packet of {length} bytes")
    body = await reader.readexactly(length) if length else b""
    return header[0], body, bytes(header) + body


class Cursor:
    def __init__(self, buf, pos=0):
        self.buf, self.pos = buf, pos

    def take(self, n):
        if self.pos + n > len(self.buf):
            raise ProtocolError("packet truncated")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self):
        return self.take(1)[0]

    def u16(self):
        return int.from_bytes(self.take(2), "big")

    def binary(self):
        return self.take(self.u16())

    def string(self):
        try:
            return self.binary().decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("string is not UTF-8")

    def skip_properties(self):
        n, self.pos = decode_varint(self.buf, self.pos)
        self.take(n)


def parse_connect(body):
    c = Cursor(body)
    if c.string() != "MQTT":
        raise ProtocolError("protocol name is not MQTT")
    level = c.u8()
    if level not in (4, 5):
        raise ProtocolError(f"protocol level {level} (only 3.1.1 and 5 are spoken)")
    flags = c.u8()
    if flags & 0x01:
        raise ProtocolError("CONNECT reserved flag set")
    if not flags & 0x04 and flags & 0x38:
        raise ProtocolError("will QoS/retain without a will")
    keep_alive_pos = c.pos
    keep_alive = c.u16()
    if level == 5:
        c.skip_properties()
    client_id = c.string()
    if flags & 0x04:  # will
        if level == 5:
            c.skip_properties()
        c.string()
        c.binary()
    username = c.string() if flags & 0x80 else None
    password = c.binary() if flags & 0x40 else None
    return {"level": level, "flags": flags, "keep_alive": keep_alive,
            "keep_alive_pos": keep_alive_pos, "client_id": client_id, "username": username,
            "password": password}


def parse_publish(first, body, level):
    qos = (first >> 1) & 3
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3")
    c = Cursor(body)
    topic = c.string()
    packet_id = c.u16() if qos else None
    if level == 5:
        c.skip_properties()
    return {"qos": qos, "retain": bool(first & 1), "topic": topic, "packet_id": packet_id,
            "payload_len": len(body) - c.pos}


def parse_subscribe_filters(body, level):
    c = Cursor(body)
    c.u16()  # packet id
    if level == 5:
        c.skip_properties()
    filters = []
    while c.pos < len(body):
        filters.append(c.string())
        c.u8()  # options
    return filters


def connack(level, code):
    if level == 5:
        return bytes([CONNACK << 4, 3, 0, code, 0])
    return bytes([CONNACK << 4, 2, 0, code])


def disconnect_v5(code):
    return bytes([DISCONNECT << 4, 2, code, 0])


def puback_v5(packet_id, code):
    return bytes([PUBACK << 4, 4]) + packet_id.to_bytes(2, "big") + bytes([code, 0])


async def close_gracefully(writer):
    """Flush what was written (a CONNACK or DISCONNECT), send TLS close_notify, then close."""
    try:
        await asyncio.wait_for(writer.drain(), 2)
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 2)
    except Exception:
        pass


# ---------------------------------------------------------------------------------------------
# Shared state for the control port.

class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.accepted = 0
            self.refused = collections.Counter()
            self.disconnects = collections.Counter()
            self.relayed = 0
            self.throttled = 0
            self.retain_ignored = 0
            self.active = 0
            self.events = []

    def event(self, kind, rule, **fields):
        with self.lock:
            if kind == "refused":
                self.refused[rule] += 1
            elif kind == "disconnected":
                self.disconnects[rule] += 1
            elif kind == "throttled":
                self.throttled += 1
            self.events.append({"time": time.time(), "kind": kind, "rule": rule, **fields})
            del self.events[:-MAX_EVENTS]

    def stats(self):
        with self.lock:
            return {"connections_accepted": self.accepted, "connections_refused": dict(self.refused),
                    "publishes_relayed": self.relayed, "publishes_throttled": self.throttled,
                    "retain_ignored": self.retain_ignored,
                    "disconnects": dict(self.disconnects), "active_connections": self.active}


# ---------------------------------------------------------------------------------------------
# Cloud rules.

class AwsRules:
    def __init__(self, cfg):
        self.cfg = {**AWS_DEFAULTS, **(cfg or {})}

    def check_connect(self, conn, tls):
        alpn = self.cfg["alpn"]
        if alpn and tls.selected_alpn_protocol() != alpn:
            raise Refuse("alpn", None, None, f"ALPN {tls.selected_alpn_protocol()!r} != {alpn!r}")
        cid = conn["client_id"].encode("utf-8")
        if not cid or len(cid) > self.cfg["max_client_id_bytes"]:
            raise Refuse("client_id", V3_IDENTIFIER_REJECTED, RC_CLIENT_ID_INVALID,
                         f"client id of {len(cid)} bytes")
        lo, hi = self.cfg["keep_alive_range"]
        ka = conn["keep_alive"]
        clamped = hi if ka == 0 or ka > hi else max(ka, lo)
        return {"keep_alive": clamped} if clamped != ka else {}

    def max_remaining(self):
        # Payload limit plus room for the topic, packet id and v5 properties.
        return self.cfg["max_payload"] + self.cfg["max_topic_bytes"] + 4 + 65536

    def check_publish(self, session, pub):
        cfg = self.cfg
        if pub["qos"] == 2:
            raise RuleDisconnect("qos2", RC_QOS_NOT_SUPPORTED)
        topic = pub["topic"]
        if not topic:
            raise RuleDisconnect("topic_invalid", RC_TOPIC_INVALID, "empty topic (alias?)")
        if len(topic.encode("utf-8")) > cfg["max_topic_bytes"]:
            raise RuleDisconnect("topic_bytes", RC_TOPIC_INVALID,
                                 f"topic of {len(topic.encode())} bytes")
        counted = topic
        parts = topic.split("/")
        if topic.startswith("$aws/rules/") and len(parts) >= 3:
            counted = "/".join(parts[3:])
        if counted.count("/") > cfg["max_topic_slashes"]:
            raise RuleDisconnect("topic_slashes", RC_TOPIC_INVALID,
                                 f"{counted.count('/')} slashes")
        if topic.startswith("$aws/") and not (
                topic.startswith(f"$aws/things/{session.client_id}/shadow/")
                or topic.startswith(f"$aws/things/{session.client_id}/jobs/")
                or (topic.startswith("$aws/rules/") and len(parts) >= 4 and parts[2])):
            raise RuleDisconnect("reserved_topic", RC_NOT_AUTHORIZED, topic)
        if pub["payload_len"] > cfg["max_payload"]:
            raise RuleDisconnect("payload_too_large", RC_PACKET_TOO_LARGE,
                                 f"payload of {pub['payload_len']} bytes")
        # Rate: a sliding one-second window per connection.
        now = time.monotonic()
        window = session.publish_times
        while window and now - window[0] >= 1.0:
            window.popleft()
        if len(window) >= cfg["max_publishes_per_second_per_connection"]:
            return "throttle"
        window.append(now)
        return "relay"

    def check_subscribe(self, session, filters):
        pass

    def expiry(self, conn):
        return None


class AzureRules:
    def __init__(self, cfg):
        self.cfg = {**AZURE_DEFAULTS, **(cfg or {})}
        self.host = f"{self.cfg['hub']}.azure-devices.net"
        try:
            self.mech = SymmetricKeySigningMechanism(self.cfg["key"])
        except Exception:
            raise SystemExit("mqtt_cloud_front: azure.key is not base64")

    def refuse(self, reason, detail):
        raise Refuse(reason, V3_NOT_AUTHORIZED, RC_NOT_AUTHORIZED, detail)

    def check_connect(self, conn, tls):
        device_id = conn["client_id"]
        if not device_id:
            self.refuse("client_id", "empty client id")
        user = conn["username"]
        if user is None or conn["password"] is None:
            self.refuse("credentials_missing", "username or password missing")
        host, _, rest = user.partition("/")
        want = f"{device_id}/?api-version={IOT_HUB_API_VERSION}"
        if host.lower() != self.host.lower() or not (rest == want or rest.startswith(want + "&")):
            self.refuse("username", "username is not "
                        f"{self.host}/{device_id}/?api-version={IOT_HUB_API_VERSION}")
        try:
            token = conn["password"].decode("utf-8")
            info = iot_sastoken.get_sastoken_info_from_string(token.strip())
            se = int(info["se"])
        except Exception as e:
            self.refuse("sas_malformed", f"malformed SharedAccessSignature ({type(e).__name__})")
        sr_raw = info["sr"]
        h, slash, tail = unquote(sr_raw).rstrip("/").partition("/")
        sr = h.lower() + slash + tail
        hub_scope = self.host.lower()
        device_scope = f"{hub_scope}/devices/{device_id}"
        key_name = self.cfg["key_name"]
        skn = info.get("skn")
        if key_name:
            if skn != key_name:
                self.refuse("sas_scope", f"skn must be the policy '{key_name}'")
            if sr not in (hub_scope, device_scope):
                self.refuse("sas_scope", f"sr '{sr}' is neither the hub nor this device")
        else:
            if skn is not None:
                self.refuse("sas_scope", "a device-key token carries no skn")
            if sr != device_scope:
                self.refuse("sas_scope", f"sr '{sr}' is not {device_scope}")
        expected = self.mech.sign(f"{sr_raw}\n{se}")
        if not hmac.compare_digest(expected, unquote(info["sig"])):
            self.refuse("sas_signature", "SharedAccessSignature sig does not match")
        if se <= time.time():
            self.refuse("sas_expired", f"SharedAccessSignature expired (se={se})")
        conn["se"] = se
        return {}

    def max_remaining(self):
        return self.cfg["max_payload"] + 65536 + 4 + 65536

    def check_publish(self, session, pub):
        if pub["qos"] == 2:
            raise RuleDisconnect("qos2", RC_QOS_NOT_SUPPORTED)
        topic, dev = pub["topic"], session.client_id
        if not (topic.startswith(f"devices/{dev}/messages/events/")
                or topic.startswith("$iothub/twin/")
                or topic.startswith("$iothub/methods/res/")):
            raise RuleDisconnect("topic_not_allowed", RC_TOPIC_INVALID, topic)
        if pub["payload_len"] > self.cfg["max_payload"]:
            raise RuleDisconnect("payload_too_large", RC_PACKET_TOO_LARGE,
                                 f"payload of {pub['payload_len']} bytes")
        return "strip_retain" if pub["retain"] else "relay"

    def check_subscribe(self, session, filters):
        allowed = (f"devices/{session.client_id}/messages/devicebound/#", "$iothub/methods/POST/#",
                   "$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#")
        for f in filters:
            if f not in allowed:
                raise RuleDisconnect("subscribe_not_allowed", RC_TOPIC_INVALID, f)

    def expiry(self, conn):
        return conn.get("se")


# ---------------------------------------------------------------------------------------------
# One device connection.

class Session:
    def __init__(self, client_id, level):
        self.client_id = client_id
        self.level = level
        self.publish_times = collections.deque()


class Front:
    def __init__(self, config, state):
        self.config = config
        self.state = state
        self.cloud = config["cloud"]
        self.rules = AwsRules(config.get("aws")) if self.cloud == "aws" \
            else AzureRules(config.get("azure"))
        host, _, port = config.get("upstream", "127.0.0.1:1883").rpartition(":")
        self.upstream = (host or "127.0.0.1", int(port))
        self.ctx = self.make_tls_context()
        # The event loop keeps only weak references to tasks: a connection's task that nothing
        # else references can be garbage-collected mid-flight ("Task was destroyed but it is
        # pending!"), silently dropping that connection. Each one is held here until it ends.
        self.connections = set()

    def make_tls_context(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.config["cert"], self.config["key"])
        if self.cloud == "aws":
            cfg = self.rules.cfg
            if cfg["require_client_cert"]:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(cfg["client_ca"])
            if cfg["alpn"]:
                ctx.set_alpn_protocols([cfg["alpn"]])
        return ctx

    async def accept_loop(self, lsock):
        loop = asyncio.get_running_loop()
        while True:
            sock, peer = await loop.sock_accept(lsock)
            task = asyncio.ensure_future(self.handle(sock, peer))
            self.connections.add(task)
            task.add_done_callback(self.connections.discard)

    async def handle(self, sock, peer):
        # The TLS handshake runs on the accepted socket before any byte is read as plaintext
        # (StreamWriter.start_tls after start_server races with a ClientHello already buffered),
        # so that a failed handshake is seen here and counted.
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        reader = asyncio.StreamReader(limit=2 ** 20)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await asyncio.wait_for(
                loop.connect_accepted_socket(lambda: protocol, sock, ssl=self.ctx,
                                             ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S),
                HANDSHAKE_TIMEOUT_S + 1)
        except (ssl.SSLError, OSError, asyncio.TimeoutError, EOFError) as e:
            self.state.event("refused", "tls_handshake", peer=str(peer), detail=type(e).__name__)
            sock.close()
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        up_writer = None
        conn = None
        try:
            try:
                pkt = await asyncio.wait_for(read_packet(reader, 65536 * 4), HANDSHAKE_TIMEOUT_S)
            except RuleDisconnect:
                raise ProtocolError("CONNECT too large")
            if pkt is None:
                return
            first, body, raw = pkt
            if first != CONNECT << 4:
                raise ProtocolError("first packet is not CONNECT")
            conn = parse_connect(body)
            tls = writer.get_extra_info("ssl_object")
            try:
                rewrite = self.rules.check_connect(conn, tls)
            except Refuse as r:
                self.state.event("refused", r.reason, client_id=conn["client_id"],
                                 detail=r.detail)
                code = r.v5 if conn["level"] == 5 else r.v3
                if code is not None:
                    writer.write(connack(conn["level"], code))
                    await close_gracefully(writer)
                return
            if "keep_alive" in rewrite:
                hdr_len = len(raw) - len(body)
                pos = hdr_len + conn["keep_alive_pos"]
                raw = raw[:pos] + rewrite["keep_alive"].to_bytes(2, "big") + raw[pos + 2:]
                self.state.event("keep_alive_clamped", "keep_alive", client_id=conn["client_id"],
                                 requested=conn["keep_alive"], used=rewrite["keep_alive"])
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            up_writer.write(raw)
            await up_writer.drain()
            with self.state.lock:
                self.state.accepted += 1
                self.state.active += 1
            try:
                await self.relay(Session(conn["client_id"], conn["level"]), conn,
                                 reader, writer, up_reader, up_writer)
            finally:
                with self.state.lock:
                    self.state.active -= 1
        except ProtocolError as e:
            self.state.event("refused" if up_writer is None else "disconnected", "protocol_error",
                             client_id=conn and conn["client_id"], detail=str(e))
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.TimeoutError):
            pass
        except Exception as e:  # a bug here must not kill the server
            log(f"error serving {peer}: {e!r}")
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.transport.abort()

    async def relay(self, session, conn, reader, writer, up_reader, up_writer):
        async def downlink():
            while True:
                data = await up_reader.read(65536)
                if not data:
                    return "upstream_closed"
                writer.write(data)
                await writer.drain()

        async def uplink():
            while True:
                pkt = await read_packet(reader, self.rules.max_remaining())
                if pkt is None:
                    return "device_closed"
                first, body, raw = pkt
                ptype = first >> 4
                if ptype == PUBLISH:
                    pub = parse_publish(first, body, session.level)
                    verdict = self.rules.check_publish(session, pub)
                    if verdict == "throttle":
                        self.state.event("throttled", "rate", client_id=session.client_id,
                                         topic=pub["topic"], qos=pub["qos"])
                        if pub["qos"] == 1 and session.level == 5:
                            writer.write(puback_v5(pub["packet_id"], RC_QUOTA_EXCEEDED))
                            await writer.drain()
                        continue
                    if verdict == "strip_retain":
                        raw = bytes([raw[0] & 0xFE]) + raw[1:]
                        with self.state.lock:
                            self.state.retain_ignored += 1
                    with self.state.lock:
                        self.state.relayed += 1
                elif ptype == SUBSCRIBE:
                    self.rules.check_subscribe(session,
                                               parse_subscribe_filters(body, session.level))
                elif ptype == CONNECT:
                    raise ProtocolError("second CONNECT")
                up_writer.write(raw)
                await up_writer.drain()

        async def expiry():
            se = self.rules.expiry(conn)
            if se is None:
                await asyncio.Event().wait()
            await asyncio.sleep(max(0.0, se - time.time()))
            raise RuleDisconnect("sas_expired", RC_NOT_AUTHORIZED, f"se={se} passed")

        tasks = [asyncio.ensure_future(t()) for t in (downlink, uplink, expiry)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                exc = t.exception()
                if isinstance(exc, RuleDisconnect):
                    self.state.event("disconnected", exc.rule, client_id=session.client_id,
                                     detail=exc.detail)
                    if session.level == 5:
                        writer.write(disconnect_v5(exc.v5))
                    await close_gracefully(writer)
                elif exc is not None:
                    raise exc
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------------------------------------
# Control port.

def control_server(state):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):
            pass

        def send_json(self, status, obj):
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/stats":
                self.send_json(200, state.stats())
            elif self.path == "/events":
                with state.lock:
                    self.send_json(200, list(state.events))
            else:
                self.send_json(404, {"error": "not found"})

        def do_POST(self):
            if self.path == "/reset":
                state.reset()
                self.send_json(200, {"reset": True})
            else:
                self.send_json(404, {"error": "not found"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


async def serve(config):
    state = State()
    front = Front(config, state)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((config.get("bind", "127.0.0.1"), int(config.get("port") or 0)))
    lsock.listen(128)
    lsock.setblocking(False)
    control = control_server(state)
    print(f"LISTENING {lsock.getsockname()[1]}", flush=True)
    print(f"CONTROL {control.server_address[1]}", flush=True)
    await front.accept_loop(lsock)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="front.json")
    args = ap.parse_args(argv)
    with open(args.config) as f:
        config = json.load(f)
    if config.get("cloud") not in ("aws", "azure"):
        ap.error('config "cloud" must be "aws" or "azure"')
    try:
        asyncio.run(serve(config))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
