"""The ``webpubsub`` command in a process of its own, as a user runs it."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Mapping


async def spawn_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    inherit: bool = True,
    preexec_fn: Callable[[], object] | None = None,
) -> asyncio.subprocess.Process:
    """``python -m webpubsub.cli ARGS``, unbuffered, its standard error into its piped
    standard output. ``env`` goes over this process's environment (over nothing but
    ``PYTHONUNBUFFERED`` if not ``inherit``); ``WEBPUBSUB_ACCESS_KEY`` is never inherited."""
    environment = {**os.environ} if inherit else {}
    environment.pop("WEBPUBSUB_ACCESS_KEY", None)
    environment.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "webpubsub.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=environment,
        preexec_fn=preexec_fn,
    )
