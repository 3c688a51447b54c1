//! The full workload, in one booted pod VM, driven as the kata shim and cloud-api-adaptor do:
//! a guest-pulled container from an htpasswd registry on the host (auth.json in the user data),
//! exec allowed and denied by the initdata's policy, a KBS secret through api-server-rest on
//! 127.0.0.1:8006 after attestation with PCR 8 bound to the initdata, a sealed environment
//! value, encrypted scratch space, DestroySandbox.
//!
//! The host side: Debian's `docker-registry` with htpasswd (image fixtures of `image/tests`),
//! the test KBS of `peerpod-tests` (HTTP) trusting the simulated CVM behind the guest's vTPM and
//! expecting the initdata's PCR 8, and that CVM's IMDS. The guest reaches all three at 10.0.2.2
//! (QEMU user networking's host address, which is the host's loopback).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine as _;
use peerpod_podvm::client::{ShimClient, ctx};
use peerpod_podvm::{PodPki, PodVm, PodVmOptions, Timeline, UserData, memory};
use peerpod_protocols::kata::agent;
use peerpod_tests::cvm::{CvmOptions, Flavour, SimulatedCvm};
use peerpod_tests::kbs::client::{KbsAdmin, admin_keypair};
use peerpod_tests::kbs::{AdminAuth, KbsOptions, RunningKbs};
use peerpod_tests::requests::{self, Stream};
use serde_json::json;

use super::image_fixtures::{Registry, RegistryOptions, Scratch, Step, build_image, tools_present};
use super::{ONE_VM, image, run_dir, runtime, wait_serving};

/// QEMU user networking: the host, as the guest sees it.
const HOST: &str = "10.0.2.2";
const SECRET: &str = "kbs-secret-for-the-workload";
const SEALED_SECRET: &str = "db-password-unsealed-in-the-guest";
const MOTD: &str = "pulled in the pod VM from the host's registry";

/// The KBS's resource policy: the registry configuration (no secret) to any TEE whose
/// hardware and firmware appraise as affirming; secrets only when the configuration (the
/// initdata's PCR 8) does too.
const RESOURCE_POLICY: &str = r#"package policy

import rego.v1

default allow := false

vector := input.submods.cpu0["ear.trustworthiness-vector"]

allow if {
	data["resource-path"] == "default/registry/conf"
	vector.hardware < 32
	vector.executables < 32
}

allow if {
	every claim in ["hardware", "executables", "configuration"] {
		vector[claim] < 32
	}
}
"#;

/// The initdata policy: everything is allowed (allow-all's defaults) except ExecProcess, which
/// may run only `cat /etc/motd`.
fn policy() -> String {
    let allow_all = include_str!("../../../policy/examples/allow-all.rego");
    let rules: String = allow_all
        .lines()
        .filter(|l| l.starts_with("default ") && !l.contains("ExecProcessRequest"))
        .map(|l| format!("{l}\n"))
        .collect();
    format!(
        "package agent_policy\n\nimport rego.v1\n\n{rules}default ExecProcessRequest := false\n\n\
         ExecProcessRequest if input.process.Args == [\"/bin/cat\", \"/etc/motd\"]\n"
    )
}

