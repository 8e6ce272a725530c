//! Each test names, in its doc, the broken implementation it catches.

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use serde_json::Value;

use super::limiter::{Admit, Limiter, Rate, Suppressed, MAX_PEERS};
use super::line::{encode, rfc3339_millis};
use super::*;
use crate::clock::FakeClock;

/// 2026-12-02T10:11:12.345Z.
const NOW: Millis = 1_796_206_272_345;

fn config(sink: AuditSink, failure: AuditFailureMode) -> AuditConfig {
    AuditConfig {
        sink,
        failure,
        denials_per_second: 1,
        denial_burst: 3,
        // Large enough never to bite in the tests of the per-peer limit.
        total_denials_per_second: 1000,
        total_denial_burst: 1000,
    }
}

/// A total budget that never bites, for the tests of the per-peer limit.
const UNLIMITED: Rate = Rate {
    per_second: u32::MAX,
    burst: u32::MAX,
};

/// A written line carrying these counts.
fn write(peer: u64, total: u64) -> Admit {
    Admit::Write(Suppressed { peer, total })
}

/// A denial line from a peer shown as `peer`.
fn denial(request_id: &str) -> AuditEvent<'_> {
    AuditEvent {
        request_id,
        rpc: "Mint",
        outcome: "CALLER_UNAUTHENTICATED",
        ..AuditEvent::default()
    }
}

/// A distinct loopback peer for each `i` below 2^24, as a local attacker
/// gets by binding to addresses of 127/8.
fn loopback(i: u32) -> PeerKey {
    PeerKey::Ip(IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | i)))
}

fn open(config: AuditConfig) -> (AuditLog, FakeClock) {
    let clock = FakeClock::new(NOW);
    let log = AuditLog::open(config, Arc::new(clock.clone())).expect("open the audit log");
    (log, clock)
}

fn event<'a>(request_id: &'a str) -> AuditEvent<'a> {
    AuditEvent {
        request_id,
        rpc: "Mint",
        outcome: "ok",
        ..AuditEvent::default()
    }
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("read the audit file")
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect()
}

