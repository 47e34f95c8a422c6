//! Logging: JSON lines to stdout and to daily-rolling files under the log directory,
//! with the request id of the current request on every line. Events carry ids, routes,
//! statuses and counts only, never resource content or search values.
//!
//! A line lists the spans it was written in, outermost first (`spans`): a line written
//! while serving a request starts with the `request` span and its `request_id`, however
//! deep the use case's own spans go (`{"spans":[{"name":"request","request_id":…},
//! {"name":"search","resource_type":"Patient"}],…}`).

use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

/// Keeps the background log writers alive; drop it last to flush.
pub struct TelemetryGuard {
    _file: WorkerGuard,
    _stdout: WorkerGuard,
}

/// Installs the global subscriber. `RUST_LOG` overrides the default `info` level. The log
/// directory is made private (0700) and existing log files 0600: they name patients' ids.
/// New files take the process umask, which `cli` sets to 0077.
pub fn init(log_dir: &Path) -> std::io::Result<TelemetryGuard> {
    crate::store::files::private_dir(log_dir, true)?;
    for entry in std::fs::read_dir(log_dir)? {
        crate::store::files::private_file(&entry?.path())?;
    }
    let appender = tracing_appender::rolling::Builder::new()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix("carevault")
        .filename_suffix("log")
        .max_log_files(30)
        .build(log_dir)
        .map_err(std::io::Error::other)?;
    let (file, file_guard) = tracing_appender::non_blocking(appender);
    let (stdout, stdout_guard) = tracing_appender::non_blocking(std::io::stdout());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .json()
                // The current span alone would be the innermost one (a use case's), whose
                // fields do not include the request id of the span around it.
                .with_current_span(false)
                .with_span_list(true)
                .flatten_event(true)
                .with_writer(stdout.and(file)),
        )
        .try_init()
        .map_err(std::io::Error::other)?;
    Ok(TelemetryGuard { _file: file_guard, _stdout: stdout_guard })
}
