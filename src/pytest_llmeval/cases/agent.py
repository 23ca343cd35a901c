"""The agent fields of a suite or case (issue 18): ``tools:``, ``returns:`` and ``agent:``.

A case with tools (its own or its suite's) is an agent case: the model is offered the tools, each call it asks for
is run (the Python function, or a canned result) and fed back, until it answers or ``agent.max_steps`` calls were
made (targets/agent.py). ``tools`` and ``returns`` are validated by cases/tools.py, which reports each problem at
its own location; this module holds the pydantic side, which schema.py's models take as a base (it must not import
schema.py) and the ``agent:`` options::

    agent:
      max_steps: 8                 # tool calls before the loop stops (the run ends "max_steps")
      tool_choice: auto            # auto | required | none | the name of a listed tool (forced on the first call)
      parallel_tool_calls: false   # omitted: the provider's default
      mode: auto                   # native (function calling) | prompt (tools in the prompt, a JSON call parsed
                                   # from the answer) | auto: native, prompt for a model without function calling
      examples:                    # prompt mode: few-shot messages after the system prompt
        - {role: user, content: What is 2+2?}
        - {role: assistant, content: '{"tool": "calculator", "arguments": {"expression": "2+2"}}'}
        - {role: user, content: 'Tool result for calculator: 4'}
        - {role: assistant, content: "4"}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AGENT_DEFAULTS", "AgentModel", "ExampleMessage", "ToolFields", "merge_agent"]

AGENT_DEFAULTS: dict[str, Any] = {"max_steps": 8, "tool_choice": None, "parallel_tool_calls": None, "mode": "auto",
                                  "examples": []}


class ExampleMessage(BaseModel):
    """One few-shot message of prompt mode."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class AgentModel(BaseModel):
    """``agent:`` on a suite or a case (a case's keys replace its suite's)."""

    model_config = ConfigDict(extra="forbid")
    max_steps: int | None = Field(default=None, ge=1, le=100)
    tool_choice: Literal["auto", "required", "none"] | str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    mode: Literal["auto", "native", "prompt"] | None = None
    examples: list[ExampleMessage] | None = None


class ToolFields(BaseModel):
    """The agent fields of a suite or a qna case. A base of those models (as ConversationFields): it sets no
    ``model_config``, so theirs applies. ``tools``/``returns`` are checked by cases/tools.py, at their locations."""

    tools: list[Any] | None = None
    returns: dict[str, Any] | None = None
    agent: AgentModel | None = None


def merge_agent(suite: AgentModel | None, case: AgentModel | None) -> dict[str, Any]:
    """The agent options of a case: the defaults, then its suite's, then its own (each key set replaces)."""
    out = dict(AGENT_DEFAULTS)
    for model in (suite, case):
        if model is not None:
            out.update({k: v for k, v in model.model_dump(exclude_none=True).items()})
    out["examples"] = [dict(m) for m in out["examples"]]
    return out