fn request_ids(path: &Path) -> Vec<String> {
    lines(path)
        .iter()
        .map(|line| line["request_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Catches: fields out of the documented order, a `None` written as `null`,
/// `suppressed: 0` or `suppressed_total: 0` written, the two counts swapped
/// or out of order, a missing newline, or lines glued by hand with
/// `format!` (the quote, newline and NUL in the thread id would break the
/// line or forge a field).
#[test]
fn a_line_is_one_json_object_with_the_documented_fields_in_order() {
    let thread = "th\"read\n{\"forged\":1}\u{0}\u{2028}é😀";
    let event = AuditEvent {
        request_id: "req-1",
        rpc: "Mint",
        outcome: "ok",
        caller: Some("orchestrator"),
        key_id: Some("key-7"),
        credential_id: Some("cred-1"),
        thread_id: Some(thread),
        provider_instance_id: Some("prov-1"),
        replaced: Some(2),
        peer: Some("127.0.0.1"),
        ..AuditEvent::default()
    };
    let bytes = encode(&event, NOW, Suppressed::default());
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(text.ends_with('\n'));
    assert_eq!(text.matches('\n').count(), 1, "one line: {text}");
    let order = [
        "time",
        "request_id",
        "rpc",
        "outcome",
        "caller",
        "key_id",
        "credential_id",
        "thread_id",
        "provider_instance_id",
        "replaced",
        "peer",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|key| text.find(&format!("\"{key}\":")).expect(key))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "order: {text}");

    let parsed: serde_json::Map<String, Value> = serde_json::from_str(text).unwrap();
    let mut keys: Vec<&str> = parsed.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected = order.to_vec();
    expected.sort_unstable();
    assert_eq!(keys, expected, "exactly the fields that are set");
    assert_eq!(parsed["time"], "2026-12-02T10:11:12.345Z");
    assert_eq!(parsed["thread_id"], thread);
    assert_eq!(parsed["replaced"], 2);

    let with_count = encode(&event, NOW, Suppressed { peer: 5, total: 0 });
    let parsed: Value = serde_json::from_slice(&with_count).unwrap();
    assert_eq!(parsed["suppressed"], 5);
    assert!(std::str::from_utf8(&with_count)
        .unwrap()
        .ends_with(",\"suppressed\":5}\n"));

    let with_total = encode(&event, NOW, Suppressed { peer: 0, total: 7 });
    assert!(std::str::from_utf8(&with_total)
        .unwrap()
        .ends_with(",\"peer\":\"127.0.0.1\",\"suppressed_total\":7}\n"));
    let with_both = encode(&event, NOW, Suppressed { peer: 5, total: 7 });
    assert!(std::str::from_utf8(&with_both)
        .unwrap()
        .ends_with(",\"suppressed\":5,\"suppressed_total\":7}\n"));
}

/// Catches: a wrong leap-year rule (2000 is leap, 2100 is not), an
/// off-by-one at the year's end, month or day counted from 0, or seconds
/// and milliseconds not zero-padded.
#[test]
fn time_is_rfc3339_utc_with_milliseconds() {
    let cases = [
        (0, "1970-01-01T00:00:00.000Z"),
        (94_694_399_999, "1972-12-31T23:59:59.999Z"),
        (951_868_799_001, "2000-02-29T23:59:59.001Z"),
        (951_868_800_000, "2000-03-01T00:00:00.000Z"),
        (1_704_067_199_999, "2023-12-31T23:59:59.999Z"),
        (1_704_067_200_000, "2024-01-01T00:00:00.000Z"),
        (1_709_210_096_789, "2024-02-29T12:34:56.789Z"),
        (1_735_689_599_050, "2024-12-31T23:59:59.050Z"),
        (NOW, "2026-12-02T10:11:12.345Z"),
        (4_107_542_399_000, "2100-02-28T23:59:59.000Z"),
        (4_107_542_400_000, "2100-03-01T00:00:00.000Z"),
    ];
    for (millis, text) in cases {
        assert_eq!(rfc3339_millis(millis), text, "{millis}");
    }
}

/// Catches: a sink opened without `O_APPEND` or truncated on open (the
/// first line would be lost on the second open), a `reopen` that does not
/// reopen (new lines would follow the renamed file), and a `reopen` that
/// drops the old handle before the new one is open.
#[test]
fn file_lines_are_appended_and_follow_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("audit");
    std::fs::create_dir(&sub).unwrap();
    let path = sub.join("audit.log");
    let sink = || AuditSink::File(path.clone());

    let (first, _) = open(config(sink(), AuditFailureMode::Closed));
    first.record(&event("a")).unwrap();
    drop(first);
    let (log, _) = open(config(sink(), AuditFailureMode::Closed));
    log.record(&event("b")).unwrap();
    assert_eq!(request_ids(&path), ["a", "b"]);

    // Rotation: the file is renamed; lines follow the open handle until
    // the reopen, then go to a new file at the old path.
    let rotated = sub.join("audit.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    log.record(&event("c")).unwrap();
    log.reopen().unwrap();
    log.record(&event("d")).unwrap();
    assert_eq!(request_ids(&rotated), ["a", "b", "c"]);
    assert_eq!(request_ids(&path), ["d"]);

    // The directory goes away: the reopen fails, naming the path, and the
    // old handle keeps taking lines.
    let moved = dir.path().join("moved");
    std::fs::rename(&sub, &moved).unwrap();
    let error = log.reopen().unwrap_err().to_string();
    assert!(error.contains(&path.display().to_string()), "{error}");
    assert!(error.contains("No such file"), "{error}");
    log.record(&event("e")).unwrap();
    assert_eq!(request_ids(&moved.join("audit.log")), ["d", "e"]);
    assert_eq!(log.lost(), 0);
}

/// Catches: a file created with the default mode (0644 under the usual
/// umask) instead of 0600.
#[test]
fn the_file_is_created_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (log, _) = open(config(
        AuditSink::File(path.clone()),
        AuditFailureMode::Closed,
    ));
    log.record(&event("a")).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Catches: write errors ignored in Closed mode, an error message that
/// leaks the path, and Open mode that fails the call or forgets to count.
#[test]
fn a_full_disk_fails_the_call_when_closed_and_is_counted_when_open() {
    let full = || AuditSink::File(PathBuf::from("/dev/full"));
    let (closed, _) = open(config(full(), AuditFailureMode::Closed));
    let error = closed.record(&event("a")).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::StorageFull);
    let message = error.to_string();
    assert!(
        message.contains("audit trail could not be written"),
        "{message}"
    );
    assert!(!message.contains("/dev"), "{message}");
    assert!(closed.denied(&PeerKey::Unknown, &event("b")).is_err());
    assert_eq!(closed.lost(), 0);

    let (open_log, _) = open(config(full(), AuditFailureMode::Open));
    for id in ["a", "b", "c"] {
        open_log.record(&event(id)).unwrap();
    }
    open_log.denied(&PeerKey::Unknown, &event("d")).unwrap();
    assert_eq!(open_log.lost(), 4);
}

/// Catches: failure reports written for every failure (a log flood while
/// the disk is full), counts reset without being reported, and a recovery
/// that never reports the failures of its last interval.
#[test]
fn failure_reports_are_rate_limited_and_carry_counts() {
    let (log, clock) = open(config(
        AuditSink::File(PathBuf::from("/dev/full")),
        AuditFailureMode::Open,
    ));
    let reports = &log.inner.reports;
    reports.failed();
    assert_eq!(reports.due(clock.now()), Some(1));
    reports.failed();
    reports.failed();
    clock.advance(Duration::from_millis(999));
    assert_eq!(reports.due(clock.now()), None, "within the interval");
    assert!(reports.pending());
    clock.advance(Duration::from_millis(1));
    assert_eq!(reports.due(clock.now()), Some(2));
    assert!(!reports.pending());
    clock.advance(Duration::from_secs(5));
    assert_eq!(reports.due(clock.now()), None, "nothing to report");
}

/// Catches: no rate limit, a limit that fails (`Err`) or writes suppressed
/// denials, a lost or off-by-one suppressed count, a count not reset after
/// its line, and a limiter keyed globally instead of per peer.
#[test]
fn denials_are_rate_limited_per_peer_with_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (log, clock) = open(config(
        AuditSink::File(path.clone()),
        AuditFailureMode::Closed,
    ));
    let a = PeerKey::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let b = PeerKey::Uid(1000);
    let denial = |id: &'static str| AuditEvent {
        request_id: id,
        rpc: "Mint",
        outcome: "CALLER_FORBIDDEN",
        peer: Some("127.0.0.1"),
        ..AuditEvent::default()
    };

    for id in ["a1", "a2", "a3", "a4", "a5"] {
        log.denied(&a, &denial(id)).unwrap();
    }
    assert_eq!(request_ids(&path), ["a1", "a2", "a3"], "burst of 3");
    assert_eq!(log.suppressed(), 2);

    // Another peer has its own bucket.
    for id in ["b1", "b2", "b3", "b4"] {
        log.denied(&b, &denial(id)).unwrap();
    }
    assert_eq!(log.suppressed(), 3);

    // Not quite one line's worth of refill yet.
    clock.advance(Duration::from_millis(999));
    log.denied(&a, &denial("a6")).unwrap();
    assert_eq!(log.suppressed(), 4);

    clock.advance(Duration::from_millis(1));
    log.denied(&a, &denial("a7")).unwrap();
    log.denied(&a, &denial("a8")).unwrap();
    log.denied(&b, &denial("b5")).unwrap();
    let written = lines(&path);
    let ids: Vec<&str> = written
        .iter()
        .map(|l| l["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a1", "a2", "a3", "b1", "b2", "b3", "a7", "b5"]);
    assert_eq!(written[6]["suppressed"], 3, "a4, a5 and a6");
    assert_eq!(written[7]["suppressed"], 1, "b4");
    assert!(written[..6].iter().all(|l| l.get("suppressed").is_none()));
    assert_eq!(log.suppressed(), 5, "a8 too");

    // A state change's line is never rate-limited.
    for id in ["m1", "m2", "m3", "m4", "m5"] {
        log.record(&event(id)).unwrap();
    }
    assert_eq!(lines(&path).len(), 13);
}

