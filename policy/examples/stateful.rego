# peerpod-guest example policy: restrictive and stateful.
#
# Hand-written in the shape of genpolicy's output (rules, then a `policy_data`
# document describing the only pod the VM may run), small enough to read in one
# sitting. The pod it admits, in namespace "demo":
#
#   name:  web-app (a Deployment-style "web-app-<hash>-<id>" also fits)
#   pod:   runAsUser/runAsGroup 1000, automountServiceAccountToken: false,
#          no volumes; images are pulled inside the guest
#   pause: registry.local/pause:3.9 running /pause
#   web:   registry.local/web:1 running `/bin/httpd -f -p 8080` in /www, env
#          PORT=8080, allowPrivilegeEscalation: false, capabilities drop ALL,
#          readOnlyRootFilesystem: true
#   probe: readiness probe on "web": exec `cat /tmp/healthy` (shipped in the image)
#
# What it decides:
# - Requests that cannot change what runs in the VM (stats, waits, OOM events,
#   tty resize, signals, guest details, teardown) are allowed; all else is
#   denied unless a rule below allows it after its checks.
# - CreateContainer compares the request with each container of policy_data and,
#   on a match, records `container id -> index in policy_data.containers` in the
#   policy state (data.pstate). The first container also records the sandbox
#   name, and later containers must carry the same one. An id that is already
#   recorded is refused.
# - StartContainer and ExecProcess only apply to recorded containers; ExecProcess
#   only runs the commands listed for that container (its probe).
# - RemoveContainer forgets a recorded container; unknown ids are refused.
# - SetPolicy is refused: the policy measured at boot stays in force. Reading
#   container output (ReadStream, i.e. `kubectl logs`) is refused too, except
#   for containers the policy marks `logs_readable` (the demo's hello).
# - A third container, hello, shows the other way to get a root filesystem: one
#   baked into the pod VM image (rootfs_dir), bind-mounted, no image pull.
#
# Failed checks print why; the agent returns the last printed lines with its
# error, so the reason reaches the runtime's logs.
package agent_policy

import rego.v1

# Always allowed.
default DestroySandboxRequest := true
default GetOOMEventRequest := true
default GuestDetailsRequest := true
default SignalProcessRequest := true
default StatsContainerRequest := true
default TtyWinResizeRequest := true
default WaitProcessRequest := true

# Allowed by the rules below, after checks.
default CopyFileRequest := false
default CreateContainerRequest := false
default CreateSandboxRequest := false
default ExecProcessRequest := false
default RemoveContainerRequest := false
default StartContainerRequest := false
default UpdateInterfaceRequest := false
default UpdateRoutesRequest := false
default ReadStreamRequest := false

# Never allowed (every other entrypoint has no rule, which denies as well).
default WriteStreamRequest := false

SetPolicyRequest := false if print("denied: this policy cannot be replaced at run time")

# Output of containers whose logs the pod's owner lets the host read.
ReadStreamRequest if {
	idx := recorded_index(input.container_id)
	policy_data.containers[idx].logs_readable == true
}

SANDBOX_NAME := "io.kubernetes.cri.sandbox-name"

######## Policy state

# The only read of the state document: every rule goes through `pstate`.
pstate := data.pstate

state_path(key) := concat("/", ["/pstate", key])

# The index of the policy container a recorded container id runs.
recorded_index(cid) := idx if {
	idx := pstate[cid]
	is_number(idx)
}

container_recorded(cid) if {
	recorded_index(cid)
} else := false if {
	print("denied: container", cid, "was not created under this policy (or was removed)")
}

container_id_unused(cid) if {
	regex.match("^[a-f0-9]{64}$", cid)
	not pstate[cid]
} else := false if {
	print("denied: container id", cid, "is malformed or already recorded in the policy state")
}

# The first container of the pod records the sandbox name; the others must match it.
sandbox_name_allowed(name) if {
	pstate.sandbox_name == name
} else if {
	not pstate.sandbox_name
	regex.match(policy_data.sandbox.name_regex, name)
} else := false if {
	print("denied: sandbox name", name, "is not the recorded", object.get(pstate, "sandbox_name", "(none)"), "or does not match", policy_data.sandbox.name_regex)
}

sandbox_name_ops(name) := [] if {
	pstate.sandbox_name == name
} else := [{"op": "add", "path": state_path("sandbox_name"), "value": name}]

