"""Run ``sqvae-speech`` with faults injected (see faultlib): ``python fault_driver.py
COMMAND ARGS...`` with ``SQVAE_FAULTS`` set, and optionally ``SQVAE_TEST_SET`` holding
``module:NAME=<json>`` items separated by ``;`` (module constants to change first, e.g. a
smaller shard size)."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import faultlib

if __name__ == "__main__":
    for item in filter(None, os.environ.get("SQVAE_TEST_SET", "").split(";")):
        target, value = item.split("=", 1)
        module, name = target.split(":")
        setattr(importlib.import_module(module), name, json.loads(value))
    faultlib.install_from_env(os.environ.get("SQVAE_FAULTS", ""))
    from sqvae_speech.cli import main

    sys.exit(main(sys.argv[1:]))