/// Catches: a suppressed count dropped with the denial line that was to
/// carry it when that line could not be written (a moment of full disk):
/// the peer's next written line must carry it, in either failure mode.
#[test]
fn a_suppressed_count_rides_on_the_next_written_line_after_a_failed_one() {
    for failure in [AuditFailureMode::Closed, AuditFailureMode::Open] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (log, clock) = open(config(AuditSink::File(path.clone()), failure));
        let peer = PeerKey::Uid(1000);
        let denial = |id: &'static str| AuditEvent {
            request_id: id,
            rpc: "Mint",
            outcome: "CALLER_UNAUTHENTICATED",
            ..AuditEvent::default()
        };
        for id in ["a1", "a2", "a3", "a4", "a5"] {
            log.denied(&peer, &denial(id)).unwrap();
        }
        // The disk fills: the line due to carry the 2 suppressed fails.
        let kept = dir.path().join("audit.log.1");
        std::fs::rename(&path, &kept).unwrap();
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        log.reopen().unwrap();
        clock.advance(Duration::from_secs(1));
        let failed = log.denied(&peer, &denial("a6"));
        assert_eq!(failed.is_err(), failure == AuditFailureMode::Closed);
        // Writable again.
        std::fs::remove_file(&path).unwrap();
        log.reopen().unwrap();
        clock.advance(Duration::from_secs(1));
        log.denied(&peer, &denial("a7")).unwrap();
        assert_eq!(request_ids(&kept), ["a1", "a2", "a3"]);
        let written = lines(&path);
        assert_eq!(written.len(), 1);
        assert_eq!(written[0]["request_id"], "a7");
        assert_eq!(written[0]["suppressed"], 2, "a4 and a5, {failure:?}");
        assert_eq!(log.suppressed(), 2);
    }
}

