"""service: the torch-free serving plane (onnxruntime sessions, hot-swap slot, sources, control socket,
class-frequency log, sample cache, ``ocapctl``). Never imports torch."""

__all__: list = []
