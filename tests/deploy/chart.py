"""The Helm chart rendered offline with Helm's own engine (helm-python-sdk), and ways to read it.

No helm binary and no cluster: ``helm_python`` binds Helm's Go SDK. Renders are cached per
values, so the many tests that look at the same installation render it once.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "regionvault"
PRODUCTION_VALUES = CHART / "ci" / "values-production.yaml"
#: the Kubernetes version manifests are validated against (offline, kubernetes-validate)
KUBERNETES_VERSION = "1.33.0"
RELEASE = "rv"
NAMESPACE = "backups"
DOMAINS = ("us", "eu", "au")
DOMAIN_LABEL = "regionvault.io/domain"
COMPONENT_LABEL = "app.kubernetes.io/component"
REGION_LABEL = "topology.kubernetes.io/region"

Obj = dict[str, Any]


def production_values() -> dict[str, Any]:
    return yaml.safe_load(PRODUCTION_VALUES.read_text())


def production_shared_values() -> dict[str, Any]:
    """The production example on the shared topology: one password-protected Redis for every
    domain (the chart's default topology), so that its objects are rendered and checked too."""
    return merged(production_values(), {
        "broker": {
            "perDomain": False,
            "url": "redis://regionvault-broker.backups.svc:6379/0",
            "existingSecret": "regionvault-broker",
            "urlKey": "url",
            "networkPeers": [{"podSelector": {"matchLabels": {
                "app.kubernetes.io/name": "redis",
                "app.kubernetes.io/instance": "regionvault-broker"}}}],
        },
        "keda": {"passwordSecret": "regionvault-broker", "passwordKey": "password"},
        "flower": {"ingress": {"host": "backups.example.com",
                               "tlsSecretName": "backups-example-com-tls"}},
    })


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in, the way Helm merges a second values file."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class Rendered:
    """Everything one ``helm template`` would print, as parsed objects."""

    objects: tuple[Obj, ...]
    notes: str
    #: the values Helm used (the chart's defaults coalesced with the given ones)
    values: dict[str, Any]

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def named(self, kind: str, name: str) -> Obj:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]

    def identities(self) -> set[tuple[str, str]]:
        return {(o["kind"], o["metadata"]["name"]) for o in self.objects}

    def labelled(self, domain: str) -> list[Obj]:
        return [o for o in self.objects if labels(o).get(DOMAIN_LABEL) == domain]

    def deployments(self, component: str) -> list[Obj]:
        return [d for d in self.of_kind("Deployment")
                if labels(d).get(COMPONENT_LABEL) == component]

    def workers(self) -> dict[str, Obj]:
        """The worker Deployments by domain (and a check that each domain has one at most)."""
        pools: dict[str, Obj] = {}
        for deployment in self.deployments("worker"):
            domain = labels(deployment)[DOMAIN_LABEL]
            assert domain not in pools, f"two worker Deployments for domain {domain}"
            pools[domain] = deployment
        return pools

    def enabled_domains(self) -> set[str]:
        return {d for d, v in self.values["domains"].items() if v["enabled"]}

    def per_domain_brokers(self) -> bool:
        return bool(self.values["broker"]["perDomain"])

    def brokers(self) -> set[str | None]:
        """Who has a broker: every enabled domain with broker.perDomain, else None (shared)."""
        return set(self.enabled_domains()) if self.per_domain_brokers() else {None}

    def served(self, component: str) -> dict[str | None, Obj]:
        """The Deployments of a component (beat, flower) by the domain their container serves
        (its REGIONVAULT_DOMAIN; None for none), checking that no two serve the same one."""
        found: dict[str | None, Obj] = {}
        for deployment in self.deployments(component):
            (c,) = pod_spec(deployment)["containers"]
            served = env(c).get("REGIONVAULT_DOMAIN", {}).get("value")
            assert served not in found, f"two {component} Deployments serve {served}"
            found[served] = deployment
        return found

    def policies_for(self, deployment: Obj) -> list[Obj]:
        """The NetworkPolicies that select a Deployment's pods."""
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        return [p for p in self.of_kind("NetworkPolicy")
                if p["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()]

    def config_map(self) -> Obj:
        """The ConfigMap holding regionvault's configuration (not the dashboard's)."""
        (cm,) = [o for o in self.of_kind("ConfigMap") if "config.yaml" in o.get("data", {})]
        return cm

    def config(self) -> dict[str, Any]:
        """The regionvault configuration in the generated ConfigMap."""
        return yaml.safe_load(self.config_map()["data"]["config.yaml"])


@functools.lru_cache(maxsize=64)
def _render(values_json: str) -> Rendered:
    values = json.loads(values_json)
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
        effective = chart.merge_values(values)
    objects: list[Obj] = []
    notes = ""
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(o for o in yaml.safe_load_all(text) if o)
    return Rendered(tuple(objects), notes, effective)


def render(values: dict[str, Any] | None = None) -> Rendered:
    """Render the chart with ``values`` over its defaults (raises HelmRenderError on `fail`)."""
    return _render(json.dumps(values or {}, sort_keys=True))


# --- reading objects --------------------------------------------------------------------------


def labels(obj: Obj) -> dict[str, str]:
    return obj["metadata"].get("labels") or {}


def pod_spec(deployment: Obj) -> Obj:
    return deployment["spec"]["template"]["spec"]


def container(deployment: Obj, name: str) -> Obj:
    (found,) = [c for c in pod_spec(deployment)["containers"] if c["name"] == name]
    return found


def argv(c: Obj) -> list[str]:
    return [*c.get("command", []), *c.get("args", [])]


def env(c: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in c.get("env", [])}


def secret_names(deployment: Obj) -> set[str]:
    """Every Secret a Deployment's pods read: volumes, projected volumes, env and envFrom."""
    spec = pod_spec(deployment)
    names: set[str] = set()
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            names.add(volume["secret"]["secretName"])
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                names.add(source["secret"]["name"])
    for c in [*spec.get("containers", []), *spec.get("initContainers", [])]:
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                names.add(ref["name"])
        for source in c.get("envFrom", []):
            if "secretRef" in source:
                names.add(source["secretRef"]["name"])
    return names


def option(args: list[str], *names: str) -> list[str]:
    """Every value given to a command-line option (``-Q x``, ``-Qx``, ``--queues=x``)."""
    values: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            break
        for name in names:
            if arg == name and i + 1 < len(args):
                values.append(args[i + 1])
            elif name.startswith("--") and arg.startswith(name + "="):
                values.append(arg.split("=", 1)[1])
            elif not name.startswith("--") and arg.startswith(name) and arg != name:
                values.append(arg[len(name):])
    return values


def queues(args: list[str]) -> list[str]:
    return [q for value in option(args, "-Q", "--queues") for q in value.split(",")]


def walk_files(node: Any) -> Iterator[str]:
    """Every ``file:`` secret reference under a piece of regionvault configuration."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "file" and isinstance(value, str):
                yield value
            else:
                yield from walk_files(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_files(item)


def check_worker_guard(domain: str, consumed: list[str]) -> None:
    """Apply regionvault's own start-up rule (workers/guard.py) to a worker of ``domain``
    consuming ``consumed``; raise RuntimeError with its reason if it would refuse to start."""
    from regionvault.domains import parse_domain
    from workers import guard

    problem = guard.queue_problem(parse_domain(domain), set(consumed))
    if problem is not None:
        raise RuntimeError(problem)


# --- what a process started from a pod's spec connects to ----------------------------------------

#: run in a fresh interpreter: import the Celery app exactly as a worker, beat or Flower does
#: (workers/app.py reads REGIONVAULT_CONFIG and REGIONVAULT_DOMAIN when it is imported) and say
#: where it connects and what its beat would publish
_PROBE = """
import json
from workers.app import app
print(json.dumps({
    "broker_url": app.conf.broker_url,
    "result_backend": app.conf.result_backend,
    "beat": sorted([name, entry["kwargs"]["domain"], entry["options"]["queue"]]
                   for name, entry in (app.conf.beat_schedule or {}).items()),
}))
"""


@dataclass(frozen=True)
class ProcessView:
    """Where a regionvault process connects, as its own Celery app reports it."""

    broker_url: str
    result_backend: str
    #: (entry name, domain, queue) of every beat schedule entry it would publish
    beat: tuple[tuple[str, str, str], ...]


@functools.lru_cache(maxsize=64)
def _probe(config_text: str, env_items: tuple[tuple[str, str], ...]) -> ProcessView:
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "config.yaml"
        config_file.write_text(config_text)
        # nothing of this test process's environment (a REGIONVAULT_* or CELERY_* of the
        # developer's shell) may leak into what is measured
        process_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp,
                       **dict(env_items), "REGIONVAULT_CONFIG": str(config_file)}
        out = subprocess.run([sys.executable, "-c", _PROBE], env=process_env, cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return ProcessView(data["broker_url"], data["result_backend"],
                       tuple((str(n), str(d), str(q)) for n, d, q in data["beat"]))


def process_view(config_text: str, env: Mapping[str, str]) -> ProcessView:
    """Start the app of a process with this configuration file and these REGIONVAULT_*
    variables (the rest of its environment does not decide where it connects)."""
    wanted = {k: v for k, v in env.items() if k.startswith("REGIONVAULT_")}
    return _probe(config_text, tuple(sorted(wanted.items())))


def secret_placeholder(name: str, key: str) -> str:
    """What a variable taken from a Secret holds in a probe: a URL naming the Secret."""
    return f"redis://:secret@{name}--{key}.from-secret.invalid:6379/0"


#: what the test puts into Secrets: (Secret name, key) -> value
SecretValues = Mapping[tuple[str, str], str]


def container_env_values(c: Obj, secrets: SecretValues | None = None) -> dict[str, str]:
    """A container's environment as its process sees it: a value from a Secret is the one
    ``secrets`` gives for that Secret and key, else ``secret_placeholder``."""
    values: dict[str, str] = {}
    for name, entry in env(c).items():
        if "value" in entry:
            values[name] = str(entry["value"])
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            ref = entry["valueFrom"]["secretKeyRef"]
            key = (ref["name"], ref["key"])
            values[name] = (secrets or {}).get(key) or secret_placeholder(*key)
    return values


def pod_process_view(rendered: Rendered, deployment: Obj,
                     secrets: SecretValues | None = None) -> ProcessView:
    """Where the process of a Deployment's (single regionvault) container connects, its
    Secrets holding ``secrets``."""
    cm = rendered.config_map()
    (c,) = pod_spec(deployment)["containers"]
    return process_view(cm["data"]["config.yaml"], container_env_values(c, secrets))


def host_port(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}"
