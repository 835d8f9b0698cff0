//! Azure Shared Access Signature tokens (IoT Hub, Event Hubs, Service Bus).
//!
//! What this module does: builds
//! `SharedAccessSignature sr={enc(resource)}&sig={enc(sig)}&se={expiry}[&skn={enc(key_name)}]`
//! with `sig = base64(HMAC-SHA256(key, "{enc(resource)}\n{expiry}"))`. Pure: no clock (the expiry
//! is passed in), no IO. What it does not do: choose the resource URI or the lifetime (the
//! adapter and the control plane do), lower-case anything, or parse connection strings.
//!
//! # Encoding, and where it was checked
//!
//! `enc` percent-encodes every byte except the RFC 3986 unreserved ones (`A–Z a–z 0–9 - . _ ~`),
//! with uppercase hex: `/` → `%2F`, `:` → `%3A`, `+` → `%2B`, `=` → `%3D`. That is what
//! Azure/azure-sdk-for-c writes for IoT Hub (`test_az_iot_hub_client_sas.c`: string-to-sign
//! `myiothub.azure-devices.net%2Fdevices%2Fmy_device\n1578941692`, `sig=cS1eHM%2FlDjs…`), what the
//! Python device SDK does (`azure-iot-device` 2.14, `sastoken.py`: `urllib.parse.quote(uri,
//! safe="")` for both the resource and the signature), and, for the inputs such tokens carry (no
//! spaces), what `azure-eventhub` 5.15 does (`_pyamqp/utils.py` `generate_sas_token`: `quote_plus`
//! of the audience, signature and policy name — it differs from `quote(…, safe="")` only for a
//! space, written `+`). The same encoded resource goes into `sr` and into the string-to-sign, so a
//! verifier that signs the `sr` field as it appears in the token (as the `SharedAccessSignature`
//! class of Azure's C# SDKs does with its `encodedAudience`) agrees whatever the encoding.
//!
//! The resource URI is used as given, case kept: `azure-eventhub` does not lower-case it either
//! (`sb://My-Namespace…` is signed as `sb%3A%2F%2FMy-Namespace…`). IoT Hub device tokens are
//! scoped to `{hub}.azure-devices.net/devices/{deviceId}` (no scheme), Event Hubs tokens to the
//! entity URI (`https://{ns}.servicebus.windows.net/{hub}` or the `sb://` form).
//!
//! The key: IoT Hub's device and policy keys are base64 and are decoded to get the HMAC key
//! ([`SasKeyEncoding::Base64`]); Event Hubs' and Service Bus' keys, although they look like
//! base64, are used as their UTF-8 bytes ([`SasKeyEncoding::Raw`]: `azure-eventhub` signs with
//! `key.encode("utf-8")`).

use std::fmt::{self, Write as _};

use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// How the key string is turned into HMAC key bytes: IoT Hub keys are base64-decoded, Event
/// Hubs/Service Bus keys are used as their UTF-8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SasKeyEncoding {
    /// Base64 (standard alphabet, padded), decoded: IoT Hub device and shared access policy keys.
    Base64,
    /// The string's UTF-8 bytes as they are: Event Hubs and Service Bus policy keys.
    Raw,
}

/// A SAS signing key, ready for HMAC-SHA256. `Debug` shows nothing of the key.
#[derive(Clone)]
pub struct SasKey {
    key: hmac::Key,
}

impl fmt::Debug for SasKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SasKey(<redacted>)")
    }
}

/// Why a key was refused. The text never contains the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SasError {
    /// The key is empty (or decodes to no bytes).
    EmptyKey,
    /// A [`SasKeyEncoding::Base64`] key is not valid padded standard base64.
    KeyNotBase64,
}

impl fmt::Display for SasError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyKey => f.write_str("SAS key is empty"),
            Self::KeyNotBase64 => f.write_str("SAS key is not valid base64"),
        }
    }
}

impl std::error::Error for SasError {}

impl SasKey {
    /// Makes a key from its string form (as shown in the Azure portal or a connection string).
    pub fn new(key: &str, encoding: SasKeyEncoding) -> Result<SasKey, SasError> {
        let bytes = match encoding {
            SasKeyEncoding::Base64 => STANDARD
                .decode(key.trim())
                .map_err(|_| SasError::KeyNotBase64)?,
            SasKeyEncoding::Raw => key.as_bytes().to_vec(),
        };
        if bytes.is_empty() {
            return Err(SasError::EmptyKey);
        }
        Ok(SasKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
        })
    }
}

