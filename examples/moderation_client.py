"""Call a running `magistrate serve` with the official openai client, unchanged.

    magistrate serve --moderation-categories hate,violence &        # on 127.0.0.1:8000
    python examples/moderation_client.py

Off loopback, create a key first (`magistrate keys create my-app`) and pass it as
OPENAI_API_KEY; on loopback the server needs none (the client still sends one).
"""

from __future__ import annotations

import os

from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("MAGISTRATE_URL", "http://127.0.0.1:8000") + "/v1",
    api_key=os.environ.get("OPENAI_API_KEY", "not-needed-on-loopback"),
)
result = client.moderations.create(
    input=["I am going to hurt you tomorrow.", "What a lovely day for a walk."]
)
for text, verdict in zip(["threat", "walk"], result.results, strict=True):
    flagged = [name for name, hit in verdict.categories.model_dump().items() if hit]
    print(f"{text}: flagged={verdict.flagged} categories={flagged}")
