"""`mfu-agent top`: a live terminal view of one node from the agent's JSON API.

fetch.py reads /v1/gpus and /v1/jobs; view.py turns them into rows (flags, sort order); fmt.py formats
values; render.py lays the rows out with rich; keys.py reads single key presses from a terminal."""
