//! Evidence verifiers, one per TEE, with Trustee's checks (and a few stricter ones, each a
//! documented option).
//!
//! A verifier takes the evidence JSON, the report data the KBS expects it to bind (the runtime
//! data digest) and the initdata digest, and returns the TEE's claims — the JSON the appraisal
//! policy sees under the TEE's name — or the first check that failed, named.

mod azure;
mod sample;
pub mod x509;

use peerpod_tee::snp::Generation;
use serde_json::Value;
use x509_cert::Certificate;

/// The roots evidence must chain to.
#[derive(Debug, Clone, Default)]
pub struct TrustAnchors {
    /// AMD's ASK and ARK for the VCEK chain of one processor generation (Trustee bundles
    /// Milan's, Genoa's and Turin's; tests configure theirs).
    pub amd: Option<AmdAnchors>,
    /// The chains of further generations.
    pub more_amd: Vec<AmdAnchors>,
    /// Intel roots the PCK chain in TD quotes must end at.
    pub intel_roots: Vec<Certificate>,
}

impl TrustAnchors {
    /// The AMD chain configured for `generation`.
    pub fn amd_for(&self, generation: Generation) -> Option<&AmdAnchors> {
        self.amd
            .iter()
            .chain(&self.more_amd)
            .find(|a| a.generation == generation)
    }

    /// Adds an AMD chain: the first becomes `amd`, later ones `more_amd`.
    pub fn add_amd(&mut self, chain: AmdAnchors) {
        if self.amd.is_none() {
            self.amd = Some(chain);
        } else {
            self.more_amd.push(chain);
        }
    }
}

/// AMD's key distribution chain for one processor generation.
#[derive(Debug, Clone)]
pub struct AmdAnchors {
    /// The intermediate that signs VCEKs.
    pub ask: Certificate,
    /// The root.
    pub ark: Certificate,
    /// The generation, from the ARK's common name (`ARK-Milan`, `ARK-Genoa`, `ARK-Turin`, as
    /// AMD names its roots).
    pub generation: Generation,
}

impl AmdAnchors {
    /// From a PEM bundle holding the ASK then the ARK (the form Azure's IMDS and AMD's KDS
    /// serve).
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let certs = x509::from_pem_chain("AMD chain", pem)?;
        let [ask, ark] = <[Certificate; 2]>::try_from(certs).map_err(|c| {
            format!(
                "AMD chain must hold the ASK then the ARK, found {} certificates",
                c.len()
            )
        })?;
        x509::verify_signed_by(&ark, &ark).map_err(|e| format!("ARK is not self-signed: {e}"))?;
        x509::verify_signed_by(&ask, &ark)
            .map_err(|e| format!("ASK is not signed by the ARK: {e}"))?;
        let subject = x509::subject(&ark);
        let generation = Generation::ALL
            .into_iter()
            .find(|g| subject.contains(&format!("CN=ARK-{}", g.name())))
            .ok_or_else(|| {
                format!(
                    "cannot tell the processor generation of the AMD chain: its ARK ({subject}) \
                     is not named ARK-Milan, ARK-Genoa or ARK-Turin"
                )
            })?;
        Ok(Self {
            ask,
            ark,
            generation,
        })
    }
}

/// Checks beyond Trustee's, each on by default in the test world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifierOptions {
    /// Require the HCL report's `user-data` to start with the expected report data, proving the
    /// hardware report was made after the nonce was known. Trustee does not check this, and
    /// upstream's SNP attester does not write report data, so its evidence fails this check.
    pub require_user_data_binding: bool,
    /// Check certificates' validity dates (Trustee checks signatures only).
    pub check_certificate_dates: bool,
}

impl Default for VerifierOptions {
    fn default() -> Self {
        Self {
            require_user_data_binding: true,
            check_certificate_dates: true,
        }
    }
}

/// What the evidence must match.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The runtime-data digest the evidence must bind.
    pub report_data: &'a [u8],
    /// The initdata digest, when the client sent initdata.
    pub init_data_digest: Option<&'a [u8]>,
}

/// Why evidence was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The KBS has no verifier for this TEE.
    #[error("no verifier for TEE {0:?}")]
    UnsupportedTee(String),
    /// The verifier lacks configuration (trust anchors).
    #[error("{0} is not configured")]
    NotConfigured(&'static str),
    /// The evidence cannot be parsed.
    #[error("{tee} evidence is malformed: {detail}")]
    Malformed {
        /// The TEE.
        tee: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A check failed.
    #[error("{check} check failed: {detail}")]
    Rejected {
        /// The check, e.g. `vTPM quote signature`.
        check: &'static str,
        /// Why.
        detail: String,
    },
}

impl VerifyError {
    pub(crate) fn rejected(check: &'static str, detail: impl Into<String>) -> Self {
        Self::Rejected {
            check,
            detail: detail.into(),
        }
    }
}

/// Verifies evidence of every TEE the test KBS knows.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    /// Trust anchors.
    pub anchors: TrustAnchors,
    /// Extra checks.
    pub options: VerifierOptions,
}

impl Verifier {
    /// Verifies `evidence` of `tee`; returns the claims.
    pub fn verify(
        &self,
        tee: &str,
        evidence: &Value,
        expected: &Expected<'_>,
    ) -> Result<Value, VerifyError> {
        match tee {
            "sample" => sample::verify(evidence, expected),
            "az-snp-vtpm" => azure::verify_snp(self, evidence, expected),
            "az-tdx-vtpm" => azure::verify_tdx(self, evidence, expected),
            other => Err(VerifyError::UnsupportedTee(other.to_string())),
        }
    }
}
