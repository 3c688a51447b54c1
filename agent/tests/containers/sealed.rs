//! Sealed environment values unsealed through the real CDH and attestation agent.

use std::path::{Path, PathBuf};

use ttrpc::Code;

use crate::common::{ctx, status_of};
use crate::support::*;
use peerpod_protocols::kata::agent;

/// The attestation agent and the confidential data hub in this process, each on its real
/// socket in `dir`, attesting a simulated Azure SNP CVM to a local KBS that holds `resources`.
struct GuestComponents {
    _cvm: peerpod_tests::cvm::SimulatedCvm,
    _kbs: peerpod_tests::kbs::RunningKbs,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    cdh_socket: PathBuf,
}

impl GuestComponents {
    async fn start(dir: &Path, resources: &[(&str, Vec<u8>)]) -> Self {
        use std::sync::Arc;
        let cvm = peerpod_tests::cvm::SimulatedCvm::start(peerpod_tests::cvm::CvmOptions::new(
            peerpod_tests::cvm::Flavour::Snp,
            dir,
        ))
        .expect("CVM");
        let mut options = peerpod_tests::kbs::KbsOptions::for_cvm(&cvm, None).expect("KBS");
        for (path, value) in resources {
            options.resources.insert((*path).into(), value.clone());
        }
        let kbs = peerpod_tests::kbs::RunningKbs::start(options, "127.0.0.1:0", None).expect("KBS");
        let aa_config = attestation_agent::AaConfig {
            kbs: Some(attestation_agent::config::KbsSection {
                url: kbs.url(),
                cert: None,
                tee_key_algorithm: Default::default(),
            }),
            tpm: cvm.tpm_spec(),
            imds_url: cvm.imds_url(),
            tsm_root: "/nonexistent-tsm".into(),
            allow_sample: false,
            // The local KBS speaks plain HTTP.
            insecure_http: true,
            ..Default::default()
        };
        let aa = Arc::new(attestation_agent::AttestationAgent::new(&aa_config, None).expect("AA"));
        let aa_socket = dir.join("aa.sock");
        let cdh_socket = dir.join("cdh.sock");
        let cdh_config = confidential_data_hub::CdhConfig::parse(&format!(
            "[kbc]\nname = \"cc_kbc\"\nurl = \"{}\"\n[aa]\naa_socket = \"unix://{}\"\n[peerpod]\ninsecure_http = true\nsealed_secret_verification_keys = [\"kbs:///default/sign/jwk\"]\n",
            kbs.url(),
            aa_socket.display()
        ))
        .expect("cdh.toml");
        let hub = Arc::new(confidential_data_hub::Hub::new(cdh_config).expect("CDH"));
        let mut stops = Vec::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        stops.push(tx);
        let addr = format!("unix://{}", aa_socket.display());
        tokio::spawn(async move {
            let _ = attestation_agent::server::serve(&addr, aa, async {
                let _ = rx.await;
            })
            .await;
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        stops.push(tx);
        let addr = format!("unix://{}", cdh_socket.display());
        tokio::spawn(async move {
            let _ = confidential_data_hub::server::serve(&addr, hub, async {
                let _ = rx.await;
            })
            .await;
        });
        for socket in [&aa_socket, &cdh_socket] {
            let started = std::time::Instant::now();
            while !socket.exists() {
                assert!(
                    started.elapsed().as_secs() < 10,
                    "{} missing",
                    socket.display()
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        Self {
            _cvm: cvm,
            _kbs: kbs,
            stops,
            cdh_socket,
        }
    }
}

impl Drop for GuestComponents {
    fn drop(&mut self) {
        for tx in self.stops.drain(..) {
            let _ = tx.send(());
        }
    }
}

fn push_env(request: &mut agent::CreateContainerRequest, entry: String) {
    let process = request
        .OCI
        .mut_or_insert_default()
        .Process
        .mut_or_insert_default();
    process.Env.push(entry);
}

#[tokio::test(flavor = "multi_thread")]
async fn sealed_environment_values_are_unsealed_through_the_cdh() {
    use confidential_data_hub::sealed::make;
    const SECRET: &str = "s3cr3t-db-password-from-the-kbs";
    let signer = make::generate_key().expect("key");
    let world_dir = std::env::temp_dir().join(format!("agent-sealed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&world_dir);
    std::fs::create_dir_all(&world_dir).expect("dir");
    let world = GuestComponents::start(
        &world_dir,
        &[
            ("default/key/db", SECRET.as_bytes().to_vec()),
            (
                "default/sign/jwk",
                make::public_jwk(&signer).to_string().into_bytes(),
            ),
        ],
    )
    .await;
    let (agent, client, rootfs) = pod_with(
        "sealed-env",
        &format!(
            "{}cdh_socket = 'unix://{}'\n",
            policy("policy/examples/allow-all.rego"),
            world.cdh_socket.display()
        ),
    )
    .await;

    let sealed = make::seal(
        &make::vault("kbs:///default/key/db"),
        &signer,
        "kbs:///default/sign/jwk",
    );
    let mut request = container_request(
        "app",
        &rootfs,
        &["/bin/sh", "-c", "echo \"$DB_PASSWORD|$GREETING\""],
    );
    push_env(&mut request, format!("DB_PASSWORD={sealed}"));
    create_and_start(&client, &request).await;
    let out = read_all(&client, "app", "app", false).await;
    assert_eq!(out.trim(), format!("{SECRET}|hello"));
    assert_eq!(wait(&client, "app", "app").await, 0);

    // A value sealed by someone else is refused, naming the variable; nothing starts.
    let intruder = make::generate_key().expect("key");
    let forged = make::seal(
        &make::vault("kbs:///default/key/db"),
        &intruder,
        "kbs:///default/sign/jwk",
    );
    let mut request = container_request("forged", &rootfs, &["/bin/true"]);
    push_env(&mut request, format!("API_TOKEN={forged}"));
    let (code, message) = status_of(client.create_container(ctx(), &request).await);
    assert_eq!(code, Code::FAILED_PRECONDITION, "{message}");
    assert!(
        message.contains("API_TOKEN") && message.contains("signature"),
        "{message}"
    );
    assert!(
        !agent.log().contains(SECRET),
        "the secret leaked into the agent's log"
    );
    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .expect("destroy");
    drop(world);
    let _ = std::fs::remove_dir_all(&world_dir);
}
