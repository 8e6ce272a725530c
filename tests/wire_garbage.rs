//! Garbage on the wire, against the real binary: raw bytes, HTTP/1.1, a
//! truncated preface, malformed and oversized frames, and floods (HEADERS
//! only, stalled bodies, rapid reset, silent connections). Throughout, the
//! server stays up, its resident memory (VmRSS) stays bounded, and a
//! well-behaved client on its own connections (Health/Check, and Resolve
//! of a minted token) keeps getting answers; its latencies are printed.
//!
//! The tests run one at a time (a shared lock): each measures a server's
//! memory and a client's latency, which a neighbour's flood would skew.
//! Every loop is bounded and everything goes to loopback.

mod common;

use common::callers::resolve;
use common::health::{health, serving};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::h2raw::{self, Answer, H2};
use common::{client, Server};
use credential_authority::pb;
use tokio::io::AsyncWriteExt as _;
use tokio::task::JoinHandle;
use tonic_health::pb::health_check_response::ServingStatus;

/// The Resolve path.
const RESOLVE: &str = "/credential_authority.v1.CredentialAuthority/Resolve";

/// The documented worst case of the wire's memory at the defaults
/// (README, "Limits"): ~0.8 GiB.
const DOCUMENTED_BOUND_BYTES: u64 = 819 * 1024 * 1024;

/// The documented cost of one admitted call (message, buffer slack,
/// metadata, response, stream state): ~152 KiB.
const DOCUMENTED_CALL_BYTES: u64 = 152 * 1024;

/// The documented cost of one connection (window, buffers, HPACK, state).
const DOCUMENTED_CONNECTION_BYTES: u64 = 152 * 1024;

const MIB: f64 = 1024.0 * 1024.0;

/// One test at a time: memory and latency are measured.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Raises this process's open-file limit to its hard limit; the server,
/// started afterwards, inherits it. Returns the new soft limit.
fn raise_nofile() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read only the struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_cur
}

