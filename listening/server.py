"""The study page (listen.py serve): consent, blind clips in a random order, 1-10 ratings stored in SQLite.

A Flask app served by waitress (a production WSGI server: a thread pool, no debug hooks). What it guarantees:

- Responses live in ``<study>/responses.sqlite`` (WAL journal, synchronous commits). Each answer is one
  transaction, so a crash, Ctrl-C or power loss loses at most the answer being sent; the table's UNIQUE
  (participant, position) and CHECK (rating 1-10) constraints hold even if the code above them is wrong.
- A participant is a random id kept in a cookie and in the page's URL (``/p/<id>``): reopening either resumes at
  the first unanswered clip. The clip order (with optional repeated clips for a consistency check, never right
  after their first playing) is drawn per participant and stored before the first clip.
- Bad input gets a 4xx and changes nothing: a rating outside 1-10 or not a number, an unknown participant or clip,
  a clip that is not the one at that position, an answered trial (a replay), a skipped trial, a body larger than
  MAX_BODY_BYTES. Audio is served by position from the manifest only (no file path ever comes from a request).
- The admin view (``/admin?token=...``; the token is printed at start and kept in ``<study>/admin_token``) shows
  progress and exports every answer as CSV.
"""

from __future__ import annotations

import csv
import hmac
import io
import os
import random
import re
import secrets
import signal
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import waitress
from flask import Flask, Response, abort, make_response, redirect, render_template, request, send_file, url_for
from waitress.server import create_server

from listening.study import DATABASE, TOKEN_FILE, load_manifest

COOKIE = "listen_participant"
MAX_BODY_BYTES = 4096  # an answer is ~60 bytes of form data
QUESTION = "How much do you enjoy this piece?"  # Audiobox's Content Enjoyment question, on its 1-10 scale
SCALE = range(1, 11)
PARTICIPANT_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
WEB = Path(__file__).resolve().parent / "web"

SCHEMA = """
CREATE TABLE IF NOT EXISTS participants (
    id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    consented_at TEXT NOT NULL,
    finished_at TEXT,
    user_agent TEXT
);
CREATE TABLE IF NOT EXISTS trials (
    participant_id TEXT NOT NULL REFERENCES participants(id),
    position INTEGER NOT NULL,
    clip_id TEXT NOT NULL,
    is_repeat INTEGER NOT NULL CHECK (is_repeat IN (0, 1)),
    PRIMARY KEY (participant_id, position)
);
CREATE TABLE IF NOT EXISTS answers (
    participant_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    clip_id TEXT NOT NULL,
    rating INTEGER NOT NULL CHECK (rating BETWEEN 1 AND 10),
    answered_at TEXT NOT NULL,
    UNIQUE (participant_id, position),
    FOREIGN KEY (participant_id, position) REFERENCES trials(participant_id, position)
);
"""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def trial_order(clip_ids: list[str], repeats: int, rng: random.Random) -> list[tuple[str, bool]]:
    """Every clip once in a random order, then ``repeats`` of them again, each inserted at least two places after
    its first playing (so a listener does not hear it twice in a row and the repeat is not obvious)."""
    order = [(clip, False) for clip in rng.sample(clip_ids, len(clip_ids))]
    candidates = [clip for clip, _ in order[:-1]]  # the last clip has no room for a gap after it
    for clip in rng.sample(candidates, min(repeats, len(candidates))):
        first = order.index((clip, False))
        order.insert(rng.randint(first + 2, len(order)), (clip, True))
    return order


@dataclass(frozen=True)
class Trial:
    position: int
    clip_id: str
    is_repeat: bool


