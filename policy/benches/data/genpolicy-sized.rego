# peerpod-guest benchmark policy: the size and shape of a genpolicy policy.
#
# Kata's genpolicy tool turns a pod manifest into an agent policy made of two
# parts: a large, fixed set of rules and a generated `policy_data` document that
# describes the pod. Benchmarks of the policy engine need an input of that size
# and shape; this file is one, written from scratch for this project so that no
# upstream policy text has to be shipped.
#
#   Rules (first part): one entrypoint per agent request that matters, helper
#   functions for every part of an OCI spec the agent receives, and print()
#   diagnostics on nearly every step, as generated policies have. The work per
#   request is comparable: CreateContainer walks every policy container and
#   compares annotations, process, capabilities, Linux settings, mounts,
#   storages and devices; ExecProcess re-checks the process of a recorded
#   container.
#
#   Data (second part): `policy_data` for a three-container pod, as a generator
#   would emit it. Namespace "finance", pod "ledger-<hash>-<id>" (a Deployment),
#   images pulled in the guest, a block-encrypted emptyDir shared by the apps:
#     0  the pause container
#     1  "api": registry.local/ledger/api:2.4.1, NET_RAW dropped, uid 1001,
#        liveness and readiness probes
#     2  "exporter": registry.local/ledger/exporter:0.9.3, no capabilities,
#        uid 65534, the emptyDir mounted read-only, one probe
#
# Placeholders in policy_data strings, expanded by the rules:
#   $(sfprefix) $(cpath) $(spath) $(ipv4) $(ip_p) $(svc_name) $(dns_label)
#                          from policy_data.common
#   $(root_path)           the container rootfs pattern (common.root_path)
#   $(bundle-id)           the id found in the request's OCI root path
#   $(sandbox-id) $(sandbox-name) $(sandbox-namespace)
#                          from the request's CRI annotations (or the state)
#   $(b64-device-id)       base64url of a block storage's source
#   $(default_caps) $(privileged_caps)
#                          the capability lists in policy_data.common
#   $(host-name) $(node-name) $(pod-ip) $(host-ip) $(pod-uid) $(resource-field)
#                          values only known at run time; env values using them
#                          must match common.env_placeholders
#
# Policy state (data.pstate), written through {"allowed": true, "ops": [...]}:
#   sandbox_name, sandbox_namespace, sandbox_id   pinned by the first container
#                          (CreateSandbox already pins sandbox_id)
#   <container id> -> index into policy_data.containers
# A container id may be created again with the same policy container (no ops);
# any conflicting value is refused.
#
# This policy is test data: the pod, its images and the registry are invented.
package agent_policy

import rego.v1

######################################################################
# Entrypoint defaults. A request is denied unless its default or a rule
# below says otherwise.

# Container lifecycle.
default CreateContainerRequest := false
default StartContainerRequest := false
default RemoveContainerRequest := false
default UpdateContainerRequest := false
default PauseContainerRequest := false
default ResumeContainerRequest := false
default StatsContainerRequest := true
default GetOOMEventRequest := true

# Processes and their streams.
default ExecProcessRequest := false
default SignalProcessRequest := false
default WaitProcessRequest := true
default ReadStreamRequest := false
default WriteStreamRequest := false
default CloseStdinRequest := false
default TtyWinResizeRequest := false

# Sandbox and guest.
default CreateSandboxRequest := false
default DestroySandboxRequest := true
default CopyFileRequest := false
default UpdateEphemeralMountsRequest := false
default RemoveStaleVirtiofsShareMountsRequest := true
default GuestDetailsRequest := true
default OnlineCPUMemRequest := false
default MemHotplugByProbeRequest := false
default ReseedRandomDevRequest := false
default SetGuestDateTimeRequest := false
default AddSwapRequest := false
default AddSwapPathRequest := false
default VolumeStatsRequest := false
default ResizeVolumeRequest := false
default GetMetricsRequest := false
default GetDiagnosticDataRequest := false
default MemAgentMemcgConfig := false
default MemAgentCompactConfig := false

# Network.
default UpdateInterfaceRequest := false
default UpdateRoutesRequest := false
default ListInterfacesRequest := false
default ListRoutesRequest := false
default AddARPNeighborsRequest := false
default GetIPTablesRequest := false
default SetIPTablesRequest := false

# The policy itself.
default SetPolicyRequest := false

# Setting this to true makes the agent run requests this policy denies (with a
# warning). Never for production; kept false here.
default AllowRequestsFailingPolicy := false

######################################################################
# Constants

ANNO_BUNDLE_PATH := "io.katacontainers.pkg.oci.bundle_path"

ANNO_KATA_TYPE := "io.katacontainers.pkg.oci.container_type"

ANNO_KATA_CONFIG_PREFIX := "io.katacontainers.config."

ANNO_CRI_PREFIX := "io.kubernetes.cri."

ANNO_CONTAINER_TYPE := "io.kubernetes.cri.container-type"

ANNO_CONTAINER_NAME := "io.kubernetes.cri.container-name"

ANNO_IMAGE_NAME := "io.kubernetes.cri.image-name"

ANNO_SANDBOX_ID := "io.kubernetes.cri.sandbox-id"

ANNO_SANDBOX_NAME := "io.kubernetes.cri.sandbox-name"

ANNO_SANDBOX_NAMESPACE := "io.kubernetes.cri.sandbox-namespace"

ANNO_SANDBOX_UID := "io.kubernetes.cri.sandbox-uid"

ANNO_LOG_DIRECTORY := "io.kubernetes.cri.sandbox-log-directory"

ANNO_NETNS := "nerdctl/network-namespace"

ANNO_CDI_VFIO_PREFIX := "cdi.k8s.io/vfio"

CAP_KINDS := ["Ambient", "Bounding", "Effective", "Inheritable", "Permitted"]

CONTAINER_ID_REGEX := "^[a-f0-9]{64}$"

UUID_REGEX := "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

MAC_REGEX := "^([0-9a-f]{2}:){5}[0-9a-f]{2}$"

PCI_OPTION_REGEX := "^(?i)[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\\.[0-7]=[0-9a-f]{2}/[0-9a-f]{2}$"

BLK_SOURCE_REGEX := "^[0-9a-f]{2}(/[0-9a-f]{2})?$"

SCSI_SOURCE_REGEX := "^[0-9]+:[0-9]+$"

PULL_OPTION_PREFIX := "image_guest_pull="

# setuid and setgid bits of a file mode.
MODE_SETID_BITS := 3072

IFF_NOARP := 128

######################################################################
# Small helpers

as_array(x) := x if {
	is_array(x)
} else := []

as_object(x) := x if {
	is_object(x)
} else := {}

as_set(x) := {e | some e in as_array(x)}

# The name and value of a NAME=value environment entry (the value may hold "=").
env_name(var) := substring(var, 0, i) if {
	i := indexof(var, "=")
	i >= 0
} else := var

env_value(var) := substring(var, i + 1, -1) if {
	i := indexof(var, "=")
	i >= 0
} else := ""

# A policy string is a regex when it starts with "^"; otherwise it is literal.
text_matches(pattern, value) if {
	startswith(pattern, "^")
	regex.match(pattern, value)
}

text_matches(pattern, value) if {
	not startswith(pattern, "^")
	pattern == value
}

# "a/../b", "..", "../x" and "x/.." all climb out of where they start.
has_dot_dot(path) if regex.match(`(^|/)\.\.(/|$)`, path)

is_ipv4(value) if regex.match(concat("", ["^", policy_data.common.ipv4_a, "$"]), value)

is_ipv6(value) if {
	contains(value, ":")
	regex.match("^[0-9a-fA-F:.]+$", value)
}

# Placeholders that do not depend on the request.
expand_common(s) := out if {
	c := policy_data.common
	s1 := replace(s, "$(sfprefix)", c.sfprefix)
	s2 := replace(s1, "$(cpath)", c.cpath)
	s3 := replace(s2, "$(spath)", c.spath)
	s4 := replace(s3, "$(ipv4)", c.ipv4_a)
	s5 := replace(s4, "$(ip_p)", c.ip_p)
	s6 := replace(s5, "$(svc_name)", c.svc_name)
	out := replace(s6, "$(dns_label)", c.dns_label)
}

# All placeholders, with the request's identifiers from `ctx`.
expand_ctx(s, ctx) := out if {
	s1 := expand_common(s)
	s2 := replace(s1, "$(root_path)", policy_data.common.root_path)
	s3 := replace(s2, "$(bundle-id)", ctx.bundle_id)
	s4 := replace(s3, "$(sandbox-id)", ctx.sandbox_id)
	s5 := replace(s4, "$(sandbox-name)", ctx.sandbox_name)
	out := replace(s5, "$(sandbox-namespace)", ctx.sandbox_namespace)
}

######################################################################
# Policy state

# The only read of the state document: everything else goes through pstate_doc.
pstate_doc := data.pstate

# A JSON pointer to a key of the state (escaping "~" and "/").
st_pointer(key) := concat("/", ["/pstate", replace(replace(key, "~", "~0"), "/", "~1")])

st_has(key) if key in object.keys(pstate_doc)

st_get(key) := pstate_doc[key]

# Claim `key` for `value`: no ops when the state already says so, an "add" when
# the key is new, and no result at all (a denial) when it says something else.
st_claim(key, value) := [] if {
	st_has(key)
	print("st_claim: key =", key, "recorded =", pstate_doc[key], "requested =", value)
	pstate_doc[key] == value
	print("st_claim: already recorded")
}

st_claim(key, value) := [{"op": "add", "path": st_pointer(key), "value": value}] if {
	not st_has(key)
	print("st_claim: recording key =", key, "value =", value)
}

st_release(key) := [{"op": "remove", "path": st_pointer(key)}] if {
	print("st_release: key =", key)
	st_has(key)
	print("st_release: forgetting key =", key)
}

# The policy container a recorded container id was created from.
st_container(cid) := p_container if {
	idx := st_get(cid)
	is_number(idx)
	p_container := policy_data.containers[idx]
}

st_container_known(cid) if {
	print("st_container_known: container_id =", cid)
	st_container(cid)
	print("st_container_known: true")
} else := false if {
	print("st_container_known: container", cid, "was not created under this policy, or was removed")
}

# What exec'd processes are compared with: the sandbox the containers pinned.
st_context(cid) := ctx if {
	ctx := {
		"container_id": cid,
		"bundle_id": cid,
		"sandbox_id": object.get(pstate_doc, "sandbox_id", ""),
		"sandbox_name": object.get(pstate_doc, "sandbox_name", ""),
		"sandbox_namespace": object.get(pstate_doc, "sandbox_namespace", ""),
	}
	print("st_context:", ctx)
}

######################################################################
# CreateContainerRequest

CreateContainerRequest := {"allowed": true, "ops": ops} if {
	print("CreateContainerRequest: input =", input)

	cc_request_shape_allowed

	i_oci := input.OCI
	sandbox := cc_sandbox_context(i_oci)
	pin_ops := cc_pin_sandbox(sandbox)

	some idx, p_container in policy_data.containers
	print("CreateContainerRequest: ======== policy container", idx, p_container.name)

	ctx := cc_container_context(sandbox, p_container.OCI, i_oci)
	cc_container_allowed(p_container, i_oci, ctx)

	id_ops := st_claim(input.container_id, idx)
	ops := array.concat(pin_ops, id_ops)

	print("CreateContainerRequest: allowed as policy container", idx, "state ops:", ops)
}

# Parts of the request this agent's containers never use, by their path in
# the request. Refusing them up front keeps the per-container checks focused
# on what the pod does use, and the denial names the field.
SHAPE_NULL_FIELDS := [
	["string_user"],
	["OCI", "Hooks"],
	["OCI", "Solaris"],
	["OCI", "Windows"],
	["OCI", "Linux", "IntelRdt"],
	["OCI", "Linux", "Seccomp"],
	["OCI", "Linux", "Resources", "BlockIO"],
	["OCI", "Linux", "Resources", "Network"],
	["OCI", "Linux", "Resources", "Pids"],
	["OCI", "Process", "ConsoleSize"],
]

# Strings or lists that must be empty (or absent).
SHAPE_EMPTY_FIELDS := [
	["shared_mounts"],
	["OCI", "Linux", "UIDMappings"],
	["OCI", "Linux", "GIDMappings"],
	["OCI", "Linux", "MountLabel"],
	["OCI", "Linux", "RootfsPropagation"],
	["OCI", "Linux", "Resources", "Devices"],
	["OCI", "Process", "SelinuxLabel"],
	["OCI", "Process", "User", "Username"],
]

cc_request_shape_allowed if {
	print("cc_request_shape_allowed: container_id =", input.container_id)
	regex.match(CONTAINER_ID_REGEX, input.container_id)

	not_null := [concat(".", path) | some path in SHAPE_NULL_FIELDS; not is_null(object.get(input, path, null))]
	not_empty := [concat(".", path) | some path in SHAPE_EMPTY_FIELDS; count(object.get(input, path, [])) > 0]
	print("cc_request_shape_allowed: set but must be null =", not_null)
	print("cc_request_shape_allowed: set but must be empty =", not_empty)

	count(not_null) == 0
	count(not_empty) == 0

	print("cc_request_shape_allowed: true")
} else := false if {
	print("cc_request_shape_allowed: the container id is malformed or the request sets a field above")
}

