//! `GET /admin/sessions`: the query (`shard`, `protocol`, `destination`, `imsi`, `offset`,
//! `limit`) and the JSON answer over the pages the shards copy out of their session registries
//! ([`crate::shard::Gateway::sessions`]).
//!
//! What this module does not do: keep sessions (each shard's registry does, in
//! `flows::sessions`) or talk to shards (the admin handler calls the gateway).

use crate::shard::{SessionPage, SessionQuery};

/// `limit` when the query has none.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 1000;

/// A parsed `/admin/sessions` query: the shard asked for (all when `None`) and the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Only this shard.
    pub shard: Option<usize>,
    /// Filters and page.
    pub page: SessionQuery,
}

impl Query {
    /// Parse the query string (values already percent-decoded by `decode`).
    pub fn parse(query: &str, decode: impl Fn(&str) -> Option<String>) -> Result<Query, String> {
        let mut q = Query {
            shard: None,
            page: SessionQuery {
                limit: DEFAULT_LIMIT,
                ..SessionQuery::default()
            },
        };
        let number = |key: &str, value: &str| {
            value
                .parse::<usize>()
                .map_err(|_| format!("{key}: {value:?} is not a non-negative integer"))
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(value).ok_or_else(|| format!("{key}: bad percent-encoding"))?;
            match key {
                "shard" => q.shard = Some(number(key, &value)?),
                "protocol" => {
                    if !matches!(
                        value.as_str(),
                        "http" | "mqtt" | "mqtt-session" | "mqtt-aggregate"
                    ) {
                        return Err(format!(
                            "protocol: {value:?}; expected http, mqtt-session, mqtt-aggregate \
                             or mqtt (CONNECT not routed yet)"
                        ));
                    }
                    q.page.protocol = Some(value)
                }
                "destination" => q.page.destination = Some(value),
                "imsi" => q.page.imsi = Some(value),
                "offset" => q.page.offset = number(key, &value)?,
                "limit" => {
                    let limit = number(key, &value)?;
                    if limit == 0 || limit > MAX_LIMIT {
                        return Err(format!("limit: {limit}; expected 1..={MAX_LIMIT}"));
                    }
                    q.page.limit = limit;
                }
                other => {
                    return Err(format!(
                        "unknown parameter {other:?}; expected shard, protocol, destination, \
                         imsi, offset, limit"
                    ))
                }
            }
        }
        Ok(q)
    }
}

/// The JSON answer: `total` (sessions matching, all shards asked), `offset`, `limit`,
/// `shards_answered` and `sessions`.
pub fn answer_json(query: &Query, page: &SessionPage, shards_answered: usize) -> String {
    let sessions: Vec<serde_json::Value> = page
        .rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "shard": r.shard,
                "peer": r.peer.to_string(),
                "imsi": r.imsi,
                "group": r.group,
                "protocol": r.protocol,
                "destination": r.destination,
                "age_seconds": r.age_secs,
                "bytes_in": r.bytes_in,
                "bytes_out": r.bytes_out,
                "client_id": r.client_id,
            })
        })
        .collect();
    serde_json::json!({
        "total": page.total,
        "offset": query.page.offset,
        "limit": query.page.limit,
        "shards_answered": shards_answered,
        "sessions": sessions,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<Query, String> {
        Query::parse(q, |v| Some(v.to_string()))
    }

    #[test]
    fn defaults_and_bounds() {
        let q = parse("").expect("empty");
        assert_eq!(
            (q.page.offset, q.page.limit, q.shard),
            (0, DEFAULT_LIMIT, None)
        );
        let q = parse("shard=1&protocol=mqtt-session&offset=5&limit=1000&imsi=4401&destination=d")
            .expect("full");
        assert_eq!(q.shard, Some(1));
        assert_eq!(q.page.protocol.as_deref(), Some("mqtt-session"));
        assert_eq!((q.page.offset, q.page.limit), (5, 1000));
        assert_eq!(q.page.imsi.as_deref(), Some("4401"));
        assert_eq!(q.page.destination.as_deref(), Some("d"));
        assert!(parse("limit=1001").is_err());
        assert!(parse("limit=0").is_err());
        assert!(parse("offset=-1").is_err());
        assert!(parse("protocol=udp").is_err());
        assert!(parse("colour=red").is_err());
    }
}
