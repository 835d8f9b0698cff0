//! Topic Name and Topic Filter syntax (§4.7, shared subscriptions §4.8.2).
//!
//! These checks look at wildcard placement and emptiness only; UTF-8 validity is checked when the
//! string is read. Matching a name against a filter is not done here.

use super::error::MqttError;
use super::packet::ProtocolVersion;

/// Checks a Topic Name: no `+` or `#` ([MQTT-3.3.2-2], [MQTT-4.7.0-1]) and, unless `allow_empty`
/// (5.0 PUBLISH carrying a Topic Alias), at least one character ([MQTT-4.7.3-1]).
pub fn validate_topic_name(name: &[u8], allow_empty: bool) -> Result<(), MqttError> {
    if name.is_empty() && !allow_empty {
        return Err(MqttError::InvalidTopicName);
    }
    if name.iter().any(|&byte| byte == b'+' || byte == b'#') {
        return Err(MqttError::InvalidTopicName);
    }
    Ok(())
}

/// Checks a Topic Filter: at least one character ([MQTT-4.7.3-1]); `#` only as the whole last level
/// ([MQTT-4.7.1-1]); `+` only as a whole level ([MQTT-4.7.1-2]). In 5.0 a shared subscription
/// `$share/{ShareName}/{filter}` needs a non-empty ShareName without `/`, `+` or `#` and a valid
/// filter after it ([MQTT-4.8.2-1], [MQTT-4.8.2-2]).
pub fn validate_topic_filter(filter: &[u8], version: ProtocolVersion) -> Result<(), MqttError> {
    let filter = match (version, shared_subscription_parts(filter)) {
        (ProtocolVersion::V5, Some((share_name, rest))) => {
            if share_name.is_empty() || share_name.iter().any(|&byte| byte == b'+' || byte == b'#')
            {
                return Err(MqttError::InvalidTopicFilter);
            }
            rest.ok_or(MqttError::InvalidTopicFilter)?
        }
        _ => filter,
    };
    if filter.is_empty() {
        return Err(MqttError::InvalidTopicFilter);
    }
    let mut levels = filter.split(|&byte| byte == b'/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        if level.contains(&b'#') && (level != b"#" || !is_last) {
            return Err(MqttError::InvalidTopicFilter);
        }
        if level.contains(&b'+') && level != b"+" {
            return Err(MqttError::InvalidTopicFilter);
        }
    }
    Ok(())
}

/// Splits `$share/{ShareName}/{filter}` into the share name and (if there is a `/` after it) the
/// filter; `None` if `filter` is not a shared subscription.
pub fn shared_subscription_parts(filter: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let rest = filter.strip_prefix(b"$share/")?;
    match rest.iter().position(|&byte| byte == b'/') {
        Some(slash) => Some((&rest[..slash], Some(&rest[slash + 1..]))),
        None => Some((rest, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert_eq!(validate_topic_name(b"a/b", false), Ok(()));
        assert_eq!(validate_topic_name(b"/", false), Ok(()));
        assert_eq!(
            validate_topic_name(b"", false),
            Err(MqttError::InvalidTopicName)
        );
        assert_eq!(validate_topic_name(b"", true), Ok(()));
        assert_eq!(
            validate_topic_name(b"a/+", false),
            Err(MqttError::InvalidTopicName)
        );
        assert_eq!(
            validate_topic_name(b"a/#", false),
            Err(MqttError::InvalidTopicName)
        );
    }

    #[test]
    fn topic_filters_from_section_4_7() {
        let v = ProtocolVersion::V311;
        for good in [
            &b"#"[..],
            b"sport/#",
            b"+",
            b"+/+",
            b"/+",
            b"sport/+/player1",
            b"a//b",
            b"$SYS/#",
        ] {
            assert_eq!(
                validate_topic_filter(good, v),
                Ok(()),
                "{}",
                String::from_utf8_lossy(good)
            );
        }
        for bad in [
            &b""[..],
            b"sport/tennis#",
            b"sport/tennis/#/ranking",
            b"sport+",
            b"#/a",
            b"a/b+/c",
        ] {
            assert_eq!(
                validate_topic_filter(bad, v),
                Err(MqttError::InvalidTopicFilter),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn shared_subscriptions_in_v5_only() {
        let v5 = ProtocolVersion::V5;
        assert_eq!(validate_topic_filter(b"$share/group/a/+", v5), Ok(()));
        assert_eq!(
            validate_topic_filter(b"$share//a", v5),
            Err(MqttError::InvalidTopicFilter)
        );
        assert_eq!(
            validate_topic_filter(b"$share/g+/a", v5),
            Err(MqttError::InvalidTopicFilter)
        );
        assert_eq!(
            validate_topic_filter(b"$share/group", v5),
            Err(MqttError::InvalidTopicFilter)
        );
        assert_eq!(
            validate_topic_filter(b"$share/group/", v5),
            Err(MqttError::InvalidTopicFilter)
        );
        // 3.1.1 has no shared subscriptions: an ordinary filter.
        assert_eq!(
            validate_topic_filter(b"$share/group", ProtocolVersion::V311),
            Ok(())
        );
    }
}
