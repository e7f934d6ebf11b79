"""The serving fleet of the local loop: `pinrank serve --model-control
explicit` replicas over one model repository with one admin key, as the
pods of deploy/k8s/daily/fleet share the `pinrank-data` volume and the
`pinrank-admin-key` Secret; and the traffic sent to them while a rollout
switches them (pinrank.rollout.traffic: every replica called directly, no
retries, each failure counted)."""

from __future__ import annotations

import secrets
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pinrank.rollout.fleet import TritonReplica, serving_version
from pinrank.rollout.replay import requests_from_dataset
from pinrank.rollout.traffic import BackgroundTraffic
from pinrank_client.admin import admin_headers
from testkit.serve_process import ServeProcess

#: Requests the traffic cycles through, and their size: small, as the fleet runs on the same 2 cores as the loop.
TRAFFIC_REQUESTS, TRAFFIC_CANDIDATES, TRAFFIC_TOP_K = 16, 50, 10


class LocalFleet:
    """`replicas` supervised servers over `repository`, started in order."""

    def __init__(self, repository: Path, workdir: Path, replicas: int = 2, key: str | None = None) -> None:
        self.repository, self.workdir = Path(repository), Path(workdir)
        self.key = key or secrets.token_hex(24)
        self.servers = [ServeProcess(self.repository, self.workdir / f"replica-{i}", model_control="explicit",
                                     key=self.key) for i in range(replicas)]
        self._stack = ExitStack()
        self.start_seconds = 0.0

    def __enter__(self) -> LocalFleet:
        t0 = time.monotonic()
        with ExitStack() as stack:
            for server in self.servers:
                stack.enter_context(server)
            self._stack = stack.pop_all()
        self.start_seconds = time.monotonic() - t0
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def addresses(self) -> list[str]:
        return [s.http_url for s in self.servers]

    def versions(self) -> dict[str, int | None]:
        """The version each replica serves (None: none, or its models disagree)."""
        out = {}
        for address in self.addresses:
            replica = TritonReplica(address, self.repository, admin_headers(self.key))
            try:
                out[address] = serving_version(replica.serving())
            finally:
                replica.close()
        return out

    def describe(self) -> dict[str, Any]:
        return {"replicas": len(self.servers), "addresses": self.addresses, "model_control": "explicit",
                "repository": str(self.repository), "start_seconds": round(self.start_seconds, 1)}


def traffic(addresses: list[str], dataset: Path) -> BackgroundTraffic:
    """Light live traffic to every replica, from the dataset's own users and histories."""
    requests = requests_from_dataset(dataset, TRAFFIC_REQUESTS, candidates=TRAFFIC_CANDIDATES, top_k=TRAFFIC_TOP_K)
    return BackgroundTraffic(addresses, requests, workers=1, pause_s=0.02)
