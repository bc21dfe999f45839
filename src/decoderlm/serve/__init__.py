"""`decoderlm serve`: an OpenAI-compatible HTTP server with continuous batching and a web playground.

engine.py (who is decoded together, step by step) runs the model only through model_runner.py;
sampling.py and text.py are one completion's draws and text; the HTTP side is app.py (routes, auth,
errors), schemas.py (request fields and limits), handlers.py and responses.py (OpenAI's shapes),
chat.py (chat templates) and server.py (uvicorn). See docs/serving.md.
"""
