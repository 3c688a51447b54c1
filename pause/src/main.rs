//! `pause`: the sandbox container's process (see the `peerpod_pause` library).

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::process::id() != 1 {
        eprintln!("pause: warning: not PID 1, orphans of this PID namespace are not reaped here");
    }
    match peerpod_pause::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