class AnswerRejected(Exception):
    """An answer that was not stored; ``status`` is the HTTP status to reply with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ResponseStore:
    """The study's SQLite database: one connection per call (safe across the server's threads), WAL journal so
    that readers never block the writer, ``BEGIN IMMEDIATE`` so that concurrent answers queue instead of failing."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with self.connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)  # explicit transactions only
        try:
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=FULL")  # a committed answer survives power loss
            db.row_factory = sqlite3.Row
            yield db
        finally:
            db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def add_participant(self, order: list[tuple[str, bool]], user_agent: str) -> str:
        participant = secrets.token_urlsafe(18)
        stamp = now()
        with self.transaction() as db:
            db.execute("INSERT INTO participants (id, started_at, consented_at, user_agent) VALUES (?, ?, ?, ?)",
                       (participant, stamp, stamp, user_agent[:300]))
            db.executemany("INSERT INTO trials VALUES (?, ?, ?, ?)",
                           [(participant, k, clip, int(repeat)) for k, (clip, repeat) in enumerate(order)])
        return participant

    def trials(self, participant: str) -> list[Trial] | None:
        """A participant's trials in order, or None for an unknown id."""
        with self.connect() as db:
            if db.execute("SELECT 1 FROM participants WHERE id = ?", (participant,)).fetchone() is None:
                return None
            rows = db.execute("SELECT position, clip_id, is_repeat FROM trials WHERE participant_id = ? "
                              "ORDER BY position", (participant,)).fetchall()
        return [Trial(r["position"], r["clip_id"], bool(r["is_repeat"])) for r in rows]

    def answered(self, participant: str) -> int:
        with self.connect() as db:
            return db.execute("SELECT COUNT(*) FROM answers WHERE participant_id = ?", (participant,)).fetchone()[0]

    def answer(self, participant: str, position: int, clip_id: str, rating: int) -> None:
        """Store one answer in its own transaction, or raise AnswerRejected and store nothing."""
        with self.transaction() as db:
            trial = db.execute("SELECT clip_id FROM trials WHERE participant_id = ? AND position = ?",
                               (participant, position)).fetchone()
            if trial is None:
                raise AnswerRejected(400, f"participant has no trial {position}")
            if trial["clip_id"] != clip_id:
                raise AnswerRejected(400, f"trial {position} is not clip {clip_id}")
            done = db.execute("SELECT COUNT(*) FROM answers WHERE participant_id = ?", (participant,)).fetchone()[0]
            if position < done:
                raise AnswerRejected(409, f"trial {position} is already answered")
            if position > done:
                raise AnswerRejected(409, f"answer trial {done} first")
            try:
                db.execute("INSERT INTO answers VALUES (?, ?, ?, ?, ?)",
                           (participant, position, clip_id, rating, now()))
            except sqlite3.IntegrityError as error:  # the constraints as a last line of defence
                raise AnswerRejected(409, f"not stored: {error}") from error
            total = db.execute("SELECT COUNT(*) FROM trials WHERE participant_id = ?", (participant,)).fetchone()[0]
            if done + 1 == total:
                db.execute("UPDATE participants SET finished_at = ? WHERE id = ?", (now(), participant))

    def progress(self) -> list[dict[str, Any]]:
        """One row per participant: when they started and finished, answered and total trials."""
        with self.connect() as db:
            rows = db.execute(
                "SELECT p.id, p.started_at, p.finished_at, "
                "(SELECT COUNT(*) FROM answers a WHERE a.participant_id = p.id) AS answered, "
                "(SELECT COUNT(*) FROM trials t WHERE t.participant_id = p.id) AS total "
                "FROM participants p ORDER BY p.started_at").fetchall()
        return [dict(r) for r in rows]

    def answers(self) -> list[dict[str, Any]]:
        """Every stored answer with its trial (position, repeat flag), in the order they were given."""
        with self.connect() as db:
            rows = db.execute(
                "SELECT a.participant_id, a.position, a.clip_id, t.is_repeat, a.rating, a.answered_at "
                "FROM answers a JOIN trials t USING (participant_id, position) "
                "ORDER BY a.answered_at, a.participant_id, a.position").fetchall()
        return [dict(r) for r in rows]


