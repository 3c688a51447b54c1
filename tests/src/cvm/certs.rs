//! Test certificate authorities shaped like the real ones.
//!
//! - [`AmdChain`]: ARK → ASK → VCEK, ECDSA P-384. The VCEK carries AMD's extensions — the
//!   TCB security patch levels (`1.3.6.1.4.1.3704.1.3.x`) and the chip's hardware ID
//!   (`1.3.6.1.4.1.3704.1.4`) — matching the reports it signs, as real VCEKs do.
//! - [`IntelChain`]: root → intermediate → PCK leaf, ECDSA P-256, for TDX quotes.
//! - [`TlsCa`]: a CA and a server certificate for HTTPS tests.
//!
//! Real AMD roots are RSA-PSS keys; the verifier accepts both kinds, so a test chain may use
//! ECDSA throughout.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use der::asn1::{Ia5String, OctetString};
use der::{Encode, EncodePem};
use p256::elliptic_curve::Generate;
use peerpod_tee::snp::TcbVersion;
use spki::{EncodePublicKey, ObjectIdentifier, SubjectPublicKeyInfoRef};
use x509_cert::SubjectPublicKeyInfo;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::certificate::{Certificate, TbsCertificate};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, SubjectAltName};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

/// Errors while minting test certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// DER encoding failed.
    #[error("DER encoding failed")]
    Der(#[from] der::Error),
    /// The builder refused.
    #[error("certificate builder failed: {0}")]
    Builder(String),
    /// A public key could not be encoded.
    #[error("public key encoding failed")]
    Spki(#[from] spki::Error),
}

/// AMD's OID arc for VCEK extensions.
pub const AMD_OID_PREFIX: &str = "1.3.6.1.4.1.3704.1";

fn oid(s: &str) -> Result<ObjectIdentifier, CertError> {
    ObjectIdentifier::new(s).map_err(|e| CertError::Builder(format!("bad OID {s}: {e}")))
}

struct Profile {
    issuer: Name,
    subject: Name,
    ca: bool,
}

impl BuilderProfile for Profile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        _spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        _tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let bc = BasicConstraints {
            ca: self.ca,
            path_len_constraint: None,
        };
        Ok(vec![Extension {
            extn_id: const_oid::db::rfc5280::ID_CE_BASIC_CONSTRAINTS,
            critical: true,
            extn_value: OctetString::new(bc.to_der()?)?,
        }])
    }
}

fn name(cn: &str) -> Result<Name, CertError> {
    Ok(Name::from_str(&format!(
        "CN={cn},O=peerpod-guest test world"
    ))?)
}

fn serial() -> Result<SerialNumber, CertError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| CertError::Builder(e.to_string()))?;
    bytes[0] &= 0x7F;
    bytes[0] |= 0x01;
    Ok(SerialNumber::new(&bytes)?)
}

/// A validity window: from `start` for `length`.
pub fn validity(start: SystemTime, length: Duration) -> Result<Validity, CertError> {
    Ok(Validity::new(
        Time::try_from(start)?,
        Time::try_from(start + length)?,
    ))
}

/// Ten years from an hour ago: what test certificates get unless a test wants otherwise.
pub fn default_validity() -> Result<Validity, CertError> {
    validity(
        SystemTime::now() - Duration::from_secs(3600),
        Duration::from_secs(10 * 365 * 86400),
    )
}

/// Issues a certificate signed by `signer` with the signature encoding `Sig` (ECDSA, DER).
fn issue<S, Sig>(
    issuer: &Name,
    subject: Name,
    ca: bool,
    public: &SubjectPublicKeyInfo,
    signer: &S,
    validity: Validity,
    extensions: Vec<Extension>,
) -> Result<Certificate, CertError>
where
    S: p256::ecdsa::signature::Signer<Sig>
        + p256::ecdsa::signature::Keypair
        + spki::DynSignatureAlgorithmIdentifier,
    S::VerifyingKey: EncodePublicKey,
    Sig: spki::SignatureBitStringEncoding,
{
    let profile = Profile {
        issuer: issuer.clone(),
        subject,
        ca,
    };
    let mut b = CertificateBuilder::new(profile, serial()?, validity, public.clone())
        .map_err(|e| CertError::Builder(e.to_string()))?;
    for e in extensions {
        b.add_extension(e)?;
    }
    b.build::<_, Sig>(signer)
        .map_err(|e| CertError::Builder(e.to_string()))
}

fn spki_of(key: &impl EncodePublicKey) -> Result<SubjectPublicKeyInfo, CertError> {
    let der = key.to_public_key_der()?;
    Ok(SubjectPublicKeyInfo::try_from(der.as_bytes())?)
}