# The sandbox the request says it belongs to.
cc_sandbox_context(i_oci) := ctx if {
	annotations := i_oci.Annotations
	ctx := {
		"container_id": input.container_id,
		"sandbox_id": annotations[ANNO_SANDBOX_ID],
		"sandbox_name": annotations[ANNO_SANDBOX_NAME],
		"sandbox_namespace": annotations[ANNO_SANDBOX_NAMESPACE],
	}
	print("cc_sandbox_context:", ctx)
}

# The first container pins the sandbox; every later one must repeat it.
cc_pin_sandbox(sandbox) := ops if {
	print("cc_pin_sandbox: start")

	name_ops := st_claim("sandbox_name", sandbox.sandbox_name)
	namespace_ops := st_claim("sandbox_namespace", sandbox.sandbox_namespace)
	id_ops := st_claim("sandbox_id", sandbox.sandbox_id)
	ops := array.concat(name_ops, array.concat(namespace_ops, id_ops))

	print("cc_pin_sandbox: ops =", ops)
}

cc_container_context(sandbox, p_oci, i_oci) := ctx if {
	bundle_id := oci_bundle_id(p_oci, i_oci)
	ctx := object.union(sandbox, {"bundle_id": bundle_id})
	print("cc_container_context:", ctx)
}

cc_container_allowed(p_container, i_oci, ctx) if {
	print("cc_container_allowed: start")

	p_oci := p_container.OCI

	cc_pidns_allowed(p_container)
	oci_version_allowed(p_oci, i_oci)
	oci_root_allowed(p_oci, i_oci, ctx)
	oci_hostname_allowed(i_oci, ctx)
	anno_allowed(p_container, i_oci, ctx)
	proc_container_allowed(p_oci.Process, i_oci.Process, ctx)
	lx_allowed(p_oci.Linux, i_oci.Linux, ctx)
	mnt_allowed(p_oci.Mounts, i_oci.Mounts, input.storages, ctx)
	stor_allowed(p_container, input.storages, ctx)
	dev_allowed(p_container.devices, input.devices, i_oci)

	print("cc_container_allowed: true")
}

cc_pidns_allowed(p_container) if {
	print("cc_pidns_allowed: policy =", p_container.sandbox_pidns, "input =", input.sandbox_pidns)
	p_container.sandbox_pidns == input.sandbox_pidns
	print("cc_pidns_allowed: true")
}

######################################################################
# OCI version, root and hostname

oci_version_allowed(p_oci, i_oci) if {
	print("oci_version_allowed: policy =", p_oci.Version, "input =", i_oci.Version)
	p_oci.Version == i_oci.Version
	i_oci.Version == policy_data.kata_config.oci_version
	print("oci_version_allowed: true")
}

# The id the runtime put in the rootfs path: "$(bundle-id)" in the policy's
# root path pattern captures it.
oci_bundle_id(p_oci, i_oci) := bundle_id if {
	pattern := replace(p_oci.Root.Path, "$(root_path)", policy_data.common.root_path)
	capture := concat("", ["^", replace(pattern, "$(bundle-id)", "([a-f0-9]{64})"), "$"])
	print("oci_bundle_id: pattern =", capture, "root =", i_oci.Root.Path)

	found := regex.find_all_string_submatch_n(capture, i_oci.Root.Path, 1)
	count(found) == 1
	bundle_id := found[0][1]

	print("oci_bundle_id: bundle_id =", bundle_id)
}

# The rootfs path, the bundle path annotation, the shared-file mounts, the
# image storage and the cgroups path must all name the same bundle id; that
# consistency is checked against ctx.bundle_id throughout.
oci_root_allowed(p_oci, i_oci, ctx) if {
	print("oci_root_allowed: policy readonly =", p_oci.Root.Readonly, "input readonly =", i_oci.Root.Readonly)
	p_oci.Root.Readonly == i_oci.Root.Readonly

	print("oci_root_allowed: bundle_id =", ctx.bundle_id)
	regex.match(CONTAINER_ID_REGEX, ctx.bundle_id)

	print("oci_root_allowed: true")
}

oci_hostname_allowed(i_oci, ctx) if {
	print("oci_hostname_allowed: hostname =", i_oci.Hostname, "sandbox name =", ctx.sandbox_name)
	i_oci.Hostname == ctx.sandbox_name
	print("oci_hostname_allowed 1: true")
}

oci_hostname_allowed(i_oci, ctx) if {
	print("oci_hostname_allowed 2: hostname =", i_oci.Hostname)
	regex.match(policy_data.sandbox.hostname, i_oci.Hostname)
	print("oci_hostname_allowed 2: true")
}

######################################################################
# Annotations

anno_allowed(p_container, i_oci, ctx) if {
	print("anno_allowed: start")

	p_annotations := p_container.OCI.Annotations
	i_annotations := as_object(i_oci.Annotations)
	print("anno_allowed: policy =", p_annotations)
	print("anno_allowed: input =", i_annotations)

	every key, value in i_annotations {
		anno_key_allowed(key, value, p_container)
	}

	anno_sandbox_name_allowed(p_annotations, ctx)
	anno_namespace_allowed(p_annotations, ctx)
	anno_sandbox_id_allowed(p_annotations, ctx)
	anno_sandbox_uid_allowed(i_annotations)
	anno_bundle_path_allowed(p_annotations, i_annotations, ctx)
	anno_types_allowed(p_annotations, i_annotations, ctx)

	print("anno_allowed: true")
}

# Runtime configuration annotations could reconfigure the agent or the guest:
# none is ever allowed, whatever the policy data says.
anno_key_allowed(key, value, p_container) if {
	print("anno_key_allowed 1: key =", key)

	not startswith(key, ANNO_KATA_CONFIG_PREFIX)
	startswith(key, ANNO_CRI_PREFIX)

	print("anno_key_allowed 1: true")
}

anno_key_allowed(key, value, p_container) if {
	print("anno_key_allowed 2: key =", key)

	not startswith(key, ANNO_KATA_CONFIG_PREFIX)
	key in object.keys(p_container.OCI.Annotations)

	print("anno_key_allowed 2: true")
}

anno_key_allowed(key, value, p_container) if {
	print("anno_key_allowed 3: key =", key, "value =", value)

	not startswith(key, ANNO_KATA_CONFIG_PREFIX)
	some key_regex, value_regex in as_object(p_container.runtime_anno_patterns)
	regex.match(key_regex, key)
	print("anno_key_allowed 3: key matches", key_regex, "value must match", value_regex)
	regex.match(value_regex, value)

	print("anno_key_allowed 3: true")
}

anno_sandbox_name_allowed(p_annotations, ctx) if {
	p_regex := p_annotations[ANNO_SANDBOX_NAME]
	print("anno_sandbox_name_allowed: regex =", p_regex, "name =", ctx.sandbox_name)
	regex.match(p_regex, ctx.sandbox_name)
	print("anno_sandbox_name_allowed: true")
}

anno_namespace_allowed(p_annotations, ctx) if {
	p_namespace := p_annotations[ANNO_SANDBOX_NAMESPACE]
	print("anno_namespace_allowed 1: policy =", p_namespace, "input =", ctx.sandbox_namespace)
	p_namespace == ctx.sandbox_namespace
	print("anno_namespace_allowed 1: true")
}

# A policy generated without a namespace accepts any, which the state then pins.
anno_namespace_allowed(p_annotations, ctx) if {
	p_namespace := object.get(p_annotations, ANNO_SANDBOX_NAMESPACE, "")
	print("anno_namespace_allowed 2: policy =", p_namespace)
	p_namespace == ""
	regex.match("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", ctx.sandbox_namespace)
	print("anno_namespace_allowed 2: true")
}

anno_sandbox_id_allowed(p_annotations, ctx) if {
	p_regex := p_annotations[ANNO_SANDBOX_ID]
	print("anno_sandbox_id_allowed: regex =", p_regex, "sandbox_id =", ctx.sandbox_id)
	regex.match(p_regex, ctx.sandbox_id)
	print("anno_sandbox_id_allowed: true")
}

anno_sandbox_uid_allowed(i_annotations) if {
	print("anno_sandbox_uid_allowed 1: start")
	not ANNO_SANDBOX_UID in object.keys(i_annotations)
	print("anno_sandbox_uid_allowed 1: true")
}

anno_sandbox_uid_allowed(i_annotations) if {
	uid := i_annotations[ANNO_SANDBOX_UID]
	print("anno_sandbox_uid_allowed 2: uid =", uid)
	regex.match(UUID_REGEX, uid)
	print("anno_sandbox_uid_allowed 2: true")
}

anno_bundle_path_allowed(p_annotations, i_annotations, ctx) if {
	p_path := expand_ctx(p_annotations[ANNO_BUNDLE_PATH], ctx)
	i_path := i_annotations[ANNO_BUNDLE_PATH]
	print("anno_bundle_path_allowed: policy =", p_path, "input =", i_path)
	p_path == i_path
	print("anno_bundle_path_allowed: true")
}

# The CRI and kata container types must agree with each other and with the
# policy container; each type then has annotations of its own.
anno_types_allowed(p_annotations, i_annotations, ctx) if {
	p_type := p_annotations[ANNO_CONTAINER_TYPE]
	i_type := i_annotations[ANNO_CONTAINER_TYPE]
	print("anno_types_allowed: policy type =", p_type, "input type =", i_type)
	p_type == i_type

	p_kata_type := p_annotations[ANNO_KATA_TYPE]
	i_kata_type := i_annotations[ANNO_KATA_TYPE]
	print("anno_types_allowed: policy kata type =", p_kata_type, "input kata type =", i_kata_type)
	p_kata_type == i_kata_type

	anno_type_allowed(i_type, i_kata_type, p_annotations, i_annotations, ctx)

	print("anno_types_allowed: true")
}

anno_type_allowed(i_type, i_kata_type, p_annotations, i_annotations, ctx) if {
	print("anno_type_allowed sandbox: type =", i_type, "kata type =", i_kata_type)
	i_type == "sandbox"
	i_kata_type == "pod_sandbox"

	# The pause container is the sandbox: its id is the sandbox id.
	print("anno_type_allowed sandbox: container_id =", ctx.container_id, "sandbox_id =", ctx.sandbox_id)
	ctx.container_id == ctx.sandbox_id

	anno_absent(p_annotations, i_annotations, ANNO_CONTAINER_NAME)
	anno_absent(p_annotations, i_annotations, ANNO_IMAGE_NAME)
	anno_sandbox_netns_allowed(p_annotations, i_annotations)
	anno_log_directory_allowed(p_annotations, i_annotations, ctx)

	print("anno_type_allowed sandbox: true")
}

anno_type_allowed(i_type, i_kata_type, p_annotations, i_annotations, ctx) if {
	print("anno_type_allowed container: type =", i_type, "kata type =", i_kata_type)
	i_type == "container"
	i_kata_type == "pod_container"

	print("anno_type_allowed container: container_id =", ctx.container_id, "sandbox_id =", ctx.sandbox_id)
	ctx.container_id != ctx.sandbox_id

	anno_same(p_annotations, i_annotations, ANNO_CONTAINER_NAME)
	anno_same(p_annotations, i_annotations, ANNO_IMAGE_NAME)
	anno_absent(p_annotations, i_annotations, ANNO_NETNS)
	anno_absent(p_annotations, i_annotations, ANNO_LOG_DIRECTORY)

	print("anno_type_allowed container: true")
}

anno_same(p_annotations, i_annotations, key) if {
	p_value := p_annotations[key]
	i_value := i_annotations[key]
	print("anno_same: key =", key, "policy =", p_value, "input =", i_value)
	p_value == i_value
	print("anno_same: true")
}

anno_absent(p_annotations, i_annotations, key) if {
	print("anno_absent: key =", key)
	not key in object.keys(p_annotations)
	not key in object.keys(i_annotations)
	print("anno_absent: true")
}

anno_sandbox_netns_allowed(p_annotations, i_annotations) if {
	p_regex := p_annotations[ANNO_NETNS]
	i_netns := i_annotations[ANNO_NETNS]
	print("anno_sandbox_netns_allowed: regex =", p_regex, "input =", i_netns)
	regex.match(p_regex, i_netns)
	print("anno_sandbox_netns_allowed: true")
}

anno_log_directory_allowed(p_annotations, i_annotations, ctx) if {
	p_regex := expand_ctx(p_annotations[ANNO_LOG_DIRECTORY], ctx)
	i_dir := i_annotations[ANNO_LOG_DIRECTORY]
	print("anno_log_directory_allowed: regex =", p_regex, "input =", i_dir)
	regex.match(p_regex, i_dir)
	print("anno_log_directory_allowed: true")
}

######################################################################
# Process: arguments, working directory, user, environment, capabilities

proc_container_allowed(p_proc, i_proc, ctx) if {
	print("proc_container_allowed: start")

	proc_args_allowed(p_proc.Args, i_proc.Args, ctx)
	proc_shared_allowed(p_proc, i_proc, ctx)
	caps_allowed(p_proc.Capabilities, i_proc.Capabilities)
	proc_terminal_allowed(p_proc, i_proc)
	proc_rlimits_allowed(p_proc, i_proc)
	proc_oom_score_allowed(i_proc)

	print("proc_container_allowed: true")
}