######## CreateContainer

CreateContainerRequest := {"allowed": true, "ops": ops} if {
	print("CreateContainerRequest: container_id =", input.container_id)
	create_input_plain
	container_id_unused(input.container_id)
	s_name := input.OCI.Annotations[SANDBOX_NAME]
	sandbox_name_allowed(s_name)

	idx := first_matching_container(input.OCI)
	idx >= 0

	ops := array.concat(sandbox_name_ops(s_name), [{"op": "add", "path": state_path(input.container_id), "value": idx}])
	print("CreateContainerRequest: allowed as policy container", idx, "state ops:", ops)
}

# Request fields this pod never uses and a host must not slip in.
create_input_plain if {
	is_null(input.string_user)
	count(input.shared_mounts) + count(input.devices) == 0
	input.sandbox_pidns == false
	is_null(input.OCI.Hooks)
	linux := input.OCI.Linux
	count(linux.UIDMappings) + count(linux.GIDMappings) + count(linux.Devices) + count(linux.Resources.Devices) == 0
	is_null(linux.Seccomp)
	linux.RootfsPropagation == ""
	input.OCI.Process.SelinuxLabel == ""
	input.OCI.Process.User.Username == ""
} else := false if {
	print("denied: the request sets hooks, devices, id mappings, a string user, shared mounts or a sandbox pid namespace")
}

first_matching_container(i_oci) := matches[0] if {
	matches := [idx | some idx, p in policy_data.containers; container_allowed(idx, p, i_oci)]
	count(matches) > 0
} else := -1 if {
	print("denied: no container of the policy matches this request")
}

container_allowed(idx, p, i_oci) if {
	print("CreateContainerRequest: comparing with policy container", idx, "(", p.type, p.name, ")")
	annotations_allowed(p, i_oci.Annotations)
	storages_allowed(p, input.storages, i_oci.Root.Path)
	caps_allowed(p.caps, i_oci.Process.Capabilities)
	process_allowed(p, i_oci.Process, i_oci.Annotations[SANDBOX_NAME])
	linux_allowed(i_oci)
	mounts_allowed(p.mounts, i_oci.Mounts, input.container_id)
	value_matches("OCI version", policy_data.oci_version, i_oci.Version)
	value_matches("read-only root", p.readonly_root, i_oci.Root.Readonly)
}

# The check every rule is built from: equal, or say what differs.
value_matches(what, p_value, i_value) if {
	p_value == i_value
} else := false if {
	print("denied:", concat("", [what, ":"]), "got", i_value, "but the policy expects", p_value)
}

annotations_allowed(p, annotations) if {
	every key, _ in annotations {
		annotation_key_allowed(key)
	}
	value_matches("container type", p.type, annotations["io.kubernetes.cri.container-type"])
	value_matches("kata container type", p.kata_type, annotations["io.katacontainers.pkg.oci.container_type"])
	value_matches("namespace", policy_data.sandbox.namespace, annotations["io.kubernetes.cri.sandbox-namespace"])
	value_matches("container name", p.name, object.get(annotations, "io.kubernetes.cri.container-name", ""))
	value_matches("image", p.image, object.get(annotations, "io.kubernetes.cri.image-name", p.image))
}

annotation_key_allowed(key) if {
	startswith(key, "io.kubernetes.cri.")
} else if {
	key in policy_data.allowed_annotations
} else := false if {
	print("denied: annotation", key, "is not allowed")
}

# One storage: the guest-pulled image, or, for a container whose root filesystem is baked into
# the pod VM image, a bind mount of that directory; mounted where the OCI root says.
storages_allowed(p, storages, root_path) if {
	value_matches("rootfs path", concat("", ["/run/kata-containers/", input.container_id, "/rootfs"]), root_path)
	count(storages) == 1
	rootfs_storage_allowed(p, storages[0], root_path)
} else := false if {
	print("denied: storages", storages, "are not the root filesystem of", p.image)
}

rootfs_storage_allowed(p, s, root_path) if {
	not p.rootfs_dir
	s.driver == "image_guest_pull"
	s.source == p.image
	s.mount_point == root_path
	[s.fstype, s.options, s.shared] == ["overlay", [], false]
}

rootfs_storage_allowed(p, s, root_path) if {
	s.driver == "bind"
	s.source == p.rootfs_dir
	s.mount_point == root_path
	[s.options, s.shared] == [["ro"], false]
}

