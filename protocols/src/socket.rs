//! Preparing a Unix socket path for a ttrpc server.

use std::path::Path;

/// Creates the socket's directory, and removes a stale socket file left by a server that died
/// (one nobody listens on); a live one is left alone so that binding reports it in use.
pub fn prepare_unix_socket(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
        std::fs::remove_file(path)?;
    }
    Ok(())
}
