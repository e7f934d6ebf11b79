"""The CLI: help, input errors, exit codes, output formats (no server)."""

import dataclasses
import json
import socket

import pytest
from click.testing import CliRunner

from pinrank_client import (
    AccessDeniedError,
    Health,
    ModelStats,
    RankingClient,
    RankResponse,
    RequestTimeoutError,
    ServerError,
    ServerUnavailableError,
    cli,
    schema,
)

NOW = 1_718_000_000_000


def run(*args, input=None):
    return CliRunner().invoke(cli.main, list(args), input=input)


def closed_port():
    # Bind-then-close yields a port nothing listens on (racy only against strangers).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_error_line(result):
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize(
    "args", [["--help"], ["rank", "--help"], ["health", "--help"], ["models", "--help"], ["stats", "--help"]]
)
def test_help(args):
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "Usage: pinrank-client" in result.stdout


def test_rank_help_documents_the_request_file_and_vocabularies():
    out = run("rank", "--help").stdout
    for needle in ("--request-file", '"candidate_ids"', '"actions"', "ITEM:TYPE:TS_MS[:SURFACE]", *schema.ACTIONS):
        assert needle in out


def test_group_help_lists_exit_codes():
    out = run("--help").stdout
    assert "2  invalid input" in out and "3  server unreachable" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--user-id", "1", "--candidates", ""], "candidate_ids is empty"),
        (["--user-id", "1", "--candidates", "1,x"], "--candidates: 'x' is not an integer"),
        (["--user-id", "1", "--candidates", ",".join(map(str, range(1001)))], "too many candidates"),
        (["--user-id", "1", "--candidates", "1", "--action", f"7:like:{NOW}"], "unknown action 'like'"),
        (["--user-id", "1", "--candidates", "1", "--action", "7:save"], "expected ITEM:TYPE:TS_MS[:SURFACE]"),
        (["--user-id", "1", "--candidates", "1", "--action", f"7:save:{NOW}:moon"], "unknown surface 'moon'"),
        (["--user-id", "1", "--candidates", "1", "--action", "7:save:1718000000"], "not unix milliseconds"),
        (["--user-id", "1", "--candidates", "1", "--top-k", "0"], "top_k must be >= 1"),
        (["--user-id", "abc", "--candidates", "1"], "Invalid value for '--user-id'"),
        (["--candidates", "1"], "give --user-id and --candidates"),
        (["--bogus"], "No such option '--bogus'"),
        (["--url", "ftp://x", "--user-id", "1", "--candidates", "1"], "unsupported URL scheme 'ftp'"),
        (["--url", "http://x", "--protocol", "grpc", "--user-id", "1", "--candidates", "1"], "says http but"),
        (["--request-file", "/nonexistent/req.json"], "No such file"),
    ],
)
def test_rank_input_errors_exit_2_with_one_line(args, message):
    result = run("rank", "--url", f"localhost:{closed_port()}", *args)
    assert result.exit_code == 2, result.output
    assert message in one_error_line(result)


def test_bad_request_file_contents(tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"user_id": 1, "candidate_ids": [1,')
    result = run("rank", "--request-file", str(bad_json))
    assert result.exit_code == 2 and "not valid JSON" in one_error_line(result)
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"user_id": 1, "candidate_ids": [1], "actons": []}))
    result = run("rank", "--request-file", str(typo))
    assert result.exit_code == 2 and "unknown request field(s) ['actons']" in one_error_line(result)
    result = run("rank", "--request-file", "-", input="[1, 2]")
    assert result.exit_code == 2 and "expected a JSON object" in one_error_line(result)


def test_health_with_nothing_listening_exits_3():
    port = closed_port()
    result = run("health", "--url", f"localhost:{port}", "--retries", "0", "--timeout", "2")
    assert result.exit_code == 3, result.output
    line = one_error_line(result)
    assert f"grpc://localhost:{port} is unavailable" in line
    assert result.stdout == ""


def test_health_json_with_nothing_listening():
    port = closed_port()
    result = run("health", "--url", f"http://127.0.0.1:{port}", "--json", "--timeout", "2")
    assert result.exit_code == 3
    status = json.loads(result.stdout)
    assert status["live"] is False and status["url"] == f"http://127.0.0.1:{port}"
    assert "Connection refused" in status["error"]