/// `SharedAccessSignature sr={enc(resource)}&sig={enc(sig)}&se={expiry}[&skn={key_name}]`,
/// sig = base64(HMAC-SHA256(key, "{enc(resource)}\n{expiry}")). `key_name` (`skn`) is the shared
/// access policy name; IoT Hub device-key tokens have none. It is percent-encoded like the
/// resource (policy names are letters, digits and `-._`, which encode as themselves).
pub fn token(
    resource_uri: &str,
    key: &SasKey,
    key_name: Option<&str>,
    expiry_unix_s: u64,
) -> String {
    let resource = encode(resource_uri);
    let to_sign = format!("{resource}\n{expiry_unix_s}");
    let sig = STANDARD.encode(hmac::sign(&key.key, to_sign.as_bytes()).as_ref());
    format_token(&resource, &sig, expiry_unix_s, key_name)
}

/// The token from its parts: `resource` already encoded, `sig` in plain base64.
fn format_token(resource: &str, sig: &str, expiry_unix_s: u64, key_name: Option<&str>) -> String {
    let mut out = format!(
        "SharedAccessSignature sr={resource}&sig={}&se={expiry_unix_s}",
        encode(sig)
    );
    if let Some(name) = key_name {
        out.push_str("&skn=");
        out.push_str(&encode(name));
    }
    out
}

