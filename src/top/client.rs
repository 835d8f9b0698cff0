//! The admin API as `simgate top` reads it: one plain HTTP/1.1 `GET` per request over a
//! blocking `std::net::TcpStream` (`Connection: close`), with the bearer token when one is
//! given, and the JSON answers of `/admin/probes` and `/admin/usage` decoded into the few fields
//! the view shows.
//!
//! What it does not do: TLS (the admin endpoint is plain HTTP, loopback by default), keep-alive,
//! redirects, or chunked bodies (simgate's admin server answers with `Content-Length`; without
//! one the body runs to the end of the connection). One request at a time, with a timeout.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::expo::Exposition;
use super::TopError;

/// How long one admin request may take, connect included.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where the admin API is and how to authenticate.
#[derive(Debug, Clone)]
pub struct Admin {
    /// `host:port`.
    pub addr: String,
    /// The bearer token (`gateway.admin_token`), if any.
    pub token: Option<String>,
}

/// One answer: status and body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// The body as text (lossy UTF-8).
    pub body: String,
}

impl Admin {
    /// `GET path`; a 401 becomes [`TopError::Unauthorized`], an IO failure
    /// [`TopError::Unreachable`]. Other statuses are returned.
    pub fn get(&self, path: &str) -> Result<Answer, TopError> {
        let unreachable = |e: std::io::Error| TopError::Unreachable {
            addr: self.addr.clone(),
            error: e.to_string(),
        };
        let addrs: Vec<_> = self.addr.to_socket_addrs().map_err(unreachable)?.collect();
        let mut last = std::io::Error::other("no address");
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let mut stream = stream.ok_or(last).map_err(unreachable)?;
        stream
            .set_read_timeout(Some(TIMEOUT))
            .map_err(unreachable)?;
        stream
            .set_write_timeout(Some(TIMEOUT))
            .map_err(unreachable)?;
        let auth = self
            .token
            .as_deref()
            .map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\n\r\n",
            self.addr
        );
        stream.write_all(request.as_bytes()).map_err(unreachable)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).map_err(unreachable)?;
        let answer = parse_response(&raw).map_err(|e| TopError::BadAnswer {
            path: path.to_owned(),
            error: e.to_owned(),
        })?;
        if answer.status == 401 {
            return Err(TopError::Unauthorized {
                addr: self.addr.clone(),
                token_given: self.token.is_some(),
            });
        }
        Ok(answer)
    }

    /// `GET path` expecting 200.
    fn get_ok(&self, path: &str) -> Result<String, TopError> {
        let a = self.get(path)?;
        if a.status != 200 {
            return Err(TopError::BadAnswer {
                path: path.to_owned(),
                error: format!("HTTP {}: {}", a.status, a.body.trim()),
            });
        }
        Ok(a.body)
    }

    /// Everything one refresh shows, read now.
    pub fn sample(&self) -> Result<Sample, TopError> {
        let text = self.get_ok("/metrics")?;
        let at = Instant::now();
        let metrics = Exposition::parse(&text).map_err(|e| TopError::BadAnswer {
            path: "/metrics".into(),
            error: e.to_string(),
        })?;
        let ready = self.get("/readyz")?;
        let probes =
            parse_probes(&self.get_ok("/admin/probes")?).map_err(|e| TopError::BadAnswer {
                path: "/admin/probes".into(),
                error: e,
            })?;
        // 409: the gateway runs with `usage.enabled = false`; no SIM rows to show.
        let usage_answer = self.get("/admin/usage")?;
        let usage = match usage_answer.status {
            409 => Vec::new(),
            200 => parse_usage(&usage_answer.body).map_err(|e| TopError::BadAnswer {
                path: "/admin/usage".into(),
                error: e,
            })?,
            status => {
                return Err(TopError::BadAnswer {
                    path: "/admin/usage".into(),
                    error: format!("HTTP {status}: {}", usage_answer.body.trim()),
                })
            }
        };
        Ok(Sample {
            at,
            metrics,
            ready: Readiness {
                ready: ready.status == 200,
                detail: ready.body.trim().to_owned(),
            },
            probes,
            usage,
        })
    }
}

/// One reading of the admin API.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When `/metrics` answered (rates divide by the time between two of these).
    pub at: Instant,
    /// `/metrics`.
    pub metrics: Exposition,
    /// `/readyz`.
    pub ready: Readiness,
    /// `/admin/probes`, one per destination.
    pub probes: Vec<Probe>,
    /// `/admin/usage`, one per SIM and group.
    pub usage: Vec<SimUsage>,
}

/// `/readyz`: 200 or not, and its text (`ready`, or what is missing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Answered 200.
    pub ready: bool,
    /// The body, trimmed.
    pub detail: String,
}

