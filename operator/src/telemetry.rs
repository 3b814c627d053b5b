//! Structured logs through `tracing`, set up by the worker crate's `logging` module so the
//! operator and the workers write one JSON shape (docs/operations.md): one object per line for
//! log pipelines, or text for a terminal. The filter comes from `RUST_LOG`, default `info`.

use inferscale_worker::config::LogFormat as SharedLogFormat;
use inferscale_worker::logging;

/// Log output format of the operator (its `--log-format` flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

impl From<LogFormat> for SharedLogFormat {
    fn from(format: LogFormat) -> Self {
        match format {
            LogFormat::Json => SharedLogFormat::Json,
            LogFormat::Text => SharedLogFormat::Text,
        }
    }
}

/// The filter directives: `RUST_LOG` when set and not blank, else [`logging::DEFAULT_FILTER`].
fn filter(rust_log: Option<String>) -> String {
    rust_log
        .filter(|f| !f.trim().is_empty())
        .unwrap_or_else(|| logging::DEFAULT_FILTER.to_owned())
}

pub fn init(format: LogFormat) {
    logging::init(format.into(), &filter(std::env::var("RUST_LOG").ok()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_is_the_filter_and_info_the_default() {
        assert_eq!(filter(None), "info");
        assert_eq!(filter(Some("  ".to_owned())), "info");
        assert_eq!(
            filter(Some("kube=debug,info".to_owned())),
            "kube=debug,info"
        );
    }

    #[test]
    fn each_flag_value_maps_to_the_shared_format() {
        assert_eq!(
            SharedLogFormat::from(LogFormat::Json),
            SharedLogFormat::Json
        );
        assert_eq!(
            SharedLogFormat::from(LogFormat::Text),
            SharedLogFormat::Text
        );
    }
}
