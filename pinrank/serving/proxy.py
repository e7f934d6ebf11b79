"""nginx in front of tritonserver: the only way in from beyond loopback.

Triton 2.51 (the server in nvidia-pytriton 0.7.0 and in NVIDIA's 24.10
container) can be crashed or held by small requests that its own options
cannot refuse (issue 16; docs/security.md lists each defect). This module
renders the nginx configuration that fronts it, from the request contract in
pinrank.backend.schema, so that the limits follow the schema instead of drifting from
it:

- a request body cap: twice the largest legal request, binary HTTP or gRPC;
- HTTP inference must use the binary-tensor extension with a JSON part of at
  most JSON_HEADER_CAP bytes: Triton parses only that part as JSON, which
  bounds the nesting depth far below the one that kills its parser;
- no request compression (HTTP Content-Encoding, gRPC grpc-encoding);
- header and body timeouts (slow clients) and connection limits;
- an allow-list: the `pinrank` ensemble's inference, health and metadata.
  Step models, statistics and every admin API are refused, even with the key.

What nginx cannot see: shapes and model names inside a body. gRPC names the
model inside the protobuf message, so ModelInfer on a step model passes
(the step models validate their own inputs), and a shape that crashes Triton
inside a small JSON part passes too (`pinrank serve`'s supervisor restarts
the server). docs/security.md says which defect each layer contains.

The config is built as a tree of directives and printed; deploy/k8s/triton/
proxy-config.yaml is its output for the pod (tests/deploy check they agree):

    python -m pinrank.serving.proxy --out nginx.conf
    python -m pinrank.serving.proxy --configmap deploy/k8s/triton/proxy-config.yaml
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import click

from pinrank.backend import schema

# -- the limits, from the request contract ----------------------------------

#: Bytes of one INT64 element on the wire (binary HTTP and gRPC raw contents).
_INT64_BYTES = 8
#: A longest int64 in JSON ("-9223372036854775808").
_INT64_JSON_CHARS = 20


def _request_lengths() -> dict[str, int]:
    """Elements of each ensemble input in the largest legal request."""
    lengths = {}
    for spec in schema.REQUEST_INPUTS:
        if spec.shape != (-1,):
            lengths[spec.name] = 1
        elif spec.name == "candidate_ids":
            lengths[spec.name] = schema.MAX_CANDIDATES
        else:
            lengths[spec.name] = schema.MAX_REQUEST_ACTIONS
    return lengths


def largest_json_header() -> int:
    """Bytes of the JSON part of the largest legal binary-tensor request, as
    Triton's HTTP clients write it (every input binary, every output asked for
    as binary), with each number at its longest."""
    lengths = _request_lengths()
    inputs = [{"name": name, "shape": [10**18], "datatype": "INT64",
               "parameters": {"binary_data_size": 10**18}} for name in lengths]
    outputs = [{"name": spec.name, "parameters": {"binary_data": True}} for spec in schema.RESPONSE_OUTPUTS]
    return len(json.dumps({"id": "x" * 64, "inputs": inputs, "outputs": outputs}))


def largest_binary_body() -> int:
    """Bytes of the largest legal HTTP binary-tensor body (also bounds the
    gRPC ModelInfer message, whose per-tensor framing is smaller)."""
    return largest_json_header() + _INT64_BYTES * sum(_request_lengths().values())


def largest_json_body() -> int:
    """Bytes of the largest legal request in Triton's plain JSON form (with
    ", " separators), for the record: the proxy does not admit it (see
    JSON_HEADER_CAP)."""
    elements = sum(_request_lengths().values())
    return largest_json_header() + (_INT64_JSON_CHARS + 2) * elements


def _integers_up_to(n: int) -> str:
    """A regular expression matching the decimal integers 1..n (no sign, no
    leading zeros): nginx compares header values only by regex."""
    digits = str(n)
    shorter = [f"[1-9][0-9]{{0,{len(digits) - 2}}}"] if len(digits) > 1 else []
    same = []
    for i, d in enumerate(digits):
        low = "1" if i == 0 else "0"
        if int(d) > int(low):
            rest = len(digits) - i - 1
            same.append(digits[:i] + f"[{low}-{int(d) - 1}]" + (f"[0-9]{{{rest}}}" if rest else ""))
    return "^(" + "|".join([*shorter, *same, digits]) + ")$"


def _headroom(n: int) -> int:
    """The next power of two at or above twice `n`: room for a client that
    writes more than ours, never room for an order of magnitude more."""
    return 1 << (2 * n - 1).bit_length()


#: Request body cap (nginx client_max_body_size), HTTP and gRPC alike.
BODY_CAP = _headroom(largest_binary_body())
#: Most bytes of JSON in an HTTP inference request (its
#: Inference-Header-Content-Length): Triton parses only that part as JSON, so
#: it holds at most half that many levels of nesting. Measured on Triton 2.51
#: with an 8 MiB stack: 38,000 levels (76 KB) kill it, 37,000 do not
#: (docs/security.md); this admits about 2,000.
JSON_HEADER_CAP = _headroom(largest_json_header())
#: Seconds a client may take to send its headers, and between two reads of its body.
HEADER_TIMEOUT_S = 5
BODY_TIMEOUT_S = 5
#: Seconds Triton may take to answer (the SDK's own timeouts are far shorter).
UPSTREAM_TIMEOUT_S = 30
#: Idle keep-alive connections (HTTP/1.1 and HTTP/2) are closed after this.
KEEPALIVE_S = 60
#: Longest life of a client connection, however busy.
CONNECTION_AGE_S = 60
#: Concurrent requests per client address, and connections per worker.
PER_CLIENT_CONNECTIONS = 256
WORKER_CONNECTIONS = 4096

# -- the allow-list -----------------------------------------------------------

GRPC_SERVICE = "inference.GRPCInferenceService"
#: gRPC methods passed to Triton: what the SDK's rank, health and
#: check_contract use. The model name is inside the message, unseen here.
GRPC_ALLOWED = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")
#: gRPC methods refused as PERMISSION_DENIED: Triton's admin and statistics
#: APIs. Every other method of the service is in one of the two lists
#: (tests/deploy check it against tritonclient's service descriptor).
GRPC_REFUSED = ("ModelStreamInfer", "ModelConfig", "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad",
                "RepositoryModelUnload", "SystemSharedMemoryStatus", "SystemSharedMemoryRegister",
                "SystemSharedMemoryUnregister", "CudaSharedMemoryStatus", "CudaSharedMemoryRegister",
                "CudaSharedMemoryUnregister", "TraceSetting", "LogSettings")
#: HTTP paths of Triton's admin and statistics APIs, refused with 403 (the
#: rest of what is not allowed gets 404).
HTTP_REFUSED_PREFIXES = ("/v2/repository", "/v2/systemsharedmemory", "/v2/cudasharedmemory", "/v2/trace",
                         "/v2/logging", "/v2/models/stats")
_MODEL = re.escape(schema.ENSEMBLE_MODEL)
_VERSION = "(/versions/[0-9]{1,18})?"
HTTP_INFER = f"^/v2/models/{_MODEL}{_VERSION}/infer$"
HTTP_METADATA = f"^/v2/models/{_MODEL}{_VERSION}(/ready)?$"
HTTP_HEALTH = ("/v2/health/live", "/v2/health/ready", "/v2")
HTTP_REFUSED_MODEL_APIS = f"^/v2/models/[^/]+{_VERSION}/(config|stats|trace/setting)$"
#: Headers that carry the admin key (HTTP and Triton's gRPC spelling):
#: cleared on the way in, so the key cannot be tried through the proxy.
_ADMIN_HEADERS = ("pinrank-admin-key", "triton-grpc-protocol-pinrank-admin-key")

# gRPC status codes the proxy answers with (grpc/status.h).
_INVALID_ARGUMENT, _PERMISSION_DENIED, _UNIMPLEMENTED = 3, 7, 12


# -- a small nginx config tree ------------------------------------------------

@dataclass(frozen=True)
class Block:
    """`name args { body }` in nginx's syntax."""

    name: str
    args: tuple[str, ...]
    body: tuple[Item, ...]


