//! `NetworkError`, and how it becomes an [`AgentError`] (and so a ttrpc status code).

use nix::errno::Errno;

use crate::error::AgentError;

/// Why a network request failed.
///
/// Input problems ([`InvalidAddress`](Self::InvalidAddress), [`InvalidValue`](Self::InvalidValue))
/// are found before anything in the guest is changed. Each variant names the request field or the
/// netlink operation at fault.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The netlink route socket could not be opened.
    #[error("cannot open a netlink route socket")]
    Socket(#[source] std::io::Error),
    /// No network interface matches the request.
    #[error("no network interface {}", describe_interface(hw_addr, name))]
    NoSuchInterface {
        /// The hardware address looked for (empty when the lookup was by name).
        hw_addr: String,
        /// The name looked for (empty when the lookup was by hardware address only).
        name: String,
    },
    /// A field does not hold a valid IP address, prefix length or hardware address.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidAddress {
        /// The request field, e.g. `IPAddresses[0].mask` or `Routes[1].dest`.
        field: String,
        /// The value found there.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A field holds a value out of range or missing (not an address).
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidValue {
        /// The request field, e.g. `Routes[0].scope`.
        field: String,
        /// The value found there.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The kernel refused a netlink request, or the netlink connection failed.
    #[error("cannot {op} {target}")]
    Netlink {
        /// The operation, e.g. `add route`.
        op: &'static str,
        /// What it was applied to, e.g. `10.244.1.0/24 dev eth0`.
        target: String,
        /// The netlink failure (the kernel's errno for a refusal).
        #[source]
        source: rtnetlink::Error,
    },
}

/// The kernel's errno in a netlink failure, if the kernel refused the request.
pub(super) fn errno_of(error: &rtnetlink::Error) -> Option<Errno> {
    match error {
        rtnetlink::Error::NetlinkError(message) => {
            message.code.map(|code| Errno::from_raw(code.get().abs()))
        }
        _ => None,
    }
}

fn describe_interface(hw_addr: &str, name: &str) -> String {
    match (hw_addr.is_empty(), name.is_empty()) {
        (false, false) => format!("with hardware address {hw_addr:?} (name {name:?})"),
        (false, true) => format!("with hardware address {hw_addr:?}"),
        (true, false) => format!("named {name:?}"),
        (true, true) => "given (neither hardware address nor name)".to_owned(),
    }
}

impl NetworkError {
    /// The kernel's errno when the kernel refused a netlink request.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Netlink { source, .. } => errno_of(source),
            _ => None,
        }
    }

    /// A netlink failure of `op` on `target`.
    pub(crate) fn netlink(
        op: &'static str,
        target: impl Into<String>,
    ) -> impl FnOnce(rtnetlink::Error) -> Self {
        let target = target.into();
        move |source| Self::Netlink { op, target, source }
    }

    /// This error and its causes, as one line.
    fn full_message(&self) -> String {
        peerpod_text::error_chain(self)
    }
}

impl From<NetworkError> for AgentError {
    /// Missing interfaces become NOT_FOUND; bad input, and values the kernel refuses as invalid
    /// (`EINVAL`, `ERANGE`, `EADDRNOTAVAIL`, `ENETUNREACH`), INVALID_ARGUMENT; a link that is down
    /// (`ENETDOWN`) FAILED_PRECONDITION; anything else INTERNAL.
    fn from(error: NetworkError) -> Self {
        match &error {
            NetworkError::NoSuchInterface { hw_addr, name } => AgentError::NotFound {
                what: format!("network interface {}", describe_interface(hw_addr, name)),
            },
            NetworkError::InvalidAddress { .. } | NetworkError::InvalidValue { .. } => {
                AgentError::InvalidArgument(error.to_string())
            }
            NetworkError::Netlink { target, .. } => match error.errno() {
                Some(Errno::EINVAL | Errno::ERANGE | Errno::EADDRNOTAVAIL | Errno::ENETUNREACH) => {
                    AgentError::InvalidArgument(error.full_message())
                }
                Some(Errno::ENODEV) => AgentError::NotFound {
                    what: format!("network device for {target}"),
                },
                Some(Errno::ENETDOWN) => AgentError::FailedPrecondition(error.full_message()),
                _ => AgentError::internal("network", error),
            },
            NetworkError::Socket(_) => AgentError::internal("network", error),
        }
    }
}
