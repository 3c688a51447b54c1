//! Logging for the guest binaries (kata-agent, attestation-agent, confidential-data-hub,
//! api-server-rest), set up one way: `tracing` events on stderr as text or one JSON object per
//! line, filtered by `RUST_LOG` when it is set and valid, else by the configured level; colours
//! only when stderr is a terminal and `NO_COLOR` is unset or empty (<https://no-color.org>), so
//! log files and the pod VM's serial console, a terminal whose log is read as text, stay plain.

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
        .with_ansi(colours(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_writer(std::io::stderr);
    match format {
        Format::Json => builder.json().init(),
        Format::Text => builder.init(),
    }
    Ok(())
}

/// Whether events are coloured: on a terminal, unless `NO_COLOR` is set to anything non-empty.
fn colours(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours(true, None));
        assert!(
            colours(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
        assert!(!colours(true, Some(OsStr::new("1"))));
        assert!(!colours(false, None));
        assert!(!colours(false, Some(OsStr::new("1"))));
    }

    #[test]
    fn bad_format_and_level_are_named() {
        assert_eq!(
            "yaml".parse::<Format>().map_err(|e| e.to_string()),
            Err("log format \"yaml\" is not text or json".to_string())
        );
        assert_eq!("json".parse::<Format>().ok(), Some(Format::Json));
    }
}
