//! TPM structures this crate reads and writes, and the constants they use.

use sha2::{Digest, Sha256};

use crate::Error;
use crate::wire::{Reader, Writer};

/// Algorithm identifiers (`TPM_ALG_ID`).
pub mod alg {
    /// RSA.
    pub const RSA: u16 = 0x0001;
    /// SHA-1.
    pub const SHA1: u16 = 0x0004;
    /// AES.
    pub const AES: u16 = 0x0006;
    /// SHA-256.
    pub const SHA256: u16 = 0x000B;
    /// SHA-384.
    pub const SHA384: u16 = 0x000C;
    /// SHA-512.
    pub const SHA512: u16 = 0x000D;
    /// No algorithm.
    pub const NULL: u16 = 0x0010;
    /// RSASSA-PKCS1-v1_5.
    pub const RSASSA: u16 = 0x0014;
    /// CFB mode.
    pub const CFB: u16 = 0x0043;

    /// The digest size of a hash algorithm, if it is one we know.
    pub fn digest_size(hash: u16) -> Option<usize> {
        match hash {
            SHA1 => Some(20),
            SHA256 => Some(32),
            SHA384 => Some(48),
            SHA512 => Some(64),
            _ => None,
        }
    }
}

/// Permanent handles.
pub mod handle {
    /// The owner (storage) hierarchy.
    pub const OWNER: u32 = 0x4000_0001;
    /// No handle.
    pub const NULL: u32 = 0x4000_0007;
    /// The password authorization session.
    pub const PASSWORD_SESSION: u32 = 0x4000_0009;
    /// The endorsement hierarchy.
    pub const ENDORSEMENT: u32 = 0x4000_000B;
    /// The platform hierarchy.
    pub const PLATFORM: u32 = 0x4000_000C;
}

/// Object attributes (`TPMA_OBJECT`).
pub mod object_attr {
    /// The object's hierarchy cannot change.
    pub const FIXED_TPM: u32 = 1 << 1;
    /// The parent cannot change.
    pub const FIXED_PARENT: u32 = 1 << 4;
    /// The TPM generated the sensitive part.
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    /// User role authorization by password or HMAC.
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    /// Admin role needs a policy.
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    /// Not subject to dictionary-attack protection.
    pub const NO_DA: u32 = 1 << 10;
    /// A restricted key (signs only TPM-generated digests, or decrypts only TPM formats).
    pub const RESTRICTED: u32 = 1 << 16;
    /// A decryption key.
    pub const DECRYPT: u32 = 1 << 17;
    /// A signing key.
    pub const SIGN: u32 = 1 << 18;
}

/// NV index attributes (`TPMA_NV`).
pub mod nv_attr {
    /// The platform may write.
    pub const PPWRITE: u32 = 1 << 0;
    /// The owner may write.
    pub const OWNERWRITE: u32 = 1 << 1;
    /// The index's own authorization may write.
    pub const AUTHWRITE: u32 = 1 << 2;
    /// The platform may read.
    pub const PPREAD: u32 = 1 << 16;
    /// The owner may read.
    pub const OWNERREAD: u32 = 1 << 17;
    /// The index's own authorization may read.
    pub const AUTHREAD: u32 = 1 << 18;
    /// Not subject to dictionary-attack protection.
    pub const NO_DA: u32 = 1 << 25;
    /// The index has been written.
    pub const WRITTEN: u32 = 1 << 29;
    /// Created by the platform hierarchy.
    pub const PLATFORMCREATE: u32 = 1 << 30;
}

/// Ordinary index type bits of `TPMA_NV` are zero, so an ordinary index needs no type flag.
pub const NV_TYPE_ORDINARY: u32 = 0;

/// The `TPMS_ATTEST` magic, `TPM_GENERATED_VALUE`.
pub const GENERATED_VALUE: u32 = 0xFF54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
pub const ST_ATTEST_QUOTE: u16 = 0x8018;

