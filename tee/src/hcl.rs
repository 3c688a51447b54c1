//! Azure's HCL report: what the paravisor stores in vTPM NV index `0x01400001`.
//!
//! Layout (little-endian): a 32-byte header (`"HCLA"`, version, size, request type, status), a
//! 1184-byte slot holding the hardware report (SEV-SNP report, or TDX TD report plus padding),
//! a 20-byte runtime-data header (size, version, report type, hash type, variable-data size)
//! and the variable data: the runtime claims JSON. The hardware report's `report_data[0..32]`
//! is SHA-256 of that JSON, so the hardware signature covers the vTPM attestation key listed in
//! it. On Azure the NV index is 2600 bytes and the report is zero-padded to fill it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, need, put, u32_le};

/// Size of the NV index Azure's paravisor defines for the report.
pub const NV_SIZE: usize = 2600;
/// `"HCLA"` as a little-endian `u32`.
pub const SIGNATURE: u32 = 0x414C_4348;
/// Offset of the hardware report.
pub const HW_REPORT_OFFSET: usize = 32;
/// Size of the hardware report slot.
pub const HW_REPORT_SLOT: usize = 1184;
/// Offset of the runtime-data header.
pub const RUNTIME_DATA_OFFSET: usize = HW_REPORT_OFFSET + HW_REPORT_SLOT;
/// Offset of the variable data (the runtime claims JSON).
pub const VAR_DATA_OFFSET: usize = RUNTIME_DATA_OFFSET + 20;
/// Where the report type's code (little-endian `u32`) is. Reading the NV index from offset 0
/// makes the paravisor refresh the report (at most every 2 s); reading just this field from here
/// tells SNP from TDX without costing the next attestation that wait.
pub const REPORT_TYPE_OFFSET: usize = RUNTIME_DATA_OFFSET + 8;
/// `request_type` of the report the vTPM exposes (`AK_CERT_REQUEST`).
pub const REQUEST_AK_CERT: u32 = 2;
/// `report_data_hash_type` for SHA-256.
pub const HASH_SHA256: u32 = 1;
/// The `kid` of the attestation key in the runtime claims.
pub const AK_KID: &str = "HCLAkPub";
/// The `kid` of the endorsement key in the runtime claims.
pub const EK_KID: &str = "HCLEkPub";

/// Which hardware report the HCL report carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportType {
    /// An AMD SEV-SNP attestation report (1184 bytes).
    Snp,
    /// An Intel TDX TD report (1024 bytes).
    Tdx,
}

impl ReportType {
    /// The type of a code in the runtime data header: 2 is SNP, 4 is TDX.
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            2 => Some(ReportType::Snp),
            4 => Some(ReportType::Tdx),
            _ => None,
        }
    }

    fn code(self) -> u32 {
        match self {
            ReportType::Snp => 2,
            ReportType::Tdx => 4,
        }
    }

    fn hw_len(self) -> usize {
        match self {
            ReportType::Snp => crate::snp::REPORT_SIZE,
            ReportType::Tdx => crate::tdx::TD_REPORT_SIZE,
        }
    }
}

/// A parsed HCL report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HclReport {
    /// The kind of hardware report inside.
    pub report_type: ReportType,
    /// The hardware report's bytes (1184 for SNP, 1024 for TDX).
    pub hw_report: Vec<u8>,
    /// The runtime claims JSON, exactly as hashed into the hardware report.
    pub var_data: Vec<u8>,
}

