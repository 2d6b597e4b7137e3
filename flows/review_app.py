"""``winnow review serve``: the review queue in the browser.

A small local FastAPI app (run by uvicorn) over the lake's ``review_queue``: one card per flagged
sample (thumbnail, given and suggested label, every scorer's score and rank, the explain flow's
panels when the run was explained), keyboard first, and every decision written to the queue at
once through :func:`winnow.tasks.review.decide` (the queue's one writer). The page is plain
HTML/CSS/JS shipped in the package (``winnow/tasks/review_web/``): no CDN, no build step.

Routes: ``/`` the page; ``/static/*`` its files; ``GET /api/queue`` the rows; ``GET /api/state``
their statuses (what other tabs polled for); ``GET /api/thumb`` and ``/api/explanation`` the
pictures; ``POST /api/decide`` one decision.
"""
# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at
# run time, and ``Request`` is imported inside :func:`create_app` (fastapi loads only for `serve`).
import ipaddress
import json
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
STATE_COLUMNS = ["status", "new_label", "decided_at", "decided_by"]
LOOPBACK_NAMES = {"localhost"}


def static_dir() -> Path:
    """The page's files, wherever the package is installed (editable or a wheel)."""
    from importlib.resources import files

    return Path(str(files("winnow.tasks") / "review_web"))


