//! `initdata`: encode, decode, digest, check and evaluate initdata documents.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use peerpod_policy::AgentPolicy;
use peerpod_policy::initdata::{
    DEFAULT_DECODE_LIMIT, Digest, InitData, Platform, Severity, decode_annotation,
};

/// Work with initdata: the TOML document that carries policy.rego, aa.toml and cdh.toml into a
/// peer-pod VM through the `io.katacontainers.config.hypervisor.cc_init_data` annotation.
///
/// FILE arguments may be `-` for standard input. Commands that read a document accept it either
/// as TOML or in its annotation form (base64 of gzip).
#[derive(Parser, Debug)]
#[command(name = "initdata", version)]
struct Cli {
    /// Largest decompressed document accepted from an annotation, in bytes.
    #[arg(long, global = true, default_value_t = DEFAULT_DECODE_LIMIT)]
    max_size: usize,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the annotation form (base64 of gzip, one line) of an initdata TOML file.
    Encode {
        /// The initdata TOML document.
        file: PathBuf,
    },
    /// Print the TOML document inside an annotation.
    Decode {
        /// A file holding the annotation text (`-` for standard input).
        file: PathBuf,
    },
    /// Print the digest, or the value a platform measures: what you register in Trustee.
    Digest {
        /// The initdata document (TOML or annotation).
        file: PathBuf,
        /// Print the value this platform measures instead of the plain digest.
        #[arg(long, value_enum)]
        platform: Option<PlatformArg>,
    },
    /// Check a document: TOML of aa.toml and cdh.toml, the policy compiles, size fits Azure.
    Check {
        /// The initdata document (TOML or annotation).
        file: PathBuf,
    },
    /// Decide one agent request with the document's policy.
    Eval {
        /// The initdata document (TOML or annotation).
        file: PathBuf,
        /// The policy entrypoint, e.g. CreateContainerRequest or ExecProcessRequest.
        entrypoint: String,
        /// The request as JSON, in the shape the agent gives the policy (`-` for stdin).
        request: PathBuf,
        /// Print every line the policy printed, not only the last ones.
        #[arg(long)]
        verbose: bool,
    },
    /// Decide a sequence of requests in order on one engine, so policy state carries over.
    ///
    /// REQUESTS is a JSON array of `{"kind": EntryPoint, "request": {...}}` objects, or with
    /// `"file": "NAME.json"` (relative to REQUESTS) instead of an inline request; an optional
    /// `"allowed"` is checked against the decision and `"description"` is shown.
    Replay {
        /// The initdata document (TOML or annotation).
        file: PathBuf,
        /// The JSON array of requests (`-` for stdin).
        requests: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PlatformArg {
    /// Azure confidential VMs (SNP or TDX): PCR 8 of the vTPM's SHA-256 bank.
    AzureVtpm,
    /// Bare SEV-SNP: HOSTDATA (32 bytes).
    Snp,
    /// Bare TDX: MRCONFIGID (48 bytes).
    Tdx,
}

impl From<PlatformArg> for Platform {
    fn from(arg: PlatformArg) -> Self {
        match arg {
            PlatformArg::AzureVtpm => Self::AzureVtpm,
            PlatformArg::Snp => Self::Snp,
            PlatformArg::Tdx => Self::Tdx,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("initdata: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let limit = cli.max_size;
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Encode { file } => {
            let raw = read_input(&file)?;
            let doc = InitData::parse(&raw)
                .with_context(|| format!("{} is not a valid initdata document", file.display()))?;
            writeln!(out, "{}", doc.to_annotation())?;
        }
        Command::Decode { file } => {
            let text = read_text(&file)?;
            let raw = decode_annotation(&text, limit)
                .with_context(|| format!("cannot decode {}", file.display()))?;
            InitData::parse(&raw).with_context(|| {
                format!(
                    "{} decodes, but not to a valid initdata document",
                    file.display()
                )
            })?;
            out.write_all(&raw)?;
        }
        Command::Digest { file, platform } => {
            let doc = load(&file, limit)?;
            let digest: Digest = doc.digest();
            match platform {
                None => writeln!(out, "{}", digest.to_hex())?,
                Some(p) => writeln!(out, "{}", hex::encode(digest.for_platform(p.into())))?,
            }
        }
        Command::Check { file } => {
            let doc = load(&file, limit)?;
            let report = doc.check();
            for finding in &report.findings {
                writeln!(out, "{}: {}", finding.severity, finding.message)?;
            }
            let errors = report
                .findings
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .count();
            if errors > 0 {
                writeln!(out, "{}: {errors} error(s)", file.display())?;
                return Ok(ExitCode::FAILURE);
            }
            writeln!(
                out,
                "{}: ok ({} algorithm, {} data key(s))",
                file.display(),
                doc.algorithm(),
                doc.data().len()
            )?;
        }
        Command::Eval {
            file,
            entrypoint,
            request,
            verbose,
        } => {
            let doc = load(&file, limit)?;
            let policy = load_policy(&doc, &file)?;
            let input = read_text(&request)?;
            let decision = policy.decide_json(&entrypoint, &input);
            if verbose {
                for line in decision.prints() {
                    writeln!(out, "{line}")?;
                }
            }
            if decision.is_allowed() {
                writeln!(out, "allow: {}: {}", entrypoint, decision.reason())?;
                return Ok(ExitCode::SUCCESS);
            }
            writeln!(out, "deny: {}", decision.denial_message())?;
            return Ok(ExitCode::FAILURE);
        }
        Command::Replay { file, requests } => {
            let doc = load(&file, limit)?;
            let policy = load_policy(&doc, &file)?;
            let text = read_text(&requests)?;
            let cases: Vec<serde_json::Value> = serde_json::from_str(&text).with_context(|| {
                format!("{} is not a JSON array of requests", requests.display())
            })?;
            let mut mismatches = 0;
            for (i, case) in cases.iter().enumerate() {
                let Some(kind) = case.get("kind").and_then(|k| k.as_str()) else {
                    bail!(
                        "request {i} in {} has no \"kind\" string",
                        requests.display()
                    );
                };
                let request = match case.get("file").and_then(|f| f.as_str()) {
                    Some(name) => {
                        let base = requests.parent().unwrap_or(Path::new("."));
                        let path = base.join(name);
                        let text = read_text(&path)?;
                        serde_json::from_str(&text)
                            .with_context(|| format!("{} is not JSON", path.display()))?
                    }
                    None => case.get("request").cloned().unwrap_or_default(),
                };
                let decision = policy.decide(kind, &request);
                let verdict = if decision.is_allowed() {
                    "allow"
                } else {
                    "deny"
                };
                let expected = case.get("allowed").and_then(|a| a.as_bool());
                let mark = match expected {
                    Some(e) if e != decision.is_allowed() => {
                        mismatches += 1;
                        "  MISMATCH"
                    }
                    _ => "",
                };
                let description = case
                    .get("description")
                    .and_then(|d| d.as_str())
                    .unwrap_or("");
                writeln!(out, "[{i:2}] {verdict:5} {kind:<24} {description}{mark}")?;
                if !decision.is_allowed() {
                    for line in decision.reason().lines() {
                        writeln!(out, "        {line}")?;
                    }
                }
            }
            if mismatches > 0 {
                writeln!(
                    out,
                    "{mismatches} decision(s) differ from the expected ones"
                )?;
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Compiles the document's policy.
fn load_policy(doc: &InitData, file: &Path) -> Result<AgentPolicy> {
    let Some(text) = doc.policy() else {
        bail!(
            "{} has no data.\"policy.rego\"; add the agent policy there",
            file.display()
        );
    };
    AgentPolicy::load(text).context("the document's policy.rego")
}

/// Reads a document given either as TOML or as annotation text.
fn load(path: &Path, limit: usize) -> Result<InitData> {
    let raw = read_input(path)?;
    let looks_like_annotation = raw.iter().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\n' | b'\r' | b' ')
    }) && raw.starts_with(b"H4sI");
    if looks_like_annotation {
        let text = String::from_utf8_lossy(&raw);
        let decoded = decode_annotation(&text, limit)
            .with_context(|| format!("cannot decode the annotation in {}", path.display()))?;
        return InitData::parse(&decoded).with_context(|| {
            format!(
                "{} decodes, but not to a valid initdata document",
                path.display()
            )
        });
    }
    InitData::parse(&raw)
        .with_context(|| format!("{} is not a valid initdata document", path.display()))
}

fn read_input(path: &Path) -> Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read standard input")?;
        return Ok(buf);
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn read_text(path: &Path) -> Result<String> {
    let raw = read_input(path)?;
    String::from_utf8(raw).with_context(|| format!("{} is not UTF-8 text", path.display()))
}
