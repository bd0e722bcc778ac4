"""The objects the operator creates, checked without a cluster."""

from __future__ import annotations

from typing import Any

import pytest

from onnxship.api import CompressionSummary, parse_spec
from onnxship.plan import workloads as w
from onnxship.plan.traffic import TrafficSplit
from tests.helpers import pod_security

OWNER = w.Owner(name="encoder-with-a-long-name-30ch", namespace="ml", uid="u-1")
STORE = w.StoreRef("s3://art/team/", endpoint="http://minio:9000", credentials_secret="s3-creds")
RUNTIME = w.Runtime(image="ghcr.io/onnxship/runtime:0.1.0")


def spec(**extra: Any) -> Any:
    return parse_spec({"model": {"uri": "s3://m/model.onnx", "version": "v3"}, **extra})


def two_envs() -> Any:
    return spec(
        serving={
            "replicas": 2,
            "resources": {"limits": {"cpu": 2}},
            "environments": [
                {"name": "cpu", "weight": 70, "nodeSelector": {"pool": "cpu"}},
                {
                    "name": "gpu-a100-pool-west",
                    "executionProvider": "CUDA",
                    "weight": 30,
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "resources": {"limits": {"nvidia.com/gpu": 1}},
                    "compression": {"quantize": {"mode": "fp16"}},
                },
            ],
        },
        rollout={"traffic": {"router": "gatewayAPI", "gateway": {"parentRefs": [{"name": "gw"}]}}},
    )


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def assert_restricted(obj: dict[str, Any]) -> None:
    """The restricted Pod Security Standard (tests/helpers/pod_security.py), and a read-only
    root filesystem, which the profile does not ask for but every pod we make has."""
    pod_security.assert_restricted(obj)
    for c in pod_spec(obj)["containers"]:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_names_fit_in_a_dns_label_at_the_limits() -> None:
    revision = f"{OWNER.name}-0123456789"
    for env in two_envs().serving.environments:
        assert len(w.workload_name(revision, env.name)) <= 63
        assert len(w.job_name(revision, env.name)) <= 63


