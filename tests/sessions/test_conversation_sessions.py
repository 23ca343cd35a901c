"""Conversation cases in whole sessions: a scripted conversation (``turns:``) on the --llm model and on a Python
application target, a simulated user (``simulate:``) graded by the goal check, max_turns, the cache, results.json
transcripts, xdist, and the bad inputs (each one clear error with its file and line, the other suites still run).

The model, the application's own model, the simulated user and the judge are all the scripted OpenAI-compatible
server, called through litellm.
"""

from __future__ import annotations

import glob
import json
from typing import Any

import pytest

from conftest import GEO, Project, script_geo
from conftest import SUPPORT_CONVERSATION as SCRIPT

JUDGE = "openai/judge-model"


def _script(project: Project, model: str | None = None) -> None:
    server = project.server
    server.answer("reset my password", "Click 'Forgot password' on the login page.", model=model)
    server.answer("lost my email", "Then contact support@example.com.", model=model)
    server.answer("Thanks, bye", "You're welcome!", model=model)
    server.answer("refund", "Yes, within 30 days of purchase.", model=model)
    server.answer("How long", "It takes a while.", model=model)  # no "days": turn 2's check fails


def _cases(project: Project) -> dict[str, dict[str, Any]]:
    return {c["case_id"]: c for c in project.results()["cases"]}


def _expected_histories() -> list[list[dict[str, str]]]:
    system = {"role": "system", "content": "You are a support bot."}
    q1, a1 = "How do I reset my password?", "Click 'Forgot password' on the login page."
    q2, a2 = "And if I lost my email too?", "Then contact support@example.com."
    return [
        [system, {"role": "user", "content": q1}],
        [system, {"role": "user", "content": q1}, {"role": "assistant", "content": a1},
         {"role": "user", "content": q2}],
        [system, {"role": "user", "content": q1}, {"role": "assistant", "content": a1},
         {"role": "user", "content": q2}, {"role": "assistant", "content": a2},
         {"role": "user", "content": "Thanks, bye"}],
    ]


def test_a_scripted_conversation_on_the_model(project: Project) -> None:
    project.write("cases/support.yaml", SCRIPT)
    _script(project)
    result = project.run()
    result.assert_outcomes(passed=1, failed=1)
    # Each turn, the model received the whole history.
    reset = [r["messages"] for r in project.server.requests
             if any("reset my password" in str(m["content"]) for m in r["messages"])]
    assert reset == _expected_histories()
    # A failing turn check names its turn; the report shows the conversation, not a prompt and an answer.
    result.stdout.fnmatch_lines([
        "*case refund (support.yaml:*) failed on openai/test-model*",
        "*conversation (2 turns, the script ended):*",
        "*user: Can I get a refund?*",
        "*assistant: Yes, within 30 days of purchase.*",
        "*user: How long does it take?*",
        "*assistant: It takes a while.*",
        "*^ FAIL turn 2: contains*",
        "*FAIL turn 2: contains*",
    ])
    cases = _cases(project)
    reset_case = cases["reset"]
    assert [(c["check"], c["passed"]) for c in reset_case["checks"]] == [("turn 2: contains", True),
                                                                        ("contains", True)]
    assert reset_case["prompt"] == "How do I reset my password?"
    assert reset_case["answer"] == "You're welcome!"
    transcript = reset_case["transcript"]
    assert transcript["ended"] == "script" and "simulated" not in transcript
    assert [(t["turn"], t["user"], t["answer"]) for t in transcript["turns"]] == [
        (0, "How do I reset my password?", "Click 'Forgot password' on the login page."),
        (1, "And if I lost my email too?", "Then contact support@example.com."),
        (2, "Thanks, bye", "You're welcome!"),
    ]
    assert all(t["references"] == [] and t["usage"]["calls"] == 1 for t in transcript["turns"])
    # The draw's tokens are every turn's.
    assert reset_case["prompt_tokens"] == sum(t["usage"]["prompt_tokens"] for t in transcript["turns"])
    refund = cases["refund"]
    assert refund["outcome"] == "failed"
    assert [(c["check"], c["passed"]) for c in refund["checks"]] == [("turn 2: contains", False)]


