"""`mfu-agent doctor`: checks what the agent needs on this node and says how to fix what is missing.

Each check gives one `Check` line: ok, warn (a feature will be missing), fail (the agent cannot do its
main job: NVML does not load, no GPU, the port is taken, the report token cannot be read), or skip
(could not be checked here)."""

from .report import Check, exit_status, render_json, render_text

__all__ = ["Check", "exit_status", "render_json", "render_text"]
