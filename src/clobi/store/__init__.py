"""The store: jobs, attempts, agents and events. It is also the queue."""