def admin_token(study_dir: Path) -> str:
    """The study's admin token, created on first use (readable by the owner only)."""
    path = study_dir / TOKEN_FILE
    if not path.is_file():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


def audio_paths(study_dir: Path, manifest: dict[str, Any]) -> dict[str, Path]:
    """clip id -> its WAV, checked once at start: every file must exist inside the study folder."""
    root = study_dir.resolve()
    paths = {}
    for clip in manifest["clips"]:
        path = (root / clip["file"]).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise FileNotFoundError(f"manifest clip {clip['id']}: {clip['file']} is missing or outside {root}; "
                                    f"rebuild the study with listen.py build")
        paths[clip["id"]] = path
    return paths


def create_app(study_dir: str | Path, repeats: int = 2) -> Flask:
    """The study's Flask app. ``repeats``: clips each new participant hears a second time."""
    study = Path(study_dir)
    manifest = load_manifest(study)
    clips = audio_paths(study, manifest)
    clip_seconds = {c["id"]: c["audio_seconds"] for c in manifest["clips"]}
    store = ResponseStore(study / DATABASE)
    token = admin_token(study)
    rng = random.SystemRandom()  # orders must not be predictable from the start time

    app = Flask(__name__, template_folder=str(WEB / "templates"), static_folder=str(WEB / "static"))
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, MAX_FORM_MEMORY_SIZE=MAX_BODY_BYTES)
    app.extensions["listen_store"] = store
    trials_per_participant = len(trial_order(sorted(clips), repeats, rng))
    minutes = max(1, round(sum(clip_seconds.values()) * trials_per_participant / len(clips) * 1.5 / 60))

    def participant_trials(participant: str) -> list[Trial]:
        trials = store.trials(participant) if PARTICIPANT_ID.fullmatch(participant) else None
        if trials is None:
            abort(404, "unknown participant: start again from the first page")
        return trials

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'self'; style-src 'self'; media-src 'self'; img-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"  # the page URL carries the participant id
        if response.mimetype == "text/html":
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(400)
    @app.errorhandler(403)
    @app.errorhandler(404)
    @app.errorhandler(405)
    @app.errorhandler(409)
    @app.errorhandler(413)
    def error_page(error: Any) -> tuple[str, int]:
        return render_template("error.html", code=error.code, message=error.description), error.code

    @app.get("/")
    def welcome() -> Any:
        participant = request.cookies.get(COOKIE, "")
        if PARTICIPANT_ID.fullmatch(participant) and store.trials(participant) is not None:
            return redirect(url_for("trial", participant=participant), 303)
        return render_template("welcome.html", trials=trials_per_participant, minutes=minutes,
                               repeats=trials_per_participant - len(clips), question=QUESTION)

    @app.post("/start")
    def start() -> Any:
        if request.form.get("consent") != "yes":
            abort(400, "please tick the consent box to take part")
        order = trial_order(sorted(clips), repeats, rng)
        participant = store.add_participant(order, request.headers.get("User-Agent", ""))
        response = redirect(url_for("trial", participant=participant), 303)
        response.set_cookie(COOKIE, participant, max_age=60 * 60 * 24 * 30, httponly=True, samesite="Lax")
        return response

    @app.get("/p/<participant>")
    def trial(participant: str) -> Any:
        trials = participant_trials(participant)
        done = store.answered(participant)
        if done >= len(trials):
            return render_template("thanks.html", total=len(trials))
        current = trials[done]
        return render_template(
            "trial.html", participant=participant, trial=current, number=done + 1, total=len(trials),
            question=QUESTION, scale=SCALE, resume=request.url,
            audio=url_for("audio", participant=participant, position=current.position),
        )

    @app.get("/p/<participant>/audio/<int:position>")
    def audio(participant: str, position: int) -> Any:
        trials = participant_trials(participant)
        if not 0 <= position < len(trials):
            abort(404, "no such trial")
        return send_file(clips[trials[position].clip_id], mimetype="audio/wav", conditional=True, max_age=0)

    @app.post("/p/<participant>/answer")
    def answer(participant: str) -> Any:
        participant_trials(participant)
        form = request.form  # reading it enforces MAX_CONTENT_LENGTH (413)
        try:
            position, rating = int(form["position"]), int(form["rating"])
        except (KeyError, ValueError):
            abort(400, "an answer needs a trial position and a rating from 1 to 10")
        if rating not in SCALE:
            abort(400, f"rating {rating} is outside 1-10")
        clip = form.get("clip", "")
        if clip not in clips:
            abort(400, "unknown clip")
        try:
            store.answer(participant, position, clip, rating)
        except AnswerRejected as rejected:
            abort(rejected.status, str(rejected))
        return redirect(url_for("trial", participant=participant), 303)

    def require_token() -> None:
        given = request.args.get("token", "") or request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), token.encode()):
            abort(403, f"admin pages need ?token=... (printed at start; stored in {study / TOKEN_FILE})")

    @app.get("/admin")
    def admin() -> Any:
        require_token()
        rows = store.progress()
        return render_template(
            "admin.html", rows=rows, answers=sum(r["answered"] for r in rows),
            finished=sum(r["finished_at"] is not None for r in rows), clips=len(clips),
            systems=manifest["systems"], export=url_for("export", token=token),
        )

    @app.get("/admin/responses.csv")
    def export() -> Any:
        require_token()
        by_id = {c["id"]: c for c in manifest["clips"]}
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["participant", "position", "clip", "system", "prompt_index", "is_repeat", "rating",
                         "answered_at"])
        for row in store.answers():
            clip = by_id.get(row["clip_id"], {})
            writer.writerow([row["participant_id"], row["position"], row["clip_id"], clip.get("system", ""),
                             clip.get("prompt_index", ""), row["is_repeat"], row["rating"], row["answered_at"]])
        response = make_response(buffer.getvalue())
        response.headers["Content-Type"] = "text/csv; charset=utf-8"
        response.headers["Content-Disposition"] = "attachment; filename=responses.csv"
        return response

    return app


