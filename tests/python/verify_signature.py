#!/usr/bin/env python3
"""Verify simgate origin signatures (X-Simgate-Signature: v1=...), standard library only.

This is the reference verifier of docs/signature.md, written from that document and not from
simgate's Rust code: tests/signature_python.rs checks simgate's signatures with it. Operators may
copy it or import it:

    from verify_signature import Verifier
    v = Verifier(secret=open("/etc/simgate/group.secret", "rb").read())
    # HTTP: method and request-target exactly as received (raw, not URL-decoded), all headers,
    # the body after transfer decoding.
    fields = v.verify_http(method, raw_target, headers, body)        # raises Rejected
    # MQTT 5: the topic name, the PUBLISH's user properties (in order, duplicates kept), payload.
    fields = v.verify_mqtt(topic, user_properties, payload)          # raises Rejected

On success both return the verified identity fields as a list of (name, value) pairs of bytes,
sorted as signed; trust only those (any other X-Simgate-* header or property was not signed).

As a command (used by the tests): `verify_signature.py CASES.jsonl [--now SECONDS]` reads one JSON
object per line, each one of three kinds (all byte strings in hex):
    {"kind": "raw", "id": "...", "secret_hex": "...", "method_hex": "...", "target_hex": "...",
     "timestamp": "1700000000", "signature": "v1=...",
     "fields": [["name_hex", "value_hex"], ...], "body_hex": "..."}
    {"kind": "http", "id", "secret_hex", "method_hex", "target_hex", "body_hex",
     "headers": [["X-Simgate-Imsi", "value_hex"], ...]}     (timestamp and signature among them)
    {"kind": "mqtt", "id", "secret_hex", "target_hex" (the topic), "body_hex",
     "user_properties": [["imsi", "value_hex"], ...]}       (timestamp and signature among them)
(`secret_hex` may also be a list: the secrets of a rotation) and prints `<id> valid`, or
`<id> invalid <reason>`, one line each, in order; lines with the same secret(s) share one replay
guard. Exit status 0 when it read the file (whatever the verdicts), 2 on
bad input. `--explain` also prints each canonical string (as a Python bytes literal) to stderr.
"""

import argparse
import hashlib
import hmac
import json
import re
import sys
import time

VERSION_LINE = b"simgate-v1"
SIG_PREFIX = "v1="
WINDOW_SECONDS = 300

TIMESTAMP_HEADER = "x-simgate-timestamp"   # HTTP header names compare case-insensitively
SIGNATURE_HEADER = "x-simgate-signature"
TIMESTAMP_PROPERTY = "x-simgate-timestamp"  # MQTT property names compare exactly
SIGNATURE_PROPERTY = "x-simgate-signature"

# HTTP header (lowercase) -> field name. Tags: x-simgate-tag-<key> -> tag.<key>.
HTTP_FIELDS = {
    "x-simgate-imsi": "imsi",
    "x-simgate-imei": "imei",
    "x-simgate-msisdn": "msisdn",
    "x-simgate-sim-id": "sim_id",
    "x-simgate-name": "name",
}
HTTP_TAG_PREFIX = "x-simgate-tag-"
MQTT_FIELDS = {"imsi", "imei", "msisdn", "sim_id", "name"}
MQTT_TAG_PREFIX = "tag."

_TIMESTAMP_RE = re.compile(r"0|[1-9][0-9]{0,19}")
_SIGNATURE_RE = re.compile(r"v1=[0-9a-f]{64}")


class Rejected(Exception):
    """The message is not proven to come through simgate; str(e) says why."""


def escape(data: bytes, is_name: bool = False) -> bytes:
    """docs/signature.md: bytes 0x00-0x1F, '%', 0x7F-0xFF (and '=' in names) become %XX."""
    out = bytearray()
    for b in data:
        if b < 0x20 or b >= 0x7F or b == 0x25 or (is_name and b == 0x3D):
            out += b"%%%02X" % b
        else:
            out.append(b)
    return bytes(out)


def canonical_string(method: bytes, target: bytes, timestamp: str,
                     fields: list, body: bytes) -> bytes:
    """The v1 canonical string. `timestamp` is the decimal text; `fields` (name, value) bytes."""
    lines = [VERSION_LINE, escape(method), escape(target), timestamp.encode("ascii")]
    for name, value in sorted(fields):  # bytes tuples: byte order of name, then value
        lines.append(escape(name, is_name=True) + b"=" + escape(value))
    lines.append(hashlib.sha256(body).hexdigest().encode("ascii"))
    return b"\n".join(lines)


def sign(secret: bytes, canonical: bytes) -> str:
    return SIG_PREFIX + hmac.new(secret, canonical, hashlib.sha256).hexdigest()


def _as_bytes(s) -> bytes:
    return s if isinstance(s, bytes) else s.encode("utf-8", "surrogateescape")


def _as_text(s):
    """A header/property value as str, or None when absent or not ASCII."""
    if isinstance(s, bytes):
        try:
            return s.decode("ascii")
        except UnicodeDecodeError:
            return None
    return s


