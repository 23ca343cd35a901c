"""Conversations: the case fields (turns, simulate), the runner (a script, a simulated user), the goal check and the
judge over a transcript -- the judge and the simulated user are real litellm calls to the scripted server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ConfigDict, ValidationError

from pytest_llmeval.cases.conversation import ConversationFields, SimulateModel, parse_turn_checks, turn_texts
from pytest_llmeval.cases.schema import CaseModel, CaseSpec, _pydantic_errors, format_loc, parse_check
from pytest_llmeval.checks.builtin import builtin_registry
from pytest_llmeval.checks.conversation import CHECKS as CONVERSATION_CHECKS
from pytest_llmeval.checks.conversation import GoalParams, grade_goal
from pytest_llmeval.checks.judge import JudgeEnv, JudgeParams, grade_judge, judge_messages
from pytest_llmeval.core.answer import Answer, Reference, Usage
from pytest_llmeval.core.checks import CheckRegistry, GradeContext
from pytest_llmeval.providers.runner import Completion
from pytest_llmeval.targets.conversation import (
    SIMULATED_USER_START,
    Conversation,
    run_script,
    run_simulation,
    simulated_user_system,
    split_marker,
    turn_check_name,
)
from tests.helpers.llm_server import ScriptedLLMServer

# ------------------------------------------------------------------------------------------- the case fields


class ConversationCase(ConversationFields, CaseModel):
    """How cases/schema.py's CaseModel takes the fields (free fields allowed, as on a case)."""

    model_config = ConfigDict(extra="allow")


def problems(raw: dict[str, Any]) -> list[tuple[str, str]]:
    try:
        ConversationCase.model_validate(raw)
    except ValidationError as exc:
        return [(format_loc(loc), msg) for loc, msg in _pydantic_errors(exc, ("cases", 3), ConversationCase)]
    return []


def test_turns_are_strings_or_user_with_expect() -> None:
    case = ConversationCase.model_validate({"id": "c", "turns": ["Hi", {"user": "More?", "expect": [{"contains": "x"}]}],
                                            "topic": "free fields stay allowed"})
    assert case.turns is not None and [t.user for t in case.turns] == ["Hi", "More?"]
    assert case.turns[0].expect == [] and case.turns[1].expect == [{"contains": "x"}]
    assert case.is_conversation and turn_texts(case.turns) == ["Hi", "More?"]
    assert turn_texts(["a", {"user": "b"}]) == ["a", "b"]
    assert case.model_dump()["turns"] == [{"user": "Hi", "expect": []}, {"user": "More?", "expect": [{"contains": "x"}]}]
    assert not ConversationCase.model_validate({"id": "c", "question": "Q?"}).is_conversation


def test_simulate_defaults() -> None:
    case = ConversationCase.model_validate({"id": "c", "simulate": {"persona": "A hurried customer.",
                                                                    "goal": "Export as CSV."}})
    assert case.simulate == SimulateModel(persona="A hurried customer.", goal="Export as CSV.", max_turns=5,
                                          model=None, first_message=None, stop="GOAL_REACHED")
    full = {"persona": "p", "goal": "g", "max_turns": 20, "model": "openai/sim", "first_message": "Hi!", "stop": "DONE"}
    assert ConversationCase.model_validate({"id": "c", "simulate": full}).simulate == SimulateModel(**full)


