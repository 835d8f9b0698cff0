#!/usr/bin/env python3
"""A local "contract sink" for simgate's cloud HTTPS adapters: one TLS server that checks each
request the way the cloud does and answers the way the cloud does (errors included).

    python3 tests/python/cloud_sink.py --config sink.json      # prints "LISTENING <port>" when ready
    python3 tests/python/cloud_sink.py --make-service-account OUT.json --token-uri URI

sink.json (any cloud section may be absent; its paths then answer 404):
    {"cert": "chain.pem", "key": "key.pem", "port": 0,
     "aws": {"access_key_id", "secret_access_key", "session_token": null, "region"},
     "azure_iot_hub": {"hub", "key" (base64), "key_name" (policy name, or null for a device key)},
     "event_hubs": {"namespace", "hub", "key_name", "key" (used as-is)},
     "gcp": {"project", "topic", "service_account_file", "token_ttl_s"},
     "lambda": {"function", "region"},
     "things_cloud": {"tenant", "username", "password"},
     "echo": {}}

What is checked, per cloud (the cloud's own status and an error body naming what failed):
  aws-iot-core     POST /topics/{url-encoded topic}[?qos=0|1]. SigV4, signing name "iotdata"
                   (botocore's iot-data service model: metadata.signingName), region from "aws".
                   The signature is recomputed with botocore's SigV4Auth over the request as
                   received (method, raw path + query, the headers named in SignedHeaders, body),
                   at the request's own X-Amz-Date (|skew| <= 5 min); access key, credential scope
                   (date/region/service) and, if configured, X-Amz-Security-Token are compared.
                   A signed X-Amz-Content-SHA256 must be the body's SHA-256. Body > 131072 -> 413.
                   Missing or bad auth -> 403. OK -> 200 {"message":"OK","traceId":...}.
  azure-iot-hub    POST /devices/{id}/messages/events?api-version=2021-04-12 (other -> 400).
                   SharedAccessSignature parsed with azure-iot-device's own
                   sastoken.get_sastoken_info_from_string; sig recomputed with its
                   SymmetricKeySigningMechanism (base64-decoded key, HMAC-SHA256) over
                   "{sr as it appears in the token}\\n{se}" -- the string the SDK signs. Scope: with
                   a key_name, skn must equal it and sr be the hub or this device; without, no skn
                   and sr must be {hub}.azure-devices.net/devices/{id}. Expired or bad -> 401.
                   Body > 262144 (the D2C limit) -> 413. OK -> 204; iothub-app-* headers become
                   the message's properties.
  azure-event-hubs POST /{hub}/messages or /{hub}/partitions/{p}/messages. SAS with skn == key_name;
                   sig recomputed with azure-eventhub's own _pyamqp.utils.generate_sas_token (key
                   used as UTF-8 bytes, string-to-sign quote_plus(sr)); when the token's sr is not
                   in quote_plus form (e.g. .NET's lower-case %3a) plain hmac over the sr exactly as
                   sent is used, which is what Service Bus verifies. sr (decoded, scheme optional,
                   case-insensitive) must be the namespace or namespace/hub -- the docs' examples use
                   the bare namespace host. Expired/bad -> 401, unknown hub -> 404. Batch
                   (Content-Type application/vnd.microsoft.servicebus.json): JSON array of
                   {"Body": str, "BrokerProperties": {}, "UserProperties": {}, "IsBodyBase64": bool},
                   malformed -> 400. Request > 1 MiB -> 413. OK -> 201, empty body.
  gcp-pubsub       POST /v1/projects/{p}/topics/{t}:publish with a Bearer token this sink issued and
                   not expired (else 401 UNAUTHENTICATED); unknown topic -> 404 NOT_FOUND; body:
                   1..1000 messages, <= 10 MB, data base64 (standard or url-safe, as proto3 JSON
                   accepts), data or >= 1 attribute, <= 100 attributes, string keys (1..256 bytes,
                   not "goog*") and values (<= 1024 bytes), orderingKey a string; else 400
                   INVALID_ARGUMENT. OK -> 200 {"messageIds": [...]} in order.
  token            POST /token, form grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer &
                   assertion=JWT, verified with google-auth's google.auth.jwt.decode against the
                   public key derived from the service-account file's private_key (re-read when it
                   changes, so tests may write it after the sink started); alg RS256, kid (if
                   present) == private_key_id, iss == client_email, scope includes .../auth/pubsub,
                   exp - iat <= 3600, not expired (30 s skew), aud one of: the file's token_uri,
                   https://{Host}/token, https://oauth2.googleapis.com/token. Bad -> 400
                   invalid_grant. OK -> 200 {"access_token","expires_in","token_type":"Bearer"}.
  aws-lambda       POST /2015-03-31/functions/{fn|arn}/invocations[?Qualifier=q]; SigV4 service
                   "lambda", region from "lambda", as aws-iot-core. Unknown function -> 404
                   ResourceNotFoundException. X-Amz-Invocation-Type Event -> 202, RequestResponse
                   (default) -> 200 {"echo": body, "client_context": ...}, DryRun -> 204.
                   X-Amz-Client-Context must be base64 JSON <= 3583 bytes (else 400). Payload >
                   6 MiB sync / 1 MiB async -> 413.
  things-cloud     POST /measurement/measurements, /event/events; Content-Type (else 415) and
                   Accept (else 406) the resource's vnd.com.nsn.cumulocity media type; Basic auth
                   "{tenant}/{user}:{password}" (else 401). Measurement: source.id string, time
                   ISO-8601 with zone, type string, >= 1 fragment whose series all have a numeric
                   value; event: source.id, time, type, text. Invalid -> 422. OK -> 201 + object.

  echo             POST /echo or /echo/...: no auth, no checks (not a cloud: the HTTPS server
                   simgate's end-to-end probe needs). OK -> 200 with the request body as the
                   response body and the request's Content-Type.

What is NOT checked or not like the cloud:
  - No mutual TLS (AWS X.509 auth), no ALPN, no SNI checks; one Host serves every cloud, so Host is
    only used as signed/as-received, never matched against a cloud endpoint name.
  - SigV4: X-Amz-Date is required (the Date-header variant is not accepted); the skew window is
    5 minutes as the brief asks (AWS allows 15 for most services). Query strings are canonicalised
    from the raw query as botocore does (split on '&', sorted, not re-encoded).
  - No IAM/policy evaluation, quotas, throttling or retained/QoS semantics beyond the checks above.
  - Azure: only SAS auth (no Entra ID bearer tokens). Error bodies are JSON everywhere: real
    Event Hubs answers errors as XML <Error><Code/><Detail/></Error>; here it is
    {"error": {"code", "message"}} to keep one format for the tests.
  - Pub/Sub: no message-size-per-message or ordering-enabled-topic checks.
  - Cumulocity: no managed-object existence check for source.id, no per-fragment schema beyond
    numeric series values.

Test control (no auth): POST /_sink/fail {"cloud","status","count","retry_after","delay_ms"},
GET /_sink/accepted[?cloud=X], GET /_sink/rejected, GET /_sink/stats, POST /_sink/reset.

Verified against the installed sources: botocore 1.43 (iot-data service-2 signingName "iotdata", lambda
"lambda"; SigV4Auth internals), azure-iot-device 2.14 (sastoken.py, signing_mechanism.py),
azure-eventhub 5.15 (_pyamqp/utils.py generate_sas_token uses quote_plus and the raw key),
google-auth 2.63 (jwt.decode(certs=PEM, audience=list)), Microsoft Learn "Send event",
"Send batch events" and "Event Hubs runtime REST" pages (201, sr=<namespace host>, batch JSON).
Secrets are never printed: Authorization and X-Amz-Security-Token are stored as "REDACTED".
"""

