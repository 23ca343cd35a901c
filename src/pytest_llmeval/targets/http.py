"""The ``http`` target: the application is an HTTP service, called once per case (per turn in a conversation).

::

    target:
      http:
        url: "http://127.0.0.1:{port}/ask"
        json: {q: "{question}", history: "{messages}", model: "{model}"}
        headers: {Authorization: "Bearer ${BOT_TOKEN}"}
        answer: data.answer                    # where the reply's text is
        references: data.refs                  # a list of strings or {source, text, score, title}
        serve: {command: "python app.py --port {port}", ready: /health}

Design:

- **Templates.** ``url``, ``json`` and ``query`` are templates over the request's fields: every case field
  (``{question}``, your own), and ``prompt``, ``messages``, ``model``, ``params``, ``case``, ``case_id``, ``suite``,
  ``turn``, ``sample``, ``system`` (:meth:`TargetRequest.to_dict`). ``{question}`` is the case's question, or this
  turn's user message in a conversation. A JSON string that is exactly one placeholder (``"{messages}"``) keeps
  the value's JSON type; other strings are formatted as text (``str.format`` rules: ``{{`` is a literal brace;
  ``{params.temperature}`` and ``{messages[0][content]}`` reach inside). In the URL, values are percent-encoded.
  An unknown placeholder is a :class:`TargetError` naming it and the names there are.
- **Headers** hold no placeholders (their values are often secrets): ``${NAME}`` reads an environment variable at
  each call; a variable that is not set is an error naming it, never an empty header. A value read so is hidden
  (``***``) in the reply's body that an error shows, whatever the variable's name.
- **Paths** into the JSON reply: dotted, integer indexes for lists (``choices.0.message.content``), and the
  JSONPath-like ``$.choices[0].message.content``; ``$`` alone is the whole reply. Every declared path must be in
  the reply (a typo must not silently give an app no references); ``null`` at a path counts as "none".
- **Errors**, one :class:`TargetError` each, naming the target (``http:<url>``): cannot connect, no reply within
  ``timeout_s``, HTTP status >= 400, a reply that is not JSON, a reply without the answer path (with the keys it
  has) -- each with an excerpt of the body; the whole body is in the error's ``details``.
- **One ``httpx.Client`` per target** (connection pooling, thread-safe): the prefetch pool's threads call
  :meth:`HttpTarget.answer` at once. httpx is imported lazily (it comes with litellm).
- **Serve** (:mod:`pytest_llmeval.targets.serve`). With ``serve:``, :meth:`HttpTarget.start` (on first use,
  once, under a lock) picks a free port on 127.0.0.1, puts it in the command, the URL and ``serve.env``
  (``{port}``; also ``$PORT``), starts the command in its own process group with stdout and stderr in
  ``.llmeval/serve/<slug>-<worker>.log`` and polls ``ready`` until it answers 2xx. ``python``/``python3`` as the
  command's program is the interpreter running pytest. A service that exits first or is not ready within
  ``serve.timeout_s`` is stopped, and the error shows the last lines of its log; the failure is remembered, so
  every later case gets the same error at once instead of a restart each. :meth:`HttpTarget.close` (also at
  interpreter exit) sends SIGTERM to the group, waits ``stop_timeout_s``, then SIGKILLs what is left of the
  group, so no process the service started outlives the session.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shlex
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from string import Formatter
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pydantic import ConfigDict, Field, field_validator

from pytest_llmeval.core.answer import Answer, Reference, TargetError, TargetRequest, Usage
from pytest_llmeval.core.targets import Target, TargetEnv, TargetKind, TargetParams
from pytest_llmeval.targets.serve import ServeParams, Service

if TYPE_CHECKING:
    import httpx

__all__ = ["KIND", "HttpParams", "HttpTarget", "ServeParams", "build", "check", "resolve_path"]

EXCERPT = 300  # characters of a body shown in a message
DETAILS = 20_000  # characters of a body kept in an error's details
SECRET_MIN = 6  # a header's value from the environment this long or longer is hidden from errors ("dev" is not)
DEFAULT_JSON = {"prompt": "{prompt}"}
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class HttpParams(TargetParams):
    """``http:``: how a request becomes an HTTP call, and where the answer is in the JSON reply."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    url: str
    method: str = "POST"
    body: Any = Field(None, alias="json")  # `json` shadows a BaseModel method; the suite writes `json:`
    query: dict[str, Any] | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    answer: str = "answer"
    references: str | None = None
    context: str | None = None
    usage: str | None = None
    metadata: str | None = None
    tool_calls: str | None = None  # the path of the tool calls its agent made (a list, or {steps: [...]})
    timeout_s: float = Field(60.0, gt=0)
    serve: ServeParams | None = None

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        method = value.upper()
        if method not in ("GET", "POST"):
            raise ValueError(f"method must be GET or POST, got {value!r}")
        return method

    def json_template(self) -> Any:
        """The JSON body sent (POST only): ``json``, else ``{"prompt": "{prompt}"}``."""
        if self.method != "POST":
            return None
        return DEFAULT_JSON if self.body is None else self.body


