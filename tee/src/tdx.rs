//! Intel TDX: the TD report (what the guest gets from the TDX module) and the TD quote
//! (version 4, ECDSA P-256: what a quoting enclave makes of a report).
//!
//! In an Azure TDX CVM the paravisor puts the TD report in the HCL report; the guest sends it to
//! the IMDS quoting endpoint and gets the quote back. The quote's signature chain is: quote body
//! signed by the attestation key; the attestation key bound into the quoting enclave's report
//! (`report_data[0..32] = SHA-256(attestation key ‖ QE auth data)`); that report signed by the
//! PCK key; the PCK certificate chain to Intel's root (carried as PEM in the quote).

use sha2::{Digest, Sha256};

use crate::{Error, field, need, put, u16_le, u32_le};

/// Size of a TD report.
pub const TD_REPORT_SIZE: usize = 1024;
/// Size of the quote header.
pub const QUOTE_HEADER_SIZE: usize = 48;
/// Size of the version-4 TD quote body.
pub const QUOTE_BODY_SIZE: usize = 584;
/// Bytes covered by the quote signature: header and body.
pub const QUOTE_SIGNED_SIZE: usize = QUOTE_HEADER_SIZE + QUOTE_BODY_SIZE;
/// Size of an SGX report body (the quoting enclave's report).
pub const QE_REPORT_SIZE: usize = 384;
/// `tee_type` of TDX quotes.
pub const TEE_TYPE_TDX: u32 = 0x81;
/// `att_key_type` for ECDSA P-256.
pub const ATT_KEY_ECDSA_P256: u16 = 2;
/// Certification data type: QE report certification data.
pub const CERT_TYPE_QE_REPORT: u16 = 6;
/// Certification data type: PCK certificate chain (PEM).
pub const CERT_TYPE_PCK_CHAIN: u16 = 5;
/// Intel's quoting enclave vendor ID.
pub const INTEL_QE_VENDOR_ID: [u8; 16] = [
    0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07,
];

/// The measurements and identity of a TD, as both the TD report and the quote body carry them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdMeasurements {
    /// TEE TCB SVN.
    pub tee_tcb_svn: [u8; 16],
    /// Measurement of the TDX module.
    pub mr_seam: [u8; 48],
    /// Signer of the TDX module.
    pub mrsigner_seam: [u8; 48],
    /// TDX module attributes.
    pub seam_attributes: [u8; 8],
    /// TD attributes (bit 0: debug).
    pub td_attributes: [u8; 8],
    /// XFAM.
    pub xfam: [u8; 8],
    /// Build-time measurement of the TD.
    pub mr_td: [u8; 48],
    /// Software-defined configuration ID (initdata digest on plain TDX).
    pub mr_config_id: [u8; 48],
    /// Owner ID.
    pub mr_owner: [u8; 48],
    /// Owner-defined configuration.
    pub mr_owner_config: [u8; 48],
    /// Runtime measurement registers 0–3.
    pub rtmr: [[u8; 48]; 4],
    /// Data the guest bound into the report.
    pub report_data: [u8; 64],
}

impl Default for TdMeasurements {
    fn default() -> Self {
        Self {
            tee_tcb_svn: [0; 16],
            mr_seam: [0; 48],
            mrsigner_seam: [0; 48],
            seam_attributes: [0; 8],
            td_attributes: [0; 8],
            xfam: [0; 8],
            mr_td: [0; 48],
            mr_config_id: [0; 48],
            mr_owner: [0; 48],
            mr_owner_config: [0; 48],
            rtmr: [[0; 48]; 4],
            report_data: [0; 64],
        }
    }
}

// TD report offsets.
const R_REPORT_TYPE: usize = 0;
const R_TEE_TCB_INFO_HASH: usize = 32;
const R_TEE_INFO_HASH: usize = 80;
const R_REPORT_DATA: usize = 128;
const R_MAC: usize = 224;
const R_TCB_INFO: usize = 256;
const R_TCB_INFO_SIZE: usize = 239;
const R_TD_INFO: usize = 512;
const R_TD_INFO_SIZE: usize = 512;

