"""Clobi's benchmark: `python -m bench [--quick] [--only W1,W2] [--json PATH]`.

Measures Clobi and its peers side by side in one run on this machine, as shares of P (the
rate of spawning and reaping `/bin/true` with as many in flight as there are cores). See
docs/benchmarks.md for what each workload means and the targets.
"""