Directive = tuple[str, ...]
Item = Directive | Block


def block(name: str, *args: str, body: list[Item]) -> Block:
    return Block(name, args, tuple(body))


def _quote(arg: str) -> str:
    """Bare where nginx reads the word as it is, else single-quoted ('{',
    ';', spaces and quotes would end or open something)."""
    if re.fullmatch(r"[A-Za-z0-9_.:/$@=^~*+\-\[\]|(),?!]+", arg):
        return arg
    return "'" + arg.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _text(message: str) -> str:
    # nginx expands $variables in return texts and header values.
    if "$" in message:
        raise ValueError(f"nginx would expand variables in {message!r}")
    return message


def dump(items: list[Item] | tuple[Item, ...], depth: int = 0) -> str:
    pad = "    " * depth
    out = []
    for item in items:
        if isinstance(item, Block):
            head = " ".join([item.name, *(_quote(a) for a in item.args)])
            out.append(f"{pad}{head} {{\n{dump(item.body, depth + 1)}{pad}}}\n")
        else:
            out.append(pad + " ".join(_quote(a) for a in item) + ";\n")
    return "".join(out)


# -- the configuration --------------------------------------------------------

@dataclass(frozen=True)
class ProxySettings:
    """Where the proxy listens and where Triton is. The defaults are the pod's
    (deploy/k8s/triton): Triton on loopback, the proxy on every address."""

    listen_host: str = "0.0.0.0"
    http_port: int = 8080
    grpc_port: int = 8081
    metrics_port: int = 8082
    triton_host: str = "127.0.0.1"
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    #: pid file and request-body temp directories, which nginx creates inside
    #: it (the directory must exist: an emptyDir in the pod, whose
    #: root filesystem is read-only).
    runtime_dir: str = "/tmp"
    access_log: str = "/dev/stdout"
    worker_processes: int = 2


