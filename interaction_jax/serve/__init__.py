"""Serving (DESIGN §11): the micro-turn engine, streaming sessions, the WebSocket server and client, agents.

engine = Engine(cfg, params)                       # serve/engine.py: the batched tick
manager = SessionManager(engine, agent=make_agent(cfg))
async with Server(manager).serving():              # ws://127.0.0.1:8765, docs/protocol.md
    ...                                            # GET /healthz, /metrics on the same port
"""