@pytest.mark.parametrize("command", [["rank", "--user-id", "1", "--candidates", "1,2"], ["models"]])
@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_unreachable_server_exits_3(command, scheme):
    port = closed_port()
    result = run(command[0], "--url", f"{scheme}://127.0.0.1:{port}", "--retries", "1", "--timeout", "2", *command[1:])
    assert result.exit_code == 3, result.output
    assert "is unavailable" in one_error_line(result)


# --- with a fake client ----------------------------------------------------------


class FakeClient:
    """Replaces RankingClient inside the CLI; records the request it got."""

    requests = []
    health_status = Health("grpc://fake:1", True, True, True)
    kwargs = {}

    def __init__(self, url, protocol=None, **kw):
        self.url = "grpc://fake:1"
        FakeClient.kwargs = kw

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def rank_request(self, request):
        FakeClient.requests.append(request)
        k = min(request.top_k or 100, request.num_candidates)
        return RankResponse.from_arrays(
            {
                "item_ids": request.candidate_ids[:k][::-1],
                "scores": [0.5 - i / 10 for i in range(k)],
                "head_probs": [[0.1, 0.2, 0.3, 0.4]] * k,
            },
            model_name="pinrank",
            model_version="2",
            latency_ms=1.25,
            url="grpc://fake:1",
        )

    def health_all(self):
        return [FakeClient.health_status]

    def stats(self):
        return list(FAKE_STATS)


def model_stats(model, requests, total_ms, version="1"):
    # queue, input, infer and output split total_ms 10/5/80/5 %.
    split = [total_ms * f for f in (0.1, 0.05, 0.8, 0.05)]
    return ModelStats(model, version, requests, requests // 10, requests // 2, *split, total_ms,
                      url="grpc://fake:1")


# In the server's order (by name), which the CLI puts in pipeline order.
FAKE_STATS = [
    model_stats("extra", 0, 0.0),
    model_stats("pinrank", 120, 12.5),
    model_stats("postprocess", 120, 1.25),
    model_stats("preprocess", 120, 2.0),
    model_stats("ranker", 124, 8.0, version="2"),
    model_stats("ranker", 3, 9.0, version="10"),
]


@pytest.fixture
def fake(monkeypatch):
    FakeClient.requests = []
    monkeypatch.setattr(FakeClient, "health_status", Health("grpc://fake:1", True, True, True))
    monkeypatch.setattr(cli, "RankingClient", FakeClient)
    return FakeClient


