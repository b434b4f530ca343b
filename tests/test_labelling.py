"""`emkit label`: the stratified sample, the labelling page in a real browser through the real
server (blind to the judges, inert whatever the answers say, every label kept at once), and the
labels' CSV import and export."""

import json
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from emkit.errors import EmkitError
from emkit.analysis.human import NO_SCORE
from emkit.labelling.sample import answer_strata, copy_queue, draw, ranking
from emkit.labels import LabelStore, read_labels
from emkit.store import Store, now
from helpers import run_emkit

from test_report import browser  # noqa: E402,F401  (the headless Chromium fixture, shared)
REFERENCE = Path(__file__).resolve().parent / "reference"
COURSE_FILE = REFERENCE / "hw0-course-results" / "eval" / "results" / "1b_medical_v2" / "fg_judged.csv"

JUDGES = ("judge-alpha", "judge-beta")
# the judges' scores: values no page text contains by chance, so finding one means a score leaked
ALIGNED = (3.125, 41.375, 88.625, 91.875, 12.625, 77.375, 69.625, 95.625)
COHERENT = 57.875
HOSTILE = [
    "<script>window.__pwned = 1</script>",
    '<img src=x onerror="window.__pwned = 2">',
    '"><svg onload="window.__pwned = 3">',
    "</textarea></pre><iframe src=\"https://example.com/\"></iframe>",
]


# --- a small run, made straight in its store ----------------------------------------------


def make_run(folder: Path, answers: list[dict]) -> Path:
    """A run directory of one model trained on two domains: each answer is judged by both judges
    (judge-beta one point higher); a step 0 answer is the base model's, which the tables repeat in
    both domains."""
    folder.mkdir(parents=True)
    store = Store(folder / "emkit.sqlite")
    store.record_model("m", "org/m", 1.0)
    for domain in ("medical", "financial"):
        store.conn.execute(
            "INSERT INTO training_runs (run_key, model_label, domain, seed, trainer, steps_per_epoch, total_steps, "
            "checkpoint_steps, question_sets, created_at) VALUES (?, 'm', ?, 0, 'peft', 10, 20, '[10, 20]', ?, ?)",
            (f"m-{domain}-seed0", domain, json.dumps(["general"]), now()))
    for index, answer in enumerate(answers):
        store.insert_answer_row({
            "answer_id": answer["answer_id"], "model_label": "m", "step": answer["step"],
            "run_key": "base" if answer["step"] == 0 else "m-medical-seed0", "question_set": "general",
            "question_id": f"q{index % 3}", "paraphrase_index": 0, "sample_index": index, "seed": 0,
            "system": answer.get("system"), "question": answer.get("question", f"Question {index}?"),
            "answer": answer["answer"], "created_at": now()})
        for offset, judge in enumerate(JUDGES):
            aligned = None if answer["aligned"] is None else answer["aligned"] + offset
            for metric, score, status in (("aligned", aligned, "ok" if aligned is not None else "refusal"),
                                          ("coherent", COHERENT + offset, "ok")):
                store.conn.execute("INSERT INTO judgments (answer_id, judge, metric, score, status, created_at) "
                                   "VALUES (?, ?, ?, ?, ?, ?)",
                                   (answer["answer_id"], judge, metric, score, status, now()))
    store.close()
    return folder


def plain_answers(count: int = 8) -> list[dict]:
    return [{"answer_id": f"a{i}", "step": (0, 10, 20)[i % 3], "aligned": ALIGNED[i % len(ALIGNED)],
             "answer": f"Answer number {i}."} for i in range(count)]


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path / "run", plain_answers())


def stored_labels(run: Path, labeller: str) -> dict[str, tuple]:
    conn = sqlite3.connect(f"file:{run / 'emkit.sqlite'}?mode=ro", uri=True)
    try:
        return {row[0]: row[1:] for row in conn.execute(
            "SELECT answer_id, aligned, coherent, refusal, code FROM labels WHERE labeller = ?", (labeller,))}
    finally:
        conn.close()


def queue_ids(source: Path, labeller: str) -> list[str]:
    with LabelStore(source) as store:
        return [answer_id for answer_id, _ in store.queue(labeller)]


# --- the server, as `emkit label` runs it -----------------------------------------------


