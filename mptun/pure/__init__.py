"""Pure-Python twins of the compiled datapath modules: same API, readable reference, slow."""
