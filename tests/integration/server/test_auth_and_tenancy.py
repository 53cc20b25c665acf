"""Tokens, roles and project boundaries, over HTTP."""

from __future__ import annotations

import hashlib
import stat
import threading
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, create_engine, event, text
from tests.integration.server.conftest import ServerFactory
from tests.support.servers import TestServer

import gpupool
from gpupool.client.http import Client
from gpupool.domain.errors import AuthenticationError, ConflictError, NotFoundError, PermissionDeniedError
from gpupool.executors.fake import FakeExecutor

SPEC = "command: sleep 100\nproject: {project}\n"


@pytest.fixture
def teams(admin: Client, server: TestServer) -> dict[str, Client]:
    """Projects vision and nlp; alice (member of vision), bob (member of nlp), victor (viewer of vision)."""
    admin.create_project("vision")
    admin.create_project("nlp")
    tokens = {name: admin.create_user(name, project=project, role=role).token
              for name, project, role in (("alice", "vision", "member"), ("bob", "nlp", "member"),
                                          ("victor", "vision", "viewer"))}
    return {name: server.client(token) for name, token in tokens.items()}


def test_the_first_start_writes_an_admin_token_readable_only_by_its_owner(server: TestServer, admin: Client) -> None:
    mode = stat.S_IMODE(server.settings.token_file.stat().st_mode)
    assert mode == 0o600
    me = admin.whoami()
    assert me.name == "admin" and me.is_admin
    assert [(m.project, m.role) for m in me.projects] == [("default", "admin")]


def test_the_servers_state_is_private_to_its_os_user(server: TestServer) -> None:
    settings = server.settings
    assert stat.S_IMODE(settings.home.stat().st_mode) == 0o700  # a single-user pool: nothing to traverse
    for directory in (settings.logs_dir, settings.executor_dir):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    if settings.resolved_database_url.startswith("sqlite:///"):
        database = Path(settings.resolved_database_url.removeprefix("sqlite:///"))
        assert stat.S_IMODE(database.stat().st_mode) == 0o600  # it holds every spec's env values


def test_calls_without_a_valid_token_are_refused(server: TestServer) -> None:
    response = httpx.get(f"{server.url}/api/v1/workloads")
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    assert response.headers["www-authenticate"] == "Bearer"
    for header in ("Bearer nope", "Basic abc", "Bearer", "Bearer " + "x" * 5000):
        r = httpx.get(f"{server.url}/api/v1/workloads", headers={"Authorization": header})
        assert r.status_code == 401, header
    with server.client("gpp_not-a-token") as client, pytest.raises(AuthenticationError, match="not valid"):
        client.list_workloads()
    assert httpx.get(f"{server.url}/healthz").json()["status"] == "ok"