import argparse
import base64
import binascii
import datetime
import hashlib
import hmac
import json
import os
import re
import secrets
import socket
import ssl
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, quote_plus, unquote, unquote_plus, urlsplit

CLOUDS = ("aws-iot-core", "azure-iot-hub", "azure-event-hubs", "gcp-pubsub", "aws-lambda",
          "things-cloud", "token", "echo")

AWS_IOT_MAX_BODY = 128 * 1024
IOT_HUB_MAX_BODY = 256 * 1024
EVENT_HUBS_MAX_BODY = 1024 * 1024
PUBSUB_MAX_BODY = 10 * 1000 * 1000
PUBSUB_MAX_MESSAGES = 1000
LAMBDA_MAX_SYNC = 6 * 1024 * 1024
LAMBDA_MAX_ASYNC = 1024 * 1024
LAMBDA_MAX_CLIENT_CONTEXT = 3583
SIGV4_SKEW_S = 300
JWT_SKEW_S = 30
IOT_HUB_API_VERSION = "2021-04-12"
EVENT_HUBS_BATCH_TYPE = "application/vnd.microsoft.servicebus.json"
PUBSUB_SCOPE = "https://www.googleapis.com/auth/pubsub"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
C8Y_MEASUREMENT = "application/vnd.com.nsn.cumulocity.measurement+json"
C8Y_EVENT = "application/vnd.com.nsn.cumulocity.event+json"
REDACTED_HEADERS = ("authorization", "x-amz-security-token")


def log(msg):
    print(f"cloud_sink: {msg}", file=sys.stderr, flush=True)


class Reject(Exception):
    """A check failed: answer `status` formatted as `cloud` does, with `reason`."""

    def __init__(self, status, reason, code=None, headers=None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.code = code            # cloud-specific error code/type name, when there is one
        self.headers = headers or {}


# ---------------------------------------------------------------------------------------------
# Error bodies, as each cloud formats them.

AWS_IOT_TYPES = {400: "InvalidRequestException", 401: "UnauthorizedException",
                 403: "ForbiddenException", 404: "ResourceNotFoundException",
                 405: "MethodNotAllowedException", 413: "RequestEntityTooLargeException",
                 429: "ThrottlingException", 500: "InternalFailureException",
                 503: "ServiceUnavailableException"}
LAMBDA_TYPES = {400: "InvalidRequestContentException", 401: "UnrecognizedClientException",
                403: "AccessDeniedException", 404: "ResourceNotFoundException",
                413: "RequestTooLargeException", 429: "TooManyRequestsException",
                500: "ServiceException", 503: "ServiceException"}
IOT_HUB_CODES = {400: "ArgumentInvalid", 401: "IotHubUnauthorizedAccess",
                 403: "IotHubQuotaExceeded", 404: "DeviceNotFound", 413: "MessageTooLarge",
                 429: "ThrottlingException", 500: "ServerError", 503: "ServerBusy"}
GRPC_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
               404: "NOT_FOUND", 409: "ALREADY_EXISTS", 413: "INVALID_ARGUMENT",
               429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE",
               504: "DEADLINE_EXCEEDED"}
OAUTH_ERRORS = {400: "invalid_grant", 401: "invalid_client", 403: "access_denied",
                429: "rate_limit_exceeded", 500: "internal_failure",
                503: "temporarily_unavailable"}
C8Y_PHRASES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
               406: "Not Acceptable", 413: "Payload Too Large", 415: "Unsupported Media Type",
               422: "Unprocessable Entity", 429: "Too Many Requests",
               500: "Internal Server Error", 503: "Service Unavailable"}


def error_response(cloud, status, reason, code=None):
    """(body_obj, headers) of an error answer from `cloud`."""
    headers = {}
    if cloud == "aws-iot-core":
        etype = code or AWS_IOT_TYPES.get(status, "InternalFailureException")
        headers["x-amzn-ErrorType"] = etype
        headers["x-amzn-RequestId"] = str(uuid.uuid4())
        return {"message": reason, "traceId": str(uuid.uuid4())}, headers
    if cloud == "aws-lambda":
        etype = code or LAMBDA_TYPES.get(status, "ServiceException")
        headers["x-amzn-ErrorType"] = etype
        headers["x-amzn-RequestId"] = str(uuid.uuid4())
        return {"Type": "User" if status < 500 else "Service", "message": reason}, headers
    if cloud == "azure-iot-hub":
        ecode = code or IOT_HUB_CODES.get(status, "ServerError")
        headers["iothub-errorcode"] = ecode
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%m/%d/%Y %H:%M:%S")
        return {"Message": f"ErrorCode:{ecode};{reason}",
                "ExceptionMessage": f"Tracking ID:{uuid.uuid4().hex}-G:0-TimeStamp:{stamp}"}, headers
    if cloud == "azure-event-hubs":
        return {"error": {"code": status,
                          "message": f"{reason} TrackingId:{uuid.uuid4()}"}}, headers
    if cloud == "gcp-pubsub":
        return {"error": {"code": status, "message": reason,
                          "status": code or GRPC_STATUS.get(status, "UNKNOWN")}}, headers
    if cloud == "token":
        return {"error": code or OAUTH_ERRORS.get(status, "internal_failure"),
                "error_description": reason}, headers
    if cloud == "things-cloud":
        resource = code or "general"
        return {"error": f"{resource}/{C8Y_PHRASES.get(status, 'Error')}", "message": reason,
                "info": "https://cumulocity.com/guides/reference/rest-implementation"}, headers
    return {"error": reason}, headers


