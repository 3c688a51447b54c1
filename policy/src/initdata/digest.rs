//! Initdata digests and the values each platform measures from them.
//!
//! # Why `sha256` is the safe choice on Azure
//!
//! Azure confidential VMs (SEV-SNP and TDX) carry initdata in a vTPM PCR: the attestation agent
//! extends PCR 8 of the **SHA-256** bank once with the digest. A SHA-256 bank can only be extended
//! with 32 bytes, so a `sha384` or `sha512` digest has to be cut to its first 32 bytes first, and
//! the agent in the guest and the verifier in Trustee must agree on that cut exactly. With
//! `sha256` there is nothing to agree on: the whole digest goes into the PCR, and the value to
//! register is simply `SHA-256(32 zero bytes ‖ digest)`. Our attestation agent and
//! [`Digest::azure_vtpm_pcr8`] both use the first 32 bytes, so `sha384` works with this bundle,
//! but `sha256` is the one that works everywhere.

use sha2::Digest as _;

/// A digest algorithm initdata may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// SHA-256 (32 bytes).
    Sha256,
    /// SHA-384 (48 bytes).
    Sha384,
    /// SHA-512 (64 bytes).
    Sha512,
}

impl Algorithm {
    /// Every accepted algorithm, in the order error messages list them.
    pub const ALL: [Self; 3] = [Self::Sha256, Self::Sha384, Self::Sha512];

    /// Looks up an algorithm by its initdata name (`sha256`, `sha384`, `sha512`, exactly).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The name initdata uses for the algorithm.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    /// The digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A platform that measures initdata, for [`Digest::for_platform`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// Azure confidential VMs (SEV-SNP or TDX) with the paravisor's vTPM: PCR 8.
    AzureVtpm,
    /// Bare AMD SEV-SNP: the launch's HOSTDATA field.
    Snp,
    /// Bare Intel TDX: the TD's MRCONFIGID field.
    Tdx,
}

/// The digest of an initdata document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    algorithm: Algorithm,
    bytes: Vec<u8>,
}

impl Digest {
    /// Hashes `document` with `algorithm`.
    pub fn compute(algorithm: Algorithm, document: &[u8]) -> Self {
        let bytes = match algorithm {
            Algorithm::Sha256 => sha2::Sha256::digest(document).to_vec(),
            Algorithm::Sha384 => sha2::Sha384::digest(document).to_vec(),
            Algorithm::Sha512 => sha2::Sha512::digest(document).to_vec(),
        };
        Self { algorithm, bytes }
    }

    /// Wraps digest bytes computed elsewhere (for example given on a command line).
    ///
    /// Returns `None` when the length fits none of the algorithms.
    pub fn from_bytes(bytes: Vec<u8>) -> Option<Self> {
        let algorithm = Algorithm::ALL
            .into_iter()
            .find(|a| a.digest_len() == bytes.len())?;
        Some(Self { algorithm, bytes })
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The digest in lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.bytes)
    }

    /// The first 32 bytes of the digest: what an Azure vTPM PCR 8 is extended with.
    pub fn azure_vtpm_extend_value(&self) -> [u8; 32] {
        fit(&self.bytes)
    }

    /// The value of an Azure vTPM's PCR 8 (SHA-256 bank) after one extend from zero:
    /// `SHA-256(32 zero bytes ‖ first 32 bytes of the digest)`.
    pub fn azure_vtpm_pcr8(&self) -> [u8; 32] {
        let mut hasher = sha2::Sha256::new();
        hasher.update([0u8; 32]);
        hasher.update(self.azure_vtpm_extend_value());
        hasher.finalize().into()
    }

    /// SEV-SNP HOSTDATA: the digest cut or zero-padded to 32 bytes.
    pub fn snp_hostdata(&self) -> [u8; 32] {
        fit(&self.bytes)
    }

    /// TDX MRCONFIGID: the digest cut or zero-padded to 48 bytes.
    pub fn tdx_mrconfigid(&self) -> [u8; 48] {
        fit(&self.bytes)
    }

    /// The value `platform` measures, as bytes.
    pub fn for_platform(&self, platform: Platform) -> Vec<u8> {
        match platform {
            Platform::AzureVtpm => self.azure_vtpm_pcr8().to_vec(),
            Platform::Snp => self.snp_hostdata().to_vec(),
            Platform::Tdx => self.tdx_mrconfigid().to_vec(),
        }
    }
}

