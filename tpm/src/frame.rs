//! Command and response framing.
//!
//! A command is `tag ‖ size ‖ code ‖ handles ‖ [authorization area] ‖ parameters`; a response is
//! `tag ‖ size ‖ code ‖ handles ‖ [parameterSize] ‖ parameters ‖ [authorization area]`, where the
//! bracketed parts exist only when the tag is `TPM_ST_SESSIONS`. Clients use
//! [`CommandBuilder`] and [`Response`]; something that answers commands (the simulated
//! paravisor in the test world) uses [`ParsedCommand`] and [`ResponseBuilder`].

use crate::types::handle;
use crate::wire::{Reader, Writer};
use crate::{Error, ResponseCode};

/// `TPM_ST_NO_SESSIONS`.
pub const ST_NO_SESSIONS: u16 = 0x8001;
/// `TPM_ST_SESSIONS`.
pub const ST_SESSIONS: u16 = 0x8002;
/// Size of the command and response header.
pub const HEADER_SIZE: usize = 10;
/// The largest command or response we accept (the size of the kernel's TPM buffer).
pub const MAX_FRAME_SIZE: usize = 4096;

/// Command codes (`TPM_CC`) used here.
pub mod cc {
    /// `TPM2_EvictControl`.
    pub const EVICT_CONTROL: u32 = 0x120;
    /// `TPM2_NV_UndefineSpace`.
    pub const NV_UNDEFINE_SPACE: u32 = 0x122;
    /// `TPM2_NV_DefineSpace`.
    pub const NV_DEFINE_SPACE: u32 = 0x12A;
    /// `TPM2_CreatePrimary`.
    pub const CREATE_PRIMARY: u32 = 0x131;
    /// `TPM2_NV_Write`.
    pub const NV_WRITE: u32 = 0x137;
    /// `TPM2_Startup`.
    pub const STARTUP: u32 = 0x144;
    /// `TPM2_NV_Read`.
    pub const NV_READ: u32 = 0x14E;
    /// `TPM2_Quote`.
    pub const QUOTE: u32 = 0x158;
    /// `TPM2_FlushContext`.
    pub const FLUSH_CONTEXT: u32 = 0x165;
    /// `TPM2_NV_ReadPublic`.
    pub const NV_READ_PUBLIC: u32 = 0x169;
    /// `TPM2_ReadPublic`.
    pub const READ_PUBLIC: u32 = 0x173;
    /// `TPM2_GetCapability`.
    pub const GET_CAPABILITY: u32 = 0x17A;
    /// `TPM2_PCR_Read`.
    pub const PCR_READ: u32 = 0x17E;
    /// `TPM2_PCR_Extend`.
    pub const PCR_EXTEND: u32 = 0x182;
}

/// Builds one command.
#[derive(Debug)]
pub struct CommandBuilder {
    code: u32,
    handles: Vec<u32>,
    passwords: Vec<Vec<u8>>,
    params: Writer,
}

impl CommandBuilder {
    /// Starts a command with the given code.
    pub fn new(code: u32) -> Self {
        Self {
            code,
            handles: Vec::new(),
            passwords: Vec::new(),
            params: Writer::new(),
        }
    }

    /// Adds a handle to the handle area.
    pub fn handle(mut self, h: u32) -> Self {
        self.handles.push(h);
        self
    }

    /// Adds a password authorization for the next handle that needs one.
    pub fn password(mut self, password: &[u8]) -> Self {
        self.passwords.push(password.to_vec());
        self
    }

    /// The parameter area, to append parameters to.
    pub fn params(&mut self) -> &mut Writer {
        &mut self.params
    }

    /// The marshalled command.
    pub fn build(self) -> Result<Vec<u8>, Error> {
        let mut body = Writer::new();
        for h in &self.handles {
            body.u32(*h);
        }
        let tag = if self.passwords.is_empty() {
            ST_NO_SESSIONS
        } else {
            let mut auth = Writer::new();
            for pw in &self.passwords {
                auth.u32(handle::PASSWORD_SESSION);
                auth.tpm2b("nonce", &[])?;
                auth.u8(0x01); // continueSession
                auth.tpm2b("password", pw)?;
            }
            body.u32(frame_len(auth.as_slice().len())?);
            body.bytes(auth.as_slice());
            ST_SESSIONS
        };
        body.bytes(self.params.as_slice());
        let total = HEADER_SIZE + body.as_slice().len();
        let mut out = Writer::new();
        out.u16(tag).u32(frame_len(total)?).u32(self.code);
        out.bytes(body.as_slice());
        Ok(out.into_vec())
    }
}

