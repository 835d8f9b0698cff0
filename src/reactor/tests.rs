//! Reactor tests over loopback. Every wait is bounded by a `timeout` so a bug fails the test
//! instead of hanging it; no sleep stands in for synchronisation.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;

const LIMIT: Duration = Duration::from_secs(20);

fn small_cfg() -> ReactorConfig {
    ReactorConfig {
        ring_entries: 256,
        recv_buffers: 64,
        recv_buffer_size: 4096,
    }
}

fn listen() -> io::Result<(TcpListener, SocketAddr)> {
    // backlog 1024 (std's default is 128): the tests open hundreds of connections at once
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    socket.listen(1024)?;
    let std_listener: std::net::TcpListener = socket.into();
    let listener = TcpListener::from_std(std_listener)?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Yield once to the reactor (lets other tasks and io make progress).
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

async fn read_to_end(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut out = BytesMut::new();
    while stream.recv_append(&mut out).await? > 0 {}
    Ok(out.to_vec())
}

/// Accept `n` connections and echo each one until EOF, then half-close.
async fn echo_server(mut listener: TcpListener, n: usize) -> io::Result<()> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (mut stream, _peer) = listener.accept().await?;
        tasks.push(spawn(async move {
            while let Some(buf) = stream
                .recv()
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("server recv: {e}")))?
            {
                stream
                    .send_all(Bytes::copy_from_slice(&buf))
                    .await
                    .map_err(|e| io::Error::new(e.kind(), format!("server send: {e}")))?;
            }
            stream.shutdown_write().await?;
            Ok::<(), io::Error>(())
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add((i % 251) as u8))
        .collect()
}

#[test]
fn echo_over_loopback_with_multishot_accept_and_recv() -> io::Result<()> {
    block_on(&small_cfg(), async {
        let (listener, addr) = listen()?;
        let server = spawn(echo_server(listener, 1));
        let mut client = TcpStream::connect(addr).await?;
        assert_eq!(client.peer_addr()?, addr);
        let msg = pattern(7, 10_000);
        client.send_all(Bytes::from(msg.clone())).await?;
        client.shutdown_write().await?;
        let echoed = timeout(LIMIT, read_to_end(&mut client)).await??;
        assert_eq!(echoed, msg);
        assert!(client.recv().await?.is_none(), "EOF repeats");
        timeout(LIMIT, server).await??;
        let s = stats();
        assert!(s.completions > 0 && s.ops_submitted > 0 && s.loop_turns > 0);
        Ok(())
    })?
}

#[test]
fn five_hundred_concurrent_connections_echo() -> io::Result<()> {
    const N: usize = 500;
    block_on(&ReactorConfig::default(), async {
        let (listener, addr) = listen()?;
        let server = spawn(echo_server(listener, N));
        let mut clients = Vec::new();
        for i in 0..N {
            clients.push(spawn(async move {
                let ctx = |what: &'static str| {
                    move |e: io::Error| io::Error::new(e.kind(), format!("client {i} {what}: {e}"))
                };
                let mut c = TcpStream::connect(addr).await.map_err(ctx("connect"))?;
                let msg = pattern(i as u8, 1000 + i);
                c.send_all(Bytes::from(msg.clone()))
                    .await
                    .map_err(ctx("send"))?;
                c.shutdown_write().await.map_err(ctx("shutdown"))?;
                let echoed = read_to_end(&mut c).await.map_err(ctx("read"))?;
                Ok::<bool, io::Error>(echoed == msg)
            }));
        }
        let mut results = Vec::new();
        for c in clients {
            results.push(timeout(LIMIT, c).await?);
        }
        timeout(LIMIT, server).await??;
        for r in results {
            assert!(r?, "echo mismatch");
        }
        let s = stats();
        assert_eq!(s.recv_buffers_in_use, 0, "every buffer back in the ring");
        assert_eq!(s.tasks_alive, 0);
        Ok(())
    })?
}

