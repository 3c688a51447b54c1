//! `provision-files`: user data → allow-listed files → initdata's files, all decided before
//! anything is written, so a refused initdata leaves `/run/peerpod` as it was.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::files::{self, Outputs, WriteError};
use crate::initdata::{self, InitDataError};
use crate::source::{self, FetchError, Retry, Source};
use crate::userdata::shown;

/// Every output is readable by root only: they hold TLS keys (`apf.json`), registry
/// credentials (`auth.json`) and KBS settings.
pub const FILE_MODE: u32 = 0o600;

/// The user data disk on QEMU/libvirt (cloud-init's NoCloud label), which the image's
/// `podvm-cidata-generator` mounts at `/media/cidata` before provisioning.
pub const CIDATA_DEVICE: &str = "/dev/disk/by-label/cidata";

/// What to provision.
#[derive(Debug, Clone)]
pub struct ProvisionOptions {
    /// The root prefix outputs go under (`/` in a pod VM; a temporary directory in tests).
    pub root: PathBuf,
    /// The user data file checked first.
    pub user_data_file: PathBuf,
    /// An IMDS URL given explicitly (tests, other addresses); else Azure's when on Azure.
    pub imds_url: Option<String>,
    /// Whether this is an Azure VM (IMDS is asked then).
    pub on_azure: bool,
    /// How IMDS is retried.
    pub retry: Retry,
}

impl ProvisionOptions {
    /// The defaults of a pod VM with `-t` seconds.
    pub fn new(timeout: Duration) -> Self {
        Self {
            root: PathBuf::from("/"),
            user_data_file: PathBuf::from(source::USER_DATA_FILE),
            imds_url: None,
            on_azure: source::on_azure(std::path::Path::new("/sys/class/dmi/id")),
            retry: Retry::with_deadline(timeout),
        }
    }
}

/// What provisioning did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Where user data came from.
    pub source: String,
    /// The files written, in order (names in `/run/peerpod`).
    pub written: Vec<&'static str>,
    /// `write_files` paths refused by the allow-list (printable, clipped).
    pub refused: Vec<String>,
    /// The initdata digest (hex) and algorithm, when there was initdata.
    pub initdata: Option<(String, &'static str)>,
}

/// Why provisioning failed. Nothing downstream may start then.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// No user data.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The initdata is refused.
    #[error(transparent)]
    InitData(#[from] InitDataError),
    /// A file could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Runs `provision-files`.
pub async fn provision(options: &ProvisionOptions) -> Result<Report, ProvisionError> {
    let outputs = Outputs::new(&options.root);
    outputs.prepare()?;
    let source = Source::choose(
        &options.user_data_file,
        options.imds_url.as_deref(),
        options.on_azure,
    );
    tracing::info!(source = %source.describe(), "reading user data");
    if source == Source::None {
        // Said on the console: a pod VM without user data never serves 15150.
        let disk = Path::new(CIDATA_DEVICE);
        tracing::warn!(
            "no user data: {} does not exist and this is not Azure (no IMDS); {}; only an \
             initdata already in /run/peerpod is used",
            options.user_data_file.display(),
            if disk.exists() {
                "a disk labelled cidata is there but has no user-data file mounted at that path"
            } else {
                "no disk labelled cidata appeared (/dev/disk/by-label/cidata is missing: attach \
                 the cidata ISO or disk, or run on Azure)"
            }
        );
    }
    let cloud_config = source::fetch(&source, options.retry).await?;

    let mut report = Report {
        source: source.describe(),
        ..Report::default()
    };
    let mut plan: Vec<(&'static str, Vec<u8>)> = Vec::new();
    for wf in cloud_config.write_files {
        match files::allowed(&wf.path) {
            Some(name) => plan.push((name, wf.content)),
            None => {
                let path = shown(&wf.path);
                tracing::warn!(path = %path, "write_files path is not allowed: not written");
                report.refused.push(path);
            }
        }
    }

    // The initdata from user data, else one already there (a provider whose cloud-init wrote it).
    let encoded = match plan.iter().find(|(n, _)| *n == "initdata") {
        Some((_, c)) => Some(c.clone()),
        None => existing_initdata(&outputs)?,
    };
    match encoded {
        Some(encoded) => {
            let derived = initdata::files_from(&encoded)?;
            tracing::info!(
                digest = %derived.digest_hex,
                algorithm = derived.algorithm,
                "initdata checked"
            );
            report.initdata = Some((derived.digest_hex, derived.algorithm));
            // Initdata's files win over write_files entries of the same name, as upstream's
            // later write does.
            plan.retain(|(n, _)| !derived.files.iter().any(|(d, _)| d == n));
            // A configuration the initdata lacks is the host's write_files copy (upstream
            // parity), which the initdata digest does not cover: said loudly.
            for (name, _) in plan
                .iter()
                .filter(|(n, _)| initdata::DATA_FILES.contains(n))
            {
                tracing::warn!(
                    file = %outputs.path(name).display(),
                    "the initdata has no {name}: the host's unmeasured write_files copy is used \
                     (the initdata digest does not cover it); put {name} in the initdata to \
                     have it measured"
                );
            }
            plan.extend(derived.files);
        }
        None => tracing::info!(
            "no initdata: aa.toml, cdh.toml and the policy stay as write_files and the image \
             provide them"
        ),
    }

    // The files that start services (path units) go last: by then everything they read is
    // in place.
    let rank = |n: &str| match n {
        "aa.toml" => 2,
        "scratch-space.marker" => 1,
        _ => 0,
    };
    plan.sort_by_key(|(n, _)| rank(n));
    for (name, content) in &plan {
        outputs.write(name, content, FILE_MODE)?;
        tracing::info!(file = %outputs.path(name).display(), "written");
        report.written.push(name);
    }
    Ok(report)
}

/// An initdata file already in `/run/peerpod`: a regular file (opened without following a
/// symlink, or blocking on a FIFO) of at most [`crate::userdata::MAX_CONTENT`] bytes, the bound
/// of one in user data. A larger one is refused whole, never read in part.
fn existing_initdata(outputs: &Outputs) -> Result<Option<Vec<u8>>, ProvisionError> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let max = crate::userdata::MAX_CONTENT;
    let path = outputs.path("initdata");
    let io = |source| WriteError::Io {
        action: "read",
        path: path.clone(),
        source,
    };
    let not_a_file = || WriteError::Refused {
        path: path.clone(),
        reason: "the initdata there is not a regular file",
    };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // O_NOFOLLOW on a symlink.
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => return Err(not_a_file().into()),
        Err(e) => return Err(io(e).into()),
    };
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(not_a_file().into());
    }
    if meta.len() > max as u64 {
        return Err(InitDataError::TooLarge {
            len: meta.len(),
            max,
        }
        .into());
    }
    let mut raw = Vec::new();
    file.take(max as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(io)?;
    if raw.len() > max {
        // It grew after the size was read.
        return Err(InitDataError::TooLarge {
            len: raw.len() as u64,
            max,
        }
        .into());
    }
    Ok(Some(raw))
}
