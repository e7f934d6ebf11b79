"""`pinrank rollout`'s arguments without a server: the fleet, the admin key, the dataset."""

from __future__ import annotations

import os
import signal
import time

import pytest
from click.testing import CliRunner
from rollout_fakes import fake_repository

from pinrank.cli import main
from pinrank.rollout.cli import Stopped, _rollback_on_signals
from pinrank.rollout.fleet import resolve_fleet, serving_version
from pinrank_client.admin import ADMIN_KEY_ENV
from testkit.export_inputs import make_export_inputs


def test_a_fleet_list_keeps_its_order_and_drops_schemes():
    assert resolve_fleet("http://10.0.0.2:8000/, 10.0.0.1:8000", None) == ["10.0.0.2:8000", "10.0.0.1:8000"]


@pytest.mark.parametrize(("fleet", "dns", "why"), [
    (None, None, "one of them"), ("a:1", "b:2", "one of them"), (" , ", None, "names no replica"),
    ("a:1,a:1", None, "twice"), (None, "no-port", "HOST:PORT"),
    (None, "no-such-host.invalid:8000", "does not resolve"),
])
def test_a_bad_fleet_says_why(fleet, dns, why):
    with pytest.raises(ValueError, match=why):
        resolve_fleet(fleet, dns)


def test_a_headless_service_name_gives_every_address_it_resolves_to():
    found = resolve_fleet(None, "localhost:8000")
    assert found and all(a.endswith(":8000") for a in found) and len(set(found)) == len(found)
    assert set(found) <= {"127.0.0.1:8000", "[::1]:8000"}


@pytest.mark.parametrize(("loaded", "version"), [
    ({"preprocess": [2], "ranker": [2], "postprocess": [2]}, 2),
    ({"pinrank": [3]}, 3),  # the single-model layout
    ({"preprocess": [1, 2], "ranker": [2], "postprocess": [2]}, None),  # mid-switch
    ({"preprocess": [1], "ranker": [2], "postprocess": [2]}, None),
    ({"preprocess": [], "ranker": [2], "postprocess": [2]}, None),
    ({}, None),
])
def test_the_served_version_is_one_version_of_every_model(loaded, version):
    assert serving_version(loaded) == version


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_export_inputs(tmp_path_factory.mktemp("rollout_cli"), num_items=40, num_users=12).data


def _invoke(args, env=None):
    result = CliRunner().invoke(main, ["rollout", *map(str, args)], env=env or {ADMIN_KEY_ENV: ""})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_no_admin_key_is_refused_before_any_call(tmp_path, data):
    r = _invoke(["--repository", tmp_path, "--fleet", "127.0.0.1:1", "--data", data])
    assert r.exit_code == 1 and f"no admin key: set ${ADMIN_KEY_ENV}" in r.output


def test_a_fleet_given_twice_is_a_usage_error(tmp_path, data):
    r = _invoke(["--repository", tmp_path, "--fleet", "a:1", "--fleet-dns", "b:2", "--data", data])
    assert r.exit_code == 2 and "one of them" in r.output


def test_an_unreachable_fleet_fails_at_preflight_and_writes_its_report(tmp_path, data):
    repo = fake_repository(tmp_path / "repo")
    report = tmp_path / "out" / "report.json"
    r = _invoke(["--repository", repo, "--fleet", "127.0.0.1:1", "--data", data, "--report", report,
                 "--request-timeout", 1], env={ADMIN_KEY_ENV: "k" * 32})
    assert r.exit_code == 1 and "preflight: 127.0.0.1:1:" in r.output and "nothing was switched" in r.output
    assert '"outcome": "failed"' in report.read_text()


def test_a_signal_becomes_a_failure_the_rollout_rolls_back_from():
    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(Stopped, match="SIGTERM"), _rollback_on_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises in this thread before
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        signal.signal(signal.SIGTERM, before)


def test_pod_addresses_are_ordered_as_addresses(monkeypatch):
    records = ["10.0.0.10", "10.0.0.9", "fd00::1", "10.0.0.9"]
    monkeypatch.setattr("socket.getaddrinfo", lambda host, port, **kw: [(2, 1, 6, "", (ip, port)) for ip in records])
    assert resolve_fleet(None, "pinrank-triton-admin.pinrank.svc.cluster.local:8000") == [
        "10.0.0.9:8000", "10.0.0.10:8000", "[fd00::1]:8000"]
