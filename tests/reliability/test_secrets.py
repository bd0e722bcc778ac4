"""Credentials never appear in logs, status, events, the cluster's objects or the store.

Known, unique secret values go where users put them: S3 keys in the Secrets a ModelDeployment
names (the store's and the source model's), and in the environment of `onnxship compress`
(as a compression Job's pod gets them). Then one grep over everything a user or an attacker
with read access could see: the operator's logs at DEBUG (a separate process), every version
of every object and every request body in the API server but the Secrets themselves, the
CLI's output at DEBUG, the Jobs' termination messages, and every object in the buckets.
The scanner is checked first on planted values, so a clean result means something.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.controller.conftest import Cluster, in_background
from tests.controller.test_lifecycle import DEPLOYS, JOBS, status
from tests.helpers import models
from tests.store.conftest import S3Server

from .operator_process import ONNXSHIP, OperatorProcess
from .secret_scan import SecretScan, leak_forms

# Realistic shapes (AWS keys; secret keys hold / and +), unique enough to never occur by chance.
SECRETS = {
    "store access key": "AKIAONNXSHIPSTORE7Q3Z",
    "store secret key": "s7Ore/Secret+Kq81vB3nM0xKp2Lw9Tr4Zy6uQ1eH5jD",
    "source access key": "AKIAONNXSHIPSOURCE4W8",
    "source secret key": "s0urCe/Secret+Wm27cN4bV8xLq3Pz6Hy1Rt5kJ9gF0a",
}
STORE_KEYS = {
    "AWS_ACCESS_KEY_ID": SECRETS["store access key"],
    "AWS_SECRET_ACCESS_KEY": SECRETS["store secret key"],
}
SOURCE_KEYS = {
    "AWS_ACCESS_KEY_ID": SECRETS["source access key"],
    "AWS_SECRET_ACCESS_KEY": SECRETS["source secret key"],
}
REGION = "us-east-1"
CREDENTIAL_VARS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


# ---------------------------------------------------------------- the scanner finds leaks


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_the_scanner_finds_each_secret_in_every_form_it_could_leak_in(name: str) -> None:
    value = SECRETS[name]
    planted = {
        "a JSON log line": json.dumps({"level": "debug", "message": f"creds {value} used"}),
        "a copied Secret's data": {"data": {"k": base64.b64encode(value.encode()).decode()}},
        "an env file in a base64 blob, offset 1": base64.b64encode(f"K={value}\n".encode()),
        "an env file in a base64 blob, offset 2": base64.b64encode(f"KY={value}\n".encode()),
        "a URI's userinfo": f"s3://{value.replace('/', '%2F').replace('+', '%2B')}@host/b",
        "a JSON body with escaped slashes": json.dumps({"v": value}).replace("/", "\\/"),
        "bytes in a blob": b"\x00\x01" + value.encode() + b"\xff",
    }
    for where, content in planted.items():
        scan = SecretScan({name: value})
        scan.scan(where, content)
        assert scan.findings, f"the scanner missed {name} in {where}"
        with pytest.raises(AssertionError, match="secrets leaked"):
            scan.assert_clean()
    clean = SecretScan({name: value})
    clean.scan("a log without it", json.dumps({"message": value[:8] + "...", "k": "AKIA"}))
    clean.assert_clean()
    assert all(len(form) >= 12 for form in leak_forms(value).values())


# ---------------------------------------------------------------- operator, Jobs, store


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


async def create_secret(cluster: Cluster, name: str, data: dict[str, str]) -> None:
    await cluster.create(
        "/api/v1/namespaces/default/secrets",
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
         "metadata": {"name": name, "namespace": "default"},
         "data": {k: b64(v) for k, v in data.items()}},
    )  # fmt: skip


def resolve_env(cluster: Cluster, container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: literal values, and the keys of
    the Secrets it references (a missing optional key is left out)."""
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
            continue
        ref = e["valueFrom"]["secretKeyRef"]
        secret = cluster.get("v1/secrets", ref["name"]) or {}
        data = secret.get("data") or {}
        if ref["key"] in data:
            env[e["name"]] = base64.b64decode(data[ref["key"]]).decode()
        else:
            assert ref.get("optional"), f"the pod would not start: no {ref} in the Secret"
    return env


