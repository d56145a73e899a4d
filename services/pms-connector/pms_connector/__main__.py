"""`python -m pms_connector`: run the connector until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import signal

from shared.logging import configure_logging

from .connector import run
from .settings import ConnectorSettings


async def main() -> None:
    settings = ConnectorSettings()  # type: ignore[call-arg]  # from the environment
    configure_logging(f"pms-connector-{settings.connector_integration}", settings.log_level, settings.log_format)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per command is ours
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run(settings, stop)


if __name__ == "__main__":
    asyncio.run(main())