# What a container's process and a process exec'd into it have in common.
proc_shared_allowed(p_proc, i_proc, ctx) if {
	print("proc_shared_allowed: start")

	proc_cwd_allowed(p_proc, i_proc)
	proc_no_new_privileges_allowed(p_proc, i_proc)
	proc_lsm_allowed(p_proc, i_proc)
	user_allowed(p_proc.User, i_proc.User)
	env_allowed(p_proc.Env, i_proc.Env, ctx)

	print("proc_shared_allowed: true")
}

proc_cwd_allowed(p_proc, i_proc) if {
	print("proc_cwd_allowed: policy =", p_proc.Cwd, "input =", i_proc.Cwd)
	p_proc.Cwd == i_proc.Cwd
	print("proc_cwd_allowed: true")
}

proc_no_new_privileges_allowed(p_proc, i_proc) if {
	print("proc_no_new_privileges_allowed: policy =", p_proc.NoNewPrivileges, "input =", i_proc.NoNewPrivileges)
	p_proc.NoNewPrivileges == i_proc.NoNewPrivileges
	print("proc_no_new_privileges_allowed: true")
}

# AppArmor profile as in the policy (usually none); never an SELinux label.
proc_lsm_allowed(p_proc, i_proc) if {
	p_profile := object.get(p_proc, "ApparmorProfile", "")
	i_profile := object.get(i_proc, "ApparmorProfile", "")
	print("proc_lsm_allowed: policy apparmor =", p_profile, "input apparmor =", i_profile)
	p_profile == i_profile

	i_label := object.get(i_proc, "SelinuxLabel", "")
	print("proc_lsm_allowed: input selinux label =", i_label)
	i_label == ""

	print("proc_lsm_allowed: true")
}

proc_terminal_allowed(p_proc, i_proc) if {
	print("proc_terminal_allowed: policy =", p_proc.Terminal, "input =", i_proc.Terminal)
	p_proc.Terminal == i_proc.Terminal
	print("proc_terminal_allowed: true")
}

# Every input rlimit must be one the policy grants, no higher.
proc_rlimits_allowed(p_proc, i_proc) if {
	p_limits := as_array(object.get(p_proc, "Rlimits", []))
	i_limits := as_array(object.get(i_proc, "Rlimits", []))
	print("proc_rlimits_allowed: policy =", p_limits, "input =", i_limits)

	every i_limit in i_limits {
		proc_rlimit_allowed(p_limits, i_limit)
	}

	print("proc_rlimits_allowed: true")
}

proc_rlimit_allowed(p_limits, i_limit) if {
	print("proc_rlimit_allowed: input =", i_limit)

	some p_limit in p_limits
	p_limit.Type == i_limit.Type
	i_limit.Hard <= p_limit.Hard
	i_limit.Soft <= i_limit.Hard

	print("proc_rlimit_allowed: true, policy =", p_limit)
}

# Kubelet's range; below the pause container's value a process could not be
# chosen by the OOM killer at all.
proc_oom_score_allowed(i_proc) if {
	score := object.get(i_proc, "OOMScoreAdj", 0)
	print("proc_oom_score_allowed: input =", score, "minimum =", policy_data.kata_config.min_oom_score_adj)

	is_number(score)
	score >= policy_data.kata_config.min_oom_score_adj
	score <= 1000

	print("proc_oom_score_allowed: true")
}

proc_args_allowed(p_args, i_args, ctx) if {
	p_list := as_array(p_args)
	i_list := as_array(i_args)
	print("proc_args_allowed: policy =", p_list)
	print("proc_args_allowed: input =", i_list)

	count(p_list) == count(i_list)
	every n, i_arg in i_list {
		arg_allowed(p_list[n], i_arg, ctx)
	}

	print("proc_args_allowed: true")
}

arg_allowed(p_arg, i_arg, ctx) if {
	print("arg_allowed 1: policy =", p_arg, "input =", i_arg)
	p_arg == i_arg
	print("arg_allowed 1: true")
}

# "$$" escapes a literal "$"; the sandbox name and namespace are known.
arg_allowed(p_arg, i_arg, ctx) if {
	contains(p_arg, "$")
	unescaped := replace(p_arg, "$$", "$")
	named := replace(unescaped, "$(sandbox-name)", ctx.sandbox_name)
	expanded := replace(named, "$(sandbox-namespace)", ctx.sandbox_namespace)
	print("arg_allowed 2: expanded =", expanded, "input =", i_arg)
	expanded == i_arg
	print("arg_allowed 2: true")
}

# One run-time placeholder inside an argument: the text around it must be
# literal, the part it stands for must match its pattern.
arg_allowed(p_arg, i_arg, ctx) if {
	some placeholder, _ in policy_data.common.env_placeholders
	contains(p_arg, placeholder)
	parts := split(p_arg, placeholder)
	count(parts) == 2
	print("arg_allowed 3: placeholder =", placeholder, "around =", parts)

	startswith(i_arg, parts[0])
	endswith(i_arg, parts[1])
	middle_len := (count(i_arg) - count(parts[0])) - count(parts[1])
	middle_len > 0
	middle := substring(i_arg, count(parts[0]), middle_len)
	print("arg_allowed 3: value =", middle)
	regex.match(placeholder_regex(placeholder), middle)

	print("arg_allowed 3: true")
}

placeholder_regex(placeholder) := expand_common(policy_data.common.env_placeholders[placeholder])

user_allowed(p_user, i_user) if {
	print("user_allowed: policy uid =", p_user.UID, "input uid =", i_user.UID)
	p_user.UID == i_user.UID

	print("user_allowed: policy gid =", p_user.GID, "input gid =", i_user.GID)
	p_user.GID == i_user.GID

	p_groups := as_set(p_user.AdditionalGids)
	i_groups := as_set(i_user.AdditionalGids)
	print("user_allowed: policy groups =", p_groups, "input groups =", i_groups)
	p_groups == i_groups

	print("user_allowed: input username =", object.get(i_user, "Username", ""))
	object.get(i_user, "Username", "") == object.get(p_user, "Username", "")

	print("user_allowed: true")
}

######################################################################
# Environment

env_allowed(p_env, i_env, ctx) if {
	p_list := as_array(p_env)
	i_list := as_array(i_env)
	print("env_allowed: policy =", p_list)
	print("env_allowed: input =", i_list)

	every i_var in i_list {
		print("env_allowed: checking", i_var)
		env_entry_well_formed(i_var)
		env_var_allowed(p_list, i_var, ctx)
	}

	print("env_allowed: true")
}

# NAME=value with a name a shell could export.
env_entry_well_formed(var) if {
	is_string(var)
	indexof(var, "=") > 0
	regex.match("^[A-Za-z_][A-Za-z0-9_.-]*$", env_name(var))
} else := false if {
	print("env_entry_well_formed: not a NAME=value entry:", var)
}

# Listed literally in the policy.
env_var_allowed(p_env, i_var, ctx) if {
	i_var in p_env
	print("env_var_allowed 1: literal match")
}

# A policy value built from the sandbox name or namespace.
env_var_allowed(p_env, i_var, ctx) if {
	i_name := env_name(i_var)
	some p_var in p_env
	env_name(p_var) == i_name

	p_value := env_value(p_var)
	contains(p_value, "$(sandbox-")
	named := replace(p_value, "$(sandbox-name)", ctx.sandbox_name)
	expanded := replace(named, "$(sandbox-namespace)", ctx.sandbox_namespace)
	print("env_var_allowed 2: name =", i_name, "expanded =", expanded)

	expanded == env_value(i_var)
	print("env_var_allowed 2: true")
}

# A policy value only known at run time (pod IP, node name, resource limits...).
env_var_allowed(p_env, i_var, ctx) if {
	i_name := env_name(i_var)
	some p_var in p_env
	env_name(p_var) == i_name

	p_value := env_value(p_var)
	p_value in object.keys(policy_data.common.env_placeholders)
	pattern := placeholder_regex(p_value)
	print("env_var_allowed 3: name =", i_name, "placeholder =", p_value, "pattern =", pattern)

	regex.match(pattern, env_value(i_var))
	print("env_var_allowed 3: true")
}

# Variables every container gets from Kubernetes (services, the hostname).
env_var_allowed(p_env, i_var, ctx) if {
	some pattern in env_default_regexes
	regex.match(pattern, i_var)
	print("env_var_allowed 4: matches", pattern)
}

env_default_regexes contains pattern if {
	some raw in policy_data.request_defaults.CreateContainerRequest.allow_env_regex
	pattern := expand_common(raw)
}

######################################################################
# Capabilities

caps_allowed(p_caps, i_caps) if {
	print("caps_allowed: start")

	every kind in CAP_KINDS {
		caps_kind_allowed(kind, p_caps, i_caps)
	}

	print("caps_allowed: true")
}

# Each set must be exactly the policy's, compared without the "CAP_" prefix.
caps_kind_allowed(kind, p_caps, i_caps) if {
	p_set := caps_expand(object.get(as_object(p_caps), kind, []))
	i_set := caps_normalise(object.get(as_object(i_caps), kind, []))
	print("caps_kind_allowed:", kind, "policy =", p_set)
	print("caps_kind_allowed:", kind, "input =", i_set)

	p_set == i_set

	print("caps_kind_allowed:", kind, "true")
} else := false if {
	print("caps_kind_allowed:", kind, "differs: extra =", caps_normalise(object.get(as_object(i_caps), kind, [])) - caps_expand(object.get(as_object(p_caps), kind, [])))
}

caps_expand(list) := caps_normalise(policy_data.common.default_caps) if {
	list == ["$(default_caps)"]
} else := caps_normalise(policy_data.common.privileged_caps) if {
	list == ["$(privileged_caps)"]
} else := caps_normalise(list)

caps_normalise(list) := {cap_short_name(c) | some c in as_array(list)}

cap_short_name(cap) := substring(upper_cap, 4, -1) if {
	upper_cap := upper(cap)
	startswith(upper_cap, "CAP_")
} else := upper(cap)

# Exec'd processes get the container's capabilities; a request that names
# any is asking for something else.
caps_none(i_caps) if {
	print("caps_none 1: input =", i_caps)
	is_null(i_caps)
	print("caps_none 1: true")
}

caps_none(i_caps) if {
	print("caps_none 2: input =", i_caps)
	is_object(i_caps)
	every kind in CAP_KINDS {
		count(as_array(object.get(i_caps, kind, []))) == 0
	}
	print("caps_none 2: true")
}

######################################################################
# Linux: namespaces, masked and read-only paths, devices, sysctls, resources

lx_allowed(p_linux, i_linux, ctx) if {
	print("lx_allowed: start")

	lx_namespaces_allowed(p_linux, i_linux)
	lx_network_namespace_allowed(i_linux)
	lx_masked_paths_allowed(p_linux, i_linux)
	lx_readonly_paths_allowed(p_linux, i_linux)
	lx_devices_allowed(p_linux, i_linux)
	lx_sysctls_allowed(p_linux, i_linux)
	lx_resources_allowed(i_linux)
	lx_cgroups_path_allowed(i_linux, ctx)

	print("lx_allowed: true")
}

ns_type(t) := "mnt" if {
	lower(t) == "mount"
} else := lower(t)

ns_normalised(ns) := {"Type": ns_type(ns.Type), "Path": object.get(ns, "Path", "")}

# The network and cgroup namespaces are the runtime's business; every other
# namespace must be exactly the policy's (type and path).
lx_namespaces_allowed(p_linux, i_linux) if {
	p_set := {ns_normalised(ns) | some ns in as_array(p_linux.Namespaces)}
	i_set := {ns_normalised(ns) |
		some ns in as_array(i_linux.Namespaces)
		not ns_type(ns.Type) in {"network", "cgroup"}
	}
	print("lx_namespaces_allowed: policy =", p_set)
	print("lx_namespaces_allowed: input =", i_set)

	p_set == i_set

	print("lx_namespaces_allowed: true")
}

lx_network_namespace_allowed(i_linux) if {
	paths := [object.get(ns, "Path", "") | some ns in as_array(i_linux.Namespaces); ns_type(ns.Type) == "network"]
	print("lx_network_namespace_allowed: paths =", paths)

	count(paths) <= 1
	every path in paths {
		lx_netns_path_allowed(path)
	}

	print("lx_network_namespace_allowed: true")
}

lx_netns_path_allowed(path) if path == ""

lx_netns_path_allowed(path) if regex.match("^/var/run/netns/cni-[0-9a-f-]{36}$", path)

# The input may mask more than the policy, never less.
lx_masked_paths_allowed(p_linux, i_linux) if {
	p_paths := as_array(p_linux.MaskedPaths)
	i_paths := as_set(i_linux.MaskedPaths)
	print("lx_masked_paths_allowed: policy =", p_paths)
	print("lx_masked_paths_allowed: input =", i_paths)

	missing := {p | some p in p_paths; not p in i_paths}
	print("lx_masked_paths_allowed: missing =", missing)
	count(missing) == 0

	print("lx_masked_paths_allowed: true")
}

