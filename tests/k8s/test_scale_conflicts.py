"""Scale changes at the resourceVersion they read: many at once, as several gateway replicas (or the scaler's own
concurrent steps) make them, add up exactly (a read-then-patch without it kept 1 of 12 here)."""

from __future__ import annotations

import asyncio
import json

from kubernetes_asyncio import client, config

from kambda.gateway.backends.kubernetes import KubernetesBackend
from kambda.gateway.registry import FunctionVersion
from kambda.specs import parse_function
from tests.kube import Kube


async def test_concurrent_scale_changes_are_never_lost(kube: Kube, namespace: str) -> None:
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "counted-v1"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "counted"}},
                 "template": {"metadata": {"labels": {"app": "counted"}},
                              "spec": {"containers": [{"name": "c", "image": "localhost/pause:3.4"}]}}},
    }  # fmt: skip
    assert kube.apply(json.dumps(deployment), namespace).returncode == 0
    code = {"files": {"bootstrap": "#!/bin/sh\n"}}
    spec = parse_function({"metadata": {"name": "counted", "namespace": namespace},
                           "spec": {"runtime": "provided", "code": code}})  # fmt: skip
    version = FunctionVersion(spec, "1", code_dir="/var/task", code_sha256="")
    await config.load_kube_config(config_file=kube.kubeconfig)
    async with client.ApiClient() as api:
        backend = KubernetesBackend(api)
        await asyncio.gather(*(backend.start_instances(version, 1) for _ in range(12)))
        scale = await client.AppsV1Api(api).read_namespaced_deployment_scale("counted-v1", namespace)
    assert scale.spec.replicas == 12
