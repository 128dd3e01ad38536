"""HTTP routers; `mfu_agent.app` joins them into one FastAPI app."""
