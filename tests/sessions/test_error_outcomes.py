"""An InfrastructureError raised while grading (here, by a check of a conftest) makes the case an error, shown by
its message, not a failure with a traceback: the family decides, not the class name."""

from __future__ import annotations

from conftest import Project


def test_a_checks_infrastructure_error_is_an_error_outcome(project: Project) -> None:
    project.pytester.makeconftest("""
from pytest_llmeval import CheckDef, CheckOutcome, CheckParams, InfrastructureError

class ToolMissing(InfrastructureError):
    pass

class ToolParams(CheckParams):
    value: str = ""

def grade_tool(answer, case, params):
    if case.id == "broken":
        raise ToolMissing("the grading tool is not installed: pip install grading-tool")
    return CheckOutcome("tool", True, 1.0)

def pytest_llmeval_register_checks(register):
    register(CheckDef("tool", ToolParams, grade_tool, shorthand="value"))
""")
    project.write("cases/tool.yaml", "suite: tool\ncases:\n"
                  "  - {id: fine, question: 'One?', expect: [{tool: x}]}\n"
                  "  - {id: broken, question: 'Two?', expect: [{tool: x}]}\n")
    project.server.default = "ok"
    result = project.run()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*case broken (tool.yaml:*) cannot run: the grading tool is not installed*"])
    result.stdout.no_fnmatch_line("*Traceback*")
    outcomes = {c["case_id"]: c["outcome"] for c in project.results()["cases"]}
    assert outcomes == {"fine": "passed", "broken": "error"}
