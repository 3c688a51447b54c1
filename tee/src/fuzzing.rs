//! Entry points for the fuzz targets in `fuzz/` and the in-tree mutation tests: arbitrary bytes
//! through every evidence parser. None may panic.

use crate::evidence::{self, AzSnpEvidence, AzTdxEvidence};
use crate::hcl::HclReport;
use crate::snp::SnpReport;
use crate::tdx::{TdQuote, TdReport};

/// Feeds bytes to the binary and JSON evidence parsers.
pub fn evidence_bytes(data: &[u8]) {
    if let Ok(r) = HclReport::parse(data) {
        let _ = r.var_data_sha256();
        if let Ok(c) = r.claims() {
            let _ = c.ak_pub().and_then(|k| k.components());
            let _ = c.user_data_bytes();
        }
        let _ = SnpReport::parse(&r.hw_report);
        let _ = TdReport::parse(&r.hw_report);
    }
    if let Ok(r) = SnpReport::parse(data) {
        let _ = r.signature_p384();
        let _ = r.generation();
    }
    let _ = TdReport::parse(data);
    let _ = TdReport::hashes_consistent(data);
    if let Ok(q) = TdQuote::parse(data) {
        // A quote that parses is canonical: it serialises back to the same bytes.
        assert_eq!(
            q.to_bytes().ok().as_deref(),
            Some(data),
            "TD quote round trip changed it"
        );
        let _ = q.qe_report_data();
    }
    if let Ok(e) = evidence::parse::<AzSnpEvidence>("fuzz", data) {
        let _ = evidence::check_version(e.version);
    }
    let _ = evidence::parse::<AzTdxEvidence>("fuzz", data);
}