/// Catches: an unbounded table, eviction of the newest peer (the flood
/// would keep evicting the one peer being tracked) or of an arbitrary one,
/// and a refill that overflows past the burst after a long silence.
#[test]
fn the_peer_table_stays_bounded_and_forgets_the_least_recently_seen() {
    let mut limiter = Limiter::new(
        Rate {
            per_second: 1,
            burst: 2,
        },
        UNLIMITED,
        MAX_PEERS,
    );
    let regular = PeerKey::Uid(u32::MAX);
    for i in 0..100_000u32 {
        let now = NOW + u64::from(i);
        if i % 1000 == 0 {
            // A peer seen now and then stays tracked through the flood.
            limiter.admit(&regular, now);
        }
        let peer = PeerKey::Ip(IpAddr::V4(Ipv4Addr::from(i)));
        assert_eq!(limiter.admit(&peer, now), write(0, 0));
        assert!(limiter.len() <= MAX_PEERS);
    }
    assert_eq!(limiter.len(), MAX_PEERS);
    assert!(limiter.tracks(&regular));
    assert!(!limiter.tracks(&PeerKey::Ip(IpAddr::V4(Ipv4Addr::from(0)))));
    assert!(limiter.tracks(&PeerKey::Ip(IpAddr::V4(Ipv4Addr::from(99_999)))));

    // After a day's silence the bucket holds the burst, not a day's refill.
    let mut limiter = Limiter::new(
        Rate {
            per_second: u32::MAX,
            burst: 2,
        },
        UNLIMITED,
        4,
    );
    let peer = PeerKey::Unknown;
    limiter.admit(&peer, 0);
    limiter.admit(&peer, 0);
    assert_eq!(limiter.admit(&peer, 0), Admit::Suppress);
    let day = 86_400_000;
    assert_eq!(limiter.admit(&peer, day), write(1, 0));
    assert_eq!(limiter.admit(&peer, day), write(0, 0));
    assert_eq!(limiter.admit(&peer, day), Admit::Suppress);
}

/// Catches: `-` taken as a file name, and an empty value accepted.
#[test]
fn the_sink_parses_from_the_command_line() {
    assert_eq!("-".parse::<AuditSink>(), Ok(AuditSink::Stdout));
    assert_eq!("stdout".parse::<AuditSink>(), Ok(AuditSink::Stdout));
    assert_eq!(
        "/var/log/ca/audit.log".parse::<AuditSink>(),
        Ok(AuditSink::File(PathBuf::from("/var/log/ca/audit.log")))
    );
    assert!("".parse::<AuditSink>().is_err());
}

/// Opens a log on a file in `dir` with these per-peer and total limits.
fn open_limited(
    dir: &Path,
    failure: AuditFailureMode,
    peer: Rate,
    total: Rate,
) -> (AuditLog, FakeClock, PathBuf) {
    let path = dir.join("audit.log");
    let (log, clock) = open(AuditConfig {
        sink: AuditSink::File(path.clone()),
        failure,
        denials_per_second: peer.per_second,
        denial_burst: peer.burst,
        total_denials_per_second: total.per_second,
        total_denial_burst: total.burst,
    });
    (log, clock, path)
}

