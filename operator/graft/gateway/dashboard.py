"""The read-only dashboard of an account, served by the gateway under /dashboard/.

What a person wants to see without kubectl: the account's Deployments with their replicas and
what each ready replica serves (the Prober asked it), DeployedModels, Datasets with their
signature (sha256, file name), FineTuningJobs with their progress and loss curve, every object's
conditions, and links between related objects. Everything comes from the watch cache (`View`)
and the Prober; nothing is ever written, so any role of the account may look.

Server-rendered HTML: the page functions below take plain data and return a string (tested
without a server), every value from the cluster goes through `html.escape`, the loss curve is an
inline SVG polyline, and a meta refresh every few seconds keeps a page live. No JavaScript, no
template engine, nothing fetched from elsewhere, so the Content-Security-Policy can forbid all
of it.

Who may look: the holder of one of the account's API keys (pasted into the login form once, then
an HttpOnly, SameSite=Strict cookie scoped to /dashboard; or an `Authorization: Bearer` header),
or a Kubernetes ServiceAccount the gateway accepts for that account (TokenReview, as for
completions). Another account's key gets a 403 page; no key, or one that no longer works (revoked,
expired), goes back to the login form.
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

from aiohttp import web

from graft.api.kinds import Plural
from graft.gateway import apikeys
from graft.gateway.bodies import read_at_most

if TYPE_CHECKING:
    from graft.gateway.server import View

log = logging.getLogger(__name__)

COOKIE = "graft_key"
BASE = "/dashboard"
REFRESH_SECONDS = 5
MAX_LOGIN_BODY = 4096
"""A login form holds one API key (about 70 characters)."""
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
"""On every dashboard answer: nothing but the page's own inline style runs or loads, no other
site frames it, no proxy or browser cache keeps an account's page, and no other site learns a
page's path. Referrer-Policy same-origin, not no-referrer: with no-referrer Chromium sends the
login form's Origin as "null", which `_cross_site` must refuse."""


@dataclass(frozen=True)
class Replica:
    """A model-server pod of a Deployment as the dashboard shows it."""

    name: str
    ready: bool
    serves: tuple[str, ...]  # what its GET /v1/models listed when last asked (ready ones only)


# --- pure rendering ----------------------------------------------------------------------------


def e(value: Any) -> str:
    """Any value as escaped HTML text (quotes too: values also end up in attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def account_url(account: str) -> str:
    return f"{BASE}/accounts/{quote(account, safe='')}"


SEGMENTS = {Plural.FINE_TUNING_JOBS: "fine-tuning-jobs"}
"""A kind's segment in a page's path where it is not its plural."""


def object_url(account: str, plural: str, name: str) -> str:
    segment = SEGMENTS.get(Plural(plural), plural)
    return f"{account_url(account)}/{segment}/{quote(name, safe='')}"


def ref_id(ref: str | None, account: str, plural: str) -> str | None:
    """The ID of a reference (an ID, or a full name accounts/<a>/<plural>/<id>) to an object of
    `account`, or None when it names another account's object (no page of ours shows it)."""
    if not ref:
        return None
    parts = ref.split("/")
    if len(parts) == 1:
        return ref
    if len(parts) == 4 and parts[0] == "accounts" and parts[1] == account and parts[2] == plural:
        return parts[3]
    return None


def _link(account: str, plural: str, ref: str | None) -> str:
    """A reference as a link to its page when it is ours, else as text."""
    if not ref:
        return "—"
    target = ref_id(ref, account, plural)
    if target is None:
        return e(ref)
    return f'<a href="{e(object_url(account, plural, target))}">{e(ref)}</a>'


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _name(obj: Mapping[str, Any]) -> str:
    return str(_meta(obj).get("name", ""))


def _spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("spec") or {}


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("status") or {}


