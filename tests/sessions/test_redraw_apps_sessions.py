"""The gate's redraws (``--llm-gate-redraws``) and ``--llm-repeat auto`` for agent, application and conversation
cases, in whole sessions: each draw takes its cache slot for every call it makes (every step of a trajectory, every
turn, the simulated user's messages, the application's request), so a redraw is a new sample and a rerun of the same
looks is served from the cache.

The model, the application's own model and the simulated user are the scripted server, called through litellm;
noise is scripted as cycling answers (each call of a case the next one).
"""

from __future__ import annotations

import collections

import pytest

from conftest import Project

N = 20  # cases per suite: the fewest whose scripted drop the run alone cannot confirm and one redraw look can
WORSE = range(9)  # passed at baseline, fail now
NOISY = (17, 18, 19)  # failed at baseline, now pass at their first draw only (one answer in three passes)

BOT = '''\
import os
import litellm

LOG = os.path.join(os.path.dirname(__file__), "samples.log")


def answer(request):
    with open(LOG, "a") as f:
        f.write(f"{request.case_id} {request.sample}\\n")
    reply = litellm.completion(model="openai/bot-model", api_base=os.environ["BOT_API_BASE"], api_key="sk-bot",
                               messages=request.messages, num_retries=0)
    return reply.choices[0].message.content
'''

CONFTEST = """\
import pytest

import bot


@pytest.fixture
def bot_app():
    return bot.answer
"""

AGENT = """\
suite: agent
tools:
  - type: function
    function:
      name: lookup
      description: Look a topic up.
      parameters: {{type: object, properties: {{topic: {{type: string}}}}, required: [topic]}}
returns:
  lookup:
    - default: {{found: true}}
agent: {{max_steps: 3}}
{pass_if}cases:
{rows}
"""


def agent_rows(ids: list[int]) -> str:
    return "\n".join(f"  - {{id: a{i:03d}, prompt: 'Agent task {i:03d}?', expect: [{{contains: sure}}]}}" for i in ids)


def app_suite(ids: list[int], pass_if: str = "", target: str = "python: 'bot:answer'") -> str:
    rows = "\n".join(f"  - {{id: p{i:03d}, question: 'App query {i:03d}?', expect: [{{contains: sure}}]}}" for i in ids)
    return f"suite: app\ntarget: {{{target}, version: 1}}\n{pass_if}cases:\n{rows}\n"


def chat_suite(ids: list[int], pass_if: str = "", extra: str = "") -> str:
    rows = "\n".join(f"  - id: c{i:03d}\n    turns: ['Hello there, chat {i:03d}', 'Chat topic {i:03d}?']\n"
                     f"    expect: [{{contains: sure}}]" for i in ids)
    return f"suite: chat\n{pass_if}cases:\n{rows}\n{extra}"


def write(project: Project, monkeypatch: pytest.MonkeyPatch, ids: list[int], pass_if: str = "",
          chat_extra: str = "", target: str = "python: 'bot:answer'") -> None:
    project.write("bot.py", BOT)
    project.write("conftest.py", CONFTEST)
    project.write("cases/agent.yaml", AGENT.format(pass_if=pass_if, rows=agent_rows(ids)))
    project.write("cases/app.yaml", app_suite(ids, pass_if, target))
    project.write("cases/chat.yaml", chat_suite(ids, pass_if, chat_extra))
    monkeypatch.setenv("BOT_API_BASE", project.server.url)


def script(project: Project, answers: dict[int, str | list[str]]) -> None:
    """Every suite's case i answers ``answers[i]`` (a list cycles), the others "sure"; an agent first calls its
    tool, then answers from its result (both steps are calls of the draw)."""
    server = project.server
    server.reset()
    server.default = "sure"
    for i, reply in answers.items():
        server.answer(f"agent task {i:03d}?", reply, after_tool="found")  # type: ignore[arg-type]
        server.answer(f"app query {i:03d}?", reply, model="bot-model")  # type: ignore[arg-type]
        server.answer(f"chat topic {i:03d}?", reply)  # type: ignore[arg-type]
    server.answer("agent task", "sure", after_tool="found")
    server.tool_call("agent task", "lookup", {"topic": "it"})


def samples_log(project: Project) -> collections.Counter[int]:
    log = project.pytester.path / "samples.log"
    return collections.Counter(int(line.split()[1]) for line in log.read_text().splitlines())