def test_the_second_run_of_a_conversation_is_served_from_the_cache(project: Project) -> None:
    project.write("cases/support.yaml", SCRIPT)
    _script(project)
    project.run().assert_outcomes(passed=1, failed=1)
    asked = len(project.server.requests)
    assert asked == 5
    again = project.run()
    again.assert_outcomes(passed=1, failed=1)
    assert len(project.server.requests) == asked, "every turn replays from the cache"
    assert all(c["cached"] for c in _cases(project).values())


@pytest.mark.parametrize("concurrency", [8, 1])
def test_the_conversations_of_several_items_run_side_by_side_in_the_prefetch_pool(project: Project,
                                                                                   concurrency: int) -> None:
    """With the pool, each draw's whole conversation runs in a pool thread, so the next item's conversation starts
    while this one waits for an answer (a local model then generates their turns together); its turns stay in
    order. With --llm-concurrency=1 (no pool) the conversations run one after the other, as before."""
    project.write("cases/support.yaml", SCRIPT)
    project.server.answer("reset my password", "Click 'Forgot password' on the login page.", delay=1.0)  # first match
    _script(project)
    project.run(f"--llm-concurrency={concurrency}").assert_outcomes(passed=1, failed=1)
    asked = [str(r["messages"][-1]["content"]) for r in project.server.requests]
    assert sorted(asked) == sorted(["How do I reset my password?", "And if I lost my email too?", "Thanks, bye",
                                    "Can I get a refund?", "How long does it take?"])
    reset = [q for q in asked if q in ("How do I reset my password?", "And if I lost my email too?", "Thanks, bye")]
    assert reset == ["How do I reset my password?", "And if I lost my email too?", "Thanks, bye"]
    if concurrency > 1:  # the refund conversation ran while the reset one waited for its slow first answer
        assert asked.index("How long does it take?") < asked.index("And if I lost my email too?")
    else:
        assert asked == [*reset, "Can I get a refund?", "How long does it take?"]
    cases = _cases(project)
    assert [t["answer"] for t in cases["reset"]["transcript"]["turns"]] == [
        "Click 'Forgot password' on the login page.", "Then contact support@example.com.", "You're welcome!"]
    assert cases["refund"]["outcome"] == "failed"


def test_each_draw_is_a_conversation_of_its_own(project: Project) -> None:
    project.write("cases/support.yaml", SCRIPT)
    _script(project)
    project.run("--llm-repeat=2").assert_outcomes(passed=1, failed=1)
    assert len(project.server.requests) == 10, "two draws of five turns, each in its own cache slot"
    reset = _cases(project)["reset"]
    assert reset["repeats"]["n"] == 2 and reset["repeats"]["passed"] == 2
    assert [s["answer"] for s in reset["samples"]] == ["You're welcome!", "You're welcome!"]
    assert reset["calls"] == 2 and reset["prompt_tokens"] == 2 * sum(
        t["usage"]["prompt_tokens"] for t in reset["transcript"]["turns"])


BOT = '''\
import json, os
import litellm
from pytest_llmeval import Answer, Reference

LOG = os.path.join(os.path.dirname(__file__), "turns.log")


def answer(request):
    with open(LOG, "a") as f:
        f.write(json.dumps({"case": request.case_id, "turn": request.turn, "prompt": request.prompt,
                            "messages": request.messages, "model": request.model}) + "\\n")
    if "explode" in request.prompt:
        raise RuntimeError("the router lost its index")
    reply = litellm.completion(model="openai/bot-model", api_base=os.environ["BOT_API_BASE"], api_key="sk-bot",
                               messages=request.messages, num_retries=0)
    return Answer(reply.choices[0].message.content,
                  references=[Reference(f"docs/turn{request.turn}.md", "A passage.", 0.8)])
'''


