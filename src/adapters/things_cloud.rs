//! `adapter = "things-cloud"` (Cumulocity IoT): the device's JSON body becomes a measurement
//! (`POST /measurement/measurements`) or an event (`POST /event/events`) with the vendor media
//! types and Basic authentication as `{tenant}/{user}`.
//!
//! The adapter sets `source.id` to the SIM's managed-object id (`source_id`, default
//! `{tag.c8y_id}`; a device cannot post for another device's object) and `time` to now when
//! the device left it out, then checks the shape Cumulocity requires, so that a body that is
//! not a valid measurement is the device's 400 with the reason, not the cloud's 422: a
//! measurement needs `type` and at least one fragment whose series each carry a numeric
//! `value`; an event needs `type` and `text`.
//!
//! What this does not do: create managed objects, alarms, or bulk (`measurements` array) posts.

use std::borrow::Cow;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::{render, AdapterError, CloudRequest, Context, DeviceMessage};
use crate::policy::cloud::{ThingsCloud, ThingsCloudKind};

/// Media type of a measurement.
pub const MEASUREMENT_TYPE: &str = "application/vnd.com.nsn.cumulocity.measurement+json";
/// Media type of an event.
pub const EVENT_TYPE: &str = "application/vnd.com.nsn.cumulocity.event+json";
/// Largest body accepted from a device.
pub const MAX_PAYLOAD: usize = 256 * 1024;

/// The request for one device message.
pub fn request(
    settings: &ThingsCloud,
    msg: &DeviceMessage<'_>,
    ctx: &Context<'_>,
) -> Result<CloudRequest, AdapterError> {
    if msg.body.len() > MAX_PAYLOAD {
        return Err(AdapterError::PayloadTooLarge { limit: MAX_PAYLOAD });
    }
    let bad = |why: String| Err(AdapterError::BadMessage(why));
    let mut object = match serde_json::from_slice::<Value>(msg.body) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return bad("the body must be a JSON object".into()),
        Err(e) => return bad(format!("the body is not JSON: {e}")),
    };
    let source_id = render(&settings.source_id, ctx, b"");
    if source_id.is_empty() {
        return Err(AdapterError::Unrepresentable(
            "the SIM has no managed-object id (source_id rendered empty)".into(),
        ));
    }
    let mut source = Map::new();
    source.insert("id".into(), Value::String(source_id));
    object.insert("source".into(), Value::Object(source));
    if !object.contains_key("time") {
        object.insert("time".into(), Value::String(rfc3339(ctx)));
    }
    if !object.get("time").is_some_and(Value::is_string) {
        return bad("\"time\" must be an ISO-8601 string".into());
    }
    if object
        .get("type")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return bad("\"type\" (a non-empty string) is required".into());
    }
    let (path, media) = match settings.kind {
        ThingsCloudKind::Measurement => {
            check_measurement(&object).map_err(AdapterError::BadMessage)?;
            ("/measurement/measurements", MEASUREMENT_TYPE)
        }
        ThingsCloudKind::Event => {
            if !object.get("text").is_some_and(Value::is_string) {
                return bad("an event needs \"text\" (a string)".into());
            }
            ("/event/events", EVENT_TYPE)
        }
    };
    let headers: Vec<(Cow<'static, str>, String)> = vec![
        (
            "authorization".into(),
            String::from_utf8_lossy(&settings.authorization.0).into_owned(),
        ),
        ("content-type".into(), media.to_owned()),
        ("accept".into(), media.to_owned()),
    ];
    Ok(CloudRequest {
        method: "POST",
        path_and_query: path.to_owned(),
        headers,
        body: Bytes::from(Value::Object(object).to_string()),
    })
}

/// Fields of a measurement that are not fragments.
const RESERVED: &[&str] = &["source", "time", "type", "id", "self"];

fn check_measurement(object: &Map<String, Value>) -> Result<(), String> {
    let mut fragments = 0;
    for (name, value) in object {
        if RESERVED.contains(&name.as_str()) {
            continue;
        }
        let Value::Object(series) = value else {
            return Err(format!("fragment {name:?} must be an object of series"));
        };
        if series.is_empty() {
            return Err(format!("fragment {name:?} has no series"));
        }
        for (series_name, s) in series {
            if !s.get("value").is_some_and(Value::is_number) {
                return Err(format!(
                    "series {name}.{series_name} needs a numeric \"value\""
                ));
            }
        }
        fragments += 1;
    }
    if fragments == 0 {
        return Err("a measurement needs at least one fragment, e.g. \
                    {\"c8y_Temperature\":{\"T\":{\"value\":21.5,\"unit\":\"C\"}}}"
            .into());
    }
    Ok(())
}

/// `now` as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn rfc3339(ctx: &Context<'_>) -> String {
    let d = ctx.now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::test_support::{context, fields, one_sim};
    use crate::policy::template::SIM_PLACEHOLDERS;
    use crate::policy::{Secret, Template};

    fn settings(kind: ThingsCloudKind) -> ThingsCloud {
        ThingsCloud {
            tenant: "t123".into(),
            kind,
            source_id: Template::parse("{tag.c8y_id}", SIM_PLACEHOLDERS).expect("t"),
            authorization: Secret("Basic dDEyMy91OnB3".into()),
        }
    }

    #[test]
    fn measurement_gets_the_sims_source_and_a_time() {
        let table = one_sim();
        let f = fields();
        let ctx = context(&table, &f, "t.example", None);
        let body = br#"{"type":"c8y_Temperature","c8y_Temperature":{"T":{"value":21.5,"unit":"C"}},"source":{"id":"999"}}"#;
        let msg = DeviceMessage {
            path: "",
            content_type: None,
            body,
        };
        let req = request(&settings(ThingsCloudKind::Measurement), &msg, &ctx).expect("request");
        assert_eq!(req.path_and_query, "/measurement/measurements");
        assert_eq!(req.header("content-type"), Some(MEASUREMENT_TYPE));
        assert_eq!(req.header("accept"), Some(MEASUREMENT_TYPE));
        assert_eq!(req.header("authorization"), Some("Basic dDEyMy91OnB3"));
        let v: Value = serde_json::from_slice(&req.body).expect("json");
        assert_eq!(
            v["source"]["id"], "4711",
            "the SIM's object, not the device's claim"
        );
        assert_eq!(v["time"], "2026-12-05T06:00:00.000Z");
    }

    #[test]
    fn invalid_measurements_and_events_are_the_devices_400() {
        let table = one_sim();
        let f = fields();
        let ctx = context(&table, &f, "t", None);
        for (kind, body) in [
            (ThingsCloudKind::Measurement, &b"not json"[..]),
            (ThingsCloudKind::Measurement, br#"{"type":"x"}"#),
            (
                ThingsCloudKind::Measurement,
                br#"{"type":"x","f":{"s":{"value":"high"}}}"#,
            ),
            (ThingsCloudKind::Measurement, br#"{"f":{"s":{"value":1}}}"#),
            (ThingsCloudKind::Event, br#"{"type":"x"}"#),
        ] {
            let msg = DeviceMessage {
                path: "",
                content_type: None,
                body,
            };
            let err = request(&settings(kind), &msg, &ctx).expect_err("invalid");
            assert_eq!(err.status(), 400, "{err}");
        }
        let ok = DeviceMessage {
            path: "",
            content_type: None,
            body: br#"{"type":"c8y_Boot","text":"booted"}"#,
        };
        assert!(request(&settings(ThingsCloudKind::Event), &ok, &ctx).is_ok());
    }
}