/// A TD report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdReport {
    /// The TD's measurements and report data.
    pub measurements: TdMeasurements,
    /// The MAC the TDX module computed over the report's first 224 bytes.
    pub mac: [u8; 32],
}

impl TdReport {
    /// Parses a TD report.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        need("TD report", bytes, TD_REPORT_SIZE)?;
        if bytes[R_REPORT_TYPE] != TEE_TYPE_TDX as u8 {
            return Err(Error::invalid(
                "TD report type",
                format!("0x{:02x} is not TDX (0x81)", bytes[R_REPORT_TYPE]),
            ));
        }
        let tcb = R_TCB_INFO;
        let td = R_TD_INFO;
        let mut rtmr = [[0u8; 48]; 4];
        for (i, r) in rtmr.iter_mut().enumerate() {
            *r = field(bytes, td + 208 + 48 * i);
        }
        Ok(Self {
            measurements: TdMeasurements {
                tee_tcb_svn: field(bytes, tcb + 8),
                mr_seam: field(bytes, tcb + 24),
                mrsigner_seam: field(bytes, tcb + 72),
                seam_attributes: field(bytes, tcb + 120),
                td_attributes: field(bytes, td),
                xfam: field(bytes, td + 8),
                mr_td: field(bytes, td + 16),
                mr_config_id: field(bytes, td + 64),
                mr_owner: field(bytes, td + 112),
                mr_owner_config: field(bytes, td + 160),
                rtmr,
                report_data: field(bytes, R_REPORT_DATA),
            },
            mac: field(bytes, R_MAC),
        })
    }

    /// The report's bytes. The TEE-info hashes are SHA-256 of the TCB-info and TD-info areas
    /// (zero-extended to 48 bytes), so the MAC over the first 224 bytes covers everything.
    pub fn to_bytes(&self) -> [u8; TD_REPORT_SIZE] {
        let m = &self.measurements;
        let mut b = [0u8; TD_REPORT_SIZE];
        b[R_REPORT_TYPE] = TEE_TYPE_TDX as u8;
        let tcb = R_TCB_INFO;
        put(&mut b, tcb, &[0xFF; 8]);
        put(&mut b, tcb + 8, &m.tee_tcb_svn);
        put(&mut b, tcb + 24, &m.mr_seam);
        put(&mut b, tcb + 72, &m.mrsigner_seam);
        put(&mut b, tcb + 120, &m.seam_attributes);
        let td = R_TD_INFO;
        put(&mut b, td, &m.td_attributes);
        put(&mut b, td + 8, &m.xfam);
        put(&mut b, td + 16, &m.mr_td);
        put(&mut b, td + 64, &m.mr_config_id);
        put(&mut b, td + 112, &m.mr_owner);
        put(&mut b, td + 160, &m.mr_owner_config);
        for (i, r) in m.rtmr.iter().enumerate() {
            put(&mut b, td + 208 + 48 * i, r);
        }
        let tcb_hash = Sha256::digest(&b[tcb..tcb + R_TCB_INFO_SIZE]);
        let td_hash = Sha256::digest(&b[td..td + R_TD_INFO_SIZE]);
        put(&mut b, R_TEE_TCB_INFO_HASH, &tcb_hash);
        put(&mut b, R_TEE_INFO_HASH, &td_hash);
        put(&mut b, R_REPORT_DATA, &m.report_data);
        put(&mut b, R_MAC, &self.mac);
        b
    }

    /// The bytes the MAC covers.
    pub fn mac_input(&self) -> Vec<u8> {
        self.to_bytes()[..R_MAC].to_vec()
    }

    /// Whether the TEE-info hashes inside `bytes` match the areas they cover (a report edited
    /// after the fact fails this even before its MAC is checked).
    pub fn hashes_consistent(bytes: &[u8]) -> bool {
        if bytes.len() < TD_REPORT_SIZE {
            return false;
        }
        let tcb_hash = Sha256::digest(&bytes[R_TCB_INFO..R_TCB_INFO + R_TCB_INFO_SIZE]);
        let td_hash = Sha256::digest(&bytes[R_TD_INFO..R_TD_INFO + R_TD_INFO_SIZE]);
        bytes[R_TEE_TCB_INFO_HASH..R_TEE_TCB_INFO_HASH + 32] == tcb_hash[..]
            && bytes[R_TEE_INFO_HASH..R_TEE_INFO_HASH + 32] == td_hash[..]
    }
}

