#!/usr/bin/env bash
# `make demo`: the bundle's main job on the embedded sample, end to end.
#
# Today: check the sample initdata, show what goes into the pod annotation and what to register
# in Trustee, decide a container's life against the policy it carries, run the agent under it,
# have the attestation agent attest a simulated Azure CVM to a local KBS and fetch a secret, then
# run the guest components together: a container whose sealed env value the agent unseals
# through the confidential data hub, and which fetches a secret from api-server-rest. The finale
# boots the pod VM image (`make podvm`) under QEMU and drives it over 15150 as the kata shim does
# (skipped, with the reason, without QEMU and the image tools).
set -euo pipefail
cd "$(dirname "$0")/.."

sample=policy/examples/initdata.toml
sequence=policy/examples/requests/sequence.json

echo "== building the initdata tool"
cargo build --quiet -p peerpod-policy --bin initdata
initdata=target/debug/initdata

heading() { printf '\n== %s\n' "$*"; }

heading "1. check the sample initdata ($sample)"
"$initdata" check "$sample"

heading "2. the pod annotation io.katacontainers.config.hypervisor.cc_init_data"
annotation=$("$initdata" encode "$sample")
echo "${annotation:0:96}..."
echo "(${#annotation} bytes of base64, one line; Azure's user-data cap is 65536;"
echo " print it whole with: target/debug/initdata encode $sample)"

heading "3. digests and the values to register in Trustee"
printf '%-38s %s\n' "initdata digest (sha256):" "$("$initdata" digest "$sample")"
pcr8=$("$initdata" digest --platform azure-vtpm "$sample")
printf '%-38s %s\n' "Azure vTPM PCR 8 (SNP and TDX CVMs):" "$pcr8"
printf '%-38s %s\n' "SEV-SNP HOSTDATA:" "$("$initdata" digest --platform snp "$sample")"
printf '%-38s %s\n' "TDX MRCONFIGID:" "$("$initdata" digest --platform tdx "$sample")"
echo
echo "Trustee reference value for Azure (RVPS sample format), and the policy line that checks it:"
cat <<JSON
  {"pcr08_initdata": ["$pcr8"]}
  input["az-snp-vtpm"].tpm.pcr08 in query_reference_value("pcr08_initdata")
JSON
echo "The annotation decodes back to the same document:"
if echo "$annotation" | "$initdata" decode - | cmp -s - "$sample"; then echo "  yes"; else echo "  NO"; exit 1; fi

heading "4. a container's life, decided by the sample's policy (state carries over)"
"$initdata" replay "$sample" "$sequence"

heading "5. the kata-agent, serving under the sample initdata's policy"
cargo build --quiet -p kata-agent --bins
work=$(mktemp -d /tmp/peerpod-demo.XXXXXX)
sock="$work/agent.sock"
cat > "$work/agent.toml" <<TOML
server_addr = "unix://$sock"
initdata_file = "$PWD/$sample"
log_level = "info"
TOML
# In a peer-pod VM the agent runs in the pod's network namespace, not the VM's own; a new one
# stands for it here (the pod's network sysctls are refused in a host's namespace).
netns=()
if [[ $(id -u) -eq 0 ]]; then netns=(unshare --net --); fi
"${netns[@]}" target/debug/kata-agent --config "$work/agent.toml" --log-format text \
    --state-dir "$work/state" --copy-root "$work/shared" --cgroup-parent "/peerpod-demo-$$" \
    2> "$work/agent.log" &
