//! The RPC line's formatter against the stock one, byte for byte.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tracing_subscriber::fmt::format::{self, DefaultFields, JsonFields};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::MakeWriter;

use super::*;

/// 2026-12-02T10:11:12.034567Z, a time with a leading zero in its
/// microseconds.
fn fixed() -> SystemTime {
    UNIX_EPOCH + Duration::new(1_796_206_272, 34_567_891)
}

/// The stock formatter's timer at [`fixed`]; the shape of its text is
/// checked against the stock `SystemTime` timer apart.
struct FixedTimer;

impl FormatTime for FixedTimer {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        write!(w, "{}", humantime::format_rfc3339_micros(fixed()))
    }
}

/// Collects what a subscriber writes.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().clone()).unwrap()
    }
}

/// A formatter that counts the events it formats, to tell which path
/// wrote a line.
struct Counting<F>(F, Arc<AtomicUsize>);

impl<S, N, F> FormatEvent<S, N> for Counting<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        self.1.fetch_add(1, Ordering::Relaxed);
        self.0.format_event(ctx, writer, event)
    }
}

/// Lines that exercise every field and every escape either format has.
fn lines() -> Vec<RpcLine<'static>> {
    let id = CredentialId::generate();
    let ok = RpcLine {
        method: "Resolve",
        request_id: "0123456789abcdef0123456789abcdef",
        caller: "admin",
        key_id: "key-2fffcde1",
        credential_id: Some(id),
        outcome: "OK",
        code: None,
        latency_us: 128,
    };
    vec![
        ok,
        RpcLine {
            credential_id: None,
            latency_us: 0,
            ..ok
        },
        RpcLine {
            method: "Mint",
            caller: "-",
            key_id: "-",
            credential_id: None,
            outcome: "CALLER_UNAUTHENTICATED",
            code: Some(tonic::Code::Unauthenticated),
            latency_us: u64::MAX,
            ..ok
        },
        RpcLine {
            caller: "quote\" back\\slash new\nline tab\t cr\r nul\0 esc\x1b del\x7f bell\x07",
            key_id: "c1\u{85} bidi\u{202e} é 🦀 \u{1f}",
            outcome: "TOKEN_UNKNOWN",
            code: Some(tonic::Code::NotFound),
            ..ok
        },
    ]
}

/// Writes `lines` through a subscriber with `format`, and says how many
/// events reached the stock formatter.
fn write_with<F>(format: F, json: bool, ansi: bool, emit: impl Fn()) -> String
where
    F: FormatEvent<tracing_subscriber::Registry, DefaultFields>
        + FormatEvent<tracing_subscriber::Registry, JsonFields>
        + Send
        + Sync
        + 'static,
{
    let capture = Capture::default();
    let builder = tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_ansi(ansi);
    if json {
        let subscriber = builder
            .fmt_fields(JsonFields::new())
            .event_format(format)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
    } else {
        let subscriber = builder.event_format(format).finish();
        tracing::subscriber::with_default(subscriber, emit);
    }
    capture.text()
}

fn stock_text() -> format::Format<format::Full, FixedTimer> {
    format::format().with_target(false).with_timer(FixedTimer)
}

fn stock_json() -> format::Format<format::Json, FixedTimer> {
    format::format()
        .with_target(false)
        .with_timer(FixedTimer)
        .json()
        .flatten_event(true)
}

/// What the stock formatter (JSON or text, no colour) writes for `emit`.
fn stock_lines(json: bool, emit: impl Fn()) -> String {
    if json {
        write_with(stock_json(), true, false, emit)
    } else {
        write_with(stock_text(), false, false, emit)
    }
}

fn ours<F>(format: RpcLineFormat<F>) -> RpcLineFormat<F> {
    RpcLineFormat {
        now: fixed,
        ..format
    }
}

