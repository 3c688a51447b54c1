//! The simulated hardware: an AMD SEV-SNP chip or an Intel TDX module, and the quoting service
//! Azure runs for TDX.
//!
//! Each makes reports the way the real part does — bound to report data, signed by a key whose
//! certificate chains to a test root — and can be configured to misbehave in exactly one way,
//! so verifier tests can check each refusal on its own.

use hmac::{KeyInit, Mac};
use p256::ecdsa::signature::Signer;
use p256::elliptic_curve::Generate;
use peerpod_tee::snp::{Generation, SnpReport, TcbVersion};
use peerpod_tee::tdx::{self, TdMeasurements, TdQuote, TdReport};
use sha2::Sha256;
use x509_cert::Certificate;
use x509_cert::time::Validity;

use super::certs::{self, AmdChain, CertError, IntelChain, VcekSpec};

type HmacSha256 = hmac::Hmac<Sha256>;

/// How the simulated SNP chip is set up. [`SnpConfig::default`] is a healthy Milan part with
/// current firmware (report version 3, CPUID fields set).
#[derive(Debug, Clone)]
pub struct SnpConfig {
    /// The processor generation (Milan or Genoa): the CPUID fields in reports, and the AMD
    /// chain (`ARK-<generation>`) and VCEK product name that go with it.
    pub generation: Generation,
    /// The report version: 3, as current firmware makes; 2, as old firmware did (no CPUID
    /// fields, so a verifier cannot choose the chain and Trustee refuses it).
    pub report_version: u32,
    /// Chip ID in reports and in the VCEK's hwID.
    pub chip_id: [u8; 64],
    /// The TCB in reports (`reported_tcb`, `current_tcb`, `committed_tcb`, `launch_tcb`).
    pub tcb: TcbVersion,
    /// The TCB written into the VCEK (default: same as `tcb`; differ to test TCB checks).
    pub vcek_tcb: Option<TcbVersion>,
    /// The VCEK's validity (default: ten years from an hour ago).
    pub vcek_validity: Option<Validity>,
    /// Issue the VCEK from a second, untrusted chain.
    pub foreign_vcek: bool,
    /// The VMPL the reports claim (the paravisor's is 0).
    pub vmpl: u32,
    /// The launch measurement.
    pub measurement: [u8; 48],
    /// Guest policy bits.
    pub policy: u64,
    /// HOSTDATA, set by the host at launch (bare SNP guests bind initdata there).
    pub host_data: [u8; 32],
}

impl Default for SnpConfig {
    fn default() -> Self {
        let mut chip_id = [0u8; 64];
        for (i, b) in chip_id.iter_mut().enumerate() {
            *b = u8::try_from(i).unwrap_or(0).wrapping_mul(7).wrapping_add(3);
        }
        let mut measurement = [0u8; 48];
        measurement[..8].copy_from_slice(b"peerpod!");
        Self {
            generation: Generation::Milan,
            report_version: peerpod_tee::snp::CURRENT_VERSION,
            chip_id,
            tcb: TcbVersion {
                bootloader: 4,
                tee: 0,
                snp: 22,
                microcode: 213,
            },
            vcek_tcb: None,
            vcek_validity: None,
            foreign_vcek: false,
            vmpl: 0,
            measurement,
            policy: peerpod_tee::snp::policy::RESERVED_ONE | peerpod_tee::snp::policy::SMT_ALLOWED,
            host_data: [0; 32],
        }
    }
}

/// A simulated SEV-SNP chip with its VCEK.
pub struct SnpChip {
    config: SnpConfig,
    /// The trusted AMD chain (its ARK is the verifier's trust anchor).
    pub chain: AmdChain,
    /// The chain that issued the VCEK (the trusted one unless `foreign_vcek`).
    issuing_chain: Option<AmdChain>,
    vcek: Certificate,
    vcek_key: p384::ecdsa::SigningKey,
}

impl SnpChip {
    /// A chip as configured.
    pub fn new(config: SnpConfig) -> Result<Self, CertError> {
        let product = match config.generation {
            Generation::Milan => "Milan-B0",
            Generation::Genoa => "Genoa-B1",
            // Turin's TCB layout (an FMC SPL, other byte positions) is not simulated.
            Generation::Turin => {
                return Err(CertError::Builder(
                    "the simulated SNP chip is Milan or Genoa; Turin is not simulated".into(),
                ));
            }
        };
        let family = config.generation.name();
        let chain = AmdChain::generate(family)?;
        let issuing_chain = if config.foreign_vcek {
            Some(AmdChain::generate(family)?)
        } else {
            None
        };
        let spec = VcekSpec {
            chip_id: config.chip_id,
            tcb: config.vcek_tcb.unwrap_or(config.tcb),
            product: product.into(),
            validity: match config.vcek_validity {
                Some(v) => v,
                None => certs::default_validity()?,
            },
        };
        let (vcek, vcek_key) = issuing_chain.as_ref().unwrap_or(&chain).issue_vcek(&spec)?;
        Ok(Self {
            config,
            chain,
            issuing_chain,
            vcek,
            vcek_key,
        })
    }

