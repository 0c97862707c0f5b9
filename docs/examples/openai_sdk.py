"""The demo tenant through the official openai SDK: list models, chat, stream, embed.

    .venv/bin/python docs/examples/openai_sdk.py          # while `make run` is running

Reads PORTAL_URL, DEMO_API_KEY, DEMO_CHAT_MODEL and DEMO_EMBED_MODEL from $VAR_DIR/demo.env (var/demo.env).
Python's resolver does not know `*.localhost`, so the client connects to 127.0.0.1 and names the tenant's
host in the Host header; with a real domain, `OpenAI(base_url=f"{PORTAL_URL}/v1", api_key=...)` is all it takes.
"""

import os
from pathlib import Path
from urllib.parse import urlsplit

from openai import OpenAI

ROOT = Path(__file__).resolve().parents[2]


def demo_values() -> dict[str, str]:
    path = Path(os.environ.get("VAR_DIR", ROOT / "var")) / "demo.env"
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def main() -> None:
    values = demo_values()
    portal = urlsplit(values["PORTAL_URL"])
    client = OpenAI(
        base_url=f"http://127.0.0.1:{portal.port or 80}/v1",
        api_key=values["DEMO_API_KEY"],
        default_headers={"Host": portal.netloc},
    )
    print("models:", [model.id for model in client.models.list()])
    chat = client.chat.completions.create(
        model=values["DEMO_CHAT_MODEL"], messages=[{"role": "user", "content": "hello from the openai SDK"}]
    )
    print("chat:", chat.choices[0].message.content, "| usage:", chat.usage.total_tokens, "tokens")
    print("stream:", end=" ", flush=True)
    stream = client.chat.completions.create(
        model=values["DEMO_CHAT_MODEL"],
        messages=[{"role": "user", "content": "streamed word by word"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()
    embedding = client.embeddings.create(model=values["DEMO_EMBED_MODEL"], input="A man is eating food.")
    print("embedding:", len(embedding.data[0].embedding), "dimensions, first", embedding.data[0].embedding[:3])


if __name__ == "__main__":
    main()