def review_url(run: str | None = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """The page's address (what the on-arrival report links to); ``run`` filters it to one run."""
    from urllib.parse import quote

    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{host}:{port}/" + (f"?run={quote(str(run))}" if run else "")


# ---------------------------------------------------------------- pure: the queue as the page sees it


def select_run(queue: pd.DataFrame, run: str | None, arrivals: pd.DataFrame | None = None) -> pd.DataFrame:
    """The rows of one run: ``run`` is a flow run id or batch id (or a prefix of either, 4+ chars),
    or an arrival's run id / MLflow run id (looked up in ``arrivals``). None = every row.

    Raises ``ValueError`` naming ``run`` when no queued row belongs to it.
    """
    if not run:
        return queue
    run = str(run).strip()
    if len(run) < 4:
        raise ValueError(f"--run {run!r}: give at least 4 characters of a run or batch id")
    batch_ids = set()
    if arrivals is not None and len(arrivals):
        for col in ("run_id", "mlflow_run_id", "flow_run_id", "batch_id"):
            if col in arrivals.columns:
                batch_ids |= set(arrivals.loc[arrivals[col].astype(str).str.startswith(run), "batch_id"].astype(str))
    hit = (queue["run_id"].astype(str).str.startswith(run) | queue["batch_id"].astype(str).str.startswith(run)
           | queue["batch_id"].astype(str).isin(batch_ids))
    if not hit.any():
        raise ValueError(f"--run {run!r}: no sample in review_queue belongs to that run or batch")
    return queue[hit]


def row_state(row: dict) -> dict:
    """What a decision changes, as JSON-ready values."""
    return {"status": str(row["status"]), "new_label": int(row["new_label"]),
            "decided_at": str(row["decided_at"] or ""), "decided_by": str(row["decided_by"] or "")}


def queue_payload(queue: pd.DataFrame, images: dict[str, bool], explained: set[str]) -> list[dict]:
    """One JSON object per row (in queue order) for the page.

    Parameters
    ----------
    queue : review_queue rows
    images : batch_id -> whether its samples draw as pictures
    explained : sample ids with an explanation image
    """
    from winnow.tasks import review

    by = review.flagged_by(queue)
    rows = []
    for rec, scorers in zip(queue.to_dict("records"), by):
        rows.append({
            "sample_id": str(rec["sample_id"]), "batch_id": str(rec["batch_id"]), "run_id": str(rec["run_id"]),
            "given_label": int(rec["given_label"]), "given_class": str(rec["given_class"]),
            "suggested_label": int(rec["suggested_label"]), "suggested_class": str(rec["suggested_class"]),
            "score": float(rec["score"]), "scores": json.loads(rec["scores"] or "{}"),
            "ranks": json.loads(rec["ranks"] or "{}"), "flagged_by": scorers,
            "created_at": str(rec["created_at"] or ""), **row_state(rec),
            "image": bool(images.get(str(rec["batch_id"]), False)),
            "explanation": str(rec["sample_id"]) in explained,
        })
    return rows


# ---------------------------------------------------------------- the app


def create_app(run: str | None = None, reviewer: str | None = None, loopback_only: bool = True):
    """The FastAPI app.

    Parameters
    ----------
    run : str, optional
        Show only this run's samples (see :func:`select_run`); a page's ``?run=`` overrides it.
    reviewer : str, optional
        The name decisions are recorded under when the page does not give one (default: the
        operating-system user).
    loopback_only : bool
        Refuse requests whose ``Host`` is not a loopback name (a web page elsewhere cannot reach
        the app through DNS rebinding); set False when serving on another interface.
    """
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles

    from winnow.tasks import review, review_media

    reviewer = (reviewer or review.default_reviewer()).strip()[:64]
    app = FastAPI(title="winnow review", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=static_dir()), name="static")

    @app.middleware("http")
    async def only_loopback_hosts(request: Request, call_next):
        host = urlsplit("//" + request.headers.get("host", "")).hostname or ""
        if loopback_only and not is_loopback(host):
            return JSONResponse({"error": f"host {host!r} refused: this server answers loopback names only"}, 403)
        return await call_next(request)

    def scoped(run_ref: str | None) -> pd.DataFrame:
        queue = review.read_queue()
        try:
            return select_run(queue, run_ref if run_ref is not None else run, _arrivals())
        except ValueError as exc:
            raise HTTPException(404, str(exc)) from None

    @app.get("/")
    def index():
        return FileResponse(static_dir() / "index.html", media_type="text/html")

    @app.get("/api/queue")
    def get_queue(run: str | None = None):
        queue = scoped(run)
        batch_ids = sorted(set(queue["batch_id"].astype(str)))
        images = {b: review_media.batch_has_images(b) for b in batch_ids}
        explained = set(review_media.explanation_images(queue["sample_id"].astype(str).tolist()))
        # JSONResponse directly: FastAPI's encoder walking 1,000 nested rows took ~0.5 s
        return JSONResponse({"reviewer": reviewer, "run": run, "rows": queue_payload(queue, images, explained),
                             "classes": {b: review_media.batch_classes(b) for b in batch_ids},
                             "progress": review.progress(queue["status"])})

    @app.get("/api/state")
    def get_state(run: str | None = None):
        queue = scoped(run)
        return JSONResponse({"rows": {str(r["sample_id"]): row_state(r) for r in queue.to_dict("records")},
                             "progress": review.progress(queue["status"])})

    @app.get("/api/thumb")
    def thumb(batch: str, id: str):  # noqa: A002 (the query parameter's name)
        png = review_media.sample_thumbnail(batch, id)
        if png is None:
            raise HTTPException(404, f"no image for sample {id!r} of batch {batch!r}")
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=86400, immutable"})

    @app.get("/api/explanation")
    def explanation(id: str):  # noqa: A002
        queue = review.read_queue()
        flagging = queue.loc[queue["sample_id"] == id, "run_id"].astype(str).tolist()
        found = review_media.explanation_images([id], {id: flagging[0]} if flagging else None)
        if id not in found:
            raise HTTPException(404, f"sample {id!r} has no explanation")
        return FileResponse(found[id], media_type="image/png")

    @app.post("/api/decide")
    async def decide(request: Request, run: str | None = None):
        # JSON only: a form post from another site cannot reach here without a CORS preflight
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "send the decision as application/json"}, 415)
        try:
            body = await request.json()
            sample_id, action = str(body["sample_id"]), str(body["action"])
            label = body.get("label")
            label = None if label is None else int(label)
            by = str(body.get("by") or reviewer).strip()[:64] or reviewer
            expect = body.get("expect")
            rows = review.decide([sample_id], action, label, by, None if expect is None else str(expect))
        except review.DecisionConflict as exc:
            return JSONResponse({"error": str(exc), "conflict": True, "sample_id": str(exc.row["sample_id"]),
                                 "state": row_state(exc.row), "progress": review.progress(scoped(run)["status"])}, 409)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # not an object, a field missing, ...
            return JSONResponse({"error": f"decision: {exc}"}, 400)
        return {"sample_id": sample_id, "state": row_state(rows.iloc[0].to_dict()),
                "progress": review.progress(scoped(run)["status"])}

    return app


