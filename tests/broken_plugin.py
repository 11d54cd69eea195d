"""A plugin module that fails on import, as a third party's broken release would."""

raise ImportError("cxbridge-broken needs a library that is not installed")