process_allowed(p, i_process, s_name) if {
	value_matches("args", p.args, i_process.Args)
	value_matches("cwd", p.cwd, i_process.Cwd)
	value_matches("terminal", false, i_process.Terminal)
	value_matches("NoNewPrivileges", p.no_new_privileges, i_process.NoNewPrivileges)
	user_allowed(p, i_process.User)
	env_allowed(p, i_process.Env, s_name)
}

user_allowed(p, user) if {
	value_matches("uid", p.uid, user.UID)
	value_matches("gid", p.gid, user.GID)
	value_matches("additional gids", {g | some g in p.gids}, {g | some g in user.AdditionalGids})
}

env_allowed(p, env, s_name) if {
	every var in env {
		env_var_allowed(p, var, s_name)
	}
}

env_var_allowed(p, var, s_name) if {
	var in p.env
} else if {
	some pattern in policy_data.env_regex
	regex.match(replace(pattern, "$(sandbox-name)", s_name), var)
} else := false if {
	print("denied: environment variable", var, "is not allowed")
}

# Bounding, Effective and Permitted must be exactly the policy's set (with or
# without the CAP_ prefix); Ambient and Inheritable must be empty.
caps_allowed(p_caps, i_caps) if {
	expected := {cap_name(c) | some c in p_caps}
	every kind in ["Bounding", "Effective", "Permitted"] {
		value_matches(concat(" ", [kind, "capabilities"]), expected, cap_set(i_caps, kind))
	}
	value_matches("Ambient and Inheritable capabilities", set(), cap_set(i_caps, "Ambient") | cap_set(i_caps, "Inheritable"))
}

cap_set(caps, kind) := {cap_name(c) | some c in caps[kind]} if {
	is_array(caps[kind])
} else := set()

cap_name(c) := trim_prefix(upper(c), "CAP_")

linux_allowed(i_oci) if {
	linux := i_oci.Linux
	common := policy_data.linux
	types := {ns.Type | some ns in linux.Namespaces; not ns.Type in {"network", "cgroup"}}
	value_matches("namespaces", {t | some t in common.namespaces}, types)
	value_matches("namespaces joined by path", [], [ns | some ns in linux.Namespaces; ns.Path != ""])
	value_matches("paths left unmasked", [], [x | some x in common.masked_paths; not x in linux.MaskedPaths])
	value_matches("paths left writable", [], [x | some x in common.readonly_paths; not x in linux.ReadonlyPaths; not x in linux.MaskedPaths])
	sysctls := object.get(linux, "Sysctl", {})
	value_matches("sysctls not in the policy", {}, {k: v | some k, v in sysctls; object.get(common.sysctls, k, null) != v})
}

# Mount sources are regexes; $(shared) is the per-container shared-file prefix.
mounts_allowed(p_mounts, i_mounts, cid) if {
	value_matches("number of mounts", count(p_mounts), count(i_mounts))
	value_matches("distinct mount destinations", count(i_mounts), count({m.destination | some m in i_mounts}))
	every i_mount in i_mounts {
		mount_allowed(p_mounts, i_mount, cid)
	}
}

mount_allowed(p_mounts, i_mount, cid) if {
	some p_mount in p_mounts
	[p_mount.destination, p_mount.type_, p_mount.options] == [i_mount.destination, i_mount.type_, i_mount.options]
	source := replace(replace(p_mount.source, "$(shared)", policy_data.shared_prefix), "$(cid)", cid)
	regex.match(source, i_mount.source)
} else := false if {
	print("denied: mount", i_mount, "matches no policy mount")
}

######## Requests on recorded containers

StartContainerRequest if container_recorded(input.container_id)

ExecProcessRequest if {
	print("ExecProcessRequest: container_id =", input.container_id, "args =", input.process.Args)
	container_recorded(input.container_id)
	p := policy_data.containers[recorded_index(input.container_id)]
	exec_command_allowed(p, input.process.Args)
	exec_process_allowed(p, input.process)
	print("ExecProcessRequest: allowed")
}

exec_command_allowed(p, args) if {
	args in p.exec_commands
} else := false if {
	print("denied: container", p.name, "may only run", p.exec_commands, "not", args)
}