# ---------------------------------------------------------------------------------------------
# SigV4 (AWS IoT Core data plane, Lambda), recomputed with botocore.

from botocore.auth import SigV4Auth  # noqa: E402  (vendor libs after the stdlib block)
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.compat import HTTPHeaders  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402

SIGV4_AUTH_RE = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+)\s*,\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+)\s*,\s*Signature=(?P<sig>[0-9a-fA-F]+)\s*")


class SigV4AsReceived(SigV4Auth):
    """botocore's SigV4Auth, as the server sees a request: the timestamp is the request's own
    X-Amz-Date (botocore's add_auth takes "now"; it is replaced right after, in the first hook
    add_auth calls), and the signed headers are the ones the client listed in SignedHeaders."""

    def __init__(self, credentials, service_name, region_name, timestamp, signed_headers):
        super().__init__(credentials, service_name, region_name)
        self._timestamp = timestamp
        self._signed = signed_headers

    def _modify_request_before_signing(self, request):
        request.context["timestamp"] = self._timestamp
        super()._modify_request_before_signing(request)

    def headers_to_sign(self, request):
        header_map = HTTPHeaders()
        for name in self._signed:
            for value in request.headers.get_all(name) or []:
                header_map[name] = value
        return header_map


def verify_sigv4(handler, body, service, region, aws):
    """Raise Reject(403, ...) unless the request carries a valid SigV4 signature."""
    auth = handler.headers.get("Authorization")
    if not auth:
        raise Reject(403, "Missing Authentication Token", code="MissingAuthenticationTokenException")
    m = SIGV4_AUTH_RE.fullmatch(auth.strip())
    if not m:
        raise Reject(403, "Authorization header requires 'Credential', 'SignedHeaders' and "
                          "'Signature' (AWS4-HMAC-SHA256)", code="IncompleteSignatureException")
    cred = m.group("cred").split("/")
    if len(cred) != 5 or cred[4] != "aws4_request":
        raise Reject(403, "Credential should be <key>/<date>/<region>/<service>/aws4_request",
                     code="IncompleteSignatureException")
    akid, cdate, cregion, cservice, _ = cred
    amz_date = handler.headers.get("X-Amz-Date")
    if not amz_date:
        raise Reject(403, "Missing X-Amz-Date", code="IncompleteSignatureException")
    try:
        when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(
            tzinfo=datetime.timezone.utc)
    except ValueError:
        raise Reject(403, f"X-Amz-Date is not YYYYMMDDTHHMMSSZ: {amz_date!r}",
                     code="IncompleteSignatureException")
    skew = abs(time.time() - when.timestamp())
    if skew > SIGV4_SKEW_S:
        raise Reject(403, f"Signature expired: {amz_date} is more than 5 minutes from now",
                     code="InvalidSignatureException")
    if not hmac.compare_digest(akid, aws["access_key_id"]):
        raise Reject(403, "The security token included in the request is invalid (unknown "
                          "access key id)", code="UnrecognizedClientException")
    if cdate != amz_date[:8]:
        raise Reject(403, f"Credential date {cdate} does not match X-Amz-Date {amz_date[:8]}",
                     code="InvalidSignatureException")
    if cregion != region:
        raise Reject(403, f"Credential should be scoped to a valid region, not '{cregion}' "
                          f"(expected '{region}')", code="InvalidSignatureException")
    if cservice != service:
        raise Reject(403, f"Credential should be scoped to correct service: '{service}', not "
                          f"'{cservice}'", code="InvalidSignatureException")
    signed = m.group("signed").split(";")
    if signed != sorted(signed) or any(s != s.lower() for s in signed):
        raise Reject(403, "SignedHeaders must be lower-case and sorted",
                     code="InvalidSignatureException")
    if "host" not in signed:
        raise Reject(403, "'Host' must be a signed header", code="InvalidSignatureException")
    for name in signed:
        if handler.headers.get(name) is None:
            raise Reject(403, f"signed header '{name}' is missing from the request",
                         code="InvalidSignatureException")
    token = aws.get("session_token")
    got_token = handler.headers.get("X-Amz-Security-Token")
    if token:
        if not got_token or not hmac.compare_digest(got_token, token):
            raise Reject(403, "The security token included in the request is invalid "
                              "(X-Amz-Security-Token)", code="UnrecognizedClientException")
    elif got_token:
        raise Reject(403, "The security token included in the request is invalid "
                          "(no session token configured)", code="UnrecognizedClientException")
    content_sha = handler.headers.get("X-Amz-Content-SHA256")
    if content_sha is not None and content_sha != hashlib.sha256(body).hexdigest():
        raise Reject(403, "X-Amz-Content-SHA256 does not match the body",
                     code="InvalidSignatureException")

    request = AWSRequest(method=handler.command, url="https://" + handler.headers["Host"]
                         + handler.path, data=body)
    for name in signed:
        for value in handler.headers.get_all(name):
            request.headers[name] = value
    signer = SigV4AsReceived(Credentials(aws["access_key_id"], aws["secret_access_key"], token),
                             service, region, amz_date, signed)
    signer.add_auth(request)
    expected = SIGV4_AUTH_RE.fullmatch(request.headers["Authorization"]).group("sig")
    if not hmac.compare_digest(expected, m.group("sig").lower()):
        raise Reject(403, "The request signature we calculated does not match the signature "
                          "you provided. Check your AWS Secret Access Key and signing method.",
                     code="InvalidSignatureException")


# ---------------------------------------------------------------------------------------------
# Azure SAS tokens.

from azure.eventhub._pyamqp.utils import generate_sas_token as eventhub_generate_sas_token  # noqa: E402
from azure.iot.device.common.auth import sastoken as iot_sastoken  # noqa: E402
from azure.iot.device.common.auth.signing_mechanism import SymmetricKeySigningMechanism  # noqa: E402