fn free_port() -> u16 {
    super::image_fixtures::free_port()
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// Initdata as a pod carries it: the attestation agent's and the CDH's KBS (plain HTTP on the
/// host, so `insecure_http`), the CVM's IMDS, image pulls with the user data's auth.json and a
/// registries.conf from the KBS, the scratch space as the image work directory, sealed secrets
/// in upstream's unsigned form, and the agent policy.
fn initdata(kbs: &str, imds: &str) -> String {
    format!(
        "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\
         \"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"{kbs}\"\n\n\
         [peerpod]\nimds_url = \"{imds}\"\ninsecure_http = true\n'''\n\
         \"cdh.toml\" = '''\nsocket = \"unix:///run/confidential-containers/cdh.sock\"\n\
         skip_sealed_secret_verification = true\n\n\
         [kbc]\nname = \"cc_kbc\"\nurl = \"{kbs}\"\n\n\
         [image]\nwork_dir = \"/run/kata-containers/image\"\n\
         authenticated_registry_credentials_uri = \"file:///run/peerpod/auth.json\"\n\
         registry_configuration_uri = \"kbs:///default/registry/conf\"\n\n\
         [peerpod]\ninsecure_http = true\ninitdata = \"/run/peerpod/initdata.toml\"\n'''\n\
         \"policy.rego\" = '''\n{}'''\n",
        policy()
    )
}

/// apf.json with a pod network, as cloud-api-adaptor sends it: the front door makes the pod
/// namespace's interface (a VXLAN tunnel to the worker, here the host) and brings its `lo` up,
/// which api-server-rest's 127.0.0.1:8006 needs.
fn apf_json(pki: &PodPki) -> String {
    let mut apf: serde_json::Value =
        serde_json::from_str(&pki.apf_json()).expect("apf.json is JSON");
    apf["pod-network"] = json!({
        "podip": "10.244.1.5/24", "interface": "eth0", "worker-node-ip": format!("{HOST}/24"),
        "tunnel-type": "vxlan", "vxlan-port": 4789, "vxlan-id": 555001, "mtu": 1450,
        "routes": [], "neighbors": []
    });
    apf["pod-namespace"] = json!("/run/netns/podns");
    apf.to_string()
}

/// Upstream's unsigned sealed secret: `sealed.fakejwsheader.<payload>.fakesignature`, the
/// payload a vault secret naming a KBS resource.
fn sealed(resource: &str) -> String {
    let payload = json!({"version": "0.1.0", "type": "vault", "name": resource,
        "provider": "kbs", "provider_settings": {}, "annotations": {}});
    format!(
        "sealed.fakejwsheader.{}.fakesignature",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload.to_string())
    )
}

/// CreateContainer as the shim sends it for a guest-pulled image: the `image_guest_pull`
/// storage, the root at its mount point, the pod's network namespace.
fn pulled_container(
    id: &str,
    kind: &str,
    image: &str,
    args: &[&str],
    env: &[String],
) -> agent::CreateContainerRequest {
    let rootfs = format!("/run/kata-containers/{id}/rootfs");
    let value = json!({
        "container_id": id,
        "exec_id": id,
        "storages": [{
            "driver": "image_guest_pull",
            "driver_options": [format!(
                "image_guest_pull={{\"metadata\":{{\"io.kubernetes.cri.container-type\":\"{kind}\"}}}}"
            )],
            "source": image,
            "fstype": "overlay",
            "mount_point": rootfs,
        }],
        "OCI": {
            "Version": "1.1.0",
            "Hostname": "workload",
            "Root": {"Path": rootfs, "Readonly": false},
            "Process": {
                "Args": args,
                "Env": env,
                "Cwd": "/",
                "User": {"UID": 0, "GID": 0},
                "NoNewPrivileges": true,
                "Capabilities": {
                    "Bounding": ["CAP_KILL"], "Effective": ["CAP_KILL"], "Permitted": ["CAP_KILL"]
                }
            },
            "Mounts": [
                {"destination": "/proc", "type_": "proc", "source": "proc",
                 "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/dev", "type_": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "mode=755", "size=65536k"]}
            ],
            "Linux": {
                "Namespaces": [
                    {"Type": "pid"}, {"Type": "mount"}, {"Type": "ipc"}, {"Type": "uts"},
                    {"Type": "network", "Path": "/run/netns/podns"}
                ],
                "MaskedPaths": ["/proc/kcore"],
                "ReadonlyPaths": ["/proc/sys"],
                "Resources": {"Pids": {"Limit": 64}}
            }
        }
    });
    let mut message = agent::CreateContainerRequest::new();
    peerpod_protocols::json::from_json(&value, &mut message).expect("request fits the protos");
    message
}