/// The `suppressed_total` of each line, 0 where it is left out.
fn totals(lines: &[Value]) -> Vec<u64> {
    lines
        .iter()
        .map(|l| l.get("suppressed_total").map_or(0, |n| n.as_u64().unwrap()))
        .collect()
}

/// Catches: no total budget (each of the 100k fresh addresses would write
/// at least one line, or its whole burst), a total budget checked per peer
/// or reset when the table evicts, a refill that runs ahead of the clock or
/// is not capped at the burst, and `suppressed_total` counts that do not
/// add up to the lines the budget suppressed.
#[test]
fn a_flood_from_100k_distinct_peers_writes_at_most_the_total_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (burst, per_second) = (50, 10);
    let (log, clock, path) = open_limited(
        dir.path(),
        AuditFailureMode::Closed,
        Rate {
            per_second: 1,
            burst: 3,
        },
        Rate { per_second, burst },
    );
    let flood = 100_000u32;
    let start = clock.now();
    for i in 0..flood {
        if i > 0 {
            clock.advance(Duration::from_millis(1));
        }
        log.denied(&loopback(i), &denial("flood")).unwrap();
    }
    let elapsed = clock.now() - start;
    let written = lines(&path);
    let bound = u64::from(burst) + u64::from(per_second) * elapsed / 1000;
    assert!(written.len() as u64 <= bound, "{} > {bound}", written.len());
    // The flood never lets the budget fill up again, so it writes exactly
    // that: 50, then one line per 100 ms of the 99.999 s.
    assert_eq!(written.len(), 50 + 999);
    let refused = u64::from(flood) - written.len() as u64;
    assert_eq!(log.suppressed(), refused);
    assert_eq!(
        log.suppressed_by_total(),
        refused,
        "every fresh peer had a token"
    );
    // The first line after the burst reports the 50 denials of its 50 ms
    // wait; each later one the 99 of the 100 ms since the previous line.
    let counts = totals(&written);
    assert!(counts[..50].iter().all(|&n| n == 0));
    assert_eq!(counts[50], 50);
    assert!(
        counts[51..].iter().all(|&n| n == 99),
        "{:?}",
        &counts[51..60]
    );

    // Quiet again: a peer's next denial is written and reports the rest.
    clock.advance(Duration::from_secs(1));
    log.denied(&loopback(flood), &denial("after")).unwrap();
    let written = lines(&path);
    assert_eq!(written.last().unwrap()["request_id"], "after");
    assert_eq!(totals(&written).iter().sum::<u64>(), refused);
}

/// Catches: a token taken from the total budget before (or regardless of)
/// the peer's own check, so that one peer over its limit starves everyone
/// else; a peer's token taken when the budget refuses its line; and a
/// denial refused by the peer's own limit counted in `suppressed_total`.
#[test]
fn a_limited_peer_does_not_drain_the_total_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _clock, path) = open_limited(
        dir.path(),
        AuditFailureMode::Closed,
        Rate {
            per_second: 0,
            burst: 1,
        },
        Rate {
            per_second: 0,
            burst: 3,
        },
    );
    let (a, b, c, d) = (loopback(1), loopback(2), loopback(3), loopback(4));
    log.denied(&a, &denial("a0")).unwrap();
    for _ in 0..100 {
        log.denied(&a, &denial("a")).unwrap();
    }
    assert_eq!(log.suppressed(), 100);
    assert_eq!(log.suppressed_by_total(), 0, "the peer limit refused those");
    log.denied(&b, &denial("b")).unwrap();
    log.denied(&c, &denial("c")).unwrap();
    log.denied(&d, &denial("d")).unwrap();
    assert_eq!(request_ids(&path), ["a0", "b", "c"]);
    assert_eq!(log.suppressed_by_total(), 1, "d");
    assert!(totals(&lines(&path)).iter().all(|&n| n == 0));

    // A peer the budget refuses keeps its own token for its next try.
    let mut limiter = Limiter::new(
        Rate {
            per_second: 0,
            burst: 2,
        },
        Rate {
            per_second: 1,
            burst: 1,
        },
        MAX_PEERS,
    );
    let (x, y) = (PeerKey::Uid(1), PeerKey::Uid(2));
    assert_eq!(limiter.admit(&x, NOW), write(0, 0));
    assert_eq!(limiter.admit(&x, NOW), Admit::SuppressTotal);
    assert_eq!(limiter.admit(&x, NOW + 1000), write(1, 1));
    assert_eq!(limiter.admit(&x, NOW + 1000), Admit::Suppress);
    assert_eq!(
        limiter.admit(&y, NOW + 2000),
        write(0, 0),
        "x's last one is not in the total"
    );
}

