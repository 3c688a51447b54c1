//! `confidential-data-hub`: serves the CDH's ttrpc services on its socket.
//!
//! `-c <cdh.toml>` as upstream. A command after the flags runs one operation and exits instead
//! of serving (for people and scripts): `resource <kbs:// URI>`, `unseal <sealed.…|->`,
//! `secure-mount -o key=value… <mount point>`, and `seal` to make sealed secrets.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use confidential_data_hub::Hub;
use confidential_data_hub::config::CdhConfig;
use confidential_data_hub::hub::{LAYER_COLLECTION_PERIOD, collect_layers_periodically};
use confidential_data_hub::sealed::make;
use confidential_data_hub::server::serve;

/// The confidential data hub of a peer-pod VM: KBS resources through the attestation agent,
/// sealed secrets, encrypted volumes.
#[derive(Parser, Debug)]
#[command(name = "confidential-data-hub", version)]
struct Cli {
    /// cdh.toml; without it, defaults and the KBS from AA_KBC_PARAMS or agent.aa_kbc_params.
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
    /// Log format: text, or json (one object per line).
    #[arg(long, default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a resource (kbs:///<repository>/<type>/<tag>).
    Resource {
        /// The URI.
        uri: String,
    },
    /// Print the secret a sealed secret names ("-": read it from standard input).
    Unseal {
        /// `sealed.…`, or `-`.
        secret: String,
    },
    /// Set up an encrypted block device (options as SecureMount's, e.g. -o devicePath=/dev/vdb
    /// -o sourceType=empty).
    SecureMount {
        /// `key=value` options.
        #[arg(short = 'o', long = "option")]
        options: Vec<String>,
        /// Where to mount it.
        mount_point: String,
    },
    /// Make a sealed secret signed with an EC P-256 key (PKCS#8 PEM file); prints it. With
    /// --print-public-jwk, prints the key's public JWK instead (what to store as the kid).
    Seal {
        /// The signing key.
        #[arg(long)]
        signing_key: PathBuf,
        /// The verification key's name: a kbs:// URI or a file name.
        #[arg(long, default_value = "")]
        kid: String,
        /// A vault secret naming this resource URI.
        #[arg(long, conflicts_with = "envelope_key_id")]
        vault: Option<String>,
        /// An envelope secret whose key-encryption key is this resource URI (with
        /// --envelope-kek-file and the plaintext on standard input).
        #[arg(long, requires = "envelope_kek_file")]
        envelope_key_id: Option<String>,
        /// The 32-byte key-encryption key (the resource's bytes).
        #[arg(long)]
        envelope_kek_file: Option<PathBuf>,
        /// Print the public JWK of --signing-key and exit.
        #[arg(long)]
        print_public_jwk: bool,
        /// Make a new signing key at --signing-key (mode 0600; refused if the file exists) and
        /// print its public JWK.
        #[arg(long)]
        generate: bool,
    },
}

fn generate(path: &PathBuf) -> Result<String> {
    use p256::pkcs8::EncodePrivateKey;
    use std::os::unix::fs::OpenOptionsExt;
    let key = make::generate_key()?;
    let pem = key
        .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("cannot encode the key: {e}"))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(pem.as_bytes())?;
    Ok(make::public_jwk(&key).to_string())
}

fn seal(
    signing_key: &PathBuf,
    kid: &str,
    vault: Option<String>,
    envelope: Option<(String, PathBuf)>,
    print_public_jwk: bool,
) -> Result<String> {
    use p256::pkcs8::DecodePrivateKey;
    let pem = zeroize::Zeroizing::new(
        std::fs::read_to_string(signing_key)
            .with_context(|| format!("cannot read {}", signing_key.display()))?,
    );
    let key = p256::ecdsa::SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{} is not a PKCS#8 P-256 key: {e}", signing_key.display()))?;
    if print_public_jwk {
        return Ok(make::public_jwk(&key).to_string());
    }
    if kid.is_empty() {
        bail!("--kid is required: the kbs:// URI or file name of the public JWK");
    }
    let payload = match (vault, envelope) {
        (Some(uri), None) => make::vault(&uri),
        (None, Some((key_id, kek_file))) => {
            let kek = zeroize::Zeroizing::new(std::fs::read(&kek_file)?);
            let kek: [u8; 32] = kek
                .as_slice()
                .try_into()
                .map_err(|_| anyhow::anyhow!("{} is not 32 bytes", kek_file.display()))?;
            let mut plaintext = zeroize::Zeroizing::new(Vec::new());
            std::io::stdin().read_to_end(&mut plaintext)?;
            make::envelope(&kek, &key_id, &plaintext)?
        }
        _ => bail!("give --vault <URI> or --envelope-key-id <URI> --envelope-kek-file <file>"),
    };
    Ok(make::seal(&payload, &key, kid))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Seal {
        signing_key,
        kid,
        vault,
        envelope_key_id,
        envelope_kek_file,
        print_public_jwk,
        generate: new_key,
    }) = &cli.command
    {
        if *new_key {
            println!("{}", generate(signing_key)?);
            return Ok(());
        }
        let envelope = envelope_key_id.clone().zip(envelope_kek_file.clone());
        println!(
            "{}",
            seal(signing_key, kid, vault.clone(), envelope, *print_public_jwk)?
        );
        return Ok(());
    }
    let mut config =
        CdhConfig::load(cli.config.as_deref()).context("cannot load the configuration")?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok();
    config.apply_kbc_params(
        std::env::var("AA_KBC_PARAMS").ok().as_deref(),
        cmdline.as_deref(),
    );
    // Upstream's override of [image] authenticated_registry_credentials_uri.
    config.image = config
        .image
        .with_credentials_env(std::env::var(peerpod_image::config::CREDENTIALS_ENV).ok());
    peerpod_logging::init(&config.log_level, cli.log_format.parse()?)?;
    for w in &config.warnings {
        tracing::warn!("cdh.toml: {w}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let socket = config.socket.clone();
        let hub = Hub::new(config).context("cannot start the confidential data hub")?;
        let mut out = std::io::stdout();
        match cli.command {
            None => {
                hub.init()
                    .await
                    .context("cannot write the configured credentials")?;
                let hub = Arc::new(hub);
                // The kata-agent unmounts removed containers' root filesystems itself: their
                // layers are found and removed on this timer (and at every PullImage).
                let collector = tokio::spawn(collect_layers_periodically(
                    hub.clone(),
                    LAYER_COLLECTION_PERIOD,
                ));
                let served =
                    serve(&socket, hub, peerpod_protocols::socket::shutdown_signal()).await;
                collector.abort();
                served?;
            }
            Some(Command::Resource { uri }) => out.write_all(&hub.get_resource(&uri).await?)?,
            Some(Command::Unseal { secret }) => {
                let secret = if secret == "-" {
                    let mut s = String::new();
                    std::io::stdin().read_to_string(&mut s)?;
                    s
                } else {
                    secret
                };
                out.write_all(&hub.unseal(secret.trim().as_bytes()).await?)?;
            }
            Some(Command::SecureMount {
                options,
                mount_point,
            }) => {
                let mut map = HashMap::new();
                for o in options {
                    let (k, v) = o
                        .split_once('=')
                        .with_context(|| format!("option {o:?} is not key=value"))?;
                    map.insert(k.to_string(), v.to_string());
                }
                let path = hub.secure_mount("block-device", &map, &mount_point).await?;
                writeln!(out, "{path}")?;
            }
            Some(Command::Seal { .. }) => unreachable!("handled before start-up"),
        }
        out.flush()?;
        Ok(())
    })
}