    /// A signed report carrying `report_data`.
    pub fn report(&self, report_data: [u8; 64]) -> SnpReport {
        let c = &self.config;
        let mut r = SnpReport {
            version: c.report_version,
            // Version 2 reports have these bytes reserved (zero).
            cpuid: if c.report_version >= 3 {
                c.generation.cpuid()
            } else {
                [0; 3]
            },
            policy: c.policy,
            vmpl: c.vmpl,
            current_tcb: c.tcb,
            reported_tcb: c.tcb,
            committed_tcb: c.tcb,
            launch_tcb: c.tcb,
            report_data,
            measurement: c.measurement,
            host_data: c.host_data,
            chip_id: c.chip_id,
            current_version: [7, 55, 1],
            committed_version: [7, 55, 1],
            ..SnpReport::default()
        };
        let signature: p384::ecdsa::Signature = self.vcek_key.sign(&r.signed_bytes());
        let (rb, sb) = signature.split_bytes();
        let mut r48 = [0u8; 48];
        let mut s48 = [0u8; 48];
        r48.copy_from_slice(&rb);
        s48.copy_from_slice(&sb);
        r.set_signature_p384(&r48, &s48);
        r
    }

    /// The VCEK certificate (DER).
    pub fn vcek_der(&self) -> Result<Vec<u8>, CertError> {
        use der::Encode;
        Ok(self.vcek.to_der()?)
    }

    /// The VCEK certificate (PEM), as IMDS serves it.
    pub fn vcek_pem(&self) -> Result<String, CertError> {
        certs::pem(&self.vcek)
    }

    /// ASK then ARK of the chain that issued the VCEK, as IMDS serves them.
    pub fn chain_pem(&self) -> Result<String, CertError> {
        self.issuing_chain
            .as_ref()
            .unwrap_or(&self.chain)
            .chain_pem()
    }

    /// The trusted ASK and ARK (PEM): what a verifier is configured with.
    pub fn trusted_chain_pem(&self) -> Result<String, CertError> {
        self.chain.chain_pem()
    }

    /// The configuration.
    pub fn config(&self) -> &SnpConfig {
        &self.config
    }
}

/// How the simulated TDX platform is set up.
#[derive(Debug, Clone)]
pub struct TdxConfig {
    /// The TD's measurements (report data is filled per report).
    pub measurements: TdMeasurements,
}

impl Default for TdxConfig {
    fn default() -> Self {
        let mut m = TdMeasurements::default();
        m.mr_td[..8].copy_from_slice(b"peerpod!");
        m.tee_tcb_svn[0] = 3;
        Self { measurements: m }
    }
}

/// A simulated TDX module (makes MAC'd TD reports) and the quoting enclave Azure runs behind
/// `/acc/tdquote` (checks the MAC, signs quotes).
pub struct TdxPlatform {
    config: TdxConfig,
    mac_key: [u8; 32],
    /// The trusted Intel chain (its root is the verifier's trust anchor).
    pub chain: IntelChain,
    pck: Certificate,
    pck_key: p256::ecdsa::SigningKey,
    attestation_key: p256::ecdsa::SigningKey,
}

/// Why the quoting service refused a TD report.
#[derive(Debug, thiserror::Error)]
pub enum QuoteError {
    /// The report is not a TD report.
    #[error("not a TD report: {0}")]
    Malformed(#[from] peerpod_tee::Error),
    /// The report's MAC or hashes do not verify: it was not made by this platform's TDX module
    /// or was altered.
    #[error("TD report MAC does not verify on this platform")]
    BadMac,
}

impl TdxPlatform {
    /// A platform as configured.
    pub fn new(config: TdxConfig) -> Result<Self, CertError> {
        let chain = IntelChain::generate()?;
        let (pck, pck_key) = chain.issue_pck()?;
        let mut mac_key = [0u8; 32];
        getrandom::fill(&mut mac_key).map_err(|e| CertError::Builder(e.to_string()))?;
        Ok(Self {
            config,
            mac_key,
            chain,
            pck,
            pck_key,
            attestation_key: p256::ecdsa::SigningKey::generate(),
        })
    }

    fn mac(&self, input: &[u8]) -> [u8; 32] {
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&self.mac_key).unwrap_or_else(|_| {
            // HMAC accepts keys of any length; this branch cannot run.
            <HmacSha256 as KeyInit>::new(&Default::default())
        });
        m.update(input);
        m.finalize().into_bytes().into()
    }

