//! The simulated Azure paravisor: it sits between the guest and the vTPM, owns NV index
//! `0x01400001` (the HCL report) and refreshes the report the way OpenHCL does.
//!
//! Every guest command goes through [`Paravisor::handle`]. Commands on the HCL report index are
//! answered here; everything else goes to swtpm unchanged. The report index is 2600 bytes, like
//! Azure's, which swtpm itself could not hold (it caps NV indices at 2048 bytes).
//!
//! Refresh semantics (what an attester must cope with):
//! - A `TPM2_NV_Read` of the report **at offset 0** makes a new report, from the current contents
//!   of NV index `0x01400002` (the guest's report data, zero-padded to 64 bytes, shown as
//!   `user-data` in the runtime claims) — unless the previous report was made less than
//!   [`ParavisorConfig::rate_limit`] ago (2 s, as OpenHCL), in which case the old report is
//!   returned. Writing `0x01400002` triggers nothing by itself.
//! - So an attester that reads the report (to detect the platform, say), writes its report data
//!   and reads again at once gets a **stale** report whose `user-data` is not what it wrote. It
//!   must re-read until `user-data` matches, or wait out the rate limit.
//!
//! Reads need owner authorization with a password session (the index's own password is a
//! secret of the paravisor, as on Azure); writes, re-definition and removal are refused.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peerpod_tee::hcl::{self, HclReport, ReportType, RsaJwk, RuntimeClaims, VmConfiguration};
use peerpod_tpm::frame::{ParsedCommand, ResponseBuilder, cc};
use peerpod_tpm::transport::{Transport, read_any_frame, read_frame};
use peerpod_tpm::types::{NvPublic, alg, handle, nv_attr};
use peerpod_tpm::wire::Writer;
use peerpod_tpm::{
    AZURE_AK_HANDLE, AZURE_HCL_REPORT_INDEX, AZURE_REPORT_DATA_INDEX, ResponseCode, Tpm,
};
use sha2::{Digest, Sha256};

use super::error::CvmError;
use super::fdpass;
use super::platform::{SnpChip, TdxPlatform};
use super::swtpm::EK_HANDLE;

/// The hardware under the paravisor.
#[derive(Clone)]
pub enum Hardware {
    /// An SEV-SNP chip.
    Snp(Arc<SnpChip>),
    /// A TDX module.
    Tdx(Arc<TdxPlatform>),
}

/// How the paravisor behaves.
#[derive(Debug, Clone)]
pub struct ParavisorConfig {
    /// Minimum time between two reports.
    pub rate_limit: Duration,
    /// Size of the report NV index.
    pub nv_size: u16,
    /// The VM configuration in the runtime claims.
    pub vm_configuration: VmConfiguration,
}

impl Default for ParavisorConfig {
    fn default() -> Self {
        Self {
            rate_limit: Duration::from_secs(2),
            nv_size: 2600,
            vm_configuration: VmConfiguration {
                secure_boot: true,
                tpm_enabled: true,
                tpm_persisted: true,
                vm_unique_id: "4b2c8d3e-peerpod-test-vm".into(),
                ..VmConfiguration::default()
            },
        }
    }
}

/// Counters, for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParavisorStats {
    /// Reports generated.
    pub reports: u32,
    /// Offset-0 reads answered with the previous report because of the rate limit.
    pub rate_limited: u32,
}

struct State {
    report: Option<Vec<u8>>,
    made_at: Option<Instant>,
    stats: ParavisorStats,
}

/// The paravisor. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Paravisor {
    hardware: Hardware,
    config: ParavisorConfig,
    state: Arc<Mutex<State>>,
}

const MAX_NV_BUFFER: u16 = 1024;

