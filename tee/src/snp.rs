//! The AMD SEV-SNP attestation report.
//!
//! 1184 bytes, little-endian, signed by the chip's VCEK (ECDSA P-384 over SHA-384 of the first
//! 0x2A0 bytes). The layout here is the one of report versions 2 and 3 on Milan and Genoa.
//!
//! Version 3 (firmware ABI 1.55 and later, what current hardware produces) adds the CPUID
//! family, model and stepping at 0x188. A verifier needs them to choose the AMD chain: Milan,
//! Genoa and Turin have different roots. [`SnpReport::generation`] makes that choice with
//! Trustee's table, and refuses a version-2 report as Trustee does.

use crate::{Error, field, need, put, u32_le, u64_le};

/// Size of an SNP attestation report.
pub const REPORT_SIZE: usize = 0x4A0;
/// Offset of the signature: everything before it is signed.
pub const SIGNATURE_OFFSET: usize = 0x2A0;
/// `signature_algo` value for ECDSA P-384 with SHA-384.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

/// The report version current firmware produces.
pub const CURRENT_VERSION: u32 = 3;

/// An AMD EPYC generation: which AMD root signs the chip's VCEK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Generation {
    /// 3rd generation EPYC (family 0x19, models 0x00-0x0F).
    Milan,
    /// 4th generation EPYC (family 0x19, models 0x10-0x1F and 0xA0-0xAF).
    Genoa,
    /// 5th generation EPYC (family 0x1A, models 0x00-0x11).
    Turin,
}

impl Generation {
    /// Every generation.
    pub const ALL: [Generation; 3] = [Generation::Milan, Generation::Genoa, Generation::Turin];

    /// The name AMD uses in certificate names (`ARK-Milan`) and KDS URLs.
    pub fn name(self) -> &'static str {
        match self {
            Generation::Milan => "Milan",
            Generation::Genoa => "Genoa",
            Generation::Turin => "Turin",
        }
    }

    /// The generation named `name` (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|g| g.name().eq_ignore_ascii_case(name))
    }

    /// CPUID family, model and stepping of a part of this generation (Milan B1, Genoa B1,
    /// Turin C1), for reports that claim it.
    pub fn cpuid(self) -> [u8; 3] {
        match self {
            Generation::Milan => [0x19, 0x01, 0x01],
            Generation::Genoa => [0x19, 0x11, 0x01],
            Generation::Turin => [0x1A, 0x02, 0x01],
        }
    }

    /// The generation of a CPU with this CPUID family and model, by Trustee's table.
    pub fn from_cpuid(family: u8, model: u8) -> Result<Self, Error> {
        match (family, model) {
            (0x19, 0x00..=0x0F) => Ok(Generation::Milan),
            (0x19, 0x10..=0x1F | 0xA0..=0xAF) => Ok(Generation::Genoa),
            (0x1A, 0x00..=0x11) => Ok(Generation::Turin),
            (0x19 | 0x1A, _) => Err(Error::invalid(
                "SNP report CPUID",
                format!("processor model {model:#04x} of family {family:#04x} is not supported"),
            )),
            _ => Err(Error::invalid(
                "SNP report CPUID",
                format!("processor family {family:#04x} is not supported"),
            )),
        }
    }
}

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A TCB version (Milan/Genoa layout: one security patch level per firmware component).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcbVersion {
    /// Boot loader SPL (byte 0).
    pub bootloader: u8,
    /// PSP OS ("TEE") SPL (byte 1).
    pub tee: u8,
    /// SNP firmware SPL (byte 6).
    pub snp: u8,
    /// CPU microcode SPL (byte 7).
    pub microcode: u8,
}

impl TcbVersion {
    /// From the 8-byte little-endian field.
    pub fn from_u64(raw: u64) -> Self {
        let b = raw.to_le_bytes();
        Self {
            bootloader: b[0],
            tee: b[1],
            snp: b[6],
            microcode: b[7],
        }
    }

    /// As the 8-byte little-endian field.
    pub fn to_u64(self) -> u64 {
        u64::from_le_bytes([
            self.bootloader,
            self.tee,
            0,
            0,
            0,
            0,
            self.snp,
            self.microcode,
        ])
    }
}

