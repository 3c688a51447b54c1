//! `simulated-cvm`: runs a simulated Azure confidential VM (vTPM behind a simulated paravisor,
//! IMDS) on the host, and attests from it to a KBS by hand.
//!
//! ```sh
//! simulated-cvm run --flavour snp --dir /tmp/cvm        # prints the vTPM socket and IMDS URL,
//!                                                       # (--generation genoa: a Genoa part)
//!                                                       # writes /tmp/cvm/kbs.toml for test-kbs
//! test-kbs --config /tmp/cvm/kbs.toml
//! simulated-cvm attest --dir /tmp/cvm --kbs http://127.0.0.1:8080 --resource default/key/demo
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use peerpod_policy::initdata::InitData;
use peerpod_tee::hcl::HclReport;
use peerpod_tests::cvm::attester;
use peerpod_tests::cvm::{CvmOptions, Flavour, SimulatedCvm};
use peerpod_tests::kbs::KbsOptions;
use peerpod_tests::kbs::client::KbsClient;
use peerpod_tpm::Tpm;
use serde_json::Value;

/// A simulated Azure confidential VM for tests and demos: swtpm as the vTPM behind a simulated
/// paravisor (the HCL report at NV 0x01400001), a simulated SEV-SNP chip or TDX module with
/// test certificate chains, and the instance metadata service.
#[derive(Parser, Debug)]
#[command(name = "simulated-cvm", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FlavourArg {
    /// Azure SEV-SNP (az-snp-vtpm).
    Snp,
    /// Azure TDX (az-tdx-vtpm).
    Tdx,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum GenerationArg {
    /// AMD EPYC 3rd generation.
    Milan,
    /// AMD EPYC 4th generation.
    Genoa,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the CVM and keep it running until interrupted (Ctrl-C or SIGTERM).
    Run {
        /// Which CVM.
        #[arg(long, value_enum, default_value = "snp")]
        flavour: FlavourArg,
        /// The SEV-SNP processor generation: the CPUID fields of its reports and its AMD chain.
        #[arg(long, value_enum, default_value = "milan")]
        generation: GenerationArg,
        /// State directory: vTPM state and sockets, trust anchors, reference values, and a
        /// `kbs.toml` for `test-kbs`.
        #[arg(long)]
        dir: PathBuf,
        /// Serve the vTPM to a QEMU guest (prints the QEMU arguments) instead of on a socket.
        #[arg(long)]
        for_vm: bool,
        /// Add the PCR 8 value of this initdata document to the reference values, so the KBS
        /// only affirms a guest that booted with it.
        #[arg(long)]
        initdata: Option<PathBuf>,
    },
    /// Attest from the running CVM to a KBS and print a resource (what a guest's attestation
    /// agent does, by hand).
    Attest {
        /// The running CVM's state directory.
        #[arg(long)]
        dir: PathBuf,
        /// The KBS URL.
        #[arg(long)]
        kbs: String,
        /// The resource to fetch, `<repository>/<type>/<tag>`.
        #[arg(long)]
        resource: String,
        /// An initdata document to measure into PCR 8 and send.
        #[arg(long)]
        initdata: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run {
            flavour,
            generation,
            dir,
            for_vm,
            initdata,
        } => rt.block_on(run(flavour, generation, &dir, for_vm, initdata.as_deref())),
        Command::Attest {
            dir,
            kbs,
            resource,
            initdata,
        } => rt.block_on(attest(&dir, &kbs, &resource, initdata.as_deref())),
    }
}