def _arrivals() -> pd.DataFrame | None:
    from winnow.tasks import lake

    folder = lake.paths().lake / "arrivals"
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        return None
    return lake.sql("SELECT run_id, mlflow_run_id, flow_run_id, batch_id FROM arrivals")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address, IPv6 with or without brackets) is this machine only."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------- CLI (`winnow review ...`)


def add_commands(sub) -> dict:
    r = sub.add_parser("review", help="the review queue: list, accept, relabel, drop, export/import a CSV",
                       description="Record a reviewer's decisions on flagged samples; the next training uses them.")
    rs = r.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = rs.add_parser("list", help="show the queue")
    ls.add_argument("--status", default="pending", help="pending, accepted, relabelled, dropped or all")
    ls.add_argument("--format", choices=["table", "csv", "json"], default="table")
    for action, helptext in (("accept", "the given label is right"), ("drop", "remove the samples from training"),
                             ("pending", "undo a decision")):
        a = rs.add_parser(action, help=helptext)
        a.add_argument("ids", nargs="+", metavar="ID")
        a.add_argument("--by", help="who decided (default: your user name)")
    rl = rs.add_parser("relabel", help="the label is wrong: set a new one")
    rl.add_argument("ids", nargs="+", metavar="ID")
    rl.add_argument("--to", type=int, required=True, help="the new label (class index)")
    rl.add_argument("--by", help="who decided (default: your user name)")
    ex = rs.add_parser("export", help="write the queue to a CSV with a decision column to fill in")
    ex.add_argument("file")
    ex.add_argument("--status", default="pending", help="which rows (default pending; 'all' for every row)")
    im = rs.add_parser("import", help="apply the decisions of an edited export")
    im.add_argument("file")
    s = rs.add_parser("serve", help="review the queue in the browser (a local web app)",
                                  description="Serve the review page: one card per flagged sample, keyboard "
                                              "decisions written to review_queue at once.")
    s.add_argument("--run", help="only this run's samples (flow run id, batch id, arrival run id; a prefix will do)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free one)")
    s.add_argument("--host", default=DEFAULT_HOST,
                   help=f"interface to bind (default {DEFAULT_HOST}, this machine only). Another address, e.g. "
                        "0.0.0.0, lets other machines in: there is no login, anyone who reaches it can decide")
    s.add_argument("--reviewer", help="name decisions are recorded under (default: your user name; the page can change it)")
    return {"review": cmd_review}


def cmd_review(args) -> int:
    from winnow.flows.cli import print_frame
    from winnow.tasks import review

    if args.action == "serve":
        return cmd_serve(args)
    if args.action == "list":
        q = review.read_queue()
        if args.status != "all":
            q = q[q["status"] == args.status]
        print_frame(q[["sample_id", "batch_id", "given_label", "suggested_label", "score", "status", "new_label",
                       "decided_by"]], args.format, title=f"review queue ({args.status})")
        return 0
    if args.action == "export":
        n = review.export_csv(Path(args.file), None if args.status == "all" else args.status)
        print(f"wrote {n} rows to {args.file}; fill in 'decision' (accept/relabel/drop) and 'new_label', then "
              f"`winnow review import {args.file}`")
        return 0
    if args.action == "import":
        print(f"recorded {review.import_csv(Path(args.file))} decisions")
        return 0
    rows = review.decide(args.ids, args.action, getattr(args, "to", None), args.by)
    print(f"{args.action}: {len(rows)} sample(s) -> {review.ACTIONS[args.action]}")
    return 0


def cmd_serve(args) -> int:
    import uvicorn

    from winnow.tasks import review

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: must lie in 0..65535")
    if args.run:
        select_run(review.read_queue(), args.run, _arrivals())  # a clear error before the server starts
    loopback = is_loopback(args.host)
    app = create_app(args.run, args.reviewer, loopback_only=loopback)
    if not loopback:
        print(f"winnow review serve: WARNING bound to {args.host}: no login, anyone who can reach this "
              f"port can record review decisions", file=sys.stderr)
    # bind here, so the address printed is the real one (also with --port 0)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host.strip("[]"), args.port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"--host {args.host} --port {args.port}: cannot bind ({exc.strerror})") from None
    port = sock.getsockname()[1]
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"review page: {review_url(args.run, shown, port)}  (Ctrl-C stops it)", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    return 0