def parse_sas(header):
    """-> {sr (raw, as sent), sig (decoded), se (int), skn (or None)}; Reject(401) if malformed."""
    if not header:
        raise Reject(401, "Authorization header is missing")
    try:
        info = iot_sastoken.get_sastoken_info_from_string(header.strip())
    except Exception as e:  # SasTokenError
        raise Reject(401, f"malformed SharedAccessSignature: {e}")
    try:
        se = int(info["se"])
    except ValueError:
        raise Reject(401, "SharedAccessSignature se is not an integer")
    return {"sr": info["sr"], "sig": unquote(info["sig"]), "se": se, "skn": info.get("skn")}


def sas_expiry_check(sas):
    if sas["se"] <= time.time():
        raise Reject(401, f"SharedAccessSignature expired (se={sas['se']}, now={int(time.time())})")


def verify_iot_hub_sas(header, hub_cfg, device_id):
    sas = parse_sas(header)
    hub_host = f"{hub_cfg['hub']}.azure-devices.net".lower()
    device_scope = f"{hub_host}/devices/{device_id}"
    # Host names compare case-insensitively, device ids exactly.
    host, slash, rest = unquote(sas["sr"]).rstrip("/").partition("/")
    sr = host.lower() + slash + rest
    key_name = hub_cfg.get("key_name")
    if key_name:
        if sas["skn"] != key_name:
            raise Reject(401, f"skn must be the policy '{key_name}'")
        if sr not in (hub_host, device_scope):
            raise Reject(401, f"sr '{sr}' is neither the hub nor this device")
    else:
        if sas["skn"] is not None:
            raise Reject(401, "a device-key token carries no skn")
        if sr != device_scope:
            raise Reject(401, f"sr '{sr}' is not {device_scope}")
    try:
        mech = SymmetricKeySigningMechanism(hub_cfg["key"])
    except ValueError:
        raise Reject(500, "sink misconfigured: azure_iot_hub.key is not base64")
    expected = mech.sign(f"{sas['sr']}\n{sas['se']}")
    if not hmac.compare_digest(expected, sas["sig"]):
        raise Reject(401, "SharedAccessSignature sig does not match")
    sas_expiry_check(sas)


def verify_event_hubs_sas(header, eh_cfg, hub):
    sas = parse_sas(header)
    if sas["skn"] is None or unquote_plus(sas["skn"]) != eh_cfg["key_name"]:
        raise Reject(401, f"skn must be the policy '{eh_cfg['key_name']}'")
    ns_host = f"{eh_cfg['namespace']}.servicebus.windows.net".lower()
    sr = unquote_plus(sas["sr"]).lower()
    sr = re.sub(r"^(https?|sb|amqps)://", "", sr).rstrip("/")
    if sr not in (ns_host, f"{ns_host}/{hub.lower()}"):
        raise Reject(401, f"sr '{sr}' does not cover {ns_host}/{hub}")
    audience = unquote_plus(sas["sr"])
    if quote_plus(audience) == sas["sr"]:
        # The SDK's own helper: sig over quote_plus(audience) with the key's UTF-8 bytes.
        token = eventhub_generate_sas_token(audience, eh_cfg["key_name"], eh_cfg["key"],
                                            sas["se"])
        expected = parse_qs(token.split(" ", 1)[1])["sig"][0]
    else:
        # sr encoded some other way (e.g. lower-case hex): Service Bus signs the sr as sent.
        expected = base64.b64encode(hmac.new(eh_cfg["key"].encode("utf-8"),
                                             f"{sas['sr']}\n{sas['se']}".encode("utf-8"),
                                             hashlib.sha256).digest()).decode()
    if not hmac.compare_digest(expected, sas["sig"]):
        raise Reject(401, "SharedAccessSignature sig does not match")
    sas_expiry_check(sas)


# ---------------------------------------------------------------------------------------------
# Google service account and OAuth2 JWT bearer grant.

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
import google.auth.jwt  # noqa: E402


def make_service_account(out_path, token_uri, project="simgate-test"):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    email = f"sink-test@{project}.iam.gserviceaccount.com"
    info = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": email,
        "client_id": str(secrets.randbelow(10 ** 21)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
                                + quote(email, safe=""),
        "universe_domain": "googleapis.com",
    }
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")


class ServiceAccount:
    """The service account the token endpoint trusts: re-read when the file changes."""

    def __init__(self, path):
        self.path = path
        self._stamp = None
        self.info = None
        self.public_pem = None
        self._lock = threading.Lock()

    def load(self):
        with self._lock:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                with open(self.path) as f:
                    info = json.load(f)
                key = serialization.load_pem_private_key(info["private_key"].encode(), None)
                self.public_pem = key.public_key().public_bytes(
                    serialization.Encoding.PEM,
                    serialization.PublicFormat.SubjectPublicKeyInfo).decode()
                self.info = info
                self._stamp = stamp
            return self.info, self.public_pem


# ---------------------------------------------------------------------------------------------
# State shared by the handler threads.

class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with getattr(self, "lock", threading.Lock()):
            self.accepted = []
            self.rejected = []
            self.calls = {}
            self.n_accepted = {}
            self.n_rejected = {}
            self.tokens = {}            # access_token -> expiry (epoch seconds)
            self.tokens_issued = 0
            self.failures = {}          # cloud -> list of pending injected failures
            self.call_counter = 0
            self.next_message_id = 1


def decode_pubsub_data(s):
    """Bytes of a proto3-JSON bytes field (standard or url-safe base64, padding optional)."""
    if not isinstance(s, str):
        raise ValueError("data must be a base64 string")
    if not re.fullmatch(r"[A-Za-z0-9+/_-]*={0,2}", s):
        raise ValueError("data is not valid base64")
    t = s.rstrip("=").replace("-", "+").replace("_", "/")
    if len(t) % 4 == 1:
        raise ValueError("data is not valid base64")
    return base64.b64decode(t + "=" * (-len(t) % 4), validate=True)


def parse_iso8601(s):
    if not isinstance(s, str):
        raise ValueError("not a string")
    d = datetime.datetime.fromisoformat(s)
    if d.tzinfo is None:
        raise ValueError("no time zone")
    return d