def test_rank_table(fake):
    result = run(
        "rank",
        "--user-id",
        "42",
        "--candidates",
        "101, 102,103",
        "--action",
        f"7:save:{NOW}:home",
        "--action",
        f"9:2:{NOW + 1}",
        "--top-k",
        "2",
        "--request-ts-ms",
        str(NOW + 10),
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["rank", "item_id", "utility", *schema.HEADS]
    assert lines[1].split() == ["1", "102", "0.5000", "0.1000", "0.2000", "0.3000", "0.4000"]
    assert lines[-1] == "2 of 3 candidates ranked by pinrank v2 at grpc://fake:1 in 1.25 ms"
    req = fake.requests[0]
    assert req.user_id == 42 and req.top_k == 2 and req.request_ts_ms == NOW + 10
    assert [(a.item_id, a.action_name, a.surface_name) for a in req.actions] == [
        (7, "save", "home"),
        (9, "closeup", None),
    ]


def test_rank_json_from_request_file_with_flag_override(fake, tmp_path):
    path = tmp_path / "req.json"
    path.write_text(
        json.dumps(
            {
                "user_id": 1,
                "candidate_ids": [5, 6, 7],
                "request_ts_ms": NOW,
                "top_k": 3,
                "actions": [{"item_id": 8, "action": "hide", "ts_ms": NOW - 1, "surface": "search"}],
            }
        )
    )
    result = run("rank", "--request-file", str(path), "--top-k", "1", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["items"] == [
        {"rank": 1, "item_id": 5, "utility": 0.5, "head_probs": dict(zip(schema.HEADS, [0.1, 0.2, 0.3, 0.4]))}
    ]
    assert out["model_version"] == "2" and out["latency_ms"] == 1.25
    assert fake.requests[0].top_k == 1 and fake.requests[0].actions[0].action_name == "hide"


def test_health_ok_and_model_not_ready(fake):
    result = run("health")
    assert result.exit_code == 0 and "model ready   yes" in result.stdout
    fake.health_status = Health("grpc://fake:1", True, False, False)
    result = run("health")
    assert result.exit_code == 3
    assert "model 'pinrank' is not ready" in one_error_line(result)


def test_server_errors_and_bugs_exit_1_without_traceback(fake, monkeypatch):
    def boom(self, request):
        raise ServerError("boom")

    monkeypatch.setattr(FakeClient, "rank_request", boom)
    result = run("rank", "--user-id", "1", "--candidates", "1")
    assert result.exit_code == 1 and one_error_line(result) == "error: server error: boom"

    def bug(self, request):
        raise RuntimeError("oops")

    monkeypatch.setattr(FakeClient, "rank_request", bug)
    result = run("rank", "--user-id", "1", "--candidates", "1")
    assert result.exit_code == 1 and one_error_line(result) == "error: unexpected RuntimeError: oops"


def test_timeout_exits_4(fake, monkeypatch):
    def slow(self, request):
        raise RequestTimeoutError("no answer from grpc://fake:1 within 0.1 s")

    monkeypatch.setattr(FakeClient, "rank_request", slow)
    result = run("rank", "--user-id", "1", "--candidates", "1")
    assert result.exit_code == 4 and "within 0.1 s" in one_error_line(result)


def test_rank_without_validation_lets_the_server_judge(fake):
    result = run("rank", "--user-id", "1", "--candidates", ",".join(map(str, range(1001))), "--no-validate", "--json")
    assert result.exit_code == 0, result.output
    assert fake.requests[0].num_candidates == 1001 and fake.kwargs["validate"] is False


def test_rank_reports_attempts_when_it_retried(fake, monkeypatch):
    original = FakeClient.rank_request

    def retried(self, request):
        return dataclasses.replace(original(self, request), attempts=3)

    monkeypatch.setattr(FakeClient, "rank_request", retried)
    result = run("rank", "--user-id", "1", "--candidates", "1,2")
    assert result.stdout.splitlines()[-1].endswith("after 3 attempts")
    out = json.loads(run("rank", "--user-id", "1", "--candidates", "1,2", "--json").stdout)
    assert out["attempts"] == 3 and out["url"] == "grpc://fake:1"


def test_health_of_several_servers(monkeypatch):
    statuses = [Health("grpc://a:1", False, False, False, "grpc://a:1 is unavailable: refused"),
                Health("grpc://b:1", True, True, True)]
    monkeypatch.setattr(cli.RankingClient, "health_all", lambda self: statuses)
    result = run("health", "--url", "a:1,b:1")
    assert result.exit_code == 0, result.output
    assert "server        grpc://a:1" in result.stdout
    assert "live          no  (grpc://a:1 is unavailable" in result.stdout
    assert "model ready   yes" in result.stdout
    result = run("health", "--url", "a:1,b:1", "--json")
    assert [s["url"] for s in json.loads(result.stdout)] == ["grpc://a:1", "grpc://b:1"]
    statuses[1] = Health("grpc://b:1", True, False, False)
    result = run("health", "--url", "a:1,b:1")
    assert result.exit_code == 3 and "model 'pinrank' is not ready at grpc://b:1" in one_error_line(result)


def test_several_unreachable_servers_exit_3_with_one_line():
    ports = [closed_port(), closed_port()]
    urls = ",".join(f"127.0.0.1:{p}" for p in ports)
    result = run("health", "--url", urls, "--timeout", "2")
    assert result.exit_code == 3
    line = one_error_line(result)
    assert all(f"grpc://127.0.0.1:{p} is unavailable" in line for p in ports)
    result = run("rank", "--url", urls, "--retries", "1", "--user-id", "1", "--candidates", "1")
    assert result.exit_code == 3 and "is unavailable" in one_error_line(result)


# --- stats --------------------------------------------------------------------------------


def test_stats_table_in_pipeline_order(fake):
    result = run("stats")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "model        version    requests  failures   queue ms   input ms   infer ms  output ms   total ms"
    )
    assert lines[1:-1] == [
        "pinrank            1         120        12      1.250      0.625     10.000      0.625     12.500",
        "preprocess         1         120        12      0.200      0.100      1.600      0.100      2.000",
        "ranker             2         124        12      0.800      0.400      6.400      0.400      8.000",
        "ranker            10           3         0      0.900      0.450      7.200      0.450      9.000",
        "postprocess        1         120        12      0.125      0.062      1.000      0.062      1.250",
        "extra              1           0         0      0.000      0.000      0.000      0.000      0.000",
    ]
    assert lines[-1] == "mean per successful request since the server started, from grpc://fake:1"
    assert result.stderr == ""


def test_stats_json(fake):
    result = run("stats", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["model"], r["version"]) for r in rows] == [
        ("pinrank", "1"), ("preprocess", "1"), ("ranker", "2"), ("ranker", "10"), ("postprocess", "1"), ("extra", "1")
    ]
    assert rows[0] == {
        "model": "pinrank", "version": "1", "requests": 120, "failures": 12, "executions": 60, "queue_ms": 1.25,
        "compute_input_ms": 0.625, "compute_infer_ms": 10.0, "compute_output_ms": 0.625, "total_ms": 12.5,
        "url": "grpc://fake:1",
    }