impl Paravisor {
    /// A paravisor over `hardware`.
    pub fn new(hardware: Hardware, config: ParavisorConfig) -> Self {
        Self {
            hardware,
            config,
            state: Arc::new(Mutex::new(State {
                report: None,
                made_at: None,
                stats: ParavisorStats::default(),
            })),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> ParavisorStats {
        self.lock().stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn nv_public(&self) -> NvPublic {
        NvPublic {
            index: AZURE_HCL_REPORT_INDEX,
            name_alg: alg::SHA256,
            attributes: nv_attr::AUTHREAD
                | nv_attr::AUTHWRITE
                | nv_attr::OWNERREAD
                | nv_attr::NO_DA
                | nv_attr::PLATFORMCREATE
                | nv_attr::WRITTEN,
            auth_policy: Vec::new(),
            data_size: self.config.nv_size,
        }
    }

    /// Answers one guest command, reaching the real TPM through `upstream`.
    pub fn handle(&self, command: &[u8], upstream: &mut Tpm) -> Vec<u8> {
        match self.intercept(command, upstream) {
            Some(response) => response,
            None => upstream
                .transact_raw(command)
                .unwrap_or_else(|_| ResponseBuilder::error(0x101)),
        }
    }

    fn intercept(&self, command: &[u8], upstream: &mut Tpm) -> Option<Vec<u8>> {
        let code = ParsedCommand::code_of(command).ok()?;
        match code {
            cc::NV_READ_PUBLIC => {
                let cmd = ParsedCommand::parse(command, 1).ok()?;
                (cmd.handles[0] == AZURE_HCL_REPORT_INDEX).then(|| self.read_public())
            }
            cc::NV_READ => {
                let cmd = ParsedCommand::parse(command, 2).ok()?;
                (cmd.handles[1] == AZURE_HCL_REPORT_INDEX).then(|| self.read(cmd, upstream))
            }
            cc::NV_WRITE | cc::NV_UNDEFINE_SPACE => {
                let cmd = ParsedCommand::parse(command, 2).ok()?;
                (cmd.handles[1] == AZURE_HCL_REPORT_INDEX).then(|| ResponseBuilder::error(0x149)) // TPM_RC_NV_AUTHORIZATION
            }
            cc::NV_DEFINE_SPACE => {
                let mut cmd = ParsedCommand::parse(command, 1).ok()?;
                cmd.params.tpm2b("auth").ok()?;
                let public = NvPublic::parse_sized(&mut cmd.params).ok()?;
                (public.index == AZURE_HCL_REPORT_INDEX)
                    .then(|| ResponseBuilder::error(u32::from(0x14Cu16))) // TPM_RC_NV_DEFINED
            }
            _ => None,
        }
    }

    fn read_public(&self) -> Vec<u8> {
        let public = self.nv_public();
        let build = || -> Result<Vec<u8>, peerpod_tpm::Error> {
            let mut w = Writer::new();
            w.tpm2b("nvPublic", &public.marshal()?)?;
            w.tpm2b("nvName", &public.name()?)?;
            ResponseBuilder::success(w.as_slice(), 0)
        };
        build().unwrap_or_else(|_| ResponseBuilder::error(0x101))
    }

    fn read(&self, mut cmd: ParsedCommand<'_>, upstream: &mut Tpm) -> Vec<u8> {
        // Owner authorization with an empty password, as the guest has on Azure.
        if cmd.handles[0] != handle::OWNER {
            return ResponseBuilder::error(0x98E); // TPM_RC_AUTH_FAIL, session 1
        }
        let [auth] = cmd.auths.as_slice() else {
            return ResponseBuilder::error(ResponseCode::AUTH_MISSING);
        };
        if auth.session != handle::PASSWORD_SESSION || !auth.hmac.is_empty() {
            return ResponseBuilder::error(0x98E);
        }
        let (Ok(size), Ok(offset)) = (cmd.params.u16("size"), cmd.params.u16("offset")) else {
            return ResponseBuilder::error(0x095 | 0x40 | 0x100); // TPM_RC_SIZE, parameter 1
        };
        if size > MAX_NV_BUFFER {
            return ResponseBuilder::error(0x084 | 0x40 | 0x100); // TPM_RC_VALUE, parameter 1
        }
        if u32::from(offset) + u32::from(size) > u32::from(self.config.nv_size) {
            return ResponseBuilder::error(ResponseCode::NV_RANGE);
        }
        if offset == 0
            && let Err(e) = self.refresh(upstream)
        {
            eprintln!("simulated paravisor: cannot make a report: {e}");
            return ResponseBuilder::error(0x101); // TPM_RC_FAILURE
        }
        if offset != 0 && self.lock().report.is_none() {
            // The report OpenHCL made at boot, long before this first read: it exists for reads
            // at any offset and does not hold off the next refresh.
            match self.make_report(upstream) {
                Ok(report) => {
                    let mut state = self.lock();
                    state.report.get_or_insert(report);
                    state.stats.reports += 1;
                }
                Err(e) => {
                    eprintln!("simulated paravisor: cannot make a report: {e}");
                    return ResponseBuilder::error(0x101);
                }
            }
        }
        let state = self.lock();
        let Some(report) = state.report.as_ref() else {
            return ResponseBuilder::error(ResponseCode::NV_UNINITIALIZED);
        };
        let data = &report[usize::from(offset)..usize::from(offset) + usize::from(size)];
        let mut w = Writer::new();
        match w.tpm2b("data", data) {
            Ok(_) => ResponseBuilder::success(w.as_slice(), 1)
                .unwrap_or_else(|_| ResponseBuilder::error(0x101)),
            Err(_) => ResponseBuilder::error(0x101),
        }
    }

    /// Makes a new report now unless the rate limit forbids it.
    fn refresh(&self, upstream: &mut Tpm) -> Result<(), CvmError> {
        {
            let mut state = self.lock();
            if let Some(at) = state.made_at
                && at.elapsed() < self.config.rate_limit
            {
                state.stats.rate_limited += 1;
                return Ok(());
            }
        }
        let report = self.make_report(upstream)?;
        let mut state = self.lock();
        state.report = Some(report);
        state.made_at = Some(Instant::now());
        state.stats.reports += 1;
        Ok(())
    }

    fn make_report(&self, upstream: &mut Tpm) -> Result<Vec<u8>, CvmError> {
        let user_data = read_report_data(upstream);
        let (ak, _) = upstream.read_public(AZURE_AK_HANDLE)?;
        let mut keys = vec![RsaJwk::new(
            hcl::AK_KID,
            "sign",
            &ak.modulus,
            ak.effective_exponent(),
        )];
        if let Ok((ek, _)) = upstream.read_public(EK_HANDLE) {
            keys.push(RsaJwk::new(
                hcl::EK_KID,
                "encrypt",
                &ek.modulus,
                ek.effective_exponent(),
            ));
        }
        let claims = RuntimeClaims {
            keys,
            vm_configuration: self.config.vm_configuration.clone(),
            user_data: Some(hex::encode(user_data)),
        };
        let var_data = claims.to_json();
        let mut report_data = [0u8; 64];
        report_data[..32].copy_from_slice(&Sha256::digest(&var_data));
        let (report_type, hw_report) = match &self.hardware {
            Hardware::Snp(chip) => (
                ReportType::Snp,
                chip.report(report_data).to_bytes().to_vec(),
            ),
            Hardware::Tdx(tdx) => (
                ReportType::Tdx,
                tdx.td_report(report_data).to_bytes().to_vec(),
            ),
        };
        let report = HclReport {
            report_type,
            hw_report,
            var_data,
        };
        report
            .to_bytes(usize::from(self.config.nv_size))
            .map_err(|e| CvmError::Imds(format!("HCL report does not fit: {e}")))
    }

    /// Serves guest TPM clients on a Unix socket (raw TPM commands), forwarding to swtpm's data
    /// socket. Runs until the returned server is dropped.
    pub fn serve_host(&self, swtpm_data: &Path, listen: &Path) -> Result<HostServer, CvmError> {
        let upstream = Tpm::new(Transport::open(&format!("unix:{}", swtpm_data.display()))?);
        let upstream = Arc::new(Mutex::new(upstream));
        let me = self.clone();
        HostServer::accept("paravisor-host", listen, move |conn| {
            let me = me.clone();
            let upstream = upstream.clone();
            let _ = std::thread::Builder::new()
                .name("paravisor-client".into())
                .spawn(move || me.serve_client(conn, &upstream));
        })
    }

    fn serve_client(&self, mut conn: UnixStream, upstream: &Mutex<Tpm>) {
        while let Ok(Some(command)) = read_frame(&mut conn) {
            let response = {
                let mut tpm = upstream.lock().unwrap_or_else(|p| p.into_inner());
                self.handle(&command, &mut tpm)
            };
            if conn.write_all(&response).is_err() {
                break;
            }
        }
    }

    /// Serves QEMU's `-tpmdev emulator` control channel on a Unix socket, relaying it to swtpm's
    /// control socket and putting itself on the TPM data channel QEMU hands over.
    pub fn serve_vm(&self, swtpm_ctrl: &Path, listen: &Path) -> Result<HostServer, CvmError> {
        let me = self.clone();
        let ctrl = swtpm_ctrl.to_path_buf();
        HostServer::accept("paravisor-vm", listen, move |conn| {
            if let Err(e) = me.relay_control(conn, &ctrl) {
                eprintln!("simulated paravisor: control channel: {e}");
            }
        })
    }

    fn relay_control(&self, qemu: UnixStream, swtpm_ctrl: &Path) -> Result<(), CvmError> {
        let swtpm = UnixStream::connect(swtpm_ctrl)
            .map_err(CvmError::io("cannot connect to", swtpm_ctrl))?;
        // swtpm → QEMU: plain bytes.
        let (mut from_swtpm, mut to_qemu) = (
            swtpm
                .try_clone()
                .map_err(CvmError::io("cannot clone", swtpm_ctrl))?,
            qemu.try_clone()
                .map_err(CvmError::io("cannot clone", swtpm_ctrl))?,
        );
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from_swtpm, &mut to_qemu);
            let _ = to_qemu.shutdown(std::net::Shutdown::Both);
        });
        // QEMU → swtpm: bytes, with the data channel swapped for ours.
        let mut buf = [0u8; 4096];
        loop {
            let (n, fd) = fdpass::recv_with_fd(&qemu, &mut buf)
                .map_err(CvmError::io("cannot read the control channel", swtpm_ctrl))?;
            if n == 0 {
                let _ = swtpm.shutdown(std::net::Shutdown::Both);
                return Ok(());
            }
            match fd {
                Some(guest_end) => {
                    let (ours, theirs) = nix::sys::socket::socketpair(
                        nix::sys::socket::AddressFamily::Unix,
                        nix::sys::socket::SockType::Stream,
                        None,
                        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                    )
                    .map_err(|e| {
                        CvmError::io("cannot create a socket pair", swtpm_ctrl)(e.into())
                    })?;
                    fdpass::send_with_fd(&swtpm, &buf[..n], &theirs)
                        .map_err(CvmError::io("cannot pass the data channel to", swtpm_ctrl))?;
                    drop(theirs);
                    self.pump_data(guest_end, ours);
                }
                None => {
                    (&swtpm)
                        .write_all(&buf[..n])
                        .map_err(CvmError::io("cannot write", swtpm_ctrl))?;
                }
            }
        }
    }

