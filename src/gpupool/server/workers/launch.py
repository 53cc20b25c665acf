"""Building the ReplicaLaunch of each replica of a scheduled workload: command, environment, directories.

The environment of a replica is, later entries winning: the spec's env (workload, then role), the identity
variables (GPUPOOL_WORKLOAD_ID, GPUPOOL_REPLICA, ...), the rendezvous variables of a distributed job, its
storage scopes (GPUPOOL_USER_DIR, GPUPOOL_PROJECT_DIR, GPUPOOL_SHARED_DIR), the ports chosen for the ports its
spec names (GPUPOOL_PORT_<name>, and GPUPOOL_PORT for the first), and the GPU environment of its
allocation by sharing mode (`gpupool.gpu.sharing.gpu_environment`: device list, MPS, memory caps). The
command starts in the spec's `workdir`, else in the user's storage directory. In a multi-user pool the
replica runs as its user's OS identity (`LaunchSettings.accounts`) and its storage scopes are owned
accordingly. A pipeline step also gets its run's directory (GPUPOOL_RUN_DIR, GPUPOOL_STEP_DIR, GPUPOOL_OUTPUTS;
see `gpupool.server.services.pipelines.step_environment`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpupool.domain.errors import ValidationError
from gpupool.domain.nodes import Gpu
from gpupool.domain.specs import parse_spec
from gpupool.executors.base import ExecutorError, ReplicaLaunch, RunAs
from gpupool.executors.environment import DEFAULT_PATH, identity_env, merge_env
from gpupool.executors.os_accounts import OsAccounts
from gpupool.executors.rendezvous import rendezvous_env
from gpupool.executors.storage import ScopeOwners, StorageLayout, StorageScopes
from gpupool.gpu.sharing import SharingConfig, gpu_environment
from gpupool.server.environments import EnvironmentStore, Viewer, environment_env
from gpupool.server.notebook_keys import NotebookKeys, notebook_launch_env
from gpupool.server.services.arrays import array_env
from gpupool.server.services.pipelines import step_environment
from gpupool.server.services.sweep_study import SweepStudies
from gpupool.server.services.sweeps import trial_env
from gpupool.server.settings import Settings
from gpupool.store.convert import gpu_from_json, placement_from_json
from gpupool.store.orm import NodeRow, ReplicaRow, UserRow, WorkloadRow
from gpupool.store.repos import accounts


@dataclass(frozen=True, slots=True)
class LaunchSettings:
    """Where logs go, the storage tree replicas get their scopes from, the GPU sharing set-up, and in a
    multi-user pool the OS accounts replicas run as (None: as the server's own user); the notebook key signs
    the Jupyter token of notebooks; `environments` holds the Python environments specs name."""

    logs_dir: Path
    storage: StorageLayout
    sharing: SharingConfig
    accounts: OsAccounts | None = None
    extra_env: Callable[[Session, WorkloadRow], Mapping[str, str]] | None = None  # e.g. a sweep trial's variables
    notebook_keys: NotebookKeys | None = None
    environments: EnvironmentStore | None = None


def launch_settings(settings: Settings, sharing: SharingConfig, keys: NotebookKeys, environments: EnvironmentStore,
                    studies: SweepStudies) -> LaunchSettings:
    """The launch set-up of a server with `settings` (the same in its process and in a reconciler process of
    its own): logs and storage under its home, OS accounts in a multi-user pool, and a sweep trial's and an
    array task's variables (a trial reports to the server's own address)."""
    storage = StorageLayout(settings.home)
    accounts = OsAccounts(settings.os_user_prefix, settings.os_group_prefix, settings.os_user_map,
                          lambda user: str(storage.user_dir(user))) if settings.is_multi_user else None
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = f"http://{host}:{settings.port}"
    return LaunchSettings(settings.logs_dir, storage, sharing, accounts, notebook_keys=keys, environments=environments,
                          extra_env=lambda session, row: trial_env(session, studies, url, row)
                          | array_env(session, row))


def executor_workload_id(row: WorkloadRow) -> str:
    """The workload id the executor sees (and GPUPOOL_WORKLOAD_ID)."""
    return str(row.id)


@dataclass(frozen=True)
class LaunchContext:
    """What the launches of several workloads read alike: project names, and their users and nodes by key.
    It also keeps, for the launches built with it (one reconciler pass), each node's decoded cards and each
    (user, project)'s prepared storage scopes: a burst of one user's jobs checks its directories once per pass,
    not once per replica."""

    project_names: Mapping[int, str]
    users: Mapping[int, UserRow]
    nodes: Mapping[str, NodeRow]
    cards: dict[str, list[Gpu]] = field(default_factory=dict)
    scopes: dict[tuple[str, str, bool, ScopeOwners | None], StorageScopes] = field(default_factory=dict)

    def node_cards(self, name: str) -> list[Gpu]:
        """The cards of node `name` (none when it is not in `nodes`), decoded once."""
        found = self.cards.get(name)
        if found is None:
            row = self.nodes.get(name)
            found = self.cards[name] = [gpu_from_json(g) for g in row.gpus] if row is not None else []
        return found

    def storage_scopes(self, storage: StorageLayout, user: UserRow, project: str,
                       owners: ScopeOwners | None) -> StorageScopes:
        """`storage.prepare` for `user` in `project`, run once per key for the launches of this context."""
        key = (user.name, project, user.is_admin, owners)
        found = self.scopes.get(key)
        if found is None:
            found = self.scopes[key] = storage.prepare(user.name, project, admin=user.is_admin, owners=owners)
        return found


def launch_context(session: Session, rows: Sequence[WorkloadRow],
                   replicas: Mapping[int, Sequence[ReplicaRow]]) -> LaunchContext:
    """The context for launching `rows` (with their current replicas, by workload id), in three queries
    whatever their number (a burst or a job array starts hundreds in one pass)."""
    user_ids = sorted({row.user_id for row in rows})
    node_names = sorted({r.node for run in replicas.values() for r in run if r.node})
    users = {u.id: u for u in session.scalars(select(UserRow).where(UserRow.id.in_(user_ids)))} if user_ids else {}
    found = session.scalars(select(NodeRow).where(NodeRow.name.in_(node_names))) if node_names else []
    return LaunchContext(accounts.project_names(session), users, {n.name: n for n in found})


def build_launches(session: Session, row: WorkloadRow, replicas: Sequence[ReplicaRow],
                   settings: LaunchSettings, context: LaunchContext | None = None) -> list[ReplicaLaunch]:
    """One ReplicaLaunch per replica of the current run (in replica-number order). ValidationError when the
    workload cannot be launched (a node vanished, a bad working directory). `context`: from `launch_context`
    for this workload among others (read for this one alone when None)."""
    context = context or launch_context(session, [row], {row.id: replicas})
    spec = parse_spec(row.spec)
    user = context.users.get(row.user_id)
    project = context.project_names.get(row.project_id)
    if user is None or project is None:
        raise ValidationError("the workload's user or project no longer exists")
    run_as: RunAs | None = None
    owners = None
    if settings.accounts is not None:
        try:
            run_as = settings.accounts.run_as(user.name, project, user.is_admin)
            owners = ScopeOwners(run_as.uid, run_as.gid, settings.accounts.admins_gid())
        except ExecutorError as error:
            raise ValidationError(f"cannot give user {user.name!r} an OS identity: {error}") from None
    scopes = context.storage_scopes(settings.storage, user, project, owners)
    step_env = step_environment(session, row, settings.storage, project, owners)  # pipeline steps only
    ordered = sorted(replicas, key=lambda r: r.number)
    placements = [placement_from_json(r.placement) for r in ordered]
    node_rows = {n: context.nodes.get(n) for n in {r.node for r in ordered}}
    missing = sorted(n for n, found in node_rows.items() if found is None)
    if missing:
        raise ValidationError(f"node {', '.join(missing)} is no longer part of the pool")
    addresses = {name: found.address for name, found in node_rows.items() if found is not None}
    kind = spec.rendezvous()
    rendezvous = rendezvous_env(kind, placements, addresses, [int(p) for p in row.rendezvous_ports or []])
    cwd = Path(spec.workdir) if spec.workdir else scopes.user_dir
    roles = {r.role: r for r in spec.roles}
    workload_id = executor_workload_id(row)
    extra = settings.extra_env(session, row) if settings.extra_env is not None else {}
    launches = []
    for replica, placement, rdv in zip(ordered, placements, rendezvous, strict=True):
        role = roles[replica.role]
        cards = context.node_cards(replica.node)
        ports = chosen_ports(replica)
        env = gpu_environment(placement.gpus, cards, settings.sharing, replica.id).merged_into(merge_env(
            spec.env_for(role), identity_env(workload_id, replica.number, replica.role, row.attempt - 1, replica.node),
            rdv, scopes.env(), step_env, port_env(spec.ports, ports), extra,
            notebook_launch_env(spec.kind.value, row.id, row.attempt, addresses[replica.node], settings.notebook_keys),
            environment_env(settings.environments, spec.environment, DEFAULT_PATH,
                            Viewer(user.name, user.is_admin))))
        launches.append(ReplicaLaunch(
            workload_id=workload_id, replica=replica.number, role=replica.role, command=spec.command_for(role),
            env=env, cwd=cwd, log_dir=settings.logs_dir / workload_id, node=replica.node,
            gpu_indices=tuple(g.index for g in placement.gpus), labels={"project": project, "user": user.name},
            attempt=row.attempt - 1, read_only_paths=scopes.read_only_paths(), ports=ports,
            node_address=addresses[replica.node], run_as=run_as, notebook=spec.kind.value == "notebook"))
    return launches


def chosen_ports(replica: ReplicaRow) -> dict[int, int]:
    """Port named in the spec -> port chosen for it on the replica's node (at bind time)."""
    return {int(name): int(e["port"]) for name, e in (replica.endpoints or {}).items()}


def port_env(named: Sequence[int], chosen: dict[int, int]) -> dict[str, str]:
    """GPUPOOL_PORT_<name> for each port the spec names, and GPUPOOL_PORT for the first one."""
    env = {f"GPUPOOL_PORT_{name}": str(chosen[name]) for name in named if name in chosen}
    if named and named[0] in chosen:
        env["GPUPOOL_PORT"] = str(chosen[named[0]])
    return env
