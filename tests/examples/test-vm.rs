//! Boots the test VM by hand, for debugging: prints the agent's forwarded address and the serial
//! log's path, and keeps the VM running until Enter (or end of input) is read.
//!
//! ```sh
//! cargo build -p kata-agent
//! cargo run -p peerpod-tests --example test-vm -- target/debug/kata-agent [--log-level debug]
//! target/debug/agent-ctl --addr tcp://127.0.0.1:PORT call GetGuestDetails
//! ```

use std::io::BufRead;
use std::process::ExitCode;

use peerpod_tests::{TestVm, VmOptions};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(agent) = args.next() else {
        eprintln!("usage: test-vm KATA_AGENT_BINARY [--log-level LEVEL] [-- QEMU_ARGS...]");
        return ExitCode::from(2);
    };
    let mut options = VmOptions::new(agent);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--log-level" => match args.next() {
                Some(level) => options.log_level = level,
                None => {
                    eprintln!("--log-level needs a level (error, warn, info, debug, trace)");
                    return ExitCode::from(2);
                }
            },
            "--" => options.extra_args.extend(args.by_ref()),
            other => {
                eprintln!("unknown argument {other:?}");
                return ExitCode::from(2);
            }
        }
    }
    let vm = match TestVm::boot(&options) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("test-vm: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "agent: {}\nbooted in {:.1?} (kernel {}, initramfs {})\nserial log: {}\npress Enter to power off",
        vm.agent_addr(),
        vm.boot_time(),
        vm.image().kernel_release(),
        vm.image().initramfs().display(),
        vm.serial_log_path().display()
    );
    let _ = std::io::stdin().lock().read_line(&mut String::new());
    println!("{}", vm.serial_tail(20));
    ExitCode::SUCCESS
}