/// PEM of a DER certificate.
pub fn pem(cert: &Certificate) -> Result<String, CertError> {
    Ok(cert.to_pem(der::pem::LineEnding::LF)?)
}

/// A test AMD key distribution chain: ARK (root) and ASK (intermediate), both ECDSA P-384.
pub struct AmdChain {
    /// The root certificate: the trust anchor a verifier is configured with.
    pub ark: Certificate,
    /// The intermediate certificate.
    pub ask: Certificate,
    ask_key: p384::ecdsa::SigningKey,
}

/// What goes into a VCEK.
#[derive(Debug, Clone)]
pub struct VcekSpec {
    /// The chip's ID (hwID extension; must equal the report's `chip_id`).
    pub chip_id: [u8; 64],
    /// The TCB the VCEK is derived from (SPL extensions; must equal `reported_tcb`).
    pub tcb: TcbVersion,
    /// Product name, e.g. `Milan-B0`.
    pub product: String,
    /// Validity window.
    pub validity: Validity,
}

impl AmdChain {
    /// A fresh chain for a product family (`Milan`, `Genoa`).
    pub fn generate(family: &str) -> Result<Self, CertError> {
        let ark_key = p384::ecdsa::SigningKey::generate();
        let ask_key = p384::ecdsa::SigningKey::generate();
        let ark_name = name(&format!("ARK-{family}"))?;
        let ark = issue::<_, p384::ecdsa::DerSignature>(
            &ark_name,
            ark_name.clone(),
            true,
            &spki_of(ark_key.verifying_key())?,
            &ark_key,
            default_validity()?,
            vec![],
        )?;
        let ask = issue::<_, p384::ecdsa::DerSignature>(
            &ark_name,
            name(&format!("SEV-{family}"))?,
            true,
            &spki_of(ask_key.verifying_key())?,
            &ark_key,
            default_validity()?,
            vec![],
        )?;
        Ok(Self { ark, ask, ask_key })
    }

    /// Issues a VCEK for a chip at a TCB; returns the certificate and its private key.
    pub fn issue_vcek(
        &self,
        spec: &VcekSpec,
    ) -> Result<(Certificate, p384::ecdsa::SigningKey), CertError> {
        let key = p384::ecdsa::SigningKey::generate();
        let int = |id: &str, v: u8| -> Result<Extension, CertError> {
            Ok(Extension {
                extn_id: oid(&format!("{AMD_OID_PREFIX}.{id}"))?,
                critical: false,
                extn_value: OctetString::new(u32::from(v).to_der()?)?,
            })
        };
        let extensions = vec![
            int("1", 1)?,
            Extension {
                extn_id: oid(&format!("{AMD_OID_PREFIX}.2"))?,
                critical: false,
                extn_value: OctetString::new(Ia5String::new(&spec.product)?.to_der()?)?,
            },
            int("3.1", spec.tcb.bootloader)?,
            int("3.2", spec.tcb.tee)?,
            int("3.3", spec.tcb.snp)?,
            int("3.4", 0)?,
            int("3.5", 0)?,
            int("3.6", 0)?,
            int("3.7", 0)?,
            int("3.8", spec.tcb.microcode)?,
            // Real VCEKs carry the 64 raw bytes, not a DER OCTET STRING.
            Extension {
                extn_id: oid(&format!("{AMD_OID_PREFIX}.4"))?,
                critical: false,
                extn_value: OctetString::new(spec.chip_id.to_vec())?,
            },
        ];
        let cert = issue::<_, p384::ecdsa::DerSignature>(
            self.ask.tbs_certificate().subject(),
            Name::from_str("CN=VCEK,O=peerpod-guest test world")?,
            false,
            &spki_of(key.verifying_key())?,
            &self.ask_key,
            spec.validity,
            extensions,
        )?;
        Ok((cert, key))
    }

    /// ASK then ARK, PEM: the `certificateChain` Azure's IMDS serves.
    pub fn chain_pem(&self) -> Result<String, CertError> {
        Ok(format!("{}{}", pem(&self.ask)?, pem(&self.ark)?))
    }
}

/// A test Intel SGX/TDX PCK chain: root → intermediate, ECDSA P-256.
pub struct IntelChain {
    /// The root: the trust anchor a verifier is configured with.
    pub root: Certificate,
    /// The intermediate ("platform CA").
    pub intermediate: Certificate,
    intermediate_key: p256::ecdsa::SigningKey,
}

