"""What the launcher starts: each service's replicas, where each listens, and the
environment each gets (checked before anything starts)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cache.backends import POSTGRES_SCHEMES
from cache.config import Settings as CacheSettings
from cache.config import data_dir
from common import ports
from common.env import ConfigError, Env
from gateway.config import Settings as GatewaySettings
from launcher import allocator
from processor.config import Settings as ProcessorSettings

SERVICES = ("cache", "processor", "gateway")  # start order; stop in reverse
MAX_REPLICAS = 16
# Replica i (from 0) of a service listens on its configured port + 10 * i. Not + i: the
# default cache and processor ports are neighbours (50051, 50052), so a second cache
# would take the first processor's port; with a stride of 10 each service keeps its own
# last digit (cache 50051, 50061...; processor 50052, 50062...; gateway 8080, 8090...),
# and every port is checked free before anything starts.
PORT_STRIDE = 10
LISTEN_VARIABLES = {
    "cache": "IMAGESVC_CACHE_LISTEN",
    "processor": "IMAGESVC_PROCESSOR_LISTEN",
    "gateway": "IMAGESVC_GATEWAY_PORT",
}
# The gRPC services' Prometheus ports (unset: none). A fixed port counts up by the
# same stride as the listen port, replica by replica; 0 gives each one a port of its own.
METRICS_VARIABLES = {
    "cache": "IMAGESVC_CACHE_METRICS_PORT",
    "processor": "IMAGESVC_PROCESSOR_METRICS_PORT",
}
# Where the other services find each service, unless the environment says otherwise.
ADDRESS_VARIABLES = {
    "cache": "IMAGESVC_CACHE_ADDRESS",
    "processor": "IMAGESVC_PROCESSOR_ADDRESSES",
}


@dataclass(frozen=True)
class Replica:
    """One process to start: `python -m service` with env, listening on listen."""

    service: str
    name: str  # the service's name alone, or with its number among several: "cache-2"
    listen: str
    variable: str  # what sets listen, as a user would read it: "IMAGESVC_CACHE_LISTEN + 10"
    host_variable: str | None
    env: dict[str, str]
    metrics: str | None = None  # where its metrics port listens, when fixed
    metrics_variable: str = ""

    @property
    def reachable(self) -> str:
        """Where it is reached from this machine."""
        host, _, port = self.listen.rpartition(":")
        return f"127.0.0.1:{port}" if host in ("0.0.0.0", "[::]", "::", "") else self.listen

    @property
    def url(self) -> str:
        """A gateway's base URL."""
        return f"http://{self.listen}"


def _listen(service: str, env: Env) -> tuple[str, str | None]:
    """Where the service's first replica listens, and the variable of its host if apart."""
    if service == "cache":
        return CacheSettings.from_env(env).listen, None
    if service == "processor":
        return ProcessorSettings.from_env(env).listen, None
    gateway = GatewaySettings.from_env(env)
    return f"{gateway.host}:{gateway.port}", "IMAGESVC_GATEWAY_HOST"


def _addresses(service: str, first: str, count: int) -> list[tuple[str, str]]:
    """Each replica's listen address and the words that say where it comes from."""
    variable = LISTEN_VARIABLES[service]
    if count == 1:
        return [(first, variable)]
    parts = ports.split(first)
    if parts is None or parts[1] == 0:
        raise ConfigError(
            f"{variable} gives {first}: {count} replicas need a fixed port to count theirs "
            f"from (port + {PORT_STRIDE} for each)"
        )
    host = first.rpartition(":")[0]
    found = []
    for i in range(count):
        port = parts[1] + PORT_STRIDE * i
        if port > 65535:
            raise ConfigError(f"{variable} + {PORT_STRIDE * i} passes port 65535")
        found.append((f"{host}:{port}", variable if i == 0 else f"{variable} + {PORT_STRIDE * i}"))
    return found


def _check_cache_replicas(env: dict[str, str], count: int) -> None:
    """Several caches need state they all see; ConfigError saying what is missing."""
    settings = CacheSettings.from_env(Env(env))
    if urlsplit(settings.metadata_url).scheme not in POSTGRES_SCHEMES:
        # SQLite announces a delete to its own process's watchers only: the other
        # replicas' watchers, and the hot caches behind them, would keep deleted images.
        raise ConfigError(
            f"--cache {count} needs IMAGESVC_METADATA_URL=postgresql://USER@HOST:PORT/DB "
            "(with SQLite, each replica hears only of its own deletes, so the others "
            "would go on serving deleted images)"
        )
    variants = Env(env).raw("VARIANT_CACHE_URL")
    if variants is not None and urlsplit(variants).scheme == "memory" and urlsplit(variants).path:
        raise ConfigError(
            f"--cache {count}: IMAGESVC_VARIANT_CACHE_URL={variants} is one replica's own "
            "folder; leave it unset (each replica gets one in its data folder), or use "
            "memory:// or redis://"
        )


