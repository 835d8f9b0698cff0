//! Batching for the cloud adapters that take many messages per call (`gcp-pubsub`,
//! `azure-event-hubs` with `destination.batch`): device requests of one shard to one
//! destination are collected and sent as one cloud call; each device is answered only after
//! that call's answer, with its own share of it (Pub/Sub: its message id) — or, when the call
//! fails, with the failure (no partial success is claimed).
//!
//! ```text
//!  device task ──submit(item)──► queue (per destination, per plan generation)
//!                                 │ full (max_messages / max_bytes) ── flush now
//!                                 │ first item ── linger timer ── flush
//!  flush task: adapters::batch_request ─► pooled upstream conn ─► whole response
//!              ─► adapters::batch_answers ─► each waiting device's slot + wake-up
//! ```
//!
//! Shard-local (`RefCell`, reactor signals): no locks, no atomics. What this module does not
//! do: encode messages (the adapters do), retry a failed call (the devices are told and may
//! retry), or batch across shards.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::http2_exchange::{self, H2Failure};
use super::ShardState;
use crate::adapters::{self, ItemAnswer};
use crate::policy::{DestinationPlan, Plan};
use crate::proto::http1::{self, BodyChunk, BodyDecoder};
use crate::reactor::{self, Signal};
use crate::stats::ErrorKind;
use crate::upstream::driver::HttpConn;
use crate::upstream::UpstreamConn;

/// Largest cloud answer to a batch call read (Pub/Sub's ids for 1,000 messages are ~30 KB).
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Why a batched message was not delivered: the device's answer.
#[derive(Debug, Clone)]
pub struct BatchError {
    /// The status the device gets.
    pub status: u16,
    /// Why (logged; shown with `error_detail = "full"`).
    pub reason: String,
    /// What to count.
    pub kind: ErrorKind,
}

/// One waiting device's place in a batch.
#[derive(Default)]
struct Slot {
    /// The answer and how long the cloud call took (from sending to the whole answer).
    result: RefCell<Option<Result<(ItemAnswer, Duration), BatchError>>>,
    done: Signal,
}

/// Messages collected for one destination.
#[derive(Default)]
struct Queue {
    items: Vec<Vec<u8>>,
    slots: Vec<Rc<Slot>>,
    bytes: usize,
    /// Bumped at every flush, so a linger timer of an earlier batch does not flush a later one.
    seq: u64,
}

/// The shard's batch queues, by (plan generation, destination index).
#[derive(Default)]
pub struct Batcher {
    queues: RefCell<HashMap<(u64, u16), Queue>>,
}

impl Batcher {
    /// Add `item` (from [`adapters::batch_item`]) to `dest`'s current batch and wait for that
    /// batch's answer.
    pub async fn submit(
        &self,
        state: &Rc<ShardState>,
        generation: u64,
        dest: &DestinationPlan,
        item: Vec<u8>,
    ) -> Result<(ItemAnswer, Duration), BatchError> {
        let Some(settings) = dest.adapter.batch() else {
            return Err(BatchError {
                status: 500,
                reason: "destination does not batch".into(),
                kind: ErrorKind::AdapterRejected,
            });
        };
        let key = (generation, dest.id.0);
        let slot = Rc::new(Slot::default());
        let (flush_now, arm_timer) = {
            let mut queues = self.queues.borrow_mut();
            if !queues.contains_key(&key) {
                // First message under this plan generation: forget the empty queues of earlier
                // ones, so reloads do not accumulate them.
                queues.retain(|k, q| k.0 == generation || !q.items.is_empty());
            }
            let queue = queues.entry(key).or_default();
            // An item that would overflow the byte bound goes into the next batch. `bytes`
            // counts each item and its separator; the call adds at most two bytes around them
            // (`[`…`]`), so a batch's body stays within `max_bytes`.
            if !queue.items.is_empty() && queue.bytes + item.len() + 1 + 2 > settings.max_bytes {
                let seq = queue.seq;
                drop(queues);
                self.flush(state, key, seq);
                queues = self.queues.borrow_mut();
            }
            let queue = queues.entry(key).or_default();
            queue.bytes += item.len() + 1;
            queue.items.push(item);
            queue.slots.push(slot.clone());
            let full = queue.items.len() >= settings.max_messages
                || queue.bytes + 2 >= settings.max_bytes
                || settings.linger.is_zero();
            (
                full.then_some(queue.seq),
                (queue.items.len() == 1 && !full).then_some(queue.seq),
            )
        };
        if let Some(seq) = flush_now {
            self.flush(state, key, seq);
        } else if let Some(seq) = arm_timer {
            let state2 = state.clone();
            let linger = settings.linger;
            reactor::spawn(async move {
                reactor::sleep(linger).await;
                state2.batcher.flush(&state2, key, seq);
            })
            .detach();
        }
        slot.done.wait().await;
        let result = slot.result.borrow_mut().take();
        result.unwrap_or_else(|| {
            Err(BatchError {
                status: 502,
                reason: "the batch ended without an answer".into(),
                kind: ErrorKind::UpstreamClosed,
            })
        })
    }

