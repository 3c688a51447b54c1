//! Helpers shared by the attestation agent's integration tests: a local KBS holding one secret
//! and the reference values of the simulated CVMs, an aa.toml for them, and a token consumer.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use attestation_agent::AttestationAgent;
use attestation_agent::attester::Sample;
use attestation_agent::config::{AaConfig, KbsSection};
use attestation_agent::kbs::KeyAlgorithm;
use peerpod_kbs_protocol::keys::TeeKeyPair;
use peerpod_tests::cvm::{CvmOptions, Flavour, SimulatedCvm};
use peerpod_tests::kbs::client::KbsClient;
use peerpod_tests::kbs::verifier::Verifier;
use peerpod_tests::kbs::{KbsOptions, RunningKbs};
use peerpod_tests::scratch::ScratchDir;
use serde_json::{Value, json};

pub(crate) const SECRET: &[u8] = b"resource for the pod";

pub(crate) fn initdata(alg: &str) -> String {
    format!(
        "version = \"0.1.0\"\nalgorithm = \"{alg}\"\n\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"http://kbs\"\n'''\n"
    )
}

/// A KBS holding [`SECRET`]: for `cvm` (its roots and launch measurement), or for the sample TEE.
pub(crate) fn kbs_options(cvm: Option<&SimulatedCvm>) -> KbsOptions {
    let mut options = match cvm {
        Some(cvm) => KbsOptions::for_cvm(cvm, None).expect("KBS options"),
        None => {
            let mut options = KbsOptions::new(Verifier::default());
            options
                .reference_values
                .insert("launch_digest".into(), json!(["abcde"]));
            options.reference_values.insert("svn".into(), json!(["1"]));
            options
        }
    };
    options
        .resources
        .insert("default/key/pod".into(), SECRET.to_vec());
    options
}

pub(crate) fn aa_config(kbs_url: &str, cvm: Option<&SimulatedCvm>) -> AaConfig {
    let mut c = AaConfig {
        kbs: Some(KbsSection {
            url: kbs_url.to_string(),
            cert: None,
            tee_key_algorithm: KeyAlgorithm::EcP256,
        }),
        allow_sample: cvm.is_none(),
        // The local KBS serves plain HTTP.
        insecure_http: true,
        kbs_request_timeout: Duration::from_secs(5),
        tsm_root: "/nonexistent-tsm".into(),
        ..AaConfig::default()
    };
    if let Some(cvm) = cvm {
        c.tpm = cvm.tpm_spec();
        c.imds_url = cvm.imds_url();
    }
    c
}

pub(crate) fn sample_aa(config: &AaConfig) -> AttestationAgent {
    AttestationAgent::with_attester(config, Arc::new(Sample::default()), None).expect("AA")
}

pub(crate) fn cvm(flavour: Flavour, name: &str) -> (ScratchDir, SimulatedCvm) {
    let dir = ScratchDir::new(name).expect("scratch");
    let cvm = SimulatedCvm::start(CvmOptions::new(flavour, dir.path())).expect("CVM");
    (dir, cvm)
}

/// Decodes GetToken's reply and fetches the resource the way a token consumer does: Bearer
/// token, JWE decrypted with the PEM key.
pub(crate) async fn use_token(kbs: &RunningKbs, reply: &[u8]) -> Vec<u8> {
    let v: Value = serde_json::from_slice(reply).expect("GetToken reply is JSON");
    let token = v["token"].as_str().expect("token");
    let key =
        TeeKeyPair::from_pem(v["tee_keypair"].as_str().expect("tee_keypair")).expect("PEM key");
    let client = KbsClient::with_key(&kbs.url(), peerpod_tests::http::client(), key);
    client
        .resource("default/key/pod", Some(token))
        .await
        .expect("resource with the token")
}
