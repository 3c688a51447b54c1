//! A cheap stand-in for the cargo-fuzz targets in `fuzz/`, run by `cargo test`: the same entry
//! points over seed inputs and thousands of deterministic mutations of them. Coverage-guided
//! fuzzing (`make fuzz`) goes much further; this keeps the targets honest on every change.

use peerpod_policy::fuzzing;
use peerpod_policy::initdata::encode_annotation;
use peerpod_tests::mutate::{Rng, mutate};

fn initdata_seeds() -> Vec<Vec<u8>> {
    let doc =
        b"version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"aa.toml\" = '''\nx = 1\n'''\n";
    vec![
        doc.to_vec(),
        encode_annotation(doc).into_bytes(),
        b"version = \"0.1.0\"\nalgorithm = \"sha-384\"\n".to_vec(),
        encode_annotation(&vec![b'a'; 100_000]).into_bytes(),
        b"H4sIAAAAAAAA/w==".to_vec(),
        Vec::new(),
    ]
}

fn policy_seeds() -> Vec<Vec<u8>> {
    [
        "\u{0}{\"container_id\": \"c1\", \"OCI\": {\"Process\": {\"Args\": [\"/bin/sh\"]}}}",
        "\u{1}{\"container_id\": \"c1\", \"process\": {\"Args\": [\"/bin/ls\"]}}",
        "\u{0}{\"container_id\": \"c2\", \"OCI\": {\"Process\": {\"Args\": [\"/bin/db\"]}}}",
        "\u{1}{\"container_id\": \"c2\", \"process\": {\"Args\": []}}",
        "\u{2}{\"routes\": null}",
        "\u{3}{}",
        "\u{1}[1, 2, {\"a\": null}]",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

#[test]
fn initdata_decoders_survive_mutations() {
    let seeds = initdata_seeds();
    let mut rng = Rng(0x5eed_0001);
    for seed in &seeds {
        fuzzing::initdata(seed);
    }
    for _ in 0..4000 {
        let seed = &seeds[rng.below(seeds.len())];
        fuzzing::initdata(&mutate(&mut rng, seed, &seeds));
    }
}

#[test]
fn policy_engine_survives_mutations_and_evaluators_agree() {
    let seeds = policy_seeds();
    let mut rng = Rng(0x5eed_0002);
    for seed in &seeds {
        fuzzing::policy_input(seed);
    }
    for _ in 0..1500 {
        let seed = &seeds[rng.below(seeds.len())];
        fuzzing::policy_input(&mutate(&mut rng, seed, &seeds));
    }
}

/// Policy texts: the example policies, and one with a constant document large enough to be
/// read as JSON at load.
fn policy_text_seeds() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/examples");
    let mut seeds: Vec<Vec<u8>> = [
        "allow-all.rego",
        "allow-all-except-exec.rego",
        "stateful.rego",
    ]
    .iter()
    .map(|name| std::fs::read(dir.join(name)).expect("example policy"))
    .collect();
    let items: Vec<String> = (0..400)
        .map(|i| format!("{{\"id\": {i}, \"s\": \"v{i}\"}}"))
        .collect();
    seeds.push(
        format!(
            "package agent_policy\nimport rego.v1\nconsts := {{\"items\": [{}]}}\n\
             default ExecProcessRequest := false\n\
             ExecProcessRequest if consts.items[input.n].id == input.n\n",
            items.join(",\n")
        )
        .into_bytes(),
    );
    seeds
}

#[test]
fn policy_texts_load_alike_in_the_engine_and_the_reference() {
    let seeds = policy_text_seeds();
    let mut rng = Rng(0x5eed_0003);
    for seed in &seeds {
        fuzzing::policy_text(seed);
    }
    for _ in 0..300 {
        let seed = &seeds[rng.below(seeds.len())];
        fuzzing::policy_text(&mutate(&mut rng, seed, &seeds));
    }
}

fn tpm_seeds() -> Vec<Vec<u8>> {
    use peerpod_tpm::frame::{CommandBuilder, ResponseBuilder, cc};
    use peerpod_tpm::types::{PcrSelection, Public, alg};
    use peerpod_tpm::wire::Writer;
    let mut nv_read = CommandBuilder::new(cc::NV_READ)
        .handle(0x4000_0001)
        .handle(0x0140_0001)
        .password(b"");
    nv_read.params().u16(1024).u16(0);
    let mut attest = Writer::new();
    attest.u32(0xFF54_4347).u16(0x8018);
    let _ = attest.tpm2b("signer", &[0; 34]);
    let _ = attest.tpm2b("extra", &[7; 48]);
    attest.u64(1).u32(2).u32(3).u8(1).u64(4);
    let _ = PcrSelection::all(alg::SHA256).marshal(&mut attest);
    let _ = attest.tpm2b("digest", &[9; 32]);
    let mut public = Writer::new();
    let _ = public.tpm2b(
        "public",
        &Public::ek_rsa_template().marshal().expect("marshal"),
    );
    vec![
        nv_read.build().expect("command"),
        ResponseBuilder::success(&[0, 4, 1, 2, 3, 4], 1).expect("response"),
        ResponseBuilder::error(0x18B),
        attest.into_vec(),
        public.into_vec(),
    ]
}

fn tee_seeds() -> Vec<Vec<u8>> {
    use peerpod_tee::hcl::{HclReport, ReportType, RsaJwk, RuntimeClaims};
    use peerpod_tests::cvm::platform::{SnpChip, TdxPlatform};
    let chip = SnpChip::new(Default::default()).expect("chip");
    let snp = chip.report([1; 64]).to_bytes().to_vec();
    let claims = RuntimeClaims {
        keys: vec![RsaJwk::new("HCLAkPub", "sign", &[0xC1; 256], 65537)],
        vm_configuration: Default::default(),
        user_data: Some(hex::encode([2u8; 64])),
    };
    let hcl = HclReport {
        report_type: ReportType::Snp,
        hw_report: snp.clone(),
        var_data: claims.to_json(),
    }
    .to_bytes(2600)
    .expect("HCL");
    let tdx = TdxPlatform::new(Default::default()).expect("platform");
    let quote = tdx
        .quote(&tdx.td_report([3; 64]).to_bytes())
        .expect("quote");
    let evidence = serde_json::to_vec(&peerpod_tests::cvm::attester::snp_evidence(
        peerpod_tee::evidence::TpmQuote {
            signature: vec![1; 8],
            message: vec![2; 8],
            pcrs: vec![vec![0; 32]; 2],
        },
        hcl[..64].to_vec(),
        vec![3; 8],
    ))
    .expect("json");
    vec![hcl, snp, quote, evidence]
}

fn kbs_seeds() -> Vec<Vec<u8>> {
    use peerpod_kbs_protocol::jwe;
    use peerpod_kbs_protocol::keys::TeeKeyPair;
    let key = TeeKeyPair::generate();
    let pubkey = serde_json::to_string(&key.public_key()).expect("json");
    let sealed =
        serde_json::to_vec(&jwe::seal(&key.public_key(), b"secret").expect("seal")).expect("json");
    vec![
        br#"{"version":"0.4.0","tee":"az-snp-vtpm","extra-params":{"supported-hash-algorithms":["sha384"]}}"#.to_vec(),
        br#"{"nonce":"bm9uY2U=","extra-params":""}"#.to_vec(),
        format!(r#"{{"init-data":{{"format":"toml","body":"x"}},"runtime-data":{{"nonce":"n","tee-pubkey":{pubkey}}},"tee-evidence":{{"primary_evidence":{{}},"additional_evidence":""}}}}"#).into_bytes(),
        br#"{"type":"https://github.com/confidential-containers/kbs/errors/PolicyDeny","detail":"no"}"#.to_vec(),
        b"default/key/pod-secret".to_vec(),
        pubkey.into_bytes(),
        br#"{"kty":"RSA","alg":"RSA-OAEP-256","n":"AQAB","e":"AQAB"}"#.to_vec(),
        sealed,
    ]
}

fn survive(seeds: &[Vec<u8>], seed: u64, rounds: usize, target: impl Fn(&[u8])) {
    let mut rng = Rng(seed);
    for s in seeds {
        target(s);
    }
    for _ in 0..rounds {
        let s = &seeds[rng.below(seeds.len())];
        target(&mutate(&mut rng, s, seeds));
    }
}

#[test]
fn tpm_parsers_survive_mutations() {
    survive(
        &tpm_seeds(),
        0x5eed_0003,
        20_000,
        peerpod_tpm::fuzzing::tpm_bytes,
    );
}

#[test]
fn evidence_parsers_survive_mutations() {
    survive(
        &tee_seeds(),
        0x5eed_0004,
        5_000,
        peerpod_tee::fuzzing::evidence_bytes,
    );
}

#[test]
fn kbs_message_parsers_survive_mutations() {
    let seeds = kbs_seeds();
    survive(
        &seeds,
        0x5eed_0005,
        5_000,
        peerpod_kbs_protocol::fuzzing::messages,
    );
    survive(
        &seeds,
        0x5eed_0006,
        1_500,
        peerpod_kbs_protocol::fuzzing::jwe_bytes,
    );
}
