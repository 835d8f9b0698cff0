#!/usr/bin/env python3
"""A real MQTT device for simgate's integration tests, built on paho-mqtt 2.x (Eclipse Paho).

The Rust tests (tests/mqtt_paho.rs through tests/common/paho.rs) start one process per device:

    python3 tests/paho/device.py --port PORT --id CLIENT_ID --version 3.1.1|5 [options]

`--persistent` asks for a session kept across connections (3.1.1: Clean Session = 0; 5: Clean
Start = 0). paho refuses it with an empty `--id` under 3.1.1 (a ValueError, reported on
stderr), so that case is tested with raw packets (tests/mqtt_session.rs).

It connects once (no automatic reconnect) and then reports everything that happens as one JSON
object per line on stdout ("connack", "suback", "published", "message", "disconnected",
"error"). It takes commands as JSON lines on stdin:

    {"op": "subscribe", "filter": "cmd/#", "qos": 1}
    {"op": "publish", "tag": "a", "topic": "t", "payload": "x", "qos": 1, "retain": false,
     "props": {"user": [["k", "v"]], "content_type": "...", "message_expiry": 60,
               "response_topic": "...", "correlation_data": "hex", "payload_format": 1}}
    {"op": "disconnect"}                      (a clean DISCONNECT, then exit 0)

An abnormal disconnect is the test killing this process (SIGKILL): the kernel closes the socket
and no DISCONNECT is sent.

What it does not do: TLS, reconnects, or anything the commands above do not name. If paho-mqtt
2.x is not importable it prints an "error" event naming `pip install paho-mqtt` and exits 3.
"""

import argparse
import json
import sys
import threading

try:
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    _ = mqtt.CallbackAPIVersion.VERSION2
except (ImportError, AttributeError) as e:
    print(
        json.dumps(
            {
                "event": "error",
                "error": f"paho-mqtt 2.x is not importable ({e}): pip install paho-mqtt",
            }
        ),
        flush=True,
    )
    sys.exit(3)

OUT = threading.Lock()
# A "published" event carries the tag of its publish command. paho may report the
# acknowledgement before publish() has returned the mid (and calls on_publish holding its own
# lock, so publish() must not be called under ours): whichever side comes second emits.
TAG_LOCK = threading.Lock()
TAGS = {}  # mid -> tag, publish() returned first
EARLY = {}  # mid -> event, on_publish came first


def emit(obj):
    with OUT:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def props_json(props):
    if props is None:
        return {}
    try:
        return props.json()
    except Exception:  # paho gives an empty object for 3.1.1; be lenient
        return {}


def code(rc):
    return rc.value if hasattr(rc, "value") else int(rc)


def publish_properties(spec):
    if not spec:
        return None
    p = Properties(PacketTypes.PUBLISH)
    if "user" in spec:
        p.UserProperty = [tuple(kv) for kv in spec["user"]]
    if "content_type" in spec:
        p.ContentType = spec["content_type"]
    if "message_expiry" in spec:
        p.MessageExpiryInterval = spec["message_expiry"]
    if "response_topic" in spec:
        p.ResponseTopic = spec["response_topic"]
    if "correlation_data" in spec:
        p.CorrelationData = bytes.fromhex(spec["correlation_data"])
    if "payload_format" in spec:
        p.PayloadFormatIndicator = spec["payload_format"]
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--id", default="")
    ap.add_argument("--version", choices=["3.1.1", "5"], required=True)
    ap.add_argument("--keepalive", type=int, default=60)
    ap.add_argument("--bind", default="", help="source address to connect from")
    ap.add_argument("--will-topic")
    ap.add_argument("--will-payload", default="")
    ap.add_argument("--will-qos", type=int, default=0)
    ap.add_argument("--will-retain", action="store_true")
    ap.add_argument("--persistent", action="store_true", help="Clean Session/Start = 0")
    args = ap.parse_args()

    v5 = args.version == "5"
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=args.id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else not args.persistent,
        reconnect_on_failure=False,
    )
    done = threading.Event()

    def on_connect(_c, _u, flags, rc, props):
        emit(
            {
                "event": "connack",
                "reason_code": code(rc),
                "session_present": bool(flags.session_present),
                "properties": props_json(props),
            }
        )
        if code(rc) >= 0x80:
            done.set()

    def on_subscribe(_c, _u, mid, rcs, props):
        emit(
            {
                "event": "suback",
                "mid": mid,
                "reason_codes": [code(r) for r in rcs],
                "properties": props_json(props),
            }
        )

    def on_publish(_c, _u, mid, rc, props):
        event = {
            "event": "published",
            "mid": mid,
            "reason_code": code(rc),
            "properties": props_json(props),
        }
        with TAG_LOCK:
            if mid in TAGS:
                event["tag"] = TAGS.pop(mid)
                emit(event)
            else:
                EARLY[mid] = event

    def on_message(_c, _u, msg):
        emit(
            {
                "event": "message",
                "topic": msg.topic,
                "payload": msg.payload.decode("utf-8", "replace"),
                "qos": msg.qos,
                "retain": bool(msg.retain),
                "properties": props_json(getattr(msg, "properties", None)),
            }
        )

    def on_disconnect(_c, _u, _flags, rc, props):
        emit(
            {
                "event": "disconnected",
                "reason_code": code(rc),
                "properties": props_json(props),
            }
        )
        done.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_publish = on_publish
    client.on_message = on_message
    client.on_disconnect = on_disconnect
    if args.will_topic is not None:
        client.will_set(
            args.will_topic, args.will_payload, qos=args.will_qos, retain=args.will_retain
        )
    try:
        if v5:
            client.connect(
                args.host,
                args.port,
                args.keepalive,
                bind_address=args.bind,
                clean_start=not args.persistent,
            )
        else:
            client.connect(args.host, args.port, args.keepalive, bind_address=args.bind)
    except OSError as e:
        emit({"event": "error", "error": f"connect to {args.host}:{args.port}: {e}"})
        sys.exit(1)
    client.loop_start()

    def commands():
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            try:
                cmd = json.loads(line)
                op = cmd["op"]
                if op == "subscribe":
                    client.subscribe(cmd["filter"], qos=cmd.get("qos", 0))
                elif op == "publish":
                    info = client.publish(
                        cmd["topic"],
                        cmd.get("payload", ""),
                        qos=cmd.get("qos", 0),
                        retain=cmd.get("retain", False),
                        properties=publish_properties(cmd.get("props")),
                    )
                    if info.rc != mqtt.MQTT_ERR_SUCCESS:
                        emit({"event": "error", "error": f"publish: rc {info.rc}"})
                        continue
                    with TAG_LOCK:
                        if info.mid in EARLY:
                            event = EARLY.pop(info.mid)
                            event["tag"] = cmd.get("tag")
                            emit(event)
                        else:
                            TAGS[info.mid] = cmd.get("tag")
                elif op == "disconnect":
                    client.disconnect()
                    return
                else:
                    emit({"event": "error", "error": f"unknown op {op!r}"})
            except Exception as e:  # report, never die silently
                emit({"event": "error", "error": f"{type(e).__name__}: {e}"})
        # stdin closed: the test is gone; leave without DISCONNECT.
        done.set()

    threading.Thread(target=commands, daemon=True).start()
    done.wait()
    client.loop_stop()


if __name__ == "__main__":
    main()
