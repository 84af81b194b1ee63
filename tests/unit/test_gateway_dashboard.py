"""The read-only dashboard: the pages as pure functions, and the routes on a real Gateway on
loopback whose StaticView holds an account (tests/harness/dashboard.py): who may look, what the
pages show, and that nothing from the cluster can inject HTML."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from graft.gateway import dashboard
from harness.dashboard import ACCOUNT, CURVE, EVIL, OTHER, SHA, DashboardWorld, running_world


@pytest.fixture
def world() -> Iterator[DashboardWorld]:
    with running_world() as w:
        yield w


def client(world: DashboardWorld, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=world.url, headers=headers, timeout=10, follow_redirects=False)


ACCOUNT_PAGE = f"/dashboard/accounts/{ACCOUNT}"
JOB_PAGE = f"{ACCOUNT_PAGE}/fine-tuning-jobs/tune-support"


def polyline_points(page: str) -> list[tuple[float, float]]:
    found = re.search(r'<polyline[^>]* points="([^"]*)"', page)
    assert found is not None, "no polyline on the page"
    return [(float(x), float(y)) for x, y in (p.split(",") for p in found[1].split())]


# --- who may look ------------------------------------------------------------------------------


def test_logging_in_sets_a_strict_cookie_and_goes_to_the_account(world: DashboardWorld) -> None:
    with client(world) as http:
        answer = http.post("/dashboard/login", data={"key": world.key.key})
        assert answer.status_code == 303
        assert answer.headers["Location"] == ACCOUNT_PAGE
        cookie = answer.headers["Set-Cookie"]
        assert cookie.startswith(f"{dashboard.COOKIE}={world.key.key}")
        for attribute in ("HttpOnly", "SameSite=Strict", "Path=/dashboard"):
            assert attribute in cookie
        page = http.get(ACCOUNT_PAGE)  # the client sends the cookie back
        assert page.status_code == 200
        assert "tune-support" in page.text
        assert http.get("/dashboard/").headers["Location"] == ACCOUNT_PAGE
        out = http.post("/dashboard/logout")
        assert out.status_code == 303
        assert http.get(ACCOUNT_PAGE).headers["Location"] == "/dashboard/"


def test_a_wrong_key_stays_on_the_login_form_saying_why(world: DashboardWorld) -> None:
    with client(world) as http:
        answer = http.post("/dashboard/login", data={"key": "graft_nonsense"})
        assert answer.status_code == 401
        assert "Malformed API key" in answer.text
        assert "Set-Cookie" not in answer.headers
        assert 'name="key"' in answer.text


@pytest.mark.parametrize("path", [ACCOUNT_PAGE, JOB_PAGE, f"{ACCOUNT_PAGE}/deployments/chat"])
def test_no_key_or_a_bad_one_goes_to_the_login_form(world: DashboardWorld, path: str) -> None:
    for key in (None, "graft_nonsense", world.key.key[:-1] + "x"):
        with client(world, key) as http:
            answer = http.get(path)
            assert answer.status_code == 303, key
            assert answer.headers["Location"] == "/dashboard/"
    with client(world) as http:
        http.cookies.set(dashboard.COOKIE, "not-a-key", path="/dashboard")
        assert http.get(path).status_code == 303


def test_a_form_posted_from_another_site_is_refused(world: DashboardWorld) -> None:
    with client(world) as http:
        for origin in ("https://evil.example", "null"):
            answer = http.post(
                "/dashboard/login", data={"key": world.key.key}, headers={"Origin": origin}
            )
            assert answer.status_code == 403, origin
            assert "Set-Cookie" not in answer.headers
        own = http.post(
            "/dashboard/login", data={"key": world.key.key}, headers={"Origin": world.url}
        )
        assert own.status_code == 303
        assert (
            http.post("/dashboard/logout", headers={"Origin": "https://evil.example"}).status_code
            == 403
        )
        assert http.get(ACCOUNT_PAGE).status_code == 200  # still logged in


def test_a_long_body_is_not_a_key(world: DashboardWorld) -> None:
    with client(world) as http:
        answer = http.post("/dashboard/login", data={"key": "x" * 10_000})
        assert answer.status_code == 400
        assert "too long" in answer.text


def test_another_accounts_key_gets_403(world: DashboardWorld) -> None:
    with client(world, world.other_key.key) as http:
        answer = http.get(ACCOUNT_PAGE)
        assert answer.status_code == 403
        assert f"belongs to account &#x27;{OTHER}&#x27;" in answer.text
        assert "tune-support" not in answer.text
        assert http.get(f"/dashboard/accounts/{OTHER}").status_code == 200
    with client(world, world.key.key) as http:
        answer = http.get(f"/dashboard/accounts/{OTHER}/deployments/secret-dep")
        assert answer.status_code == 403
        assert "secret-dep" not in answer.text


def test_a_serviceaccount_of_the_account_may_look(world: DashboardWorld) -> None:
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
    world.view.tokens[token] = ACCOUNT
    with client(world, token) as http:
        assert http.get(ACCOUNT_PAGE).status_code == 200
        assert http.get(f"/dashboard/accounts/{OTHER}").status_code == 403
    with client(world, token.replace("c2ln", "eHh4")) as http:  # not one the cluster vouches for
        assert http.get(ACCOUNT_PAGE).status_code == 303


def test_every_page_forbids_scripts_and_framing(world: DashboardWorld) -> None:
    with client(world, world.key.key) as http:
        for path in ("/dashboard/", ACCOUNT_PAGE, JOB_PAGE, f"{ACCOUNT_PAGE}/datasets/nope"):
            answer = http.get(path)
            assert answer.headers["Content-Security-Policy"].startswith("default-src 'none';")
            assert answer.headers["X-Frame-Options"] == "DENY"
            assert answer.headers["Cache-Control"] == "no-store"


# --- what the pages show -----------------------------------------------------------------------


def test_the_account_page_lists_every_kind_with_its_state(world: DashboardWorld) -> None:
    with client(world, world.key.key) as http:
        page = http.get(ACCOUNT_PAGE).text
    assert 'href="/dashboard/accounts/acme/deployments/chat"' in page
    assert "1/2" in page  # one of the two replicas is ready
    assert "<code>acme-tuned</code>" in page  # what the ready replica says it serves
    assert "tuned-on-chat" in page
    assert "Loaded" not in page
    assert SHA in page
    assert "support.jsonl" in page
    assert 'href="/dashboard/accounts/acme/fine-tuning-jobs/tune-support"' in page
    assert '<progress value="6" max="20"></progress> 6/20' in page
    assert '<span class="state ok">Ready</span>' in page
    assert '<span class="state wait">Training</span>' in page
    assert "secret-dep" not in page  # the other account's
    assert f'content="{dashboard.REFRESH_SECONDS}"' in page


def test_the_job_page_plots_the_loss_curve(world: DashboardWorld) -> None:
    with client(world, world.key.key) as http:
        page = http.get(JOB_PAGE).text
    points = polyline_points(page)
    assert len(points) == len(CURVE)
    xs, ys = [x for x, _ in points], [y for _, y in points]
    assert xs == sorted(xs)
    assert len(set(xs)) == len(xs)
    # SVG's y grows downwards: the first (highest) loss at the top, a falling loss goes down.
    assert ys == sorted(ys)
    assert ys[0] < ys[-1]
    top, bottom = ys[0], ys[-1]
    # Proportional: loss 2.4 (step 3) sits at (3.2 - 2.4) / (3.2 - 1.5) of the height.
    assert ys[2] == pytest.approx(top + (bottom - top) * 0.8 / 1.7, abs=0.2)
    for label in ("step 1", "step 6", ">3.2<", ">1.5<"):
        assert label in page
    assert "ETA" in page
    assert "42 s" in page
    assert 'href="/dashboard/accounts/acme/datasets/support-chats"' in page
    assert 'href="/dashboard/accounts/acme/deployments/chat"' in page
    assert "step 6 of 20" in page  # the Ready condition's message


def test_the_deployment_and_dataset_pages_link_to_what_they_relate_to(
    world: DashboardWorld,
) -> None:
    with client(world, world.key.key) as http:
        dep = http.get(f"{ACCOUNT_PAGE}/deployments/chat").text
        data = http.get(f"{ACCOUNT_PAGE}/datasets/support-chats").text
        missing = http.get(f"{ACCOUNT_PAGE}/deployments/nope")
    assert "chat-0" in dep
    assert "chat-1" in dep
    assert "tuned-on-chat" in dep
    assert "1 of 2 ready" in dep
    assert 'href="/dashboard/accounts/acme/fine-tuning-jobs/tune-support"' in data
    assert SHA in data
    assert missing.status_code == 404
    assert "no Deployment" in missing.text


def test_a_model_page_links_its_base_deployments_and_the_job_that_made_it(
    world: DashboardWorld,
) -> None:
    with client(world, world.key.key) as http:
        job = http.get(JOB_PAGE).text
        assert 'href="/dashboard/accounts/acme/models/tuned"' in job  # the output model
        assert 'href="/dashboard/accounts/acme/models/base"' in job
        model = http.get(f"{ACCOUNT_PAGE}/models/tuned").text
    assert 'href="/dashboard/accounts/acme/models/base"' in model
    assert 'href="/dashboard/accounts/acme/deployments/chat"' in model
    assert 'href="/dashboard/accounts/acme/fine-tuning-jobs/tune-support"' in model


def test_nothing_from_the_cluster_injects_html(world: DashboardWorld) -> None:
    with client(world, world.key.key) as http:
        # A Model's display name a member chose: shown as text on its page.
        pages = [http.get(ACCOUNT_PAGE).text, http.get(f"{ACCOUNT_PAGE}/models/tuned").text]
        link = re.search(r'href="(/dashboard/accounts/acme/fine-tuning-jobs/evil)"', pages[0])
        assert link is not None
        answer = http.get(link[1].replace("&amp;", "&"))
        assert answer.status_code == 200
        pages.append(answer.text)
    for page in pages:
        assert "<script>" not in page
        assert "<img" not in page
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page


def test_a_curve_needs_two_good_points() -> None:
    assert 'id="no-curve"' in dashboard.loss_chart(None)
    assert 'id="no-curve"' in dashboard.loss_chart([[1, 2.0]])
    assert 'id="no-curve"' in dashboard.loss_chart([[1, "x"], [2, float("nan")], "junk"])
    flat = dashboard.loss_chart([[1, 2.0], [5, 2.0]])
    assert polyline_points(flat)
    assert "step 5" in flat
    assert EVIL not in dashboard.login_page(EVIL)


def test_references_link_only_to_the_accounts_own_objects() -> None:
    assert dashboard.ref_id("chat", "acme", "deployments") == "chat"
    assert dashboard.ref_id("accounts/acme/deployments/chat", "acme", "deployments") == "chat"
    assert dashboard.ref_id("accounts/other/deployments/chat", "acme", "deployments") is None
    assert dashboard.ref_id("accounts/acme/models/chat", "acme", "deployments") is None
    assert dashboard.ref_id(None, "acme", "deployments") is None