def _json_error(status: int, message: str) -> Directive:
    return ("return", str(status), _text(json.dumps({"error": message}, separators=(",", ":"))))


def _grpc_error(code: int, message: str) -> list[Item]:
    """A trailers-only gRPC answer (HTTP 204, no body), as nginx documents for
    errors it raises itself on a gRPC server."""
    return [("default_type", "application/grpc"),
            ("add_header", "grpc-status", str(code), "always"),
            ("add_header", "grpc-message", _text(message), "always"),
            ("return", "204")]


def _only(methods: str) -> Block:
    return block("if", "($request_method", "!~", f"^({methods})$)",
                 body=[_json_error(405, f"method not allowed here: use {methods.replace('|', ' or ')}")])


def _http_server(s: ProxySettings) -> Block:
    proxied = [("proxy_pass", "http://triton_http$uri")]
    return block("server", body=[
        ("listen", f"{s.listen_host}:{s.http_port}"),
        ("default_type", "application/json"),
        ("error_page", "413", "=", "@too_large"),
        # Before the body is read: a compressed body is never inflated, here or in Triton.
        block("if", "($encoded_body)", body=[_json_error(
            415, "Content-Encoding is not accepted: send the request body uncompressed")]),
        block("location", "@too_large", body=[_json_error(
            413, f"request body larger than {BODY_CAP} bytes, the proxy's cap (the largest valid request "
                 f"is {largest_binary_body()} bytes)")]),
        block("location", "~", HTTP_INFER, body=[
            _only("POST"),
            block("if", "($json_part_refused)", body=[_json_error(
                400, "Inference-Header-Content-Length must be 1 to "
                     f"{JSON_HEADER_CAP}: send tensors with the binary tensor extension (tritonclient's "
                     "default) or use gRPC")]),
            *proxied]),
        block("location", "~", HTTP_METADATA, body=[_only("GET|HEAD"), *proxied]),
        *[block("location", "=", path, body=[_only("GET|HEAD"), *proxied]) for path in HTTP_HEALTH],
        *[block("location", "^~", prefix, body=[_json_error(
            403, "admin and statistics APIs are not served through the proxy")]) for prefix in HTTP_REFUSED_PREFIXES],
        block("location", "~", HTTP_REFUSED_MODEL_APIS, body=[_json_error(
            403, "admin and statistics APIs are not served through the proxy")]),
        block("location", "/", body=[_json_error(
            404, f"not served through the proxy: only model {schema.ENSEMBLE_MODEL!r} (infer, metadata, ready), "
                 "/v2 and /v2/health are")]),
    ])