impl IntelChain {
    /// A fresh chain.
    pub fn generate() -> Result<Self, CertError> {
        let root_key = p256::ecdsa::SigningKey::generate();
        let int_key = p256::ecdsa::SigningKey::generate();
        let root_name = name("Test SGX Root CA")?;
        let root = issue::<_, p256::ecdsa::DerSignature>(
            &root_name,
            root_name.clone(),
            true,
            &spki_of(root_key.verifying_key())?,
            &root_key,
            default_validity()?,
            vec![],
        )?;
        let intermediate = issue::<_, p256::ecdsa::DerSignature>(
            &root_name,
            name("Test SGX PCK Platform CA")?,
            true,
            &spki_of(int_key.verifying_key())?,
            &root_key,
            default_validity()?,
            vec![],
        )?;
        Ok(Self {
            root,
            intermediate,
            intermediate_key: int_key,
        })
    }

    /// Issues a PCK certificate; returns it and its private key.
    pub fn issue_pck(&self) -> Result<(Certificate, p256::ecdsa::SigningKey), CertError> {
        let key = p256::ecdsa::SigningKey::generate();
        let cert = issue::<_, p256::ecdsa::DerSignature>(
            self.intermediate.tbs_certificate().subject(),
            name("Test SGX PCK Certificate")?,
            false,
            &spki_of(key.verifying_key())?,
            &self.intermediate_key,
            default_validity()?,
            vec![],
        )?;
        Ok((cert, key))
    }

    /// The PEM chain a quote carries: PCK leaf, intermediate, root.
    pub fn quote_chain_pem(&self, pck: &Certificate) -> Result<String, CertError> {
        Ok(format!(
            "{}{}{}",
            pem(pck)?,
            pem(&self.intermediate)?,
            pem(&self.root)?
        ))
    }
}

/// A CA and a server certificate for `localhost`/`127.0.0.1`, for HTTPS tests.
pub struct TlsCa {
    /// The CA certificate (PEM): what clients trust.
    pub ca_pem: String,
    /// The server certificate (PEM).
    pub cert_pem: String,
    /// The server's private key (PKCS#8 PEM).
    pub key_pem: String,
}

fn server_names(dns_names: &[&str]) -> Result<Extension, CertError> {
    let mut names = Vec::new();
    for n in dns_names {
        names.push(GeneralName::DnsName(Ia5String::new(n)?));
    }
    names.push(GeneralName::IpAddress(OctetString::new(vec![
        127, 0, 0, 1,
    ])?));
    Ok(Extension {
        extn_id: const_oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME,
        critical: false,
        extn_value: OctetString::new(SubjectAltName(names).to_der()?)?,
    })
}

impl TlsCa {
    /// A self-signed server certificate for the given DNS names plus 127.0.0.1, as people make
    /// for a KBS: `ca_pem` is the certificate itself. `ca` sets its basic constraints (`openssl
    /// req -x509` makes CA:TRUE ones).
    pub fn self_signed(dns_names: &[&str], ca: bool) -> Result<Self, CertError> {
        use p256::pkcs8::EncodePrivateKey;
        let key = p256::ecdsa::SigningKey::generate();
        let subject = name(dns_names.first().copied().unwrap_or("localhost"))?;
        let cert = issue::<_, p256::ecdsa::DerSignature>(
            &subject,
            subject.clone(),
            ca,
            &spki_of(key.verifying_key())?,
            &key,
            default_validity()?,
            vec![server_names(dns_names)?],
        )?;
        let key_pem = key
            .to_pkcs8_pem(der::pem::LineEnding::LF)
            .map_err(|e| CertError::Builder(e.to_string()))?;
        Ok(Self {
            ca_pem: pem(&cert)?,
            cert_pem: pem(&cert)?,
            key_pem: key_pem.to_string(),
        })
    }

    /// A fresh CA and a server certificate for the given DNS names, plus 127.0.0.1.
    pub fn generate(dns_names: &[&str]) -> Result<Self, CertError> {
        use p256::pkcs8::EncodePrivateKey;
        let ca_key = p256::ecdsa::SigningKey::generate();
        let ca_name = name("peerpod test TLS CA")?;
        let ca = issue::<_, p256::ecdsa::DerSignature>(
            &ca_name,
            ca_name.clone(),
            true,
            &spki_of(ca_key.verifying_key())?,
            &ca_key,
            default_validity()?,
            vec![],
        )?;
        let server_key = p256::SecretKey::generate();
        let san = server_names(dns_names)?;
        let cert = issue::<_, p256::ecdsa::DerSignature>(
            &ca_name,
            name(dns_names.first().copied().unwrap_or("localhost"))?,
            false,
            &spki_of(&server_key.public_key())?,
            &ca_key,
            default_validity()?,
            vec![san],
        )?;
        let key_pem = server_key
            .to_pkcs8_pem(der::pem::LineEnding::LF)
            .map_err(|e| CertError::Builder(e.to_string()))?;
        Ok(Self {
            ca_pem: pem(&ca)?,
            cert_pem: pem(&cert)?,
            key_pem: key_pem.to_string(),
        })
    }
}
