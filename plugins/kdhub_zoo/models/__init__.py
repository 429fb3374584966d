"""Model plugins, one module per family."""
