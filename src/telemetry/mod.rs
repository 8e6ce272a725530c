//! Logging: one line per RPC, formatted without the general formatting
//! machinery and written off the calling thread in batches.
//!
//! Every event goes through `tracing-subscriber`'s fmt layer, filtered by
//! `RUST_LOG` as usual. The one event on every call, the RPC line (see
//! [`RpcLine`]), is formatted by a purpose-built path that writes the same
//! bytes as the stock text or JSON formatter would; every other event, and
//! the RPC line whenever that path cannot promise the same bytes (colour on
//! a terminal; in JSON, a span in scope), goes to the stock formatter.
//! Where the subscriber holds a [`DirectRpcLine`], the RPC line skips the
//! subscriber altogether and is appended to the same buffer. Lines are
//! then handed to [`BatchWriter`], which writes them off the request path.

mod batch;
mod rpc_line;

use std::io::IsTerminal as _;

use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub use batch::{BatchWriter, FlushGuard, LineWriter};
pub use rpc_line::{DirectRpcLine, RpcLine, RpcLineFormat, RPC_TARGET};

/// Installs the global subscriber. Keep the guard until exit: dropping it
/// writes the lines still buffered.
pub fn init(format: LogFormat) -> FlushGuard {
    let (writer, guard) = BatchWriter::spawn(std::io::stdout());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // No module path in the line: every line of this small binary would
    // carry the same few, and the RPC line is formatted on the request path.
    let stock = tracing_subscriber::fmt::format().with_target(false);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer.clone());
    match format {
        LogFormat::Text => {
            let ansi = std::io::stdout().is_terminal();
            rpc_line::set_raw_fields(!ansi, false);
            builder
                .with_ansi(ansi)
                .event_format(RpcLineFormat::text(stock))
                .finish()
                // Colour is painted only by the stock formatter's path.
                .with((!ansi).then(|| DirectRpcLine::new(writer, false)))
                .init()
        }
        // What `.json()` sets: JSON span fields and never any colour.
        LogFormat::Json => {
            rpc_line::set_raw_fields(true, true);
            builder
                .with_ansi(false)
                .fmt_fields(JsonFields::new())
                .event_format(RpcLineFormat::json(stock.json().flatten_event(true)))
                .finish()
                .with(DirectRpcLine::new(writer, true))
                .init()
        }
    }
    guard
}
