//! Each test names, in its doc, the broken implementation it catches.

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use serde_json::Value;

use super::limiter::{Admit, Limiter, MAX_PEERS};
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
    }
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
/// `suppressed: 0` written, a missing newline, or lines glued by hand with
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
    let bytes = encode(&event, NOW, 0);
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

    let with_count = encode(&event, NOW, 5);
    let parsed: Value = serde_json::from_slice(&with_count).unwrap();
    assert_eq!(parsed["suppressed"], 5);
    assert!(std::str::from_utf8(&with_count)
        .unwrap()
        .ends_with(",\"suppressed\":5}\n"));
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
    let mut limiter = Limiter::new(1, 2, MAX_PEERS);
    let regular = PeerKey::Uid(u32::MAX);
    for i in 0..100_000u32 {
        let now = NOW + u64::from(i);
        if i % 1000 == 0 {
            // A peer seen now and then stays tracked through the flood.
            limiter.admit(&regular, now);
        }
        let peer = PeerKey::Ip(IpAddr::V4(Ipv4Addr::from(i)));
        assert_eq!(limiter.admit(&peer, now), Admit::Write(0));
        assert!(limiter.len() <= MAX_PEERS);
    }
    assert_eq!(limiter.len(), MAX_PEERS);
    assert!(limiter.tracks(&regular));
    assert!(!limiter.tracks(&PeerKey::Ip(IpAddr::V4(Ipv4Addr::from(0)))));
    assert!(limiter.tracks(&PeerKey::Ip(IpAddr::V4(Ipv4Addr::from(99_999)))));

    // After a day's silence the bucket holds the burst, not a day's refill.
    let mut limiter = Limiter::new(u32::MAX, 2, 4);
    let peer = PeerKey::Unknown;
    limiter.admit(&peer, 0);
    limiter.admit(&peer, 0);
    assert_eq!(limiter.admit(&peer, 0), Admit::Suppress);
    let day = 86_400_000;
    assert_eq!(limiter.admit(&peer, day), Admit::Write(1));
    assert_eq!(limiter.admit(&peer, day), Admit::Write(0));
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