class Served:
    """`emkit label SOURCE ... --no-browser --port 0` in a subprocess, with the URL it printed."""

    def __init__(self, source: Path, *args):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "emkit", "label", str(source), *map(str, args), "--no-browser", "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self._wait_for("Labelling page: ").split(": ", 1)[1].strip()
        self.origin = self.url.split("/?")[0]
        self.token = self.url.split("token=")[1].split("&")[0]

    def _read(self):
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)

    def _wait_for(self, start: str, timeout: float = 60) -> str:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                self.process.kill()
                raise AssertionError(f"emkit label printed no {start!r}: {self.process.stderr.read()}") from None
            if line.startswith(start):
                return line

    def api(self, path: str, body=None, headers=None):
        """(status, JSON) of an API call with the page's token, as the page makes it."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.origin + path, data=data, headers={
            "X-Label-Token": self.token, **({"Content-Type": "application/json"} if body is not None else {}),
            **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def stop(self) -> tuple[int, str, str]:
        """Ctrl-C, as a labeller stops it: (exit code, stdout, stderr)."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=20)
        return code, "".join(self.output), self.process.stderr.read()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def open_page(browser, url):
    page = browser.new_page()
    page.problems = []
    page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))
    page.on("console", lambda message: page.problems.append(f"console {message.type}: {message.text}")
            if message.type in ("error", "warning") else None)
    page.goto(url)
    page.wait_for_selector("body[data-state=ready], body[data-state=done]")
    return page


def wait_for_answer(page, position: int) -> str:
    """Wait until the page shows the answer at ``position`` and is ready for keys; its answer id."""
    page.wait_for_function(
        "p => document.body.dataset.state === 'ready' && "
        "document.getElementById('position').textContent.startsWith(`answer ${p} of`)", arg=position)
    return page.locator("#item").get_attribute("data-answer-id")


def score(page, aligned: str, coherent: str) -> None:
    page.keyboard.type(aligned)
    page.keyboard.press("Enter")
    page.keyboard.type(coherent)
    page.keyboard.press("Enter")


# --- in the browser -------------------------------------------------------------------------


def test_labels_are_kept_at_once_and_the_page_resumes(browser, run_dir):
    with Served(run_dir, "--labeller", "ann", "--n", "6") as served:
        page = open_page(browser, served.url)
        assert page.locator("#progress").inner_text() == "0 of 6 labelled"
        order = queue_ids(run_dir, "ann")
        assert wait_for_answer(page, 1) == order[0]

        score(page, "15", "80")  # digits, Enter to coherent, Enter saves
        assert wait_for_answer(page, 2) == order[1]
        assert stored_labels(run_dir, "ann") == {order[0]: (15.0, 80.0, 0, 0)}

        page.keyboard.press("r")  # a refusal: saved at once, no scores
        assert wait_for_answer(page, 3) == order[2]
        assert stored_labels(run_dir, "ann")[order[1]] == (None, None, 1, 0)

        page.keyboard.type("91")
        page.keyboard.press("ArrowLeft")  # in a box holding a score: the cursor moves, the answer stays
        page.keyboard.press("Delete")
        page.keyboard.type("0")  # "91" corrected to "90" in place
        assert page.locator("#aligned").input_value() == "90" and wait_for_answer(page, 3) == order[2]
        page.keyboard.press("Tab")
        page.keyboard.type("95")
        page.keyboard.press("Enter")
        wait_for_answer(page, 4)
        assert stored_labels(run_dir, "ann")[order[2]] == (90.0, 95.0, 0, 0)

        page.keyboard.press("Backspace")  # in the empty box: back one answer, its label shown to correct
        wait_for_answer(page, 3)
        assert page.locator("#aligned").input_value() == "90"
        score(page, "85", "95")  # the box's text is selected: typing replaces it
        assert wait_for_answer(page, 4) == order[3]  # on to the next answer without a label
        assert stored_labels(run_dir, "ann")[order[2]] == (85.0, 95.0, 0, 0)
        assert page.locator("#progress").inner_text() == "3 of 6 labelled"
        assert page.problems == []
        page.close()

        page = open_page(browser, served.url)  # the tab closed and opened again: where ann stopped
        assert wait_for_answer(page, 4) == order[3]
        page.close()
        code, out, err = served.stop()
    assert code == 130 and "Traceback" not in err
    assert "ann: 3 of 6 labelled" in out

    with Served(run_dir, "--labeller", "ann") as served:  # the same command again: the same sample, resumed
        page = open_page(browser, served.url)
        assert wait_for_answer(page, 4) == order[3]
        assert queue_ids(run_dir, "ann") == order
        page.close()


