#!/usr/bin/env python3
"""deploy/kubernetes checked without a cluster (none is reachable here): every
file is well-formed YAML of the kinds and API versions it claims; the broker
accepts the ConfigMap's configuration (a real gpubrokerd runs with it, its
socket moved into a scratch directory, and answers); and the paths and names
the pieces share agree: the config's socket directory is the DaemonSet's
hostPath and mount, the consumer mounts the same directory where its client
looks by default, --config names the file the ConfigMap mounts, and no pod
asks for the host's IPC or PID namespace.

    tests/kubernetes/manifest_test.py BUILD_DIR
"""
import os
import posixpath
import subprocess
import sys
import tempfile
import time

import yaml

BUILD = os.path.abspath(sys.argv[1])
DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy", "kubernetes")
DEFAULT_SOCKET = "/run/gpubroker/gpubroker.sock"  # where a client looks when nothing says otherwise
KINDS = {"Namespace": "v1", "ConfigMap": "v1", "DaemonSet": "apps/v1", "Pod": "v1",
         "Kustomization": "kustomize.config.k8s.io/v1beta1"}
failures = []


def check(what, condition, detail=""):
    print(f"{'PASS' if condition else 'FAIL'}: {what}" + ("" if condition else f" {detail}"))
    if not condition:
        failures.append(what)


def load():
    docs = {}
    for name in sorted(os.listdir(DIR)):
        if not name.endswith(".yaml"):
            continue
        with open(os.path.join(DIR, name)) as f:
            for doc in yaml.safe_load_all(f):
                kind = doc.get("kind")
                check(f"{name}: {kind} has a known kind and its API version", KINDS.get(kind) == doc.get("apiVersion"),
                      doc.get("apiVersion"))
                if kind != "Kustomization":
                    check(f"{name}: {kind} has a name", bool(doc.get("metadata", {}).get("name")))
                docs.setdefault(kind, []).append((name, doc))
    return docs


def volume_path(pod_spec, container, mount_path):
    """The hostPath or ConfigMap behind the volume `container` mounts at mount_path."""
    mount = next((m for m in container.get("volumeMounts", []) if m["mountPath"] == mount_path), None)
    if mount is None:
        return None
    return next((v for v in pod_spec.get("volumes", []) if v["name"] == mount["name"]), None)