/// Catches: `suppressed_total` kept per peer instead of over all peers,
/// not reset after the line that carries it, off by one, including the
/// denials a peer's own limit refused, or left out of the `suppressed`
/// count of the peer whose denial the budget refused.
#[test]
fn suppressed_total_is_exact_and_reset_after_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let (log, clock, path) = open_limited(
        dir.path(),
        AuditFailureMode::Closed,
        Rate {
            per_second: 0,
            burst: 1,
        },
        Rate {
            per_second: 1,
            burst: 2,
        },
    );
    let (a, b, c, d, e) = (
        loopback(1),
        loopback(2),
        loopback(3),
        loopback(4),
        loopback(5),
    );
    log.denied(&a, &denial("a1")).unwrap();
    log.denied(&b, &denial("b1")).unwrap();
    // The budget is spent. A's own limit refuses a2: not in the total.
    log.denied(&a, &denial("a2")).unwrap();
    log.denied(&c, &denial("c1")).unwrap();
    log.denied(&d, &denial("d1")).unwrap();
    log.denied(&c, &denial("c2")).unwrap();
    assert_eq!(log.suppressed(), 4);
    assert_eq!(log.suppressed_by_total(), 3);

    clock.advance(Duration::from_secs(1));
    log.denied(&c, &denial("c3")).unwrap();
    clock.advance(Duration::from_secs(1));
    log.denied(&e, &denial("e1")).unwrap();
    clock.advance(Duration::from_secs(1));
    log.denied(&d, &denial("d2")).unwrap();

    let written = lines(&path);
    let ids: Vec<&str> = written
        .iter()
        .map(|l| l["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a1", "b1", "c3", "e1", "d2"]);
    assert_eq!(totals(&written), [0, 0, 3, 0, 0], "c1, d1 and c2, once");
    assert_eq!(written[2]["suppressed"], 2, "c1 and c2");
    assert!(written[3].get("suppressed").is_none());
    assert_eq!(written[4]["suppressed"], 1, "d1");
}

/// Catches: a `suppressed_total` dropped with the line that was to carry
/// it when that line could not be written, including when that line had no
/// per-peer count of its own (a restore guarded by the peer's count only).
#[test]
fn a_suppressed_total_rides_on_the_next_written_line_after_a_failed_one() {
    for failure in [AuditFailureMode::Closed, AuditFailureMode::Open] {
        let dir = tempfile::tempdir().unwrap();
        let (log, clock, path) = open_limited(
            dir.path(),
            failure,
            Rate {
                per_second: 0,
                burst: 5,
            },
            Rate {
                per_second: 1,
                burst: 1,
            },
        );
        let (a, b, c) = (PeerKey::Uid(1), PeerKey::Uid(2), PeerKey::Uid(3));
        log.denied(&a, &denial("a1")).unwrap();
        log.denied(&b, &denial("b1")).unwrap();
        log.denied(&b, &denial("b2")).unwrap();
        // The disk fills: a2, due to carry the total of 2, fails.
        let kept = dir.path().join("audit.log.1");
        std::fs::rename(&path, &kept).unwrap();
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        log.reopen().unwrap();
        clock.advance(Duration::from_secs(1));
        let failed = log.denied(&a, &denial("a2"));
        assert_eq!(failed.is_err(), failure == AuditFailureMode::Closed);
        // Writable again.
        std::fs::remove_file(&path).unwrap();
        log.reopen().unwrap();
        clock.advance(Duration::from_secs(1));
        log.denied(&c, &denial("c1")).unwrap();
        clock.advance(Duration::from_secs(1));
        log.denied(&b, &denial("b3")).unwrap();
        assert_eq!(request_ids(&kept), ["a1"]);
        let written = lines(&path);
        assert_eq!(written.len(), 2);
        assert_eq!(written[0]["request_id"], "c1");
        assert_eq!(written[0]["suppressed_total"], 2, "b1 and b2, {failure:?}");
        assert!(written[0].get("suppressed").is_none());
        assert_eq!(written[1]["request_id"], "b3");
        assert_eq!(written[1]["suppressed"], 2, "b1 and b2, {failure:?}");
        assert!(written[1].get("suppressed_total").is_none());
    }
}

