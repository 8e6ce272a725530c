//! The RPC line: the one log event of every call, and the formatter that
//! writes it without the general formatting machinery.
//!
//! `tracing-subscriber`'s stock formatters spend most of their time, on a
//! line that is written for every call, in what a fixed line does not need:
//! the timestamp rebuilt from the calendar on every event, every field name
//! painted through the colour layer even with colour off, and every piece
//! written through its own `fmt::Arguments`. That cost 11K instructions per
//! Resolve (callgrind), about as much as the rest of the call. This
//! formatter writes the same bytes straight into the line: the seconds of
//! the timestamp rendered once per second per thread, names and values
//! appended, integers with `itoa`. Where it is installed, the line's text
//! fields go as `&str` rather than as `Display` values, which saves their
//! trip through `fmt` too (the stock text formatter would quote them, so
//! they go that way only to a formatter that writes them all).
//!
//! It takes only the RPC line (by name and target), and only when it can
//! write what the stock formatter would: no colour, and for JSON no span in
//! scope (text writes the span prefix as the stock one does). Everything
//! else goes to the stock formatter, so the two can never disagree on a
//! line. The tests hold the two side by side on the same events.

use std::cell::{Cell, RefCell};
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::token::CredentialId;

/// The target of the RPC line: the module that has always written it, so
/// that a filter such as `RUST_LOG=info,credential_authority::service=warn`
/// still turns the line off.
pub const RPC_TARGET: &str = "credential_authority::service";

/// The event name the formatter knows the RPC line by (not written in the
/// line; the message is `rpc` too).
const RPC_NAME: &str = "rpc";

/// One call's log line: what was called, by whom, on which credential, how
/// it ended and how long it took. It holds no token and no key: there is
/// no field for one.
#[derive(Debug, Clone, Copy)]
pub struct RpcLine<'a> {
    /// The RPC's name, e.g. `Resolve`.
    pub method: &'a str,
    /// The call's request id (`-` when there is none).
    pub request_id: &'a str,
    /// The authenticated caller's name (`-` when not authenticated).
    pub caller: &'a str,
    /// The caller's key id (`-` when none).
    pub key_id: &'a str,
    /// The credential the call was about, when it knows one.
    pub credential_id: Option<CredentialId>,
    /// `OK`, or the failure's ErrorInfo reason.
    pub outcome: &'a str,
    /// The gRPC code of a failure (none on success).
    pub code: Option<tonic::Code>,
    /// Time from the call's start to its answer, in microseconds.
    pub latency_us: u64,
}

/// Whether the installed formatter is an [`RpcLineFormat`] that writes
/// every RPC line itself (see [`set_raw_fields`]). Then the line's
/// text fields go as `&str`, which costs a fraction of a `Display` value
/// through `fmt`; otherwise as `Display` values, which is what the stock
/// formatter needs to write them unquoted.
static RAW_FIELDS: AtomicBool = AtomicBool::new(false);

/// Whether that formatter writes JSON (else text): the format
/// [`RpcLine::write`] renders the line's fields in beforehand.
static JSON_FIELDS: AtomicBool = AtomicBool::new(false);

/// The text line's message and the ` name=` before each text field, in
/// the event's order (see `rpc_event!`).
const TEXT_NAMES: [&str; 6] = [
    "rpc method=",
    " request_id=",
    " caller=",
    " key_id=",
    " credential_id=",
    " outcome=",
];

/// Emits the RPC line's event; `$text` marks how its text fields go
/// (`%` as `Display`, or nothing as `&str`), `$($code)*` the optional code.
macro_rules! rpc_event {
    ($line:expr, $credential:expr, ($($text:tt)?) $(, $code:expr)?) => {
        tracing::info!(
            name: RPC_NAME,
            target: RPC_TARGET,
            message = $($text)? RPC_NAME,
            method = $($text)? $line.method,
            request_id = $($text)? $line.request_id,
            caller = $($text)? $line.caller,
            key_id = $($text)? $line.key_id,
            credential_id = $credential,
            outcome = $($text)? $line.outcome,
            $(code = ?$code,)?
            latency_us = $line.latency_us
        )
    };
}

