"""matplotlib for files: the one place the backend is chosen (report, `make reproduce`)."""


def pyplot():
    """matplotlib.pyplot on the Agg backend: files only, no display on servers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