fn frame_len(len: usize) -> Result<u32, Error> {
    if len > MAX_FRAME_SIZE {
        return Err(Error::TooLarge {
            what: "TPM command",
            len,
            max: MAX_FRAME_SIZE,
        });
    }
    u32::try_from(len).map_err(|_| Error::TooLarge {
        what: "TPM command",
        len,
        max: MAX_FRAME_SIZE,
    })
}

/// Reads the size field of a TPM 2.0 frame header, checking the tag and the size.
pub fn frame_size(header: &[u8]) -> Result<usize, Error> {
    let tag = Reader::new(header).u16("header.tag")?;
    if tag != ST_NO_SESSIONS && tag != ST_SESSIONS {
        return Err(Error::Malformed {
            what: "TPM frame",
            detail: format!("tag 0x{tag:04x} is neither 0x8001 nor 0x8002"),
        });
    }
    any_frame_size(header)
}

/// Reads the size field of a frame header of any TPM family (TPM 1.2 frames have the same
/// 10-byte layout with other tags), checking only the size.
pub fn any_frame_size(header: &[u8]) -> Result<usize, Error> {
    let mut r = Reader::new(header);
    r.u16("header.tag")?;
    let size = r.u32("header.size")?;
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if !(HEADER_SIZE..=MAX_FRAME_SIZE).contains(&size) {
        return Err(Error::Malformed {
            what: "TPM frame",
            detail: format!("size {size} is outside {HEADER_SIZE}..={MAX_FRAME_SIZE}"),
        });
    }
    Ok(size)
}

/// A parsed response.
#[derive(Debug)]
pub struct Response<'a> {
    /// Handles returned by the command (e.g. a created object's handle).
    pub handles: Vec<u32>,
    /// The parameter area.
    pub params: Reader<'a>,
}

impl<'a> Response<'a> {
    /// Parses a response to `command` that carries `handle_count` handles, turning a non-zero
    /// response code into [`Error::Command`].
    pub fn parse(
        command: &'static str,
        bytes: &'a [u8],
        handle_count: usize,
    ) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        let tag = r.u16("response tag")?;
        let size = r.u32("response size")?;
        let code = r.u32("response code")?;
        if usize::try_from(size).ok() != Some(bytes.len()) {
            return Err(Error::Malformed {
                what: "TPM response",
                detail: format!("header says {size} bytes, got {}", bytes.len()),
            });
        }
        if code != ResponseCode::SUCCESS {
            return Err(Error::Command {
                command,
                code: ResponseCode(code),
            });
        }
        let mut handles = Vec::with_capacity(handle_count);
        for _ in 0..handle_count {
            handles.push(r.u32("response handle")?);
        }
        let params = if tag == ST_SESSIONS {
            let len = r.u32("parameterSize")?;
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            Reader::new(r.take("response parameters", len)?)
        } else {
            Reader::new(r.rest())
        };
        Ok(Self { handles, params })
    }
}

/// One entry of a command's authorization area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandAuth {
    /// The session handle (`TPM_RS_PW` for a password).
    pub session: u32,
    /// The caller's nonce.
    pub nonce: Vec<u8>,
    /// Session attributes.
    pub attributes: u8,
    /// The password or HMAC.
    pub hmac: Vec<u8>,
}

/// A command taken apart by something that answers it.
#[derive(Debug)]
pub struct ParsedCommand<'a> {
    /// `TPM_ST_SESSIONS` or `TPM_ST_NO_SESSIONS`.
    pub tag: u16,
    /// The command code.
    pub code: u32,
    /// The handle area.
    pub handles: Vec<u32>,
    /// The authorization area.
    pub auths: Vec<CommandAuth>,
    /// The parameter area.
    pub params: Reader<'a>,
}

impl<'a> ParsedCommand<'a> {
    /// The command code of a complete frame, without parsing further.
    pub fn code_of(bytes: &[u8]) -> Result<u32, Error> {
        let mut r = Reader::new(bytes);
        r.take("command header", 6)?;
        r.u32("command code")
    }