/// Cuts `bytes` to `N` bytes, or pads them with zeros to `N`.
fn fit<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = bytes.len().min(N);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every expected value below was computed independently with Python's hashlib:
    //   doc = b'version = "0.1.0"\nalgorithm = "sha256"\n'
    //   d = hashlib.sha256(doc).digest()
    //   hashlib.sha256(bytes(32) + d[:32]).hexdigest()            # PCR 8
    //   (d + bytes(48))[:48].hex()                                # MRCONFIGID
    const DOC256: &[u8] = b"version = \"0.1.0\"\nalgorithm = \"sha256\"\n";
    const DOC384: &[u8] = b"version = \"0.1.0\"\nalgorithm = \"sha384\"\n";
    const DOC512: &[u8] = b"version = \"0.1.0\"\nalgorithm = \"sha512\"\n";

    #[test]
    fn sha256_vectors() {
        let d = Digest::compute(Algorithm::Sha256, DOC256);
        assert_eq!(
            d.to_hex(),
            "677304ed23ec2f17d776f30f5d5f8a64d2f55dd6942fce1ec88d7baa638963e8"
        );
        assert_eq!(
            hex::encode(d.azure_vtpm_pcr8()),
            "2baaddaed8b2657274aa4ef6f496a2d4ff375cc37c1a78cbb484c1357783d6e4"
        );
        assert_eq!(hex::encode(d.snp_hostdata()), d.to_hex());
        assert_eq!(
            hex::encode(d.tdx_mrconfigid()),
            format!("{}{}", d.to_hex(), "0".repeat(32))
        );
    }

    #[test]
    fn sha384_vectors() {
        let d = Digest::compute(Algorithm::Sha384, DOC384);
        assert_eq!(
            d.to_hex(),
            "cc367223fdb0ecfb2353e2f1f944c1c24a4bcdc08acdfeed73552c2f345925416f920531a08363aa0511d964c76fe5d6"
        );
        assert_eq!(
            hex::encode(d.azure_vtpm_pcr8()),
            "8338ac4dfdfd6ae7660f0e2a46ba42975eaaebe0cabecb899687724565094f2d"
        );
        assert_eq!(hex::encode(d.snp_hostdata()), &d.to_hex()[..64]);
        assert_eq!(hex::encode(d.tdx_mrconfigid()), d.to_hex());
    }

    #[test]
    fn sha512_vectors() {
        let d = Digest::compute(Algorithm::Sha512, DOC512);
        assert_eq!(
            d.to_hex(),
            "cddcef9d3c7926d26146c7bed9a8ee87405f0161dca94b2641bd70bd0a18067f\
             5a2f02f2bbd1bc194b4303f97d844a61a5a807e705a589b05704e9391c710b13"
        );
        assert_eq!(
            hex::encode(d.azure_vtpm_pcr8()),
            "eaa0ddae376b794d7442709be56209808149723487ad30d405ebc5f12f157c11"
        );
        assert_eq!(hex::encode(d.tdx_mrconfigid()), &d.to_hex()[..96]);
    }

    #[test]
    fn algorithm_names_are_exact() {
        assert_eq!(Algorithm::from_name("sha384"), Some(Algorithm::Sha384));
        assert_eq!(Algorithm::from_name("sha-384"), None);
        assert_eq!(Algorithm::from_name("SHA384"), None);
        assert_eq!(
            Digest::from_bytes(vec![0; 48]).map(|d| d.algorithm()),
            Some(Algorithm::Sha384)
        );
        assert_eq!(Digest::from_bytes(vec![0; 20]), None);
    }
}