agent_pid=$!
# What the EXIT trap stops and removes. Processes may be gone already (a kata agent exits after
# DestroySandbox), so no step of the clean-up may fail: under `set -e` a failing `kill` or `wait`
# would end the trap before the rest, and make the script's status its own.
pids=("$agent_pid")
leftovers=("$work")
cleanup() {
    local status=$?
    set +e
    kill -TERM "${pids[@]}" 2>/dev/null
    wait "${pids[@]}" 2>/dev/null
    rm -rf "${leftovers[@]}"
    exit "$status"
}
trap cleanup EXIT
ctl() { target/debug/agent-ctl --addr "unix://$sock" call "$@"; }
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.05; done
echo "\$ agent-ctl call Check                      # Health: never gated"
ctl Check
echo
echo "\$ agent-ctl call GetGuestDetails            # allowed by the sample policy"
# sed, not head: head would stop reading, and agent-ctl fail on the closed pipe (set -o pipefail).
ctl GetGuestDetails | sed -n 1,8p
echo
echo "\$ agent-ctl call ExecProcess exec-shell.json  # a shell in the web container: denied"
ctl ExecProcess policy/examples/requests/exec-shell.json | cut -c1-220 || true
echo
echo "\$ agent-ctl call CreateContainer create-web-privileged.json  # extra capabilities: denied"
ctl CreateContainer policy/examples/requests/create-web-privileged.json | cut -c1-220 || true
echo

heading "6. a container of the sample pod, run by the agent under that policy"
if [[ $(id -u) -ne 0 ]]; then
    echo "(skipped: running containers needs root for namespaces, mounts and cgroups; try: sudo make demo)"
else
    # The sample policy's "hello" container has its root filesystem baked into the pod VM image
    # (here: a static busybox under /run/peerpod-demo), so it needs no image pull.
    demo_root=/run/peerpod-demo/busybox
    mkdir -p "$demo_root"/{bin,proc,sys,dev,tmp}
    cp /bin/busybox "$demo_root/bin/busybox"
    for applet in sh echo id sleep cat; do ln -sf busybox "$demo_root/bin/$applet"; done
    req=policy/examples/requests
    hello=5e110c0ffee0c0de5e110c0ffee0c0de5e110c0ffee0c0de5e110c0ffee0c0de
    echo "\$ agent-ctl call CreateSandbox create-sandbox.json"
    ctl CreateSandbox $req/create-sandbox.json
    echo "\$ agent-ctl call CreateContainer create-hello.json   # allowed: matches the policy's hello container"
    ctl CreateContainer $req/create-hello.json
    echo '{"container_id": "'$hello'"}' | ctl StartContainer - >/dev/null
    echo "\$ agent-ctl read <hello>                              # its output"
    timeout 2 target/debug/agent-ctl --addr "unix://$sock" read $hello || true
    echo "\$ agent-ctl call ExecProcess exec-hello-status.json   # allowed: the policy's probe command"
    ctl ExecProcess $req/exec-hello-status.json
    target/debug/agent-ctl --addr "unix://$sock" read $hello exec-hello-status | grep -E "^(Name|Uid|CapEff|NoNewPrivs|Seccomp):"
    echo "\$ agent-ctl call ExecProcess exec-hello-shell.json    # a shell: denied"
    ctl ExecProcess $req/exec-hello-shell.json || true
    echo '{"container_id": "'$hello'", "timeout": 10}' | ctl RemoveContainer - >/dev/null
    ctl DestroySandbox >/dev/null
    rm -rf /run/peerpod-demo "/run/kata-containers/$hello"
fi

heading "7. attestation: a simulated Azure SEV-SNP CVM proves itself to a local KBS"
if ! command -v swtpm >/dev/null 2>&1; then
    echo "(skipped: the simulated vTPM needs swtpm; install it with: make deps)"
else
    cargo build --quiet -p peerpod-tests --bin simulated-cvm --bin test-kbs
    cargo build --quiet -p attestation-agent --bin attestation-agent
    cargo build --quiet -p confidential-data-hub --bins
    cvm_dir="$work/cvm"
    # The KBS affirms only a guest whose PCR 8 holds the sample initdata.
    target/debug/simulated-cvm run --flavour snp --dir "$cvm_dir" --initdata "$sample" > "$work/cvm.log" 2>&1 &
    cvm_pid=$!
    for _ in $(seq 200); do [[ -f $cvm_dir/ready.env ]] && break; sleep 0.05; done
    # For step 8: a secret owner's signing key; its public JWK and the database password go into
    # the KBS next to the demo key.
    target/debug/confidential-data-hub seal --signing-key "$work/signer.pem" --generate > "$work/signer.jwk"
    printf 'correct horse battery staple' > "$work/db-password"
    cat >> "$cvm_dir/kbs.toml" <<TOML