@pytest.mark.parametrize(("raw", "expected"), [
    ({"turns": []}, [("cases[3].turns", "List should have at least 1 item after validation, not 0")]),
    ({"turns": "Hi"}, [("cases[3].turns", "Input should be a valid list (got 'Hi')")]),
    ({"turns": ["Hi", 3]}, [("cases[3].turns[1]",
                                "expected the user's message, or {user: <message>, expect: [<checks>]} (got int 3)")]),
    ({"turns": [""]}, [("cases[3].turns[0].user", "String should have at least 1 character (got '')")]),
    ({"turns": [{"expect": [{"contains": "x"}]}]}, [("cases[3].turns[0].user", "required field is missing")]),
    ({"turns": [{"user": "Hi", "expcet": []}]}, [("cases[3].turns[0].expcet", "unknown field; did you mean 'expect'?")]),
    ({"turns": [{"user": "Hi", "expect": {"contains": "x"}}]},
     [("cases[3].turns[0].expect", "Input should be a valid list")]),
    ({"simulate": {"persona": "p"}}, [("cases[3].simulate.goal", "required field is missing")]),
    ({"simulate": {"persona": "p", "goal": "g", "max_turns": 0}},
     [("cases[3].simulate.max_turns", "Input should be greater than or equal to 1 (got 0)")]),
    ({"simulate": {"persona": "p", "goal": "g", "max_turns": 21}},
     [("cases[3].simulate.max_turns", "Input should be less than or equal to 20 (got 21)")]),
    ({"simulate": {"persona": "p", "goal": "g", "persna": "x"}},
     [("cases[3].simulate.persna", "unknown field; did you mean 'persona'?")]),
    ({"simulate": {"persona": "p", "goal": "g", "stop": " DONE"}},
     [("cases[3].simulate.stop", "the stop marker must not start or end with spaces")]),
    ({"simulate": {"persona": "", "goal": "g"}},
     [("cases[3].simulate.persona", "String should have at least 1 character (got '')")]),
    ({"simulate": "be a customer"},
     [("cases[3].simulate", "expected a mapping: {persona: <who the user is>, goal: <what they want>, max_turns: 5}")]),
    ({"turns": ["Hi"], "simulate": {"persona": "p", "goal": "g"}},
     [("cases[3]", "a case holds a script (turns) or a simulated user (simulate), not both")]),
])
def test_each_invalid_form_is_located_and_explained(raw: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert problems({"id": "c", **raw}) == expected


def parse(registry: CheckRegistry, line_of: Any = lambda loc: None) -> Any:
    """schema.parse_check for a qna case, as the loader binds it."""
    return lambda entry, loc: parse_check(entry, loc, "qna", registry, line_of)


def test_turn_checks_are_parsed_with_their_locations() -> None:
    registry = builtin_registry()
    lines = {("cases", 3, "turns", 1, "expect", 0): 12}
    turns = ["Hi", {"user": "More?", "expect": [{"contains": "x"}, {"nope": 1}, "bare", {"regex": "("}]}]
    per_turn, found = parse_turn_checks(turns, ("cases", 3), parse(registry, lambda loc: lines.get(loc)))
    assert [[c.name for c in t] for t in per_turn] == [[], ["contains"]]
    assert per_turn[1][0].line == 12 and per_turn[1][0].params.value == "x"
    assert [(format_loc(loc), msg.split(";")[0]) for loc, msg in found] == [
        ("cases[3].turns[1].expect[1].nope", "unknown check 'nope'"),
        ("cases[3].turns[1].expect[2]", "expected a one-key mapping naming a check, e.g. {contains: Paris}"),
        ("cases[3].turns[1].expect[3].regex.pattern", "invalid regular expression: missing ), unterminated "
                                                      "subpattern at position 0"),
    ]
    # malformed turns are the schema's to report
    assert parse_turn_checks("Hi", ("cases", 0), parse(registry)) == ([], [])
    assert parse_turn_checks([3, {"user": "x", "expect": "no"}], (), parse(registry)) == ([[], []], [])


def test_a_turn_check_for_another_kind_is_refused() -> None:
    registry = builtin_registry()
    _, found = parse_turn_checks([{"user": "x", "expect": [{"choice": True}]}], ("cases", 0), parse(registry))
    assert [format_loc(loc) for loc, _ in found] == ["cases[0].turns[0].expect[0].choice"]
    assert "applies to choice cases, not 'qna'" in found[0][1]


# ------------------------------------------------------------------------------------------- a script


class Target:
    """A target that records the messages of every call and answers from a list."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[list[dict[str, Any]], int]] = []

    def __call__(self, messages: list[dict[str, Any]], turn: int) -> Any:
        self.calls.append((messages, turn))
        messages.append({"role": "user", "content": "mutated by the target"})  # must not leak into the history
        return self.answers[turn]


def test_a_script_sends_the_whole_history_each_turn() -> None:
    target = Target(Answer("Paris.", references=[Reference("geo.md", "Paris is the capital.", 0.9)],
                           usage=Usage(1, 10, 2)), "About 2 million.", Answer("You're welcome."))
    conversation = run_script(["Capital of France?", {"user": "Population?"}, "Thanks"], target, system="Be brief.")
    sys = {"role": "system", "content": "Be brief."}
    assert [turn for _, turn in target.calls] == [0, 1, 2]
    assert [messages[:-1] for messages, _ in target.calls] == [
        [sys, {"role": "user", "content": "Capital of France?"}],
        [sys, {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."},
         {"role": "user", "content": "Population?"}],
        [sys, {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."},
         {"role": "user", "content": "Population?"}, {"role": "assistant", "content": "About 2 million."},
         {"role": "user", "content": "Thanks"}],
    ]
    assert conversation.ended == "script" and conversation.final == Answer("You're welcome.")
    assert conversation.turns[0] == {"turn": 0, "user": "Capital of France?", "answer": "Paris.",
                                     "references": [{"n": 1, "source": "geo.md", "text": "Paris is the capital.",
                                                     "score": 0.9}],
                                     "usage": {"calls": 1, "prompt_tokens": 10, "completion_tokens": 2,
                                               "cost_usd": None, "latency_s": None}}
    assert conversation.turns[1]["references"] == [] and conversation.turns[1]["usage"] is None
    assert conversation.transcript() == [
        {"role": "user", "content": "Capital of France?", "turn": 0}, {"role": "assistant", "content": "Paris.", "turn": 0},
        {"role": "user", "content": "Population?", "turn": 1},
        {"role": "assistant", "content": "About 2 million.", "turn": 1},
        {"role": "user", "content": "Thanks", "turn": 2}, {"role": "assistant", "content": "You're welcome.", "turn": 2},
    ]
    assert conversation.text().splitlines()[:2] == ["User: Capital of France?", "Assistant: Paris."]
    assert conversation.text(1) == "User: Capital of France?\nAssistant: Paris."
    assert conversation.prompt_at(0) == "Capital of France?"
    assert conversation.prompt_at(1) == "User: Capital of France?\nAssistant: Paris.\nUser: Population?"
    assert conversation.to_dict() == {"turns": conversation.turns, "ended": "script"}
    assert turn_check_name(1, "contains") == "turn 2: contains"


def test_without_a_system_prompt_the_first_message_is_the_users() -> None:
    target = Target("a", "b")
    run_script(["one", "two"], target)
    assert target.calls[1][0][:3] == [{"role": "user", "content": "one"}, {"role": "assistant", "content": "a"},
                                      {"role": "user", "content": "two"}]


def test_a_failing_target_propagates_and_a_wrong_type_is_named() -> None:
    def boom(messages: list[dict[str, Any]], turn: int) -> Any:
        raise RuntimeError("the app is down")

    with pytest.raises(RuntimeError, match="the app is down"):
        run_script(["hi"], boom)
    with pytest.raises(TypeError, match="respond.. must return a str or a pytest_llmeval.Answer, got int"):
        run_script(["hi"], lambda messages, turn: 42)


# ------------------------------------------------------------------------------------------- a simulated user


class User:
    """A simulated user speaking from a list, recording what it was shown."""

    def __init__(self, *says: str) -> None:
        self.says = list(says)
        self.seen: list[tuple[list[dict[str, Any]], int]] = []

    def __call__(self, messages: list[dict[str, Any]], turn: int) -> str:
        self.seen.append((messages, turn))
        return self.says[len(self.seen) - 1]


SPEC = {"persona": "A hurried customer.", "goal": "Export the data as CSV.", "max_turns": 5}


def test_the_simulated_user_sees_the_conversation_with_roles_flipped_and_stops_at_the_marker() -> None:
    target = Target("Which data?", "File > Export > CSV.")
    user = User("How do I export?", "My orders.", "Thanks, that works. GOAL_REACHED")
    conversation = run_simulation(SPEC, target, user, system="You are a shop assistant.")
    own = [{"role": "system", "content": simulated_user_system("A hurried customer.", "Export the data as CSV.",
                                                               "GOAL_REACHED")},
           {"role": "user", "content": SIMULATED_USER_START}]
    assert user.seen == [
        (own, 0),
        ([*own, {"role": "assistant", "content": "How do I export?"}, {"role": "user", "content": "Which data?"}], 1),
        ([*own, {"role": "assistant", "content": "How do I export?"}, {"role": "user", "content": "Which data?"},
          {"role": "assistant", "content": "My orders."}, {"role": "user", "content": "File > Export > CSV."}], 2),
    ]
    assert "A hurried customer." in own[0]["content"] and "exactly GOAL_REACHED" in own[0]["content"]
    # (the target appended a message to what it got: the recorded lists show it, the history does not)
    assert [m[-2:] for m, _ in target.calls] == [
        [{"role": "user", "content": text}, {"role": "user", "content": "mutated by the target"}]
        for text in ("How do I export?", "My orders.")]
    assert target.calls[1][0][:4] == [{"role": "system", "content": "You are a shop assistant."},
                                      {"role": "user", "content": "How do I export?"},
                                      {"role": "assistant", "content": "Which data?"},
                                      {"role": "user", "content": "My orders."}]
    assert conversation.ended == "goal" and conversation.closing == "Thanks, that works."
    assert len(conversation.turns) == 2 and conversation.final == Answer("File > Export > CSV.")
    assert conversation.transcript()[-1] == {"role": "user", "content": "Thanks, that works.", "turn": 2}
    assert conversation.to_dict() == {"turns": conversation.turns, "ended": "goal", "simulated": True,
                                      "closing": "Thanks, that works."}


def test_max_turns_bounds_the_target_answers() -> None:
    target = Target("a0", "a1")
    user = User("u0", "u1", "never asked")
    conversation = run_simulation({**SPEC, "max_turns": 2}, target, user)
    assert conversation.ended == "max_turns" and len(target.calls) == 2 and len(user.seen) == 2
    assert conversation.closing is None and conversation.transcript()[-1]["content"] == "a1"


def test_a_first_message_is_sent_as_written() -> None:
    target = Target("Hello!", "Sure.")
    user = User("GOAL_REACHED")
    conversation = run_simulation(SimulateModel(**{**SPEC, "first_message": "  hi, GOAL_REACHED is my username "}),
                                  target, user)
    assert target.calls[0][0][0] == {"role": "user", "content": "  hi, GOAL_REACHED is my username "}
    assert [turn for _, turn in user.seen] == [1]  # the simulated user's model speaks from turn 1 on
    assert conversation.ended == "goal" and conversation.closing is None and len(conversation.turns) == 1


def test_a_marker_before_any_answer_and_a_silent_user() -> None:
    target = Target()
    stopped = run_simulation({**SPEC, "stop": "DONE"}, target, User("DONE."))
    assert stopped.ended == "goal" and stopped.turns == [] and stopped.final is None and stopped.transcript() == []
    silent = run_simulation(SPEC, target, User("   "))
    assert silent.ended == "silent" and target.calls == []


@pytest.mark.parametrize(("message", "rest", "seen"), [
    ("GOAL_REACHED", "", True),
    ("  GOAL_REACHED.\n", "", True),
    ("Thanks! GOAL_REACHED", "Thanks!", True),
    ("GOAL_REACHED - thanks", "thanks", True),
    ("**GOAL_REACHED**", "", True),
    ("Is GOAL_REACHED a setting?", "Is GOAL_REACHED a setting?", False),
    ("MY_GOAL_REACHED", "MY_GOAL_REACHED", False),
    ("How do I export?", "How do I export?", False),
])
def test_the_stop_marker(message: str, rest: str, seen: bool) -> None:
    assert split_marker(message, "GOAL_REACHED") == (rest, seen)


# ------------------------------------------------------------------------------------------- real model calls


def litellm_asker(server: ScriptedLLMServer) -> Any:
    """``ask(model, messages, attempt)`` as the run's JudgeEnv has it, through litellm to the scripted server."""
    import litellm

    def ask(model: str, messages: list[dict[str, Any]], attempt: int) -> Completion:
        response = litellm.completion(model=model, messages=messages, api_base=server.url, api_key="sk-test",
                                      num_retries=0, temperature=0, max_tokens=200)
        return Completion(text=response.choices[0].message.content or "", model=model, resolved_model=model,
                          latency_s=0.0)
    return ask


@pytest.fixture
def server(llm_server: ScriptedLLMServer) -> ScriptedLLMServer:
    return llm_server


def make_case(**fields: Any) -> CaseSpec:
    return CaseSpec(suite="s", kind="qna", id="c", path=Path("x.yaml"), line=1, system=None, prompt="Hi",
                    params={}, tags=(), checks=[], fields=fields)


def judged(server: ScriptedLLMServer, transcript: list[dict[str, Any]], case: CaseSpec, answer: str = "last"
           ) -> tuple[GradeContext, JudgeEnv]:
    env = JudgeEnv(judge_model="openai/judge-model", self_judging=False, ask=litellm_asker(server))
    return GradeContext(answer, case, "openai/test-model", transcript=transcript, judge=env), env


def test_a_simulated_conversation_graded_by_the_goal_check(server: ScriptedLLMServer) -> None:
    import litellm

    server.answer("conversation starts now", "How do I export my orders?", model="sim-model")
    server.answer("File > Export", "Great, done. GOAL_REACHED", model="sim-model")
    server.answer("export my orders", "Open File > Export and pick CSV.", model="test-model")
    server.answer("The user's goal: Export the orders as CSV.", '{"score": 9, "reason": "Clear steps given."}',
                  model="judge-model")

    def respond(messages: list[dict[str, Any]], turn: int) -> Answer:
        r = litellm.completion(model="openai/test-model", messages=messages, api_base=server.url, api_key="sk-test",
                               num_retries=0)
        return Answer(r.choices[0].message.content)

    def user_says(messages: list[dict[str, Any]], turn: int) -> str:
        r = litellm.completion(model="openai/sim-model", messages=messages, api_base=server.url, api_key="sk-test",
                               num_retries=0)
        return str(r.choices[0].message.content)

    spec = SimulateModel(persona="A customer.", goal="Export the orders as CSV.", max_turns=3)
    conversation = run_simulation(spec, respond, user_says, system="You are a shop assistant.")
    assert conversation.ended == "goal" and conversation.text() == (
        "User: How do I export my orders?\nAssistant: Open File > Export and pick CSV.\nUser: Great, done.")
    target_request = next(r for r in server.requests if r["model"] == "test-model")
    assert target_request["messages"] == [{"role": "system", "content": "You are a shop assistant."},
                                          {"role": "user", "content": "How do I export my orders?"}]

    case = make_case(simulate=spec.model_dump())
    ctx, env = judged(server, conversation.transcript(), case, conversation.final.text if conversation.final else "")
    goal = next(c for c in CONVERSATION_CHECKS if c.name == "goal")
    outcome = goal.evaluate(GoalParams(), ctx)
    assert outcome.passed and outcome.score == 0.9
    assert outcome.reason == "goal 9/10 >= min 7: Clear steps given."
    assert outcome.details["goal"] == "Export the orders as CSV." and outcome.details["answers"] == 1
    judge_request = server.requests[-1]["messages"][-1]["content"]
    assert "Conversation:\nUser: How do I export my orders?\nAssistant: Open File > Export and pick CSV." \
        in judge_request and "The user's goal: Export the orders as CSV." in judge_request
    assert len(env.calls) == 1


def test_the_goal_check_fails_low_scores_retries_unusable_replies_and_names_what_is_missing(
        server: ScriptedLLMServer) -> None:
    transcript = [{"role": "user", "content": "Refund?", "turn": 0},
                  {"role": "assistant", "content": "No idea.", "turn": 0}]
    server.answer("goal: Get a refund", '{"score": 2, "reason": "Not helped."}', model="judge-model")
    server.answer("goal: Cancel", ["I think it went fine.", "still no number"], model="judge-model")
    low = grade_goal("No idea.", make_case(simulate={"goal": "Get a refund"}), GoalParams(),
                     judged(server, transcript, make_case())[0])
    assert not low.passed and low.score == 0.2 and low.reason == "goal 2/10 < min 7: Not helped."
    # The check's own goal: stands in for a script (no simulate).
    ctx, env = judged(server, transcript, make_case())
    unscored = grade_goal("No idea.", make_case(), GoalParams(goal="Cancel the order", min=5), ctx)
    assert unscored.unscored and unscored.details["attempts"] == 2 and len(env.calls) == 2
    assert "no usable score in 2 tries (no score found" in unscored.reason
    no_transcript = grade_goal("x", make_case(simulate={"goal": "g"}), GoalParams(), judged(server, [], make_case())[0])
    assert not no_transcript.passed and no_transcript.score is None and not no_transcript.unscored
    assert no_transcript.reason.startswith("no conversation to grade: the goal check needs a case with turns")
    no_goal = grade_goal("x", make_case(), GoalParams(), judged(server, transcript, make_case())[0])
    assert not no_goal.passed and "write simulate.goal on the case or {goal: <the user's goal>}" in no_goal.reason


def test_the_goal_check_validates_in_a_case_file() -> None:
    registry = CheckRegistry()
    for check in CONVERSATION_CHECKS:
        registry.register(check)
    goal = registry.get("goal")
    assert goal is not None and goal.judge and goal.calls == "judge" and goal.takes_context
    assert goal.params.model_validate({"goal": "Export"}).goal == "Export"
    with pytest.raises(ValidationError):
        goal.params.model_validate({"min": 11})


def test_the_judge_grades_the_whole_transcript(server: ScriptedLLMServer) -> None:
    server.answer("Conversation:\nUser: Capital of France?", '{"score": 8, "reason": "Consistent."}',
                  model="judge-model")
    transcript = [{"role": "user", "content": "Capital of France?", "turn": 0},
                  {"role": "assistant", "content": "Paris.", "turn": 0},
                  {"role": "user", "content": "And Italy?", "turn": 1},
                  {"role": "assistant", "content": "Rome.", "turn": 1}]
    ctx, env = judged(server, transcript, make_case(reference="Paris, then Rome."), answer="Rome.")
    outcome = grade_judge("Rome.", ctx.case, JudgeParams(rubric="correctness"), ctx)
    assert outcome.passed and outcome.score == 0.8 and outcome.details["conversation"] is True
    sent = server.requests[-1]["messages"]
    assert sent[-1]["content"].startswith("Criterion:\nCorrectness")
    assert "Conversation:\nUser: Capital of France?\nAssistant: Paris.\nUser: And Italy?\nAssistant: Rome." \
        in sent[-1]["content"]
    assert "Reference answer:\nParis, then Rome." in sent[-1]["content"]
    assert "Answer to grade" not in sent[-1]["content"] and "whole conversation" in sent[-1]["content"]


def test_without_a_transcript_the_judge_request_is_unchanged(server: ScriptedLLMServer) -> None:
    server.answer("Answer to grade", '{"score": 7, "reason": "ok"}', model="judge-model")
    case = make_case(reference="Paris")
    seen: list[list[dict[str, Any]]] = []
    ask = litellm_asker(server)

    def recording(model: str, messages: list[dict[str, Any]], attempt: int) -> Completion:
        seen.append(messages)
        return ask(model, messages, attempt)

    for ctx in (GradeContext("Paris.", case, "m", judge=JudgeEnv("openai/judge-model", False, recording)),
                JudgeEnv("openai/judge-model", False, recording)):
        outcome = grade_judge("Paris.", case, JudgeParams(rubric="correctness"), ctx)
        assert outcome.passed and "conversation" not in outcome.details
    from pytest_llmeval.checks.judge import RUBRICS
    # byte-identical to the request (and so the cache key) of a single answer before conversations existed
    assert seen == [judge_messages(RUBRICS["correctness"], question="Hi", answer="Paris.", reference="Paris")] * 2


def test_an_empty_conversation() -> None:
    conversation = Conversation()
    assert conversation.final is None and conversation.transcript() == [] and conversation.text() == ""


# ------------------------------------------------------------------------------------------- in a case file


def load(tmp_path: Path, text: str) -> Any:
    from pytest_llmeval.cases.loader import load_file

    path = tmp_path / "chat.yaml"
    path.write_text(text)
    return load_file(path, builtin_registry())


def errors(loaded: Any) -> list[tuple[int | None, str | None, str]]:
    return [(e.line, e.field, e.message) for e in loaded.errors]


def test_a_conversation_case_loads_without_a_prompt_template(tmp_path: Path) -> None:
    loaded = load(tmp_path, """\
suite: chat
prompt: "Question: {question}"
system: Be brief.
cases:
  - id: q
    question: Capital of France?
    expect: [{contains: Paris}]
  - id: script
    turns:
      - Capital of France?
      - user: Population?
        expect: [{contains: million}, {judge: {rubric: correctness}}]
  - id: sim
    simulate: {persona: A tourist., goal: Learn the capital., first_message: Hello!}
    expect: [{goal: true}]
""")
    assert errors(loaded) == []
    q, script, sim = loaded.cases
    assert q.prompt == "Question: Capital of France?" and not q.is_conversation and q.turns == ()
    assert script.is_conversation and script.turns == ("Capital of France?", "Population?")
    assert script.prompt == "Capital of France?"  # the first turn, as written: no template
    assert script.checks == [] and [[c.name for c in t] for t in script.turn_checks] == [[], ["contains", "judge"]]
    assert "turns" not in script.fields and script.simulate is None
    assert sim.is_conversation and sim.prompt == "Hello!" and [c.name for c in sim.checks] == ["goal"]
    assert sim.simulate is not None and sim.simulate["goal"] == "Learn the capital." and sim.simulate["max_turns"] == 5
    assert sim.fields["simulate"] == sim.simulate  # the goal check reads it there


def test_what_does_not_fit_a_conversation_is_located(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    loaded = load(tmp_path, """\
suite: chat
robustness: {perturb: [typo]}
cases:
  - id: script
    turns: [Hi]
    expect: [{contains: x}]
  - id: retrieving
    turns: [Hi]
    retrieve: {docs: docs}
    expect: [{contains: x}]
  - id: bare
    turns: [Hi, Bye]
""")
    assert errors(loaded) == [
        (4, "cases[0]", "the suite's robustness does not apply to a conversation case (turns, simulate): move the "
                        "conversation to a suite of its own"),
        (9, "cases[1].retrieve", "retrieve does not apply to a conversation case (turns, simulate)"),
        (7, "cases[1]", "the suite's robustness does not apply to a conversation case (turns, simulate): move the "
                        "conversation to a suite of its own"),
        (11, "cases[2]", "the suite's robustness does not apply to a conversation case (turns, simulate): move the "
                         "conversation to a suite of its own"),
    ]
    (tmp_path / "bare").mkdir()
    assert errors(load(tmp_path / "bare", "cases:\n  - id: bare\n    turns: [Hi, Bye]\n")) == [
        (2, "cases[0].expect", "no checks: add expect to the case (the whole conversation, e.g. [{judge: ...}]) or "
                               "to a turn ({user: ..., expect: [{contains: ...}]})")]


def test_a_suite_goal_check_on_a_plain_question_names_the_suite_line(tmp_path: Path) -> None:
    loaded = load(tmp_path, """\
suite: chat
expect: [{goal: {goal: Learn the capital.}}]
cases:
  - id: plain
    question: Capital?
  - id: script
    turns: [Capital?]
""")
    assert errors(loaded) == [(2, "expect[0].goal", "the goal check grades a conversation: this case has no turns or "
                                                    "simulate")]
    assert [c.id for c in loaded.cases] == ["script"]


def test_a_goal_check_on_a_script_names_the_goal(tmp_path: Path) -> None:
    loaded = load(tmp_path, """\
cases:
  - id: unnamed
    turns: [Capital?]
    expect: [{goal: true}]
  - id: named
    turns: [Capital?]
    expect: [{goal: The user learns the capital.}]
""")
    assert errors(loaded) == [(4, "cases[0].expect[0].goal", "a scripted conversation has no simulate.goal: name the "
                                                             "user's goal, e.g. {goal: <what the user wants>}")]
    assert [c.id for c in loaded.cases] == ["named"]


def test_a_draw_of_a_conversation_grades_each_turn_then_the_whole(tmp_path: Path) -> None:
    from pytest_llmeval.run.grading import DrawGrader

    loaded = load(tmp_path, """\
cases:
  - id: script
    turns:
      - Capital of France?
      - user: Population?
        expect: [{contains: million}, {judge: {rubric: correctness}}, {cites: true}]
    expect: [{contains: welcome}, {judge: {rubric: correctness}}]
""")
    case = loaded.cases[0]
    conversation = run_script(case.turns, Target(Answer("Paris."), Answer("About 2 million [1].",
                                                                          references=[Reference("pop.md")])))
    asked: list[list[dict[str, str]]] = []

    def ask(model: str, messages: list[dict[str, str]], attempt: int) -> Completion:
        asked.append(messages)
        return Completion(text='{"score": 8, "reason": "fine"}', model=model, resolved_model=model, latency_s=0.1)

    env = JudgeEnv(judge_model="openai/judge-model", self_judging=False, ask=ask)
    grader = DrawGrader(None, tmp_path, "openai/test-model", None, case.checks, lambda: env,  # type: ignore[arg-type]
                        None, tmp_path, [])
    draw = grader.grade_conversation(conversation, 0, case)
    assert [(o.name, o.passed) for o in draw["outcomes"]] == [
        ("turn 2: contains", True), ("turn 2: judge", True), ("turn 2: cites", True),
        ("contains", False), ("judge", True)]
    assert draw["status"] == "failed"
    # The turn's judge grades that answer, its question the user's message after the earlier turns; the case's
    # judge grades the whole conversation.
    turn_request, whole_request = asked[0][-1]["content"], asked[1][-1]["content"]
    assert "Question:\nUser: Capital of France?\nAssistant: Paris.\nUser: Population?" in turn_request
    assert "Answer to grade:\nAbout 2 million [1]." in turn_request
    assert "Conversation:\nUser: Capital of France?\nAssistant: Paris.\nUser: Population?\n" \
           "Assistant: About 2 million [1]." in whole_request