exec_process_allowed(p, i_process) if {
	value_matches("exec string_user", null, input.string_user)
	value_matches("exec capabilities", null, i_process.Capabilities)
	value_matches("exec terminal", false, i_process.Terminal)
	value_matches("exec cwd", p.cwd, i_process.Cwd)
	value_matches("exec NoNewPrivileges", p.no_new_privileges, i_process.NoNewPrivileges)
	value_matches("exec SELinux label", "", i_process.SelinuxLabel)
	user_allowed(p, i_process.User)
	env_allowed(p, i_process.Env, pstate.sandbox_name)
}

RemoveContainerRequest := {"allowed": true, "ops": ops} if {
	container_recorded(input.container_id)
	ops := [{"op": "remove", "path": state_path(input.container_id)}]
	print("RemoveContainerRequest: allowed, state ops:", ops)
}

######## Sandbox set-up

CreateSandboxRequest if {
	value_matches("guest hook path", "", input.guest_hook_path)
	value_matches("kernel modules", 0, count(input.kernel_modules))
	value_matches("sandbox pid namespace", false, input.sandbox_pidns)
	value_matches("hostname matches the pod name", true, regex.match(policy_data.sandbox.name_regex, input.hostname))
	value_matches("storages not in the policy", [], [s | some s in input.storages; not s in policy_data.sandbox.storages])
}

# Only the plain files the runtime copies for each container (no symlinks, no directories).
CopyFileRequest if {
	value_matches("file type", "Regular", input.file_type)
	value_matches("path contains ..", false, regex.match(`(^|/)\.\.($|/)`, input.path))
	value_matches("path is a shared file", true, regex.match(policy_data.copy_file_regex, input.path))
}

UpdateInterfaceRequest if {
	value_matches("interface name", "eth0", input.interface.name)
	value_matches("interface flags beyond IFF_NOARP", 0, bits.and(input.interface.raw_flags, bits.negate(128)))
}

UpdateRoutesRequest if {
	every route in input.routes.Routes {
		value_matches("route device", "eth0", route.device)
		value_matches("loopback route source", false, startswith(route.source, "127."))
	}
}

######## The pod