# -- paths and templates ---------------------------------------------------------------------------------------------

def _path_parts(path: str) -> list[str]:
    """``$.choices[0].message.content`` -> ``["choices", "0", "message", "content"]``; ValueError if malformed."""
    text = path.strip()
    if text in ("$", ""):
        return []
    if text.startswith("$."):
        text = text[2:]
    elif text.startswith("$["):
        text = text[1:]
    text = re.sub(r"\[\s*['\"]?([^\]'\"]*)['\"]?\s*\]", r".\1", text).lstrip(".")
    parts = text.split(".")
    if any(not part for part in parts):
        raise ValueError(f"malformed path {path!r} (expected e.g. data.answer, choices.0.text or $.choices[0].text)")
    return parts


def resolve_path(data: Any, path: str) -> Any:
    """The value at ``path`` in ``data``; KeyError(description of where it stopped) when it is not there."""
    current = data
    parts = _path_parts(path)
    for i, part in enumerate(parts):
        where = "it" if i == 0 else f"its '{'.'.join(parts[:i])}'"
        if isinstance(current, Mapping):
            if part in current:
                current = current[part]
                continue
            keys = ", ".join(map(str, list(current)[:20])) or "none"
            raise KeyError(f"{where} has keys: {keys}")
        if isinstance(current, list):
            try:
                current = current[int(part)]
                continue
            except (ValueError, IndexError):
                raise KeyError(f"{where} is a list of {len(current)}") from None
        raise KeyError(f"{where} is a {type(current).__name__}")
    return current


def _check_template(text: str) -> None:
    for _literal, name, _spec, _conversion in Formatter().parse(text):  # ValueError: unbalanced braces
        if name is None:
            continue
        if not name:
            raise ValueError("an empty placeholder {} (name a field, e.g. {question})")
        _path_parts(name)


def _template_strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _template_strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _template_strings(v)]
    return []


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | Mapping | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


class _Renderer:
    """Formats the templates of one request over its fields."""

    def __init__(self, target: str, fields: Mapping[str, Any]) -> None:
        self.target = target
        self.fields = fields

    def lookup(self, name: str, where: str) -> Any:
        parts = _path_parts(name)
        if not parts or parts[0] not in self.fields:
            known = ", ".join(sorted(self.fields))
            hint = "; {port} is filled in only when serve: starts the service" if name == "port" else ""
            raise TargetError(f"{self.target}: unknown placeholder {{{name}}} in {where} (the request's fields "
                              f"are: {known}; write {{{{ and }}}} for literal braces{hint})")
        try:
            return resolve_path(self.fields, name)
        except KeyError as exc:
            raise TargetError(f"{self.target}: placeholder {{{name}}} in {where} is not in the request "
                              f"({exc.args[0]})") from None

    def text(self, template: str, where: str, encode: bool = False) -> str:
        out = []
        try:
            parsed = list(Formatter().parse(template))
        except ValueError as exc:
            raise TargetError(f"{self.target}: malformed template {template!r} in {where}: {exc}") from None
        for literal, name, spec, conversion in parsed:
            out.append(literal)
            if name is None:
                continue
            value = self.lookup(name, where)
            if conversion == "r":
                value = repr(value)
            elif conversion == "a":
                value = ascii(value)
            shown = format(value, spec) if spec else _as_text(value)
            out.append(quote(shown, safe="") if encode else shown)
        return "".join(out)

    def value(self, template: Any, where: str) -> Any:
        """A JSON template rendered: a string that is exactly one placeholder keeps the value's type."""
        if isinstance(template, str):
            parsed = list(Formatter().parse(template)) if "{" in template else []
            if len(parsed) == 1 and parsed[0][0] == "" and parsed[0][1] and not parsed[0][2] and not parsed[0][3]:
                return self.lookup(parsed[0][1], where)
            return self.text(template, where)
        if isinstance(template, Mapping):
            return {key: self.value(v, f"{where}.{key}") for key, v in template.items()}
        if isinstance(template, list | tuple):
            return [self.value(v, f"{where}[{i}]") for i, v in enumerate(template)]
        return template