/// A public area (`TPMT_PUBLIC`) of an RSA key: the only kind the Azure vTPM's attestation and
/// endorsement keys are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Public {
    /// The algorithm used to compute the object's name.
    pub name_alg: u16,
    /// `TPMA_OBJECT` bits.
    pub attributes: u32,
    /// Policy digest required for admin use (empty: none).
    pub auth_policy: Vec<u8>,
    /// Symmetric algorithm of a storage key: `(algorithm, key bits, mode)`, or `None`.
    pub symmetric: Option<(u16, u16, u16)>,
    /// Signing scheme: `(scheme, hash)`, or `None` for `TPM_ALG_NULL`.
    pub scheme: Option<(u16, u16)>,
    /// Modulus size in bits.
    pub key_bits: u16,
    /// Public exponent; 0 means 65537.
    pub exponent: u32,
    /// The modulus (big-endian), or in a template the unique seed (usually empty or zeros).
    pub modulus: Vec<u8>,
}

impl Public {
    /// The template of Azure's vTPM attestation key: RSA-2048, RSASSA-SHA256, restricted signing.
    pub fn azure_ak_template() -> Self {
        use object_attr::*;
        Self {
            name_alg: alg::SHA256,
            attributes: FIXED_TPM
                | FIXED_PARENT
                | SENSITIVE_DATA_ORIGIN
                | USER_WITH_AUTH
                | NO_DA
                | RESTRICTED
                | SIGN,
            auth_policy: Vec::new(),
            symmetric: None,
            scheme: Some((alg::RSASSA, alg::SHA256)),
            key_bits: 2048,
            exponent: 0,
            modulus: Vec::new(),
        }
    }

    /// The TCG default RSA-2048 endorsement key template (restricted decryption, admin by the
    /// endorsement hierarchy's `PolicySecret`).
    pub fn ek_rsa_template() -> Self {
        use object_attr::*;
        const POLICY_SECRET_ENDORSEMENT: [u8; 32] = [
            0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5,
            0xd7, 0x24, 0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b,
            0x33, 0x14, 0x69, 0xaa,
        ];
        Self {
            name_alg: alg::SHA256,
            attributes: FIXED_TPM
                | FIXED_PARENT
                | SENSITIVE_DATA_ORIGIN
                | ADMIN_WITH_POLICY
                | RESTRICTED
                | DECRYPT,
            auth_policy: POLICY_SECRET_ENDORSEMENT.to_vec(),
            symmetric: Some((alg::AES, 128, alg::CFB)),
            scheme: None,
            key_bits: 2048,
            exponent: 0,
            modulus: vec![0; 256],
        }
    }

    /// The public exponent as a number (65537 when the field is 0).
    pub fn effective_exponent(&self) -> u32 {
        if self.exponent == 0 {
            65537
        } else {
            self.exponent
        }
    }

    /// Marshals the `TPMT_PUBLIC`.
    pub fn marshal(&self) -> Result<Vec<u8>, Error> {
        let mut w = Writer::new();
        w.u16(alg::RSA).u16(self.name_alg).u32(self.attributes);
        w.tpm2b("authPolicy", &self.auth_policy)?;
        match self.symmetric {
            Some((a, bits, mode)) => w.u16(a).u16(bits).u16(mode),
            None => w.u16(alg::NULL),
        };
        match self.scheme {
            Some((scheme, hash)) => w.u16(scheme).u16(hash),
            None => w.u16(alg::NULL),
        };
        w.u16(self.key_bits).u32(self.exponent);
        w.tpm2b("unique", &self.modulus)?;
        Ok(w.into_vec())
    }

    /// Parses a `TPMT_PUBLIC`, refusing anything but RSA keys.
    pub fn parse(r: &mut Reader<'_>) -> Result<Self, Error> {
        let kind = r.u16("TPMT_PUBLIC.type")?;
        if kind != alg::RSA {
            return Err(Error::Malformed {
                what: "TPMT_PUBLIC",
                detail: format!("key type 0x{kind:04x} is not RSA"),
            });
        }
        let name_alg = r.u16("TPMT_PUBLIC.nameAlg")?;
        let attributes = r.u32("TPMT_PUBLIC.objectAttributes")?;
        let auth_policy = r.tpm2b("TPMT_PUBLIC.authPolicy")?.to_vec();
        let sym = r.u16("TPMS_RSA_PARMS.symmetric")?;
        let symmetric = if sym == alg::NULL {
            None
        } else {
            Some((
                sym,
                r.u16("TPMS_RSA_PARMS.symmetric.keyBits")?,
                r.u16("TPMS_RSA_PARMS.symmetric.mode")?,
            ))
        };
        let sch = r.u16("TPMS_RSA_PARMS.scheme")?;
        let scheme = if sch == alg::NULL {
            None
        } else {
            Some((sch, r.u16("TPMS_RSA_PARMS.scheme.hashAlg")?))
        };
        let key_bits = r.u16("TPMS_RSA_PARMS.keyBits")?;
        let exponent = r.u32("TPMS_RSA_PARMS.exponent")?;
        let modulus = r.tpm2b("TPMT_PUBLIC.unique")?.to_vec();
        Ok(Self {
            name_alg,
            attributes,
            auth_policy,
            symmetric,
            scheme,
            key_bits,
            exponent,
            modulus,
        })
    }

