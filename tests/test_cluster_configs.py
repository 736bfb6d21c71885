"""cluster/: the launcher config, the KubeRay manifests and the MLflow server agree with Ray's schema,
with each other, and with the flags, spaces and storage layout the code relies on. Parsing only: fast."""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import re
import shlex
from dataclasses import fields
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pytest
import yaml

from mcu_dist import sweep as sweep_cli
from mcu_dist.config import ScaleConfig
from mcu_dist.tune_space import SweepConfig
from tests.conftest import CIFAR_PARQUET

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
SWEEP_CMD = ["python", "-m", "mcu_dist.sweep"]


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d is not None]


def one(name: str, kind: str) -> dict:
    found = [d for d in docs(name) if d.get("kind") == kind]
    assert len(found) == 1, f"{name}: expected one {kind}, found {len(found)}"
    return found[0]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def gpus(container: dict) -> int:
    res = container.get("resources", {})
    return int((res.get("limits") or {}).get("nvidia.com/gpu", 0))


def space_needs(space_file: Path) -> tuple[int, int, bool]:
    """(scale.workers, sweep.max_concurrent, scale.gpu) of a space, defaults from the dataclasses."""
    raw = yaml.safe_load(space_file.read_text())
    fixed, sweep = raw.get("fixed") or {}, raw.get("sweep") or {}
    defaults = {f.name: f.default for f in fields(ScaleConfig)}
    workers = int(fixed.get("scale.workers", defaults["workers"]))
    gpu = bool(fixed.get("scale.gpu", defaults["gpu"]))
    concurrent = int(
        sweep.get("max_concurrent", {f.name: f.default for f in fields(SweepConfig)}["max_concurrent"])
    )
    return workers, concurrent, gpu


