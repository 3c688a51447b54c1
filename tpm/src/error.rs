//! Errors of the TPM layer, and TPM response codes decoded into names.

use std::fmt;

/// Everything that can go wrong talking to a TPM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The transport specification could not be understood.
    #[error(
        "invalid TPM transport {spec:?}: {reason} (use device:/dev/tpmrm0, unix:/path or tcp:host:port)"
    )]
    InvalidTransport {
        /// The specification as given.
        spec: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Opening the TPM device or socket failed.
    #[error("cannot open TPM at {target}")]
    Open {
        /// The device path or socket address.
        target: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the transport failed.
    #[error("TPM transport failed while {action}")]
    Io {
        /// What we were doing.
        action: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TPM answered a command with an error code.
    #[error("TPM2_{command} failed: {code}")]
    Command {
        /// The command's name, e.g. `NV_Read`.
        command: &'static str,
        /// What the TPM said.
        code: ResponseCode,
    },
    /// A structure ended before all its fields were read.
    #[error("truncated TPM data: {what} needs {needed} more bytes at offset {offset}")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Where reading started.
        offset: usize,
        /// How many bytes were missing.
        needed: usize,
    },
    /// A structure was complete but its content is not acceptable.
    #[error("malformed TPM data: {what}: {detail}")]
    Malformed {
        /// The structure or field.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A value does not fit the field that must carry it.
    #[error("{what} is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// The value.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl Error {
    /// The TPM response code, when this error is one.
    pub fn response_code(&self) -> Option<ResponseCode> {
        match self {
            Error::Command { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A TPM 2.0 response code (`TPM_RC`), displayed with its name and the handle, session or
/// parameter it refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseCode(pub u32);

impl ResponseCode {
    /// `TPM_RC_SUCCESS`.
    pub const SUCCESS: u32 = 0;
    /// `TPM_RC_INITIALIZE`: the TPM has not been started (or was already started, for Startup).
    pub const INITIALIZE: u32 = 0x100;
    /// `TPM_RC_NV_RANGE`: offset or size outside the NV index.
    pub const NV_RANGE: u32 = 0x146;
    /// `TPM_RC_NV_UNINITIALIZED`: the NV index was never written.
    pub const NV_UNINITIALIZED: u32 = 0x14A;
    /// `TPM_RC_NV_DEFINED`: the NV index already exists.
    pub const NV_DEFINED: u32 = 0x14C;
    /// `TPM_RC_HANDLE`: the handle does not refer to a loaded object or defined index.
    pub const HANDLE: u32 = 0x08B;
    /// `TPM_RC_AUTH_FAIL`: the authorization value was wrong.
    pub const AUTH_FAIL: u32 = 0x08E;
    /// `TPM_RC_SIZE`: a size is wrong.
    pub const SIZE: u32 = 0x095;
    /// `TPM_RC_VALUE`: a value is out of range.
    pub const VALUE: u32 = 0x084;
    /// `TPM_RC_LOCALITY`: the command is not allowed from the current locality.
    pub const LOCALITY: u32 = 0x907;
    /// `TPM_RC_COMMAND_CODE`: the command is not implemented.
    pub const COMMAND_CODE: u32 = 0x143;
    /// `TPM_RC_AUTH_MISSING`: the command needs an authorization session.
    pub const AUTH_MISSING: u32 = 0x125;

    /// The code without its handle, session or parameter number: comparable with the
    /// constants of this type.
    pub fn base(self) -> u32 {
        if self.0 & 0x80 != 0 {
            0x80 | (self.0 & 0x3F)
        } else {
            self.0 & 0xFFF
        }
    }

    /// Whether this is the given base code.
    pub fn is(self, base: u32) -> bool {
        self.base() == base
    }

    fn name(self) -> Option<&'static str> {
        Some(match self.base() {
            0x000 => "TPM_RC_SUCCESS",
            0x081 => "TPM_RC_ASYMMETRIC",
            0x082 => "TPM_RC_ATTRIBUTES",
            0x083 => "TPM_RC_HASH",
            0x084 => "TPM_RC_VALUE",
            0x085 => "TPM_RC_HIERARCHY",
            0x087 => "TPM_RC_KEY_SIZE",
            0x08A => "TPM_RC_TYPE",
            0x08B => "TPM_RC_HANDLE",
            0x08D => "TPM_RC_RANGE",
            0x08E => "TPM_RC_AUTH_FAIL",
            0x092 => "TPM_RC_SCHEME",
            0x095 => "TPM_RC_SIZE",
            0x097 => "TPM_RC_TAG",
            0x098 => "TPM_RC_SELECTOR",
            0x09A => "TPM_RC_INSUFFICIENT",
            0x09B => "TPM_RC_SIGNATURE",
            0x09C => "TPM_RC_KEY",
            0x09D => "TPM_RC_POLICY_FAIL",
            0x0A2 => "TPM_RC_BAD_AUTH",
            0x100 => "TPM_RC_INITIALIZE",
            0x101 => "TPM_RC_FAILURE",
            0x124 => "TPM_RC_AUTH_TYPE",
            0x125 => "TPM_RC_AUTH_MISSING",
            0x126 => "TPM_RC_POLICY",
            0x127 => "TPM_RC_PCR",
            0x142 => "TPM_RC_COMMAND_SIZE",
            0x143 => "TPM_RC_COMMAND_CODE",
            0x144 => "TPM_RC_AUTHSIZE",
            0x146 => "TPM_RC_NV_RANGE",
            0x147 => "TPM_RC_NV_SIZE",
            0x148 => "TPM_RC_NV_LOCKED",
            0x149 => "TPM_RC_NV_AUTHORIZATION",
            0x14A => "TPM_RC_NV_UNINITIALIZED",
            0x14B => "TPM_RC_NV_SPACE",
            0x14C => "TPM_RC_NV_DEFINED",
            0x902 => "TPM_RC_OBJECT_MEMORY",
            0x903 => "TPM_RC_SESSION_MEMORY",
            0x904 => "TPM_RC_MEMORY",
            0x907 => "TPM_RC_LOCALITY",
            0x908 => "TPM_RC_YIELDED",
            0x909 => "TPM_RC_CANCELED",
            0x90A => "TPM_RC_TESTING",
            0x920 => "TPM_RC_NV_RATE",
            0x921 => "TPM_RC_LOCKOUT",
            0x922 => "TPM_RC_RETRY",
            0x923 => "TPM_RC_NV_UNAVAILABLE",
            _ => return None,
        })
    }
}

impl fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} (0x{:03X})", self.0)?,
            None => write!(f, "response code 0x{:03X}", self.0)?,
        }
        if self.0 & 0x80 != 0 {
            let n = (self.0 >> 8) & 0xF;
            if self.0 & 0x40 != 0 {
                write!(f, ", parameter {n}")?;
            } else if n & 0x8 != 0 {
                write!(f, ", session {}", n & 0x7)?;
            } else if n != 0 {
                write!(f, ", handle {n}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_one_codes_name_their_parameter() {
        // NV_DefineSpace with a too-large index: TPM_RC_SIZE on parameter 2 (seen on swtpm).
        let rc = ResponseCode(0x2D5);
        assert!(rc.is(ResponseCode::SIZE));
        assert_eq!(rc.to_string(), "TPM_RC_SIZE (0x2D5), parameter 2");
        let rc = ResponseCode(0x18B);
        assert_eq!(rc.to_string(), "TPM_RC_HANDLE (0x18B), handle 1");
        let rc = ResponseCode(0x98E);
        assert_eq!(rc.to_string(), "TPM_RC_AUTH_FAIL (0x98E), session 1");
    }

    #[test]
    fn format_zero_codes() {
        assert!(ResponseCode(0x14C).is(ResponseCode::NV_DEFINED));
        assert_eq!(ResponseCode(0x907).to_string(), "TPM_RC_LOCALITY (0x907)");
        assert_eq!(ResponseCode(0x17F).to_string(), "response code 0x17F");
    }
}