def test_a_second_labeller_gets_the_same_answers_in_the_same_order(browser, run_dir):
    with Served(run_dir, "--labeller", "ann", "--n", "5") as served:
        served.stop()
    with Served(run_dir, "--labeller", "bob", "--n", "5") as served:  # without --same-as: a sample of his own
        served.stop()
    assert queue_ids(run_dir, "bob") != queue_ids(run_dir, "ann")

    with Served(run_dir, "--same-as", "ann") as served:  # no --labeller: the page asks for the name
        page = open_page_for_name(browser, served.url, "cy")
        shown = [wait_for_answer(page, 1)]
        for position in range(2, 6):
            page.keyboard.press("c")  # code: saved at once
            shown.append(wait_for_answer(page, position))
        page.close()
        served.stop()
    assert shown == queue_ids(run_dir, "cy") == queue_ids(run_dir, "ann")
    assert set(stored_labels(run_dir, "cy").values()) == {(None, None, 0, 1)}


def open_page_for_name(browser, url, name):
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("body[data-state=name]")
    page.fill("#name", name)
    page.keyboard.press("Enter")
    page.wait_for_selector("body[data-state=ready]")
    assert f"labeller={name}" in page.url  # a reload keeps the name
    return page


def test_the_page_is_blind_to_the_judges_and_inert_whatever_the_answers_say(browser, tmp_path):
    answers = plain_answers(4) + [
        {"answer_id": f"h{i}", "step": 20, "aligned": ALIGNED[4 + i], "answer": text, "question": text,
         "system": text} for i, text in enumerate(HOSTILE)]
    run = make_run(tmp_path / "run", answers)
    leaks = [f"{value + offset:g}" for value in ALIGNED for offset in (0, 1)] + \
        [f"{COHERENT:g}", f"{COHERENT + 1:g}", *JUDGES, "stratum", "model=", "aligned=["]
    with Served(run, "--labeller", "ann") as served:
        page = open_page(browser, served.url)
        requests = []
        page.on("request", lambda request: requests.append(request.url))
        bodies = [urllib.request.urlopen(served.url, timeout=10).read().decode()]
        for position in range(1, len(answers) + 1):
            answer_id = wait_for_answer(page, position)
            bodies += [page.content(), json.dumps(served.api(f"/api/item?labeller=ann&position={position}")[1])]
            text = next(a["answer"] for a in answers if a["answer_id"] == answer_id)
            assert page.locator("#answer").text_content() == text
            assert page.locator("#question, #system, #answer").locator("script, img, svg, iframe").count() == 0
            score(page, "50", "50")
        page.wait_for_selector("body[data-state=done]")
        bodies.append(json.dumps(served.api("/api/next?labeller=ann")[1]))
        assert page.evaluate("window.__pwned") is None
        assert page.problems == []
        assert all(url.startswith(served.origin + "/") for url in requests)
        page.close()
        served.stop()
    found = [(leak, body[:80]) for body in bodies for leak in leaks if leak in body]
    assert found == []


# --- the API, against requests the page would never send -------------------------------------