/// A TD quote, version 4, with QE report certification data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdQuote {
    /// Quoting enclave SVN (header bytes 8..10).
    pub qe_svn: u16,
    /// PCE SVN (header bytes 10..12).
    pub pce_svn: u16,
    /// Quoting enclave vendor.
    pub qe_vendor_id: [u8; 16],
    /// Vendor-defined user data.
    pub user_data: [u8; 20],
    /// The quoted TD.
    pub body: TdMeasurements,
    /// Quote signature: ECDSA P-256 over SHA-256 of header and body, `r ‖ s` big-endian.
    pub signature: [u8; 64],
    /// The attestation public key, raw `x ‖ y`.
    pub attestation_key: [u8; 64],
    /// The quoting enclave's report body.
    pub qe_report: [u8; QE_REPORT_SIZE],
    /// Signature over `qe_report` by the PCK key, `r ‖ s` big-endian.
    pub qe_report_signature: [u8; 64],
    /// QE authentication data.
    pub qe_auth_data: Vec<u8>,
    /// The PCK certificate chain, PEM, leaf first.
    pub pck_chain_pem: Vec<u8>,
}

// Quote body offsets, relative to the body start.
fn put_body(b: &mut [u8], at: usize, m: &TdMeasurements) {
    put(b, at, &m.tee_tcb_svn);
    put(b, at + 16, &m.mr_seam);
    put(b, at + 64, &m.mrsigner_seam);
    put(b, at + 112, &m.seam_attributes);
    put(b, at + 120, &m.td_attributes);
    put(b, at + 128, &m.xfam);
    put(b, at + 136, &m.mr_td);
    put(b, at + 184, &m.mr_config_id);
    put(b, at + 232, &m.mr_owner);
    put(b, at + 280, &m.mr_owner_config);
    for (i, r) in m.rtmr.iter().enumerate() {
        put(b, at + 328 + 48 * i, r);
    }
    put(b, at + 520, &m.report_data);
}

fn get_body(b: &[u8], at: usize) -> TdMeasurements {
    let mut rtmr = [[0u8; 48]; 4];
    for (i, r) in rtmr.iter_mut().enumerate() {
        *r = field(b, at + 328 + 48 * i);
    }
    TdMeasurements {
        tee_tcb_svn: field(b, at),
        mr_seam: field(b, at + 16),
        mrsigner_seam: field(b, at + 64),
        seam_attributes: field(b, at + 112),
        td_attributes: field(b, at + 120),
        xfam: field(b, at + 128),
        mr_td: field(b, at + 136),
        mr_config_id: field(b, at + 184),
        mr_owner: field(b, at + 232),
        mr_owner_config: field(b, at + 280),
        rtmr,
        report_data: field(b, at + 520),
    }
}

/// Offset of `report_data` in an SGX report body.
pub const QE_REPORT_DATA_OFFSET: usize = 320;

/// The value a QE report's `report_data` must hold for an attestation key and QE auth data.
pub fn qe_report_data(attestation_key: &[u8; 64], qe_auth_data: &[u8]) -> [u8; 64] {
    let mut h = Sha256::new();
    h.update(attestation_key);
    h.update(qe_auth_data);
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&h.finalize());
    out
}