/// A `/proc/PID/status` field in bytes (the kernel writes kB), or None
/// once the process is gone.
fn status_bytes(pid: i32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The server's resident memory, in bytes.
fn rss(server: &Server) -> u64 {
    status_bytes(server.pid(), "VmRSS:").expect("the server is alive")
}

/// Whether the process exists and is not a zombie.
fn alive(server: &Server) -> bool {
    std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .map(|s| {
            !s.lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
        .unwrap_or(false)
}

/// Samples the server's VmRSS every 20 ms and keeps the peak.
struct RssWatch {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl RssWatch {
    fn start(server: &Server) -> RssWatch {
        let pid = server.pid();
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = tokio::spawn({
            let (peak, stop) = (peak.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(now) = status_bytes(pid, "VmRSS:") {
                        peak.fetch_max(now, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        RssWatch { peak, stop, handle }
    }

    /// The peak so far.
    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let peak = self.peak.clone();
        self.handle.await.unwrap();
        peak.load(Ordering::Relaxed)
    }
}

/// What the well-behaved client saw.
#[derive(Default)]
struct Latencies {
    health: Vec<Duration>,
    resolve: Vec<Duration>,
    failures: Vec<String>,
}

/// p50, p99 and max of `samples`, in ms.
fn percentiles(samples: &[Duration]) -> (f64, f64, f64) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let at = |q: f64| {
        let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[i].as_secs_f64() * 1000.0
    };
    (at(0.5), at(0.99), at(1.0))
}

impl Latencies {
    /// Prints the figures and checks them: every call answered, correctly,
    /// and both p99s under `p99_bound`.
    fn report_and_check(&self, attack: &str, p99_bound: Duration) {
        assert!(
            self.failures.is_empty(),
            "{attack}: the well-behaved client failed {} times: {:?}",
            self.failures.len(),
            &self.failures[..self.failures.len().min(5)]
        );
        assert!(
            !self.health.is_empty() && !self.resolve.is_empty(),
            "{attack}: no probe calls ({} health, {} resolve)",
            self.health.len(),
            self.resolve.len()
        );
        for (name, samples) in [("Health/Check", &self.health), ("Resolve", &self.resolve)] {
            let (p50, p99, max) = percentiles(samples);
            println!(
                "{attack}: well-behaved {name}: {} calls, p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
                samples.len()
            );
            assert!(
                p99 < p99_bound.as_secs_f64() * 1000.0,
                "{attack}: {name} p99 {p99:.1} ms over {p99_bound:?}"
            );
        }
    }
}

/// A well-behaved client on two connections of its own, calling
/// Health/Check and Resolve of a minted token in a loop until stopped.
struct Probe {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Latencies>,
}

impl Probe {
    async fn start(server: &Server) -> Probe {
        let mut resolver = client(server).await;
        let minted = resolver
            .mint(pb::MintRequest {
                thread_id: "probe-thread".into(),
                provider_instance_id: "probe".into(),
                provider_kind: "claude".into(),
                ..Default::default()
            })
            .await
            .expect("mint")
            .into_inner();
        let mut health = health(server).await;
        // Warm both connections before anything is measured.
        assert_eq!(
            serving(&mut health).await.unwrap(),
            ServingStatus::Serving as i32
        );
        resolve(&mut resolver, &minted.token).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut seen = Latencies::default();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    match tokio::time::timeout(Duration::from_secs(5), serving(&mut health)).await {
                        Ok(Ok(s)) if s == ServingStatus::Serving as i32 => {
                            seen.health.push(started.elapsed())
                        }
                        other => seen.failures.push(format!("health: {other:?}")),
                    }
                    let started = Instant::now();
                    match tokio::time::timeout(
                        Duration::from_secs(5),
                        resolve(&mut resolver, &minted.token),
                    )
                    .await
                    {
                        Ok(Ok(r)) if r.credential_id == minted.credential_id => {
                            seen.resolve.push(started.elapsed())
                        }
                        other => seen.failures.push(format!("resolve: {other:?}")),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                seen
            }
        });
        Probe { stop, handle }
    }

    async fn finish(self) -> Latencies {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.unwrap()
    }
}

/// The server is up and answers a fresh client.
async fn assert_up(server: &Server) {
    assert!(alive(server), "the server process is gone");
    let mut fresh = health(server).await;
    assert_eq!(
        serving(&mut fresh).await.unwrap(),
        ServingStatus::Serving as i32
    );
}

/// Waits (bounded) until the server's VmRSS is at most `target`; returns
/// the last reading. Health calls meanwhile give the allocator's threads
/// something to do (mimalloc purges freed pages on its own heap's
/// activity).
async fn rss_settles_to(server: &Server, target: u64, patience: Duration) -> u64 {
    let deadline = Instant::now() + patience;
    let mut health = health(server).await;
    loop {
        let now = rss(server);
        if now <= target || Instant::now() >= deadline {
            return now;
        }
        let _ = serving(&mut health).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Raw bytes and broken HTTP/2, each on its own connection: the server
/// closes that connection at once (long before its 10 s handshake
/// deadline), with the GOAWAY the RFC names where it has one, ignores what
/// the RFC says to ignore, and keeps answering everyone else.
///
/// Catches: a server that hangs on garbage until the handshake deadline,
/// one that keeps a connection open after a connection error, one that
/// buffers a declared 16 MiB frame instead of refusing it, one that drops
/// connections over unknown frame types or flags (which must be ignored),
/// and a crash on any of them (the probe and `assert_up`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_malformed_frames_close_only_their_own_connection() {
    let _serial = SERIAL.lock().await;
    let server = Server::start(&[]);
    let probe = Probe::start(&server).await;
    let before = rss(&server);
    let watch = RssWatch::start(&server);
    let prompt = Duration::from_secs(3);

    // Not HTTP/2 at all: closed at once.
    let mut noise = vec![0u8; 4096];
    let mut x: u32 = 0x2545_f491;
    for byte in &mut noise {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *byte = x as u8;
    }
    let http1 = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n".to_vec();
    let mut half_preface_then_garbage = h2raw::PREFACE[..14].to_vec();
    half_preface_then_garbage.extend_from_slice(b"XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX");
    for (name, bytes, half_close) in [
        ("raw bytes", noise, false),
        ("HTTP/1.1", http1, false),
        (
            "a preface cut short, then garbage",
            half_preface_then_garbage,
            false,
        ),
        (
            "a preface cut short, then EOF",
            h2raw::PREFACE[..10].to_vec(),
            true,
        ),
    ] {
        let started = Instant::now();
        let mut conn = H2::connect(server.addr).await.unwrap();
        // The server may close while we write: that is the point.
        let _ = conn.send(&bytes).await;
        if half_close {
            conn.stream.shutdown().await.unwrap();
        }
        assert!(
            h2raw::closed_within(&mut conn.stream, prompt).await,
            "{name}: the connection stayed open"
        );
        println!("garbage: {name}: closed after {:?}", started.elapsed());
    }

    // After a good handshake: connection errors get their GOAWAY, then
    // the connection closes.
    let mut hpack_bad_index = vec![0x80]; // indexed field 0: invalid
    hpack_bad_index.extend_from_slice(&h2raw::grpc_headers(RESOLVE, "x", &[]));
    let hpack_out_of_table = vec![0xff, 0xff, 0xff, 0x0f]; // index ~2^25
    let mut bad_window = Vec::new();
    bad_window.extend_from_slice(&4u16.to_be_bytes()); // INITIAL_WINDOW_SIZE
    bad_window.extend_from_slice(&0x8000_0000u32.to_be_bytes()); // > 2^31-1
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "DATA on stream 0",
            h2raw::frame(h2raw::DATA, 0, 0, b"hello"),
            h2raw::PROTOCOL_ERROR,
        ),
        (
            "HEADERS on stream 0",
            h2raw::frame(
                h2raw::HEADERS,
                h2raw::END_HEADERS,
                0,
                &h2raw::grpc_headers(RESOLVE, "x", &[]),
            ),
            h2raw::PROTOCOL_ERROR,
        ),
        (
            "HEADERS on an even (server) stream id",
            h2raw::frame(
                h2raw::HEADERS,
                h2raw::END_HEADERS,
                2,
                &h2raw::grpc_headers(RESOLVE, "x", &[]),
            ),
            h2raw::PROTOCOL_ERROR,
        ),
        (
            "SETTINGS of 7 bytes",
            h2raw::frame(h2raw::SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 1, 9]),
            h2raw::FRAME_SIZE_ERROR,
        ),
        (
            "SETTINGS ACK with a payload",
            h2raw::frame(h2raw::SETTINGS, h2raw::ACK, 0, &[0, 3, 0, 0, 0, 1]),
            h2raw::FRAME_SIZE_ERROR,
        ),
        (
            "SETTINGS on stream 1",
            h2raw::frame(h2raw::SETTINGS, 0, 1, &[]),
            h2raw::PROTOCOL_ERROR,
        ),
        (
            "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1",
            h2raw::frame(h2raw::SETTINGS, 0, 0, &bad_window),
            h2raw::FLOW_CONTROL_ERROR,
        ),
        (
            "PING of 3 bytes",
            h2raw::frame(h2raw::PING, 0, 0, b"abc"),
            h2raw::FRAME_SIZE_ERROR,
        ),
        (
            "WINDOW_UPDATE of 0 on the connection",
            h2raw::frame(h2raw::WINDOW_UPDATE, 0, 0, &0u32.to_be_bytes()),
            h2raw::PROTOCOL_ERROR,
        ),
        (
            "CONTINUATION without HEADERS",
            h2raw::frame(h2raw::CONTINUATION, h2raw::END_HEADERS, 1, b"\x00"),
            h2raw::PROTOCOL_ERROR,
        ),
        (
            "HPACK: indexed field 0",
            h2raw::frame(
                h2raw::HEADERS,
                h2raw::END_HEADERS | h2raw::END_STREAM,
                1,
                &hpack_bad_index,
            ),
            h2raw::COMPRESSION_ERROR,
        ),
        (
            "HPACK: index far beyond the tables",
            h2raw::frame(
                h2raw::HEADERS,
                h2raw::END_HEADERS | h2raw::END_STREAM,
                1,
                &hpack_out_of_table,
            ),
            h2raw::COMPRESSION_ERROR,
        ),
        (
            "a DATA frame declaring 16 MiB (16 bytes follow)",
            [
                h2raw::frame_header(0xff_ffff, h2raw::DATA, 0, 1),
                vec![0; 16],
            ]
            .concat(),
            h2raw::FRAME_SIZE_ERROR,
        ),
        (
            "a frame of an unknown type declaring 16 MiB",
            h2raw::frame_header(0xff_ffff, 0xee, 0, 0),
            h2raw::FRAME_SIZE_ERROR,
        ),
    ];
    for (name, bytes, code) in &cases {
        let started = Instant::now();
        let (mut conn, _) = H2::handshake(server.addr).await.unwrap();
        conn.send(bytes).await.unwrap();
        let goaway = conn
            .read_until(prompt, |f| f.kind == h2raw::GOAWAY)
            .await
            .unwrap_or_else(|e| panic!("{name}: no GOAWAY ({e})"));
        // h2 reports every frame it cannot parse as PROTOCOL_ERROR, where
        // the RFC sometimes names another code: either is a connection
        // error; NO_ERROR (or none) is not.
        let got = goaway.error_code().unwrap_or(u32::MAX);
        assert!(
            got == *code || got == h2raw::PROTOCOL_ERROR,
            "{name}: {goaway:?}, not the RFC's {code:#x}"
        );
        assert!(
            h2raw::closed_within(&mut conn.stream, prompt).await,
            "{name}: still open after its GOAWAY"
        );
        let note = if got == *code {
            String::new()
        } else {
            format!(" (the RFC names {code:#x})")
        };
        println!(
            "garbage: {name}: GOAWAY {got:#x}{note} and closed after {:?}",
            started.elapsed()
        );
    }

    // The first frame itself declares 16 MiB: refused at once, neither
    // waited for (the preface deadline counts the frame's bytes) nor
    // buffered.
    let started = Instant::now();
    let mut conn = H2::connect(server.addr).await.unwrap();
    conn.send(
        &[
            h2raw::PREFACE,
            &h2raw::frame_header(0xff_ffff, h2raw::SETTINGS, 0, 0),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let goaway = conn
        .read_until(prompt, |f| f.kind == h2raw::GOAWAY)
        .await
        .expect("first frame of 16 MiB: no GOAWAY");
    let got = goaway.error_code().unwrap_or(u32::MAX);
    assert!(
        got == h2raw::FRAME_SIZE_ERROR || got == h2raw::PROTOCOL_ERROR,
        "{goaway:?}"
    );
    assert!(h2raw::closed_within(&mut conn.stream, prompt).await);
    println!(
        "garbage: a first SETTINGS declaring 16 MiB: GOAWAY {got:#x} and closed after {:?}",
        started.elapsed()
    );

    // What the RFC says to ignore is ignored: the connection still
    // answers (unknown type and flags, §4.1 and §5.5; a PING with unknown
    // flags is still a PING).
    let (mut conn, _) = H2::handshake(server.addr).await.unwrap();
    conn.send(&h2raw::frame(0xee, 0xff, 7, b"whatever this is"))
        .await
        .unwrap();
    conn.send(&h2raw::frame(h2raw::PING, 0xf0, 0, b"flagged!"))
        .await
        .unwrap();
    let frames = conn
        .barrier()
        .await
        .expect("unknown frames closed the connection");
    assert!(
        frames.iter().any(|f| f.kind == h2raw::PING
            && f.flags & h2raw::ACK != 0
            && f.payload == b"flagged!"),
        "the PING with unknown flags was not answered: {frames:?}"
    );

    // A header block that never ends (CONTINUATION flood): bounded by the
    // header list limit, not by the attacker.
    let started = Instant::now();
    let (mut conn, _) = H2::handshake(server.addr).await.unwrap();
    conn.send(&h2raw::frame(
        h2raw::HEADERS,
        0,
        1,
        &h2raw::grpc_headers(RESOLVE, "x", &[]),
    ))
    .await
    .unwrap();
    let pad = "p".repeat(16_000);
    let block = h2raw::header_block(&[("x-pad", pad.as_str())]);
    let mut continuations = 0;
    for _ in 0..1000 {
        if conn
            .send(&h2raw::frame(h2raw::CONTINUATION, 0, 1, &block))
            .await
            .is_err()
        {
            break;
        }
        continuations += 1;
    }
    let answer = conn.barrier_or_goaway(prompt).await;
    println!(
        "garbage: CONTINUATION flood: {continuations} frames of 16 KB written, then {:?} after {:?}",
        answer.as_ref().map(answer_kind),
        started.elapsed()
    );
    assert!(
        !matches!(answer, Ok(Answer::Barrier(_))),
        "an endless header block was accepted"
    );

    let peak = watch.finish().await;
    assert_up(&server).await;
    probe
        .finish()
        .await
        .report_and_check("garbage", Duration::from_millis(500));
    println!(
        "garbage: VmRSS before {:.1} MiB, peak {:.1} MiB",
        before as f64 / MIB,
        peak as f64 / MIB
    );
    assert!(
        peak < before + 64 * 1024 * 1024,
        "garbage grew the server by {:.1} MiB",
        (peak - before) as f64 / MIB
    );
}

/// A short name for an [`Answer`].
fn answer_kind(answer: &Answer) -> String {
    match answer {
        Answer::Barrier(_) => "barrier".into(),
        Answer::GoAway(_, f) => format!("GOAWAY {:#x}", f.error_code().unwrap_or(u32::MAX)),
        Answer::Closed(_) => "closed".into(),
    }
}

/// Target (a): 300k HEADERS-only streams (no body ever), one connection at
/// a time, in bounded batches; the server admits 64, refuses the rest
/// with REFUSED_STREAM and sends the connection away with GOAWAY
/// ENHANCE_YOUR_CALM after 256 refusals; the attacker reconnects and goes
/// on. RSS grows by < 64 MiB and a well-behaved client's p99 < 500 ms.
///
/// Catches: no stream limit (each stalled stream is held until the
/// request deadline: the attacker fills --max-in-flight and the probe's
/// Resolve is shed, and memory grows with the streams), refused streams
/// that leak state, or a flood that starves other connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_300k_headers_only_streams_is_refused_in_bounded_memory() {
    let _serial = SERIAL.lock().await;
    const TOTAL: u64 = 300_000;
    const BATCH: u32 = 128;
    let server = Server::start(&[]);
    let probe = Probe::start(&server).await;
    let before = rss(&server);
    let watch = RssWatch::start(&server);
    let authority = server.addr.to_string();
    let block = h2raw::grpc_headers(RESOLVE, &authority, &[]);

    let started = Instant::now();
    let (mut sent, mut refused, mut connections, mut calm) = (0u64, 0u64, 0u64, 0u64);
    // Bounded: each connection takes at least one stream, and at most
    // 2^30 stream ids.
    while sent < TOTAL {
        assert!(connections < TOTAL, "no progress");
        let (mut conn, _) = H2::handshake(server.addr).await.unwrap();
        connections += 1;
        let mut next_id: u32 = 1;
        loop {
            let want = (TOTAL - sent).min(BATCH as u64) as u32;
            if want == 0 || next_id > (1 << 30) {
                break;
            }
            let first = next_id;
            let mut bytes = Vec::with_capacity(want as usize * (block.len() + 9));
            for _ in 0..want {
                bytes.extend_from_slice(&h2raw::frame(
                    h2raw::HEADERS,
                    h2raw::END_HEADERS,
                    next_id,
                    &block,
                ));
                next_id += 2;
            }
            let written = conn.send(&bytes).await.is_ok();
            let answer = if written {
                conn.barrier_or_goaway(Duration::from_secs(10))
                    .await
                    .expect("the server neither answered nor closed")
            } else {
                Answer::Closed(Vec::new())
            };
            let count_resets = |frames: &[h2raw::Frame]| {
                frames
                    .iter()
                    .filter(|f| {
                        f.kind == h2raw::RST_STREAM && f.error_code() == Some(h2raw::REFUSED_STREAM)
                    })
                    .count() as u64
            };
            match answer {
                Answer::Barrier(frames) => {
                    refused += count_resets(&frames);
                    sent += want as u64;
                }
                Answer::GoAway(frames, goaway) => {
                    refused += count_resets(&frames);
                    // Of this batch, the server saw the streams up to the
                    // GOAWAY's last id (the ones it opened) and the ones it
                    // refused.
                    let last = goaway.last_stream_id().unwrap_or(0);
                    sent += (first..next_id)
                        .step_by(2)
                        .filter(|&id| {
                            id <= last
                                || frames
                                    .iter()
                                    .any(|f| f.kind == h2raw::RST_STREAM && f.stream == id)
                        })
                        .count() as u64;
                    if goaway.error_code() == Some(h2raw::ENHANCE_YOUR_CALM) {
                        calm += 1;
                    }
                    break;
                }
                // No GOAWAY read (the close raced it): count only what a
                // barrier confirmed.
                Answer::Closed(frames) => {
                    refused += count_resets(&frames);
                    break;
                }
            }
        }
    }
    let elapsed = started.elapsed();
    let peak = watch.finish().await;
    let after = rss(&server);
    assert_up(&server).await;
    let seen = probe.finish().await;
    println!(
        "(a) HEADERS-only flood: {sent} streams on {connections} connections in {elapsed:.1?} \
         ({:.0} streams/s), {refused} REFUSED_STREAM read, {calm} GOAWAY ENHANCE_YOUR_CALM",
        sent as f64 / elapsed.as_secs_f64()
    );
    println!(
        "(a) VmRSS before {:.1} MiB, peak {:.1} MiB (+{:.1} MiB), after {:.1} MiB",
        before as f64 / MIB,
        peak as f64 / MIB,
        peak.saturating_sub(before) as f64 / MIB,
        after as f64 / MIB
    );
    seen.report_and_check("(a) HEADERS-only flood", Duration::from_millis(500));
    assert!(sent >= TOTAL);
    assert!(refused > 0, "nothing was refused: no stream limit?");
    assert!(
        peak < before + 64 * 1024 * 1024,
        "RSS grew by {:.1} MiB",
        (peak - before) as f64 / MIB
    );
}

/// Target (b): 2,000 connections that never send a byte are all closed
/// by the server at its handshake deadline (2 s here), none before it;
/// twice, so what the server keeps afterwards can be told apart from what
/// it leaks.
///
/// Memory: resident memory is back within 10% of where it was 4 s after
/// each round's connections are gone. mimalloc alone does not give it
/// back (freed pages wait for later activity in their thread's heap, and
/// pages freed from another thread wait for their owner): without the
/// transport's trim about 60% of the ~30 MiB 2,000 connections take stayed
/// resident however long the server sat idle. After two rounds less than
/// one round's growth is still resident: a server that leaked its
/// per-connection memory would hold two rounds' worth.
///
/// Catches: no handshake deadline (nothing is closed), a deadline that
/// cuts off early, a cap below 2,000 turning some away at once,
/// per-connection memory never given back, and free memory kept resident
/// after the connections are gone (no trim, or one that misses a worker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_silent_connections_are_closed_at_the_handshake_deadline() {
    let _serial = SERIAL.lock().await;
    const CONNECTIONS: usize = 2_000;
    const DEADLINE: Duration = Duration::from_secs(2);
    let nofile = raise_nofile();
    assert!(
        nofile > CONNECTIONS as u64 + 500,
        "RLIMIT_NOFILE hard limit {nofile} is too low for {CONNECTIONS} connections"
    );
    let server = Server::start(&["--handshake-timeout", "2s", "--max-connections", "3000"]);
    let probe = Probe::start(&server).await;
    let before = rss(&server);
    let target = before + before / 10;
    let mut grown = Vec::new();
    let mut settled = Vec::new();
    for round in 1..=2 {
        let watch = RssWatch::start(&server);
        let started = Instant::now();
        let mut closers = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
            let connected = Instant::now();
            closers.push(tokio::spawn(async move {
                let closed = h2raw::closed_within(&mut stream, DEADLINE * 4).await;
                closed.then(|| connected.elapsed())
            }));
        }
        let connected_in = started.elapsed();
        let mut lifetimes = Vec::with_capacity(CONNECTIONS);
        for closer in closers {
            lifetimes.push(closer.await.unwrap());
        }
        let all_closed_in = started.elapsed();
        let open_peak = watch.finish().await;
        let still_open = lifetimes.iter().filter(|l| l.is_none()).count();
        let lifetimes: Vec<Duration> = lifetimes.into_iter().flatten().collect();
        let shortest = lifetimes.iter().min().copied().unwrap_or_default();
        let longest = lifetimes.iter().max().copied().unwrap_or_default();
        println!(
            "(b) round {round}: {CONNECTIONS} silent connections opened in {connected_in:.1?}, all closed \
             {all_closed_in:.1?} after the first was opened; each lived {shortest:.2?}..{longest:.2?} \
             (deadline {DEADLINE:?})"
        );
        assert_eq!(still_open, 0, "connections never closed");
        assert!(
            shortest >= DEADLINE - Duration::from_millis(100),
            "closed after {shortest:?}, before the deadline"
        );
        assert!(
            longest < DEADLINE + Duration::from_millis(1500),
            "closed after {longest:?}, long past the deadline"
        );
        let settling = Instant::now();
        let now = rss_settles_to(&server, target, Duration::from_secs(4)).await;
        println!(
            "(b) round {round}: VmRSS before {:.1} MiB, peak with {CONNECTIONS} open {:.1} MiB \
             (+{:.1} KiB per connection), {:.1?} after closing {:.1} MiB ({:+.1}% of before; \
             target within 10% in 4 s: {})",
            before as f64 / MIB,
            open_peak as f64 / MIB,
            open_peak.saturating_sub(before) as f64 / 1024.0 / CONNECTIONS as f64,
            settling.elapsed(),
            now as f64 / MIB,
            (now as f64 / before as f64 - 1.0) * 100.0,
            if now <= target { "met" } else { "NOT met" }
        );
        assert!(
            now <= target,
            "round {round}: VmRSS {:.1} MiB 4 s after closing, more than 10% above {:.1} MiB",
            now as f64 / MIB,
            before as f64 / MIB
        );
        grown.push(open_peak.saturating_sub(before));
        settled.push(now);
    }
    assert_up(&server).await;
    probe
        .finish()
        .await
        .report_and_check("(b) silent connections", Duration::from_millis(500));
    let kept = settled[1].saturating_sub(before);
    let one_round = grown[0].max(grown[1]);
    println!(
        "(b) after two rounds {:.1} MiB still resident above before; one round took {:.1} MiB",
        kept as f64 / MIB,
        one_round as f64 / MIB
    );
    assert!(
        kept < one_round,
        "per-connection memory is not given back: {:.1} MiB kept after two rounds of {:.1} MiB",
        kept as f64 / MIB,
        one_round as f64 / MIB
    );
}

/// Stalled bodies: 24 connections x 64 streams, each a Resolve whose
/// message declares 65,000 bytes and sends 64,000 of them, then nothing
/// (1,536 calls, ~94 MiB parked in the server). RSS stays within the
/// documented cost per call and per connection (and the whole under the
/// documented bound), and the well-behaved client keeps being answered.
/// Then the attacker leaves and every place is given back.
///
/// Catches: per-call buffering beyond the documented ~152 KiB (a copy of
/// each partial message, adaptive windows), stalled calls starving other
/// connections, and places never given back when a stalled connection
/// goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_flood_stays_within_the_documented_memory() {
    let _serial = SERIAL.lock().await;
    const CONNECTIONS: usize = 24;
    const STREAMS: u32 = 64;
    const DECLARED: u32 = 65_000;
    const SENT: usize = 64_000;
    // --max-in-flight above the flood, so the probe's Resolve is admitted;
    // the request timeout beyond the test, so nothing is cut off early.
    let server = Server::start(&["--request-timeout", "60s"]);
    let probe = Probe::start(&server).await;
    let before = rss(&server);
    let watch = RssWatch::start(&server);
    let authority = server.addr.to_string();
    let key = format!("Bearer {}", server.admin_key());

    let started = Instant::now();
    let mut attackers = Vec::new();
    for _ in 0..CONNECTIONS {
        let block = h2raw::grpc_headers(RESOLVE, &authority, &[("authorization", &key)]);
        let addr = server.addr;
        attackers.push(tokio::spawn(async move {
            let (mut conn, _) = H2::handshake(addr).await.unwrap();
            let mut message = vec![0u8];
            message.extend_from_slice(&DECLARED.to_be_bytes());
            message.resize(SENT, b'x');
            let mut answered = 0;
            for i in 0..STREAMS {
                let id = 1 + 2 * i;
                conn.open_stalled(id, &block).await.unwrap();
                for chunk in message.chunks(16_384) {
                    let frames = conn
                        .send_data(id, chunk, 0, Duration::from_secs(20))
                        .await
                        .expect("the server stopped reading");
                    answered += frames
                        .iter()
                        .filter(|f| f.kind == h2raw::HEADERS || f.kind == h2raw::RST_STREAM)
                        .count();
                }
            }
            let frames = conn.barrier().await.unwrap();
            answered += frames
                .iter()
                .filter(|f| f.kind == h2raw::HEADERS || f.kind == h2raw::RST_STREAM)
                .count();
            (conn, answered)
        }));
    }
    let mut conns = Vec::new();
    for attacker in attackers {
        let (conn, answered) = attacker.await.unwrap();
        assert_eq!(answered, 0, "a stalled call was answered or reset early");
        conns.push(conn);
    }
    let parked_in = started.elapsed();
    // Hold them a while so the probe measures a server full of them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = rss(&server);
    let peak = watch.peak();
    let calls = (CONNECTIONS as u64) * STREAMS as u64;
    let allowed = calls * DOCUMENTED_CALL_BYTES + CONNECTIONS as u64 * DOCUMENTED_CONNECTION_BYTES;
    println!(
        "stalled bodies: {calls} calls x {SENT} bytes on {CONNECTIONS} connections parked in {parked_in:.1?}; \
         VmRSS before {:.1} MiB, held {:.1} MiB, peak {:.1} MiB (+{:.1} KiB per call; documented {} KiB, \
         allowed +{:.1} MiB)",
        before as f64 / MIB,
        held as f64 / MIB,
        peak as f64 / MIB,
        peak.saturating_sub(before) as f64 / 1024.0 / calls as f64,
        DOCUMENTED_CALL_BYTES / 1024,
        allowed as f64 / MIB
    );
    assert!(
        peak < before + allowed,
        "stalled calls cost more than documented"
    );
    assert!(peak < DOCUMENTED_BOUND_BYTES);

    // The attacker leaves: every place is given back.
    drop(conns);
    let peak = watch.finish().await;
    assert!(peak < DOCUMENTED_BOUND_BYTES);
    assert_up(&server).await;
    probe
        .finish()
        .await
        .report_and_check("stalled bodies", Duration::from_millis(500));
    let settled = rss_settles_to(&server, before + before / 10, Duration::from_secs(2)).await;
    println!(
        "stalled bodies: 2 s after the attacker left, VmRSS {:.1} MiB (not asserted: allocator retention, see (b))",
        settled as f64 / MIB
    );
}

/// Rapid reset: HEADERS then RST_STREAM(CANCEL), 50 pairs per batch, 20,000
/// streams in all, reconnecting whenever the server sends the connection
/// away. Run with --max-in-flight 256: a reset call that kept its place
/// would fill the pool within the first few hundred resets.
///
/// Catches: a reset that leaks its in-flight place (the probe's Resolve is
/// then shed, and Resolve after the flood fails), per-stream state kept
/// after the reset (RSS), and a flood that starves other connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_leaks_nothing_and_starves_no_one() {
    let _serial = SERIAL.lock().await;
    const TOTAL: u64 = 20_000;
    const BATCH: u32 = 50;
    let server = Server::start(&["--max-in-flight", "256"]);
    let probe = Probe::start(&server).await;
    let before = rss(&server);
    let watch = RssWatch::start(&server);
    let authority = server.addr.to_string();
    let key = format!("Bearer {}", server.admin_key());
    let block = h2raw::grpc_headers(RESOLVE, &authority, &[("authorization", &key)]);

    let started = Instant::now();
    let (mut sent, mut connections) = (0u64, 0u64);
    let mut goaways: std::collections::BTreeMap<u32, u64> = Default::default();
    while sent < TOTAL {
        assert!(connections < TOTAL, "no progress");
        let (mut conn, _) = H2::handshake(server.addr).await.unwrap();
        connections += 1;
        let mut next_id: u32 = 1;
        loop {
            let want = (TOTAL - sent).min(BATCH as u64) as u32;
            if want == 0 {
                break;
            }
            let first = next_id;
            let mut bytes = Vec::new();
            for _ in 0..want {
                bytes.extend_from_slice(&h2raw::frame(
                    h2raw::HEADERS,
                    h2raw::END_HEADERS,
                    next_id,
                    &block,
                ));
                bytes.extend_from_slice(&h2raw::rst_stream(next_id, h2raw::CANCEL));
                next_id += 2;
            }
            let answer = if conn.send(&bytes).await.is_ok() {
                conn.barrier_or_goaway(Duration::from_secs(10))
                    .await
                    .expect("the server neither answered nor closed")
            } else {
                Answer::Closed(Vec::new())
            };
            match answer {
                Answer::Barrier(_) => sent += want as u64,
                Answer::GoAway(_, goaway) => {
                    let last = goaway.last_stream_id().unwrap_or(0);
                    if last >= first {
                        sent += ((last.min(next_id - 2) - first) / 2 + 1) as u64;
                    }
                    *goaways
                        .entry(goaway.error_code().unwrap_or(u32::MAX))
                        .or_default() += 1;
                    break;
                }
                Answer::Closed(_) => break,
            }
        }
    }
    let elapsed = started.elapsed();
    let peak = watch.finish().await;
    assert_up(&server).await;
    // Every place came back: a fresh Resolve is admitted.
    let mut resolver = client(&server).await;
    let status = resolve(&mut resolver, "mcpca_whatever")
        .await
        .expect_err("a malformed token");
    assert_eq!(
        status.code(),
        tonic::Code::Unauthenticated,
        "in-flight places leaked by reset streams: {status:?}"
    );
    let seen = probe.finish().await;
    println!(
        "rapid reset: {sent} streams reset on {connections} connections in {elapsed:.1?} ({:.0} streams/s); \
         GOAWAYs by code: {goaways:x?}",
        sent as f64 / elapsed.as_secs_f64()
    );
    println!(
        "rapid reset: VmRSS before {:.1} MiB, peak {:.1} MiB (+{:.1} MiB)",
        before as f64 / MIB,
        peak as f64 / MIB,
        peak.saturating_sub(before) as f64 / MIB
    );
    seen.report_and_check("rapid reset", Duration::from_millis(500));
    assert!(
        peak < before + 64 * 1024 * 1024,
        "RSS grew by {:.1} MiB",
        (peak - before) as f64 / MIB
    );
}