def test_redraws_decide_agent_application_and_conversation_suites_and_replay(project: Project,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    write(project, monkeypatch, list(range(N)))
    script(project, {i: "no" for i in NOISY})
    project.run("--llm-update-baseline", "--llm-baseline=b.json", "--llm-cache=off").assert_outcomes(passed=51,
                                                                                                      failed=9)
    (project.pytester.path / "samples.log").unlink()
    script(project, {**{i: "no" for i in WORSE}, **{i: ["sure", "no", "no"] for i in NOISY}})
    # 9 worse, 3 better on the run's draws: a 30-point drop the run alone cannot confirm (p = 0.073); one redraw of
    # every case shows the 3 were luck.
    result = project.run("--llm-baseline=b.json", "--llm-cache=on", "--llm-gate-redraws=200", "-n", "2")
    assert result.ret == 1, result.stdout.str()
    lines = [f"*{s} [[]openai/test-model]: pass rate fell 37.5 points (> 5) over 2 draw(s) per case, 20 answers "
             "redrawn in 1 look(s): p = 0.0176 < 0.025*" for s in ("agent", "app", "chat")]
    result.stdout.fnmatch_lines_random(lines)
    gate = project.results()["gate"]
    assert gate["redraws"]["used"] == 60 and gate["redraws"]["looks"] == 1 and gate["redraws"]["calls"] == 60
    for suite in gate["suites"]:
        assert suite["verdict"] == "regression", suite
        first, second = suite["sequential"]["looks"]
        assert first["decision"] == "continue" and first["p_value"] > 0.05  # inconclusive without redraws
        assert second["decision"] == "regression" and suite["sequential"]["calls"] == N
    # Every call of a draw took its slot: agent 2 steps and conversation 2 turns per draw, 1 bot call per draw; the
    # redraws as many new calls again (served from the cache at slot 0, they would be missing here).
    models = collections.Counter(r["model"] for r in project.server.requests)
    assert models == {"test-model": 2 * (2 * N + 2 * N), "bot-model": 2 * N}
    assert samples_log(project) == {0: N, 1: N}  # the application saw the run's slot, then the redraw's
    # A rerun replays the run and its redraws from the cache: the same verdicts, no call at all.
    script(project, {})  # any call made now would pass
    again = project.run("--llm-baseline=b.json", "--llm-cache=on", "--llm-gate-redraws=200")
    assert again.ret == 1 and project.server.requests == []
    again.stdout.fnmatch_lines_random(lines)
    redraws = project.results()["gate"]["redraws"]
    assert redraws["calls"] == 60 and redraws["cached_calls"] == 60
    assert samples_log(project) == {0: N, 1: N}


SIMULATED = """\
  - id: sim
    simulate: {persona: A curious user., goal: Get an answer., max_turns: 1, model: openai/sim-model}
    expect: [{contains: sure}]
"""


def test_repeat_auto_draws_agent_application_and_conversation_cases_until_settled(project: Project,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # The application is a fixture target here: its draws past the first few are asked in the item's call phase.
    write(project, monkeypatch, [0, 1], pass_if="pass_if: majority\n", chat_extra=SIMULATED, target="fixture: bot_app")

    def scripted() -> None:
        script(project, {1: ["sure", "no"]})  # case 0 steady, case 1 alternates: pass, fail, pass, fail, pass
        project.server.answer("conversation starts now", "Tell me something?", model="sim-model")

    scripted()
    result = project.run("--llm-repeat=auto:5", "--llm-cache=on")
    result.assert_outcomes(passed=7)
    cases = {c["case_id"]: c for c in project.results()["cases"]}
    # majority of 5: three agreeing draws settle a steady case, the alternating one needs all five
    assert {cid: c["repeats"]["n"] for cid, c in cases.items()} == {
        "a000": 3, "a001": 5, "p000": 3, "p001": 5, "c000": 3, "c001": 5, "sim": 3}
    assert {cid: c["calls"] for cid, c in cases.items()} == {cid: c["repeats"]["n"] for cid, c in cases.items()}
    assert [len(s["trajectory"]["steps"]) for s in cases["a001"]["samples"]] == [1] * 5
    assert cases["sim"]["transcript"]["simulated_user"]["calls"] == 3
    # With the cache on, every draw's calls were still made: each took its own slot (agent: tool step and answer;
    # conversation: both turns; the simulated user once per draw).
    models = collections.Counter(r["model"] for r in project.server.requests)
    assert models == {"test-model": 2 * 8 + 2 * 8 + 3, "bot-model": 8, "sim-model": 3}
    assert samples_log(project) == {0: 2, 1: 2, 2: 2, 3: 1, 4: 1}
    scripted()
    project.run("--llm-repeat=auto:5", "--llm-cache=on").assert_outcomes(passed=7)
    assert project.server.requests == []  # every draw replayed from its slot
    assert {c["case_id"]: c["repeats"]["n"] for c in project.results()["cases"]}["a001"] == 5
