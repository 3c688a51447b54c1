//! Entry points for the fuzz targets in `fuzz/` and the in-tree mutation tests: arbitrary bytes
//! through every parser of TPM output and of guest commands. None may panic.

use crate::frame::{ParsedCommand, Response, any_frame_size, frame_size};
use crate::types::{Attest, NvPublic, PcrSelection, Public, RsaSignature};
use crate::wire::Reader;

/// Feeds bytes to the response, command and structure parsers.
pub fn tpm_bytes(data: &[u8]) {
    let _ = frame_size(data);
    let _ = any_frame_size(data);
    let _ = crate::transport::read_any_frame(&mut &data[..]);
    for handles in 0..3 {
        let _ = Response::parse("Fuzz", data, handles);
        if let Ok(mut cmd) = ParsedCommand::parse(data, handles) {
            let _ = cmd.params.u16("size");
        }
    }
    let _ = ParsedCommand::code_of(data);
    if let Ok(a) = Attest::parse_quote(data) {
        let _ = a.pcr_select.selected(crate::types::alg::SHA256);
    }
    if let Ok(p) = Public::parse_sized(&mut Reader::new(data)) {
        let _ = p.name();
    }
    if let Ok(p) = NvPublic::parse_sized(&mut Reader::new(data)) {
        let _ = p.name();
    }
    let _ = PcrSelection::parse(&mut Reader::new(data));
    let _ = RsaSignature::parse(&mut Reader::new(data));
}