def test_a_scripted_conversation_on_an_application_target(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    project.write("bot.py", BOT)
    project.write("cases/support.yaml", SCRIPT.replace("system: You are a support bot.\n",
                                                       'system: You are a support bot.\ntarget: {python: "bot:answer"}\n'))
    monkeypatch.setenv("BOT_API_BASE", project.server.url)
    _script(project, model="bot-model")
    result = project.run()
    result.assert_outcomes(passed=1, failed=1)
    log = [json.loads(line) for line in (project.pytester.path / "turns.log").read_text().splitlines()]
    reset = [e for e in log if e["case"] == "reset"]
    assert [e["turn"] for e in reset] == [0, 1, 2]
    assert [e["prompt"] for e in reset] == ["How do I reset my password?", "And if I lost my email too?", "Thanks, bye"]
    assert [e["messages"] for e in reset] == _expected_histories()
    assert {e["model"] for e in log} == {"openai/test-model"}
    assert not [r for r in project.server.requests if r["model"] == "test-model"], "the model itself is not asked"
    case = _cases(project)["reset"]
    assert case["target"] == "python:bot:answer"
    # Each turn keeps its references; the case's are the final answer's.
    assert [t["references"][0]["source"] for t in case["transcript"]["turns"]] == [
        "docs/turn0.md", "docs/turn1.md", "docs/turn2.md"]
    assert [r["source"] for r in case["references"]] == ["docs/turn2.md"]
    # The application's own model calls over the three turns are the case's.
    assert case["app_usage"]["calls"] == 3
    assert all(t["usage"]["calls"] == 1 for t in case["transcript"]["turns"])


def test_an_application_failing_mid_conversation_is_an_error(project: Project, monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    project.write("bot.py", BOT)
    project.write("cases/support.yaml", """\
suite: support
target: {python: "bot:answer"}
cases:
  - id: boom
    turns: [Hello, explode now]
    expect: [{contains: x}]
""")
    monkeypatch.setenv("BOT_API_BASE", project.server.url)
    result = project.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*target python:bot:answer raised RuntimeError: the router lost its index*"])


SIMULATED = """\
suite: export
system: You are a shop assistant.
cases:
  - id: csv
    simulate:
      persona: A hurried customer who writes short messages.
      goal: Export the orders as CSV.
      max_turns: 4
      model: openai/sim-model
    expect: [{goal: true}]
  - id: stuck
    simulate:
      persona: A confused customer.
      goal: Find the invoice of order 42.
      max_turns: 2
      model: openai/sim-invoice
    expect: [{goal: true}]
"""


def _simulated(project: Project) -> None:
    server = project.server
    # The simulated users (one model each: the two conversations run side by side in the prefetch pool, so their
    # openers arrive in either order): opens, then stops with the marker once the assistant gave the steps.
    server.answer("conversation starts now", "How do I export my orders?", model="sim-model")
    server.answer("conversation starts now", "Where is my invoice?", model="sim-invoice")
    server.answer("File > Export", "Great, that works. GOAL_REACHED", model="sim-model")
    server.answer("I cannot find", "Please look again.", model="sim-invoice")
    # The model under test.
    server.answer("export my orders", "Open File > Export and pick CSV.", model="test-model")
    server.answer("invoice", "I cannot find that invoice.", model="test-model")
    server.answer("look again", "I cannot find it, sorry.", model="test-model")
    # The judge.
    server.answer("The user's goal: Export the orders as CSV.", '{"score": 9, "reason": "Clear steps."}',
                  model="judge-model")
    server.answer("The user's goal: Find the invoice", '{"score": 2, "reason": "Never found."}', model="judge-model")


def test_a_simulated_user_reaches_its_goal_or_runs_out_of_turns(project: Project) -> None:
    project.write("cases/export.yaml", SIMULATED)
    _simulated(project)
    result = project.run(f"--llm-judge={JUDGE}")
    result.assert_outcomes(passed=1, failed=1)
    cases = _cases(project)
    csv = cases["csv"]
    transcript = csv["transcript"]
    assert transcript["ended"] == "goal" and transcript["simulated"] is True
    assert transcript["closing"] == "Great, that works."
    assert [(t["user"], t["answer"]) for t in transcript["turns"]] == [
        ("How do I export my orders?", "Open File > Export and pick CSV.")]
    assert transcript["simulated_user"]["model"] == "openai/sim-model"
    assert transcript["simulated_user"]["calls"] == 2
    goal = csv["checks"][0]
    assert goal["check"] == "goal" and goal["passed"] and goal["score"] == 0.9
    assert csv["answer"] == "Open File > Export and pick CSV."
    # The target saw the system prompt and the simulated user's messages; the marker never reached it.
    target = [r["messages"] for r in project.server.requests if r["model"] == "test-model"
              and any("export" in str(m["content"]) for m in r["messages"])]
    assert target == [[{"role": "system", "content": "You are a shop assistant."},
                       {"role": "user", "content": "How do I export my orders?"}]]
    # The judge read the whole conversation.
    judged = next(r for r in project.server.requests if r["model"] == "judge-model" and "CSV" in str(r["messages"]))
    assert "User: How do I export my orders?\nAssistant: Open File > Export and pick CSV.\nUser: Great, that works." \
        in judged["messages"][-1]["content"]

    stuck = cases["stuck"]
    assert stuck["outcome"] == "failed"
    assert stuck["transcript"]["ended"] == "max_turns" and len(stuck["transcript"]["turns"]) == 2
    result.stdout.fnmatch_lines([
        "*case stuck (export.yaml:*) failed on openai/test-model*",
        "*conversation (2 turns, max_turns reached):*",
        "*user: Where is my invoice?*",
        "*FAIL goal (score 0.20): goal 2/10 < min 7: Never found.*",
    ])

    # A rerun replays the simulated user, the model and the judge from the cache.
    asked = len(project.server.requests)
    project.run(f"--llm-judge={JUDGE}").assert_outcomes(passed=1, failed=1)
    assert len(project.server.requests) == asked
    assert _cases(project)["csv"]["transcript"]["simulated_user"]["cached"] is True


def test_an_unusable_simulated_user_model_stops_the_run_before_any_call(project: Project) -> None:
    project.write("cases/export.yaml", SIMULATED.replace("openai/sim-model", "nosuchprovider/sim"))
    result = project.run(f"--llm-judge={JUDGE}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *nosuchprovider/sim: unknown provider*"])
    assert project.server.requests == []


def test_conversations_under_xdist(project: Project) -> None:
    project.write("cases/support.yaml", SCRIPT)
    project.write("cases/export.yaml", SIMULATED)
    _script(project, model="test-model")
    _simulated(project)
    result = project.run(f"--llm-judge={JUDGE}", "-n", "2")
    result.assert_outcomes(passed=2, failed=2)
    cases = _cases(project)
    assert cases["reset"]["transcript"]["ended"] == "script" and len(cases["reset"]["transcript"]["turns"]) == 3
    assert cases["csv"]["transcript"]["ended"] == "goal"
    assert cases["stuck"]["transcript"]["ended"] == "max_turns"


def test_bad_conversations_are_one_clear_error_each_and_the_other_suites_run(project: Project) -> None:
    project.write("cases/geo.yaml", GEO)
    script_geo(project.server)
    project.write("cases/quiz.yaml", """\
suite: quiz
kind: choice
cases:
  - id: pick
    question: Which?
    choices: {A: one, B: two}
    answer: A
    turns: [Hello]
""")
    project.write("cases/chat.yaml", """\
suite: chat
cases:
  - id: unknown-turn-check
    turns:
      - Hello
      - user: Bye
        expect:
          - contians: bye
  - id: goal-alone
    question: What is 2 + 2?
    expect:
      - goal: true
  - id: goal-in-a-turn
    turns:
      - user: Hello
        expect: [{goal: true}]
  - id: nothing-to-check
    simulate: {persona: A customer., goal: Buy a hat.}
""")
    result = project.run()
    result.assert_outcomes(passed=2, failed=1, errors=5)
    result.stdout.fnmatch_lines_random([f"ERROR {glob.escape(line)}*" for line in [
        "cases/quiz.yaml::pick - cases/quiz.yaml:8: cases[0].turns: a conversation (turns) applies to qna cases, "
        "not 'choice'",
        "cases/chat.yaml::unknown-turn-check - cases/chat.yaml:8: cases[0].turns[1].expect[0].contians: unknown "
        "check 'contians'",
        "cases/chat.yaml::goal-alone - cases/chat.yaml:12: cases[1].expect[0].goal: the goal check grades a "
        "conversation: this case has no turns or simulate",
        "cases/chat.yaml::goal-in-a-turn - cases/chat.yaml:16: cases[2].turns[0].expect[0].goal: the goal check "
        "grades the whole conversation: put it in the case's expect, not in a turn's",
        "cases/chat.yaml::nothing-to-check - cases/chat.yaml:17: cases[3].expect: no checks: a simulated "
        "conversation is graded as a whole, e.g. expect: [{goal: true}]",
    ]])
