"""pinrank-client against the real tritonserver: sync and async, gRPC and HTTP,
every error class triggered for real (no mocks), rank_many, failover and round
robin, connection reuse, the CLI, model statistics, and a retry that succeeds
after the server comes back on the same ports.

The repository is exported from untrained inputs (tests/export_inputs.py):
the client is under test, not ranking quality, and no training is needed.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from pinrank.backend.units import MS_PER_DAY
from pinrank.cli import main
from pinrank.serving.tritonserver import running_server
from pinrank_client import (
    AccessDeniedError,
    AsyncRankingClient,
    InvalidRequestError,
    ModelNotReadyError,
    ModelStats,
    RankingClient,
    RankRequest,
    RankResponse,
    RequestTimeoutError,
    RetryEvent,
    ServerUnavailableError,
    admin_headers,
    cli,
    schema,
)
from testkit.export_inputs import (
    make_export_inputs,  # tests/ is on sys.path via tests/conftest.py
)
from testkit.toy_data import START_MS

pytestmark = [pytest.mark.triton, pytest.mark.slow]

REQ_TS = START_MS + 50 * MS_PER_DAY  # inside the toy dataset's span
ITEMS = np.arange(1, 301, dtype=np.int64) * 7  # make_toy_dataset's item ids for num_items=300
USERS = np.arange(60, dtype=np.int64) + 1000  # ... and its user ids for num_users=60
FLAVOURS = ["sync", "async"]
PROTOCOLS = ["grpc", "http"]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("client_sdk")
    inputs = make_export_inputs(root / "inputs", num_items=ITEMS.size, num_users=USERS.size)
    args = ["export", *inputs.cli_args(), "--out", str(root / "repo"), "--target", "cpu",
            "--results", str(root / "export.json")]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root / "repo" / "cpu"


@pytest.fixture(scope="module")
def server(repository: Path):
    with running_server(repository, log_path=repository.parent.parent / "tritonserver.log") as srv:
        yield srv


def url_of(server: Any, protocol: str) -> str:
    return f"grpc://{server.grpc_url}" if protocol == "grpc" else f"http://{server.http_url}"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_request(seed: int = 0, *, n: int = 60, history: int = 20, top_k: int | None = 10,
                 validate: bool = True) -> RankRequest:
    rng = np.random.default_rng(seed)
    return RankRequest.from_arrays(
        int(rng.choice(USERS)),
        rng.choice(ITEMS, size=n, replace=n > ITEMS.size),
        action_item_ids=rng.choice(ITEMS, size=history),
        action_types=rng.integers(1, schema.NUM_ACTION_IDS, size=history),
        action_ts_ms=REQ_TS - rng.integers(1, 7 * MS_PER_DAY, size=history),
        action_surfaces=rng.integers(0, schema.NUM_SURFACE_IDS, size=history),
        request_ts_ms=REQ_TS,
        top_k=top_k,
        validate=validate,
    )


def using(flavour: str, url: str | list[str], method: str, *args: Any, client_kw: dict | None = None,
          **kwargs: Any) -> Any:
    """Call `method` on a fresh sync or async client, closing it afterwards."""
    client_kw = {"timeout_s": 30.0, **(client_kw or {})}
    if flavour == "sync":
        with RankingClient(url, **client_kw) as client:
            return getattr(client, method)(*args, **kwargs)

    async def main() -> Any:
        async with AsyncRankingClient(url, **client_kw) as client:
            return await getattr(client, method)(*args, **kwargs)

    return asyncio.run(main())


def assert_ranking(resp: RankResponse, request: RankRequest, url: str) -> None:
    k = min(request.top_k or schema.DEFAULT_TOP_K, request.num_candidates)
    assert len(resp) == k  # never empty (the numpy-2 stub trap)
    assert set(resp.item_ids) <= set(request.candidate_ids.tolist())
    scores = [item.utility for item in resp]
    assert scores == sorted(scores, reverse=True)
    for item in resp:
        assert list(item.head_probs) == list(schema.HEADS)
        assert all(0.0 <= p <= 1.0 for p in item.head_probs.values())
    assert (resp.model_name, resp.model_version) == (schema.ENSEMBLE_MODEL, "1")
    assert resp.url == url and resp.attempts == 1 and resp.latency_ms > 0


# --- happy paths ------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_rank(server, flavour, protocol):
    url = url_of(server, protocol)
    request = make_request(1)
    assert_ranking(using(flavour, url, "rank_request", request), request, url)
    # The keyword form builds the same request.
    kw = using(flavour, url, "rank", request.user_id, request.candidate_ids, request.actions, top_k=10,
               request_ts_ms=REQ_TS)
    assert kw.item_ids == using(flavour, url, "rank_request", request).item_ids


def test_every_flavour_and_protocol_returns_the_same_ranking(server):
    request = make_request(2, n=300, history=150, top_k=50)
    results = [using(f, url_of(server, p), "rank_request", request) for f in FLAVOURS for p in PROTOCOLS]
    for resp in results[1:]:
        assert resp.item_ids == results[0].item_ids
        np.testing.assert_allclose([i.utility for i in resp], [i.utility for i in results[0]], atol=1e-6)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_health_readiness_and_metadata(server, flavour, protocol):
    url = url_of(server, protocol)
    health = using(flavour, url, "health")
    assert (health.url, health.live, health.server_ready, health.model_ready, health.error) == (
        url, True, True, True, None)
    assert using(flavour, url, "is_live") and using(flavour, url, "is_ready")
    assert using(flavour, url, "wait_until_ready", 10).model_ready
    meta = using(flavour, url, "model_metadata")
    assert meta["name"] == schema.ENSEMBLE_MODEL and meta["platform"] == "ensemble"
    assert [t["name"] for t in meta["inputs"]] == [s.name for s in schema.REQUEST_INPUTS]
    assert using(flavour, url, "check_contract") == []
    # The repository index is an admin API: refused without the server's key (not retried), listed with it.
    with pytest.raises(AccessDeniedError, match="restricted"):
        using(flavour, url, "list_models", client_kw={"retries": 3})
    admin = {"headers": admin_headers(server.admin_key)}
    states = {m["name"]: m["state"] for m in using(flavour, url, "list_models", client_kw=admin)}
    for model in (schema.ENSEMBLE_MODEL, schema.PREPROCESS_MODEL, schema.RANKER_MODEL, schema.POSTPROCESS_MODEL):
        assert states[model] == "READY", states


# --- each error class, for real --------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_invalid_request_rejected_by_the_server(server, flavour, protocol):
    # Client validation off, so the request crosses the wire and the server's
    # preprocess model is what rejects it, with the SDK's own wording.
    request = make_request(3, n=schema.MAX_CANDIDATES + 1, validate=False)
    with pytest.raises(InvalidRequestError) as server_side:
        using(flavour, url_of(server, protocol), "rank_request", request, client_kw={"validate": False})
    assert server_side.value.status in ("StatusCode.INVALID_ARGUMENT", "400")
    with pytest.raises(InvalidRequestError) as client_side:
        make_request(3, n=schema.MAX_CANDIDATES + 1)
    assert client_side.value.status is None  # never sent
    assert str(server_side.value) == str(client_side.value)
    assert "too many candidates: 1001 > MAX_CANDIDATES=1000" in str(server_side.value)
    assert server.is_ready()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_unavailable_when_nothing_listens(flavour, protocol):
    url = f"{protocol}://127.0.0.1:{closed_port()}"
    events: list[RetryEvent] = []
    with pytest.raises(ServerUnavailableError, match=f"{url} is unavailable") as err:
        using(flavour, url, "rank_request", make_request(4),
              client_kw={"retries": 2, "backoff_s": 0.01, "on_retry": events.append})
    assert [e.retry for e in events] == [1, 2] and all(e.url == url for e in events)
    assert err.value.__cause__ is not None  # the transport's own error, chained
    health = using(flavour, url, "health")
    assert not health.live and "is unavailable" in health.error


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_per_call_timeout(server, flavour, protocol):
    # The largest legal request under a 1 ms deadline, on a client whose
    # connection is already open: a real deadline on real work, and the same
    # client must serve the next call (no connection lost to the timeout).
    big = make_request(5, n=schema.MAX_CANDIDATES, history=schema.MAX_REQUEST_ACTIONS, top_k=schema.MAX_CANDIDATES)
    small = make_request(6)
    url = url_of(server, protocol)

    def check(timeout_exc: BaseException, after: RankResponse) -> None:
        assert isinstance(timeout_exc, RequestTimeoutError), repr(timeout_exc)
        assert f"no answer from {url} within 0.001 s" in str(timeout_exc)
        assert_ranking(after, small, url)

    if flavour == "sync":
        with RankingClient(url, timeout_s=30, retries=3) as client:
            client.rank_request(small)
            with pytest.raises(RequestTimeoutError) as err:
                client.rank_request(big, timeout_s=0.001)
            check(err.value, client.rank_request(small))
        return

    async def main() -> None:
        async with AsyncRankingClient(url, timeout_s=30, retries=3) as client:
            await client.rank_request(small)
            with pytest.raises(RequestTimeoutError) as err:
                await client.rank_request(big, timeout_s=0.001)
            check(err.value, await client.rank_request(small))

    asyncio.run(main())


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_model_not_ready(server, flavour, protocol):
    url = url_of(server, protocol)
    for client_kw in ({"model_version": "7"}, {"model_name": "no_such_model"}):
        with pytest.raises(ModelNotReadyError) as err:
            using(flavour, url, "rank_request", make_request(7), client_kw={**client_kw, "retries": 3})
        assert err.value.status in ("StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE", "400", "404")
        health = using(flavour, url, "health", client_kw=client_kw)
        assert health.live and not health.model_ready
        with pytest.raises(ModelNotReadyError):
            using(flavour, url, "model_metadata", client_kw=client_kw)
        with pytest.raises(ModelNotReadyError, match="not ready"):
            using(flavour, url, "wait_until_ready", 0.5, client_kw=client_kw)


# --- rank_many, failover, round robin, connection reuse -----------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_rank_many(server, flavour, protocol):
    url = url_of(server, protocol)
    batch = [make_request(100 + i, n=20 + 40 * (i % 4), top_k=5 + i) for i in range(12)]
    one_by_one = [using("sync", url, "rank_request", r) for r in batch]
    together = using(flavour, url, "rank_many", batch, client_kw={"max_concurrency": 4})
    assert [r.item_ids for r in together] == [r.item_ids for r in one_by_one]  # order kept
    for resp, request in zip(together, batch):
        assert_ranking(resp, request, url)
    # One bad request among good ones: in its slot, or raised.
    mixed = batch[:2] + [make_request(9, n=schema.MAX_CANDIDATES + 1, validate=False)] + batch[2:4]
    lax = {"validate": False, "max_concurrency": 4}
    out = using(flavour, url, "rank_many", mixed, client_kw=lax, return_exceptions=True)
    assert isinstance(out[2], InvalidRequestError) and "too many candidates" in str(out[2])
    assert [r.item_ids for i, r in enumerate(out) if i != 2] == [r.item_ids for r in one_by_one[:4]]
    with pytest.raises(InvalidRequestError, match="too many candidates"):
        using(flavour, url, "rank_many", mixed, client_kw=lax)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_failover_and_round_robin(server, flavour, protocol):
    live = url_of(server, protocol)
    dead = f"{protocol}://127.0.0.1:{closed_port()}"
    events: list[RetryEvent] = []
    request = make_request(10)
    kw = {"retries": 1, "cooldown_s": 60, "on_retry": events.append}
    first, second = using(flavour, [dead, live], "rank_many", [request, request],
                          client_kw={**kw, "max_concurrency": 1})
    assert (first.url, first.attempts, second.url, second.attempts) == (live, 2, live, 1)  # dead one skipped
    assert [(e.url, e.delay_s) for e in events] == [(dead, 0.0)]  # failover does not sleep
    # Two names for the one live server: calls alternate between them.
    other = live.replace("127.0.0.1", "localhost")
    out = using(flavour, [live, other], "rank_many", [request] * 4, client_kw={"max_concurrency": 1})
    assert [r.url for r in out] == [live, other, live, other]
    statuses = using(flavour, [dead, live], "health_all")
    assert [(h.url, h.model_ready) for h in statuses] == [(dead, False), (live, True)]


def _client_ports_to(port: int) -> set[int]:
    """Local ports of this machine's ESTABLISHED TCP connections to `port`."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, remote, state = line.split()[1:4]
            if int(remote.rsplit(":", 1)[1], 16) == port and state == "01":
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_connections_are_reused(server, flavour, protocol):
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc/net/tcp to count connections")
    port = server.ports.grpc if protocol == "grpc" else server.ports.http
    url = url_of(server, protocol)
    before = _client_ports_to(port)
    request = make_request(11)
    if flavour == "sync":
        with RankingClient(url) as client:
            for _ in range(15):
                client.rank_request(request)
            during = _client_ports_to(port)
    else:
        async def main() -> set[int]:
            async with AsyncRankingClient(url) as client:
                for _ in range(15):
                    await client.rank_request(request)
                return _client_ports_to(port)

        during = asyncio.run(main())
    # Fifteen calls, at most one new connection. gRPC core keeps a process-wide
    # subchannel pool, so a client may even ride a connection an earlier
    # client to the same server left open (no new port at all).
    assert during and len(during - before) <= 1, (before, during)