    /// Parses a `TPM2B_PUBLIC` (size-prefixed `TPMT_PUBLIC`).
    pub fn parse_sized(r: &mut Reader<'_>) -> Result<Self, Error> {
        let inner = r.tpm2b("TPM2B_PUBLIC")?;
        let mut ir = Reader::new(inner);
        let public = Self::parse(&mut ir)?;
        ir.finish("TPM2B_PUBLIC")?;
        Ok(public)
    }

    /// The object's name: `nameAlg ‖ SHA-256(TPMT_PUBLIC)`.
    pub fn name(&self) -> Result<Vec<u8>, Error> {
        name_of(self.name_alg, &self.marshal()?)
    }
}

fn name_of(name_alg: u16, marshalled: &[u8]) -> Result<Vec<u8>, Error> {
    if name_alg != alg::SHA256 {
        return Err(Error::Malformed {
            what: "nameAlg",
            detail: format!("0x{name_alg:04x} is not SHA-256"),
        });
    }
    let mut name = name_alg.to_be_bytes().to_vec();
    name.extend_from_slice(&Sha256::digest(marshalled));
    Ok(name)
}

/// The public area of an NV index (`TPMS_NV_PUBLIC`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvPublic {
    /// The index handle.
    pub index: u32,
    /// The algorithm used to compute the index's name.
    pub name_alg: u16,
    /// `TPMA_NV` bits.
    pub attributes: u32,
    /// Policy digest (empty: none).
    pub auth_policy: Vec<u8>,
    /// Size of the data area in bytes.
    pub data_size: u16,
}

impl NvPublic {
    /// Marshals the `TPMS_NV_PUBLIC`.
    pub fn marshal(&self) -> Result<Vec<u8>, Error> {
        let mut w = Writer::new();
        w.u32(self.index).u16(self.name_alg).u32(self.attributes);
        w.tpm2b("authPolicy", &self.auth_policy)?;
        w.u16(self.data_size);
        Ok(w.into_vec())
    }

    /// Parses a `TPMS_NV_PUBLIC`.
    pub fn parse(r: &mut Reader<'_>) -> Result<Self, Error> {
        Ok(Self {
            index: r.u32("TPMS_NV_PUBLIC.nvIndex")?,
            name_alg: r.u16("TPMS_NV_PUBLIC.nameAlg")?,
            attributes: r.u32("TPMS_NV_PUBLIC.attributes")?,
            auth_policy: r.tpm2b("TPMS_NV_PUBLIC.authPolicy")?.to_vec(),
            data_size: r.u16("TPMS_NV_PUBLIC.dataSize")?,
        })
    }

    /// Parses a `TPM2B_NV_PUBLIC`.
    pub fn parse_sized(r: &mut Reader<'_>) -> Result<Self, Error> {
        let inner = r.tpm2b("TPM2B_NV_PUBLIC")?;
        let mut ir = Reader::new(inner);
        let public = Self::parse(&mut ir)?;
        ir.finish("TPM2B_NV_PUBLIC")?;
        Ok(public)
    }

    /// The index's name: `nameAlg ‖ SHA-256(TPMS_NV_PUBLIC)`.
    pub fn name(&self) -> Result<Vec<u8>, Error> {
        name_of(self.name_alg, &self.marshal()?)
    }
}

/// A PCR selection (`TPML_PCR_SELECTION`): for each bank, a bitmap of PCRs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PcrSelection {
    /// `(hash algorithm, bitmap)`; bit `i % 8` of byte `i / 8` selects PCR `i`.
    pub banks: Vec<(u16, Vec<u8>)>,
}

impl PcrSelection {
    /// Selects the given PCRs of one bank.
    pub fn of(hash: u16, pcrs: impl IntoIterator<Item = u8>) -> Self {
        let mut bitmap = vec![0u8; 3];
        for pcr in pcrs {
            let byte = usize::from(pcr / 8);
            if bitmap.len() <= byte {
                bitmap.resize(byte + 1, 0);
            }
            bitmap[byte] |= 1 << (pcr % 8);
        }
        Self {
            banks: vec![(hash, bitmap)],
        }
    }

