"""The HTTP layer of the inference service: one router per resource (``routers/``), the
dependencies they share (``deps``), request bodies and uploads, the middleware and the
error answers. ``server.serving.app`` assembles them into the application."""
