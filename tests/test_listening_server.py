"""listening/server.py, the study server, over real HTTP on 127.0.0.1: bad input is refused with a 4xx and stores
nothing, audio comes only from the manifest, the admin view needs its token, participants resume, and 50 concurrent
participants lose no answer."""

from __future__ import annotations

import re
import sqlite3
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import pytest
import requests

import listen
from listen_helpers import short_study
from listening.server import DATABASE, MAX_BODY_BYTES, TOKEN_FILE, StudyServer, trial_order

TIMEOUT = 60  # seconds per request: bounds a hung server, never asserted as a speed


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return short_study(tmp_path_factory.mktemp("listen_server"), clips_per_system=3)


@pytest.fixture(scope="module")
def server(study: Path):
    with StudyServer(study, repeats=2) as running:
        yield running


def counts(study: Path) -> tuple[int, int]:
    """(participants, answers) in the study's database."""
    with sqlite3.connect(study / DATABASE) as db:
        return (db.execute("SELECT COUNT(*) FROM participants").fetchone()[0],
                db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])


def join(session: requests.Session, url: str) -> str:
    """Consent and return the participant's page URL."""
    response = session.post(url + "/start", data={"consent": "yes"}, allow_redirects=False, timeout=TIMEOUT)
    assert response.status_code == 303
    return url + response.headers["Location"]


def current_trial(session: requests.Session, page: str) -> tuple[int, str] | None:
    """(position, clip id) of the trial the page shows, or None on the thank-you page."""
    html = session.get(page, timeout=TIMEOUT).text
    found = re.search(r'name="position" value="(\d+)".*?name="clip" value="([0-9a-f]+)"', html, re.S)
    return (int(found[1]), found[2]) if found else None


def send(session: requests.Session, page: str, **form: object) -> requests.Response:
    return session.post(page + "/answer", data=form, allow_redirects=False, timeout=TIMEOUT)


def test_trial_order_has_every_clip_once_and_repeats_apart():
    import random

    clips = [f"c{k}" for k in range(10)]
    for seed in range(50):
        order = trial_order(clips, 3, random.Random(seed))
        firsts = [clip for clip, repeat in order if not repeat]
        repeats = [clip for clip, repeat in order if repeat]
        assert sorted(firsts) == clips and len(repeats) == 3
        for clip in repeats:
            assert order.index((clip, True)) - order.index((clip, False)) >= 2


def test_binds_loopback_by_default(server):
    assert server.url.startswith("http://127.0.0.1:")
    assert listen.build_parser().parse_args(["serve", "study"]).host == "127.0.0.1"


def test_bad_input_is_refused_and_stores_nothing(server, study: Path):
    session = requests.Session()
    before = counts(study)
    assert session.post(server.url + "/start", data={}, timeout=TIMEOUT).status_code == 400  # no consent
    assert counts(study) == before
    page = join(session, server.url)
    position, clip = current_trial(session, page)
    assert position == 0
    before = counts(study)
    other_clip = next(c for c in re.findall(r"[0-9a-f]{12}", (study / "manifest.json").read_text()) if c != clip)
    refused = {
        "rating 0": (send(session, page, position=0, clip=clip, rating=0), 400),
        "rating 11": (send(session, page, position=0, clip=clip, rating=11), 400),
        "rating text": (send(session, page, position=0, clip=clip, rating="ten"), 400),
        "rating 7.5": (send(session, page, position=0, clip=clip, rating="7.5"), 400),
        "no rating": (send(session, page, position=0, clip=clip), 400),
        "no position": (send(session, page, clip=clip, rating=5), 400),
        "unknown clip": (send(session, page, position=0, clip="0123456789ab", rating=5), 400),
        "another clip": (send(session, page, position=0, clip=other_clip, rating=5), 400),
        "no such trial": (send(session, page, position=99, clip=clip, rating=5), 400),
        "skipping ahead": (send(session, page, position=1, clip=current_trial_clip(study, page, 1), rating=5), 409),
        "unknown participant": (send(session, server.url + "/p/" + "A" * 24, position=0, clip=clip, rating=5), 404),
        "malformed participant": (send(session, server.url + "/p/%2e%2e", position=0, clip=clip, rating=5), 404),
        "oversized body": (send(session, page, position=0, clip=clip, rating=5, pad="x" * (2 * MAX_BODY_BYTES)), 413),
    }
    for case, (response, status) in refused.items():
        assert response.status_code == status, case
    assert counts(study) == before

    assert send(session, page, position=0, clip=clip, rating=5).status_code == 303
    assert counts(study)[1] == before[1] + 1
    replay = send(session, page, position=0, clip=clip, rating=9)
    assert replay.status_code == 409
    assert counts(study)[1] == before[1] + 1
    with sqlite3.connect(study / DATABASE) as db:  # the replay did not overwrite the first answer
        assert db.execute("SELECT rating FROM answers WHERE clip_id = ? AND position = 0", (clip,)).fetchall() == [(5,)]


