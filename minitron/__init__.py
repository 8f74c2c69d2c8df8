from importlib.metadata import version as _v

import minitron.modeling  # noqa: F401  (registers nemotron-nas with transformers' Auto classes)

__version__ = _v("minitron")
