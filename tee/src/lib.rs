//! Evidence formats of the confidential VMs our pods run in, without any cryptography or I/O.
//!
//! Both sides of attestation read and write the same bytes: the attestation agent in the pod VM
//! collects them, the test world's simulated Azure paravisor produces them, and the test KBS
//! verifies them. Each format lives in its own module, with a builder (`to_bytes`) and a strict
//! parser (`parse`) that rejects short, oversized or inconsistent input with an [`Error`]
//! naming the field:
//!
//! - [`snp`]: the AMD SEV-SNP attestation report (1184 bytes) and its TCB version.
//! - [`tdx`]: the Intel TDX TD report (1024 bytes) and the TD quote (version 4, ECDSA P-256).
//! - [`hcl`]: Azure's HCL report as the paravisor stores it in vTPM NV index `0x01400001`: a
//!   header, the hardware report, and the runtime claims JSON (`var_data`) whose SHA-256 the
//!   hardware report carries, including the vTPM attestation key as a JWK (`HCLAkPub`).
//! - [`evidence`]: the JSON evidence documents the attestation agent sends for `az-snp-vtpm`
//!   and `az-tdx-vtpm` (version 1, as upstream emits them), with their hex and base64url
//!   encodings.
//!
//! Signatures inside these formats are exposed as the exact bytes signed and the signature
//! values; checking them is the verifier's job.

mod error;
pub mod evidence;
pub mod hcl;
pub mod snp;
pub mod tdx;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

pub use error::Error;

fn field<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[offset..offset + N]);
    out
}

fn u16_le(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes(field(bytes, offset))
}

fn u32_le(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(field(bytes, offset))
}

fn u64_le(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(field(bytes, offset))
}

fn put(buf: &mut [u8], offset: usize, value: &[u8]) {
    buf[offset..offset + value.len()].copy_from_slice(value);
}

fn need(what: &'static str, bytes: &[u8], len: usize) -> Result<(), Error> {
    if bytes.len() < len {
        return Err(Error::Truncated {
            what,
            expected: len,
            got: bytes.len(),
        });
    }
    Ok(())
}