# A read-only path of the policy may be read-only or masked in the input.
lx_readonly_paths_allowed(p_linux, i_linux) if {
	p_paths := as_array(p_linux.ReadonlyPaths)
	i_paths := as_set(i_linux.ReadonlyPaths) | as_set(i_linux.MaskedPaths)
	print("lx_readonly_paths_allowed: policy =", p_paths)
	print("lx_readonly_paths_allowed: input (read-only or masked) =", i_paths)

	missing := {p | some p in p_paths; not p in i_paths}
	print("lx_readonly_paths_allowed: missing =", missing)
	count(missing) == 0

	print("lx_readonly_paths_allowed: true")
}

lx_devices_allowed(p_linux, i_linux) if {
	p_paths := {d.Path | some d in as_array(p_linux.Devices)}
	print("lx_devices_allowed: policy =", p_paths)

	every i_device in as_array(i_linux.Devices) {
		print("lx_devices_allowed: input device =", i_device)
		i_device.Path in p_paths
	}

	print("lx_devices_allowed: true")
}

lx_sysctls_allowed(p_linux, i_linux) if {
	p_sysctls := as_object(object.get(p_linux, "Sysctl", {}))
	i_sysctls := as_object(object.get(i_linux, "Sysctl", {}))
	print("lx_sysctls_allowed: policy =", p_sysctls)
	print("lx_sysctls_allowed: input =", i_sysctls)

	every name, value in i_sysctls {
		print("lx_sysctls_allowed: checking", name, "=", value)
		p_sysctls[name] == value
	}

	print("lx_sysctls_allowed: true")
}

# Limits are the runtime's; what they must not do is give the container
# real-time CPU time or switch the OOM killer off for it.
lx_resources_allowed(i_linux) if {
	resources := as_object(i_linux.Resources)
	cpu := as_object(object.get(resources, "CPU", {}))
	memory := as_object(object.get(resources, "Memory", {}))
	print("lx_resources_allowed: cpu =", cpu, "memory =", memory)

	object.get(cpu, "RealtimeRuntime", 0) == 0
	object.get(cpu, "RealtimePeriod", 0) == 0
	object.get(memory, "DisableOOMKiller", false) == false

	print("lx_resources_allowed: true")
}

# Both cgroup drivers end the path with the container's bundle id.
lx_cgroups_path_allowed(i_linux, ctx) if {
	path := i_linux.CgroupsPath
	print("lx_cgroups_path_allowed: path =", path, "bundle_id =", ctx.bundle_id)
	endswith(path, ctx.bundle_id)
	not has_dot_dot(path)
	print("lx_cgroups_path_allowed: true")
}

######################################################################
# Mounts

# Every input mount must match the policy mount with its destination, and no
# two input mounts may use the same policy mount.
mnt_allowed(p_mounts, i_mounts, i_storages, ctx) if {
	print("mnt_allowed: policy mounts =", count(p_mounts), "input mounts =", count(i_mounts))

	mnt_paths_sane(i_mounts)

	pairs := {[i_mount.destination, p_index] |
		some i_mount in i_mounts
		p_index := mnt_policy_index(p_mounts, i_mount, i_storages, ctx)
	}
	used := {pair[1] | some pair in pairs}
	matched := {pair[0] | some pair in pairs}
	unmatched := [m.destination | some m in i_mounts; not m.destination in matched]
	print("mnt_allowed: policy mounts used =", used)
	print("mnt_allowed: input mounts without a match =", unmatched)

	count(unmatched) == 0
	count(used) == count(i_mounts)

	print("mnt_allowed: true")
}

# Absolute destinations and sources without "..": a source pattern written
# loosely must not let a mount climb out of the shared directory.
mnt_paths_sane(i_mounts) if {
	print("mnt_paths_sane: start")

	every i_mount in i_mounts {
		startswith(i_mount.destination, "/")
		not has_dot_dot(i_mount.destination)
		not has_dot_dot(i_mount.source)
	}

	print("mnt_paths_sane: true")
} else := false if {
	bad := [m | some m in i_mounts; mnt_path_insane(m)]
	print("mnt_paths_sane: mounts with a relative destination or a \"..\" =", bad)
}

mnt_path_insane(i_mount) if not startswith(i_mount.destination, "/")

mnt_path_insane(i_mount) if has_dot_dot(i_mount.destination)

mnt_path_insane(i_mount) if has_dot_dot(i_mount.source)

mnt_policy_index(p_mounts, i_mount, i_storages, ctx) := p_index if {
	print("mnt_policy_index: input =", i_mount)

	some p_index, p_mount in p_mounts
	p_mount.destination == i_mount.destination
	print("mnt_policy_index: policy =", p_mount)
	mnt_match(p_mount, i_mount, i_storages, ctx)

	print("mnt_policy_index: matched policy mount", p_index)
}

# Identical.
mnt_match(p_mount, i_mount, i_storages, ctx) if {
	p_mount == i_mount
	print("mnt_match 1: identical")
}

# Same type and options; the source is a pattern over the shared directory.
mnt_match(p_mount, i_mount, i_storages, ctx) if {
	p_mount.source != ""
	p_mount.type_ == i_mount.type_
	p_mount.options == i_mount.options

	pattern := expand_ctx(p_mount.source, ctx)
	print("mnt_match 2: source pattern =", pattern, "input =", i_mount.source)
	text_matches(pattern, i_mount.source)

	print("mnt_match 2: true")
}

# A volume on a block device: no source in the policy, the input source is
# where one of the request's block storages is mounted.
mnt_match(p_mount, i_mount, i_storages, ctx) if {
	p_mount.source == ""
	p_mount.type_ == i_mount.type_
	p_mount.options == i_mount.options
	print("mnt_match 3: looking for a block storage at", i_mount.source)

	some i_storage in i_storages
	i_storage.driver in {"blk", "scsi"}
	i_storage.mount_point == i_mount.source

	print("mnt_match 3: true, storage =", i_storage)
}

# cgroup v2 mounts may carry options newer kernels add on their own.
mnt_match(p_mount, i_mount, i_storages, ctx) if {
	p_mount.type_ == "cgroup"
	i_mount.type_ == "cgroup"
	p_mount.source == i_mount.source

	p_options := as_set(p_mount.options)
	i_options := as_set(i_mount.options)
	extras := i_options - p_options
	print("mnt_match 4: missing =", p_options - i_options, "extra =", extras)

	count(p_options - i_options) == 0
	count(extras - as_set(policy_data.kata_config.cgroup_mount_extras_allowed)) == 0

	print("mnt_match 4: true")
}

# sysfs mounted read-only where the policy has it read-write is only stricter.
mnt_match(p_mount, i_mount, i_storages, ctx) if {
	p_mount.type_ == "sysfs"
	i_mount.type_ == "sysfs"
	p_mount.source == i_mount.source

	stricter := [o | some p_option in p_mount.options; o := mnt_read_only_option(p_option)]
	print("mnt_match 5: policy options made read-only =", stricter, "input =", i_mount.options)
	stricter == i_mount.options

	print("mnt_match 5: true")
}

mnt_read_only_option(option) := "ro" if {
	option == "rw"
} else := option

######################################################################
# Storages

stor_allowed(p_container, i_storages, ctx) if {
	print("stor_allowed: start")

	p_storages := as_array(p_container.storages)
	pulls := [s | some s in i_storages; s.driver == "image_guest_pull"]
	volumes := [s | some s in i_storages; s.driver != "image_guest_pull"]
	print("stor_allowed: policy volumes =", count(p_storages), "input volumes =", count(volumes), "image pulls =", count(pulls))

	count(pulls) == stor_expected_pulls
	count(volumes) == count(p_storages)

	every s in pulls {
		stor_image_allowed(p_container, s, ctx)
	}
	every s in volumes {
		stor_volume_allowed(p_storages, s, ctx)
	}

	mount_points := {s.mount_point | some s in i_storages}
	print("stor_allowed: distinct mount points =", count(mount_points))
	count(mount_points) == count(i_storages)
	every mount_point in mount_points {
		startswith(mount_point, "/")
		not has_dot_dot(mount_point)
	}

	print("stor_allowed: true")
}

stor_expected_pulls := 1 if {
	policy_data.kata_config.guest_pull == true
} else := 0

# The image of a policy container; the pause container's comes from kata_config.
stor_expected_image(p_container) := image if {
	image := p_container.OCI.Annotations[ANNO_IMAGE_NAME]
} else := policy_data.kata_config.pause_container_image

stor_image_allowed(p_container, i_storage, ctx) if {
	print("stor_image_allowed: input =", i_storage)

	i_storage.fstype == "overlay"
	is_null(i_storage.fs_group)
	i_storage.shared == false
	count(as_array(i_storage.options)) == 0

	expected_root := expand_ctx(policy_data.common.root_path, ctx)
	print("stor_image_allowed: mount point =", i_storage.mount_point, "expected =", expected_root)
	i_storage.mount_point == expected_root

	expected_image := stor_expected_image(p_container)
	print("stor_image_allowed: image =", i_storage.source, "expected =", expected_image)
	i_storage.source == expected_image

	stor_pull_metadata_allowed(i_storage, ctx)

	print("stor_image_allowed: true")
}

# The pull request carries the container's annotations as JSON; they must name
# the same sandbox and bundle as the OCI spec.
stor_pull_metadata_allowed(i_storage, ctx) if {
	options := as_array(i_storage.driver_options)
	print("stor_pull_metadata_allowed: driver options =", count(options))
	count(options) == 1
	startswith(options[0], PULL_OPTION_PREFIX)

	parsed := json.unmarshal(substring(options[0], count(PULL_OPTION_PREFIX), -1))
	metadata := as_object(parsed.metadata)
	print("stor_pull_metadata_allowed: metadata =", metadata)

	metadata[ANNO_SANDBOX_ID] == ctx.sandbox_id
	metadata[ANNO_SANDBOX_NAME] == ctx.sandbox_name
	metadata[ANNO_BUNDLE_PATH] == input.OCI.Annotations[ANNO_BUNDLE_PATH]

	print("stor_pull_metadata_allowed: true")
}

stor_volume_allowed(p_storages, i_storage, ctx) if {
	print("stor_volume_allowed: input =", i_storage)

	some p_storage in p_storages
	print("stor_volume_allowed: policy =", p_storage)
	p_storage.driver == i_storage.driver

	stor_source_allowed(p_storage, i_storage, ctx)
	stor_fields_allowed(p_storage, i_storage)
	stor_mount_point_allowed(p_storage, i_storage, ctx)

	print("stor_volume_allowed: true")
}

stor_source_allowed(p_storage, i_storage, ctx) if {
	print("stor_source_allowed 1: policy =", p_storage.source, "input =", i_storage.source)
	p_storage.source == i_storage.source
	print("stor_source_allowed 1: true")
}

stor_source_allowed(p_storage, i_storage, ctx) if {
	p_storage.source == "$(blk-source)"
	i_storage.driver == "blk"
	print("stor_source_allowed 2: virtio-blk address =", i_storage.source)
	regex.match(BLK_SOURCE_REGEX, i_storage.source)
	print("stor_source_allowed 2: true")
}

stor_source_allowed(p_storage, i_storage, ctx) if {
	p_storage.source == "$(scsi-source)"
	i_storage.driver == "scsi"
	print("stor_source_allowed 3: scsi address =", i_storage.source)
	regex.match(SCSI_SOURCE_REGEX, i_storage.source)
	print("stor_source_allowed 3: true")
}

stor_source_allowed(p_storage, i_storage, ctx) if {
	startswith(p_storage.source, "^")
	pattern := expand_ctx(p_storage.source, ctx)
	print("stor_source_allowed 4: pattern =", pattern, "input =", i_storage.source)
	regex.match(pattern, i_storage.source)
	print("stor_source_allowed 4: true")
}

stor_fields_allowed(p_storage, i_storage) if {
	print("stor_fields_allowed: driver options =", i_storage.driver_options)
	p_storage.driver_options == i_storage.driver_options

	print("stor_fields_allowed: fstype =", i_storage.fstype, "fs_group =", i_storage.fs_group, "shared =", i_storage.shared)
	p_storage.fstype == i_storage.fstype
	p_storage.fs_group == i_storage.fs_group
	p_storage.shared == i_storage.shared

	print("stor_fields_allowed: options =", i_storage.options)
	p_storage.options == i_storage.options

	print("stor_fields_allowed: true")
}

# Block devices are mounted at a path derived from their address.
stor_mount_point_allowed(p_storage, i_storage, ctx) if {
	i_storage.driver in {"blk", "scsi"}
	device_id := base64url.encode(i_storage.source)
	expected := expand_ctx(replace(p_storage.mount_point, "$(b64-device-id)", device_id), ctx)
	print("stor_mount_point_allowed 1: expected =", expected, "input =", i_storage.mount_point)
	expected == i_storage.mount_point
	print("stor_mount_point_allowed 1: true")
}

# Directories shared with the host, per sandbox or per container.
stor_mount_point_allowed(p_storage, i_storage, ctx) if {
	i_storage.fstype in {"local", "bind"}
	pattern := expand_ctx(p_storage.mount_point, ctx)
	print("stor_mount_point_allowed 2: pattern =", pattern, "input =", i_storage.mount_point)
	text_matches(pattern, i_storage.mount_point)
	not has_dot_dot(i_storage.mount_point)
	print("stor_mount_point_allowed 2: true")
}