/// Guest policy bits (`policy` field) that verifiers look at.
pub mod policy {
    /// SMT may be enabled.
    pub const SMT_ALLOWED: u64 = 1 << 16;
    /// Reserved, must be one.
    pub const RESERVED_ONE: u64 = 1 << 17;
    /// A migration agent may be associated.
    pub const MIGRATE_MA: u64 = 1 << 18;
    /// Debugging is allowed: such a guest's memory is not confidential.
    pub const DEBUG: u64 = 1 << 19;
    /// The guest may run on one socket only.
    pub const SINGLE_SOCKET: u64 = 1 << 20;
}

/// An SEV-SNP attestation report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpReport {
    /// Report format version (2 on old firmware, 3 on current firmware).
    pub version: u32,
    /// The guest's SVN.
    pub guest_svn: u32,
    /// Guest policy (see [`policy`]).
    pub policy: u64,
    /// Family ID from the ID block.
    pub family_id: [u8; 16],
    /// Image ID from the ID block.
    pub image_id: [u8; 16],
    /// The VM privilege level that asked for the report (0 is the paravisor's).
    pub vmpl: u32,
    /// Signature algorithm (1 = ECDSA P-384 with SHA-384).
    pub signature_algo: u32,
    /// TCB the platform runs now.
    pub current_tcb: TcbVersion,
    /// Platform information bits (bit 0: SMT enabled, bit 1: TSME enabled).
    pub platform_info: u64,
    /// Key information and flags.
    pub key_info: u32,
    /// Data the guest asked to bind.
    pub report_data: [u8; 64],
    /// Launch measurement.
    pub measurement: [u8; 48],
    /// Data the host provided at launch (initdata digest on plain SNP).
    pub host_data: [u8; 32],
    /// Digest of the ID key.
    pub id_key_digest: [u8; 48],
    /// Digest of the author key.
    pub author_key_digest: [u8; 48],
    /// Report ID of the guest.
    pub report_id: [u8; 32],
    /// Report ID of the migration agent.
    pub report_id_ma: [u8; 32],
    /// The TCB the VCEK was derived from: what the VCEK's extensions must match.
    pub reported_tcb: TcbVersion,
    /// CPUID family, model and stepping (version 3 reports; zero in version 2).
    pub cpuid: [u8; 3],
    /// Chip identifier: what the VCEK's hwID extension must match.
    pub chip_id: [u8; 64],
    /// Committed TCB.
    pub committed_tcb: TcbVersion,
    /// Current firmware build, minor, major.
    pub current_version: [u8; 3],
    /// Committed firmware build, minor, major.
    pub committed_version: [u8; 3],
    /// TCB at launch.
    pub launch_tcb: TcbVersion,
    /// Signature `r`, little-endian, zero-extended to 72 bytes.
    pub signature_r: [u8; 72],
    /// Signature `s`, little-endian, zero-extended to 72 bytes.
    pub signature_s: [u8; 72],
}

impl Default for SnpReport {
    fn default() -> Self {
        Self {
            version: CURRENT_VERSION,
            guest_svn: 0,
            policy: policy::RESERVED_ONE | policy::SMT_ALLOWED,
            family_id: [0; 16],
            image_id: [0; 16],
            vmpl: 0,
            signature_algo: SIG_ALGO_ECDSA_P384_SHA384,
            current_tcb: TcbVersion::default(),
            platform_info: 0,
            key_info: 0,
            report_data: [0; 64],
            measurement: [0; 48],
            host_data: [0; 32],
            id_key_digest: [0; 48],
            author_key_digest: [0; 48],
            report_id: [0; 32],
            report_id_ma: [0; 32],
            reported_tcb: TcbVersion::default(),
            cpuid: Generation::Milan.cpuid(),
            chip_id: [0; 64],
            committed_tcb: TcbVersion::default(),
            current_version: [0; 3],
            committed_version: [0; 3],
            launch_tcb: TcbVersion::default(),
            signature_r: [0; 72],
            signature_s: [0; 72],
        }
    }
}

