#!/usr/bin/env python3
"""Self-test of mqtt_cloud_front.py: `python3 tests/python/test_mqtt_cloud_front.py`.

Starts a real mosquitto (/usr/sbin/mosquitto, a plaintext listener on a free port,
allow_anonymous) and, in front of it, one contract front per cloud with a test CA, server and
client certificates made here with `cryptography`. Devices are Eclipse Paho (paho-mqtt 2.x,
CallbackAPIVersion.VERSION2, MQTT 3.1.1 and 5) and, where the exact bytes matter, a raw TLS
socket; Azure SAS tokens are made with azure-iot-device's own RenewableSasToken. What reached the
broker is read by a Paho subscriber connected to mosquitto directly.
"""

import base64
import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

import paho.mqtt.client as mqtt
from azure.iot.device.common.auth.sastoken import RenewableSasToken
from azure.iot.device.common.auth.signing_mechanism import SymmetricKeySigningMechanism
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HERE = os.path.dirname(os.path.abspath(__file__))
FRONT = os.path.join(HERE, "mqtt_cloud_front.py")
MOSQUITTO = "/usr/sbin/mosquitto"
HUB = "testhub"
DEVICE_KEY = base64.b64encode(b"azure iot hub device key 32 byte").decode()
POLICY_KEY = base64.b64encode(b"azure iot hub policy key 32 byte").decode()
WRONG_KEY = base64.b64encode(b"not the key of this hub, 32 byte").decode()
AWS_RATE_LIMIT = 5
TIMEOUT = 10


# ---------------------------------------------------------------------------------------------
# PKI, processes.