#[test]
fn recv_buffers_return_to_the_ring_when_dropped() -> io::Result<()> {
    block_on(&small_cfg(), async {
        let (mut listener, addr) = listen()?;
        let mut client = TcpStream::connect(addr).await?;
        let (mut server, _) = listener.accept().await?;
        client.send_all(Bytes::from_static(b"hello")).await?;
        let buf = timeout(LIMIT, server.recv()).await??;
        let buf = buf.ok_or_else(|| io::Error::other("unexpected EOF"))?;
        assert_eq!(&buf[..], b"hello");
        assert_eq!(stats().recv_buffers_in_use, 1);
        drop(buf);
        assert_eq!(stats().recv_buffers_in_use, 0);

        // Data queued in the stream's slot (nobody awaiting) is released when the stream drops.
        client.send_all(Bytes::from(vec![1u8; 3 * 4096])).await?;
        while stats().recv_buffers_in_use == 0 {
            timeout(LIMIT, YieldNow(false)).await?;
        }
        let before = stats().ops_in_flight;
        drop(server);
        drop(client);
        drop(listener);
        // orphaned ops finish after their cancel completes
        timeout(LIMIT, async {
            while stats().ops_in_flight >= before || stats().recv_buffers_in_use > 0 {
                YieldNow(false).await;
            }
        })
        .await?;
        assert_eq!(stats().recv_buffers_in_use, 0);
        Ok(())
    })?
}

#[test]
fn recv_dropped_by_timeout_then_stream_reused_and_dropped() -> io::Result<()> {
    block_on(&small_cfg(), async {
        let (mut listener, addr) = listen()?;
        let mut client = TcpStream::connect(addr).await?;
        let (mut server, _) = listener.accept().await?;
        // Nothing sent: the recv loses against the timeout and is dropped.
        let lost = timeout(Duration::from_millis(20), server.recv()).await;
        assert!(matches!(lost, Err(Elapsed)));
        // The stream is still usable and gets the next bytes.
        client.send_all(Bytes::from_static(b"after")).await?;
        let got = timeout(LIMIT, server.recv()).await??;
        assert_eq!(got.as_deref(), Some(&b"after"[..]));
        drop(got);
        // Lose another recv, then drop the stream with the multishot still armed.
        let lost = timeout(Duration::from_millis(5), server.recv()).await;
        assert!(lost.is_err());
        drop(server);
        client.send_all(Bytes::from_static(b"to nobody")).await.ok();
        // a fresh connection still works on the same reactor
        let mut c2 = TcpStream::connect(addr).await?;
        let (mut s2, _) = timeout(LIMIT, listener.accept()).await??;
        c2.send_all(Bytes::from_static(b"x")).await?;
        let got = timeout(LIMIT, s2.recv()).await??;
        assert_eq!(got.as_deref(), Some(&b"x"[..]));
        Ok(())
    })?
}

#[test]
fn enobufs_with_tiny_ring_rearms_and_keeps_order() -> io::Result<()> {
    const CLIENTS: usize = 3;
    const LEN: usize = 4096;
    let cfg = ReactorConfig {
        ring_entries: 64,
        recv_buffers: 4,
        recv_buffer_size: 64,
    };
    block_on(&cfg, async {
        let (mut listener, addr) = listen()?;
        let mut clients = Vec::new();
        let mut servers = Vec::new();
        for i in 0..CLIENTS {
            let mut c = TcpStream::connect(addr).await?;
            c.send_all(Bytes::from(pattern(i as u8, LEN))).await?;
            c.shutdown_write().await?;
            clients.push(c);
            let (s, _) = timeout(LIMIT, listener.accept()).await??;
            servers.push(s);
        }
        // Phase 1: hold one buffer of the first stream and let its multishot recv drain the
        // ring (the other three buffers sit queued in its slot); it ends with ENOBUFS.
        let held = timeout(LIMIT, servers[0].recv()).await??;
        timeout(LIMIT, async {
            while stats().recv_buffers_in_use < 4 {
                YieldNow(false).await;
            }
        })
        .await?;
        assert_eq!(stats().recv_buffers_in_use, 4);
        // Phase 2: release and read everything concurrently.
        let mut firsts: Vec<Vec<u8>> = vec![Vec::new(); CLIENTS];
        firsts[0] = held.map(|b| b.to_vec()).unwrap_or_default();
        let mut readers = Vec::new();
        for mut s in servers {
            readers.push(spawn(async move { read_to_end(&mut s).await }));
        }
        for (i, r) in readers.into_iter().enumerate() {
            let rest = timeout(LIMIT, r).await??;
            firsts[i].extend_from_slice(&rest);
            assert_eq!(
                firsts[i],
                pattern(i as u8, LEN),
                "stream {i} in order and complete"
            );
        }
        let s = stats();
        assert!(s.enobufs_rearms > 0, "ENOBUFS path exercised: {s:?}");
        assert_eq!(s.recv_buffers_in_use, 0);
        Ok(())
    })?
}