/// Catches: any byte of the RPC line that differs from the stock text
/// formatter's (a missing space, a quoted value, an unescaped control
/// character in the message, a timestamp without its leading zeros), and a
/// fast path that is never taken (the comparison would pass trivially).
#[test]
fn the_text_line_is_the_stock_line() {
    let lines = lines();
    let emit = || lines.iter().for_each(RpcLine::write);
    let stock = write_with(stock_text(), false, false, emit);
    let reached_stock = Arc::new(AtomicUsize::new(0));
    let fast = write_with(
        ours(RpcLineFormat::text(Counting(
            stock_text(),
            reached_stock.clone(),
        ))),
        false,
        false,
        emit,
    );
    assert_eq!(fast, stock);
    assert_eq!(reached_stock.load(Ordering::Relaxed), 0, "fast path taken");
    // The text format writes a caller's newline as it is, like the stock one.
    assert_eq!(stock.matches(" INFO rpc method=").count(), lines.len());
    assert!(
        stock.starts_with("2026-12-02T10:11:12.034567Z  INFO rpc method=Resolve request_id="),
        "{stock}"
    );
    assert!(stock.contains(" outcome=TOKEN_UNKNOWN code=NotFound latency_us=128\n"));
}

/// Catches: a JSON line that is not the stock one (key order, a number
/// written as a string, an escape serde_json writes differently) or not
/// valid JSON.
#[test]
fn the_json_line_is_the_stock_line() {
    let lines = lines();
    let emit = || lines.iter().for_each(RpcLine::write);
    let stock = write_with(stock_json(), true, false, emit);
    let reached_stock = Arc::new(AtomicUsize::new(0));
    let fast = write_with(
        ours(RpcLineFormat::json(Counting(
            stock_json(),
            reached_stock.clone(),
        ))),
        true,
        false,
        emit,
    );
    assert_eq!(fast, stock);
    assert_eq!(reached_stock.load(Ordering::Relaxed), 0, "fast path taken");
    for (line, expected) in fast.lines().zip(&lines) {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["caller"], expected.caller);
        assert_eq!(value["latency_us"], expected.latency_us);
        assert_eq!(value["message"], "rpc");
    }
    assert!(
        stock.starts_with(
            "{\"timestamp\":\"2026-12-02T10:11:12.034567Z\",\"level\":\"INFO\",\"message\":\"rpc\",\"method\":\"Resolve\",\"request_id\":"
        ),
        "{stock}"
    );
}

/// Catches: the RPC line inside a span losing the span (text writes it as
/// the stock formatter does; JSON leaves the line to the stock formatter),
/// other events not left to the stock formatter, and a coloured line taken
/// by the fast path (it writes no colour).
#[test]
fn spans_colour_and_other_events() {
    let line = lines()[0];
    let emit = |raw: bool| {
        move || {
            tracing::info!(answer = 42, "not the rpc line");
            tracing::info_span!("outer", peer = "x")
                .in_scope(|| tracing::info_span!("inner").in_scope(|| line.write_as(raw)));
        }
    };
    let stock = write_with(stock_text(), false, false, emit(false));
    assert!(
        stock.contains(" INFO outer{peer=\"x\"}:inner: rpc method="),
        "{stock}"
    );
    let stock_json_line = write_with(stock_json(), true, false, emit(false));
    assert!(stock_json_line.contains("\"spans\":["), "{stock_json_line}");
    for raw in [true, false] {
        let reached_stock = Arc::new(AtomicUsize::new(0));
        let fast = write_with(
            ours(RpcLineFormat::text(Counting(
                stock_text(),
                reached_stock.clone(),
            ))),
            false,
            false,
            emit(raw),
        );
        assert_eq!(fast, stock, "raw: {raw}");
        assert_eq!(
            reached_stock.load(Ordering::Relaxed),
            1,
            "only the other event"
        );

        let reached_stock = Arc::new(AtomicUsize::new(0));
        let fast = write_with(
            ours(RpcLineFormat::json(Counting(
                stock_json(),
                reached_stock.clone(),
            ))),
            true,
            false,
            emit(raw),
        );
        assert_eq!(fast, stock_json_line, "raw: {raw}");
        assert_eq!(reached_stock.load(Ordering::Relaxed), 2, "both");
    }

    // With colour the fields go as Display values (see `set_raw_fields`).
    let emit = || line.write_as(false);
    let reached_stock = Arc::new(AtomicUsize::new(0));
    let stock = write_with(stock_text(), false, true, emit);
    let fast = write_with(
        ours(RpcLineFormat::text(Counting(
            stock_text(),
            reached_stock.clone(),
        ))),
        false,
        true,
        emit,
    );
    assert_eq!(fast, stock);
    assert_eq!(reached_stock.load(Ordering::Relaxed), 1, "colour");
    assert!(stock.contains('\x1b'), "{stock:?}");
}