    /// Relays the guest's commands. TPM 2.0 commands go through [`Paravisor::handle`]; any other
    /// frame (UEFI firmware probes for a TPM 1.2 with 1.2-tagged commands before it uses the
    /// TPM 2.0) goes to swtpm as it is, and its answer (a TPM 2.0 refuses a 1.2 tag with a
    /// 1.2-tagged `TPM_RC_BAD_TAG`) back, as a vTPM would. Dropping such a frame instead would
    /// close the data channel, and QEMU would answer every later command with a fatal error.
    fn pump_data(&self, guest_end: OwnedFd, swtpm_end: OwnedFd) {
        let me = self.clone();
        std::thread::spawn(move || {
            let mut guest = UnixStream::from(guest_end);
            let swtpm = UnixStream::from(swtpm_end);
            let Ok(mut raw) = swtpm.try_clone() else {
                eprintln!("simulated paravisor: cannot clone the swtpm data channel");
                return;
            };
            let mut upstream = Tpm::new(Transport::Unix(swtpm));
            loop {
                let command = match read_any_frame(&mut guest) {
                    Ok(Some(command)) => command,
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("simulated paravisor: guest data channel: {e}");
                        break;
                    }
                };
                let response = if is_tpm2(&command) {
                    me.handle(&command, &mut upstream)
                } else {
                    raw.write_all(&command)
                        .ok()
                        .and_then(|()| read_any_frame(&mut raw).ok().flatten())
                        .unwrap_or_else(|| ResponseBuilder::error(0x101))
                };
                if guest.write_all(&response).is_err() {
                    break;
                }
            }
        });
    }
}

