"""Configuration: the one place that reads environment variables (prefix GPUPOOL_).

`Settings` configures the server (`gpupool up` passes its flags as overrides); `client/settings.py` holds
what the CLI and SDK read (where the server is, which token). Everything else receives these objects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# root runs a multi-user pool, whose home replicas of other OS users must traverse: not /root (0700)
DEFAULT_HOME = Path("/var/lib/gpupool") if os.geteuid() == 0 else Path("~/.gpupool")
DEFAULT_PORT = 8700
DEFAULT_START_TIMEOUT_S = 600.0  # the command starts within milliseconds of its supervisor; 10 min is a hang
# A service replica chosen to go (preempted, scaled down, replaced by an update) takes no new request and is
# stopped once its requests in flight finish, or after this long: 60 s lets a long streamed answer finish
# (2,000 tokens at ~40 tokens/s on a shared GPU), while a preemptor waits at most a minute more.
DEFAULT_SERVICE_DRAIN_TIMEOUT_S = 60.0


def _expand(path: Path) -> Path:
    return Path(os.path.expanduser(str(path))).resolve()


class Settings(BaseSettings):
    """Server settings. Every field can be set as GPUPOOL_<FIELD> (e.g. GPUPOOL_DATABASE_URL)."""

    model_config = SettingsConfigDict(env_prefix="GPUPOOL_", extra="ignore")

    home: Path = Field(DEFAULT_HOME, description="State directory: database, token, logs, storage")
    database_url: str | None = Field(None, description="sqlite:///PATH or postgresql://...; default SQLite in home")
    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    gpus: str = Field("", description="Simulated GPUs per local node, e.g. 4xA100-80GB or 2xA100-80GB,1xT4-16GB")
    gpu_description: Path | None = Field(None, description="A scripted fake GPU description (YAML) per local "
                                         "node, for demos and tests (see gpu/fake.py)")
    gpu_mode: Literal["exclusive", "shared", "mps"] | None = Field(
        None, description="Sharing mode of GPUs the admin has not set: default shared for --gpus, else exclusive")
    sample_interval_s: float = Field(5.0, gt=0, description="How often the GPU sampler reads every GPU")
    # nodes join and leave rarely; 5 s is prompt for a person watching and a negligible cost for one short pass
    node_sync_interval_s: float = Field(5.0, gt=0, description="How often node providers are asked which nodes exist")
    overuse_kill: bool = Field(False, description="Stop a workload whose replica uses more GPU memory than asked")
    # 1024: NVML showed a CUDA context of 610 MiB beside PyTorch's memory on an H200 (driver 580.159, CUDA 13.0,
    # torch 2.11; benchmarks/gpu/check_gpu.py), above the 512 first assumed; the rest is room for other models'
    # and libraries' contexts (a false over-use report, or a kill with GPUPOOL_OVERUSE_KILL, costs more)
    overuse_tolerance_mib: int = Field(1024, ge=0, description="GPU memory over the request that is not over-use")
    overuse_tolerance_by_model: dict[str, int] = Field(
        default_factory=dict, description='The same per GPU model or family, JSON: {"H100": 1024} (a CUDA '
        "context's size depends on the model; benchmarks/gpu/check_gpu.py measures it)")
    overuse_grace_s: float = Field(10.0, ge=0, description="How long over-use must last before it is reported")
    idle_after_s: float = Field(1800.0, gt=0, description="An allocated GPU this long idle is wasted")
    idle_max_pct: float = Field(5.0, ge=0, le=100, description="Utilisation at or below which a GPU is idle")
    # a kill -9 loses at most this much of the busy / idle record (a minute is under 0.1 % of a day's report),
    # and one small write transaction a minute is negligible next to the sampler's other work
    usage_flush_interval_s: float = Field(60.0, gt=0, description="How often the sampler writes its busy / idle "
                                          "GPU-seconds to the usage ledger (what a crash may lose at most)")
    mps_control: str = Field("nvidia-cuda-mps-control", description="The MPS control program")
    mps_set_compute_mode: bool = Field(False, description="Switch MPS cards to EXCLUSIVE_PROCESS (needs root)")
    mps_check_interval_s: float = Field(30.0, gt=0, description="How often MPS daemons are checked and restarted")
    hami_library: Path | None = Field(None, description="HAMi-core libvgpu.so: hard memory and SM limits on "
                                      "time-sliced GPUs")
    metrics_public: bool = Field(False, description="Serve /metrics without a token")
    metrics_token: SecretStr | None = Field(None, description="A bearer token that may read /metrics (besides "
                                            "administrators' tokens), e.g. for Prometheus")
    nodes: int = Field(1, ge=1, le=64, description="How many nodes this host declares (demos and tests)")
    node_name: str | None = Field(None, description="Name of the local node (default: the host name)")
    node_cpus: float | None = Field(None, gt=0, description="CPU cores per local node (default: this machine's)")
    node_memory: str | None = Field(None, description="Memory per local node, e.g. 64GiB (default: this machine's)")
    executor: Literal["local", "fake", "ray"] = "local"
    ray_address: str | None = Field(None, description="Cluster mode: the Ray cluster to run on (head host:port, "
                                    "or auto on a node of the cluster); sets the executor to ray")
    # Ray declares a node dead in ~3 s with the health-check settings of docs/cluster.md; twice that as the bound
    ray_fence_after_s: float = Field(6.0, ge=0, description="Cluster mode: a node agent that cannot reach the "
                                     "Ray head this long stops its replicas (0: never)")
    # An agent that Ray keeps alive but that does not answer: ten times the default fencing bound. A killed
    # agent was created again and answering 7-20 s later on a loaded 2-core test host, and a Ray worker restart
    # takes seconds; 60 s is three times the slowest of those, and bounds how long work waits on a stuck node
    agent_silence_limit_s: float = Field(60.0, gt=0, description="Cluster mode: a node whose agent has not "
                                         "answered this long, while Ray reports it alive, is treated as lost")
    policy: str = Field("fgd", description="Placement policy: binpack, spread, bestfit, fgd, random")
    preemption: bool = True
    backfill: bool = True
    min_runtime_s: float = Field(60.0, ge=0, description="A workload runs this long before it may be preempted")
    fair_share_preemption: bool = Field(False, description="A queue below its weighted fair share may preempt "
                                        "work of a queue above it (after min_runtime_s)")
    max_preemptions_per_cycle: int = Field(64, ge=0, description="At most this many victims per scheduling cycle")
    hold_after_s: float | None = Field(1800.0, ge=0, description="A blocked workload that has waited this long for "
                                       "work without a max_runtime holds the capacity it needs: no later work "
                                       "starts there (off: never)")
    # Notebooks: the idle timeout of a notebook whose spec names none (2 h: a lunch break survives, a forgotten
    # tab does not hold a GPU overnight), and how often the culler asks each Jupyter (30 s: culling is 30 s late
    # at most, two cheap requests per notebook per pass).
    notebook_idle_timeout: str = Field("2h", description="Default idle timeout of notebooks (e.g. 2h, or off)")
    notebook_cull_interval_s: float = Field(30.0, gt=0, description="How often idle notebooks are looked for")
    # The warm pool (local executor): K parked JupyterLab interpreters per Python, so a notebook starts in about
    # a second instead of three or more. 0 by default: each parked interpreter holds ~80 MiB resident (82 MiB measured)
    # outside the scheduler's accounting, which a laptop or a pool that rarely opens notebooks should not pay;
    # a shared pool where people open notebooks all day sets 1-2 (more only for bursts of simultaneous opens).
    notebook_warm_pool: int = Field(0, ge=0, le=64, description="Parked JupyterLab servers kept per Python "
                                    "(the default interpreter and each of notebook_warm_environments); 0: none")
    notebook_warm_environments: str = Field("", description="Environments (space-separated names) whose "
                                            "notebooks also get a warm pool (in cluster mode: on every node that "
                                            "keeps one, GPUPOOL_AGENT_NOTEBOOK_WARM_POOL)")
    # Python environments (`gpupool envs`): uv (default: the one beside the server's Python, else on PATH) and
    # the package index it builds from (unset: uv's default, PyPI); an offline site names its mirror.
    uv_path: str | None = Field(None, description="The uv executable that builds environments")
    environments_index_url: str | None = Field(None, description="Package index URL environments are built from")
    environments_extra_index_urls: str = Field("", description="More index URLs, space-separated")
    environments_find_links: str = Field("", description="Directories or URLs of wheels, space-separated")
    # A member's own environments, in all. 20 GiB: a CUDA PyTorch stack measures 5-7 GiB (torch with its nvidia-*
    # wheels), so a member keeps two or three of their own next to the shared ones an administrator makes (which
    # count against no one); 0 lets members use only shared environments.
    environments_user_quota_gib: float = Field(20.0, ge=0, description="Disk a member's own environments may "
                                               "hold in all (GiB); administrators' environments are shared and "
                                               "count against no quota")
    service_drain_timeout_s: float = Field(DEFAULT_SERVICE_DRAIN_TIMEOUT_S, ge=0, description="The most a "
                                           "service replica that is preempted, scaled down or replaced waits for "
                                           "its requests in flight before it is stopped")
    schedule_interval_s: float = Field(1.0, gt=0)
    reconcile_interval_s: float = Field(1.0, gt=0)
    stop_grace_s: float = Field(10.0, ge=0)
    log_max_bytes: int = Field(1024**3, ge=4096, description="The most one replica's log file holds (default 1 GiB); "
                               "later output is discarded after a line that says so")
    start_timeout_s: float = Field(DEFAULT_START_TIMEOUT_S, gt=0, le=7 * 86400,
                                   description="A workload still scheduled or starting after this long fails "
                                   "(its replicas never began to run)")
    multi_user: bool | None = Field(None, description="Run each workload as its user's OS identity (needs "
                                    "root); default: when the server runs as root")
    trust_users: bool = Field(False, description="In a single-user pool (not root), allow users of several "
                              "projects although their workloads can read each other's files")
    os_user_prefix: str = Field("gp-", pattern=r"^[a-z_][a-z0-9_-]{0,15}$",
                                description="Prefix of the OS accounts gpupool creates for its users")
    os_group_prefix: str = Field("gpp-", pattern=r"^[a-z_][a-z0-9_-]{0,15}$",
                                 description="Prefix of the OS groups gpupool creates for its projects")
    os_user_map: dict[str, str] = Field(default_factory=dict, description="gpupool user -> existing OS account, "
                                        "as JSON (GPUPOOL_OS_USER_MAP='{\"alice\": \"asmith\"}')")
    admin_name: str = "admin"
    reset_admin_token: bool = Field(False, description="Issue a new admin token into the token file at start")
    workers: bool = Field(True, description="Run the scheduling loop and the reconciler")
    scheduler_process: bool | None = Field(None, description="Run the scheduling loop in a process of its own "
                                           "(on another core than the API); with the local (or fake) executor. "
                                           "Default: when this machine has more than one CPU")
    reconciler_process: bool | None = Field(None, description="Run the reconciler in a process of its own too (local "
                                            "or fake executor, no notebook warm pool). Default: when this machine "
                                            "has more than one CPU")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("hold_after_s", mode="before")
    @classmethod
    def _hold_off(cls, value: object) -> object:
        """The word off (or none, in any case) switches holds off."""
        return None if isinstance(value, str) and value.strip().lower() in ("off", "none") else value

    @field_validator("home", mode="after")
    @classmethod
    def _home_is_absolute(cls, value: Path) -> Path:
        return _expand(value)

    @property
    def is_multi_user(self) -> bool:
        """True when workloads run as their users' OS identities: `multi_user`, by default when root."""
        return self.multi_user if self.multi_user is not None else os.geteuid() == 0

    @property
    def trusts_users(self) -> bool:
        """True when users of several projects may share the pool: multi-user isolation, or `trust_users`."""
        return self.is_multi_user or self.trust_users

    def user_mode_text(self) -> str:
        """One line saying whether workloads are isolated from each other and from the server."""
        if self.is_multi_user:
            return ("multi-user pool: each workload runs as its user's OS identity (projects are OS groups); the "
                    "server's state is private to it")
        trust = (" (--trust-users: users of several projects allowed)" if self.trust_users else
                 "; users of more than one project are refused unless the server runs with --trust-users")
        return ("single-user pool: every workload runs as the server's OS user and can read the server's files, "
                "the admin token included, and every other workload's; run the server as root for isolation"
                + trust)

    @property
    def resolved_database_url(self) -> str:
        """The database URL (SQLite in `home` unless `database_url` is set)."""
        return self.database_url or f"sqlite:///{self.home / 'gpupool.db'}"

    @property
    def token_file(self) -> Path:
        """Where the first start writes the admin token (mode 0600)."""
        return self.home / "token"

    @property
    def logs_dir(self) -> Path:
        """Where replicas' output goes."""
        return self.home / "logs"

    @property
    def storage_dir(self) -> Path:
        """Root of the storage scopes (users/, projects/, shared)."""
        return self.home / "storage"

    @property
    def executor_dir(self) -> Path:
        """The executor's own state (pid files, exit codes)."""
        return self.home / "executor"