#[test]
fn connect_to_closed_port_is_refused() -> io::Result<()> {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    block_on(&small_cfg(), async {
        let err = timeout(LIMIT, TcpStream::connect(addr))
            .await?
            .err()
            .map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::ConnectionRefused));
        Ok(())
    })?
}

#[test]
fn vectored_send_of_several_mib_arrives_intact() -> io::Result<()> {
    block_on(&small_cfg(), async {
        let (mut listener, addr) = listen()?;
        let mut client = TcpStream::connect(addr).await?;
        let (mut server, _) = listener.accept().await?;
        // 2000 slices (more than one sendmsg's 1024 iovecs), odd sizes, ~6 MiB.
        let slices: Vec<Bytes> = (0..2000)
            .map(|i| Bytes::from(pattern(i as u8, 3000 + (i % 17) * 13)))
            .collect();
        let expected: Vec<u8> = slices.iter().flat_map(|b| b.iter().copied()).collect();
        assert!(expected.len() > 6_000_000);
        let reader = spawn(async move { read_to_end(&mut server).await });
        timeout(LIMIT, client.send_all_vectored(slices)).await??;
        client.shutdown_write().await?;
        let got = timeout(LIMIT, reader).await??;
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "payload intact");
        Ok(())
    })?
}

#[test]
fn poll_based_sends_restart_short_sends_and_keep_every_byte() -> io::Result<()> {
    block_on(&small_cfg(), async {
        let (mut listener, addr) = listen()?;
        let mut client = TcpStream::connect(addr).await?;
        let (mut server, _) = listener.accept().await?;
        // 8 MiB in 1 MiB pieces: more than the socket buffers take at once, so the kernel
        // completes sends short while nobody reads yet, and `poll_send` hands back the rest.
        let pieces: Vec<Bytes> = (0..8).map(|i| Bytes::from(pattern(i, 1 << 20))).collect();
        let expected: Vec<u8> = pieces.iter().flat_map(|b| b.iter().copied()).collect();
        let reader = spawn(async move { read_to_end(&mut server).await });
        let mut short_sends = 0;
        for piece in pieces {
            let mut rest = piece;
            while !rest.is_empty() {
                client.start_send(rest)?;
                assert!(client.send_in_flight());
                assert_eq!(
                    client
                        .start_send(Bytes::from_static(b"x"))
                        .map_err(|e| e.kind()),
                    Err(io::ErrorKind::WouldBlock),
                    "one poll-based send at a time"
                );
                rest = timeout(LIMIT, std::future::poll_fn(|cx| client.poll_send(cx))).await??;
                short_sends += usize::from(!rest.is_empty());
            }
        }
        assert!(!client.send_in_flight());
        client.shutdown_write().await?;
        let got = timeout(LIMIT, reader).await??;
        assert_eq!(got.len(), expected.len(), "{short_sends} short sends");
        assert!(got == expected, "payload intact");
        Ok(())
    })?
}

#[test]
fn a_stream_dropped_with_a_send_in_flight_cancels_it_and_the_reactor_drains() -> io::Result<()> {
    block_on(&small_cfg(), async {
        let (mut listener, addr) = listen()?;
        let mut client = TcpStream::connect(addr).await?;
        let (_server, _) = listener.accept().await?;
        // Nobody reads: a large send stays in flight, then the stream is dropped.
        client.start_send(Bytes::from(pattern(3, 16 << 20)))?;
        drop(client);
        // The orphaned op is cancelled and its memory freed by its final completion.
        let deadline = Instant::now() + LIMIT;
        while stats().ops_in_flight > 2 && Instant::now() < deadline {
            sleep(Duration::from_millis(5)).await;
        }
        // The listener's accept and the reactor's own eventfd read stay.
        assert!(stats().ops_in_flight <= 2, "{:?}", stats());
        Ok(())
    })?
}

