"""Runtimes (installed as ``dyt_edge.runtimes``): one runner per backend behind one interface.
Not implemented yet: see the runtimes issue."""
