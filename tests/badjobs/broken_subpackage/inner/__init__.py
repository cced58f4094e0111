raise ImportError("inner package is broken")