def write_pem(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def make_pki(d):
    now = datetime.datetime.now(datetime.timezone.utc)

    def build(subject, issuer_name, issuer_key, key, ca, sans=None):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def key_pem(k):
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    def cert_pem(c):
        return c.public_bytes(serialization.Encoding.PEM)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = build(name("front-test-ca"), name("front-test-ca"), ca_key, ca_key, True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = build(name("localhost"), ca.subject, ca_key, srv_key, False,
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cli_key = ec.generate_private_key(ec.SECP256R1())
    cli = build(name("simgate-gateway"), ca.subject, ca_key, cli_key, False)
    return {"ca": write_pem(os.path.join(d, "ca.pem"), cert_pem(ca)),
            "cert": write_pem(os.path.join(d, "server.pem"), cert_pem(srv)),
            "key": write_pem(os.path.join(d, "server.key"), key_pem(srv_key)),
            "client_cert": write_pem(os.path.join(d, "client.pem"), cert_pem(cli)),
            "client_key": write_pem(os.path.join(d, "client.key"), key_pem(cli_key))}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mosquitto(d):
    for _ in range(5):
        port = free_port()
        conf = os.path.join(d, f"mosquitto-{port}.conf")
        with open(conf, "w") as f:
            # "user root": as root mosquitto would otherwise drop to user "mosquitto".
            f.write(f"user root\nlog_dest stderr\nlistener {port} 127.0.0.1\n"
                    "allow_anonymous true\n")
        log = open(os.path.join(d, f"mosquitto-{port}.log"), "wb")
        proc = subprocess.Popen([MOSQUITTO, "-c", conf], stdout=log, stderr=log)
        deadline = time.time() + TIMEOUT
        while time.time() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                log.close()  # the child keeps its own descriptor
                return proc, port
            except OSError:
                time.sleep(0.05)
        proc.kill()
        proc.wait()
        log.close()
    raise RuntimeError("mosquitto did not start")


class FrontProc:
    def __init__(self, d, name, config):
        path = os.path.join(d, f"front-{name}.json")
        with open(path, "w") as f:
            json.dump(config, f)
        self.stderr = open(os.path.join(d, f"front-{name}.log"), "wb")
        self.proc = subprocess.Popen([sys.executable, FRONT, "--config", path],
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        line1 = self.proc.stdout.readline().split()
        line2 = self.proc.stdout.readline().split()
        assert line1[:1] == ["LISTENING"] and line2[:1] == ["CONTROL"], (line1, line2)
        self.port, self.control = int(line1[1]), int(line2[1])

    def get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.control}{path}", timeout=5) as r:
            return json.loads(r.read())

    def reset(self):
        req = urllib.request.Request(f"http://127.0.0.1:{self.control}/reset", method="POST")
        urllib.request.urlopen(req, timeout=5).read()

    def stop(self):
        """Stops the front; -> what it wrote to stderr (tracebacks of bugs in the front)."""
        self.proc.terminate()
        self.proc.wait(5)
        self.proc.stdout.close()
        self.stderr.close()
        with open(self.stderr.name) as f:
            return f.read()


# ---------------------------------------------------------------------------------------------
# Devices.

class Device:
    """A Paho client through a front; records CONNACK, DISCONNECT, PUBACKs and messages."""

    def __init__(self, port, client_id, protocol=mqtt.MQTTv311, pki=None, username=None,
                 password=None, tls=True, keepalive=60):
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack = None
        self.disconnect_reason = None
        self.acks = {}
        self.messages = []
        self.got = threading.Condition()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=protocol)
        if tls:
            ctx = ssl.create_default_context(cafile=pki["ca"])
            if pki.get("with_client_cert", True):
                ctx.load_cert_chain(pki["client_cert"], pki["client_key"])
            self.c.tls_set_context(ctx)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.c.on_connect = self.on_connect
        self.c.on_disconnect = self.on_disconnect
        self.c.on_publish = self.on_publish
        self.c.on_message = self.on_message
        self.c.connect("localhost" if tls else "127.0.0.1", port, keepalive=keepalive)
        self.c.loop_start()

    def on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = reason_code
        self.connected.set()

    def on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnect_reason = reason_code
        self.disconnected.set()

    def on_publish(self, client, userdata, mid, reason_code, properties):
        with self.got:
            self.acks[mid] = reason_code
            self.got.notify_all()

    def on_message(self, client, userdata, msg):
        with self.got:
            self.messages.append((msg.topic, msg.payload))
            self.got.notify_all()

    def wait_connack(self):
        assert self.connected.wait(TIMEOUT), "no CONNACK"
        return self.connack

    def wait_for(self, pred, timeout=TIMEOUT):
        with self.got:
            return self.got.wait_for(pred, timeout)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def raw_connect(port, client_id, pki=None, username=None, password=None, level=4, alpn=None):
    """CONNECT over a raw TLS socket; -> the bytes answered (b"" at EOF)."""
    def s(b):
        b = b.encode() if isinstance(b, str) else b
        return len(b).to_bytes(2, "big") + b
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    var = s("MQTT") + bytes([level, flags]) + (60).to_bytes(2, "big")
    if level == 5:
        var += b"\x00"
    payload = s(client_id) + (s(username) if username is not None else b"") + \
        (s(password) if password is not None else b"")
    body = var + payload
    n, length = len(body), bytearray()
    while True:
        n, b = divmod(n, 128)
        length.append(b | (0x80 if n else 0))
        if not n:
            break
    return raw_exchange(port, bytes([0x10]) + bytes(length) + body, pki, alpn)


def raw_exchange(port, pkt, pki, alpn=None):
    """Sends `pkt` over a raw TLS socket; -> up to the first 4+ bytes answered (b"" at EOF)."""
    ctx = ssl.create_default_context(cafile=pki["ca"])
    if pki.get("with_client_cert", True):
        ctx.load_cert_chain(pki["client_cert"], pki["client_key"])
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            tls.sendall(pkt)
            out = b""
            while len(out) < 4:
                chunk = tls.recv(16)
                if not chunk:
                    break
                out += chunk
            return out


def azure_username(device_id):
    return f"{HUB}.azure-devices.net/{device_id}/?api-version=2021-04-12"


def device_token(device_id, key=DEVICE_KEY, ttl=3600):
    """A device-key token made by azure-iot-device's own helper."""
    return str(RenewableSasToken(f"{HUB}.azure-devices.net/devices/{device_id}",
                                 SymmetricKeySigningMechanism(key), ttl=ttl))


# ---------------------------------------------------------------------------------------------

D = None  # module fixtures


def setUpModule():
    global D
    tmp = tempfile.TemporaryDirectory()
    d = tmp.name
    pki = make_pki(d)
    mosq, mport = start_mosquitto(d)
    upstream = f"127.0.0.1:{mport}"
    aws = FrontProc(d, "aws", {"cert": pki["cert"], "key": pki["key"], "port": 0,
                               "upstream": upstream, "cloud": "aws",
                               "aws": {"require_client_cert": True, "client_ca": pki["ca"],
                                       "max_publishes_per_second_per_connection": AWS_RATE_LIMIT}})
    aws_alpn = FrontProc(d, "aws-alpn", {"cert": pki["cert"], "key": pki["key"],
                                         "upstream": upstream, "cloud": "aws",
                                         "aws": {"client_ca": pki["ca"],
                                                 "alpn": "x-amzn-mqtt-ca"}})
    azure = FrontProc(d, "azure", {"cert": pki["cert"], "key": pki["key"], "upstream": upstream,
                                   "cloud": "azure",
                                   "azure": {"hub": HUB, "key": DEVICE_KEY, "key_name": None}})
    azure_policy = FrontProc(d, "azure-policy", {
        "cert": pki["cert"], "key": pki["key"], "upstream": upstream, "cloud": "azure",
        "azure": {"hub": HUB, "key": POLICY_KEY, "key_name": "iothubowner"}})
    D = {"tmp": tmp, "pki": pki, "mosq": mosq, "mport": mport, "aws": aws, "aws_alpn": aws_alpn,
         "azure": azure, "azure_policy": azure_policy}


def tearDownModule():
    for k in ("aws", "aws_alpn", "azure", "azure_policy"):
        err = D[k].stop()
        if err.strip():
            print(f"front {k} stderr:\n{err}", file=sys.stderr)
    D["mosq"].terminate()
    D["mosq"].wait(5)
    D["tmp"].cleanup()


class BrokerSubscriber:
    """A Paho client on mosquitto's plaintext listener: what reached the broker."""

    def __init__(self, topic):
        self.dev = Device(D["mport"], f"sub-{time.time_ns()}", tls=False)
        self.dev.wait_connack()
        done = threading.Event()
        self.dev.c.on_subscribe = lambda *a: done.set()
        self.dev.c.subscribe(topic, qos=1)
        assert done.wait(TIMEOUT), "no SUBACK from mosquitto"

    def wait_count(self, n, timeout=TIMEOUT):
        return self.dev.wait_for(lambda: len(self.dev.messages) >= n, timeout)

    def close(self):
        self.dev.close()


class AwsTest(unittest.TestCase):
    def setUp(self):
        D["aws"].reset()

    def test_valid_connection_relays_uplink_v311_and_v5(self):
        sub = BrokerSubscriber("sims/#")
        try:
            for proto, cid in ((mqtt.MQTTv311, "thing-v3"), (mqtt.MQTTv5, "thing-v5")):
                dev = Device(D["aws"].port, cid, proto, D["pki"])
                self.assertEqual(dev.wait_connack(), 0)
                info = dev.c.publish(f"sims/{cid}/up", b"hello " + cid.encode(), qos=1)
                self.assertTrue(dev.wait_for(lambda: info.mid in dev.acks))
                dev.close()
            self.assertTrue(sub.wait_count(2))
            self.assertEqual(sorted(sub.dev.messages),
                             [("sims/thing-v3/up", b"hello thing-v3"),
                              ("sims/thing-v5/up", b"hello thing-v5")])
            stats = D["aws"].get("/stats")
            self.assertEqual(stats["connections_accepted"], 2)
            self.assertEqual(stats["publishes_relayed"], 2)
        finally:
            sub.close()

    def test_shadow_topic_of_own_thing_round_trip(self):
        # A shadow-like responder on mosquitto answers on .../update/accepted (downlink).
        dev = Device(D["aws"].port, "thing-shadow", mqtt.MQTTv311, D["pki"])
        self.assertEqual(dev.wait_connack(), 0)
        sub_done = threading.Event()
        dev.c.on_subscribe = lambda *a: sub_done.set()
        dev.c.subscribe("$aws/things/thing-shadow/shadow/update/accepted", qos=1)
        self.assertTrue(sub_done.wait(TIMEOUT))
        cloud = BrokerSubscriber("$aws/things/+/shadow/update")
        try:
            dev.c.publish("$aws/things/thing-shadow/shadow/update", b'{"state":{}}', qos=1)
            self.assertTrue(cloud.wait_count(1))
            cloud.dev.c.publish("$aws/things/thing-shadow/shadow/update/accepted", b"{}", qos=1)
            self.assertTrue(dev.wait_for(lambda: len(dev.messages) == 1))
            self.assertFalse(dev.disconnected.is_set())
        finally:
            cloud.close()
            dev.close()

    def test_reserved_topic_of_another_thing_disconnects(self):
        dev = Device(D["aws"].port, "thing-a", mqtt.MQTTv5, D["pki"])
        self.assertEqual(dev.wait_connack(), 0)
        dev.c.publish("$aws/things/thing-b/shadow/update", b"{}", qos=1)
        self.assertTrue(dev.disconnected.wait(TIMEOUT))
        self.assertEqual(dev.disconnect_reason, 0x87)
        dev.c.loop_stop()
        self.assertEqual(D["aws"].get("/stats")["disconnects"], {"reserved_topic": 1})

    def test_no_client_certificate_fails_tls_handshake(self):
        pki = {**D["pki"], "with_client_cert": False}
        try:
            answer = raw_connect(D["aws"].port, "thing-nocert", pki)
        except (ssl.SSLError, OSError):
            answer = b""
        self.assertEqual(answer, b"")
        deadline = time.time() + TIMEOUT
        while time.time() < deadline:
            stats = D["aws"].get("/stats")
            if stats["connections_refused"].get("tls_handshake"):
                break
            time.sleep(0.05)
        self.assertEqual(stats["connections_refused"], {"tls_handshake": 1})
        self.assertEqual(stats["connections_accepted"], 0)

    def test_alpn_required_when_configured(self):
        front = D["aws_alpn"]
        front.reset()
        answer = raw_connect(front.port, "thing-alpn", D["pki"], alpn=["x-amzn-mqtt-ca"])
        self.assertEqual(answer, bytes([0x20, 2, 0, 0]))
        try:
            answer = raw_connect(front.port, "thing-noalpn", D["pki"])
        except OSError:
            answer = b""
        self.assertEqual(answer, b"")
        stats = front.get("/stats")
        self.assertEqual(stats["connections_accepted"], 1)
        self.assertEqual(stats["connections_refused"], {"alpn": 1})

    def test_first_packet_not_connect_is_a_protocol_error(self):
        # A PUBLISH (QoS 0, topic "a", payload "x") where a CONNECT must come first.
        answer = raw_exchange(D["aws"].port, bytes([0x30, 4, 0, 1]) + b"ax", D["pki"])
        self.assertEqual(answer, b"")
        self.assertEqual(D["aws"].get("/stats")["connections_refused"], {"protocol_error": 1})

    def test_qos2_publish_disconnects(self):
        for proto, want in ((mqtt.MQTTv311, None), (mqtt.MQTTv5, 0x9B)):
            dev = Device(D["aws"].port, f"thing-qos2-{proto}", proto, D["pki"])
            self.assertEqual(dev.wait_connack(), 0)
            dev.c.publish("sims/qos2", b"x", qos=2)
            self.assertTrue(dev.disconnected.wait(TIMEOUT))
            if want is not None:
                self.assertEqual(dev.disconnect_reason, want)
            dev.c.loop_stop()
        self.assertEqual(D["aws"].get("/stats")["disconnects"], {"qos2": 2})

    def test_too_many_slashes_disconnects(self):
        dev = Device(D["aws"].port, "thing-slashes", mqtt.MQTTv311, D["pki"])
        self.assertEqual(dev.wait_connack(), 0)
        dev.c.publish("a/b/c/d/e/f/g/h/i", b"x", qos=1)  # 8 slashes, limit 7
        self.assertTrue(dev.disconnected.wait(TIMEOUT))
        dev.c.loop_stop()
        events = D["aws"].get("/events")
        self.assertEqual([(e["kind"], e["rule"]) for e in events],
                         [("disconnected", "topic_slashes")])

    def test_seven_slashes_and_rules_prefix_allowed(self):
        sub = BrokerSubscriber("$aws/rules/#")
        try:
            dev = Device(D["aws"].port, "thing-7", mqtt.MQTTv311, D["pki"])
            self.assertEqual(dev.wait_connack(), 0)
            # 7 slashes after the Basic Ingest prefix (which does not count).
            info = dev.c.publish("$aws/rules/r1/a/b/c/d/e/f/g/h", b"x", qos=1)
            self.assertTrue(dev.wait_for(lambda: info.mid in dev.acks))
            self.assertTrue(sub.wait_count(1))
            self.assertFalse(dev.disconnected.is_set())
            dev.close()
        finally:
            sub.close()

    def test_payload_over_128k_disconnects(self):
        dev = Device(D["aws"].port, "thing-big", mqtt.MQTTv5, D["pki"])
        self.assertEqual(dev.wait_connack(), 0)
        dev.c.publish("sims/big", b"x" * (128 * 1024 + 1), qos=1)
        self.assertTrue(dev.disconnected.wait(TIMEOUT))
        self.assertEqual(dev.disconnect_reason, 0x95)
        dev.c.loop_stop()

    def test_over_rate_is_throttled_not_disconnected(self):
        sub = BrokerSubscriber("rate/#")
        try:
            dev = Device(D["aws"].port, "thing-rate", mqtt.MQTTv5, D["pki"])
            self.assertEqual(dev.wait_connack(), 0)
            n = 4 * AWS_RATE_LIMIT
            mids = [dev.c.publish(f"rate/{i}", b"x", qos=1).mid for i in range(n)]
            self.assertTrue(dev.wait_for(lambda: all(m in dev.acks for m in mids)))
            codes = [int(dev.acks[m].value) for m in mids]
            self.assertEqual(codes.count(0), AWS_RATE_LIMIT, codes)
            self.assertEqual(codes.count(0x97), n - AWS_RATE_LIMIT, codes)
            self.assertTrue(sub.wait_count(AWS_RATE_LIMIT))
            time.sleep(0.3)
            self.assertEqual(len(sub.dev.messages), AWS_RATE_LIMIT)
            # Still connected; after a second the window has room again.
            self.assertFalse(dev.disconnected.is_set())
            time.sleep(1.1)
            info = dev.c.publish("rate/after", b"y", qos=1)
            self.assertTrue(dev.wait_for(lambda: info.mid in dev.acks))
            self.assertEqual(int(dev.acks[info.mid].value), 0)
            stats = D["aws"].get("/stats")
            self.assertEqual(stats["publishes_throttled"], n - AWS_RATE_LIMIT)
            self.assertEqual(stats["disconnects"], {})
            dev.close()
        finally:
            sub.close()

    def test_client_id_over_128_bytes_refused(self):
        self.assertEqual(raw_connect(D["aws"].port, "t" * 129, D["pki"]), bytes([0x20, 2, 0, 2]))
        answer = raw_connect(D["aws"].port, "t" * 129, D["pki"], level=5)
        self.assertEqual(answer, bytes([0x20, 3, 0, 0x85, 0]))
        self.assertEqual(D["aws"].get("/stats")["connections_refused"], {"client_id": 2})

    def test_over_rate_v311_qos0_dropped(self):
        sub = BrokerSubscriber("rate0/#")
        try:
            dev = Device(D["aws"].port, "thing-rate0", mqtt.MQTTv311, D["pki"])
            self.assertEqual(dev.wait_connack(), 0)
            for i in range(3 * AWS_RATE_LIMIT):
                dev.c.publish(f"rate0/{i}", b"x", qos=0)
            self.assertTrue(sub.wait_count(AWS_RATE_LIMIT))
            time.sleep(0.5)
            self.assertEqual(len(sub.dev.messages), AWS_RATE_LIMIT)
            self.assertFalse(dev.disconnected.is_set())
            self.assertEqual(D["aws"].get("/stats")["publishes_throttled"], 2 * AWS_RATE_LIMIT)
            dev.close()
        finally:
            sub.close()

    def test_keep_alive_clamped(self):
        dev = Device(D["aws"].port, "thing-ka", mqtt.MQTTv311, D["pki"], keepalive=5)
        self.assertEqual(dev.wait_connack(), 0)
        dev.close()
        ev = [e for e in D["aws"].get("/events") if e["kind"] == "keep_alive_clamped"]
        self.assertEqual([(e["requested"], e["used"]) for e in ev], [(5, 30)])


class AzureTest(unittest.TestCase):
    def setUp(self):
        D["azure"].reset()
        D["azure_policy"].reset()

    def test_valid_sas_v311_accepted_and_telemetry_relayed(self):
        sub = BrokerSubscriber("devices/+/messages/events/#")
        try:
            dev = Device(D["azure"].port, "dev1", mqtt.MQTTv311, D["pki"],
                         azure_username("dev1"), device_token("dev1"))
            self.assertEqual(dev.wait_connack(), 0)
            info = dev.c.publish("devices/dev1/messages/events/imsi=001010123456789", b"t",
                                 qos=1)
            self.assertTrue(dev.wait_for(lambda: info.mid in dev.acks))
            self.assertTrue(sub.wait_count(1))
            self.assertEqual(sub.dev.messages,
                             [("devices/dev1/messages/events/imsi=001010123456789", b"t")])
            dev.close()
        finally:
            sub.close()

    def test_policy_key_token_with_skn(self):
        tok = str(RenewableSasToken(f"{HUB}.azure-devices.net", SymmetricKeySigningMechanism(
            POLICY_KEY), key_name="iothubowner", ttl=600))
        dev = Device(D["azure_policy"].port, "dev2", mqtt.MQTTv5, D["pki"],
                     azure_username("dev2"), tok)
        self.assertEqual(dev.wait_connack(), 0)
        dev.close()
        # The same token without skn-matching policy is refused by the device-key front.
        answer = raw_connect(D["azure"].port, "dev2", D["pki"], azure_username("dev2"), tok)
        self.assertEqual(answer, bytes([0x20, 2, 0, 5]))

    def test_wrong_signature_refused_v311_code_5(self):
        token = device_token("dev3", key=WRONG_KEY)
        answer = raw_connect(D["azure"].port, "dev3", D["pki"], azure_username("dev3"), token)
        self.assertEqual(answer, bytes([0x20, 2, 0, 5]))
        self.assertEqual(D["azure"].get("/stats")["connections_refused"], {"sas_signature": 1})
        # Neither the token nor its signature is echoed in the events.
        sig = token.split("sig=")[1].split("&")[0]
        events = json.dumps(D["azure"].get("/events"))
        self.assertNotIn(sig, events)
        self.assertNotIn(token, events)

    def test_expired_token_refused_v5_0x87(self):
        dev = Device(D["azure"].port, "dev4", mqtt.MQTTv5, D["pki"], azure_username("dev4"),
                     device_token("dev4", ttl=-10))
        self.assertEqual(int(dev.wait_connack().value), 0x87)
        dev.c.loop_stop()
        self.assertEqual(D["azure"].get("/stats")["connections_refused"], {"sas_expired": 1})

    def test_wrong_username_refused(self):
        answer = raw_connect(D["azure"].port, "dev5", D["pki"],
                             f"{HUB}.azure-devices.net/other/?api-version=2021-04-12",
                             device_token("dev5"))
        self.assertEqual(answer, bytes([0x20, 2, 0, 5]))
        answer = raw_connect(D["azure"].port, "dev5", D["pki"], azure_username("dev5"),
                             device_token("dev5"), level=5)
        self.assertEqual((answer[0], answer[3]), (0x20, 0))  # v5 CONNACK 0 from mosquitto
        self.assertEqual(D["azure"].get("/stats")["connections_refused"], {"username": 1})

    def test_token_expiry_disconnects_connected_device(self):
        dev = Device(D["azure"].port, "dev6", mqtt.MQTTv311, D["pki"], azure_username("dev6"),
                     device_token("dev6", ttl=3))
        self.assertEqual(dev.wait_connack(), 0)
        t0 = time.time()
        self.assertTrue(dev.disconnected.wait(TIMEOUT))
        self.assertLess(time.time() - t0, 4.5)
        dev.c.loop_stop()
        self.assertEqual(D["azure"].get("/stats")["disconnects"], {"sas_expired": 1})

    def test_renewal_reconnect_with_new_token(self):
        dev = Device(D["azure"].port, "dev10", mqtt.MQTTv311, D["pki"], azure_username("dev10"),
                     device_token("dev10", ttl=2))
        self.assertEqual(dev.wait_connack(), 0)
        self.assertTrue(dev.disconnected.wait(TIMEOUT))
        dev.c.loop_stop()
        # What a renewing device does: a new connection with a fresh token.
        dev2 = Device(D["azure"].port, "dev10", mqtt.MQTTv311, D["pki"], azure_username("dev10"),
                      device_token("dev10", ttl=600))
        self.assertEqual(dev2.wait_connack(), 0)
        dev2.close()
        stats = D["azure"].get("/stats")
        self.assertEqual(stats["connections_accepted"], 2)
        self.assertEqual(stats["disconnects"], {"sas_expired": 1})

    def test_twin_get_round_trip(self):
        dev = Device(D["azure"].port, "dev11", mqtt.MQTTv311, D["pki"], azure_username("dev11"),
                     device_token("dev11"))
        self.assertEqual(dev.wait_connack(), 0)
        done = threading.Event()
        dev.c.on_subscribe = lambda *a: done.set()
        dev.c.subscribe("$iothub/twin/res/#", qos=0)
        self.assertTrue(done.wait(TIMEOUT))
        hub = BrokerSubscriber("$iothub/twin/GET/#")
        try:
            dev.c.publish("$iothub/twin/GET/?$rid=7", b"", qos=0)
            self.assertTrue(hub.wait_count(1))
            hub.dev.c.publish("$iothub/twin/res/200/?$rid=7", b'{"desired":{}}', qos=0)
            self.assertTrue(dev.wait_for(lambda: dev.messages))
            self.assertEqual(dev.messages, [("$iothub/twin/res/200/?$rid=7", b'{"desired":{}}')])
        finally:
            hub.close()
            dev.close()

    def test_subscribe_outside_hub_filters_disconnects(self):
        dev = Device(D["azure"].port, "dev12", mqtt.MQTTv311, D["pki"], azure_username("dev12"),
                     device_token("dev12"))
        self.assertEqual(dev.wait_connack(), 0)
        dev.c.subscribe("devices/dev13/messages/devicebound/#", qos=1)
        self.assertTrue(dev.disconnected.wait(TIMEOUT))
        dev.c.loop_stop()
        self.assertEqual(D["azure"].get("/stats")["disconnects"], {"subscribe_not_allowed": 1})

    def test_c2d_message_reaches_subscribed_device(self):
        dev = Device(D["azure"].port, "dev7", mqtt.MQTTv311, D["pki"], azure_username("dev7"),
                     device_token("dev7"))
        self.assertEqual(dev.wait_connack(), 0)
        done = threading.Event()
        dev.c.on_subscribe = lambda *a: done.set()
        dev.c.subscribe("devices/dev7/messages/devicebound/#", qos=1)
        self.assertTrue(done.wait(TIMEOUT))
        cloud = Device(D["mport"], "cloud-c2d", tls=False)
        self.assertEqual(cloud.wait_connack(), 0)
        cloud.c.publish("devices/dev7/messages/devicebound/x", b"c2d", qos=1)
        self.assertTrue(dev.wait_for(lambda: dev.messages))
        self.assertEqual(dev.messages, [("devices/dev7/messages/devicebound/x", b"c2d")])
        cloud.close()
        dev.close()

    def test_topic_outside_hub_topics_disconnects(self):
        dev = Device(D["azure"].port, "dev8", mqtt.MQTTv311, D["pki"], azure_username("dev8"),
                     device_token("dev8"))
        self.assertEqual(dev.wait_connack(), 0)
        dev.c.publish("devices/other/messages/events/", b"x", qos=1)
        self.assertTrue(dev.disconnected.wait(TIMEOUT))
        dev.c.loop_stop()
        self.assertEqual(D["azure"].get("/stats")["disconnects"], {"topic_not_allowed": 1})

    def test_qos2_disconnects_and_retain_is_cleared(self):
        sub = BrokerSubscriber("devices/dev9/messages/events/#")
        try:
            dev = Device(D["azure"].port, "dev9", mqtt.MQTTv311, D["pki"],
                         azure_username("dev9"), device_token("dev9"))
            self.assertEqual(dev.wait_connack(), 0)
            info = dev.c.publish("devices/dev9/messages/events/", b"r", qos=1, retain=True)
            self.assertTrue(dev.wait_for(lambda: info.mid in dev.acks))
            self.assertTrue(sub.wait_count(1))
            dev.c.publish("devices/dev9/messages/events/", b"q", qos=2)
            self.assertTrue(dev.disconnected.wait(TIMEOUT))
            dev.c.loop_stop()
            stats = D["azure"].get("/stats")
            self.assertEqual(stats["retain_ignored"], 1)
            self.assertEqual(stats["disconnects"], {"qos2": 1})
        finally:
            sub.close()
        # Nothing was retained at the broker.
        late = BrokerSubscriber("devices/dev9/messages/events/#")
        try:
            self.assertFalse(late.wait_count(1, timeout=0.5))
        finally:
            late.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
