"""The agent: claims jobs from the store and runs each one as its own process on this machine."""