    /// Selects all 24 PCRs of one bank.
    pub fn all(hash: u16) -> Self {
        Self::of(hash, 0..24)
    }

    /// The selected PCR indices of a bank, in ascending order.
    pub fn selected(&self, hash: u16) -> Vec<u8> {
        let mut out = Vec::new();
        for (h, bitmap) in &self.banks {
            if *h != hash {
                continue;
            }
            for (byte, bits) in bitmap.iter().enumerate() {
                for bit in 0..8u8 {
                    if bits & (1 << bit) != 0 {
                        // At most 255 bytes of bitmap, so the index fits u16; PCR numbers in
                        // practice fit u8.
                        if let Ok(i) = u8::try_from(byte * 8 + usize::from(bit)) {
                            out.push(i);
                        }
                    }
                }
            }
        }
        out
    }

    /// Whether nothing is selected.
    pub fn is_empty(&self) -> bool {
        self.banks
            .iter()
            .all(|(_, bitmap)| bitmap.iter().all(|b| *b == 0))
    }

    /// Marshals the `TPML_PCR_SELECTION`.
    pub fn marshal(&self, w: &mut Writer) -> Result<(), Error> {
        let count = u32::try_from(self.banks.len()).map_err(|_| Error::TooLarge {
            what: "PCR selection",
            len: self.banks.len(),
            max: 16,
        })?;
        w.u32(count);
        for (hash, bitmap) in &self.banks {
            let size = u8::try_from(bitmap.len()).map_err(|_| Error::TooLarge {
                what: "PCR bitmap",
                len: bitmap.len(),
                max: 255,
            })?;
            w.u16(*hash).u8(size).bytes(bitmap);
        }
        Ok(())
    }

    /// Parses a `TPML_PCR_SELECTION`.
    pub fn parse(r: &mut Reader<'_>) -> Result<Self, Error> {
        let count = r.u32("TPML_PCR_SELECTION.count")?;
        if count > 16 {
            return Err(Error::Malformed {
                what: "TPML_PCR_SELECTION",
                detail: format!("{count} banks"),
            });
        }
        let mut banks = Vec::new();
        for _ in 0..count {
            let hash = r.u16("TPMS_PCR_SELECTION.hash")?;
            let size = r.u8("TPMS_PCR_SELECTION.sizeofSelect")?;
            let bitmap = r.take("TPMS_PCR_SELECTION.pcrSelect", usize::from(size))?;
            banks.push((hash, bitmap.to_vec()));
        }
        Ok(Self { banks })
    }
}

/// A quote's signed structure (`TPMS_ATTEST` of type `TPM_ST_ATTEST_QUOTE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    /// Name of the signing key, qualified.
    pub qualified_signer: Vec<u8>,
    /// The caller's qualifying data (the nonce).
    pub extra_data: Vec<u8>,
    /// `clockInfo.clock`.
    pub clock: u64,
    /// `clockInfo.resetCount`.
    pub reset_count: u32,
    /// `clockInfo.restartCount`.
    pub restart_count: u32,
    /// `clockInfo.safe`.
    pub safe: bool,
    /// `firmwareVersion`.
    pub firmware_version: u64,
    /// The PCRs the quote covers.
    pub pcr_select: PcrSelection,
    /// The digest of the selected PCR values, concatenated in selection order.
    pub pcr_digest: Vec<u8>,
}

