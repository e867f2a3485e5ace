"""Config files: Python modules of fiddle lazy calls. Each defines ``config``."""