def test_tokens_are_stored_hashed_shown_once_and_revocable(server: TestServer, admin: Client) -> None:
    created = admin.create_token("laptop")
    assert created.token.startswith("gpp_") and created.info.prefix == created.token[:10]
    listed = {t.id: t for t in admin.tokens()}
    assert created.info.id in listed and not hasattr(listed[created.info.id], "token")
    engine = create_engine(server.settings.resolved_database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        stored = [row[0] for row in conn.execute(text("SELECT token_hash FROM tokens"))]
    engine.dispose()
    assert created.token not in stored and all(len(h) == 64 for h in stored)
    with server.client(created.token) as laptop:
        assert laptop.whoami().name == "admin"
        admin.revoke_token(created.info.id)
        with pytest.raises(AuthenticationError):
            laptop.whoami()


def test_members_see_and_manage_only_their_projects_workloads(teams: dict[str, Client], admin: Client) -> None:
    alice, bob = teams["alice"], teams["bob"]
    mine = alice.submit(SPEC.format(project="vision")).workload.id
    theirs = bob.submit(SPEC.format(project="nlp")).workload.id
    assert [w.id for w in alice.list_workloads(status=[]).items] == [mine]
    assert [w.id for w in bob.list_workloads(status=[]).items] == [theirs]
    assert {w.id for w in admin.list_workloads(status=[]).items} == {mine, theirs}
    for call in (lambda: alice.get_workload(theirs), lambda: alice.cancel(theirs), lambda: list(alice.logs(theirs))):
        with pytest.raises(NotFoundError, match=f"workload {theirs} not found"):
            call()
    with pytest.raises(NotFoundError, match="workload 999999 not found"):
        alice.get_workload(999999)
    assert bob.get_workload(theirs).status != "cancelled"
    with pytest.raises(Exception, match="unknown project 'nlp'"):
        alice.submit(SPEC.format(project="nlp"))
    with pytest.raises(NotFoundError):
        alice.list_workloads(project="nlp")


def test_viewers_read_but_do_not_change(teams: dict[str, Client]) -> None:
    alice, victor = teams["alice"], teams["victor"]
    wid = alice.submit(SPEC.format(project="vision")).workload.id
    assert victor.get_workload(wid).id == wid
    with pytest.raises(PermissionDeniedError, match="viewers cannot cancel"):
        victor.cancel(wid)
    with pytest.raises(PermissionDeniedError, match="only view project vision"):
        victor.submit(SPEC.format(project="vision"))
    assert alice.cancel(wid).status == "cancelled"


def test_only_administrators_manage_the_pool(teams: dict[str, Client]) -> None:
    alice = teams["alice"]
    for call, what in ((lambda: alice.create_project("x"), "create projects"),
                       (lambda: alice.create_user("eve"), "create users"),
                       (lambda: alice.update_queue("vision", guaranteed={"gpu": 4}), "change queues"),
                       (lambda: alice.tokens("bob"), "other users' tokens")):
        with pytest.raises(PermissionDeniedError, match=what):
            call()
    assert [u.name for u in alice.users()] == ["alice"]
    assert [p.name for p in alice.projects()] == ["vision"]
    with pytest.raises(PermissionDeniedError, match="admins of project vision"):
        alice.set_member("vision", "bob", "member")


def test_project_admins_manage_their_members(teams: dict[str, Client], admin: Client) -> None:
    admin.set_member("vision", "alice", "admin")
    project = teams["alice"].set_member("vision", "bob", "viewer")
    assert {(m.user, m.role) for m in project.members} >= {("alice", "admin"), ("bob", "viewer")}
    assert teams["bob"].list_workloads(project="vision").total == 0
    teams["alice"].remove_member("vision", "bob")
    with pytest.raises(NotFoundError):
        teams["bob"].list_workloads(project="vision")
    with pytest.raises(ConflictError, match="already exists"):
        admin.create_user("alice")
    with pytest.raises(NotFoundError, match="does not exist"):
        admin.create_user("zed", project="nope")


def test_what_an_admin_changes_applies_to_the_next_call_of_a_caller_already_seen(teams: dict[str, Client],
                                                                                 admin: Client) -> None:
    """Callers, project names and queues are kept between calls while accounts and queues are unchanged
    (store/setup_cache.py); each change below must reach the very next call of a caller seen before it."""
    alice = teams["alice"]
    alice.submit("name: a\ncommand: sleep 1\n")  # alice, her memberships, vision and its queue: kept
    admin.update_queue("vision", limit={"cpu": 1})
    answer = alice.submit("name: b\ncommand: sleep 1\nresources: {cpu: 2}\n")
    assert answer.warnings and "cpu 2 > limit 1" in answer.warnings[0]  # the queue's new limit, not the kept one
    admin.set_member("vision", "alice", "viewer")
    with pytest.raises(PermissionDeniedError, match="only view project vision"):
        alice.submit("name: c\ncommand: sleep 1\nproject: vision\n")
    admin.set_member("vision", "alice", "member")
    alice.submit("name: d\ncommand: sleep 1\n")
    admin.create_project("vision2")
    admin.set_member("vision2", "alice", "member")
    assert alice.submit("name: e\ncommand: sleep 1\nproject: vision2\n").workload.project == "vision2"
    admin.remove_member("vision", "alice")
    with pytest.raises(NotFoundError):
        alice.list_workloads(project="vision")


def test_a_new_admin_token_can_be_issued_at_start(server_factory: ServerFactory, fake: FakeExecutor) -> None:
    first = server_factory(executor=fake)
    old = first.admin_token
    first.stop()
    second = server_factory(executor=fake, home=first.settings.home, reset_admin_token=True)
    assert second.admin_token != old
    with second.client() as client:
        assert client.whoami().name == "admin"


def test_the_sdk_is_the_typed_client() -> None:
    assert gpupool.Client is Client


def test_a_single_user_pool_refuses_users_of_a_second_project_unless_trusted(server_factory: ServerFactory) -> None:
    server = server_factory(FakeExecutor(), trust_users=False)  # not multi-user: one OS identity for all
    with server.client() as admin:
        admin.create_project("vision")
        admin.create_project("nlp")
        alice = admin.create_user("alice", project="vision")
        assert alice.warning is not None and "single-user pool" in alice.warning
        admin.create_user("carol", project="vision")  # the same project: one team, fine
        with pytest.raises(ConflictError, match=r"single-user pool.*--trust-users"):
            admin.create_user("bob", project="nlp")
        admin.create_user("dave")
        with pytest.raises(ConflictError, match="single-user pool"):
            admin.set_member("nlp", "dave")
        admin.create_user("root2", admin=True, project="nlp")  # administrators see everything anyway
        assert {u.name for u in admin.users()} == {"admin", "alice", "carol", "dave", "root2"}
    server.stop()
    trusting = server_factory(FakeExecutor(), trust_users=True, home=server.settings.home)
    with trusting.client() as admin:
        admin.create_user("bob", project="nlp")


def test_a_service_token_reaches_no_proxy_console_or_other_project(teams: dict[str, Client], admin: Client,
                                                                   server: TestServer) -> None:
    """A service token calls its project's gateway only: the workload and notebook proxies, the console's
    sign-in and the API refuse it; viewers cannot make one; a token id out of range is a clear 422."""
    from gpupool.client.services import create_service_token, revoke_service_token  # noqa: PLC0415

    token = create_service_token(admin, "vision", "frontend").token
    bearer = {"Authorization": f"Bearer {token}"}
    engine = create_engine(server.settings.resolved_database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        stored = [tuple(row) for row in conn.execute(text("SELECT * FROM service_tokens"))]
    engine.dispose()
    assert stored and not any(token in str(value) for row in stored for value in row)  # only its SHA-256
    assert hashlib.sha256(token.encode()).hexdigest() in {value for row in stored for value in row}
    job = admin.submit(SPEC.format(project="vision")).workload.id
    for path in (f"/workloads/{job}/ports/8000/", f"/notebooks/{job}/lab", "/api/v1/whoami", "/metrics"):
        for headers in (bearer, {"Cookie": f"gpupool_token={token}"}):
            refused = httpx.get(server.url + path, headers=headers)
            assert refused.status_code == 401, (path, headers, refused.status_code, refused.text)
    signin = httpx.post(f"{server.url}/signin", data={"token": token})
    assert signin.status_code == 401 and "service token" in signin.text and "set-cookie" not in signin.headers
    with pytest.raises(PermissionDeniedError, match="admins of project vision"):
        create_service_token(teams["victor"], "vision", "sneaky")  # a viewer of the project
    with pytest.raises(PermissionDeniedError):
        create_service_token(teams["alice"], "vision", "sneaky")  # a member, not its admin
    with pytest.raises(NotFoundError):
        create_service_token(teams["bob"], "vision", "sneaky")  # not in the project at all
    huge = httpx.delete(f"{server.url}/api/v1/projects/vision/service-tokens/{2**70}",
                        headers={"Authorization": f"Bearer {server.admin_token}"})
    assert huge.status_code == 422, huge.text
    with pytest.raises(NotFoundError):
        revoke_service_token(admin, "nlp", 1)  # vision's token is not nlp's to revoke


def test_a_submit_is_authenticated_once_and_still_records_the_tokens_use(server: TestServer, admin: Client) -> None:
    """The body limit authenticates a request with a body before reading it; the route takes that caller
    rather than reading the token again (the token's user and their memberships in the same query), and a
    caller already seen is answered from the setup cache while accounts are unchanged (no lookup at all).
    A token's first use is still recorded (last_used_at), and a revoked token is refused at once."""
    created = admin.create_token("ci")
    lookups: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        worker = threading.current_thread().name.startswith("gpupool-")  # e.g. the launch reads the job's user
        if not worker and any(f"FROM {table}" in statement for table in ("tokens", "users", "memberships")):
            lookups.append(statement)

    url = server.settings.resolved_database_url.replace("postgresql://", "postgresql+psycopg://")
    engine = create_engine(url)
    with server.client(created.token) as ci:
        event.listen(Engine, "before_cursor_execute", count)
        try:
            ci.submit("name: first\ncommand: sleep 100\n")  # the token's first use: recorded
            first = len(lookups)
            ci.submit("name: second\ncommand: sleep 100\n")
            second = len(lookups) - first
        finally:
            event.remove(Engine, "before_cursor_execute", count)
        with engine.connect() as conn:
            used = conn.execute(text("SELECT last_used_at FROM tokens WHERE id = :id"), {"id": created.info.id})
            assert used.scalar_one() is not None
        engine.dispose()
        assert first >= 1 and second == 0, lookups  # by the body limit (and the use recorded), the first time only
        admin.revoke_token(created.info.id)
        with pytest.raises(AuthenticationError):
            ci.submit("name: third\ncommand: sleep 100\n")


def test_a_submits_answer_names_project_and_user_without_reading_them_again(server_factory: ServerFactory,
                                                                           fake: FakeExecutor) -> None:
    """The answer to a submit (single or batch, created or replayed) names the workload's project and user as
    `show` does; they come from the submit's own reads (the projects are resolved from the names the warm-up
    submit kept in the setup cache: no read of them at all)."""
    server = server_factory(executor=fake, workers=False)  # nothing moves the workloads between answer and show
    with server.client() as admin:
        admin.create_project("vision")
        token = admin.create_user("alice", project="vision", role="member").token
    projects: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "FROM projects" in statement:
            projects.append(statement)

    with server.client(token) as alice:
        alice.submit("name: warm\ncommand: sleep 1\nproject: vision\n")  # the token's first use is recorded
        event.listen(Engine, "before_cursor_execute", count)
        try:
            answer = alice.submit("name: a\ncommand: sleep 1\nproject: vision\n", idempotency_key="k1")
        finally:
            event.remove(Engine, "before_cursor_execute", count)
        replay = alice.submit("name: a\ncommand: sleep 1\nproject: vision\n", idempotency_key="k1")
        batch = alice.submit_batch(["name: b\ncommand: sleep 1\nproject: vision\n"]).items
        for item in (answer, replay, *batch):
            shown = alice.get_workload(item.workload.id)
            assert (item.workload.project, item.workload.user) == (shown.project, shown.user) == ("vision", "alice")
            assert item.workload.model_dump() == shown.model_dump()
    assert projects == []  # kept since the warm-up (the answer's view used to read them all again)


def test_a_new_jobs_answer_is_what_its_transaction_wrote(server_factory: ServerFactory, fake: FakeExecutor) -> None:
    """A submit that creates a job answers from its own transaction (no read of the workload's history after
    the commit) with what `show` then shows; a replay, an array and a batch item are answered alike."""
    server = server_factory(executor=fake, workers=False, gpus="4xA100-80GB")  # nothing moves them in between
    after_commit: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "FROM events" in statement and not threading.current_thread().name.startswith("gpupool-"):
            after_commit.append(statement)

    with server.client() as admin:
        admin.update_queue("default", limit={"gpu": 1})
        admin.submit("name: warm\ncommand: sleep 1\n")
        event.listen(Engine, "before_cursor_execute", count)
        try:
            fresh = [admin.submit("name: a\ncommand: sleep 1\n", idempotency_key="a"),
                     admin.submit("name: big\ncommand: sleep 1\nresources: {gpu: 2}\n"),
                     *admin.submit_batch(["name: b\ncommand: sleep 1\n", "name: c\ncommand: sleep 1\n"]).items]
        finally:
            event.remove(Engine, "before_cursor_execute", count)
        assert after_commit == []
        read = [admin.submit("name: a\ncommand: sleep 1\n", idempotency_key="a"),
                admin.submit("name: arr\ncommand: sleep 1\narray: 0-2\n")]
        assert [item.created for item in fresh + read] == [True, True, True, True, False, True]
        assert fresh[1].warnings and "gpu 2 > limit 1" in fresh[1].warnings[0]
        for item in fresh + read:
            shown = admin.get_workload(item.workload.id, tasks=0)
            assert item.workload.model_dump() == shown.model_dump()
            assert [e.reason for e in item.workload.events] == ["submitted by admin to queue default"]
