//! The one log setup of the worker and the operator, so a log pipeline sees one JSON shape from
//! both. Built without the server (feature `logging`: `tracing` and `tracing-subscriber` only),
//! so the operator can call it without pulling in the worker's HTTP stack.
//!
//! JSON is one object per line with the event's fields at the top level:
//! `{"timestamp":"…","level":"INFO","message":"…","target":"…", <fields…>}`, plus `span`/`spans`
//! when the event is inside a span. Text is `tracing`'s human format for a terminal.
//! docs/operations.md documents the shape; the tests below pin it.

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Filter used when the given one does not parse.
pub const DEFAULT_FILTER: &str = "info";

/// A subscriber writing `format` to `writer`, keeping events `filter` (an `EnvFilter` directive
/// such as `info` or `inferscale_worker=debug,info`; an invalid one falls back to
/// [`DEFAULT_FILTER`] so a typo cannot silence the logs).
pub fn subscriber<W>(
    format: LogFormat,
    filter: &str,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync + 'static>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
        LogFormat::Text => Box::new(builder.finish()),
    }
}

/// Installs [`subscriber`] on stderr as the process's global subscriber (and forwards records of
/// the `log` crate to it). A second call, e.g. from a test, keeps the first subscriber.
pub fn init(format: LogFormat, filter: &str) {
    let _ = subscriber(format, filter, std::io::stderr).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Buffer {
            self.clone()
        }
    }

    fn lines(format: LogFormat, filter: &str, emit: impl FnOnce()) -> Vec<String> {
        let buffer = Buffer::default();
        tracing::subscriber::with_default(subscriber(format, filter, buffer.clone()), emit);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn json_lines_have_the_event_fields_at_the_top_level() {
        let out = lines(LogFormat::Json, "info", || {
            tracing::warn!(provider = "openai", attempts = 3, "upstream call failed");
        });
        assert_eq!(out.len(), 1, "{out:?}");
        let line: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
        let object = line.as_object().unwrap();
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "attempts",
                "level",
                "message",
                "provider",
                "target",
                "timestamp"
            ]
        );
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "upstream call failed");
        assert_eq!(line["target"], module_path!());
        assert_eq!(line["provider"], "openai");
        assert_eq!(line["attempts"], 3);
        // RFC 3339 in UTC, e.g. 2026-11-30T12:00:00.123456Z.
        let timestamp = line["timestamp"].as_str().unwrap();
        assert!(
            timestamp.ends_with('Z') && timestamp.contains('T'),
            "{timestamp}"
        );
    }

    #[test]
    fn the_filter_applies_and_an_invalid_one_falls_back_to_info() {
        let emit = || {
            tracing::debug!("detail");
            tracing::info!("progress");
        };
        assert_eq!(lines(LogFormat::Json, "info", emit).len(), 1);
        assert_eq!(lines(LogFormat::Json, "debug", emit).len(), 2);
        let fallback = lines(LogFormat::Json, "not a [filter", emit);
        assert_eq!(fallback.len(), 1, "{fallback:?}");
        assert!(fallback[0].contains("\"progress\""), "{fallback:?}");
    }

    #[test]
    fn text_is_one_readable_line_per_event() {
        let out = lines(LogFormat::Text, "info", || {
            tracing::info!(model = "m", "ready");
        });
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].contains("ready") && out[0].contains("model"),
            "{out:?}"
        );
        assert!(serde_json::from_str::<serde_json::Value>(&out[0]).is_err());
    }
}
