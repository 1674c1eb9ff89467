"""The machinery that makes the aggregation of :mod:`dsmpnn.nn` fast; the layers read as maths and call it through
:mod:`dsmpnn.nn.aggregate`.

- :mod:`~dsmpnn.nn.kernels.backend`: which implementation runs (``choose_backend``) and its switches;
- :mod:`~dsmpnn.nn.kernels.grouped`: the aggregation over the chunks of an edge plan, as one autograd function;
- :mod:`~dsmpnn.nn.kernels.fused`, :mod:`~dsmpnn.nn.kernels.bmm`, :mod:`~dsmpnn.nn.kernels.padded`: the backends'
  per-chunk work (C++ kernels; per-degree ``bmm``; degree-padded ``bmm``), with :mod:`~dsmpnn.nn.kernels.grads`;
- :mod:`~dsmpnn.nn.kernels.native` and ``ecconv_kernels.cpp``: the C++ kernels, their compiler driver, build
  cache and lock, ctypes structs and load-time ABI/layout check;
- :mod:`~dsmpnn.nn.kernels.edge_plan`: edges grouped by source, in chunks, and the plan cache;
- :mod:`~dsmpnn.nn.kernels.chunk_pool`: the thread pool that shares a pass's chunks;
- :mod:`~dsmpnn.nn.kernels.rowwise`: the kernel MLP evaluated chunk by chunk, with its own backward.
"""
