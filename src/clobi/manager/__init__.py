"""The resource manager: observe the queue and the pools, decide (pure `policy.decide`), act
through providers, record every decision with its reason."""
