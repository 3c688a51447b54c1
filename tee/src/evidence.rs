//! The JSON evidence documents of the Azure vTPM TEEs, version 2 as upstream emits them.
//!
//! ```json
//! { "version": 2,
//!   "tpm_quote": { "signature": "<hex>", "message": "<hex>", "pcrs": ["<hex>", … 24] },
//!   "hcl_report": "<base64url, padded>",
//!   "vcek": "<base64url, padded>" }            // az-snp-vtpm: DER of the VCEK
//!   "td_quote": "<base64url, padded>" }        // az-tdx-vtpm instead of vcek
//! ```
//!
//! `signature` is the raw RSASSA signature, `message` the marshalled `TPMS_ATTEST`, `pcrs` the
//! 24 SHA-256 PCR values. Hex is written lowercase and read in either case; base64url is
//! written padded and read with or without padding.
//!
//! Versions 1 and 2 have the same shape. Version 2 promises more: the HCL report was made after
//! the report data was written to NV `0x01400002`, so the runtime claims' `user-data` starts
//! with it, and a verifier checks that (Trustee does so for version 2 only). Version 0, the
//! legacy unversioned form with byte arrays, is not read here.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The evidence format version we emit.
pub const VERSION: u32 = 2;

/// The versions [`check_version`] accepts.
pub const KNOWN_VERSIONS: [u32; 2] = [1, 2];

/// Refuses a `version` field other than 1 or 2 (Trustee matches each version exactly).
pub fn check_version(version: u32) -> Result<u32, Error> {
    if KNOWN_VERSIONS.contains(&version) {
        Ok(version)
    } else {
        Err(Error::invalid(
            "evidence version",
            format!("{version} is not 1 or 2"),
        ))
    }
}

/// Whether evidence of `version` promises that the HCL report's `user-data` starts with the
/// report data (version 2 and later).
pub fn binds_user_data(version: u32) -> bool {
    version >= 2
}

/// A TPM quote with the PCR values it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmQuote {
    /// RSASSA signature by the attestation key.
    #[serde(with = "hex_bytes")]
    pub signature: Vec<u8>,
    /// The signed `TPMS_ATTEST`.
    #[serde(with = "hex_bytes")]
    pub message: Vec<u8>,
    /// SHA-256 PCR values 0..=23.
    #[serde(with = "hex_list")]
    pub pcrs: Vec<Vec<u8>>,
}

/// Evidence of an Azure SEV-SNP CVM (`az-snp-vtpm`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzSnpEvidence {
    /// Format version ([`VERSION`] when we emit it).
    pub version: u32,
    /// The vTPM quote.
    pub tpm_quote: TpmQuote,
    /// The HCL report as read from NV.
    #[serde(with = "b64url")]
    pub hcl_report: Vec<u8>,
    /// The VCEK certificate (DER).
    #[serde(with = "b64url")]
    pub vcek: Vec<u8>,
}

/// Evidence of an Azure TDX CVM (`az-tdx-vtpm`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzTdxEvidence {
    /// Format version ([`VERSION`] when we emit it).
    pub version: u32,
    /// The vTPM quote.
    pub tpm_quote: TpmQuote,
    /// The HCL report as read from NV.
    #[serde(with = "b64url")]
    pub hcl_report: Vec<u8>,
    /// The TD quote the quoting endpoint returned for the HCL report's TD report.
    #[serde(with = "b64url")]
    pub td_quote: Vec<u8>,
}

/// Parses a JSON evidence document, naming the document in the error.
pub fn parse<'a, T: Deserialize<'a>>(what: &'static str, json: &'a [u8]) -> Result<T, Error> {
    serde_json::from_slice(json).map_err(|source| Error::Json { what, source })
}

/// Decodes base64url with or without padding (the workspace's one definition, from
/// `peerpod-text`).
pub use peerpod_text::decode_b64url;

/// Encodes base64url with padding, as upstream's evidence does.
pub fn encode_b64url(bytes: &[u8]) -> String {
    URL_SAFE.encode(bytes)
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(&text).map_err(D::Error::custom)
    }
}

mod hex_list {
    use serde::{Deserialize, Deserializer, Serializer, de::Error, ser::SerializeSeq};

    pub(super) fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for item in v {
            seq.serialize_element(&hex::encode(item))?;
        }
        seq.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let items = Vec::<String>::deserialize(d)?;
        items
            .iter()
            .map(|t| hex::decode(t).map_err(D::Error::custom))
            .collect()
    }
}

mod b64url {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::encode_b64url(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        super::decode_b64url(&text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snp_evidence_shape() {
        let e = AzSnpEvidence {
            version: VERSION,
            tpm_quote: TpmQuote {
                signature: vec![0xDE, 0xAD],
                message: vec![0xFF, 0x54],
                pcrs: vec![vec![0; 32]; 24],
            },
            hcl_report: vec![0xDE, 0xAD, 0xBE, 0xEF],
            vcek: vec![0xFB],
        };
        let json = serde_json::to_value(&e).expect("json");
        assert_eq!(json["tpm_quote"]["signature"], "dead");
        assert_eq!(json["hcl_report"], "3q2-7w==");
        assert_eq!(json["vcek"], "-w==");
        let text = serde_json::to_vec(&e).expect("json");
        assert_eq!(parse::<AzSnpEvidence>("evidence", &text).expect("parse"), e);
        // Unpadded base64url and uppercase hex are accepted too.
        let loose = br#"{"version":1,"tpm_quote":{"signature":"DEAD","message":"ff54","pcrs":[]},
            "hcl_report":"3q2-7w","vcek":"-w"}"#;
        let back: AzSnpEvidence = parse("evidence", loose).expect("parse");
        assert_eq!(back.hcl_report, vec![0xDE, 0xAD, 0xBE, 0xEF]);
        assert_eq!(back.tpm_quote.signature, vec![0xDE, 0xAD]);
    }

    #[test]
    fn versions() {
        assert_eq!(VERSION, 2);
        assert_eq!(check_version(1).expect("v1"), 1);
        assert_eq!(check_version(2).expect("v2"), 2);
        for bad in [0, 3, u32::MAX] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
        assert!(!binds_user_data(1) && binds_user_data(2));
    }

    #[test]
    fn malformed_evidence_is_refused() {
        for bad in [
            &br#"{"version":1}"#[..],
            br#"{"version":1,"tpm_quote":{"signature":"zz","message":"","pcrs":[]},"hcl_report":"","vcek":""}"#,
            br#"{"version":1,"tpm_quote":{"signature":"","message":"","pcrs":[]},"hcl_report":"***","vcek":""}"#,
            br#"{"version":1,"tpm_quote":{"signature":"","message":"","pcrs":[]},"hcl_report":"","td_quote":""}"#,
        ] {
            assert!(parse::<AzSnpEvidence>("evidence", bad).is_err());
        }
    }
}