def broker_accepts(config_text, key_file=None):
    """Runs gpubrokerd with the ConfigMap's file, its socket moved to a scratch
    directory, and `key_file` (the peers' key) made there: fresh random
    bytes, 0400, as the multinode overlay's init container makes it."""
    with tempfile.TemporaryDirectory() as tmp:
        if key_file is not None:
            key = os.path.join(tmp, "cluster.key")
            with open(key, "wb") as f:
                f.write(os.urandom(32))
            os.chmod(key, 0o400)
            # Its own port, on loopback: this machine is not a node.
            config_text = config_text.replace(key_file, key).replace("listen: 0.0.0.0:7400", "listen: 127.0.0.1:0")
        conf = os.path.join(tmp, "gpubroker.yaml")
        with open(conf, "w") as f:
            f.write(config_text)
        sock = os.path.join(tmp, "gpubroker.sock")
        broker = subprocess.Popen([os.path.join(BUILD, "broker", "gpubrokerd"), "--config", conf, "--socket", sock,
                                   "--default-backend", "host"], stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and broker.poll() is None:
                r = subprocess.run([os.path.join(BUILD, "client", "gpubrokerctl"), "-s", sock, "status"],
                                   capture_output=True)
                if r.returncode == 0:
                    return True, ""
                time.sleep(0.05)  # polling a condition, not a delay
            return False, broker.stderr.read() if broker.poll() is not None else "no answer"
        finally:
            if broker.poll() is None:
                broker.terminate()
                broker.wait()


def main():
    docs = load()
    kustomization = docs["Kustomization"][0][1]
    for kind in ("Namespace", "ConfigMap", "DaemonSet"):
        check(f"kustomization.yaml lists the {kind}", docs[kind][0][0] in kustomization["resources"])
    for resource in kustomization["resources"]:
        check(f"kustomization.yaml's {resource} exists", os.path.exists(os.path.join(DIR, resource)))

    namespace = docs["Namespace"][0][1]["metadata"]["name"]
    configmap = docs["ConfigMap"][0][1]
    daemonset = docs["DaemonSet"][0][1]
    consumer = docs["Pod"][0][1]
    check("the ConfigMap and the DaemonSet live in the Namespace",
          configmap["metadata"]["namespace"] == namespace == daemonset["metadata"]["namespace"])

    config_text = configmap["data"]["gpubroker.yaml"]
    config = yaml.safe_load(config_text)
    ok, why = broker_accepts(config_text)
    check("gpubrokerd accepts the ConfigMap's configuration and serves with it", ok, why)
    socket_path = config["socket"]["path"]
    socket_dir = posixpath.dirname(socket_path)
    check("the config's socket is where clients look by default", socket_path == DEFAULT_SOCKET, socket_path)

    spec = daemonset["spec"]["template"]["spec"]
    broker = spec["containers"][0]
    check("the DaemonSet's selector matches its pods",
          daemonset["spec"]["selector"]["matchLabels"].items() <= daemonset["spec"]["template"]["metadata"]["labels"].items())
    socket_volume = volume_path(spec, broker, socket_dir)
    check("the broker mounts a hostPath at the socket's directory",
          socket_volume is not None and socket_volume.get("hostPath", {}).get("path") == socket_dir, socket_volume)
    args = broker.get("args", [])
    config_file = args[args.index("--config") + 1] if "--config" in args else ""
    config_volume = volume_path(spec, broker, posixpath.dirname(config_file))
    check("--config names the file the ConfigMap mounts",
          config_volume is not None and config_volume.get("configMap", {}).get("name") == configmap["metadata"]["name"]
          and posixpath.basename(config_file) in configmap["data"], config_file)
    for probe in ("readinessProbe", "livenessProbe"):
        command = broker.get(probe, {}).get("exec", {}).get("command", [])
        check(f"the {probe} asks gpubrokerctl at the config's socket",
              command[:1] == ["gpubrokerctl"] and socket_path in command, command)
    liveness = broker.get("livenessProbe", {}).get("exec", {}).get("command", [])
    check("liveness does not fail a draining or degraded broker (status --live)", "--live" in liveness, liveness)
    check("the preStop hook drains", "drain" in broker.get("lifecycle", {}).get("preStop", {}).get("exec", {})
          .get("command", []))
    check("the broker drops every capability and cannot escalate",
          broker["securityContext"].get("capabilities", {}).get("drop") == ["ALL"]
          and broker["securityContext"].get("allowPrivilegeEscalation") is False)
    check("the broker takes no GPU from the device plugin",
          "nvidia.com/gpu" not in str(broker.get("resources", {})))
    check("the container names its program (no ENTRYPOINT assumed)", broker.get("command") == ["gpubrokerd"],
          broker.get("command"))
    user = broker["securityContext"].get("runAsUser")
    check("the broker runs as a user other than root", isinstance(user, int) and user != 0, user)
    init = next((c for c in spec.get("initContainers", []) if volume_path(spec, c, socket_dir) is not None), None)
    check("an init container gives the socket directory to the broker's user",
          init is not None and f"chown {user}:" in " ".join(init.get("command", [])), init)
    check("root in other pods is not the broker's administrator", config.get("root_is_admin") is False)
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}

    def size(text):
        text = str(text)
        for unit in sorted(units, key=len, reverse=True):
            if text.endswith(unit):
                return int(text[:-len(unit)]) * units[unit]
        return int(text)
    host_cap = size(config.get("limits", {}).get("max_host_bytes", 0))
    request = size(broker.get("resources", {}).get("requests", {}).get("memory", 0))
    check("host slots (limits.max_host_bytes) fit in the pod's memory request, so the broker is not evicted first",
          0 < host_cap < request, f"{host_cap} vs {request}")

    pod = consumer["spec"]
    client = pod["containers"][0]
    socket_volume = volume_path(pod, client, socket_dir)
    check("the consumer mounts the same hostPath where its client looks",
          socket_volume is not None and socket_volume.get("hostPath", {}).get("path") == socket_dir, socket_volume)
    if client.get("command") == ["python3", "-c"]:
        try:
            compile(client["args"][0], "consumer-pod.yaml", "exec")
            check("the consumer's Python program compiles", True)
        except SyntaxError as e:
            check("the consumer's Python program compiles", False, e)
    if client.get("securityContext", {}).get("readOnlyRootFilesystem"):
        tmp_volume = volume_path(pod, client, "/tmp")
        check("a read-only consumer gets a writable /tmp", tmp_volume is not None and "emptyDir" in tmp_volume)
    env = {e["name"]: e.get("value") for e in client.get("env", [])}
    check("the consumer needs no GPUBROKER_SOCKET (or names the config's)",
          env.get("GPUBROKER_SOCKET", socket_path) == socket_path)
    for name, p in (("DaemonSet", spec), ("consumer", pod)):
        check(f"the {name} shares no host IPC, PID or network namespace",
              not any(p.get(k) for k in ("hostIPC", "hostPID", "hostNetwork")))
    check_multinode(config, configmap, spec, user)
    print(f"{len(failures)} failed")
    sys.exit(1 if failures else 0)