impl RpcLine<'_> {
    /// Emits the line as an INFO event: `rpc method=... request_id=...
    /// caller=... key_id=... credential_id=... outcome=... [code=...]
    /// latency_us=...`, the field names a log query uses. Written straight
    /// to the log buffer when the subscriber allows it (see
    /// [`DirectRpcLine`]), else as a `tracing` event.
    pub fn write(&self) {
        if tracing::enabled!(target: RPC_TARGET, Level::INFO)
            && tracing::dispatcher::get_default(|dispatch| self.write_direct(dispatch))
        {
            return;
        }
        if RAW_FIELDS.load(Ordering::Relaxed) {
            self.write_prerendered(JSON_FIELDS.load(Ordering::Relaxed));
        } else {
            self.write_as(false);
        }
    }

    /// Renders the fields (as JSON or text) into this thread's [`FIELDS`]
    /// and emits the event while they are there: an [`RpcLineFormat`] of
    /// that format then copies them instead of visiting the event's fields
    /// one by one through `tracing`'s dynamic dispatch, which cost more
    /// than half the line. The event still carries every field, for any
    /// other formatter or layer. Rendered only when the line is enabled at
    /// all, and through the visitor's own methods, so the bytes are the
    /// visitor's.
    fn write_prerendered(&self, json: bool) {
        let ready = tracing::enabled!(target: RPC_TARGET, Level::INFO)
            && FIELDS.with(|fields| {
                let Ok(mut fields) = fields.try_borrow_mut() else {
                    return false;
                };
                let Prerendered { format, text } = &mut *fields;
                text.clear();
                let faithful = self.render(text, json);
                *format = faithful.then_some(json);
                faithful
            });
        self.write_as(true);
        if ready {
            FIELDS.with(|fields| {
                if let Ok(mut fields) = fields.try_borrow_mut() {
                    fields.format = None;
                }
            });
        }
    }

    /// The fields as [`FieldVisitor`] writes the event's, in the event's
    /// order; false if the visitor would leave the line to the stock
    /// formatter.
    fn render(&self, out: &mut String, json: bool) -> bool {
        let credential = self.credential_id.map(|id| id.text());
        let credential = credential.as_ref().map_or("-", |id| id.as_str());
        if !json {
            // Text: the stock formatter writes `Display` values as they are
            // (only the message is sanitised, and it is `rpc`), so each
            // field is its ` name=` and its value, in two copies.
            let values = [
                self.method,
                self.request_id,
                self.caller,
                self.key_id,
                credential,
                self.outcome,
            ];
            out.reserve(120 + values.iter().map(|v| v.len()).sum::<usize>());
            for (name, value) in TEXT_NAMES.iter().zip(values) {
                out.push_str(name);
                out.push_str(value);
            }
            if let Some(code) = self.code {
                let _ = write!(out, " code={code:?}");
            }
            out.push_str(" latency_us=");
            out.push_str(itoa::Buffer::new().format(self.latency_us));
            return true;
        }
        let mut visitor = FieldVisitor {
            line: out,
            json,
            // Only the message is sanitised, and it is the constant `rpc`.
            sanitize: false,
            first: true,
            faithful: true,
        };
        visitor.text("message", RPC_NAME);
        visitor.text("method", self.method);
        visitor.text("request_id", self.request_id);
        visitor.text("caller", self.caller);
        visitor.text("key_id", self.key_id);
        visitor.text("credential_id", credential);
        visitor.text("outcome", self.outcome);
        if let Some(code) = self.code {
            visitor.debug("code", &code);
        }
        visitor.integer("latency_us", self.latency_us);
        visitor.faithful
    }

    /// Emits the line with its text fields as `&str` (`raw`) or as
    /// `Display` values; both are written the same by [`RpcLineFormat`].
    fn write_as(&self, raw: bool) {
        let credential = tracing::field::display(LoggedId(self.credential_id));
        match (raw, self.code) {
            (true, None) => rpc_event!(self, credential, ()),
            (true, Some(code)) => rpc_event!(self, credential, (), code),
            (false, None) => rpc_event!(self, credential, (%)),
            (false, Some(code)) => rpc_event!(self, credential, (%), code),
        }
    }
}

/// A credential id in a log line, `-` when there is none; formatted in
/// place, without a String per call.
struct LoggedId(Option<CredentialId>);