@contextlib.asynccontextmanager
async def kubelet(cluster: Cluster, work: Path, scan: SecretScan) -> AsyncIterator[list[str]]:
    """Runs each compression Job's container (the real `onnxship compress`, at DEBUG, with the
    environment built from the Secrets), reports its exit code and termination message as a
    pod would, and makes each Deployment ready. Yields the names of the Jobs it ran."""
    ran: list[str] = []

    async def run_job(name: str, job: dict[str, Any]) -> None:
        [c] = job["spec"]["template"]["spec"]["containers"]
        folder = work / name
        folder.mkdir(parents=True)
        args = list(c["args"])
        result = folder / "termination-log"
        args[args.index("--result-file") + 1] = str(result)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env |= resolve_env(cluster, c) | {"TMPDIR": str(folder)}
        proc = await asyncio.create_subprocess_exec(
            ONNXSHIP, "--log-level", "DEBUG", "--log-format", "json", *args,
            env=env, cwd=folder, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await proc.communicate()
        scan.scan(f"`onnxship compress` output of Job {name}", output)
        message = result.read_text() if result.exists() else output.decode()[-4096:]
        scan.scan(f"termination message of Job {name}", message)
        assert proc.returncode == 0, output.decode()[-3000:]
        await cluster.finish_job(name, proc.returncode, message)

    async def play() -> None:
        while True:
            for name, job in cluster.objects(JOBS).items():
                if name not in ran:
                    ran.append(name)
                    await run_job(name, job)
            for name, d in cluster.objects(DEPLOYS).items():
                if (d.get("status") or {}).get("readyReplicas") != d["spec"].get("replicas", 1):
                    await cluster.make_ready(name)
            await asyncio.sleep(0.05)

    async with in_background(play()):
        yield ran


def model_doc(name: str, version: str, sha: str, endpoint: str, buckets: dict[str, str]) -> Any:
    return {
        "apiVersion": "onnxship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "resourceVersion": "1"},
        "spec": {
            "model": {
                "uri": f"s3://{buckets['models']}/enc/{version}/model.onnx",
                "version": version,
                "sha256": sha,
                "credentialsSecret": "model-creds",
            },
            "artifacts": {
                "uri": f"s3://{buckets['artifacts']}/team/",
                "endpoint": endpoint,
                "region": REGION,
                "credentialsSecret": "s3-creds",
            },
            "rollout": {"steps": [{"setWeight": 50}, {"pause": {"duration": "1s"}}]},
        },
    }


def scan_cluster(cluster: Cluster, scan: SecretScan) -> None:
    """Every version of every object but the Secrets, and every request body but theirs."""
    for (res, ns, name), obj in list(cluster.server.objects.items()):
        plural = getattr(res, "plural", "")
        if plural == "secrets":
            continue
        for i, version in enumerate(obj.history):
            if version is not None:
                scan.scan(f"{plural} {ns}/{name} (version {i})", version.raw)
    for request in cluster.server:
        if "/secrets" in str(request.url):
            continue
        scan.scan(f"request {request.method.value} {request.url}", request.body)


def scan_buckets(server: S3Server, buckets: dict[str, str], scan: SecretScan) -> int:
    s3 = server.client()
    n = 0
    for bucket in buckets.values():
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                scan.scan(f"s3://{bucket}/{obj['Key']}", body)
                n += 1
    return n


async def test_no_secret_in_logs_status_events_objects_or_the_store(
    cluster: Cluster,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    buckets = {"models": s3_server.new_bucket(), "artifacts": s3_server.new_bucket()}
    shas = {}
    s3 = s3_server.client()
    for version, seed in (("v1", 0), ("v2", 1)):
        path = models.save(models.mlp(seed=seed), tmp_path / version / "model.onnx")
        shas[version] = hashlib.sha256(path.read_bytes()).hexdigest()
        s3.upload_file(str(path), buckets["models"], f"enc/{version}/model.onnx")
    endpoint = s3_server.endpoint

    def doc(name: str, version: str) -> Any:
        return model_doc(name, version, shas[version], endpoint, buckets)

    scan = SecretScan(SECRETS)
    await create_secret(cluster, "s3-creds", STORE_KEYS)
    await create_secret(cluster, "model-creds", SOURCE_KEYS)
    op = OperatorProcess(
        str(cluster.server.url),
        tmp_path / "operator",
        env={"ONNXSHIP_RESYNC_SECONDS": "30"},
        log_level="DEBUG",
    )
    await op.start()
    try:
        async with kubelet(cluster, tmp_path / "jobs", scan) as ran:
            # v1 is compressed by its Job (real compress, keys from the Secrets), then served.
            await cluster.apply(doc("enc", "v1"))
            await cluster.wait_for(
                lambda: status(cluster).get("phase") == "Ready", timeout=60, what="v1 Ready"
            )
            # v2: a canary, to the end.
            await cluster.patch_md("enc", {"spec": doc("enc", "v2")["spec"]})
            await cluster.wait_for(
                lambda: (
                    len(status(cluster).get("revisions", [])) == 2
                    and status(cluster).get("phase") == "Ready"
                ),
                timeout=60,
                what="v2 stable",
            )
            # A second ModelDeployment of v1: the operator finds the artifact in the store
            # itself, with the store's keys from the Secret, and compresses nothing.
            await cluster.apply(doc("enc-b", "v1"))
            await cluster.wait_for(
                lambda: status(cluster, "enc-b").get("phase") == "Ready", timeout=60, what="enc-b"
            )
            rec = status(cluster, "enc-b")["revisions"][0]
            assert rec["environments"][0]["compression"]["cacheHit"] is True
            assert len(ran) == 2, f"one Job per compressed revision: {ran}"
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\nenc: {json.dumps(status(cluster))[:1500]}\n"
            f"enc-b: {json.dumps(status(cluster, 'enc-b'))[:1500]}\nlog: {op.tail(3000)}"
        ) from None
    finally:
        assert await op.stop() == 0
    log = op.log_text()
    assert '"level": "debug"' in log, "the operator logged at DEBUG"
    scan.scan("the operator's log (DEBUG)", log)
    scan_cluster(cluster, scan)
    stored = scan_buckets(s3_server, buckets, scan)
    assert stored >= 6, "two models, two manifests, two blobs"
    # The objects the operator made carry references to the Secrets, never their values.
    for job in cluster.objects(JOBS).values():
        [c] = job["spec"]["template"]["spec"]["containers"]
        by_ref = {e["name"] for e in c["env"] if "valueFrom" in e}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= by_ref
        assert {"ONNXSHIP_SOURCE_AWS_ACCESS_KEY_ID", "ONNXSHIP_SOURCE_AWS_SECRET_ACCESS_KEY"} <= (
            by_ref
        )
    served = 0
    for name, deploy in cluster.objects(DEPLOYS).items():
        for c in deploy["spec"]["template"]["spec"]["containers"]:
            creds = [e for e in c.get("env", []) if e["name"] in CREDENTIAL_VARS]
            assert all("value" not in e and "secretKeyRef" in e["valueFrom"] for e in creds)
            served += name != "enc-router" and len(creds) >= 2
    assert served >= 2, "the model servers of v2 and enc-b read the store with the keys"
    places = " ".join(scan.scanned)
    assert "events default/" in places and "modeldeployments default/enc " in places, places
    # The scanner finds the values as the API server keeps them (base64 in the Secrets).
    probe = SecretScan(SECRETS)
    probe.scan("the Secrets", [cluster.get("v1/secrets", n) for n in ("s3-creds", "model-creds")])
    assert {f.split(" (")[0] for f in probe.findings} == set(SECRETS)
    scan.assert_clean()
    print(f"scanned {len(scan.scanned)} places, {sum(scan.scanned.values())} bytes")


# ---------------------------------------------------------------- the CLI on its own


def test_compress_cli_failures_at_debug_do_not_print_credentials(
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    """The error paths: a store bucket that does not exist (exit 6), a source model that does
    not exist (exit 7), each at DEBUG, with the keys in the environment."""
    import subprocess

    model = models.save(models.mlp(), tmp_path / "model.onnx")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= STORE_KEYS | {
        "ONNXSHIP_SOURCE_AWS_ACCESS_KEY_ID": SOURCE_KEYS["AWS_ACCESS_KEY_ID"],
        "ONNXSHIP_SOURCE_AWS_SECRET_ACCESS_KEY": SOURCE_KEYS["AWS_SECRET_ACCESS_KEY"],
    }
    bucket = s3_server.new_bucket()
    cases = {
        "no such store bucket": (
            [str(model), "--store", "s3://no-such-bucket-xyz/team/"],
            6,
        ),
        "no such source model": (
            [f"s3://{bucket}/missing/model.onnx", "--store", f"s3://{bucket}/team/",
             "--source-endpoint", s3_server.endpoint],
            7,
        ),
        "published": ([str(model), "--store", f"s3://{bucket}/team/"], 0),
    }  # fmt: skip
    scan = SecretScan(SECRETS)
    for what, (args, code) in cases.items():
        for output in ("json", "text"):
            proc = subprocess.run(
                [ONNXSHIP, "--log-level", "DEBUG", "compress", *args,
                 "--endpoint", s3_server.endpoint, "--region", REGION, "-o", output],
                env=env, capture_output=True, timeout=120, cwd=tmp_path,
            )  # fmt: skip
            out = proc.stdout + proc.stderr
            assert proc.returncode == code, (what, out.decode()[-2000:])
            scan.scan(f"compress ({what}, -o {output})", out)
    scan_buckets(s3_server, {"artifacts": bucket}, scan)
    scan.assert_clean()


# ---------------------------------------------------------------- local mode


def test_up_with_an_s3_store_keeps_the_keys_out_of_its_output_and_state(
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    """`onnxship up` takes the store's keys from its environment (and hands them to its
    `compress` and `serve` children): its output at DEBUG, every file of its state folder
    (status, commands, the children's logs) and the bucket hold none of them."""
    import yaml

    from tests.local.conftest import Up

    bucket = s3_server.new_bucket()
    work = tmp_path / "work"
    model = models.save(models.mlp(), work / "model.onnx")
    spec = work / "encoder.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "onnxship.io/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": "encoder"},
                "spec": {
                    "model": {"uri": model.as_uri(), "version": "v1"},
                    "artifacts": {
                        "uri": f"s3://{bucket}/team/",
                        "endpoint": s3_server.endpoint,
                        "region": REGION,
                    },
                },
            }
        )
    )
    up = Up(work, tmp_path / "up.log")
    env = STORE_KEYS | {"AWS_DEFAULT_REGION": REGION, "ONNXSHIP_LOG_LEVEL": "DEBUG"}
    try:
        up.start(str(spec), env=env)
        status = up.wait_for("v1 stable", lambda s: s.phase == "Ready", timeout=90)
        assert status.revisions[0].artifact_uri.startswith(f"s3://{bucket}/team/")
        assert up.interrupt() == 0
    finally:
        up.kill()
    scan = SecretScan(SECRETS)
    scan.scan("`onnxship up` output (DEBUG)", up.output())
    files = [p for p in (work / ".onnxship").rglob("*") if p.is_file()]
    assert any(p.name.endswith(".log") for p in files), [str(p) for p in files]
    for path in files:
        scan.scan(str(path.relative_to(work)), path.read_bytes())
    assert scan_buckets(s3_server, {"artifacts": bucket}, scan) >= 2
    scan.assert_clean()
