//! Logging for the guest binaries (kata-agent, attestation-agent, confidential-data-hub,
//! api-server-rest), set up one way: `tracing` events on stderr as text or one JSON object per
//! line, filtered by `RUST_LOG` when it is set and valid, else by the configured level; colours
//! only when stderr is a terminal, so log files stay plain.

use std::str::FromStr;

/// How events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The format is neither `text` nor `json`.
    #[error("log format {0:?} is not text or json")]
    Format(String),
    /// The level is not a valid filter.
    #[error("log level {0:?} is not trace, debug, info, warn or error")]
    Level(String),
}

impl FromStr for Format {
    type Err = LoggingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            other => Err(LoggingError::Format(other.to_string())),
        }
    }
}

/// Installs the process's subscriber: `RUST_LOG` if set and valid, else `level`.
pub fn init(level: &str, format: Format) -> Result<(), LoggingError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .map_err(|_| LoggingError::Level(level.to_string()))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        Format::Json => builder.json().init(),
        Format::Text => builder.init(),
    }
    Ok(())
}