impl fmt::Display for LoggedId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(id) => id.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// The event formatter: the RPC line written directly, everything else by
/// `stock` (the formatter the line's bytes must match).
#[derive(Debug)]
pub struct RpcLineFormat<F> {
    stock: F,
    json: bool,
    /// The wall clock (a fixed one in tests).
    now: fn() -> SystemTime,
}

impl<F> RpcLineFormat<F> {
    /// Over the stock text formatter (`Format<Full>`, target off).
    pub fn text(stock: F) -> Self {
        RpcLineFormat {
            stock,
            json: false,
            now: SystemTime::now,
        }
    }

    /// Over the stock JSON formatter (`Format<Json>`, flattened, target
    /// off).
    pub fn json(stock: F) -> Self {
        RpcLineFormat {
            stock,
            json: true,
            now: SystemTime::now,
        }
    }
}

impl<S, N, F> FormatEvent<S, N> for RpcLineFormat<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let ours = meta.name() == RPC_NAME
            && meta.target() == RPC_TARGET
            && !writer.has_ansi_escapes()
            // The stock JSON formatter writes spans as objects of their
            // fields; the text one as a prefix, written here too.
            && (!self.json || ctx.event_scope().is_none());
        if ours {
            let written = LINE.with(|line| {
                // Busy only if a field's formatting logged (re-entered).
                let mut line = line.try_borrow_mut().ok()?;
                line.clear();
                let sanitize = writer.sanitizes_ansi_escapes();
                self.write_line(&mut line, ctx, event, sanitize)?;
                Some(writer.write_str(&line))
            });
            if let Some(result) = written {
                return result;
            }
        }
        self.stock.format_event(ctx, writer, event)
    }
}

/// Chooses how [`RpcLine::write`] emits its text fields: as `&str` when
/// `raw`, which only a formatter that writes them unquoted may see (an
/// [`RpcLineFormat`] for JSON, or for text without colour), else as
/// `Display` values.
pub(super) fn set_raw_fields(raw: bool, json: bool) {
    JSON_FIELDS.store(json, Ordering::Relaxed);
    RAW_FIELDS.store(raw, Ordering::Relaxed);
}

thread_local! {
    /// The line being built, reused by every call on this thread.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
    /// The fields of the RPC line being emitted on this thread, rendered by
    /// [`RpcLine::write`] for the formatter.
    static FIELDS: RefCell<Prerendered> = const {
        RefCell::new(Prerendered { format: None, text: String::new() })
    };
    /// The seconds of the latest timestamp this thread wrote and their
    /// text, `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

/// What [`FIELDS`] holds.
struct Prerendered {
    /// `Some(json)` while an RPC line's event is being dispatched with its
    /// fields rendered in that format; `None` otherwise.
    format: Option<bool>,
    /// The fields, as the visitor writes them.
    text: String,
}

impl<F> RpcLineFormat<F> {
    /// Builds the whole line in `line`, or says `None` when only the stock
    /// formatter can write it (a time it cannot render, a field kind it
    /// prints differently).
    fn write_line<S, N>(
        &self,
        line: &mut String,
        ctx: &FmtContext<'_, S, N>,
        event: &Event<'_>,
        sanitize: bool,
    ) -> Option<()>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        push_prefix(line, self.json, *event.metadata().level(), (self.now)())?;
        if !self.json {
            push_spans(line, ctx);
        }
        let prerendered = FIELDS.with(|fields| match fields.try_borrow() {
            Ok(fields) if fields.format == Some(self.json) => {
                line.push_str(&fields.text);
                true
            }
            _ => false,
        });
        if !prerendered {
            let mut visitor = FieldVisitor {
                line,
                json: self.json,
                sanitize,
                first: true,
                faithful: true,
            };
            event.record(&mut visitor);
            if !visitor.faithful {
                return None;
            }
        }
        line.push_str(if self.json { "}\n" } else { "\n" });
        Some(())
    }
}

/// What comes before the spans and fields: in JSON the timestamp and the
/// level, in text the same and a space after each. `None` for a time only
/// the stock timer can write (see [`push_timestamp`]).
fn push_prefix(line: &mut String, json: bool, level: Level, now: SystemTime) -> Option<()> {
    if json {
        line.push_str("{\"timestamp\":\"");
        push_timestamp(line, now)?;
        line.push_str("\",\"level\":\"");
        line.push_str(level.as_str());
        line.push('"');
    } else {
        push_timestamp(line, now)?;
        line.push(' ');
        line.push_str(padded(level));
        line.push(' ');
    }
    Some(())
}