# Memory-backed volumes.
stor_mount_point_allowed(p_storage, i_storage, ctx) if {
	i_storage.driver == "ephemeral"
	i_storage.fstype == "tmpfs"
	pattern := expand_ctx(p_storage.mount_point, ctx)
	print("stor_mount_point_allowed 3: pattern =", pattern, "input =", i_storage.mount_point)
	text_matches(pattern, i_storage.mount_point)
	print("stor_mount_point_allowed 3: true")
}

######################################################################
# Devices

dev_allowed(p_devices, i_devices, i_oci) if {
	print("dev_allowed: start")

	vfio_path := policy_data.devices.vfio.device_path
	p_list := as_array(p_devices)
	i_list := as_array(i_devices)

	p_volume := [d | some d in p_list; not startswith(d.container_path, vfio_path)]
	i_volume := [d | some d in i_list; not startswith(d.container_path, vfio_path)]
	print("dev_allowed: policy volume devices =", p_volume, "input =", i_volume)
	every i_device in i_volume {
		dev_volume_allowed(p_volume, i_device)
	}

	p_vfio := [d | some d in p_list; startswith(d.container_path, vfio_path)]
	i_vfio := [d | some d in i_list; startswith(d.container_path, vfio_path)]
	print("dev_allowed: policy vfio devices =", p_vfio, "input =", i_vfio)
	dev_vfio_allowed(p_vfio, i_vfio, i_oci)

	print("dev_allowed: true")
}

dev_volume_allowed(p_volume, i_device) if {
	print("dev_volume_allowed: input =", i_device)

	some p_device in p_volume
	p_device.container_path == i_device.container_path
	p_device.type_ == i_device.type_

	print("dev_volume_allowed: true")
}

# The numbers of /dev/vfio/devices/vfioN devices, and of the CDI annotations
# that requested them.
dev_vfio_numbers(devices) := [n |
	some d in devices
	n := trim_prefix(d.container_path, policy_data.devices.vfio.device_path)
	regex.match("^[0-9]+$", n)
]

dev_cdi_numbers(annotations) := [n |
	some key, _ in as_object(annotations)
	startswith(key, ANNO_CDI_VFIO_PREFIX)
	n := trim_prefix(key, ANNO_CDI_VFIO_PREFIX)
	regex.match("^[0-9]+$", n)
]

# No passthrough device anywhere.
dev_vfio_allowed(p_vfio, i_vfio, i_oci) if {
	print("dev_vfio_allowed 1: start")
	count(p_vfio) == 0
	count(i_vfio) == 0
	count(dev_cdi_numbers(i_oci.Annotations)) == 0
	print("dev_vfio_allowed 1: true")
}

# Hot-plugged devices: as many as the policy has, each well-formed, one CDI
# annotation per device number.
dev_vfio_allowed(p_vfio, i_vfio, i_oci) if {
	print("dev_vfio_allowed 2: start")
	count(i_vfio) > 0
	count(i_vfio) == count(p_vfio)

	every i_device in i_vfio {
		dev_vfio_device_allowed(p_vfio, i_device)
	}

	numbers := dev_vfio_numbers(i_vfio)
	cdi := dev_cdi_numbers(i_oci.Annotations)
	print("dev_vfio_allowed 2: device numbers =", numbers, "cdi numbers =", cdi)
	count(numbers) == count(as_set(numbers))
	count(cdi) == count(as_set(cdi))
	as_set(numbers) == as_set(cdi)

	print("dev_vfio_allowed 2: true")
}

# Cold-plugged devices: none in the request, one CDI annotation per policy device.
dev_vfio_allowed(p_vfio, i_vfio, i_oci) if {
	print("dev_vfio_allowed 3: start")
	count(i_vfio) == 0
	count(p_vfio) > 0

	cdi := dev_cdi_numbers(i_oci.Annotations)
	print("dev_vfio_allowed 3: cdi numbers =", cdi)
	count(cdi) == count(as_set(cdi))
	count(cdi) == count(p_vfio)

	print("dev_vfio_allowed 3: true")
}

dev_vfio_device_allowed(p_vfio, i_device) if {
	print("dev_vfio_device_allowed: input =", i_device)

	vfio := policy_data.devices.vfio
	number := trim_prefix(i_device.container_path, vfio.device_path)
	regex.match("^[0-9]+$", number)
	i_device.id == concat("", [vfio.id_prefix, number])

	some p_device in p_vfio
	p_device.type_ == i_device.type_
	p_device.vm_path == i_device.vm_path

	options := as_array(i_device.options)
	count(options) > 0
	every option in options {
		regex.match(PCI_OPTION_REGEX, option)
	}

	print("dev_vfio_device_allowed: true")
}

######################################################################
# ExecProcessRequest

ExecProcessRequest if {
	print("ExecProcessRequest: input =", input)

	ex_request_shape_allowed
	st_container_known(input.container_id)

	p_container := st_container(input.container_id)
	print("ExecProcessRequest: container", input.container_id, "runs policy container", p_container.name)

	kind := ex_command_kind(p_container, input.process.Args)
	print("ExecProcessRequest: command kind =", kind)
	kind != "denied"

	ctx := st_context(input.container_id)
	ex_process_allowed(kind, p_container.OCI.Process, input.process, ctx)

	print("ExecProcessRequest: true")
}

ex_request_shape_allowed if {
	print("ex_request_shape_allowed: start")

	is_null(input.string_user)
	regex.match(CONTAINER_ID_REGEX, input.container_id)

	# A new process needs an id of its own; the container's id names its
	# init process.
	count(input.exec_id) > 0
	input.exec_id != input.container_id

	i_process := input.process
	count(object.get(i_process, "SelinuxLabel", "")) == 0
	count(as_array(i_process.Args)) > 0

	print("ex_request_shape_allowed: true")
} else := false if {
	print("ex_request_shape_allowed: string_user, a malformed id, an exec id equal to the container id, an SELinux label or an empty command")
}

# "probe": one of the container's own commands (its probes, from the pod
# spec). "interactive": a command the policy allows in any container.
ex_command_kind(p_container, args) := "probe" if {
	print("ex_command_kind: container commands =", p_container.exec_commands)
	args in as_array(p_container.exec_commands)
} else := "interactive" if {
	allowed := policy_data.request_defaults.ExecProcessRequest.allowed_commands
	print("ex_command_kind: allowed commands =", allowed)
	args in as_array(allowed)
} else := "interactive" if {
	command := concat(" ", args)
	some pattern in as_array(policy_data.request_defaults.ExecProcessRequest.regex)
	print("ex_command_kind: command =", command, "pattern =", pattern)
	regex.match(pattern, command)
} else := "denied" if {
	print("ex_command_kind: the command", args, "is neither one of the container's nor allowed for all containers")
}

ex_process_allowed(kind, p_proc, i_proc, ctx) if {
	kind == "probe"
	print("ex_process_allowed probe: start")

	proc_shared_allowed(p_proc, i_proc, ctx)
	caps_none(i_proc.Capabilities)
	proc_terminal_allowed(p_proc, i_proc)
	proc_rlimits_allowed(p_proc, i_proc)
	proc_oom_score_allowed(i_proc)

	print("ex_process_allowed probe: true")
}

# Interactive commands may use a terminal (and TERM in the environment).
ex_process_allowed(kind, p_proc, i_proc, ctx) if {
	kind == "interactive"
	print("ex_process_allowed interactive: start")

	proc_shared_allowed(p_proc, i_proc, ctx)
	caps_none(i_proc.Capabilities)
	proc_rlimits_allowed(p_proc, i_proc)

	print("ex_process_allowed interactive: true")
}

######################################################################
# Requests on recorded containers and their processes

StartContainerRequest if {
	print("StartContainerRequest: container_id =", input.container_id)
	st_container_known(input.container_id)
	print("StartContainerRequest: true")
}

RemoveContainerRequest := {"allowed": true, "ops": ops} if {
	print("RemoveContainerRequest: input =", input)

	# Unknown ids are refused here rather than left to fail as a state update.
	st_container_known(input.container_id)
	ops := st_release(input.container_id)

	print("RemoveContainerRequest: true, state ops:", ops)
}

SignalProcessRequest if {
	print("SignalProcessRequest: input =", input)

	st_container_known(input.container_id)
	sig_allowed(input.signal)

	print("SignalProcessRequest: true")
}

sig_allowed(signal) if {
	allowed := policy_data.request_defaults.SignalProcessRequest.allowed_signals
	print("sig_allowed: signal =", signal, "allowed =", allowed)
	signal in allowed
	print("sig_allowed: true")
} else := false if {
	print("sig_allowed: signal", signal, "is not one the runtime sends")
}

ReadStreamRequest if {
	print("ReadStreamRequest: container_id =", input.container_id, "exec_id =", input.exec_id)
	policy_data.request_defaults.ReadStreamRequest == true
	st_container_known(input.container_id)
	print("ReadStreamRequest: true")
}

WriteStreamRequest if {
	print("WriteStreamRequest: container_id =", input.container_id, "exec_id =", input.exec_id)
	policy_data.request_defaults.WriteStreamRequest == true
	st_container_known(input.container_id)
	print("WriteStreamRequest: true")
}

CloseStdinRequest if {
	print("CloseStdinRequest: container_id =", input.container_id, "exec_id =", input.exec_id)
	policy_data.request_defaults.CloseStdinRequest == true
	st_container_known(input.container_id)
	print("CloseStdinRequest: true")
}

# Resource updates only: no device cgroup rules, no block I/O or network classes.
UpdateContainerRequest if {
	print("UpdateContainerRequest: input =", input)

	policy_data.request_defaults.UpdateContainerRequest == true
	st_container_known(input.container_id)

	resources := as_object(input.resources)
	count(as_array(object.get(resources, "Devices", []))) == 0
	is_null(object.get(resources, "BlockIO", null))
	is_null(object.get(resources, "Network", null))
	lx_resources_allowed({"Resources": resources})

	print("UpdateContainerRequest: true")
}

GetDiagnosticDataRequest if {
	print("GetDiagnosticDataRequest: start")
	policy_data.request_defaults.GetDiagnosticDataRequest == true
	print("GetDiagnosticDataRequest: true")
}

SetPolicyRequest := false if {
	print("SetPolicyRequest: refused; the policy measured at boot stays in force")
}

######################################################################
# CopyFileRequest: files the runtime shares with containers

CopyFileRequest if {
	print("CopyFileRequest: input =", input)

	cf_common_allowed
	cf_type_allowed(input.file_type)

	print("CopyFileRequest: true")
}

cf_common_allowed if {
	print("cf_common_allowed: path =", input.path)
	not has_dot_dot(input.path)

	print("cf_common_allowed: size =", input.file_size, "limit =", policy_data.kata_config.max_copy_file_size)
	input.file_size <= policy_data.kata_config.max_copy_file_size

	print("cf_common_allowed: file mode =", input.file_mode, "dir mode =", input.dir_mode)
	bits.and(input.file_mode, MODE_SETID_BITS) == 0
	bits.and(input.dir_mode, MODE_SETID_BITS) == 0

	print("cf_common_allowed: true")
}

cf_type_allowed(file_type) if {
	print("cf_type_allowed regular: type =", file_type)
	file_type == "Regular"
	cf_path_allowed(input.path, "")
	print("cf_type_allowed regular: true")
}

cf_type_allowed(file_type) if {
	print("cf_type_allowed directory: type =", file_type)
	file_type == "Directory"
	cf_path_allowed(input.path, "")
	print("cf_type_allowed directory: true")
}

# Symlinks (service account tokens are "..data" links) live below a shared
# directory, never at its top, and point somewhere relative and inside.
cf_type_allowed(file_type) if {
	print("cf_type_allowed symlink: type =", file_type, "target =", input.symlink_target)
	file_type == "Symlink"
	cf_path_allowed(input.path, "[^/]+/.+")

	target := input.symlink_target
	is_string(target)
	not startswith(target, "/")
	not has_dot_dot(target)

	print("cf_type_allowed symlink: true")
}

cf_path_allowed(path, suffix) if {
	some raw in policy_data.request_defaults.CopyFileRequest
	common := expand_common(raw)
	pattern := concat("", [replace(common, "$(bundle-id)", "[a-f0-9]{64}"), suffix])
	print("cf_path_allowed: pattern =", pattern, "path =", path)
	regex.match(pattern, path)
	print("cf_path_allowed: true")
}

######################################################################
# CreateSandboxRequest

# The sandbox id is pinned here already: every container must then name it.
CreateSandboxRequest := {"allowed": true, "ops": ops} if {
	print("CreateSandboxRequest: input =", input)

	sb_hooks_allowed
	sb_kernel_modules_allowed
	sb_pidns_allowed
	sb_id_allowed
	sb_hostname_allowed
	sb_dns_allowed
	sb_storages_allowed(as_array(input.storages))

	ops := st_claim("sandbox_id", input.sandbox_id)
	print("CreateSandboxRequest: true, state ops:", ops)
}

sb_hooks_allowed if {
	print("sb_hooks_allowed: guest_hook_path =", input.guest_hook_path)
	count(input.guest_hook_path) == 0
	print("sb_hooks_allowed: true")
}

sb_kernel_modules_allowed if {
	print("sb_kernel_modules_allowed: kernel_modules =", input.kernel_modules)
	count(as_array(input.kernel_modules)) == 0
	print("sb_kernel_modules_allowed: true")
}