    /// Take batch `seq` of `key` (if it is still the one queued) and send it on its own task.
    fn flush(&self, state: &Rc<ShardState>, key: (u64, u16), seq: u64) {
        let (items, slots) = {
            let mut queues = self.queues.borrow_mut();
            let Some(queue) = queues.get_mut(&key) else {
                return;
            };
            if queue.seq != seq || queue.items.is_empty() {
                return;
            }
            queue.seq += 1;
            queue.bytes = 0;
            (
                std::mem::take(&mut queue.items),
                std::mem::take(&mut queue.slots),
            )
        };
        let state = state.clone();
        reactor::spawn(async move {
            let (plan, generation) = state.current();
            let results = if generation == key.0 {
                send_batch(&state, &plan, generation, key.1, &items).await
            } else {
                // A reload replaced the plan while the batch lingered: its destination may be
                // gone. Nothing was sent; the devices may retry.
                Err(BatchError {
                    status: 503,
                    reason: "configuration reloaded while the message waited for its batch".into(),
                    kind: ErrorKind::UpstreamBackoff,
                })
            };
            match results {
                Ok((answers, cloud_time)) => {
                    for (slot, answer) in slots.iter().zip(answers) {
                        *slot.result.borrow_mut() = Some(Ok((answer, cloud_time)));
                        slot.done.notify();
                    }
                }
                Err(e) => {
                    for slot in &slots {
                        *slot.result.borrow_mut() = Some(Err(e.clone()));
                        slot.done.notify();
                    }
                }
            }
        })
        .detach();
    }
}

/// One cloud call for `items`; each item's answer in order.
async fn send_batch(
    state: &Rc<ShardState>,
    plan: &Plan,
    generation: u64,
    dest_index: u16,
    items: &[Vec<u8>],
) -> Result<(Vec<ItemAnswer>, Duration), BatchError> {
    let dest = plan.destination(crate::policy::DestinationId(dest_index));
    let token = state.token(dest.id);
    let ctx = adapters::Context {
        sim: None,
        fields: &[],
        ip: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        shard: state.id.0,
        host: &dest.host_header,
        token: token.as_ref(),
        now: std::time::SystemTime::now(),
    };
    let refs: Vec<&[u8]> = items.iter().map(Vec::as_slice).collect();
    let request = match adapters::batch_request(&dest.adapter, &refs, &ctx) {
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            let kind = match e {
                adapters::AdapterError::CredentialUnavailable => ErrorKind::CredentialUnavailable,
                _ => ErrorKind::AdapterRejected,
            };
            return Err(BatchError {
                status: e.status(),
                reason: e.to_string(),
                kind,
            });
        }
        None => {
            return Err(BatchError {
                status: 500,
                reason: "destination does not batch".into(),
                kind: ErrorKind::AdapterRejected,
            })
        }
    };
    {
        let mut m = state.metrics.borrow_mut();
        m.cloud_batches += 1;
        m.cloud_batched_messages += items.len() as u64;
    }
    let mut head = BytesMut::new();
    request.write_head(&dest.host_header, &mut head);
    let parts: [&[u8]; 2] = [&head, &request.body];
    let deadline = Instant::now() + dest.pool.response_timeout;
    let timeout = || BatchError {
        status: 504,
        reason: "the cloud did not answer the batch in time".into(),
        kind: ErrorKind::UpstreamTimeout,
    };
    let closed = || BatchError {
        status: 502,
        reason: "the cloud closed the connection before answering the batch".into(),
        kind: ErrorKind::UpstreamClosed,
    };
    // As for single requests: a batch is sent again on a fresh connection only when writing
    // it to a pooled connection failed (the cloud had closed it: nothing was processed), or
    // when an HTTP/2 server refused its stream unprocessed.
    let mut retried = false;
    let mut conn = loop {
        let conn = if retried {
            state.upstreams.connect_new_http(generation, dest).await
        } else {
            state.upstreams.checkout_http(generation, dest).await
        };
        let conn = conn.map_err(|e| BatchError {
            status: if e.is_local() { 503 } else { 502 },
            reason: e.to_string(),
            kind: match e {
                crate::upstream::UpstreamError::Tls(_) => ErrorKind::UpstreamTls,
                crate::upstream::UpstreamError::BackingOff { .. } => ErrorKind::UpstreamBackoff,
                crate::upstream::UpstreamError::LocalResources(_) => ErrorKind::LocalResources,
                _ => ErrorKind::UpstreamConnect,
            },
        })?;
        let mut conn = match conn {
            HttpConn::Http1(conn) => conn,
            HttpConn::Http2(handle) => {
                // One stream on the shared HTTP/2 connection.
                let (request, body) =
                    http2_exchange::request_from_http1(&parts).map_err(|_| closed())?;
                match http2_exchange::round_trip(&handle, request, body, deadline).await {
                    Ok((response, sent_at)) => {
                        if let Some(since) = handle.waiting_since {
                            // It queued for a stream slot: the pool wait ends as it opens.
                            state.record_latency(
                                dest,
                                crate::stats::Latency::PoolWait,
                                crate::stats::Protocol::Http,
                                sent_at.saturating_duration_since(since),
                            );
                        }
                        let (head, mut body) = response.into_parts();
                        let retry_after = head
                            .headers
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u32>().ok());
                        let body = http2_exchange::read_body(&mut body, MAX_ANSWER_BYTES, deadline)
                            .await
                            .ok_or_else(closed)?;
                        let status = head.status.as_u16();
                        let answers =
                            batch_answers(state, dest, status, retry_after, &body, items.len())?;
                        return Ok((answers, sent_at.elapsed()));
                    }
                    Err(H2Failure::Refused(_)) if !retried => {
                        retried = true;
                        state.metrics.borrow_mut().upstream_retries += 1;
                        continue;
                    }
                    Err(H2Failure::Timeout) => return Err(timeout()),
                    Err(_) => return Err(closed()),
                }
            }
        };
        match reactor::timeout_at(deadline, conn.stream.write_all(&parts)).await {
            Ok(Ok(())) => break conn,
            Ok(Err(_)) if conn.reused && !retried => {
                retried = true;
                state.metrics.borrow_mut().upstream_retries += 1;
            }
            Ok(Err(_)) => return Err(closed()),
            Err(_) => return Err(timeout()),
        }
    };
    // The cloud's share of each device's wait: from the batch written to its whole answer.
    let sent_at = Instant::now();
    let head = super::http_forward::read_response_head_for_batch(&mut conn, deadline)
        .await
        .map_err(|status| if status == 504 { timeout() } else { closed() })?;
    let body = read_body(&mut conn, &head, deadline)
        .await
        .ok_or_else(closed)?;
    if head.keep_alive && conn.stream.plaintext().is_empty() {
        state.upstreams.check_in(conn);
    }
    let retry_after = head
        .headers
        .iter()
        .find(|h| h.is("retry-after"))
        .and_then(|h| std::str::from_utf8(&h.value).ok())
        .and_then(|v| v.trim().parse::<u32>().ok());
    let answers = batch_answers(state, dest, head.status, retry_after, &body, items.len())?;
    Ok((answers, sent_at.elapsed()))
}