policy_data := {
	"oci_version": "1.1.0",
	"sandbox": {
		"name_regex": "^web-app(-[a-z0-9]{1,10}){0,2}$",
		"namespace": "demo",
		"storages": [{"driver": "ephemeral", "driver_options": [], "source": "shm", "fstype": "tmpfs", "options": ["noexec", "nosuid", "nodev", "mode=1777", "size=67108864"], "mount_point": "/run/kata-containers/sandbox/shm", "fs_group": null, "shared": false}],
	},
	"allowed_annotations": ["io.katacontainers.pkg.oci.bundle_path", "io.katacontainers.pkg.oci.container_type", "nerdctl/network-namespace"],
	"shared_prefix": "^/run/kata-containers/shared/containers/$(cid)-[a-f0-9]{16}-",
	"copy_file_regex": "^/run/kata-containers/shared/containers/[a-f0-9]{64}-[a-f0-9]{16}-(hostname|hosts|resolv\\.conf|termination-log)$",
	# The hostname and the variables Kubernetes adds for services.
	"env_regex": [
		"^HOSTNAME=$(sandbox-name)$",
		"^[A-Z][A-Z0-9_]*_SERVICE_HOST=[0-9]{1,3}(\\.[0-9]{1,3}){3}$",
		"^[A-Z][A-Z0-9_]*_SERVICE_PORT(_[A-Z0-9_]+)?=[0-9]{1,5}$",
		"^[A-Z][A-Z0-9_]*_PORT=tcp://[0-9]{1,3}(\\.[0-9]{1,3}){3}:[0-9]{1,5}$",
		"^[A-Z][A-Z0-9_]*_PORT_[0-9]{1,5}_TCP=tcp://[0-9]{1,3}(\\.[0-9]{1,3}){3}:[0-9]{1,5}$",
		"^[A-Z][A-Z0-9_]*_PORT_[0-9]{1,5}_TCP_(PROTO=tcp|PORT=[0-9]{1,5}|ADDR=[0-9]{1,3}(\\.[0-9]{1,3}){3})$",
	],
	"linux": {
		"namespaces": ["ipc", "uts", "mount"],
		"masked_paths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"],
		"readonly_paths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
		"sysctls": {"net.ipv4.ip_unprivileged_port_start": "0", "net.ipv4.ping_group_range": "0 2147483647"},
	},
	"containers": [
		{
			"type": "sandbox", "kata_type": "pod_sandbox", "name": "", "image": "registry.local/pause:3.9",
			"args": ["/pause"], "cwd": "/", "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
			"uid": 1000, "gid": 1000, "gids": [1000], "no_new_privileges": true, "readonly_root": true,
			"caps": ["CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"],
			"mounts": [
				{"destination": "/proc", "type_": "proc", "source": "^proc$", "options": ["nosuid", "noexec", "nodev"]},
				{"destination": "/dev", "type_": "tmpfs", "source": "^tmpfs$", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
				{"destination": "/dev/pts", "type_": "devpts", "source": "^devpts$", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
				{"destination": "/dev/shm", "type_": "bind", "source": "^/run/kata-containers/sandbox/shm$", "options": ["rbind"]},
				{"destination": "/dev/mqueue", "type_": "mqueue", "source": "^mqueue$", "options": ["nosuid", "noexec", "nodev"]},
				{"destination": "/sys", "type_": "sysfs", "source": "^sysfs$", "options": ["nosuid", "noexec", "nodev", "ro"]},
				{"destination": "/etc/resolv.conf", "type_": "bind", "source": "$(shared)resolv\\.conf$", "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]},
			],
			"exec_commands": [],
		},
		{
			"type": "container", "kata_type": "pod_container", "name": "web", "image": "registry.local/web:1",
			"args": ["/bin/httpd", "-f", "-p", "8080"], "cwd": "/www", "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PORT=8080"],
			"uid": 1000, "gid": 1000, "gids": [1000], "no_new_privileges": true, "readonly_root": true,
			"caps": [],
			"mounts": [
				{"destination": "/proc", "type_": "proc", "source": "^proc$", "options": ["nosuid", "noexec", "nodev"]},
				{"destination": "/dev", "type_": "tmpfs", "source": "^tmpfs$", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
				{"destination": "/dev/pts", "type_": "devpts", "source": "^devpts$", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
				{"destination": "/dev/mqueue", "type_": "mqueue", "source": "^mqueue$", "options": ["nosuid", "noexec", "nodev"]},
				{"destination": "/sys", "type_": "sysfs", "source": "^sysfs$", "options": ["nosuid", "noexec", "nodev", "ro"]},
				{"destination": "/sys/fs/cgroup", "type_": "cgroup", "source": "^cgroup$", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
				{"destination": "/etc/hosts", "type_": "bind", "source": "$(shared)hosts$", "options": ["rbind", "rprivate", "rw"]},
				{"destination": "/dev/termination-log", "type_": "bind", "source": "$(shared)termination-log$", "options": ["rbind", "rprivate", "rw"]},
				{"destination": "/etc/hostname", "type_": "bind", "source": "$(shared)hostname$", "options": ["rbind", "rprivate", "ro"]},
				{"destination": "/etc/resolv.conf", "type_": "bind", "source": "$(shared)resolv\\.conf$", "options": ["rbind", "rprivate", "ro"]},
				{"destination": "/dev/shm", "type_": "bind", "source": "^/run/kata-containers/sandbox/shm$", "options": ["rbind"]},
			],
			"exec_commands": [["cat", "/tmp/healthy"]],
		},
		{
			"type": "container", "kata_type": "pod_container", "name": "hello", "image": "baked-in/busybox",
			"rootfs_dir": "/run/peerpod-demo/busybox", "logs_readable": true,
			"args": ["/bin/sh", "-c", "echo hello from a confidential pod, as uid $(id -u); sleep 300"], "cwd": "/",
			"env": ["PATH=/bin"],
			"uid": 1000, "gid": 1000, "gids": [1000], "no_new_privileges": true, "readonly_root": true,
			"caps": [],
			"mounts": [
				{"destination": "/proc", "type_": "proc", "source": "^proc$", "options": ["nosuid", "noexec", "nodev"]},
				{"destination": "/dev", "type_": "tmpfs", "source": "^tmpfs$", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
				{"destination": "/dev/pts", "type_": "devpts", "source": "^devpts$", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
				{"destination": "/sys", "type_": "sysfs", "source": "^sysfs$", "options": ["nosuid", "noexec", "nodev", "ro"]},
				{"destination": "/dev/shm", "type_": "bind", "source": "^/run/kata-containers/sandbox/shm$", "options": ["rbind"]},
			],
			"exec_commands": [["cat", "/proc/self/status"]],
		},
	],
}
