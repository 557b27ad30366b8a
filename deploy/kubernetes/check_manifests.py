"""Checks the properties the Kubernetes manifests in this folder promise, without a cluster.

The JSON-schema validation (kubernetes-validate, run by check.sh) proves the manifests are well-formed
for the API; this proves they say what the deployment needs: non-root, read-only, no capabilities,
the TLS Secret mounted whole, probes, a grace period longer than the drain, and objects that select
each other. Then it mutates each property and checks that the check notices (a check that cannot
fail proves nothing).

    python3 check_manifests.py [DIR]

Needs PyYAML. Exit status 0 when every check and every mutation test passes.
"""

import copy
import json
import re
import sys
from pathlib import Path

import yaml

SECRET = "securesock-tls"

def image_healthcheck():
    """The command the image's own HEALTHCHECK runs, read from the Dockerfile so the readiness
    probe cannot drift from what the image contains."""
    dockerfile = Path(__file__).resolve().parents[2] / "Dockerfile"
    match = re.search(r"^HEALTHCHECK .*CMD (\[.*\])\s*$", dockerfile.read_text(), re.M)
    if not match:
        sys.exit(f"no exec-form HEALTHCHECK in {dockerfile}")
    return json.loads(match.group(1))[0]


HEALTHCHECK = image_healthcheck()
UID = 10001