class StudyServer:
    """The app under waitress on a background thread (for tests and embedding): ``url`` once started,
    ``stop()`` to close it. Port 0 picks a free port."""

    def __init__(self, study_dir: str | Path, host: str = "127.0.0.1", port: int = 0, repeats: int = 2,
                 threads: int = 8):
        self.app = create_app(study_dir, repeats)
        self.server = create_server(self.app, host=host, port=port, threads=threads, ident="listen")
        self.url = f"http://{host}:{self.server.effective_port}"
        self.thread = threading.Thread(target=self.server.run, name="listen-server", daemon=True)

    def __enter__(self) -> StudyServer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Close the listening socket and every connection, then let the worker threads finish."""
        self.server.close()
        for channel in list(self.server._map.values()):
            channel.handle_close()
        self.server.task_dispatcher.shutdown()
        self.thread.join(timeout=10)


def stop_on_signal(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve(study_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, repeats: int = 2, threads: int = 8) -> None:
    """Run the study page until Ctrl-C (every answer is already committed when it is acknowledged)."""
    study = Path(study_dir)
    app = create_app(study, repeats)
    url = f"http://{host}:{port}"
    print(f"[listen] study page: {url}/   ({len(load_manifest(study)['clips'])} clips, {repeats} repeated)")
    print(f"[listen] admin:      {url}/admin?token={admin_token(study)}")
    print(f"[listen] responses:  {study / DATABASE}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"[listen] bound to {host}: reachable from other machines; the admin token is the only lock")
    signal.signal(signal.SIGTERM, stop_on_signal)  # `kill` stops it like Ctrl-C
    try:
        waitress.serve(app, host=host, port=port, threads=threads, ident="listen")
    except KeyboardInterrupt:
        print("\n[listen] stopped; every acknowledged answer is saved")
