"""Job kinds: module `X` here implements job kind `X` with `run(params: dict, ctx: JobContext) -> dict`."""