/// Catches: a cached second reused for the next or previous second, a
/// wrong calendar at leap days and year ends, micros without leading zeros
/// or rounded instead of cut; and times the stock timer writes its own
/// way (before 1970, from year 10000) not being left to it.
#[test]
fn timestamps_are_those_of_the_stock_timer() {
    let at = |secs: u64, nanos: u32| UNIX_EPOCH + Duration::new(secs, nanos);
    let times = [
        at(0, 0),
        at(951_782_400, 999_999_999), // 2000-02-29
        at(951_868_799, 1_000),       // 2000-02-29T23:59:59
        at(951_868_800, 0),           // 2000-03-01
        at(4_107_542_399, 5),         // 2100-02-28T23:59:59
        at(4_107_542_400, 7_000),     // 2100-03-01
        at(1_796_206_272, 34_567_891),
        at(1_796_206_272, 999_999),
        at(1_796_206_273, 0),
        at(1_796_206_271, 123_456_000),
        at(253_402_300_799, 999_999_999), // 9999-12-31T23:59:59
    ];
    for time in times {
        let mut line = String::new();
        push_timestamp(&mut line, time).unwrap();
        assert_eq!(
            line,
            humantime::format_rfc3339_micros(time).to_string(),
            "{time:?}"
        );
    }
    assert!(push_timestamp(&mut String::new(), at(253_402_300_800, 0)).is_none());
    assert!(push_timestamp(&mut String::new(), UNIX_EPOCH - Duration::from_secs(1)).is_none());

    // The stock timer writes the same shape: its text of the time just
    // before and just after ours brackets ours.
    let stock = || {
        let mut text = String::new();
        tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut Writer::new(&mut text))
            .unwrap();
        text
    };
    let before = stock();
    let mut line = String::new();
    push_timestamp(&mut line, SystemTime::now()).unwrap();
    let after = stock();
    assert_eq!(before.len(), line.len());
    assert!(before <= line && line <= after, "{before} {line} {after}");
}

/// Catches: an escape that differs from serde_json's for any ASCII
/// character, or a multi-byte character cut.
#[test]
fn json_escapes_are_serde_jsons() {
    let mut all: String = (0u8..=0x7f).map(char::from).collect();
    all.push_str("é 🦀 \u{2028}\u{85}");
    let mut ours = String::from("\"");
    JsonEscaped(&mut ours).write_str(&all).unwrap();
    ours.push('"');
    assert_eq!(ours, serde_json::to_string(&all).unwrap());
}

/// Catches: fields rendered beforehand that differ by a byte from what the
/// visitor writes (order, a missing field, the code, an escape), in text
/// and in JSON, and a formatter that visits the event again instead of
/// copying them (then the marker below would not show).
#[test]
fn prerendered_fields_are_the_stock_line_and_are_used() {
    let lines = lines();
    for json in [false, true] {
        // The stock formatters get `Display` values, as in production.
        let stock = stock_lines(json, || lines.iter().for_each(|l| l.write_as(false)));
        let emit = || lines.iter().for_each(|l| l.write_prerendered(json));
        let reached_stock = Arc::new(AtomicUsize::new(0));
        let fast = if json {
            write_with(
                ours(RpcLineFormat::json(Counting(
                    stock_json(),
                    reached_stock.clone(),
                ))),
                true,
                false,
                emit,
            )
        } else {
            write_with(
                ours(RpcLineFormat::text(Counting(
                    stock_text(),
                    reached_stock.clone(),
                ))),
                false,
                false,
                emit,
            )
        };
        assert_eq!(fast, stock, "json: {json}");
        assert_eq!(reached_stock.load(Ordering::Relaxed), 0, "json: {json}");
        // Nothing is left behind for a later event to pick up.
        assert!(FIELDS.with(|f| f.borrow().format.is_none()));
    }
    // The formatter copies what is there rather than visiting the event:
    // fields planted for the event show instead of its own.
    let line = lines[0];
    let planted = write_with(
        ours(RpcLineFormat::text(stock_text())),
        false,
        false,
        || {
            FIELDS.with(|f| {
                let mut f = f.borrow_mut();
                f.text = "planted".into();
                f.format = Some(false);
            });
            line.write_as(true);
            FIELDS.with(|f| f.borrow_mut().format = None);
        },
    );
    assert!(planted.ends_with(" INFO planted\n"), "{planted}");
}

