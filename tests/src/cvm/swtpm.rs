//! Running Debian's `swtpm` and provisioning it like an Azure vTPM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use peerpod_tpm::types::{Public, handle};
use peerpod_tpm::{AZURE_AK_HANDLE, Tpm};

use super::error::CvmError;

/// Persistent handle of the endorsement key (the TCG's conventional RSA EK handle).
pub const EK_HANDLE: u32 = 0x8101_0001;

/// How swtpm is wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwtpmMode {
    /// A data socket for TPM commands and a control socket; started and initialised.
    Host,
    /// A control socket only: QEMU initialises the TPM and hands it a data channel.
    Vm,
}

/// A running swtpm. Dropping it stops the process; the state directory stays.
#[derive(Debug)]
pub struct Swtpm {
    child: Child,
    dir: PathBuf,
    mode: SwtpmMode,
}

impl Swtpm {
    /// Starts swtpm with its state in `dir`.
    pub fn start(dir: &Path, mode: SwtpmMode) -> Result<Self, CvmError> {
        std::fs::create_dir_all(dir).map_err(CvmError::io("cannot create", dir))?;
        let ctrl = dir.join("swtpm-ctrl.sock");
        let data = dir.join("swtpm-data.sock");
        for s in [&ctrl, &data] {
            let _ = std::fs::remove_file(s);
        }
        let mut cmd = Command::new("swtpm");
        cmd.arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", dir.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", ctrl.display()))
            .arg("--log")
            .arg(format!("file={},level=1", dir.join("swtpm.log").display()));
        if mode == SwtpmMode::Host {
            cmd.arg("--server")
                .arg(format!("type=unixio,path={}", data.display()))
                .arg("--flags")
                .arg("not-need-init,startup-clear");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                CvmError::MissingTool {
                    tool: "swtpm",
                    package: "swtpm",
                }
            } else {
                CvmError::Spawn {
                    what: "swtpm",
                    source,
                }
            }
        })?;
        let mut me = Self {
            child,
            dir: dir.to_path_buf(),
            mode,
        };
        let wait_for = if mode == SwtpmMode::Host {
            &data
        } else {
            &ctrl
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !wait_for.exists() {
            if let Ok(Some(status)) = me.child.try_wait() {
                return Err(CvmError::Spawn {
                    what: "swtpm",
                    source: std::io::Error::other(format!(
                        "exited with {status}; see {}",
                        dir.join("swtpm.log").display()
                    )),
                });
            }
            if Instant::now() > deadline {
                return Err(CvmError::Timeout {
                    what: "swtpm".into(),
                    seconds: 10,
                    hint: format!("; see {}", dir.join("swtpm.log").display()),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The socket file exists slightly before swtpm listens on it.
        std::thread::sleep(Duration::from_millis(50));
        if mode == SwtpmMode::Host {
            me.wait_connectable()?;
        }
        Ok(me)
    }

    fn wait_connectable(&mut self) -> Result<(), CvmError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if std::os::unix::net::UnixStream::connect(self.data_socket()).is_ok() {
                // swtpm serves one client at a time; give it a moment to see us gone.
                std::thread::sleep(Duration::from_millis(50));
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CvmError::Timeout {
                    what: "swtpm data socket".into(),
                    seconds: 5,
                    hint: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The data socket (host mode): raw TPM commands.
    pub fn data_socket(&self) -> PathBuf {
        self.dir.join("swtpm-data.sock")
    }

    /// The control socket.
    pub fn ctrl_socket(&self) -> PathBuf {
        self.dir.join("swtpm-ctrl.sock")
    }

    /// How it is wired.
    pub fn mode(&self) -> SwtpmMode {
        self.mode
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Gives a fresh vTPM Azure's keys: the attestation key at `0x81000003` (RSA-2048,
/// RSASSA-SHA256, restricted signing) and an endorsement key at [`EK_HANDLE`], both primaries
/// of the endorsement hierarchy. Keys already present are kept.
pub fn provision(tpm: &mut Tpm) -> Result<(), CvmError> {
    for (persistent, template) in [
        (AZURE_AK_HANDLE, Public::azure_ak_template()),
        (EK_HANDLE, Public::ek_rsa_template()),
    ] {
        if tpm.read_public(persistent).is_ok() {
            continue;
        }
        let (transient, _) = tpm.create_primary(handle::ENDORSEMENT, &template)?;
        let persisted = tpm.evict_control(transient, persistent);
        tpm.flush_context(transient)?;
        persisted?;
    }
    Ok(())
}
