#!/usr/bin/env python3
"""Checks envoy/istio-envoyfilter.yaml without Istio.

For each EnvoyFilter, applies its patches (the subset of Istio's semantics it uses: INSERT_BEFORE
and MERGE on HTTP_FILTER, MERGE on NETWORK_FILTER, LISTENER and CLUSTER) to a minimal static Envoy
bootstrap, then:
  1. runs `envoy --mode validate` on the result, so every Envoy fragment is checked by Envoy 1.40;
  2. checks the resulting filter order: strip_client_headers, ext_proc, router;
  3. checks that the scanning settings (and the token metadata sent to clamgate) equal those of
     the shipped envoy/envoy.yaml.

Usage: check-istio-fragments.py ENVOY_BIN   (run from anywhere; paths are relative to the repo)
"""
import copy
import os
import subprocess
import sys
import tempfile

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HCM_NAME = "envoy.filters.network.http_connection_manager"
HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager")
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}
# Settings that must match the shipped static config.
EXT_PROC_KEYS = ["failure_mode_allow", "status_on_error", "processing_mode", "message_timeout",
                 "max_message_timeout", "allow_mode_override", "request_attributes"]


def merge(base, patch):
    """Proto-style merge: messages merge field by field, repeated fields append."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        elif isinstance(value, list) and isinstance(base.get(key), list):
            base[key].extend(copy.deepcopy(value))
        else:
            base[key] = copy.deepcopy(value)


def fail(message):
    print(f"check-istio-fragments: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def build_bootstrap(envoy_filter):
    listener = {
        "name": "istio_like",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 15006}},
        "filter_chains": [{"filters": [{"name": HCM_NAME, "typed_config": {
            "@type": HCM_TYPE,
            "stat_prefix": "istio_like",
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]},
            "http_filters": [copy.deepcopy(ROUTER)],
        }}]}],
    }
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters = hcm["http_filters"]
    clusters = {}

    for patch in envoy_filter["spec"]["configPatches"]:
        apply_to, op, value = patch["applyTo"], patch["patch"]["operation"], patch["patch"]["value"]
        match = patch.get("match", {})
        if apply_to == "HTTP_FILTER":
            target = match["listener"]["filterChain"]["filter"]["subFilter"]["name"]
            index = next((i for i, f in enumerate(filters) if f["name"] == target), None)
            if index is None:
                fail(f"{envoy_filter['metadata']['name']}: no filter {target} to patch")
            if op == "INSERT_BEFORE":
                filters.insert(index, copy.deepcopy(value))
                cluster = value["typed_config"].get("grpc_service", {}).get("envoy_grpc", {}).get(
                    "cluster_name")
                if cluster:
                    clusters[cluster] = grpc_cluster(cluster)
            elif op == "MERGE":
                merge(filters[index], value)
            else:
                fail(f"unsupported operation {op}")
        elif apply_to == "NETWORK_FILTER" and op == "MERGE":
            merge(hcm, {k: v for k, v in value["typed_config"].items() if k != "@type"})
        elif apply_to == "LISTENER" and op == "MERGE":
            merge(listener, value)
        elif apply_to == "CLUSTER" and op == "MERGE":
            cluster = match["cluster"]
            name = f"outbound|{cluster['portNumber']}||{cluster['service']}"
            clusters.setdefault(name, grpc_cluster(name))
            merge(clusters[name], value)
        else:
            fail(f"unsupported patch {apply_to}/{op}")

    app = {"name": "app", "type": "STATIC", "load_assignment": {"cluster_name": "app", "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": 8080}}}}]}]}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [listener], "clusters": [app, *clusters.values()]},
    }, listener, hcm


def grpc_cluster(name):
    return {
        "name": name,
        "type": "STATIC",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 50051}}}}]}]},
    }


def shipped_settings():
    with open(os.path.join(REPO, "envoy/envoy.yaml")) as f:
        shipped = yaml.safe_load(f)
    listener = shipped["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters = {f["name"]: f for f in hcm["http_filters"]}
    return listener, hcm, filters


def main():
    if len(sys.argv) != 2:
        fail("usage: check-istio-fragments.py ENVOY_BIN")
    envoy = sys.argv[1]
    with open(os.path.join(REPO, "envoy/istio-envoyfilter.yaml")) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    shipped_listener, shipped_hcm, shipped_filters = shipped_settings()
    shipped_ext_proc = shipped_filters["envoy.filters.http.ext_proc"]["typed_config"]

    for doc in docs:
        name = doc["metadata"]["name"]
        bootstrap, listener, hcm = build_bootstrap(doc)
        order = [f["name"] for f in hcm["http_filters"]]
        want = ["clamgate.strip_client_headers", "envoy.filters.http.ext_proc",
                "envoy.filters.http.router"]
        if order != want:
            fail(f"{name}: filter order {order}, expected {want}")
        ext_proc = hcm["http_filters"][1]["typed_config"]
        for key in EXT_PROC_KEYS:
            if ext_proc.get(key) != shipped_ext_proc.get(key):
                fail(f"{name}: ext_proc {key} = {ext_proc.get(key)!r}, "
                     f"shipped envoy.yaml has {shipped_ext_proc.get(key)!r}")
        # The cluster names differ (Istio's outbound|...); the token metadata must not.
        metadata = ext_proc["grpc_service"].get("initial_metadata")
        shipped_metadata = shipped_ext_proc["grpc_service"].get("initial_metadata")
        if metadata != shipped_metadata:
            fail(f"{name}: ext_proc grpc_service.initial_metadata = {metadata!r}, "
                 f"shipped envoy.yaml has {shipped_metadata!r}")
        if hcm["http_filters"][0] != shipped_filters["clamgate.strip_client_headers"]:
            fail(f"{name}: strip_client_headers differs from the shipped envoy.yaml")
        router = hcm["http_filters"][2]["typed_config"]
        shipped_router = shipped_filters["envoy.filters.http.router"]["typed_config"]
        if router.get("upstream_http_filters") != shipped_router.get("upstream_http_filters"):
            fail(f"{name}: router upstream_http_filters differ from the shipped envoy.yaml")
        limit = listener.get("per_connection_buffer_limit_bytes")
        if limit != shipped_listener["per_connection_buffer_limit_bytes"]:
            fail(f"{name}: per_connection_buffer_limit_bytes {limit}, shipped "
                 f"{shipped_listener['per_connection_buffer_limit_bytes']}")
        for key in ["common_http_protocol_options", "stream_idle_timeout"]:
            if hcm.get(key) != shipped_hcm.get(key):
                fail(f"{name}: HCM {key} = {hcm.get(key)!r}, shipped {shipped_hcm.get(key)!r}")

        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as out:
            yaml.safe_dump(bootstrap, out)
        try:
            result = subprocess.run([envoy, "--mode", "validate", "-l", "warning", "-c", out.name],
                                    capture_output=True, text=True)
        finally:
            os.unlink(out.name)
        if result.returncode != 0:
            fail(f"{name}: envoy --mode validate:\n{result.stdout}{result.stderr}")
        print(f"check-istio-fragments: {name}: Envoy fragments valid, settings match envoy.yaml")


if __name__ == "__main__":
    main()