#[test]
fn sleeps_fire_in_deadline_order_and_timeouts_elapse() -> io::Result<()> {
    block_on(&small_cfg(), async {
        let order = Rc::new(RefCell::new(Vec::new()));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for ms in [30u64, 10, 20, 0] {
            let order = order.clone();
            tasks.push(spawn(async move {
                sleep(Duration::from_millis(ms)).await;
                order.borrow_mut().push(ms);
            }));
        }
        for t in tasks {
            t.await;
        }
        assert_eq!(*order.borrow(), vec![0, 10, 20, 30]);
        assert!(start.elapsed() >= Duration::from_millis(30));

        let t0 = Instant::now();
        let r = timeout(Duration::from_millis(15), std::future::pending::<()>()).await;
        assert_eq!(r, Err(Elapsed));
        assert!(t0.elapsed() >= Duration::from_millis(15));
        assert_eq!(Elapsed.to_string(), "deadline elapsed");
        // a ready future wins even against an expired deadline
        assert_eq!(timeout_at(now(), async { 5 }).await, Ok(5));
        // a timer that lost is removed and the loop does not wake for it
        let ok = timeout(Duration::from_secs(3600), sleep(Duration::from_millis(1))).await;
        assert_eq!(ok, Ok(()));
        // sleep_until in the past is immediately ready; now() is cached per turn
        sleep_until(now() - Duration::from_millis(1)).await;
        Ok(())
    })?
}

#[test]
fn timer_counters_show_armed_timers_and_count_fired_ones() -> io::Result<()> {
    block_on(&small_cfg(), async {
        let before = stats();
        // Two armed timers that will not fire within the test.
        let long_a = spawn(sleep(Duration::from_secs(3600)));
        let long_b = spawn(sleep(Duration::from_secs(3600)));
        // Three that are armed (deadline after the cached turn time) and fire. A deadline
        // already passed is ready at once and never armed, so none of these is zero.
        for ms in [1u64, 2, 3] {
            sleep_until(now() + Duration::from_millis(ms)).await;
        }
        let s = stats();
        assert_eq!(s.timers_armed, before.timers_armed + 2, "{s:?}");
        assert_eq!(s.timers_fired, before.timers_fired + 3, "{s:?}");
        // A timer dropped before its deadline is disarmed and never counted as fired (a
        // cancelled task's future is dropped when the executor next runs it: yield until then).
        drop(long_a);
        drop(long_b);
        let deadline = Instant::now() + LIMIT;
        while stats().tasks_alive > before.tasks_alive && Instant::now() < deadline {
            YieldNow(false).await;
        }
        let lost = timeout(Duration::from_secs(3600), async { 7 }).await;
        assert_eq!(lost, Ok(7));
        let s = stats();
        assert_eq!(s.timers_armed, before.timers_armed, "{s:?}");
        assert_eq!(s.timers_fired, before.timers_fired + 3, "{s:?}");
        Ok(())
    })?
}

#[test]
fn submission_batches_count_kernel_entries_that_carried_sqes() -> io::Result<()> {
    block_on(&small_cfg(), async {
        let (listener, addr) = listen()?;
        let server = spawn(echo_server(listener, 8));
        let before = stats();
        // Eight connects pushed in the same turn: one batch carries them all.
        let mut connects = Vec::new();
        for _ in 0..8 {
            connects.push(spawn(TcpStream::connect(addr)));
        }
        let mut streams = Vec::new();
        for c in connects {
            streams.push(timeout(LIMIT, c).await.map_err(io::Error::other)??);
        }
        for (i, s) in streams.iter_mut().enumerate() {
            let data = pattern(i as u8, 100);
            s.send_all(Bytes::from(data.clone())).await?;
            s.shutdown_write().await?;
            let back = timeout(LIMIT, read_to_end(s))
                .await
                .map_err(io::Error::other)??;
            assert_eq!(back, data);
        }
        drop(streams);
        timeout(LIMIT, server).await.map_err(io::Error::other)??;
        let s = stats();
        let sqes = s.ops_submitted - before.ops_submitted;
        let batches = s.submissions - before.submissions;
        assert!(batches > 0, "{s:?}");
        assert!(
            sqes > batches,
            "8 connects in one turn should share a batch: {sqes} SQEs in {batches} batches"
        );
        Ok(())
    })?
}

#[test]
fn timer_heap_compacts_stale_entries() {
    let mut timers = timers::Timers::default();
    let base = Instant::now() + Duration::from_secs(60);
    let mut keys = Vec::new();
    for i in 0..5000u64 {
        keys.push(timers_insert(&mut timers, base + Duration::from_millis(i)));
    }
    for (k, s) in keys.drain(..4990) {
        timers_remove(&mut timers, k, s);
    }
    assert!(
        timers_heap_len(&timers) < 5000,
        "stale records were compacted"
    );
    assert_eq!(
        timers.next_deadline(),
        Some(base + Duration::from_millis(4990))
    );
}