def test_stats_with_no_models(fake, monkeypatch):
    monkeypatch.setattr(FakeClient, "stats", lambda self: [])
    result = run("stats")
    assert result.exit_code == 0 and result.stdout == "no models are loaded at grpc://fake:1\n"
    assert json.loads(run("stats", "--json").stdout) == []


def test_stats_takes_the_connection_options_but_no_model(fake):
    result = run("stats", "--url", "http://ranker:8000", "--timeout", "0.5", "--retries", "0")
    assert result.exit_code == 0, result.output
    assert fake.kwargs["timeout_s"] == 0.5 and fake.kwargs["retries"] == 0
    assert fake.kwargs["headers"] is None  # statistics need no admin key
    result = run("stats", "--model", "ranker")
    assert result.exit_code == 2 and "No such option '--model'" in one_error_line(result)


@pytest.mark.parametrize(
    "error, code, message",
    [
        (ServerUnavailableError("grpc://fake:1 is unavailable: refused"), 3, "error: grpc://fake:1 is unavailable"),
        (RequestTimeoutError("no answer from grpc://fake:1 within 5 s"), 4, "error: no answer from grpc://fake:1"),
        (AccessDeniedError("forbidden"), 2, "error: access denied: forbidden"),
        (ServerError("malformed statistics from grpc://fake:1: model_stats must be a list"), 1,
         "error: server error: malformed statistics"),
    ],
)
def test_stats_failures_exit_codes(fake, monkeypatch, error, code, message):
    def fail(self):
        raise error

    monkeypatch.setattr(FakeClient, "stats", fail)
    result = run("stats")
    assert result.exit_code == code, result.output
    assert one_error_line(result).startswith(message)
    assert result.stdout == ""


def test_stats_with_nothing_listening_exits_3():
    port = closed_port()
    result = run("stats", "--url", f"http://127.0.0.1:{port}", "--retries", "0", "--timeout", "2")
    assert result.exit_code == 3, result.output
    assert f"http://127.0.0.1:{port} is unavailable" in one_error_line(result)


@pytest.mark.parametrize("flag", ["--model-name", "--model"])
def test_model_name_option_matches_the_sdk_keyword(fake, flag):
    result = run("rank", "--user-id", "1", "--candidates", "5,6", flag, "ranker_only")
    assert result.exit_code == 0, result.output
    assert fake.kwargs["model_name"] == "ranker_only"


def test_client_repr_uses_the_constructor_keyword():
    with RankingClient("grpc://127.0.0.1:1", model_name="pinrank") as client:
        assert "model_name='pinrank'" in repr(client)