[[resources]]
path = "default/sign/demo-signer"
file = "$work/signer.jwk"

[[resources]]
path = "default/key/db-password"
file = "$work/db-password"
TOML
    port=$((20000 + RANDOM % 20000))
    target/debug/test-kbs --config "$cvm_dir/kbs.toml" --listen "127.0.0.1:$port" > "$work/kbs.log" 2>&1 &
    kbs_pid=$!
    pids+=("$cvm_pid" "$kbs_pid")
    for _ in $(seq 200); do grep -q serving "$work/kbs.log" 2>/dev/null && break; sleep 0.05; done
    cat "$cvm_dir/ready.env"
    cat "$work/kbs.log"
    # The pod VM's aa.toml; [peerpod] points the agent at the simulated vTPM and IMDS instead of
    # /dev/tpmrm0 and 169.254.169.254.
    source "$cvm_dir/ready.env"
    cat > "$work/aa.toml" <<TOML
[token_configs.kbs]
url = "http://127.0.0.1:$port"

[eventlog_config]
enable_eventlog = true

[peerpod]
tpm = "$PEERPOD_VTPM"
imds_url = "$PEERPOD_IMDS"
allow_sample = false
# The local test KBS serves plain HTTP: an explicit, test-only opt-in.
insecure_http = true
eventlog_path = "$work/aa-eventlog"
TOML
    echo
    echo "aa.toml:"; sed 's/^/  /' "$work/aa.toml"
    echo
    echo "\$ attestation-agent -c aa.toml -t $sample resource default/key/demo"
    echo "  (detects az-snp-vtpm; binds the initdata: PCR 8 <- first 32 bytes of its digest; auth;"
    echo "   report data -> NV 0x01400002; waits for the paravisor's fresh HCL report; vTPM quote;"
    echo "   VCEK from IMDS; attest with the initdata; the resource as a JWE, decrypted with the TEE key)"
    aa=target/debug/attestation-agent
    "$aa" -c "$work/aa.toml" -t "$sample" resource default/key/demo 2> "$work/aa.log"
    echo; echo
    grep -E "TEE:|initdata|attested" "$work/aa.log" | sed 's/^/  log: /' || true
    echo
    echo "\$ attestation-agent -c aa.toml -t $sample resource default/key/demo   # again: a restart"
    echo "  (PCR 8 already holds this initdata: bound without a second extend; attests again)"
    "$aa" -c "$work/aa.toml" -t "$sample" resource default/key/demo 2> "$work/aa-again.log"
    echo; echo
    grep -E "already bound|attested" "$work/aa-again.log" | sed 's/^/  log: /' || true
    echo
    echo "\$ attestation-agent -c aa.toml -t other-initdata.toml tee    # other initdata: refused"
    sed 's/^algorithm = .*/algorithm = "sha384"/' "$sample" > "$work/other-initdata.toml"
    if RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 "$aa" -c "$work/aa.toml" -t "$work/other-initdata.toml" tee 2> "$work/aa-other.log"; then
        echo "  NOT REFUSED"; exit 1
    fi
    grep -E "Error|initdata mismatch" "$work/aa-other.log" | sed 's/^/  /'
fi

heading "8. secrets in the pod: the confidential data hub, a sealed secret, the REST endpoint"
if ! command -v swtpm >/dev/null 2>&1; then
    echo "(skipped: needs step 7's simulated CVM; install swtpm with: make deps)"
elif [[ $(id -u) -ne 0 ]]; then
    echo "(skipped: running containers needs root; try: sudo make demo)"