    /// A TD report carrying `report_data`, MAC'd by the "TDX module".
    pub fn td_report(&self, report_data: [u8; 64]) -> TdReport {
        let mut r = TdReport {
            measurements: TdMeasurements {
                report_data,
                ..self.config.measurements.clone()
            },
            mac: [0; 32],
        };
        r.mac = self.mac(&r.mac_input());
        r
    }

    /// What the quoting endpoint does: check the report came from this platform, then quote it.
    pub fn quote(&self, td_report: &[u8]) -> Result<Vec<u8>, QuoteError> {
        let report = TdReport::parse(td_report)?;
        let expected = self.mac(&td_report[..224]);
        if !TdReport::hashes_consistent(td_report) || expected != report.mac {
            return Err(QuoteError::BadMac);
        }
        let point = self.attestation_key.verifying_key().to_sec1_point(false);
        let mut attestation_key = [0u8; 64];
        attestation_key.copy_from_slice(&point.as_bytes()[1..65]);
        let qe_auth_data = vec![0x5A; 32];
        let mut qe_report = [0u8; tdx::QE_REPORT_SIZE];
        qe_report[tdx::QE_REPORT_DATA_OFFSET..tdx::QE_REPORT_DATA_OFFSET + 64]
            .copy_from_slice(&tdx::qe_report_data(&attestation_key, &qe_auth_data));
        let qe_sig: p256::ecdsa::Signature = self.pck_key.sign(&qe_report);
        let mut quote = TdQuote {
            qe_svn: 8,
            pce_svn: 13,
            qe_vendor_id: tdx::INTEL_QE_VENDOR_ID,
            user_data: [0; 20],
            body: report.measurements,
            signature: [0; 64],
            attestation_key,
            qe_report,
            qe_report_signature: qe_sig.to_bytes().into(),
            qe_auth_data,
            pck_chain_pem: self
                .chain
                .quote_chain_pem(&self.pck)
                .map(String::into_bytes)
                .unwrap_or_default(),
        };
        let signed = quote.signed_bytes()?;
        let sig: p256::ecdsa::Signature = self.attestation_key.sign(&signed);
        quote.signature = sig.to_bytes().into();
        Ok(quote.to_bytes()?)
    }

    /// The trusted Intel root (PEM): what a verifier is configured with.
    pub fn root_pem(&self) -> Result<String, CertError> {
        certs::pem(&self.chain.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p384::ecdsa::signature::Verifier;
    use spki::DecodePublicKey;

    #[test]
    fn snp_reports_verify_with_the_vcek() {
        let chip = SnpChip::new(SnpConfig::default()).expect("chip");
        let report = chip.report([9; 64]);
        let bytes = report.to_bytes();
        let parsed = SnpReport::parse(&bytes).expect("parse");
        assert_eq!(parsed.report_data, [9; 64]);
        let (r, s) = parsed.signature_p384().expect("sig");
        let sig = p384::ecdsa::Signature::from_scalars(r, s).expect("scalars");
        let spki = chip.vcek.tbs_certificate().subject_public_key_info();
        let key = p384::ecdsa::VerifyingKey::from_public_key_der(
            &der::Encode::to_der(spki).expect("der"),
        )
        .expect("key");
        key.verify(&parsed.signed_bytes(), &sig).expect("verifies");
    }

    #[test]
    fn snp_reports_name_their_generation() {
        for generation in [Generation::Milan, Generation::Genoa] {
            let chip = SnpChip::new(SnpConfig {
                generation,
                ..SnpConfig::default()
            })
            .expect("chip");
            let report = SnpReport::parse(&chip.report([1; 64]).to_bytes()).expect("parse");
            assert_eq!(report.version, 3);
            assert_eq!(report.generation().expect("generation"), generation);
            let chain = chip.trusted_chain_pem().expect("pem");
            assert!(!chain.is_empty());
        }
        let old = SnpChip::new(SnpConfig {
            report_version: 2,
            ..SnpConfig::default()
        })
        .expect("chip");
        let report = old.report([1; 64]);
        assert_eq!((report.version, report.cpuid), (2, [0; 3]));
        assert!(
            SnpChip::new(SnpConfig {
                generation: Generation::Turin,
                ..SnpConfig::default()
            })
            .is_err()
        );
    }

    #[test]
    fn tdx_quotes_only_genuine_reports() {
        let p = TdxPlatform::new(TdxConfig::default()).expect("platform");
        let report = p.td_report([4; 64]).to_bytes();
        let quote = TdQuote::parse(&p.quote(&report).expect("quote")).expect("parse");
        assert_eq!(quote.body.report_data, [4; 64]);
        let mut forged = report;
        forged[128] ^= 1; // report data changed after the MAC
        assert!(matches!(p.quote(&forged), Err(QuoteError::BadMac)));
        let other = TdxPlatform::new(TdxConfig::default()).expect("platform");
        assert!(matches!(other.quote(&report), Err(QuoteError::BadMac)));
    }
}
