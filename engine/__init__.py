"""Infrastructure: settings, codecs, topics, Kafka helpers, local servers, app factory, CLI.

Nothing in this package imports a pipeline stage (``agents``); the worker loads the app by import path.
"""