def current_trial_clip(study: Path, page: str, position: int) -> str:
    """The clip stored for a participant's trial (read from the database, as a forged request could not)."""
    with sqlite3.connect(study / DATABASE) as db:
        return db.execute("SELECT clip_id FROM trials WHERE participant_id = ? AND position = ?",
                          (page.rsplit("/", 1)[1], position)).fetchone()[0]


def test_audio_comes_only_from_the_manifest(server, study: Path):
    session = requests.Session()
    page = join(session, server.url)
    first = session.get(page + "/audio/0", timeout=TIMEOUT)
    assert first.status_code == 200 and first.headers["Content-Type"] == "audio/wav"
    assert first.content[:4] == b"RIFF"
    for path in ("/audio/99", "/audio/-1", "/audio/..%2fmanifest.json", "/audio/../../manifest.json",
                 "/audio/%2e%2e/%2e%2e/manifest.json"):
        response = session.get(page + path, timeout=TIMEOUT)
        assert response.status_code == 404, path
        assert b"clips" not in response.content
    for path in ("/manifest.json", "/static/../manifest.json", "/static/..%2fmanifest.json", "/stimuli/",
                 "/responses.sqlite", "/admin_token", "/p/" + "B" * 24 + "/audio/0"):
        assert session.get(server.url + path, timeout=TIMEOUT).status_code == 404, path


def test_admin_needs_the_token(server, study: Path):
    token = (study / TOKEN_FILE).read_text().strip()
    assert requests.get(server.url + "/admin", timeout=TIMEOUT).status_code == 403
    assert requests.get(server.url + "/admin", params={"token": "wrong"}, timeout=TIMEOUT).status_code == 403
    assert requests.get(server.url + "/admin/responses.csv", timeout=TIMEOUT).status_code == 403
    page = requests.get(server.url + "/admin", params={"token": token}, timeout=TIMEOUT)
    assert page.status_code == 200 and "participant(s)" in page.text
    export = requests.get(server.url + "/admin/responses.csv", headers={"Authorization": f"Bearer {token}"},
                          timeout=TIMEOUT)
    assert export.status_code == 200
    lines = export.text.strip().splitlines()
    assert lines[0].startswith("participant,position,clip,system")
    assert len(lines) - 1 == counts(study)[1]


def test_participant_resumes_from_cookie_and_link(server, study: Path):
    session = requests.Session()
    page = join(session, server.url)
    position, clip = current_trial(session, page)
    assert send(session, page, position=position, clip=clip, rating=4).status_code == 303
    resumed = session.get(server.url + "/", allow_redirects=False, timeout=TIMEOUT)  # the cookie
    assert resumed.status_code == 303 and server.url + resumed.headers["Location"] == page
    assert current_trial(requests.Session(), page)[0] == 1  # the link alone, in another browser


def participant(url: str, index: int) -> dict[int, int]:
    """One simulated participant: consent, then answer every trial; returns position -> rating sent."""
    with requests.Session() as session:
        page = join(session, url)
        sent = {}
        while (trial := current_trial(session, page)) is not None:
            position, clip = trial
            rating = 1 + (index + 3 * position) % 10
            assert send(session, page, position=position, clip=clip, rating=rating).status_code == 303
            sent[position] = rating
        return {"id": page.rsplit("/", 1)[1], "sent": sent}


def test_fifty_concurrent_participants_lose_no_answer(tmp_path: Path):
    study = short_study(tmp_path, clips_per_system=3)
    with StudyServer(study, repeats=2, threads=8) as server, ThreadPoolExecutor(max_workers=50) as pool:
        futures = [pool.submit(participant, server.url, k) for k in range(50)]
        done, pending = wait(futures, timeout=600)
        assert not pending
        results = [future.result() for future in futures]
    with sqlite3.connect(study / DATABASE) as db:
        stored = db.execute("SELECT participant_id, position, rating FROM answers").fetchall()
        finished = db.execute("SELECT COUNT(*) FROM participants WHERE finished_at IS NOT NULL").fetchone()[0]
    expected = {(r["id"], position, rating) for r in results for position, rating in r["sent"].items()}
    assert len(expected) == 50 * (6 + 2)
    assert sorted(stored) == sorted(expected)
    assert finished == 50
