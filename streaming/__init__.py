"""pdestream streaming: chunks, transports, training buffers, the online trainer and the CLI.

Submodules are imported on demand (``from streaming.buffers import make_buffer``); this package
file imports nothing, so ``import streaming`` pulls in neither Ray, MPI nor JAX.
"""
