#!/usr/bin/env python3
"""Self-test of cloud_sink.py: `python3 tests/python/test_cloud_sink.py`.

Starts the sink on a free port with a self-signed certificate (made here with `cryptography`)
and, for every cloud, sends requests authenticated independently of the sink's own code --
botocore for SigV4 (by hand and through botocore's real iot-data and lambda clients), plain hmac
for the Azure SAS tokens, google-auth's signer and jwt.encode for the token assertion (and its
service_account.Credentials refresh), base64 for Basic auth -- and one or more invalid requests,
asserting the statuses, the recorded messages and the test control endpoints.
"""

import base64
import datetime
import hashlib
import hmac
import http.client
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
from urllib.parse import quote, quote_plus, urlencode

import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
import google.auth.crypt
import google.auth.jwt

HERE = os.path.dirname(os.path.abspath(__file__))
SINK = os.path.join(HERE, "cloud_sink.py")

AWS = {"access_key_id": "AKIDSINKTEST0000001", "secret_access_key": "sink-test-secret/key+0",
       "session_token": None, "region": "eu-west-1"}
IOT_HUB_KEY = base64.b64encode(b"iot hub device key, 32 bytes!!!!").decode()
EH_KEY = "event-hubs-send-key="
C8Y = {"tenant": "t123", "username": "dev", "password": "pw:with:colons"}