def plan(environ: dict[str, str], counts: dict[str, int]) -> list[Replica]:
    """Every replica of every service, in start order, each with its environment;
    ConfigError for a setting that would not run."""
    base = data_dir(Env(environ))
    # Absolute, so the services (which run in the checkout) and `stop` (run from
    # anywhere) read the same folder.
    common = {**allocator.defaults(environ), **environ, "IMAGESVC_DATA_DIR": str(base)}
    if counts["cache"] > 1:
        _check_cache_replicas(common, counts["cache"])
        # One machine: every replica's blobs in the one folder a single cache would use
        # (a blob is written whole and renamed in, and what a crash left is found from
        # the metadata's records of unfinished work, which every replica shares).
        if Env(common).raw("BLOB_URL") is None:
            common["IMAGESVC_BLOB_URL"] = f"file://{base / 'blobs'}"
    replicas = []
    taken: dict[int, str] = {}
    for service in SERVICES:
        first, host_variable = _listen(service, Env(common))
        count = counts[service]
        for i, (listen, variable) in enumerate(_addresses(service, first, count)):
            parts = ports.split(listen)
            if parts is not None and parts[1] != 0:
                if parts[1] in taken:
                    raise ConfigError(f"{taken[parts[1]]} and {variable} both give port {parts[1]}")
                taken[parts[1]] = variable
            name = service if count == 1 else f"{service}-{i + 1}"
            metrics, metrics_variable = _metrics(service, Env(common), listen, i)
            if metrics is not None:
                port = int(metrics.rpartition(":")[2])
                if port in taken:
                    raise ConfigError(f"{taken[port]} and {metrics_variable} both give port {port}")
                taken[port] = metrics_variable
            replicas.append(
                Replica(
                    service, name, listen, variable, host_variable, {}, metrics, metrics_variable
                )
            )
    # The services find each other where they listen, unless told otherwise: moving
    # IMAGESVC_CACHE_LISTEN alone must not leave the others calling the old port.
    for service, variable in ADDRESS_VARIABLES.items():
        if Env(common).raw(variable.removeprefix("IMAGESVC_")) is None:
            common[variable] = ",".join(r.reachable for r in replicas if r.service == service)
    planned = [_with_env(r, common, counts[r.service], base) for r in replicas]
    for replica in planned:
        _settings(replica)
    return planned


def _metrics(service: str, env: Env, listen: str, index: int) -> tuple[str | None, str]:
    """Where replica `index` of service serves its metrics, when on a fixed port, and the
    words that say where that comes from."""
    variable = METRICS_VARIABLES.get(service)
    if variable is None:
        return None, ""
    settings = (
        CacheSettings.from_env(env) if service == "cache" else ProcessorSettings.from_env(env)
    )
    if not settings.metrics_port:  # none, or each its own (0)
        return None, variable
    port = settings.metrics_port + PORT_STRIDE * index
    if port > 65535:
        raise ConfigError(f"{variable} + {PORT_STRIDE * index} passes port 65535")
    parts = ports.split(listen)
    host = "127.0.0.1" if parts is None else parts[0]
    shown = variable if index == 0 else f"{variable} + {PORT_STRIDE * index}"
    return f"{host}:{port}", shown


def _with_env(replica: Replica, common: dict[str, str], count: int, base: Path) -> Replica:
    env = dict(common)
    if replica.metrics is not None:
        env[METRICS_VARIABLES[replica.service]] = replica.metrics.rpartition(":")[2]
    if replica.service == "gateway":
        env["IMAGESVC_GATEWAY_PORT"] = replica.listen.rpartition(":")[2]
    else:
        env[LISTEN_VARIABLES[replica.service]] = replica.listen
    if replica.service == "cache" and count > 1:
        # Its own folder for what is its own (the variant cache's disk tier).
        env["IMAGESVC_DATA_DIR"] = str(base / replica.name)
    return Replica(
        replica.service,
        replica.name,
        replica.listen,
        replica.variable,
        replica.host_variable,
        env,
        replica.metrics,
        replica.metrics_variable,
    )


def _settings(replica: Replica) -> None:
    """Read the replica's settings as it will (ConfigError, naming the variable, if bad)."""
    env = Env(replica.env)
    if replica.service == "cache":
        CacheSettings.from_env(env)
    elif replica.service == "processor":
        ProcessorSettings.from_env(env)
    else:
        GatewaySettings.from_env(env)
