"""`python tests/fake_nvml_agent.py CONFIG.json ARGS...`: the real `mfu-agent` CLI in this process, with
tests/fakenvml.py installed as libnvidia-ml. CONFIG holds {"devices": [FakeDevice fields...]}; a
device's "processes" may name pids of real processes the test started, and its "mig_devices" are lists
of FakeMigDevice fields (with their own "processes")."""

from __future__ import annotations

import json
import sys

from fakenvml import FakeDevice, FakeMigDevice, FakeNvml

from mfu_agent.cli import main

if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        config = json.load(f)
    devices = []
    for spec in config["devices"]:
        spec = dict(spec)
        spec["processes"] = [tuple(p) for p in spec.get("processes", [])]
        spec["mig_devices"] = [
            FakeMigDevice(**{**mig, "processes": [tuple(p) for p in mig.get("processes", [])]})
            for mig in spec.get("mig_devices", [])
        ]
        devices.append(FakeDevice(**spec))
    fake = FakeNvml(devices)
    fake.install()
    sys.exit(main(sys.argv[2:]))
