//! A simulated Azure confidential VM: the parts of an Azure SEV-SNP or TDX CVM an attester talks
//! to, faithful enough that evidence made here verifies the way Azure's does.
//!
//! - [`swtpm`]: Debian's swtpm as the vTPM, provisioned like Azure's (attestation key at
//!   `0x81000003`, endorsement key).
//! - [`platform`]: the hardware — an SEV-SNP chip with a VCEK from a test AMD chain
//!   ([`certs`]), or a TDX module and the quoting enclave behind Azure's `/acc/tdquote`.
//! - [`paravisor`]: Azure's paravisor between guest and vTPM: the 2600-byte HCL report at NV
//!   index `0x01400001`, refreshed on read with OpenHCL's 2-second rate limit.
//! - [`imds`]: the instance metadata service (VCEK, TD quotes).
//! - [`attester`]: a hand-made attester for tests.
//!
//! [`SimulatedCvm::start`] wires them for use from the host (the vTPM on a Unix socket);
//! [`SimulatedCvm::start_for_vm`] for a QEMU guest (the vTPM as a TPM TIS device, so the guest
//! sees `/dev/tpmrm0`). See `docs/testing-attestation.md`.

pub mod attester;
pub mod certs;
mod error;
mod fdpass;
pub mod imds;
pub mod paravisor;
pub mod platform;
pub mod swtpm;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use error::CvmError;
use paravisor::{Hardware, HostServer, Paravisor, ParavisorConfig};
use platform::{SnpChip, SnpConfig, TdxConfig, TdxPlatform};
use swtpm::{Swtpm, SwtpmMode};

/// Which Azure CVM to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// SEV-SNP (`Standard_DC*as_v5`): evidence `az-snp-vtpm`.
    Snp,
    /// TDX (`Standard_DC*es_v6`): evidence `az-tdx-vtpm`.
    Tdx,
}

impl Flavour {
    /// The KBS `tee` name of the flavour's evidence.
    pub fn tee(self) -> &'static str {
        match self {
            Flavour::Snp => "az-snp-vtpm",
            Flavour::Tdx => "az-tdx-vtpm",
        }
    }
}

/// How to build the simulated CVM.
#[derive(Debug, Clone)]
pub struct CvmOptions {
    /// SNP or TDX.
    pub flavour: Flavour,
    /// Where swtpm keeps its state and the sockets live.
    pub dir: PathBuf,
    /// The SNP chip (used when `flavour` is SNP).
    pub snp: SnpConfig,
    /// The TDX platform (used when `flavour` is TDX).
    pub tdx: TdxConfig,
    /// The paravisor's behaviour.
    pub paravisor: ParavisorConfig,
}

impl CvmOptions {
    /// Defaults for a flavour, with state in `dir`.
    pub fn new(flavour: Flavour, dir: impl Into<PathBuf>) -> Self {
        Self {
            flavour,
            dir: dir.into(),
            snp: SnpConfig::default(),
            tdx: TdxConfig::default(),
            paravisor: ParavisorConfig::default(),
        }
    }
}

/// The trust anchors a verifier needs for this CVM.
#[derive(Debug, Clone)]
pub struct TrustAnchors {
    /// The AMD chain the VCEK chains to: ASK then ARK, PEM (SNP only).
    pub amd_chain_pem: Option<String>,
    /// The Intel root the PCK chains to, PEM (TDX only).
    pub intel_root_pem: Option<String>,
}

/// A running simulated CVM. Dropping it stops everything.
pub struct SimulatedCvm {
    flavour: Flavour,
    hardware: Hardware,
    paravisor: Paravisor,
    imds: imds::ImdsServer,
    server: HostServer,
    _swtpm: Swtpm,
    dir: PathBuf,
}

impl SimulatedCvm {
    fn hardware(options: &CvmOptions) -> Result<Hardware, CvmError> {
        Ok(match options.flavour {
            Flavour::Snp => Hardware::Snp(Arc::new(SnpChip::new(options.snp.clone())?)),
            Flavour::Tdx => Hardware::Tdx(Arc::new(TdxPlatform::new(options.tdx.clone())?)),
        })
    }