/// Count the cloud's answer to a batch and split it into the items' answers. A refusal's
/// `Retry-After` (429, 503) is every device's, as it is a single device's when the cloud's
/// answer is relayed.
fn batch_answers(
    state: &ShardState,
    dest: &DestinationPlan,
    status: u16,
    retry_after: Option<u32>,
    body: &[u8],
    items: usize,
) -> Result<Vec<ItemAnswer>, BatchError> {
    state
        .metrics
        .borrow_mut()
        .cloud_response(dest.adapter.kind().index(), status);
    let mut answers =
        adapters::batch_answers(&dest.adapter, status, body, items).map_err(|why| BatchError {
            status: 502,
            reason: format!("the cloud's answer to the batch: {why}"),
            kind: ErrorKind::UpstreamProtocol,
        })?;
    if !(200..300).contains(&status) {
        for answer in &mut answers {
            answer.retry_after = retry_after;
        }
    }
    Ok(answers)
}

/// The whole response body (de-chunked), at most [`MAX_ANSWER_BYTES`].
async fn read_body(
    conn: &mut UpstreamConn,
    head: &http1::ResponseHead,
    deadline: Instant,
) -> Option<Bytes> {
    let mut decoder = BodyDecoder::new(head.body);
    let mut body = BytesMut::new();
    loop {
        match decoder.decode(conn.stream.plaintext()) {
            Ok(BodyChunk::Data(b)) => {
                body.extend_from_slice(&b);
                if body.len() > MAX_ANSWER_BYTES {
                    return None;
                }
                continue;
            }
            Ok(BodyChunk::Done(b)) => {
                body.extend_from_slice(&b);
                return Some(body.freeze());
            }
            Ok(BodyChunk::Incomplete) => {}
            Err(_) => return None,
        }
        if body.len() > MAX_ANSWER_BYTES {
            return None;
        }
        match reactor::timeout_at(deadline, conn.stream.fill()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return decoder.eof().ok().map(|()| body.freeze()),
            _ => return None,
        }
    }
}