# ---------------------------------------------------------------------------------------------
# The HTTP handler.

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "simgate-cloud-sink"
    sys_version = ""
    timeout = 120  # an idle keep-alive connection (or a silent TLS client) frees its thread

    # -- plumbing --------------------------------------------------------------------------

    def log_message(self, fmt, *args):  # quiet: the tests read stdout, errors go to stderr
        pass

    def read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def send(self, status, body=None, headers=None, content_type="application/json"):
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body or b""
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if status == 204 or status == 304:
            data = b""  # no Content-Length on 204 (RFC 9110 8.6)
        else:
            if data:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)
        self.wfile.flush()

    def do_GET(self):
        self.dispatch(b"")

    def do_POST(self):
        self.dispatch(self.read_body())

    def do_PUT(self):
        self.dispatch(self.read_body())

    def do_DELETE(self):
        self.dispatch(self.read_body())

    # -- routing ---------------------------------------------------------------------------

    def cloud_of(self, path):
        if path.startswith("/_sink/"):
            return None
        if path.startswith("/topics/"):
            return "aws-iot-core"
        if path.startswith("/devices/"):
            return "azure-iot-hub"
        if path.startswith("/v1/projects/"):
            return "gcp-pubsub"
        if path == "/token":
            return "token"
        if path.startswith("/2015-03-31/functions/"):
            return "aws-lambda"
        if path in ("/measurement/measurements", "/event/events"):
            return "things-cloud"
        if path == "/echo" or path.startswith("/echo/"):
            return "echo"
        if re.fullmatch(r"/[^/]+(/partitions/[^/]+)?/messages", path):
            return "azure-event-hubs"
        return None

    CONFIG_KEY = {"aws-iot-core": "aws", "azure-iot-hub": "azure_iot_hub",
                  "azure-event-hubs": "event_hubs", "gcp-pubsub": "gcp", "token": "gcp",
                  "aws-lambda": "lambda", "things-cloud": "things_cloud", "echo": "echo"}

    def dispatch(self, body):
        st = self.server.state
        split = urlsplit(self.path)
        path = split.path
        try:
            if path.startswith("/_sink/"):
                return self.control(path, split.query, body)
            cloud = self.cloud_of(path)
            if cloud is None:
                return self.send(404, {"error": f"no such path {path}"})
            with st.lock:
                st.calls[cloud] = st.calls.get(cloud, 0) + 1
                pending = st.failures.get(cloud) or []
                injected = pending[0] if pending else None
                if injected:
                    injected["count"] -= 1
                    if injected["count"] <= 0:
                        pending.pop(0)
            if injected and injected.get("delay_ms"):
                time.sleep(injected["delay_ms"] / 1000.0)
            if injected and injected.get("status"):
                raise Reject(int(injected["status"]), f"injected failure ({injected['status']})",
                             headers={"Retry-After": str(injected["retry_after"])}
                             if injected.get("retry_after") is not None else {})
            cfg = self.server.config.get(self.CONFIG_KEY[cloud])
            if cfg is None or (not cfg and cloud != "echo") or (cloud == "aws-lambda" and not self.server.config.get("aws")) \
                    or (cloud == "aws-iot-core" and not cfg.get("region")):
                raise Reject(404, f"{cloud} is not configured in this sink")
            if self.command != "POST":
                raise Reject(405, f"{self.command} is not allowed here")
            getattr(self, "handle_" + cloud.replace("-", "_"))(cfg, split, body)
        except Reject as r:
            cloud = self.cloud_of(path)
            with st.lock:
                st.n_rejected[cloud] = st.n_rejected.get(cloud, 0) + 1
                st.rejected.append({"cloud": cloud, "status": r.status, "reason": r.reason,
                                    "path": path})
            log(f"rejected {cloud} {self.command} {path}: {r.status} {r.reason}")
            obj, headers = error_response(cloud, r.status, r.reason, r.code)
            headers.update(r.headers)
            if cloud == "azure-iot-hub" and r.status == 401:
                headers["WWW-Authenticate"] = "SharedAccessSignature"
            self.send(r.status, obj, headers)
        except (ConnectionError, ssl.SSLError):
            raise
        except Exception:
            log("internal error:\n" + traceback.format_exc())
            self.send(500, {"error": "sink internal error (see its stderr)"})

    def record(self, cloud, body, properties, **extra):
        headers = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = "REDACTED" if k in REDACTED_HEADERS else v
        entry = {"cloud": cloud, "method": self.command, "path": self.path, "headers": headers,
                 "body_b64": base64.b64encode(body).decode(), "properties": properties}
        entry.update(extra)
        st = self.server.state
        with st.lock:
            st.accepted.append(entry)
            st.n_accepted[cloud] = st.n_accepted.get(cloud, 0) + 1

    def next_call(self):
        st = self.server.state
        with st.lock:
            st.call_counter += 1
            return st.call_counter

    # -- control endpoints -----------------------------------------------------------------

    def control(self, path, query, body):
        st = self.server.state
        if path == "/_sink/fail" and self.command == "POST":
            try:
                spec = json.loads(body or b"{}")
                cloud = spec["cloud"]
                if cloud not in CLOUDS:
                    raise ValueError(f"unknown cloud {cloud!r}")
                item = {"status": int(spec.get("status") or 0),
                        "count": int(spec.get("count", 1)),
                        "retry_after": spec.get("retry_after"),
                        "delay_ms": int(spec.get("delay_ms") or 0)}
            except (ValueError, KeyError, TypeError) as e:
                return self.send(400, {"error": f"bad fail spec: {e}"})
            if item["count"] > 0:
                with st.lock:
                    st.failures.setdefault(cloud, []).append(item)
            return self.send(200, {"ok": True})
        if path == "/_sink/accepted" and self.command == "GET":
            want = parse_qs(query).get("cloud", [None])[0]
            with st.lock:
                items = [a for a in st.accepted if want is None or a["cloud"] == want]
            return self.send(200, items)
        if path == "/_sink/rejected" and self.command == "GET":
            with st.lock:
                return self.send(200, list(st.rejected))
        if path == "/_sink/stats" and self.command == "GET":
            with st.lock:
                return self.send(200, {"calls": dict(st.calls), "accepted": dict(st.n_accepted),
                                       "rejected": dict(st.n_rejected),
                                       "tokens_issued": st.tokens_issued})
        if path == "/_sink/reset" and self.command == "POST":
            st.reset()
            return self.send(200, {"ok": True})
        return self.send(404, {"error": f"no control endpoint {self.command} {path}"})

    # -- echo ------------------------------------------------------------------------------

    def handle_echo(self, cfg, split, body):
        self.record("echo", body, {})
        self.send(200, body, content_type=self.headers.get("Content-Type") or
                  "application/octet-stream")

    # -- AWS IoT Core ----------------------------------------------------------------------

    def handle_aws_iot_core(self, aws, split, body):
        topic = unquote(split.path[len("/topics/"):])
        if not topic:
            raise Reject(400, "topic is empty")
        verify_sigv4(self, body, "iotdata", aws["region"], aws)
        if len(body) > AWS_IOT_MAX_BODY:
            raise Reject(413, f"payload of {len(body)} bytes exceeds 131072")
        q = parse_qs(split.query, keep_blank_values=True)
        qos = q.get("qos", ["0"])[0]
        if qos not in ("0", "1"):
            raise Reject(400, f"qos must be 0 or 1, not {qos!r}")
        if "#" in topic or "+" in topic:
            raise Reject(400, "publish topic must not contain wildcards")
        self.record("aws-iot-core", body, {"topic": topic, "qos": int(qos),
                                           "retain": q.get("retain", ["false"])[0] == "true"})
        self.send(200, {"message": "OK", "traceId": str(uuid.uuid4())})

    # -- AWS Lambda ------------------------------------------------------------------------

    def handle_aws_lambda(self, lam, split, body):
        m = re.fullmatch(r"/2015-03-31/functions/([^/]+)/invocations", split.path)
        if not m:
            raise Reject(404, f"no such Lambda API path {split.path}", code="UnknownOperationException")
        aws = self.server.config["aws"]
        verify_sigv4(self, body, "lambda", lam["region"], aws)
        name = unquote(m.group(1))
        qualifier = parse_qs(split.query).get("Qualifier", [None])[0]
        fn = name
        arn = re.fullmatch(r"(?:arn:aws[a-z-]*:lambda:[a-z0-9-]+:)?(?:\d{12}:)?function:"
                           r"([A-Za-z0-9_-]+)(?::([A-Za-z0-9_$-]+))?", name)
        if arn:
            fn, arn_qual = arn.group(1), arn.group(2)
            if arn_qual and qualifier and arn_qual != qualifier:
                raise Reject(400, "The derived qualifier from the function name does not match "
                                  "the specified qualifier.", code="InvalidParameterValueException")
            qualifier = qualifier or arn_qual
        elif ":" in name:
            fn, qual2 = name.split(":", 1)
            qualifier = qualifier or qual2
        if fn != lam["function"]:
            raise Reject(404, f"Function not found: arn:aws:lambda:{lam['region']}:123456789012"
                              f":function:{fn}", code="ResourceNotFoundException")
        itype = self.headers.get("X-Amz-Invocation-Type") or "RequestResponse"
        if itype not in ("RequestResponse", "Event", "DryRun"):
            raise Reject(400, f"1 validation error detected: Value '{itype}' at 'invocationType'"
                              " failed to satisfy constraint", code="ValidationException")
        limit = LAMBDA_MAX_ASYNC if itype == "Event" else LAMBDA_MAX_SYNC
        if len(body) > limit:
            raise Reject(413, f"Request must be smaller than {limit} bytes for the {itype} "
                              "invocation type", code="RequestTooLargeException")
        client_context = None
        raw_cc = self.headers.get("X-Amz-Client-Context")
        if raw_cc is not None:
            if len(raw_cc.encode()) > LAMBDA_MAX_CLIENT_CONTEXT:
                raise Reject(400, f"Client context must be at most {LAMBDA_MAX_CLIENT_CONTEXT} "
                                  "bytes", code="InvalidParameterValueException")
            try:
                client_context = json.loads(base64.b64decode(raw_cc, validate=True))
                if not isinstance(client_context, dict):
                    raise ValueError("not an object")
            except (ValueError, binascii.Error):
                raise Reject(400, "Client context must be a valid Base64-encoded JSON object.",
                             code="InvalidParameterValueException")
        if itype == "DryRun":
            return self.send(204, None, {"x-amzn-RequestId": str(uuid.uuid4())})
        self.record("aws-lambda", body, {"function": fn, "qualifier": qualifier,
                                         "invocation_type": itype,
                                         "client_context": client_context})
        headers = {"x-amzn-RequestId": str(uuid.uuid4()),
                   "X-Amz-Executed-Version": qualifier or "$LATEST"}
        if itype == "Event":
            return self.send(202, None, headers)
        self.send(200, {"echo": body.decode("utf-8", "replace"),
                        "client_context": client_context}, headers)

    # -- Azure IoT Hub ---------------------------------------------------------------------

    def handle_azure_iot_hub(self, hub, split, body):
        m = re.fullmatch(r"/devices/([^/]+)/messages/events", split.path)
        if not m:
            raise Reject(404, f"no such IoT Hub path {split.path}")
        device_id = unquote(m.group(1))
        api = parse_qs(split.query).get("api-version", [None])[0]
        if api != IOT_HUB_API_VERSION:
            raise Reject(400, f"api-version must be {IOT_HUB_API_VERSION}, not {api!r}",
                         code="InvalidProtocolVersion")
        verify_iot_hub_sas(self.headers.get("Authorization"), hub, device_id)
        if len(body) > IOT_HUB_MAX_BODY:
            raise Reject(413, f"message of {len(body)} bytes exceeds 262144")
        props = {k.lower()[len("iothub-app-"):]: v for k, v in self.headers.items()
                 if k.lower().startswith("iothub-app-")}
        system = {k.lower(): v for k, v in self.headers.items()
                  if k.lower() in ("iothub-messageid", "iothub-correlationid",
                                   "iothub-contenttype", "iothub-contentencoding",
                                   "content-type", "content-encoding")}
        self.record("azure-iot-hub", body, props, device_id=device_id, system_properties=system)
        self.send(204)

    # -- Azure Event Hubs ------------------------------------------------------------------

    EH_STANDARD_HEADERS = {"host", "authorization", "content-type", "content-length", "connection",
                           "accept", "accept-encoding", "user-agent", "brokerproperties",
                           "transfer-encoding", "expect", "te", "x-ms-retrypolicy", "date"}

    def handle_azure_event_hubs(self, eh, split, body):
        m = re.fullmatch(r"/([^/]+)(?:/partitions/([^/]+))?/messages", split.path)
        hub, partition = unquote(m.group(1)), m.group(2)
        verify_event_hubs_sas(self.headers.get("Authorization"), eh, hub)
        if hub.lower() != eh["hub"].lower():
            raise Reject(404, f"The messaging entity '{eh['namespace']}:eventhub:{hub}' could "
                              "not be found.")
        if len(body) > EVENT_HUBS_MAX_BODY:
            raise Reject(413, f"The received message ({len(body)} bytes) exceeds the limit "
                              f"({EVENT_HUBS_MAX_BODY} bytes)")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype == EVENT_HUBS_BATCH_TYPE:
            try:
                batch = json.loads(body)
                if not isinstance(batch, list) or not batch:
                    raise ValueError("batch body must be a non-empty JSON array")
                msgs = []
                for i, el in enumerate(batch):
                    if not isinstance(el, dict) or not isinstance(el.get("Body"), str):
                        raise ValueError(f"element {i} needs a string \"Body\"")
                    for k in ("BrokerProperties", "UserProperties"):
                        if k in el and not isinstance(el[k], dict):
                            raise ValueError(f"element {i}: {k} must be an object")
                    if el.get("IsBodyBase64"):
                        data = base64.b64decode(el["Body"], validate=True)
                    else:
                        data = el["Body"].encode("utf-8")
                    msgs.append((data, el.get("BrokerProperties") or {},
                                 el.get("UserProperties") or {}))
            except (ValueError, binascii.Error) as e:
                raise Reject(400, f"malformed batch: {e}")
            call = self.next_call()
            for data, broker, user in msgs:
                self.record("azure-event-hubs", data, user, broker_properties=broker,
                            partition=partition, batch_size=len(msgs), call=call)
        else:
            broker = {}
            raw = self.headers.get("BrokerProperties")
            if raw is not None:
                try:
                    broker = json.loads(raw)
                    if not isinstance(broker, dict):
                        raise ValueError
                except ValueError:
                    raise Reject(400, "BrokerProperties header is not a JSON object")
            user = {k.lower(): v for k, v in self.headers.items()
                    if k.lower() not in self.EH_STANDARD_HEADERS}
            self.record("azure-event-hubs", body, user, broker_properties=broker,
                        partition=partition, batch_size=1, call=self.next_call())
        self.send(201)

    # -- Google token endpoint -------------------------------------------------------------

    def handle_token(self, gcp, split, body):
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            raise Reject(400, "Content-Type must be application/x-www-form-urlencoded",
                         code="invalid_request")
        form = parse_qs(body.decode("utf-8", "replace"))
        grant = form.get("grant_type", [None])[0]
        if grant != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            raise Reject(400, f"Invalid grant_type: {grant}", code="unsupported_grant_type")
        assertion = form.get("assertion", [None])[0]
        if not assertion:
            raise Reject(400, "Missing required parameter: assertion", code="invalid_request")
        info, public_pem = self.server.service_account.load()
        try:
            header = google.auth.jwt.decode_header(assertion)
        except Exception as e:
            raise Reject(400, f"Invalid JWT: {e}")
        if header.get("alg") != "RS256":
            raise Reject(400, f"Invalid JWT: alg must be RS256, not {header.get('alg')!r}")
        if "kid" in header and header["kid"] != info.get("private_key_id"):
            raise Reject(400, "Invalid JWT Signature: kid is not this account's private_key_id")
        host = self.headers.get("Host", "")
        audiences = [a for a in (info.get("token_uri"), f"https://{host}/token",
                                 GOOGLE_TOKEN_URI) if a]
        try:
            claims = google.auth.jwt.decode(assertion, certs=public_pem, audience=audiences,
                                            clock_skew_in_seconds=JWT_SKEW_S)
        except Exception as e:
            raise Reject(400, f"Invalid JWT: {e}")
        if claims.get("iss") != info["client_email"]:
            raise Reject(400, "Invalid JWT: iss is not the service account's client_email")
        scopes = str(claims.get("scope", "")).split()
        if PUBSUB_SCOPE not in scopes:
            raise Reject(400, f"Invalid JWT: scope must include {PUBSUB_SCOPE}",
                         code="invalid_scope")
        try:
            lifetime = int(claims["exp"]) - int(claims["iat"])
        except (KeyError, ValueError, TypeError):
            raise Reject(400, "Invalid JWT: iat and exp are required")
        if lifetime > 3600:
            raise Reject(400, "Invalid JWT: Token must be a short-lived token (60 minutes) and "
                              "in a reasonable timeframe. Check your iat and exp values")
        ttl = int(gcp.get("token_ttl_s") or 3600)
        token = "ya29.sink-" + secrets.token_urlsafe(32)
        st = self.server.state
        with st.lock:
            st.tokens[token] = time.time() + ttl
            st.tokens_issued += 1
        self.send(200, {"access_token": token, "expires_in": ttl, "token_type": "Bearer"})

    # -- Google Pub/Sub --------------------------------------------------------------------

    def handle_gcp_pubsub(self, gcp, split, body):
        auth = self.headers.get("Authorization") or ""
        m = re.fullmatch(r"Bearer\s+(\S+)", auth.strip())
        st = self.server.state
        with st.lock:
            expiry = st.tokens.get(m.group(1)) if m else None
        if expiry is None or expiry <= time.time():
            raise Reject(401, "Request had invalid authentication credentials. Expected OAuth 2 "
                              "access token, login cookie or other valid authentication "
                              "credential." + (" (token expired)" if expiry else ""))
        pm = re.fullmatch(r"/v1/projects/([^/]+)/topics/([^/:]+):publish", split.path)
        if not pm:
            raise Reject(404, f"no such Pub/Sub method {split.path}")
        project, topic = unquote(pm.group(1)), unquote(pm.group(2))
        if project != gcp["project"] or topic != gcp["topic"]:
            raise Reject(404, f"Resource not found (resource={topic}).")
        if len(body) > PUBSUB_MAX_BODY:
            raise Reject(400, f"Request payload size exceeds the limit: {PUBSUB_MAX_BODY} bytes.")
        try:
            req = json.loads(body)
            if not isinstance(req, dict) or not isinstance(req.get("messages"), list):
                raise ValueError("body must be {\"messages\": [...]}")
            msgs = req["messages"]
            if not msgs:
                raise ValueError("The value for message_count is too small. You passed 0 in "
                                 "the request, but the minimum value is 1.")
            if len(msgs) > PUBSUB_MAX_MESSAGES:
                raise ValueError(f"The value for message_count is too large. You passed "
                                 f"{len(msgs)} in the request, but the maximum value is 1000.")
            parsed = []
            for i, msg in enumerate(msgs):
                if not isinstance(msg, dict):
                    raise ValueError(f"messages[{i}] is not an object")
                unknown = set(msg) - {"data", "attributes", "orderingKey", "messageId",
                                      "publishTime"}
                if unknown:
                    raise ValueError(f"messages[{i}]: unknown field(s) {sorted(unknown)}")
                data = decode_pubsub_data(msg["data"]) if "data" in msg else b""
                attrs = msg.get("attributes") or {}
                if not isinstance(attrs, dict):
                    raise ValueError(f"messages[{i}].attributes must be an object")
                if len(attrs) > 100:
                    raise ValueError(f"messages[{i}] has more than 100 attributes")
                for k, v in attrs.items():
                    if not isinstance(v, str):
                        raise ValueError(f"messages[{i}].attributes[{k!r}] must be a string")
                    if not k or len(k.encode()) > 256 or k.startswith("goog"):
                        raise ValueError(f"messages[{i}]: invalid attribute key {k!r}")
                    if len(v.encode()) > 1024:
                        raise ValueError(f"messages[{i}].attributes[{k!r}] exceeds 1024 bytes")
                if not data and not attrs:
                    raise ValueError(f"messages[{i}]: Some messages are both empty and have no "
                                     "attributes.")
                okey = msg.get("orderingKey")
                if okey is not None and not isinstance(okey, str):
                    raise ValueError(f"messages[{i}].orderingKey must be a string")
                parsed.append((data, attrs, okey or None))
        except ValueError as e:
            raise Reject(400, f"Invalid publish request: {e}")
        call = self.next_call()
        ids = []
        for data, attrs, okey in parsed:
            with st.lock:
                mid = str(st.next_message_id)
                st.next_message_id += 1
            ids.append(mid)
            self.record("gcp-pubsub", data, attrs, message_id=mid, attributes=attrs,
                        ordering_key=okey, batch_size=len(parsed), call=call)
        self.send(200, {"messageIds": ids})

    # -- Things Cloud (Cumulocity) ---------------------------------------------------------

    def handle_things_cloud(self, tc, split, body):
        kind = "measurement" if split.path == "/measurement/measurements" else "event"
        media = C8Y_MEASUREMENT if kind == "measurement" else C8Y_EVENT
        auth = (self.headers.get("Authorization") or "").strip()
        expected = "Basic " + base64.b64encode(
            f"{tc['tenant']}/{tc['username']}:{tc['password']}".encode()).decode()
        if not hmac.compare_digest(auth.encode(), expected.encode()):
            raise Reject(401, "Invalid credentials! : Bad credentials", code="security")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != media:
            raise Reject(415, f"Content-Type must be {media}, not {ctype!r}", code=kind)
        accept = (self.headers.get("Accept") or "").lower()
        if media not in accept:
            raise Reject(406, f"Accept must be {media}, not {accept!r}", code=kind)
        try:
            obj = json.loads(body)
            if not isinstance(obj, dict):
                raise ValueError("body must be a JSON object")
            src = obj.get("source")
            if not isinstance(src, dict) or not isinstance(src.get("id"), str) or not src["id"]:
                raise ValueError("source.id (a string) is required")
            try:
                parse_iso8601(obj.get("time"))
            except (ValueError, TypeError):
                raise ValueError("time must be an ISO-8601 date-time with a time zone")
            if not isinstance(obj.get("type"), str) or not obj["type"]:
                raise ValueError("type (a string) is required")
            if kind == "event":
                if not isinstance(obj.get("text"), str):
                    raise ValueError("text (a string) is required")
            else:
                fragments = 0
                for name, frag in obj.items():
                    if name in ("source", "time", "type", "id", "self") or \
                            not isinstance(frag, dict) or not frag:
                        continue
                    series = [s for s in frag.values() if isinstance(s, dict) and "value" in s]
                    for sname, s in frag.items():
                        if isinstance(s, dict) and "value" in s:
                            v = s["value"]
                            if isinstance(v, bool) or not isinstance(v, (int, float)):
                                raise ValueError(f"{name}.{sname}.value must be a number")
                            if "unit" in s and not isinstance(s["unit"], str):
                                raise ValueError(f"{name}.{sname}.unit must be a string")
                    if series and len(series) == len(frag):
                        fragments += 1
                if not fragments:
                    raise ValueError("a measurement needs at least one fragment whose series "
                                     "each have a numeric value")
        except ValueError as e:
            raise Reject(422, f"Following mandatory fields should be included or are invalid: "
                              f"{e}", code=kind)
        self.record("things-cloud", body, {"kind": kind, "type": obj["type"],
                                           "source_id": obj["source"]["id"]})
        oid = str(10000 + secrets.randbelow(10 ** 9))
        created = dict(obj)
        created["id"] = oid
        created["self"] = f"https://{self.headers.get('Host', 'localhost')}{split.path}/{oid}"
        if kind == "event":
            created.setdefault("creationTime",
                               datetime.datetime.now(datetime.timezone.utc).isoformat())
        self.send(201, created, {"Location": created["self"]},
                  content_type=media + ";charset=UTF-8;ver=0.9")