else
    # The guest components as a pod VM runs them: the attestation agent and the CDH on their
    # sockets, a kata agent that unseals through the CDH, api-server-rest in the pod's network.
    "$aa" -c "$work/aa.toml" -t "$sample" -a "unix://$work/aa.sock" 2> "$work/aa-serve.log" &
    aa_pid=$!
    cat > "$work/cdh.toml" <<TOML
socket = "unix://$work/cdh.sock"

[kbc]
name = "cc_kbc"
url = "http://127.0.0.1:$port"

[aa]
aa_socket = "unix://$work/aa.sock"

[peerpod]
# The KBS resources sealed secrets may name as their verification key (kid).
sealed_secret_verification_keys = ["kbs:///default/sign/"]
# The local test KBS serves plain HTTP: an explicit, test-only opt-in.
insecure_http = true
TOML
    target/debug/confidential-data-hub -c "$work/cdh.toml" 2> "$work/cdh.log" &
    cdh_pid=$!
    sock2="$work/agent2.sock"
    cat > "$work/agent2.toml" <<TOML
server_addr = "unix://$sock2"
policy_file = "$PWD/policy/examples/allow-all.rego"
cdh_socket = "unix://$work/cdh.sock"
TOML
    unshare --net -- target/debug/kata-agent --config "$work/agent2.toml" --log-format text \
        --state-dir "$work/state2" --copy-root "$work/shared2" --cgroup-parent "/peerpod-demo2-$$" \
        2> "$work/agent2.log" &
    agent2_pid=$!
    pids+=("$agent2_pid" "$cdh_pid" "$aa_pid")
    leftovers+=(/run/peerpod-demo2)
    for _ in $(seq 200); do [[ -S $sock2 && -S $work/cdh.sock && -S $work/aa.sock ]] && break; sleep 0.05; done
    nsenter --net=/proc/$agent2_pid/ns/net ip link set lo up
    nsenter --net=/proc/$agent2_pid/ns/net target/debug/api-server-rest -f all \
        -c "unix://$work/cdh.sock" -a "unix://$work/aa.sock" 2> "$work/rest.log" &
    rest_pid=$!
    pids+=("$rest_pid")
    for _ in $(seq 200); do grep -q serving "$work/rest.log" 2>/dev/null && break; sleep 0.05; done

    sealed=$(target/debug/confidential-data-hub seal --signing-key "$work/signer.pem" \
        --kid kbs:///default/sign/demo-signer --vault kbs:///default/key/db-password)
    echo "\$ confidential-data-hub seal --vault kbs:///default/key/db-password   # what a pod spec carries"
    echo "  ${sealed:0:90}..."
    demo_root=/run/peerpod-demo2/busybox
    mkdir -p "$demo_root"/{bin,proc,sys,dev,tmp}
    cp /bin/busybox "$demo_root/bin/busybox"
    for applet in sh echo wget cat; do ln -sf busybox "$demo_root/bin/$applet"; done
    app=ae51a1e5ae51a1e5ae51a1e5ae51a1e5ae51a1e5ae51a1e5ae51a1e5ae51a1e5
    cat > "$work/create-app.json" <<JSON
{"container_id": "$app", "exec_id": "$app",
 "OCI": {"Version": "1.1.0", "Hostname": "app",
  "Root": {"Path": "$demo_root"},
  "Process": {"Args": ["/bin/sh", "-c", "echo \\"env: DB_PASSWORD=\$DB_PASSWORD\\"; echo \\"REST: \$(wget -qO- http://127.0.0.1:8006/cdh/resource/default/key/demo)\\""],
   "Env": ["PATH=/bin", "DB_PASSWORD=$sealed"], "Cwd": "/", "User": {"UID": 0, "GID": 0}},
  "Mounts": [{"destination": "/proc", "type_": "proc", "source": "proc"},
   {"destination": "/dev", "type_": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}],
  "Linux": {"Namespaces": [{"Type": "pid"}, {"Type": "mount"}, {"Type": "ipc"}, {"Type": "uts"}]}}}
JSON
    ctl2() { target/debug/agent-ctl --addr "unix://$sock2" call "$@"; }
    ctl2 CreateSandbox policy/examples/requests/create-sandbox.json >/dev/null
    echo "\$ agent-ctl call CreateContainer   # env DB_PASSWORD=sealed...: the agent unseals it through the CDH"
    ctl2 CreateContainer "$work/create-app.json"
    echo '{"container_id": "'$app'"}' | ctl2 StartContainer - >/dev/null
    echo "\$ agent-ctl read <app>             # the container prints its env and asks api-server-rest for a secret"
    timeout 5 target/debug/agent-ctl --addr "unix://$sock2" read $app | sed 's/^/  /' || true
    echo
    grep -E "attested to the KBS" "$work/aa-serve.log" | sed 's/^/  aa log: /' || true
    grep -E "unsealed" "$work/agent2.log" | sed 's/^/  agent log: /' || true
    echo '{"container_id": "'$app'", "timeout": 10}' | ctl2 RemoveContainer - >/dev/null
    ctl2 DestroySandbox >/dev/null
fi

heading "9. finale: the pod VM image booted under QEMU, driven over 15150 as the kata shim does"
# The e2e test of podvm-image (tests/e2e/workload.rs) in one TCG guest: mTLS Check, CreateSandbox,
# the pause container, a workload pulled in the guest from an htpasswd registry on the host,
# exec allowed and denied by the initdata policy, a KBS secret and a sealed value after
# attestation (PCR 8 = the initdata), encrypted scratch space, DestroySandbox.
podvm_missing=()
for tool in qemu-system-x86_64 qemu-img swtpm docker-registry umoci skopeo htpasswd; do
    command -v "$tool" >/dev/null 2>&1 || podvm_missing+=("$tool")
done
command -v genisoimage >/dev/null 2>&1 || command -v xorriso >/dev/null 2>&1 || podvm_missing+=(genisoimage)
[[ -x /bin/busybox ]] || podvm_missing+=(busybox-static)
podvm_out=target/podvm-image/out
if [[ -f $podvm_out/podvm.qcow2 && -f $podvm_out/image.env ]]; then
    podvm_mode=1   # the image `make podvm` built
elif command -v mmdebstrap >/dev/null 2>&1; then
    podvm_mode=test   # built now from this checkout's debug binaries (about a minute)
else
    podvm_missing+=("mmdebstrap (or an image from: sudo make podvm)")
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "(skipped: booting the pod VM image needs root; try: sudo make demo)"
elif (( ${#podvm_missing[@]} )); then
    echo "(skipped: the pod VM finale needs ${podvm_missing[*]}; install them with: make deps)"
else
    if [[ $podvm_mode == test ]]; then
        echo "(no image in $podvm_out: building one from the debug binaries first)"
        cargo build --quiet --bins -p kata-agent -p attestation-agent -p confidential-data-hub \
            -p peerpod-provision -p peerpod-forwarder -p peerpod-pause
    fi
    echo "(a few minutes under TCG: the guest boots without KVM; full log in $work/podvm.log)"
    if PEERPOD_PODVM_E2E=$podvm_mode cargo test --quiet -p peerpod-podvm --test e2e -- --exact \
        workload::a_guest_pulled_workload_runs_under_the_initdata_policy_with_kbs_secrets_and_encrypted_scratch \
        --nocapture > "$work/podvm.log" 2>&1; then
        sed -n '/^=== pod VM/,/^=== end/p' "$work/podvm.log" | grep -v '^=== end'
    else
        echo "  THE POD VM FINALE FAILED:"; tail -n 60 "$work/podvm.log" | sed 's/^/  /'; exit 1
    fi
fi

heading "done"
echo "Every decision matched the expected one. See README.md for the tools, the agent and the engine."
