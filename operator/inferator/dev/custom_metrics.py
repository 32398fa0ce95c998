"""A custom-metrics API for the test bed, so the real HPA controller has engine metrics to act on.

In a production cluster Prometheus scrapes each serving pod's `/metrics` and prometheus-adapter
serves them as `custom.metrics.k8s.io` (an aggregated API), which the HPA controller reads.
Neither runs here, and the GPU pods are KWOK's (no process to scrape). This is the narrowest
seam that stands in for both: an HTTPS server registered with the real API server's aggregation
layer (an APIService whose Service is an ExternalName for localhost) that answers, for every pod
matching the HPA's selector, the value a test set for that metric in that namespace. Everything
around it is real: the API server proxying as front-proxy-client, the HPA controller's discovery,
its replica arithmetic and its scale of the Deployment.

Only the calls the HPA controller makes are served: discovery of the group version, and
`GET /apis/custom.metrics.k8s.io/v1beta2/namespaces/NS/pods/*/METRIC?labelSelector=...`.
Requests are not authenticated: it listens on loopback for a test's lifetime.
"""

from __future__ import annotations

import datetime
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import kubernetes

from inferator.dev.cluster import LocalCluster
from inferator.dev.pki import ensure_serving_cert
from inferator.render.inferenceservice import decimal_quantity

GROUP = "custom.metrics.k8s.io"
VERSION = "v1beta2"
SERVICE = {"name": "testbed-custom-metrics", "namespace": "kube-system"}


class CustomMetricsApi:
    """Serve `custom.metrics.k8s.io/v1beta2` pod metrics from values a test sets."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.values: dict[tuple[str, str], float] = {}
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._core = kubernetes.client.CoreV1Api(
            kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
        )
        crt, key = ensure_serving_cert(cluster.pki, "testbed-custom-metrics")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(crt), str(key))
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                status, body = api.answer(self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def set(self, namespace: str, metric: str, value: float) -> None:
        """Every pod in `namespace` reports `value` for `metric` from now on."""
        with self._lock:
            self.values[(namespace, metric)] = value

    def served(self, metric: str) -> list[str]:
        """Requests the API server forwarded for `metric` so far."""
        with self._lock:
            return [r for r in self.requests if r.endswith(f"/{metric}") or f"/{metric}?" in r]

    # -- HTTP -----------------------------------------------------------------------------------
    def answer(self, raw_path: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append(raw_path)
        url = urlsplit(raw_path)
        parts = [unquote(p) for p in url.path.split("/") if p]  # "*" arrives as %2A
        if parts == ["apis"]:
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [self._group()]}
        if parts == ["apis", GROUP]:
            return 200, {"kind": "APIGroup", "apiVersion": "v1", **self._group()}
        if parts == ["apis", GROUP, VERSION]:
            with self._lock:
                metrics = sorted({metric for _, metric in self.values})
            resources = [{"name": f"pods/{m}", "singularName": "", "namespaced": True,
                          "kind": "MetricValueList", "verbs": ["get"]} for m in metrics]  # fmt: skip
            return 200, {"kind": "APIResourceList", "apiVersion": "v1",
                         "groupVersion": f"{GROUP}/{VERSION}", "resources": resources}  # fmt: skip
        if len(parts) == 8 and parts[:3] == ["apis", GROUP, VERSION] and parts[3] == "namespaces":
            namespace, kind, metric = parts[4], parts[5], parts[7]
            selector = parse_qs(url.query).get("labelSelector", [""])[0]
            return self._pod_metrics(namespace, kind, parts[6], metric, selector)
        return 404, self._status(404, f"{url.path} is not served by the test bed's custom metrics API")

    def _pod_metrics(
        self, namespace: str, kind: str, name: str, metric: str, selector: str
    ) -> tuple[int, dict[str, Any]]:
        with self._lock:
            value = self.values.get((namespace, metric))
        if kind != "pods" or value is None:
            return 404, self._status(404, f"no metric {metric} for {kind} in {namespace}")
        pods = self._core.list_namespaced_pod(namespace, label_selector=selector or None).items
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        names = [pod.metadata.name for pod in pods if pod.metadata]
        items = [
            {
                "describedObject": {"kind": "Pod", "namespace": namespace, "name": pod, "apiVersion": "/v1"},
                "metric": {"name": metric},
                "timestamp": now,
                "windowSeconds": 30,
                "value": decimal_quantity(value),
            }
            for pod in names
            if name in ("*", pod)
        ]
        return 200, {"kind": "MetricValueList", "apiVersion": f"{GROUP}/{VERSION}", "metadata": {},
                     "items": items}  # fmt: skip

    @staticmethod
    def _group() -> dict[str, Any]:
        version = {"groupVersion": f"{GROUP}/{VERSION}", "version": VERSION}
        return {"name": GROUP, "versions": [version], "preferredVersion": version}

    @staticmethod
    def _status(code: int, message: str) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code}

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> CustomMetricsApi:
        self._thread.start()
        self.cluster.apply([
            {"apiVersion": "v1", "kind": "Service", "metadata": SERVICE,
             "spec": {"type": "ExternalName", "externalName": "localhost",
                      "ports": [{"name": "https", "port": self.port, "protocol": "TCP"}]}},
            {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
             "metadata": {"name": f"{VERSION}.{GROUP}"},
             "spec": {"group": GROUP, "version": VERSION, "groupPriorityMinimum": 100, "versionPriority": 200,
                      "insecureSkipTLSVerify": True,
                      "service": {**SERVICE, "port": self.port}}},
        ])  # fmt: skip
        self.cluster.kubectl(
            "wait", "--for=condition=Available", f"apiservice/{VERSION}.{GROUP}", "--timeout=60s"
        )
        return self

    def __exit__(self, *_: object) -> None:
        self.cluster.kubectl("delete", "apiservice", f"{VERSION}.{GROUP}", "--ignore-not-found", check=False)
        self.cluster.kubectl(
            "delete",
            "service",
            SERVICE["name"],
            "-n",
            SERVICE["namespace"],
            "--ignore-not-found",
            check=False,
        )
        self._server.shutdown()
        self._server.server_close()