def test_compression_job() -> None:
    s = two_envs()
    gpu = s.serving.environments[1]
    job = w.compress_job(OWNER, s, "rev", gpu, STORE, RUNTIME)
    assert job["spec"]["backoffLimit"] == 2 and job["spec"]["activeDeadlineSeconds"] == 3600
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600
    assert_restricted(job)
    [c] = pod_spec(job)["containers"]
    args = c["args"]
    assert args[args.index("--quantize") + 1] == "fp16", "the environment's own variant"
    assert args[args.index("--execution-provider") + 1] == "CUDA"
    assert args[args.index("--endpoint") + 1] == "http://minio:9000"
    assert args[args.index("--result-file") + 1] == c["terminationMessagePath"]
    env = {e["name"]: e for e in c["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "s3-creds",
        "key": "AWS_SECRET_ACCESS_KEY",
    }
    assert all("value" not in e or e["name"] in ("TMPDIR", "AWS_DEFAULT_REGION") for e in c["env"])
    assert job["metadata"]["ownerReferences"][0] == {
        "apiVersion": "onnxship.io/v1alpha1",
        "kind": "ModelDeployment",
        "name": OWNER.name,
        "uid": "u-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_an_s3_model_is_fetched_from_the_stores_endpoint() -> None:
    """Found by e2e: with a custom endpoint (MinIO) the Job looked for s3:// models on AWS."""
    [env] = spec().serving.effective_environments()
    args = w.compress_args(spec(), spec().compression, env, STORE)
    assert args[args.index("--source-endpoint") + 1] == "http://minio:9000"
    aws = w.StoreRef("s3://art/team/")
    assert "--source-endpoint" not in w.compress_args(spec(), spec().compression, env, aws)
    https = parse_spec({"model": {"uri": "https://example.com/model.onnx"}})
    assert "--source-endpoint" not in w.compress_args(https, https.compression, env, STORE)
    # A model elsewhere than the artifacts (on AWS, artifacts on MinIO) names its own.
    own = spec(model={"uri": "s3://m/model.onnx", "endpoint": "https://s3.eu-west-1.amazonaws.com"})
    args = w.compress_args(own, own.compression, env, STORE)
    assert args[args.index("--source-endpoint") + 1] == "https://s3.eu-west-1.amazonaws.com"


def test_revision_deployment_places_pods_on_their_pool() -> None:
    s = two_envs()
    cpu, gpu = s.serving.environments
    d = w.revision_deployment(OWNER, s, "rev", gpu, "key-gpu", 2, STORE, RUNTIME)
    assert_restricted(d)
    pod = pod_spec(d)
    [c] = pod["containers"]
    assert c["resources"] == {"limits": {"nvidia.com/gpu": "1"}}, "environment resources win"
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert c["args"][c["args"].index("--cache-key") + 1] == "key-gpu"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 300
    cpu_d = w.revision_deployment(OWNER, s, "rev", cpu, "key-cpu", 2, STORE, RUNTIME)
    assert pod_spec(cpu_d)["nodeSelector"] == {"pool": "cpu"}
    assert pod_spec(cpu_d)["containers"][0]["resources"] == {"limits": {"cpu": "2"}}
    assert d["spec"]["selector"]["matchLabels"] != cpu_d["spec"]["selector"]["matchLabels"]


def test_service_selects_exactly_its_revision_and_environment() -> None:
    s = two_envs()
    env = s.serving.environments[0]
    svc = w.revision_service(OWNER, "rev", env)
    d = w.revision_deployment(OWNER, s, "rev", env, "k", 1, STORE, RUNTIME)
    labels = d["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in svc["spec"]["selector"].items())
    assert svc["spec"]["selector"][w.L_REVISION] == "rev"


def test_router_configmap_carries_weights_per_environment() -> None:
    s = spec(
        serving={"environments": [{"name": "cpu", "weight": 70}, {"name": "gpu", "weight": 30}]}
    )
    split = TrafficSplit(weights=(("v1", 90), ("v2", 10)), mirror_revision="v2", mirror_percent=20)
    table = w.route_table_for(OWNER, s, split)
    assert {(b.revision, b.environment, b.weight) for b in table.backends} == {
        ("v1", "cpu", 90),
        ("v2", "cpu", 10),
        ("v1", "gpu", 90),
        ("v2", "gpu", 10),
    }
    assert table.environments == {"cpu": 70, "gpu": 30}
    assert table.mirror is not None and table.mirror.percent == 20
    cm = w.router_configmap(OWNER, table)
    assert "routes.json" in cm["data"]


def test_router_is_restricted_and_reads_its_configmap() -> None:
    d = w.router_deployment(OWNER, RUNTIME)
    assert_restricted(d)
    [c] = pod_spec(d)["containers"]
    assert c["args"][:1] == ["route"]
    [routes_volume] = [v for v in pod_spec(d)["volumes"] if "configMap" in v]
    assert routes_volume["configMap"]["name"] == w.router_name(OWNER)
    assert w.router_service(OWNER)["metadata"]["name"] == OWNER.name, (
        "users call the deployment's name"
    )


@pytest.mark.parametrize("weights", [((("v1", 100),)), (("v1", 80), ("v2", 20))])
def test_http_route_weights(weights: tuple[tuple[str, int], ...]) -> None:
    s = two_envs()
    route = w.http_route(OWNER, s, TrafficSplit(weights=weights))
    assert route["spec"]["parentRefs"] == [{"name": "gw"}]
    *by_header, default = route["spec"]["rules"]
    assert [r["matches"][0]["headers"][0]["value"] for r in by_header] == [
        "cpu",
        "gpu-a100-pool-west",
    ]
    for rule in by_header:
        assert [b["weight"] for b in rule["backendRefs"]] == [wt for _, wt in weights]
    # without a header: environment share x revision share
    got = {b["name"]: b["weight"] for b in default["backendRefs"]}
    for rev, wt in weights:
        assert got[w.workload_name(rev, "cpu")] == wt * 70
        assert got[w.workload_name(rev, "gpu-a100-pool-west")] == wt * 30


def test_config_hash_changes_only_with_content() -> None:
    a = w.router_service(OWNER)
    assert w.config_hash(a) == w.config_hash(dict(reversed(list(a.items()))))
    b = {**a, "spec": {**a["spec"], "ports": []}}
    assert w.config_hash(a) != w.config_hash(b)


def _parse(command: str, args: list[str]) -> dict[str, Any]:
    """``args`` parsed by the real `onnxship <command>`: a renamed flag fails here, not in a pod."""
    import typer.main

    from onnxship.cli.main import app

    group: Any = typer.main.get_command(app)
    assert args[0] == command
    return dict(group.commands[command].make_context(command, list(args[1:])).params)


def test_job_arguments_are_what_onnxship_compress_accepts() -> None:
    s = spec(
        model={"uri": "s3://m/model.onnx", "sha256": "a" * 64, "sampleInputs": "s3://m/s.npz"},
        compression={
            "prune": {"sparsity": 0.3},
            "quantize": {"mode": "static", "perChannel": False},
        },
    )
    parsed = _parse(
        "compress", w.compress_args(s, s.compression, s.serving.effective_environments()[0], STORE)
    )
    assert parsed["sha256"] == "a" * 64 and parsed["quantize"] == "static"
    assert parsed["per_channel"] is False and parsed["samples"] == "s3://m/s.npz"
    assert parsed["sparsity"] == 0.3 and parsed["endpoint"] == "http://minio:9000"


def test_serve_arguments_are_what_onnxship_serve_accepts() -> None:
    s = two_envs()
    parsed = _parse("serve", w.serve_args(OWNER, s, s.serving.environments[1], "key", STORE))
    assert parsed["cache_key"] == "key" and parsed["execution_provider"] == "CUDA"
    assert parsed["store_endpoint"] == "http://minio:9000"
    assert parsed["instances"] == 1 and parsed["threads"] == 0  # 0: from the CPU limit


def test_throughput_settings_reach_the_server() -> None:
    s = spec(serving={"threads": 1, "instances": 4})
    env = s.serving.effective_environments()[0]
    parsed = _parse("serve", w.serve_args(OWNER, s, env, "key", STORE))
    assert parsed["threads"] == 1 and parsed["instances"] == 4


def test_router_arguments_are_what_onnxship_route_accepts() -> None:
    [c] = pod_spec(w.router_deployment(OWNER, RUNTIME))["containers"]
    parsed = _parse("route", c["args"])
    assert parsed["port"] == w.ROUTER_PORT


def test_pods_name_their_revision_and_close_old_connections() -> None:
    """A Service may send users straight to a revision's pods (plan/front.py): they name
    their revision on every answer, and both they and the router close a client's
    connection after the operator's age, so clients follow the Service when it moves."""
    s = spec()
    env = s.serving.effective_environments()[0]
    runtime = w.Runtime(image="img", connection_max_age=7.5)
    d = w.revision_deployment(OWNER, s, "r1", env, "key", 1, STORE, runtime)
    parsed = _parse("serve", pod_spec(d)["containers"][0]["args"])
    assert (parsed["revision"], parsed["max_connection_age"]) == ("r1", 7.5)
    [c] = pod_spec(w.router_deployment(OWNER, runtime))["containers"]
    assert _parse("route", c["args"])["max_connection_age"] == 7.5


def test_the_users_service_selects_the_router_or_one_revisions_model_pods() -> None:
    direct = w.router_service(OWNER, "r1", since="2026-12-05T07:00:00.000Z")
    assert direct["spec"]["selector"] == {
        w.L_DEPLOYMENT: OWNER.name, w.L_COMPONENT: "model", w.L_REVISION: "r1"
    }  # fmt: skip
    routed = w.router_service(OWNER)
    assert routed["spec"]["selector"] == {w.L_DEPLOYMENT: OWNER.name, w.L_COMPONENT: "router"}
    # Both the model container and the router name their HTTP port "http".
    assert direct["spec"]["ports"] == routed["spec"]["ports"]
    assert (w.service_selects(direct), w.service_selects(routed)) == ("r1", "router")
    assert w.service_selected_at(direct) == "2026-12-05T07:00:00.000Z"
    model = pod_spec(
        w.revision_deployment(
            OWNER, spec(), "r1", spec().serving.effective_environments()[0], "k", 1, STORE, RUNTIME
        )
    )["containers"][0]
    [router] = pod_spec(w.router_deployment(OWNER, RUNTIME))["containers"]
    assert "http" in {p["name"] for p in model["ports"]} & {p["name"] for p in router["ports"]}


# ------------------------------------------------------------------ causal LMs

LLM_ARTIFACT = CompressionSummary(kind="causal-lm", variant="int4-hqq", compressed_bytes=3 << 30)
ENCODER_ARTIFACT = CompressionSummary(kind="onnx", compressed_bytes=3 << 30)


def llm_deployment(s: Any, artifact: CompressionSummary | None) -> dict[str, Any]:
    env = s.serving.effective_environments()[0]
    return w.revision_deployment(OWNER, s, "r1", env, "key", 1, STORE, RUNTIME, artifact=artifact)


def test_an_llm_pod_generates_with_the_spec_limits() -> None:
    s = spec(serving={"generation": {"maxSequences": 16, "maxContext": 2048}})
    [c] = pod_spec(llm_deployment(s, LLM_ARTIFACT))["containers"]
    parsed = _parse("serve", c["args"])
    assert (parsed["max_sequences"], parsed["max_context"]) == (16, 2048)


def test_an_llm_gets_serves_defaults_and_an_encoder_no_generation_flags() -> None:
    s = spec()
    [llm] = pod_spec(llm_deployment(s, LLM_ARTIFACT))["containers"]
    assert _parse("serve", llm["args"])["max_sequences"] == 8
    assert llm["args"][-2:] == ["--max-context", "0"]  # 0: the model's context, at most 4096
    [enc] = pod_spec(llm_deployment(s, ENCODER_ARTIFACT))["containers"]
    assert "--max-sequences" not in enc["args"] and "--max-context" not in enc["args"]


def test_the_spec_kind_decides_until_the_artifact_is_known() -> None:
    s = spec(model={"uri": "s3://m/llm/", "kind": "causal-lm"})
    env = s.serving.effective_environments()[0]
    assert "--max-sequences" in w.serve_args(OWNER, s, env, "key", STORE)
    found = w.serve_args(OWNER, s, env, "key", STORE, artifact=ENCODER_ARTIFACT)
    assert "--max-sequences" not in found  # compress found an encoder: the artifact wins


@pytest.mark.parametrize(
    ("size", "threshold"),
    [(0, 120), (50 << 20, 121), (3 << 30, 156), (16 << 30, 312)],
)
def test_startup_probe_grows_with_the_artifact(size: int, threshold: int) -> None:
    """10 minutes for any model (as before), one more per GiB: a 16 GiB LLM gets 26 minutes."""
    art = CompressionSummary(kind="causal-lm", compressed_bytes=size)
    [c] = pod_spec(llm_deployment(spec(), art))["containers"]
    probe = c["startupProbe"]
    assert probe["failureThreshold"] == threshold and probe["periodSeconds"] == 5
    assert probe["failureThreshold"] * probe["periodSeconds"] >= 600 + 60 * size / (1 << 30) - 5


def test_llm_memory_is_sized_from_the_artifact_when_unset() -> None:
    [c] = pod_spec(llm_deployment(spec(), LLM_ARTIFACT))["containers"]
    # 3 GiB of weights: request 3 x 1.25 GiB + 512 MiB, limit 2 x 3 GiB + 2 GiB
    assert c["resources"] == {
        "requests": {"memory": f"{3840 + 512}Mi"},
        "limits": {"memory": f"{6144 + 2048}Mi"},
    }


def test_llm_memory_keeps_what_the_user_set() -> None:
    cpu_only = spec(serving={"resources": {"limits": {"cpu": 4}}})
    [c] = pod_spec(llm_deployment(cpu_only, LLM_ARTIFACT))["containers"]
    assert c["resources"]["limits"] == {"cpu": "4", "memory": "8192Mi"}  # memory added beside cpu
    own = spec(serving={"resources": {"limits": {"memory": "32Gi"}}})
    [c] = pod_spec(llm_deployment(own, LLM_ARTIFACT))["containers"]
    assert c["resources"] == {"limits": {"memory": "32Gi"}}
    [enc] = pod_spec(llm_deployment(spec(), ENCODER_ARTIFACT))["containers"]
    assert "resources" not in enc  # encoders: as before, the user's or none