/// Counts the RPC line's events that reach the subscriber's layers.
struct CountRpcEvents(Arc<AtomicUsize>);

impl<S: Subscriber> tracing_subscriber::Layer<S> for CountRpcEvents {
    fn on_event(&self, event: &Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().name() == RPC_NAME {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Runs `emit` under a subscriber built as `telemetry::init` builds it
/// (filter, formatter, [`DirectRpcLine`]) writing to a [`BatchWriter`];
/// returns what was written and how many RPC events reached the layers.
fn write_direct_with(json: bool, filter: &str, emit: impl Fn()) -> (String, usize) {
    use tracing_subscriber::layer::SubscriberExt as _;
    let sink = Capture::default();
    let (writer, guard) = crate::telemetry::BatchWriter::spawn(sink.clone());
    let events = Arc::new(AtomicUsize::new(0));
    let direct = DirectRpcLine {
        writer: writer.clone(),
        json,
        now: fixed,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(writer)
        .with_ansi(false);
    if json {
        let subscriber = builder
            .fmt_fields(JsonFields::new())
            .event_format(ours(RpcLineFormat::json(stock_json())))
            .finish()
            .with(CountRpcEvents(events.clone()))
            .with(direct);
        tracing::subscriber::with_default(subscriber, emit);
    } else {
        let subscriber = builder
            .event_format(ours(RpcLineFormat::text(stock_text())))
            .finish()
            .with(CountRpcEvents(events.clone()))
            .with(direct);
        tracing::subscriber::with_default(subscriber, emit);
    }
    drop(guard);
    (sink.text(), events.load(Ordering::Relaxed))
}

/// Catches: a line written past the subscriber that differs by a byte from
/// the stock one (prefix, fields, the closing brace or newline), a direct
/// path that is never taken (the events would reach the layers), one taken
/// inside a span (the text line would lose its span prefix, the JSON line
/// its spans) or for a line the filter turned off.
#[test]
fn direct_lines_are_the_stock_lines_and_skip_the_subscriber() {
    let lines = lines();
    for json in [false, true] {
        let stock = stock_lines(json, || lines.iter().for_each(|l| l.write_as(false)));
        let emit = || lines.iter().for_each(RpcLine::write);
        let (direct, events) = write_direct_with(json, "info", emit);
        assert_eq!(direct, stock, "json: {json}");
        assert_eq!(events, 0, "json: {json}: the events reached the subscriber");

        // Inside a span the event is emitted, and written with the span.
        let in_span = || tracing::info_span!("outer").in_scope(|| lines[0].write());
        let (written, events) = write_direct_with(json, "info", in_span);
        assert_eq!(events, 1, "json: {json}: {written}");
        let stock = stock_lines(json, || {
            tracing::info_span!("outer").in_scope(|| lines[0].write_as(false))
        });
        assert_eq!(written, stock, "json: {json}");
        assert!(written.contains("outer"), "{written}");

        // A filter that turns the line off still does.
        let (written, events) =
            write_direct_with(json, "info,credential_authority::service=warn", emit);
        assert_eq!((written.as_str(), events), ("", 0), "json: {json}");
    }
}