class Verifier:
    """Checks signatures with a group's secret, a time window, and a replay memory.

    `secret` is the group's secret (bytes), or a list of them while a key rotation is under way:
    a signature made with any of them is accepted (docs/signature.md, "Key rotation").
    """

    def __init__(self, secret, window: int = WINDOW_SECONDS, clock=time.time):
        self.secrets = [secret] if isinstance(secret, bytes) else list(secret)
        self.window = window
        self.clock = clock
        self._seen = {}  # signature -> timestamp, forgotten once outside the window

    def verify(self, method, target, timestamp, signature, fields, body, explain=None):
        """Core check; `fields` are (name, value) pairs as signed (str or bytes)."""
        timestamp, signature = _as_text(timestamp), _as_text(signature)
        if not isinstance(timestamp, str) or not _TIMESTAMP_RE.fullmatch(timestamp):
            raise Rejected("timestamp missing or not plain decimal")
        if not isinstance(signature, str) or not _SIGNATURE_RE.fullmatch(signature):
            raise Rejected("signature missing or not v1=<64 lowercase hex>")
        pairs = [(_as_bytes(n), _as_bytes(v)) for n, v in fields]
        canonical = canonical_string(_as_bytes(method), _as_bytes(target), timestamp,
                                     pairs, _as_bytes(body))
        if explain is not None:
            explain(canonical)
        # Every secret is tried (no early exit), so the time taken does not tell which matched.
        matched = False
        for secret in self.secrets:
            expected = sign(secret, canonical)
            matched |= hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii"))
        if not matched:
            raise Rejected("signature does not match")
        # Only an authentic timestamp is worth judging: window and replay after the MAC.
        now = int(self.clock())
        ts = int(timestamp)
        if abs(now - ts) > self.window:
            raise Rejected("timestamp outside the %d s window" % self.window)
        self._seen = {s: t for s, t in self._seen.items() if abs(now - t) <= self.window}
        if signature in self._seen:
            raise Rejected("replayed")
        self._seen[signature] = ts
        return sorted(pairs)

    def verify_http(self, method, target, headers, body, explain=None):
        """`headers`: iterable of (name, value); repeated headers kept (each is a field)."""
        timestamp = signature = None
        fields = []
        for name, value in headers:
            lname = name.lower()
            if lname == TIMESTAMP_HEADER:
                if timestamp is not None:
                    raise Rejected("two timestamps")
                timestamp = value
            elif lname == SIGNATURE_HEADER:
                if signature is not None:
                    raise Rejected("two signatures")
                signature = value
            elif lname in HTTP_FIELDS:
                fields.append((HTTP_FIELDS[lname], value))
            elif lname.startswith(HTTP_TAG_PREFIX):
                fields.append(("tag." + lname[len(HTTP_TAG_PREFIX):], value))
        return self.verify(method, target, timestamp, signature, fields, body, explain)

    def verify_mqtt(self, topic, user_properties, payload, explain=None):
        """`user_properties`: the PUBLISH's (name, value) pairs, names compared exactly."""
        timestamp = signature = None
        fields = []
        for name, value in user_properties:
            if name == TIMESTAMP_PROPERTY:
                if timestamp is not None:
                    raise Rejected("two timestamps")
                timestamp = value
            elif name == SIGNATURE_PROPERTY:
                if signature is not None:
                    raise Rejected("two signatures")
                signature = value
            elif name in MQTT_FIELDS or name.startswith(MQTT_TAG_PREFIX):
                fields.append((name, value))
        return self.verify(b"PUBLISH", topic, timestamp, signature, fields, payload, explain)


def _main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cases", help="JSON lines file (see the module doc)")
    parser.add_argument("--now", type=int, help="Unix seconds to judge the window against")
    parser.add_argument("--explain", action="store_true")
    args = parser.parse_args(argv)
    clock = (lambda: args.now) if args.now is not None else time.time
    verifiers = {}
    explain = None
    if args.explain:
        def explain(c):
            print(repr(c), file=sys.stderr)
    try:
        with open(args.cases, encoding="utf-8") as f:
            cases = [json.loads(line) for line in f if line.strip()]
        for case in cases:
            given = case["secret_hex"]
            secrets = tuple(bytes.fromhex(x) for x in ([given] if isinstance(given, str) else given))
            v = verifiers.setdefault(secrets, Verifier(secrets, clock=clock))
            target = bytes.fromhex(case["target_hex"])
            body = bytes.fromhex(case["body_hex"])
            kind = case["kind"]
            try:
                if kind == "raw":
                    fields = [(bytes.fromhex(n), bytes.fromhex(x)) for n, x in case["fields"]]
                    v.verify(bytes.fromhex(case["method_hex"]), target, case["timestamp"],
                             case["signature"], fields, body, explain)
                elif kind == "http":
                    headers = [(n, bytes.fromhex(x)) for n, x in case["headers"]]
                    v.verify_http(bytes.fromhex(case["method_hex"]), target, headers, body,
                                  explain)
                elif kind == "mqtt":
                    props = [(n, bytes.fromhex(x)) for n, x in case["user_properties"]]
                    v.verify_mqtt(target, props, body, explain)
                else:
                    raise ValueError("unknown kind %r" % kind)
                print(case["id"], "valid")
            except Rejected as e:
                print(case["id"], "invalid", e)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print("verify_signature.py: bad input: %r" % (e,), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