# ---------------------------------------------------------------------------------------------

class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog is 5: a burst of connects (simgate's shards opening
    # connections for 50 devices at once) would overflow it, and a dropped SYN costs the
    # client a 1 s + 2 s retransmit, longer than a short connect timeout. A cloud's front end
    # does not drop connects at 6.
    request_queue_size = socket.SOMAXCONN

    def __init__(self, config, ctx):
        self.config = config
        self.state = State()
        gcp = config.get("gcp")
        self.service_account = ServiceAccount(gcp["service_account_file"]) if gcp else None
        self.ctx = ctx
        host = config.get("bind", "127.0.0.1")
        super().__init__((host, int(config.get("port") or 0)), Handler)

    def get_request(self):
        sock, addr = self.socket.accept()
        # BaseHTTPRequestHandler writes the head and the body separately: without NODELAY the
        # body waits for the client's delayed ACK (~40 ms) on every keep-alive response.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The handshake runs in the handler thread (on first read), not in the accept loop.
        return self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, ssl.SSLError, socket.timeout)):
            return
        log(f"error serving {client_address}: {exc!r}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="sink.json")
    ap.add_argument("--make-service-account", metavar="OUT.json",
                    help="write a fresh service-account JSON and exit")
    ap.add_argument("--token-uri", help="token_uri of --make-service-account")
    ap.add_argument("--project", default="simgate-test", help="project_id of --make-service-account")
    args = ap.parse_args(argv)
    if args.make_service_account:
        if not args.token_uri:
            ap.error("--make-service-account needs --token-uri")
        make_service_account(args.make_service_account, args.token_uri, args.project)
        return 0
    if not args.config:
        ap.error("--config is required")
    with open(args.config) as f:
        config = json.load(f)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(config["cert"], config["key"])
    server = Server(config, ctx)
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
