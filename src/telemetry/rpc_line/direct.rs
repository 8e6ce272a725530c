//! The RPC line written straight into the log buffer, past `tracing`'s
//! dispatch.
//!
//! Even with its fields rendered beforehand, the line's event cost about
//! 1,000 instructions of dispatch per call (callgrind, Resolve): the
//! subscriber's layers, the formatter's context and buffer, a writer per
//! event. Where the installed subscriber says it may (by holding a
//! [`DirectRpcLine`]), [`super::RpcLine::write`] builds the whole line
//! itself and appends it to the same buffer the subscriber writes to, so
//! lines keep their order. It does so only when the event would have been
//! written by [`super::RpcLineFormat`] with these very bytes: the line is
//! enabled by the filter (checked by the caller, through `tracing`), and no
//! span is in scope (the JSON formatter writes spans as objects, which only
//! the stock formatter does). Otherwise the event is emitted as before.

use std::time::SystemTime;

use tracing::{Dispatch, Level, Subscriber};
use tracing_subscriber::layer::Layer;

use super::{push_prefix, RpcLine, LINE};
use crate::telemetry::BatchWriter;

/// A layer that does nothing with events: its presence in the installed
/// subscriber says that RPC lines may be appended to `writer` directly, as
/// its [`super::RpcLineFormat`] would write them. Install it only beside
/// one that writes to the same `writer` without colour (colour is painted
/// by the stock formatter only).
pub struct DirectRpcLine {
    /// The buffer the subscriber's formatter writes to.
    pub(super) writer: BatchWriter,
    /// JSON lines, else text.
    pub(super) json: bool,
    /// The wall clock (a fixed one in tests).
    pub(super) now: fn() -> SystemTime,
}

impl DirectRpcLine {
    /// RPC lines appended to `writer`, in JSON or text.
    pub fn new(writer: BatchWriter, json: bool) -> Self {
        DirectRpcLine {
            writer,
            json,
            now: SystemTime::now,
        }
    }
}

/// Every method is the default: the layer is found by type (`downcast_ref`)
/// and never acts on an event itself.
impl<S: Subscriber> Layer<S> for DirectRpcLine {}

impl RpcLine<'_> {
    /// Writes the line straight to the buffer when `dispatch` holds a
    /// [`DirectRpcLine`] and no span is in scope; false if it wrote nothing
    /// (then the caller emits the event). The caller has checked that the
    /// line is enabled.
    pub(super) fn write_direct(&self, dispatch: &Dispatch) -> bool {
        let Some(direct) = dispatch.downcast_ref::<DirectRpcLine>() else {
            return false;
        };
        if dispatch.current_span().id().is_some() {
            return false;
        }
        LINE.with(|line| {
            // Busy only if this thread is formatting an event already.
            let Ok(mut line) = line.try_borrow_mut() else {
                return false;
            };
            line.clear();
            let faithful = push_prefix(&mut line, direct.json, Level::INFO, (direct.now)())
                .is_some()
                && self.render(&mut line, direct.json);
            if faithful {
                line.push_str(if direct.json { "}\n" } else { "\n" });
                direct.writer.append(line.as_bytes());
            }
            faithful
        })
    }
}