/// A TPM 2.0 command's tag (`TPM_ST_NO_SESSIONS` or `TPM_ST_SESSIONS`).
fn is_tpm2(frame: &[u8]) -> bool {
    matches!(frame.get(..2), Some([0x80, 0x01] | [0x80, 0x02]))
}

/// Reads the guest's report data (up to 64 bytes of `0x01400002`, zero-padded); zeros if the
/// index is absent or not owner-readable.
fn read_report_data(tpm: &mut Tpm) -> [u8; 64] {
    let mut out = [0u8; 64];
    if let Ok((public, _)) = tpm.nv_read_public(AZURE_REPORT_DATA_INDEX) {
        let n = public.data_size.min(64);
        if public.attributes & nv_attr::OWNERREAD != 0
            && n > 0
            && let Ok(data) = tpm.nv_read(AZURE_REPORT_DATA_INDEX, n, 0)
        {
            out[..data.len()].copy_from_slice(&data);
        }
    }
    out
}

/// A listening paravisor socket; dropping it stops accepting.
#[derive(Debug)]
pub struct HostServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl HostServer {
    /// Listens on `listen` and hands each connection to `handle` on a thread named `name`.
    fn accept(
        name: &str,
        listen: &Path,
        mut handle: impl FnMut(UnixStream) + Send + 'static,
    ) -> Result<Self, CvmError> {
        let _ = std::fs::remove_file(listen);
        let listener =
            UnixListener::bind(listen).map_err(CvmError::io("cannot listen on", listen))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { break };
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    handle(conn);
                }
            })
            .map_err(|source| CvmError::Spawn {
                what: "paravisor thread",
                source,
            })?;
        Ok(Self {
            path: listen.to_path_buf(),
            stop,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for HostServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}