/// One destination of `/admin/probes`.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Destination name.
    pub destination: String,
    /// `pending`, `ok`, `failed`, `no_credential`.
    pub result: String,
    /// Failures in a row.
    pub consecutive_failures: u64,
    /// Connect + TLS + exchange of the last probe, in ms, when every stage has a time.
    pub round_trip_ms: Option<f64>,
    /// `detail` of a passing probe or `error` of a failing one.
    pub note: Option<String>,
}

/// One row of `/admin/usage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimUsage {
    /// IMSI or `unknown`.
    pub imsi: String,
    /// Group name.
    pub group: String,
    /// Messages uplink.
    pub up_msgs: u64,
    /// Bytes uplink.
    pub up_bytes: u64,
    /// Messages downlink.
    pub down_msgs: u64,
    /// Bytes downlink.
    pub down_bytes: u64,
    /// Errors.
    pub errors: u64,
}

impl SimUsage {
    /// Bytes both ways: what "top by traffic" sorts by.
    pub fn bytes(&self) -> u64 {
        self.up_bytes.saturating_add(self.down_bytes)
    }
}

fn parse_response(raw: &[u8]) -> Result<Answer, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("connection closed inside the response head"),
        Err(_) => return Err("not an HTTP response"),
    };
    let status = response.code.ok_or("no status")?;
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| {
            std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or("bad Content-Length")
        })
        .transpose()?;
    let body = &raw[head..];
    let body = match length {
        Some(n) if n <= body.len() => &body[..n],
        Some(_) => return Err("connection closed inside the body"),
        None => body,
    };
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

fn parse_probes(text: &str) -> Result<Vec<Probe>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let list = v["destinations"]
        .as_array()
        .ok_or("no `destinations` array")?;
    Ok(list
        .iter()
        .map(|d| {
            let last = &d["last"];
            let round_trip_ms = ["connect", "tls", "exchange"]
                .iter()
                .map(|s| last["stages"][s]["ms"].as_f64())
                .sum::<Option<f64>>();
            let note = last["detail"]
                .as_str()
                .or_else(|| last["error"].as_str())
                .map(str::to_owned);
            Probe {
                destination: d["destination"].as_str().unwrap_or("?").to_owned(),
                result: d["result"].as_str().unwrap_or("?").to_owned(),
                consecutive_failures: d["consecutive_failures"].as_u64().unwrap_or(0),
                round_trip_ms,
                note,
            }
        })
        .collect())
}

fn parse_usage(text: &str) -> Result<Vec<SimUsage>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let list = v["sims"].as_array().ok_or("no `sims` array")?;
    let n = |row: &serde_json::Value, k: &str| row[k].as_u64().unwrap_or(0);
    Ok(list
        .iter()
        .map(|row| SimUsage {
            imsi: row["imsi"].as_str().unwrap_or("?").to_owned(),
            group: row["group"].as_str().unwrap_or("?").to_owned(),
            up_msgs: n(row, "up_msgs"),
            up_bytes: n(row, "up_bytes"),
            down_msgs: n(row, "down_msgs"),
            down_bytes: n(row, "down_bytes"),
            errors: n(row, "errors"),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_by_length_or_to_the_end() {
        let a = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef").unwrap();
        assert_eq!((a.status, a.body.as_str()), (200, "abc"));
        let a = parse_response(b"HTTP/1.1 503 Service Unavailable\r\n\r\nnot yet\n").unwrap();
        assert_eq!((a.status, a.body.as_str()), (503, "not yet\n"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn probes_and_usage_json() {
        let probes = parse_probes(
            r#"{"interval_ms":1000,"timeout_ms":5000,"destinations":[
            {"destination":"sink","result":"ok","consecutive_failures":0,"last":{"detail":"HTTP 200",
             "error":null,"stages":{"connect":{"ok":true,"ms":0.5},"tls":{"ok":true,"ms":1.0},
             "exchange":{"ok":true,"ms":0.5}}}},
            {"destination":"b","result":"pending","consecutive_failures":0,"last":null}]}"#,
        )
        .unwrap();
        assert_eq!(probes[0].round_trip_ms, Some(2.0));
        assert_eq!(probes[0].note.as_deref(), Some("HTTP 200"));
        assert_eq!(probes[1].result, "pending");
        assert_eq!(probes[1].round_trip_ms, None);
        let usage = parse_usage(
            r#"{"from":"x","to":"y","group":null,"totals":{},"sims":[
            {"imsi":"440101234567890","group":"g","up_msgs":2,"up_bytes":300,"down_msgs":2,
             "down_bytes":100,"errors":0,"first_seen":"x","last_seen":"y"}]}"#,
        )
        .unwrap();
        assert_eq!(usage[0].bytes(), 400);
        assert!(parse_usage("{}").is_err());
    }
}
