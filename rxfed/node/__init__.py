"""The node: a thin aiohttp shell around the protocol core, the store and the plugins."""