def request_fields(request: TargetRequest) -> dict[str, Any]:
    """The placeholders of a request: the case's fields, then the request's own (which win), ``question``."""
    own = request.to_dict()
    return {**dict(request.case), **own, "question": request.question}


def _hide(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every value in ``secrets`` replaced by ``***`` (the longest first: one may contain another)."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _excerpt(text: str, limit: int = EXCERPT) -> str:
    flat = " ".join(text.split())
    return (flat if len(flat) <= limit else flat[:limit] + "…") or "(empty body)"


def _slug(params: HttpParams) -> str:
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", params.url.split("://", 1)[-1]).strip("_")[:60]
    digest = hashlib.sha1(params.model_dump_json().encode()).hexdigest()[:8]
    return f"{readable}-{digest}"


# -- the target --------------------------------------------------------------------------------------------------------

class HttpTarget(Target):
    """An HTTP service answering a suite's cases; see the module docstring."""

    threadsafe = True
    measures_usage = False  # the service's model calls happen in its own process: known only through `usage:`

    def __init__(self, params: HttpParams, env: TargetEnv) -> None:
        self.params = params
        self.env = env
        self.name = describe(params)
        self.url = params.url  # the URL template; {port} filled in by start() when serving
        self.service: Service | None = None
        if params.serve is not None:
            cwd = env.rootdir / params.serve.cwd if params.serve.cwd else env.rootdir
            log_path = env.state_dir / "serve" / f"{_slug(params)}-{env.worker}.log"
            self.service = Service(params.serve, self.name, cwd, log_path)
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()
        self._ready = False
        self._closed = False
        self._failure: tuple[str, str | None] | None = None

    @property
    def log_path(self) -> Path | None:
        """The started service's log (``.llmeval/serve/<slug>-<worker>.log``); None without ``serve:``."""
        return self.service.log_path if self.service is not None else None

    def start(self) -> None:
        """Ready the client and, with ``serve:``, the service (idempotent; a failed start is remembered and
        raised again at once)."""
        if self._ready:
            return
        with self._lock:
            if self._failure is not None:
                raise TargetError(*self._failure)
            if self._ready:
                return
            if self._closed:
                raise TargetError(f"{self.name}: the target was closed (at the end of the session)")
            import httpx

            # A service the plugin started is on 127.0.0.1: no proxy from the environment in between.
            self._client = httpx.Client(timeout=self.params.timeout_s, follow_redirects=True,
                                        trust_env=self.service is None)
            if self.service is not None:
                atexit.register(self.close)
                try:
                    self.url = self.service.start(self.params.url, self._client)
                except TargetError as exc:
                    self._failure = (exc.message, exc.details)
                    self.service.stop()
                    raise
            self._ready = True

    def close(self) -> None:
        """Stop the service and the client (idempotent; also run at interpreter exit)."""
        with self._lock:
            self._closed = True
            self._ready = False
            if self.service is not None:
                self.service.stop()
            if self._client is not None:
                self._client.close()
                self._client = None
        atexit.unregister(self.close)

    # one call

    def answer(self, request: TargetRequest) -> Answer:
        self.start()
        client = self._client
        if client is None:
            raise TargetError(f"{self.name}: the target was closed (at the end of the session)")
        render = _Renderer(self.name, request_fields(request))
        url = render.text(self.url, "url", encode=True)
        body = render.value(self.params.json_template(), "json")
        query = None
        if self.params.query is not None:
            query = {key: _query_value(render.value(v, f"query.{key}")) for key, v in self.params.query.items()}
        headers, secrets = self._headers()
        reply = self._send(client, url, body, query, headers)
        return self._parse(reply, url, secrets)

    def _headers(self) -> tuple[dict[str, str], list[str]]:
        """The headers with ``${NAME}`` filled in, and the values filled in (secrets, to hide from errors)."""
        out = {}
        secrets: list[str] = []
        for key, value in self.params.headers.items():
            def env(match: re.Match[str], key: str = key) -> str:
                name = match.group(1)
                found = os.environ.get(name)
                if found is None:
                    raise TargetError(f"{self.name}: header {key!r} needs the environment variable {name}, which is "
                                      f"not set (set it, or remove the header)")
                if len(found) >= SECRET_MIN:
                    secrets.append(found)
                return found

            out[key] = _ENV_REF.sub(env, value)
        return out, secrets

    def _send(self, client: httpx.Client, url: str, body: Any, query: Any, headers: dict[str, str]) -> httpx.Response:
        import httpx

        method = self.params.method
        try:
            kwargs: dict[str, Any] = {"headers": headers}
            if body is not None:
                kwargs["json"] = body
            # Merged into the URL's own query string (httpx's params= would replace it).
            target = httpx.URL(url).copy_merge_params(query) if query else url
            return client.request(method, target, **kwargs)
        except httpx.TimeoutException:
            raise TargetError(f"{self.name}: no reply from {method} {url} within {self.params.timeout_s:g} s "
                              f"(timeout_s){self._died()}") from None
        except httpx.ConnectError as exc:
            raise TargetError(f"{self.name}: cannot connect to {url} ({exc or 'connection refused'})"
                              f"{self._died()}") from None
        except httpx.HTTPError as exc:
            raise TargetError(f"{self.name}: {method} {url} failed: {type(exc).__name__}: {exc}"
                              f"{self._died()}") from None

    def _died(self) -> str:
        return self.service.died() if self.service is not None else ""

    def _parse(self, reply: httpx.Response, url: str, secrets: Sequence[str] = ()) -> Answer:
        # A reply may echo the request's headers (a debug error page lists them): a value that came from the
        # environment into a header never reaches an error's message or details (so never the results or a
        # report), whatever the variable's name. Hidden before the excerpt is cut, which could split it.
        text = _hide(reply.text, secrets)
        details = text[:DETAILS]
        if reply.status_code >= 400:
            raise TargetError(f"{self.name}: HTTP {reply.status_code} {reply.reason_phrase} from "
                              f"{self.params.method} {url}: {_excerpt(text)}", details)
        try:
            data = reply.json()
        except ValueError:
            kind = reply.headers.get("content-type", "no content-type")
            raise TargetError(f"{self.name}: the reply to {self.params.method} {url} is not JSON (HTTP "
                              f"{reply.status_code}, {kind}): {_excerpt(text)}", details) from None

        def get(field: str, path: str) -> Any:
            try:
                return resolve_path(data, path)
            except KeyError as exc:
                raise TargetError(f"{self.name}: the reply has no {path!r} ({exc.args[0]}; set {field}: to its "
                                  f"path): {_excerpt(text)}", details) from None

        value = get("answer", self.params.answer)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise TargetError(f"{self.name}: the reply's {self.params.answer!r} is a {type(value).__name__}, not a "
                              f"string: {_excerpt(text)}", details)
        answer = Answer(str(value))
        p = self.params
        try:
            if p.references is not None:
                refs = get("references", p.references)
                if refs is not None and not isinstance(refs, list):
                    raise ValueError(f"a list, got a {type(refs).__name__}")
                answer.references = [Reference.coerce(r) for r in refs or []]
            if p.context is not None:
                context = get("context", p.context)
                answer.context = None if context is None else \
                    "\n\n".join(map(_as_text, context)) if isinstance(context, list) else _as_text(context)
            if p.usage is not None:
                usage = get("usage", p.usage)
                answer.usage = None if usage is None else Usage.coerce(usage)
            if p.metadata is not None:
                metadata = get("metadata", p.metadata)
                if metadata is not None and not isinstance(metadata, Mapping):
                    raise ValueError(f"metadata must be an object, got a {type(metadata).__name__}")
                answer.metadata = dict(metadata or {})
            if p.tool_calls is not None:
                calls = get("tool_calls", p.tool_calls)
                if calls is not None:
                    from pytest_llmeval.core.tools import Trajectory

                    answer.tool_calls = Trajectory.coerce(calls, answer.text)
        except (TypeError, ValueError) as exc:
            raise TargetError(f"{self.name}: cannot read the reply: {exc}: {_excerpt(text)}", details) from None
        return answer


def _query_value(value: Any) -> Any:
    if isinstance(value, list) and all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in value):
        return [str(v) for v in value]  # repeated parameter
    return _as_text(value)


