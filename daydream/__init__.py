from daydream.export import load

__all__ = ["load"]