impl SnpReport {
    /// Parses a report from the first [`REPORT_SIZE`] bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        need("SNP report", bytes, REPORT_SIZE)?;
        let version = u32_le(bytes, 0x000);
        if version < 2 {
            return Err(Error::invalid(
                "SNP report version",
                format!("{version} is older than 2"),
            ));
        }
        Ok(Self {
            version,
            guest_svn: u32_le(bytes, 0x004),
            policy: u64_le(bytes, 0x008),
            family_id: field(bytes, 0x010),
            image_id: field(bytes, 0x020),
            vmpl: u32_le(bytes, 0x030),
            signature_algo: u32_le(bytes, 0x034),
            current_tcb: TcbVersion::from_u64(u64_le(bytes, 0x038)),
            platform_info: u64_le(bytes, 0x040),
            key_info: u32_le(bytes, 0x048),
            report_data: field(bytes, 0x050),
            measurement: field(bytes, 0x090),
            host_data: field(bytes, 0x0C0),
            id_key_digest: field(bytes, 0x0E0),
            author_key_digest: field(bytes, 0x110),
            report_id: field(bytes, 0x140),
            report_id_ma: field(bytes, 0x160),
            reported_tcb: TcbVersion::from_u64(u64_le(bytes, 0x180)),
            cpuid: field(bytes, 0x188),
            chip_id: field(bytes, 0x1A0),
            committed_tcb: TcbVersion::from_u64(u64_le(bytes, 0x1E0)),
            current_version: field(bytes, 0x1E8),
            committed_version: field(bytes, 0x1EC),
            launch_tcb: TcbVersion::from_u64(u64_le(bytes, 0x1F0)),
            signature_r: field(bytes, 0x2A0),
            signature_s: field(bytes, 0x2E8),
        })
    }

    /// CPUID family and model, which only reports of version 3 and later carry.
    pub fn cpuid_family_model(&self) -> Option<(u8, u8)> {
        (self.version >= 3).then_some((self.cpuid[0], self.cpuid[1]))
    }

    /// The processor generation, from the CPUID fields. A version-2 report has none: it is
    /// refused with Trustee's words, since the chain to check it against cannot be chosen.
    pub fn generation(&self) -> Result<Generation, Error> {
        let (family, model) = self.cpuid_family_model().ok_or_else(|| {
            Error::invalid(
                "SNP report CPUID",
                format!(
                    "Attestation report version 3+ is missing CPU family ID (the report is \
                     version {}; update the firmware)",
                    self.version
                ),
            )
        })?;
        Generation::from_cpuid(family, model)
    }

    /// The report's bytes.
    pub fn to_bytes(&self) -> [u8; REPORT_SIZE] {
        let mut b = [0u8; REPORT_SIZE];
        put(&mut b, 0x000, &self.version.to_le_bytes());
        put(&mut b, 0x004, &self.guest_svn.to_le_bytes());
        put(&mut b, 0x008, &self.policy.to_le_bytes());
        put(&mut b, 0x010, &self.family_id);
        put(&mut b, 0x020, &self.image_id);
        put(&mut b, 0x030, &self.vmpl.to_le_bytes());
        put(&mut b, 0x034, &self.signature_algo.to_le_bytes());
        put(&mut b, 0x038, &self.current_tcb.to_u64().to_le_bytes());
        put(&mut b, 0x040, &self.platform_info.to_le_bytes());
        put(&mut b, 0x048, &self.key_info.to_le_bytes());
        put(&mut b, 0x050, &self.report_data);
        put(&mut b, 0x090, &self.measurement);
        put(&mut b, 0x0C0, &self.host_data);
        put(&mut b, 0x0E0, &self.id_key_digest);
        put(&mut b, 0x110, &self.author_key_digest);
        put(&mut b, 0x140, &self.report_id);
        put(&mut b, 0x160, &self.report_id_ma);
        put(&mut b, 0x180, &self.reported_tcb.to_u64().to_le_bytes());
        put(&mut b, 0x188, &self.cpuid);
        put(&mut b, 0x1A0, &self.chip_id);
        put(&mut b, 0x1E0, &self.committed_tcb.to_u64().to_le_bytes());
        put(&mut b, 0x1E8, &self.current_version);
        put(&mut b, 0x1EC, &self.committed_version);
        put(&mut b, 0x1F0, &self.launch_tcb.to_u64().to_le_bytes());
        put(&mut b, 0x2A0, &self.signature_r);
        put(&mut b, 0x2E8, &self.signature_s);
        b
    }

    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        self.to_bytes()[..SIGNATURE_OFFSET].to_vec()
    }

    /// The signature as big-endian P-384 scalars `(r, s)`; fails if a component does not fit
    /// 48 bytes.
    pub fn signature_p384(&self) -> Result<([u8; 48], [u8; 48]), Error> {
        Ok((to_be48(&self.signature_r)?, to_be48(&self.signature_s)?))
    }

    /// Sets the signature from big-endian P-384 scalars.
    pub fn set_signature_p384(&mut self, r: &[u8; 48], s: &[u8; 48]) {
        self.signature_r = from_be48(r);
        self.signature_s = from_be48(s);
    }
}