impl TdQuote {
    /// The quote's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        let auth_len = u16::try_from(self.qe_auth_data.len())
            .map_err(|_| Error::invalid("QE auth data", "longer than 65535 bytes"))?;
        let pem_len = u32::try_from(self.pck_chain_pem.len())
            .map_err(|_| Error::invalid("PCK chain", "too large"))?;
        let cert_data_len =
            QE_REPORT_SIZE + 64 + 2 + self.qe_auth_data.len() + 2 + 4 + self.pck_chain_pem.len();
        let cert_data_len32 = u32::try_from(cert_data_len)
            .map_err(|_| Error::invalid("certification data", "too large"))?;
        let sig_data_len = 64 + 64 + 2 + 4 + cert_data_len;
        let sig_data_len32 = u32::try_from(sig_data_len)
            .map_err(|_| Error::invalid("signature data", "too large"))?;
        let mut b = vec![0u8; QUOTE_SIGNED_SIZE + 4];
        put(&mut b, 0, &4u16.to_le_bytes());
        put(&mut b, 2, &ATT_KEY_ECDSA_P256.to_le_bytes());
        put(&mut b, 4, &TEE_TYPE_TDX.to_le_bytes());
        put(&mut b, 8, &self.qe_svn.to_le_bytes());
        put(&mut b, 10, &self.pce_svn.to_le_bytes());
        put(&mut b, 12, &self.qe_vendor_id);
        put(&mut b, 28, &self.user_data);
        put_body(&mut b, QUOTE_HEADER_SIZE, &self.body);
        put(&mut b, QUOTE_SIGNED_SIZE, &sig_data_len32.to_le_bytes());
        b.extend_from_slice(&self.signature);
        b.extend_from_slice(&self.attestation_key);
        b.extend_from_slice(&CERT_TYPE_QE_REPORT.to_le_bytes());
        b.extend_from_slice(&cert_data_len32.to_le_bytes());
        b.extend_from_slice(&self.qe_report);
        b.extend_from_slice(&self.qe_report_signature);
        b.extend_from_slice(&auth_len.to_le_bytes());
        b.extend_from_slice(&self.qe_auth_data);
        b.extend_from_slice(&CERT_TYPE_PCK_CHAIN.to_le_bytes());
        b.extend_from_slice(&pem_len.to_le_bytes());
        b.extend_from_slice(&self.pck_chain_pem);
        Ok(b)
    }

    /// Parses a version-4 TDX quote with ECDSA P-256 and QE report certification data.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        need("TD quote", bytes, QUOTE_SIGNED_SIZE + 4)?;
        let version = u16_le(bytes, 0);
        if version != 4 {
            return Err(Error::invalid(
                "TD quote version",
                format!("{version} is not 4"),
            ));
        }
        let key_type = u16_le(bytes, 2);
        if key_type != ATT_KEY_ECDSA_P256 {
            return Err(Error::invalid(
                "TD quote attestation key type",
                format!("{key_type} is not ECDSA P-256 (2)"),
            ));
        }
        let tee_type = u32_le(bytes, 4);
        if tee_type != TEE_TYPE_TDX {
            return Err(Error::invalid(
                "TD quote TEE type",
                format!("0x{tee_type:x} is not TDX (0x81)"),
            ));
        }
        let sig_len = usize::try_from(u32_le(bytes, QUOTE_SIGNED_SIZE)).unwrap_or(usize::MAX);
        let sig = &bytes[QUOTE_SIGNED_SIZE + 4..];
        if sig.len() != sig_len {
            return Err(Error::invalid(
                "TD quote signature data",
                format!("{sig_len} bytes announced, {} present", sig.len()),
            ));
        }
        need(
            "TD quote signature data",
            sig,
            64 + 64 + 6 + QE_REPORT_SIZE + 64 + 2,
        )?;
        let cert_type = u16_le(sig, 128);
        if cert_type != CERT_TYPE_QE_REPORT {
            return Err(Error::invalid(
                "TD quote certification data type",
                format!("{cert_type} is not QE report certification data (6)"),
            ));
        }
        let cert_len = usize::try_from(u32_le(sig, 130)).unwrap_or(usize::MAX);
        let cert = &sig[134..];
        if cert.len() != cert_len {
            return Err(Error::invalid(
                "TD quote certification data",
                format!("{cert_len} bytes announced, {} present", cert.len()),
            ));
        }
        let auth_len = usize::from(u16_le(cert, QE_REPORT_SIZE + 64));
        let auth_start = QE_REPORT_SIZE + 64 + 2;
        need("QE auth data", cert, auth_start + auth_len + 6)?;
        let inner = &cert[auth_start + auth_len..];
        let inner_type = u16_le(inner, 0);
        if inner_type != CERT_TYPE_PCK_CHAIN {
            return Err(Error::invalid(
                "QE certification data type",
                format!("{inner_type} is not a PCK certificate chain (5)"),
            ));
        }
        let pem_len = usize::try_from(u32_le(inner, 2)).unwrap_or(usize::MAX);
        if inner.len() - 6 != pem_len {
            return Err(Error::invalid(
                "PCK certificate chain",
                format!("{pem_len} bytes announced, {} present", inner.len() - 6),
            ));
        }
        Ok(Self {
            qe_svn: u16_le(bytes, 8),
            pce_svn: u16_le(bytes, 10),
            qe_vendor_id: field(bytes, 12),
            user_data: field(bytes, 28),
            body: get_body(bytes, QUOTE_HEADER_SIZE),
            signature: field(sig, 0),
            attestation_key: field(sig, 64),
            qe_report: field(cert, 0),
            qe_report_signature: field(cert, QE_REPORT_SIZE),
            qe_auth_data: cert[auth_start..auth_start + auth_len].to_vec(),
            pck_chain_pem: inner[6..].to_vec(),
        })
    }

    /// The bytes the quote signature covers (header and body).
    pub fn signed_bytes(&self) -> Result<Vec<u8>, Error> {
        Ok(self.to_bytes()?[..QUOTE_SIGNED_SIZE].to_vec())
    }

    /// The QE report's `report_data`.
    pub fn qe_report_data(&self) -> [u8; 64] {
        field(&self.qe_report, QE_REPORT_DATA_OFFSET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurements() -> TdMeasurements {
        TdMeasurements {
            mr_td: [1; 48],
            mr_config_id: [2; 48],
            rtmr: [[3; 48], [4; 48], [5; 48], [6; 48]],
            report_data: [7; 64],
            ..TdMeasurements::default()
        }
    }

    #[test]
    fn td_report_round_trip() {
        let r = TdReport {
            measurements: measurements(),
            mac: [9; 32],
        };
        let bytes = r.to_bytes();
        assert_eq!(&bytes[128..192], &[7; 64]);
        assert!(TdReport::hashes_consistent(&bytes));
        assert_eq!(TdReport::parse(&bytes).expect("parse"), r);
        let mut edited = bytes;
        edited[512 + 16] ^= 1;
        assert!(!TdReport::hashes_consistent(&edited));
        assert!(TdReport::parse(&[0u8; 10]).is_err());
    }

    #[test]
    fn quote_round_trip_and_layout() {
        let mut qe_report = [0u8; QE_REPORT_SIZE];
        let key = [0x33; 64];
        put(
            &mut qe_report,
            QE_REPORT_DATA_OFFSET,
            &qe_report_data(&key, b"auth"),
        );
        let q = TdQuote {
            qe_svn: 8,
            pce_svn: 13,
            qe_vendor_id: INTEL_QE_VENDOR_ID,
            user_data: [0; 20],
            body: measurements(),
            signature: [0x44; 64],
            attestation_key: key,
            qe_report,
            qe_report_signature: [0x55; 64],
            qe_auth_data: b"auth".to_vec(),
            pck_chain_pem: b"-----BEGIN CERTIFICATE-----\n".to_vec(),
        };
        let bytes = q.to_bytes().expect("build");
        // report_data sits at 568 in a v4 quote.
        assert_eq!(&bytes[568..632], &[7; 64]);
        assert_eq!(&bytes[636..700], &[0x44; 64]);
        assert_eq!(u16_le(&bytes, 764), 6);
        let back = TdQuote::parse(&bytes).expect("parse");
        assert_eq!(back, q);
        assert_eq!(back.qe_report_data(), qe_report_data(&key, b"auth"));
        for cut in [10, 640, 1000, bytes.len() - 1] {
            assert!(TdQuote::parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut v5 = bytes.clone();
        v5[0] = 5;
        assert!(TdQuote::parse(&v5).is_err());
    }
}