# --- the CLI -------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cli_against_the_server(server, protocol, tmp_path):
    url = url_of(server, protocol)
    runner = CliRunner()
    request = make_request(12, n=30, top_k=3)
    path = tmp_path / "req.json"
    path.write_text(json.dumps(request.to_dict()))
    ranked = runner.invoke(cli.main, ["rank", "--url", url, "--request-file", str(path), "--json"])
    assert ranked.exit_code == 0, ranked.output
    out = json.loads(ranked.stdout)
    assert [i["item_id"] for i in out["items"]] == using("sync", url, "rank_request", request).item_ids
    assert out["url"] == url and out["attempts"] == 1
    table = runner.invoke(cli.main, ["rank", "--url", url, "--user-id", "1000", "--candidates", "7,14,21",
                                     "--action", f"7:save:{REQ_TS - 1000}:home", "--request-ts-ms", str(REQ_TS)])
    assert table.exit_code == 0
    assert table.stdout.splitlines()[-1].startswith(f"3 of 3 candidates ranked by pinrank v1 at {url}")
    assert runner.invoke(cli.main, ["health", "--url", url]).exit_code == 0
    models = runner.invoke(cli.main, ["models", "--url", url], env={"PINRANK_ADMIN_KEY": server.admin_key})
    assert models.exit_code == 0 and f"contract: pinrank matches schema v{schema.SCHEMA_VERSION}" in models.stdout
    assert "READY" in models.stdout
    keyless = runner.invoke(cli.main, ["models", "--url", url], env={"PINRANK_ADMIN_KEY": ""})
    assert keyless.exit_code == 2 and "access denied" in keyless.stderr
    assert "contract: pinrank matches" in keyless.stdout  # the interface is checked without the key
    rejected = runner.invoke(cli.main, ["rank", "--url", url, "--user-id", "1", "--no-validate",
                                        "--candidates", ",".join(map(str, range(1, 1002)))])
    assert rejected.exit_code == 2 and "invalid request: too many candidates" in rejected.stderr
    missing = runner.invoke(cli.main, ["health", "--url", url, "--model", "no_such_model"])
    assert missing.exit_code == 3
    timed_out = runner.invoke(cli.main, ["rank", "--url", url, "--timeout", "0.001", "--user-id", "1",
                                         "--candidates", ",".join(map(str, range(1, 1001)))])
    assert timed_out.exit_code == 4, timed_out.output