def _conditions(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [c for c in _status(obj).get("conditions") or [] if isinstance(c, Mapping)]


def state(obj: Mapping[str, Any]) -> str:
    """One word for where an object is: Succeeded or Failed once a job ended, else Ready, else
    the Ready condition's reason (Pending when there is none yet)."""
    found = {str(c.get("type")): c for c in _conditions(obj)}
    for final in ("Failed", "Succeeded"):
        if found.get(final, {}).get("status") == "True":
            return final
    ready = found.get("Ready")
    if ready is None:
        return "Pending"
    if ready.get("status") == "True":
        return "Ready"
    return str(ready.get("reason") or "NotReady")


def _badge(word: str) -> str:
    tone = {"Ready": "ok", "Succeeded": "ok", "Failed": "bad"}.get(word, "wait")
    return f'<span class="state {tone}">{e(word)}</span>'


STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1rem;align-items:center}
header a{color:#fff}header form{margin-left:auto}
main{padding:1rem 1.2rem;max-width:72rem}
table{border-collapse:collapse;width:100%;background:#fff;margin-bottom:1.2rem}
th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #e3e6eb;vertical-align:top}
th{background:#eef0f4;font-weight:600}
code{font-size:.85em;word-break:break-all}
.state{padding:.05rem .45rem;border-radius:.6rem;font-size:.85em;white-space:nowrap}
.ok{background:#d7f5dd;color:#11622a}.bad{background:#fbdcdc;color:#8a1414}
.wait{background:#fff1c9;color:#6b4e00}
.error{background:#fbdcdc;padding:.6rem;border-radius:.3rem}
progress{width:20rem}svg{background:#fff;border:1px solid #e3e6eb}
"""


def page(title: str, body: str, *, account: str | None = None, refresh: bool = False) -> str:
    """A whole HTML document around `body` (already HTML); `title` is text."""
    head = [
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)} · Graft</title>",
        f"<style>{STYLE}</style>",
    ]
    if refresh:
        head.append(f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">')
    nav = "<strong>Graft</strong>"
    if account is not None:
        nav += (
            f' <a href="{e(account_url(account))}">account {e(account)}</a>'
            f'<form method="post" action="{BASE}/logout"><button>Log out</button></form>'
        )
    return (
        '<!doctype html>\n<html lang="en"><head>'
        + "".join(head)
        + f"</head><body><header>{nav}</header><main><h1>{e(title)}</h1>{body}</main>"
        + "</body></html>\n"
    )


def login_page(problem: str | None = None) -> str:
    error = f'<p class="error" id="problem">{e(problem)}</p>' if problem else ""
    form = (
        f'<form method="post" action="{BASE}/login">'
        '<p><label for="key">API key of the account</label><br>'
        '<input id="key" name="key" type="password" size="60" autocomplete="off" '
        'placeholder="graft_..." required></p>'
        '<p><button id="login" type="submit">Show the dashboard</button></p></form>'
        "<p>The key is kept in a cookie of this browser for these pages only; it gives read "
        "access to its account's dashboard, nothing more here.</p>"
    )
    return page("Log in", error + form)


def message_page(title: str, message: str, account: str | None = None) -> str:
    return page(title, f'<p class="error">{e(message)}</p>', account=account)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    """A table of cells that are already HTML."""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f"<p>{e(empty)}</p>"
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def conditions_table(obj: Mapping[str, Any]) -> str:
    rows = [
        (
            e(c.get("type")),
            e(c.get("status")),
            e(c.get("reason")),
            e(c.get("message")),
            e(c.get("lastTransitionTime")),
        )
        for c in _conditions(obj)
    ]
    return "<h2>Conditions</h2>" + _table(
        ("Type", "Status", "Reason", "Message", "Since"), rows, "No conditions yet."
    )


def _replicas_cell(replicas: Sequence[Replica]) -> str:
    ready = sum(1 for r in replicas if r.ready)
    return f"{ready}/{len(replicas)}"


def _serves(replicas: Sequence[Replica]) -> str:
    served = sorted({m for r in replicas if r.ready for m in r.serves})
    return ", ".join(f"<code>{e(m)}</code>" for m in served) or "—"


def _progress_cell(obj: Mapping[str, Any]) -> str:
    prog = _status(obj).get("progress") or {}
    if not isinstance(prog, Mapping) or "totalSteps" not in prog:
        return "—"
    step, total = _int(prog.get("step")), _int(prog.get("totalSteps"))
    return f'<progress value="{step}" max="{max(total, 1)}"></progress> {step}/{total}'


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return 0


def account_page(
    account: str,
    objects: Mapping[str, Sequence[Mapping[str, Any]]],
    replicas: Mapping[str, Sequence[Replica]],
) -> str:
    """The overview: `objects` by plural, `replicas` by Deployment ID."""
    deployments = [
        (
            _link(account, Plural.DEPLOYMENTS, _name(d)),
            _badge(state(d)),
            _link(account, Plural.MODELS, _spec(d).get("baseModel")),
            e(_replicas_cell(replicas.get(_name(d), ())))
            + f" (spec {_int(_spec(d).get('replicas'))})",
            _serves(replicas.get(_name(d), ())),
        )
        for d in objects.get(Plural.DEPLOYMENTS, ())
    ]
    deployed = [
        (
            e(_name(m)),
            _badge(state(m)),
            _link(account, Plural.MODELS, _spec(m).get("model")),
            _link(account, Plural.DEPLOYMENTS, _spec(m).get("deployment")),
            e(_status(m).get("servedName")),
        )
        for m in objects.get(Plural.DEPLOYED_MODELS, ())
    ]
    datasets = [
        (
            _link(account, Plural.DATASETS, _name(d)),
            _badge(state(d)),
            e(_status(d).get("filename") or _spec(d).get("filename")),
            f"<code>{e(_status(d).get('sha256'))}</code>",
            e(_status(d).get("exampleCount")),
        )
        for d in objects.get(Plural.DATASETS, ())
    ]
    jobs = [
        (
            _link(account, Plural.FINE_TUNING_JOBS, _name(j)),
            _badge(state(j)),
            _progress_cell(j),
            e(_loss(j)),
            _link(account, Plural.DATASETS, _spec(j).get("dataset")),
        )
        for j in objects.get(Plural.FINE_TUNING_JOBS, ())
    ]
    body = (
        '<h2 id="deployments">Deployments</h2>'
        + _table(
            ("Deployment", "State", "Base model", "Replicas ready", "Serves"),
            deployments,
            "No Deployments.",
        )
        + '<h2 id="deployedmodels">DeployedModels</h2>'
        + _table(
            ("DeployedModel", "State", "Model", "Deployment", "Served as"),
            deployed,
            "No DeployedModels.",
        )
        + '<h2 id="datasets">Datasets</h2>'
        + _table(("Dataset", "State", "File name", "sha256", "Examples"), datasets, "No Datasets.")
        + '<h2 id="finetuningjobs">Fine-tuning jobs</h2>'
        + _table(("Job", "State", "Progress", "Loss", "Dataset"), jobs, "No fine-tuning jobs.")
    )
    return page(f"Account {account}", body, account=account, refresh=True)


def _loss(job: Mapping[str, Any]) -> str:
    prog = _status(job).get("progress") or {}
    loss = prog.get("loss") if isinstance(prog, Mapping) else None
    if loss is None:
        loss = _status(job).get("finalLoss")
    return "—" if loss is None else f"{float(loss):.4f}"


def _fields(rows: Iterable[tuple[str, str]]) -> str:
    """A two-column table of label (text) and value (HTML)."""
    return (
        "<table>" + "".join(f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"
    )


def model_page(account: str, model: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]]) -> str:
    name = _name(model)
    spec, status = _spec(model), _status(model)
    summary = _fields(
        [
            ("State", _badge(state(model))),
            ("Display name", e(spec.get("displayName") or "—")),
            ("Kind", e(spec.get("kind"))),
            ("Base model", _link(account, Plural.MODELS, spec.get("baseModel"))),
            ("Public", e(spec.get("public", False))),
            ("LoRA rank", e(status.get("loraRank") or "—")),
            (
                "Loaded in",
                ", ".join(
                    _link(account, Plural.DEPLOYMENTS, d) for d in status.get("deployments") or []
                )
                or "—",
            ),
        ]
    )
    made_by = [
        j
        for j in jobs
        if ref_id(_spec(j).get("outputModel"), account, Plural.MODELS) == name
        or ref_id(_status(j).get("outputModel"), account, Plural.MODELS) == name
    ]
    trained = _table(
        ("Job", "State"),
        [(_link(account, Plural.FINE_TUNING_JOBS, _name(j)), _badge(state(j))) for j in made_by],
        "No fine-tuning job of this account made it.",
    )
    body = summary + "<h2>Trained by</h2>" + trained + conditions_table(model)
    return page(f"Model {name}", body, account=account)


def deployment_page(
    account: str,
    deployment: Mapping[str, Any],
    replicas: Sequence[Replica],
    deployed_models: Sequence[Mapping[str, Any]],
) -> str:
    name = _name(deployment)
    spec, status = _spec(deployment), _status(deployment)
    summary = _fields(
        [
            ("State", _badge(state(deployment))),
            ("Base model", _link(account, Plural.MODELS, spec.get("baseModel"))),
            ("Engine", e(spec.get("engine"))),
            ("Replicas (spec)", e(spec.get("replicas"))),
            ("Replicas ready", e(_replicas_cell(replicas))),
            ("Addons enabled", e(spec.get("enableAddons"))),
            (
                "Addons (status)",
                ", ".join(f"<code>{e(a)}</code>" for a in status.get("addons") or []) or "—",
            ),
        ]
    )
    pods = _table(
        ("Replica", "Ready", "Serves"),
        [
            (
                e(r.name),
                _badge("Ready" if r.ready else "NotReady"),
                ", ".join(f"<code>{e(m)}</code>" for m in r.serves) or "—",
            )
            for r in replicas
        ],
        "No replicas.",
    )
    mine = [
        m
        for m in deployed_models
        if ref_id(_spec(m).get("deployment"), account, Plural.DEPLOYMENTS) == name
    ]
    models = _table(
        ("DeployedModel", "State", "Model", "Served as", "Loaded on"),
        [
            (
                e(_name(m)),
                _badge(state(m)),
                _link(account, Plural.MODELS, _spec(m).get("model")),
                e(_status(m).get("servedName")),
                e(_status(m).get("loadedReplicas")),
            )
            for m in mine
        ],
        "No DeployedModels.",
    )
    body = (
        summary
        + '<h2 id="replicas">Replicas</h2>'
        + pods
        + '<h2 id="deployedmodels">DeployedModels</h2>'
        + models
        + conditions_table(deployment)
    )
    return page(f"Deployment {name}", body, account=account, refresh=True)


def dataset_page(
    account: str, dataset: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]]
) -> str:
    name = _name(dataset)
    spec, status = _spec(dataset), _status(dataset)
    summary = _fields(
        [
            ("State", _badge(state(dataset))),
            ("Format", e(spec.get("format"))),
            ("File name", e(status.get("filename") or spec.get("filename"))),
            ("sha256", f"<code>{e(status.get('sha256'))}</code>"),
            ("Size (bytes)", e(status.get("sizeBytes"))),
            ("Examples", e(status.get("exampleCount"))),
        ]
    )
    problems = status.get("errors") or []
    errors = (
        "<h2>Problems found</h2><ul>" + "".join(f"<li>{e(p)}</li>" for p in problems) + "</ul>"
        if problems
        else ""
    )
    users = [
        j
        for j in jobs
        if name
        in (
            ref_id(_spec(j).get("dataset"), account, Plural.DATASETS),
            ref_id(_spec(j).get("evaluationDataset"), account, Plural.DATASETS),
        )
    ]
    used = _table(
        ("Job", "State"),
        [(_link(account, Plural.FINE_TUNING_JOBS, _name(j)), _badge(state(j))) for j in users],
        "No fine-tuning job uses it.",
    )
    body = summary + errors + "<h2>Fine-tuning jobs using it</h2>" + used
    return page(f"Dataset {name}", body + conditions_table(dataset), account=account)


def loss_chart(curve: Any, width: int = 640, height: int = 260) -> str:
    """The loss curve ([step, loss] points) as an inline SVG: a polyline, with the first and
    last step under the x axis and the lowest and highest loss beside the y axis. Points that are
    not pairs of finite numbers are skipped (the status was written by someone else's code)."""
    points: list[tuple[float, float]] = []
    for p in curve if isinstance(curve, list) else []:
        if isinstance(p, list) and len(p) == 2:
            try:
                x, y = float(p[0]), float(p[1])
            except (TypeError, ValueError):
                continue
            if math.isfinite(x) and math.isfinite(y):
                points.append((x, y))
    if len(points) < 2:
        return '<p id="no-curve">No loss curve yet (it appears after the second step).</p>'
    left, right, top, bottom = 70, 20, 15, 40
    x0, x1 = points[0][0], points[-1][0]
    lo, hi = min(y for _, y in points), max(y for _, y in points)
    span_x = (x1 - x0) or 1.0
    span_y = (hi - lo) or 1.0
    plot_w, plot_h = width - left - right, height - top - bottom

    def at(x: float, y: float) -> str:
        px = left + (x - x0) / span_x * plot_w
        py = top + (hi - y) / span_y * plot_h
        return f"{px:.1f},{py:.1f}"

    line = " ".join(at(x, y) for x, y in points)
    base_y = top + plot_h
    return (
        f'<svg id="loss-curve" role="img" aria-label="training loss by step" '
        f'xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">'
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base_y}" stroke="#888"/>'
        f'<line x1="{left}" y1="{base_y}" x2="{width - right}" y2="{base_y}" stroke="#888"/>'
        f'<polyline fill="none" stroke="#2f6fdb" stroke-width="2" points="{line}"/>'
        f'<text x="{left}" y="{height - 20}" font-size="12" text-anchor="middle">'
        f"step {x0:g}</text>"
        f'<text x="{width - right}" y="{height - 20}" font-size="12" text-anchor="end">'
        f"step {x1:g}</text>"
        f'<text x="{left - 6}" y="{top + 4}" font-size="12" text-anchor="end">{hi:.4g}</text>'
        f'<text x="{left - 6}" y="{base_y}" font-size="12" text-anchor="end">{lo:.4g}</text>'
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 4}" font-size="12" '
        f'text-anchor="middle">step</text>'
        f'<text x="12" y="{top + plot_h / 2:.0f}" font-size="12" '
        f'transform="rotate(-90 12 {top + plot_h / 2:.0f})" text-anchor="middle">loss</text>'
        "</svg>"
    )


def job_page(account: str, job: Mapping[str, Any]) -> str:
    name = _name(job)
    spec, status = _spec(job), _status(job)
    prog = status.get("progress") or {}
    prog = prog if isinstance(prog, Mapping) else {}
    eta = prog.get("etaSeconds")
    summary = _fields(
        [
            ("State", _badge(state(job))),
            ("Progress", _progress_cell(job)),
            ("Epoch", f"{e(prog.get('epoch', '—'))}/{e(prog.get('totalEpochs', '—'))}"),
            ("Loss", e(_loss(job))),
            ("ETA", "—" if eta is None else e(f"{_int(eta)} s")),
            ("Updated", e(prog.get("updatedAt", "—"))),
            ("Base model", _link(account, Plural.MODELS, spec.get("baseModel"))),
            ("Dataset", _link(account, Plural.DATASETS, spec.get("dataset"))),
            ("Evaluation dataset", _link(account, Plural.DATASETS, spec.get("evaluationDataset"))),
            (
                "Output model",
                _link(account, Plural.MODELS, status.get("outputModel") or spec.get("outputModel")),
            ),
            ("Deployment", _link(account, Plural.DEPLOYMENTS, spec.get("deployment"))),
            ("DeployedModel", e(status.get("deployedModel") or "—")),
        ]
    )
    body = summary + "<h2>Loss</h2>" + loss_chart(prog.get("lossCurve")) + conditions_table(job)
    running = state(job) not in ("Succeeded", "Failed")
    return page(f"Fine-tuning job {name}", body, account=account, refresh=running)


# --- the routes --------------------------------------------------------------------------------


Review = Callable[[str], Awaitable[str | None]]


class Dashboard:
    """The dashboard's routes on a Gateway: `view` is the watch cache, `served` what each pod
    serves (pod uid -> model names, the Prober's latest), `review` the account of a
    ServiceAccount token (None: not one the gateway accepts)."""

    def __init__(
        self,
        view: View,
        served: Callable[[], Mapping[str, frozenset[str]]],
        review: Review,
        is_jwt: Callable[[str], bool],
    ) -> None:
        self.view = view
        self.served = served
        self.review = review
        self.is_jwt = is_jwt

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_get(BASE, self.to_login)
        router.add_get(f"{BASE}/", self.login_form)
        router.add_post(f"{BASE}/login", self.login)
        router.add_post(f"{BASE}/logout", self.logout)
        account = f"{BASE}/accounts/{{account}}"
        router.add_get(account, self.overview)
        router.add_get(account + "/deployments/{name}", self.deployment)
        router.add_get(account + "/fine-tuning-jobs/{name}", self.job)
        router.add_get(account + "/datasets/{name}", self.dataset)
        router.add_get(account + "/models/{name}", self.model)

    # --- authentication --------------------------------------------------------------------

    def _key(self, token: str | None) -> apikeys.StoredKey | None:
        try:
            return apikeys.authenticate(token, self.view.catalog().key, datetime.now(UTC))
        except apikeys.KeyRejected:
            return None

    async def _viewer(self, request: web.Request) -> str | None:
        """The account the caller may view, or None (no credential, or one that fails)."""
        bearer = apikeys.bearer_token(request.headers.get("Authorization"))
        if bearer is not None and self.is_jwt(bearer):
            return await self.review(bearer)
        key = self._key(bearer or request.cookies.get(COOKIE))
        return None if key is None else key.account

    async def _guard(self, request: web.Request) -> str | web.Response:
        """The account of the page when the caller may see it, else the answer to send."""
        account = request.match_info["account"]
        viewer = await self._viewer(request)
        if viewer is None:
            return _redirect(f"{BASE}/")
        if viewer != account:
            log.info("403 %s: a credential of account %s", request.path, viewer)
            return _html(
                message_page(
                    "Not your account",
                    f"This key belongs to account '{viewer}', not '{account}'. Log out and log in "
                    f"with a key of '{account}', or go to your own account's page.",
                    account=viewer,
                ),
                status=403,
            )
        return account

    # --- pages -----------------------------------------------------------------------------

    async def to_login(self, _: web.Request) -> web.Response:
        return _redirect(f"{BASE}/")

    async def login_form(self, request: web.Request) -> web.Response:
        viewer = await self._viewer(request)
        if viewer is not None:
            return _redirect(account_url(viewer))
        return _html(login_page())

    async def login(self, request: web.Request) -> web.Response:
        refused = _cross_site(request)
        if refused is not None:
            return refused
        raw = await read_at_most(request, MAX_LOGIN_BODY + 1)
        if len(raw) > MAX_LOGIN_BODY:
            return _html(login_page("That is not an API key (too long)."), status=400)
        presented = (parse_qs(raw.decode("utf-8", "replace")).get("key") or [""])[0].strip()
        try:
            key = apikeys.authenticate(
                presented or None, self.view.catalog().key, datetime.now(UTC)
            )
        except apikeys.KeyRejected as exc:
            log.info("dashboard login refused: %s", exc.reason)
            return _html(login_page(exc.message), status=401)
        response = _redirect(account_url(key.account))
        response.set_cookie(
            COOKIE,
            presented,
            path=BASE,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return response

    async def logout(self, request: web.Request) -> web.Response:
        refused = _cross_site(request)
        if refused is not None:
            return refused
        response = _redirect(f"{BASE}/")
        response.del_cookie(COOKIE, path=BASE)
        return response

    def _objects(self, account: str) -> dict[str, list[dict[str, Any]]]:
        return {
            kind: list(self.view.objects(kind, account))
            for kind in (
                Plural.DEPLOYMENTS,
                Plural.DEPLOYED_MODELS,
                Plural.DATASETS,
                Plural.FINE_TUNING_JOBS,
            )
        }

    def _replicas(self, account: str) -> dict[str, list[Replica]]:
        served = self.served()
        found: dict[str, list[Replica]] = {}
        prefix = f"accounts/{account}/deployments/"
        for pod in sorted(self.view.pods(), key=lambda p: p.name):
            if not pod.deployment.startswith(prefix):
                continue
            serves = tuple(sorted(served.get(pod.uid, frozenset()))) if pod.ready else ()
            found.setdefault(pod.deployment[len(prefix) :], []).append(
                Replica(pod.name, pod.ready, serves)
            )
        return found

    async def overview(self, request: web.Request) -> web.Response:
        account = await self._guard(request)
        if isinstance(account, web.Response):
            return account
        return _html(account_page(account, self._objects(account), self._replicas(account)))

    def _one(self, account: str, kind: str, name: str) -> dict[str, Any] | None:
        return next((o for o in self.view.objects(kind, account) if _name(o) == name), None)

    async def _detail(
        self,
        request: web.Request,
        plural: str,
        kind: str,
        render: Callable[[str, dict[str, Any]], str],
    ) -> web.Response:
        """The page of one object of the account: the guard, the lookup (a 404 page when there
        is no such object), then `render(account, obj)`."""
        account = await self._guard(request)
        if isinstance(account, web.Response):
            return account
        name = request.match_info["name"]
        obj = self._one(account, plural, name)
        if obj is None:
            return _missing(account, kind, name)
        return _html(render(account, obj))

    async def deployment(self, request: web.Request) -> web.Response:
        def render(account: str, obj: dict[str, Any]) -> str:
            models = self.view.objects(Plural.DEPLOYED_MODELS, account)
            replicas = self._replicas(account).get(_name(obj), [])
            return deployment_page(account, obj, replicas, models)

        return await self._detail(request, Plural.DEPLOYMENTS, "Deployment", render)

    async def job(self, request: web.Request) -> web.Response:
        return await self._detail(request, Plural.FINE_TUNING_JOBS, "FineTuningJob", job_page)

    async def model(self, request: web.Request) -> web.Response:
        def render(account: str, obj: dict[str, Any]) -> str:
            return model_page(account, obj, self.view.objects(Plural.FINE_TUNING_JOBS, account))

        return await self._detail(request, Plural.MODELS, "Model", render)

    async def dataset(self, request: web.Request) -> web.Response:
        def render(account: str, obj: dict[str, Any]) -> str:
            return dataset_page(account, obj, self.view.objects(Plural.FINE_TUNING_JOBS, account))

        return await self._detail(request, Plural.DATASETS, "Dataset", render)


def _cross_site(request: web.Request) -> web.Response | None:
    """A 403 page for a form posted from another site (its Origin names another host): nobody
    else's page may log a visitor in with a key of the attacker's choosing, or out. A request
    without Origin (a script, an old browser) is let through: the cookie is SameSite=Strict
    anyway."""
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    if origin != "null" and urlsplit(origin).netloc == request.host:
        return None
    return _html(
        message_page("Refused", "This form can only be sent from the dashboard's own pages."),
        status=403,
    )


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(
        text=body, status=status, content_type="text/html", charset="utf-8", headers=HEADERS
    )


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={**HEADERS, "Location": location})


def _missing(account: str, kind: str, name: str) -> web.Response:
    return _html(
        message_page(
            "Not found", f"Account '{account}' has no {kind} '{name}' (now).", account=account
        ),
        status=404,
    )