/// Percent-encodes every byte but RFC 3986's unreserved ones, uppercase hex (Python's
/// `urllib.parse.quote(s, safe="")`).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// azure-iot-cli-extension, `azext_iot` unit tests, `TestSasTokenAuth.test_generate_sas_token`:
    /// one IoT Hub policy key, three resources (device, hub, module), expiry 1471940363. The
    /// expected `sig`, `sr` and `skn` values are copied from its assertions.
    #[test]
    fn iot_hub_known_answers_from_azure_iot_cli_extension() {
        let key = SasKey::new(
            "+XLy+MVZ+aTeOnVzN2kLeB16O+kSxmz6g3rS6fAf6rw=",
            SasKeyEncoding::Base64,
        )
        .unwrap();
        let expiry = 1_471_940_363;
        assert_eq!(
            token(
                "iot-hub-for-test.azure-devices.net/devices/iot-device-for-test",
                &key,
                None,
                expiry
            ),
            "SharedAccessSignature sr=iot-hub-for-test.azure-devices.net%2Fdevices%2F\
             iot-device-for-test&sig=SIumZ1ACqqPJZ2okHDlW9MSYKykEpqsQY3z6FMOICd4%3D&se=1471940363"
        );
        assert_eq!(
            token(
                "iot-hub-for-test.azure-devices.net",
                &key,
                Some("iothubowner"),
                expiry
            ),
            "SharedAccessSignature sr=iot-hub-for-test.azure-devices.net\
             &sig=770sPjjYxRYpNz8%2FhEN7XR5XU5KDGYGTinSP8YyeTXw%3D&se=1471940363&skn=iothubowner"
        );
        assert_eq!(
            token(
                "iot-hub-for-test.azure-devices.net/devices/iot-device-for-test/modules/module-for-test",
                &key,
                Some("iothubowner"),
                expiry
            ),
            "SharedAccessSignature sr=iot-hub-for-test.azure-devices.net%2Fdevices%2F\
             iot-device-for-test%2Fmodules%2Fmodule-for-test\
             &sig=JwAxBBBPYA0E%2FTHdnrXzUfBfuZ7deH6pppCniJ23Uu0%3D&se=1471940363&skn=iothubowner"
        );
    }

    /// Azure/azure-sdk-for-c `sdk/tests/iot/hub/test_az_iot_hub_client_sas.c`: the SDK leaves
    /// the HMAC to the application, so its tests give no key; they fix the string to sign and
    /// the token built around a given signature (`TEST_SIG`), which are checked here.
    #[test]
    fn iot_hub_string_to_sign_and_format_from_azure_sdk_for_c() {
        let resource = encode("myiothub.azure-devices.net/devices/my_device");
        assert_eq!(
            format!("{resource}\n1578941692"),
            "myiothub.azure-devices.net%2Fdevices%2Fmy_device\n1578941692"
        );
        let sig = "cS1eHM/lDjsRsrZV9508wOFrgmZk4g8FNg8NwHVSiSQ";
        assert_eq!(
            format_token(&resource, sig, 1_578_941_692, None),
            "SharedAccessSignature sr=myiothub.azure-devices.net%2Fdevices%2Fmy_device\
             &sig=cS1eHM%2FlDjsRsrZV9508wOFrgmZk4g8FNg8NwHVSiSQ&se=1578941692"
        );
        let module = encode("myiothub.azure-devices.net/devices/my_device/modules/my_module");
        assert_eq!(
            format_token(&module, sig, 1_578_941_692, Some("iothubowner")),
            "SharedAccessSignature sr=myiothub.azure-devices.net%2Fdevices%2Fmy_device\
             %2Fmodules%2Fmy_module&sig=cS1eHM%2FlDjsRsrZV9508wOFrgmZk4g8FNg8NwHVSiSQ\
             &se=1578941692&skn=iothubowner"
        );
    }

    /// Computed with the azure-eventhub 5.15.1 Python package installed here (its key is used
    /// as UTF-8 bytes, and it keeps the resource's case):
    ///
    /// ```text
    /// python3 -c "from azure.eventhub._pyamqp.utils import generate_sas_token as g; \
    ///   print(g('https://my-namespace.servicebus.windows.net/my-hub', 'send-policy', \
    ///   'c2lnbmluZyBrZXk+/not-base64=', 1700000000))"
    /// python3 -c "from azure.eventhub._pyamqp.utils import generate_sas_token as g; \
    ///   print(g('sb://My-Namespace.servicebus.windows.net/my-hub', 'RootManageSharedAccessKey', \
    ///   'AbCdEfGhIjKlMnOpQrStUvWxYz0123456789+/AbCdE=', 1577836800))"
    /// ```
    #[test]
    fn event_hubs_known_answers_from_azure_eventhub_python() {
        let key = SasKey::new("c2lnbmluZyBrZXk+/not-base64=", SasKeyEncoding::Raw).unwrap();
        assert_eq!(
            token(
                "https://my-namespace.servicebus.windows.net/my-hub",
                &key,
                Some("send-policy"),
                1_700_000_000
            ),
            "SharedAccessSignature sr=https%3A%2F%2Fmy-namespace.servicebus.windows.net%2Fmy-hub\
             &sig=26J4TYQutafRdH10VL8orDj%2FoCepihZYTW8q0PNZjWk%3D&se=1700000000&skn=send-policy"
        );
        let key = SasKey::new(
            "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789+/AbCdE=",
            SasKeyEncoding::Raw,
        )
        .unwrap();
        assert_eq!(
            token(
                "sb://My-Namespace.servicebus.windows.net/my-hub",
                &key,
                Some("RootManageSharedAccessKey"),
                1_577_836_800
            ),
            "SharedAccessSignature sr=sb%3A%2F%2FMy-Namespace.servicebus.windows.net%2Fmy-hub\
             &sig=inczME3%2Bc0QAuWpavs%2FhvL%2Frhz%2F9ih4MKYXmO8r2MuM%3D&se=1577836800\
             &skn=RootManageSharedAccessKey"
        );
    }

    #[test]
    fn bad_keys_are_refused_without_quoting_them() {
        assert_eq!(
            SasKey::new("", SasKeyEncoding::Raw).unwrap_err(),
            SasError::EmptyKey
        );
        assert_eq!(
            SasKey::new("", SasKeyEncoding::Base64).unwrap_err(),
            SasError::EmptyKey
        );
        let err = SasKey::new("not base64 at all!", SasKeyEncoding::Base64).unwrap_err();
        assert_eq!(err, SasError::KeyNotBase64);
        assert!(!err.to_string().contains("not base64 at all"));
        let key = SasKey::new("secret-key-bytes", SasKeyEncoding::Raw).unwrap();
        assert_eq!(format!("{key:?}"), "SasKey(<redacted>)");
    }

    #[test]
    fn encoding_keeps_only_unreserved_bytes() {
        assert_eq!(encode("aZ09-._~"), "aZ09-._~");
        assert_eq!(encode("a b/c:d+e=f&g%h"), "a%20b%2Fc%3Ad%2Be%3Df%26g%25h");
        assert_eq!(encode("é"), "%C3%A9");
    }
}
