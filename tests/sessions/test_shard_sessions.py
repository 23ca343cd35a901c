"""Sharded runs with real processes: shards started at the same moment share one `.llmeval/` (the exact and
semantic caches, the journal, the results directory) and lose nothing; `llmeval merge` + `llmeval gate` judge the
whole run once; and the GitHub Actions example (examples/github-actions-sharded.yml) runs as written: its `run:`
steps in a simulated runner (matrix jobs in parallel, actions/cache, artifacts), for a baseline on main, a pull
request with no change and one with a real regression."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

from conftest import API_KEY, GEO, Project
from pytest_llmeval.results.shards import shard_of

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "examples" / "github-actions-sharded.yml"
BIN = str(Path(sys.executable).parent)  # pytest and llmeval of this environment


def big_suite(n: int, system: str = "Answer briefly.") -> str:
    rows = "\n".join(f"  - {{id: q{i:03d}, question: 'Question number {i:03d}?', expect: [{{contains: sure}}]}}"
                     for i in range(n))
    return f"suite: big\nsystem: {system}\ncases:\n{rows}\n"


def script(project: Project, failing: range) -> None:
    project.server.default = "sure"
    for i in failing:
        project.server.answer(f"number {i:03d}?", "nope")


def run_at_once(cwd: Path, argsets: list[list[str]], env: dict[str, str] | None = None
                ) -> list[subprocess.CompletedProcess[str]]:
    """Start one pytest process per argument list, all before waiting for any, and collect them."""
    procs = [subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd,
                              env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for args in argsets]
    out = []
    for p, args in zip(procs, argsets, strict=True):
        stdout, _ = p.communicate(timeout=600)
        out.append(subprocess.CompletedProcess(args, p.returncode, stdout, ""))
    return out


def llmeval(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_llmeval.cli.main", *args], cwd=cwd, capture_output=True,
                          text=True)


def outcomes(doc: dict[str, Any]) -> dict[str, str]:
    return {c["nodeid"]: c["outcome"] for c in doc["cases"]}


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def assert_clean(runs: list[subprocess.CompletedProcess[str]]) -> None:
    for r in runs:  # 0 or 1 (failed cases, no gate in a shard); never a crash, a usage error or a lost write
        assert r.returncode in (0, 1), r.stdout[-3000:]
        assert "Traceback" not in r.stdout and "INTERNALERROR" not in r.stdout, r.stdout[-3000:]


def test_four_shards_started_at_once_share_one_llmeval_directory(project: Project) -> None:
    project.write("cases/big.yaml", big_suite(30))
    project.write("cases/geo.yaml", GEO)
    script(project, range(0, 30, 4))
    project.server.answer("capital of France", "Paris, sure.")
    root = project.pytester.path
    project.run("--llm-cache=off", "--llm-results=whole.json").assert_outcomes(passed=23, failed=10)
    whole = read(root / "whole.json")
    before = len(project.server.requests)

    runs = run_at_once(root, [project.args(f"--llm-shard={i}/4") for i in (1, 2, 3, 4)])
    assert_clean(runs)
    # Each shard wrote its own results (the shared default would have kept only the last writer's shard).
    assert not (root / ".llmeval/results.json").exists()
    shards = [read(root / f".llmeval/results-shard-{i}of4.json") for i in (1, 2, 3, 4)]
    assert [s["run"]["shard"] for s in shards] == ["1/4", "2/4", "3/4", "4/4"]
    assert all(0 < len(s["cases"]) < 33 for s in shards)
    collected = [s["run"]["collected"] for s in shards]  # the whole selection, the same in each
    assert collected[0]["items"] == 33 and all(c == collected[0] for c in collected)
    union: dict[str, str] = {}
    for s in shards:
        assert not set(outcomes(s)) & set(union)  # disjoint
        union.update(outcomes(s))
    assert union == outcomes(whole)  # the same cases, the same outcomes as the unsharded run
    assert len(project.server.requests) - before == 33  # each case called once, by its own shard
    # Each shard's journal run is its own: four pointers, four runs.
    journal = root / ".llmeval/journal"
    runs_ids = {read(journal / f"latest-shard-{i}of4")["run_id"] for i in (1, 2, 3, 4)}
    assert len(runs_ids) == 4 and runs_ids == {s["run"]["run_id"] for s in shards}

    # The cache the four wrote at once holds every answer: replayed at once, no model call at all.
    again = run_at_once(root, [project.args(f"--llm-shard={i}/4", "--llm-cache=replay") for i in (1, 2, 3, 4)])
    assert_clean(again)
    assert len(project.server.requests) - before == 33
    replayed: dict[str, str] = {}
    for i in (1, 2, 3, 4):
        doc = read(root / f".llmeval/results-shard-{i}of4.json")
        assert all(c["cached"] for c in doc["cases"])
        replayed.update(outcomes(doc))
    assert replayed == union
    # A shard resumes its own run, not whichever shard started last.
    project.run("--llm-shard=2/4", "--llm-resume")
    resumed = read(root / ".llmeval/results-shard-2of4.json")
    assert outcomes(resumed) == outcomes(shards[1]) and resumed["run"]["resumed_cases"] == len(shards[1]["cases"])

    files = [f".llmeval/results-shard-{i}of4.json" for i in (1, 2, 3, 4)]
    merged = llmeval(root, "merge", *files, "-o", "merged.json")
    assert merged.returncode == 0, merged.stderr
    assert outcomes(read(root / "merged.json")) == outcomes(whole)
    gate = llmeval(root, "gate", "whole.json", "merged.json")
    assert gate.returncode == 0 and "gate passed" in gate.stdout, gate.stdout
    missing = llmeval(root, "merge", *files[:2], files[3], "-o", "partial.json")
    assert missing.returncode == 2 and "shard 3/4 missing (have 1/4, 2/4, 4/4)" in missing.stderr
    twice = llmeval(root, "merge", *files, files[0], "-o", "twice.json")
    assert twice.returncode == 2 and "shard 1/4 is there twice" in twice.stderr


def test_shards_under_xdist_record_their_collection_and_merge(project: Project) -> None:
    project.write("cases/big.yaml", big_suite(16))
    script(project, range(0, 16, 5))
    root = project.pytester.path
    runs = run_at_once(root, [project.args(f"--llm-shard={i}/2", "-n", "2") for i in (1, 2)])
    assert_clean(runs)
    docs = [read(root / f".llmeval/results-shard-{i}of2.json") for i in (1, 2)]
    assert docs[0]["run"]["collected"] == docs[1]["run"]["collected"] and docs[0]["run"]["collected"]["items"] == 16
    assert sum(len(d["cases"]) for d in docs) == 16
    # A shard of a different collection (a case added between the shards' runs) is refused by the merge.
    project.write("cases/big.yaml", big_suite(17))
    late = project.run("--llm-shard=2/2", "--llm-results=late.json")
    assert late.ret in (0, 1)
    mixed = llmeval(root, "merge", ".llmeval/results-shard-1of2.json", "late.json", "-o", "m.json")
    assert mixed.returncode == 2 and "sharded from different collections (16 vs 17 items" in mixed.stderr
    ok = llmeval(root, "merge", ".llmeval/results-shard-1of2.json", ".llmeval/results-shard-2of2.json", "-o", "m.json")
    assert ok.returncode == 0 and len(read(root / "m.json")["cases"]) == 16


def test_two_shards_at_once_share_the_semantic_cache(project: Project) -> None:
    rows = "\n".join(f"  - {{id: c{i}, question: 'What is the capital of country number {i}?', expect: [{{contains: "
                     "sure}]}" for i in range(8))
    project.write("cases/caps.yaml", f"suite: caps\ncases:\n{rows}\n")
    project.server.default = "sure"
    root = project.pytester.path
    first = run_at_once(root, [project.args(f"--llm-shard={i}/2", "--llm-cache=semantic") for i in (1, 2)])
    assert_clean(first)
    import diskcache

    with diskcache.Cache(str(root / ".llmeval/cache/semantic")) as store:  # both shards' entries, numbered once each
        count = int(store.get("count", 0))
        texts = sorted(store.get(("entry", i))["text"] for i in range(count))
    assert count == 8 and len(set(texts)) == 8
    calls = len(project.server.requests)
    again = run_at_once(root, [project.args(f"--llm-shard={i}/2", "--llm-cache=semantic") for i in (1, 2)])
    assert_clean(again)
    assert len(project.server.requests) == calls
    assert sum(len(read(root / f".llmeval/results-shard-{i}of2.json")["cases"]) for i in (1, 2)) == 8


def test_where_a_shard_writes_its_results(project: Project) -> None:
    """The ini key (shared by every shard) gets the shard's name; a path on the command line is the job's own."""
    project.write("cases/big.yaml", big_suite(4))
    project.server.default = "sure"
    project.pytester.makeini("[pytest]\nllmeval_results = out/res.json\n")
    project.run("--llm-shard=1/2").assert_outcomes(passed=len(read_ids(1)))
    root = project.pytester.path
    assert read(root / "out/res-shard-1of2.json")["run"]["shard"] == "1/2" and not (root / "out/res.json").exists()
    project.run("--llm-shard=2/2", "--llm-results=mine.json")
    assert read(root / "mine.json")["run"]["shard"] == "2/2"


def test_an_empty_shard_succeeds_and_still_writes_its_results(project: Project) -> None:
    """Eight shards of two cases: the six empty ones exit 0 (not pytest's 5, "no tests") and write an empty results
    file, so the merge sees every shard; a collection with nothing in it still exits 5."""
    project.write("cases/two.yaml", "suite: two\ncases:\n  - {id: a, question: A?, expect: [{contains: sure}]}\n"
                  "  - {id: b, question: B?, expect: [{contains: sure}]}\n")
    project.server.default = "sure"
    root = project.pytester.path
    for i in range(1, 9):
        assert project.run(f"--llm-shard={i}/8").ret == 0
    sizes = [len(read(root / f".llmeval/results-shard-{i}of8.json")["cases"]) for i in range(1, 9)]
    assert sorted(sizes) == [0, 0, 0, 0, 0, 0, 1, 1]
    merged = llmeval(root, "merge", *(f".llmeval/results-shard-{i}of8.json" for i in range(1, 9)), "-o", "m.json")
    assert merged.returncode == 0, merged.stderr
    assert sorted(c["case_id"] for c in read(root / "m.json")["cases"]) == ["a", "b"]
    assert project.run("--llm-shard=1/2", "-k", "nothing-matches").ret == 5


def read_ids(shard: int) -> list[str]:
    return [n for i in range(4) if shard_of(n := f"cases/big.yaml::q{i:03d}[openai/test-model]", 2) == shard]


def test_a_shard_cannot_write_the_baseline(project: Project) -> None:
    project.write("cases/big.yaml", big_suite(3))
    result = project.run("--llm-shard=1/2", "--llm-update-baseline")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--llm-update-baseline with --llm-shard 1/2: a shard holds part of the run*"
                                 "llmeval merge <shard results> --baseline .llmeval/baseline.json*"])


# ------------------------------------------------------------------------------------------ the GitHub workflow


class Runner:
    """Runs a workflow's jobs the way GitHub Actions would, for what this example uses: `run:` steps in bash
    (`-e -o pipefail`, as GitHub does), `if:` conditions, matrix jobs in parallel (each in its own copy of the
    repository, as on separate machines), actions/cache/restore and save (immutable keys, restore-keys by prefix,
    newest first), upload-artifact and download-artifact (pattern, merge-multiple). Steps named Install are skipped
    (the environment has the package). Any expression it does not know fails the test."""

    def __init__(self, workflow: dict[str, Any], repo: Path, work: Path, env: dict[str, str]) -> None:
        self.workflow, self.repo, self.work, self.env = workflow, repo, work, env
        self.caches: list[tuple[str, Path]] = []  # (key, saved copy), oldest first
        self.artifacts: dict[str, Path] = {}
        self.lock = threading.Lock()
        self.n = 0

    def expand(self, text: Any, ctx: dict[str, str]) -> Any:
        if not isinstance(text, str):  # true, 4: YAML's own values
            return text

        def value(m: re.Match[str]) -> str:
            assert m.group(1) in ctx, f"the workflow uses ${{{{ {m.group(1)} }}}}, which this runner does not know"
            return ctx[m.group(1)]

        return re.sub(r"\$\{\{\s*(.+?)\s*\}\}", value, text)

    def condition(self, cond: Any, ctx: dict[str, str], failed: bool) -> bool:
        text = re.sub(r"^\$\{\{\s*(.+?)\s*\}\}$", r"\1", str(cond).strip())
        if text == "always()":
            return True
        if text == "!cancelled()":
            return True
        m = re.fullmatch(r"([\w.]+) (==|!=) '([^']*)'", text)
        assert m, f"condition {cond!r}: not known to this runner"
        equal = ctx[m.group(1)] == m.group(3)
        return not failed and (equal if m.group(2) == "==" else not equal)

    def run_job(self, name: str, ctx: dict[str, str]) -> dict[str, Any]:
        job = self.workflow["jobs"][name]
        with self.lock:
            self.n += 1
            where = self.work / f"{name}-{self.n}"
        shutil.copytree(self.repo, where)  # actions/checkout: a fresh copy of the repository
        summary = where.parent / f"{where.name}.summary.md"
        env = {**os.environ, **{k: str(self.expand(v, ctx)) for k, v in (job.get("env") or {}).items()}, **self.env,
               "PATH": BIN + os.pathsep + os.environ["PATH"], "GITHUB_ACTIONS": "true",
               "GITHUB_STEP_SUMMARY": str(summary)}
        failed, log = False, []
        for step in job["steps"]:
            if "if" in step:
                if not self.condition(step["if"], ctx, failed):
                    continue
            elif failed:
                continue
            if step.get("name") == "Install":
                continue
            uses, w = step.get("uses", ""), {k: self.expand(v, ctx) for k, v in (step.get("with") or {}).items()}
            if "run" in step:
                done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", self.expand(step["run"], ctx)], cwd=where,
                                      env=env, capture_output=True, text=True, timeout=600)
                log.append(f"$ {step.get('name')}\n{done.stdout}{done.stderr}")
                failed = failed or done.returncode != 0
            elif uses.startswith(("actions/checkout@", "actions/setup-python@")):
                pass
            elif uses.startswith("actions/cache/restore@"):
                prefixes = [w["key"], *(p.strip() for p in w.get("restore-keys", "").splitlines() if p.strip())]
                with self.lock:
                    for prefix in prefixes:
                        hits = [copy for key, copy in self.caches if key.startswith(prefix)]
                        if hits:
                            shutil.copytree(hits[-1], where / w["path"], dirs_exist_ok=True)
                            break
            elif uses.startswith("actions/cache/save@"):
                with self.lock:
                    if w["key"] not in [key for key, _ in self.caches] and (where / w["path"]).exists():
                        copy = self.work / "caches" / f"{len(self.caches)}"
                        shutil.copytree(where / w["path"], copy)
                        self.caches.append((w["key"], copy))
            elif uses.startswith("actions/upload-artifact@"):
                self.upload(where, w)
            elif uses.startswith("actions/download-artifact@"):
                for art, store in sorted(self.artifacts.items()):
                    if fnmatch.fnmatch(art, w["pattern"]):  # merge-multiple: all in path; else path/<artifact name>
                        target = where / w["path"] if w.get("merge-multiple") is True else where / w["path"] / art
                        shutil.copytree(store, target, dirs_exist_ok=True)
            else:
                raise AssertionError(f"step {step}: not known to this runner")
        return {"failed": failed, "log": "\n".join(log), "dir": where,
                "summary": summary.read_text() if summary.exists() else ""}

    def upload(self, where: Path, w: dict[str, Any]) -> None:
        """upload-artifact: the files of every path (a directory: all under it); hidden files and folders left out
        unless include-hidden-files (v4.4+); stored relative to the paths' least common ancestor."""
        files: list[Path] = []
        roots: list[Path] = []
        for pattern in w["path"].split():
            for match in sorted(where.glob(pattern)):
                found = sorted(f for f in match.rglob("*") if f.is_file()) if match.is_dir() else [match]
                files += found
                roots.append(match if match.is_dir() else match.parent)
        if w.get("include-hidden-files") is not True:
            files = [f for f in files if not any(part.startswith(".") for part in f.relative_to(where).parts)]
        if not files:
            return
        root = Path(os.path.commonpath(roots))
        with self.lock:
            assert w["name"] not in self.artifacts, "artifact names are unique in a workflow run"
            self.artifacts[w["name"]] = store = self.work / "artifacts" / str(self.n) / w["name"]
            self.n += 1
        for f in files:
            (store / f.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, store / f.relative_to(root))

    def run(self, event: str, run_id: int, drop_artifacts: tuple[str, ...] = ()) -> dict[str, Any]:
        """The whole workflow: the shard matrix in parallel, then the gate job (which `needs` it)."""
        self.artifacts = {}
        base = {"github.event_name": event, "github.base_ref": "main" if event == "pull_request" else "",
                "github.run_id": str(run_id), "github.run_attempt": "1", "secrets.OPENAI_API_KEY": API_KEY}
        matrix = self.workflow["jobs"]["shard"]["strategy"]["matrix"]["shard"]
        results: dict[int, dict[str, Any]] = {}

        def shard(i: int) -> None:
            results[i] = self.run_job("shard", {**base, "matrix.shard": str(i), "strategy.job-total": str(len(matrix))})

        threads = [threading.Thread(target=shard, args=(i,)) for i in matrix]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for name in drop_artifacts:  # a shard whose artifact never arrived
            self.artifacts.pop(name)
        assert self.workflow["jobs"]["gate"]["needs"] == "shard"
        return {"shards": [results[i] for i in matrix], "gate": self.run_job("gate", base)}


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=ci", "-c", "user.email=ci@example.com", *args], cwd=repo, check=True,
                   capture_output=True)


