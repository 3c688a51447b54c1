//! `vtpm-probe`: runs inside a test VM whose TPM is the simulated Azure vTPM, and does what an
//! Azure attester does with it — read the HCL report, write report data, wait for a fresh report,
//! quote the PCRs — printing the result as one line on standard output for the host test:
//!
//! `PEERPOD-VTPM-PROBE {"hcl_report": "<base64>", "tpm_quote": {...}}`
//!
//! The report data comes from the kernel command line (`peerpod.report_data=<hex>`), and an
//! initdata digest to measure into PCR 8 likewise (`peerpod.initdata_digest=<hex>`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use peerpod_tests::cvm::attester;
use peerpod_tpm::Tpm;
use serde_json::json;

fn arg(cmdline: &str, key: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

fn run() -> Result<String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("cannot read /proc/cmdline")?;
    let report_data = hex::decode(
        arg(&cmdline, "peerpod.report_data")
            .context("no peerpod.report_data= on the kernel command line")?,
    )
    .context("peerpod.report_data is not hex")?;
    let mut tpm = Tpm::open("device:/dev/tpmrm0").context("the guest has no /dev/tpmrm0")?;
    if let Some(digest) = arg(&cmdline, "peerpod.initdata_digest") {
        attester::extend_initdata(
            &mut tpm,
            &hex::decode(digest).context("peerpod.initdata_digest is not hex")?,
        )?;
    }
    // Platform detection reads the report first, as attesters do.
    attester::read_hcl_report(&mut tpm).context("cannot read the HCL report")?;
    attester::write_report_data(&mut tpm, &report_data)?;
    let hcl = attester::read_fresh_hcl_report(&mut tpm, &report_data, Duration::from_secs(20))?;
    let quote = attester::quote(&mut tpm, &report_data)?;
    Ok(json!({"hcl_report": STANDARD.encode(hcl), "tpm_quote": quote}).to_string())
}

fn main() -> ExitCode {
    match run() {
        Ok(line) => {
            println!("PEERPOD-VTPM-PROBE {line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("PEERPOD-VTPM-PROBE-ERROR {e:#}");
            ExitCode::FAILURE
        }
    }
}
