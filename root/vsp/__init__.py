"""The root partition's kernel-side process: the VMBus server and the VSPs behind it
(``python -m root.vsp``), one per run, serving every child partition that has a ``vmbus``
section in its topology."""
