"""The bad-input matrix (reliability.bad_inputs) against the real
tritonserver: every case gets a clear answer and the server stays ready.

The server serves an untrained export of the matrix's own fixtures (a tiny
synthetic dataset; built in seconds, no training).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pinrank.serving.tritonserver import running_server
from reliability.bad_inputs.case import SURFACES, Case, Outcome
from reliability.bad_inputs.fixtures import Fixtures
from reliability.bad_inputs.matrix import cases, run_matrix


def test_the_matrix_covers_every_surface_with_at_least_40_cases():
    table = cases()
    assert len(table) >= 40
    per_surface = Counter(c.surface for c in table)
    assert set(per_surface) == set(SURFACES), per_surface
    for case in table:
        assert case.problem and (case.served or case.expect), case.id


def test_judging():
    case = Case("x", "sdk", "p", lambda ctx: Outcome(), expect=("candidate_ids", "empty"))
    assert case.judge(Outcome(error="InvalidRequestError: candidate_ids is EMPTY"))
    assert not case.judge(Outcome(error="InvalidRequestError: something failed"))
    assert not case.judge(Outcome(error="candidate_ids is empty\nTraceback (most recent call last):"))
    assert not case.judge(Outcome(served=True))  # an error was expected
    served = Case("y", "sdk", "p", lambda ctx: Outcome(), served=True)
    assert served.judge(Outcome(served=True))
    assert not served.judge(Outcome(served=True, problem="an item is ranked twice"))
    assert not served.judge(Outcome(error="boom"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("bad_inputs")
    repository = Fixtures(root / "fixtures").repository
    with running_server(repository, log_path=root / "tritonserver.log") as srv:
        yield srv, root


@pytest.mark.triton
@pytest.mark.timeout(300)
def test_every_bad_input_gets_a_clear_answer_and_the_server_stays_ready(server):
    srv, root = server
    result = run_matrix(srv.http_url, srv.grpc_url, Path(root))
    unclear = [f"{r['id']} ({r['surface']}): expected {r['expected']}, got: {r['message']}"
               for r in result["cases"] if not r["clear_error"]]
    assert not unclear, "\n".join(unclear)
    assert result["bad_inputs_total"] == len(cases()) >= 40
    assert result["bad_inputs_clear_error"] == result["bad_inputs_total"]
    not_ready = [r["id"] for r in result["cases"] if not r["server_ready_after"]]
    assert result["server_ready_after_all"] and not not_ready, not_ready
    assert srv.is_ready()
