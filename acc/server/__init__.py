"""The trainer service: FastAPI over the engine (DESIGN §4)."""