def _grpc_server(s: ProxySettings) -> Block:
    allowed = "|".join(GRPC_ALLOWED)
    refused = "|".join(GRPC_REFUSED)
    return block("server", body=[
        ("listen", f"{s.listen_host}:{s.grpc_port}", "http2"),
        ("error_page", "413", "=", "@too_large"),
        ("error_page", "415", "=", "@encoded"),
        block("if", "($encoded_grpc)", body=[("return", "415")]),
        block("location", "@too_large", body=_grpc_error(
            _INVALID_ARGUMENT, f"request message larger than {BODY_CAP} bytes, the proxy's cap")),
        block("location", "@encoded", body=_grpc_error(
            _UNIMPLEMENTED, "compressed messages are not accepted: send them uncompressed (grpc-encoding identity)")),
        block("location", "~", f"^/{re.escape(GRPC_SERVICE)}/({allowed})$", body=[
            ("grpc_pass", "grpc://triton_grpc")]),
        block("location", "~", f"^/{re.escape(GRPC_SERVICE)}/({refused})$", body=_grpc_error(
            _PERMISSION_DENIED, "admin and statistics APIs are not served through the proxy")),
        block("location", "/", body=_grpc_error(_UNIMPLEMENTED, "method not served through the proxy")),
    ])


def _metrics_server(s: ProxySettings) -> Block:
    return block("server", body=[
        ("listen", f"{s.listen_host}:{s.metrics_port}"),
        ("client_max_body_size", "1k"),
        ("default_type", "text/plain"),
        block("location", "=", "/metrics", body=[
            _only("GET|HEAD"), ("proxy_pass", "http://triton_metrics$uri")]),
        block("location", "/", body=[("return", "404", "only /metrics is served here")]),
    ])