    fn provisioned(dir: &Path) -> Result<Swtpm, CvmError> {
        let swtpm = Swtpm::start(dir, SwtpmMode::Host)?;
        let mut tpm = peerpod_tpm::Tpm::open(&format!("unix:{}", swtpm.data_socket().display()))?;
        swtpm::provision(&mut tpm)?;
        drop(tpm);
        Ok(swtpm)
    }

    /// Starts the CVM for use from the host: its vTPM answers raw TPM commands on
    /// [`SimulatedCvm::tpm_socket`].
    pub fn start(options: CvmOptions) -> Result<Self, CvmError> {
        Self::assemble(options, false)
    }

    /// Starts the CVM for a QEMU guest: pass [`SimulatedCvm::qemu_args`] to QEMU and the guest
    /// gets a TPM TIS device behind the paravisor.
    pub fn start_for_vm(options: CvmOptions) -> Result<Self, CvmError> {
        Self::assemble(options, true)
    }

    fn assemble(options: CvmOptions, for_vm: bool) -> Result<Self, CvmError> {
        let hardware = Self::hardware(&options)?;
        let paravisor = Paravisor::new(hardware.clone(), options.paravisor.clone());
        let (swtpm, server) = if for_vm {
            // Provision through a host-mode swtpm, then hand the state to one QEMU drives.
            drop(Self::provisioned(&options.dir)?);
            let swtpm = Swtpm::start(&options.dir, SwtpmMode::Vm)?;
            let server =
                paravisor.serve_vm(&swtpm.ctrl_socket(), &options.dir.join("vtpm-ctrl.sock"))?;
            (swtpm, server)
        } else {
            let swtpm = Self::provisioned(&options.dir)?;
            // swtpm serves one client at a time: let it notice the provisioning client left.
            std::thread::sleep(std::time::Duration::from_millis(100));
            let server =
                paravisor.serve_host(&swtpm.data_socket(), &options.dir.join("vtpm.sock"))?;
            (swtpm, server)
        };
        let imds = imds::ImdsServer::start(hardware.clone())?;
        Ok(Self {
            flavour: options.flavour,
            hardware,
            paravisor,
            imds,
            server,
            _swtpm: swtpm,
            dir: options.dir,
        })
    }

    /// The flavour.
    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    /// The vTPM socket (host mode): a transport specification for [`peerpod_tpm::Tpm::open`].
    pub fn tpm_spec(&self) -> String {
        format!("unix:{}", self.server.path().display())
    }

    /// The vTPM socket path.
    pub fn tpm_socket(&self) -> &Path {
        self.server.path()
    }

    /// QEMU arguments attaching the vTPM as a TPM TIS device (VM mode).
    pub fn qemu_args(&self) -> Vec<String> {
        vec![
            "-chardev".into(),
            format!("socket,id=chrtpm,path={}", self.server.path().display()),
            "-tpmdev".into(),
            "emulator,id=tpm0,chardev=chrtpm".into(),
            "-device".into(),
            "tpm-tis,tpmdev=tpm0".into(),
        ]
    }

    /// The IMDS base URL.
    pub fn imds_url(&self) -> String {
        self.imds.url()
    }

    /// The paravisor (for its counters).
    pub fn paravisor(&self) -> &Paravisor {
        &self.paravisor
    }

    /// The roots a verifier must trust for this CVM's evidence.
    pub fn trust_anchors(&self) -> Result<TrustAnchors, CvmError> {
        Ok(match &self.hardware {
            Hardware::Snp(chip) => TrustAnchors {
                amd_chain_pem: Some(chip.trusted_chain_pem()?),
                intel_root_pem: None,
            },
            Hardware::Tdx(tdx) => TrustAnchors {
                amd_chain_pem: None,
                intel_root_pem: Some(tdx.root_pem()?),
            },
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