impl HclReport {
    /// Parses the report from the NV index contents (padding after the variable data is
    /// ignored).
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        need("HCL report", bytes, VAR_DATA_OFFSET)?;
        let signature = u32_le(bytes, 0);
        if signature != SIGNATURE {
            return Err(Error::invalid(
                "HCL report signature",
                format!("0x{signature:08x} is not \"HCLA\""),
            ));
        }
        let code = u32_le(bytes, REPORT_TYPE_OFFSET);
        let report_type = ReportType::from_code(code).ok_or_else(|| {
            Error::invalid(
                "HCL report type",
                format!("{code} is neither SNP (2) nor TDX (4)"),
            )
        })?;
        let hash_type = u32_le(bytes, RUNTIME_DATA_OFFSET + 12);
        if hash_type != HASH_SHA256 {
            return Err(Error::invalid(
                "HCL report hash type",
                format!("{hash_type} is not SHA-256 (1)"),
            ));
        }
        let var_len =
            usize::try_from(u32_le(bytes, RUNTIME_DATA_OFFSET + 16)).unwrap_or(usize::MAX);
        let end = VAR_DATA_OFFSET.saturating_add(var_len);
        if end > bytes.len() {
            return Err(Error::invalid(
                "HCL report variable data",
                format!(
                    "{var_len} bytes announced, only {} present",
                    bytes.len() - VAR_DATA_OFFSET
                ),
            ));
        }
        let data_size = usize::try_from(u32_le(bytes, RUNTIME_DATA_OFFSET)).unwrap_or(usize::MAX);
        if data_size != var_len + 20 {
            return Err(Error::invalid(
                "HCL report runtime data size",
                format!("{data_size} does not equal 20 + {var_len}"),
            ));
        }
        let hw_len = report_type.hw_len();
        Ok(Self {
            report_type,
            hw_report: bytes[HW_REPORT_OFFSET..HW_REPORT_OFFSET + hw_len].to_vec(),
            var_data: bytes[VAR_DATA_OFFSET..end].to_vec(),
        })
    }

    /// The report's bytes, zero-padded to `pad_to` bytes (use [`NV_SIZE`] for Azure's layout).
    pub fn to_bytes(&self, pad_to: usize) -> Result<Vec<u8>, Error> {
        if self.hw_report.len() != self.report_type.hw_len() {
            return Err(Error::invalid(
                "HCL hardware report",
                format!(
                    "{} bytes for a report of {}",
                    self.hw_report.len(),
                    self.report_type.hw_len()
                ),
            ));
        }
        let total = VAR_DATA_OFFSET + self.var_data.len();
        if total > pad_to {
            return Err(Error::invalid(
                "HCL report",
                format!("{total} bytes do not fit {pad_to}"),
            ));
        }
        let var_len = u32::try_from(self.var_data.len())
            .map_err(|_| Error::invalid("HCL variable data", "too large"))?;
        let report_size =
            u32::try_from(total).map_err(|_| Error::invalid("HCL report", "too large"))?;
        let mut b = vec![0u8; pad_to];
        put(&mut b, 0, &SIGNATURE.to_le_bytes());
        put(&mut b, 4, &2u32.to_le_bytes());
        put(&mut b, 8, &report_size.to_le_bytes());
        put(&mut b, 12, &REQUEST_AK_CERT.to_le_bytes());
        put(&mut b, HW_REPORT_OFFSET, &self.hw_report);
        put(&mut b, RUNTIME_DATA_OFFSET, &(var_len + 20).to_le_bytes());
        put(&mut b, RUNTIME_DATA_OFFSET + 4, &1u32.to_le_bytes());
        put(
            &mut b,
            RUNTIME_DATA_OFFSET + 8,
            &self.report_type.code().to_le_bytes(),
        );
        put(&mut b, RUNTIME_DATA_OFFSET + 12, &HASH_SHA256.to_le_bytes());
        put(&mut b, RUNTIME_DATA_OFFSET + 16, &var_len.to_le_bytes());
        put(&mut b, VAR_DATA_OFFSET, &self.var_data);
        Ok(b)
    }

    /// SHA-256 of the variable data: what the hardware report's `report_data[0..32]` must be.
    pub fn var_data_sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.var_data).into()
    }

    /// The runtime claims.
    pub fn claims(&self) -> Result<RuntimeClaims, Error> {
        serde_json::from_slice(&self.var_data).map_err(|source| Error::Json {
            what: "HCL runtime claims",
            source,
        })
    }
}

/// An RSA public key as the paravisor lists it (members in the paravisor's order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RsaJwk {
    /// Key identifier: `HCLAkPub` or `HCLEkPub`.
    pub kid: String,
    /// Key operations (`["sign"]` for the AK, `["encrypt"]` for the EK).
    #[serde(default)]
    pub key_ops: Vec<String>,
    /// Always `RSA`.
    pub kty: String,
    /// Exponent, base64url without padding.
    pub e: String,
    /// Modulus, base64url without padding.
    pub n: String,
}

impl RsaJwk {
    /// A JWK for an RSA key given as big-endian modulus and exponent.
    pub fn new(kid: &str, key_op: &str, modulus: &[u8], exponent: u32) -> Self {
        let e = exponent.to_be_bytes();
        let first = e.iter().position(|b| *b != 0).unwrap_or(3);
        Self {
            kid: kid.to_string(),
            key_ops: vec![key_op.to_string()],
            kty: "RSA".to_string(),
            e: URL_SAFE_NO_PAD.encode(&e[first..]),
            n: URL_SAFE_NO_PAD.encode(modulus),
        }
    }

    /// The big-endian modulus and exponent.
    pub fn components(&self) -> Result<(Vec<u8>, Vec<u8>), Error> {
        if self.kty != "RSA" {
            return Err(Error::invalid(
                "runtime claims key",
                format!("kty {:?} is not RSA", self.kty),
            ));
        }
        let decode = |what: &'static str, v: &str| {
            peerpod_text::decode_b64url(v).map_err(|e| Error::invalid(what, e.to_string()))
        };
        Ok((decode("JWK n", &self.n)?, decode("JWK e", &self.e)?))
    }
}