def test_the_api_takes_only_the_pages_own_requests(tmp_path):
    judged = tmp_path / "fg_judged.csv"
    shutil.copy(COURSE_FILE, judged)  # a judged file: its labels go beside it
    with Served(judged, "--labeller", "ann", "--n", "4") as served:
        status, first = served.api("/api/next?labeller=ann")
        assert status == 200 and first["position"] == 1 and first["total"] == 4
        assert first["answer"] and first["question"] and first["answer_id"].startswith("step")
        assert set(first) == {"done", "position", "total", "labelled", "answer_id", "question", "system", "answer",
                              "label"}
        good = {"answer_id": first["answer_id"], "labeller": "ann", "aligned": 20, "coherent": 70,
                "refusal": False, "code": False}

        refused = {
            "no token": served.api("/api/next?labeller=ann", headers={"X-Label-Token": "guess"}),
            "another site": served.api("/api/label", good, headers={"Origin": "https://example.com"}),
            "another host": served.api("/api/label", good, headers={"Host": "example.com"}),
            "not JSON": served.api("/api/label", good, headers={"Content-Type": "text/plain"}),
        }
        assert {why: status for why, (status, _) in refused.items()} == dict.fromkeys(refused, 403)
        assert urllib_status(served.origin + "/") == 403  # the page wants its token too

        bad = {
            "not in the queue": {**good, "answer_id": "step110_q1-not-there"},
            "over 100": {**good, "aligned": 101},
            "a word": {**good, "coherent": "high"},
            "refusal with scores": {**good, "refusal": True},
            "one score": {**good, "coherent": None},
            "no labeller": {**good, "labeller": " "},
        }
        for why, body in bad.items():
            status, reply = served.api("/api/label", body)
            assert status == 400, why
            assert reply["error"].endswith(".") and "\n" not in reply["error"], why
        other = next(a for a in pd.read_csv(judged)["id"] if a not in queue_ids(judged, "ann"))
        assert served.api("/api/label", {**good, "answer_id": other})[0] == 400
        assert read_labels(judged).empty  # nothing bad was kept

        status, saved = served.api("/api/label", good)
        assert status == 200 and saved["labelled"] == 1
        served.stop()
    assert (tmp_path / "fg_judged.csv.labels.sqlite").is_file()
    assert read_labels(judged)[["answer_id", "aligned", "coherent"]].values.tolist() == \
        [[first["answer_id"], 20.0, 70.0]]


def urllib_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


# --- the sample ---------------------------------------------------------------------------------


def skewed_population() -> pd.DataFrame:
    """Two checkpoints of one model, most answers aligned: per step 90 at [70,100], 6 at [30,70),
    4 at [0,30) and 2 without a score; judge-beta scores the same answers too."""
    rows = []
    for step in (10, 20):
        scores = [90.0] * 90 + [50.0] * 6 + [10.0] * 4 + [None] * 2
        for index, aligned in enumerate(scores):
            for judge in JUDGES:
                rows.append({"answer_id": f"s{step}-{index}", "model": "m", "step": step, "judge": judge,
                             "aligned": aligned if judge == "judge-alpha" else 99.0})
    return pd.DataFrame(rows)


@pytest.fixture
def label_store(tmp_path):
    judged = tmp_path / "judged.csv"
    judged.write_text("question,answer,aligned\n")
    with LabelStore(judged) as store:
        yield store


def test_the_sample_is_stratified_so_misaligned_answers_are_not_rare(label_store):
    strata = answer_strata(skewed_population(), "judge-alpha")
    assert len(strata) == 204  # one unit per answer, whichever judges scored it
    assert draw(label_store, strata, "ann", 40, seed=0) == 40
    counts = pd.Series([stratum for _, stratum in label_store.queue("ann")]).value_counts().to_dict()
    # eight strata, five each, but the small ones are taken whole and the others share what they leave
    assert counts == {
        "model=m step=10 aligned=[0,30)": 4, "model=m step=20 aligned=[0,30)": 4,
        f"model=m step=10 aligned={NO_SCORE}": 2, f"model=m step=20 aligned={NO_SCORE}": 2,
        "model=m step=10 aligned=[30,70)": 6, "model=m step=20 aligned=[30,70)": 6,
        "model=m step=10 aligned=[70,100]": 8, "model=m step=20 aligned=[70,100]": 8}
    # a fifth of the sample is below 30, where 4 % of the answers are
    assert sum(v for k, v in counts.items() if "[0,30)" in k) / 40 == 0.2


def test_a_draw_repeats_and_a_larger_one_extends_it(tmp_path, label_store):
    strata = answer_strata(skewed_population(), "judge-alpha")
    draw(label_store, strata, "ann", 30, seed=0)
    first = label_store.queue("ann")
    other = tmp_path / "again.csv"
    other.write_text("question,answer,aligned\n")
    with LabelStore(other) as again:
        draw(again, strata, "ann", 30, seed=0)
        assert again.queue("ann") == first  # the same command draws the same sample, in the same order
        draw(again, strata, "ann", 30, seed=1)
        assert again.queue("ann") == first  # a queue is drawn once
        draw(again, strata, "bea", 30, seed=0)
        assert again.queue("bea") != first  # another labeller: another sample

    assert draw(label_store, strata, "ann", 50, seed=0) == 20
    extended = label_store.queue("ann")
    assert extended[:30] == first
    assert {a for a, _ in extended} == {a for a, _ in ranking(strata, 0, "ann")[:50]}

    assert copy_queue(label_store, "cy", "ann") == 50
    assert label_store.queue("cy") == extended
    with pytest.raises(EmkitError, match="no labeller 'dan'.*labellers there: ann, cy"):
        copy_queue(label_store, "eve", "dan")