impl Attest {
    /// Parses a marshalled `TPMS_ATTEST` (without a `TPM2B` size prefix) that must be a quote.
    pub fn parse_quote(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        let magic = r.u32("TPMS_ATTEST.magic")?;
        if magic != GENERATED_VALUE {
            return Err(Error::Malformed {
                what: "TPMS_ATTEST.magic",
                detail: format!("0x{magic:08x} is not TPM_GENERATED_VALUE (0xff544347)"),
            });
        }
        let kind = r.u16("TPMS_ATTEST.type")?;
        if kind != ST_ATTEST_QUOTE {
            return Err(Error::Malformed {
                what: "TPMS_ATTEST.type",
                detail: format!("0x{kind:04x} is not a quote (0x8018)"),
            });
        }
        let attest = Self {
            qualified_signer: r.tpm2b("TPMS_ATTEST.qualifiedSigner")?.to_vec(),
            extra_data: r.tpm2b("TPMS_ATTEST.extraData")?.to_vec(),
            clock: r.u64("TPMS_CLOCK_INFO.clock")?,
            reset_count: r.u32("TPMS_CLOCK_INFO.resetCount")?,
            restart_count: r.u32("TPMS_CLOCK_INFO.restartCount")?,
            safe: r.u8("TPMS_CLOCK_INFO.safe")? != 0,
            firmware_version: r.u64("TPMS_ATTEST.firmwareVersion")?,
            pcr_select: PcrSelection::parse(&mut r)?,
            pcr_digest: r.tpm2b("TPMS_QUOTE_INFO.pcrDigest")?.to_vec(),
        };
        r.finish("TPMS_ATTEST")?;
        Ok(attest)
    }
}

/// An RSASSA signature (`TPMT_SIGNATURE` with `sigAlg = TPM_ALG_RSASSA`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaSignature {
    /// The hash the signature is over.
    pub hash: u16,
    /// The signature bytes (modulus-sized, big-endian).
    pub signature: Vec<u8>,
}

impl RsaSignature {
    /// Parses a `TPMT_SIGNATURE`, refusing anything but RSASSA.
    pub fn parse(r: &mut Reader<'_>) -> Result<Self, Error> {
        let sig_alg = r.u16("TPMT_SIGNATURE.sigAlg")?;
        if sig_alg != alg::RSASSA {
            return Err(Error::Malformed {
                what: "TPMT_SIGNATURE",
                detail: format!("signature algorithm 0x{sig_alg:04x} is not RSASSA"),
            });
        }
        Ok(Self {
            hash: r.u16("TPMS_SIGNATURE_RSA.hash")?,
            signature: r.tpm2b("TPMS_SIGNATURE_RSA.sig")?.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ak_template_has_azure_attributes() {
        assert_eq!(Public::azure_ak_template().attributes, 0x0005_0472);
    }

    #[test]
    fn public_round_trip() {
        let mut p = Public::ek_rsa_template();
        p.modulus = vec![0xAB; 256];
        let bytes = p.marshal().expect("marshal");
        let mut r = Reader::new(&bytes);
        assert_eq!(Public::parse(&mut r).expect("parse"), p);
        r.finish("public").expect("all read");
        assert_eq!(p.name().expect("name").len(), 34);
    }

    #[test]
    fn pcr_selection_bitmaps() {
        let all = PcrSelection::all(alg::SHA256);
        assert_eq!(all.banks, vec![(alg::SHA256, vec![0xFF, 0xFF, 0xFF])]);
        assert_eq!(all.selected(alg::SHA256).len(), 24);
        let some = PcrSelection::of(alg::SHA256, [0, 8, 23]);
        assert_eq!(some.banks[0].1, vec![0x01, 0x01, 0x80]);
        assert_eq!(some.selected(alg::SHA256), vec![0, 8, 23]);
        assert!(some.selected(alg::SHA1).is_empty());
    }

    #[test]
    fn attest_parse_refuses_bad_magic_and_truncation() {
        let mut w = Writer::new();
        w.u32(GENERATED_VALUE).u16(ST_ATTEST_QUOTE);
        w.tpm2b("signer", &[0; 34]).expect("small");
        w.tpm2b("extra", &[7; 48]).expect("small");
        w.u64(1).u32(2).u32(3).u8(1).u64(4);
        PcrSelection::all(alg::SHA256).marshal(&mut w).expect("sel");
        w.tpm2b("digest", &[9; 32]).expect("small");
        let bytes = w.into_vec();
        // 161 bytes with a 48-byte nonce, as tpm2_quote produces.
        assert_eq!(bytes.len(), 161);
        let a = Attest::parse_quote(&bytes).expect("parse");
        assert_eq!(a.extra_data, vec![7; 48]);
        assert_eq!(a.pcr_select.selected(alg::SHA256).len(), 24);
        assert!(Attest::parse_quote(&bytes[..100]).is_err());
        let mut bad = bytes.clone();
        bad[0] = 0;
        assert!(Attest::parse_quote(&bad).is_err());
        let mut long = bytes;
        long.push(0);
        assert!(Attest::parse_quote(&long).is_err());
    }
}