fn timers_insert(t: &mut timers::Timers, at: Instant) -> (usize, u64) {
    t.test_insert(at, Waker::noop().clone())
}
fn timers_remove(t: &mut timers::Timers, key: usize, seq: u64) {
    t.test_remove(key, seq);
}
fn timers_heap_len(t: &timers::Timers) -> usize {
    t.test_heap_len()
}

#[test]
fn notifier_from_another_thread_wakes_the_reactor() -> io::Result<()> {
    let (notifier, mut listener) = notifier()?;
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || -> io::Result<()> {
        for _ in 0..2 {
            if go_rx.recv().is_err() {
                return Ok(());
            }
            notifier.notify()?;
        }
        Ok(())
    });
    let (local_notifier, mut local_listener) = super::notifier()?;
    block_on(&small_cfg(), async {
        for _ in 0..2 {
            go_tx
                .send(())
                .map_err(|_| io::Error::other("thread gone"))?;
            timeout(LIMIT, listener.wait()).await??;
        }
        // nothing is left pending after the two rounds
        let extra = timeout(Duration::from_millis(20), listener.wait()).await;
        assert!(extra.is_err());
        // notifications coalesce: two notifies before a wait resolve exactly one wait
        local_notifier.notify()?;
        local_notifier.notify()?;
        timeout(LIMIT, local_listener.wait()).await??;
        let extra = timeout(Duration::from_millis(20), local_listener.wait()).await;
        assert!(extra.is_err());
        Ok::<(), io::Error>(())
    })??;
    thread
        .join()
        .map_err(|_| io::Error::other("notifier thread panicked"))?
}

/// A future completed by a waker invoked on another thread (the slow, cross-thread path).
#[test]
fn waker_invoked_from_another_thread_reschedules_the_task() -> io::Result<()> {
    type Slot = Arc<Mutex<(bool, Option<Waker>)>>;
    struct Flag(Slot);
    impl Future for Flag {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let Ok(mut g) = self.0.lock() else {
                return Poll::Ready(());
            };
            if g.0 {
                return Poll::Ready(());
            }
            g.1 = Some(cx.waker().clone());
            Poll::Pending
        }
    }
    let slot: Slot = Arc::new(Mutex::new((false, None)));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let remote = slot.clone();
    let thread = std::thread::spawn(move || {
        if ready_rx.recv().is_ok() {
            if let Ok(mut g) = remote.lock() {
                g.0 = true;
                if let Some(w) = g.1.take() {
                    w.wake();
                }
            }
        }
    });
    block_on(&small_cfg(), async {
        let task = spawn(Flag(slot.clone()));
        // let the task register its waker, then release the other thread
        while slot.lock().map(|g| g.1.is_none()).unwrap_or(false) {
            YieldNow(false).await;
        }
        ready_tx
            .send(())
            .map_err(|_| io::Error::other("thread gone"))?;
        timeout(LIMIT, task).await?;
        // and the main future's own waker from another thread
        let main_slot: Slot = Arc::new(Mutex::new((false, None)));
        let remote = main_slot.clone();
        let flag = Flag(main_slot.clone());
        let waker_thread = std::thread::spawn(move || loop {
            if let Ok(mut g) = remote.lock() {
                if let Some(w) = g.1.take() {
                    g.0 = true;
                    w.wake();
                    return;
                }
            }
            std::thread::yield_now();
        });
        timeout(LIMIT, flag).await?;
        waker_thread
            .join()
            .map_err(|_| io::Error::other("waker thread panicked"))?;
        Ok::<(), io::Error>(())
    })??;
    thread
        .join()
        .map_err(|_| io::Error::other("thread panicked"))
}

