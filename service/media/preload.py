"""Imported by the forkserver that decode workers are forked from (:func:`service.media.pool.process_executor`):
the decoders and numba's compiled kernels are loaded there once, and every worker forked from it shares them
(copy-on-write) instead of loading its own copy (about 70 MB resident and 300 MB of address space each)."""

from service.media.thumbnail import warm_up

warm_up()