/// The VM configuration the paravisor reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct VmConfiguration {
    /// Thumbprint of the root certificate.
    #[serde(default)]
    pub root_cert_thumbprint: String,
    /// Serial console enabled.
    #[serde(default)]
    pub console_enabled: bool,
    /// Interactive console enabled.
    #[serde(default)]
    pub interactive_console_enabled: bool,
    /// Secure boot enabled.
    #[serde(default)]
    pub secure_boot: bool,
    /// vTPM enabled.
    #[serde(default)]
    pub tpm_enabled: bool,
    /// vTPM state persisted.
    #[serde(default)]
    pub tpm_persisted: bool,
    /// Filtered VPCI devices allowed.
    #[serde(default)]
    pub filtered_vpci_devices_allowed: bool,
    /// The VM's unique identifier.
    #[serde(rename = "vmUniqueId", default)]
    pub vm_unique_id: String,
}

/// The runtime claims JSON (`var_data`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RuntimeClaims {
    /// The vTPM's keys as JWKs.
    pub keys: Vec<RsaJwk>,
    /// The VM configuration.
    #[serde(default)]
    pub vm_configuration: VmConfiguration,
    /// Lowercase hex of the 64 bytes the guest wrote to NV index `0x01400002`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
}

impl RuntimeClaims {
    /// The attestation key's JWK.
    pub fn ak_pub(&self) -> Result<&RsaJwk, Error> {
        self.keys
            .iter()
            .find(|k| k.kid == AK_KID)
            .ok_or_else(|| Error::invalid("HCL runtime claims", "no key with kid \"HCLAkPub\""))
    }

    /// The decoded `user-data`, if present.
    pub fn user_data_bytes(&self) -> Result<Option<Vec<u8>>, Error> {
        self.user_data
            .as_deref()
            .map(|h| hex::decode(h).map_err(|e| Error::invalid("user-data", e.to_string())))
            .transpose()
    }

    /// Serialises the claims compactly, members in the paravisor's order.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising these plain structs cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> RuntimeClaims {
        RuntimeClaims {
            keys: vec![RsaJwk::new(AK_KID, "sign", &[0xC0; 256], 65537)],
            vm_configuration: VmConfiguration {
                tpm_enabled: true,
                vm_unique_id: "vm-1".into(),
                ..VmConfiguration::default()
            },
            user_data: Some(hex::encode([0x5A; 64])),
        }
    }

    #[test]
    fn round_trip_snp() {
        let var_data = claims().to_json();
        let text = String::from_utf8(var_data.clone()).expect("utf8");
        assert!(
            text.starts_with(
                r#"{"keys":[{"kid":"HCLAkPub","key_ops":["sign"],"kty":"RSA","e":"AQAB","n":"#
            ),
            "{text}"
        );
        let r = HclReport {
            report_type: ReportType::Snp,
            hw_report: vec![7; 1184],
            var_data,
        };
        let bytes = r.to_bytes(NV_SIZE).expect("build");
        assert_eq!(bytes.len(), NV_SIZE);
        let back = HclReport::parse(&bytes).expect("parse");
        assert_eq!(back, r);
        let c = back.claims().expect("claims");
        let (n, e) = c.ak_pub().expect("ak").components().expect("rsa");
        assert_eq!((n.len(), e), (256, vec![1, 0, 1]));
        assert_eq!(c.user_data_bytes().expect("hex"), Some(vec![0x5A; 64]));
    }

    #[test]
    fn tdx_slot_is_padded() {
        let r = HclReport {
            report_type: ReportType::Tdx,
            hw_report: vec![9; 1024],
            var_data: b"{}".to_vec(),
        };
        let bytes = r.to_bytes(NV_SIZE).expect("build");
        assert_eq!(&bytes[32 + 1024..32 + 1184], &[0u8; 160]);
        assert_eq!(
            HclReport::parse(&bytes).expect("parse").hw_report.len(),
            1024
        );
    }

    #[test]
    fn bad_reports_are_refused() {
        let good = HclReport {
            report_type: ReportType::Snp,
            hw_report: vec![0; 1184],
            var_data: claims().to_json(),
        }
        .to_bytes(NV_SIZE)
        .expect("build");
        assert!(HclReport::parse(&good[..1000]).is_err());
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(HclReport::parse(&bad).is_err());
        let mut bad = good.clone();
        put(&mut bad, RUNTIME_DATA_OFFSET + 8, &3u32.to_le_bytes());
        assert!(HclReport::parse(&bad).is_err());
        let mut bad = good.clone();
        put(&mut bad, RUNTIME_DATA_OFFSET + 16, &5000u32.to_le_bytes());
        assert!(HclReport::parse(&bad).is_err());
        let mut bad = good;
        put(&mut bad, RUNTIME_DATA_OFFSET + 12, &2u32.to_le_bytes());
        assert!(HclReport::parse(&bad).is_err());
        let no_ak = RuntimeClaims {
            keys: vec![],
            ..claims()
        };
        assert!(no_ak.ak_pub().is_err());
    }
}
