"""The fixture form of the docs bot's target (`target: {fixture: docs_bot}`, docs_bot_fixture.yaml): the app built
with the test session's own settings, here an index in a temporary folder instead of .llmeval/index."""

from __future__ import annotations

import pytest

from examples.docs_bot.bot import bot_factory


@pytest.fixture(scope="session")
def docs_bot(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - the bot's answer callable
    """The docs bot's ``answer``, over cases/docs, its index built in a temporary folder."""
    return bot_factory(index_uri=str(tmp_path_factory.mktemp("docs-bot-index")))