/// Reads a running process's stdout until `marker` is seen (or `timeout`).
async fn read_until(
    shim: &ShimClient,
    id: &str,
    marker: &str,
    timeout: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains(marker) {
        if Instant::now() > deadline {
            return Err(format!(
                "no {marker:?} in {timeout:?}: {:?}",
                String::from_utf8_lossy(&out)
            ));
        }
        let mut request = agent::ReadStreamRequest::new();
        request.container_id = id.into();
        request.exec_id = id.into();
        request.len = 4096;
        match shim
            .agent
            .read_stdout(ctx(Duration::from_secs(60)), &request)
            .await
        {
            Ok(reply) if !reply.data.is_empty() => out.extend(reply.data),
            Ok(_) => return Err(format!("stdout ended: {:?}", String::from_utf8_lossy(&out))),
            Err(e) => {
                return Err(format!(
                    "ReadStdout: {e}; so far {:?}",
                    String::from_utf8_lossy(&out)
                ));
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn line_after<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_default()
}

/// Whether the file at `path` contains `needle` anywhere (read in chunks, overlapping by the
/// needle's length).
fn file_contains(path: &std::path::Path, needle: &[u8]) -> std::io::Result<bool> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut window = vec![0u8; 8 << 20];
    let keep = needle.len().saturating_sub(1);
    let mut filled = 0;
    loop {
        let n = file.read(&mut window[filled..])?;
        if n == 0 {
            return Ok(false);
        }
        filled += n;
        if window[..filled].windows(needle.len()).any(|w| w == needle) {
            return Ok(true);
        }
        if filled > keep {
            window.copy_within(filled - keep..filled, 0);
            filled = keep;
        }
    }
}

#[test]
fn a_guest_pulled_workload_runs_under_the_initdata_policy_with_kbs_secrets_and_encrypted_scratch() {
    let Some(image) = image() else { return };
    if !tools_present() {
        return;
    }
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let dir = run_dir("workload");
    std::fs::create_dir_all(&dir).expect("run directory");

    // The registry: htpasswd, an image built from busybox-static with a known file.
    let password = format!("registry-password-{}-{}", std::process::id(), free_port());
    let registry = Registry::start(RegistryOptions {
        auth: Some(("podvm".into(), password.clone())),
        tls: false,
    })
    .expect("docker-registry");
    let scratch = Scratch::new("podvm-workload");
    let layout = scratch.path().join("layout");
    let motd = format!("{MOTD}\n");
    build_image(
        &layout,
        "v1",
        &[
            vec![Step::Busybox],
            vec![Step::Write("/etc/motd", motd.as_bytes())],
        ],
    )
    .expect("image");
    registry
        .push(&layout, "v1", "apps/workload", "v1", "oci")
        .expect("push");
    let registry_port = port_of(&registry.addr);
    let guest_registry = format!("{HOST}:{registry_port}");
    let auth_json = json!({"auths": {guest_registry.clone(): {"auth":
        base64::engine::general_purpose::STANDARD.encode(format!("podvm:{password}"))}}})
    .to_string();
    let registries_conf =
        format!("[[registry]]\nlocation = \"{guest_registry}\"\ninsecure = true\n");

    // The CVM behind the guest's vTPM, and a KBS that trusts its roots and checks PCR 8
    // against the reference value init_data (an affirming configuration needs a match, and
    // the resource policy releases secrets only with an affirming configuration).
    let cvm = SimulatedCvm::start_for_vm(CvmOptions::new(Flavour::Snp, dir.join("cvm")))
        .expect("simulated CVM");
    let kbs_port = free_port();
    let kbs_url = format!("http://{HOST}:{kbs_port}");
    let imds_url = format!("http://{HOST}:{}", port_of(&cvm.imds_url()));
    let doc = initdata(&kbs_url, &imds_url);
    // The KBS first expects the PCR 8 of another pod's initdata (one more line: the digest is
    // over the document's bytes): no secret may reach this guest until the reference is this
    // initdata's. The admin (an Ed25519 key, as Trustee's) fixes it later in the test.
    let other_doc = format!("{doc}# another pod\n");
    let mut options = KbsOptions::for_cvm(&cvm, Some(other_doc.as_bytes())).expect("KBS options");
    let (admin_key, admin_public) = admin_keypair().expect("admin key");
    options.admin = AdminAuth::Ed25519PublicKey(admin_public);
    for (path, value) in [
        ("default/key/app", SECRET.as_bytes().to_vec()),
        ("default/key/sealed", SEALED_SECRET.as_bytes().to_vec()),
        ("default/registry/conf", registries_conf.into_bytes()),
    ] {
        options.resources.insert(path.into(), value);
    }
    options.resource_policy = RESOURCE_POLICY.into();
    let stats = Arc::clone(&options.stats);
    let kbs = RunningKbs::start(options, &format!("127.0.0.1:{kbs_port}"), None).expect("KBS");

    let pki = PodPki::generate().expect("certificates");
    let user_data = UserData::new()
        .file("/run/peerpod/apf.json", apf_json(&pki))
        .file("/run/peerpod/auth.json", &auth_json)
        .file("/run/peerpod/scratch-space.marker", "")
        .initdata(&doc)
        .to_cloud_config();
    let mut vm =
        PodVm::boot_with_cvm(&PodVmOptions::new(image, user_data, &dir), cvm).expect("boot");
    let started = vm.started();
    let rt = runtime();
    let (shim, answered) = wait_serving(&mut vm, &pki, &rt);
    // Host-side events, added to the console's markers at the end.
    let mut marks: Vec<(&str, Duration)> = Vec::new();
    let tail = |vm: &PodVm| vm.console().tail(80);
    // What the demo shows (scripts/demo.sh prints the `=== pod VM` blocks).
    let mut report = String::new();

    let before = stats.attestations.load(Ordering::Relaxed);

    let sandbox = requests::sandbox("podvm-workload", "podvm-workload", memory::SHM)
        .expect("CreateSandbox request");
    rt.block_on(
        shim.agent
            .create_sandbox(ctx(Duration::from_secs(120)), &sandbox),
    )
    .unwrap_or_else(|e| panic!("CreateSandbox: {e}\n{}", tail(&vm)));
    marks.push(("CreateSandbox answered", started.elapsed()));

    // The pause container: the guest's /pause_bundle stands in for the image.
    let pause = pulled_container(
        "pause",
        "sandbox",
        "registry.k8s.io/pause:3.10",
        &["/pause"],
        &["PATH=/bin".into()],
    );
    rt.block_on(async {
        shim.agent
            .create_container(ctx(Duration::from_secs(120)), &pause)
            .await?;
        shim.agent
            .start_container(ctx(Duration::from_secs(60)), &requests::start("pause"))
            .await
    })
    .unwrap_or_else(|e| panic!("pause container: {e}\n{}", tail(&vm)));

    // The workload: pulled in the guest with the user data's credentials; prints the file from
    // its image, the unsealed env value, the KBS secret from api-server-rest, writes a known
    // plaintext to its writable layer and syncs, shows where that layer lives, then stays.
    let token = format!(
        "peerpod-scratch-plaintext-{}-{}",
        std::process::id(),
        free_port()
    );
    let script = "cat /etc/motd; echo \"sealed=$DB_PASSWORD\"; \
        for i in 1 2 3 4 5 6 7 8 9 10; do \
          s=$(/bin/busybox wget -q -O - http://127.0.0.1:8006/cdh/resource/default/key/app) && break; \
          /bin/busybox sleep 2; done; echo \"kbs=$s\"; \
        i=0; while [ $i -lt 4096 ]; do echo \"$TOKEN\"; i=$((i+1)); done > /scratch-plaintext; \
        /bin/busybox sync; \
        echo \"upper=$(/bin/busybox grep -o 'upperdir=[^,]*' /proc/self/mountinfo | /bin/busybox head -n 1)\"; \
        echo READY; exec /bin/busybox sleep 3600";
    let image_ref = format!("{guest_registry}/apps/workload:v1");
    let workload_request = |id: &str| {
        pulled_container(
            id,
            "container",
            &image_ref,
            &["/bin/sh", "-c", script],
            &[
                "PATH=/bin".into(),
                format!("TOKEN={token}"),
                format!("DB_PASSWORD={}", sealed("kbs:///default/key/sealed")),
            ],
        )
    };
    // While the KBS expects another initdata's PCR 8, the guest attests and gets the registry
    // configuration (its pull works), but no secret: the workload, whose env holds a sealed
    // value, is refused, and a container reading the KBS secret from 127.0.0.1:8006 gets none.
    let refusal = match rt.block_on(shim.agent.create_container(
        ctx(Duration::from_secs(300)),
        &workload_request("workload-refused"),
    )) {
        Err(ttrpc::Error::RpcStatus(s)) => s.message().to_string(),
        other => panic!(
            "a container with a sealed value was created while the KBS expected another \
             initdata: {other:?}\n{}",
            tail(&vm)
        ),
    };
    assert!(
        refusal.contains("DB_PASSWORD") && refusal.contains("PolicyDeny"),
        "not refused for the sealed value by the KBS's resource policy: {refusal}"
    );
    let early = pulled_container(
        "early-reader",
        "container",
        &image_ref,
        &[
            "/bin/sh",
            "-c",
            "s=$(/bin/busybox wget -q -O - http://127.0.0.1:8006/cdh/resource/default/key/app 2>&1); \
             echo \"rc=$? kbs=$s\"",
        ],
        &["PATH=/bin".into()],
    );
    let early_out = rt
        .block_on(async {
            let long = ctx(Duration::from_secs(300));
            shim.agent.create_container(long.clone(), &early).await?;
            shim.agent
                .start_container(long, &requests::start("early-reader"))
                .await?;
            let out =
                requests::read_all(&shim.agent, "early-reader", "early-reader", Stream::Stdout)
                    .await;
            requests::wait(&shim.agent, "early-reader", "early-reader").await?;
            Ok::<_, ttrpc::Error>(out)
        })
        .unwrap_or_else(|e| panic!("the early reader: {e}\n{}", tail(&vm)));
    report.push_str(&format!(
        "=== pod VM: the KBS expects another initdata's PCR 8\n\
         CreateContainer with the sealed value refused: {refusal}\n\
         a container asking 127.0.0.1:8006 for the secret: {early_out}"
    ));
    assert!(
        !early_out.contains(SECRET)
            && early_out.starts_with("rc=")
            && !early_out.starts_with("rc=0 "),
        "the secret reached a container before the KBS had this initdata's PCR 8: {early_out}"
    );
    // api-server-rest answered (an HTTP error), so the refusal is the KBS's, not a closed port.
    assert!(
        early_out.contains("server returned error: HTTP/1.1 4"),
        "api-server-rest did not answer the early reader: {early_out}"
    );
    assert!(
        stats.attestations.load(Ordering::Relaxed) >= 1,
        "the guest never attested"
    );
    let _ = rt.block_on(shim.agent.remove_container(
        ctx(Duration::from_secs(60)),
        &requests::remove("early-reader"),
    ));
    // The admin registers this initdata's PCR 8; the CDH's next fetch attests again.
    let pcr8 = peerpod_policy::initdata::InitData::parse(doc.as_bytes())
        .expect("initdata")
        .digest()
        .azure_vtpm_pcr8();
    rt.block_on(async {
        KbsAdmin::new(&kbs.url(), Some(&admin_key))?
            .set_reference_values(&json!({"init_data": [hex(&pcr8)]}))
            .await
            .map_err(|e| e.detail())
    })
    .expect("register the initdata's PCR 8");

    let t = Instant::now();
    rt.block_on(
        shim.agent
            .create_container(ctx(Duration::from_secs(300)), &workload_request("workload")),
    )
    .unwrap_or_else(|e| {
        panic!(
            "CreateContainer of the guest-pulled workload: {e}\n{}",
            tail(&vm)
        )
    });
    marks.push((
        "workload created (CreateContainer answered)",
        started.elapsed(),
    ));
    eprintln!("CreateContainer of the workload: {:?}", t.elapsed());
    rt.block_on(
        shim.agent
            .start_container(ctx(Duration::from_secs(60)), &requests::start("workload")),
    )
    .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", tail(&vm)));
    let out = rt
        .block_on(read_until(
            &shim,
            "workload",
            "READY",
            Duration::from_secs(180),
        ))
        .unwrap_or_else(|e| panic!("workload output: {e}\n{}", tail(&vm)));
    marks.push(("container output read, secret fetched", started.elapsed()));
    report.push_str(&format!("=== pod VM: the workload's output\n{out}"));
    assert!(out.starts_with(&motd), "the pulled image's file: {out}");
    assert_eq!(
        line_after(&out, "sealed="),
        SEALED_SECRET,
        "the sealed env value was not unsealed: {out}"
    );
    assert_eq!(
        line_after(&out, "kbs="),
        SECRET,
        "the KBS secret through 127.0.0.1:8006: {out}"
    );
    // The writable layer is in the image work directory, the scratch space's mount point.
    assert!(
        line_after(&out, "upper=").starts_with("upperdir=/run/kata-containers/image/"),
        "the container's writable layer is not on the scratch space: {out}"
    );

    // The KBS attested the guest (the release needs the initdata's PCR 8).
    let attested = stats.attestations.load(Ordering::Relaxed);
    eprintln!("attestations: {before} when 15150 first answered, {attested} after the workload");
    assert!(attested >= 1, "no attestation reached the KBS");
    assert!(
        stats.resources.load(Ordering::Relaxed) >= 3,
        "registries.conf, the sealed value and the secret come from the KBS"
    );

    // Exec: the policy's one command runs, anything else is refused by the policy.
    let allowed =
        requests::exec("workload", "exec-motd", &["/bin/cat", "/etc/motd"]).expect("exec request");
    rt.block_on(
        shim.agent
            .exec_process(ctx(Duration::from_secs(60)), &allowed),
    )
    .unwrap_or_else(|e| panic!("the allowed exec: {e}\n{}", tail(&vm)));
    let exec_out = rt.block_on(requests::read_all(
        &shim.agent,
        "workload",
        "exec-motd",
        Stream::Stdout,
    ));
    let exec_status = rt.block_on(requests::wait(&shim.agent, "workload", "exec-motd"));
    assert_eq!(exec_out, motd, "the allowed exec's output");
    assert_eq!(exec_status.ok(), Some(0));
    let denied = requests::exec(
        "workload",
        "exec-shell",
        &["/bin/sh", "-c", "cat /proc/1/environ"],
    )
    .expect("exec request");
    match rt.block_on(
        shim.agent
            .exec_process(ctx(Duration::from_secs(60)), &denied),
    ) {
        Err(ttrpc::Error::RpcStatus(s)) => {
            assert_eq!(s.code(), ttrpc::Code::PERMISSION_DENIED, "{s:?}");
            assert!(
                s.message().contains("ExecProcessRequest"),
                "the denial names the request: {}",
                s.message()
            );
            report.push_str(&format!(
                "=== pod VM: exec under the initdata policy\nallowed: cat /etc/motd -> {}denied: sh -c ... -> {:?} {}\n",
                exec_out,
                s.code(),
                s.message()
            ));
        }
        other => panic!("an exec the policy denies was not refused: {other:?}"),
    }

    // The scratch space is LUKS: the guest mounted it from dm-crypt, and the plaintext the
    // container wrote (and synced) is nowhere in the disk file on the host.
    let (mounts, _, _) = rt
        .block_on(memory::guest_probe(
            &shim,
            "podvm-mounts-probe",
            "cat /guestproc/1/mounts",
        ))
        .unwrap_or_else(|e| panic!("mounts probe: {e}\n{}", tail(&vm)));
    let scratch_mount = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/run/kata-containers/image"))
        .unwrap_or_else(|| panic!("no scratch space mounted: {mounts}"));
    assert!(
        scratch_mount.starts_with("/dev/mapper/"),
        "the scratch space is not a device-mapper (LUKS) device: {scratch_mount}"
    );
    // The scratch space has dm-integrity, formatted without the initial wipe: nothing (udev's
    // probe, mkfs.ext4, the file system, the layers pulled onto it) read a sector it had not
    // written. The kernel logs such a read on the console (loglevel 4 shows errors).
    for error in ["INTEGRITY AEAD ERROR", "Buffer I/O error", "EXT4-fs error"] {
        assert!(
            vm.console().find(error).is_none(),
            "the guest kernel logged {error:?}:\n{}",
            tail(&vm)
        );
    }
    // udev did not probe the LUKS2 mapper (58-podvm-luks-noscan.rules): its database entry
    // for the device has DM_NOSCAN and no ID_FS_* keys from blkid.
    let (udev, udev_err, _) = rt
        .block_on(memory::guest_probe(
            &shim,
            "podvm-udev-probe",
            "r=/guestproc/1/root; d=$(readlink $r/dev/mapper/encrypted_scratch); \
             n=$(cat $r/sys/block/${d##*/}/dev); echo \"DEVICE ${d##*/} $n\"; \
             cat $r/run/udev/data/b$n",
        ))
        .unwrap_or_else(|e| panic!("udev probe: {e}\n{}", tail(&vm)));
    assert!(
        udev.contains("DEVICE dm-") && udev.contains("E:DM_UUID=CRYPT-LUKS2-"),
        "no udev entry for the scratch mapper: {udev} {udev_err}"
    );
    assert!(
        udev.contains("E:DM_NOSCAN=1") && !udev.contains("E:ID_FS_"),
        "udev probed the scratch mapper: {udev}"
    );
    let disk = vm.disk();
    assert!(
        !file_contains(&disk, token.as_bytes()).expect("read the disk file"),
        "the container's plaintext is on the host's disk file {}",
        disk.display()
    );

    // Memory after the workload.
    let guest = rt
        .block_on(memory::guest_memory(&shim))
        .unwrap_or_else(|e| panic!("memory probe: {e}\n{}", tail(&vm)));
    report.push_str(&format!(
        "=== pod VM: guest memory after the workload\n{}{}",
        guest.summary(),
        guest.table()
    ));

    rt.block_on(shim.agent.destroy_sandbox(
        ctx(Duration::from_secs(120)),
        &agent::DestroySandboxRequest::new(),
    ))
    .unwrap_or_else(|e| panic!("DestroySandbox: {e}\n{}", tail(&vm)));
    marks.push(("DestroySandbox answered", started.elapsed()));
    let mut timeline = Timeline::from_console(vm.console(), Some(answered - started));
    for (label, at) in marks {
        timeline.mark(label, at);
    }
    // No secret in the console (the journal's copy of every service's stderr).
    for secret in [SECRET, SEALED_SECRET, password.as_str()] {
        assert!(
            vm.console().find(secret).is_none(),
            "a secret reached the console"
        );
    }
    report.push_str(&format!(
        "=== pod VM: timeline (TCG, no KVM), seconds since QEMU start\n{}",
        timeline.render()
    ));
    eprintln!("{report}=== end");
    vm.stop();
    drop(registry);
    if std::env::var_os("PEERPOD_PODVM_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
