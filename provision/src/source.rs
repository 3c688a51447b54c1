//! Where user data comes from: the cidata file (`/media/cidata/user-data`) when it is there,
//! else Azure IMDS (base64 text, `Metadata: true`), retried until the deadline because the
//! host may set the VM's user data after the VM boots.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::userdata::{CloudConfig, MAX_USER_DATA, UserDataError};

/// Upstream's user data file (a cidata ISO or a disk mounted by the image).
pub const USER_DATA_FILE: &str = "/media/cidata/user-data";
/// Azure IMDS's user data URL (upstream's).
pub const AZURE_USER_DATA_URL: &str =
    "http://169.254.169.254/metadata/instance/compute/userData?api-version=2021-01-01&format=text";

/// Where to read user data from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file, read once (a static file does not get better by retrying).
    File(PathBuf),
    /// An IMDS URL answering base64 text to `Metadata: true`, retried until the deadline.
    Imds(String),
    /// No user data provider: only an initdata file already in `/run/peerpod` is processed.
    None,
}

impl Source {
    /// Upstream's choice: the file if it exists, else IMDS on Azure (`imds_url` set explicitly
    /// counts as Azure), else none.
    pub fn choose(user_data_file: &Path, imds_url: Option<&str>, on_azure: bool) -> Self {
        if user_data_file.exists() {
            Source::File(user_data_file.to_path_buf())
        } else if let Some(url) = imds_url {
            Source::Imds(url.to_owned())
        } else if on_azure {
            Source::Imds(AZURE_USER_DATA_URL.to_owned())
        } else {
            Source::None
        }
    }

    /// A short name for logs.
    pub fn describe(&self) -> String {
        match self {
            Source::File(p) => format!("file {}", p.display()),
            Source::Imds(u) => format!("IMDS {u}"),
            Source::None => "none".into(),
        }
    }
}

/// Whether this VM runs on Azure, by the DMI system vendor (`sys_vendor` under
/// `dmi_dir`, `/sys/class/dmi/id` in a VM).
pub fn on_azure(dmi_dir: &Path) -> bool {
    std::fs::read_to_string(dmi_dir.join("sys_vendor"))
        .is_ok_and(|v| v.trim() == "Microsoft Corporation")
}

/// How IMDS is retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// The whole fetch's deadline (`-t`).
    pub deadline: Duration,
    /// The first pause between attempts; doubled after each, up to `max_delay`.
    pub first_delay: Duration,
    /// The longest pause.
    pub max_delay: Duration,
    /// The longest one attempt may take.
    pub attempt_timeout: Duration,
}

impl Retry {
    /// `-t` seconds in all; pauses from 100 ms up to 2 s (upstream pauses 5 s every time, so a
    /// VM whose user data is late waits up to 5 s longer than it must).
    pub fn with_deadline(deadline: Duration) -> Self {
        Self {
            deadline,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(10),
        }
    }
}

/// Why user data could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The file could not be read.
    #[error("cannot read the user data file {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file's user data is refused.
    #[error("the user data file {path} is refused")]
    FileContent {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: UserDataError,
    },
    /// IMDS did not give valid user data before the deadline.
    #[error(
        "no valid user data from {url} after {attempts} attempts in {secs} s (raise -t if the \
         host is slow); last error: {last}"
    )]
    Imds {
        /// The URL.
        url: String,
        /// How many attempts.
        attempts: u32,
        /// The deadline in seconds.
        secs: u64,
        /// The last attempt's error.
        last: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the IMDS HTTP client: {0}")]
    Client(String),
}

/// Reads and parses user data from `source` (an empty [`CloudConfig`] for [`Source::None`]).
pub async fn fetch(source: &Source, retry: Retry) -> Result<CloudConfig, FetchError> {
    match source {
        Source::None => Ok(CloudConfig::default()),
        Source::File(path) => {
            let raw = read_bounded(path).map_err(|source| FetchError::File {
                path: path.clone(),
                source,
            })?;
            parse(&raw).map_err(|source| FetchError::FileContent {
                path: path.clone(),
                source,
            })
        }
        Source::Imds(url) => fetch_imds(url, retry).await,
    }
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut raw = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_USER_DATA as u64 + 1)
        .read_to_end(&mut raw)?;
    Ok(raw)
}

/// Empty (or blank) user data is no user data, as for upstream's YAML decoder.
fn parse(raw: &[u8]) -> Result<CloudConfig, UserDataError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(CloudConfig::default());
    }
    CloudConfig::parse(raw)
}

async fn fetch_imds(url: &str, retry: Retry) -> Result<CloudConfig, FetchError> {
    let client = peerpod_kbs_client::http_builder(url)
        .no_proxy()
        .build()
        .map_err(|e| FetchError::Client(peerpod_kbs_client::error_chain(&e)))?;
    let start = Instant::now();
    let mut delay = retry.first_delay;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let remaining = retry.deadline.saturating_sub(start.elapsed());
        let err = match attempt(&client, url, retry.attempt_timeout.min(remaining)).await {
            Ok(cc) => {
                tracing::info!(url, attempts, "user data fetched from IMDS");
                return Ok(cc);
            }
            Err(e) => e,
        };
        tracing::warn!(url, attempt = attempts, error = %err, "no valid user data yet; retrying");
        if start.elapsed() + delay >= retry.deadline {
            return Err(FetchError::Imds {
                url: url.to_owned(),
                attempts,
                secs: retry.deadline.as_secs(),
                last: err,
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(retry.max_delay);
    }
}

async fn attempt(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<CloudConfig, String> {
    let resp = client
        .get(url)
        .header("Metadata", "true")
        .timeout(timeout.max(Duration::from_millis(50)))
        .send()
        .await
        .map_err(|e| peerpod_kbs_client::error_chain(&e))?;
    if let Some(why) = peerpod_kbs_client::refused_redirect(&resp, "IMDS") {
        return Err(why);
    }
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("IMDS answered {status}"));
    }
    // Base64 is 4/3 of the user data, plus line breaks.
    let body = peerpod_kbs_client::read_body(resp, MAX_USER_DATA / 3 * 4 + 4096)
        .await
        .map_err(|e| peerpod_kbs_client::error_chain(&e))?;
    let compact: Vec<u8> = body
        .into_iter()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .map_err(|_| {
            "the IMDS reply is not base64 (Azure sends user data base64-encoded)".to_owned()
        })?;
    parse(&raw).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_follows_upstream() {
        let missing = Path::new("/nonexistent/user-data");
        assert_eq!(Source::choose(missing, None, false), Source::None);
        assert_eq!(
            Source::choose(missing, None, true),
            Source::Imds(AZURE_USER_DATA_URL.into())
        );
        assert_eq!(
            Source::choose(missing, Some("http://x/"), false),
            Source::Imds("http://x/".into())
        );
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        assert_eq!(
            Source::choose(&here, Some("http://x/"), true),
            Source::File(here.clone())
        );
    }

    #[test]
    fn blank_user_data_is_none() -> Result<(), UserDataError> {
        assert_eq!(parse(b"")?, CloudConfig::default());
        assert_eq!(parse(b" \n")?, CloudConfig::default());
        assert_eq!(parse(b"#cloud-config\n")?, CloudConfig::default());
        Ok(())
    }
}
