"""rxfed: a privacy-preserving federated plugin framework for patient peer networks."""

import pluggy

__version__ = "0.1.0"

#: Plugins mark their hook implementations with this, built-in ones included.
hookimpl = pluggy.HookimplMarker("rxfed")

__all__ = ["hookimpl", "__version__"]