fn to_be48(le: &[u8; 72]) -> Result<[u8; 48], Error> {
    if le[48..].iter().any(|b| *b != 0) {
        return Err(Error::invalid(
            "SNP report signature",
            "component is larger than a P-384 scalar",
        ));
    }
    let mut out = [0u8; 48];
    for (i, b) in le[..48].iter().enumerate() {
        out[47 - i] = *b;
    }
    Ok(out)
}

fn from_be48(be: &[u8; 48]) -> [u8; 72] {
    let mut out = [0u8; 72];
    for (i, b) in be.iter().enumerate() {
        out[47 - i] = *b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcb_layout() {
        let tcb = TcbVersion {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
        };
        assert_eq!(tcb.to_u64(), 0x7308_0000_0000_0003);
        assert_eq!(TcbVersion::from_u64(tcb.to_u64()), tcb);
    }

    #[test]
    fn round_trip_and_offsets() {
        let mut r = SnpReport {
            vmpl: 0,
            report_data: [0xAA; 64],
            chip_id: [0x11; 64],
            reported_tcb: TcbVersion {
                bootloader: 1,
                tee: 2,
                snp: 3,
                microcode: 4,
            },
            ..SnpReport::default()
        };
        r.set_signature_p384(&[0x01; 48], &[0x02; 48]);
        let bytes = r.to_bytes();
        assert_eq!(&bytes[0x50..0x90], &[0xAA; 64]);
        assert_eq!(bytes[0x180], 1);
        assert_eq!(bytes[0x187], 4);
        let back = SnpReport::parse(&bytes).expect("parse");
        assert_eq!(back, r);
        assert_eq!(
            back.signature_p384().expect("sig"),
            ([0x01; 48], [0x02; 48])
        );
        assert_eq!(r.signed_bytes().len(), 0x2A0);
    }

    #[test]
    fn generation_by_trustees_table() {
        for g in Generation::ALL {
            let r = SnpReport {
                cpuid: g.cpuid(),
                ..SnpReport::default()
            };
            let back = SnpReport::parse(&r.to_bytes()).expect("parse");
            assert_eq!(back.generation().expect("generation"), g);
            assert_eq!(Generation::from_name(&g.name().to_lowercase()), Some(g));
        }
        assert_eq!(
            Generation::from_cpuid(0x19, 0xA5).expect("Genoa"),
            Generation::Genoa
        );
        assert!(Generation::from_cpuid(0x19, 0x20).is_err());
        assert!(Generation::from_cpuid(0x17, 0x01).is_err());
        let v2 = SnpReport {
            version: 2,
            cpuid: [0; 3],
            ..SnpReport::default()
        };
        let err = v2.generation().expect_err("v2").to_string();
        assert!(err.contains("version 3+ is missing CPU family ID"), "{err}");
        // A version-2 report's bytes at 0x188 are reserved: not read as CPUID even if set.
        let v2_with_bytes = SnpReport {
            version: 2,
            ..SnpReport::default()
        };
        assert!(v2_with_bytes.generation().is_err());
    }

    #[test]
    fn short_or_ancient_reports_are_refused() {
        assert!(SnpReport::parse(&[0u8; 100]).is_err());
        let mut bytes = SnpReport::default().to_bytes();
        bytes[0] = 1;
        assert!(SnpReport::parse(&bytes).is_err());
        let mut r = SnpReport::default();
        r.signature_r[60] = 1;
        assert!(r.signature_p384().is_err());
    }
}
