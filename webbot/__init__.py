"""The web chat robot: a self-hosted LLM chat server, in layers (docs/architecture.md).

`config` states every setting, default and limit (it imports nothing of the product);
`model` runs the language model, `voice` turns audio into text, `storage` keeps
conversations and users; `web` is the Flask side that uses the other three. The entry
points stay at the project's root: `app.py` (create_app), `chat_bot.py` (ChatBot) and
`speech.py` (Transcriber).
"""