def config_tree(s: ProxySettings = ProxySettings()) -> list[Item]:
    run = s.runtime_dir.rstrip("/")
    return [
        ("worker_processes", str(s.worker_processes)),
        ("pid", f"{run}/nginx.pid"),
        ("error_log", "stderr", "warn"),
        # In the foreground: the container runtime (or the test) owns the process.
        ("daemon", "off"),
        # A graceful stop (SIGQUIT, `nginx -s quit`) lets requests in flight finish.
        ("worker_shutdown_timeout", f"{UPSTREAM_TIMEOUT_S + 5}s"),
        block("events", body=[("worker_connections", str(WORKER_CONNECTIONS))]),
        block("http", body=[
            ("access_log", s.access_log),
            ("server_tokens", "off"),
            *[(f"{kind}_temp_path", f"{run}/{kind}") for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")],
            # The whole body is read and checked here before Triton sees a byte,
            # in memory: the buffer is larger than the cap, so a chunked body
            # meets the cap before the buffer fills and nothing spools to disk
            # (a Content-Length body gets a buffer of its own length).
            ("client_max_body_size", str(BODY_CAP)),
            ("client_body_buffer_size", str(2 * BODY_CAP)),
            ("proxy_request_buffering", "on"),
            ("client_header_timeout", f"{HEADER_TIMEOUT_S}s"),
            ("client_body_timeout", f"{BODY_TIMEOUT_S}s"),
            ("send_timeout", f"{UPSTREAM_TIMEOUT_S}s"),
            ("keepalive_timeout", f"{KEEPALIVE_S}s"),
            # Connections end after this even when busy: gRPC clients reconnect
            # and spread over the pods a scale-up adds (what Triton's
            # --grpc-max-connection-age did before clients met the proxy).
            ("keepalive_time", f"{CONNECTION_AGE_S}s"),
            ("reset_timedout_connection", "on"),
            ("large_client_header_buffers", "4", "8k"),
            ("limit_conn_zone", "$binary_remote_addr", "zone=per_client:10m"),
            ("limit_conn", "per_client", str(PER_CLIENT_CONNECTIONS)),
            ("limit_conn_status", "503"),
            ("proxy_http_version", "1.1"),
            ("proxy_set_header", "Connection", ""),
            *[("proxy_set_header", h, "") for h in _ADMIN_HEADERS],
            *[("grpc_set_header", h, "") for h in _ADMIN_HEADERS],
            ("proxy_connect_timeout", "2s"),
            ("proxy_read_timeout", f"{UPSTREAM_TIMEOUT_S}s"),
            ("grpc_connect_timeout", "2s"),
            ("grpc_read_timeout", f"{UPSTREAM_TIMEOUT_S}s"),
            block("map", "$http_content_encoding", "$encoded_body", body=[
                ("default", "1"), ("", "0"), ("~*^identity$", "0")]),
            block("map", "$http_grpc_encoding", "$encoded_grpc", body=[
                ("default", "1"), ("", "0"), ("~*^identity$", "0")]),
            block("map", "$http_inference_header_content_length", "$json_part_refused", body=[
                ("default", "1"), ("~" + _integers_up_to(JSON_HEADER_CAP), "0")]),
            block("upstream", "triton_http", body=[
                ("server", f"{s.triton_host}:{s.triton_http_port}"), ("keepalive", "32")]),
            block("upstream", "triton_grpc", body=[
                ("server", f"{s.triton_host}:{s.triton_grpc_port}"), ("keepalive", "32")]),
            block("upstream", "triton_metrics", body=[
                ("server", f"{s.triton_host}:{s.triton_metrics_port}")]),
            _http_server(s),
            _grpc_server(s),
            _metrics_server(s),
        ]),
    ]


def render(s: ProxySettings = ProxySettings()) -> str:
    header = "# Generated by `python -m pinrank.serving.proxy` from pinrank.backend.schema: do not edit.\n"
    return header + dump(config_tree(s))


#: Where the pod mounts the config, and the ConfigMap key it comes from.
CONFIG_MOUNT = "/etc/pinrank-proxy"
CONFIG_KEY = "nginx.conf"
CONFIGMAP_NAME = "pinrank-proxy"
#: Pod-template annotation holding the config's sha256: a config change rolls the pods.
CONFIG_ANNOTATION = "pinrank/proxy-config-sha256"


def config_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def configmap_yaml(text: str) -> str:
    """The ConfigMap the Deployment mounts (printed by hand rather than by a
    YAML library so the config keeps its literal block form)."""
    body = "".join(f"    {line}\n" if line else "\n" for line in text.splitlines())
    return (
        "# The proxy sidecar's nginx.conf (deploy/k8s/triton/deployment.yaml mounts it).\n"
        "# Generated: python -m pinrank.serving.proxy --configmap deploy/k8s/triton/proxy-config.yaml\n"
        f"# Its sha256 is the Deployment's {CONFIG_ANNOTATION} annotation: {config_sha256(text)}\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        f"  name: {CONFIGMAP_NAME}\n"
        "  labels:\n"
        "    app.kubernetes.io/name: pinrank\n"
        "    app.kubernetes.io/component: proxy\n"
        "    app.kubernetes.io/part-of: pinrank\n"
        "data:\n"
        f"  {CONFIG_KEY}: |\n"
        f"{body}"
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write nginx.conf here (default: print it).")
@click.option("--configmap", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the Kubernetes ConfigMap (deploy/k8s/triton/proxy-config.yaml) instead.")
@click.option("--listen-host", default=ProxySettings.listen_host, show_default=True,
              help="Address the proxy listens on.")
@click.option("--http-port", type=int, default=ProxySettings.http_port, show_default=True)
@click.option("--grpc-port", type=int, default=ProxySettings.grpc_port, show_default=True)
@click.option("--metrics-port", type=int, default=ProxySettings.metrics_port, show_default=True)
@click.option("--triton-http-port", type=int, default=ProxySettings.triton_http_port, show_default=True,
              help="Triton's HTTP port on loopback (pinrank serve's --http-port).")
@click.option("--triton-grpc-port", type=int, default=ProxySettings.triton_grpc_port, show_default=True)
@click.option("--triton-metrics-port", type=int, default=ProxySettings.triton_metrics_port, show_default=True)
@click.option("--runtime-dir", default=ProxySettings.runtime_dir, show_default=True,
              help="Writable directory for nginx's pid and temp files.")
def main(out: Path | None, configmap: Path | None, **settings: object) -> None:
    """Render the nginx config that exposes a loopback tritonserver safely:
    body cap, binary-tensor HTTP inference, no compression, timeouts, and only
    the pinrank ensemble, health and metadata (docs/security.md).

    Run nginx with it in the foreground: nginx -e stderr -c FILE
    """
    text = render(ProxySettings(**settings))  # type: ignore[arg-type]
    if configmap is not None:
        configmap.write_text(configmap_yaml(text))
    if out is not None:
        out.write_text(text)
    if out is None and configmap is None:
        click.echo(text, nl=False)


if __name__ == "__main__":
    main()