def by_name(items, patch):
    """A strategic merge of two lists keyed by name (what kustomize does for
    containers, volumes and ports)."""
    out = {i["name"]: dict(i) for i in items}
    for p in patch:
        out[p["name"]] = {**out.get(p["name"], {}), **p}
    return list(out.values())


def check_multinode(base_config, base_configmap, base_spec, user):
    """deploy/kubernetes/multinode: the base plus the peer port, the key
    Secret and the peers configuration."""
    d = os.path.join(DIR, "multinode")
    docs = {}
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name)) as f:
            for doc in yaml.safe_load_all(f):
                docs[doc["kind"]] = (name, doc)
    kust = docs["Kustomization"][1]
    check("multinode: the overlay builds on the base and patches the ConfigMap and the DaemonSet",
          kust.get("resources") == ["../"] and
          sorted(p["path"] for p in kust.get("patches", [])) == sorted([docs["ConfigMap"][0], docs["DaemonSet"][0]]),
          kust)
    check("multinode: no Secret with a key is in the manifests (each cluster makes its own)", "Secret" not in docs)
    cm, ds = docs["ConfigMap"][1], docs["DaemonSet"][1]
    check("multinode: the patches name the base's ConfigMap and DaemonSet",
          cm["metadata"]["name"] == base_configmap["metadata"]["name"] and ds["metadata"]["name"] == "gpubroker")
    text = cm["data"]["gpubroker.yaml"]
    config = yaml.safe_load(text)
    peers = config.pop("peers", {})
    check("multinode: its configuration is the base's plus peers", config == base_config)
    ok, why = broker_accepts(text, peers.get("key_file"))
    check("multinode: gpubrokerd accepts it and serves (its key made as the init container makes it)", ok, why)
    patch = ds["spec"]["template"]["spec"]
    spec = {**base_spec, **{k: v for k, v in patch.items() if k not in ("containers", "initContainers", "volumes")}}
    spec["volumes"] = by_name(base_spec.get("volumes", []), patch.get("volumes", []))
    spec["initContainers"] = by_name(base_spec.get("initContainers", []), patch.get("initContainers", []))
    broker_patch = next(c for c in patch["containers"] if c["name"] == base_spec["containers"][0]["name"])
    broker = dict(base_spec["containers"][0])
    broker["volumeMounts"] = broker.get("volumeMounts", []) + broker_patch.get("volumeMounts", [])
    broker["ports"] = broker_patch.get("ports", [])
    port = int(peers.get("listen", ":0").rsplit(":", 1)[1])
    check("multinode: the broker's container declares peers.listen's port",
          [p["containerPort"] for p in broker["ports"]] == [port], broker["ports"])
    key_dir = posixpath.dirname(peers.get("key_file", ""))
    key_volume = volume_path(spec, broker, key_dir)
    check("multinode: the key's directory is a volume in memory, not on the node's disk",
          key_volume is not None and key_volume.get("emptyDir", {}).get("medium") == "Memory", key_volume)
    init = next((c for c in spec["initContainers"] if volume_path(spec, c, key_dir) is not None), None)
    command = init.get("command", []) if init else []
    source = command[-2] if len(command) > 2 else ""
    secret = volume_path(spec, init, posixpath.dirname(source)) if init else None
    check("multinode: an init container installs the key from the Secret as the broker's user's, 0400",
          command[:1] == ["install"] and f"{user}" in command and "0400" in command and
          command[-1] == peers.get("key_file") and secret is not None and
          secret.get("secret", {}).get("secretName") == "gpubroker-cluster-key", init)
    check("multinode: the broker uses the node's network (UCX hands its interface address to followers)",
          spec.get("hostNetwork") is True and spec.get("dnsPolicy") == "ClusterFirstWithHostNet")
    check("multinode: still no host IPC or PID namespace", not spec.get("hostIPC") and not spec.get("hostPID"))


if __name__ == "__main__":
    main()
