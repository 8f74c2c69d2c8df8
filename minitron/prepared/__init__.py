"""Prepared token datasets: documents tokenized once into Megatron's indexed format.

- ``minitron.prepared.sources``: the documents of a source (files, Hub, stdlib; text or chat).
- ``minitron.prepared.build``: tokenization in worker processes and the ``.bin`` / ``.idx``
  writer (megatron-core's ``IndexedDatasetBuilder``).
"""