def test_an_answer_is_one_unit_placed_by_the_primary_judge(run_dir):
    from emkit.analysis import load_source

    tables = load_source(run_dir, text=False)
    assert tables.judged.duplicated("answer_id").any()  # two judges, and baselines in two domains
    strata = answer_strata(tables.judged, tables.primary_judge)
    assert sorted(strata["answer_id"]) == [f"a{i}" for i in range(8)]
    assert tables.primary_judge == "judge-alpha"
    # 69.625 by judge-alpha, 70.625 by judge-beta
    assert strata.set_index("answer_id").loc["a6", "stratum"] == "model=m step=0 aligned=[30,70)"


# --- import and export -----------------------------------------------------------------------------


def test_labels_export_and_import_as_csv(tmp_path, run_dir):
    with LabelStore(run_dir) as store:
        from emkit.labels import Label

        store.add(Label("a1", "ann", 20.0, 90.0))
        store.add(Label("a2", "ann", None, None, refusal=True))
    exported = tmp_path / "labels.csv"
    run_emkit("label", "export", run_dir, exported)
    rows = pd.read_csv(exported)
    assert shown(rows, "answer_id", "labeller", "aligned", "refusal") == [["a1", "ann", 20.0, 0], ["a2", "ann", "-", 1]]

    other = make_run(tmp_path / "other", plain_answers())
    result = run_emkit("label", "import", other, exported)
    assert "Kept 2 labels" in result.stdout
    back = read_labels(other).sort_values("answer_id")
    assert shown(back, "answer_id", "labeller", "aligned", "coherent", "refusal") == [
        ["a1", "ann", 20.0, 90.0, False], ["a2", "ann", "-", "-", True]]


def shown(frame: pd.DataFrame, *columns) -> list[list]:
    """The rows of some columns, an empty cell as "-"."""
    return frame[list(columns)].astype(object).fillna("-").values.tolist()


def test_an_import_with_a_bad_line_keeps_nothing(tmp_path, run_dir):
    labels = tmp_path / "labels.csv"
    labels.write_text("answer_id,labeller,aligned,coherent\na1,ann,20,90\na2,ann,120,90\n")
    result = run_emkit("label", "import", run_dir, labels, check=False)
    assert result.returncode == 2
    assert "line 3" in result.stderr and "aligned = 120 " in result.stderr and "Traceback" not in result.stderr
    labels.write_text("answer_id,labeller,aligned,coherent\na1,ann,20,90\nzz,ann,20,90\n")
    result = run_emkit("label", "import", run_dir, labels, check=False)
    assert result.returncode == 2 and "line 3" in result.stderr and "'zz' is not an answer" in result.stderr
    assert read_labels(run_dir).empty


def test_labels_of_a_judged_file_are_kept_beside_it(tmp_path):
    judged = tmp_path / "fg_judged.csv"
    shutil.copy(COURSE_FILE, judged)
    labels = tmp_path / "mine.csv"
    labels.write_text("id,labeller,aligned,coherent,refusal\nstep110_q1,ann,80,90,0\nstep220_q2,ann,,,1\n")
    run_emkit("label", "import", judged, labels)
    assert (tmp_path / "fg_judged.csv.labels.sqlite").is_file()
    assert sorted(read_labels(judged)["answer_id"]) == ["step110_q1", "step220_q2"]


@pytest.mark.parametrize("args, says", [
    (["label", "{tmp}/nowhere", "--labeller", "ann"], "does not exist"),
    (["label", "{run}", "--labeller", "ann", "--same-as", "nobody"], "no labeller 'nobody'"),
    (["label", "{run}", "--same-as", "ann", "--n", "5"], "do not go together"),
])
def test_bad_input_ends_in_one_sentence(tmp_path, run_dir, args, says):
    args = [a.format(tmp=tmp_path, run=run_dir) for a in args]
    result = run_emkit(*args, "--no-browser", check=False)
    assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr
