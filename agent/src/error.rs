//! The agent's errors, and the one place they become ttrpc status codes.

use ttrpc::Code;

/// Why an agent request failed, grouped by who has to act.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The policy denied the request. The message is the policy's: `<EntryPoint> is blocked by
    /// policy: <reason>`.
    #[error("{0}")]
    Denied(String),
    /// The request names something that does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, e.g. `container "abc"`.
        what: String,
    },
    /// The request is malformed.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The request would create something that already exists.
    #[error("{what} already exists")]
    AlreadyExists {
        /// What exists, e.g. `container "abc"`.
        what: String,
    },
    /// The request does not fit the current state (e.g. starting a container twice).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A stream has ended (stdout/stderr read to the end, or stdin closed).
    #[error("EOF")]
    Eof,
    /// This agent does not implement the RPC.
    #[error("{rpc} is not implemented by this agent")]
    Unimplemented {
        /// The RPC's name.
        rpc: &'static str,
    },
    /// Something failed inside the agent or the guest.
    #[error("{context}: {source}")]
    Internal {
        /// What the agent was doing.
        context: String,
        /// The failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl AgentError {
    /// An internal failure with what the agent was doing.
    pub fn internal(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Internal {
            context: context.into(),
            source: source.into(),
        }
    }

    /// The ttrpc status code for this error.
    pub fn code(&self) -> Code {
        match self {
            Self::Denied(_) => Code::PERMISSION_DENIED,
            Self::NotFound { .. } => Code::NOT_FOUND,
            Self::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Self::AlreadyExists { .. } => Code::ALREADY_EXISTS,
            Self::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Self::Unimplemented { .. } => Code::UNIMPLEMENTED,
            // As upstream: the runtime ends its copy loop on any error.
            Self::Eof => Code::INTERNAL,
            Self::Internal { .. } => Code::INTERNAL,
        }
    }
}

impl From<AgentError> for ttrpc::Error {
    fn from(error: AgentError) -> Self {
        // The whole chain, in plain text: the runtime shows this message to the user.
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        if matches!(error, AgentError::Internal { .. }) {
            // The Internal display already includes its direct source.
            source = source.and_then(std::error::Error::source);
        }
        peerpod_text::push_causes(&mut message, source);
        ttrpc::Error::RpcStatus(ttrpc::get_status(error.code(), message))
    }
}

/// The longest error message a log line carries.
const MAX_LOGGED_REASON: usize = 512;

/// An error message as it may be logged: what the agent quotes from the request (values
/// in double quotes or backticks, as `{:?}` and serde print them) is left out, and the text is
/// cut to [`MAX_LOGGED_REASON`] characters. The caller gets the whole message; the log, which
/// may travel further than the caller, gets this.
pub fn loggable(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len().min(MAX_LOGGED_REASON));
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in reason.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q == '"' {
                    escaped = true;
                } else if c == q {
                    out.push(c);
                    quote = None;
                }
            }
            None => {
                out.push(c);
                if c == '"' || c == '`' {
                    out.push('…');
                    quote = Some(c);
                }
            }
        }
        if out.chars().count() >= MAX_LOGGED_REASON {
            out.push_str(" [cut]");
            break;
        }
    }
    out
}

/// A path from a request, for an error message: quoted as `{:?}` quotes it, so that the log line
/// of a failed request leaves it out (see [`loggable`]) while the caller still gets it.
pub fn quoted(path: &std::path::Path) -> String {
    format!("{path:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(error: AgentError) -> (Code, String) {
        match ttrpc::Error::from(error) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_owned()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_map_to_codes_with_plain_messages() {
        assert_eq!(
            status(AgentError::NotFound {
                what: "container \"c1\"".into()
            }),
            (Code::NOT_FOUND, "container \"c1\" not found".into())
        );
        assert_eq!(
            status(AgentError::Unimplemented { rpc: "AddSwap" }).0,
            Code::UNIMPLEMENTED
        );
        assert_eq!(
            status(AgentError::Denied("X is blocked by policy: no".into())).0,
            Code::PERMISSION_DENIED
        );
        let io = std::io::Error::other("disk full");
        assert_eq!(
            status(AgentError::internal("cannot write /run/x", io)),
            (Code::INTERNAL, "cannot write /run/x: disk full".into())
        );
    }

    #[test]
    fn logged_reasons_leave_out_quoted_request_values() {
        assert_eq!(
            loggable("container \"c1\" not found"),
            "container \"…\" not found"
        );
        assert_eq!(
            loggable("invalid request: unknown variant `sk-live-123`, expected one of `a`"),
            "invalid request: unknown variant `…`, expected one of `…`"
        );
        assert_eq!(
            loggable(r#"bad value "a \"quoted\" secret" here"#),
            "bad value \"…\" here"
        );
        assert_eq!(
            loggable("cannot write /run/x: disk full"),
            "cannot write /run/x: disk full"
        );
        // An unterminated quote hides the rest.
        assert_eq!(loggable("oops \"sk-live"), "oops \"…");
        let long = "x".repeat(2000);
        assert!(loggable(&long).len() < 600);
    }
}