#[test]
fn block_on_returns_with_pending_tasks_and_in_flight_ops() -> io::Result<()> {
    let escaped = block_on(&small_cfg(), async {
        let (mut listener, addr) = listen()?;
        let mut client = TcpStream::connect(addr).await?;
        let (mut server, _) = listener.accept().await?;
        client.send_all(Bytes::from_static(b"escape")).await?;
        let escaped = timeout(LIMIT, server.recv()).await??;
        // a task parked in recv on a silent connection
        let (quiet, _) = (TcpStream::connect(addr).await?, ());
        let (mut quiet_server, _) = listener.accept().await?;
        spawn(async move {
            let _keep = quiet;
            let _ = quiet_server.recv().await;
        })
        .detach();
        // a task parked forever on a timer
        spawn(async {
            sleep(Duration::from_secs(3600)).await;
        })
        .detach();
        // a send stuck because the peer never reads (fills the socket buffers)
        spawn(async move {
            let _ = client
                .send_all(Bytes::from(vec![0u8; 64 * 1024 * 1024]))
                .await;
        })
        .detach();
        // an accept armed on the listener, owned by a parked task
        spawn(async move {
            let _ = listener.accept().await;
        })
        .detach();
        // a notifier read in flight
        let (_notifier, mut nl) = notifier()?;
        spawn(async move {
            let _ = nl.wait().await;
        })
        .detach();
        for _ in 0..10 {
            YieldNow(false).await;
        }
        assert!(stats().tasks_alive >= 5);
        Ok::<_, io::Error>((escaped, server))
    })??;
    assert!(!last_teardown_leaked(), "every cancelled op drained");
    // The RecvBuf and the stream outlived their reactor: reading and dropping them is safe.
    let (buf, mut server) = escaped;
    assert_eq!(buf.as_deref(), Some(&b"escape"[..]));
    drop(buf);
    assert_eq!(
        stats(),
        ReactorStats::default(),
        "no reactor on this thread any more"
    );
    // Using a stream after its reactor is gone is an error, not UB.
    let late = block_on(&small_cfg(), async { server.recv().await });
    assert!(late.is_ok_and(|r| r.is_err()));
    drop(server);
    // A fresh reactor works on the same thread.
    block_on(&small_cfg(), async {
        sleep(Duration::from_millis(1)).await
    })
}

