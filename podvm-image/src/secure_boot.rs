//! UEFI Secure Boot for the QEMU harness, with Debian's `ovmf` package: the firmware built with
//! SMM (so the guest cannot write the variable store the firmware checks against), variable
//! stores with Secure Boot already on, and Debian's "snakeoil" key, whose certificate is the
//! test store's PK, KEK and db and whose private key the package ships for signing test
//! binaries (never for anything else). `build.sh` signs the UKI when given
//! `PODVM_SB_KEY`/`PODVM_SB_CERT`; the tests' image is signed with the snakeoil key.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::PodvmError;

/// OVMF built to need SMM: required for Secure Boot to mean anything.
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// Variables with Secure Boot on and the snakeoil certificate as PK, KEK and db.
pub const OVMF_VARS_SNAKEOIL: &str = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd";
/// Variables with Secure Boot on, Debian's PK and Microsoft's KEK and db: what a firmware that
/// trusts only the usual vendors (Azure's default templates among them) holds.
pub const OVMF_VARS_MICROSOFT: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";
/// The snakeoil certificate.
pub const SNAKEOIL_CERT: &str = "/usr/share/ovmf/PkKek-1-snakeoil.pem";
/// The snakeoil private key, encrypted with the pass phrase `snakeoil`.
pub const SNAKEOIL_KEY: &str = "/usr/share/ovmf/PkKek-1-snakeoil.key";

/// Which keys the firmware's variable store trusts; Secure Boot is on in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustedKeys {
    /// Debian's snakeoil test key only ([`OVMF_VARS_SNAKEOIL`]).
    Snakeoil,
    /// Microsoft's db only ([`OVMF_VARS_MICROSOFT`]).
    Microsoft,
}

impl TrustedKeys {
    /// The variable store template.
    pub fn vars(self) -> &'static str {
        match self {
            TrustedKeys::Snakeoil => OVMF_VARS_SNAKEOIL,
            TrustedKeys::Microsoft => OVMF_VARS_MICROSOFT,
        }
    }
}

/// Writes the snakeoil key, decrypted (sbsign reads no pass phrase without a terminal), into
/// `dir`; returns (key, certificate) for `PODVM_SB_KEY`/`PODVM_SB_CERT`.
pub fn snakeoil_signing_key(dir: &Path) -> Result<(PathBuf, PathBuf), PodvmError> {
    for file in [
        SNAKEOIL_KEY,
        SNAKEOIL_CERT,
        OVMF_CODE_SECBOOT,
        OVMF_VARS_SNAKEOIL,
    ] {
        if !Path::new(file).is_file() {
            return Err(PodvmError::MissingTool {
                tool: "OVMF's Secure Boot files (/usr/share/ovmf/PkKek-1-snakeoil.*)",
                package: "ovmf",
            });
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| PodvmError::io("create the key directory", e))?;
    let key = dir.join("snakeoil.key");
    let out = Command::new("openssl")
        .args([
            "pkey",
            "-in",
            SNAKEOIL_KEY,
            "-passin",
            "pass:snakeoil",
            "-out",
        ])
        .arg(&key)
        .output()
        .map_err(|e| PodvmError::io("run openssl", e))?;
    if !out.status.success() {
        return Err(PodvmError::Command {
            command: format!("openssl pkey -in {SNAKEOIL_KEY}"),
            output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok((key, PathBuf::from(SNAKEOIL_CERT)))
}

/// The subject `build.sh` records for a UKI signed with the snakeoil key (RFC 2253 order).
pub const SNAKEOIL_SUBJECT: &str = "O=SnakeOil,L=Fort Collins,ST=Colorado,C=US";