# -- the kind ----------------------------------------------------------------------------------------------------------

def describe(params: HttpParams) -> str:
    return f"http:{params.url}"


def build(params: HttpParams, env: TargetEnv) -> HttpTarget:
    return HttpTarget(params, env)


def check(params: HttpParams, env: TargetEnv) -> list[tuple[str, str]]:
    """Problems visible when the suite loads, as (field, message) pairs."""
    problems: list[tuple[str, str]] = []
    if not params.url.startswith(("http://", "https://")):
        problems.append(("url", f"expected an http:// or https:// URL, got {params.url!r}"))
    for field, template in (("url", params.url), ("json", params.body), ("query", params.query)):
        for text in _template_strings(template):
            try:
                _check_template(text)
            except ValueError as exc:
                problems.append((field, f"malformed template {text!r}: {exc}"))
    for field in ("answer", "references", "context", "usage", "metadata", "tool_calls"):
        path = getattr(params, field)
        if path is not None:
            try:
                _path_parts(path)
            except ValueError as exc:
                problems.append((field, str(exc)))
    if params.method == "GET" and params.body is not None:
        problems.append(("json", "a GET request has no body: put the fields in query: (or use method: POST)"))
    if params.method == "GET" and not any("{" in s for s in _template_strings([params.url, params.query])):
        problems.append(("query", "a GET request with no placeholder in url or query sends the same request for "
                                  "every case: add e.g. query: {q: \"{question}\"}"))
    serve = params.serve
    if serve is None:
        if "{port}" in params.url:
            problems.append(("url", "{port} is only known when the plugin starts the service: add "
                                    "serve: {command: \"... {port}\"}, or write the port"))
        return problems
    argv = shlex.split(serve.command) if isinstance(serve.command, str) else list(serve.command)
    if not argv:
        problems.append(("serve.command", "the command is empty"))
    if any("{port}" in a for a in argv) and "{port}" not in params.url:
        problems.append(("url", "the service listens on {port} (a free port), but the url does not use it: "
                                "write http://127.0.0.1:{port}/..."))
    if serve.cwd is not None and not (env.rootdir / serve.cwd).is_dir():
        problems.append(("serve.cwd", f"{env.rootdir / serve.cwd} is not a folder (serve.cwd is relative to the "
                                      f"rootdir {env.rootdir})"))
    if not serve.ready.startswith(("/", "http://", "https://")):
        problems.append(("serve.ready", f"expected a path such as /health, got {serve.ready!r}"))
    return problems


KIND = TargetKind(
    "http", HttpParams, build, shorthand="url", describe=describe, check=check,
    doc="an HTTP service: url, method, json/query templates over the case's fields, headers (${ENV}), paths to "
        "answer/references/context/usage/metadata/tool_calls in the JSON reply; serve: {command, ready} starts it on {port}",
)
