"""Application glue: the lazy model store and try-on / pose-transfer services, the app's callbacks (no
Gradio here), batches and the ``python -m leffa`` command line, the built-in demo model and weight
downloads."""