async fn run(
    flavour: FlavourArg,
    generation: GenerationArg,
    dir: &Path,
    for_vm: bool,
    initdata: Option<&Path>,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let flavour = match flavour {
        FlavourArg::Snp => Flavour::Snp,
        FlavourArg::Tdx => Flavour::Tdx,
    };
    let mut options = CvmOptions::new(flavour, dir);
    options.snp.generation = match generation {
        GenerationArg::Milan => peerpod_tee::snp::Generation::Milan,
        GenerationArg::Genoa => peerpod_tee::snp::Generation::Genoa,
    };
    let cvm = if for_vm {
        SimulatedCvm::start_for_vm(options)
    } else {
        SimulatedCvm::start(options)
    }
    .context("cannot start the simulated CVM")?;
    let anchors = cvm.trust_anchors()?;
    let mut trust = String::new();
    if let Some(pem) = &anchors.amd_chain_pem {
        std::fs::write(dir.join("amd-chain.pem"), pem)?;
        trust.push_str("amd_chain = \"amd-chain.pem\"\n");
    }
    if let Some(pem) = &anchors.intel_root_pem {
        std::fs::write(dir.join("intel-root.pem"), pem)?;
        trust.push_str("intel_roots = [\"intel-root.pem\"]\n");
    }
    let doc = match initdata {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?)
        }
        None => None,
    };
    let refs = KbsOptions::for_cvm(&cvm, doc.as_deref())
        .map_err(|e| anyhow::anyhow!("cannot work out the reference values: {e}"))?
        .reference_values;
    std::fs::write(
        dir.join("reference-values.json"),
        serde_json::to_string_pretty(&refs)?,
    )?;
    std::fs::write(
        dir.join("kbs.toml"),
        format!(
            "# Written by simulated-cvm for test-kbs: trusts this CVM's test roots.\n\
             listen = \"127.0.0.1:8080\"\n\n[admin]\nmode = \"insecure\"\n\n[trust]\n{trust}\n\
             [policies]\nreference_values = \"reference-values.json\"\n\n\
             [[resources]]\npath = \"default/key/demo\"\nvalue = \"a secret released only to an attested TEE\"\n"
        ),
    )?;
    let mut ready = format!(
        "PEERPOD_CVM_TEE={}\nPEERPOD_IMDS={}\n",
        flavour.tee(),
        cvm.imds_url()
    );
    if for_vm {
        ready.push_str(&format!(
            "PEERPOD_QEMU_ARGS=\"{}\"\n",
            cvm.qemu_args().join(" ")
        ));
    } else {
        ready.push_str(&format!("PEERPOD_VTPM={}\n", cvm.tpm_spec()));
    }
    std::fs::write(dir.join("ready.env"), &ready)?;
    print!("{ready}");
    println!(
        "simulated-cvm: running; KBS configuration in {}; Ctrl-C stops",
        dir.join("kbs.toml").display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let _ = std::fs::remove_file(dir.join("ready.env"));
    Ok(())
}

fn ready_value(dir: &Path, key: &str) -> Result<String> {
    let text = std::fs::read_to_string(dir.join("ready.env")).with_context(|| {
        format!(
            "no running CVM in {} (start `simulated-cvm run` first)",
            dir.display()
        )
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .with_context(|| format!("{key} missing from ready.env"))
}

async fn attest(dir: &Path, kbs: &str, resource: &str, initdata: Option<&Path>) -> Result<()> {
    let tee = ready_value(dir, "PEERPOD_CVM_TEE")?;
    let imds = ready_value(dir, "PEERPOD_IMDS")?;
    let tpm_spec = ready_value(dir, "PEERPOD_VTPM")
        .context("the CVM runs for a VM; attest from inside the guest")?;
    let initdata = match initdata {
        Some(p) => Some(
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        ),
        None => None,
    };
    let client = KbsClient::new(kbs, peerpod_tests::http::client());
    let challenge = client.auth(&tee).await.context("KBS /auth")?;
    eprintln!("simulated-cvm: got a challenge from {kbs}");
    let report_data = client.report_data(&challenge.nonce);
    let (hcl, quote) = {
        let mut tpm = Tpm::open(&tpm_spec)?;
        if let Some(doc) = &initdata {
            let digest = InitData::parse(doc.as_bytes())?.digest();
            attester::extend_initdata(&mut tpm, digest.as_bytes())?;
        }
        attester::write_report_data(&mut tpm, &report_data)?;
        let hcl = attester::read_fresh_hcl_report(&mut tpm, &report_data, Duration::from_secs(10))?;
        (hcl, attester::quote(&mut tpm, &report_data)?)
    };
    eprintln!("simulated-cvm: HCL report refreshed with our report data; vTPM quote made");
    let evidence: Value = match tee.as_str() {
        "az-snp-vtpm" => serde_json::to_value(attester::snp_evidence(
            quote,
            hcl,
            attester::fetch_vcek(&imds).await?,
        ))?,
        "az-tdx-vtpm" => {
            let td_report = HclReport::parse(&hcl)?.hw_report;
            serde_json::to_value(attester::tdx_evidence(
                quote,
                hcl,
                attester::fetch_td_quote(&imds, &td_report).await?,
            ))?
        }
        other => bail!("unknown TEE {other}"),
    };
    client
        .attest(&client.attestation(&challenge.nonce, evidence, initdata.as_deref()))
        .await
        .context("KBS /attest")?;
    eprintln!("simulated-cvm: attested as {tee}");
    let secret = client
        .resource(resource, None)
        .await
        .context("KBS /resource")?;
    println!("{}", String::from_utf8_lossy(&secret));
    Ok(())
}