    /// Parses a command whose handle area holds `handle_count` handles.
    pub fn parse(bytes: &'a [u8], handle_count: usize) -> Result<Self, Error> {
        let size = frame_size(bytes)?;
        if size != bytes.len() {
            return Err(Error::Malformed {
                what: "TPM command",
                detail: format!("header says {size} bytes, got {}", bytes.len()),
            });
        }
        let mut r = Reader::new(bytes);
        let tag = r.u16("command tag")?;
        r.u32("command size")?;
        let code = r.u32("command code")?;
        let mut handles = Vec::with_capacity(handle_count);
        for _ in 0..handle_count {
            handles.push(r.u32("command handle")?);
        }
        let mut auths = Vec::new();
        if tag == ST_SESSIONS {
            let len = r.u32("authorizationSize")?;
            let area = r.take(
                "authorization area",
                usize::try_from(len).unwrap_or(usize::MAX),
            )?;
            let mut ar = Reader::new(area);
            while ar.remaining() > 0 {
                auths.push(CommandAuth {
                    session: ar.u32("sessionHandle")?,
                    nonce: ar.tpm2b("nonceCaller")?.to_vec(),
                    attributes: ar.u8("sessionAttributes")?,
                    hmac: ar.tpm2b("hmac")?.to_vec(),
                });
            }
        }
        Ok(Self {
            tag,
            code,
            handles,
            auths,
            params: Reader::new(r.rest()),
        })
    }
}

/// Builds responses, for something that answers commands.
#[derive(Debug)]
pub struct ResponseBuilder;

impl ResponseBuilder {
    /// A response carrying only an error code.
    pub fn error(code: u32) -> Vec<u8> {
        let mut w = Writer::new();
        w.u16(ST_NO_SESSIONS).u32(10).u32(code);
        w.into_vec()
    }

    /// A successful response with the given parameters; `password_sessions` is the number of
    /// password authorizations the command carried, each answered with an empty acknowledgement.
    pub fn success(params: &[u8], password_sessions: usize) -> Result<Vec<u8>, Error> {
        let mut body = Writer::new();
        let tag = if password_sessions > 0 {
            body.u32(frame_len(params.len())?);
            body.bytes(params);
            for _ in 0..password_sessions {
                body.tpm2b("nonce", &[])?;
                body.u8(0x01);
                body.tpm2b("hmac", &[])?;
            }
            ST_SESSIONS
        } else {
            body.bytes(params);
            ST_NO_SESSIONS
        };
        let mut out = Writer::new();
        out.u16(tag)
            .u32(frame_len(HEADER_SIZE + body.as_slice().len())?)
            .u32(0);
        out.bytes(body.as_slice());
        Ok(out.into_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_round_trip_with_password() {
        let mut b = CommandBuilder::new(cc::NV_READ)
            .handle(handle::OWNER)
            .handle(0x0140_0001)
            .password(b"");
        b.params().u16(1024).u16(0);
        let bytes = b.build().expect("build");
        assert_eq!(frame_size(&bytes).expect("size"), bytes.len());
        let mut parsed = ParsedCommand::parse(&bytes, 2).expect("parse");
        assert_eq!(parsed.code, cc::NV_READ);
        assert_eq!(parsed.handles, vec![handle::OWNER, 0x0140_0001]);
        assert_eq!(parsed.auths.len(), 1);
        assert_eq!(parsed.auths[0].session, handle::PASSWORD_SESSION);
        assert_eq!(parsed.params.u16("size").expect("size"), 1024);
        assert_eq!(parsed.params.u16("offset").expect("offset"), 0);
    }

    #[test]
    fn response_round_trip() {
        let ok = ResponseBuilder::success(&[0, 2, 0xAA, 0xBB], 1).expect("build");
        let mut resp = Response::parse("NV_Read", &ok, 0).expect("parse");
        assert_eq!(resp.params.tpm2b("data").expect("data"), &[0xAA, 0xBB]);
        let err = ResponseBuilder::error(0x28B);
        let e = Response::parse("NV_Read", &err, 0).expect_err("error");
        assert_eq!(e.response_code(), Some(ResponseCode(0x28B)));
        assert_eq!(
            e.to_string(),
            "TPM2_NV_Read failed: TPM_RC_HANDLE (0x28B), handle 2"
        );
    }

    #[test]
    fn bad_frames_are_refused() {
        assert!(frame_size(&[0x80, 0x01, 0, 0, 0, 5]).is_err());
        assert!(frame_size(&[0x12, 0x34, 0, 0, 0, 10]).is_err());
        assert!(frame_size(&[0x80, 0x01, 0, 1, 0, 0]).is_err());
        let mut bytes = ResponseBuilder::success(&[1, 2, 3], 0).expect("build");
        bytes.push(0);
        assert!(Response::parse("X", &bytes, 0).is_err());
    }
}