def make_cert(directory):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cloud-sink-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path = os.path.join(directory, "chain.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def sas(sr_raw, key_bytes, expiry, skn=None):
    """SharedAccessSignature over the sr string exactly as placed in the token."""
    sig = base64.b64encode(hmac.new(key_bytes, f"{sr_raw}\n{expiry}".encode(),
                                    hashlib.sha256).digest()).decode()
    tok = f"SharedAccessSignature sr={sr_raw}&sig={quote(sig, safe='')}&se={expiry}"
    return tok + (f"&skn={skn}" if skn else "")


class CloudSinkTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = cls.tmp.name
        cls.cert, key = make_cert(d)
        cls.sa_path = os.path.join(d, "sa.json")
        # token_uri is rewritten once the port is known: the sink re-reads the file.
        subprocess.run([sys.executable, SINK, "--make-service-account", cls.sa_path,
                        "--token-uri", "https://127.0.0.1:1/token"], check=True)
        config = {"cert": cls.cert, "key": key, "port": 0, "aws": AWS,
                  "azure_iot_hub": {"hub": "myhub", "key": IOT_HUB_KEY, "key_name": None},
                  "event_hubs": {"namespace": "ns", "hub": "telemetry", "key_name": "send",
                                 "key": EH_KEY},
                  "gcp": {"project": "p", "topic": "t", "service_account_file": cls.sa_path,
                          "token_ttl_s": 3600},
                  "lambda": {"function": "fn", "region": "eu-west-1"},
                  "things_cloud": C8Y, "echo": {}}
        cfg_path = os.path.join(d, "sink.json")
        with open(cfg_path, "w") as f:
            json.dump(config, f)
        cls.proc = subprocess.Popen([sys.executable, SINK, "--config", cfg_path],
                                    stdout=subprocess.PIPE, text=True)
        line = cls.proc.stdout.readline()
        if not line.startswith("LISTENING "):
            cls.proc.kill()
            raise RuntimeError(f"sink did not start: {line!r}")
        cls.port = int(line.split()[1])
        cls.host = f"127.0.0.1:{cls.port}"
        cls.token_uri = f"https://{cls.host}/token"
        with open(cls.sa_path) as f:
            cls.sa = json.load(f)
        cls.sa["token_uri"] = cls.token_uri
        with open(cls.sa_path, "w") as f:
            json.dump(cls.sa, f)
        cls.ctx = ssl.create_default_context(cafile=cls.cert)

    @classmethod
    def tearDownClass(cls):
        cls.proc.terminate()
        cls.proc.wait(10)
        cls.proc.stdout.close()
        cls.tmp.cleanup()

    def setUp(self):
        self.request("POST", "/_sink/reset")

    # -- helpers ---------------------------------------------------------------------------

    def request(self, method, path, body=b"", headers=None):
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, dict((k.lower(), v) for k, v in resp.getheaders()), data
        finally:
            conn.close()

    def json_of(self, method, path, body=b"", headers=None):
        status, _, data = self.request(method, path, body, headers)
        self.assertEqual(status, 200, data)
        return json.loads(data)

    def sigv4(self, service, path, body, headers=None, secret=None, region="eu-west-1",
              when=None):
        req = AWSRequest(method="POST", url=f"https://{self.host}{path}", data=body,
                         headers=dict(headers or {}, Host=self.host))
        creds = Credentials(AWS["access_key_id"], secret or AWS["secret_access_key"])
        signer = SigV4Auth(creds, service, region)
        if when is None:
            signer.add_auth(req)
        else:  # a signature made at another time
            import botocore.auth as ba
            orig = ba.get_current_datetime
            ba.get_current_datetime = lambda: when
            try:
                signer.add_auth(req)
            finally:
                ba.get_current_datetime = orig
        return dict(req.headers.items())

    def token(self, **overrides):
        signer = google.auth.crypt.RSASigner.from_service_account_info(self.sa)
        now = int(time.time())
        claims = {"iss": self.sa["client_email"], "scope": "https://www.googleapis.com/auth/pubsub",
                  "aud": self.token_uri, "iat": now, "exp": now + 3600}
        claims.update(overrides)
        assertion = google.auth.jwt.encode(signer, claims).decode()
        form = urlencode({"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                          "assertion": assertion})
        return self.request("POST", "/token", form.encode(),
                            {"Content-Type": "application/x-www-form-urlencoded"})

    def rejected_reasons(self):
        return [r["reason"] for r in self.json_of("GET", "/_sink/rejected")]

    # -- AWS IoT Core ----------------------------------------------------------------------

    def test_aws_iot_core(self):
        path = "/topics/" + quote("sim/440100000000001/up", safe="") + "?qos=1"
        body = b'{"t":21.5}'
        status, _, data = self.request("POST", path, body, self.sigv4("iotdata", path, body))
        self.assertEqual(status, 200, data)
        self.assertEqual(json.loads(data)["message"], "OK")
        acc = self.json_of("GET", "/_sink/accepted?cloud=aws-iot-core")
        self.assertEqual(len(acc), 1)
        self.assertEqual(acc[0]["properties"]["topic"], "sim/440100000000001/up")
        self.assertEqual(base64.b64decode(acc[0]["body_b64"]), body)
        self.assertEqual(acc[0]["headers"]["authorization"], "REDACTED")

        # wrong secret, wrong service name, tampered body, stale date, no auth, too large
        bad = [self.sigv4("iotdata", path, body, secret="wrong"),
               self.sigv4("iot", path, body)]
        for h in bad:
            self.assertEqual(self.request("POST", path, body, h)[0], 403)
        h = self.sigv4("iotdata", path, body)
        self.assertEqual(self.request("POST", path, body + b" ", h)[0], 403)
        old = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) \
            - datetime.timedelta(minutes=10)
        self.assertEqual(self.request("POST", path, body,
                                      self.sigv4("iotdata", path, body, when=old))[0], 403)
        self.assertEqual(self.request("POST", path, body)[0], 403)
        big = b"x" * (128 * 1024 + 1)
        status, headers, _ = self.request("POST", path, big, self.sigv4("iotdata", path, big))
        self.assertEqual(status, 413)
        self.assertEqual(headers["x-amzn-errortype"], "RequestEntityTooLargeException")
        self.assertEqual(self.json_of("GET", "/_sink/stats")["rejected"]["aws-iot-core"], 6)

    def test_aws_iot_core_with_botocore_client(self):
        client = botocore.session.get_session().create_client(
            "iot-data", region_name="eu-west-1", endpoint_url=f"https://{self.host}",
            verify=self.cert, aws_access_key_id=AWS["access_key_id"],
            aws_secret_access_key=AWS["secret_access_key"],
            config=Config(retries={"max_attempts": 1}))
        client.publish(topic="a/b c/d~e", qos=1, payload=b"hello")
        acc = self.json_of("GET", "/_sink/accepted?cloud=aws-iot-core")
        self.assertEqual(acc[0]["properties"]["topic"], "a/b c/d~e")
        with self.assertRaises(client.exceptions.ClientError):  # botocore's error for a 403
            botocore.session.get_session().create_client(
                "iot-data", region_name="eu-west-1", endpoint_url=f"https://{self.host}",
                verify=self.cert, aws_access_key_id=AWS["access_key_id"],
                aws_secret_access_key="wrong",
                config=Config(retries={"max_attempts": 1})).publish(topic="a", payload=b"x")

    # -- AWS Lambda ------------------------------------------------------------------------

    def test_aws_lambda(self):
        path = "/2015-03-31/functions/fn/invocations"
        body = b'{"imsi":"440100000000001"}'
        cc = base64.b64encode(json.dumps({"custom": {"imsi": "440100000000001"}}).encode()).decode()
        status, _, data = self.request(
            "POST", path, body, self.sigv4("lambda", path, body, {"X-Amz-Client-Context": cc}))
        self.assertEqual(status, 200, data)
        self.assertEqual(json.loads(data), {"echo": body.decode(),
                                            "client_context": {"custom": {"imsi": "440100000000001"}}})
        h = self.sigv4("lambda", path, body, {"X-Amz-Invocation-Type": "Event"})
        self.assertEqual(self.request("POST", path, body, h)[0], 202)
        h = self.sigv4("lambda", path, body, {"X-Amz-Invocation-Type": "DryRun"})
        self.assertEqual(self.request("POST", path, body, h)[0], 204)
        # invalid: unknown function, bad signature, bad client context, wrong region
        p2 = "/2015-03-31/functions/other/invocations"
        status, headers, _ = self.request("POST", p2, body, self.sigv4("lambda", p2, body))
        self.assertEqual(status, 404)
        self.assertEqual(headers["x-amzn-errortype"], "ResourceNotFoundException")
        self.assertEqual(self.request("POST", path, body,
                                      self.sigv4("lambda", path, body, secret="x"))[0], 403)
        h = self.sigv4("lambda", path, body, {"X-Amz-Client-Context": "not base64 json!"})
        self.assertEqual(self.request("POST", path, body, h)[0], 400)
        h = self.sigv4("lambda", path, body, region="us-east-1")
        self.assertEqual(self.request("POST", path, body, h)[0], 403)
        self.assertEqual(len(self.json_of("GET", "/_sink/accepted?cloud=aws-lambda")), 2)

    def test_aws_lambda_with_botocore_client(self):
        client = botocore.session.get_session().create_client(
            "lambda", region_name="eu-west-1", endpoint_url=f"https://{self.host}",
            verify=self.cert, aws_access_key_id=AWS["access_key_id"],
            aws_secret_access_key=AWS["secret_access_key"],
            config=Config(retries={"max_attempts": 1}))
        out = client.invoke(FunctionName="fn", Qualifier="live", Payload=b'{"x":1}',
                            ClientContext=base64.b64encode(b'{"custom":{"a":"b"}}').decode())
        self.assertEqual(out["StatusCode"], 200)
        self.assertEqual(json.loads(out["Payload"].read())["echo"], '{"x":1}')

    # -- Azure IoT Hub ---------------------------------------------------------------------

    def test_azure_iot_hub(self):
        dev = "imsi-440100000000001"
        path = f"/devices/{dev}/messages/events?api-version=2021-04-12"
        sr = quote(f"myhub.azure-devices.net/devices/{dev}", safe="")
        key = base64.b64decode(IOT_HUB_KEY)
        good = sas(sr, key, int(time.time()) + 600)
        status, _, data = self.request("POST", path, b"payload",
                                       {"Authorization": good, "iothub-app-imsi": "440100000000001"})
        self.assertEqual(status, 204, data)
        acc = self.json_of("GET", "/_sink/accepted?cloud=azure-iot-hub")
        self.assertEqual(acc[0]["properties"], {"imsi": "440100000000001"})
        self.assertEqual(acc[0]["device_id"], dev)
        # expired, wrong key (not base64-decoded), other device's scope, wrong api-version
        cases = [(sas(sr, key, int(time.time()) - 1), path, 401),
                 (sas(sr, IOT_HUB_KEY.encode(), int(time.time()) + 600), path, 401),
                 (sas(quote("myhub.azure-devices.net/devices/other", safe=""), key,
                      int(time.time()) + 600), path, 401),
                 (good, path.replace("2021-04-12", "2018-06-30"), 400),
                 (None, path, 401)]
        for auth, p, want in cases:
            status, headers, data = self.request("POST", p, b"payload",
                                                 {"Authorization": auth} if auth else {})
            self.assertEqual(status, want, data)
        self.assertIn("expired", " ".join(self.rejected_reasons()))

    # -- Azure Event Hubs ------------------------------------------------------------------

    def test_azure_event_hubs(self):
        sr = quote_plus("https://ns.servicebus.windows.net/telemetry")
        good = sas(sr, EH_KEY.encode(), int(time.time()) + 600, "send")
        status, _, data = self.request(
            "POST", "/telemetry/messages?timeout=60&api-version=2014-01", b'{"t":1}',
            {"Authorization": good, "Content-Type": "application/json",
             "BrokerProperties": '{"PartitionKey":"440100000000001"}', "imsi": "440100000000001"})
        self.assertEqual(status, 201, data)
        batch = [{"Body": "m1", "UserProperties": {"imsi": "1"}},
                 {"Body": "m2", "BrokerProperties": {"PartitionKey": "2"}}]
        status, _, data = self.request(
            "POST", "/telemetry/messages", json.dumps(batch).encode(),
            {"Authorization": good, "Content-Type": "application/vnd.microsoft.servicebus.json"})
        self.assertEqual(status, 201, data)
        acc = self.json_of("GET", "/_sink/accepted?cloud=azure-event-hubs")
        self.assertEqual(len(acc), 3)
        self.assertEqual(acc[0]["broker_properties"], {"PartitionKey": "440100000000001"})
        self.assertEqual(acc[0]["properties"], {"imsi": "440100000000001"})
        self.assertEqual([a["batch_size"] for a in acc], [1, 2, 2])
        self.assertEqual(acc[1]["call"], acc[2]["call"])
        self.assertEqual(base64.b64decode(acc[2]["body_b64"]), b"m2")
        # a namespace-scoped token (as in Microsoft's examples) also works
        ns_tok = sas("ns.servicebus.windows.net", EH_KEY.encode(), int(time.time()) + 60, "send")
        self.assertEqual(self.request("POST", "/telemetry/messages", b"x",
                                      {"Authorization": ns_tok})[0], 201)
        # invalid: key base64-decoded, expired, wrong skn, malformed batch, unknown hub
        cases = [(sas(sr, base64.b64decode(EH_KEY), int(time.time()) + 600, "send"), b"x", {}, 401),
                 (sas(sr, EH_KEY.encode(), int(time.time()) - 5, "send"), b"x", {}, 401),
                 (sas(sr, EH_KEY.encode(), int(time.time()) + 600, "listen"), b"x", {}, 401),
                 (good, b'[{"Body": 1}]',
                  {"Content-Type": "application/vnd.microsoft.servicebus.json"}, 400),
                 (good, b"[not json", {"Content-Type": "application/vnd.microsoft.servicebus.json"},
                  400)]
        for auth, body, extra, want in cases:
            status, _, data = self.request("POST", "/telemetry/messages", body,
                                           dict(extra, Authorization=auth))
            self.assertEqual(status, want, data)
        other = quote_plus("https://ns.servicebus.windows.net/other")
        self.assertEqual(self.request("POST", "/other/messages", b"x", {
            "Authorization": sas(other, EH_KEY.encode(), int(time.time()) + 60, "send")})[0], 404)

    # -- Google token endpoint and Pub/Sub -------------------------------------------------

    def test_gcp_token_and_pubsub(self):
        status, _, data = self.token()
        self.assertEqual(status, 200, data)
        tok = json.loads(data)
        self.assertEqual(tok["token_type"], "Bearer")
        self.assertEqual(tok["expires_in"], 3600)
        body = {"messages": [
            {"data": base64.b64encode(b"one").decode(), "attributes": {"imsi": "1"},
             "orderingKey": "1"},
            {"data": base64.b64encode(b"two").decode()}]}
        path = "/v1/projects/p/topics/t:publish"
        auth = {"Authorization": "Bearer " + tok["access_token"],
                "Content-Type": "application/json"}
        status, _, data = self.request("POST", path, json.dumps(body).encode(), auth)
        self.assertEqual(status, 200, data)
        ids = json.loads(data)["messageIds"]
        self.assertEqual(len(ids), 2)
        acc = self.json_of("GET", "/_sink/accepted?cloud=gcp-pubsub")
        self.assertEqual([a["message_id"] for a in acc], ids)
        self.assertEqual(acc[0]["attributes"], {"imsi": "1"})
        self.assertEqual(acc[0]["ordering_key"], "1")
        self.assertEqual(base64.b64decode(acc[1]["body_b64"]), b"two")
        # invalid publishes
        status, _, data = self.request("POST", path, json.dumps(body).encode(),
                                       {"Authorization": "Bearer made-up"})
        self.assertEqual(status, 401)
        self.assertEqual(json.loads(data)["error"]["status"], "UNAUTHENTICATED")
        for bad in ({"messages": []}, {"messages": [{"data": "!!notb64"}]},
                    {"messages": [{"data": "aGk=", "attributes": {"n": 1}}]}, {"msgs": []}):
            status, _, data = self.request("POST", path, json.dumps(bad).encode(), auth)
            self.assertEqual(status, 400, bad)
            self.assertEqual(json.loads(data)["error"]["status"], "INVALID_ARGUMENT")
        # invalid assertions: wrong audience, too long-lived, wrong scope, expired, other key
        now = int(time.time())
        for overrides in ({"aud": "https://example.com/token"}, {"exp": now + 7200},
                          {"scope": "https://www.googleapis.com/auth/cloud-platform.read-only"},
                          {"iat": now - 7200, "exp": now - 3700}):
            status, _, data = self.token(**overrides)
            self.assertEqual(status, 400, overrides)
            self.assertEqual(json.loads(data)["error"], "invalid_grant"
                             if "scope" not in overrides else "invalid_scope")
        self.assertEqual(self.json_of("GET", "/_sink/stats")["tokens_issued"], 1)

    def test_gcp_with_google_auth_credentials(self):
        import requests
        import google.auth.transport.requests
        from google.oauth2 import service_account
        creds = service_account.Credentials.from_service_account_info(
            self.sa, scopes=["https://www.googleapis.com/auth/pubsub"])
        session = requests.Session()
        session.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment wins over verify
        session.verify = self.cert
        creds.refresh(google.auth.transport.requests.Request(session))
        self.assertTrue(creds.valid)
        status, _, data = self.request(
            "POST", "/v1/projects/p/topics/t:publish",
            b'{"messages":[{"data":"aGk="}]}', {"Authorization": "Bearer " + creds.token})
        self.assertEqual(status, 200, data)

    # -- Things Cloud ----------------------------------------------------------------------

    def test_things_cloud(self):
        basic = "Basic " + base64.b64encode(
            f"{C8Y['tenant']}/{C8Y['username']}:{C8Y['password']}".encode()).decode()
        mt = "application/vnd.com.nsn.cumulocity.measurement+json"
        et = "application/vnd.com.nsn.cumulocity.event+json"
        meas = {"source": {"id": "12345"}, "time": "2024-05-01T10:00:00.000Z",
                "type": "c8y_Temperature", "c8y_Temperature": {"T": {"value": 21.5, "unit": "C"}}}
        hdr = {"Authorization": basic, "Content-Type": mt, "Accept": mt}
        status, _, data = self.request("POST", "/measurement/measurements",
                                       json.dumps(meas).encode(), hdr)
        self.assertEqual(status, 201, data)
        created = json.loads(data)
        self.assertIn("id", created)
        self.assertTrue(created["self"].endswith("/measurement/measurements/" + created["id"]))
        ev = {"source": {"id": "12345"}, "time": "2024-05-01T10:00:00+09:00",
              "type": "c8y_Attach", "text": "attached"}
        status, _, data = self.request("POST", "/event/events", json.dumps(ev).encode(),
                                       {"Authorization": basic, "Content-Type": et, "Accept": et})
        self.assertEqual(status, 201, data)
        # invalid: wrong password, non-numeric value, event without text, wrong content type
        wrong = "Basic " + base64.b64encode(b"t123/dev:nope").decode()
        self.assertEqual(self.request("POST", "/measurement/measurements",
                                      json.dumps(meas).encode(),
                                      dict(hdr, Authorization=wrong))[0], 401)
        bad = dict(meas, c8y_Temperature={"T": {"value": "21.5"}})
        status, _, data = self.request("POST", "/measurement/measurements",
                                       json.dumps(bad).encode(), hdr)
        self.assertEqual(status, 422, data)
        self.assertEqual(json.loads(data)["error"], "measurement/Unprocessable Entity")
        ev.pop("text")
        self.assertEqual(self.request("POST", "/event/events", json.dumps(ev).encode(),
                                      {"Authorization": basic, "Content-Type": et,
                                       "Accept": et})[0], 422)
        self.assertEqual(self.request("POST", "/measurement/measurements",
                                      json.dumps(meas).encode(),
                                      dict(hdr, **{"Content-Type": "application/json"}))[0], 415)

    # -- control endpoints -----------------------------------------------------------------

    def test_fail_injection_and_stats(self):
        spec = {"cloud": "things-cloud", "status": 429, "count": 2, "retry_after": "3"}
        self.json_of("POST", "/_sink/fail", json.dumps(spec).encode())
        basic = "Basic " + base64.b64encode(
            f"{C8Y['tenant']}/{C8Y['username']}:{C8Y['password']}".encode()).decode()
        mt = "application/vnd.com.nsn.cumulocity.measurement+json"
        meas = json.dumps({"source": {"id": "1"}, "time": "2024-05-01T10:00:00Z", "type": "x",
                           "x": {"s": {"value": 1}}}).encode()
        hdr = {"Authorization": basic, "Content-Type": mt, "Accept": mt}
        for _ in range(2):
            status, headers, _ = self.request("POST", "/measurement/measurements", meas, hdr)
            self.assertEqual(status, 429)
            self.assertEqual(headers["retry-after"], "3")
        self.assertEqual(self.request("POST", "/measurement/measurements", meas, hdr)[0], 201)
        # a delay, then handled normally
        self.json_of("POST", "/_sink/fail", json.dumps(
            {"cloud": "token", "delay_ms": 300, "count": 1}).encode())
        t0 = time.monotonic()
        self.assertEqual(self.token()[0], 200)
        self.assertGreaterEqual(time.monotonic() - t0, 0.3)
        self.json_of("POST", "/_sink/fail", json.dumps(
            {"cloud": "gcp-pubsub", "status": 503, "count": 1}).encode())
        status, _, data = self.request("POST", "/v1/projects/p/topics/t:publish", b"{}", {})
        self.assertEqual(status, 503)
        self.assertEqual(json.loads(data)["error"]["status"], "UNAVAILABLE")
        stats = self.json_of("GET", "/_sink/stats")
        self.assertEqual(stats["calls"]["things-cloud"], 3)
        self.assertEqual(stats["accepted"]["things-cloud"], 1)
        self.assertEqual(stats["rejected"]["things-cloud"], 2)
        self.assertEqual(stats["tokens_issued"], 1)
        self.assertEqual(len(self.json_of("GET", "/_sink/rejected")), 3)
        self.json_of("POST", "/_sink/reset")
        stats = self.json_of("GET", "/_sink/stats")
        self.assertEqual(stats, {"calls": {}, "accepted": {}, "rejected": {}, "tokens_issued": 0})

    def test_echo(self):
        body = b'{"seq":7,"sent_ns":1,"from":"probe-e2e"}'
        status, headers, data = self.request("POST", "/echo/node-a", body,
                                             {"Content-Type": "application/json"})
        self.assertEqual(status, 200)
        self.assertEqual(data, body)
        self.assertEqual(headers["content-type"], "application/json")
        self.assertEqual(self.request("GET", "/echo", b"")[0], 405)
        self.assertEqual(self.request("POST", "/echoes", body)[0], 404)
        self.assertEqual(self.json_of("GET", "/_sink/stats")["accepted"]["echo"], 1)

    def test_keep_alive(self):
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=10)
        try:
            for _ in range(3):
                conn.request("GET", "/_sink/stats")
                resp = conn.getresponse()
                resp.read()
                self.assertEqual(resp.status, 200)
                self.assertFalse(resp.will_close)
        finally:
            conn.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
