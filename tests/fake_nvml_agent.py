"""`python tests/fake_nvml_agent.py CONFIG.json ARGS...`: the real `mfu-agent` CLI in this process, with
tests/fakenvml.py installed as libnvidia-ml. CONFIG holds {"devices": [FakeDevice fields...]}; a
device's "processes" may name pids of real processes the test started, and its "mig_devices" are lists
of FakeMigDevice fields (with their own "processes"). Optional driver states: "driver_version", "init_error"
(the NVML code nvmlInit answers, e.g. 9 for DRIVER_NOT_LOADED) and "library": false (no libnvidia-ml.so.1
at all: the fake is not installed and loading the library fails).

With "control": PATH in CONFIG, a daemon thread polls PATH every 50 ms for commands, one JSON object a
line, each applied once, in order of its "seq" (1, 2, ...):

    {"seq": 1, "action": "unload"}                  FakeNvml.unload(); "error": an NVML error code
    {"seq": 2, "action": "reload"}
    {"seq": 3, "action": "hang", "symbol": "nvmlDeviceGetPowerUsage", "seconds": 30}   (seconds optional)
    {"seq": 4, "action": "release"}                 every hang; "symbol": one
    {"seq": 5, "action": "add_device", "device": {FakeDevice fields}}   (device optional)
    {"seq": 6, "action": "remove_device", "index": 1}
    {"seq": 7, "action": "queue_xid", "index": 0, "xid": 79, "count": 500}   FakeNvml.queue_xid, `count`
                                                    times (default 1); "xid" may be a list of codes

After each poll it writes PATH.status (atomically): {"applied": the last seq applied, "blocked": calls
blocked in a hang now, "devices": the UUIDs by index, "errors": commands that failed}.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fakenvml import FakeDevice, FakeMigDevice, FakeNvml, no_nvml_library

from mfu_agent.cli import main

POLL_SECONDS = 0.05


def device(spec: dict[str, Any]) -> FakeDevice:
    spec = dict(spec)
    spec["processes"] = [tuple(p) for p in spec.get("processes", [])]
    spec["mig_devices"] = [
        FakeMigDevice(**{**mig, "processes": [tuple(p) for p in mig.get("processes", [])]})
        for mig in spec.get("mig_devices", [])
    ]
    return FakeDevice(**spec)


def apply(fake: FakeNvml, command: dict[str, Any]) -> None:
    action = command["action"]
    if action == "unload":
        fake.unload(*([command["error"]] if "error" in command else []))
    elif action == "reload":
        fake.reload()
    elif action == "hang":
        fake.hang(command["symbol"], command.get("seconds"))
    elif action == "release":
        fake.release(command.get("symbol"))
    elif action == "add_device":
        fake.add_device(device(command.get("device", {})))
    elif action == "remove_device":
        fake.remove_device(command["index"])
    elif action == "queue_xid":
        codes = command["xid"] if isinstance(command["xid"], list) else [command["xid"]]
        for _ in range(command.get("count", 1)):
            for code in codes:
                fake.queue_xid(command["index"], code)
    else:
        raise ValueError(f"unknown action {action!r}")


def watch(fake: FakeNvml, path: Path) -> None:
    applied = 0
    errors: list[str] = []
    status = path.with_name(path.name + ".status")
    while True:
        try:
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        except FileNotFoundError:
            lines = []
        for line in lines:
            if not line.endswith("\n"):
                break  # still being written
            command = json.loads(line)
            if command["seq"] <= applied:
                continue
            try:
                apply(fake, command)
            except Exception as exc:  # reported to the test through the status file
                errors.append(f"{command}: {exc!r}")
            applied = command["seq"]
        state = {
            "applied": applied,
            "blocked": fake.blocked_calls,
            "devices": [d.uuid for d in fake.devices],
            "errors": errors,
        }
        tmp = status.with_name(status.name + ".tmp")
        tmp.write_text(json.dumps(state), encoding="utf-8")
        os.replace(tmp, status)
        time.sleep(POLL_SECONDS)


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        config = json.load(f)
    if config.get("library", True) is False:
        with no_nvml_library():
            sys.exit(main(sys.argv[2:]))
    options = {key: config[key] for key in ("driver_version", "init_error") if key in config}
    fake = FakeNvml([device(spec) for spec in config["devices"]], **options)
    fake.install()
    if config.get("control"):
        threading.Thread(
            target=watch, args=(fake, Path(config["control"])), name="fake-nvml-control", daemon=True
        ).start()
    sys.exit(main(sys.argv[2:]))
