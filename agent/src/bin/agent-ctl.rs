//! `agent-ctl`: call any Kata agent RPC from the command line, with the request as JSON.
//!
//! The request JSON has the shape the agent policy sees (proto field names, `type_` for `type`,
//! enums as numbers); fields left out keep their defaults. The response is printed the same way.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use peerpod_protocols::json::{from_json, to_json};
use peerpod_protocols::kata::{agent, health};
use protobuf::reflect::{MethodDescriptor, ServiceDescriptor};

/// Call the Kata agent's RPCs: `agent-ctl call CreateContainer request.json`.
#[derive(Parser, Debug)]
#[command(name = "agent-ctl", version)]
struct Cli {
    /// The agent's address: unix://PATH, vsock://CID:PORT or tcp://HOST:PORT.
    #[arg(long, default_value = "unix:///run/kata-containers/agent.sock")]
    addr: String,

    /// Seconds to wait for an answer.
    #[arg(long, default_value_t = 30)]
    timeout: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the RPCs with their request types.
    List,
    /// Print a process's output (ReadStdout, or ReadStderr) as it comes, until it ends.
    Read {
        /// The container.
        container: String,
        /// The process (the container's init has the container's id or an empty one).
        #[arg(default_value = "")]
        exec_id: String,
        /// Read standard error instead of standard output.
        #[arg(long)]
        stderr: bool,
    },
    /// Call an RPC (AgentService or Health) with a JSON request (a file, `-` for stdin, or
    /// nothing for an empty request).
    Call {
        /// The RPC, e.g. CreateContainer, ExecProcess, GetGuestDetails, Check.
        method: String,
        /// The request as JSON.
        request: Option<PathBuf>,
    },
}

/// Copies a process's stream to standard output until the agent reports its end.
async fn read(
    addr: &str,
    timeout: u64,
    container: &str,
    exec_id: &str,
    stderr: bool,
) -> Result<ExitCode> {
    let client = ttrpc::r#async::Client::connect(addr)
        .await
        .with_context(|| format!("cannot connect to the agent at {addr}"))?;
    let client = peerpod_protocols::kata::agent_ttrpc::AgentServiceClient::new(client);
    let mut request = agent::ReadStreamRequest::new();
    request.container_id = container.to_owned();
    request.exec_id = exec_id.to_owned();
    request.len = 32 * 1024;
    let mut out = std::io::stdout().lock();
    loop {
        let ctx = ttrpc::context::with_timeout(
            i64::try_from(Duration::from_secs(timeout).as_nanos()).unwrap_or(i64::MAX),
        );
        let reply = if stderr {
            client.read_stderr(ctx, &request).await
        } else {
            client.read_stdout(ctx, &request).await
        };
        match reply {
            Ok(reply) if !reply.data.is_empty() => {
                out.write_all(&reply.data)?;
                out.flush()?;
            }
            // The end of the stream (or a denial, which reads as no data).
            _ => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// Prints a failed call's status: its code, then its message as the agent wrote it.
fn report(status: &ttrpc::Status) -> ExitCode {
    println!("{:?}: {}", status.code(), status.message());
    ExitCode::FAILURE
}

fn services() -> Vec<ServiceDescriptor> {
    let mut all: Vec<ServiceDescriptor> = agent::file_descriptor().services().collect();
    all.extend(health::file_descriptor().services());
    all
}

fn find(method: &str) -> Option<(ServiceDescriptor, MethodDescriptor)> {
    services().into_iter().find_map(|service| {
        let found = service.methods().find(|m| m.proto().name() == method)?;
        Some((service, found))
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agent-ctl: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let (method_name, request_path) = match cli.command {
        Command::List => {
            let mut out = std::io::stdout().lock();
            for service in services() {
                for method in service.methods() {
                    // A closed pipe (`| head`) just ends the listing.
                    let written = writeln!(
                        out,
                        "{:<32} {} -> {}",
                        method.proto().name(),
                        method.input_type().name(),
                        method.output_type().name()
                    );
                    if written.is_err() {
                        return Ok(ExitCode::SUCCESS);
                    }
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Read {
            container,
            exec_id,
            stderr,
        } => return read(&cli.addr, cli.timeout, &container, &exec_id, stderr).await,
        Command::Call { method, request } => (method, request),
    };
    let Some((service, method)) = find(&method_name) else {
        bail!("no RPC named {method_name:?}; `agent-ctl list` shows them");
    };
    let mut message = method.input_type().new_instance();
    if let Some(path) = request_path {
        let text = if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read standard input")?;
            text
        } else {
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).context("the request is not JSON")?;
        from_json(&json, &mut *message)
            .with_context(|| format!("the request does not fit {}", method.input_type().name()))?;
    }
    let payload = message
        .write_to_bytes_dyn()
        .context("cannot encode the request")?;

    let client = ttrpc::r#async::Client::connect(&cli.addr)
        .await
        .with_context(|| format!("cannot connect to the agent at {}", cli.addr))?;
    let mut request = ttrpc::Request::new();
    // Both services live in the proto package `grpc`.
    request.service = format!("grpc.{}", service.proto().name());
    request.method = method_name.clone();
    request.payload = payload;
    request.timeout_nano =
        i64::try_from(Duration::from_secs(cli.timeout).as_nanos()).unwrap_or(i64::MAX);
    let response = match client.request(request).await {
        Ok(response) if response.status().code() == ttrpc::Code::OK => response,
        Ok(response) => return Ok(report(response.status())),
        Err(ttrpc::Error::RpcStatus(status)) => return Ok(report(&status)),
        Err(e) => return Err(e).context("the call failed"),
    };
    let mut reply = method.output_type().new_instance();
    reply
        .merge_from_bytes_dyn(&response.payload)
        .context("cannot decode the response")?;
    println!("{}", serde_json::to_string_pretty(&to_json(&*reply))?);
    Ok(ExitCode::SUCCESS)
}