/// The spans in scope, root first, as the stock text formatter writes them
/// without colour: `name{fields}:` each, then a space.
fn push_spans<S, N>(line: &mut String, ctx: &FmtContext<'_, S, N>)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let Some(scope) = ctx.event_scope() else {
        return;
    };
    let mut seen = false;
    for span in scope.from_root() {
        seen = true;
        line.push_str(span.metadata().name());
        if let Some(fields) = span.extensions().get::<FormattedFields<N>>() {
            if !fields.is_empty() {
                line.push('{');
                line.push_str(fields);
                line.push('}');
            }
        }
        line.push(':');
    }
    if seen {
        line.push(' ');
    }
}

/// The level as the stock text formatter writes it, right-aligned to five.
fn padded(level: Level) -> &'static str {
    match level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => " INFO",
        Level::WARN => " WARN",
        _ => "ERROR",
    }
}

/// Appends `now` as RFC 3339 UTC with microseconds, as the stock timer
/// writes it (`2026-12-02T10:11:12.345678Z`). `None` outside 1970..=9999,
/// which the stock timer writes its own way.
fn push_timestamp(line: &mut String, now: SystemTime) -> Option<()> {
    /// 10000-01-01T00:00:00Z.
    const YEAR_10000: u64 = 253_402_300_800;
    let since = now.duration_since(UNIX_EPOCH).ok()?;
    let secs = since.as_secs();
    if secs >= YEAR_10000 {
        return None;
    }
    let text = SECOND.with(|second| match second.get() {
        (cached, text) if cached == secs => text,
        _ => {
            let text = render_second(secs);
            second.set((secs, text));
            text
        }
    });
    // `.uuuuuuZ` appended to the second's text, then checked as UTF-8
    // once (27 ASCII bytes): one check and one copy per line.
    let mut stamp = [0u8; 27];
    stamp[..19].copy_from_slice(&text);
    stamp[19] = b'.';
    stamp[26] = b'Z';
    let mut micros = since.subsec_micros();
    for digit in stamp[20..26].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    line.push_str(std::str::from_utf8(&stamp).ok()?);
    Some(())
}

/// `YYYY-MM-DDTHH:MM:SS` of a second since the epoch before year 10000.
fn render_second(secs: u64) -> [u8; 19] {
    /// Collects the first 19 bytes written to it.
    struct Prefix([u8; 19], usize);
    impl fmt::Write for Prefix {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            for &byte in s.as_bytes() {
                if let Some(slot) = self.0.get_mut(self.1) {
                    *slot = byte;
                }
                self.1 += 1;
            }
            Ok(())
        }
    }
    let mut prefix = Prefix([b'0'; 19], 0);
    let at = UNIX_EPOCH + Duration::from_secs(secs);
    // Always Ok before year 10000, the only times asked for.
    let _ = write!(prefix, "{}", humantime::format_rfc3339_seconds(at));
    prefix.0
}

/// Writes the event's fields the way the stock `DefaultVisitor` (text) or
/// `tracing_serde::SerdeMapVisitor` (JSON, flattened) does.
struct FieldVisitor<'a> {
    line: &'a mut String,
    json: bool,
    /// Escape terminal control characters in the message, as the stock
    /// text formatter does.
    sanitize: bool,
    /// No field written yet (text: no separating space before it).
    first: bool,
    /// Still byte for byte what the stock formatter would write.
    faithful: bool,
}