def sweep_flags() -> set[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        sweep_cli.parse_args(["--help"])
    return set(re.findall(r"--[a-z][a-z-]*", out.getvalue()))


def entrypoint_args(entrypoint: str) -> list[str]:
    """The sweep's arguments; every flag spelled out in full (argparse would accept an abbreviation)."""
    words = shlex.split(entrypoint)
    assert words[:3] == SWEEP_CMD, f"entrypoint does not run {' '.join(SWEEP_CMD)}: {entrypoint}"
    known = sweep_flags()
    for w in words[3:]:
        assert not w.startswith("--") or w.split("=")[0] in known, f"not a flag of the sweep: {w}"
    return words[3:]


def mlflow_service_urls() -> set[tuple[str, int]]:
    """(host, port) pairs the Service in mlflow-server.yaml answers on, inside the cluster."""
    svc = one("mlflow-server.yaml", "Service")
    name, ns = svc["metadata"]["name"], svc["metadata"]["namespace"]
    hosts = {name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"}
    return {(h, p["port"]) for h in hosts for p in svc["spec"]["ports"]}


def server_flags(container: dict) -> dict[str, str]:
    words = [*container.get("command", []), *container.get("args", [])]
    assert words[:2] == ["mlflow", "server"], words
    out = {}
    for w in words[2:]:
        key, _, value = w.partition("=")
        out[key] = value
    return out


# -- every file ---------------------------------------------------------------------------------------


def test_every_cluster_file_parses_and_the_readme_names_them():
    files = sorted(CLUSTER.glob("*.yaml"))
    assert {f.name for f in files} >= {
        "aws-gpu.yaml",
        "kuberay-raycluster.yaml",
        "kuberay-rayjob.yaml",
        "mlflow-server.yaml",
    }
    for f in files:
        parsed = docs(f.name)
        assert parsed and all(isinstance(d, dict) for d in parsed), f.name
    readme = (CLUSTER / "README.md").read_text()
    for f in files:
        assert f"cluster/{f.name}" in readme, f"README does not say how to use {f.name}"
    for needle in (
        "ray up",
        "kubectl apply",
        "ray job submit --address http://",
        "RAY_AUTH_TOKEN",
        "ray job logs -f",
        "--resume",
        "--name",
        "scale.workers",
        "scale.gpu",
        "sweep.max_concurrent",
        "sweep.cpus_per_trial",
        "--tracking-uri",
        "--storage",
    ):
        assert needle in readme, needle


def test_readme_sweep_commands_use_real_flags_and_spaces():
    readme = (CLUSTER / "README.md").read_text()
    commands = [
        line.split(" -- ", 1)[1] for line in readme.splitlines() if "-- python -m mcu_dist.sweep" in line
    ]
    assert len(commands) >= 3  # AWS submit, KubeRay submit, resume
    for cmd in commands:
        args = sweep_cli.parse_args(entrypoint_args(cmd))  # argparse exits on an unknown flag
        assert (ROOT / args.space).is_file(), args.space
        assert args.storage and args.tracking_uri
    assert any(sweep_cli.parse_args(entrypoint_args(c)).resume for c in commands)


# -- Ray cluster launcher ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def launcher() -> dict:
    (cfg,) = docs("aws-gpu.yaml")
    return cfg


def test_launcher_validates_against_rays_schema(launcher):
    # jsonschema is a hard requirement of ray itself (pip show jsonschema: Required-by ray).
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(launcher, schema)
    broken = json.loads(json.dumps(launcher))
    broken["available_node_types"][launcher["head_node_type"]]["resources"]["CPU"] = "16"
    with pytest.raises(jsonschema.ValidationError):  # the schema really checks these fields
        jsonschema.validate(broken, schema)


def test_launcher_cpu_head_and_autoscaling_gpu_workers(launcher):
    types = launcher["available_node_types"]
    head = types[launcher["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] > 0
    workers = {n: t for n, t in types.items() if n != launcher["head_node_type"]}
    gpu_types = {n: t for n, t in workers.items() if t["resources"].get("GPU", 0) > 0}
    assert gpu_types, "no GPU worker type"
    workers_per_trial, concurrent, gpu = space_needs(ROOT / "tune_spaces" / "cifar10_resnet18.yaml")
    assert gpu
    for name, t in gpu_types.items():
        per_node = t["resources"]["GPU"]
        assert t["max_workers"] > t["min_workers"], f"{name} does not autoscale"
        # check_resources() counts the GPUs present when a trial starts: a GPU trial must fit at once.
        assert t["min_workers"] * per_node >= workers_per_trial, name
        assert t["max_workers"] * per_node >= workers_per_trial * concurrent, name
    assert launcher["max_workers"] >= max(t["max_workers"] for t in gpu_types.values())


def test_launcher_installs_the_project(launcher):
    mounts = {str(k): str(v) for k, v in launcher.get("file_mounts", {}).items()}
    installs = [c for c in launcher["setup_commands"] if "pip install" in c]
    via_git = [c for c in installs if re.search(r"mcu_dist @ git\+", c)]
    editable = [
        (remote, c)
        for c in installs
        for remote, local in mounts.items()
        if f"install -e {remote}" in c and (ROOT / local).resolve() == ROOT
    ]
    assert via_git or editable, "setup_commands do not install the project"
    assert 'name = "mcu_dist"' in (ROOT / "pyproject.toml").read_text()


def _ray_start(commands: list[str]) -> tuple[str, list[str]]:
    (cmd,) = [c for c in commands if "ray start" in c]
    prefix, _, rest = cmd.partition("ray start")
    return prefix, shlex.split(rest)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # importing ray's CLI imports Ray Serve
def test_launcher_start_commands_use_ray_start_with_token_auth(launcher):
    from ray.scripts.scripts import start

    options = {o for p in start.params for o in p.opts}
    mounts = {str(k) for k in launcher.get("file_mounts", {})}
    for key, head in (("head_start_ray_commands", True), ("worker_start_ray_commands", False)):
        prefix, flags = _ray_start(launcher[key])
        assert "RAY_AUTH_MODE=token" in prefix, key
        token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", prefix)
        assert token_path or "RAY_AUTH_TOKEN=" in prefix, f"{key}: no token"
        if token_path:  # the token file is shipped to every node
            assert token_path.group(1).replace("$HOME", "~") in mounts, token_path.group(1)
        assert ("--head" in flags) == head, key
        for flag in flags:
            if flag.startswith("--"):
                assert flag.split("=")[0] in options, f"{key}: ray start has no {flag}"
        assert "cd ~/mcu_dist" in prefix, f"{key}: ray start outside the project (relative --space)"
    _, head_flags = _ray_start(launcher["head_start_ray_commands"])
    assert "--num-gpus=0" in head_flags


# -- KubeRay -------------------------------------------------------------------------------------------


def check_raycluster_spec(spec: dict, pvcs: dict[str, dict]) -> str:
    """Asserts the cluster shape the sweep relies on; returns the shared volume's mount path."""
    token_by_operator = (spec.get("authOptions") or {}).get("mode") == "token"
    tracking = {f"http://{h}:{p}" for h, p in mlflow_service_urls()}
    head_pod = spec["headGroupSpec"]["template"]["spec"]
    groups = spec["workerGroupSpecs"]
    pods = [("head", head_pod)] + [(g["groupName"], g["template"]["spec"]) for g in groups]

    assert spec["headGroupSpec"]["rayStartParams"].get("num-gpus", "0") == "0"
    assert all(gpus(c) == 0 for c in head_pod["containers"]), "the head must have no GPU"
    gpu_groups = [g for g in groups if any(gpus(c) > 0 for c in g["template"]["spec"]["containers"])]
    assert gpu_groups, "no GPU worker group"
    workers, concurrent, _ = space_needs(ROOT / "tune_spaces" / "cifar10_resnet18.yaml")
    for g in gpu_groups:
        per_pod = max(gpus(c) for c in g["template"]["spec"]["containers"])
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] and g["maxReplicas"] > g["minReplicas"]
        assert g["minReplicas"] * per_pod >= workers  # check_resources() does not wait for the autoscaler
        assert g["maxReplicas"] * per_pod >= workers * concurrent

    mount_paths = set()
    for name, pod in pods:
        shared = {
            v["name"]
            for v in pod["volumes"]
            if (v.get("persistentVolumeClaim") or {}).get("claimName") in pvcs
        }
        assert shared, f"{name}: no shared volume"
        for c in pod["containers"]:
            env = env_of(c)
            if not token_by_operator:
                assert env["RAY_AUTH_MODE"]["value"] == "token", name
                assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"], name
            assert env["MLFLOW_TRACKING_URI"]["value"] in tracking, name
            mount_paths |= {m["mountPath"] for m in c["volumeMounts"] if m["name"] in shared}
    assert len(mount_paths) == 1, f"shared volume mounted at different paths: {mount_paths}"
    if spec.get("enableInTreeAutoscaling") and not token_by_operator:
        env = {e["name"]: e for e in spec["autoscalerOptions"]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token" and "RAY_AUTH_TOKEN" in env
    for pvc in pvcs.values():
        assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    return mount_paths.pop()


def _pvcs(name: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs(name) if d["kind"] == "PersistentVolumeClaim"}


def test_raycluster_head_gpu_workers_auth_tracking_and_shared_volume():
    cluster = one("kuberay-raycluster.yaml", "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    assert check_raycluster_spec(cluster["spec"], _pvcs("kuberay-raycluster.yaml")) == "/mnt/shared"


@pytest.fixture(scope="module")
def rayjob_args():
    job = one("kuberay-rayjob.yaml", "RayJob")
    return sweep_cli.parse_args(entrypoint_args(job["spec"]["entrypoint"]))


def test_rayjob_runs_the_sweep_on_the_shared_volume_and_the_mlflow_service(rayjob_args):
    job = one("kuberay-rayjob.yaml", "RayJob")
    spec = job["spec"]
    assert job["apiVersion"] == "ray.io/v1" and spec["shutdownAfterJobFinishes"] is True
    assert _pvcs("kuberay-rayjob.yaml") == _pvcs("kuberay-raycluster.yaml")
    mount = check_raycluster_spec(spec["rayClusterSpec"], _pvcs("kuberay-rayjob.yaml"))
    assert spec["rayClusterSpec"] == one("kuberay-raycluster.yaml", "RayCluster")["spec"], (
        "specs drifted apart"
    )

    space = ROOT / rayjob_args.space
    assert space.is_file() and space.parent == ROOT / "tune_spaces", rayjob_args.space
    assert PurePosixPath(rayjob_args.storage).is_relative_to(mount), (rayjob_args.storage, mount)
    uri = urlparse(rayjob_args.tracking_uri)
    assert uri.scheme == "http" and (uri.hostname, uri.port) in mlflow_service_urls(), (
        rayjob_args.tracking_uri
    )
    submitter = spec["submitterPodTemplate"]["spec"]["containers"][0]
    if (spec["rayClusterSpec"].get("authOptions") or {}).get("mode") != "token":
        assert env_of(submitter)["RAY_AUTH_MODE"]["value"] == "token" and "RAY_AUTH_TOKEN" in env_of(
            submitter
        )


def test_rayjob_space_loads_and_puts_the_model_cache_on_the_shared_volume(rayjob_args):
    if not CIFAR_PARQUET.is_file():
        pytest.skip("the cifar10 space validates the offline CIFAR-10 copy, absent here")
    space, storage, uri, experiment = sweep_cli.resolve(rayjob_args)
    assert space.base_config().scale.gpu and space.base_config().scale.workers >= 2
    assert storage == rayjob_args.storage and uri == rayjob_args.tracking_uri
    assert PurePosixPath(space.fixed["cache_dir"]).is_relative_to(storage)
    assert experiment == space.sweep.name


# -- MLflow server -------------------------------------------------------------------------------------


def test_mlflow_server_needs_credentials_and_admits_only_the_ray_pods():
    dep = one("mlflow-server.yaml", "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert server_flags(c)["--app-name"] == "basic-auth"
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-auth"
    assert env["MLFLOW_DISABLE_TELEMETRY"]["value"] == "true"
    ini = one("mlflow-server.yaml", "ConfigMap")["data"]["basic_auth.ini"]
    assert "default_permission = NO_PERMISSIONS" in ini and "admin_password" not in ini  # no shipped password
    policy = one("mlflow-server.yaml", "NetworkPolicy")["spec"]
    assert (
        policy["podSelector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    )
    ((rule,),) = [r["from"] for r in policy["ingress"]]
    admitted = rule["podSelector"]["matchLabels"]
    # every Ray pod that talks to MLflow carries the admitted label and the Secret's credentials
    for name in ("kuberay-raycluster.yaml", "kuberay-rayjob.yaml"):
        for pod in ray_pod_templates(name):
            assert admitted.items() <= pod["metadata"]["labels"].items(), name
            for container in pod["spec"]["containers"]:
                names = {e["name"] for e in container.get("env", [])}
                assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= names, name
    aws = (CLUSTER / "aws-gpu.yaml").read_text()
    assert "--host 0.0.0.0" not in aws and "MLFLOW_DISABLE_TELEMETRY=true" in aws


def ray_pod_templates(name: str) -> list[dict]:
    spec = next(d for d in docs(name) if d.get("kind") in ("RayCluster", "RayJob"))["spec"]
    spec = spec.get("rayClusterSpec", spec)
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


def test_mlflow_server_serves_the_tracking_uri_the_jobs_use(rayjob_args):
    dep, svc = one("mlflow-server.yaml", "Deployment"), one("mlflow-server.yaml", "Service")
    pod = dep["spec"]["template"]
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (c,) = pod["spec"]["containers"]
    flags = server_flags(c)
    named_ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for p in svc["spec"]["ports"]:
        target = p.get("targetPort", p["port"])
        assert named_ports.get(target, target) == int(flags["--port"])
    mounts = [m["mountPath"] for m in c["volumeMounts"]]
    backend, artifacts = flags["--backend-store-uri"], flags["--artifacts-destination"]
    if backend.startswith("sqlite:"):  # a file store: on a volume, one writer only
        assert any(backend.removeprefix("sqlite:///").startswith(m) for m in mounts), backend
        assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    else:
        assert backend.startswith(("postgresql", "mysql")), backend
    assert "://" in artifacts or any(artifacts.startswith(m) for m in mounts), artifacts
    # MLflow 3 refuses unknown Host headers: the one the jobs send must be allowed.
    allowed = flags.get("--allowed-hosts", "").split(",")
    host = urlparse(rayjob_args.tracking_uri).netloc
    assert any(fnmatch.fnmatch(host, a) if "*" in a else host == a for a in allowed), (host, allowed)


def test_tracking_outputs_stay_out_of_git_and_of_the_cluster_rsync():
    """A local sweep writes mlflow.db and mlartifacts/ beside it: neither committed nor shipped to nodes."""
    ignored = (ROOT / ".gitignore").read_text().split()
    excluded = yaml.safe_load((ROOT / "cluster" / "aws-gpu.yaml").read_text())["rsync_exclude"]
    for name in ("mlflow.db", "mlartifacts", "mlruns"):
        assert name in ignored or f"{name}/" in ignored, name
        assert name in excluded, name
