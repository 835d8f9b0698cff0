//! `adapter = "azure-iot-hub"` over HTTPS: the device's message becomes a device-to-cloud
//! message, `POST /devices/{device_id}/messages/events?api-version=2021-04-12`, authorized by
//! the SAS token the control thread minted (a hub policy token serves every device id; a
//! device key's token serves its one device), the identity as `iothub-app-{name}` application
//! properties. IoT Hub answers 204, which the device receives as its success.
//!
//! What this does not do: mint the token (the control thread does), MQTT to IoT Hub, or
//! cloud-to-device messages.

use std::borrow::Cow;

use bytes::Bytes;

use super::{percent_encode, render, AdapterError, CloudRequest, Context, DeviceMessage};
use crate::policy::cloud::AzureIotHubHttps;
use crate::proto::http1::is_valid_header_value;

/// The REST API version spoken.
pub const API_VERSION: &str = "2021-04-12";

/// IoT Hub's largest device-to-cloud message (256 KiB).
pub const MAX_PAYLOAD: usize = 256 * 1024;

/// The request for one device message.
pub fn request(
    settings: &AzureIotHubHttps,
    msg: &DeviceMessage<'_>,
    ctx: &Context<'_>,
) -> Result<CloudRequest, AdapterError> {
    if msg.body.len() > MAX_PAYLOAD {
        return Err(AdapterError::PayloadTooLarge { limit: MAX_PAYLOAD });
    }
    let authorization = ctx.valid_token()?;
    let device_id = render(&settings.device_id, ctx, b"");
    if device_id.is_empty() || device_id.len() > 128 {
        return Err(AdapterError::Unrepresentable(format!(
            "device id is {} bytes; IoT Hub takes 1 to 128",
            device_id.len()
        )));
    }
    let mut path = String::with_capacity(64 + device_id.len());
    path.push_str("/devices/");
    percent_encode(device_id.as_bytes(), &mut path);
    path.push_str("/messages/events?api-version=");
    path.push_str(API_VERSION);
    let mut headers: Vec<(Cow<'static, str>, String)> = Vec::with_capacity(3 + ctx.fields.len());
    headers.push(("authorization".into(), authorization.to_owned()));
    if let Some(ct) = msg.content_type {
        headers.push(("content-type".into(), ct.to_owned()));
    }
    for (name, value) in ctx.fields {
        if is_valid_header_value(value.as_bytes())
            && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
        {
            headers.push((format!("iothub-app-{name}").into(), value.clone()));
        }
    }
    Ok(CloudRequest {
        method: "POST",
        path_and_query: path,
        headers,
        body: Bytes::copy_from_slice(msg.body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::test_support::{context, fields, now, one_sim, token};
    use crate::policy::template::SIM_PLACEHOLDERS;
    use crate::policy::Template;

    fn settings() -> AzureIotHubHttps {
        AzureIotHubHttps {
            hub: "myhub".into(),
            device_id: Template::parse("{imsi}", SIM_PLACEHOLDERS).expect("template"),
        }
    }

    #[test]
    fn message_goes_to_the_sims_device_with_identity_properties() {
        let table = one_sim();
        let f = fields();
        let t = token("SharedAccessSignature sr=myhub.azure-devices.net&sig=x&se=1&skn=p");
        let ctx = context(&table, &f, "myhub.azure-devices.net", Some(&t));
        let msg = DeviceMessage {
            path: "x",
            content_type: Some("application/json"),
            body: b"{}",
        };
        let req = request(&settings(), &msg, &ctx).expect("request");
        assert_eq!(
            req.path_and_query,
            "/devices/440101234567890/messages/events?api-version=2021-04-12"
        );
        assert_eq!(req.header("authorization"), Some(&*t.authorization));
        assert_eq!(req.header("iothub-app-imsi"), Some("440101234567890"));
        assert_eq!(req.header("iothub-app-imei"), Some("490154203237518"));
    }

    #[test]
    fn no_token_or_an_expired_one_is_a_503_not_an_unsigned_request() {
        let table = one_sim();
        let f = fields();
        let msg = DeviceMessage {
            path: "",
            content_type: None,
            body: b"1",
        };
        let ctx = context(&table, &f, "h", None);
        assert_eq!(
            request(&settings(), &msg, &ctx),
            Err(AdapterError::CredentialUnavailable)
        );
        let mut expired = token("SharedAccessSignature x");
        expired.expires_at = now();
        let ctx = context(&table, &f, "h", Some(&expired));
        assert_eq!(
            request(&settings(), &msg, &ctx).map(|_| ()),
            Err(AdapterError::CredentialUnavailable)
        );
    }
}
