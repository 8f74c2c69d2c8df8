from importlib.metadata import version as _v

from minitron._autoregister import register_with_transformers as _register

__version__ = _v("minitron")

# nemotron-nas joins AutoConfig / AutoModelForCausalLM (minitron.modeling) as soon as
# transformers is imported, without making `import minitron` import it.
_register()