def load(folder):
    """Every object in the folder's YAML files (optional/ included), by (kind, name)."""
    objects = {}
    for path in sorted(folder.glob("*.yaml")) + sorted(folder.glob("optional/*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                name = doc.get("metadata", {}).get("name", path.name)
                objects[(doc["kind"], name)] = doc
    return objects


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check(objects, folder):
    """Returns the list of broken promises; empty when all hold."""
    problems = []

    def need(condition, text):
        if not condition:
            problems.append(text)

    deploy = objects.get(("Deployment", "securesock"))
    if deploy is None:
        return ["no Deployment named securesock"]
    spec = deploy["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    pod_sc = pod.get("securityContext", {})

    need(spec.get("replicas", 1) >= 2, "Deployment needs 2 or more replicas")
    need(
        spec.get("strategy", {}).get("rollingUpdate", {}).get("maxUnavailable") == 0,
        "rolling update must keep every replica serving (maxUnavailable: 0)",
    )
    need(selects(spec["selector"]["matchLabels"], labels), "Deployment selector does not match its pods")
    need(pod.get("automountServiceAccountToken") is False, "pods must not mount an API token")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        need(not pod.get(key), f"pods must not use {key}")

    containers = pod.get("containers", [])
    need(len(containers) == 1, "one container expected")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for c in containers:
        sc = c.get("securityContext", {})

        def effective(key):
            return sc.get(key, pod_sc.get(key))

        name = c["name"]
        need(effective("runAsNonRoot") is True, f"{name}: runAsNonRoot must be true")
        need(effective("runAsUser") == UID, f"{name}: runAsUser must be {UID}")
        need(
            (effective("seccompProfile") or {}).get("type") == "RuntimeDefault",
            f"{name}: seccompProfile must be RuntimeDefault",
        )
        need(sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation must be false")
        need(sc.get("readOnlyRootFilesystem") is True, f"{name}: root filesystem must be read-only")
        need(not sc.get("privileged"), f"{name}: must not be privileged")
        caps = sc.get("capabilities", {})
        need("ALL" in caps.get("drop", []), f"{name}: capabilities must drop ALL")
        need(not caps.get("add"), f"{name}: must add no capability")

        res = c.get("resources", {})
        for r in ("cpu", "memory"):
            need(r in res.get("requests", {}), f"{name}: needs a {r} request")
        need("memory" in res.get("limits", {}), f"{name}: needs a memory limit")

        env = env_of(c)
        need(env.get("SECURESOCK_CERT") == "/certs/tls.crt", f"{name}: SECURESOCK_CERT must be /certs/tls.crt")
        need(env.get("SECURESOCK_KEY") == "/certs/tls.key", f"{name}: SECURESOCK_KEY must be /certs/tls.key")

        mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/certs"]
        need(len(mounts) == 1, f"{name}: /certs must be mounted once")
        for m in mounts:
            # A subPath mount is a copy made at start: Secret renewals would never reach it.
            need("subPath" not in m, f"{name}: /certs must not be a subPath mount")
            need(m.get("readOnly") is True, f"{name}: /certs must be read-only")
            secret = volumes.get(m["name"], {}).get("secret", {})
            need(secret.get("secretName") == SECRET, f"{name}: /certs must come from Secret {SECRET}")
            items = {i["key"] for i in secret.get("items", [])} or {"tls.crt", "tls.key"}
            need({"tls.crt", "tls.key"} <= items, f"{name}: Secret must project tls.crt and tls.key")
            need(secret.get("defaultMode", 0o644) & 0o007 == 0, f"{name}: key must not be world-readable")

        # Replicas resume each other's sessions only with one set of ticket keys, from a Secret
        # that only the server can read.
        keys = env.get("SECURESOCK_TICKET_KEY_FILE") or ""
        key_mounts = [m for m in c.get("volumeMounts", []) if keys.startswith(m["mountPath"].rstrip("/") + "/")]
        need(len(key_mounts) == 1, f"{name}: SECURESOCK_TICKET_KEY_FILE must be a file in a mounted Secret")
        for m in key_mounts:
            need("subPath" not in m, f"{name}: the ticket keys must not be a subPath mount")
            secret = volumes.get(m["name"], {}).get("secret", {})
            need(bool(secret.get("secretName")), f"{name}: the ticket keys must come from a Secret")
            need(secret.get("defaultMode", 0o644) & 0o037 == 0,
                 f"{name}: ticket keys must not be readable by others (securesock refuses them)")

        port_names = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        for probe_name in ("readinessProbe", "livenessProbe"):
            probe = c.get(probe_name)
            need(probe is not None, f"{name}: needs a {probe_name}")
            if not probe:
                continue
            if "exec" in probe:
                need(probe["exec"]["command"][:1] == [HEALTHCHECK], f"{name}: {probe_name} must run {HEALTHCHECK}")
            elif "tcpSocket" in probe:
                port = probe["tcpSocket"]["port"]
                need(port in port_names or port in port_names.values(), f"{name}: {probe_name} port {port} unknown")
            else:
                problems.append(f"{name}: {probe_name} must be exec or tcpSocket")

        drain = float(env.get("SECURESOCK_DRAIN_TIMEOUT") or 30)
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        grace = pod.get("terminationGracePeriodSeconds", 30)
        need(grace > drain + pre_stop, f"grace period {grace}s must exceed preStop {pre_stop}s + drain {drain:g}s")

    container_ports = {p.get("name") for c in containers for p in c.get("ports", [])}
    container_ports |= {p["containerPort"] for c in containers for p in c.get("ports", [])}
    services = [o for (kind, _), o in objects.items() if kind == "Service"]
    need(services, "no Service")
    for svc in services:
        sname = svc["metadata"]["name"]
        need(selects(svc["spec"].get("selector"), labels), f"Service {sname} does not select the pods")
        for p in svc["spec"]["ports"]:
            need(p.get("targetPort", p["port"]) in container_ports, f"Service {sname}: targetPort not a container port")
        if svc["spec"].get("type") == "LoadBalancer":
            need(
                svc["spec"].get("externalTrafficPolicy") == "Local",
                f"Service {sname}: externalTrafficPolicy must be Local to keep client addresses",
            )

    pdb = objects.get(("PodDisruptionBudget", "securesock"))
    need(pdb is not None, "no PodDisruptionBudget")
    if pdb:
        need(selects(pdb["spec"]["selector"]["matchLabels"], labels), "PodDisruptionBudget does not select the pods")
        if "maxUnavailable" in pdb["spec"]:
            need(pdb["spec"]["maxUnavailable"] < spec.get("replicas", 1), "PDB would allow every replica down")
        else:
            need(1 <= pdb["spec"].get("minAvailable", 0) < spec.get("replicas", 1), "PDB minAvailable out of range")

    cert = objects.get(("Certificate", "securesock"))
    if cert:
        need(cert["spec"].get("secretName") == SECRET, f"cert-manager Certificate must write Secret {SECRET}")

    kust = objects.get(("Kustomization", "kustomization.yaml"))
    need(kust is not None, "no kustomization.yaml")
    if kust:
        listed = set(kust.get("resources", []))
        present = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
        need(listed == present, f"kustomization.yaml lists {sorted(listed)}, folder has {sorted(present)}")
    return problems


def container(objects):
    return objects[("Deployment", "securesock")]["spec"]["template"]["spec"]["containers"][0]


def pod_spec(objects):
    return objects[("Deployment", "securesock")]["spec"]["template"]["spec"]


def set_env(c, name, value):
    for e in c["env"]:
        if e["name"] == name:
            e["value"] = value


# Each mutation breaks one promise; check() must report something for every one.
MUTATIONS = {
    "one replica": lambda o: o[("Deployment", "securesock")]["spec"].update(replicas=1),
    "runs as root": lambda o: container(o)["securityContext"].update(runAsUser=0),
    "runAsNonRoot off": lambda o: container(o)["securityContext"].update(runAsNonRoot=False),
    "privilege escalation": lambda o: container(o)["securityContext"].update(allowPrivilegeEscalation=True),
    "writable root": lambda o: container(o)["securityContext"].pop("readOnlyRootFilesystem"),
    "keeps capabilities": lambda o: container(o)["securityContext"]["capabilities"].update(drop=[]),
    "adds NET_ADMIN": lambda o: container(o)["securityContext"]["capabilities"].update(add=["NET_ADMIN"]),
    "seccomp unconfined": lambda o: container(o)["securityContext"].update(seccompProfile={"type": "Unconfined"}),
    "no requests": lambda o: container(o)["resources"].pop("requests"),
    "cert elsewhere": lambda o: set_env(container(o), "SECURESOCK_CERT", "/tmp/tls.crt"),
    "long drain": lambda o: set_env(container(o), "SECURESOCK_DRAIN_TIMEOUT", "60"),
    "subPath mount": lambda o: container(o)["volumeMounts"][0].update(subPath="tls.crt"),
    "other secret": lambda o: pod_spec(o)["volumes"][0]["secret"].update(secretName="other"),
    "no ticket keys": lambda o: set_env(container(o), "SECURESOCK_TICKET_KEY_FILE", ""),
    "ticket keys world-readable": lambda o: pod_spec(o)["volumes"][1]["secret"].update(defaultMode=0o644),
    "no readiness": lambda o: container(o).pop("readinessProbe"),
    "no liveness": lambda o: container(o).pop("livenessProbe"),
    "short grace": lambda o: pod_spec(o).update(terminationGracePeriodSeconds=30),
    "service misses pods": lambda o: o[("Service", "securesock")]["spec"].update(selector={"app": "x"}),
    "no PDB": lambda o: o.pop(("PodDisruptionBudget", "securesock")),
    "token mounted": lambda o: pod_spec(o).update(automountServiceAccountToken=True),
}


def main():
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent)
    objects = load(folder)
    problems = check(objects, folder)
    for p in problems:
        print(f"FAIL: {p}")
    unnoticed = []
    for name, mutate in MUTATIONS.items():
        broken = copy.deepcopy(objects)
        mutate(broken)
        if not check(broken, folder):
            unnoticed.append(name)
    for name in unnoticed:
        print(f"FAIL: the check did not notice the mutation '{name}'")
    kinds = sorted({k for k, _ in objects})
    print(f"manifests: {len(objects)} objects ({', '.join(kinds)}); {len(MUTATIONS)} mutations all caught"
          if not unnoticed else "manifests: mutation test failed")
    return 1 if problems or unnoticed else 0


if __name__ == "__main__":
    sys.exit(main())
