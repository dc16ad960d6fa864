"""The reviewer console in a real browser: Debian's chromium, headless, driven by Playwright, against
a real stack (every service, NATS, Redis, PostgreSQL, the provider simulator). A reviewer signs in,
decides one review of each kind, and each decision is checked where it matters: the review's row in
PostgreSQL and the final result the gateway published. A stale page is refused, a `<script>` prompt
is shown as text, the CSV export holds the audit rows, and a form without the session's CSRF token
is refused with nothing changed.

Playwright's synchronous API drives the browser from the test's thread, so the stack runs in an
event loop of its own thread (one stack and one browser for the module; a new browser context,
so a new cookie jar, per test)."""

from __future__ import annotations

import asyncio
import csv
import io
import shutil
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from shared.contracts import Status
from tests.support.fallback import sim_count
from tests.support.hitl import LETTER, REFUND, add_reviewer, audit, db_rows, reviews, wait_acted
from tests.support.stack import Simulator, Stack, copy_policy, new_env

# One worker runs the whole module under `make test`'s workers: one Playwright and one browser.
pytestmark = [pytest.mark.timeout(60), pytest.mark.xdist_group("hitl-console")]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SIM_KEYS = {"SB_OPENAI_SIM_API_KEY": "sk-test-openai", "SB_ANTHROPIC_SIM_API_KEY": "sk-test-anthropic"}


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """The machine's chromium (deploy/local/infra.sh installs it): Playwright never downloads one."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM}


# pytest-playwright starts Playwright for the whole session, but while its synchronous API is
# started its event loop counts as running in the main thread, and every asyncio test after this
# module would fail. So Playwright and the browser live for this module (still one browser for
# all of its tests); the plugin's own context and page fixtures build on these.
@pytest.fixture(scope="module")
def playwright(infra):  # infra first: it migrates with asyncio.run, impossible once Playwright runs
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser_type(playwright):
    return playwright.chromium


@pytest.fixture(scope="module")
def browser(browser_type, browser_type_launch_args):
    browser = browser_type.launch(**browser_type_launch_args)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def browser_context_args() -> dict:
    return {}


class Loop:
    """An asyncio loop in a thread of its own, for the stack while the test thread drives the browser."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="stack-loop", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Console:
    loop: Loop
    stack: Stack
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.stack['hitl'].api_port}"

    def url(self, path: str) -> str:
        return f"{self.base}/console{path}"

    def hold(self, prompt: str = "Refund order 7, please.", metadata: dict | None = None):
        """An invocation held by a review gate (pre: REFUND; post: LETTER)."""

        async def invoke():
            sb = await self.stack.client(agent="alice")
            return await sb.invoke("refunds", prompt, metadata=metadata or REFUND)

        held = self.loop.run(invoke())
        assert held.status is Status.PENDING_REVIEW, held
        return held

    def row(self, review_id: str) -> dict:
        [row] = self.loop.run(
            db_rows(self.stack, "select * from hitl_reviews where env = $1 and id = $2", review_id)
        )
        return row

    def final(self, invocation_id: str):
        """The final result of a held invocation, as the gateway published it."""

        async def result():
            sb = await self.stack.client()
            return await sb.result(invocation_id, wait=45)  # returns once published

        return self.loop.run(result(), timeout=50)

    def api(self, who: str, method: str, path: str, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        return httpx.request(method, f"{self.base}{path}", headers=headers, timeout=10, **kw)

    def model_calls(self) -> int:
        return self.loop.run(sim_count(self.stack, "openai-sim"))


@pytest.fixture(scope="module")
def console(infra, tmp_path_factory):
    loop = Loop()
    env = pytest.MonkeyPatch()
    sim = loop.run(Simulator().start())
    env.setenv("SB_SIMULATOR_URL", sim.url)
    for key, value in SIM_KEYS.items():
        env.setenv(key, value)
    stack = Stack(infra, new_env(), copy_policy(tmp_path_factory.mktemp("console")), sim)
    c = Console(loop, stack)
    try:
        loop.run(stack.start(hitl={"console_refresh_s": 0.2}), timeout=60)
        for name, queues in {
            "alice": ("payments", "payments-leads"),
            "bob": ("payments",),
            "carol": ("payments-leads",),
            "mallory": ("payments-leads",),
        }.items():
            c.tokens[name] = loop.run(add_reviewer(stack, name, *queues))
        yield c
    finally:
        loop.run(stack.close(), timeout=60)
        loop.run(sim.stop())
        env.undo()
        loop.close()


@pytest.fixture
def page(page: Page) -> Page:
    page.set_default_timeout(10_000)
    return page


def sign_in(page: Page, console: Console, who: str) -> None:
    page.goto(console.url("/"))
    page.get_by_label("Reviewer token").fill(console.tokens[who])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Inbox")).to_be_visible()


def open_review(page: Page, console: Console, review_id: str) -> None:
    page.goto(console.url(f"/reviews/{review_id}"))
    expect(page.locator("#status")).to_contain_text("pending")


# --- signing in -------------------------------------------------------------------------------


def test_sign_in_keeps_the_token_in_an_http_only_same_site_cookie_and_sign_out_clears_it(page, console):
    page.goto(console.url("/"))
    assert page.url == console.url("/sign-in")
    page.get_by_label("Reviewer token").fill("sbr_not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("That token is unknown or revoked.")

    sign_in(page, console, "bob")
    [cookie] = [c for c in page.context.cookies() if c["name"] == "sb_console"]
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/console")
    assert console.tokens["bob"] in cookie["value"]
    assert console.tokens["bob"] not in page.evaluate("document.cookie")  # no script can read it
    expect(page.get_by_text("Signed in as bob")).to_be_visible()

    page.get_by_role("button", name="Sign out").click()
    assert page.url == console.url("/sign-in")
    assert [c for c in page.context.cookies() if c["name"] == "sb_console"] == []
    page.goto(console.url("/"))
    assert page.url == console.url("/sign-in")


def test_inbox_shows_own_queues_oldest_first_marks_late_ones_and_refreshes_in_place(page, console):
    first, second = console.hold(), console.hold()
    console.loop.run(
        db_rows(
            console.stack,
            "update hitl_reviews set sla_deadline = now() - interval '1 second'"
            " where env = $1 and id = $2 returning id",
            first.review_id,
        )
    )
    sign_in(page, console, "bob")

    expect(page.locator("tr[data-queue]")).to_have_count(1)  # bob reviews payments only
    depth = len(
        console.loop.run(
            db_rows(
                console.stack,
                "select id from hitl_reviews where env = $1 and queue = 'payments' and state = 'pending'",
            )
        )
    )
    expect(page.locator("tr[data-queue=payments] .depth")).to_have_text(str(depth))
    expect(page.locator("tr[data-queue=payments] .badge")).to_contain_text("late")
    ids = page.locator("table.reviews tbody tr").evaluate_all("rows => rows.map(r => r.id)")
    assert ids.index(f"review-{first.review_id}") < ids.index(f"review-{second.review_id}")
    expect(page.locator(f"#review-{first.review_id}")).to_have_class("late")
    expect(page.locator(f"#review-{second.review_id}")).not_to_have_class("late")

    page.evaluate("window.notReloaded = true")
    third = console.hold()
    expect(page.locator(f"#review-{third.review_id}")).to_be_visible()
    assert page.evaluate("window.notReloaded") is True


# --- deciding ---------------------------------------------------------------------------------


def test_approve(page, console):
    held = console.hold()
    calls = console.model_calls()
    sign_in(page, console, "alice")
    page.locator(f"#review-{held.review_id} a").click()
    facts = page.locator("section.facts")
    expect(facts).to_contain_text("large-refund")
    expect(facts.locator("table.matched")).to_contain_text("metadata.amount")
    expect(facts.locator("table.matched")).to_contain_text("900")
    expect(facts).to_contain_text("escalate -> payments-leads")

    page.get_by_label("Comment (optional)").first.fill("parcel lost")
    page.get_by_role("button", name="Approve", exact=True).click()

    expect(page.locator("#notice")).to_have_text("You approved this review.")
    row = console.row(held.review_id)
    assert (row["state"], row["decided_by"], row["decided_kind"], row["reason"]) == (
        "approved",
        "alice",
        "human",
        "parcel lost",
    )
    assert console.final(held.invocation_id).status is Status.SUCCESS
    assert console.model_calls() == calls + 1


def test_reject_needs_a_reason(page, console):
    held = console.hold()
    calls = console.model_calls()
    sign_in(page, console, "alice")
    open_review(page, console, held.review_id)

    page.get_by_role("button", name="Reject").click()  # the browser holds it: the reason is required
    assert page.url == console.url(f"/reviews/{held.review_id}")
    csrf = page.locator("form.action input[name=csrf]").first.input_value()
    blank = page.request.post(
        console.url(f"/reviews/{held.review_id}/reject"), form={"csrf": csrf, "reason": "  "}
    )
    assert blank.status == 422 and "A reason is required" in blank.text()
    assert console.row(held.review_id)["state"] == "pending"

    page.get_by_label("Reason (required)").first.fill("not eligible: order older than 90 days")
    page.get_by_role("button", name="Reject").click()

    expect(page.locator("#notice")).to_have_text("You rejected this review.")
    row = console.row(held.review_id)
    assert (row["state"], row["decided_by"], row["reason"]) == (
        "rejected",
        "alice",
        "not eligible: order older than 90 days",
    )
    assert console.final(held.invocation_id).status is Status.REJECTED
    assert console.model_calls() == calls


def test_approve_with_edits_shows_the_diff_and_releases_the_edited_output(page, console):
    held = console.hold("Write to the customer about order 9.", metadata=LETTER)  # post gate
    original = console.row(held.review_id)
    sign_in(page, console, "alice")
    open_review(page, console, held.review_id)
    editor = page.get_by_label("The model's output")
    shown = page.locator("#output").inner_text()
    assert editor.input_value() == shown and shown.strip()

    edited = "Dear customer,\nyour refund for order 9 is on its way."
    editor.fill(edited)
    page.get_by_role("button", name="Show the change").click()
    diff = page.locator("#diff")
    added = ["+ Dear customer,", "+ your refund for order 9 is on its way."]
    expect(diff.locator(".add")).to_have_text(added)
    expect(diff.locator(".del").first).to_contain_text(shown.splitlines()[0])
    assert console.row(held.review_id)["state"] == "pending"  # nothing decided before confirming
    page.get_by_role("button", name="Approve with these edits").click()

    expect(page.locator("#notice")).to_have_text("You approved this review.")
    row = console.row(held.review_id)
    assert (row["state"], row["decided_by"], row["edited_output"]) == ("approved", "alice", edited)
    assert row["held"] == original["held"]  # what the model said is kept beside the edit
    final = console.final(held.invocation_id)
    assert (final.status, final.output) == (Status.SUCCESS, edited)


def test_escalate_then_the_two_person_queue_shows_who_approved_first(page, console):
    held = console.hold()
    sign_in(page, console, "alice")
    open_review(page, console, held.review_id)
    page.get_by_label("To queue").select_option("payments-leads")
    page.get_by_label("Reason (required)").nth(1).fill("over my limit")
    page.get_by_role("button", name="Escalate").click()

    expect(page.locator("#notice")).to_have_text("You escalated this review.")
    old, new = console.loop.run(reviews(console.stack, held.invocation_id))
    assert (old["state"], old["decided_by"], old["reason"], old["escalated_to"]) == (
        "escalated",
        "alice",
        "over my limit",
        new["id"],
    )
    assert (new["queue"], new["state"]) == ("payments-leads", "pending")
    expect(page.locator("#closed")).to_contain_text("escalated by alice")

    assert console.api("carol", "POST", f"/v1/reviews/{new['id']}/approve", json={}).status_code == 200
    open_review(page, console, new["id"])
    expect(page.locator("#approvals")).to_contain_text("carol approved first; one more is needed.")
    page.get_by_role("button", name="Approve", exact=True).click()

    expect(page.locator("#notice")).to_have_text("You approved this review.")
    row = console.row(new["id"])
    assert (row["state"], row["decided_by"]) == ("approved", "carol,alice")
    assert console.final(held.invocation_id).status is Status.SUCCESS


# --- refusals ---------------------------------------------------------------------------------


def test_a_stale_page_cannot_decide_and_says_so_without_losing_what_was_typed(page, console):
    held = console.hold()
    sign_in(page, console, "alice")
    open_review(page, console, held.review_id)
    reason = page.get_by_label("Reason (required)").first
    reason.fill("still typing this")

    assert console.api("bob", "POST", f"/v1/reviews/{held.review_id}/approve", json={}).status_code == 200
    expect(page.locator("#closed")).to_contain_text("approved by bob")  # the state part refreshed
    assert reason.input_value() == "still typing this"  # the form did not

    page.get_by_role("button", name="Approve", exact=True).click()
    expect(page.locator("#refused")).to_contain_text(f"review {held.review_id} is already approved (by bob)")
    row = console.row(held.review_id)
    assert (row["state"], row["decided_by"]) == ("approved", "bob")
    assert [a["reviewer"] for a in orjson.loads(row["approvals"])] == ["bob"]


def test_a_script_in_the_prompt_is_shown_as_text_and_never_run(page, console):
    prompt = '<script>window.injected = 1</script><img src=x onerror="window.injected = 2">Refund me'
    held = console.hold(prompt)
    sign_in(page, console, "alice")
    open_review(page, console, held.review_id)

    expect(page.locator("#message-0")).to_have_text(prompt)
    assert page.get_by_label("Message 1 (user)").input_value() == prompt
    assert page.evaluate("window.injected") is None
    assert page.locator("main script, main img").count() == 0


def test_post_without_the_csrf_token_is_403_and_changes_nothing(page, console):
    held = console.hold()
    sign_in(page, console, "alice")
    approve = console.url(f"/reviews/{held.review_id}/approve")

    missing = page.request.post(approve, form={"comment": "forged"})
    wrong = page.request.post(approve, form={"comment": "forged", "csrf": "0" * 64})
    assert (missing.status, wrong.status) == (403, 403)
    assert "CSRF" in missing.text()
    row = console.row(held.review_id)
    assert (row["state"], row["approvals"], row["reason"]) == ("pending", "[]", None)


def test_a_reviewer_outside_the_queue_is_refused_as_by_the_api(page, console):
    held = console.hold()
    sign_in(page, console, "mallory")  # payments-leads only
    shown = page.goto(console.url(f"/reviews/{held.review_id}"))
    assert shown.status == 403
    expect(page.get_by_role("alert")).to_contain_text("does not review queue 'payments'")
    csrf = page.locator("form.signout input[name=csrf]").input_value()
    forced = page.request.post(console.url(f"/reviews/{held.review_id}/approve"), form={"csrf": csrf})
    assert forced.status == 403
    assert console.row(held.review_id)["approvals"] == "[]"


# --- history and export -----------------------------------------------------------------------


def export(page: Page) -> list[dict]:
    """The CSV behind the history page's export link, as rows."""
    with page.expect_download() as download:
        page.locator("#export").click()
    text = download.value.path().read_bytes().decode()
    assert text.endswith("\r\n")
    return list(csv.DictReader(io.StringIO(text)))


def show(page: Page, **filters: str) -> None:
    for label, value in filters.items():
        field = page.get_by_label(label)
        if label in ("Queue", "Decision"):
            field.select_option(value)
        else:
            field.fill(value)
    page.get_by_role("button", name="Show").click()


def test_history_filters_and_their_csv_export_select_the_same_reviews(page, console):
    rejected, approved = console.hold(), console.hold()
    decide = [
        console.api("alice", "POST", f"/v1/reviews/{rejected.review_id}/reject", json={"reason": "no"}),
        console.api("bob", "POST", f"/v1/reviews/{approved.review_id}/approve", json={}),
    ]
    assert [r.status_code for r in decide] == [200, 200]
    for held in (rejected, approved):
        console.loop.run(wait_acted(console.stack, held.review_id))
    trail = {  # each review's audit rows as the test's decisions left them in PostgreSQL
        held.invocation_id: [
            (a["event"], a["actor"], a["decision"] or "")
            for a in console.loop.run(audit(console.stack, held.invocation_id))
        ]
        for held in (rejected, approved)
    }

    def exported(rows: list[dict]) -> dict[str, list[tuple]]:
        got: dict[str, list[tuple]] = {}
        for r in rows:
            if r["invocation_id"] in trail:
                got.setdefault(r["invocation_id"], []).append((r["event"], r["actor"], r["decision"]))
        return got

    def reviews_of(rows: list[dict]) -> list[dict]:
        ids = sorted({r["review_id"] for r in rows})
        return console.loop.run(
            db_rows(console.stack, "select * from hitl_reviews where env = $1 and id = any($2)", ids)
        )

    sign_in(page, console, "alice")
    page.get_by_role("link", name="History").click()
    expect(page.locator(f"#history-{rejected.review_id}")).to_be_visible()
    expect(page.locator(f"#history-{approved.review_id}")).to_be_visible()
    assert exported(export(page)) == trail

    show(page, Decision="rejected")
    expect(page.locator(f"#history-{rejected.review_id}")).to_contain_text("no")
    expect(page.locator(f"#history-{approved.review_id}")).to_have_count(0)
    rows = export(page)
    assert exported(rows) == {rejected.invocation_id: trail[rejected.invocation_id]}
    assert {r["decision"] for r in reviews_of(rows)} == {"rejected"}

    show(page, Decision="", Reviewer="bob")
    expect(page.locator(f"#history-{approved.review_id}")).to_be_visible()
    expect(page.locator(f"#history-{rejected.review_id}")).to_have_count(0)
    rows = export(page)
    assert exported(rows) == {approved.invocation_id: trail[approved.invocation_id]}
    assert all("bob" in r["decided_by"].split(",") for r in reviews_of(rows))

    show(page, Reviewer="", Queue="payments-leads")
    expect(page.locator(f"#history-{approved.review_id}")).to_have_count(0)
    rows = export(page)
    assert exported(rows) == {}
    assert {r["queue"] for r in reviews_of(rows)} <= {"payments-leads"}

    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    show(page, Queue="", **{"From (UTC)": yesterday, "To (UTC, inclusive)": yesterday})
    expect(page.get_by_text("No decided reviews match.")).to_be_visible()
    assert exported(export(page)) == {}


def test_the_history_and_its_export_hold_only_the_reviewers_own_queues(page, console):
    ours, theirs = console.hold(), console.hold()
    moved = console.api(
        "alice",
        "POST",
        f"/v1/reviews/{theirs.review_id}/escalate",
        json={"to": "payments-leads", "reason": "big"},
    )
    assert moved.status_code == 200, moved.text
    [_, lead] = console.loop.run(reviews(console.stack, theirs.invocation_id))
    decide = [
        console.api("bob", "POST", f"/v1/reviews/{ours.review_id}/reject", json={"reason": "no"}),
        console.api("carol", "POST", f"/v1/reviews/{lead['id']}/reject", json={"reason": "no"}),
    ]
    assert [r.status_code for r in decide] == [200, 200]
    for review_id in (ours.review_id, lead["id"]):
        console.loop.run(wait_acted(console.stack, review_id))

    sign_in(page, console, "bob")  # bob reviews payments only; the lead's review is in payments-leads
    page.get_by_role("link", name="History").click()
    expect(page.locator(f"#history-{ours.review_id}")).to_be_visible()
    expect(page.locator(f"#history-{lead['id']}")).to_have_count(0)
    rows = export(page)
    assert ours.review_id in {r["review_id"] for r in rows}
    assert lead["id"] not in {r["review_id"] for r in rows}
    assert {r["queue"] for r in rows if r["review_id"] == ours.review_id} == {"payments"}

    for path in ("/history?queue=payments-leads", "/history.csv?queue=payments-leads"):
        refused = page.request.get(console.url(path))
        assert refused.status == 403 and "does not review queue" in refused.text(), path


# Copies of one decided review, one an hour from FIRST: reviews (and their `decided` audit rows)
# in a past month that no other test touches, enough to pass the page's cap.
FIRST = datetime(2020, 1, 15, tzinfo=UTC)
COPY = """
with copies as (
    insert into hitl_reviews (id, env, invocation_id, stage, workflow, agent, rule, matched,
        config_version, queue, owner, queue_spec, state, request, requested_at, sla_deadline,
        deadline, decided_at, decided_by, decided_kind, decision, reason, acted_at, action, outcome)
    select md5(r.id || g), r.env, 'cap-' || md5(r.id || g), r.stage, r.workflow, r.agent, r.rule,
        r.matched, r.config_version, r.queue, r.owner, r.queue_spec, 'rejected', r.request,
        t - interval '1 minute', t + interval '1 hour', t + interval '2 hours', t, 'alice', 'human',
        'rejected', 'copy', t, r.action, r.outcome
    from hitl_reviews r, generate_series(1, $3) g,
        lateral (select $4::timestamptz + g * interval '1 hour' as t) x
    where r.env = $1 and r.id = $2
    returning *
)
insert into hitl_audit (env, ts, review_id, invocation_id, event, queue, owner, sla_deadline, deadline,
    actor, actor_kind, decision, reason)
select env, decided_at, id, invocation_id, 'decided', queue, owner, sla_deadline, deadline, 'alice',
    'human', 'rejected', 'copy' from copies
returning review_id
"""


def test_history_says_when_it_shows_only_the_first_500_and_the_export_holds_every_one(page, console):
    held = console.hold()
    decided = console.api("alice", "POST", f"/v1/reviews/{held.review_id}/reject", json={"reason": "no"})
    assert decided.status_code == 200
    console.loop.run(wait_acted(console.stack, held.review_id))
    copies = 501
    made = console.loop.run(db_rows(console.stack, COPY, held.review_id, copies, FIRST))
    created = {r["review_id"] for r in made}
    assert len(created) == copies

    sign_in(page, console, "alice")
    page.goto(console.url("/history?from=2020-01-01&to=2020-02-29"))
    expect(page.locator("table.history tbody tr")).to_have_count(500)
    expect(page.locator("#capped")).to_have_text(
        f"Showing the first 500 of {copies} decided reviews; narrow the range or the filters to see the rest."
    )
    rows = export(page)
    assert {r["review_id"] for r in rows} == created
    assert len(rows) == copies

    page.goto(console.url("/history?from=2020-01-15&to=2020-01-16"))
    within = sum(1 for g in range(1, copies + 1) if FIRST + timedelta(hours=g) < FIRST + timedelta(days=2))
    expect(page.locator("table.history tbody tr")).to_have_count(within)
    expect(page.locator("#capped")).to_have_count(0)