impl FieldVisitor<'_> {
    /// Starts a field: `,"name":` (JSON) or ` name=` (text).
    fn name(&mut self, name: &str) {
        if self.json {
            self.line.push_str(",\"");
            let _ = JsonEscaped(self.line).write_str(name);
            self.line.push_str("\":");
        } else {
            self.space();
            self.line.push_str(name.strip_prefix("r#").unwrap_or(name));
            self.line.push('=');
        }
    }

    /// A text field's ` name=value`, the RPC line's usual case, with one
    /// capacity check for the whole of it.
    fn text_field(&mut self, name: &str, value: &str) {
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.line.reserve(name.len() + value.len() + 2);
        self.space();
        self.line.push_str(name);
        self.line.push('=');
        self.line.push_str(value);
    }

    fn space(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.line.push(' ');
        }
    }

    /// An integer: a JSON number, or its digits in text.
    fn integer(&mut self, name: &str, value: impl itoa::Integer) {
        if !self.json && name.starts_with("log.") {
            self.faithful = false;
            return;
        }
        self.name(name);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    /// A `Debug` value, as the stock formatters write one (and a `Display`
    /// value, which reaches them as the `Debug` of a `DisplayValue`).
    fn debug(&mut self, name: &str, value: &dyn fmt::Debug) {
        if self.json {
            self.name(name);
            self.line.push('"');
            let _ = write!(JsonEscaped(self.line), "{value:?}");
            self.line.push('"');
            return;
        }
        match name {
            "message" => {
                self.space();
                if self.sanitize {
                    let _ = write!(AnsiEscaped(self.line), "{value:?}");
                } else {
                    let _ = write!(self.line, "{value:?}");
                }
            }
            // The stock text formatter leaves these out (log records).
            name if name.starts_with("log.") => self.faithful = false,
            _ => {
                self.name(name);
                let _ = write!(self.line, "{value:?}");
            }
        }
    }

    /// A text value, written as the stock formatters write its `Display`
    /// form.
    fn text(&mut self, name: &str, value: &str) {
        if self.json {
            self.name(name);
            self.line.push('"');
            let _ = JsonEscaped(self.line).write_str(value);
            self.line.push('"');
        } else if name == "message" {
            self.space();
            if self.sanitize {
                let _ = AnsiEscaped(self.line).write_str(value);
            } else {
                self.line.push_str(value);
            }
        } else if name.starts_with("log.") {
            self.faithful = false;
        } else {
            self.text_field(name, value);
        }
    }
}

impl Visit for FieldVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.debug(field.name(), value);
    }

    /// Only the RPC line's raw text fields come here (see [`RAW_FIELDS`]):
    /// written as the stock formatter writes their `Display` form.
    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field.name(), value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.integer(field.name(), value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.integer(field.name(), value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.json {
            self.name(field.name());
            self.line.push_str(if value { "true" } else { "false" });
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.json {
            // serde_json's own rendering (`null` for NaN and infinities).
            match serde_json::to_string(&value) {
                Ok(number) => {
                    self.name(field.name());
                    self.line.push_str(&number);
                }
                Err(_) => self.faithful = false,
            }
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.json {
            self.record_debug(field, &tracing::field::display(value));
        } else {
            // The stock text formatter lists the error's sources.
            self.faithful = false;
        }
    }
}

/// Appends what is written to it as the inside of a JSON string, escaped
/// as `serde_json` escapes it.
struct JsonEscaped<'a>(&'a mut String);

impl fmt::Write for JsonEscaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut start = 0;
        for (i, byte) in s.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0x00..=0x1f => "",
                _ => continue,
            };
            self.0.push_str(&s[start..i]);
            if escape.is_empty() {
                self.0.push_str("\\u00");
                self.0.push(char::from(HEX[usize::from(byte >> 4)]));
                self.0.push(char::from(HEX[usize::from(byte & 0xf)]));
            } else {
                self.0.push_str(escape);
            }
            start = i + 1;
        }
        self.0.push_str(&s[start..]);
        Ok(())
    }
}

/// Appends what is written to it with terminal control characters spelled
/// out, as the stock text formatter writes a message.
struct AnsiEscaped<'a>(&'a mut String);

impl fmt::Write for AnsiEscaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for ch in s.chars() {
            match ch {
                '\x1b' => self.0.push_str("\\x1b"),
                '\x07' => self.0.push_str("\\x07"),
                '\x08' => self.0.push_str("\\x08"),
                '\x0c' => self.0.push_str("\\x0c"),
                '\x7f' => self.0.push_str("\\x7f"),
                '\u{80}'..='\u{9f}' => write!(self.0, "\\u{{{:x}}}", ch as u32)?,
                _ => self.0.push(ch),
            }
        }
        Ok(())
    }
}

mod direct;
#[cfg(test)]
mod tests;

pub use direct::DirectRpcLine;
