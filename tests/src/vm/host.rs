//! Running host programs, and finding the files of a dynamically linked binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::VmError;

/// Runs `command` to completion and returns its standard output; `package` is the Debian package
/// to name when the program is missing.
pub(crate) fn run(command: &mut Command, package: &str) -> Result<String, VmError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let text = std::iter::once(program.clone())
        .chain(command.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let output = command.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            VmError::MissingProgram {
                program,
                package: package.to_owned(),
            }
        } else {
            VmError::Io {
                context: format!("cannot run `{text}`"),
                source: e,
            }
        }
    })?;
    if !output.status.success() {
        return Err(VmError::Command {
            command: text,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The shared libraries `binary` loads, the dynamic loader included, as `ldd` finds them: the
/// paths the loader looks them up at. Empty for a static binary.
pub(crate) fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, VmError> {
    let output = Command::new("ldd")
        .arg(binary)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| VmError::Libraries {
            path: binary.to_owned(),
            reason: format!("cannot run ldd (Debian's libc-bin): {e}"),
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stdout.contains("not a dynamic executable") || stderr.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    if !output.status.success() {
        return Err(VmError::Libraries {
            path: binary.to_owned(),
            reason: format!("{}{}", stdout.trim(), stderr.trim()),
        });
    }
    parse_ldd(&stdout).map_err(|reason| VmError::Libraries {
        path: binary.to_owned(),
        reason,
    })
}

/// Reads `ldd`'s lines: `name => /path (0x…)`, `/loader (0x…)`, and `linux-vdso.so.1 (0x…)`
/// (provided by the kernel, so left out).
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libraries = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = match line.split_once("=>") {
            Some((name, found)) => {
                let found = found.trim();
                if found.starts_with("not found") {
                    return Err(format!("{} is not found", name.trim()));
                }
                found.split_whitespace().next()
            }
            None => line.split_whitespace().next(),
        };
        match path {
            Some(path) if path.starts_with('/') => libraries.push(PathBuf::from(path)),
            // The vDSO, or `=> (0x…)` for it on some systems.
            _ => {}
        }
    }
    Ok(libraries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_libraries_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f46)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f46)\n";
        assert_eq!(
            parse_ldd(text),
            Ok(vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ])
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }
}