sb_pidns_allowed if {
	print("sb_pidns_allowed: sandbox_pidns =", input.sandbox_pidns)
	input.sandbox_pidns == false
	print("sb_pidns_allowed: true")
}

sb_id_allowed if {
	print("sb_id_allowed: sandbox_id =", input.sandbox_id)
	regex.match(CONTAINER_ID_REGEX, input.sandbox_id)
	print("sb_id_allowed: true")
}

sb_hostname_allowed if {
	print("sb_hostname_allowed: hostname =", input.hostname, "pattern =", policy_data.sandbox.hostname)
	regex.match(policy_data.sandbox.hostname, input.hostname)
	print("sb_hostname_allowed: true")
}

sb_dns_allowed if {
	print("sb_dns_allowed: dns =", input.dns)
	every line in as_array(input.dns) {
		sb_dns_line_allowed(line)
	}
	print("sb_dns_allowed: true")
}

sb_dns_line_allowed(line) if {
	some raw in policy_data.sandbox.dns_line_regex
	pattern := expand_common(raw)
	print("sb_dns_line_allowed: line =", line, "pattern =", pattern)
	regex.match(pattern, line)
	print("sb_dns_line_allowed: true")
}

sb_storages_allowed(i_storages) if {
	print("sb_storages_allowed: input =", i_storages)

	p_storages := policy_data.sandbox.storages
	every i_storage in i_storages {
		sb_storage_allowed(p_storages, i_storage)
	}

	print("sb_storages_allowed: true")
}

sb_storage_allowed(p_storages, i_storage) if {
	print("sb_storage_allowed: input =", i_storage)
	some p_storage in p_storages
	p_storage == i_storage
	print("sb_storage_allowed: true")
}

######################################################################
# Network set-up

UpdateInterfaceRequest if {
	print("UpdateInterfaceRequest: input =", input)

	defaults := policy_data.request_defaults.UpdateInterfaceRequest
	iface := input.interface

	net_if_name_allowed(iface, defaults)
	net_if_hwaddr_allowed(iface, defaults)
	net_if_flags_allowed(iface, defaults)
	net_if_mtu_allowed(iface, defaults)
	net_if_addresses_allowed(iface)

	print("UpdateInterfaceRequest: true")
}

net_if_name_allowed(iface, defaults) if {
	print("net_if_name_allowed: name =", iface.name, "device =", iface.device, "forbidden =", defaults.forbidden_names)
	not iface.name in defaults.forbidden_names
	not iface.device in defaults.forbidden_names
	print("net_if_name_allowed: true")
}

net_if_hwaddr_allowed(iface, defaults) if {
	hwaddr := lower(iface.hwAddr)
	print("net_if_hwaddr_allowed: hwAddr =", hwaddr)
	regex.match(MAC_REGEX, hwaddr)
	not hwaddr in defaults.forbidden_hw_addrs
	print("net_if_hwaddr_allowed: true")
}

# Only the flags the policy lists (IFF_NOARP in practice) may be set.
net_if_flags_allowed(iface, defaults) if {
	print("net_if_flags_allowed: raw_flags =", iface.raw_flags, "allowed =", defaults.allow_raw_flags)
	bits.and(iface.raw_flags, bits.negate(defaults.allow_raw_flags)) == 0
	print("net_if_flags_allowed: true")
}

net_if_mtu_allowed(iface, defaults) if {
	print("net_if_mtu_allowed: mtu =", iface.mtu)
	iface.mtu >= defaults.min_mtu
	iface.mtu <= defaults.max_mtu
	print("net_if_mtu_allowed: true")
}

net_if_addresses_allowed(iface) if {
	every address in as_array(iface.IPAddresses) {
		net_address_allowed(address)
	}
	print("net_if_addresses_allowed: true")
}

net_address_allowed(address) if {
	print("net_address_allowed 1: ipv4 =", address)
	address.family == 0
	is_ipv4(address.address)
	not startswith(address.address, "127.")
	mask := to_number(address.mask)
	mask >= 0
	mask <= 32
	print("net_address_allowed 1: true")
}

net_address_allowed(address) if {
	print("net_address_allowed 2: ipv6 =", address)
	address.family == 1
	is_ipv6(address.address)
	address.address != "::1"
	mask := to_number(address.mask)
	mask >= 0
	mask <= 128
	print("net_address_allowed 2: true")
}

UpdateRoutesRequest if {
	print("UpdateRoutesRequest: input =", input)

	defaults := policy_data.request_defaults.UpdateRoutesRequest
	print("UpdateRoutesRequest: policy =", defaults)

	every route in as_array(input.routes.Routes) {
		net_route_allowed(route, defaults)
	}

	print("UpdateRoutesRequest: true")
}

net_route_allowed(route, defaults) if {
	print("net_route_allowed: route =", route)

	not route.device in defaults.forbidden_device_names
	every pattern in defaults.forbidden_source_regex {
		not regex.match(pattern, route.source)
	}
	route.scope in defaults.allowed_scopes
	net_route_gateway_allowed(route.gateway)

	print("net_route_allowed: true")
}

net_route_gateway_allowed(gateway) if gateway == ""

net_route_gateway_allowed(gateway) if {
	is_ipv4(gateway)
	not startswith(gateway, "127.")
}

net_route_gateway_allowed(gateway) if {
	is_ipv6(gateway)
	gateway != "::1"
}

AddARPNeighborsRequest if {
	print("AddARPNeighborsRequest: input =", input)

	defaults := policy_data.request_defaults.AddARPNeighborsRequest
	every neighbour in as_array(input.neighbors.ARPNeighbors) {
		net_neighbour_allowed(neighbour, defaults)
	}

	print("AddARPNeighborsRequest: true")
}

net_neighbour_allowed(neighbour, defaults) if {
	print("net_neighbour_allowed: neighbour =", neighbour)

	not neighbour.device in defaults.forbidden_device_names
	address := neighbour.toIPAddress
	address.mask == ""
	every pattern in defaults.forbidden_cidrs_regex {
		not regex.match(pattern, address.address)
	}
	neighbour.state in defaults.allowed_states
	bits.and(neighbour.flags, bits.negate(defaults.allowed_flags)) == 0

	print("net_neighbour_allowed: true")
}

ListInterfacesRequest if {
	print("ListInterfacesRequest: start")
	policy_data.request_defaults.ListInterfacesRequest == true
	print("ListInterfacesRequest: true")
}

ListRoutesRequest if {
	print("ListRoutesRequest: start")
	policy_data.request_defaults.ListRoutesRequest == true
	print("ListRoutesRequest: true")
}

######################################################################
# Guest resources

OnlineCPUMemRequest if {
	print("OnlineCPUMemRequest: input =", input)
	input.nb_cpus >= 0
	input.nb_cpus <= policy_data.kata_config.allowed_nb_cpus
	print("OnlineCPUMemRequest: true")
}

# Statistics of volumes this policy mounted, by their guest path.
VolumeStatsRequest if {
	print("VolumeStatsRequest: volume_guest_path =", input.volume_guest_path)
	path := input.volume_guest_path
	not has_dot_dot(path)
	startswith(path, concat("", [policy_data.common.spath, "/"]))
	print("VolumeStatsRequest: true")
}

######################################################################
# Terminals, pausing, and the other requests on running containers

TtyWinResizeRequest if {
	print("TtyWinResizeRequest: input =", input)

	st_container_known(input.container_id)
	tty_size_allowed(input.row, input.column)

	print("TtyWinResizeRequest: true")
}

tty_size_allowed(rows, columns) if {
	limits := policy_data.request_defaults.TtyWinResizeRequest
	print("tty_size_allowed: rows =", rows, "columns =", columns, "limits =", limits)

	is_number(rows)
	is_number(columns)
	rows >= 1
	columns >= 1
	rows <= limits.max_rows
	columns <= limits.max_columns

	print("tty_size_allowed: true")
}

PauseContainerRequest if {
	print("PauseContainerRequest: container_id =", input.container_id)
	policy_data.request_defaults.PauseContainerRequest == true
	st_container_known(input.container_id)
	print("PauseContainerRequest: true")
}

ResumeContainerRequest if {
	print("ResumeContainerRequest: container_id =", input.container_id)
	policy_data.request_defaults.ResumeContainerRequest == true
	st_container_known(input.container_id)
	print("ResumeContainerRequest: true")
}

######################################################################
# Ephemeral (memory-backed) volumes added while the sandbox runs

UpdateEphemeralMountsRequest if {
	print("UpdateEphemeralMountsRequest: input =", input)

	defaults := policy_data.request_defaults.UpdateEphemeralMountsRequest
	defaults.allowed == true

	storages := as_array(input.storages)
	print("UpdateEphemeralMountsRequest: storages =", count(storages))
	every i_storage in storages {
		eph_storage_allowed(i_storage, defaults)
	}

	print("UpdateEphemeralMountsRequest: true")
}

eph_storage_allowed(i_storage, defaults) if {
	print("eph_storage_allowed: input =", i_storage)

	i_storage.driver == "ephemeral"
	i_storage.fstype == "tmpfs"
	i_storage.source == "tmpfs"
	i_storage.shared == false

	mount_point := i_storage.mount_point
	print("eph_storage_allowed: mount point =", mount_point, "pattern =", defaults.mount_point_regex)
	regex.match(defaults.mount_point_regex, mount_point)
	not has_dot_dot(mount_point)

	every option in as_array(i_storage.options) {
		eph_option_allowed(option, defaults)
	}

	print("eph_storage_allowed: true")
}

# Mount options as in the defaults, or a size no larger than they allow.
eph_option_allowed(option, defaults) if {
	print("eph_option_allowed 1: option =", option)
	option in defaults.allowed_options
	print("eph_option_allowed 1: true")
}

eph_option_allowed(option, defaults) if {
	print("eph_option_allowed 2: option =", option)
	startswith(option, "size=")
	size := to_number(trim_prefix(option, "size="))
	print("eph_option_allowed 2: size =", size, "limit =", defaults.max_size)
	size > 0
	size <= defaults.max_size
	print("eph_option_allowed 2: true")
}

######################################################################
# Guest memory, clock, entropy and metrics

# Probed memory is added in whole sections (128 MiB), never below 4 GiB.
MemHotplugByProbeRequest if {
	print("MemHotplugByProbeRequest: input =", input)

	defaults := policy_data.request_defaults.MemHotplugByProbeRequest
	defaults.allowed == true

	addresses := as_array(input.memHotplugProbeAddr)
	count(addresses) > 0
	count(addresses) <= defaults.max_addresses
	every address in addresses {
		mem_probe_address_allowed(address, defaults)
	}

	print("MemHotplugByProbeRequest: true")
}

mem_probe_address_allowed(address, defaults) if {
	print("mem_probe_address_allowed: address =", address)
	is_number(address)
	address >= defaults.min_address
	bits.and(address, defaults.section_size - 1) == 0
	print("mem_probe_address_allowed: true")
}

# Setting the clock is only for VMs without a trustworthy time source; the
# time may never go back before the earliest the policy allows.
SetGuestDateTimeRequest if {
	print("SetGuestDateTimeRequest: input =", input)

	defaults := policy_data.request_defaults.SetGuestDateTimeRequest
	defaults.allowed == true

	is_number(input.Sec)
	is_number(input.Usec)
	input.Sec >= defaults.min_seconds
	input.Usec >= 0
	input.Usec < 1000000

	print("SetGuestDateTimeRequest: true")
}

# More entropy never hurts, in moderation.
ReseedRandomDevRequest if {
	print("ReseedRandomDevRequest: bytes =", count(input.data))

	defaults := policy_data.request_defaults.ReseedRandomDevRequest
	defaults.allowed == true
	count(input.data) > 0
	count(input.data) <= defaults.max_bytes

	print("ReseedRandomDevRequest: true")
}

GetMetricsRequest if {
	print("GetMetricsRequest: start")
	policy_data.request_defaults.GetMetricsRequest == true
	print("GetMetricsRequest: true")
}

MemAgentMemcgConfig if {
	print("MemAgentMemcgConfig: input =", input)
	policy_data.request_defaults.MemAgentMemcgConfig == true
	print("MemAgentMemcgConfig: true")
}

MemAgentCompactConfig if {
	print("MemAgentCompactConfig: input =", input)
	policy_data.request_defaults.MemAgentCompactConfig == true
	print("MemAgentCompactConfig: true")
}

######################################################################
# Volumes, swap and packet filtering

# Growing a block volume this policy mounted; never shrinking it to nothing.
ResizeVolumeRequest if {
	print("ResizeVolumeRequest: input =", input)

	policy_data.request_defaults.ResizeVolumeRequest == true
	path := input.volume_guest_path
	not has_dot_dot(path)
	startswith(path, concat("", [policy_data.common.spath, "/"]))
	is_number(input.size)
	input.size > 0

	print("ResizeVolumeRequest: true")
}

# Swap would write guest memory, secrets included, to a disk the host reads.
AddSwapRequest := false if {
	print("AddSwapRequest: refused; swap would expose guest memory to the host")
}

AddSwapPathRequest := false if {
	print("AddSwapPathRequest: refused; swap would expose guest memory to the host")
}

