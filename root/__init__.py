"""The root partition's management service (Hyper-V's VMMS): what ``launch.py`` runs.

Layering: root imports proto, and the other packages only for their configuration
vocabulary; it starts them as ``python -m <package>``.  benchmarks may import root, never
the reverse.
"""
