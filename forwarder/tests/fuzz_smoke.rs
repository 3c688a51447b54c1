//! The `forwarder_frames` fuzz target's entry point over seeds and thousands of deterministic
//! mutations of them, on every `cargo test` (coverage-guided fuzzing: `make fuzz`).
#![allow(clippy::unwrap_used)]

use peerpod_forwarder::fuzzing::frames;
use peerpod_protocols::kata::{agent, oci};
use peerpod_tests::mutate::{Rng, mutate};
use protobuf::Message as _;

fn frame(stream: u32, kind: u8, method: &str, payload: Vec<u8>) -> Vec<u8> {
    let mut r = ttrpc::Request::new();
    r.service = "grpc.AgentService".into();
    r.method = method.into();
    r.payload = payload;
    let body = r.write_to_bytes().unwrap();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(&[kind, 0]);
    out.extend_from_slice(&body);
    out
}

fn seeds() -> Vec<Vec<u8>> {
    let mut cc = agent::CreateContainerRequest::new();
    let mut spec = oci::Spec::new();
    let mut linux = oci::Linux::new();
    let mut ns = oci::LinuxNamespace::new();
    ns.Type = "network".into();
    ns.Path = "/proc/1/ns/net".into();
    linux.Namespaces.push(ns);
    spec.Linux = Some(linux).into();
    let mut m = oci::Mount::new();
    m.type_ = "bind".into();
    m.source = "/run/kata-containers/shared/containers/x".into();
    spec.Mounts.push(m);
    cc.OCI = Some(spec).into();
    let mut sb = agent::CreateSandboxRequest::new();
    sb.dns = vec!["nameserver 1.1.1.1".into()];
    let two = [
        frame(1, 1, "CreateSandbox", sb.write_to_bytes().unwrap()),
        frame(3, 1, "CreateContainer", cc.write_to_bytes().unwrap()),
        frame(5, 1, "StartContainer", vec![0x0A, 0x01, b'c']),
        frame(5, 3, "", Vec::new()),
    ]
    .concat();
    vec![
        two,
        frame(7, 1, "CreateContainer", vec![0xFF; 8]),
        br#"{"pod-network": {"tunnel-type": "vxlan", "podip": "10.0.0.1/24", "interface": "eth0", "worker-node-ip": "10.0.0.2/24", "vxlan-id": 1, "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1", "dev": "eth0"}]}}"#.to_vec(),
    ]
}

#[test]
fn forwarder_frames_survive_mutations() {
    let seeds = seeds();
    for seed in &seeds {
        frames(seed);
    }
    let mut rng = Rng(0x5eed_0f0d);
    for _ in 0..6000 {
        let seed = &seeds[rng.below(seeds.len())];
        frames(&mutate(&mut rng, seed, &seeds));
    }
}