#[test]
fn ring_setup_uses_defer_taskrun_on_this_kernel() -> io::Result<()> {
    let mode = block_on(&small_cfg(), async { stats().setup_mode })?;
    assert_ne!(mode, SetupMode::None);
    // Kernel 6.18 accepts SINGLE_ISSUER | DEFER_TASKRUN; an older kernel falls back.
    if kernel_at_least(6, 1) {
        assert_eq!(mode, SetupMode::DeferTaskrun);
    }
    Ok(())
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

#[test]
fn bad_config_is_rejected() {
    let bad = ReactorConfig {
        recv_buffers: 3,
        ..small_cfg()
    };
    let err = block_on(&bad, async {}).err().map(|e| e.kind());
    assert_eq!(err, Some(io::ErrorKind::InvalidInput));
    let bad = ReactorConfig {
        ring_entries: 0,
        ..small_cfg()
    };
    assert!(block_on(&bad, async {}).is_err());
}

#[test]
fn nested_block_on_is_refused() -> io::Result<()> {
    block_on(&small_cfg(), async {
        let inner = block_on(&small_cfg(), async {});
        assert_eq!(
            inner.err().map(|e| e.kind()),
            Some(io::ErrorKind::AlreadyExists)
        );
    })
}

#[test]
#[should_panic(expected = "outside reactor::block_on")]
fn spawn_outside_a_reactor_panics() {
    drop(spawn(async {}));
}

#[test]
fn send_dropped_by_timeout_is_cancelled_and_stream_stays_usable() -> io::Result<()> {
    block_on(&small_cfg(), async {
        let (mut listener, addr) = listen()?;
        let mut client = TcpStream::connect(addr).await?;
        let (mut server, _) = listener.accept().await?;
        let baseline = stats().ops_in_flight;
        // The peer does not read: the send blocks once the socket buffers are full.
        let big = Bytes::from(vec![7u8; 64 * 1024 * 1024]);
        let lost = timeout(Duration::from_millis(30), client.send_all(big)).await;
        assert!(
            lost.is_err(),
            "send of 64 MiB to a non-reading peer cannot finish"
        );
        // The orphaned op (still owning the 64 MiB) is freed by its cancel completion.
        timeout(LIMIT, async {
            while stats().ops_in_flight > baseline {
                YieldNow(false).await;
            }
        })
        .await?;
        // The server still receives bytes (the prefix the cancelled send delivered).
        let first = timeout(LIMIT, server.recv()).await??;
        assert!(first.is_some_and(|b| b.iter().all(|&x| x == 7)));
        Ok(())
    })?
}

#[test]
fn a_peer_nobody_reads_is_paused_instead_of_draining_the_ring() -> io::Result<()> {
    const LEN: usize = 512 * 1024;
    let cfg = ReactorConfig {
        ring_entries: 64,
        recv_buffers: 128,
        recv_buffer_size: 1024,
    };
    block_on(&cfg, async {
        let (mut listener, addr) = listen()?;
        let mut client = TcpStream::connect(addr).await?;
        let (mut server, _) = timeout(LIMIT, listener.accept()).await??;
        // Arm the server's multishot recv, then stop reading while the client streams.
        let first = timeout(Duration::from_millis(1), server.recv()).await;
        assert!(first.is_err(), "nothing was sent yet");
        let sender = spawn(async move {
            client.send_all(Bytes::from(pattern(7, LEN))).await?;
            client.shutdown_write().await?;
            Ok::<_, io::Error>(client)
        });
        timeout(LIMIT, async {
            while stats().recv_pauses == 0 {
                YieldNow(false).await;
            }
        })
        .await?;
        // Completions already produced in the turn that crossed the cap still land (the
        // cancel is processed after them), then the stream stops taking buffers.
        let paused_at = stats().recv_buffers_in_use;
        for _ in 0..50 {
            sleep(Duration::from_millis(2)).await;
        }
        let s = stats();
        assert_eq!(
            s.recv_buffers_in_use, paused_at,
            "no buffers taken while paused: {s:?}"
        );
        assert!(
            s.recv_buffers_in_use < s.recv_buffers_total,
            "the ring is not drained by one unread peer: {s:?}"
        );
        // Reading again resumes the stream; every byte arrives, in order.
        let got = timeout(LIMIT, read_to_end(&mut server)).await??;
        assert_eq!(got.len(), LEN);
        assert!(got == pattern(7, LEN), "data intact and in order");
        let _client = timeout(LIMIT, sender).await??;
        assert_eq!(stats().recv_buffers_in_use, 0);
        Ok(())
    })?
}

#[test]
fn one_at_a_time_accept_serves_queued_connections_and_switches_back() -> io::Result<()> {
    block_on(&small_cfg(), async {
        let (mut listener, addr) = listen()?;
        // Multishot first, then one at a time, then multishot again: every connection is
        // accepted exactly once, in order of arrival, whatever the mode when it arrived.
        let mut peers = Vec::new();
        for round in 0..3 {
            listener.set_one_at_a_time(round == 1);
            let mut clients = Vec::new();
            for _ in 0..5 {
                let c = std::net::TcpStream::connect(addr)?;
                clients.push(c.local_addr()?);
                peers.push(c);
            }
            for expected in clients {
                let (_stream, peer) = timeout(LIMIT, listener.accept()).await??;
                assert_eq!(peer, expected, "round {round}");
            }
        }
        Ok(())
    })?
}

#[test]
fn a_self_waking_task_runs_a_bounded_number_of_times_per_turn_and_io_goes_on() -> io::Result<()> {
    block_on(&small_cfg(), async {
        // Each turn runs the queue up to RUN_PASSES times (what a run woke runs in the same
        // turn); a task that wakes itself forever must still let io through.
        let spins = Rc::new(std::cell::Cell::new(0u64));
        let counter = spins.clone();
        let spinner = spawn(async move {
            loop {
                counter.set(counter.get() + 1);
                YieldNow(false).await;
            }
        });
        let (mut listener, addr) = listen()?;
        let mut client = TcpStream::connect(addr).await?;
        let (mut server, _) = timeout(LIMIT, listener.accept()).await??;
        let (turns, spins_before) = (stats().loop_turns, spins.get());
        timeout(LIMIT, client.send_all(Bytes::from_static(b"ping"))).await??;
        let got = timeout(LIMIT, server.recv()).await??.expect("data");
        assert_eq!(&got[..], b"ping");
        let elapsed_turns = stats().loop_turns - turns;
        let spun = spins.get() - spins_before;
        assert!(
            spun <= (elapsed_turns + 1) * 4,
            "{spun} spins in {elapsed_turns} turns (RUN_PASSES is 4)"
        );
        drop(spinner);
        Ok(())
    })?
}
