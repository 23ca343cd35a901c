"""The Orbit docs bot: a router in front of retrieval and an LLM, answering with numbered references.

This is an *application*, written the way a team writes its own product, and the system under test of the
suites in ``examples/docs_bot/suites/``. It borrows one thing from pytest-llmeval: the retrieval index
(``pytest_llmeval.rag.index``, lancedb over the packaged offline all-MiniLM-L6-v2 embeddings), which this
project uses as its own; and it returns ``pytest_llmeval.Answer`` so the evaluation sees what it retrieved.

One question goes through a router:

- **small talk / off topic** (greetings, thanks, questions that share no word with the docs): a fixed polite
  reply, without retrieval and without a model call;
- **docs questions**: the top ``k`` chunks of the docs folder for the question (in a conversation, the last user
  message, plus the previous one when the last is a short follow-up such as "and how do I change it?"), put in
  front of the question as numbered references, then one ``litellm.completion`` call asked to cite them as
  ``[n]``. The conversation so far is sent along.

The model is the request's (``--llm`` in an evaluation, ``local/smollm2`` by default): an offline ``local/...``
model is answered in this process through pytest-llmeval's litellm provider. ``DOCS_BOT_API_BASE`` points every
other model at an OpenAI-compatible server (a proxy, or a scripted server in tests).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pytest_llmeval.core.answer import Answer, Reference, TargetRequest, Usage

__all__ = ["DEFAULT_DOCS", "DEFAULT_MODEL", "DocsBot", "answer", "bot_factory", "default_bot", "make_bot"]

DEFAULT_DOCS = Path(__file__).resolve().parents[2] / "cases" / "docs"
DEFAULT_MODEL = "local/smollm2"
SAMPLING_PARAMS = ("temperature", "max_tokens", "top_p", "seed", "stop")

SYSTEM_PROMPT = ("You are the Orbit docs bot. You answer questions about the Orbit 3D Python library using only its "
                 "documentation. Be brief and concrete: name the functions and arguments to use.")
INSTRUCTION = ("Answer the question using the numbered references below. Cite the references you use by their "
               "numbers in square brackets, like [1]. If the references do not answer it, say so.")

REPLIES = {
    "greeting": "Hello! I'm the Orbit docs bot. Ask me anything about the Orbit 3D library: drawing spheres and "
                "boxes, scenes, windows, installing it.",
    "thanks": "You're welcome! Ask me again whenever you have a question about Orbit.",
    "goodbye": "Goodbye, and happy rendering with Orbit!",
    "off_topic": "Sorry, I can only answer questions about the Orbit 3D library and its documentation. Try asking "
                 "how to draw a sphere, set a scene's background or render without a screen.",
}

_GREETING = re.compile(r"^(hi|hello|hey|hiya|howdy|good (morning|afternoon|evening)|greetings|yo)\b"
                       r"([\s,!.]*(there|bot|everyone|all|again|orbit bot))?[\s!.?]*$"
                       r"|^how are you( doing)?( today)?[\s!.?]*$")
_THANKS = re.compile(r"^(ok(ay)?[\s,!.]*)?(thanks|thank you|thx|cheers|great|perfect|awesome|nice|cool)\b[^?]*$")
_GOODBYE = re.compile(r"^(bye|goodbye|see you|see ya|later|good night)\b[^?]*$")

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")
# Words too common to say a question is about the docs (they appear in the docs, but in any question too).
_STOPWORDS = frozenset("""
a about above after again all also an and any are as at be because been before being between both but by can
could did do does doing done each either else for from get gets give given go goes got had has have having he her
here his how i if in into is it its itself just like make makes many may me might more most much must my need
needs new no not now of off on one only or other our out over own please same see set sets should show so some
such take than that the their them then there these they thing things this those through to too two under up
upon use used uses using very want was way we well were what when where which while who why will with within
without would yes yet you your default good better best first last get look looks looking work works tell know
""".split())
_CONTINUATION = re.compile(r"^(and|or|but|also|so|then|what about|how about)\b")
_PRONOUN = re.compile(r"\b(it|that|this|them|they|those|these|one|ones)\b")
SHORT_WORDS = 8  # a question this short leans on the one before it ("and the default?")
PRONOUN_WORDS = 12  # ...and so does a question this short with a pronoun ("how do I make that one smoother?")


def _content(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return "" if content is None else str(content)


def _stem(word: str) -> str:
    """Crude singular: enough for "spheres"/"sphere", "boxes"/"box", "colours"/"colour"."""
    word = word.lower()
    if len(word) > 4 and word.endswith("es") and word[-3] in "sxz":
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _words(text: str) -> set[str]:
    """Content words of ``text``: identifiers split on ``_`` and case, stemmed, without stop words."""
    out: set[str] = set()
    for token in _WORD.findall(text):
        for part in re.split(r"_|(?<=[a-z])(?=[A-Z])", token):
            if len(part) >= 3 and part.lower() not in _STOPWORDS:
                out.add(_stem(part))
    return out


class DocsBot:
    """The docs bot over one docs folder: the index is built (or brought up to date) once, on first use or by
    :meth:`load`, and shared by every thread; :meth:`answer` may be called from many threads at once.

    - ``docs``: the folder to answer from; ``k``: how many chunks go into the prompt;
    - ``index_uri``: where the lancedb index lives (default: ``$DOCS_BOT_INDEX``, else pytest-llmeval's default,
      ``.llmeval/index/<name>`` under the working directory, which an evaluation of the same folder shares);
    - ``source_prefix``: how references name their files (default: the folder's name, so ``docs/sphere.md``);
    - ``model``: pin the model (default: the request's, else ``local/smollm2``);
    - ``api_base``: an OpenAI-compatible server for non-local models (default: ``$DOCS_BOT_API_BASE``).
    """

    def __init__(self, docs: Path | str = DEFAULT_DOCS, *, k: int = 3, index_uri: str | None = None,
                 source_prefix: str | None = None, model: str | None = None, api_base: str | None = None,
                 embedding_model: str | None = None, system: str = SYSTEM_PROMPT) -> None:
        self.docs = Path(docs).resolve()
        self.k = k
        self.index_uri = index_uri or os.environ.get("DOCS_BOT_INDEX") or None
        self.source_prefix = self.docs.name if source_prefix is None else source_prefix
        self.model = model
        self.api_base = api_base
        self.embedding_model = embedding_model
        self.system = system
        self._index: Any = None
        self._vocabulary: frozenset[str] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DocsBot(docs={str(self.docs)!r}, k={self.k}, index_uri={self.index_uri!r})"

    # ------------------------------------------------------------------------------------------ loading

    def load(self) -> str:
        """Build or update the index now (the server calls this before it reports healthy); its version."""
        return str(self._get_index().ensure())

    def _get_index(self) -> Any:
        with self._lock:
            if self._index is None:
                from pytest_llmeval.rag.index import get_index

                index = get_index(self.docs, model=self.embedding_model, uri=self.index_uri)
                index.ensure()
                self._index = index
            return self._index

    @property
    def vocabulary(self) -> frozenset[str]:
        """The content words of the docs: a question sharing none of them is off topic."""
        with self._lock:
            if self._vocabulary is None:
                words: set[str] = {"orbit"}
                if self.docs.is_dir():
                    for path in sorted(self.docs.rglob("*")):
                        if path.is_file() and path.suffix in {".md", ".txt", ".rst", ".py"}:
                            words |= _words(path.read_text(encoding="utf-8", errors="replace"))
                self._vocabulary = frozenset(words)
            return self._vocabulary

    # ------------------------------------------------------------------------------------------ routing

    def route(self, question: str, earlier: Iterable[str] = ()) -> str:
        """``docs``, or the kind of small talk: ``greeting``, ``thanks``, ``goodbye``, ``off_topic``."""
        text = " ".join(question.lower().split())
        for intent, pattern in (("greeting", _GREETING), ("thanks", _THANKS), ("goodbye", _GOODBYE)):
            if pattern.search(text):
                return intent
        if _words(question) & self.vocabulary:
            return "docs"
        earlier = list(earlier)
        if earlier and self.is_follow_up(question) and _words(earlier[-1]) & self.vocabulary:
            return "docs"  # "and how do I change it?" after a docs question
        return "off_topic"

    @staticmethod
    def is_follow_up(question: str) -> bool:
        """A short question that leans on the previous one ("and the default?", "how do I change it?")."""
        text = question.lower().strip()
        words = len(text.split())
        return (words <= SHORT_WORDS or bool(_CONTINUATION.search(text))
                or (words <= PRONOUN_WORDS and bool(_PRONOUN.search(text))))

    def search_query(self, question: str, earlier: list[str]) -> str:
        """What to search for: the question, preceded by the previous user message for a follow-up."""
        if earlier and self.is_follow_up(question):
            return f"{earlier[-1]} {question}"
        return question

    # ------------------------------------------------------------------------------------------ answering

    def answer(self, request: TargetRequest) -> Answer:
        """One turn: the request's question (this turn's user message), with the conversation so far."""
        question = request.question.strip()
        history = [dict(m) for m in request.messages[:-1] if m.get("role") in ("user", "assistant")]
        earlier = [_content(m) for m in history if m.get("role") == "user"]
        route = self.route(question, earlier)
        if route != "docs":
            return Answer(REPLIES[route], metadata={"route": "smalltalk", "intent": route})

        query = self.search_query(question, earlier)
        index = self._get_index()
        hits = index.search(query, k=self.k)
        from pytest_llmeval.rag.index import references_block

        context = references_block(hits, self.source_prefix)
        prompt = f"{INSTRUCTION}\n\nReferences:\n\n{context}\n\nQuestion: {question}"
        messages = [{"role": "system", "content": self.system}, *history, {"role": "user", "content": prompt}]
        model = self.model or request.model or DEFAULT_MODEL
        text, usage, response_model = self._complete(model, messages, request.params)
        references = [Reference(source=self._source(h.source), text=h.text, score=h.score, title=h.title)
                      for h in hits]
        return Answer(text, references=references, context=context, usage=usage,
                      metadata={"route": "docs", "query": query, "model": response_model or model,
                                "index_version": index.version,
                                "lines": [f"{self._source(h.source)}:{h.start_line}-{h.end_line}" for h in hits]})

    def ask(self, question: str, messages: list[dict[str, Any]] | None = None, model: str | None = None,
            params: Mapping[str, Any] | None = None) -> Answer:
        """:meth:`answer` for a plain question and the conversation before it (the HTTP server's entry)."""
        history = [dict(m) for m in (messages or [])]
        if history and history[-1].get("role") == "user" and _content(history[-1]).strip() == question.strip():
            history.pop()  # the question is already the last message
        turn = sum(1 for m in history if m.get("role") == "user")
        request = TargetRequest(prompt=question, messages=[*history, {"role": "user", "content": question}],
                                model=model or self.model or DEFAULT_MODEL, params=dict(params or {}), turn=turn)
        return self.answer(request)

    def _source(self, source: str) -> str:
        return f"{self.source_prefix.rstrip('/')}/{source}" if self.source_prefix else source

    def _complete(self, model: str, messages: list[dict[str, Any]], params: Mapping[str, Any]
                  ) -> tuple[str, Usage, str | None]:
        litellm = _litellm(model)
        kwargs: dict[str, Any] = {k: params[k] for k in SAMPLING_PARAMS if params.get(k) is not None}
        api_base = self.api_base or os.environ.get("DOCS_BOT_API_BASE")
        if api_base and not model.startswith("local/"):
            kwargs["api_base"] = api_base
        start = time.perf_counter()
        response = litellm.completion(model=model, messages=messages, **kwargs)
        latency = time.perf_counter() - start
        text = response.choices[0].message.content or ""
        tokens = getattr(response, "usage", None)
        # litellm prices the call itself when it knows the model (None for a local or unknown one).
        cost = (getattr(response, "_hidden_params", None) or {}).get("response_cost")
        usage = Usage(calls=1, prompt_tokens=getattr(tokens, "prompt_tokens", None),
                      completion_tokens=getattr(tokens, "completion_tokens", None),
                      cost_usd=None if cost is None else float(cost), latency_s=latency)
        return text.strip(), usage, getattr(response, "model", None)


_LITELLM_LOCK = threading.Lock()
_LOCAL_READY = False


def _litellm(model: str) -> Any:
    """litellm, imported on first use (seconds), with pytest-llmeval's offline ``local/`` provider registered
    when ``model`` needs it."""
    global _LOCAL_READY
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: no price-list download
    import litellm

    if model.startswith("local/") and not _LOCAL_READY:
        with _LITELLM_LOCK:
            if not _LOCAL_READY:
                from pytest_llmeval.providers import local

                local.provider().setup()  # registers "local" in litellm.custom_provider_map
                _LOCAL_READY = True
    return litellm


def make_bot(docs: Path | str = DEFAULT_DOCS, k: int = 3, **settings: Any) -> DocsBot:
    """A bot over ``docs`` (the repository's ``cases/docs`` by default); ``settings`` as for :class:`DocsBot`."""
    return DocsBot(docs, k=k, **settings)


def bot_factory(docs: Path | str = DEFAULT_DOCS, k: int = 3, **settings: Any) -> Callable[[TargetRequest], Answer]:
    """The bot's ``answer`` callable, for a pytest fixture that builds the app with the test's own settings::

        @pytest.fixture(scope="session")
        def docs_bot(tmp_path_factory):
            return bot_factory(index_uri=str(tmp_path_factory.mktemp("index")))
    """
    bot = make_bot(docs, k, **settings)
    bot.load()
    return bot.answer


_DEFAULT: DocsBot | None = None
_DEFAULT_LOCK = threading.Lock()


def default_bot() -> DocsBot:
    """The process-wide bot over the repository's ``cases/docs``, built on first use."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = make_bot()
        return _DEFAULT


def answer(request: TargetRequest) -> Answer:
    """The docs bot as a Python target (``target: {python: "examples.docs_bot.bot:answer"}``)."""
    return default_bot().answer(request)
