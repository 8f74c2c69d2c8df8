"""The Puzzle search (Llama-3_1-Nemotron-51B): a block library, its costs, and the MIP.

- ``minitron.search.library``: per layer, every (attention, FFN) variant.
- ``minitron.search.costs``: parameters, KV cache and memory of each, from the config.
- ``minitron.search.mip``: one variant per layer under budgets (scipy's HiGHS MILP).
"""
