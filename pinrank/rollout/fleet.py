"""The replicas of a fleet and what the rollout does to each: read which
version it serves, switch it, and rank through it like any client would.

Each replica is one `pinrank serve --model-control explicit` (one Triton
pod) over the shared model repository; it is addressed by its own HTTP
address, never through the Service, so every call reaches the replica it
means to."""

from __future__ import annotations

import socket
from ipaddress import ip_address
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import tritonclient.http as httpclient

from pinrank.backend import schema
from pinrank.repository.layout import existing_pipeline, published_models
from pinrank.serving import model_control
from pinrank_client import RankingClient
from pinrank_client.types import RankRequest, RankResponse

#: Model states of a load or unload still running.
TRANSITIONS = ("LOADING", "UNLOADING")


class Replica(Protocol):
    """What the rollout needs of a replica (tests give fakes)."""

    address: str

    def ready(self) -> bool: ...

    def serving(self) -> dict[str, list[int]]:
        """READY versions of each model of the request path."""
        ...

    def switch(self, version: int) -> float:
        """Move the request path to `version` atomically; seconds taken."""
        ...

    def settled(self) -> bool:
        """No model is loading or unloading (what a switch leaves behind for a few seconds)."""
        ...

    def repin(self, version: int) -> None:
        """Pin the repository on disk and this replica to `version` alone,
        whatever state a failed switch left them in."""
        ...

    def rank(self, request: RankRequest) -> RankResponse: ...

    def contract_mismatches(self) -> list[str]: ...

    def close(self) -> None: ...


def serving_version(loaded: Mapping[str, Sequence[int]]) -> int | None:
    """The one version every model serves; None when they serve none, several or different ones."""
    if not loaded or any(len(versions) != 1 for versions in loaded.values()):
        return None
    found = {versions[0] for versions in loaded.values()}
    return found.pop() if len(found) == 1 else None


def bare_address(address: str) -> str:
    """host:port, without the http:// a user may have written."""
    address = address.strip()
    for scheme in ("http://", "https://"):
        if address.startswith(scheme):
            address = address[len(scheme):]
    return address.rstrip("/")


def resolve_fleet(addresses: str | None, dns: str | None) -> list[str]:
    """The replicas' HTTP addresses: the comma-separated list as given (the
    first is the canary), or every address a Kubernetes headless Service
    name resolves to (one A/AAAA record per ready pod), lowest first."""
    if (addresses is None) == (dns is None):
        raise ValueError("give the fleet as --fleet URL[,URL...] or as --fleet-dns HOST:PORT (one of them)")
    if addresses is not None:
        out = [bare_address(a) for a in addresses.split(",") if a.strip()]
        if not out:
            raise ValueError("--fleet names no replica")
        if len(set(out)) != len(out):
            raise ValueError(f"--fleet names a replica twice: {out}")
        return out
    assert dns is not None
    host, _, port = bare_address(dns).rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--fleet-dns takes HOST:PORT, got {dns!r}")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"{host} does not resolve ({exc.strerror}): is it the headless Service's name?") from None
    ips = sorted({str(info[4][0]) for info in infos}, key=lambda ip: (ip_address(ip).version, ip_address(ip)))
    return [f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in ips]


class TritonReplica:
    """A replica reached over HTTP: tritonclient for the admin calls (with
    the key), the SDK for ranking (no retries: a failure is a finding)."""

    def __init__(self, address: str, repository: Path, headers: dict[str, str], *,
                 request_timeout_s: float = 10.0, switch_timeout_s: float = 600.0) -> None:
        self.address = bare_address(address)
        self.repository = Path(repository)
        self.headers = headers
        pipeline = existing_pipeline(self.repository)
        self.pipeline = pipeline or "ensemble"
        self.models = published_models(self.pipeline)
        # A switch loads Python stubs and ranker files: it takes seconds here and may take minutes on a big
        # model, so the admin calls wait far longer than a ranking call would.
        self.admin = httpclient.InferenceServerClient(self.address, connection_timeout=request_timeout_s,
                                                      network_timeout=switch_timeout_s)
        self.client = RankingClient(f"http://{self.address}", protocol="http", timeout_s=request_timeout_s,
                                    retries=0)

    def ready(self) -> bool:
        # Live and the ensemble ready, not Triton's server readiness: that stays false for seconds after
        # every switch, while the old version's stubs unload, though the replica answers all along.
        return bool(self.admin.is_server_live() and self.admin.is_model_ready(schema.ENSEMBLE_MODEL))

    def serving(self) -> dict[str, list[int]]:
        loaded = model_control.loaded_versions(self.admin, self.models, self.headers)
        return {model: sorted(int(v) for v in versions if v) for model, versions in loaded.items()}

    def switch(self, version: int) -> float:
        return model_control.switch_version(self.admin, self.repository, version, self.headers)

    def settled(self) -> bool:
        index = self.admin.get_model_repository_index(headers=self.headers)
        return not any(entry.get("state") in TRANSITIONS for entry in index)

    def repin(self, version: int) -> None:
        if self.pipeline == "single":
            # One pinned load, nothing on disk: switch_version is already the whole repair.
            model_control.switch_version(self.admin, self.repository, version, self.headers)
            return
        # switch_version stops early when the steps already serve `version` alone, which leaves the disk as a
        # failed switch wrote it (both versions pinned): a pod that restarts would load both. These are the
        # on-disk state switch_version itself ends with; loading the ensemble applies it to this replica.
        model_control.pin_repository(self.repository, version)
        self.admin.load_model(schema.ENSEMBLE_MODEL, headers=self.headers)

    def rank(self, request: RankRequest) -> RankResponse:
        return self.client.rank_request(request)

    def contract_mismatches(self) -> list[str]:
        return self.client.check_contract()

    def close(self) -> None:
        self.client.close()
        self.admin.close()