def test_the_github_actions_example_runs_as_written(project: Project, tmp_path: Path) -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert workflow["jobs"]["shard"]["strategy"]["fail-fast"] is False
    gate_steps = workflow["jobs"]["gate"]["steps"]
    assert any(s.get("uses", "").startswith("actions/cache/save@") and s.get("if") == "always()" for s in gate_steps)
    repo = project.pytester.path / "repo"
    (repo / "cases").mkdir(parents=True)
    (repo / "cases/big.yaml").write_text(big_suite(24))
    (repo / "cases/geo.yaml").write_text(GEO)
    script(project, range(0, 24, 6))
    project.server.answer("capital of France", "Paris, sure.")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "cases")
    # What the unsharded run says, for comparison.
    whole = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *project.args(
        "--llm-cache=off", f"--llm-results={tmp_path / 'whole.json'}", f"--llm-cache-dir={tmp_path / 'c'}")],
        cwd=repo, capture_output=True, text=True)
    assert whole.returncode == 1, whole.stdout[-2000:]
    shutil.rmtree(repo / ".llmeval", ignore_errors=True)
    # The test's own model and server; the shards without xdist workers (two cores).
    runner = Runner(workflow, repo, tmp_path / "runner", {"LLMEVAL_MODELS": "openai/test-model", "WORKERS": "0",
                                                           "LLMEVAL_API_BASE": project.server.url,
                                                           "LLMEVAL_RETRIES": "0"})

    # 1. On main: the shards run (their failed cases do not fail them), the gate job merges and writes the baseline.
    calls = len(project.server.requests)
    main = runner.run("push", 1)
    assert not any(s["failed"] for s in main["shards"]), [s["log"] for s in main["shards"]]
    assert not main["gate"]["failed"], main["gate"]["log"]
    assert "merged 4 file(s), 27 cases" in main["gate"]["log"]
    assert len(project.server.requests) - calls == 27  # every case once, in its shard
    merged = read(runner.artifacts["llmeval-results"] / "results.json")
    assert outcomes(merged) == outcomes(read(tmp_path / "whole.json"))  # the union of the shards = the whole run
    assert merged["run"]["shard_count"] == 4 and sorted(merged["run"]["shards"]) == ["1/4", "2/4", "3/4", "4/4"]
    assert [key for key, _ in runner.caches] == ["llmeval-cache-1-1"]  # the shards' caches, merged, saved once
    assert "merged 4 cache(s) into .llmeval/cache: 27 answer(s) added" in main["gate"]["log"]
    (repo / ".llmeval").mkdir()
    shutil.copy(runner.artifacts["llmeval-results"] / "baseline.json", repo / ".llmeval/baseline.json")
    git(repo, "add", ".llmeval/baseline.json")
    git(repo, "commit", "-qm", "baseline")
    git(repo, "update-ref", "refs/remotes/origin/main", "HEAD")

    # 2. A pull request that changes nothing: each shard's restored cache answers everything; the gate passes.
    calls = len(project.server.requests)
    same = runner.run("pull_request", 2)
    assert not same["gate"]["failed"], same["gate"]["log"]
    assert len(project.server.requests) == calls
    assert "gate passed" in same["gate"]["log"] and "gate passed :white_check_mark:" in same["gate"]["summary"]

    # 2b. The same with three shards instead of four: the merged cache still answers every shard.
    three = {**workflow, "jobs": {**workflow["jobs"], "shard": {**workflow["jobs"]["shard"], "strategy": {
        **workflow["jobs"]["shard"]["strategy"], "matrix": {"shard": [1, 2, 3]}}}}}
    runner.workflow = three
    regrouped = runner.run("pull_request", 5)
    runner.workflow = workflow
    assert not regrouped["gate"]["failed"], regrouped["gate"]["log"]
    assert len(project.server.requests) == calls and "merged 3 file(s), 27 cases" in regrouped["gate"]["log"]

    # 3. A pull request whose new system prompt breaks 6 cases that passed: new answers, a regression, once.
    (repo / "cases/big.yaml").write_text(big_suite(24, system="Answer in French."))
    for i in (1, 2, 3, 4, 5, 7):
        project.server.answer(f"number {i:03d}?", "non")
    git(repo, "commit", "-qam", "prompt")
    worse = runner.run("pull_request", 3)
    assert not any(s["failed"] for s in worse["shards"])
    assert worse["gate"]["failed"], worse["gate"]["log"]
    assert "regression" in worse["gate"]["log"] and "gate failed" in worse["gate"]["log"]
    assert "gate **failed** :x:" in worse["gate"]["summary"]
    assert "::error file=cases/big.yaml" in worse["gate"]["log"]  # annotations on the regressed cases' lines

    # 4. A shard whose results never arrived: the merge says which, and the gate job fails.
    lost = runner.run("pull_request", 4, drop_artifacts=("llmeval-shard-3",))
    assert lost["gate"]["failed"] and "shard 3/4 missing (have 1/4, 2/4, 4/4)" in lost["gate"]["log"]