/// Catches: a peer forgotten by the full table that comes back with a full
/// burst (a rotation over more addresses than the table holds would write
/// `burst` lines per address per round), a new peer given the full burst
/// while the table is full, a new peer given no token at all (its first
/// denial would be lost), one token given even while the table has room,
/// and a one-token start that overrides a burst of 0.
#[test]
fn a_peer_new_or_returning_while_the_table_is_full_gets_one_token() {
    let rate = Rate {
        per_second: 0,
        burst: 3,
    };
    let mut limiter = Limiter::new(rate, UNLIMITED, 4);
    let peer = PeerKey::Uid;
    // While there is room, each new peer gets the whole burst.
    for uid in 0..4 {
        for _ in 0..3 {
            assert_eq!(limiter.admit(&peer(uid), NOW), write(0, 0), "uid {uid}");
        }
        assert_eq!(limiter.admit(&peer(uid), NOW), Admit::Suppress);
    }
    // The table is full: a new peer evicts uid 0 and gets one line.
    assert_eq!(limiter.admit(&peer(4), NOW), write(0, 0));
    assert_eq!(limiter.admit(&peer(4), NOW), Admit::Suppress);
    assert!(!limiter.tracks(&peer(0)));
    // uid 0 comes back (evicting uid 1): one line, not three.
    assert_eq!(limiter.admit(&peer(0), NOW + 1), write(0, 0));
    assert_eq!(limiter.admit(&peer(0), NOW + 1), Admit::Suppress);
    assert!(!limiter.tracks(&peer(1)));
    assert_eq!(limiter.len(), 4);
    // A rotation over six addresses, ten rounds: one line per address per
    // round, whatever the burst.
    let mut written = 0;
    for round in 0..10 {
        for uid in 100..106 {
            for _ in 0..3 {
                if matches!(limiter.admit(&peer(uid), NOW + 2 + round), Admit::Write(_)) {
                    written += 1;
                }
            }
        }
    }
    assert_eq!(written, 60);

    // A burst of 0 stays 0, full table or not.
    let mut none = Limiter::new(
        Rate {
            per_second: 0,
            burst: 0,
        },
        UNLIMITED,
        1,
    );
    assert_eq!(none.admit(&peer(0), NOW), Admit::Suppress);
    assert_eq!(none.admit(&peer(1), NOW), Admit::Suppress);
}

/// Catches: a total burst of 0 read as "no limit", or a total rate of 0
/// that still refills; and a total budget applied to state-change lines,
/// which are never rate-limited.
#[test]
fn a_zero_total_budget_only_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (log, clock, path) = open_limited(
        dir.path(),
        AuditFailureMode::Closed,
        Rate {
            per_second: 10,
            burst: 10,
        },
        Rate {
            per_second: 10,
            burst: 0,
        },
    );
    for i in 0..5 {
        log.denied(&loopback(i), &denial("d")).unwrap();
        clock.advance(Duration::from_secs(1));
    }
    log.record(&event("m")).unwrap();
    assert_eq!(request_ids(&path), ["m"]);
    assert_eq!(log.suppressed_by_total(), 5);

    let dir = tempfile::tempdir().unwrap();
    let (log, clock, path) = open_limited(
        dir.path(),
        AuditFailureMode::Closed,
        Rate {
            per_second: 10,
            burst: 10,
        },
        Rate {
            per_second: 0,
            burst: 2,
        },
    );
    for i in 0..5 {
        log.denied(&loopback(i), &denial("d")).unwrap();
    }
    clock.advance(Duration::from_secs(86_400));
    log.denied(&loopback(9), &denial("later")).unwrap();
    assert_eq!(request_ids(&path), ["d", "d"]);
    assert_eq!(log.suppressed_by_total(), 4);
}
