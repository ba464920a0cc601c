"""rxfed's built-in plugins, registered through the ``rxfed`` entry-point group like any other."""