GetIPTablesRequest if {
	print("GetIPTablesRequest: is_ipv6 =", input.is_ipv6)
	policy_data.request_defaults.GetIPTablesRequest == true
	print("GetIPTablesRequest: true")
}

# The packet filter protects the pod's traffic; the host does not get to
# replace it unless the policy says so.
SetIPTablesRequest if {
	print("SetIPTablesRequest: is_ipv6 =", input.is_ipv6, "bytes =", count(input.data))
	policy_data.request_defaults.SetIPTablesRequest == true
	print("SetIPTablesRequest: true")
}

######################################################################
# The pod, as a generator would describe it.

policy_data := {
  "containers": [
    {
      "name": "",
      "OCI": {
        "Version": "1.1.0",
        "Process": {
          "Terminal": false,
          "User": {
            "UID": 1001,
            "GID": 1001,
            "AdditionalGids": [
              1001,
              2000
            ],
            "Username": ""
          },
          "Args": [
            "/pause"
          ],
          "Env": [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
          ],
          "Cwd": "/",
          "Capabilities": {
            "Ambient": [],
            "Bounding": [
              "$(default_caps)"
            ],
            "Effective": [
              "$(default_caps)"
            ],
            "Inheritable": [],
            "Permitted": [
              "$(default_caps)"
            ]
          },
          "NoNewPrivileges": true,
          "Rlimits": [],
          "ApparmorProfile": ""
        },
        "Root": {
          "Path": "$(root_path)",
          "Readonly": true
        },
        "Mounts": [
          {
            "destination": "/proc",
            "source": "proc",
            "type_": "proc",
            "options": [
              "nosuid",
              "noexec",
              "nodev"
            ]
          },
          {
            "destination": "/dev",
            "source": "tmpfs",
            "type_": "tmpfs",
            "options": [
              "nosuid",
              "strictatime",
              "mode=755",
              "size=65536k"
            ]
          },
          {
            "destination": "/dev/pts",
            "source": "devpts",
            "type_": "devpts",
            "options": [
              "nosuid",
              "noexec",
              "newinstance",
              "ptmxmode=0666",
              "mode=0620",
              "gid=5"
            ]
          },
          {
            "destination": "/dev/shm",
            "source": "/run/kata-containers/sandbox/shm",
            "type_": "bind",
            "options": [
              "rbind"
            ]
          },
          {
            "destination": "/dev/mqueue",
            "source": "mqueue",
            "type_": "mqueue",
            "options": [
              "nosuid",
              "noexec",
              "nodev"
            ]
          },
          {
            "destination": "/sys",
            "source": "sysfs",
            "type_": "sysfs",
            "options": [
              "nosuid",
              "noexec",
              "nodev",
              "ro"
            ]
          },
          {
            "destination": "/etc/resolv.conf",
            "source": "$(sfprefix)resolv.conf$",
            "type_": "bind",
            "options": [
              "rbind",
              "ro",
              "nosuid",
              "nodev",
              "noexec"
            ]
          }
        ],
        "Annotations": {
          "io.katacontainers.pkg.oci.bundle_path": "/run/containerd/io.containerd.runtime.v2.task/k8s.io/$(bundle-id)",
          "io.katacontainers.pkg.oci.container_type": "pod_sandbox",
          "io.kubernetes.cri.container-type": "sandbox",
          "io.kubernetes.cri.sandbox-id": "^[a-z0-9]{64}$",
          "io.kubernetes.cri.sandbox-log-directory": "^/var/log/pods/$(sandbox-namespace)_$(sandbox-name)_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
          "io.kubernetes.cri.sandbox-name": "^ledger(-[a-z0-9]{5,10}){0,2}$",
          "io.kubernetes.cri.sandbox-namespace": "finance",
          "nerdctl/network-namespace": "^/var/run/netns/cni-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
        },
        "Linux": {
          "Namespaces": [
            {
              "Type": "ipc",
              "Path": ""
            },
            {
              "Type": "uts",
              "Path": ""
            },
            {
              "Type": "mount",
              "Path": ""
            }
          ],
          "MaskedPaths": [
            "/proc/acpi",
            "/proc/asound",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/sys/firmware",
            "/proc/scsi"
          ],
          "ReadonlyPaths": [
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger"
          ],
          "Devices": [],
          "Sysctl": {
            "net.ipv4.ip_unprivileged_port_start": "0",
            "net.ipv4.ping_group_range": "0 2147483647"
          }
        }
      },
      "storages": [],
      "devices": [],
      "sandbox_pidns": false,
      "exec_commands": [],
      "runtime_anno_patterns": {}
    },
    {
      "name": "api",
      "OCI": {
        "Version": "1.1.0",
        "Process": {
          "Terminal": false,
          "User": {
            "UID": 1001,
            "GID": 1001,
            "AdditionalGids": [
              1001,
              2000
            ],
            "Username": ""
          },
          "Args": [
            "/usr/local/bin/ledger-api",
            "serve",
            "--listen=0.0.0.0:8443",
            "--data-dir=/var/lib/ledger",
            "--snapshot-interval=300s"
          ],
          "Env": [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOSTNAME=$(host-name)",
            "LEDGER_ENV=production",
            "LEDGER_LOG_LEVEL=info",
            "LEDGER_DATA_DIR=/var/lib/ledger",
            "LEDGER_MAX_CONNECTIONS=256",
            "GOMAXPROCS=$(resource-field)",
            "POD_NAME=$(sandbox-name)",
            "POD_NAMESPACE=$(sandbox-namespace)",
            "POD_IP=$(pod-ip)"
          ],
          "Cwd": "/srv/ledger",
          "Capabilities": {
            "Ambient": [],
            "Bounding": [
              "CAP_CHOWN",
              "CAP_DAC_OVERRIDE",
              "CAP_FSETID",
              "CAP_FOWNER",
              "CAP_MKNOD",
              "CAP_SETGID",
              "CAP_SETUID",
              "CAP_SETFCAP",
              "CAP_SETPCAP",
              "CAP_NET_BIND_SERVICE",
              "CAP_SYS_CHROOT",
              "CAP_KILL",
              "CAP_AUDIT_WRITE"
            ],
            "Effective": [
              "CAP_CHOWN",
              "CAP_DAC_OVERRIDE",
              "CAP_FSETID",
              "CAP_FOWNER",
              "CAP_MKNOD",
              "CAP_SETGID",
              "CAP_SETUID",
              "CAP_SETFCAP",
              "CAP_SETPCAP",
              "CAP_NET_BIND_SERVICE",
              "CAP_SYS_CHROOT",
              "CAP_KILL",
              "CAP_AUDIT_WRITE"
            ],
            "Inheritable": [],
            "Permitted": [
              "CAP_CHOWN",
              "CAP_DAC_OVERRIDE",
              "CAP_FSETID",
              "CAP_FOWNER",
              "CAP_MKNOD",
              "CAP_SETGID",
              "CAP_SETUID",
              "CAP_SETFCAP",
              "CAP_SETPCAP",
              "CAP_NET_BIND_SERVICE",
              "CAP_SYS_CHROOT",
              "CAP_KILL",
              "CAP_AUDIT_WRITE"
            ]
          },
          "NoNewPrivileges": true,
          "Rlimits": [],
          "ApparmorProfile": ""
        },
        "Root": {
          "Path": "$(root_path)",
          "Readonly": true
        },
        "Mounts": [
          {
            "destination": "/proc",
            "source": "proc",
            "type_": "proc",
            "options": [
              "nosuid",
              "noexec",
              "nodev"
            ]
          },
          {
            "destination": "/dev",
            "source": "tmpfs",
            "type_": "tmpfs",
            "options": [
              "nosuid",
              "strictatime",
              "mode=755",
              "size=65536k"
            ]
          },
          {
            "destination": "/dev/pts",
            "source": "devpts",
            "type_": "devpts",
            "options": [
              "nosuid",
              "noexec",
              "newinstance",
              "ptmxmode=0666",
              "mode=0620",
              "gid=5"
            ]
          },
          {
            "destination": "/dev/mqueue",
            "source": "mqueue",
            "type_": "mqueue",
            "options": [
              "nosuid",
              "noexec",
              "nodev"
            ]
          },
          {
            "destination": "/sys",
            "source": "sysfs",
            "type_": "sysfs",
            "options": [
              "nosuid",
              "noexec",
              "nodev",
              "ro"
            ]
          },
          {
            "destination": "/sys/fs/cgroup",
            "source": "cgroup",
            "type_": "cgroup",
            "options": [
              "nosuid",
              "noexec",
              "nodev",
              "relatime",
              "ro"
            ]
          },
          {
            "destination": "/etc/hosts",
            "source": "$(sfprefix)hosts$",
            "type_": "bind",
            "options": [
              "rbind",
              "rprivate",
              "rw"
            ]
          },
          {
            "destination": "/dev/termination-log",
            "source": "$(sfprefix)termination-log$",
            "type_": "bind",
            "options": [
              "rbind",
              "rprivate",
              "rw"
            ]
          },
          {
            "destination": "/etc/hostname",
            "source": "$(sfprefix)hostname$",
            "type_": "bind",
            "options": [
              "rbind",
              "rprivate",
              "ro"
            ]
          },
          {
            "destination": "/etc/resolv.conf",
            "source": "$(sfprefix)resolv.conf$",
            "type_": "bind",
            "options": [
              "rbind",
              "rprivate",
              "ro"
            ]
          },
          {
            "destination": "/dev/shm",
            "source": "/run/kata-containers/sandbox/shm",
            "type_": "bind",
            "options": [
              "rbind"
            ]
          },
          {
            "destination": "/var/lib/ledger",
            "source": "",
            "type_": "bind",
            "options": [
              "rbind",
              "rprivate",
              "rw"
            ]
          }
        ],
        "Annotations": {
          "io.katacontainers.pkg.oci.bundle_path": "/run/containerd/io.containerd.runtime.v2.task/k8s.io/$(bundle-id)",
          "io.katacontainers.pkg.oci.container_type": "pod_container",
          "io.kubernetes.cri.container-name": "api",
          "io.kubernetes.cri.container-type": "container",
          "io.kubernetes.cri.image-name": "registry.local/ledger/api:2.4.1",
          "io.kubernetes.cri.sandbox-id": "^[a-z0-9]{64}$",
          "io.kubernetes.cri.sandbox-name": "^ledger(-[a-z0-9]{5,10}){0,2}$",
          "io.kubernetes.cri.sandbox-namespace": "finance"
        },
        "Linux": {
          "Namespaces": [
            {
              "Type": "ipc",
              "Path": ""
            },
            {
              "Type": "uts",
              "Path": ""
            },
            {
              "Type": "mount",
              "Path": ""
            }
          ],
          "MaskedPaths": [
            "/proc/acpi",
            "/proc/asound",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/sys/firmware",
            "/proc/scsi"
          ],
          "ReadonlyPaths": [
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger"
          ],
          "Devices": [],
          "Sysctl": {
            "net.ipv4.ip_unprivileged_port_start": "0",
            "net.ipv4.ping_group_range": "0 2147483647"
          }
        }
      },
      "storages": [
        {
          "driver": "blk",
          "driver_options": [
            "encryption_key=ephemeral",
            "create_filesystem"
          ],
          "source": "$(blk-source)",
          "fstype": "ext4",
          "options": [],
          "mount_point": "$(spath)/$(b64-device-id)",
          "fs_group": null,
          "shared": true
        }
      ],
      "devices": [],
      "sandbox_pidns": false,
      "exec_commands": [
        [
          "/usr/local/bin/ledger-api",
          "healthcheck",
          "--addr=127.0.0.1:8443"
        ],
        [
          "cat",
          "/var/lib/ledger/ready"
        ]
      ],
      "runtime_anno_patterns": {
        "^io\\.kubernetes\\.container\\.terminationMessagePath$": "^/[^\\x00]*$",
        "^io\\.kubernetes\\.container\\.terminationMessagePolicy$": "^(File|FallbackToLogsOnError)$"
      }
    },
    {
      "name": "exporter",
      "OCI": {
        "Version": "1.1.0",
        "Process": {
          "Terminal": false,
          "User": {
            "UID": 65534,
            "GID": 65534,
            "AdditionalGids": [
              2000,
              65534
            ],
            "Username": ""
          },
          "Args": [
            "/bin/ledger-exporter",
            "--web.listen-address=:9102",
            "--ledger.url=https://127.0.0.1:8443",
            "--ledger.data-dir=/var/lib/ledger"
          ],
          "Env": [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOSTNAME=$(host-name)",
            "EXPORTER_LISTEN=:9102",
            "EXPORTER_SCRAPE_INTERVAL=15s",
            "EXPORTER_TIMEOUT=5s",
            "LEDGER_URL=https://127.0.0.1:8443",
            "LEDGER_DATA_DIR=/var/lib/ledger",
            "LOG_LEVEL=warn",
            "GOMEMLIMIT=$(resource-field)",
            "POD_NAME=$(sandbox-name)",
            "POD_NAMESPACE=$(sandbox-namespace)",
            "NODE_NAME=$(node-name)",
            "HOST_IP=$(host-ip)",
            "POD_UID=$(pod-uid)"
          ],
          "Cwd": "/",
          "Capabilities": {
            "Ambient": [],
            "Bounding": [],
            "Effective": [],
            "Inheritable": [],
            "Permitted": []
          },
          "NoNewPrivileges": true,
          "Rlimits": [],
          "ApparmorProfile": ""
        },
        "Root": {
          "Path": "$(root_path)",
          "Readonly": true
        },
        "Mounts": [
          {
            "destination": "/proc",
            "source": "proc",
            "type_": "proc",
            "options": [
              "nosuid",
              "noexec",
              "nodev"
            ]
          },
          {
            "destination": "/dev",
            "source": "tmpfs",
            "type_": "tmpfs",
            "options": [
              "nosuid",
              "strictatime",
              "mode=755",
              "size=65536k"
            ]
          },
          {
            "destination": "/dev/pts",
            "source": "devpts",
            "type_": "devpts",
            "options": [
              "nosuid",
              "noexec",
              "newinstance",
              "ptmxmode=0666",
              "mode=0620",
              "gid=5"
            ]
          },
          {
            "destination": "/dev/mqueue",
            "source": "mqueue",
            "type_": "mqueue",
            "options": [
              "nosuid",
              "noexec",
              "nodev"
            ]
          },
          {
            "destination": "/sys",
            "source": "sysfs",
            "type_": "sysfs",
            "options": [
              "nosuid",
              "noexec",
              "nodev",
              "ro"
            ]
          },
          {
            "destination": "/sys/fs/cgroup",
            "source": "cgroup",
            "type_": "cgroup",
            "options": [
              "nosuid",
              "noexec",
              "nodev",
              "relatime",
              "ro"
            ]
          },
          {
            "destination": "/etc/hosts",
            "source": "$(sfprefix)hosts$",
            "type_": "bind",
            "options": [
              "rbind",
              "rprivate",
              "rw"
            ]
          },
          {
            "destination": "/dev/termination-log",
            "source": "$(sfprefix)termination-log$",
            "type_": "bind",
            "options": [
              "rbind",
              "rprivate",
              "rw"
            ]
          },
          {
            "destination": "/etc/hostname",
            "source": "$(sfprefix)hostname$",
            "type_": "bind",
            "options": [
              "rbind",
              "rprivate",
              "ro"
            ]
          },
          {
            "destination": "/etc/resolv.conf",
            "source": "$(sfprefix)resolv.conf$",
            "type_": "bind",
            "options": [
              "rbind",
              "rprivate",
              "ro"
            ]
          },
          {
            "destination": "/dev/shm",
            "source": "/run/kata-containers/sandbox/shm",
            "type_": "bind",
            "options": [
              "rbind"
            ]
          },
          {
            "destination": "/var/lib/ledger",
            "source": "",
            "type_": "bind",
            "options": [
              "rbind",
              "rprivate",
              "ro"
            ]
          }
        ],
        "Annotations": {
          "io.katacontainers.pkg.oci.bundle_path": "/run/containerd/io.containerd.runtime.v2.task/k8s.io/$(bundle-id)",
          "io.katacontainers.pkg.oci.container_type": "pod_container",
          "io.kubernetes.cri.container-name": "exporter",
          "io.kubernetes.cri.container-type": "container",
          "io.kubernetes.cri.image-name": "registry.local/ledger/exporter:0.9.3",
          "io.kubernetes.cri.sandbox-id": "^[a-z0-9]{64}$",
          "io.kubernetes.cri.sandbox-name": "^ledger(-[a-z0-9]{5,10}){0,2}$",
          "io.kubernetes.cri.sandbox-namespace": "finance"
        },
        "Linux": {
          "Namespaces": [
            {
              "Type": "ipc",
              "Path": ""
            },
            {
              "Type": "uts",
              "Path": ""
            },
            {
              "Type": "mount",
              "Path": ""
            }
          ],
          "MaskedPaths": [
            "/proc/acpi",
            "/proc/asound",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/sys/firmware",
            "/proc/scsi"
          ],
          "ReadonlyPaths": [
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger"
          ],
          "Devices": [],
          "Sysctl": {
            "net.ipv4.ip_unprivileged_port_start": "0",
            "net.ipv4.ping_group_range": "0 2147483647"
          }
        }
      },
      "storages": [
        {
          "driver": "blk",
          "driver_options": [
            "encryption_key=ephemeral",
            "create_filesystem"
          ],
          "source": "$(blk-source)",
          "fstype": "ext4",
          "options": [],
          "mount_point": "$(spath)/$(b64-device-id)",
          "fs_group": null,
          "shared": true
        }
      ],
      "devices": [],
      "sandbox_pidns": false,
      "exec_commands": [
        [
          "wget",
          "-q",
          "-O",
          "/dev/null",
          "http://127.0.0.1:9102/healthz"
        ]
      ],
      "runtime_anno_patterns": {
        "^io\\.kubernetes\\.container\\.terminationMessagePath$": "^/[^\\x00]*$",
        "^io\\.kubernetes\\.container\\.terminationMessagePolicy$": "^(File|FallbackToLogsOnError)$"
      }
    }
  ],
  "common": {
    "cpath": "/run/kata-containers/shared/containers",
    "root_path": "/run/kata-containers/$(bundle-id)/rootfs",
    "sfprefix": "^$(cpath)/(watchable/)?$(bundle-id)-[a-f0-9]{16}-",
    "spath": "/run/kata-containers/sandbox/storage",
    "ipv4_a": "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}",
    "ip_p": "[0-9]{1,5}",
    "svc_name": "[A-Z](?:[A-Z0-9_]{0,61}[A-Z0-9])?",
    "dns_label": "[a-zA-Z0-9_.-]+",
    "default_caps": [
      "CAP_CHOWN",
      "CAP_DAC_OVERRIDE",
      "CAP_FSETID",
      "CAP_FOWNER",
      "CAP_MKNOD",
      "CAP_NET_RAW",
      "CAP_SETGID",
      "CAP_SETUID",
      "CAP_SETFCAP",
      "CAP_SETPCAP",
      "CAP_NET_BIND_SERVICE",
      "CAP_SYS_CHROOT",
      "CAP_KILL",
      "CAP_AUDIT_WRITE"
    ],
    "privileged_caps": [
      "CAP_CHOWN",
      "CAP_DAC_OVERRIDE",
      "CAP_DAC_READ_SEARCH",
      "CAP_FOWNER",
      "CAP_FSETID",
      "CAP_KILL",
      "CAP_SETGID",
      "CAP_SETUID",
      "CAP_SETPCAP",
      "CAP_LINUX_IMMUTABLE",
      "CAP_NET_BIND_SERVICE",
      "CAP_NET_BROADCAST",
      "CAP_NET_ADMIN",
      "CAP_NET_RAW",
      "CAP_IPC_LOCK",
      "CAP_IPC_OWNER",
      "CAP_SYS_MODULE",
      "CAP_SYS_RAWIO",
      "CAP_SYS_CHROOT",
      "CAP_SYS_PTRACE",
      "CAP_SYS_PACCT",
      "CAP_SYS_ADMIN",
      "CAP_SYS_BOOT",
      "CAP_SYS_NICE",
      "CAP_SYS_RESOURCE",
      "CAP_SYS_TIME",
      "CAP_SYS_TTY_CONFIG",
      "CAP_MKNOD",
      "CAP_LEASE",
      "CAP_AUDIT_WRITE",
      "CAP_AUDIT_CONTROL",
      "CAP_SETFCAP",
      "CAP_MAC_OVERRIDE",
      "CAP_MAC_ADMIN",
      "CAP_SYSLOG",
      "CAP_WAKE_ALARM",
      "CAP_BLOCK_SUSPEND",
      "CAP_AUDIT_READ",
      "CAP_PERFMON",
      "CAP_BPF",
      "CAP_CHECKPOINT_RESTORE"
    ],
    "env_placeholders": {
      "$(host-name)": "^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
      "$(node-name)": "^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
      "$(pod-uid)": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
      "$(pod-ip)": "^$(ipv4)$",
      "$(host-ip)": "^$(ipv4)$",
      "$(resource-field)": "^[0-9]+(\\.[0-9]+)?([kMGTPE]i?|m)?$"
    }
  },
  "sandbox": {
    "hostname": "^ledger(-[a-z0-9]{5,10}){0,2}$",
    "dns_line_regex": [
      "^nameserver $(ipv4)$",
      "^search( [a-z0-9.-]+){1,6}$",
      "^options( [a-z0-9_:.-]+){1,6}$"
    ],
    "storages": [
      {
        "driver": "ephemeral",
        "driver_options": [],
        "source": "shm",
        "fstype": "tmpfs",
        "options": [
          "noexec",
          "nosuid",
          "nodev",
          "mode=1777",
          "size=67108864"
        ],
        "mount_point": "/run/kata-containers/sandbox/shm",
        "fs_group": null,
        "shared": false
      }
    ]
  },
  "request_defaults": {
    "CreateContainerRequest": {
      "allow_env_regex": [
        "^HOSTNAME=$(dns_label)$",
        "^$(svc_name)_PORT_$(ip_p)_(TCP|UDP|SCTP)=(tcp|udp|sctp)://$(ipv4):$(ip_p)$",
        "^$(svc_name)_PORT_$(ip_p)_(TCP|UDP|SCTP)_PROTO=(tcp|udp|sctp)$",
        "^$(svc_name)_PORT_$(ip_p)_(TCP|UDP|SCTP)_PORT=$(ip_p)$",
        "^$(svc_name)_PORT_$(ip_p)_(TCP|UDP|SCTP)_ADDR=$(ipv4)$",
        "^$(svc_name)_SERVICE_HOST=$(ipv4)$",
        "^$(svc_name)_SERVICE_PORT=$(ip_p)$",
        "^$(svc_name)_SERVICE_PORT_$(dns_label)=$(ip_p)$",
        "^$(svc_name)_PORT=(tcp|udp|sctp)://$(ipv4):$(ip_p)$",
        "^TERM=(xterm|xterm-256color|vt100)$"
      ]
    },
    "CopyFileRequest": [
      "$(sfprefix)"
    ],
    "ExecProcessRequest": {
      "allowed_commands": [],
      "regex": []
    },
    "SignalProcessRequest": {
      "allowed_signals": [
        1,
        2,
        3,
        9,
        10,
        12,
        15,
        17,
        18,
        19,
        20,
        28
      ]
    },
    "UpdateRoutesRequest": {
      "forbidden_device_names": [
        "lo"
      ],
      "forbidden_source_regex": [
        "^(?:0{0,4}:){0,7}0{0,3}1$",
        "^127\\.(?:[0-9]{1,3}\\.){2}[0-9]{1,3}$"
      ],
      "allowed_scopes": [
        0,
        253
      ]
    },
    "UpdateInterfaceRequest": {
      "allow_raw_flags": 128,
      "forbidden_names": [
        "lo"
      ],
      "forbidden_hw_addrs": [
        "00:00:00:00:00:00",
        "ff:ff:ff:ff:ff:ff"
      ],
      "min_mtu": 576,
      "max_mtu": 9000
    },
    "AddARPNeighborsRequest": {
      "forbidden_device_names": [
        "lo"
      ],
      "forbidden_cidrs_regex": [
        "^127\\.(?:[0-9]{1,3}\\.){2}[0-9]{1,3}$",
        "^0\\.0\\.0\\.0$"
      ],
      "allowed_states": [
        2,
        128
      ],
      "allowed_flags": 136
    },
    "CloseStdinRequest": false,
    "ReadStreamRequest": false,
    "WriteStreamRequest": false,
    "UpdateEphemeralMountsRequest": {
      "allowed": false,
      "mount_point_regex": "^/run/kata-containers/sandbox/ephemeral/[a-zA-Z0-9_.-]+$",
      "allowed_options": [
        "nodev",
        "nosuid",
        "noexec",
        "mode=0777",
        "mode=1777"
      ],
      "max_size": 1073741824
    },
    "GetDiagnosticDataRequest": false,
    "ListInterfacesRequest": true,
    "ListRoutesRequest": true,
    "UpdateContainerRequest": false,
    "PauseContainerRequest": false,
    "ResumeContainerRequest": false,
    "TtyWinResizeRequest": {
      "max_rows": 1000,
      "max_columns": 1000
    },
    "MemHotplugByProbeRequest": {
      "allowed": false,
      "min_address": 4294967296,
      "section_size": 134217728,
      "max_addresses": 64
    },
    "SetGuestDateTimeRequest": {
      "allowed": false,
      "min_seconds": 1704067200
    },
    "ReseedRandomDevRequest": {
      "allowed": true,
      "max_bytes": 4096
    },
    "GetMetricsRequest": false,
    "MemAgentMemcgConfig": false,
    "MemAgentCompactConfig": false,
    "ResizeVolumeRequest": false,
    "GetIPTablesRequest": false,
    "SetIPTablesRequest": false
  },
  "devices": {
    "vfio": {
      "device_path": "/dev/vfio/devices/vfio",
      "id_prefix": "vfio"
    }
  },
  "kata_config": {
    "oci_version": "1.1.0",
    "pause_container_image": "registry.local/pause:3.9",
    "guest_pull": true,
    "emptydir_mode": "block-encrypted",
    "cgroup_mount_extras_allowed": [
      "nsdelegate",
      "memory_recursiveprot"
    ],
    "min_oom_score_adj": -998,
    "max_copy_file_size": 1048576,
    "allowed_nb_cpus": 64
  }
}
