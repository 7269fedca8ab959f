"""The runner: the one entry point that the Go side drives (`python -m mdn.runner`, docs/protocol.md)."""
from .protocol import PROTOCOL_VERSION, JobContext, JobError  # noqa: F401