def test_console_script(server):
    script = Path(sys.executable).with_name("pinrank-client")
    done = subprocess.run([str(script), "health", "--url", url_of(server, "grpc"), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model_ready"] is True


# --- statistics ----------------------------------------------------------------------------------


PIPELINE = (schema.ENSEMBLE_MODEL, schema.PREPROCESS_MODEL, schema.RANKER_MODEL, schema.POSTPROCESS_MODEL)


def stats_reaching(flavour: str, url: str, want: dict[str, int]) -> dict[str, ModelStats]:
    """stats() once every model in `want` counts that many requests (or after 10 s).

    Triton records a request's statistics when it releases the request, which
    can be a moment after the caller got its response: a read right after the
    last response may miss it.
    """
    deadline = time.monotonic() + 10.0
    while True:
        stats = {s.model: s for s in using(flavour, url, "stats")}
        if all(m in stats and stats[m].requests >= n for m, n in want.items()) or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_stats_count_the_requests_ranked(server, protocol):
    url = url_of(server, protocol)
    sent = 5
    for flavour in FLAVOURS:
        before = {s.model: s for s in using(flavour, url, "stats")}
        using(flavour, url, "rank_many", [make_request(200 + i) for i in range(sent)])
        after = stats_reaching(flavour, url, {m: before[m].requests + sent for m in PIPELINE})
        for model in PIPELINE:
            stats, earlier = after[model], before[model]
            assert (stats.version, stats.url) == ("1", url), stats
            assert stats.requests - earlier.requests >= sent, (flavour, earlier, stats)
            assert stats.total_ms > 0 and stats.executions >= 1, stats
            phases = stats.queue_ms + stats.compute_input_ms + stats.compute_infer_ms + stats.compute_output_ms
            # A step's phases are parts of its whole; the ensemble's are Triton's sums over its steps,
            # which need not add up to its own total (ModelStats' docstring), so they are not held to it.
            if model != schema.ENSEMBLE_MODEL:
                assert 0 <= phases <= stats.total_ms * 1.01, stats
        assert after[schema.RANKER_MODEL].compute_infer_ms > 0

    runner = CliRunner()
    table = runner.invoke(cli.main, ["stats", "--url", url])
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["model", "version", "requests", "failures", "queue", "ms", "input", "ms", "infer",
                                "ms", "output", "ms", "total", "ms"]
    assert [line.split()[0] for line in lines[1:-1]] == list(PIPELINE)  # the ensemble, then its steps in order
    assert all(int(line.split()[2]) >= 2 * sent for line in lines[1:-1])
    assert lines[-1] == f"mean per successful request since the server started, from {url}"
    as_json = runner.invoke(cli.main, ["stats", "--url", url, "--json"])
    assert as_json.exit_code == 0, as_json.output
    rows = json.loads(as_json.stdout)
    assert [r["model"] for r in rows] == list(PIPELINE)
    assert all(r["requests"] >= 2 * sent and r["total_ms"] > 0 and r["url"] == url for r in rows)


# --- the server goes away and comes back (keep last: it restarts the module's server) ----------


def test_retry_succeeds_after_the_server_comes_back(server):
    """Stop the server, start a sync gRPC and an async HTTP call with a large
    retry budget, wait until both have actually retried (a hook, not a sleep),
    restart the server on the same ports: both calls succeed."""
    request = make_request(13)
    grpc_url, http_url = url_of(server, "grpc"), url_of(server, "http")
    server.stop()
    assert not server.is_running()

    events: dict[str, list[RetryEvent]] = {"sync-grpc": [], "async-http": []}
    retried = {name: threading.Event() for name in events}
    results: dict[str, Any] = {}
    # ~0.25 s per retry on average, so 600 retries outlast a slow restart; the
    # bound still ends the test if the server never comes back.
    policy = {"retries": 600, "backoff_s": 0.05, "max_backoff_s": 0.5, "timeout_s": 30}

    def hook(name: str):
        def on_retry(event: RetryEvent) -> None:
            events[name].append(event)
            retried[name].set()

        return on_retry

    def sync_call() -> None:
        try:
            with RankingClient(grpc_url, on_retry=hook("sync-grpc"), **policy) as client:
                results["sync-grpc"] = client.rank_request(request)
        except BaseException as exc:  # reported by the asserts below
            results["sync-grpc"] = exc

    def async_call() -> None:
        async def main() -> RankResponse:
            async with AsyncRankingClient(http_url, on_retry=hook("async-http"), **policy) as client:
                return await client.rank_request(request)

        try:
            results["async-http"] = asyncio.run(main())
        except BaseException as exc:
            results["async-http"] = exc

    threads = [threading.Thread(target=sync_call), threading.Thread(target=async_call)]
    for t in threads:
        t.start()
    try:
        for name, event in retried.items():
            assert event.wait(60), f"{name} never retried: {results.get(name)!r}"
    finally:
        server.start()  # same ports; also leaves the module's server running whatever happened
    for t in threads:
        t.join(300)
        assert not t.is_alive(), "a call with retries did not finish"

    for name, url in (("sync-grpc", grpc_url), ("async-http", http_url)):
        resp = results[name]
        assert isinstance(resp, RankResponse), f"{name}: {resp!r}"
        assert resp.url == url and resp.attempts == len(events[name]) + 1 >= 2
        assert all(isinstance(e.error, ServerUnavailableError) and e.url == url for e in events[name])
        assert resp.item_ids == using("sync", url, "rank_request", request).item_ids
